"""No read of an accelerator tensor on the training thread, the Checkpoint callback included.

Meta tensors stand in for a GPU: reading one (.item(), .tolist(), float()) raises.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor import Checkpoint, Monitor, Scalars
from monitor.log import NullSink


@pytest.mark.parametrize("metric_from", ["step", "validation", "epoch"])
def test_a_checkpoint_ranking_by_a_device_metric_reads_it_only_when_it_saves(tmp_path, metric_from):
    model = nn.Linear(4, 2).to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path, every_epochs=100, at_end=False, metric="loss", metric_from=metric_from)
    monitor = Monitor([Scalars(), checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(model, optimizer)
    monitor.epoch_start(0)
    for _ in range(3):
        loss = model(torch.randn(8, 4, device="meta")).sum()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        monitor.step_end(loss=loss)
    monitor.validation_end({"loss": loss})
    monitor.epoch_end({"loss": loss})
    with pytest.raises(RuntimeError, match="meta"):  # reading it at a save would have worked on a GPU
        checkpoint.state_dict()
