"""replay: send a run log to a Visdom server, for a run trained without a dashboard or a lost env."""
from __future__ import annotations

import os
from typing import Any, Callable

from monitor import checks
from monitor.connection import Connection
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
    if env is not None:
        checks.name("env", env, path=True)
    sender = Connection(**connection)  # bad settings fail before a long read
    windows = Windows(points_per_trace)
    total = os.path.getsize(path)
    on_bytes = (lambda done: progress("read", done, total)) if progress else None
    for entry in RunLog.read(path, progress=on_bytes):
        if entry.get("k") == "run":
            env = env if env is not None else entry.get("env")
        windows.apply([entry])
    if not env:
        raise ValueError(f"env must be given: the run log {path} names none")
    messages = [m for m in (w.message(env) for w in windows.by_name.values()) if m is not None]
    try:
        for done, message in enumerate(messages, 1):
            sender.post(*message)
            if progress:
                progress("send", done, len(messages))
    finally:
        sender.close()
    return env
