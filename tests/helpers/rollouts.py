"""A loop with no loader, as reinforcement learning writes one: ``while monitor.state.step < updates``.

    python tests/helpers/rollouts.py --env my-run --port 8097 --run-dir runs/my-run \
        --checkpoints runs/my-run/checkpoints --out final.pt [--sleep 0.5] [--steps-loop]

Each update's batch comes from a generator seeded with the update's number (its rollout), so a
resumed run draws what one never stopped does. After ``step_end`` the loop does what such loops
do: every third update (a checkpoint's, ``every_steps=3``) it evaluates the policy
(``validation_end``), and it logs the update's episode return in a window of its own; then it
prints ``step N``, so a test knows when to kill it. ``--steps-loop`` iterates ``monitor.steps(updates)``
instead and logs the rollout's episodes as it collects them, before the update's backward (window
``episode length``, at the env steps done), then prints ``rollout N`` and sleeps there too.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from monitor import Checkpoint, GradNorms, Monitor, Scalars
from short_form import job_parser  # beside this file

UPDATES = 12


def train(options: argparse.Namespace) -> None:
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    evaluation = torch.randn(32, 4)
    checkpoint = Checkpoint(options.checkpoints, every_steps=3, resume=True)
    monitor = Monitor([Scalars(), GradNorms(), checkpoint], env=options.env, port=options.port,
                      run_dir=options.run_dir, flush_every=0.05)
    with monitor:
        monitor.train_start(policy, optimizer)
        for _ in _updates(monitor, options.steps_loop):
            rollout = torch.Generator().manual_seed(monitor.state.step)
            states = torch.randn(64, 4, generator=rollout)
            returns = torch.randn(64, generator=rollout)
            if options.steps_loop:  # two episodes of the rollout's 64 env steps end as it collects them
                for episode in (1, 2):
                    monitor.log.scalar("episode length", "train", 64 * monitor.state.step + 32 * episode, 32)
                print(f"rollout {monitor.state.step + 1}", flush=True)
                time.sleep(options.sleep)
            log_probs = policy(states).log_softmax(1)[:, 0]
            loss = -(log_probs * returns).mean()
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss=loss)
            update = monitor.state.step
            if update % 3 == 0:
                with torch.no_grad():
                    monitor.validation_end({"loss": policy(evaluation).abs().mean().item()})
            monitor.log.scalar("episode return", "train", update, returns.sum().item())
            print(f"step {update}", flush=True)
            time.sleep(options.sleep)
    torch.save({"model": policy.state_dict(), "optimizer": optimizer.state_dict()}, options.out)


def _updates(monitor: Monitor, steps_loop: bool):
    if steps_loop:
        yield from monitor.steps(UPDATES)
    else:
        while monitor.state.step < UPDATES:
            yield monitor.state.step


if __name__ == "__main__":
    parser = job_parser()
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per update (a run that lasts)")
    parser.add_argument("--steps-loop", action="store_true", help="monitor.steps(updates), logging in the rollout")
    train(parser.parse_args())
