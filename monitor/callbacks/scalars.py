"""Scalars: the loss and the loop's metrics as curves, train and validation in one window."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import torch

from monitor.callbacks._every import is_due
from monitor.checks import boolean, one_of, positive_int, scalar, smoothing_weight
from monitor.core import Callback, LoopState, Monitor
from monitor.distributed import mean_across_ranks
from monitor.log import Log
from monitor.records import Order

_log = logging.getLogger("monitor")


class Scalars(Callback):
    """Plots the loss and every metric the loop passes; one window per name.

        monitor = Monitor([Scalars()], env="mnist")
        monitor.step_end(loss=loss, metrics={"accuracy": acc})    # window "accuracy", trace "train"
        monitor.validation_end({"accuracy": val_acc})              # same window, trace "validation"

    ``x="step"`` plots every ``every``-th step (1, 1 + every, ...) at its step number.
    Each curve is drawn smoothed as TensorBoard's scalars view smooths it (``smoothing``, the
    weight of the past in a moving average: 0.6 as there, 0 for none), the values themselves
    faint behind it; the run log and every reading of the window keep the values as logged.
    ``x="epoch"`` plots the mean of the epoch's steps (every ``every``-th one) at its epoch_end,
    at x = the number of epochs done (1 after the first epoch, as TensorBoard and Keras users
    read it); a validation is plotted at the number of epochs done when it ran, counting the
    current epoch once it had a step (so a check before training sits at 0). Metrics passed to
    ``epoch_end`` are plotted at the epoch's last step in trace ``epoch`` (``x="step"``), or
    replace that epoch's mean in trace ``train`` (``x="epoch"``).

    Values are numbers or one-element tensors (or numpy arrays); a tensor on an accelerator is summed and copied
    on its device, never read here. NaN and Inf are passed on: the sink shows them as gaps and
    counts them. A value of another type (a string, a list, a tensor of several elements)
    raises, naming the metric, once the call's other names are written; the Monitor reports it.

    Under torch.distributed each rank sees its own batches; ``average=("loss", "accuracy")``
    (or ``True`` for every name) plots those names' mean over the ranks instead of rank 0's
    value. It costs one ``all_reduce`` per logged step, for all the names together (and one per
    ``epoch_end`` with metrics), none in a single process or without ``average``; every rank
    must then pass the same names::

        monitor = Monitor([Scalars(average=("loss", "accuracy"))], env="ddp")   # on every rank

    ``validation_end`` takes part in no collective: a validation run on rank 0 alone (``if rank
    == 0:``) logs rank 0's values. ``average_validation=True`` averages the names of
    ``average`` there too, for a validation that every rank runs on its own share: it must then
    be called on every rank.
    """

    def __init__(self, every: int = 1, x: str = "step", average: bool | Iterable[str] = False,
                 average_validation: bool = False, smoothing: float = 0.6) -> None:
        self.every = positive_int("every", every)
        self.smoothing = smoothing_weight("smoothing", smoothing)
        self.x = one_of("x", x, ("step", "epoch"))
        self.average = _names_to_average(average)
        self.average_validation = boolean("average_validation", average_validation)
        if self.average_validation and self.average is False:
            raise ValueError("average_validation=True averages the names of average: give them, e.g. "
                             "Scalars(average=True, average_validation=True), got average=False")
        self._world_size = 1
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._told_loss_twice = False
        self._validated: tuple | None = None  # the latest validation's step, trace and metrics (of that step)
        self._told_twice = False

    def state_dict(self) -> dict[str, Any]:
        """The running sums of a checkpoint taken mid-epoch (``x="epoch"``), as plain floats."""
        return {"sums": {name: float(total) for name, total in self._sums.items()}, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])

    def on_attach(self, monitor: Monitor) -> None:
        self._world_size = monitor.world_size
        self._sums.clear()  # given to another Monitor (a list of callbacks reused for each fold): its own epochs
        self._counts.clear()

    def on_step_end(self, state: LoopState, log: Log) -> None:
        if self.every != 1 and not is_due(state.step, self.every):
            return
        if not state.metrics and self.x == "step" and (self._world_size == 1 or self.average is False):
            # The usual step: the loss alone, kept cheap
            if state.loss is not None:
                self._write_one(log, state.step, "train", "loss", state.loss)
            return
        values = state.metrics if state.loss is None else {**state.metrics, "loss": state.loss}
        if state.loss is not None and "loss" in state.metrics:  # the metric would vanish under loss=
            values = {**values, "loss (metrics)": state.metrics["loss"]}
            self._said_loss_twice(state.step)
        values = self._averaged(values)  # per step, so a checkpoint's running sums are every rank's
        if self.x == "step":
            self._write(log, state.step, "train", values)
            return
        failures = []
        for name, value in values.items():
            try:
                self._sums[name] = _add(self._sums.get(name), value, name)
            except (TypeError, ValueError) as error:
                failures.append((name, error))
                continue
            self._counts[name] = self._counts.get(name, 0) + 1
        _raise_together(failures)

    def _said_loss_twice(self, step: int) -> None:
        if not self._told_loss_twice:
            self._told_loss_twice = True
            _log.warning("monitor: step_end was given a loss twice at step %d, as loss= and as metrics['loss']: the "
                         "metric is logged as 'loss (metrics)'; name it apart, e.g. metrics={'loss_sum': ...}", step)

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        metrics = self._averaged(state.metrics)
        if self.x == "step":
            self._write(log, state.step, "epoch", metrics)
            return
        means = {name: total / self._counts[name] for name, total in self._sums.items()}
        means.update(metrics)
        self._sums.clear()
        self._counts.clear()
        self._write(log, state.epoch + 1, "train", means)

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        if self.x == "step":
            x = state.step if state.validated_step is None else state.validated_step
        else:
            x = state.epoch + 1 if state.batch else state.epoch
        values = self._averaged(state.metrics, "averaging a validation's metrics (Scalars(average_validation=True): "
                                               "a validation run on rank 0 alone wants average_validation=False)") \
            if self.average_validation else state.metrics
        seen = self._validated
        same_step = seen is not None and seen[:2] == (state.step, state.validation)
        if same_step and not self._told_twice and seen[2].keys() & values.keys():
            self._told_twice = True
            again = sorted(seen[2].keys() & values.keys())
            if all(_number(seen[2][name]) is not None and _number(seen[2][name]) == _number(values[name])
                   for name in again):  # the same values: one validation run twice
                cure = ("the same values: one data set validated twice (every N steps and at the epoch's end, "
                        "when they fall on one step?): skip one, e.g. at the epoch's last batch, "
                        "monitor.state.batch_index + 1 == len(loader)")
            else:
                cure = ("the second data set's (a test set's) goes in a trace of its own, validation_end(metrics, "
                        "trace='test'), or its points zigzag with the first's")
            _log.warning("monitor: validation_end gave %s again at step %d, in trace %r: %s",
                         ", ".join(map(repr, again)), state.step, state.validation, cure)
        self._validated = (state.step, state.validation, {**(seen[2] if same_step else {}), **values})
        self._write(log, x, state.validation, values)

    def _averaged(self, values: Mapping[str, Any], waiting_at: str | None = None) -> Mapping[str, Any]:
        """``values`` (not copied), or a copy with those named in ``average`` averaged over the ranks
        (``waiting_at``: where a rank waiting 30 s for the others says it waits)."""
        if self._world_size == 1 or self.average is False:
            return values
        chosen = {name: value for name, value in values.items() if self.average is True or name in self.average}
        return {**values, **mean_across_ranks(chosen, waiting_at)} if chosen else values

    def _write(self, log: Log, x: float, trace: str, values: Mapping[str, Any]) -> None:
        """One point per name; the bad values are raised together after the good ones are written."""
        failures = []
        for name, value in values.items():
            try:
                self._write_one(log, x, trace, name, value)
            except (TypeError, ValueError) as error:
                failures.append((name, error))
        _raise_together(failures, logged=len(values) - len(failures))

    def _write_one(self, log: Log, x: float, trace: str, name: str, value: Any) -> None:
        """One point of metric ``name`` in its window (laid out the first time), naming it in errors."""
        try:
            if name not in log.laid_out:  # laid out once: the training thread's path stays short
                # Only the steps' curve is smoothed: a validation's or an epoch's point is a mean already,
                # and smoothed over a few of them it lags behind (the minimum early stopping looks for).
                smoothed = {"smoothing": self.smoothing, "smoothed": ["train"]} \
                    if self.smoothing and self.x == "step" else {}
                log.lay_out(name, Order.LOSS if name == "loss" else Order.METRICS, title=name, xlabel=self.x,
                            ylabel=name, **smoothed)
            log.scalar(name, trace, x, value)
        except (TypeError, ValueError) as error:
            parts = ""
            if name == "loss" and isinstance(value, Mapping):  # a loss in parts (cross-entropy and Dice)
                parts = (": pass their total as loss= and the parts as traces of the loss window, "
                         "monitor.log.scalars('loss', step, {...})")
            elif isinstance(value, Mapping):  # COCO's AP by object size
                parts = (f": one number a metric; a dict of them goes in flattened, {{f'{name}/{{k}}': v for k, v in "
                         f"{name}.items()}}, or as traces of one window, monitor.log.scalars({name!r}, step, {name})")
            elif name == "loss" and isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() > 1:
                parts = ": pass its mean, .mean() (a value for each sample, as reduction='none' gives)"
            elif hasattr(value, "__len__") and not isinstance(value, (str, Mapping)):
                parts = (f": one number a metric; several (one a target) each go in under a name of their own, "
                         f"{{f'{name}/{{i}}': v for i, v in enumerate(values)}}")
            raise type(error)(f"metric {name!r}: {error}{parts}") from None


def _raise_together(failures: list[tuple[str, Exception]], logged: int = 0) -> None:
    """One error naming every bad metric of a call, and that the ``logged`` others were; the
    Monitor reports it once for these names (``about``), so a metric that goes bad later is reported too."""
    if failures:
        others = "" if not logged else " (not logged; the call's other metric was)" if logged == 1 else \
            f" (not logged; the call's {logged} other metrics were)"
        error = type(failures[0][1])("; ".join(str(error) for _, error in failures) + others)
        error.about = tuple(sorted({name for name, _ in failures}))
        raise error


def _names_to_average(average: Any) -> bool | frozenset[str]:
    if isinstance(average, bool):
        return average
    names = list(average) if isinstance(average, Iterable) and not isinstance(average, (str, bytes)) else None
    if names is None or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"average must be True, False or metric names such as (\"loss\", \"accuracy\"), "
                        f"got {average!r}")
    return frozenset(names)


def _add(total: Any, value: Any, name: str) -> Any:
    """``total + value`` without reading the device: tensors stay tensors, numbers floats."""
    value = scalar(f"metric {name!r}", value)  # a numpy array's number: float() refuses a 1-d one
    if not isinstance(value, torch.Tensor):
        value = float(value)
    elif value.device.type == "cpu":
        value = float(value.item())
    else:
        value = value.detach().reshape(()).to(torch.float32, copy=True)
    if total is None:
        return value
    if isinstance(total, torch.Tensor) and isinstance(value, torch.Tensor) and total.device != value.device:
        value = value.to(total.device)
    return total + value


def _number(value: Any) -> float | None:
    """A metric's number where reading it costs nothing (a float, a CPU tensor's); else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.numel() == 1:
        return float(value.item())
    return None
