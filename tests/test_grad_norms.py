"""GradNorms: per-layer and total gradient norms, equal to torch's, on the dashboard too."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monitor import GradNorms
from monitor.records import Points
from helpers.monitors import (expected_norms, live_monitor, model_and_data, monitor_with, small_model, train,
                              valued, values_of)


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


def test_a_submodule_compiled_on_its_own_is_named_as_in_the_model_compiled_whole():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.backbone(x))

    names = []
    for compiled in ("whole", "backbone"):
        torch.manual_seed(0)
        model = Net()
        if compiled == "backbone":
            model.backbone = torch.compile(model.backbone, backend="eager")  # not backbone._orig_mod.0
        else:
            model = torch.compile(model, backend="eager")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor, sink = monitor_with(GradNorms())
        monitor.train_start(model, optimizer)
        model(torch.ones(3, 4)).sum().backward()
        monitor.after_backward()
        monitor.step_end()
        names.append(list(sink.points("grad norm")))
    assert names[0] == names[1] == ["backbone.0.Linear", "head", "total"]


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
    # The model's own parameter beside its layers goes by its name
    assert sink.of(Points, "grad norm")[0].traces == ("scale", "fc1", "blocks.0.Linear", "blocks.1.LayerNorm",
                                                      "head", "total")


def test_a_weight_tied_to_another_layer_s_names_both_and_a_one_layer_model_its_class():
    class LanguageModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.lm_head = nn.Linear(4, 10, bias=False)
            self.lm_head.weight = self.embed.weight  # as GPT-2 ties them

        def forward(self, x):
            return self.lm_head(self.body(self.embed(x)))

    class Tied(nn.Module):  # fc3 shares fc2's weight and has a bias of its own: `fc3` alone read as the layer
        def __init__(self):
            super().__init__()
            self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.fc3.weight = self.fc2.weight

        def forward(self, x):
            return self.fc3(self.fc2(x))

    for model, traces in ((LanguageModel(), ("embed (also lm_head)", "body", "total")),
                          (Tied(), ("fc2 (also fc3)", "fc3 bias", "total")),
                          (nn.Linear(4, 2), ("Linear", "total"))):
        monitor, sink = monitor_with(GradNorms())
        monitor.train_start(model)
        model(torch.randint(0, 4, (2,)) if traces[0].startswith("embed") else torch.randn(2, 4)).sum().backward()
        monitor.after_backward()
        monitor.step_end()
        assert sink.of(Points, "grad norm")[0].traces == traces


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


def test_grad_norms_leave_out_a_frozen_teacher_s_gradients_left_from_before_and_take_an_unfrozen_layer():
    # A distiller module: the teacher, trained earlier in the process, keeps its old gradients;
    # only what the optimizer updates is this step's (the total clip_grad_norm_ would clip).
    torch.manual_seed(0)
    teacher, student = small_model(), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    teacher(torch.randn(5, 4)).sum().backward()
    teacher.requires_grad_(False)
    bundle = nn.ModuleDict({"student": student, "teacher": teacher})
    optimizer = torch.optim.SGD(student[2].parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(bundle, optimizer)
    for step in range(2):
        if step == 1:  # the student's first layer unfrozen into the optimizer
            optimizer.add_param_group({"params": student[0].parameters()})
        student(torch.randn(5, 4)).sum().backward()
        monitor.after_backward()
        clipped = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1e9)
        optimizer.step()
        optimizer.zero_grad()
        monitor.step_end()
    first, second = sink.of(Points, "grad norm")
    assert first.traces == ("student.2.Linear", "total")
    assert second.traces == ("student.0.Linear", "student.2.Linear", "total")
    assert values_of(second)[-1] == pytest.approx(clipped.item(), rel=1e-5)


def test_parameters_an_optimizer_updates_outside_the_model_are_a_trace_of_their_group_and_in_the_total():
    # A meta-learned inner rate (the largest gradient) was in no trace, and total was 2.63 where
    # clip_grad_norm_ over the optimizer's parameters gave 11.96; a group added later holding
    # learned loss weights is found too.
    torch.manual_seed(0)
    model = small_model()
    inner_lr = nn.Parameter(torch.tensor(0.1))
    log_vars = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([{"params": model.parameters()}, {"params": [inner_lr], "name": "inner_lr"}])
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    for step in range(2):
        if step == 1:
            optimizer.add_param_group({"params": [log_vars]})  # its gradient of both steps: 2 x (1, 2)
        (model(torch.randn(5, 4)).sum() * inner_lr * 50 + (log_vars * torch.tensor([1.0, 2.0])).sum()).backward()
        monitor.after_backward()
        inner = abs(inner_lr.grad.item())
        clipped = torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1e9)
        optimizer.step()
        optimizer.zero_grad()
        monitor.step_end()
    first, second = sink.of(Points, "grad norm")
    assert first.traces == ("0.Linear", "2.0.Linear", "3.Linear", "inner_lr", "total")
    assert second.traces == ("0.Linear", "2.0.Linear", "3.Linear", "inner_lr", "group 2", "total")
    assert values_of(second)[4] == pytest.approx(20 ** 0.5) and values_of(second)[-1] == pytest.approx(clipped.item())


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


def test_with_lbfgs_the_weight_norm_is_before_the_step_and_a_frozen_layer_has_no_update_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    model[0].requires_grad_(False)  # a frozen stem
    optimizer = torch.optim.LBFGS([p for p in model.parameters() if p.requires_grad], max_iter=4)
    monitor, sink = monitor_with(GradNorms(weights=True, update_ratio=True))
    monitor.train_start(model, optimizer)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    weights, ratios = [], []

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        monitor.after_backward()  # at each of the step's evaluations
        return loss

    for _ in range(2):
        head = torch.cat([p.detach().flatten() for p in model[2].parameters()])
        optimizer.step(closure)
        moved = torch.cat([p.detach().flatten() for p in model[2].parameters()]) - head
        weights.append(torch.linalg.vector_norm(head).item())
        ratios.append(torch.linalg.vector_norm(moved).item() / weights[-1])
        monitor.step_end()
    assert [v for _, v in sink.points("weight norm")["2.Linear"]] == pytest.approx(weights, rel=1e-5)
    assert set(sink.points("update ratio")) == {"2.Linear", "total"}  # the frozen 0.Linear left out
    assert [v for _, v in sink.points("update ratio")["total"]] == pytest.approx(ratios, rel=1e-4)


def test_a_layer_whose_weights_were_zero_has_no_update_ratio_that_step_nor_a_non_finite_one(
        visdom_server, read_window, read_window_raw, tmp_path):
    # LoRA's B starts at 0: its first update has no ratio to its weights (a gap, not counted as a
    # step lost, which would send the user hunting for a NaN); from the next step on it has one.
    # Its trace keeps its place in the model's order (it came after `total`, and in a heatmap,
    # every B row after every A row).
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms(update_ratio=True))
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, 2)
    first, second = (r.values() if callable(r.values) else r.values for r in sink.of(Points, "update ratio"))
    assert math.isnan(first["0.Linear"]) and list(first) == list(second) == ["0.Linear", "1.Linear", "total"]
    assert all(map(math.isfinite, [first["1.Linear"], first["total"], *second.values()]))
    with live_monitor(visdom_server, "zero-start", tmp_path, GradNorms(update_ratio=True)) as monitor:
        nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
        monitor.train_start(model, optimizer)
        train(monitor, model, optimizer, 2)
    shown = read_window(visdom_server, "zero-start", "update ratio")
    assert list(shown) == ["0.Linear", "1.Linear", "total"] and shown["0.Linear"][1][0] is None
    assert shown["total"][0] == [1, 2]
    layout = read_window_raw(visdom_server, "zero-start", "update ratio")["content"]["layout"]
    assert "title" not in layout.get("legend", {})  # no step lost


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
    from monitor import norms as module
    on_devices = [torch.tensor(5.0), torch.tensor(2.0, device="meta")]
    monkeypatch.setattr(module.torch, "_foreach_norm", lambda tensors, *_, **__: on_devices)
    norms = module.each_norm([torch.ones(1), torch.ones(1, device="meta")])
    assert norms[0] == 5.0 and isinstance(norms[0], float) and norms[1] is on_devices[1]
    with pytest.raises(RuntimeError, match="meta"):  # the worker's read: where a GPU's would wait
        module.read(norms)


def test_a_layer_that_neither_has_weights_nor_moves_has_no_update_ratio():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    nn.init.zeros_(model[0].weight), nn.init.zeros_(model[0].bias)
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0},  # no update, no weights
                                 {"params": model[1].parameters(), "lr": 0.1}])
    monitor, sink = monitor_with(GradNorms(update_ratio=True))
    monitor.train_start(model, optimizer)
    train(monitor, model, optimizer, 1)
    ratios = valued(sink.of(Points, "update ratio")[0])
    assert math.isnan(ratios["0.Linear"]) and ratios["1.Linear"] > 0  # a gap: no ratio to weights of 0


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


# --- on a real server ---------------------------------------------------------------------------
def test_grad_norms_on_the_dashboard_equal_vector_norm_of_gradients(visdom_server, read_window, tmp_path):
    model, x, y = model_and_data()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    expected: dict[str, list[float]] = {"1.Linear": [], "3.Linear": [], "total": []}
    with live_monitor(visdom_server, "live-grads", tmp_path, GradNorms()) as monitor:
        monitor.train_start(model, optimizer)
        for _ in range(5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            monitor.after_backward()
            for name, layer in (("1.Linear", model[1]), ("3.Linear", model[3])):
                expected[name].append(torch.linalg.vector_norm(
                    torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])).item())
            expected["total"].append(torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()])).item())
            optimizer.step()
            monitor.step_end()
        assert monitor.flush(timeout=10)
    shown = read_window(visdom_server, "live-grads", "grad norm")
    assert set(shown) == set(expected)
    for trace, values in expected.items():
        assert shown[trace][0] == [1, 2, 3, 4, 5]
        assert shown[trace][1] == pytest.approx(values, rel=1e-5)


def test_a_lazy_layer_s_trace_is_named_as_the_layer_it_becomes_so_a_resumed_run_continues_it():
    lazy = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 3))
    ready = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))  # as a resumed run has it
    names = []
    for model in (lazy, ready):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor, sink = monitor_with(GradNorms())
        monitor.train_start(model, optimizer)
        train(monitor, model, optimizer, 1)
        names.append(list(sink.points("grad norm")))
    assert names[0] == names[1] == ["0.Linear", "2.Linear", "total"]


def test_a_layer_with_a_non_finite_gradient_shows_it_and_the_total_follows_torch():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model)
    expected = []
    for first, second in ((math.inf, 1.0), (math.inf, math.nan), (1.0, math.nan)):  # an inf and a NaN: NaN
        model(torch.randn(4, 3)).sum().backward()
        model[0].weight.grad[0, 0], model[1].bias.grad[0] = first, second
        monitor.after_backward()
        monitor.step_end()
        norms = [torch.linalg.vector_norm(p.grad) for p in model.parameters()]
        layers = [torch.linalg.vector_norm(torch.stack(norms[i:i + 2])) for i in (0, 2, 4)]
        expected.append([n.item() for n in layers] + [torch.linalg.vector_norm(torch.stack(norms)).item()])
        model.zero_grad()
    shown = [values_of(r) for r in sink.of(Points, "grad norm")]
    for step, torch_s in zip(shown, expected):
        assert step == pytest.approx(torch_s, rel=1e-5, nan_ok=True)
    assert [str(step[3]) for step in shown] == ["inf", "nan", "nan"]


def test_a_loop_whose_model_never_has_gradients_is_told_once_why_grad_norm_is_empty(caplog):
    model = small_model()
    weights = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(weights.values(), lr=0.1)  # the stateless style: copies trained
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(3):
            torch.func.functional_call(model, weights, (torch.randn(2, 4),)).sum().backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "found no gradient on the model's parameters at after_backward (step 1)" in said[0]
    assert "functional_call" in said[0] and not sink.points("grad norm")


def test_optimizers_of_copies_the_model_given_does_not_hold_are_told_once_to_give_the_module_holding_them(caplog):
    # FedAvg: train_start(global_model, {client optimizers}); every 'grad norm clientN' was missing
    global_model, clients = small_model(), [small_model() for _ in range(3)]
    optimizers = {f"client{i}": torch.optim.SGD(c.parameters(), lr=0.1) for i, c in enumerate(clients)}
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(global_model, optimizers)
    with caplog.at_level("WARNING", logger="monitor"):
        for i, client in enumerate(clients):
            client(torch.randn(2, 4)).sum().backward()
            monitor.after_backward(f"client{i}")
            optimizers[f"client{i}"].step()
        monitor.step_end()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "optimizer 'client0' updates none of the model's parameters" in said[0] and \
        "nor for any other optimizer like it" in said[0] and "nn.ModuleDict" in said[0], said
    monitor, sink = monitor_with(GradNorms())  # given the module that holds them all: a window each
    monitor.train_start(torch.nn.ModuleDict({"global": global_model, **dict(zip(optimizers, clients))}), optimizers)
    for i, client in enumerate(clients):
        client(torch.randn(2, 4)).sum().backward()
        monitor.after_backward(f"client{i}")
    monitor.step_end()
    assert all(sink.points(f"grad norm client{i}") for i in range(3))


@pytest.mark.parametrize("loop", ["epochs", "steps", "long steps"])
def test_a_loop_that_never_calls_after_backward_is_told_once_by_its_first_epoch_s_end_or_train_end(caplog, loop):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for epoch in range(2):
            for _ in range(3 if loop != "long steps" else 60):
                model(torch.randn(2, 4)).sum().backward()
                optimizer.step()
                monitor.step_end(loss=1.0)
            if loop == "epochs":
                monitor.epoch_end()
        monitor.train_end()
    said = [r.getMessage() for r in caplog.records]
    when = {"epochs": "the end of epoch 0 (step 3)", "steps": "train_end (step 6)", "long steps": "step 100"}[loop]
    assert said == [f"monitor: GradNorms was given no after_backward() by {when}: no window 'grad norm' "
                    f"until the loop calls monitor.after_backward() after loss.backward(), before optimizer.step()"]
    resumed, _ = monitor_with(GradNorms())
    resumed.state.step = 6  # a resumed run with nothing left to train: no steps, nothing to say
    caplog.clear()
    with caplog.at_level("WARNING", logger="monitor"):
        resumed.train_start(model, optimizer)
        resumed.train_end()
    assert not caplog.records


def test_a_parametrized_layer_is_one_trace_with_its_weight_s_parametrization():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(4, 8)), nn.ReLU(), spectral_norm(nn.Linear(8, 2)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, optimizer)
    model(torch.randn(5, 4)).sum().backward()
    monitor.after_backward()
    norms = {name: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()])).item()
             for name, layer in (("0.Linear", model[0]), ("2.Linear", model[2]))}
    monitor.step_end()
    points = sink.points("grad norm")
    assert set(points) == {"0.Linear", "2.Linear", "total"}
    assert {name: points[name][0][1] for name in norms} == pytest.approx(norms, rel=1e-5)
    alone, sink = monitor_with(GradNorms())  # the model itself parametrized
    alone.train_start(weight_norm(nn.Linear(4, 2)), optimizer)
    alone.state.model(torch.randn(3, 4)).sum().backward()
    alone.after_backward()
    alone.step_end()
    assert set(sink.points("grad norm")) == {"Linear", "total"}


def test_a_recurrent_layer_s_input_and_hidden_weights_of_each_layer_are_traces_of_their_own():
    # Exploding gradients show in weight_hh first: a 2-layer LSTM was one trace.
    torch.manual_seed(0)
    lstm, head = nn.LSTM(3, 8, num_layers=2), nn.Linear(8, 1)
    model = nn.ModuleDict({"encoder": lstm, "head": head})
    monitor, sink = monitor_with(GradNorms())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    head(lstm(torch.randn(5, 2, 3))[0][-1]).sum().backward()
    monitor.after_backward()
    monitor.step_end()
    norms = {trace: values[0][1] for trace, values in sink.points("grad norm").items()}
    assert list(norms) == ["encoder ih_l0", "encoder hh_l0", "encoder ih_l1", "encoder hh_l1", "head", "total"]
    for layer in range(2):
        for kind in ("ih", "hh"):
            grads = [getattr(lstm, f"{part}_{kind}_l{layer}").grad for part in ("weight", "bias")]
            assert norms[f"encoder {kind}_l{layer}"] == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item())
    assert norms["total"] == pytest.approx(sum(v * v for k, v in norms.items() if k != "total") ** 0.5)


def test_pruned_weights_are_shown_as_the_forward_pass_uses_them_and_a_frozen_teacher_s_are_left_out():
    # A compression researcher pruned 50% of a layer: weight norm and the weight histogram went on
    # with the dense weight_orig (0 zeros binned where half were masked), the teacher's binned too.
    from torch.nn.utils import prune

    from monitor import Histograms
    from monitor.entries import encode
    from monitor.records import Histogram

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    teacher = nn.Linear(6, 2).requires_grad_(False)
    model = nn.ModuleDict({"student": student, "teacher": teacher})
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    monitor, sink = monitor_with(GradNorms(weights=True, update_ratio=True), Histograms(every=1, of=["weights"]))
    monitor.train_start(model, optimizer)
    used = []
    for step in range(1, 5):
        if step == 3:
            prune.l1_unstructured(student[0], "weight", amount=0.5)
        optimizer.zero_grad()
        (student(torch.randn(4, 6)).square().mean() + teacher(torch.randn(4, 6)).sum() * 0).backward()
        monitor.after_backward()
        weight = student[0].weight_orig * student[0].weight_mask if step >= 3 else student[0].weight
        used.append(torch.cat([weight.detach().flatten(), student[0].bias.detach()]).norm().item())
        optimizer.step()
        monitor.step_end(loss=1.0)
    norms = sink.points("weight norm")
    assert [v for _, v in norms["student.0.Linear"]] == pytest.approx(used, rel=1e-6)
    assert "teacher" not in norms and "teacher" not in sink.points("update ratio")
    latest = encode([r for r in sink.of(Histogram) if r.window == "weight distribution"][-1])
    assert latest["n"] == sum(p.numel() for p in student.parameters())  # the student's alone
    edges, counts = latest["edges"], latest["counts"]
    at_zero = next(i for i in range(len(counts)) if edges[i] <= 0.0 <= edges[i + 1])
    assert counts[at_zero] >= 24  # the 24 masked weights of 48, each 0
