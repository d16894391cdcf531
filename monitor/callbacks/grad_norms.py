"""GradNorms: the L2 norm of each layer's gradients and of all of them, at after_backward."""
from __future__ import annotations

import logging
import math
import weakref
from functools import partial
from typing import Callable

import torch
from torch.nn.utils import parametrize
from torch.nn.modules.module import (register_module_module_registration_hook,
                                     register_module_parameter_registration_hook)

from monitor.amp import current_scale, scale_of
from monitor.callbacks._every import is_due
from monitor.checks import boolean, one_of, positive_int
from monitor.models import Masks, as_used, pruning_masks, uncompiled, unwrap_model
from monitor.core import Callback, LoopState
from monitor.log import Log
from monitor.norms import Norms, Stacks, each_norm, read, stacks_of
from monitor.layer_sums import LayerNorms, LayerSums
from monitor.records import Order

_log = logging.getLogger("monitor")

LINES_UP_TO = 16  # layers drawn as lines by form="auto"; more make a heatmap
_YLABELS = {"grad norm": "L2 norm of the gradients", "weight norm": "L2 norm of the weights",
            "update ratio": "norm of the update / norm of the weights", "loss scale": "GradScaler's scale"}


NO_BACKWARD_STEPS = 100  # steps with no after_backward, in a loop that ends no epoch, before it is said


class GradNorms(Callback):
    """Plots per-layer and total gradient norms at ``after_backward``, in window ``grad norm``.

        monitor = Monitor([GradNorms(every=10, update_ratio=True)], env="mnist")
        loss.backward(); monitor.after_backward()     # before optimizer.step() and zero_grad()
        optimizer.step(); monitor.step_end(loss=loss)

    A layer is a module that owns parameters directly; its trace is the module's qualified name
    (``fc1``, ``encoder.attn``), with the class added where the name ends in a number, as in
    ``nn.Sequential`` (``0.Linear``, ``layers.3.Conv2d``); a model's own parameters beside its
    layers each go by their name (``pos_embed``), a model that is one layer by its class
    (``Linear``), and a weight tied to another module's names both (``embed (also lm_head)``,
    as a language model's output layer shares its embedding; what the other has of its own, by
    its name: ``fc3 bias``); an RNN's (``nn.LSTM``, ``nn.GRU``)
    input and hidden weights of each layer apart, each with its bias (``encoder ih_l0``,
    ``encoder hh_l0``: exploding gradients show in the hidden ones); parameters an optimizer updates that
    the model does not hold (a learned loss weight, a meta-learned inner rate) by their group's
    ``name`` (else ``group N``). Trace ``total`` is the norm of all gradients, as
    ``clip_grad_norm_`` computes it. Parameters whose ``grad`` is None are left out that step.
    The grouping is built at train_start and rebuilt when a module or parameter is registered
    (a new head, a grown network); a module deleted mid-epoch is noticed at the next epoch_start.

    The training thread only takes each parameter's norm, in one foreach pass (on a CPU, small
    parameters alike in shape are stacked: a model of many small layers), and reads those on the
    CPU; the sink reads the others and adds them all up into layers and the total. A sparse
    gradient (``nn.Embedding(sparse=True)``) counts each value it stores.

    ``weights=True`` adds ``weight norm``, the weights at the step's first ``after_backward``
    (those the forward pass uses: a ``torch.nn.utils.prune``-d one's masked)
    (before its update, also when an LBFGS closure calls it several times); ``update_ratio=True``
    adds ``update ratio``, ||w_after - w_before|| / ||w_before|| per layer that had gradients
    (a frozen layer is left out), which costs a copy of the weights on the device between
    after_backward and step_end on the steps it logs.

    The norms are taken at ``after_backward`` and logged at ``step_end``, one point a step: with
    gradient accumulation the last call of the step counts (the accumulated gradients), whether
    the loop calls ``after_backward`` after every micro-batch or only the last. Called before
    ``clip_grad_norm_``, ``total`` is the norm it clips (what it returns). With a GradScaler
    given to ``train_start(..., scaler=scaler)`` the norms are those of the unscaled gradients,
    before or after ``scaler.unscale_``; a step the scaler skips (inf or NaN gradients) shows as
    a gap, counted in the legend, and ``loss_scale=True`` plots the scale in ``loss scale``.
    With several optimizers, ``after_backward(optimizer=name)`` gives each backward pass its own
    window, ``grad norm NAME``, holding only that optimizer's parameters; without a name, those
    of every optimizer (a frozen teacher's in the same module, which keeps gradients from
    before, is left out).

    ``form`` chooses how the layers are drawn: ``"lines"``, a curve per layer; ``"heatmap"``,
    layers x steps on a log colour scale (each cell the highest norm of its steps), with
    ``total`` and the ``top`` layers largest at the latest step as curves above it; ``"auto"``
    (the default), lines up to 16 layers and the heatmap beyond, where curves become
    unreadable and slow to draw. Either way the run log keeps every norm of every step.

    A model wrapped in DistributedDataParallel (or torch.compile) is read through the wrapper,
    so its traces are named as the plain model's (``0.Linear``, not ``module.0.Linear``). DDP
    averages the gradients over the ranks during ``backward()``, so the norms at
    ``after_backward`` are the same on every rank: those of one process training on the global
    batch (inside ``no_sync()`` they would be each rank's own).
    """

    def __init__(self, every: int = 1, weights: bool = False, update_ratio: bool = False,
                 loss_scale: bool = False, form: str = "auto", top: int = 5) -> None:
        self.every = positive_int("every", every)
        self.form = one_of("form", form, ("auto", "lines", "heatmap"))
        self.top = positive_int("top", top)
        self.weights, self.update_ratio = boolean("weights", weights), boolean("update_ratio", update_ratio)
        self.loss_scale = boolean("loss_scale", loss_scale)
        self._pending: dict[str, tuple[str, tuple[str, ...], LayerNorms]] = {}  # window: kind, traces, values
        self._forms: dict[str, str] = {}  # each window's form as last laid out
        self._passes: dict[str, tuple[int, tuple[int, ...]]] = {}  # an optimizer's groups, its parameters' indices
        self._updated_key: int | None = None  # the optimizers' groups, when _updated_indices was found
        self._updated_indices: tuple[int, ...] = ()  # the parameters some optimizer updates
        self._wrapped: torch.nn.Module | None = None   # the model as passed, maybe in a wrapper
        self._model: torch.nn.Module | None = None
        self._params: list[torch.nn.Parameter] = []
        self._masks: Masks = {}  # the parameters torch.nn.utils.prune masks: their weights are shown masked
        self._layer_of: list[int] = []      # self._params[i] belongs to layer self._layer_of[i]
        self._layers: list[str] = []        # trace names, one per layer
        self._all: tuple[int, ...] = ()     # every parameter's index: the usual set present
        self._all_grouping: _Grouping | None = None  # its grouping
        self._groupings: dict[tuple[int, ...], _Grouping] = {}
        self._before: list[torch.Tensor] | None = None  # the weights at the step's first after_backward
        # The parameters with a gradient at one of the step's after_backward, by pass (None: unnamed).
        self._moved: dict[str | None, set[int]] = {}
        self._stale = True  # the parameters may have changed since the grouping was built
        self._hooks: list = []
        self._said_no_gradients = False
        self._pass_kinds: set[bool] = set()  # whether after_backward named its optimizer: both, said once
        self._backward_seen = False  # an after_backward since train_start, or said that none came
        self._started_at = 0  # the step train_start came at (a resumed run's)

    def without_scaler(self) -> str | None:
        return "its gradient norms are those of the scaled gradients (times the scale)"

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
        self._started_at = state.step
        self._passes.clear()  # maybe other optimizers
        self._updated_key = None
        self._parameters(state)

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        self._stale = True

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        self._say_if_no_backward(state, f"the end of epoch {state.epoch} (step {state.step})")

    def on_train_end(self, state: LoopState, log: Log) -> None:
        self._say_if_no_backward(state, f"train_end (step {state.step})")
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _say_if_no_backward(self, state: LoopState, when: str) -> None:
        if not self._backward_seen and state.step > self._started_at:
            self._backward_seen = True
            _log.warning("monitor: GradNorms was given no after_backward() by %s: no window 'grad norm' "
                         "until the loop calls monitor.after_backward() after loss.backward(), "
                         "before optimizer.step()", when)

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        self._backward_seen = True
        if self.every != 1 and not is_due(state.step, self.every):
            return
        if state.model is not self._wrapped or self._stale:
            self._parameters(state)
        name = state.backward_pass
        if len(state.optimizers) > 1 and len(self._pass_kinds) < 2:
            self._say_if_mixed(name)
        indices = self._updated(state) if name is None else self._pass(state, name)
        params = self._params  # as the optimizers' groups found them (a group added may hold new ones)
        if not params:
            return
        grads = [p.grad for p in params] if indices is self._all else [params[i].grad for i in indices]
        present = indices
        for grad in grads:  # a plain loop: `None in grads` would call Tensor.__eq__
            if grad is None:
                present = tuple(i for i, g in zip(indices, grads) if g is not None)
                grads = [g for g in grads if g is not None]
                break
        suffix = "" if name is None else f" {name}"
        if not grads and not self._said_no_gradients:
            self._said_no_gradients = True
            if not indices and name is not None:  # a client's copy of the model, trained beside it
                _log.warning("monitor: GradNorms: optimizer %r updates none of the model's parameters, nothing to plot "
                             "in window 'grad norm%s' (nor for any other optimizer like it): give train_start the "
                             "module that holds the parameters each optimizer updates, e.g. nn.ModuleDict({'global': "
                             "net, 'client0': client_0, ...})", name, suffix)
            else:
                _log.warning("monitor: GradNorms found no gradient on the model's parameters at after_backward "
                             "(step %d), nothing to plot in window 'grad norm%s': call after_backward after "
                             "loss.backward() and before optimizer.zero_grad(), for the model whose parameters the "
                             "optimizer updates (a loop that trains copies of them, as with "
                             "torch.func.functional_call, has none)", state.step, suffix)
        if grads:
            optimizers = state.optimizers.values() if name is None else (state.optimizers[name],)
            scale = scale_of(state.scaler, optimizers) if state.scaler is not None else None
            self._write("grad norm", suffix, grads, present, scale)
        if self.weights and "weight norm" + suffix not in self._pending:  # before any of the step's updates
            weights = params if indices is self._all else [params[i] for i in indices]
            self._write("weight norm", suffix, as_used(weights, self._masks), indices, None)
        if self.update_ratio:
            if self._before is None:  # before any of the step's updates
                with torch.no_grad():
                    self._before = torch._foreach_mul(as_used(params, self._masks), 1.0)
                self._moved = {name: set(present)}
            else:
                self._moved.setdefault(name, set()).update(present)

    def on_step_end(self, state: LoopState, log: Log) -> None:
        pending, self._pending = self._pending, {}
        if not pending and not self._backward_seen and state.step - self._started_at >= NO_BACKWARD_STEPS:
            self._say_if_no_backward(state, f"step {state.step}")
        for window, (kind, traces, values) in pending.items():  # the step's last after_backward counts
            self._put(log, window, _YLABELS[kind], state.step, traces, values)
        if self.loss_scale and is_due(state.step, self.every) and (scale := current_scale(state.scaler)) is not None:
            if "loss scale" not in log.laid_out:
                log.lay_out("loss scale", Order.GRADIENTS, title="loss scale", xlabel="step",
                            ylabel=_YLABELS["loss scale"], ytype="log")
            log.scalar("loss scale", "scale", state.step, scale)  # a device's: copied there, read later
        before, self._before = self._before, None
        if before is None or not is_due(state.step, self.every):
            return
        for name, indices in self._moved.items():  # each optimizer's update apart, as its gradients are
            if indices:
                self._put_update_ratio(log, state.step, "" if name is None else f" {name}", indices, before)

    def _put_update_ratio(self, log: Log, step: int, suffix: str, indices: set[int],
                          before: list[torch.Tensor]) -> None:
        moved = self._all if len(indices) == len(self._all) else tuple(sorted(indices))
        params = as_used(self._params, self._masks)
        if moved is not self._all:  # frozen layers left out: their 0 has no place on a log axis
            params, before = [params[i] for i in moved], [before[i] for i in moved]
        traces, groups, stacks = self._grouping(moved)
        with torch.no_grad():
            updates = each_norm(torch._foreach_sub(params, before), stacks)
            before = each_norm(before, stacks)
        self._put(log, "update ratio" + suffix, _YLABELS["update ratio"], step, traces,
                  partial(_update_ratios, updates, before, groups, traces))

    def _write(self, kind: str, suffix: str, tensors: list[torch.Tensor], present: tuple[int, ...],
               scale: float | torch.Tensor | None) -> None:
        traces, groups, stacks = self._grouping(present)
        if kind == "grad norm" and not tensors[0].requires_grad:
            # Plain gradients (no backward(create_graph=True)) build no graph, and no_grad()
            # would cost as much as the norms' own Python.
            norms = each_norm(tensors, stacks)
        else:
            with torch.no_grad():
                norms = each_norm(tensors, stacks)
        # The norms are floats or new tensors nothing else holds: adding them up can wait, a
        # CPU's until the sink's process (a 161-layer model's took the training process 70 us),
        # and a device's are read by the sink with the other records' in one copy.
        self._pending[kind + suffix] = (kind, traces, LayerNorms(norms, groups, scale))

    def _put(self, log: Log, window: str, ylabel: str, x: int, traces: tuple[str, ...],
             values: Callable[[], list[float]]) -> None:
        form = self.form if self.form != "auto" else "heatmap" if len(traces) > LINES_UP_TO + 1 or \
            self._forms.get(window) == "heatmap" else "lines"  # once a heatmap, one for good (experts that idle)
        if self._forms.get(window) == form and window in log.laid_out:  # laid out as it is already
            log.vector(window, x, traces, values)
            return
        self._forms[window] = form
        heatmap = {"form": "heatmap", "top": self.top} if form == "heatmap" else {}
        log.lay_out(window, Order.GRADIENTS, title=window, xlabel="step", ylabel=ylabel, ytype="log",
                    steps_of="total", **heatmap)  # the legend counts the steps lost (skipped by a GradScaler)
        log.vector(window, x, traces, values)

    def _say_if_mixed(self, name: str | None) -> None:
        """Once: a run of several optimizers whose passes are named but one (a GAN's D pass left
        plain), whose window pools every optimizer's gradients, those left from the others' passes."""
        self._pass_kinds.add(name is None)
        if len(self._pass_kinds) == 2:
            _log.warning("monitor: after_backward() names no optimizer in a run whose other passes name theirs: "
                         "its window 'grad norm' takes the gradients of every optimizer, those left from the "
                         "others' passes too; name the one stepping next, after_backward('D') or "
                         "after_backward(opt_d)")

    def _pass(self, state: LoopState, name: str) -> tuple[int, ...]:
        """The indices in ``_params`` of the parameters optimizer ``name`` updates, found again
        when it gains a group (``add_param_group``: a discriminator's body unfrozen)."""
        groups = state.optimizers[name].param_groups
        known = self._passes.get(name)
        if known is None or known[0] != len(groups):
            index = {id(p): i for i, p in enumerate(self._params)}
            if any(id(p) not in index for group in groups for p in group["params"]):
                self._stale = True  # a group added may hold parameters outside the model
                self._parameters(state)
                index = {id(p): i for i, p in enumerate(self._params)}
            found = {index[id(p)] for group in groups for p in group["params"] if id(p) in index}
            known = self._passes[name] = (len(groups), tuple(sorted(found)))
        return known[1]

    def _updated(self, state: LoopState) -> tuple[int, ...]:
        """The indices in ``_params`` of the parameters the optimizers update: every one (``_all``),
        the usual case; not a frozen teacher's, nor an EMA copy's, whose gradients are left from
        before (found again when a group is added); every one where no optimizer holds any."""
        optimizer = state.optimizer
        key = len(optimizer.param_groups) if optimizer is not None else \
            sum(len(o.param_groups) for o in state.optimizers.values())
        if key != self._updated_key:
            found = tuple(sorted({i for name in state.optimizers for i in self._pass(state, name)}))
            self._updated_key = key
            self._updated_indices = self._all if len(found) in (0, len(self._all)) else found
        return self._updated_indices

    def _parameters(self, state: LoopState) -> list[torch.nn.Parameter]:
        """The model's parameters; the layer grouping is rebuilt when they change."""
        if state.model is None:
            raise ValueError("GradNorms needs the model: pass it to monitor.train_start(model, optimizer), "
                             "got model=None")
        if state.model is not self._wrapped or self._stale:
            self._stale = False
            self._wrapped, model = state.model, unwrap_model(state.model)
            current = list(model.parameters())
            outside = _outside(current, state.optimizers)
            current += [p for _, params in outside for p in params]
            if model is not self._model or len(current) != len(self._params) or \
                    any(a is not b for a, b in zip(current, self._params)):
                self._build(model, outside)
            self._masks = pruning_masks(model)  # pruned (weight_orig, same tensor, maybe same place) or not
        return self._params

    def _build(self, model: torch.nn.Module, outside: list[tuple[str, list[torch.nn.Parameter]]] = ()) -> None:
        self._model, self._params, self._layer_of, self._layers = model, [], [], []
        self._groupings.clear()
        self._all_grouping = None
        self._passes.clear()
        self._updated_key = None
        self._before = None
        seen: dict[int, str] = {}  # each parameter's trace
        layers: dict[str, list[torch.nn.Parameter]] = {}  # by trace: the module that uses them, or the model's own
        tied: dict[str, list[str]] = {}  # the other modules that use a trace's parameters (an output layer)
        for name, module in model.named_modules():
            layer = module  # the module a trace is named after
            if isinstance(module, parametrize.ParametrizationList):  # at NAME.parametrizations.weight: its module's
                name = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
                layer = model.get_submodule(name)
            elif not uncompiled(name) and any(n != "parametrizations" for n, _ in module.named_children()):
                # A model's own parameters beside its layers (a position embedding): one trace each
                for key, p in module.named_parameters(recurse=False):
                    if id(p) not in seen:
                        seen[id(p)] = key
                        layers[key] = [p]
                continue
            module_trace = _trace_name(uncompiled(name), layer)
            recurrent = isinstance(module, torch.nn.RNNBase)  # its layers' input and hidden weights apart
            own = list(module.named_parameters(recurse=False))
            # A module whose weight another one owns (tied) names what is its own: `fc3 bias`, not `fc3`
            shares = any(id(p) in seen for _, p in own)
            for key, p in own:
                trace = f"{module_trace} {key.split('_', 1)[1]}" if recurrent and "_" in key else \
                    f"{module_trace} {key}" if shares and id(p) not in seen else module_trace
                if id(p) not in seen:
                    seen[id(p)] = trace
                    layers.setdefault(trace, []).append(p)
                elif seen[id(p)] != trace and trace not in tied.setdefault(seen[id(p)], []):
                    tied[seen[id(p)]].append(trace)
        for trace, owned in outside:  # an optimizer's parameters the model does not hold: by their group's name
            layers[trace if trace not in layers else f"{trace} (optimizer)"] = owned
        for trace, owned in layers.items():
            self._params.extend(owned)
            self._layer_of.extend([len(self._layers)] * len(owned))
            also = tied.get(trace)
            self._layers.append(f"{trace} (also {', '.join(also)})" if also else trace)
        self._all = tuple(range(len(self._params)))

    def _grouping(self, present: tuple[int, ...]) -> _Grouping:
        """Trace names, for each layer present the positions of its parameters in ``present``,
        and the positions whose norms a CPU takes in stacks (``monitor.norms.stacks_of``).

        Cached per set of parameters present; every parameter, the usual case, without hashing
        the tuple of their indices.
        """
        if present is self._all and self._all_grouping is not None:
            return self._all_grouping
        grouping = self._groupings.get(present)
        if grouping is None:  # a set not seen before
            layers: dict[int, list[int]] = {}
            for position, i in enumerate(present):
                layers.setdefault(self._layer_of[i], []).append(position)
            order = sorted(layers)
            if len(self._groupings) >= 16:
                self._groupings.clear()
            grouping = self._groupings[present] = (tuple([self._layers[layer] for layer in order] + ["total"]),
                                                   LayerSums(tuple(tuple(layers[layer]) for layer in order)),
                                                   stacks_of([self._params[i] for i in present]))
        if present is self._all:
            self._all_grouping = grouping
        return grouping


_Grouping = tuple[tuple[str, ...], "LayerSums", "Stacks | None"]


def _outside(held: list[torch.nn.Parameter], optimizers: dict[str, torch.optim.Optimizer]
             ) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """The parameters the optimizers update that the model does not hold (a learned loss weight,
    a meta-learned inner rate), by group: the group's ``name``, else ``group N``, after the
    optimizer's name where there are several (``D/group 1``). None where the optimizers update
    none of the model's (copies trained through ``functional_call``: not the model's gradients)."""
    seen = {id(p) for p in held}
    if not any(id(p) in seen for optimizer in optimizers.values() for group in optimizer.param_groups
               for p in group["params"]):
        return []
    found = []
    for optimizer_name, optimizer in optimizers.items():
        for i, group in enumerate(optimizer.param_groups):
            params = [p for p in group["params"] if id(p) not in seen]
            if params:
                seen.update(id(p) for p in params)
                name = group.get("name")
                name = name if isinstance(name, str) and name else f"group {i}"
                found.append((f"{optimizer_name}/{name}" if len(optimizers) > 1 else name, params))
    return found


def _update_ratios(updates: Norms, before: Norms, layer_sums: LayerSums,
                   traces: tuple[str, ...]) -> dict[str, float]:
    """||update|| / ||weights before it||, per layer and in total; a gap (NaN) for a layer whose
    weights were all 0 (LoRA's B at its start), where it means nothing: its trace keeps its place
    among the layers, in the model's order as in ``grad norm``."""
    values = read(updates + before)  # one read of the device for both
    ratios = zip(traces, layer_sums(values[:len(updates)]), layer_sums(values[len(updates):]))
    return {trace: u / w if w else math.nan for trace, u, w in ratios}


def _trace_name(name: str, module: torch.nn.Module) -> str:
    # A lazy module is named as what it becomes (LazyLinear: Linear), so a run resumed with the
    # module initialized continues the same curves; a parametrized one as what it was (torch's
    # ParametrizedLinear: Linear).
    cls = getattr(module, "cls_to_become", None) or type(module)
    kind = (cls.__bases__[0] if parametrize.is_parametrized(module) else cls).__name__
    if not name:
        return kind
    if name.rsplit(".", 1)[-1].isdigit() or name == "total":
        return f"{name}.{kind}"
    return name
