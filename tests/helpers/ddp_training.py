"""A small deterministic DDP training run for the distributed tests, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 tests/helpers/ddp_training.py --env ENV --port PORT \
        --run-dir RUNS --out OUT [--batch-size 4] [--average] [--random-draws] \
        [--checkpoints DIR --every-steps N] [--pause-at STEP]
    python tests/helpers/ddp_training.py ... --batch-size 8       # one process, the same global batches

Under torchrun it joins a gloo process group and wraps the model in DistributedDataParallel;
run by plain ``python`` it is the single-process run on the same global batches. Every run
resumes from ``--checkpoints`` when it holds one. ``--average`` plots loss and accuracy averaged
over the ranks (metric ``rank``, the rank's number, never is). ``--random-draws`` adds dropout
and input noise from torch, Python's ``random`` and NumPy, seeded differently on each rank.
``--pause-at`` stops every rank after that step, once the dashboard shows it, until it is killed.

Each rank writes to OUT: ``start-rank{r}.json`` (where it started), ``steps-rank{r}.jsonl`` (its
own loss and accuracy per step, and the ``all_reduce`` calls made from Python during the step),
``paused-rank{r}`` (its pid, at the pause) and ``final-rank{r}.pt`` (model and optimizer).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import Checkpoint, EpochBatchSampler, GradNorms, LearningRate, Monitor, ResumePoint, Scalars, resume


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--env", "--run-dir", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--average", action="store_true")
    parser.add_argument("--random-draws", action="store_true")
    parser.add_argument("--checkpoints", default=None)
    parser.add_argument("--every-steps", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true", help="a fresh run, whatever --checkpoints holds")
    parser.add_argument("--pause-at", type=int, default=None)
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    if distributed:
        dist.init_process_group("gloo")
    train(args, distributed)
    if distributed:
        gc.collect()  # the DDP model holds the process group: gone first, its threads are idle at exit
        dist.destroy_process_group()


def train(args: argparse.Namespace, distributed: bool) -> None:
    rank = dist.get_rank() if distributed else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_reduces = _count_all_reduces()

    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial weights everywhere
    data = torch.Generator().manual_seed(1234)
    inputs, labels = torch.randn(40, 8, generator=data), torch.randint(0, 3, (40,), generator=data)
    train = TensorDataset(inputs[:32], labels[:32])
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2 if args.random_draws else 0.0),
                          nn.Linear(16, 3))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    batches = EpochBatchSampler(train, batch_size=args.batch_size, seed=7)  # this rank's share of each batch
    loader = DataLoader(train, batch_sampler=batches, generator=batches.generator)
    torch.manual_seed(100 + rank)  # dropout and noise differ between the ranks
    random.seed(rank)
    np.random.seed(rank)

    start = ResumePoint(path=None)
    callbacks = [Scalars(average=("loss", "accuracy") if args.average else False), LearningRate(), GradNorms()]
    if args.checkpoints:
        if not args.no_resume:
            start = resume(args.checkpoints, model, optimizer, scheduler, missing_ok=True)
        callbacks.append(Checkpoint(args.checkpoints, every_steps=args.every_steps, keep_last=2,
                                    scheduler=scheduler))
    (out / f"start-rank{rank}.json").write_text(json.dumps(
        {"path": str(start.path) if start.path else None, "epoch": start.epoch, "skip": start.skip_batches,
         "step": start.step}))
    monitor = Monitor(callbacks, env=args.env, server="http://127.0.0.1", port=args.port, run_dir=args.run_dir,
                      rewind_to=start.runlog_position, flush_every=0.05)
    start.restore(monitor)
    steps = open(out / f"steps-rank{rank}.jsonl", "a")
    with monitor:
        monitor.train_start(model, optimizer)
        for epoch in range(start.epoch, args.epochs):
            skip = start.batches_done(epoch)
            batches.set_epoch(epoch, skip=skip)
            if not skip:
                monitor.epoch_start(epoch)
            model.train()
            for x, y in loader:
                if args.random_draws:
                    x = x + 0.05 * random.gauss(0.0, 1.0) + 0.05 * float(np.random.normal())
                outputs = model(x)
                loss = nn.functional.cross_entropy(outputs, y)
                optimizer.zero_grad()
                loss.backward()
                all_reduces["calls"] = 0
                monitor.after_backward()
                optimizer.step()
                scheduler.step()
                accuracy = (outputs.argmax(1) == y).float().mean()
                monitor.step_end(loss=loss, metrics={"accuracy": accuracy, "rank": float(rank)})
                steps.write(json.dumps({"step": monitor.state.step, "loss": loss.item(),
                                        "accuracy": accuracy.item(), "all_reduces": all_reduces["calls"]}) + "\n")
                steps.flush()
                if monitor.state.step == args.pause_at:
                    _pause(monitor, out, rank)
            model.eval()
            with torch.no_grad():  # the whole validation set on every rank: the same numbers everywhere
                validation = nn.functional.cross_entropy(model(inputs[32:]), labels[32:])
            monitor.validation_end({"loss": validation})
            monitor.epoch_end()
        assert monitor.flush(timeout=20), "the dashboard did not get every window"
    plain = model.module if distributed else model
    torch.save({"model": plain.state_dict(), "optimizer": optimizer.state_dict()}, out / f"final-rank{rank}.pt")


def _count_all_reduces() -> dict[str, int]:
    """Counts the calls of ``torch.distributed.all_reduce`` from Python (DDP's own run in C++)."""
    counter = {"calls": 0}
    original = dist.all_reduce

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    return counter


def _pause(monitor: Monitor, out: Path, rank: int) -> None:
    """Shows the dashboard everything so far, says so with this process's pid, and waits to be killed."""
    if not monitor.flush(timeout=20):
        print("the dashboard was not up to date at the pause", file=sys.stderr, flush=True)
    (out / f"paused-rank{rank}").write_text(str(os.getpid()))
    time.sleep(600)
    sys.exit("the pause was not ended by a kill")


if __name__ == "__main__":
    main()
