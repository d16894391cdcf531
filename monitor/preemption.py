"""A scheduler's stop signals and the DataLoader's worker processes.

    shield_workers(loader)   # in monitor.batches: its workers leave SIGTERM and SIGUSR1 to the loop

A scheduler (SLURM's pre-emption or ``scancel``, Kubernetes) signals every process of a job.
The Checkpoint callback catches SIGTERM and SIGUSR1 in the training process, saves at the step's
end and exits for requeue. A DataLoader worker would die at once instead (torch's worker turns a
SIGTERM not sent by its parent into its death, and SIGUSR1 kills by default), and the loader
would then raise in the loop before it saved. So while a Checkpoint catches them, the workers
of a loader iterated through ``monitor.batches`` ignore both, save a SIGTERM from the loop's process:
the loop shuts them down as it exits, as it does at every epoch's end, and at the interpreter's
exit ``multiprocessing`` ends persistent workers with a SIGTERM of its own.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a scheduler's stop, SLURM's time-limit warning
caught = False  # whether a Checkpoint catches SIGNALS in this process now


class WorkerInit:
    """A DataLoader ``worker_init_fn`` that leaves the stop signals to the loop, then calls the
    loader's own; a class, so that spawned and forkserver workers can unpickle it."""

    def __init__(self, init: Callable[[int], Any] | None) -> None:
        self.init = init
        self.loop = os.getpid()  # the training process (a forkserver worker's parent is the forkserver)

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below alone
        threading.Thread(target=_end_on_loop_s_sigterm, args=(self.loop,), name="monitor-sigterm",
                         daemon=True).start()
        if self.init is not None:
            self.init(worker_id)


def _end_on_loop_s_sigterm(loop: int) -> None:
    """Ends the worker on a SIGTERM the training process sent, as torch's worker does on its
    parent's; ignores anyone else's."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == loop:
            os._exit(0)


def shield_workers(loader: Any) -> None:
    """Gives ``loader``'s workers started from now on a :class:`WorkerInit`, while the signals are caught."""
    workers, init = getattr(loader, "num_workers", 0), getattr(loader, "worker_init_fn", _ABSENT)
    if caught and isinstance(workers, int) and workers > 0 and (init is None or callable(init)) and \
            init is not _ABSENT and not isinstance(init, WorkerInit):  # a DataLoader's, not any iterable's
        loader.worker_init_fn = WorkerInit(init)


_ABSENT = object()
