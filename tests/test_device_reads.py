"""No read of an accelerator tensor on the training thread, the Checkpoint callback included.

Meta tensors stand in for a GPU: reading one (.item(), .tolist(), float()) raises.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monitor import Checkpoint, GradNorms, Images, LearningRate, Monitor, Scalars, Summary, Timing
from monitor.log import NullSink
from monitor.layer_sums import LayerNorms
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
    scaler = torch.amp.GradScaler("cpu")
    scaler._scale = torch.full((1,), 2.0 ** 16, device="meta")  # as a GPU's scaler holds it, after scale()
    for x in ("step", "epoch"):
        monitor, sink = monitor_with(Scalars(x=x), LearningRate(),
                                     GradNorms(weights=True, update_ratio=True, loss_scale=True),
                                     Images(every=1, captions="both", class_names=["a", "b"]), Summary(),
                                     Timing(every=1))
        monitor.train_start(model, optimizer, scaler=scaler)
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
        values = [r.values for r in sink.of(Points)
                  if r.window in ("loss", "grad norm", "update ratio", "loss scale")]
        left = [v for value in values for v in ((value.scale, *value.norms) if isinstance(value, LayerNorms) else
                                                  value if isinstance(value, tuple) else (value,))]
        assert values and all(v.device.type == "meta" for v in left if isinstance(v, torch.Tensor))
        assert any(isinstance(v, LayerNorms) for v in values)  # norms added up later, by the worker
        scales = [r.values for r in sink.of(Points) if r.window == "loss scale"]  # 0-d: read with the step's others
        assert [(type(v), v[0].device.type, v[0].dim()) for v in scales] == [(tuple, "meta", 0)] * 3
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


def _as_a_gpu_run_logs(steps: int, tensor=torch.tensor) -> list:
    """The records of ``steps`` GPU steps, with CPU tensors standing in: a 0-d loss, a learning
    rate read as a float, and four float64 parameter norms with a GradScaler's float32 scale."""
    from monitor.layer_sums import LayerNorms, LayerSums

    layers = LayerSums(((0, 1), (2, 3)))
    records = []
    for step in range(1, steps + 1):
        records.append(Points("loss", step, ("train",), (tensor(1.0 / step),)))
        records.append(Points("learning rate", step, ("lr",), (0.1,)))
        norms = [tensor(float(step * i), dtype=torch.float64) for i in (3, 4, 12, 5)]
        records.append(Points("grad norm", step, ("0.Linear", "1.Linear", "total"),
                              LayerNorms(norms, layers, tensor(2.0 * step))))
    return records


def test_the_forwarder_reads_the_device_scalars_of_a_batch_in_one_copy(monkeypatch):
    # Read a record at a time, a GPU step's loss and norms each cost the forwarder a copy to the
    # host, a wait for the device and a dozen tensor calls, all holding the training process's GIL.
    import monitor.host
    import monitor.norms
    from monitor.entries import read, with_scalars_read

    copies = []

    def counted(tensor):
        copies.append(tuple(tensor.shape))
        return tensor.cpu()

    monkeypatch.setattr(monitor.host, "on_host", counted)
    monkeypatch.setattr(monitor.norms, "on_host", counted)
    records = _as_a_gpu_run_logs(100)
    one_by_one = [read(record) for record in records]
    assert len(copies) == 200  # a loss and a step's norms and scale: two copies a step
    copies.clear()
    together = [read(record) for record in with_scalars_read(records)]
    assert copies == [(600,)]  # 100 losses, 400 norms, 100 scales
    values = [list(r.values() if callable(r.values) else r.values) for r in together]
    assert values == [list(r.values() if callable(r.values) else r.values) for r in one_by_one]
    assert values[2] == [2.5, 6.5, math.hypot(3, 4, 12, 5) / 2]  # each layer's norm and the total, unscaled


def test_a_batch_s_scalars_that_cannot_be_read_together_are_read_or_reported_one_by_one(
        visdom_server, read_window, tmp_path, caplog):
    from monitor.layer_sums import LayerNorms, LayerSums

    with Monitor([], env="device-batch", server="http://127.0.0.1", port=visdom_server.port,
                 run_dir=tmp_path) as monitor:
        for record in _as_a_gpu_run_logs(3):
            monitor.sink.put(record)
        monitor.sink.put(Points("pair", 1, ("a",), (torch.tensor([1.0, 2.0]),)))  # two values for one trace
        monitor.sink.put(Points("count", 1, ("n",), (torch.tensor(2 ** 24 + 1),)))  # not rounded to a float32
        monitor.sink.put(Points("complex", 1, ("z",), (torch.tensor(1 + 2j),)))  # reported, not stacked with the rest
        monitor.sink.put(Points("no norms", 1, ("total",), LayerNorms([], LayerSums(()))))  # the batch goes on
        monitor.sink.put(Points("grad norm", 4, ("0.Linear", "total"),
                                LayerNorms([torch.tensor(3.0), torch.tensor(4.0)], LayerSums(((0, 1),)),
                                           torch.tensor([2.0]))))  # a scale of shape (1,): read alone
        assert monitor.flush(timeout=10)
    norms = read_window(visdom_server, "device-batch", "grad norm")
    assert norms["total"] == ([1, 2, 3, 4], [pytest.approx(math.hypot(3, 4, 12, 5) / 2)] * 3 + [2.5])
    assert read_window(visdom_server, "device-batch", "loss")["train"] == ([1, 2, 3], [1.0, 0.5, pytest.approx(1 / 3)])
    assert read_window(visdom_server, "device-batch", "count")["n"] == ([1], [2 ** 24 + 1])
    assert read_window(visdom_server, "device-batch", "no norms")["total"] == ([1], [0.0])
    assert "'pair'" in caplog.text and "'complex'" in caplog.text and "skipped" in caplog.text
