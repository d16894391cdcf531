"""The callbacks turn loop state into the right records: windows, traces, x and exact values.

These run against an in-memory sink that keeps every record; tests/test_callbacks_live.py
runs the same callbacks against a real Visdom server.
"""
from __future__ import annotations

import io
import logging
import math
import weakref

import pytest
import torch
from torch import nn

from monitor import Callback, GradNorms, Images, LearningRate, Monitor, Scalars, Summary
from monitor.log import NullSink
from monitor.records import ImageGrid as ImageRecord, Layout, Points, Text


class ListSink(NullSink):
    def __init__(self) -> None:
        self.records: list = []

    def put(self, record) -> None:
        self.records.append(record)

    def points(self, window: str) -> dict[str, list[tuple[float, float]]]:
        """``{trace: [(x, value), ...]}`` of a window, in the order logged."""
        traces: dict[str, list] = {}
        for r in self.records:
            if isinstance(r, Points) and r.window == window:
                for trace, value in zip(r.traces, values_of(r)):
                    traces.setdefault(trace, []).append((r.x, float(value)))
        return traces

    def of(self, kind: type, window: str | None = None) -> list:
        return [r for r in self.records if isinstance(r, kind) and (window is None or r.window == window)]


def values_of(record: Points) -> list[float]:
    """A record's values as the sink's worker reads them (it calls a function, reads a tensor)."""
    values = record.values() if callable(record.values) else record.values
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def monitor_with(*callbacks, raise_errors: bool = True) -> tuple[Monitor, ListSink]:
    sink = ListSink()
    return Monitor(list(callbacks), sink=sink, raise_errors=raise_errors), sink


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 3))


def train(monitor: Monitor, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
          on_backward=None) -> None:
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        if on_backward:
            on_backward()
        optimizer.step()
        monitor.step_end(loss=loss)


# --- Monitor ------------------------------------------------------------------------------------
def test_the_monitor_keeps_no_batch_or_loss_alive_after_step_end():
    seen = []

    class Peek(Callback):
        def on_step_end(self, state, log):
            seen.append((id(state.loss), id(state.inputs)))

    monitor, _ = monitor_with(Peek())
    inputs = torch.rand(4, 3)
    loss = inputs.sum()
    monitor.step_end(loss=loss, inputs=inputs)
    assert seen == [(id(loss), id(inputs))]  # the callbacks see this step's
    batch = weakref.ref(inputs)
    del inputs, loss
    assert batch() is None
    assert (monitor.state.loss, monitor.state.inputs) == (None, None)


# --- Scalars ------------------------------------------------------------------------------------
def test_scalars_log_loss_and_each_metric_per_step_in_their_own_windows():
    monitor, sink = monitor_with(Scalars())
    for step, loss in enumerate([0.9, 0.7, 0.5], start=1):
        monitor.step_end(loss=torch.tensor(loss), metrics={"accuracy": step / 10, "top5": torch.tensor([0.5])})
    assert sink.points("loss") == {"train": [(1, pytest.approx(0.9)), (2, pytest.approx(0.7)),
                                             (3, pytest.approx(0.5))]}
    assert sink.points("accuracy") == {"train": [(1, 0.1), (2, 0.2), (3, 0.3)]}
    assert sink.points("top5") == {"train": [(1, 0.5), (2, 0.5), (3, 0.5)]}


def test_scalars_every_logs_the_first_step_and_each_every_th_after_it():
    monitor, sink = monitor_with(Scalars(every=3))
    for step in range(1, 8):
        monitor.step_end(loss=float(step))
    assert sink.points("loss") == {"train": [(1, 1.0), (4, 4.0), (7, 7.0)]}


def test_scalars_put_validation_in_the_train_metrics_window_as_a_second_trace():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.5})
    monitor.step_end(loss=0.8, metrics={"accuracy": 0.6})
    monitor.validation_end({"loss": 0.9, "accuracy": 0.55})
    assert sink.points("accuracy") == {"train": [(1, 0.5), (2, 0.6)], "validation": [(2, 0.55)]}
    assert sink.points("loss") == {"train": [(1, 1.0), (2, 0.8)], "validation": [(2, 0.9)]}


def test_scalars_per_epoch_average_the_epoch_at_the_number_of_epochs_done():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    monitor.train_start()
    monitor.validation_end({"loss": 2.0})  # before any training: 0 epochs done
    for epoch, losses in enumerate([[1.0, 2.0, 3.0], [0.5, 1.5]]):
        monitor.epoch_start(epoch)
        for i, loss in enumerate(losses):  # tensors and numbers alike
            monitor.step_end(loss=torch.tensor(loss) if i % 2 else loss, metrics={"accuracy": 0.1 * (i + 1)})
        monitor.epoch_end()
        monitor.validation_end({"loss": 1.0 / (epoch + 1)})
    assert sink.points("loss") == {"validation": [(0, 2.0), (1, 1.0), (2, 0.5)],
                                   "train": [(1, 2.0), (2, 1.0)]}
    assert sink.points("accuracy") == {"train": [(1, pytest.approx(0.2)), (2, pytest.approx(0.15))]}


def test_scalars_per_epoch_carry_a_half_done_epoch_through_a_checkpoint():
    monitor, _ = monitor_with(Scalars(x="epoch"))
    monitor.epoch_start(0)
    monitor.step_end(loss=torch.tensor(1.0))
    monitor.step_end(loss=2.0)
    saved = torch.load(_saved(monitor.state_dict()), weights_only=True)
    resumed, sink = monitor_with(Scalars(x="epoch"))
    resumed.load_state_dict(saved)
    resumed.epoch_start(0)  # the resumed loop enters the same epoch again
    resumed.step_end(loss=6.0)
    resumed.epoch_end()
    assert sink.points("loss") == {"train": [(1, 3.0)]}


def _saved(state) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_scalars_per_epoch_take_metrics_given_to_epoch_end_over_the_mean():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    monitor.epoch_start(0)
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.1})
    monitor.epoch_end({"accuracy": 0.9})
    assert sink.points("accuracy") == {"train": [(1, 0.9)]}


def test_scalars_per_step_show_epoch_end_metrics_as_an_epoch_trace():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.1})
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.3})
    monitor.epoch_end({"accuracy": 0.2})
    assert sink.points("accuracy") == {"train": [(1, 0.1), (2, 0.3)], "epoch": [(2, 0.2)]}


def test_scalars_set_each_windows_title_and_axis_labels_once():
    monitor, sink = monitor_with(Scalars(x="epoch"))
    for epoch in range(3):
        monitor.epoch_start(epoch)
        monitor.step_end(loss=1.0, metrics={"accuracy": 0.5})
        monitor.epoch_end()
        monitor.validation_end({"accuracy": 0.5})
    layouts = sink.of(Layout)
    assert sorted(r.window for r in layouts) == ["accuracy", "loss"]
    assert {r.window: r.opts for r in layouts}["loss"] == {"title": "loss", "xlabel": "epoch", "ylabel": "loss"}
    for layout in layouts:  # each before its window's first points
        first = next(i for i, r in enumerate(sink.records) if isinstance(r, Points) and r.window == layout.window)
        assert sink.records.index(layout) < first


def test_scalars_pass_nan_and_inf_through_for_the_sink_to_show_as_gaps():
    monitor, sink = monitor_with(Scalars())
    monitor.step_end(loss=float("nan"), metrics={"grad": torch.tensor(float("inf"))})
    assert math.isnan(sink.points("loss")["train"][0][1])
    assert sink.points("grad") == {"train": [(1, math.inf)]}


@pytest.mark.parametrize("x", ["step", "epoch"])
@pytest.mark.parametrize("bad, error", [("high", TypeError), ([0.1, 0.2], TypeError),
                                        (torch.ones(3), ValueError), (None, TypeError)])
def test_scalars_reject_unknown_metric_types_naming_the_metric_after_logging_the_rest(x, bad, error):
    monitor, sink = monitor_with(Scalars(x=x))
    monitor.epoch_start(0)
    with pytest.raises(error, match="metric 'mood'"):
        monitor.step_end(loss=1.0, metrics={"mood": bad, "accuracy": 0.5})
    monitor.epoch_end()
    assert sink.points("accuracy")["train"] == [(1, 0.5)]


def test_scalars_unknown_metric_is_reported_once_and_training_goes_on(caplog):
    monitor, sink = monitor_with(Scalars(), raise_errors=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(5):
            monitor.step_end(loss=1.0, metrics={"note": "warming up"})
    assert len(caplog.records) == 1 and "metric 'note'" in caplog.text
    assert len(sink.points("loss")["train"]) == 5


def test_scalars_keep_the_loss_value_of_logging_time_when_the_loop_changes_it_in_place():
    for x in ("step", "epoch"):
        monitor, sink = monitor_with(Scalars(x=x))
        monitor.epoch_start(0)
        loss = torch.tensor(1.5)
        monitor.step_end(loss=loss)
        loss.fill_(99.0)
        monitor.epoch_end()
        assert sink.points("loss")["train"] == [(1, 1.5)]


# --- LearningRate -------------------------------------------------------------------------------
def test_learning_rate_shows_the_rate_each_step_used_even_when_the_scheduler_steps_first():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    used = []
    for _ in range(4):
        monitor.after_backward()
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        monitor.step_end()
    assert used == [0.1, 0.1, 0.05, 0.05]
    assert sink.points("learning rate") == {"lr": [(1, 0.1), (2, 0.1), (3, 0.05), (4, 0.05)]}


def test_learning_rate_is_read_at_step_end_in_a_loop_without_after_backward():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    for _ in range(4):
        monitor.step_end()
        optimizer.step()
        scheduler.step()
    assert sink.points("learning rate") == {"lr": [(1, 0.1), (2, 0.1), (3, 0.05), (4, 0.05)]}


def test_learning_rate_has_a_trace_per_group_named_by_number_or_by_the_groups_name():
    model = small_model()
    numbered = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                {"params": model[3].parameters()}], lr=0.01)
    named = torch.optim.SGD([{"params": model[0].parameters(), "name": "backbone"},
                             {"params": model[3].parameters(), "name": "head", "lr": 0.5}], lr=0.01)
    for optimizer, traces in ((numbered, {"group 0": 0.1, "group 1": 0.01}),
                              (named, {"backbone": 0.01, "head": 0.5})):
        monitor, sink = monitor_with(LearningRate(every=2))
        monitor.train_start(model, optimizer)
        for _ in range(3):
            monitor.step_end()
        assert sink.points("learning rate") == {t: [(1, lr), (3, lr)] for t, lr in traces.items()}


def test_learning_rate_names_the_groups_of_an_optimizer_given_at_a_later_train_start():
    model = small_model()
    first = torch.optim.SGD([{"params": model[0].parameters(), "name": "encoder"},
                             {"params": model[3].parameters(), "name": "decoder"}], lr=0.1)
    second = torch.optim.SGD([{"params": model[0].parameters(), "name": "backbone"},
                              {"params": model[3].parameters(), "name": "head"}], lr=0.01)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, first)
    monitor.step_end()
    monitor.train_start(model, second)  # e.g. a second stage, without an epoch_start
    monitor.step_end()
    assert sink.points("learning rate") == {"encoder": [(1, 0.1)], "decoder": [(1, 0.1)],
                                            "backbone": [(2, 0.01)], "head": [(2, 0.01)]}


def test_learning_rate_that_is_not_a_number_is_named_in_the_error():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.param_groups[0]["lr"] = "fast"
    monitor, _ = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    with pytest.raises(TypeError, match=r"values\['lr'\] must be a number or a one-element tensor, got 'fast'"):
        monitor.step_end()


def test_learning_rate_gives_a_group_added_mid_run_its_own_trace():
    model = small_model()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    monitor, sink = monitor_with(LearningRate())
    monitor.train_start(model, optimizer)
    monitor.step_end()
    optimizer.add_param_group({"params": model[3].parameters(), "lr": 0.5, "name": "head"})
    monitor.step_end()
    assert sink.points("learning rate") == {"lr": [(1, 0.1)], "group 0": [(2, 0.1)], "head": [(2, 0.5)]}


def test_learning_rate_without_an_optimizer_says_where_to_pass_it():
    monitor, _ = monitor_with(LearningRate())
    monitor.train_start(small_model())
    with pytest.raises(ValueError, match=r"pass it to monitor.train_start\(model, optimizer\)"):
        monitor.step_end()


# --- GradNorms ----------------------------------------------------------------------------------
def expected_norms(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, float]:
    grads = {name: [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
             for name, m in layers.items()}
    norms = {name: torch.linalg.vector_norm(torch.cat([g.flatten() for g in gs])).item()
             for name, gs in grads.items() if gs}
    every = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    norms["total"] = torch.linalg.vector_norm(torch.cat(every)).item()
    return norms


def test_grad_norms_equal_vector_norm_of_gradients_per_layer_and_in_total():
    model = small_model()
    layers = {"0.Linear": model[0], "2.0.Linear": model[2][0], "3.Linear": model[3]}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    seen = []
    train(monitor, model, optimizer, 3, on_backward=lambda: seen.append(expected_norms(model, layers)))
    traces = sink.points("grad norm")
    assert list(traces) == ["0.Linear", "2.0.Linear", "3.Linear", "total"]
    for trace, points in traces.items():
        assert [x for x, _ in points] == [1, 2, 3]
        assert [v for _, v in points] == pytest.approx([s[trace] for s in seen], rel=1e-5)


def test_grad_norms_are_one_record_per_logged_step_added_up_by_the_worker():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms(every=2))
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, 5)
    records = sink.of(Points, "grad norm")
    assert [r.x for r in records] == [1, 3, 5]
    assert all(callable(r.values) for r in records)  # the training thread only took each parameter's norm
    assert all(len(values_of(r)) == 4 for r in records)


def test_grad_norms_name_traces_after_the_modules_that_own_the_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.fc1 = nn.Linear(4, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
            self.head = nn.Linear(4, 2)
            self.tied = self.head  # the same module twice is one layer

        def forward(self, x):
            return self.head(self.blocks[1](self.blocks[0](self.fc1(x)))) * self.scale

    model = Net()
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    model(torch.randn(2, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()  # the norms taken at after_backward are logged at step_end
    assert sink.of(Points, "grad norm")[0].traces == ("Net", "fc1", "blocks.0.Linear", "blocks.1.LayerNorm",
                                                      "head", "total")


def test_grad_norms_leave_out_parameters_without_gradients_that_step():
    model = small_model()
    model[0].requires_grad_(False)
    model[3].bias.requires_grad_(False)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    model(torch.randn(5, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    record = sink.of(Points, "grad norm")[0]
    assert record.traces == ("2.0.Linear", "3.Linear", "total")
    expected = expected_norms(model, {"2.0.Linear": model[2][0], "3.Linear": model[3]})
    assert values_of(record) == pytest.approx([expected[t] for t in record.traces], rel=1e-5)


def test_grad_norms_follow_a_model_whose_parameters_changed():
    model = small_model()
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    model(torch.randn(5, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    model[3] = nn.Linear(8, 5)  # a new head mid-run
    model.append(nn.Linear(5, 2))
    model.zero_grad()
    model(torch.randn(5, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    second = sink.of(Points, "grad norm")[1]
    assert second.traces == ("0.Linear", "2.0.Linear", "3.Linear", "4.Linear", "total")
    expected = expected_norms(model, {"0.Linear": model[0], "2.0.Linear": model[2][0],
                                      "3.Linear": model[3], "4.Linear": model[4]})
    assert values_of(second) == pytest.approx([expected[t] for t in second.traces], rel=1e-5)
    del model[4]  # a deletion registers nothing: it is noticed at the next epoch
    model[3] = nn.Linear(8, 2)
    monitor.epoch_start()
    model.zero_grad()
    model(torch.randn(5, 4)).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    assert sink.of(Points, "grad norm")[2].traces == ("0.Linear", "2.0.Linear", "3.Linear", "total")


def test_grad_norms_do_not_look_for_new_parameters_while_none_were_registered(monkeypatch):
    model = small_model()
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    walks = []
    original = nn.Module.parameters
    monkeypatch.setattr(nn.Module, "parameters", lambda self, *a, **k: walks.append(1) or original(self, *a, **k))
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        monitor.after_backward()
        monitor.step_end()
    assert walks == [] and len(sink.of(Points, "grad norm")) == 3


def test_grad_norms_keep_the_values_of_logging_time_when_gradients_change_in_place():
    model = small_model()
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    model(torch.randn(5, 4)).sum().backward()
    expected = expected_norms(model, {})["total"]
    monitor.after_backward()
    for p in model.parameters():
        p.grad.mul_(1000.0)
    monitor.step_end()
    assert sink.points("grad norm")["total"] == [(1, pytest.approx(expected, rel=1e-5))]


def test_grad_norms_optionally_show_weight_norms_and_the_update_to_weight_ratio():
    model = small_model()
    lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    monitor, sink = monitor_with(GradNorms(weights=True, update_ratio=True))
    monitor.train_start(model, optimizer)
    weights, grads = [], []

    def remember():  # layer 0 before its update: the norm of weight and bias, and of their gradients
        layer = [p.detach().flatten() for p in model[0].parameters()]
        weights.append(torch.linalg.vector_norm(torch.cat(layer)).item())
        grads.append(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model[0].parameters()])).item())

    train(monitor, model, optimizer, 2, on_backward=remember)
    assert [v for _, v in sink.points("weight norm")["0.Linear"]] == pytest.approx(weights, rel=1e-5)
    expected_ratio = [lr * g / w for g, w in zip(grads, weights)]  # plain SGD: update = lr * grad
    assert sink.points("update ratio")["0.Linear"] == [(1, pytest.approx(expected_ratio[0], rel=1e-4)),
                                                       (2, pytest.approx(expected_ratio[1], rel=1e-4))]
    assert set(sink.points("update ratio")) == {"0.Linear", "2.0.Linear", "3.Linear", "total"}


def test_the_update_ratio_of_a_layer_whose_weights_are_zero_is_infinite_not_an_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms(update_ratio=True))
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, 1)
    ratios = dict(zip(sink.of(Points, "update ratio")[0].traces, values_of(sink.of(Points, "update ratio")[0])))
    assert math.isinf(ratios["0.Linear"]) and math.isfinite(ratios["1.Linear"]) and math.isfinite(ratios["total"])


def test_grad_norms_of_a_model_with_many_parameters_equal_vector_norm():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)])  # 24 parameters: one stack, not item()s
    layers = {f"{i}.Linear": model[i] for i in range(12)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    seen = []
    x = torch.randn(8, 4)
    model(x).square().mean().backward()
    monitor.after_backward()
    seen.append(expected_norms(model, layers))
    monitor.step_end()
    traces = sink.points("grad norm")
    assert list(traces) == [*layers, "total"]
    assert {t: v for t, [(_, v)] in traces.items()} == pytest.approx(seen[0], rel=1e-5)


def test_grad_norms_of_parameters_on_several_devices_read_only_the_cpu_ones_on_the_training_thread(monkeypatch):
    """A meta tensor stands in for a GPU's: reading one raises, so only the worker may try.

    There is no GPU here, and _foreach_norm over CPU and meta tensors together computes the CPU
    one wrongly, so the foreach pass is replaced by what it returns on a CPU + GPU model.
    """
    from monitor.callbacks import grad_norms
    on_devices = [torch.tensor(5.0), torch.tensor(2.0, device="meta")]
    monkeypatch.setattr(grad_norms.torch, "_foreach_norm", lambda tensors, *_, **__: on_devices)
    norms = grad_norms._each_norm([torch.ones(1), torch.ones(1, device="meta")])
    assert norms[0] == 5.0 and isinstance(norms[0], float) and norms[1] is on_devices[1]
    with pytest.raises(RuntimeError, match="meta"):  # the worker's read: where a GPU's would wait
        grad_norms._read(norms)


def test_the_update_ratio_of_a_layer_that_neither_has_weights_nor_moves_is_nan():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    model[0].requires_grad_(False)  # frozen at zero: no update, no weights
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms(update_ratio=True))
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, 1)
    record = sink.of(Points, "update ratio")[0]
    ratios = dict(zip(record.traces, values_of(record)))
    assert math.isnan(ratios["0.Linear"]) and ratios["1.Linear"] > 0


def test_grad_norms_of_a_model_without_parameters_log_nothing():
    monitor, sink = monitor_with(GradNorms(weights=True, update_ratio=True))
    monitor.train_start(nn.ReLU())
    monitor.after_backward()
    monitor.step_end()
    assert sink.of(Points) == []


def test_grad_norms_without_a_model_say_where_to_pass_it():
    monitor, _ = monitor_with(GradNorms())
    with pytest.raises(ValueError, match=r"pass it to monitor.train_start\(model, optimizer\)"):
        monitor.train_start()


# --- Images -------------------------------------------------------------------------------------
def test_images_log_a_copy_of_the_first_count_images_captioned_with_class_names():
    monitor, sink = monitor_with(Images(every=1, count=4, class_names=["zero", "one", "two"]))
    inputs, targets = torch.rand(16, 1, 8, 8), torch.tensor([0, 1, 2, 7] * 4)
    monitor.step_end(inputs=inputs, targets=targets)
    expected = inputs[:4].clone()
    inputs.fill_(0.0)  # the loop reuses its batch buffers
    targets.fill_(1)
    (record,) = sink.of(ImageRecord, "inputs")
    assert record.x == 1 and torch.equal(record.pixels, expected)
    assert list(record.captions) == ["zero", "one", "two", "7"]
    assert sink.of(Layout, "inputs")[0].opts == {"title": "inputs"}


def test_images_caption_predictions_or_both_targets_and_predictions():
    logits = torch.tensor([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    for captions, expected in (("predictions", ["dog", "cat", "dog"]),
                               ("both", ["cat / dog", "cat / cat", "dog / dog"])):
        monitor, sink = monitor_with(Images(captions=captions, class_names={0: "cat", 1: "dog"}))
        monitor.step_end(inputs=torch.rand(3, 3, 4, 4), targets=[0, 0, 1], outputs=logits)
        assert list(sink.of(ImageRecord)[0].captions) == expected


def test_images_of_outputs_go_to_window_outputs_without_captions_when_none_fit():
    monitor, sink = monitor_with(Images(source="outputs", count=2))
    outputs = torch.randn(5, 3, 6, 6)
    monitor.step_end(outputs=outputs, targets=torch.zeros(5, 6, 6))  # masks: no label per image
    (record,) = sink.of(ImageRecord, "outputs")
    assert torch.equal(record.pixels, outputs[:2]) and record.captions is None


@pytest.mark.parametrize("shape, logged", [((6, 3, 5, 7), (4, 3, 5, 7)), ((3, 5, 7), (1, 3, 5, 7)),
                                           ((6, 5, 7), (4, 1, 5, 7)), ((5, 7), (1, 1, 5, 7))])
def test_images_accept_nchw_chw_nhw_and_hw(shape, logged):
    monitor, sink = monitor_with(Images(count=4, captions=None))
    monitor.step_end(inputs=torch.randint(0, 255, shape, dtype=torch.uint8))
    assert tuple(sink.of(ImageRecord)[0].pixels.shape) == logged


@pytest.mark.parametrize("inputs, error, match", [
    (torch.rand(2, 4, 5, 5), ValueError, "1 or 3 channels"),
    (torch.rand(2, 1, 1, 5, 5), ValueError, "NCHW, CHW, NHW or HW"),
    ([[0.0, 1.0]], TypeError, "must be a torch.Tensor"),
    (torch.ones(2, 3, 4, 4, dtype=torch.bool), TypeError, "real numbers"),
    (None, ValueError, r"pass inputs= to monitor.step_end"),
])
def test_images_reject_what_is_not_an_image_batch(inputs, error, match):
    monitor, _ = monitor_with(Images(captions=None))
    with pytest.raises(error, match=match):
        monitor.step_end(inputs=inputs)


def test_images_that_are_not_images_are_reported_once_and_training_goes_on(caplog):
    monitor, sink = monitor_with(Images(every=1), Scalars(), raise_errors=False)
    with caplog.at_level(logging.WARNING, logger="monitor"):
        for _ in range(4):
            monitor.step_end(loss=1.0, inputs=torch.rand(8, 5, 2, 2), targets=torch.zeros(8))
    assert len(caplog.records) == 1 and "Images" in caplog.text and "1 or 3 channels" in caplog.text
    assert len(sink.points("loss")["train"]) == 4 and sink.of(ImageRecord) == []


def test_images_every_logs_the_first_step_and_each_every_th_after_it():
    monitor, sink = monitor_with(Images(every=50, captions=None))
    for _ in range(120):
        monitor.step_end(inputs=torch.rand(2, 1, 4, 4))
    assert [r.x for r in sink.of(ImageRecord)] == [1, 51, 101]


# --- Summary ------------------------------------------------------------------------------------
def test_summary_shows_model_counts_hparams_and_versions_in_one_pane():
    model = small_model()
    model[0].requires_grad_(False)
    monitor, sink = monitor_with(Summary(hparams={"batch_size": 64, "lr": 1.0}))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"lr": 0.1})
    (pane,) = sink.of(Text, "summary")
    total, frozen = sum(p.numel() for p in model.parameters()), 4 * 8 + 8
    assert f"{total:,} ({total - frozen:,} trainable)" in pane.html
    assert "<td><b>lr</b></td><td>0.1</td>" in pane.html and "<td>64</td>" in pane.html
    assert "(3): Linear(in_features=8, out_features=3, bias=True)" in pane.html
    assert torch.__version__ in pane.html and "<td>cpu</td>" in pane.html and "SGD" in pane.html


def test_summary_escapes_everything_the_user_supplied():
    class Odd(nn.Module):
        def extra_repr(self):
            return "<script>alert(1)</script>"

    monitor, sink = monitor_with(Summary(hparams={"<b>note</b>": "<i>&</i>"}))
    monitor.train_start(Odd())
    html = sink.of(Text, "summary")[0].html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;note&lt;/b&gt;" in html and "&lt;i&gt;&amp;&lt;/i&gt;" in html


# --- At the door --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, match", [
    (lambda: Scalars(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: Scalars(every=2.5), TypeError, "every must be an int >= 1, got 2.5"),
    (lambda: Scalars(x="batch"), ValueError, "x must be 'step' or 'epoch', got 'batch'"),
    (lambda: LearningRate(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: GradNorms(every=-1), ValueError, "every must be an int >= 1, got -1"),
    (lambda: GradNorms(weights="yes"), TypeError, "weights must be True or False, got 'yes'"),
    (lambda: GradNorms(update_ratio=1), TypeError, "update_ratio must be True or False, got 1"),
    (lambda: Images(every=0), ValueError, "every must be an int >= 1, got 0"),
    (lambda: Images(count=0), ValueError, "count must be an int >= 1, got 0"),
    (lambda: Images(source="targets"), ValueError, "source must be 'inputs' or 'outputs', got 'targets'"),
    (lambda: Images(captions="labels"), ValueError, "captions must be 'targets' or .* got 'labels'"),
    (lambda: Images(class_names="cat dog"), TypeError, "class_names must be a sequence or a mapping"),
    (lambda: Summary(hparams=[("lr", 0.1)]), TypeError, "hparams must be a mapping of name to value, got list"),
])
def test_callbacks_check_their_arguments_at_the_door(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- Snapshots, not views -----------------------------------------------------------------------
def test_callbacks_never_read_accelerator_tensors_on_the_training_thread():
    """Meta tensors stand in for a GPU: reading one (.item(), .tolist(), float()) raises."""
    model = small_model().to("meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in ("step", "epoch"):
        monitor, sink = monitor_with(Scalars(x=x), LearningRate(), GradNorms(weights=True, update_ratio=True),
                                     Images(every=1, captions="both", class_names=["a", "b"]), Summary())
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
