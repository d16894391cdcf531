"""The Sequential example under DistributedDataParallel: several processes on the CPU, one dashboard.

    monitor serve &                                               # a Visdom server (or: monitor demo)
    torchrun --nproc_per_node=2 examples/train_ddp.py             # two processes, gloo backend
    torchrun --nproc_per_node=2 examples/train_ddp.py --epochs 1 --samples 500 --env quick

Then open http://127.0.0.1:8097/env/shapes-ddp. torchrun starts one process per rank, each
running this file: each trains on its share of every batch of 32 and DDP averages the
gradients in ``backward()``, so the model learns as train_sequential.py's does on the same
batches. Only rank 0 talks to the dashboard and writes checkpoints; the loss and accuracy shown
are the mean over the ranks. The lines that differ from train_sequential.py are marked ``# ddp``;
the dashboard's lines ``# monitor``. A checkpoint of either example resumes the other.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import click
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from monitor import (Checkpoint, EpochBatchSampler, GradNorms, Images, LearningRate, Monitor, Scalars,
                     Summary)
from monitor.checkpoint import CheckpointWriteError
from options import COMMAND_SETTINGS, example_options
from shapes import CLASSES, Shapes
from train_sequential import build_model, evaluate


def train(*, epochs: int = 6, samples: int = 8000, server: str | None = None, port: int | None = None,
          env: str = "shapes-ddp", checkpoint_dir: Path | None = None, checkpoint_every: int = 100,
          fresh: bool = False, seed: int = 0, batch_size: int = 32, lr: float = 5e-3) -> nn.Module:
    """Trains the model in this process's rank of the job and returns it (unwrapped from DDP).

    ``batch_size`` is the global batch, split between the ranks. With ``checkpoint_dir``, rank 0
    saves a checkpoint every ``checkpoint_every`` steps, after each epoch and at the end;
    a run killed before its end continues
    every rank from the latest one there when run again (``fresh`` starts a new run instead).
    """
    world_size = dist.get_world_size()                                        # ddp
    torch.manual_seed(seed)
    train_set = Shapes(samples, seed=0)
    val_set = Shapes(max(samples // 5, 1), seed=1)
    # Like DistributedSampler: each rank gets its share of every batch (16 of 32 with two
    # processes), and the job's batches are train_sequential.py's; each epoch's order depends on
    # (seed, epoch) alone, so a resumed run skips the batches it already did.
    batches = EpochBatchSampler(train_set, batch_size=max(batch_size // world_size, 1), seed=seed)  # ddp
    loader = DataLoader(train_set, batch_sampler=batches, generator=batches.generator)
    val_loader = DataLoader(val_set, batch_size=256)

    model = DistributedDataParallel(build_model())   # ddp: starts from rank 0's weights, averages gradients
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=epochs * batches.batches_per_epoch)

    callbacks = [                                                             # monitor
        Summary(hparams={"epochs": epochs, "samples": samples, "batch_size": batch_size, "seed": seed,
                         "processes": world_size}),
        Scalars(average=True),             # ddp: loss and accuracy averaged over the ranks, one all_reduce a step
        LearningRate(),
        GradNorms(),                       # of the averaged gradients: those of the whole batch
        Images(every=50, count=16, captions="predictions", class_names=CLASSES),
    ]
    if checkpoint_dir is not None:     # last, so that a checkpoint holds what the others logged
        callbacks.append(Checkpoint(checkpoint_dir, every_steps=checkpoint_every, every_epochs=1,  # monitor
                                    scheduler=scheduler, metric="accuracy", mode="max",
                                    resume=True, fresh=fresh))  # a re-run continues a killed run
    monitor = Monitor(callbacks, env=env, server=server, port=port)          # monitor: a dashboard on rank 0 only

    with monitor:                                                             # monitor
        monitor.train_start(model, optimizer, hparams={"lr": lr})             # monitor
        for epoch in monitor.epochs(epochs):     # monitor: from where a killed run left off
            with click.progressbar(length=len(loader), label=f"epoch {epoch + 1}/{epochs}",
                                   item_show_func=lambda text: text,
                                   hidden=not monitor.is_main) as bar:        # ddp: rank 0's bar only
                for images, labels in monitor.batches(loader):                # monitor
                    outputs = model(images)
                    loss = loss_fn(outputs, labels)
                    optimizer.zero_grad()
                    loss.backward()                                           # ddp: averages the gradients
                    monitor.after_backward()                                  # monitor
                    optimizer.step()
                    scheduler.step()
                    accuracy = (outputs.argmax(1) == labels).float().mean()
                    monitor.step_end(loss=loss, metrics={"accuracy": accuracy},   # monitor
                                     inputs=images, targets=labels, outputs=outputs)
                    bar.update(1, f"step {monitor.state.step}  loss {loss.item():.3f}")
            # ddp: every rank evaluates the whole (small) validation set with the plain model, so
            # all agree; for a large one, give each rank a share and let Scalars average.
            monitor.validation_end(evaluate(model.module, val_loader, loss_fn))  # monitor
    return model.module


@click.command(context_settings=COMMAND_SETTINGS)
@example_options(env="shapes-ddp", epochs=6, samples=8000)
def main(**options) -> None:
    """Train the Sequential example with DistributedDataParallel; start it with torchrun."""
    if "RANK" not in os.environ:
        raise click.UsageError("start it with torchrun, which runs one process per rank: "
                               "torchrun --nproc_per_node=2 examples/train_ddp.py [OPTIONS]")
    dist.init_process_group("gloo")   # ddp: torchrun's RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    try:
        train(**options)
    except CheckpointWriteError as error:  # e.g. --checkpoint-dir holds another run's checkpoints
        raise click.ClickException(str(error)) from None
    finally:
        gc.collect()  # ddp: the DDP model holds the process group; collected first, no gloo thread outlives Python
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
