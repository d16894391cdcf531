"""replay: send a run log to a Visdom server, for a run trained without a dashboard or a lost env.

:func:`replay` sends one run log; :func:`rebuild` sends the log of every run under a folder
that no live process writes (finished or killed),
which is how ``monitor serve --runs runs/`` gives a restarted server its dashboards back.
"""
from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Any, Callable

from monitor import checks
from monitor.connection import Connection, DashboardError
from monitor.delivery import tagged
from monitor.imagestore import run_dir_of
from monitor.rundir import RunDir
from monitor.runlog import RunLog
from monitor.windows import Windows


def replay(path: str | os.PathLike, env: str | None = None, *,
           progress: Callable[[str, int, int], None] | None = None, points_per_trace: int = 1000,
           **connection: Any) -> str:
    """Sends a run log to a server, window by window, whole; replaying twice changes nothing.

        replay("runs/mnist/runlog.jsonl", port=8097)          # fills the env named in the log

    Returns the env it filled (``env``, else the one named in the log). ``connection`` takes
    :class:`Connection`'s arguments (server, port, username, ...). ``progress(stage, done, total)``
    is called while reading (stage "read", in bytes) and sending (stage "send", in windows).
    Raises DashboardError when the server cannot take a window.
    """
    given = env
    if env is not None:
        checks.name("env", env, path=True)
    sender = Connection(**connection)  # bad settings fail before a long read
    windows = Windows(points_per_trace, run_dir=run_dir_of(path))
    total = os.path.getsize(path)
    on_bytes = (lambda done: progress("read", done, total)) if progress else None
    run_id = run = head = None
    for entry in RunLog.read(path, progress=on_bytes):
        if entry.get("k") == "run":
            env = env if env is not None else entry.get("env")
            run_id = run_id or entry.get("run_id")
            run = run or {"id": run_id, "host": entry.get("host"), "pid": entry.get("pid")}  # as its sink tagged it
            head = head or entry
        windows.apply([entry])
    if (unread := windows.unread(path, head)) is not None:
        _log.warning("monitor: %s", unread)
    if not env:
        raise ValueError(f"env must be given: the run log {path} names none")
    if given is None:
        try:  # a log from elsewhere names what it likes: held to the rules of an env given here
            checks.name("env", env, path=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"the run log {path} names an env that cannot be used ({error}): pass one with "
                             f"--env (env=)") from None
        _refuse_an_earlier_run_into_the_current_one(Path(path), env, run_id)
    shown = windows.changed()  # in their order on the page, as the live run placed them
    try:
        for done, window in enumerate(shown, 1):
            for message in window.messages(env):  # first sends: nothing to close
                sender.post(*tagged(message, run))
            if progress:
                progress("send", done, len(shown))
    finally:
        sender.close()
    return env


_log = logging.getLogger("monitor")


def _refuse_an_earlier_run_into_the_current_one(path: Path, env: str, run_id: str | None) -> None:
    """A run log set aside in ``runs/ENV/earlier/`` would fill the env the folder's current run shows."""
    current = path.parent.parent / RunLog.FILENAME
    if path.parent.name != RunDir.EARLIER or not current.is_file():
        return
    header = next(iter(RunLog.read(current)), {})
    if header.get("env") == env and header.get("run_id") != run_id:
        raise ValueError(f"env must be given to replay an earlier run: env {env!r} shows the run of {current} "
                         f"now, which this would overwrite; for instance "
                         f"--env {shlex.quote(checks.fitted(env, ' ' + (run_id or 'earlier')[:8]))}")


def rebuild(runs: str | os.PathLike, **connection: Any) -> dict[str, str]:
    """Replays the run log of every run under ``runs`` (``runs/<env>/runlog.jsonl``, and in folders
    below, as SummaryWriter's ``runs/resnet/lr0.1``) into its env.

        rebuild("runs", port=8097)      # {"mnist": "rebuilt", "sweep-3": "live", ...}

    A live run (its process holds the folder) is left to its own sink, which resends its
    windows itself. Returns what happened to each env: "rebuilt", "live" or the trouble met;
    trouble with one run does not stop the others.
    """
    outcome: dict[str, str] = {}
    for path in sorted(Path(runs).rglob(RunLog.FILENAME)):
        name = str(path.parent.relative_to(runs))
        if RunDir(path.parent).is_live():
            outcome[name] = "live"
            continue
        try:
            outcome[replay(path, **connection)] = "rebuilt"
        except (DashboardError, ValueError, OSError) as error:
            outcome[name] = f"not rebuilt: {error}"
            _log.warning("monitor: the run log %s was not replayed: %s", path, error)
    return outcome
