"""Summary: what was trained, with what, on what: one text pane written at train start, and
again at an epoch's end where what trains changed (a backbone unfrozen, a parameter group added)."""
from __future__ import annotations

import inspect
import math
import platform
from html import escape
from typing import Any, Mapping

import torch
from torch.nn.parameter import is_lazy

from monitor import checks
from monitor.checks import is_scalar
from monitor.distributed import rank_and_world_size
from monitor.callbacks.learning_rate import trace_names
from monitor.models import compiled_parts, pruning_masks, unwrap_model
from monitor.core import Callback, LoopState, Monitor
from monitor.log import Log
from monitor.records import Order, ending_of
from monitor.windows import TABLE

WINDOW = "summary"


class Summary(Callback):
    """Writes the model's structure, parameter counts, hyper-parameters and torch/device facts.

        monitor = Monitor([Summary(hparams={"batch_size": 64})], env="mnist")
        monitor.train_start(model, optimizer, hparams={"lr": 0.1})
        # pane "summary": the model, 1,199,882 parameters (all trainable), batch_size and lr, ...

    The pane is written again at an epoch's end where what trains changed since: a backbone's
    layers unfrozen (the trainable count), a parameter group added (the optimizer's groups), the
    model's modules swapped (``prepare_qat``) or pruned again (``torch.nn.utils.prune``: the
    weights masked, counted).
    ``hparams`` given here are merged with those given to ``train_start``, which win on a clash.
    They are the run's record for comparing runs from ``train_start`` on (pane ``hparams`` and
    the run log's ``hparams`` entry, so a killed run keeps them); ``train_end`` records them
    again with the latest value of each metric the loop passed to ``validation_end`` or
    ``epoch_end``. Everything the user supplied (the model's repr, names, values) is HTML-escaped.
    """

    records_hparams = True

    def __init__(self, hparams: Mapping[str, Any] | None = None) -> None:
        self.hparams = {} if hparams is None else checks.hparams("hparams", hparams)
        self._metrics: dict[str, Any] = {}  # the latest number of each metric validation_end or epoch_end passed
        self._shown: tuple | None = None  # what the pane says trains: trainable count, each optimizer's groups
        self._recorded: dict[str, Any] | None = None  # the hparams recorded by this run's train_start
        self._validated: set[str] = set()  # the metrics validation_end gave: an epoch's mean does not replace them

    def on_attach(self, monitor: Monitor) -> None:
        self._recorded = None

    def on_train_start(self, state: LoopState, log: Log) -> None:
        self._metrics, self._validated = {}, set()
        log.window(WINDOW, order=Order.SUMMARY, title=WINDOW)
        hparams = {**self.hparams, **state.hparams}
        self._write(state, log)
        if hparams and hparams != self._recorded:  # the run's record from the start: a run killed before
            self._recorded = hparams               # train_end still has its hparams (once, not at every
            log.hparams(hparams, {}, state.step)   # train_start of one run: an optimizer switched)

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        if state.main_validation:  # not a second model's after it (an EMA copy's): the run's are the first's
            self._note_metrics(state, log)
            self._validated.update(state.metrics)

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        # An epoch_end() without metrics leaves them as they were; one with a training epoch's mean
        # of a name the validation gave (a Lightning loop's loss, on_epoch=True) does not replace it.
        self._note_metrics(state, log, skip=self._validated)
        if _trained(state) != self._shown:  # layers unfrozen, groups added in the epoch
            self._write(state, log)

    def _note_metrics(self, state: LoopState, log: Log, skip: set[str] = frozenset()) -> None:
        latest = {name: value for name, value in state.metrics.items() if is_scalar(value) and name not in skip}
        self._metrics.update(latest)
        given = log.final_metrics.get("hparams", {})
        for name in latest.keys() & given.keys():  # given to log.hparams before this: the latest counts
            del given[name]

    def on_exception(self, state: LoopState, log: Log, error: BaseException) -> None:
        """The pane says how the run ended, above the rest: a crashed or pruned trial's curves
        only stop, as a run still training's do."""
        ending = ending_of(error)
        if ending.status != "finished" and state.model is not None:
            said = f"{ending.status} at step {state.step}" + (f": {ending.error}" if ending.error else "")
            self._write(state, log, f'<p style="color:#d62728"><b>{escape(said[:300])}</b></p>')

    def _write(self, state: LoopState, log: Log, head: str = "") -> None:
        model = unwrap_model(state.model) if state.model is not None else None  # the model, not its DDP wrapper
        self._shown = _trained(state)
        compiled = compiled_parts(state.model) if state.model is not None else None
        log.text(WINDOW, state.step, head + _summary_html(model, state.optimizers, {**self.hparams, **state.hparams},
                                                          state.scaler, compiled), html=True)

    def on_train_end(self, state: LoopState, log: Log) -> None:
        hparams = {**self.hparams, **state.hparams}
        # The last validation's, and a test's given to log.hparams since (on_validation_end drops one given
        # before). A test after train_end adds to them for a second train_end.
        metrics = {**self._metrics, **log.final_metrics.get("hparams", {})}
        if hparams:  # a run given no hyper-parameters gets no pane of them
            log.hparams(hparams, metrics, state.step)


def _trained(state: LoopState) -> tuple:
    """What trains: the model's trainable parameter count, each optimizer's number of groups, the
    model's modules (swapped by prepare_qat) and pruning masks (a new one each time it prunes)."""
    if state.model is None:
        return 0, tuple(len(o.param_groups) for o in state.optimizers.values())
    model = unwrap_model(state.model)
    masks = tuple(id(getattr(*place)) for place in pruning_masks(model).values())
    return (_trainable(list(model.parameters()), state.optimizers),
            tuple(len(o.param_groups) for o in state.optimizers.values()), sum(1 for _ in model.modules()), masks)


def _trainable(params: list[torch.nn.Parameter], optimizers: Mapping[str, torch.optim.Optimizer]) -> int:
    """The elements of the parameters that train: those with ``requires_grad`` that an optimizer
    holds, where the loop gave any (an EMA copy inside the model has ``requires_grad`` too)."""
    held = {id(p) for o in optimizers.values() for group in o.param_groups for p in group["params"]}
    return sum(p.numel() for p in params if p.requires_grad and not is_lazy(p) and (not held or id(p) in held))


def _summary_html(model: torch.nn.Module | None, optimizers: Mapping[str, torch.optim.Optimizer],
                 hparams: Mapping[str, Any], scaler: Any = None, compiled: Mapping[str, str] | None = None) -> str:
    """The pane's HTML: facts as a table, the model's repr in ``<pre>``."""
    facts: list[tuple[str, Any]] = []
    if model is not None:
        params = list(model.parameters())
        lazy = sum(1 for p in params if is_lazy(p))  # nn.LazyLinear's, until the first forward pass
        total = sum(p.numel() for p in params if not is_lazy(p))
        trainable = _trainable(params, optimizers)
        facts.append(("model", type(model).__name__))
        facts.append(("parameters", f"{total:,} ({trainable:,} trainable)"
                      + (f", and {lazy} lazy tensors not yet initialized" if lazy else "")))
        masks = [getattr(*place) for place in pruning_masks(model).values()]
        if masks:  # read at the pane's writing only (train_start, an epoch's end that pruned)
            masked, count = sum(int((mask == 0).sum()) for mask in masks), sum(mask.numel() for mask in masks)
            facts.append(("pruned", f"{masked:,} of {count:,} weights masked ({100 * masked / count:.1f}%; "
                                    f"torch.nn.utils.prune, {len(masks)} tensors)"))
        if compiled:  # torch.compile's wrapper is not in the model's repr when it holds the whole model
            facts.append(("compiled", ", ".join(f"{path or 'the whole model'} ({backend})"
                                                for path, backend in compiled.items())))
        devices = sorted({str(p.device) for p in params})
        facts.append(("devices", ", ".join(devices) or "none (no parameters)"))
        facts.append(("dtypes", ", ".join(sorted({str(p.dtype).replace("torch.", "") for p in params}))))
        for device in sorted({p.device for p in params if p.device.type == "cuda"}, key=str):
            facts.append((str(device), torch.cuda.get_device_name(device)))
    if len(optimizers) == 1:
        facts.append(("optimizer", _described(next(iter(optimizers.values())))))
    elif optimizers:
        facts.append(("optimizers", ", ".join(f"{name}: {_described(o, sized=True)}"
                                              for name, o in optimizers.items())))
    if scaler is not None and scaler.is_enabled():  # what tells an fp16 run from its float32 twin
        facts.append(("mixed precision", _scaling(scaler)))
    _, world_size = rank_and_world_size()
    if world_size > 1:  # a DDP job: its size and backend, the first things its runs are told apart by
        facts.append(("distributed", f"{world_size} processes ({torch.distributed.get_backend()})"))
    facts.append(("torch", torch.__version__))
    facts.append(("python", platform.python_version()))
    parts = ["<h4>Run</h4>", _table(facts)]
    if hparams:
        parts += ["<h4>Hyper-parameters</h4>", _table(sorted(hparams.items(), key=lambda kv: str(kv[0])))]
    if model is not None:
        parts += ["<h4>Model</h4>", f"<pre>{escape(repr(model))}</pre>"]
    return "\n".join(parts)


def _scaling(scaler: Any) -> str:
    """A GradScaler's settings, as its constructor takes them: ``GradScaler (init_scale 65536,
    x2 every 2000 steps without inf, x0.5 at one)``."""
    init = getattr(scaler, "_init_scale", None)
    if isinstance(init, float) and init.is_integer():
        init = int(init)  # 2.0**40 exactly, as a power of two reads
    return (f"GradScaler ({f'init_scale {init}, ' if isinstance(init, (int, float)) else ''}"
            f"x{scaler.get_growth_factor():g} every {scaler.get_growth_interval()} steps without inf, "
            f"x{scaler.get_backoff_factor():g} at one)")


def _described(optimizer: torch.optim.Optimizer, sized: bool = False) -> str:
    """``AdamW (lr 0.001)``, or each group by the name of its learning-rate curve:
    ``AdamW (2 parameter groups: lora: 2,048 parameters, lr 0.001; head: 130, lr 0.0001, weight_decay 0.01)``
    (``sized``: one group's size too, beside other optimizers); the lr a scheduler started from,
    ``base lr`` where the rate is elsewhere now (a warm-up's first is less); a group's weight decay of 0 where
    another's is not (a no-decay group), momentum and betas where not the class's defaults (a GAN's
    Adam, betas (0.5, 0.999))."""
    groups = optimizer.param_groups
    decays = {group.get("weight_decay") for group in groups}
    defaults = _signature_defaults(type(optimizer))

    def settings(group: Mapping[str, Any]) -> str:
        lr = group.get("initial_lr", group.get("lr"))
        if isinstance(lr, torch.Tensor) and lr.is_cpu and lr.numel() == 1:  # a tensor lr, read as its float32 is
            lr = lr.item()  # (0.05, not 0.05000000074505806); a device's is shown as it is, not read
        decay, peak = group.get("weight_decay"), group.get("max_lr")  # OneCycleLR's: from lr up to max_lr
        now = group.get("lr")  # a scheduler's base where it is not the rate now (a warm-up's start is less)
        base = "base " if "initial_lr" in group and isinstance(now, (int, float)) and isinstance(lr, (int, float)) \
            and not math.isclose(now, lr, rel_tol=1e-6) else ""
        shown = f"{base}lr {lr:g}" if isinstance(lr, (int, float)) else f"lr {lr}"
        if isinstance(peak, (int, float)) and isinstance(lr, (int, float)) and peak != lr:
            shown += f" up to {peak:g}"
        if isinstance(decay, (int, float)) and (decay or len(decays) > 1):
            shown += f", weight_decay {decay:g}"
        for key in ("momentum", "betas") if "max_momentum" not in group else ():  # not a cycling schedule's
            value = group.get(key)
            if value is not None and key in defaults and _plain(value) != _plain(defaults[key]):
                shown += f", {key} {_plain(value)}"
        return shown

    if len(groups) == 1:  # sized: beside other optimizers, what each holds
        size = f"{sum(p.numel() for p in groups[0]['params'] if not is_lazy(p)):,} parameters, " if sized else ""
        return f"{type(optimizer).__name__} ({size}{settings(groups[0])})"
    parts = [f"{name}: {sum(p.numel() for p in group['params'] if not is_lazy(p)):,}"
             f"{' parameters' if i == 0 else ''}, {settings(group)}"
             for i, (name, group) in enumerate(zip(trace_names(groups), groups))]
    return f"{type(optimizer).__name__} ({len(groups)} parameter groups: {'; '.join(parts)})"


def _signature_defaults(kind: type) -> dict[str, Any]:
    try:
        parameters = inspect.signature(kind.__init__).parameters.values()
    except (TypeError, ValueError):  # a C extension's optimizer
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _plain(value: Any) -> Any:
    """A setting as it reads: a tuple of floats (betas), a float; a tensor's as its numbers."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(float(v) if isinstance(v, (int, float)) else v for v in value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _table(rows: list[tuple[Any, Any]]) -> str:
    cells = "".join(f"<tr><td><b>{escape(str(k))}</b></td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"{TABLE}{cells}</table>"

