"""Writes checkpoints as fast as it can, in forked children that are killed at random moments.

    python tests/checkpoint_writer.py DIR
    stdin:  one line per round: seconds to let a child run before SIGKILL ("quit" to stop)
    stdout: one line per round once the child is dead: "<pid> SIGKILL" (or "<pid> exit <code>")

The parent imports torch and warms it up once, so each round costs a fork, not a start. Each child
resumes from DIR (a fresh start the first time) and saves a checkpoint at every step (a few MB:
model and Adam state) until it is killed, so most kills land inside a write.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

import torch
from torch import nn

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


def main() -> None:
    directory = sys.argv[1]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:  # first steps and saves are slow: pay that here, once
        save_until_killed(scratch, steps=2)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        pid = os.fork()
        if pid == 0:
            try:
                save_until_killed(directory)
            finally:
                os._exit(1)
        time.sleep(float(line))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        how = "SIGKILL" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL \
            else f"exit {os.waitstatus_to_exitcode(status)}"
        print(pid, how, flush=True)


if __name__ == "__main__":
    main()
