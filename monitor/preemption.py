"""A scheduler's stop signals and the DataLoader's worker processes.

    shield_workers(loader)   # in monitor.batches: its workers leave SIGTERM and SIGUSR1 to the loop

A scheduler (SLURM's pre-emption or ``scancel``, Kubernetes) signals every process of a job.
The Checkpoint callback catches SIGTERM and SIGUSR1 in the training process, saves at the step's
end and exits for requeue. A DataLoader worker would die at once instead (torch's worker turns a
SIGTERM not sent by its parent into its death, and SIGUSR1 kills by default), and the loader
would then raise in the loop before it saved. So while a Checkpoint catches them, the workers
of a loader iterated through ``monitor.batches`` ignore both: the loop shuts them down as it
exits, as it does at every epoch's end. Persistent workers outlive the loop; the interpreter's
exit would end them with ``multiprocessing``'s SIGTERM, which they ignore, and wait for them
forever: an exit hook shuts them down first, as the loader does.
"""
from __future__ import annotations

import atexit
import signal
import weakref
from typing import Any, Callable

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's stop, SLURM's time-limit warning
caught = False  # whether a Checkpoint catches SIGNALS in this process now


class WorkerInit:
    """A DataLoader ``worker_init_fn`` that leaves the stop signals to the loop, then calls the
    loader's own; a class, so that spawned and forkserver workers can unpickle it."""

    def __init__(self, init: Callable[[int], Any] | None) -> None:
        self.init = init

    def __call__(self, worker_id: int) -> None:
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if self.init is not None:
            self.init(worker_id)


def shield_workers(loader: Any) -> None:
    """Gives ``loader``'s workers started from now on a :class:`WorkerInit`, while the signals are caught."""
    workers, init = getattr(loader, "num_workers", 0), getattr(loader, "worker_init_fn", _ABSENT)
    if caught and isinstance(workers, int) and workers > 0 and (init is None or callable(init)) and \
            init is not _ABSENT and not isinstance(init, WorkerInit):  # a DataLoader's, not any iterable's
        loader.worker_init_fn = WorkerInit(init)
        if getattr(loader, "persistent_workers", False):
            if not _shielded:  # registered after multiprocessing's exit hook (torch imported it): runs before it
                atexit.register(_shut_down_persistent_workers)
            _shielded.add(loader)


def _shut_down_persistent_workers() -> None:
    """Ends the persistent workers of shielded loaders the way the loader does (they ignore SIGTERM)."""
    for loader in list(_shielded):
        shut_down = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
        if callable(shut_down):
            try:
                shut_down()
            except Exception:  # the interpreter is going: nothing to raise into
                pass


_shielded: "weakref.WeakSet[Any]" = weakref.WeakSet()  # loaders with persistent workers that ignore SIGTERM
_ABSENT = object()
