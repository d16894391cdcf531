"""SinkProcess: a VisdomSink in a process of its own; the training process only hands it records.

    sink = SinkProcess(env="mnist", port=8097)     # what Monitor(env="mnist") builds
    Monitor(callbacks, sink=sink)

In the training process, a :class:`monitor.sink.VisdomSink`'s worker holds the GIL for all it
does (encoding, the run log, the windows, the requests) and the training thread waits for it
(bench/README.md, "What the numbers say"). Here the training process keeps one thread that
reads the records (``entries.read``: deferred values called, tensors read from their device)
and pickles them, every ``_POLL`` seconds, into a pipe to a child process that runs the
VisdomSink and never imports torch (:mod:`monitor.sink_child`).

The child outlives its parent. It runs in a session of its own and ignores SIGTERM and SIGINT,
so a Ctrl-C or a scheduler's signal to the job does not end it; when the training process ends,
however it ends, the pipe closes (forks of it hold /dev/null in its place) and the child puts
what it has into the run log, sends it (within its close timeout) and exits. A child that dies
on its own is replaced by a VisdomSink in the training process that continues the run log;
records in the pipe then are reported lost.
Where no child starts, the sink runs in the training process from the beginning.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter, deque
from pathlib import Path
from typing import Any, BinaryIO

from monitor import checks, pipe
from monitor.delivery import FlushTiming
from monitor.entries import read, with_scalars_read
from monitor.layer_sums import LayerNorms
from monitor.records import Points, RunEnd
from monitor.reports import Reports
from monitor.runlog import RunLog
from monitor.sink import (IMAGE, KIND, RECORDS, RUN_END, VisdomSink, default_env, not_sent_elsewhere, open_sinks,
                          queued, replace_earlier, report_unreadable)
from monitor.sink_child import LAUNCH

__all__ = ["SinkProcess"]

_log = logging.getLogger("monitor")
_POLL = 0.1  # seconds between the forwarder's looks at the queue (at once for flush, sync, close)
_START = 300.0  # seconds a child may take to open the run (a resume reads the log); then the sink runs here
_BACKLOG = 30.0  # seconds beyond its timeout a close waits for the child to write its backlog to the run log
_POINTS = KIND[Points]  # records wait in the queue, and cross the pipe, as sink.queued makes them
_NAMES, _NUMBERS, _SCALES = {str}, {float, int}, {float, type(None)}


_pipe_ends: set[int] = set()  # this process's ends of the pipes to its sinks' processes, open
_forwarding: weakref.WeakSet[SinkProcess] = weakref.WeakSet()  # sinks whose forwarder runs in this process


def _let_go_in_fork() -> None:
    """In a forked child (a DataLoader's or a Pool's worker): /dev/null where the parent holds the
    pipes to its sinks' processes. Holding them, it would keep the sink of a killed training process
    waiting for their end for as long as it lives. The child's copies of the sinks are closed."""
    if _pipe_ends:
        null = os.open(os.devnull, os.O_RDWR)
        for end in _pipe_ends:
            os.dup2(null, end, inheritable=False)
        os.close(null)
    for sink in list(_forwarding):
        sink._left_in_fork()
    _forwarding.clear()


os.register_at_fork(after_in_child=_let_go_in_fork)


class _Request:
    """A flush, sync or close waiting on the child's answer."""

    __slots__ = ("kind", "timeout", "event", "result")

    def __init__(self, kind: str, timeout: float | None) -> None:
        self.kind, self.timeout = kind, timeout
        self.event = threading.Event()
        self.result: Any = None


class SinkProcess:
    """Delivers a run's records to one Visdom env from a process of its own; never blocks the loop.

        sink = SinkProcess(env="mnist", port=8097)
        Monitor(callbacks, sink=sink)
        sink.close()                      # everything put is in the run log; the child exits

    Takes :class:`monitor.sink.VisdomSink`'s arguments and behaves as it does (``put``,
    ``flush``, ``sync``, ``close``, ``position``, ``delivered``, ``url``, ``run_id``);
    ``position``, ``delivered`` and ``timings`` are as of the child's latest answer.
    """

    def __init__(self, env: str | None = None, *, server: str | None = None, port: int | None = None,
                 base_url: str = "", username: str | None = None, password: str | None = None,
                 run_dir: str | os.PathLike | None = None, flush_every: float = 0.5,
                 points_per_trace: int = 1000, timeout: float = 5.0, rewind_to: int | None = None,
                 continues: str | None = None) -> None:
        if env is not None:
            checks.name("env", env, path=True)
        self.env = env or default_env()
        self.run_dir = Path(run_dir).expanduser() if run_dir is not None else Path("runs") / self.env
        self._options = dict(env=self.env, server=server, port=port, base_url=base_url, username=username,
                             password=password, run_dir=str(self.run_dir.absolute()), flush_every=flush_every,
                             points_per_trace=points_per_trace, timeout=timeout, rewind_to=rewind_to,
                             continues=continues, pid=os.getpid())
        self.reports = Reports()
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._closing: _Request | None = None
        self.replaced: str | None = None  # "continued" or "set aside" by a newer sink of its run folder in this process
        self.ending: RunEnd | None = None  # how its run ended, once at train_end: what replacing it records
        self._forked = False  # a forked child's copy: closed, its forwarder stayed in the parent
        self._asked: dict[int, _Request] = {}  # sent to the child, not answered yet, by number
        self._numbers = itertools.count()
        self._status: dict[str, Any] = {}
        self._broken = False  # the child ended without being asked to
        self._fell_back = False
        self._local: VisdomSink | None = None
        self.images_taken: Counter[str] = Counter()  # image grids read and handed on, by window (Log.images_waiting)
        self.made_in = threading.current_thread()  # a newer sink of its folder made in another thread is refused
        replace_earlier(self.run_dir, self._options.get("rewind_to"), self._options.get("continues"))
        self._child = self._start()
        if self._child is None:
            self._local = VisdomSink(**self._options)
            open_sinks.discard(self._local)  # closed through this sink, after what it still holds
            self.run_id, self.url = self._local.run_id, self._local.url
        self._forwarder = threading.Thread(target=self._forward, name=f"monitor-forward-{self.env}", daemon=True)
        self._forwarder.start()
        open_sinks.add(self)
        _forwarding.add(self)

    def _start(self) -> subprocess.Popen | None:
        """The child, once it holds the run (None where it could not start); raises what it raised."""
        try:
            options = pickle.dumps(self._options, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an argument that does not pickle: the VisdomSink here names it
            return None
        package = str(Path(__file__).resolve().parent.parent)
        try:
            child = subprocess.Popen([sys.executable, "-c", LAUNCH, package], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            _log.info("monitor: the sink runs in this process (no process of its own: %s)", error)
            return None
        _pipe_ends.update((child.stdin.fileno(), child.stdout.fileno()))
        pipe.widen(child.stdin)
        try:
            pipe.send(child.stdin, ("open", options, _log.getEffectiveLevel()))
            answer = _answer_of(child, _START)
        except Exception:  # the pipe, or an error of its that does not unpickle: the sink here will say
            answer = None
        except BaseException:  # a Ctrl-C while it opens the run: it must not keep the run folder
            child.kill()
            child.wait()
            _let_go(child.stdin, child.stdout)
            raise
        if answer is None or answer[0] != "ready":
            if answer is None or answer[0] != "failed":
                child.kill()
            child.wait()
            _let_go(child.stdin, child.stdout)
            if answer is not None and answer[0] == "failed":
                raise answer[1]
            _log.info("monitor: the sink runs in this process (its own process did not start in %.0f s)", _START)
            return None
        self.run_id, self.url, self._status = answer[1]["run_id"], answer[1]["url"], answer[1]
        self._reader = threading.Thread(target=self._read_answers, args=(child.stdout.raw,),
                                        name=f"monitor-answers-{self.env}", daemon=True)
        self._reader.start()
        return child

    @property
    def pending(self) -> int:
        """Records put and not yet handed to the child (approximate)."""
        return self._local.pending if self._local is not None else len(self._queue)

    @property
    def position(self) -> int | None:
        """The run log's size in bytes as of the child's latest answer (``sync`` makes it durable)."""
        return self._local.position if self._local is not None else self._status.get("position")

    @property
    def delivered(self) -> bool:
        """Whether the server held every window as of the child's latest answer."""
        if self._local is not None:
            return self._local.delivered
        return bool(self._status.get("delivered")) and not self._queue

    @property
    def timings(self) -> list[FlushTiming]:
        """The latest sends, oldest first, as of the child's latest answer."""
        return list(self._local.timings) if self._local is not None else list(self._status.get("timings", ()))

    # --- the training thread's side ----------------------------------------------------------
    def __reduce__(self) -> Any:
        raise not_sent_elsewhere(self.env)

    def put(self, record: Any) -> None:
        """Queues a record; never blocks. Records put after close() are dropped with a warning."""
        item = queued(record)
        if self._closed:
            if item[0] == RUN_END:  # a run's end after its close, or in a fork: nothing to say
                return
            if self._forked:
                self.reports.once("forked", f"a record was logged in a forked process (pid {os.getpid()}) and is "
                                  f"dropped: only the process that opened env {self.env!r} delivers its records")
            else:
                self.reports.once("closed", "a record was logged after close() and is dropped" + (
                    f": a newer monitor of env {self.env!r} in this process took its run folder"
                    if self.replaced else ""))
            return
        self._queue.append(item)

    def hurry(self) -> None:
        """Has the forwarder look at the queue now, not at its next poll: an image grid waits in it."""
        self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything put so far is in the run log and on the server (False if not
        within ``timeout`` seconds, or at once when the server could not be reached)."""
        if self._closed:
            return self.delivered
        return bool(self._ask("flush", timeout))

    def sync(self, timeout: float | None = 10.0) -> int | None:
        """Waits until everything put so far is durable in the run log and returns the log's
        position; None if that did not happen within ``timeout``."""
        if self._closed:
            return self.position
        return self._ask("sync", timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Delivers what is pending (for up to ``timeout`` seconds), then stops; idempotent.
        Everything put before it is in the run log when it returns. Returns whether the server
        holds everything."""
        if self._forked:  # the process that opened it closes it
            return False
        with self._lock:
            if self._closing is None:
                self._closed = True
                self._closing = _Request("close", timeout)
                self._queue.append(self._closing)
                self._wake.set()
        # The child answers once everything is in the run log, sending for at most ``timeout``.
        deadline = None if timeout is None else time.monotonic() + timeout + _BACKLOG
        self._closing.event.wait(None if deadline is None else deadline - time.monotonic())
        self._join(None if deadline is None else max(0.1, deadline - time.monotonic()))
        return bool(self._closing.result)

    def _left_in_fork(self) -> None:
        self._lock = threading.Lock()  # the parent's forwarder may have held it at the fork
        self._closed = self._forked = True

    def _ask(self, kind: str, timeout: float | None) -> Any:
        request = _Request(kind, timeout)
        self._queue.append(request)
        self._wake.set()
        request.event.wait(timeout)
        return request.result

    def _join(self, timeout: float | None) -> None:
        """Waits for the forwarder and the child to end (the run folder is free then)."""
        self._forwarder.join(timeout)
        if self._local is not None:
            self._local._join(timeout)
        if self._child is not None:
            try:
                self._child.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    # --- the forwarder -------------------------------------------------------------------------
    def _forward(self) -> None:
        """Reads the queued records and hands them on in batches, with the requests in order."""
        try:
            while True:
                self._wake.wait(_POLL)
                self._wake.clear()
                records: list = []
                while self._queue:
                    item = self._queue.popleft()
                    if type(item) is _Request:
                        self._hand_on(self._read(records))
                        self._count_images(records)
                        records = []
                        self._request(item)
                        if item.kind == "close":
                            return
                    else:
                        records.append(item)
                self._hand_on(self._read(records))
                self._count_images(records)
                if self._broken and self._local is None:
                    self._fall_back([])
        except Exception as error:  # a bug here must not leave a flush or a close waiting forever
            self.reports.once("forwarder", f"the sink's forwarder stopped on {type(error).__name__}: {error}")
            for request in [*list(self._asked.values()), *[i for i in list(self._queue) if type(i) is _Request]]:
                request.event.set()
        finally:
            open_sinks.discard(self)

    def _count_images(self, items: list[tuple]) -> None:
        for item in items:
            if item[0] == IMAGE:
                self.images_taken[item[1]] += 1

    def _read(self, items: list[tuple]) -> list[tuple]:
        """The queued records with plain values; one that cannot be read is reported and left out.

        Most are read already (a number logged on a CPU): they are handed on as they came.
        """
        if self._local is not None:  # the VisdomSink here reads them (and reports what it cannot read)
            return items
        done = [_read_already(item) for item in items]
        if all(done):
            return items
        unread = [RECORDS[item[0]]._make(item[1:]) for item, read_already in zip(items, done) if not read_already]
        try:
            unread = with_scalars_read(unread)
        except Exception:  # a device gone, say: each record is read (or reported) alone below
            pass
        records = iter(unread)
        plain = []
        for item, read_already in zip(items, done):
            if read_already:
                plain.append(item)
                continue
            record = next(records)
            try:
                plain.append((item[0], *read(record)))
            except Exception as error:  # a bad record must not stop the others
                report_unreadable(self.reports, record, error)
        return plain

    def _hand_on(self, records: list[tuple]) -> None:
        if not records or self._fell_back and self._local is None:  # no sink left: reported once
            return
        if self._local is None:
            try:
                _send_records(self._child.stdin, records, self.reports)
                return
            except OSError:  # the child is gone
                self._fall_back(records)
                return
        for record in records:
            self._local.put(RECORDS[record[0]]._make(record[1:]))

    def _request(self, request: _Request) -> None:
        if self._local is None and not self._fell_back:
            number = next(self._numbers)
            self._asked[number] = request
            try:
                if request.kind == "close" and self.replaced:
                    pipe.send(self._child.stdin, ("replaced", self.replaced))
                pipe.send(self._child.stdin, ("ask", number, request.kind, request.timeout))
                if request.kind == "close":
                    _let_go(self._child.stdin)  # the child exits once it answered
                return
            except OSError:
                self._fall_back([])
                return
        self._answer_here(request)

    def _answer_here(self, request: _Request) -> None:
        if self._local is None:  # no sink at all: the child died and none could start here
            request.result = False if request.kind != "sync" else None
        else:
            self._local.replaced = self.replaced
            request.result = getattr(self._local, request.kind)(request.timeout)
        request.event.set()

    def _fall_back(self, records: list) -> None:
        """The child died: a VisdomSink here continues the run log, and answers what was asked."""
        with self._lock:  # the forwarder's, or the reader's once the forwarder handed on a close
            if self._fell_back:
                return
            self._fell_back = True
        self._broken = True
        _let_go(self._child.stdin)
        try:
            self._child.wait(5.0)
        except subprocess.TimeoutExpired:  # it closed its pipe and hangs: its run folder is needed
            self._child.kill()
            self._child.wait()
        log_path = Path(self._options["run_dir"]) / RunLog.FILENAME
        self.reports.once("child", f"the sink's process ended unexpectedly (exit status {self._child.returncode}); "
                                   f"the sink goes on in the training process, from {log_path}; records logged "
                                   f"just before may be missing")
        try:
            end = RunLog.end_of(log_path) if log_path.is_file() else 0
            open_sinks.discard(self)  # not an earlier sink of its folder for the new one to close
            self._local = VisdomSink(**{**self._options, "rewind_to": end or None})
            open_sinks.discard(self._local)  # closed through this sink, after what it still holds
        except Exception as error:
            self.reports.once("fallback", f"the sink could not go on in the training process, and what is "
                                          f"logged from now on is dropped: {type(error).__name__}: {error}")
        finally:
            if not self._closed:
                open_sinks.add(self)
        if self._local is not None:
            for record in records:
                self._local.put(RECORDS[record[0]]._make(record[1:]))
        for number in sorted(self._asked):
            request = self._asked.pop(number, None)  # the reader may have had its answer meanwhile
            if request is not None:
                self._answer_here(request)

    def _read_answers(self, answers: BinaryIO) -> None:
        """The child's answers and log messages, until it ends."""
        while True:
            try:
                message = pipe.receive(answers)
            except Exception:  # the pipe, or an answer that does not unpickle: the child is no use now
                message = None
            if message is None:
                break
            if message[0] == "log":
                _log.log(message[1], "%s", message[2])
            elif message[0] == "answer":
                _, number, result, self._status = message
                request = self._asked.pop(number, None)
                if request is not None:
                    request.result = result
                    request.event.set()
        _let_go(self._child.stdout)
        if self._asked or not self._closed:  # it ended without being asked to
            self._broken = True
            self._wake.set()
            if self._closing is not None and any(r is self._closing for r in list(self._asked.values())):
                self._fall_back([])  # the forwarder handed on the close and ended: answered here


def _send_records(end: BinaryIO, records: list, reports: Reports) -> None:
    """Writes a batch of plain records; one that does not pickle is left out (reported once a kind)."""
    try:
        data = pickle.dumps(("records", records), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        kept = []
        for record in records:  # each alone, to find the ones that do not pickle
            try:
                pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
                kept.append(record)
            except Exception as error:
                kind = RECORDS[record[0]].__name__
                reports.once(f"pickle-{kind}", f"a {kind} record for window {record[1]!r} cannot reach the sink's "
                                               f"process and is skipped: {type(error).__name__}: {error}")
        data = pickle.dumps(("records", kept), protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(end, data)


def _read_already(item: tuple) -> bool:
    """Whether a queued record is as ``entries.read`` would make it: points of plain numbers, or
    a CPU's layer norms to add up (the usual records, checked in the forwarder without a
    NamedTuple made for them)."""
    if item[0] != _POINTS or type(item[1]) is not str:
        return False
    x, values = item[2], item[4]
    if not (type(x) is int or type(x) is float and math.isfinite(x)) or set(map(type, item[3])) != _NAMES:
        return False
    if type(values) is tuple:
        return set(map(type, values)) <= _NUMBERS
    return type(values) is LayerNorms and set(map(type, values.norms)) <= _NUMBERS and type(values.scale) in _SCALES


def _let_go(*ends: BinaryIO) -> None:
    """Closes this process's ends of pipes to a sink's process (forks no longer stand in for them)."""
    for end in ends:
        try:
            _pipe_ends.discard(end.fileno())
            end.close()
        except (OSError, ValueError):  # closed already, or its last write failed
            pass


def _answer_of(child: subprocess.Popen, seconds: float) -> Any:
    """The child's first answer, if it comes within ``seconds`` while the child lives (the log
    messages it sends before, as it opens the run, are logged here)."""
    answers = child.stdout.raw
    deadline = time.monotonic() + seconds
    while True:
        while not select.select([answers], [], [], 1.0)[0]:
            if child.poll() is not None or time.monotonic() > deadline:
                return None
        message = pipe.receive(answers)
        if message is None or message[0] != "log":
            return message
        _log.log(message[1], "%s", message[2])

