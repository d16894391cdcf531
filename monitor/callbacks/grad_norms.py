"""GradNorms: the L2 norm of each layer's gradients and of all of them, computed on the device."""
from __future__ import annotations

import weakref

import torch
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

from monitor.callbacks._every import is_due, positive_int
from monitor.checkpoint import unwrap_model
from monitor.core import Callback, LoopState
from monitor.log import Log

_YLABELS = {"grad norm": "L2 norm of the gradients", "weight norm": "L2 norm of the weights",
            "update ratio": "norm of the update / norm of the weights"}


class GradNorms(Callback):
    """Plots per-layer and total gradient norms at ``after_backward``, in window ``grad norm``.

        monitor = Monitor([GradNorms(every=10, update_ratio=True)], env="mnist")
        loss.backward(); monitor.after_backward()     # before optimizer.step() and zero_grad()
        optimizer.step(); monitor.step_end(loss=loss)

    A layer is a module that owns parameters directly; its trace is the module's qualified name
    (``fc1``, ``encoder.attn``), with the class added where the name ends in a number, as in
    ``nn.Sequential`` (``0.Linear``, ``layers.3.Conv2d``); the root module's own parameters go
    under its class name. Trace ``total`` is the norm of all gradients, as
    ``clip_grad_norm_`` computes it. Parameters whose ``grad`` is None are left out that step.
    The grouping is built at train_start and rebuilt when a module or parameter is registered
    (a new head, a grown network); a module deleted mid-epoch is noticed at the next epoch_start.

    All norms of a step come from one foreach pass and are logged as one tensor that stays on
    the device until the sink's worker reads it. ``weights=True`` adds ``weight norm``;
    ``update_ratio=True`` adds ``update ratio``, ||w_after - w_before|| / ||w_before|| per layer,
    which costs a copy of the weights on the device between after_backward and step_end on the
    steps it logs. With gradient accumulation, call ``after_backward`` once, after the last backward.

    A model wrapped in DistributedDataParallel (or torch.compile) is read through the wrapper,
    so its traces are named as the plain model's (``0.Linear``, not ``module.0.Linear``). DDP
    averages the gradients over the ranks during ``backward()``, so the norms at
    ``after_backward`` are the same on every rank: those of one process training on the global
    batch (inside ``no_sync()`` they would be each rank's own).
    """

    def __init__(self, every: int = 1, weights: bool = False, update_ratio: bool = False) -> None:
        self.every = positive_int("every", every)
        for argument, value in (("weights", weights), ("update_ratio", update_ratio)):
            if not isinstance(value, bool):
                raise TypeError(f"{argument} must be True or False, got {value!r}")
        self.weights, self.update_ratio = weights, update_ratio
        self._model: torch.nn.Module | None = None
        self._params: list[torch.nn.Parameter] = []
        self._layer_of: list[int] = []      # self._params[i] belongs to layer self._layer_of[i]
        self._layers: list[str] = []        # trace names, one per layer
        self._groupings: dict[tuple, tuple[list[str], torch.Tensor]] = {}
        self._before: list[torch.Tensor] | None = None
        self._laid_out: set[str] = set()
        self._stale = True  # the parameters may have changed since the grouping was built
        self._hooks: list = []

    def on_train_start(self, state: LoopState, log: Log) -> None:
        if not self._hooks:
            me = weakref.ref(self)

            def registered(*_) -> None:
                owner = me()
                if owner is not None:
                    owner._stale = True

            self._hooks = [register_module_module_registration_hook(registered),
                           register_module_parameter_registration_hook(registered)]
        self._stale = True
        self._parameters(state)

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        self._stale = True

    def on_train_end(self, state: LoopState, log: Log) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        if not is_due(state.step, self.every):
            return
        params = self._parameters(state)
        if not params:
            return
        present = tuple(i for i, p in enumerate(params) if p.grad is not None)
        if present:
            self._write(log, "grad norm", state.step, [params[i].grad for i in present], present)
        if self.weights:
            self._write(log, "weight norm", state.step, params)
        if self.update_ratio:
            with torch.no_grad():
                self._before = torch._foreach_mul(params, 1.0)

    def on_step_end(self, state: LoopState, log: Log) -> None:
        before, self._before = self._before, None
        if before is None or not is_due(state.step, self.every):
            return
        with torch.no_grad():
            updates = torch._foreach_sub(self._params, before)
            traces, sums = self._grouping(tuple(range(len(self._params))), before[0].device)
            ratio = _norms(updates, sums, len(traces)) / _norms(before, sums, len(traces))
        self._put(log, "update ratio", state.step, traces, ratio)

    def _write(self, log: Log, window: str, x: int, tensors: list[torch.Tensor],
               present: tuple[int, ...] | None = None) -> None:
        present = tuple(range(len(tensors))) if present is None else present
        traces, sums = self._grouping(present, tensors[0].device)
        if window == "grad norm" and not tensors[0].requires_grad:
            # Plain gradients (no backward(create_graph=True)) build no graph, and no_grad()
            # would cost as much as one of the few operations below.
            norms = _norms(tensors, sums, len(traces))
        else:
            with torch.no_grad():
                norms = _norms(tensors, sums, len(traces))
        self._put(log, window, x, traces, norms)

    def _put(self, log: Log, window: str, x: int, traces: list[str], values: torch.Tensor) -> None:
        if window not in self._laid_out:
            log.window(window, title=window, xlabel="step", ylabel=_YLABELS[window], ytype="log")
            self._laid_out.add(window)
        log.vector(window, x, traces, values, copy=False)  # values is ours, made just now

    def _parameters(self, state: LoopState) -> list[torch.nn.Parameter]:
        """The model's parameters; the layer grouping is rebuilt when they change."""
        if state.model is None:
            raise ValueError("GradNorms needs the model: pass it to monitor.train_start(model, optimizer), "
                             "got model=None")
        model = unwrap_model(state.model)
        if model is not self._model or self._stale:
            self._stale = False
            current = list(model.parameters())
            if model is not self._model or len(current) != len(self._params) or \
                    any(a is not b for a, b in zip(current, self._params)):
                self._build(model)
        return self._params

    def _build(self, model: torch.nn.Module) -> None:
        self._model, self._params, self._layer_of, self._layers = model, [], [], []
        self._groupings.clear()
        self._before = None
        seen: set[int] = set()
        for name, module in model.named_modules():
            owned = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            if not owned:
                continue
            seen.update(id(p) for p in owned)
            self._params.extend(owned)
            self._layer_of.extend([len(self._layers)] * len(owned))
            self._layers.append(_trace_name(name, module))

    def _grouping(self, present: tuple[int, ...], device: torch.device) -> tuple[list[str], torch.Tensor]:
        """Trace names and how to add the present parameters' squared norms up into each trace.

        Usually a 0/1 matrix: row ``r`` picks the parameters of the ``r``-th layer present, the
        last row picks them all. Its size grows with layers x parameters, so for a very large model
        it is instead each parameter's row, then the total's row once per parameter (see _norms).
        Cached per set of parameters present.
        """
        key = (present, device)
        if key not in self._groupings:
            layers = sorted({self._layer_of[i] for i in present})
            row = {layer: n for n, layer in enumerate(layers)}
            rows = [row[self._layer_of[i]] for i in present]
            if (len(layers) + 1) * len(present) <= _MATRIX_LIMIT:
                sums = torch.zeros(len(layers) + 1, len(present), dtype=torch.float32)
                sums[rows, list(range(len(present)))] = 1.0
                sums[-1] = 1.0
            else:
                sums = torch.tensor(rows + [len(layers)] * len(present))
            if len(self._groupings) >= 16:
                self._groupings.clear()
            self._groupings[key] = ([self._layers[layer] for layer in layers] + ["total"], sums.to(device))
        return self._groupings[key]


_MATRIX_LIMIT = 1 << 16  # elements of the summing matrix (256 KB); beyond it, an index


def _norms(tensors: list[torch.Tensor], sums: torch.Tensor, rows: int) -> torch.Tensor:
    """``rows`` L2 norms (per layer, then the total) as one float32 tensor on the device of ``sums``.

    Few operations on purpose: right after a backward pass the caches are cold, and each small
    operation costs 10-40 us on a CPU (measured in bench/overhead.py's loops). With the 0/1
    matrix, row r of ``sums * norms`` holds the norms of trace r's parameters, and one
    vector_norm over the rows gives every layer and the total.
    """
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    try:
        norms = torch.stack(norms)
    except RuntimeError:  # parameters on several devices: gather the norms on one
        norms = torch.stack([n.to(sums.device) for n in norms])
    if sums.dim() == 2:
        return torch.linalg.vector_norm(sums * norms, dim=1)
    squares = norms.mul_(norms)
    per_row = torch.zeros(rows, dtype=torch.float32, device=sums.device)
    return per_row.index_add_(0, sums, squares.repeat(2)).sqrt_()


def _trace_name(name: str, module: torch.nn.Module) -> str:
    kind = type(module).__name__
    if not name:
        return kind
    if name.rsplit(".", 1)[-1].isdigit() or name == "total":
        return f"{name}.{kind}"
    return name
