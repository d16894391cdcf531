"""A small deterministic training run for the checkpoint tests, run as a subprocess.

    python tests/helpers/checkpoint_training.py --checkpoints DIR --env ENV --run-dir RUNS --port PORT \
        --out FINAL.pt [--every-steps N] [--every-epochs N] [--kill-at STEP --kill-phase PHASE]

Every run resumes from DIR when it holds a checkpoint (a fresh start otherwise), so one command
is the uninterrupted run, the run that is killed and the run that resumes it. It draws from every
generator a checkpoint restores: dropout (torch), input noise from Python's ``random`` and NumPy,
a shuffled order (EpochBatchSampler); it uses Adam, a StepLR schedule and a GradScaler. With
``--kill-at`` the process sends itself SIGKILL at that step (``after_backward``: before the
optimizer step; ``step_end``: after it), once the dashboard shows what it logged so far; nothing
is closed, saved or cleaned up. It prints one JSON
line saying where it started.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import Checkpoint, EpochBatchSampler, GradNorms, LearningRate, Monitor, Scalars, resume


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--checkpoints", "--env", "--run-dir", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every-steps", type=int, default=None)
    parser.add_argument("--every-epochs", type=int, default=None)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--kill-phase", choices=("after_backward", "step_end"), default="step_end")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    data = torch.Generator().manual_seed(1234)
    inputs, labels = torch.randn(60, 8, generator=data), torch.randint(0, 3, (60,), generator=data)
    train = TensorDataset(inputs[:48], labels[:48])
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    scaler = torch.amp.GradScaler("cpu")
    batches = EpochBatchSampler(train, batch_size=8, seed=7)
    loader = DataLoader(train, batch_sampler=batches, generator=batches.generator)
    checkpoint = Checkpoint(args.checkpoints, every_steps=args.every_steps, every_epochs=args.every_epochs,
                            keep_last=2, keep_best=2, metric="loss", scheduler=scheduler, scaler=scaler,
                            extras=lambda: {"dataset": "synthetic", "size": len(train)})

    start = resume(args.checkpoints, model, optimizer, scheduler, scaler, missing_ok=True)
    print(json.dumps({"path": str(start.path) if start.path else None, "epoch": start.epoch,
                      "skip": start.skip_batches, "step": start.step}), flush=True)
    monitor = Monitor([Scalars(), LearningRate(), GradNorms(), checkpoint], env=args.env,
                      server="http://127.0.0.1", port=args.port, run_dir=args.run_dir,
                      rewind_to=start.runlog_position, flush_every=0.05)
    start.restore(monitor)
    with monitor:
        monitor.train_start(model, optimizer)
        for epoch in range(start.epoch, args.epochs):
            skip = start.batches_done(epoch)
            batches.set_epoch(epoch, skip=skip)
            if not skip:
                monitor.epoch_start(epoch)
            model.train()
            for x, y in loader:
                x = x + 0.05 * random.gauss(0.0, 1.0) + 0.05 * float(np.random.normal())
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                scaler.scale(loss).backward()
                monitor.after_backward()
                _maybe_die(args, monitor, "after_backward")
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                monitor.step_end(loss=loss)
                _maybe_die(args, monitor, "step_end")
            model.eval()
            with torch.no_grad():
                validation = nn.functional.cross_entropy(model(inputs[48:]), labels[48:])
            monitor.validation_end({"loss": validation})
            monitor.epoch_end()
        assert monitor.flush(timeout=20), "the dashboard did not get every window"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, args.out)


def _maybe_die(args: argparse.Namespace, monitor: Monitor, phase: str) -> None:
    if monitor.state.step == args.kill_at and phase == args.kill_phase:
        if not monitor.flush(timeout=20):  # the dashboard shows steps after the checkpoint, to be taken back
            print("the dashboard was not up to date when the run was killed", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
