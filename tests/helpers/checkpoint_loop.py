"""A tiny in-process training loop with a Checkpoint, for tests that need no server or subprocess.

    parts = build()                                  # model, optimizer, scheduler (seeded)
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=2)
    train(parts, monitor, start, epochs=3)           # resumes from start, stops early with stop_at=
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monitor import Checkpoint, Monitor, resume
from monitor.log import NullSink

BATCHES = 5  # per epoch


@dataclass
class Parts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


def build(seed: int = 0) -> Parts:
    torch.manual_seed(seed)
    random.seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Parts(model, optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.95))


def attach(parts: Parts, directory: Path, callbacks: tuple = (), **options: Any):
    """A Checkpoint (last), a Monitor writing nowhere, and the point resumed from ``directory``."""
    checkpoint = Checkpoint(directory, scheduler=parts.scheduler, **options)
    start = resume(directory, parts.model, parts.optimizer, parts.scheduler, missing_ok=True)
    monitor = Monitor([*callbacks, checkpoint], sink=NullSink(), raise_errors=True)
    start.restore(monitor)
    return checkpoint, monitor, start


def train(parts: Parts, monitor: Monitor, start, epochs: int, stop_at: int | None = None,
          noisy: str | None = "noisy") -> None:
    """Runs to the end (or returns after step ``stop_at`` as if killed, without train_end).

    Each step passes ``noisy``: a metric drawn from Python's ``random`` (restored by resume).
    """
    model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
    monitor.train_start(model, optimizer)
    for epoch in range(start.epoch, epochs):
        skip = start.batches_done(epoch)
        if not skip:
            monitor.epoch_start(epoch)
        for _ in range(skip, BATCHES):
            x = torch.randn(6, 4)
            loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            scheduler.step()
            monitor.step_end(loss=loss, metrics={noisy: random.uniform(0, 1)} if noisy else None)
            if monitor.state.step == stop_at:
                return
        monitor.validation_end({"loss": 1.0 / (epoch + 1) + random.uniform(0, 0.5)})
        monitor.epoch_end()
    monitor.train_end()


def trained_folder(tmp_path: Path, epochs: int = 2) -> Path:
    """A folder of checkpoints every 2 steps (the last 3 kept, ranked by loss, with extras) after ``epochs``."""
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=2, keep_last=3, metric="loss",
                                        extras=lambda: {"note": "hi", "table": torch.arange(3)})
    train(parts, monitor, start, epochs=epochs)
    return tmp_path / "ckpt"
