"""Which folder shows in each env, on this machine: two runs' curves never mix in one env unseen.

Folders far apart can give one env: a SummaryWriter's ``tb`` in each working directory of a
Hydra sweep, ``/data/a/exp`` and ``/data/b/exp``, or a Monitor's ``env="mnist"`` started from
two places. The folder that last started a run in an env holds a claim on it, kept in
``$MONITOR_HOME/envs`` (default ``~/.monitor/envs``). A writer, which names its env after its
folder, takes the first name no other existing folder holds (``b_exp``); a Monitor, whose env
the loop names, takes its env over unless a live run of another folder holds it. A claim whose
folder is gone (deleted by hand or by ``monitor runs rm``) is free.

    env = claim(Path("/data/b/exp"), ["exp", "b_exp", "data_b_exp"])   # "b_exp" where /data/a/exp has "exp"
    other = take("mnist", Path("runs/mnist"), lock)   # None: taken, lock() called; else the live run's folder
    holder("mnist")                             # the folder that shows in env "mnist", if it is there
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Container, Iterator, Sequence

from monitor.atomic import write_atomic
from monitor.rundir import RunDir

_log = logging.getLogger("monitor")
_said_trouble = False


def claims_folder() -> Path:
    """``$MONITOR_HOME/envs``, default ``~/.monitor/envs``."""
    return Path(os.environ.get("MONITOR_HOME", Path.home() / ".monitor")).expanduser() / "envs"


def claim(folder: Path, names: Sequence[str], taken: Container[str] = ()) -> str:
    """The first of ``names`` that no other existing folder holds and that is not in ``taken``
    (this process's other writers' envs), claimed for ``folder`` (made if missing); past them
    all, the first name numbered (``exp (2)``)."""
    folder = folder.resolve()
    offered = [*names, *(f"{names[0]} ({number})" for number in range(2, 100))]
    with _claims() as store:
        if store is not None:
            folder.mkdir(parents=True, exist_ok=True)  # a claim holds while its folder is there
            for name in offered:
                other = _holder(store, name)
                if name not in taken and (other is None or other == folder or not other.is_dir()):
                    if other != folder:
                        _write(store, name, folder)
                    return name
    return next(name for name in offered if name not in taken)


def take(env: str, folder: Path, lock: Callable[[], None]) -> Path | None:
    """Claims ``env`` for ``folder`` and calls ``lock`` (which takes the folder for the run),
    unless another folder's run showing in ``env`` is live: returns that folder then. Two
    processes starting at once cannot both pass: the claims stay locked until ``lock`` returns."""
    folder = folder.resolve()
    with _claims() as store:
        other = _holder(store, env) if store is not None else None
        if other is not None and other != folder and other.is_dir() and RunDir(other).is_live():
            return other
        lock()
        if store is not None and other != folder:
            _write(store, env, folder)
    return None


def holder(env: str) -> Path | None:
    """The folder whose run last started in ``env``, if it is still there."""
    with _claims() as store:
        other = _holder(store, env) if store is not None else None
    return other if other is not None and other.is_dir() else None


@contextmanager
def _claims() -> Iterator[Path | None]:
    """The claims' folder, locked against the other processes of a sweep started at once; None
    where it cannot be kept (a read-only home), said once: then envs are as named."""
    global _said_trouble
    store = claims_folder()
    try:
        store.mkdir(parents=True, exist_ok=True)
        lock = open(store / ".lock", "a")
    except OSError as error:
        if not _said_trouble:
            _said_trouble = True
            _log.warning("monitor: cannot keep which folder shows in which env in %s (%s): runs of two folders "
                         "on this machine may show in one env", store, error)
        yield None
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield store


def _path(store: Path, env: str) -> Path:
    return store / (hashlib.sha1(env.encode()).hexdigest()[:24] + ".json")


def _holder(store: Path, env: str) -> Path | None:
    try:
        return Path(json.loads(_path(store, env).read_text())["folder"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or a claim cut short: free
        return None


def _write(store: Path, env: str, folder: Path) -> None:
    try:
        claimed = json.dumps({"env": env, "folder": str(folder)}).encode()
        write_atomic(_path(store, env), lambda file: file.write(claimed))
    except OSError:  # a full disk: the claim is not kept, the run goes on
        pass
