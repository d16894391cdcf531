"""VisdomSink: takes records from the training thread and gets them onto a Visdom server.

The training thread only puts snapshots on a queue. One daemon worker does the rest: it reads
tensors, encodes images, appends every entry to the run log, keeps each window's bounded view
(monitor/windows.py) and, about every ``flush_every`` seconds, sends each changed window whole,
one request per window. Requests have timeouts; while the server is down or hung the worker
retries with backoff and reports the trouble once. When the server comes back without the
run's env (a restart), every window is sent again. This is the only module that talks to
Visdom.
"""
from __future__ import annotations

import atexit
import base64
import hashlib
import json
import logging
import os
import queue
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import requests
import torch

from monitor.records import Images, Layout, Points, Text
from monitor.runlog import RunLog
from monitor.windows import Windows

_log = logging.getLogger("monitor")
_STOP = object()
_open_sinks: "weakref.WeakSet[VisdomSink]" = weakref.WeakSet()


class DashboardError(Exception):
    """The Visdom server could not be reached, refused a request or answered an error."""


class Connection:
    """Posts Visdom's JSON requests with timeouts, logging in when credentials are given.

        connection = Connection("http://127.0.0.1", 8097)
        connection.post("win_exists", {"win": "loss", "eid": "mnist"})

    Settings not given come from ``VISDOM_SERVER_URL`` (may include the port), ``VISDOM_PORT``,
    ``VISDOM_USERNAME`` and ``VISDOM_PASSWORD``; the default is http://127.0.0.1:8097.
    """

    def __init__(self, server: str | None = None, port: int | None = None, *, base_url: str = "",
                 username: str | None = None, password: str | None = None, timeout: float = 5.0) -> None:
        server = server or os.environ.get("VISDOM_SERVER_URL") or "http://127.0.0.1"
        parsed = urlparse(server if "://" in server else f"http://{server}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server must be a URL like http://127.0.0.1, got {server!r}")
        port = port or os.environ.get("VISDOM_PORT") or parsed.port or 8097
        try:
            self.port = int(port)
        except ValueError:
            raise ValueError(f"port must be an int between 1 and 65535, got {port!r}") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be an int between 1 and 65535, got {port!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        self.url = f"{parsed.scheme}://{host}:{self.port}{base_url.rstrip('/')}"
        self.username = username or os.environ.get("VISDOM_USERNAME")
        self.password = password or os.environ.get("VISDOM_PASSWORD")
        if self.username and not self.password:
            raise ValueError("password must be given with username (or VISDOM_PASSWORD set), got none")
        self.timeout = timeout
        self._session: requests.Session | None = None

    def post(self, endpoint: str, message: dict[str, Any]) -> str:
        """Sends one request and returns the answer's text; raises DashboardError on any trouble."""
        body = json.dumps(message, allow_nan=False, separators=(",", ":"))
        try:
            answer = self._logged_in().post(f"{self.url}/{endpoint}", data=body, timeout=self.timeout)
        except requests.RequestException as error:
            self._session = None
            raise DashboardError(f"{self.url} is unreachable ({type(error).__name__})") from None
        if answer.status_code != 200:
            self._session = None
            raise DashboardError(f"{self.url}/{endpoint} answered HTTP {answer.status_code}")
        return answer.text

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _logged_in(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # a loopback dashboard must not go through an HTTP proxy
            if self.username:
                digest = hashlib.sha256(self.password.encode()).hexdigest()
                try:
                    answer = session.post(f"{self.url}/", timeout=self.timeout,
                                          json={"username": self.username, "password": digest})
                except requests.RequestException as error:
                    raise DashboardError(f"{self.url} is unreachable ({type(error).__name__})") from None
                if answer.status_code != 200:
                    raise DashboardError(f"{self.url} refused the login of {self.username!r} "
                                         f"(HTTP {answer.status_code}): check VISDOM_USERNAME/VISDOM_PASSWORD")
            self._session = session
        return self._session


class VisdomSink:
    """Delivers a run's records to one Visdom env, without ever blocking or failing the loop.

        sink = VisdomSink(env="mnist", port=8097)       # or let Monitor(env="mnist") build it
        Monitor(callbacks, sink=sink)
        sink.close()                                    # delivers what is pending; windows stay

    ``run_dir`` (default ``runs/<env>``) keeps the run log; if it already holds one, the windows
    continue from it (``rewind_to`` first cuts it back to a checkpoint's position). Each window
    keeps at most ``points_per_trace`` points per trace on the server.
    """

    def __init__(self, env: str | None = None, *, server: str | None = None, port: int | None = None,
                 base_url: str = "", username: str | None = None, password: str | None = None,
                 run_dir: str | os.PathLike | None = None, flush_every: float = 0.5,
                 points_per_trace: int = 1000, timeout: float = 5.0, rewind_to: int | None = None) -> None:
        if env is not None and (not isinstance(env, str) or not env.strip()):
            raise ValueError(f"env must be a non-empty str, got {env!r}")
        if not isinstance(flush_every, (int, float)) or flush_every <= 0:
            raise ValueError(f"flush_every must be a number of seconds > 0, got {flush_every!r}")
        self.env = env or time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        self.connection = Connection(server, port, base_url=base_url, username=username,
                                     password=password, timeout=timeout)
        self.windows = Windows(points_per_trace)
        self.run_dir = Path(run_dir) if run_dir is not None else Path("runs") / self.env
        self.runlog = RunLog(self.run_dir / RunLog.FILENAME, rewind_to=rewind_to)
        self.flush_every = float(flush_every)
        self.delivered = True  # every window on the server equals ours
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = flush_every
        self._last_check = 0.0
        self._close_deadline = float("inf")
        self._reported: set[str] = set()
        self._load_runlog()
        self._worker = threading.Thread(target=self._run, name=f"monitor-sink-{self.env}", daemon=True)
        self._worker.start()
        _open_sinks.add(self)

    @property
    def url(self) -> str:
        """The dashboard page of this run's env."""
        return f"{self.connection.url}/env/{self.env}"

    # --- the training thread's side ----------------------------------------------------------
    def put(self, record: Any) -> None:
        """Queues a record; never blocks. Records put after close() are dropped with a warning."""
        if self._closed:
            _report_once(self, "closed", "a record was logged after close() and is dropped")
            return
        self._queue.put(record)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything put so far is in the run log and on the server; False on timeout."""
        done = threading.Event()
        if self._closed or not self._worker.is_alive():
            return self.delivered
        self._queue.put(done)
        return done.wait(timeout) and self.delivered

    def sync(self, timeout: float | None = 10.0) -> int:
        """Waits until everything put so far is durable in the run log; returns the log position."""
        done = threading.Event()
        done.sync = True
        if self._worker.is_alive():
            self._queue.put(done)
            done.wait(timeout)
        return self.runlog.position

    def close(self, timeout: float | None = 10.0) -> bool:
        """Delivers what is pending (for up to ``timeout`` seconds), then stops. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
                self._queue.put(_STOP)
        self._worker.join(timeout)
        _open_sinks.discard(self)
        if not self.delivered:
            _log.warning("monitor: some windows of env %r did not reach %s; everything is in %s - "
                         "send it later with `monitor replay %s`", self.env, self.connection.url,
                         self.runlog.path, self.runlog.path)
        return self.delivered

    # --- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        waiting: list[threading.Event] = []
        next_send = time.monotonic()
        stopping = False
        while True:
            timeout = max(0.0, next_send - time.monotonic())
            entries, waiting_now, stopping = self._drain(timeout, stopping)
            waiting += waiting_now
            if entries:
                self.runlog.append(entries)
                self.windows.apply(entries)
            for event in [e for e in waiting if getattr(e, "sync", False)]:
                self.runlog.sync()
                event.set()
                waiting.remove(event)
            now = time.monotonic()
            if now >= next_send or waiting or stopping:
                self._send(force=bool(waiting) or stopping)
                next_send = now + self.flush_every
                if self.delivered:
                    for event in waiting:
                        event.set()
                    waiting = []
            if stopping and (self.delivered or time.monotonic() >= self._close_deadline):
                break
            if stopping:
                time.sleep(min(0.1, self.flush_every))
        self.runlog.close()
        self.connection.close()
        for event in waiting:
            event.set()

    def _drain(self, timeout: float, stopping: bool) -> tuple[list, list, bool]:
        """Takes what is queued (waiting up to ``timeout`` for the first item) and makes entries."""
        entries, waiting = [], []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    entry = self._entry(item)
                    if entry is not None:
                        entries.append(entry)
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return entries, waiting, stopping

    def _entry(self, record: Any) -> dict[str, Any] | None:
        try:
            if isinstance(record, Points):
                values = record.values
                if isinstance(values, torch.Tensor):
                    values = values.tolist()
                else:
                    values = [v.item() if isinstance(v, torch.Tensor) else v for v in values]
                return {"k": "points", "win": record.window, "x": record.x, "y": dict(zip(record.traces, values))}
            if isinstance(record, Images):
                from monitor.imaging import encode_grid
                png = encode_grid(record.pixels, record.captions)
                return {"k": "image", "win": record.window, "x": record.x, "png": base64.b64encode(png).decode()}
            if isinstance(record, Text):
                return {"k": "text", "win": record.window, "x": record.x, "html": record.html}
            if isinstance(record, Layout):
                return {"k": "layout", "win": record.window, "opts": record.opts}
            raise TypeError(f"records must be Points, Images, Text or Layout, got {type(record).__name__}")
        except Exception as error:  # a bad record must not stop the worker
            _report_once(self, f"record-{type(error).__name__}",
                         f"a {type(record).__name__} record for window "
                         f"{getattr(record, 'window', '?')!r} could not be read and is skipped: {error}")
            return None

    def _send(self, force: bool) -> None:
        """Sends every changed window whole; on trouble, keeps them for the next try."""
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at and not force:
            return
        changed = self.windows.changed()
        try:
            if not changed and now - self._last_check > 2.0:
                self._check_env()
            for window in changed:
                message = window.message(self.env)
                if message is not None:
                    self.connection.post(*message)
                window.changed = False
        except DashboardError as error:
            self._went_down(str(error))
            return
        if self._down_since is not None:
            _log.warning("monitor: %s is reachable again; the dashboard is being brought up to date",
                         self.connection.url)
        self._down_since, self._backoff = None, self.flush_every
        self.delivered = not self.windows.changed()

    def _check_env(self) -> None:
        """Notices a server that lost this env (restarted, env deleted) and resends every window."""
        self._last_check = time.monotonic()
        first = next(iter(self.windows.by_name), None)
        if first is not None and self.connection.post("win_exists", {"win": first, "eid": self.env}) != "true":
            self.windows.mark_all_changed()

    def _went_down(self, reason: str) -> None:
        self.delivered = False
        self.windows.mark_all_changed()  # what the server holds is unknown now
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            _log.warning("monitor: dashboard trouble: %s. Training goes on; retrying in the "
                         "background, and everything is kept in %s", reason, self.runlog.path)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, 10.0)

    def _load_runlog(self) -> None:
        """Continues the windows of an existing run log, or starts a new one with its header."""
        if self.runlog.position:
            self.windows.apply(RunLog.read(self.runlog.path, end=self.runlog.position))
            self.delivered = not self.windows.changed()
        else:
            self.runlog.append([{"k": "run", "env": self.env, "time": time.time()}])


def replay(path: str | os.PathLike, env: str | None = None, *, progress: Callable[[int], None] | None = None,
           points_per_trace: int = 1000, **connection: Any) -> str:
    """Sends a run log to a server, whole window by whole window; replaying twice changes nothing.

    Returns the env it filled (``env``, else the one named in the log). ``progress(n)`` is called
    as entries are read and as windows are sent.
    """
    windows = Windows(points_per_trace)
    for entry in RunLog.read(path):
        if entry.get("k") == "run":
            env = env or entry.get("env")
        windows.apply([entry])
        if progress:
            progress(1)
    if not env:
        raise ValueError(f"env must be given: the run log {path} names none")
    sender = Connection(**connection)
    for window in windows.by_name.values():
        message = window.message(env)
        if message is not None:
            sender.post(*message)
    sender.close()
    return env


def _report_once(sink: VisdomSink, key: str, message: str) -> None:
    if key not in sink._reported:
        sink._reported.add(key)
        _log.warning("monitor: %s (reported once)", message)


@atexit.register
def _close_open_sinks() -> None:
    """A run that forgot close() still gets its last records into the run log and, briefly, sent."""
    for sink in list(_open_sinks):
        sink.close(timeout=2.0)
