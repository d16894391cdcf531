"""Which steps a callback with ``every=N`` logs."""
from __future__ import annotations


def is_due(step: int, every: int) -> bool:
    """The first step and every ``every``-th after it (1, 1 + every, ...): a run shows up at once."""
    return (step - 1) % every == 0
