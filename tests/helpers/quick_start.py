"""README's quick start, as a user runs it: an ordinary loop with the monitor's lines added.

    python tests/helpers/quick_start.py --env my-run --port 8097 --run-dir runs/my-run --seed 1
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import GradNorms, LearningRate, Monitor, Scalars, Summary


def train(env: str, port: int, run_dir: str, seed: int, epochs: int = 2, sleep: float = 0.0) -> Monitor:
    torch.manual_seed(seed)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    loader = DataLoader(data, batch_size=16, shuffle=True)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    monitor = Monitor([Summary(), Scalars(), LearningRate(), GradNorms()], env=env, port=port, run_dir=run_dir,
                      flush_every=0.05)
    with monitor:
        monitor.train_start(model, optimizer, hparams={"seed": seed})
        for epoch in range(epochs):
            monitor.epoch_start(epoch)
            for x, y in loader:
                outputs = model(x)
                loss = loss_fn(outputs, y)
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                optimizer.step()
                accuracy = (outputs.argmax(1) == y).float().mean()
                monitor.step_end(loss=loss, metrics={"accuracy": accuracy})
                if sleep:
                    import time
                    time.sleep(sleep)
            monitor.validation_end({"loss": loss.item(), "accuracy": accuracy.item()})
            monitor.epoch_end()
    return monitor


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (a run that lasts)")
    options = parser.parse_args()
    train(options.env, options.port, options.run_dir, options.seed, sleep=options.sleep)
