"""Train an ``nn.Sequential`` to tell circles, squares and triangles apart, with a live dashboard.

    monitor serve &                                    # a Visdom server (or: monitor demo)
    python examples/train_sequential.py                # about a minute on a laptop CPU
    python examples/train_sequential.py --epochs 1 --samples 500 --env quick

Then open http://127.0.0.1:8097/env/shapes-sequential. This is an ordinary PyTorch loop; the
lines that feed the dashboard are marked ``# monitor``. A new run replaces the curves of an
earlier run in the same env; with ``--checkpoint-dir``, the same command run again after a kill
continues them instead.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch
from torch import nn
from torch.utils.data import DataLoader

from monitor import (Checkpoint, EpochBatchSampler, GradNorms, Images, LearningRate, Monitor, Scalars,
                     Summary)
from monitor.checkpoint import CheckpointWriteError
from options import COMMAND_SETTINGS, example_options
from shapes import CLASSES, Shapes


def build_model() -> nn.Sequential:
    """Two convolution blocks and a small classifier, for 3 x 32 x 32 images."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 x 16 x 16
        nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 8 x 8
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64), nn.ReLU(),
        nn.Linear(64, len(CLASSES)),
    )


def evaluate(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> dict[str, float]:
    """Mean loss and accuracy over ``loader``, without building a graph."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            total_loss += loss_fn(outputs, labels).item() * len(labels)
            correct += (outputs.argmax(1) == labels).sum().item()
    model.train()
    return {"loss": total_loss / len(loader.dataset), "accuracy": correct / len(loader.dataset)}


def train(*, epochs: int = 6, samples: int = 8000, server: str | None = None, port: int | None = None,
          env: str = "shapes-sequential", checkpoint_dir: Path | None = None, checkpoint_every: int = 100,
          fresh: bool = False, seed: int = 0, batch_size: int = 32, lr: float = 5e-3) -> nn.Module:
    """Trains the model and returns it; the dashboard is in ``env`` on the given Visdom server.

    With ``checkpoint_dir``, a checkpoint is saved every ``checkpoint_every`` steps, after each
    epoch and at the end, and a run killed before its end continues from the latest one there
    when run again (``fresh`` starts a new run instead).
    """
    torch.manual_seed(seed)
    train_set = Shapes(samples, seed=0)
    val_set = Shapes(max(samples // 5, 1), seed=1)
    # Like shuffle=True, but each epoch's order depends on (seed, epoch) alone: a resumed run
    # sees the same batches, and skips those it already did.
    batches = EpochBatchSampler(train_set, batch_size=batch_size, seed=seed)
    loader = DataLoader(train_set, batch_sampler=batches, generator=batches.generator)
    val_loader = DataLoader(val_set, batch_size=256)

    model = build_model()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=epochs * batches.batches_per_epoch)

    callbacks = [                                                             # monitor
        Summary(hparams={"epochs": epochs, "samples": samples, "batch_size": batch_size, "seed": seed}),
        Scalars(),                              # loss and accuracy: train per step, validation per epoch
        LearningRate(),
        GradNorms(),                            # per layer and in total, after backward()
        Images(every=50, count=16, captions="predictions", class_names=CLASSES),
    ]
    if checkpoint_dir is not None:     # last, so that a checkpoint holds what the others logged
        callbacks.append(Checkpoint(checkpoint_dir, every_steps=checkpoint_every, every_epochs=1,  # monitor
                                    scheduler=scheduler, metric="accuracy", mode="max",
                                    resume=True, fresh=fresh))  # a re-run continues a killed run
    monitor = Monitor(callbacks, env=env, server=server, port=port)          # monitor

    with monitor:                                                             # monitor
        monitor.train_start(model, optimizer, hparams={"lr": lr})             # monitor
        for epoch in monitor.epochs(epochs):     # monitor: from where a killed run left off
            with click.progressbar(length=len(loader), label=f"epoch {epoch + 1}/{epochs}",
                                   item_show_func=lambda text: text) as bar:
                for images, labels in monitor.batches(loader):                # monitor
                    outputs = model(images)
                    loss = loss_fn(outputs, labels)
                    optimizer.zero_grad()
                    loss.backward()
                    monitor.after_backward()                                  # monitor
                    optimizer.step()
                    scheduler.step()
                    accuracy = (outputs.argmax(1) == labels).float().mean()
                    monitor.step_end(loss=loss, metrics={"accuracy": accuracy},   # monitor
                                     inputs=images, targets=labels, outputs=outputs)
                    bar.update(1, f"step {monitor.state.step}  loss {loss.item():.3f}")
            monitor.validation_end(evaluate(model, val_loader, loss_fn))     # monitor
    return model


@click.command(context_settings=COMMAND_SETTINGS)
@example_options(env="shapes-sequential", epochs=6, samples=8000)
def main(**options) -> None:
    """Train an nn.Sequential on the Shapes dataset with a live Visdom dashboard."""
    try:
        train(**options)
    except CheckpointWriteError as error:  # e.g. --checkpoint-dir holds another run's checkpoints
        raise click.ClickException(str(error)) from None


if __name__ == "__main__":
    main()
