"""The model's graph: traced shapes, skip connections, several inputs, and the pane that shows it."""
from __future__ import annotations

import random

import numpy
import pytest
import torch
from torch import nn

from monitor import Graph, SummaryWriter
from monitor.graph import MESSAGE_BYTES, collapsed, drawn, fitted, traced
from helpers.graph_models import SkipNet, models_and_inputs
from helpers.monitors import monitor_with
from monitor.records import Text


def _shapes_by_hooks(model: nn.Module, inputs: tuple) -> dict[str, str]:
    """Each leaf module's output shape, as a forward pass really gives it."""
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, path=path: seen.__setitem__(path, str(list(o.shape))))
               for path, m in model.named_modules() if not any(True for _ in m.children())]
    with torch.no_grad():
        model.eval()
        model(*inputs)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("name, model, inputs", models_and_inputs())
def test_the_shapes_drawn_are_the_traced_ones(name, model, inputs):
    nodes, how = traced(model, inputs)
    assert how == "fx"
    shown = {n.module: n.shape for n in nodes if n.name == n.module and n.module}
    assert shown == _shapes_by_hooks(model, inputs)
    assert [n.shape for n in nodes if n.kind == "input"] == [str(list(x.shape)) for x in inputs]
    svg = drawn(nodes)
    assert all(f">{shape}<" in svg for shape in shown.values())


def test_a_skip_connection_is_an_edge_that_jumps_and_modules_are_boxed_in_their_parents():
    nodes, _ = traced(SkipNet(), (torch.randn(2, 4),))
    adds = [(i, n) for i, n in enumerate(nodes) if n.kind == "add"]
    assert len(adds) == 2 and all(min(n.inputs) < i - 1 for i, n in adds)  # x jumps over fc and norm
    assert [n.module for _, n in adds] == ["blocks.0.add", "blocks.1.add_1"]
    svg = drawn(nodes)
    assert svg.count(">blocks.0<") == 1 and svg.count(">blocks<") == 1 and " C" in svg  # boxes, an arc


def test_a_long_name_in_wide_characters_is_cut_to_fit_its_box():
    from monitor.runs import columns

    model = nn.Sequential()
    model.add_module("特征提取主干网络", nn.Sequential())
    model.特征提取主干网络.add_module("第一个三乘三卷积层", nn.Linear(4, 4))
    svg = drawn(traced(model, (torch.randn(2, 4),))[0])
    label = next(t for t in svg.split('font-size="12">')[1:] if t.startswith("特征")).split("</text>")[0]
    assert label.endswith("..") and 32 <= columns(label) <= 34  # was 34 characters: 64 columns, out of the box


def test_two_inputs_both_feed_the_model():
    _, model, inputs = models_and_inputs()[2]
    nodes, _ = traced(model, inputs)
    cat = next(n for n in nodes if n.kind == "cat")
    assert [n.kind for n in nodes[:2]] == ["input", "input"] and cat.shape == "[8, 150]"


def test_a_big_model_s_drawing_stays_within_a_message_folding_modules_then_cutting_the_middle():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.norm = nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(x + self.fc2(torch.relu(self.fc1(x))))

    deep = nn.Sequential(*[nn.Sequential(*[Block() for _ in range(40)]) for _ in range(6)], nn.Linear(4, 2))
    nodes, _ = traced(deep, (torch.randn(2, 4),))
    assert len(drawn(nodes)) > MESSAGE_BYTES  # 1450 nodes
    svg = fitted(nodes, deep, "Deep")
    assert len(svg) <= MESSAGE_BYTES and "modules below depth 2 folded" in svg
    assert ">0.39: Block<" in svg and ">[2, 4]<" in svg  # a block as one box, with its parameters and shape
    folded = collapsed(nodes, 2, deep)
    assert len(folded) == 1 + 6 * 40 + 2 and sum(n.parameters for n in folded if n.kind == "Block") == sum(
        p.numel() for p in deep[:6].parameters())
    assert all(n.inputs == (i - 1,) for i, n in enumerate(folded) if i)  # a chain again
    chain = nn.Sequential(*[nn.Linear(4, 4) for _ in range(2000)])
    nodes, _ = traced(chain, (torch.randn(2, 4),))
    svg = fitted(nodes, chain, "Chain")
    assert len(svg) <= MESSAGE_BYTES and "nodes not drawn" in svg and ">1999: Linear<" in svg


def test_a_model_fx_cannot_trace_is_drawn_from_its_modules_and_tracing_changes_nothing():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.norm = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.norm(self.fc(x)) if x.sum() > 0 else self.fc(x)

    model = Branchy().train()
    before = model.norm.running_mean.clone()
    nodes, how = traced(model, (torch.ones(3, 4),))
    assert how == "hooks" and [n.name for n in nodes] == ["input 0", "fc", "norm", "output"]
    assert model.training and torch.equal(model.norm.running_mean, before)


def test_torchscript_modules_are_drawn_without_hooks_and_no_hook_is_left_on_the_model():
    # A ScriptModule refuses forward hooks: hooking the modules before it and then failing left
    # their hooks on the model, growing a list at every training forward after.
    class PartlyScripted(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = nn.Linear(4, 4), torch.jit.script(nn.Linear(4, 2))

        def forward(self, x):
            h = self.fc(x)
            return self.head(h if h.sum() > -1e9 else -h)  # control flow on values: no fx

    model = PartlyScripted()
    nodes, how = traced(model, (torch.ones(3, 4),))
    assert how == "hooks" and [(n.name, n.shape) for n in nodes] == [
        ("input 0", "[3, 4]"), ("fc", "[3, 4]"), ("output", "[3, 2]")]
    assert not model.fc._forward_hooks
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    assert [n.name for n in traced(scripted, (torch.ones(3, 4),))[0]] == ["input 0", "output"]


def test_tracing_leaves_frozen_modules_in_eval_and_the_random_generators_where_they_were():
    class Noisy(nn.Module):  # a VAE's reparameterisation: the forward pass draws noise
        def __init__(self):
            super().__init__()
            self.fc, self.frozen = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.frozen(self.fc(x) + torch.randn_like(x) + random.random() + numpy.random.rand())

    model = Noisy().train()
    model.frozen.eval()  # fine-tuning: the BatchNorm's statistics stay as they were
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    expected = [*torch.rand(3).tolist(), random.random(), numpy.random.rand()]
    torch.manual_seed(0), random.seed(0), numpy.random.seed(0)
    traced(model, (torch.ones(3, 4),))
    assert model.training and model.fc.training and not model.frozen.training
    assert [*torch.rand(3).tolist(), random.random(), numpy.random.rand()] == expected


@pytest.mark.parametrize("fx", [True, False])
def test_tracing_leaves_a_quantization_aware_model_s_observers_as_they_were(fx, monkeypatch):
    """Observers record in eval mode too: the traced pass moved a QAT model's ranges, and so its training."""
    import torch.ao.quantization as quantization

    if not fx:
        monkeypatch.setattr("monitor.graph._by_fx", lambda model, inputs: 1 / 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    model.qconfig = quantization.get_default_qat_qconfig("x86")
    model = quantization.prepare_qat(model.train())
    model(torch.randn(16, 8))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    buffers = dict(model.named_buffers())
    traced(model, (torch.randn(16, 8) * 10,))
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), [
        name for name in before if not torch.equal(before[name], after[name])]
    assert all(buffer is buffers[name] for name, buffer in model.named_buffers())  # the same tensors, put back


def test_a_lazy_model_and_odd_buffers_are_traced_as_before():
    """Buffers put back after the trace: a lazy one (no values yet), one that requires grad, an inference tensor."""
    lazy = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    assert traced(lazy, (torch.randn(3, 5),))[0] and lazy[1].running_mean.shape == (4,)  # made real by the pass
    with torch.inference_mode():
        frozen = nn.BatchNorm1d(4)
    frozen.register_buffer("scale", torch.ones(2, requires_grad=True))
    traced(frozen, (torch.randn(3, 4) * 5,))
    assert torch.equal(frozen.running_var, torch.ones(4)) and frozen.scale.requires_grad


def test_the_graph_callback_draws_the_first_step_s_inputs_once():
    model = SkipNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Graph())
    monitor.train_start(model, optimizer)
    for _ in range(3):
        x = torch.randn(4, 4)
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
        monitor.step_end(loss=loss, inputs=x)
    panes = sink.of(Text, "graph")
    assert len(panes) == 1 and "<svg" in panes[0].html and "[4, 8]" in panes[0].html
    with pytest.raises(TypeError, match=r"inputs must be a tensor, a tuple of tensors .* got \['str'\]"):
        Graph(inputs="x")
    writer = SummaryWriter(monitor=monitor)
    with pytest.raises(ValueError, match="input_to_model must be a tensor"):
        writer.add_graph(model)
    writer.add_graph(model, torch.randn(2, 4))
    assert len(sink.of(Text, "graph")) == 2


def test_a_submodule_compiled_on_its_own_is_drawn_plain_from_its_code_without_compiling_it_again():
    compiles = []

    def counting(graph_module, example_inputs):  # a torch.compile backend that runs the graph as it is
        compiles.append(1)
        return graph_module.forward

    model = nn.Sequential(nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU()), nn.Flatten(), nn.Linear(4 * 14, 2))
    model[0] = torch.compile(model[0], backend=counting)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Graph())
    monitor.train_start(model, optimizer)
    for _ in range(2):
        x = torch.randn(4, 1, 16)
        loss = model(x).sum()
        loss.backward()
        optimizer.step()
        monitor.step_end(loss=loss, inputs=x)
    assert len(compiles) == 1  # traced without gradients, the compiled code had compiled again (grad_mode)
    nodes, how = traced(model, (x,))
    assert how == "fx" and [n.name for n in nodes] == ["input", "0.0", "0.1", "1", "2", "output"]
    html = sink.of(Text, "graph")[0].html
    assert "_orig_mod" not in html and ">0.0: Conv1d<" in html and "Sequential" in html and "hooks" not in html


def test_a_forward_with_an_argument_left_out_is_drawn_without_a_traceback_on_stderr(capfd):
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, mask=None):
            out = self.fc(x)
            return out if mask is None else out * mask  # fx traces the mask's branch; run, it fails

    nodes, how = traced(Masked(), (torch.ones(3, 4),))
    assert how == "hooks" and [n.name for n in nodes] == ["input 0", "fc", "output"]
    assert capfd.readouterr().err == ""


class _BfloatBase(nn.Module):
    """A frozen bfloat16 base beside a float32 adapter, as a LoRA loop keeps them: it runs under autocast only."""

    def __init__(self):
        super().__init__()
        self.base = nn.Linear(8, 8).to(torch.bfloat16).requires_grad_(False)
        self.adapter = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        return self.base(x) + self.adapter(x)


def test_a_model_that_runs_under_autocast_only_is_drawn_and_one_that_cannot_run_is_said_once(caplog):
    monitor, sink = monitor_with(Graph())
    monitor.train_start(_BfloatBase())
    for _ in range(2):
        monitor.step_end(loss=1.0, inputs=torch.randn(4, 8))
    (pane,) = sink.of(Text, "graph")
    assert "adapter" in pane.html and "[4, 8]" in pane.html

    monitor, sink = monitor_with(Graph())  # errors raised, were any
    monitor.train_start(nn.Linear(3, 3))
    with caplog.at_level("WARNING", logger="monitor"):
        for _ in range(3):  # inputs the model cannot take: tried once, not each step
            monitor.step_end(loss=1.0, inputs=torch.randn(4, 5))
    (said,) = [r.getMessage() for r in caplog.records if "Graph" in r.getMessage()]
    assert said.startswith("monitor: Graph could not run the model on the inputs of step 1 and draws no pane "
                           "'graph': RuntimeError: ") and said.endswith("Graph(inputs=...) traces it at "
                                                                        "train_start on inputs of your choosing")
    assert sink.of(Text, "graph") == []


def test_a_detection_model_given_a_list_of_images_of_their_own_sizes_is_drawn():
    # Its 8 images were passed as 8 arguments ("takes from 2 to 3 positional arguments but 9 were
    # given"), and Graph(inputs=...) refused the list: no form of the batch drew the model.
    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, images: list[torch.Tensor], targets: list | None = None) -> torch.Tensor:
            return torch.stack([self.backbone(image[None]).mean((2, 3))[0] for image in images])

    images = [torch.rand(3, 48 + 8 * i, 64) for i in range(3)]
    for graph, inputs in ((Graph(), images), (Graph(inputs=images), None)):
        monitor, sink = monitor_with(graph)
        monitor.train_start(Detector(), None)
        monitor.step_end(loss=1.0, inputs=inputs)
        (pane,) = sink.of(Text, "graph")
        assert "Conv2d" in pane.html and "backbone" in pane.html


def test_a_graph_given_no_inputs_anywhere_says_so_once(caplog):
    # A QAT script used Graph() and never passed inputs= to step_end: no pane, no word.
    model = nn.Sequential(nn.Linear(4, 3))
    with caplog.at_level("WARNING", logger="monitor"):
        monitor, sink = monitor_with(Graph())
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for epoch in monitor.epochs(2):
            monitor.step_end(loss=1.0)
        monitor.train_end()
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: Graph was given no inputs by the end of epoch 0, and draws no pane 'graph': pass the batch, "
        "monitor.step_end(loss=loss, inputs=x), or Graph(inputs=example)"]
