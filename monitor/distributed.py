"""The monitor across the processes of a ``torch.distributed`` job: who it is, averaging, agreeing.

Every function that takes part in a collective says so; it must then be called by every rank,
in the same order and with the same metric names, as DDP's own collectives are. With a single
process (or no process group initialised) nothing here talks to anybody.

    rank, world_size = rank_and_world_size()          # (0, 1) without torch.distributed
    means = mean_across_ranks({"loss": loss})         # one all_reduce for all the values
    path = on_main(write_file)       # rank 0 writes; the others wait for its outcome
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import pickle
import threading
import zlib
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist

from monitor.checks import is_scalar, scalar

T = TypeVar("T")
_log = logging.getLogger("monitor")
WAITED = 30.0  # seconds a rank waits for the others at a checkpoint's collective before it says so


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) under an initialised torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankLabel(logging.Filter):
    """Names the rank in each of the monitor's messages of a process of several (``monitor (rank
    1): ...``): every rank says what it sees, and the same line from two ranks is two ranks'."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("monitor: ") and \
                not record.msg.startswith("monitor: rank "):  # one that names its rank itself
            record.msg = f"monitor (rank {self.rank}): " + record.msg[len("monitor: "):]
        return True


def label_ranks(rank: int, world_size: int) -> None:
    """Under torch.distributed, the monitor's messages name this process's rank, once a process."""
    logger = logging.getLogger("monitor")
    if world_size > 1 and not any(isinstance(f, RankLabel) for f in logger.filters):
        logger.addFilter(RankLabel(rank))


def launched_rank() -> int:
    """This process's rank: torch.distributed's, else what a launcher (torchrun) set in ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def warn_before_init(what: str) -> None:
    """Warns where a launcher (torchrun) started several processes and ``what`` is made while
    torch.distributed is not initialized: each process takes itself for the only one."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1 and not (dist.is_available() and dist.is_initialized()):
        _log.warning("monitor: %s made while torch.distributed is not initialized, in a job of %s processes "
                     "(WORLD_SIZE=%s, RANK=%s from its launcher): it takes itself for the only process. In a DDP "
                     "job make it after init_process_group (one dashboard, rank 0's); processes that train apart "
                     "need an env each", what, world, world, os.environ.get("RANK", "?"))


def mean_across_ranks(values: Mapping[str, Any], waiting_at: str | None = None) -> dict[str, Any]:
    """Each value's mean over the ranks, from one ``all_reduce`` of all of them stacked (a collective).

    Every rank must pass the same names, in any order: names that differ raise a ValueError (the
    means of a reduction on a device, never read here, are NaN instead). Values are numbers or
    one-element tensors; the means are 0-d float64 tensors on the device
    the reduction ran on (the values' accelerator, the backend's device, else the CPU), read
    later by whoever logs them. A value that is neither (a string, a longer tensor) still takes
    part, as NaN, so every rank's collective matches; it is returned unchanged, for the caller's
    own check to name it. ``waiting_at`` (a validation's, once an epoch) says, after 30 s of
    waiting for the other ranks, where this rank waits; the first averaging of a process always does.
    """
    if not values:
        return {}
    names = sorted(values)  # one order on every rank, whatever order each passed them in
    device = _device(values.values())
    slots = [_as_scalar(values[name], device) for name in names]
    # The names' checksum c and c * c join the sum: sum(c)^2 == world * sum(c^2) only where
    # every rank's c is the same (Cauchy-Schwarz), so names that differ never average silently.
    check = _checksum(tuple(names))
    stacked = torch.stack([_filled(math.nan, device) if s is None else s for s in slots]
                          + [_filled(check, device), _filled(check * check, device)])
    global _averaged
    if _averaged and waiting_at is None:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    else:  # the first (a Monitor made under `if rank == 0:` waits there), or one not every step: a timer
        with _said_if_long(dist.get_rank(), waiting_at or "averaging metrics (Scalars(average=...))"):
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        _averaged = True
    world = dist.get_world_size()
    total, squares = stacked[-2], stacked[-1]
    alike = total * total == world * squares
    if device.type == "cpu":  # read at no cost: said at once
        if not alike:
            raise ValueError(f"the names averaged over the ranks must be the same on every rank, got "
                             f"{names} on rank {dist.get_rank()} and others elsewhere")
        means = stacked[:-2].div_(world)
    else:  # a device's is never read here: names that differ make the means NaN, shown as gaps
        means = torch.where(alike, stacked[:-2] / world, math.nan)
    return {name: values[name] if slot is None else mean for name, slot, mean in zip(names, slots, means.unbind())}


_averaged = False  # whether this process averaged once already


@functools.lru_cache(maxsize=64)
def _checksum(names: tuple[str, ...]) -> float:
    """The names as a number below 2**16: the sums of it and its square stay exact in float64 up to 1,000 ranks."""
    return float(zlib.crc32("\0".join(names).encode()) % (1 << 16))


def gather_on_main(value: Any) -> list[Any] | None:
    """Every rank's ``value``, by rank, on rank 0; None on the others (a collective, pickled)."""
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return [value]
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def on_main(action: Callable[[], T]) -> T:
    """Runs ``action`` on rank 0 only; every rank returns its result or raises its exception.

    The other ranks wait for rank 0 (a broadcast, so also a barrier): a checkpoint is on disk
    before any rank goes on, and a write that failed stops every rank instead of leaving them
    waiting for rank 0 at their next collective. The result and the exception travel pickled;
    an exception that does not survive pickling arrives as a RuntimeError naming it.
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return action()
    outcome: list[Any] = [None, None]
    if rank == 0:
        try:
            outcome[0] = action()
        except BaseException as error:
            outcome[1] = error
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:
                outcome[1] = RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
            with _said_if_long(rank, "a checkpoint"):
                dist.broadcast_object_list(outcome, src=0)
            raise
    with _said_if_long(rank, "a checkpoint"):
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


@contextlib.contextmanager
def _said_if_long(rank: int, at: str) -> Iterator[None]:
    """Says once, after ``WAITED`` seconds, that this rank waits for the others ``at`` something:
    a Monitor made under ``if rank == 0:`` (or a rank stuck elsewhere) would otherwise leave the
    job hanging in silence until the process group's timeout (30 minutes for gloo)."""
    timer = threading.Timer(WAITED, _log.warning, args=(
        "monitor: rank %d has waited %.0f s for the other ranks at %s (it goes on waiting). If this "
        "does not end, a rank does not call the Monitor: every rank must make it and call its hooks; one made "
        "under `if rank == 0:` waits for the others forever", rank, WAITED, at))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _device(values: Any) -> torch.device:
    """Where the reduction runs: the values' accelerator, else what the backend needs."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            return value.device
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _as_scalar(value: Any, device: torch.device) -> torch.Tensor | None:
    """``value`` as a 0-d float64 tensor on ``device`` (copied there, never read), or None if it is no number."""
    if not is_scalar(value):
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return _filled(float(scalar("value", value)), device)  # a one-element numpy array: its number


def _filled(value: float, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-d float64 tensor made on ``device``: a fill, no copy from the host to wait on."""
    return torch.full((), value, dtype=torch.float64, device=device)
