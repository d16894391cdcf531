"""Says why a pickle is unsafe, by reading its opcodes: nothing in it is imported or run.

``torch.load(weights_only=True)`` refuses a file that names a global outside its allowlist;
this module finds those globals so the refusal can say what the file would have done.
"""
from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

_SAFE_MODULES = ("torch._utils", "torch._tensor", "torch.serialization", "_codecs")
_SAFE_NAMES = {"collections.OrderedDict", "builtins.set", "__builtin__.set", "torch.Size", "torch.device"}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickled_globals(path: str | Path) -> list[str]:
    """The ``module.name`` of every global the pickle in ``path`` (or its torch zip) refers to."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    else:
        data = path.read_bytes()
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
        try:
            _scan(stream, found)
        except Exception:  # a damaged or non-pickle tail: what was found so far stands
            break
    return list(dict.fromkeys(found))


def describe_unsafe(path: str | Path) -> str:
    """One phrase on what loading ``path`` would import and call, for an error message."""
    try:
        names = [n for n in pickled_globals(path) if not _looks_safe(n)]
    except OSError:
        names = []
    if not names:
        return "it needs unpickling beyond tensors and primitives"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    if any(n.startswith("torch.nn.modules.") for n in names):
        return (f"it holds a whole pickled model (torch.save(model), needing {shown}), not a state_dict; "
                f"save model.state_dict() instead and load it into a freshly built model")
    return f"it would import and call {shown}"


def _looks_safe(name: str) -> bool:
    module = name.rsplit(".", 1)[0]
    return (name in _SAFE_NAMES or module in _SAFE_MODULES or
            (module == "torch" and (name.endswith("Storage") or name.split(".")[-1].islower())))


def _scan(stream: io.BytesIO, found: list[str]) -> None:
    """Follows one pickle to its STOP, noting GLOBAL and STACK_GLOBAL names (memo included)."""
    recent: list[object] = []  # the values pushed lately, enough to resolve STACK_GLOBAL
    memo: dict[int, object] = {}
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL" and len(recent) >= 2:
            found.append(f"{recent[-2]}.{recent[-1]}")
        if name in _STRINGS:
            recent.append(arg)
        elif name == "MEMOIZE" and recent:
            memo[len(memo)] = recent[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and recent:
            memo[int(arg)] = recent[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        elif name not in ("FRAME", "PROTO"):
            recent.append(None)
        del recent[:-4]
