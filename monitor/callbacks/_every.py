"""The checks every callback shares: a positive stride at the door, and which steps it picks."""
from __future__ import annotations

from typing import Any


def positive_int(argument: str, value: Any) -> int:
    """``value`` if it is an int >= 1; else a ValueError/TypeError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}")
    return value


def one_of(argument: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return value


def is_due(step: int, every: int) -> bool:
    """The first step and every ``every``-th after it (1, 1 + every, ...): a run shows up at once."""
    return (step - 1) % every == 0
