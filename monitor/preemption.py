"""A scheduler's stop signals and the DataLoader's worker processes.

    shield_workers(loader)   # in monitor.batches: its workers leave SIGTERM and SIGUSR1 to the loop
    iterator = started(loader)  # iter(loader), its workers starting with the signals held back

A scheduler (SLURM's pre-emption or ``scancel``, Kubernetes) signals every process of a job.
The Checkpoint callback catches SIGTERM and SIGUSR1 in the training process, saves at the step's
end and exits for requeue. A DataLoader worker would die at once instead (torch's worker turns a
SIGTERM not sent by its parent into its death, and SIGUSR1 kills by default), and the loader
would then raise in the loop before it saved. So while a Checkpoint catches them, the workers
of a loader iterated through ``monitor.batches`` ignore both: the loop shuts them down as it
exits, as it does at every epoch's end. A spawned worker starts a new interpreter, which would
die of the signal in the second it takes to import torch, before it is told to ignore it: the
loop's thread holds the signals back while it starts workers, a worker inherits that and lets
them go once it ignores them (any that came meanwhile are dropped), and the training process
gets one sent meanwhile through another thread (or once they have started). Workers still
running at the interpreter's exit (persistent ones, or those of an iterator the script still
holds) would get ``multiprocessing``'s SIGTERM, which they ignore, and be waited for forever:
an exit hook ends them first.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import multiprocessing.util  # noqa: F401  (registers its exit hook on import: _end_shielded_workers, later, runs first)
import signal
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's stop, SLURM's time-limit warning
caught = False  # whether a Checkpoint catches SIGNALS in this process now
ignored_while_exiting: dict[int, Any] = {}  # SIGNALS a Checkpoint exiting for requeue ignores: what they were


def requeued() -> str | None:
    """The scheduler's word that this job runs again after a stop (``SLURM_RESTART_COUNT=1``,
    torchrun's ``TORCHELASTIC_RESTART_COUNT``), or None for a first run or a command run by hand."""
    for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT"):
        count = os.environ.get(name, "0")
        if count.isdigit() and int(count) > 0:
            return f"{name}={count}"
    return None


class WorkerInit:
    """A DataLoader ``worker_init_fn`` that leaves the stop signals to the loop, then calls the
    loader's own; a class, so that spawned and forkserver workers can unpickle it."""

    def __init__(self, init: Callable[[int], Any] | None) -> None:
        self.init = init

    def __call__(self, worker_id: int) -> None:
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # held back while it started (started())
        if self.init is not None:
            self.init(worker_id)


def shield_workers(loader: Any) -> None:
    """Gives ``loader``'s workers started from now on a :class:`WorkerInit`, while the signals are caught."""
    workers, init = getattr(loader, "num_workers", 0), getattr(loader, "worker_init_fn", _ABSENT)
    if caught and isinstance(workers, int) and workers > 0 and (init is None or callable(init)) and \
            init is not _ABSENT and not isinstance(init, WorkerInit):  # a DataLoader's, not any iterable's
        loader.worker_init_fn = WorkerInit(init)
        global _ending_at_exit
        if not _ending_at_exit:  # registered after multiprocessing's exit hook: runs before it
            atexit.register(_end_shielded_workers)
            _ending_at_exit = True


def started(loader: Any) -> Iterator[Any]:
    """``iter(loader)``, SIGNALS held back from this thread while its shielded workers start."""
    if not isinstance(getattr(loader, "worker_init_fn", None), WorkerInit) or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _end_shielded_workers() -> None:
    """Ends this process's daemonic children that ignore SIGTERM (shielded workers still running):
    multiprocessing's exit hook ends daemonic children with a SIGTERM and waits for them."""
    for process in multiprocessing.active_children():
        if process.daemon and _ignores_sigterm(process.pid):
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise on the worker's end
            process.kill()
            process.join(5.0)


def _ignores_sigterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            ignored = next(line for line in status if line.startswith("SigIgn:"))
    except (OSError, StopIteration):  # gone, or not Linux
        return False
    return bool(int(ignored.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


_ending_at_exit = False  # whether _end_shielded_workers is registered
_ABSENT = object()
