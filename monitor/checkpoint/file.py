"""One checkpoint file: its fixed schema, an atomic write, and a load that runs no code.

The schema (``FORMAT``, ``VERSION``) has the same top-level keys every time (``ADDED_KEYS`` since they were added):

    format, version, time, torch      what wrote it, and when
    loop        {"epoch", "step", "batch", "epoch_done", "order_rng", "batches_drawn", "batches_call", "batches_of",
                "batches_again", "ranks"}:
                where the loop was ("batch": the epoch's steps; "batches_drawn": the batches
                monitor.batches gave in it, more than its steps under gradient accumulation, None
                for a loop that iterates its loader itself; "batches_call": which of the epoch's
                monitor.batches calls gave them, 0 for the first, None as for batches_drawn;
                "batches_of": [samples in that loader's dataset, its batch size], each None if unknown;
                "batches_again": whether the epoch's earlier steps came from a call of that shape, a
                loop of passes without epochs, whose resume goes on with the first call of that shape),
                and the random state its epoch's batches were drawn from ({"torch", "loader", "kept_workers":
                whether a persistent loader's workers were already there}; None if unknown); under
                torch.distributed those four are rank 0's, and "ranks" holds every rank's, by rank (a
                validation loader that rank 0 alone iterates makes them differ), else None
    model       the state_dict, unwrapped from DDP (.module) and torch.compile (._orig_mod, also of a
                submodule compiled on its own: named as the model built plain); without the frozen
                parameters where they were left out (``save_frozen=False``: a fine-tuned model's
                pretrained base, which the loop loads itself)
    frozen      the names of the model's parameters with requires_grad=False, which no state_dict
                holds (absent from files written before it was kept); those ``model`` lacks were
                left out
    frozen_sums of each frozen parameter left out, a sum of some of its values (``sampled_sums``):
                what a resume checks the base the loop loaded against (absent before it was kept)
    optimizer, scheduler, scaler      their state_dicts, or None; several optimizers (a GAN's) or
                schedulers (a warm-up's and a plateau's) are a dict of their state_dicts by name
    classes     the class names of model, optimizer, scheduler, scaler (for people and checks)
    rng         monitor.checkpoint.rng.capture_rng(): Python, NumPy, torch CPU and every CUDA device; under
                torch.distributed rank 0's, plus ``ranks``: every rank's, by rank (restored per rank)
    callbacks   each callback's state_dict, by state_key (Monitor.state_dict()["callbacks"])
    run         {"env", "run_id", "runlog_position", "run_dir"}: the dashboard run it continues, and the
                absolute run folder its log is in (None in files written before it was kept)
    metric      {"name", "value", "mode"}: what best-k retention ranks it by
    extras      the user's own tensors and primitives

Only tensors and primitives go in, so :func:`load_checkpoint` can use
``torch.load(weights_only=True)``; a file that needs more (a whole pickled model, a payload) is
refused with the reason, unless ``trust=True``. The seed notes of this project contrast
``torch.save(model)`` with ``torch.save(model.state_dict())``: only the second is safe to load.
"""
from __future__ import annotations

import copy
import os
import pickle
import time
import warnings
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from monitor.atomic import write_atomic
from monitor.models import plain_state, uncompiled, unwrap_model
from monitor.checkpoint.pickle_scan import describe_unsafe

FORMAT = "monitor.checkpoint"
VERSION = 1
RESUME_KEYS = ("order_rng", "batches_drawn", "batches_call", "batches_of", "batches_again")  # loop keys a resume reads
KEYS = ("format", "version", "time", "torch", "loop", "model", "frozen", "frozen_sums", "optimizer", "scheduler",
        "scaler", "classes", "rng", "callbacks", "run", "metric", "extras")
ADDED_KEYS = ("frozen", "frozen_sums")  # keys of the schema that files written before them lack
# Exact types: a subclass (numpy.float32, defaultdict, a namedtuple) pickles as a global that
# weights_only refuses.
# What torch.load(weights_only=True) takes (complex and bytearray; a Counter: MultiStepLR's milestones).
_PLAIN = {type(None), bool, int, float, complex, str, bytes, bytearray, torch.Tensor, torch.nn.Parameter,
          torch.dtype, torch.device, torch.Size}
_NUMPY_EXACT = {np.float64, np.int64, np.bool_}  # arithmetic as Python's float, int and bool


class CheckpointError(Exception):
    """A path that does not hold a usable checkpoint: not one, refused or damaged."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that is truncated or corrupt (a resume falls back to an older one)."""


class UnsafeCheckpointError(CheckpointError):
    """A file that only loads by running code from it: a whole pickled model or worse."""


class CheckpointWriteError(BaseException):
    """A checkpoint could not be written; training must stop rather than go on unprotected.

    Like ``KeyboardInterrupt`` it is not an ``Exception``, so neither the Monitor's containment
    of callback errors nor a broad ``except Exception`` in the loop swallows it; its
    ``__cause__`` is the original error (a full disk, a permission, a value that is not plain).
    """


class CheckpointResumeError(BaseException):
    """A run could not be put back from its checkpoint; training must not start over in its folder.

    Not an ``Exception``, for the reason :class:`CheckpointWriteError` is not: a run that went on
    from scratch would overwrite the checkpoints it failed to continue from.
    """


def build_checkpoint(*, model: torch.nn.Module, loop: Mapping[str, Any], optimizer: Any = None,
                     scheduler: Any = None, scaler: Any = None, rng: Mapping[str, Any],
                     callbacks: Mapping[str, Any] | None = None, run: Mapping[str, Any] | None = None,
                     metric: Mapping[str, Any] | None = None,
                     extras: Mapping[str, Any] | None = None, save_frozen: bool = True) -> dict[str, Any]:
    """The schema's dict; raises TypeError naming the first value that is not a tensor or primitive.

    ``run`` and ``metric`` may leave out keys (they become None; the mode "min").
    ``save_frozen=False`` leaves the frozen parameters out of ``model``.
    """
    run, metric = run or {}, metric or {}
    model = unwrap_model(model)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    frozen = [uncompiled(name) for name, parameter in model.named_parameters() if not parameter.requires_grad]
    state = plain_state(model)
    sums = {}
    if not save_frozen:
        left_out = set(frozen)
        state = {name: value for name, value in state.items() if name not in left_out}
        sums = sampled_sums({uncompiled(name): p for name, p in model.named_parameters() if not p.requires_grad})
    checkpoint = {
        "format": FORMAT, "version": VERSION, "time": time.time(), "torch": str(torch.__version__),
        "loop": {**{key: loop[key] for key in ("epoch", "step", "batch", "epoch_done")},
                 **{key: loop.get(key) for key in RESUME_KEYS}, "ranks": loop.get("ranks")},
        "model": state,
        "frozen": frozen,
        "frozen_sums": sums,
        "optimizer": _state_of(optimizer),
        "scheduler": _state_of(scheduler),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "classes": {name: _class_of(part) for name, part in parts.items()},
        "rng": dict(rng), "callbacks": dict(callbacks or {}),
        "run": {key: run.get(key) for key in ("env", "run_id", "runlog_position", "run_dir")},
        "metric": {"name": metric.get("name"), "value": metric.get("value"), "mode": metric.get("mode", "min")},
        "extras": dict(extras or {}),
    }
    return plain_value(checkpoint, "checkpoint")


SAMPLED = 256  # values of a frozen parameter its sum takes, spread over it


def sampled_sums(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each tensor's sum of ``SAMPLED`` of its values, evenly spread (all of a small one's), in
    float64: a base loaded from another file differs in them, and taking them reads little (one
    read of the device per device)."""
    sums: dict[str, float] = {}
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    with torch.no_grad():
        for name, tensor in tensors.items():
            flat = tensor.detach().reshape(-1)
            sample = flat[::max(1, flat.numel() // SAMPLED)][:SAMPLED]
            by_device.setdefault(tensor.device, []).append((name, sample.to(torch.float64).sum()))
        for parts in by_device.values():
            sums.update(zip((name for name, _ in parts), torch.stack([s for _, s in parts]).cpu().tolist()))
    return sums


def _state_of(part: Any) -> Any:
    if isinstance(part, Mapping):  # several optimizers or schedulers, by name
        return {name: one.state_dict() for name, one in part.items()}
    return part.state_dict() if part is not None else None


def _class_of(part: Any) -> Any:
    if isinstance(part, Mapping):
        return {name: type(p).__name__ for name, p in part.items()}
    return type(part).__name__ if part is not None else None


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    """Writes ``checkpoint`` so that ``path`` holds either the old file or the new one, whole.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, moved into
    place with ``os.replace``, and the folder is fsynced so the new name is durable too.
    """
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # load_checkpoint verifies every entry's CRC
    try:
        write_atomic(Path(path), lambda file: torch.save(dict(checkpoint), file))
    finally:
        torch.serialization.set_crc32_options(crc)


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
                    verify: bool = True, mmap: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint`, running no code from the file.

        checkpoint = load_checkpoint("checkpoints/step-000000120.pt")
        model.load_state_dict(checkpoint["model"])

    Raises FileNotFoundError, :class:`DamagedCheckpointError` (truncated, or an entry fails its
    CRC), :class:`UnsafeCheckpointError` (needs unpickling beyond tensors and primitives; pass
    ``trust=True`` only for a file you trust) or :class:`CheckpointError` (not a checkpoint).
    """
    return check_schema(load_file(path, trust=trust, map_location=map_location, verify=verify, mmap=mmap), path)


def check_schema(data: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``data`` if it is a checkpoint of a format version this code reads; else CheckpointError."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = f"a dict with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"path must be a monitor checkpoint (a dict with format={FORMAT!r}), "
                              f"got {got} in {path}")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise CheckpointError(f"path must be a checkpoint of format version <= {VERSION}, got version "
                              f"{data.get('version')!r} in {path}: upgrade monitor to read it")
    missing = [key for key in KEYS if key not in data and key not in ADDED_KEYS]
    if missing:
        raise CheckpointError(f"path must be a checkpoint with every key of the schema, got {path} "
                              f"without {missing}")
    return data


def load_file(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu",
              verify: bool = True, mmap: bool = False) -> Any:
    """Whatever ``torch.save`` put in ``path``, checked for damage and loaded without running code.

    ``verify`` checks every zip entry's CRC first (reads the whole file); ``mmap`` leaves tensor
    data on disk until used (a quick look at the metadata).
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "nothing (no such file)"
        raise FileNotFoundError(f"path must be a checkpoint file, got {str(path)!r}, which is {what}")
    with open(path, "rb") as file:
        head = file.read(4)
    if head.startswith(b"PK\x03\x04"):
        if verify:
            _verify_zip(path)
    elif not head.startswith(b"\x80"):  # neither torch's zip format nor a (legacy) pickle
        raise CheckpointError(f"path must be a file written by torch.save, got {str(path)!r}, which is "
                              f"neither a zip archive nor a pickle (it starts with {head!r})")
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: our refusal says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=not trust,
                              mmap=mmap and head.startswith(b"PK"))
    except pickle.UnpicklingError as error:
        if trust:
            raise DamagedCheckpointError(f"{path} could not be unpickled: {error}") from None
        raise UnsafeCheckpointError(f"refused to load {path}: {describe_unsafe(path)}; loading it would run "
                                    f"code from the file. Load it with trust=True (`monitor checkpoints inspect "
                                    f"--trust`) only if you trust its source") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise DamagedCheckpointError(f"{path} is damaged and cannot be read: {error}") from None
    except (AttributeError, ImportError) as error:  # trusted: a class the file names is not to be found here
        raise UnsafeCheckpointError(f"{path} needs code that is not here to load ({error}): a model pickled whole, "
                                    f"torch.save(model), loads only where its class imports as it did when saved "
                                    f"(one defined in the script that saved it, __main__, only in that script); "
                                    f"save model.state_dict() instead") from None


def _verify_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise DamagedCheckpointError(f"{path} is damaged (truncated or not a whole zip archive): {error}") from None
    if bad is not None:
        raise DamagedCheckpointError(f"{path} is damaged: its entry {bad!r} fails its CRC check")


def plain_value(value: Any, where: str) -> Any:
    """``value``, its NumPy float64, int64 and bool scalars (a scheduler's lambda may hold one) as
    the Python numbers they equal; raises TypeError naming the first value that is neither a
    tensor nor a primitive. A container is copied (its attributes too: a state_dict's
    ``_metadata``) only where something in it changed."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind in _NUMPY_EXACT:
        return value.item()
    if kind in (list, tuple, set):
        items = [plain_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value)) else kind(items)
    if kind in (dict, OrderedDict, Counter):
        items = [(plain_value(key, f"{where} key {key!r}"), plain_value(item, f"{where}[{key!r}]"))
                 for key, item in value.items()]
        if all(a is key and b is item for (a, b), (key, item) in zip(items, value.items())):
            return value
        copied = copy.copy(value)
        copied.clear()
        copied.update(items)
        return copied
    name = f"{kind.__module__}.{kind.__qualname__}"
    hint = _AS_PLAIN.get(name) or (  # a module (an EMA's AveragedModel), an optimizer, a scheduler
        "its state_dict(), and load_state_dict(state) at the resume" if callable(getattr(value, "state_dict", None))
        else None)
    raise TypeError(f"{where} must hold only tensors and primitives (so the checkpoint loads with "
                    f"weights_only=True), got {name}" + (f": keep {hint}" if hint else ""))


# What a loop keeps in extras, and what to keep instead (an RL loop's replay buffer and generators).
_AS_PLAIN = {
    "numpy.ndarray": "torch.from_numpy(array), and array = tensor.numpy() at the resume",
    "collections.deque": "list(queue), and deque(items, maxlen=...) at the resume",
    "numpy.random._generator.Generator": "generator.bit_generator.state, and set it back at the resume",
    "random.Random": "rng.getstate(), and rng.setstate(state) at the resume",
    "torch._C.Generator": "generator.get_state(), and generator.set_state(state) at the resume",
}
