"""The sink's process: runs a VisdomSink for the training process at the other end of its pipes.

Started by :class:`monitor.sink_process.SinkProcess` as ``python -c LAUNCH <package folder>``;
never imports torch. Its life is the pipe's: it ignores SIGTERM and SIGINT (a scheduler that
signals every process of a job, a Ctrl-C sent to all), and once the pipe ends, however the
training process ended, it puts what it has into the run log, sends it and exits.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from typing import Any

from monitor import pipe
from monitor.sink import RECORDS, VisdomSink

# What the training process runs: the monitor package of the training process, not a folder
# called monitor in the working directory (``-m`` and ``-c`` put that first on the path).
LAUNCH = ("import sys; package = sys.argv[1]; sys.path[:1] = [p for p in sys.path[:1] if p]; "
          "package in sys.path or sys.path.insert(0, package); "
          "import monitor.sink_child; monitor.sink_child.main()")

_log = logging.getLogger("monitor")
_ANSWERED = 5.0  # seconds a close waits for the flushes and syncs asked before it to be answered


class _ToParent(logging.Handler):
    """Hands the child's log messages to the training process, which logs them as its own."""

    def __init__(self, send) -> None:
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.levelno, record.getMessage()))
        except Exception:  # the training process is gone: say it here
            sys.stderr.write(record.getMessage() + "\n")


def main() -> None:
    """Opens the run the training process asks for, then puts its records until close or the pipe's end."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    commands = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not break the messages
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            pipe.send(answers, message)

    def send_answer(number: int, result: Any) -> None:
        try:
            with lock:  # the status as it is when sent: the training process keeps the last one it reads
                pipe.send(answers, ("answer", number, result, status(sink)))
        except OSError:  # the training process is gone: the pipe's end closes the sink
            pass

    opened = pipe.receive(commands)
    if opened is None:
        return
    options, level = pickle.loads(opened[1]), opened[2]
    _log.setLevel(level)
    _log.propagate = False
    _log.addHandler(_ToParent(send))
    try:
        sink = VisdomSink(**options)
    except BaseException as error:
        send(("failed", error))
        return
    try:
        send(("ready", status(sink)))
    except OSError:  # the training process died while the run opened: the pipe's end below closes the sink
        pass
    waiting: list[threading.Thread] = []  # flushes and syncs: answered apart, so that reading goes on

    def answer(number: int, kind: str, timeout: float | None) -> None:
        send_answer(number, getattr(sink, kind)(timeout))

    while True:
        try:
            message = pipe.receive(commands)
        except Exception as error:  # not expected: the training process sends plain values
            sink.reports.once(f"unpickle-{type(error).__name__}", f"a batch of records could not be read in the "
                                                                 f"sink's process and is skipped: {error}")
            continue
        if message is None:  # the training process ended without a close: everything into the run log
            sink.close(options["timeout"] * 2)
            return
        if message[0] == "records":
            for record in message[1]:
                sink.put(RECORDS[record[0]]._make(record[1:]))
            continue
        if message[0] == "replaced":  # a newer run of the env in the training process: it sets this log aside
            sink.replaced = message[1]
            continue
        _, number, kind, timeout = message
        if kind != "close":
            waiting = [thread for thread in waiting if thread.is_alive()]
            waiting.append(threading.Thread(target=answer, args=(number, kind, timeout), daemon=True))
            waiting[-1].start()
            continue
        result = sink.close(timeout)
        for thread in waiting:  # a close answers what waits on the sink: they go before its answer
            thread.join(_ANSWERED)
        send_answer(number, result)
        return


def status(sink: VisdomSink) -> dict[str, Any]:
    """What the training process shows of the sink: its run, log position, delivery and latest sends."""
    return {"run_id": sink.run_id, "url": sink.url, "position": sink.position, "delivered": sink.delivered,
            "timings": list(sink.timings)}
