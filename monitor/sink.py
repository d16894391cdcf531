"""VisdomSink: takes records from the training thread and gets them onto a Visdom server.

The training thread only puts snapshots on a queue. One daemon worker does the rest: it turns
records into run-log entries (monitor/entries.py owns that schema), appends them to the run log,
keeps each window's bounded view (monitor/windows.py) and, about every ``flush_every`` seconds,
hands the changed windows to the delivery policy (monitor/delivery.py: requests with timeouts,
backoff while the server is down, every window again after it lost the env). This module keeps
the queue, the worker and the callers waiting on it (``flush``, ``sync``, ``close``).

Memory: the windows are bounded (``points_per_trace``) and the queue is drained whether the
server answers or not, so an outage costs disk (the run log), not memory. The queue only grows
while the worker is behind: during one hung request (at most ``timeout``), or under a synthetic
loop that logs faster than the worker reads (~50k scalar records a second here).
"""
from __future__ import annotations

import atexit
import math
import os
import secrets
import shlex
import socket
import sys
import logging
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

from monitor import checks
from monitor.connection import Connection
from monitor.delivery import SPREAD, Delivery, FlushTiming
from monitor.records import (Embedding, Histogram, Hparams, ImageGrid, Layout, Matrix, Mesh, Points, PrCurve,
                             RunEnd, StepMark, Text, interactive)
from monitor.reports import Reports
from monitor.env_claims import take
from monitor.rundir import RunDir, RunInUseError
from monitor.entries import encode, header, resumes_at, windows_after
from monitor.imagestore import ImageStore
from monitor.runlog import RunLog
from monitor.windows import Backwards, Windows

__all__ = ["FlushTiming", "VisdomSink"]

_log = logging.getLogger("monitor")
_STOP = object()
RECORDS = (Points, ImageGrid, Text, Layout, Histogram, PrCurve, Embedding, Hparams, RunEnd, Mesh, StepMark, Matrix)
# Records wait in a sink's queue as plain tuples, (kind, *fields), the kind a number: the garbage
# collector keeps tracking a NamedTuple however plain its fields, but stops tracking a tuple of
# numbers and strings once it sees it. NamedTuples that waited a tenth of a second for the
# worker went through the young generations into the oldest, and its full collections, over
# everything the process holds, came every few hundred steps of a loop of many add_scalar calls
# (bench/README.md, "What the numbers say"). They cross a pipe so too (pickle reduces a
# NamedTuple through Python, several times a tuple's cost).
KIND = {kind: number for number, kind in enumerate(RECORDS)}
RUN_END = KIND[RunEnd]
IMAGE = KIND[ImageGrid]
# The worker works in short slices and pauses between them while a backlog remains: it shares
# the GIL with the training thread, and a long burst (or being preempted in one) makes a hook
# that releases the GIL (any tensor op) wait for it. Measured here: after a 5 s outage, a
# catch-up in one burst delayed step_end by up to 90 ms; in 2 ms slices, by 5-20 ms at most.
_SLICE = 0.002  # seconds of draining per cycle
_PAUSE = 0.0005  # seconds between slices while the queue is not empty
# Records do not wake the worker: it looks at the queue every _POLL seconds (at once for
# flush/sync/close, and an image grid: hurry()). Waking it for each record cost the MLP
# benchmark's loop 200-300 us of worker CPU and GIL hand-offs per step; polling costs ~50-90 us
# (bench/README.md).
_POLL = 0.1
MANY_WINDOWS = 100  # in one env: said once past it (a page slows down drawing more panes)
open_sinks: "weakref.WeakSet[Any]" = weakref.WeakSet()  # sinks of this process not closed yet
_ran_here: set[Path] = set()  # the run folders this process has had a run in
_told_set_aside: set[Path] = set()  # those of them a new run set aside a run in, said once
os.register_at_fork(after_in_child=open_sinks.clear)  # a fork neither owns nor closes them


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
    (default ``runs/<env>``) keeps the run log (:class:`monitor.rundir.RunDir`): a new run sets
    the log of the env's earlier run aside and closes its windows; ``rewind_to`` (a checkpoint's
    position in the log) continues the run instead, cut back to that point; ``continues`` (the
    run id of that run, where known) keeps another run's log of the env whole: a later run of the
    env (a cross-validation's next fold) is set aside and the run's own log brought back from
    ``earlier/``, or, where it is not there, the curves start over. An env shows one
    live run: a live run of another folder in it is refused, by name (:mod:`monitor.env_claims`),
    as is a second live process on the same folder. Each window keeps at
    most ``points_per_trace`` points per trace on the server. ``server``, ``port``,
    ``base_url``, ``username``, ``password`` and ``timeout`` (per request) are
    :class:`Connection`'s. ``timings`` keeps the request time of the latest 1000 sends. ``pid``
    is the training process's, where that is another (:class:`monitor.SinkProcess` runs this
    sink in a process of its own): the run log's header and the run folder's lock name it.
    """

    def __init__(self, env: str | None = None, *, server: str | None = None, port: int | None = None,
                 base_url: str = "", username: str | None = None, password: str | None = None,
                 run_dir: str | os.PathLike | None = None, flush_every: float = 0.5,
                 points_per_trace: int = 1000, timeout: float = 5.0, rewind_to: int | None = None,
                 continues: str | None = None, pid: int | None = None) -> None:
        if env is not None:
            checks.name("env", env, path=True)
        self.flush_every = checks.seconds("flush_every", flush_every)
        self.env = env or default_env()
        self.connection = Connection(server, port, base_url=base_url, username=username,
                                     password=password, timeout=timeout)
        self.run_dir = Path(run_dir).expanduser() if run_dir is not None else Path("runs") / self.env
        self.windows = Windows(points_per_trace, run_dir=self.run_dir)
        if rewind_to is not None:
            checks.integer("rewind_to", rewind_to, minimum=0)
        self.made_in = threading.current_thread()  # a newer sink of its folder made in another thread is refused
        self.resumed = bool(rewind_to)  # a checkpoint's run going on: a curve that goes back is a counter's
        replace_earlier(self.run_dir, rewind_to, continues)
        self.folder = RunDir(self.run_dir)
        self.run_id = uuid.uuid4().hex
        self.pid = pid or os.getpid()
        other = take(self.env, self.run_dir, lambda: self.folder.lock(self.run_id, self.env, self.pid))
        if other is not None:
            raise RunInUseError(f"env {self.env!r} must have one live run at a time, got another one writing to "
                                f"{other}; stop it, or use another env")
        try:
            stale = self._open_runlog(rewind_to, continues)
        except BaseException:
            self.folder.unlock()
            raise
        self.reports = Reports()
        self._windows_lock = threading.Lock()  # the worker applies entries while the sender reads the windows
        self.delivery = Delivery(self.connection, self.windows, self.env, interval=self.flush_every,
                                 stale=stale, reports=self.reports, kept_in=self.runlog.path,
                                 lock=self._windows_lock,
                                 run={"id": self.run_id, "host": socket.gethostname(), "pid": self.pid})
        self._queue: deque = deque()  # append and popleft are atomic: no lock, no wake-up
        self._wake = threading.Event()
        self._closed = False
        self.replaced: str | None = None  # "continued" or "set aside" by a newer sink of its run folder in this process
        self.ending: RunEnd | None = None  # how its run ended, once at train_end: what replacing it records
        self._stopping = False
        self._ended_as: tuple | None = None  # the latest record taken, if a RunEnd: its status and error
        self.missing_from_runlog = 0  # records the run log could not take (a full disk)
        self.images_taken: Counter[str] = Counter()  # image grids encoded, by window (Log.images_waiting)
        self._asked = False  # close() arrived since the last send: the sender sends at once
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []  # the worker's: drained this cycle
        self._went_back: list[Backwards] = []  # windows that went back, said together once a second passes
        self._went_back_at = 0.0
        self._flushes: list[_Waiter] = []  # the sender's: flushes whose records are in the windows
        self._next_send = 0.0
        self._close_deadline = math.inf
        self._close_asked = math.inf  # when close() was called
        self._logged = threading.Event()  # set once everything put before close() is in the run log
        self._send_wake = threading.Event()
        # Two threads: the worker writes the run log and the windows (and answers a checkpoint's
        # sync at once), the sender brings the server up to date; a server that hangs a request
        # (stopped, overloaded) holds up only the sender.
        self._worker = threading.Thread(target=self._run, name=f"monitor-sink-{self.env}", daemon=True)
        self._sender = threading.Thread(target=self._send_all, name=f"monitor-send-{self.env}", daemon=True)
        self._worker.start()
        self._sender.start()
        open_sinks.add(self)

    def _open_runlog(self, rewind_to: int | None, continues: str | None = None) -> set[str]:
        """Continues the run (``rewind_to`` > 0) or starts a new one; returns the windows to close."""
        path = self.folder.log_path
        other: set[str] = set()  # the windows of a later run of the env, set aside for the run continued
        if rewind_to and continues is not None and self.folder.run_id() not in (None, continues):
            kept = self.folder.earlier_log(continues)
            if kept is None:
                _log.warning("monitor: the run log %s is another run's, and run %s continued from a checkpoint is not "
                             "among the env's earlier runs: the curves of env %r start over from here", path,
                             continues, self.env)
                rewind_to = None
            else:
                later = self.folder.bring_back(kept)
                _log.info("monitor: env %r continues run %s; the run since is kept in %s", self.env, continues, later)
                other = windows_after(later, 0) if later is not None else set()
        size = path.stat().st_size if path.is_file() else 0
        if rewind_to and size < rewind_to:  # moved, deleted, or another working directory
            held = f"holds {size} bytes" if path.is_file() else "is not there (moved or deleted)"
            _log.warning("monitor: the run log %s %s, the checkpoint continues it at byte %d: the curves of env %r "
                         "start over from the checkpoint's step, their points before it gone from the dashboard",
                         path, held, rewind_to, self.env)
            rewind_to = None
        if rewind_to:  # a resume: the run goes on, from its checkpoint's position in the log
            checkpoint, (rewind_to, unmarked) = rewind_to, resumes_at(path, rewind_to)  # the step's rest stays
            dropped = windows_after(path, rewind_to)  # before the log is cut there
            self.runlog = RunLog(path, rewind_to=rewind_to)
            if unmarked:
                self.runlog.append([encode(StepMark("continues", checkpoint))])
            entries = RunLog.read(path, end=self.runlog.position)
            head = next(entries, {})
            self.run_id = head.get("run_id") or self.run_id
            self.windows.apply(entries)
            if (unread := self.windows.unread(path, head)) is not None:
                _log.warning("monitor: %s", unread)
            self.images = ImageStore(self.run_dir, self.run_id)
            self.images.restore({w.name: w.history[-1]["n"] if w.history else 0
                                 for w in self.windows.by_name.values() if w.kind == "history"})
            return dropped | (other - set(self.windows.by_name))
        if continues is not None:  # a continued run whose log is gone: its curves start over, under its id
            self.run_id = continues
        earlier = self.folder.set_aside()  # a new run: the env's earlier one is kept aside, its windows closed
        if earlier is not None and RunLog.ended(earlier):
            # Said where another process ran it (a script run again: its curves leave the page); one
            # this process ran before is said by replace_earlier, with advice for a sweep.
            said = _log.info if next(RunLog.read(earlier), {}).get("pid") == self.pid else _log.warning
            said("monitor: env %r starts a new run; the earlier run's log is kept in %s (monitor runs --earlier "
                 "lists it, monitor replay shows it again)", self.env, earlier)
        elif earlier is not None:  # a re-run of a killed script that meant to go on learns it starts over
            _log.warning("monitor: env %r starts a new run from step 0; the earlier run stopped without ending "
                         "(killed) and is not continued, as no checkpoint of it was found to resume from "
                         "(Checkpoint(..., resume=True) writes them: this run had none yet, or none was asked for); "
                         "its log is kept in %s", self.env, earlier)
        self.runlog = RunLog(path)
        self.runlog.append([header(self.env, self.run_id, self.pid, self.connection.url)])
        self.images = ImageStore(self.run_dir, self.run_id)
        return windows_after(earlier, 0) if earlier is not None else set()

    @property
    def url(self) -> str:
        """The dashboard page of this run's env."""
        return f"{self.connection.url}/env/{quote(self.env, safe='')}"

    @property
    def pending(self) -> int:
        """Records put but not yet taken by the worker (approximate)."""
        return len(self._queue)

    @property
    def position(self) -> int:
        """The run log's size in bytes: what a checkpoint taken now rewinds to, once synced."""
        return self.runlog.position

    @property
    def delivered(self) -> bool:
        """Whether the server holds every window as this sink has it."""
        return self.delivery.delivered

    @property
    def timings(self):
        """The latest sends (:class:`FlushTiming`), oldest first."""
        return self.delivery.timings

    # --- the training thread's side ----------------------------------------------------------
    def __reduce__(self) -> Any:
        raise not_sent_elsewhere(self.env)

    def put(self, record: Points | ImageGrid | Text | Layout | Histogram | PrCurve | Embedding | Hparams) -> None:
        """Queues a record; never blocks. Records put after close() are dropped with a warning."""
        item = queued(record)
        if self._closed:
            if item[0] == RUN_END:  # its owner closing after the sink was: the log says how it ended
                return
            self.reports.once("closed", "a record was logged after close() and is dropped" + (
                f": a newer monitor of env {self.env!r} in this process took its run folder" if self.replaced else ""))
            return
        self._queue.append(item)

    def hurry(self) -> None:
        """Has the worker look at the queue now, not at its next poll: an image grid waits in it."""
        self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything put so far is in the run log and on the server.

        Returns False if that did not happen within ``timeout`` seconds, or at once when the
        server could not be reached (the worker keeps trying).
        """
        if self._closed or not self._sender.is_alive():
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

        Everything put before it is in the run log when it returns, however short ``timeout``:
        the timeout bounds the sending. A server that does not answer gets one try, not the
        whole ``timeout``. Never deletes a window. Returns whether the server holds everything.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_asked = time.monotonic()
                self._close_deadline = self._close_asked + (timeout if timeout is not None else math.inf)
                self._queue.append(_STOP)
                self._wake.set()
        started = time.monotonic()
        self._logged.wait()  # a local append: even a backlog of thousands of records takes well under a second
        self._sender.join(None if timeout is None else max(0.0, timeout - (time.monotonic() - started)))
        delivered = self.delivered and not self._queue
        if self.missing_from_runlog:
            self.reports.once("close-runlog", f"{self.missing_from_runlog} records of env {self.env!r} could not be "
                                              f"written to {self.runlog.path} (a full disk?)" +
                              ("" if delivered else f"; some were not confirmed by {self.connection.url} either"))
        elif not delivered:
            self.reports.once("close", f"some windows of env {self.env!r} were not confirmed by {self.connection.url} "
                                       f"(down, or too slow to answer in time); "
                                       + self._where_to_replay())
        return delivered

    def _where_to_replay(self) -> str:
        if self.replaced == "continued":
            return "the newer monitor of the env continues this run from its checkpoint, and sends it"
        if self.replaced:  # set aside by the run that replaced it, under its run id: replayed into an env apart
            kept = self.folder.path / RunDir.EARLIER / f"{self.run_id}.jsonl"
            return (f"everything is in {kept} - send it later with `monitor replay {shlex.quote(str(kept))} --env "
                    f"{shlex.quote(checks.fitted(self.env, '-' + self.run_id[:8]))}{self.connection.cli_options}`"
                    f"{self._login_note()}")
        return (f"everything is in {self.runlog.path} - send it later with "
                f"`monitor replay {shlex.quote(str(self.runlog.path))}{self.connection.cli_options}` (a sweep's "
                f"runs at once: `monitor replay {shlex.quote(str(self.folder.path.parent))}"
                f"{self.connection.cli_options}`)"
                f"{self._login_note()}")

    def _login_note(self) -> str:
        return " (the server's login in VISDOM_USERNAME and VISDOM_PASSWORD)" if self.connection.username else ""

    def _join(self, timeout: float | None) -> None:
        """Waits for the worker and the sender to end (the run folder is free then)."""
        self._worker.join(timeout)
        self._sender.join(timeout)

    # --- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        """The worker: what is put goes into the run log and the windows, until close()."""
        try:
            while not self._logged.is_set():
                try:
                    self._cycle()
                except Exception as error:  # a bug or a full disk must not end delivery
                    self.reports.once(f"worker-{type(error).__name__}",
                                      f"the sink's worker hit {type(error).__name__}: {error}; it goes on")
                    time.sleep(min(self.flush_every, 0.5))
        finally:
            self._logged.set()
            self._send_wake.set()

    def _cycle(self) -> None:
        """Takes what is queued into the run log and the windows; answers syncs, hands flushes on."""
        entries = self._drain(_POLL)
        if entries:
            try:
                self.runlog.append(entries)
            except OSError as error:  # a full disk: the dashboard still gets them
                self.missing_from_runlog += len(entries) - self.runlog.append_what_fits(entries)
                self.reports.once("runlog", f"the run log {self.runlog.path} could not be written ({error}): "
                                            f"what is logged from now on may be missing from it; the dashboard "
                                            f"still gets it")
            if self.resumed and "resumed hparams" not in self.reports.seen:
                self._say_if_resumed_with_other_hparams(entries)  # before the pane takes them
            with self._windows_lock:
                went_back = [p for p in self.windows.apply(entries)
                             if ("backwards", p.window) not in self.reports.seen]
            if went_back:  # once a window; those going back within a second of each other in one line
                self.reports.seen.update(("backwards", p.window) for p in went_back)
                self._went_back += went_back
                self._went_back_at = time.monotonic()
        if self._went_back and (self._stopping or time.monotonic() - self._went_back_at > 1.0):
            went_back, self._went_back = self._went_back, []
            self.reports.once(("backwards", went_back[0]), Backwards.said(went_back) + (
                "; in a run resumed from a checkpoint, an x the loop counts itself (an episode number) starts "
                "over unless the checkpoint keeps it: Checkpoint(extras=lambda: {'episode': episode}) and "
                "checkpoint.start.extras; a SummaryWriter script run again from its checkpoint of step N gives "
                "SummaryWriter(log_dir, purge_step=N)" if self.resumed else ""))
        if entries:
            if "not finite" not in self.reports.seen:
                self._say_if_not_finite(entries)
            for name, (first, then) in self.windows.mixed.items():
                self.reports.once(("mixed", name), f"window {name!r} was given {_KINDS.get(first, first)} and then "
                                                   f"{_KINDS.get(then, then)}: its pane shows one kind, so one of "
                                                   f"them is not on the dashboard (the run log keeps both); give "
                                                   f"each its own window name")
            if len(self.windows.by_name) > MANY_WINDOWS:
                self.reports.once("many windows", many_windows(self.env, len(self.windows.by_name)))
        waiting, self._waiting = self._waiting, []
        if any(w.durable for w in waiting):
            self.runlog.sync()
        flushes = [w for w in waiting if not w.durable]
        for waiter in waiting:
            if waiter.durable:
                waiter.event.set()
        if flushes or self._stopping:
            with self._lock:
                self._flushes += flushes
            if self._stopping:
                self._logged.set()
            self._send_wake.set()
        if self._queue:
            time.sleep(_PAUSE)

    def _say_if_resumed_with_other_hparams(self, entries: list[dict[str, Any]]) -> None:
        """Once: a run continued from its checkpoint given hyper-parameters other than those it
        began with (a script run again with another lr or batch size, resume on): one run's
        record shows the new ones, which only part of it trained with."""
        for entry in entries:
            pane = self.windows.by_name.get(entry.get("win")) if entry["k"] == "hparams" else None
            if pane is None or entry.get("trial") is not None:
                continue
            rows = [row["hparams"] for row in pane.trials.values() if row.get("trial") is None]
            before = rows[-1] if rows else {}
            changed = [f"{name}: {before[name]!r} then {value!r}" for name, value in entry["hparams"].items()
                       if name in before and before[name] != value]
            if not changed:  # the continued run's first record: a later phase's changes are its own
                self.reports.seen.add("resumed hparams")
                return
            self.reports.once("resumed hparams", f"the run continued from its checkpoint was given other "
                              f"hyper-parameters than it began with ({'; '.join(changed[:4])}): its record shows "
                              f"the new ones from here, though what the checkpoint put back (weights, the "
                              f"optimizer's rates) trains on as saved; a run of the new ones is a new run, "
                              f"Checkpoint(..., fresh=True)")
            return

    def _say_if_not_finite(self, entries: list[dict[str, Any]]) -> None:
        """Once a run: the first value logged that is not finite (a loss gone inf), which a
        window draws as a gap and only its legend's title counts. Not a gradient norm's: a
        GradScaler's skipped step has one by design."""
        for entry in entries:
            if entry["k"] != "points":
                continue
            for trace, y in entry["y"].items():
                if type(y) is float and not math.isfinite(y):
                    window = self.windows.by_name.get(entry["win"])
                    if window is None or window.opts.get("steps_of"):
                        break
                    self.reports.once("not finite", f"window {entry['win']!r} trace {trace!r} got {y} at "
                                                    f"{window.opts.get('xlabel') or 'x'} {entry['x']:g}: drawn as a "
                                                    f"gap, counted in the legend's title, kept in the run log; "
                                                    f"Guard() says at once which step went bad and keeps a checkpoint "
                                                    f"to replay it")
                    return

    def _send_all(self) -> None:
        """The sender: sends when it is time, at once for a flush or a close; ends after a close
        once the server holds everything, cannot be reached, or the close's time is up."""
        try:
            while True:
                logged = self._logged.is_set()  # close(): everything put before it is in the windows
                # A close does not wait out its timeout for a server that is not there: one found
                # unreachable after close() was called had its one try (the run log keeps
                # everything; `monitor replay` or `monitor serve --runs` sends it later).
                if logged and (self.delivered or time.monotonic() >= self._close_deadline or
                               self.delivery.unreachable and self.delivery.failed_at >= self._close_asked):
                    break
                wait = self._next_send - time.monotonic()
                if wait > 0 and not self._asked and not self._flushes:
                    self._send_wake.wait(min(wait, _POLL))
                    self._send_wake.clear()
                    continue
                try:
                    self._send(logged)
                except Exception as error:
                    self.reports.once(f"sender-{type(error).__name__}",
                                      f"the sink's sender hit {type(error).__name__}: {error}; it goes on")
                    time.sleep(min(self.flush_every, 0.5))
        finally:
            self._worker.join()
            for close in (self.runlog.close, self.connection.close, self.folder.unlock):
                try:
                    close()
                except Exception as error:
                    self.reports.once("closing", f"closing the sink failed: {error}")
            with self._lock:
                for waiter in [*self._waiting, *self._flushes]:
                    waiter.event.set()
            open_sinks.discard(self)  # only now: its run folder is free once this thread ends

    def _send(self, closing: bool) -> None:
        with self._lock:
            now = time.monotonic()
            for waiter in self._flushes:
                if waiter.deadline < now:
                    waiter.event.set()  # a flush whose caller gave up no longer forces sends
            self._flushes = flushes = [w for w in self._flushes if not w.event.is_set()]
            self._asked = False
        limit = self._close_deadline - time.monotonic() if closing else None
        self.delivery.send(force=bool(flushes) or closing, limit=limit, settle=closing)
        self._next_send = time.monotonic() + (min(SPREAD, self.flush_every) if self.delivery.more
                                              else self.flush_every)
        if self.delivered or self.delivery.unreachable:  # a flush does not wait on a server not there
            with self._lock:
                for waiter in self._flushes:
                    waiter.event.set()
                self._flushes = []

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
                if item is _STOP:  # a request in flight when close() came that found no server was its one try
                    self._stopping = True
                    self._asked = not (self.delivery.unreachable and self.delivery.failed_at >= self._close_asked)
                elif isinstance(item, _Waiter):  # answered (a sync) or handed to the sender (a flush) once
                    self._waiting.append(item)     # the records before it are in the windows
                elif item[0] == RUN_END and item[1:] == self._ended_as:
                    pass  # close()'s after train_end's, nothing between: the log says it once
                else:
                    entry = self._entry(RECORDS[item[0]]._make(item[1:]))
                    if entry is not None:
                        entries.append(entry)
                    self._ended_as = item[1:] if item[0] == RUN_END else None
                    if item[0] == IMAGE:
                        self.images_taken[item[1]] += 1
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
            return encode(record, self.images)
        except Exception as error:  # a bad record must not stop the worker
            report_unreadable(self.reports, record, error)
            return None


_KINDS = {"points": "points", "image": "an image grid", "text": "text", "histogram": "a histogram",
          "heatmap": "a heatmap", "pr_curve": "a PR curve", "embedding": "an embedding", "mesh": "a mesh",
          "hparams": "hyper-parameters"}  # a run-log entry's kind, as a message names it


def queued(record: Any) -> tuple:
    """The record as it waits in a queue, (kind, *fields) (see ``KIND``); TypeError if it is none."""
    kind = KIND.get(type(record))
    if kind is None:  # a subclass of one, or no record
        if not isinstance(record, RECORDS):
            raise not_a_record(record)
        kind = next(number for number, kind in enumerate(RECORDS) if isinstance(record, kind))
    return kind, *record


def not_a_record(record: Any) -> TypeError:
    """The error for a put of something that is not a record, naming the kinds there are."""
    kinds = ", ".join(kind.__name__ for kind in RECORDS if kind not in (RunEnd, StepMark))
    return TypeError(f"record must be a monitor.records {kinds}; got {type(record).__name__}")


def many_windows(env: str, count: int) -> str:
    """What to say of an env of more than ``MANY_WINDOWS`` windows."""
    return (f"env {env!r} has {count} windows: a page draws each as a pane, and slows down past about "
            f"{MANY_WINDOWS} (1000 froze one for minutes), while each gets its turn to be sent 0.15 s apart; "
            f"put values that belong together as traces of one window, e.g. per-class metrics with "
            f"monitor.log.scalars(\"accuracy per class\", step, {{name: value, ...}})")


def not_sent_elsewhere(env: str | None) -> TypeError:
    """The error for pickling or copying a sink: its records would not reach its run."""
    return TypeError(f"a monitor's sink (env {env!r}) cannot be pickled or copied: it delivers the records of "
                     f"the process that made it, and a copy in another process would deliver none. Make the "
                     f"Monitor or SummaryWriter in the process that trains (inside the function "
                     f"torch.multiprocessing.spawn runs, not before it), and log in the loop what a "
                     f"DataLoader worker returns")


def report_unreadable(reports: Reports, record: Any, error: Exception) -> None:
    """Says once per kind of record, window and error that a record could not be read and is skipped."""
    window = getattr(record, "window", "?")
    reports.once(f"record-{type(record).__name__}-{window}-{type(error).__name__}",
                 f"a record ({type(record).__name__}) for window {window!r} "
                 f"could not be read and is skipped: {type(error).__name__}: {error}")


def default_env() -> str:
    """A new run's env name: ``run-<date>-<time>-<random>``."""
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def replace_earlier(run_dir: Path, rewind_to: int | None = None, continues: str | None = None) -> None:
    """A notebook cell run again: the previous sink of ``run_dir`` in this process ends (an open
    SummaryWriter's is not: refused, nor one made in another thread still running: a thread
    pool's trials of one env); the newer one continues its run (``rewind_to`` given: a resume) or
    sets its log aside. A new run (not one that resumes a checkpoint's step, or ``continues`` a
    log after its end: a writer opened again) in a folder this process ran before says so."""
    resumes = continues is not None or bool(rewind_to)
    if (writers := sys.modules.get("monitor.writer")) is not None:  # none without the module
        writers.refuse_to_replace(run_dir)
    folder = run_dir.resolve()
    if folder in _ran_here and folder not in _told_set_aside and not resumes and not interactive():
        _told_set_aside.add(folder)
        _log.warning("monitor: a new run in %s sets aside the one this process ran there before: the dashboard and "
                     "`monitor runs` show the new one only (the earlier one's log goes to earlier/); give each run "
                     "(a fold, a trial, a phase: a linear probe after pretraining) an env of its own, "
                     "env=f\"cv-fold{k}\"", run_dir)
    _ran_here.add(folder)
    for other in list(open_sinks):
        if other.run_dir.resolve() == run_dir.resolve():
            owner = other.made_in
            if owner is not threading.current_thread() and owner.is_alive():
                raise RunInUseError(f"env {other.env!r} must have one live run at a time, got another one writing "
                                    f"to {run_dir} from thread {owner.name!r} of this process (run "
                                    f"{getattr(other, 'run_id', '?')}); close() it first, or give each thread's "
                                    f"run an env of its own (env=f\"trial-{{number}}\")")
            _log.info("monitor: closing the previous monitor of env %r in this process", other.env)
            other.put(other.ending or RunEnd("interrupted", "a newer run of its env in this process replaced it"))
            other.replaced = "continued" if rewind_to is not None else "set aside"
            other.close(timeout=2.0)
            other._join(5.0)  # its last request (at most the close's 2 s) and the folder's lock


def close_together(sinks: list[Any], timeout: float) -> None:
    """Closes ``sinks`` at once, each in a thread, at the interpreter's exit: each may wait on a
    slow dashboard, and a process of many (a Monitor per model, per trial) would wait that long
    for each in turn. An error has nothing to be raised into: the interpreter is going."""
    def close(sink: Any) -> None:
        try:
            sink.close(timeout=timeout)
        except Exception:  # noqa: BLE001
            pass

    closing = [threading.Thread(target=close, args=(sink,), name="monitor-close-at-exit") for sink in sinks]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


@atexit.register
def _close_open_sinks() -> None:
    """A run that forgot close() still gets its last records into the run log and, briefly, sent."""
    close_together(list(open_sinks), timeout=2.0)
