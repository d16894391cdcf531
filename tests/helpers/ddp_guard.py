"""Two ranks under torchrun where one rank's loss goes bad alone; each records where Guard stopped it.

    torchrun --standalone --nproc_per_node=2 tests/helpers/ddp_guard.py --out OUT --bad nan|spike

Rank 1's loss is NaN (``--bad nan``) or 100 times its size (``--bad spike``) at step 30; rank 0's
stays good. Guard(action="stop", grads=False) watches the loss alone, so only an agreement
between the ranks stops rank 0 too; a Checkpoint every 10 steps (in OUT/ckpt) keeps the one before.
Each rank writes OUT/rank{r}.json: the step it stopped at (null if it never did) and its message. A rank left waiting for the other fails at the group's 20 s timeout.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from monitor import Checkpoint, Guard, Monitor, TrainingDiverged
from monitor.log import NullSink

BAD_STEP = 30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--bad", choices=("nan", "spike"), required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a steady loss: the spike stands out
    x, y = torch.ones(8, 4), torch.zeros(8, 1)
    monitor = Monitor([Guard(action="stop", spike=5, grads=False),
                       Checkpoint(Path(args.out, "ckpt"), every_steps=10, at_end=False)], sink=NullSink())
    stopped = message = None
    try:
        with monitor:
            monitor.train_start(model, optimizer)
            for step in range(1, 61):
                loss = nn.functional.mse_loss(model(x), y)
                if rank == 1 and step == BAD_STEP:
                    loss = loss * (float("nan") if args.bad == "nan" else 100.0)
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                optimizer.step()
                monitor.step_end(loss=loss.detach())
    except TrainingDiverged as error:
        stopped, message = monitor.state.step, str(error)
    Path(args.out, f"rank{rank}.json").write_text(json.dumps({"stopped": stopped, "message": message}))
    del model, optimizer, monitor
    gc.collect()  # the DDP model holds the process group: gone first, its threads are idle at exit
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
