"""On a GPU, no callback makes the training thread wait for the device (skipped without one).

``torch.cuda.set_sync_debug_mode("error")`` raises on any call that synchronizes the host with
the device; 100 steps with every logging callback on must raise nothing, and what the sink's
worker read off the device afterwards (norms, event times, memory) must all reach the server.
Checkpoint (saving reads the device by nature) and Profile (a diagnostic) are left out.
"""
from __future__ import annotations

import torch
from torch import nn

from monitor import (GradNorms, Graph, Guard, Histograms, Images, LearningRate, Monitor, Scalars, Summary,
                     Timing)
from helpers.devices import ON_CUDA, never_synchronizing

pytestmark = ON_CUDA

STEPS = 100


def test_a_hundred_steps_with_every_callback_never_synchronize(visdom_server, tmp_path, read_window, caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    guard = Guard(spike=6.0)
    callbacks = [Summary(), Scalars(), LearningRate(), GradNorms(weights=True, update_ratio=True),
                 Images(every=10), Histograms(every=10), Timing(every=1), guard, Graph(inputs=x)]
    with Monitor(callbacks, env="cuda-sync", port=visdom_server.port, run_dir=tmp_path, raise_errors=True) as monitor:
        monitor.train_start(model, optimizer)  # Graph traces here, before the checked loop
        with never_synchronizing("cuda"):
            for _ in range(STEPS):
                outputs = model(x)
                loss = nn.functional.cross_entropy(outputs, y)
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                optimizer.step()
                monitor.step_end(loss=loss, metrics={"accuracy": (outputs.argmax(1) == y).float().mean()},
                                 inputs=x, targets=y, outputs=outputs)
        assert monitor.flush(timeout=60)
        shown = {win: read_window(visdom_server, "cuda-sync", win)
                 for win in ("loss", "grad norm", "step time", "memory")}
    assert guard.bad_step is None and "could not be read" not in caplog.text  # the worker's reads: no error
    assert shown["loss"]["train"][0] == list(range(1, STEPS + 1))
    assert shown["grad norm"]["total"][0] == list(range(1, STEPS + 1))
    steps, device_ms = shown["step time"]["device"]
    assert steps == list(range(2, STEPS + 1)) and all(ms > 0 for ms in device_ms), device_ms
    assert min(shown["memory"]["allocated"][1]) > 0
