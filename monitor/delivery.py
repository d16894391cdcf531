"""Delivery: the policy that gets a run's windows onto the Visdom server and keeps them there.

Each changed window is sent whole, one request per window (Visdom's append costs the server
more per point than a replace, and a replace is idempotent, so a retry never duplicates a
point). A server that does not answer is retried with backoff and reported once; a server that
lost the env (restarted, env deleted) is noticed by a heartbeat and gets every window again;
windows that only a rewound part of the run log wrote are closed. A window is paced by what
it costs: after a send, it waits at least ``interval``, ten times the request's time (so one
window takes at most about a tenth of the server) and a second per 30 KB (an open page redraws
a plot from scratch for every message: about 40 ms for a small one, 150 ms for a 161-layer
heatmap, on a busy 2-core laptop), so a large window from a deep model never crowds the
server or the browsers, while small windows still arrive within a second. Between flushes,
windows go one at a time, ``SPREAD`` apart: Visdom's page draws the messages that arrive
within 100 ms in one task, which several redraws would make long enough to freeze it. A flush
or a close sends everything at once. The HTTP is
:class:`monitor.connection.Connection`'s, the windows' content :class:`monitor.windows.Windows`'.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import deque
from typing import Any, Iterable, NamedTuple

from monitor.connection import Connection, DashboardError
from monitor.reports import Reports
from monitor.windows import Window, Windows

_log = logging.getLogger("monitor")

_SERVER_SHARE = 0.1  # of the server's time that one window may take, at most
_BYTES_PER_SECOND = 30_000  # of one window's messages, at most: a 90 KB window every 3 s
_SLOW_PANE = 20.0  # seconds between a window's sends, from its size, beyond which its lag is said
SPREAD = 0.15  # seconds between two windows' sends, unless a flush or a close asks for all at once
REOPEN = 1.0  # seconds a closed window waits before it is created again (see Delivery._reopen)
_GONE = "win does not exist"  # Visdom's answer to an append to a window it does not have
_VERIFY = 10.0  # seconds after its creation again that the heartbeat checks a window is still there


_PLOTS = ("line", "distribution", "pr_curve", "embedding", "mesh", "heatmap")  # the kinds drawn by Plotly


def tagged(message: tuple[str, dict[str, Any]], run: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The request with ``run`` (id, host, pid) in its plot's layout, Plotly's ``meta``: whose it is."""
    if run is not None and "layout" in message[1]:
        message[1]["layout"]["meta"] = {"monitor_run": run}
    return message


class FlushTiming(NamedTuple):
    """One send that delivered something: ``seconds`` is the wall time of its HTTP requests only."""

    when: float  # time.monotonic() at its end
    windows: int
    points: int
    seconds: float


class Delivery:
    """Brings the server's copy of an env up to date with ``windows``, whatever the server does.

        delivery = Delivery(Connection(port=8097), windows, "mnist", interval=0.5)
        delivery.send()             # on the sink's worker, about every ``interval`` seconds
        delivery.delivered          # True once the server holds every window as it is here

    ``stale`` names windows to close on the server (those only a rewound run log wrote).
    ``kept_in`` is where the records are safe meanwhile, for the outage warning. ``lock``, held
    while the windows are read or marked and never during a request, lets another thread apply
    entries to them meanwhile (the sink's worker, which must never wait on the server).
    ``run`` (its id, host and pid) is written into each plot's layout (``meta``); every
    ``owner_check`` seconds a window the server should hold as sent is read back, and one a
    run of another id wrote since is said once: two machines (or two ``MONITOR_HOME``s) running
    one env, which no lock on either can see.
    """

    def __init__(self, connection: Connection, windows: Windows, env: str, *, interval: float,
                 stale: Iterable[str] = (), reports: Reports | None = None, kept_in: object = None,
                 lock: Any = None, run: dict[str, Any] | None = None) -> None:
        self.connection, self.windows, self.env = connection, windows, env
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.interval = interval
        self.heartbeat = 2.0  # seconds between checks that the server still holds the env
        self.timings: deque[FlushTiming] = deque(maxlen=1000)  # the latest sends, for benchmarks
        self.reports = reports or Reports()
        self.kept_in = kept_in
        self._stale = set(stale) - set(windows.by_name)
        self._down_since: float | None = None
        self.failed_at = -math.inf  # when the latest request failed (time.monotonic)
        self._unreachable = False
        self._retry_at = 0.0
        self._backoff = interval
        self._last_check = time.monotonic()
        self.pacing: dict[str, float] = {}  # seconds each window waits after a send, by name
        self.more = False  # windows are due that this send left for the next, SPREAD later
        self._due: dict[str, float] = {}
        self._reopen_at: dict[str, float] = {}  # closed windows, by name: when they may be created again
        self._reopened: dict[str, float] = {}  # windows created again, by name: when
        self.run = run
        self.owner_check = 30.0  # seconds between reading back whether another run wrote this env
        self._owner_checked = time.monotonic()

    def send(self, force: bool = False, limit: float | None = None, settle: bool = False) -> None:
        """Sends every changed window whole; on trouble keeps them all for the next try.

        While the server is down, waits out the backoff unless ``force`` (a flush or a close
        asked). ``limit`` caps each request's timeout (a close's deadline). ``settle`` (a close,
        after which no heartbeat comes) also waits until the windows created again to keep the
        page's order are past a page's late close of them.
        """
        now = time.monotonic()
        if self._down_since is not None and now < self._retry_at and not force:
            return
        seconds, sent, points = 0.0, 0, 0
        self.more = False
        try:
            if force or now - self._last_check >= self.heartbeat:
                self._check_env(limit)
            for name in sorted(self._stale):
                self._close(name, limit)
                self._stale.discard(name)
            changed = self._placed_in_order(limit, reorder=not settle)
            if not force:  # new panes in page order; then the update due longest: each window gets its turn
                changed = [w for w in changed if not w.sent] + sorted(
                    (w for w in changed if w.sent), key=lambda w: self._due.get(w.name, 0.0))
            for window in changed:
                if not force and window.sent and now < self._due.get(window.name, 0.0):
                    continue  # paced: its latest state goes out when its turn comes
                if sent and not force and window.sent:
                    self.more = True  # one update per send, SPREAD apart: one redraw per page task
                    continue  # (new panes all go now, in their order on the page)
                with self._lock:
                    reopen = window.sent and window.must_reopen()
                if reopen:
                    self._reopen(window, limit)
                wait = self._reopen_at.get(window.name, 0.0) - time.monotonic()
                if wait > 0:
                    if not force:
                        self.more = True
                        continue
                    time.sleep(wait if limit is None else min(wait, limit))
                if self._reopen_at.pop(window.name, None) is not None:
                    self._reopened[window.name] = time.monotonic()
                with self._lock:
                    messages, version = window.messages(self.env), window.version
                    held = sum(len(t) for t in window.traces.values())
                if not messages:
                    with self._lock:
                        window.mark_skipped(version)
                    continue
                took, size, gone = 0.0, 0, False
                try:
                    for message in messages:
                        answer = self.connection.post(*tagged(message, self.run), timeout=limit)
                        took, size = took + self.connection.last_seconds, size + self.connection.last_bytes
                        if message[0] == "update" and answer == _GONE:  # closed on the page, or the env lost
                            gone = True
                            break
                except (TypeError, ValueError) as error:  # e.g. opts that are not JSON
                    self.reports.once(f"window-{window.name}", f"window {window.name!r} cannot be sent and "
                                                               f"is skipped: {error}")
                    with self._lock:
                        window.mark_skipped(version)
                    continue
                if gone:
                    with self._lock:
                        window.mark_closed()  # created whole at the next send
                    self.more = True
                    continue
                with self._lock:
                    window.mark_sent(version)
                self._pace(window.name, took, size)
                seconds += took
                sent += 1
                points += held
            if settle:
                self._verify_reopened(limit, settle=True)
        except DashboardError as error:
            # Visdom answers 500 for a window or env it lacks (the next try mends it); nothing at
            # all, another program on the port (404, 501) or a refused login (400) will not get better
            self._unreachable = error.status != 500
            self._went_down(str(error))
            return
        finally:
            if sent:
                self.timings.append(FlushTiming(time.monotonic(), sent, points, seconds))
        if self._down_since is not None:
            _log.warning("monitor: %s is reachable again; the dashboard is being brought up to date",
                      self.connection.url)
        self._down_since, self._backoff = None, self.interval

    @property
    def delivered(self) -> bool:
        """Whether the server holds every window as it is here (nothing changed since it took it)."""
        return self._down_since is None and not self._stale and \
            not any(window.changed for window in list(self.windows.by_name.values()))

    @property
    def unreachable(self) -> bool:
        """Whether the latest try found no Visdom server to wait for: nothing answering, another
        program on the port, a login refused (not Visdom's answer for an env it lost, which the
        next try mends)."""
        return self._down_since is not None and self._unreachable

    def _pace(self, name: str, seconds: float, size: int) -> None:
        """The window waits in proportion to what its requests cost: the server's time and bytes
        (a pane whose every update is an open page's download of megabytes: said once)."""
        self.pacing[name] = max(self.interval, seconds / _SERVER_SHARE, size / _BYTES_PER_SECOND)
        self._due[name] = time.monotonic() + self.pacing[name]
        if self.pacing[name] > _SLOW_PANE and size / _BYTES_PER_SECOND >= self.pacing[name]:
            self.reports.once(f"slow-{name}", f"window {name!r} is a {size / 2**20:.1f} MB message, sent at most "
                                              f"every {self.pacing[name]:.0f} s so that an open page keeps up: "
                                              f"what it shows lags the run (the run log has everything); smaller "
                                              f"or fewer images a grid (Images(count=16), a smaller size) "
                                              f"update it sooner")

    def _placed_in_order(self, limit: float | None = None, reorder: bool = True) -> list[Window]:
        """The changed windows, in page order; sent windows that a new one must precede are
        closed first, so that they are created again after it (Visdom adds a pane at the end).
        Not ``reorder`` (a close): new panes go at the end, since moving the others would hold
        the close for their creation again and a page's late close of them (2 s), and blank
        them on an open page (hparams or a test set's metrics logged as a run ends)."""
        with self._lock:
            changed = self.windows.changed()
            new = [w for w in changed if not w.sent]
            after = [w for w in self.windows.by_name.values() if w.sent and w.order > new[0].order] \
                if new and reorder else []
        for window in after:
            self._reopen(window, limit)
        if after:
            with self._lock:
                changed = self.windows.changed()
        return changed

    def _reopen(self, window: Window, limit: float | None) -> None:
        """Closes a window to create it again, ``REOPEN`` seconds later at the earliest.

        Visdom's page answers a close from the server with a close of its own, which the server
        obeys whenever it arrives: a window created again at once would be deleted by it. The
        heartbeat checks for a while that a window created again is still there.
        """
        self._close(window.name, limit)
        with self._lock:
            window.mark_closed()
        self._reopen_at[window.name] = time.monotonic() + REOPEN

    def _close(self, window: str, limit: float | None) -> None:
        """Closes a window on the server; one that is not there (a new env, a restart) is closed already."""
        try:
            self.connection.post("close", {"win": window, "eid": self.env}, timeout=limit)
        except DashboardError as error:
            if error.status != 500:  # Visdom answers 500 for a window or env it does not have
                raise

    def _check_env(self, limit: float | None) -> None:
        """Notices a server that lost this env (restarted, env deleted) and resends every window.

        It asks about a window that was delivered and has not changed since: one whose content
        the server should hold.
        """
        self._last_check = time.monotonic()
        self._verify_reopened(limit)
        with self._lock:
            probe: Window | None = next((w for w in self.windows.by_name.values() if w.sent and not w.changed), None)
        if probe is not None and self.connection.post(
                "win_exists", {"win": probe.name, "eid": self.env}, timeout=limit) != "true":
            with self._lock:
                self.windows.mark_all_changed()
        elif self.run is not None and self._last_check - self._owner_checked >= self.owner_check:
            self._owner_checked = self._last_check
            self._check_owner(limit)

    def _check_owner(self, limit: float | None) -> None:
        """Says once that another run wrote a window this one sent (the server's copy is the last
        run's to send it: changed here since or not)."""
        with self._lock:
            name = next((w.name for w in self.windows.by_name.values() if w.sent and w.kind in _PLOTS), None)
        if name is None:
            return
        try:
            shown = json.loads(self.connection.post("win_data", {"win": name, "eid": self.env}, timeout=limit))
            other = shown["content"]["layout"]["meta"]["monitor_run"]
        except (DashboardError, ValueError, LookupError, TypeError):  # closed on the page meanwhile; untagged
            return
        if isinstance(other, dict) and other.get("id") != self.run["id"]:
            self.reports.once("another run", f"env {self.env!r} on {self.connection.url} is drawn by another run "
                                             f"too (run {str(other.get('id'))[:8]} on {other.get('host')}, pid "
                                             f"{other.get('pid')}): their windows take turns; give each run an env "
                                             f"of its own (a second run of an env is refused only where both use "
                                             f"one MONITOR_HOME)")

    def _verify_reopened(self, limit: float | None, settle: bool = False) -> None:
        """Creates again the windows created again lately that a page's late close took.

        ``settle`` (a close, after which no heartbeat comes) first waits until each has been
        there ``REOPEN`` seconds, when a page's answer has arrived.
        """
        for name, when in list(self._reopened.items()):
            window = self.windows.by_name.get(name)
            if time.monotonic() - when > _VERIFY or window is None:
                del self._reopened[name]
                continue
            if settle:
                wait = when + REOPEN - time.monotonic()
                time.sleep(max(0.0, wait if limit is None else min(wait, limit)))
            if window.sent and self.connection.post(
                    "win_exists", {"win": name, "eid": self.env}, timeout=limit) != "true":
                with self._lock:
                    window.mark_closed()  # created again at the next send

    def _went_down(self, reason: str) -> None:
        with self._lock:
            self.windows.mark_all_changed()  # what the server holds is unknown now
        now = self.failed_at = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            _log.warning("monitor: dashboard trouble: %s. Training goes on; retrying in the "
                         "background, and everything is kept in %s", reason, self.kept_in)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, 10.0)
