"""VisdomSink: takes records from the training thread and gets them onto a Visdom server.

The training thread only puts snapshots on a queue. One daemon worker does the rest: it reads
tensors, encodes images, appends every entry to the run log, keeps each window's bounded view
(monitor/windows.py) and, about every ``flush_every`` seconds, sends each changed window whole,
one request per window. Requests have timeouts; while the server is down or hung the worker
keeps draining the queue into the run log and the windows, retries with backoff and reports the
trouble once. When the server comes back without the run's env (a restart), every window is
sent again. Requests go through monitor/connection.py; window contents come from windows.py.

Memory: the windows are bounded (``points_per_trace``) and the queue is drained whether the
server answers or not, so an outage costs disk (the run log), not memory. The queue only grows
while the worker is behind: during one hung request (at most ``timeout``), or under a synthetic
loop that logs faster than the worker reads (~50k scalar records a second here).
"""
from __future__ import annotations

import atexit
import base64
import json
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections import deque
from numbers import Real
from pathlib import Path
from typing import Any, NamedTuple

import torch

from monitor.connection import Connection, DashboardError
from monitor.imaging import encode_grid
from monitor.records import Images, Layout, Points, Text
from monitor.runlog import RunLog
from monitor.windows import Window, Windows

_log = logging.getLogger("monitor")
_STOP = object()
_RECORDS = (Points, Images, Text, Layout)
# The worker works in short slices and pauses between them while a backlog remains: it shares
# the GIL with the training thread, and a long burst (or being preempted in one) makes a hook
# that releases the GIL (any tensor op) wait for it. Measured here: after a 5 s outage, a
# catch-up in one burst delayed step_end by up to 90 ms; in 2 ms slices, by 5-20 ms at most.
_SLICE = 0.002  # seconds of draining per cycle
_PAUSE = 0.0005  # seconds between slices while the queue is not empty
# Records do not wake the worker: it looks at the queue every _POLL seconds (at once for
# flush/sync/close). Waking it for each record cost the MLP benchmark's loop 200-300 us of
# worker CPU and GIL hand-offs per step; polling costs ~50-90 us (bench/README.md).
_POLL = 0.1
_open_sinks: "weakref.WeakSet[VisdomSink]" = weakref.WeakSet()


class FlushTiming(NamedTuple):
    """One flush that sent something: ``seconds`` is the wall time of its HTTP requests only."""

    when: float  # time.monotonic() at its end
    windows: int
    points: int
    seconds: float


class _Waiter:
    """A flush() or sync() call waiting on the worker; forgotten once its caller gave up."""

    __slots__ = ("event", "deadline", "durable")

    def __init__(self, timeout: float | None, durable: bool = False) -> None:
        self.event = threading.Event()
        self.deadline = time.monotonic() + (timeout if timeout is not None else math.inf)
        self.durable = durable


class VisdomSink:
    """Delivers a run's records to one Visdom env, without ever blocking or failing the loop.

        sink = VisdomSink(env="mnist", port=8097)       # or let Monitor(env="mnist") build it
        Monitor(callbacks, sink=sink)
        sink.close()                                    # delivers what is pending; windows stay

    ``env`` names the run's one env (default: ``run-<date>-<time>-<random>``). ``run_dir``
    (default ``runs/<env>``) keeps the run log; if it already holds one, the windows continue
    from it (``rewind_to`` first cuts it back to a checkpoint's position). Each window keeps at
    most ``points_per_trace`` points per trace on the server. Connection settings: see
    :class:`Connection`. ``timings`` keeps the request time of the latest 1000 flushes.
    """

    HEARTBEAT = 2.0  # seconds between checks that the server still holds the env

    def __init__(self, env: str | None = None, *, server: str | None = None, port: int | None = None,
                 base_url: str = "", username: str | None = None, password: str | None = None,
                 run_dir: str | os.PathLike | None = None, flush_every: float = 0.5,
                 points_per_trace: int = 1000, timeout: float = 5.0, rewind_to: int | None = None) -> None:
        if env is not None and (not isinstance(env, str) or not env.strip()):
            raise ValueError(f"env must be a non-empty str, got {env!r}")
        if isinstance(flush_every, bool) or not isinstance(flush_every, Real) or not flush_every > 0:
            raise ValueError(f"flush_every must be a number of seconds > 0, got {flush_every!r}")
        self.env = env or time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        self.connection = Connection(server, port, base_url=base_url, username=username,
                                     password=password, timeout=timeout)
        self.windows = Windows(points_per_trace)
        self.run_dir = Path(run_dir) if run_dir is not None else Path("runs") / self.env
        path = self.run_dir / RunLog.FILENAME
        # Windows that only the rewound part of the log wrote are closed on the server.
        self._stale = _windows_after(path, rewind_to) if rewind_to is not None else set()
        self.runlog = RunLog(path, rewind_to=rewind_to)
        self.flush_every = float(flush_every)
        self.delivered = True  # every window on the server equals ours
        self.timings: deque[FlushTiming] = deque(maxlen=1000)
        self._queue: deque = deque()  # append and popleft are atomic: no lock, no wake-up
        self._wake = threading.Event()
        self._closed = False
        self._stopping = False
        self._asked = False  # a flush() or close() arrived since the last send
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._next_send = 0.0
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = self.flush_every
        self._last_check = time.monotonic()
        self._close_deadline = math.inf
        self._reported: set[str] = set()
        self._load_runlog()
        self._worker = threading.Thread(target=self._run, name=f"monitor-sink-{self.env}", daemon=True)
        self._worker.start()
        _open_sinks.add(self)

    @property
    def url(self) -> str:
        """The dashboard page of this run's env."""
        return f"{self.connection.url}/env/{self.env}"

    @property
    def pending(self) -> int:
        """Records put but not yet taken by the worker (approximate)."""
        return len(self._queue)

    # --- the training thread's side ----------------------------------------------------------
    def put(self, record: Points | Images | Text | Layout) -> None:
        """Queues a record; never blocks. Records put after close() are dropped with a warning."""
        if not isinstance(record, _RECORDS):
            raise TypeError(f"record must be a monitor.records Points, Images, Text or Layout, "
                            f"got {type(record).__name__}")
        if self._closed:
            _report_once(self, "closed", "a record was logged after close() and is dropped")
            return
        self._queue.append(record)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything put so far is in the run log and on the server.

        Returns False if that did not happen within ``timeout`` seconds (the worker keeps trying).
        """
        if self._closed or not self._worker.is_alive():
            return self.delivered and self.pending == 0
        waiter = _Waiter(timeout)
        self._queue.append(waiter)
        self._wake.set()
        return waiter.event.wait(timeout) and self.delivered

    def sync(self, timeout: float | None = 10.0) -> int | None:
        """Waits until everything put so far is durable in the run log and returns the log's
        position (what a checkpoint rewinds to); None if that did not happen within ``timeout``."""
        if self._worker.is_alive():
            waiter = _Waiter(timeout, durable=True)
            self._queue.append(waiter)
            self._wake.set()
            if not waiter.event.wait(timeout):
                return None
        return self.runlog.position

    def close(self, timeout: float | None = 10.0) -> bool:
        """Delivers what is pending (for up to ``timeout`` seconds), then stops. Idempotent.

        Never deletes a window. Returns whether the server holds everything.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_deadline = time.monotonic() + (timeout if timeout is not None else math.inf)
                self._queue.append(_STOP)
                self._wake.set()
        self._worker.join(timeout)
        _open_sinks.discard(self)
        if not self.delivered and not self._reported_close():
            _log.warning("monitor: some windows of env %r did not reach %s; everything is in %s - "
                         "send it later with `monitor replay %s`", self.env, self.connection.url,
                         self.runlog.path, self.runlog.path)
        return self.delivered

    def _reported_close(self) -> bool:
        reported = "close" in self._reported
        self._reported.add("close")
        return reported

    # --- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not (self._stopping and (self.delivered or time.monotonic() >= self._close_deadline)):
                try:
                    self._cycle()
                except Exception as error:  # a bug or a full disk must not end delivery
                    _report_once(self, f"worker-{type(error).__name__}",
                                 f"the sink's worker hit {type(error).__name__}: {error}; it goes on")
                    time.sleep(min(self.flush_every, 0.5))
        finally:
            for close in (self.runlog.close, self.connection.close):
                try:
                    close()
                except Exception as error:
                    _report_once(self, "closing", f"closing the sink failed: {error}")
            for waiter in self._waiting:
                waiter.event.set()

    def _cycle(self) -> None:
        """Takes what is queued into the run log and the windows; sends when it is time."""
        timeout = max(0.0, self._next_send - time.monotonic())
        entries = self._drain(timeout)
        if entries:
            self.runlog.append(entries)
            self.windows.apply(entries)
        durable = [w for w in self._waiting if w.durable]
        if durable:
            self.runlog.sync()
        now = time.monotonic()
        for waiter in [w for w in self._waiting if w.durable or w.deadline < now]:
            waiter.event.set()  # a flush whose caller gave up no longer forces sends
            self._waiting.remove(waiter)
        # A new flush() or close() sends at once; while one waits, retries keep the flush pace.
        if now >= self._next_send or self._asked:
            self._asked = False
            self._send(force=bool(self._waiting) or self._stopping)
            self._next_send = time.monotonic() + self.flush_every
            if self.delivered:
                for waiter in self._waiting:
                    waiter.event.set()
                self._waiting.clear()
        if self._queue:
            time.sleep(_PAUSE)

    def _drain(self, timeout: float) -> list[dict[str, Any]]:
        """Takes queued items for one slice (looking again within ``timeout`` if there are none)."""
        entries: list[dict[str, Any]] = []
        if not self._queue and timeout > 0:
            self._wake.wait(min(timeout, _POLL))
            self._wake.clear()
        try:
            item = self._queue.popleft()
            ends = time.perf_counter() + _SLICE
            taken = 0
            while True:
                if item is _STOP:
                    self._stopping = self._asked = True
                elif isinstance(item, _Waiter):
                    self._waiting.append(item)
                    self._asked = self._asked or not item.durable
                else:
                    entry = self._entry(item)
                    if entry is not None:
                        entries.append(entry)
                taken += 1
                if taken % 16 == 0 and time.perf_counter() > ends:
                    break
                item = self._queue.popleft()
        except IndexError:
            pass
        return entries

    def _entry(self, record: Any) -> dict[str, Any] | None:
        """The run-log entry of a record, or None (reported once) for a record that cannot be read."""
        try:
            if not isinstance(record.window, str) or not record.window:
                raise TypeError(f"window must be a non-empty str, got {record.window!r}")
            if isinstance(record, Layout):
                json.dumps(record.opts, allow_nan=False)
                return {"k": "layout", "win": record.window, "opts": dict(record.opts)}
            x = record.x
            if type(x) not in (int, float):
                if isinstance(x, bool) or not isinstance(x, Real):
                    raise TypeError(f"x must be a finite number, got {x!r}")
                x = int(x) if isinstance(x, int) else float(x)
            if not math.isfinite(x):
                raise TypeError(f"x must be a finite number, got {x!r}")
            if isinstance(record, Points):
                values = record.values
                if callable(values):
                    values = values()
                if isinstance(values, torch.Tensor):
                    values = values.tolist()
                elif type(values) not in (list, tuple):
                    values = list(values)
                if len(values) != len(record.traces):
                    raise ValueError(f"{len(record.traces)} traces need as many values, got {len(values)}")
                y = {}
                for trace, value in zip(record.traces, values):
                    if type(value) is not float:
                        if isinstance(value, torch.Tensor):
                            value = value.item()
                        if isinstance(value, bool) or not isinstance(value, Real):
                            raise TypeError(f"the value of trace {trace!r} must be a number, got {value!r}")
                    y[trace if type(trace) is str else str(trace)] = float(value)
                return {"k": "points", "win": record.window, "x": x, "y": y}
            if isinstance(record, Images):
                captions = None if record.captions is None else list(record.captions)
                png = encode_grid(record.pixels, captions)
                return {"k": "image", "win": record.window, "x": x, "png": base64.b64encode(png).decode()}
            if not isinstance(record.html, str):
                raise TypeError(f"html must be a str, got {type(record.html).__name__}")
            return {"k": "text", "win": record.window, "x": x, "html": record.html}
        except Exception as error:  # a bad record must not stop the worker
            _report_once(self, f"record-{type(record).__name__}-{type(error).__name__}",
                         f"a {type(record).__name__} record for window {getattr(record, 'window', '?')!r} "
                         f"could not be read and is skipped: {type(error).__name__}: {error}")
            return None

    def _send(self, force: bool) -> None:
        """Sends every changed window whole; on trouble, keeps them all for the next try."""
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at and not force:
            return
        limit = self._close_deadline - now if self._stopping else None
        seconds, sent, points = 0.0, 0, 0
        try:
            if force or now - self._last_check >= self.HEARTBEAT:  # flush() and close() check too
                self._check_env(limit)
            for name in sorted(self._stale):
                self.connection.post("close", {"win": name, "eid": self.env}, timeout=limit)
                self._stale.discard(name)
            for window in self.windows.changed():
                message = window.message(self.env)
                if message is not None:
                    try:
                        self.connection.post(*message, timeout=limit)
                    except (TypeError, ValueError) as error:  # e.g. opts that are not JSON
                        _report_once(self, f"window-{window.name}",
                                     f"window {window.name!r} cannot be sent and is skipped: {error}")
                    else:
                        window.sent = True
                        seconds += self.connection.last_seconds
                        sent += 1
                        points += sum(len(t) for t in window.traces.values())
                window.changed = False
        except DashboardError as error:
            self._went_down(str(error))
            return
        finally:
            if sent:
                self.timings.append(FlushTiming(time.monotonic(), sent, points, seconds))
        if self._down_since is not None:
            _log.info("monitor: %s is reachable again; the dashboard is being brought up to date",
                      self.connection.url)
        self._down_since, self._backoff = None, self.flush_every
        self.delivered = not self.windows.changed()

    def _check_env(self, limit: float | None) -> None:
        """Notices a server that lost this env (restarted, env deleted) and resends every window.

        It asks about a window that was delivered and has not changed since: one whose content
        the server should hold.
        """
        self._last_check = time.monotonic()
        probe: Window | None = next((w for w in self.windows.by_name.values() if w.sent and not w.changed), None)
        if probe is not None and self.connection.post(
                "win_exists", {"win": probe.name, "eid": self.env}, timeout=limit) != "true":
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
            self._stale -= set(self.windows.by_name)
            self.delivered = not self.windows.changed() and not self._stale
        else:
            self.runlog.append([{"k": "run", "env": self.env, "time": time.time()}])


def _windows_after(path: Path, position: int) -> set[str]:
    """The windows that entries after byte ``position`` of a run log write to."""
    if not path.exists():
        return set()
    with open(path, "rb") as file:
        file.seek(position)
        tail = file.read()
    names = set()
    for line in tail.splitlines():
        try:
            names.add(json.loads(line)["win"])
        except (ValueError, KeyError, TypeError):
            pass  # the header, or a line torn by a crash
    return names


def _report_once(sink: VisdomSink, key: str, message: str) -> None:
    if key not in sink._reported:
        sink._reported.add(key)
        _log.warning("monitor: %s (reported once)", message)


@atexit.register
def _close_open_sinks() -> None:
    """A run that forgot close() still gets its last records into the run log and, briefly, sent."""
    for sink in list(_open_sinks):
        sink.close(timeout=2.0)
