"""Every random generator a training loop draws from, captured as tensors and primitives.

A resumed run only continues *exactly* if dropout, augmentations and shuffles draw the same
numbers they would have drawn without the interruption, so a checkpoint keeps the state of
Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA device's.
The captured dict holds only ints, floats, strings and tensors, so it loads with
``torch.load(weights_only=True)``. A checkpoint of a torch.distributed job holds rank 0's state
and, under ``ranks``, every rank's: each rank draws its own dropout masks and augmentations, so
each gets its own state back (:func:`rng_of_rank`).
"""
from __future__ import annotations

import logging
import random
from typing import Any

import torch

_log = logging.getLogger("monitor")


def capture_rng() -> dict[str, Any]:
    """The state of every global generator, as tensors and primitives.

        state = capture_rng()
        torch.rand(3)                       # draws...
        restore_rng(state)                  # ...and the same draws again
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        # A process that never touched CUDA has nothing to save there (and saving would start it).
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if _cuda_started() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Puts back what :func:`capture_rng` took; devices the state has no entry for are left alone."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    if state.get("numpy") is not None:
        _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    if saved and not torch.cuda.is_available():
        _log.warning("monitor: the checkpoint holds the random state of %d CUDA device(s) but CUDA is not "
                     "available here; GPU random draws will not repeat the interrupted run's", len(saved))
    elif saved:
        count = torch.cuda.device_count()
        if count != len(saved):
            _log.warning("monitor: the checkpoint holds the random state of %d CUDA device(s), this machine has %d; "
                         "the first %d are restored", len(saved), count, min(count, len(saved)))
        for device, device_state in enumerate(saved[:count]):
            torch.cuda.set_rng_state(device_state, device)


def rng_of_rank(state: dict[str, Any], rank: int, world_size: int, warn: bool = True) -> dict[str, Any]:
    """The state rank ``rank`` restores from a checkpoint's ``rng`` entry.

    A job of another size than the one that saved it gets rank ``rank``'s state where there is
    one and rank 0's otherwise, with a warning (from rank 0, unless not ``warn``): its random
    draws will not repeat the saving job's.
    """
    ranks = state.get("ranks") or [state]
    if len(ranks) != world_size and rank == 0 and warn:
        _log.warning("monitor: the checkpoint holds the random state of %d process(es), this job has %d: ranks "
                     "without a state of their own restore rank 0's, so random draws differ from the saving job's",
                     len(ranks), world_size)
    return ranks[rank] if rank < len(ranks) else ranks[0]


def _cuda_started() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _numpy_state() -> dict[str, Any] | None:
    try:
        import numpy
    except ImportError:
        return None
    kind, keys, position, has_gauss, gauss = numpy.random.get_state(legacy=True)
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(numpy.int64)), "position": int(position),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: dict[str, Any]) -> None:
    try:
        import numpy
    except ImportError:
        return  # nothing here can draw from it
    keys = state["keys"].numpy().astype(numpy.uint32)
    numpy.random.set_state((state["kind"], keys, state["position"], state["has_gauss"], state["gauss"]))
