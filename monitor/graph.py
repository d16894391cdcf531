"""The model's graph, traced from one forward pass and drawn as an SVG (the torchviz / Netron role).

    nodes = traced(model, (inputs,))     # what ran, in order: modules, functions, shapes, inputs
    svg = drawn(nodes)                   # one column, top to bottom, as Netron draws a model

``torch.fx`` gives the data flow (a skip connection is an edge that jumps rows) and
one run of the traced module the shapes; a model fx cannot trace (control flow on values) is
traced with forward hooks instead, its leaf modules in the order they ran, each feeding the next.
Modules that hold others are drawn as nested boxes around their parts, named on top.

No layout engine is needed: a network's graph is a chain with a few jumps, drawn in one column
with the jumps as arcs beside it, so no system package (such as graphviz) has to be installed
wherever a loop runs.
"""
from __future__ import annotations

import random
from html import escape
from typing import Any, NamedTuple, Sequence

import numpy
import torch
from torch.nn.parameter import is_lazy

from monitor.models import uncompiled, unwrap_model
from monitor.runs import columns


class Node(NamedTuple):
    """One step of the forward pass: a module call, a function, an input or the output."""

    name: str           # the module's path (``layer1.0.conv1``), the input's name, or the function's node
    kind: str           # the module's class, the function's name, "input" or "output"
    module: str         # its place in the hierarchy: a module's path; a function's is under the module
                        # that called it (``blocks.0.add``); "" for inputs, outputs, top-level functions
    parameters: int     # parameters the module holds (with its children's)
    shape: str          # the shape it gave, as traced ("[8, 32]"), "" when not a tensor
    inputs: tuple[int, ...]  # the nodes it took, as indices into the list


def traced(model: torch.nn.Module, inputs: Sequence[Any]) -> tuple[list[Node], str]:
    """The nodes of one forward pass of ``model`` on ``inputs``, and how they were traced ("fx", "hooks").

    The model runs in eval mode without gradients (so no running statistics change), each module
    is put back in the mode it was in (a frozen BatchNorm stays in eval), its buffers are put
    back as they were (quantization observers record in eval mode too), and the random number
    generators are left as they were: a forward pass that draws noise must not move the loop's
    RNG, or a resumed run would no longer repeat the one it continues.
    """
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(module, name, buffer, buffer.clone()) for module in model.modules()
               for name, buffer in module._buffers.items() if buffer is not None and not is_lazy(buffer)]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            try:
                return _traced_once(model, inputs)
            except RuntimeError:
                half = next((p.dtype for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)), None)
                if half is None:
                    raise
                # A model that runs under torch.autocast only (a bfloat16 base beside float32
                # adapters): traced so too, outside the loop's autocast block.
                with torch.autocast(next(model.parameters()).device.type, dtype=half):
                    return _traced_once(model, inputs)
    finally:
        model.train(modes[0][1])  # the model's own train() may do more than set the flag
        for module, training in modes:
            if module.training != training:
                module.train(training)
        with torch.no_grad():
            for module, name, buffer, value in buffers:  # the same tensors where they can be: a resized observer's too
                try:
                    module._buffers[name] = buffer.resize_(value.shape).copy_(value)
                except RuntimeError:  # one that requires grad, an inference tensor: the copy instead
                    module._buffers[name] = value
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)


def _traced_once(model: torch.nn.Module, inputs: Sequence[Any]) -> tuple[list[Node], str]:
    try:
        return _by_fx(model, inputs), "fx"
    except Exception:  # control flow on values, unsupported calls: the modules as they run
        return _by_hooks(model, inputs), "hooks"


def _by_fx(model: torch.nn.Module, inputs: Sequence[Any]) -> list[Node]:
    from torch.fx import GraphModule, Interpreter, Tracer

    class ThroughCompiled(Tracer):
        """fx's tracer, stepping into a submodule compiled on its own as into the module it
        compiled: that module's code is traced, and no compiled code runs without gradients
        (a recompile the loop would pay for)."""

        def call_module(self, m: torch.nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
            inner = getattr(m, "_orig_mod", None)
            if isinstance(inner, torch.nn.Module):
                return self.call_module(inner, inner.forward, args, kwargs)
            return super().call_module(m, forward, args, kwargs)

    class Shapes(Interpreter):
        """Runs the traced module, noting each node's output shape: fx's ShapeProp, without the
        traceback it prints where the pass fails (the modules are drawn as they run instead)."""

        def run_node(self, node: Any) -> Any:
            result = super().run_node(node)
            node.meta["shape"] = _shape(result)
            return result

    module = GraphModule(model, ThroughCompiled().trace(model))
    Shapes(module).run(*inputs)
    nodes: list[Node] = []
    index: dict[Any, int] = {}
    for node in module.graph.nodes:
        shape = node.meta.get("shape", "")
        if node.op == "placeholder":
            kind, path, count = "input", "", 0
        elif node.op == "output":
            kind, path, count = "output", "", 0
        elif node.op == "call_module":
            sub = module.get_submodule(node.target)
            kind, path, count = type(sub).__name__, uncompiled(node.target), sum(p.numel() for p in sub.parameters())
        elif node.op in ("call_function", "call_method") and shape:
            stack = list((node.meta.get("nn_module_stack") or {}).values())
            owner = uncompiled(str(stack[-1][0])) if stack else ""  # the module whose forward called it
            kind, path, count = getattr(node.target, "__name__", str(node.target)), "", 0
            path = f"{owner}.{node.name}" if owner else ""
        else:  # attributes, sizes: not tensors flowing through the model
            continue
        name = node.target if node.op == "placeholder" else path if node.op == "call_module" else node.name
        inputs_of = tuple(index[n] for n in node.all_input_nodes if n in index)
        index[node] = len(nodes)
        nodes.append(Node(name, kind, path, count, shape, inputs_of))
    return nodes


def _by_hooks(model: torch.nn.Module, inputs: Sequence[Any]) -> list[Node]:
    nodes = [Node(f"input {i}", "input", "", 0, _shape(x), ()) for i, x in enumerate(inputs)]
    scripted = [path for path, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    # A TorchScript module takes no hooks: it is left out, its output the input of the box after it.
    leaves = [(path, m) for path, m in model.named_modules()
              if not any(path.startswith(f"{s}.") or path == s for s in scripted)
              and not any(True for _ in m.children())]

    def record(path: str, module: torch.nn.Module):
        def hook(_, __, output) -> None:
            previous = (len(nodes) - 1,) if len(nodes) > len(inputs) else tuple(range(len(inputs)))
            nodes.append(Node(uncompiled(path) or type(module).__name__, type(module).__name__, uncompiled(path),
                              sum(p.numel() for p in module.parameters()), _shape(output), previous))
        return hook

    handles = []
    try:  # a hook left on the model would grow its list at every forward of the training
        handles.extend(m.register_forward_hook(record(path, m)) for path, m in leaves)
        output = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    nodes.append(Node("output", "output", "", 0, _shape(output), (len(nodes) - 1,)))
    return nodes


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return str(list(shape))
    if isinstance(value, (tuple, list)):
        return ", ".join(s for s in map(_shape, value) if s)
    return ""


# --- fitting a big model into a message -----------------------------------------------------------
MESSAGE_BYTES = 300_000  # what a drawing may take, as any other window's message


def fitted(nodes: list[Node], model: torch.nn.Module, title: str = "") -> str:
    """``drawn(nodes)``, or, when that passes ``MESSAGE_BYTES``, the modules folded into boxes of
    their own, the deepest first; a model still too long is drawn from both ends."""
    svg = drawn(nodes, title)
    depth = max((n.module.count(".") + 1 for n in nodes if n.module), default=0)
    while len(svg) > MESSAGE_BYTES and depth > 1:
        depth -= 1
        svg = drawn(collapsed(nodes, depth, model), f"{title} (modules below depth {depth} folded)")
    if len(svg) > MESSAGE_BYTES:
        folded = collapsed(nodes, 1, model) if depth else nodes
        keep = len(folded) * MESSAGE_BYTES // len(svg) // 2
        svg = drawn(shortened(folded, keep), f"{title} (the first and last {keep} nodes)")
    return svg


def collapsed(nodes: list[Node], depth: int, model: torch.nn.Module) -> list[Node]:
    """The nodes with each run of nodes inside one module at ``depth`` (``layer1.0`` is at 2) as
    one node: that module, its class, its parameters and the shape it gave last."""
    groups: list[list[int]] = []
    keys: list[str] = []
    for i, node in enumerate(nodes):
        parts = node.module.split(".") if node.module else []
        if node.name != node.module:  # a function: its last part is its own name, not a module's
            parts = parts[:-1]
        key = ".".join(parts[:depth]) if len(parts) >= depth and node.kind not in ("input", "output") else ""
        if key and keys and keys[-1] == key:
            groups[-1].append(i)
        else:
            groups.append([i])
            keys.append(key)
    where = {i: g for g, members in enumerate(groups) for i in members}
    folded = []
    for g, (key, members) in enumerate(zip(keys, groups)):
        inputs = tuple(dict.fromkeys(where[s] for i in members for s in nodes[i].inputs if where[s] != g))
        if not key or len(members) == 1 and nodes[members[0]].name == key:
            folded.append(nodes[members[0]]._replace(inputs=inputs))
            continue
        try:
            module = unwrap_model(model.get_submodule(key))
            kind, parameters = type(module).__name__, sum(p.numel() for p in module.parameters())
        except AttributeError:  # a path that names no module (a model traced by hooks under other names)
            kind, parameters = "module", 0
        folded.append(Node(key, kind, key, parameters, nodes[members[-1]].shape, inputs))
    return folded


def shortened(nodes: list[Node], keep: int) -> list[Node]:
    """The first and last ``keep`` nodes, with one node between them saying how many are left out."""
    if len(nodes) <= 2 * keep + 1:
        return nodes
    cut = len(nodes) - 2 * keep
    gap = Node(f"... {cut} nodes not drawn", "", "", 0, "", (keep - 1,))
    moved = [n._replace(inputs=tuple(dict.fromkeys(s if s < keep else keep if s < len(nodes) - keep else s - cut + 1
                                                   for s in n.inputs)))
             for n in nodes[len(nodes) - keep:]]
    return [*nodes[:keep], gap, *moved]


# --- drawing ------------------------------------------------------------------------------------
_BOX_W, _BOX_H, _GAP, _INDENT, _LABEL, _LANE = 240, 34, 26, 12, 16, 12


def drawn(nodes: list[Node], title: str = "") -> str:
    """An SVG of ``nodes``: a box per node top to bottom, arrows labelled with the shapes they carry."""
    clusters = _clusters(nodes)
    depth = [sum(1 for (_, first, last, _) in clusters if first <= i <= last) for i in range(len(nodes))]
    deepest = max(depth, default=0)
    right = 20 + _BOX_W + (_INDENT + 6) * deepest + 10
    tops, y = [], 30 if title else 10
    for i in range(len(nodes)):
        y += _LABEL * sum(1 for (_, first, _, _) in clusters if first == i)
        tops.append(y)
        y += _BOX_H + _GAP + 6 * sum(1 for (_, _, last, _) in clusters if last == i)
    lefts = [20 + _INDENT * d for d in depth]
    parts = []
    for name, first, last, level in clusters:
        inner = [c for c in clusters if c[3] >= level]  # itself and the clusters nested in it
        x = 20 + _INDENT * level - 6
        top = tops[first] - _LABEL * sum(1 for c in inner if c[1] == first) + 2
        bottom = tops[last] + _BOX_H + 6 * sum(1 for c in inner if c[2] == last) - 2
        parts.append(f'<rect x="{x}" y="{top}" width="{right - 5 * level - x}" height="{bottom - top}" rx="6" '
                     f'fill="rgba(31,119,180,0.06)" stroke="#9ab"/>'
                     f'<text x="{x + 6}" y="{top + 12}" font-size="11" fill="#567">{escape(name)}</text>')
    lanes = 0
    for i, node in enumerate(nodes):
        for source in node.inputs:
            x1, y1 = lefts[source] + _BOX_W / 2, tops[source] + _BOX_H
            x2, y2 = lefts[i] + _BOX_W / 2, tops[i]
            if source == i - 1:
                path = f"M{x1},{y1} L{x2},{y2 - 3}"
                label_at = (x1 + 6, y1 + 16)
            else:  # a jump: an arc out to the right of the column and back
                lanes += 1
                lane = right + _LANE * (1 + (lanes - 1) % 6)
                sx, sy = lefts[source] + _BOX_W, tops[source] + _BOX_H / 2
                ex, ey = lefts[i] + _BOX_W, tops[i] + _BOX_H / 2
                path = f"M{sx},{sy} C{lane},{sy} {lane},{ey} {ex + 3},{ey}"
                label_at = (sx + 6, sy - 4)
            parts.append(f'<path d="{path}" fill="none" stroke="#555" marker-end="url(#arrow)"/>')
            if nodes[source].shape:
                parts.append(f'<text x="{label_at[0]}" y="{label_at[1]}" font-size="10" fill="#333" '
                             f'class="shape">{escape(nodes[source].shape)}</text>')
    for i, node in enumerate(nodes):
        x, top = lefts[i], tops[i]
        colour = "#fde9c4" if node.kind in ("input", "output") else "#dceaf7" if node.name == node.module else \
            "#eeeeee"
        if node.kind in ("input", "output"):
            first_line = node.kind if node.name in ("output", node.kind) else f"{node.name}: {node.kind}"
        else:  # a module's path and class; a function's node name says what it is (add_1, cat)
            first_line = f"{node.name}: {node.kind}" if node.name == node.module else node.name
        second = f"{node.parameters:,} parameters" if node.parameters else \
            (node.shape if node.kind in ("input", "output") else "")
        parts.append(f'<g class="node"><rect x="{x}" y="{top}" width="{_BOX_W}" height="{_BOX_H}" rx="4" '
                     f'fill="{colour}" stroke="#333"/>'
                     f'<text x="{x + 8}" y="{top + 14}" font-size="12">{escape(_fit(first_line))}</text>'
                     f'<text x="{x + 8}" y="{top + 28}" font-size="10" fill="#555">{escape(second)}</text></g>')
    width = right + _LANE * (min(lanes, 6) + 1) + 10
    head = f'<text x="10" y="18" font-size="13" font-weight="bold">{escape(title)}</text>' if title else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}" '
            f'font-family="sans-serif"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
            f'</defs>{head}{"".join(parts)}</svg>')


def _clusters(nodes: list[Node]) -> list[tuple[str, int, int, int]]:
    """(module path, first node, last node, nesting level) of each module holding others, for each
    run of its nodes; the outermost first."""
    runs: list[tuple[str, int, int]] = []
    open_runs: dict[str, int] = {}
    previous: set[str] = set()
    for i, node in enumerate(nodes + [Node("", "", "", 0, "", ())]):
        parts = node.module.split(".") if node.module else []
        parents = {".".join(parts[:k]) for k in range(1, len(parts))}
        for ended in previous - parents:
            runs.append((ended, open_runs.pop(ended), i - 1))
        for started in parents - previous:
            open_runs[started] = i
        previous = parents
    return sorted((name, first, last, name.count(".")) for name, first, last in runs)


def _fit(text: str, limit: int = 34) -> str:
    """``text`` cut to ``limit`` columns (a Chinese character takes two), ending in ".." where cut."""
    if columns(text) <= limit:
        return text
    while columns(text) > limit - 2:
        text = text[:-1]
    return text + ".."
