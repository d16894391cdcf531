"""Which folder shows in each env a SummaryWriter names, on this machine: folders named alike get envs apart.

A writer names its env after its log_dir, and folders far apart can give one name: ``tb`` in each
working directory of a Hydra sweep, ``/data/a/exp`` and ``/data/b/exp``. Drawn in one env, their
curves would mix. The first folder to show in an env keeps it, by a claim kept in
``$MONITOR_HOME/envs`` (default ``~/.monitor/envs``); another folder takes the next name it is
offered (the writer offers the folder's name with more of its path). A claim whose folder is gone
(deleted by hand or by ``monitor runs rm``) is free again.

    env = claim(Path("/data/b/exp"), ["exp", "b_exp", "data_b_exp"])   # "b_exp" where /data/a/exp has "exp"
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Container, Sequence

from monitor.atomic import write_atomic

_log = logging.getLogger("monitor")
_said_trouble = False


def claims_folder() -> Path:
    """``$MONITOR_HOME/envs``, default ``~/.monitor/envs``."""
    return Path(os.environ.get("MONITOR_HOME", Path.home() / ".monitor")).expanduser() / "envs"


def claim(folder: Path, names: Sequence[str], taken: Container[str] = ()) -> str:
    """The first of ``names`` that no other existing folder claims and that is not in ``taken``
    (this process's other writers' envs), claimed for ``folder``; past them all, the first name
    numbered (``exp (2)``). Where the claims cannot be kept (a read-only home), ``taken`` alone decides."""
    folder = folder.resolve()
    numbered = (f"{names[0]} ({number})" for number in range(2, 1_000_000))
    try:
        folder.mkdir(parents=True, exist_ok=True)  # a claim holds while its folder is there
        store = claims_folder()
        store.mkdir(parents=True, exist_ok=True)
        with open(store / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the processes of a sweep started at once
            for name in (*names, *numbered):
                if name in taken:
                    continue
                path = store / (hashlib.sha1(name.encode()).hexdigest()[:24] + ".json")
                holder = _holder(path)
                if holder is not None and holder != folder and holder.is_dir():
                    continue
                if holder != folder:
                    write_atomic(path, lambda file: file.write(json.dumps({"env": name, "folder": str(folder)}).encode()))
                return name
    except OSError as error:
        global _said_trouble
        if not _said_trouble:
            _said_trouble = True
            _log.warning("monitor: cannot keep which folder shows in which env in %s (%s): two log_dirs named "
                         "alike on this machine may show in one env", claims_folder(), error)
    return next(name for name in (*names, *numbered) if name not in taken)


def _holder(path: Path) -> Path | None:
    try:
        return Path(json.loads(path.read_text())["folder"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or a claim cut short: free
        return None
