"""Checks at the door, one vocabulary for every module: each error names the argument, says what
was expected and shows what was received.

    every = integer("every", every, minimum=1)          # TypeError for "2", ValueError for 0
    flush_every = seconds("flush_every", flush_every)   # a number > 0
    mode = one_of("mode", mode, ("min", "max"))

A value of the wrong type raises TypeError; a value of the right type but out of range raises
ValueError.
"""
from __future__ import annotations

import hashlib
import math
import sys
from decimal import Decimal
from numbers import Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def integer(argument: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
            expected: str | None = None) -> int:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]``.

    ``expected`` replaces the generated description ("an int >= 1") in the message.
    """
    if expected is None:
        expected = _int_range(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be {expected}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return value


def positive_int(argument: str, value: Any) -> int:
    """``value`` if it is an int >= 1: a stride, a count."""
    return integer(argument, value, minimum=1)


def seconds(argument: str, value: Any) -> float:
    """``value`` as a float if it is a real number > 0 (a duration)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be a number of seconds > 0, got {value!r}")
    if not value > 0:
        raise ValueError(f"{argument} must be a number of seconds > 0, got {value!r}")
    return float(value)


def smoothing_weight(argument: str, value: Any) -> float:
    """``value`` as a float if it is a smoothing weight: a real number from 0 (none) up to, not including, 1."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < 1:
        raise ValueError(f"{argument} must be a number from 0 (no smoothing) up to 1 (not included), got {value!r}")
    return float(value)


def boolean(argument: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{argument} must be True or False, got {value!r}")
    return value


def one_of(argument: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{argument} must be {' or '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def text(argument: str, value: Any) -> str:
    """``value`` if it is a str with something in it besides spaces."""
    if type(value) is str and value.strip():  # the usual case, kept cheap
        return value
    if isinstance(value, str) and value.strip():  # numpy's str_ (a DataFrame's column names): a str
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a non-empty str, got {value!r}")
    raise ValueError(f"{argument} must be a non-empty str" + (", not blank" if value else "") + f", got {value!r}")


MAX_NAME = 100  # characters in an env, window or trace name
MAX_PATH_BYTES = 200  # bytes of an env in UTF-8: a folder's name, and with ".json" a server's file (255 at most)


def fitted(name: str, suffix: str = "", *, path: bool = True) -> str:
    """``name + suffix`` within a name's 100 characters (``path``: an env's, also 200 bytes in
    UTF-8), the name cut and marked with a hash of it where it does not fit: ``"résumé run 1-fc7682d0"``."""
    most_bytes = MAX_PATH_BYTES if path else math.inf
    whole = name + suffix
    if len(whole) <= MAX_NAME and len(whole.encode()) <= most_bytes:
        return whole
    mark = "-" + hashlib.sha1(name.encode()).hexdigest()[:8] + suffix
    cut = name[:MAX_NAME - len(mark)]
    while len((cut + mark).encode()) > most_bytes:
        cut = cut[:-1]
    return cut + mark


def hparams(argument: str, value: Any) -> dict[str, Any]:
    """Hyper-parameters as a flat dict: a mapping, an ``argparse.Namespace`` or a dataclass (a
    config object), nested ones flattened with dots (``{"optim": {"lr": 0.1}}``: ``optim.lr``),
    as ``monitor runs --where optim.lr=0.1`` then finds them."""
    import argparse
    import dataclasses
    from collections.abc import Mapping

    if isinstance(value, argparse.Namespace):
        value = vars(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"{argument} must be a mapping of name to value (or an argparse.Namespace, a dataclass), "
                        f"got {type(value).__name__}")
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            flat.update({f"{key}.{inner}": v for inner, v in hparams(argument, item).items()})
        else:
            flat[str(key)] = item
    return flat


def is_control(character: str) -> bool:
    """Whether a character is a control character (C0, DEL or C1), which no name may hold."""
    return ord(character) < 32 or 127 <= ord(character) < 160


def name(argument: str, value: Any, *, path: bool = False) -> str:
    """``value`` if it is a usable name: a str of 1 to 100 characters, not blank, no control characters.

    ``path=True`` (an env, which names a folder of the run and a file of the server) also
    refuses what could lead out of a folder: ``/``, ``\\``, ``.`` and ``..``, what ends an address
    (``#``, ``?``: Visdom's page of the env would be empty), and more than 200 bytes in UTF-8
    (what a file system takes in a name, less room for the server's suffix).
    """
    value = text(argument, value)
    if len(value) > MAX_NAME:
        raise ValueError(f"{argument} must be at most {MAX_NAME} characters, got {len(value)}: {value[:20]!r}...")
    if any(map(is_control, value)):
        raise ValueError(f"{argument} must have no control characters, got {value!r}")
    if path and ("/" in value or "\\" in value or value in (".", "..")):
        raise ValueError(f"{argument} must not be a path (no '/' or '\\', and not '.' or '..'): it names a folder, "
                         f"got {value!r}")
    if path and ("#" in value or "?" in value):
        raise ValueError(f"{argument} must have no '#' or '?': the dashboard's address of an env ends at either, "
                         f"so its page would be empty, got {value!r}")
    if path and len(value.encode()) > MAX_PATH_BYTES:
        raise ValueError(f"{argument} must be at most {MAX_PATH_BYTES} bytes in UTF-8 (it names a folder), "
                         f"got {len(value.encode())}: {value[:20]!r}...")
    return value


def real_tensor(argument: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` if the tensor holds real numbers (not bool, not complex)."""
    if value.is_complex():
        raise TypeError(f"{argument} must hold real numbers, got a tensor of dtype {value.dtype}: pass its "
                        f"magnitude, .abs(), its phase, .angle(), or its .real part")
    if value.dtype is _torch().bool:
        raise TypeError(f"{argument} must hold real numbers, got a tensor of dtype {value.dtype}")
    return value


def scalar(argument: str, value: Any) -> Any:
    """``value`` if it is a real number or a one-element real tensor (which is not read here); a
    one-element numpy array (``loss.detach().numpy()``, ``np.array([0.25])``) or numpy scalar as
    the number it holds. A bool counts as 0 or 1, as TensorBoard takes it (an episode's success)."""
    if _is_array_1(value):
        return value.item()
    if _is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{argument} must be a number or a one-element tensor or numpy array, "
                             f"got a tensor of shape {tuple(value.shape)}")
        if value.is_complex():
            raise TypeError(f"{argument} must be a real number, got a tensor of dtype {value.dtype}")
        return value
    if not isinstance(value, Real):
        if isinstance(value, Decimal):  # a number, though not a Real: as the float it is logged as
            return float(value)
        shown = " ".join(repr(value).split())  # a model's output holds tensors: their values cut short
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        hint = ": pass its .loss" if _is_tensor(getattr(value, "loss", None)) else ""  # Hugging Face's outputs
        raise TypeError(f"{argument} must be a number or a one-element tensor or numpy array, got {shown}{hint}")
    return value


def is_scalar(value: Any) -> bool:
    """Whether :func:`scalar` would accept ``value``."""
    if _is_array_1(value):
        return True
    if _is_tensor(value):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, (Real, Decimal))


def value_range(argument: str, value: Any) -> tuple[float, float] | None:
    """``value`` as (low, high) floats, two finite numbers, low below high; or None."""
    if value is None:
        return None
    try:
        low, high = (float(finite(argument, v)) for v in value)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise ValueError(f"{argument} must be (low, high), two finite numbers, low below high, e.g. (-1, 1), "
                         f"got {value!r}")
    return low, high


def finite(argument: str, value: Any) -> float:
    """``value`` if it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{argument} must be a finite number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{argument} must be a finite number, got {value!r}")
    return value


def _torch():
    import torch  # here, so that checking plain arguments (a CLI's, a server's) does not load torch

    return torch


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # no tensor exists before torch is imported
    return torch is not None and isinstance(value, torch.Tensor)


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int between {minimum} and {maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def _is_array_1(value: Any) -> bool:
    """A numpy array of one real number or bool, or a numpy scalar (``np.bool_``), as a
    one-element tensor is taken (numpy is not imported for it)."""
    return type(value).__module__ == "numpy" and getattr(value, "size", None) == 1 and value.dtype.kind in "iufb"
