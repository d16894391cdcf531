"""Writes checkpoints as fast as it can, in forked children that are killed at chosen moments.

    python tests/helpers/checkpoint_writer.py DIR
    stdin:  one line per round ("quit" to stop):
              "after SECONDS"   SIGKILL the child after SECONDS, wherever it is
              "inside BYTES"    the child SIGKILLs itself in its third checkpoint write, once
                                BYTES of the file are written: a kill inside a write, for sure
    stdout: one line per round once the child is dead: "<pid> SIGKILL" (or "<pid> exit <code>")

The parent imports torch and warms it up once, so each round costs a fork, not a start. Each child
resumes from DIR (a fresh start the first time) and saves a checkpoint at every step (a few MB:
model and Adam state) until it is killed.
"""
from __future__ import annotations

import builtins
import os
import signal
import sys
import tempfile
import time

import torch
from torch import nn

import monitor.atomic
from monitor import Checkpoint, Monitor, resume
from monitor.log import NullSink


def save_until_killed(directory: str, steps: int | None = None) -> None:
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    checkpoint = Checkpoint(directory, every_steps=1, keep_last=3, keep_best=2, metric="loss", metric_from="step")
    start = resume(directory, model, optimizer, missing_ok=True)
    monitor = Monitor([checkpoint], sink=NullSink())
    start.restore(monitor)
    monitor.train_start(model, optimizer)
    while steps is None or monitor.state.step < steps:
        x = torch.randn(16, 256)
        loss = (model(x) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end(loss=loss)


class _DiesInside:
    """A file that SIGKILLs its process once ``limit`` bytes were written to it."""

    def __init__(self, file, limit: int) -> None:
        self.file, self.limit, self.written = file, limit, 0

    def write(self, data) -> int:
        if self.written + len(data) >= self.limit:
            self.file.write(data[:max(self.limit - self.written, 0)])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


def die_inside_a_write(limit: int, nth: int = 3) -> None:
    """Makes the ``nth`` checkpoint file this process writes the one it is killed in."""
    opened = []

    def open_(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)
        if ".step-" in os.path.basename(str(path)):
            opened.append(path)
            if len(opened) == nth:
                return _DiesInside(file, limit)
        return file

    monitor.atomic.open = open_  # write_atomic looks up open() in its module first


def main() -> None:
    directory = sys.argv[1]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:  # first steps and saves are slow: pay that here, once
        save_until_killed(scratch, steps=2)
    for line in sys.stdin:
        how, _, value = line.strip().partition(" ")
        if how == "quit":
            break
        pid = os.fork()
        if pid == 0:
            try:
                if how == "inside":
                    die_inside_a_write(int(value))
                save_until_killed(directory)
            finally:
                os._exit(1)
        if how == "after":
            time.sleep(float(value))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        how = "SIGKILL" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL \
            else f"exit {os.waitstatus_to_exitcode(status)}"
        print(pid, how, flush=True)


if __name__ == "__main__":
    main()
