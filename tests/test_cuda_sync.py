"""On a GPU, no callback makes the training thread wait for the device (skipped without one).

``torch.cuda.set_sync_debug_mode("error")`` raises on any call that synchronizes the host with
the device; 100 steps with every logging callback on must raise nothing. Checkpoint (saving
reads the device by nature) and Profile (a diagnostic) are left out.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor import (GradNorms, Graph, Guard, Histograms, Images, LearningRate, Monitor, Scalars, Summary,
                     Timing)
from monitor.log import NullSink

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_hundred_steps_with_every_callback_never_synchronize():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    callbacks = [Summary(), Scalars(), LearningRate(), GradNorms(weights=True, update_ratio=True),
                 Images(every=10), Histograms(every=10), Timing(every=1), Guard(spike=6.0), Graph(inputs=x)]
    monitor = Monitor(callbacks, sink=NullSink(), raise_errors=True)
    monitor.train_start(model, optimizer)  # Graph traces here, before the checked loop
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(100):
            outputs = model(x)
            loss = nn.functional.cross_entropy(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss=loss, metrics={"accuracy": (outputs.argmax(1) == y).float().mean()},
                             inputs=x, targets=y, outputs=outputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    monitor.close()
