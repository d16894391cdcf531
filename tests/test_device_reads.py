"""No read of an accelerator tensor on the training thread, the Checkpoint callback included.

Meta tensors stand in for a GPU: reading one (.item(), .tolist(), float()) raises.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor import Checkpoint, GradNorms, Images, LearningRate, Monitor, Scalars, Summary, Timing
from monitor.log import NullSink
from monitor.records import ImageGrid as ImageRecord, Points
from helpers.monitors import monitor_with, small_model


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


def test_callbacks_never_read_accelerator_tensors_on_the_training_thread():
    """Meta tensors stand in for a GPU: reading one (.item(), .tolist(), float()) raises."""
    model = small_model().to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in ("step", "epoch"):
        monitor, sink = monitor_with(Scalars(x=x), LearningRate(), GradNorms(weights=True, update_ratio=True),
                                     Images(every=1, captions="both", class_names=["a", "b"]), Summary(),
                                     Timing(every=1))
        monitor.train_start(model, optimizer)
        monitor.epoch_start(0)
        batch = torch.randn(8, 4, device="meta")
        for _ in range(3):
            loss = model(batch).sum()
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            labels = torch.zeros(8, dtype=torch.long, device="meta")
            outputs = torch.zeros(8, 2, device="meta")
            monitor.step_end(loss=loss, metrics={"accuracy": loss}, inputs=batch.reshape(8, 1, 2, 2),
                             targets=labels, outputs=outputs)
        monitor.epoch_end()
        monitor.validation_end({"loss": loss})
        values = [r.values for r in sink.of(Points) if r.window in ("loss", "grad norm", "update ratio")]
        assert values and all(v.device.type == "meta" for v in values if isinstance(v, torch.Tensor))
        assert any(callable(v) for v in values)  # norms added up later, by the worker
        captions = [r.captions for r in sink.of(ImageRecord)]
        assert captions and all(p.device.type == "meta" for c in captions for p in c.parts)  # read later


def test_the_final_metrics_of_a_run_are_read_by_the_worker():
    from monitor.records import Hparams

    model = small_model().to("meta")
    monitor, sink = monitor_with(Summary(hparams={"lr": 0.1}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    monitor.validation_end({"loss": torch.zeros((), device="meta")})
    monitor.train_end()
    record = sink.of(Hparams)[-1]  # the one at train_end (the one at train_start has no metrics)
    assert record.metrics["loss"].device.type == "meta"
