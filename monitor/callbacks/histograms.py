"""Histograms: how the model's gradients and weights are distributed, over the steps."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch.nn.parameter import is_lazy

from monitor import checks
from monitor.amp import scale_of
from monitor.callbacks._every import is_due
from monitor.core import Callback, LoopState
from monitor.binning import binned
from monitor.log import Log
from monitor.models import as_used, pruning_masks, unwrap_model
from monitor.records import Histogram, Order

_log = logging.getLogger("monitor")

_KINDS = {"grads": ("grad distribution", "gradient value"), "weights": ("weight distribution", "weight value")}


class Histograms(Callback):
    """Distributions of the gradients and weights, drawn as TensorBoard's distributions view draws them.

        monitor = Monitor([Histograms(every=100)], env="mnist")
        loss.backward(); monitor.after_backward()      # the gradients are binned here
        optimizer.step(); monitor.step_end(loss=loss)  # the weights here, after the update

    Windows ``grad distribution`` and ``weight distribution`` pool the model's parameters that
    train (not a distiller's frozen teacher's, which no optimizer holds; a pruned weight masked,
    as the forward pass uses it);
    ``layers=["encoder", "head"]`` gives each named module (as in ``model.named_modules()``) its
    own windows instead, e.g. ``grad distribution encoder``; the gradients of a pass named by
    ``after_backward("D")`` (a GAN's) are that optimizer's, in ``grad distribution D``. ``of`` picks the kinds. Each
    histogram has ``bins`` equal bins over the values' range and is binned on the parameters'
    device: nothing is read on the training thread. As with GradNorms, with gradient
    accumulation the last ``after_backward`` of a step counts, and under a GradScaler given to
    ``train_start`` the gradients are shown unscaled.
    """

    def __init__(self, every: int = 100, of: Sequence[str] = ("grads", "weights"),
                 layers: Sequence[str] | None = None, bins: int = 30) -> None:
        self.every = checks.positive_int("every", every)
        if isinstance(of, str) or not of or any(kind not in _KINDS for kind in of):
            raise ValueError(f"of must be a non-empty list of {sorted(_KINDS)}, got {of!r}")
        self.of = tuple(of)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"layers must be a list of module names or None, got {layers!r}")
        self.layers = None if layers is None else tuple(layers)
        self.bins = checks.positive_int("bins", bins)
        self._groups: dict[str, list[torch.nn.Parameter]] = {}  # window suffix: parameters
        self._pending: dict[str, Histogram] = {}
        self._told_missing = False

    def on_train_start(self, state: LoopState, log: Log) -> None:
        if state.model is None:
            raise ValueError("Histograms needs the model: pass it to monitor.train_start(model, optimizer), "
                             "got model=None")
        modules = dict(unwrap_model(state.model).named_modules())
        missing = [name for name in self.layers or () if name not in modules]
        if missing and not self._told_missing:  # a typo, or a module added later (a new task's column)
            self._told_missing = True
            known = [name for name in modules if name][:8]
            _log.warning("monitor: Histograms(layers=...) names %s, not modules of the model (yet): drawn once the "
                         "model has them; it has %s...", missing, known)
        self._group(state)

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        if "grads" not in self.of or not is_due(state.step, self.every):
            return
        # The gradients the optimizers step with, as GradNorms takes them: a frozen column's stay
        # on its parameters, stale, once a new task's optimizer holds the others only; after a
        # named pass (a GAN's after_backward("D")), that optimizer's alone, in windows of their own.
        name = state.backward_pass
        stepping = state.optimizers.values() if name is None else (state.optimizers[name],)
        held = {id(p) for optimizer in stepping for group in optimizer.param_groups
                for p in group["params"]} if state.optimizers else None
        for suffix, params in self._group(state).items():
            grads = [p.grad for p in params if p.grad is not None and (held is None or id(p) in held)]
            if grads:  # kept until step_end: a later after_backward of the step (of the pass) replaces it
                window = _KINDS["grads"][0] + suffix + ("" if name is None else f" {name}")
                self._pending[window] = _histogram(window, state.step, grads, self.bins,
                                                   scale_of(state.scaler, stepping))

    def _group(self, state: LoopState) -> dict[str, list[torch.nn.Parameter]]:
        """The parameters of each window, as the model has them now: asked at each step logged,
        so a head added later, weights loaded with ``assign=True`` and lazy modules once
        initialized are the ones shown."""
        model = unwrap_model(state.model)
        # Real-valued ones only: an integer or boolean parameter (a counter, a mask) is not a
        # weight, and one counter of 100,000 put every weight in one bin.
        if self.layers is None:
            self._groups = {"": [p for p in model.parameters() if _weight(p)]}
        else:
            modules = dict(model.named_modules())
            self._groups = {f" {name}": [p for p in modules[name].parameters() if _weight(p)]
                            for name in self.layers if name in modules}
        return self._groups

    def on_step_end(self, state: LoopState, log: Log) -> None:
        pending, self._pending = self._pending, {}
        if not is_due(state.step, self.every):
            return
        self._group(state)
        if "weights" in self.of:
            self._lay_out(log, [_KINDS["weights"][0] + suffix for suffix in self._groups])
        self._lay_out(log, list(pending))
        for record in pending.values():
            log.sink.put(record)
        if "weights" in self.of:
            self._put_weights(state, log)

    def on_train_end(self, state: LoopState, log: Log) -> None:
        """The trained weights, where the last step was not one of every ``every``th: a run of 300
        steps, every=50, ended at the weights of step 251 before."""
        if "weights" in self.of and state.step and not is_due(state.step, self.every) and state.model is not None:
            self._group(state)
            self._lay_out(log, [_KINDS["weights"][0] + suffix for suffix in self._groups])
            self._put_weights(state, log)

    def _put_weights(self, state: LoopState, log: Log) -> None:
        masks = pruning_masks(unwrap_model(state.model))  # a pruned weight as the forward pass uses it
        held = {id(p) for optimizer in state.optimizers.values() for group in optimizer.param_groups
                for p in group["params"]}
        for suffix, params in self._groups.items():
            if not suffix:  # pooled: not a frozen teacher's (no gradient, no optimizer)
                params = [p for p in params if p.requires_grad or id(p) in held] or params
            if params:
                log.sink.put(_histogram(_KINDS["weights"][0] + suffix, state.step, as_used(params, masks), self.bins))

    def _lay_out(self, log: Log, windows: list[str]) -> None:
        for window in windows:
            if window not in log.laid_out:
                ylabel = _KINDS["grads" if window.startswith(_KINDS["grads"][0]) else "weights"][1]
                log.lay_out(window, Order.GRADIENTS, title=window, xlabel="step", ylabel=ylabel)


def _histogram(window: str, step: int, tensors: list[torch.Tensor], bins: int,
               scale: float | torch.Tensor | None = None) -> Histogram:
    """``scale``: what the gradients are multiplied by under a GradScaler; equal bins of the
    scaled values are those of the true ones, with the edges divided by it."""
    with torch.no_grad():
        edges, counts, n = binned(tensors, bins)
        if scale is not None:
            edges = edges / scale
    return Histogram(window, step, (edges, counts, n))


def _weight(parameter: torch.nn.Parameter) -> bool:
    return not is_lazy(parameter) and (parameter.is_floating_point() or parameter.is_complex())
