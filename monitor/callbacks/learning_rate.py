"""LearningRate: what the optimizer's schedule actually did, one trace per parameter group."""
from __future__ import annotations

import logging
import weakref
from functools import partial
from typing import Any, Sequence

import torch

from monitor.callbacks._every import is_due
from monitor.checks import positive_int
from monitor.core import Callback, LoopState
from monitor.log import Log
from monitor.records import Order

WINDOW = "learning rate"
_log = logging.getLogger("monitor")


class LearningRate(Callback):
    """Plots the ``lr`` each step used, per parameter group, in window ``learning rate``.

        monitor = Monitor([LearningRate()], env="mnist")
        monitor.train_start(model, optimizer)            # the optimizer is required
        loss.backward(); monitor.after_backward(); optimizer.step(); scheduler.step(); monitor.step_end()

    The rate is read at ``after_backward``, before ``optimizer.step()`` uses it, so a scheduler
    stepped before ``step_end`` does not shift the curve by one step; a loop that does not call
    ``after_backward`` gets the rate at ``step_end``. A group's trace is its own ``name`` entry
    where the loop set one (``{"params": ..., "name": "backbone"}``; two named alike are told apart by
    number, ``decay (group 0)``); otherwise one group gives
    trace ``lr`` and several ``group 0``, ``group 1``, ...; with several optimizers each trace starts with the
    optimizer's name (``G``, ``D/backbone``). One point a step, however many times the loop
    calls ``after_backward`` in it. With several optimizers, each one's rates are those its
    ``step()`` used, at the steps it stepped (a WGAN's generator every fifth step, an LBFGS after
    an Adam's phase; a step in which none stepped shows them all, as they are at ``step_end``).
    A tensor ``lr`` (capturable optimizers) is copied on its device, not read here.
    """

    def __init__(self, every: int = 1) -> None:
        self.every = positive_int("every", every)
        self._logged_step: int | None = None
        self._names: list[str] = []  # the groups' traces as last named
        self._kept: list[str] = []  # ... before they are named again at an epoch's start
        self._each: dict[str, list[str]] = {}  # with several optimizers, each one's traces
        self._kept_each: dict[str, list[str]] = {}
        self._resumed: dict[str, Any] | None = None  # a checkpoint's traces, named again at train_start
        self._used: dict[str, list[Any]] = {}  # several optimizers: the rates each step() used in the step
        self._hooks: list[Any] = []
        self._told_unset = False  # that a group without an lr is left out

    def state_dict(self) -> dict[str, Any]:
        """The groups' traces, so that a resumed run's groups keep theirs (``lr`` beside a group
        added mid-run is not renamed ``group 0``)."""
        return {"names": list(self._names or self._kept),
                "each": {name: list(traces) for name, traces in (self._each or self._kept_each).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed = state

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        if self._logged_step != state.step and not self._hooks:  # several passes or micro-batches: the first
            self._write(state, log)

    def on_step_end(self, state: LoopState, log: Log) -> None:
        if self._logged_step != state.step:
            self._write(state, log)

    def on_train_start(self, state: LoopState, log: Log) -> None:
        # Maybe another optimizer: name its groups again. (The step logged stays: a notebook's training
        # cell run again after the stop button came in the middle of a step, which goes on there.)
        self._names, self._each = [], {}
        resumed, self._resumed = self._resumed or {}, None
        self._kept, self._kept_each = list(resumed.get("names", [])), dict(resumed.get("each", {}))
        self._unhook()
        if state.optimizer is None and len(state.optimizers) > 1:
            me = weakref.ref(self)
            self._hooks = [optimizer.register_step_pre_hook(partial(_note_rates, me, name))
                           for name, optimizer in state.optimizers.items()
                           if callable(getattr(optimizer, "register_step_pre_hook", None))]

    def on_train_end(self, state: LoopState, log: Log) -> None:
        self._unhook()

    def _unhook(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._used = [], {}

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        # A group may have been renamed: name them again (an epoch a resumed run begins with has
        # named none yet, and keeps the checkpoint's names).
        self._names, self._kept = [], self._names or self._kept
        self._each, self._kept_each = {}, self._each or self._kept_each

    def _write(self, state: LoopState, log: Log) -> None:
        if self.every != 1 and not is_due(state.step, self.every):
            return
        self._logged_step = state.step  # tried once a step: without an optimizer, one report, not one a hook
        if state.optimizer is None and not state.optimizers:
            raise ValueError("LearningRate needs the optimizer: pass it to "
                             "monitor.train_start(model, optimizer), got optimizer=None")
        if WINDOW not in log.laid_out:
            log.lay_out(WINDOW, Order.LEARNING_RATE, title=WINDOW, xlabel="step", ylabel="learning rate")
        if state.optimizer is not None:
            groups = state.optimizer.param_groups
            if len(groups) != len(self._names):  # first step, train_start, epoch_start, add_param_group()
                self._names = trace_names(groups, self._names or self._kept)
            if len(groups) == 1 and type(groups[0].get("lr")) is float:  # the usual case, kept cheap
                log.scalar(WINDOW, self._names[0], state.step, groups[0]["lr"])
                return
        else:
            groups = [g for optimizer in state.optimizers.values() for g in optimizer.param_groups]
            if len(groups) != len(self._names):
                before = self._each or self._kept_each
                self._each = {name: _optimizer_traces(name, optimizer.param_groups, before.get(name, ()))
                              for name, optimizer in state.optimizers.items()}
                self._names = [trace for traces in self._each.values() for trace in traces]
            if self._used:  # the optimizers that stepped, at the rates they stepped with
                used, self._used = self._used, {}
                self._scalars(log, state.step, {trace: lr for name, lrs in used.items()
                                                for trace, lr in zip(self._each[name], lrs)})
                return
        self._scalars(log, state.step, {name: group.get("lr") for name, group in zip(self._names, groups)})

    def _scalars(self, log: Log, step: int, rates: dict[str, Any]) -> None:
        """The rates drawn, those of groups without one (no 'lr', or None) left out, said once."""
        if None in rates.values():
            unset = [name for name, rate in rates.items() if rate is None]
            rates = {name: rate for name, rate in rates.items() if rate is not None}
            if not self._told_unset:
                self._told_unset = True
                _log.warning("monitor: LearningRate leaves out %s: no learning rate in its group ('lr' missing or "
                             "None: an optimizer that sets its own step size, as Prodigy's d); draw the step it "
                             "takes with monitor.log.scalar(%r, name, step, group['d'] * group['lr']) or the "
                             "like", ", ".join(map(repr, unset)), WINDOW)
        if rates:
            log.scalars(WINDOW, step, rates)


def _note_rates(me: weakref.ref, name: str, optimizer: Any, *_: Any) -> None:
    """A step pre-hook of one of several optimizers: the rates its step is about to use."""
    owner = me()
    if owner is not None:
        owner._used[name] = [lr.detach().clone() if isinstance(lr, torch.Tensor) else lr  # a scheduler may
                             for lr in (group.get("lr") for group in optimizer.param_groups)]  # change it in place


def trace_names(groups: Sequence[dict[str, Any]], before: Sequence[str] = ()) -> list[str]:
    """Each group's own name where it has one; ``lr`` for a single group without one, else
    ``group N``; a group without one that had a trace ``before`` keeps it (a fine-tuning loop's
    ``add_param_group`` leaves curve ``lr`` going on, the new group beside it as ``group 1``)."""
    own = [_own_name(g) for g in groups]
    if len(groups) == 1:
        return [own[0] or (before[0] if before else "lr")]
    return _apart([name or (before[i] if i < len(before) else f"group {i}") for i, name in enumerate(own)])


def _apart(names: list[str]) -> list[str]:
    """Groups named alike (``decay`` twice) kept apart by their numbers: ``decay (group 0)``,
    ``decay (group 2)``; the others keep their names."""
    return [f"{name} (group {i})" if names.count(name) > 1 else name for i, name in enumerate(names)]


def _optimizer_traces(optimizer: str, groups: Sequence[dict[str, Any]], before: Sequence[str] = ()) -> list[str]:
    """The traces of one of several optimizers' groups: the optimizer's name for a single group,
    else ``NAME/`` and the group's (``D/backbone``, ``D/group 1``). A group traced ``before``
    keeps its trace unless it has been named since: ``D`` goes on when ``add_param_group`` adds
    ``D/group 1`` beside it."""
    if len(groups) == 1:
        return [optimizer]
    return _apart([before[i] if i < len(before) and (before[i] == optimizer or _own_name(group) is None)
                   else f"{optimizer}/{label}" for i, (group, label) in enumerate(zip(groups, trace_names(groups)))])


def _own_name(group: dict[str, Any]) -> str | None:
    name = group.get("name")
    return name if isinstance(name, str) and name else None
