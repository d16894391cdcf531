"""A DDP loop as users write it, validating inside its batches loop, for the distributed tests.

    torchrun --standalone --nproc_per_node=2 tests/helpers/ddp_validation.py --env ENV --port PORT \
        --run-dir RUNS --out OUT [--every-rank | --at-epoch-start] [--pause-at STEP]

Every 2 steps, right after a step whose checkpoint is written, it validates: on rank 0 alone
(``if rank == 0:``), or with ``--every-rank`` on every rank, each on its own half of the
validation set, with ``Scalars(average_validation=True)``. With ``--at-epoch-start`` rank 0
alone validates the model of the epoch before at the start of each epoch after the first,
through ``monitor.batches``. The model has dropout: each rank draws its own masks. Each rank
writes the validation losses it passed to ``validation-rank{r}.json`` in OUT, and its final
weights to ``final-rank{r}.pt``. ``--pause-at`` waits to be killed after that step and its
validation (see ddp_training.py).
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from ddp_training import _pause
from monitor import Checkpoint, GradNorms, Monitor, Scalars

parser = argparse.ArgumentParser()
for name in ("--env", "--run-dir", "--out"):
    parser.add_argument(name, required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--every-rank", action="store_true")
parser.add_argument("--at-epoch-start", action="store_true")
parser.add_argument("--pause-at", type=int, default=None)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
torch.manual_seed(0)
inputs, labels = torch.randn(48, 8), torch.randint(0, 3, (48,))
train_set, val_set = TensorDataset(inputs[:32], labels[:32]), TensorDataset(inputs[32:], labels[32:])
loader = DataLoader(train_set, batch_size=4, sampler=DistributedSampler(train_set, seed=1))
val_loader = DataLoader(val_set, batch_size=8, sampler=DistributedSampler(val_set, shuffle=False)
                        if args.every_rank else None)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2),
                                                          nn.Linear(16, 3)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
out = Path(args.out)
validations = []

monitor = Monitor([Scalars(average=True, average_validation=args.every_rank), GradNorms(),
                   Checkpoint(out / "ckpt", every_steps=2, resume=True)],
                  env=args.env, port=args.port, run_dir=args.run_dir)


def validate() -> None:
    model.eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model.module(vx), vy).item() for vx, vy in monitor.batches(val_loader)]
    model.train()
    validations.append(sum(losses) / len(losses))
    monitor.validation_end({"loss": validations[-1]})


with monitor:
    monitor.train_start(model, optimizer)
    for epoch in monitor.epochs(2):
        if args.at_epoch_start and epoch > 0 and rank == 0:
            validate()
        for x, y in monitor.batches(loader):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss=loss)
            if monitor.state.step % 2 == 0 and not args.at_epoch_start and (args.every_rank or rank == 0):
                validate()
            if monitor.state.step == args.pause_at:
                _pause(monitor, out, rank)
        monitor.epoch_end()
    assert monitor.flush(timeout=20), "the dashboard did not get every window"
(out / f"validation-rank{rank}.json").write_text(json.dumps(validations))
torch.save(model.module.state_dict(), out / f"final-rank{rank}.pt")
del model
gc.collect()
dist.destroy_process_group()
