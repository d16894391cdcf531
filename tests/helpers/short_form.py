"""A loop that resumes in two lines, as a user writes it: re-run the same command and it continues.

    python tests/helpers/short_form.py --env my-run --port 8097 --run-dir runs/my-run \
        --checkpoints runs/my-run/checkpoints --out final.pt [--loader sampler|generator] [--fresh] \
        [--validate-first] [--validate-every 6 [--hang-validating 12]] [--passes] [--workers 2 [--persistent] [--start spawn]] [--batch 8] [--epochs 2]
        [--extend] [--log-after-hooks] [--validation-workers 2 [--pause-validating 12]]
        [--work-after-training 30]

Against the usual monitor lines it adds ``resume=True`` to the Checkpoint and iterates
``monitor.epochs(...)`` and ``monitor.batches(loader)``. Prints ``step N`` after each step, so a
test knows when to kill it (``--log-after-hooks``: after logging a point of its own, window
``after step_end``, as a loop logs what it measures itself). ``--validate-first`` validates at the start of each epoch instead of
its end, on a shuffled loader iterated through ``monitor.batches`` too; ``--validate-every N`` validates
so inside the batches loop after every N-th step. ``--passes`` trains in a step-based loop without
epochs: ``while step < steps: for x, y in monitor.batches(loader)``.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import Checkpoint, EpochBatchSampler, GradNorms, LearningRate, Monitor, Scalars

EPOCHS, SAMPLES, BATCH = 4, 96, 16  # 6 batches an epoch, 24 steps


def train(options: argparse.Namespace) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 8), torch.randint(0, 3, (SAMPLES,)))
    held_out = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    if options.loader == "sampler":
        loader = DataLoader(data, batch_sampler=EpochBatchSampler(data, batch_size=BATCH, seed=0))
    elif options.loader == "generator":  # as torch's reproducibility notes suggest
        loader = DataLoader(data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(7))
    else:
        loader = DataLoader(data, batch_size=options.batch, shuffle=True, num_workers=options.workers,
                            persistent_workers=options.persistent, multiprocessing_context=options.start)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
    loss_fn = nn.CrossEntropyLoss()

    checkpoint = Checkpoint(options.checkpoints, every_steps=3, scheduler=scheduler,
                            resume=True, fresh=options.fresh, extend=options.extend)
    monitor = Monitor([Scalars(), LearningRate(), GradNorms(), checkpoint], env=options.env, port=options.port,
                      run_dir=options.run_dir, flush_every=0.05)

    def validate() -> None:  # a shuffled loader: its iteration draws from torch's random numbers
        model.eval()
        with torch.no_grad():
            losses = [loss_fn(model(x), y).item() for x, y in
                      monitor.batches(DataLoader(held_out, batch_size=8, shuffle=True))]
        if options.hang_validating and monitor.state.step == options.hang_validating:  # a job killed in it
            print(f"validating {monitor.state.step}", flush=True)
            time.sleep(120)
        monitor.validation_end({"loss": sum(losses) / len(losses)})
        model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        scheduler.step()
        monitor.step_end(loss=loss)
        if options.validate_every and monitor.state.step % options.validate_every == 0:
            validate()  # inside the batches loop, right after a step (a checkpoint's, every 6)
        if options.log_after_hooks:  # as a loop logs what it measures itself (a clip norm, a sample)
            monitor.log.scalar("after step_end", "step", monitor.state.step, float(monitor.state.step))
        print(f"step {monitor.state.step}", flush=True)
        time.sleep(options.sleep)

    with monitor:
        monitor.train_start(model, optimizer)
        if options.passes:  # a step-based loop: passes over the loader until the steps are done, no epochs
            steps = options.epochs * len(loader)
            while monitor.state.step < steps:
                for x, y in monitor.batches(loader):
                    step(x, y)
                    if monitor.state.step == steps:
                        break
        for epoch in monitor.epochs(0 if options.passes else options.epochs):
            if options.validate_first:
                validate()
            for x, y in monitor.batches(loader):
                step(x, y)
            if not options.validate_first and options.validation_workers:  # a loader not through monitor.batches
                model.eval()
                with torch.no_grad():
                    losses = []
                    for x, y in DataLoader(held_out, batch_size=8, num_workers=options.validation_workers):
                        if monitor.state.step == options.pause_validating and not losses:  # a job signalled in it
                            print(f"validating {monitor.state.step}", flush=True)
                            time.sleep(2)
                        losses.append(loss_fn(model(x), y).item())
                    monitor.validation_end({"loss": sum(losses) / len(losses)})
                model.train()
            elif not options.validate_first:
                model.eval()
                with torch.no_grad():
                    inputs, targets = held_out.tensors
                    if monitor.state.step == options.pause_validating:  # a job signalled during it
                        print(f"validating {monitor.state.step}", flush=True)
                        time.sleep(2)
                    monitor.validation_end({"loss": loss_fn(model(inputs), targets).item()})
                model.train()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, options.out)
    if options.work_after_training:  # the script's own last work (a test set, an export), where a job is stopped
        print("trained", flush=True)
        time.sleep(options.work_after_training)


def job_parser() -> argparse.ArgumentParser:
    """The options every job of the resume tests takes: its env and server, where it logs, saves
    its checkpoints and its final weights."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--out", required=True)
    return parser


if __name__ == "__main__":
    parser = job_parser()
    parser.add_argument("--loader", choices=("shuffle", "sampler", "generator"), default="shuffle")
    parser.add_argument("--fresh", action="store_true", help="start a new run even after a kill")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (a run that lasts)")
    parser.add_argument("--validate-first", action="store_true", help="validate at each epoch's start")
    parser.add_argument("--workers", type=int, default=0, help="the shuffled loader's worker processes")
    parser.add_argument("--persistent", action="store_true", help="the workers last the run")
    parser.add_argument("--start", choices=("fork", "spawn", "forkserver"), default=None,
                        help="how the workers start (the platform's default unless told)")
    parser.add_argument("--batch", type=int, default=BATCH, help="the shuffled loader's batch size")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--extend", action="store_true", help="continue a finished run too")
    parser.add_argument("--log-after-hooks", action="store_true", help="log a point of each step after step_end")
    parser.add_argument("--validate-every", type=int, default=0, help="validate every N steps, in the batches loop")
    parser.add_argument("--hang-validating", type=int, default=0, help="wait in step N's validation (to be killed)")
    parser.add_argument("--pause-validating", type=int, default=0,
                        help="pause 2 s in the validation after the batches loop at step N (to be signalled)")
    parser.add_argument("--validation-workers", type=int, default=0,
                        help="validate at each epoch's end on a loader of its own with N workers, not monitor.batches")
    parser.add_argument("--work-after-training", type=float, default=0.0, help="seconds of work after the loop")
    parser.add_argument("--passes", action="store_true", help="a while loop of passes over the loader, no epochs")
    train(parser.parse_args())
