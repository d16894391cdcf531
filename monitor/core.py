"""Monitor, Callback and LoopState: the few lines a user adds to their own training loop.

The loop stays the user's. It calls the monitor's hooks at the points it already has (after
``loss.backward()``, at the end of a step, after validation, ...); the monitor keeps one small
loop state and fans each hook out to the callbacks, which decide what to log. A callback that
fails is reported once, by name, and training goes on.
"""
from __future__ import annotations

import atexit
import html
import importlib
import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, Union

import torch

from monitor import checks
from monitor.distributed import label_ranks, rank_and_world_size, warn_before_init
from monitor.amp import scaler_near
from monitor.log import Log, NullSink, Sink
from monitor.models import unwrap_model
from monitor.records import RunEnd, ending_of, exit_error, interactive
from monitor.reports import Reports
from monitor.resumable import Batches, Resumable, batches_done

_log = logging.getLogger("monitor")

HOOKS = ("on_train_start", "on_epoch_start", "on_after_backward", "on_step_end",
         "on_validation_end", "on_epoch_end", "on_train_end", "on_exception")


class Continuation(NamedTuple):
    """Where a continued run's log goes on: its env (None: a new run names its own), byte position
    and run id (None: unknown), so that another run's log of that env is not cut there, and the
    run folder it was written in (absolute; None: unknown)."""

    env: str | None
    position: int
    run_id: str | None = None
    run_dir: str | None = None


@dataclass
class LoopState:
    """What the loop is doing now; callbacks read it, only the Monitor writes it.

    ``step`` is the 1-based number of the optimizer step in progress or just finished (the x of
    per-step curves): a step begins at its ``after_backward`` (at ``step_end`` in a loop that
    calls none), so a value the loop logs itself between the two goes at ``state.step`` there,
    and before ``after_backward`` at ``state.step + 1``. ``epoch`` is 0-based, as in ``for epoch
    in range(epochs)``; ``batch`` counts the steps of the current epoch. ``batch_index`` is the 0-based index in its epoch of the batch
    ``monitor.batches(loader)`` gave last, counted as in a run never stopped: after a resume,
    where ``enumerate`` counts from 0 again, it goes on from the batches done, counted in batches
    of the size the loop now draws. It is None for a loop that iterates its loader itself, and
    until the epoch's first batch. Under gradient accumulation it is the micro-batch's index; a
    loader iterated through ``monitor.batches`` inside the loop (validation mid-epoch) sets it
    while it runs and gives the outer loader's back when it ends. ``metrics`` is what the loop
    passed to the latest hook (a step's, only while ``on_step_end`` runs);
    ``loss``, ``inputs``, ``targets`` and ``outputs`` are set only while ``on_step_end`` runs, so
    the monitor never keeps a batch, or a metric's graph, alive. They are the loop's own objects: a callback that keeps
    any of them must log a snapshot (``Log`` does).

    ``optimizers`` names every optimizer the loop gave ``train_start``; ``optimizer`` is the one
    when there is one (None with several). ``backward_pass`` is the optimizer whose gradients
    the latest ``after_backward(optimizer=...)`` said are ready (None: the model's, all of them).
    ``scaler`` is the loop's ``torch.amp.GradScaler``, if it gave one. ``data_wait`` is the
    seconds ``monitor.batches(loader)`` waited for the current batch (None for a loop that
    iterates its loader itself). ``validation`` is the trace the latest ``validation_end`` named
    (``"validation"`` unless told: an EMA copy's, ``"val/clean"``); ``main_validation`` says
    whether it is the run's own: the step's first validation, or another of the step under that
    trace (False for an EMA copy's after it), whose metrics a checkpoint ranks by and the run ends with.
    ``validated_step`` is None for a validation of the loop's own, at ``step``; for one off the loop
    (called from another thread than train_start's, or given ``step=``) the step it measured.
    ``step_began`` is the ``time.perf_counter()`` at which the loop's code of the next step began:
    after the hooks of the ``step_end``, ``validation_end`` or ``epoch_start`` before it (a
    checkpoint's save is in no step), None before any; kept only where a callback ``times_steps``.
    ``batch_drawn``, where a callback sets it, is called with each batch ``monitor.batches`` draws
    for the loop (Timing counts the samples of a step's micro-batches so); it must not keep them.
    """

    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    scaler: Any = None
    backward_pass: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    batch: int = 0
    loss: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: Any = None
    targets: Any = None
    outputs: Any = None
    data_wait: float | None = None
    batch_index: int | None = None
    validation: str = "validation"
    main_validation: bool = True
    validated_step: int | None = None
    step_began: float | None = None
    batch_drawn: Callable[[Any], None] | None = None


class Callback:
    """Decides what to log at some of the loop's hooks; every hook is a no-op by default.

    Subclasses override the hooks they need and write through ``log``:

        class PrintLoss(Callback):
            def on_step_end(self, state, log):
                log.scalar("loss", "train", state.step, state.loss)

    A callback with state worth keeping across a resume (a best score, a counter) returns it
    from ``state_dict()`` and takes it back in ``load_state_dict()``, under ``state_key`` (set
    it to tell two of one class apart: ``best = Checkpoint("ckpt/best", every_epochs=1, metric="loss",
    keep_best=1); best.state_key = "best"``).
    """

    records_hparams = False  # whether it records train_start's hparams itself (Summary); else the Monitor does
    times_steps = False  # whether it reads state.step_began (Timing); else the Monitor does not keep it

    def without_scaler(self) -> str | None:
        """What this callback gets wrong in a loop that scales its loss with a GradScaler it did
        not give ``train_start`` (said once a run, at the first ``after_backward``); None: nothing."""
        return None

    @property
    def state_key(self) -> str:
        """The name its state is saved under in checkpoints: the class name, unless set."""
        return self.__dict__.get("_state_key") or type(self).__name__

    @state_key.setter
    def state_key(self, key: str) -> None:
        self._state_key = checks.text("state_key", key)

    def continues_run(self) -> Continuation | None:
        """The run this callback continues (``Checkpoint(resume=True)``), else None.

        Asked once, before the Monitor builds its sink: a position rewinds the run log to it
        (0: a new run), in the run's env unless the Monitor was given one.
        """
        return None

    def check_among(self, callbacks: list[Callback]) -> None:
        """Raises where this callback cannot work among the Monitor's ``callbacks``. Asked before
        the Monitor builds its sink, so that a Monitor refused leaves the env's last run as it was."""

    def on_attach(self, monitor: Monitor) -> None:
        """Called once by the Monitor this callback was given to (e.g. to save its whole state)."""

    def on_train_start(self, state: LoopState, log: Log) -> None:
        """The loop is about to start (or resume) training."""

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        """An epoch begins; ``state.epoch`` is its 0-based number."""

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        """Gradients are ready: after ``loss.backward()``, before ``optimizer.step()``."""

    def on_step_end(self, state: LoopState, log: Log) -> None:
        """A step is done; ``state.loss``, ``state.metrics`` and the batch are this step's."""

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        """Validation is done; ``state.metrics`` holds its results."""

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        """An epoch is done; ``state.metrics`` holds what the loop passed, if anything."""

    def on_train_end(self, state: LoopState, log: Log) -> None:
        """Training finished (also after an exception)."""

    def on_exception(self, state: LoopState, log: Log, error: BaseException) -> None:
        """The loop raised ``error``; it will be re-raised after the callbacks ran."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Monitor:
    """Calls its callbacks from the user's loop and owns the sink they write to.

    Add a few lines to an ordinary loop:

        monitor = Monitor([Scalars(), LearningRate(), GradNorms(), Images(every=50)], env="mnist")
        with monitor:
            monitor.train_start(model, optimizer, hparams={"lr": 0.1})
            for epoch in range(epochs):
                monitor.epoch_start(epoch)
                for x, y in loader:
                    loss = loss_fn(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    monitor.after_backward()
                    optimizer.step()
                    monitor.step_end(loss=loss, inputs=x, targets=y)
                monitor.validation_end({"loss": val_loss, "accuracy": val_acc})
                monitor.epoch_end()

    ``sink`` defaults to a :class:`monitor.SinkProcess` of ``env`` (a :class:`monitor.VisdomSink`
    in a process of its own; pass ``sink=VisdomSink(...)`` to keep it in this one), configured by the other
    keywords (each None: the sink's default): ``server``, ``port``, ``username``,
    ``password`` (default: the environment variables, else http://127.0.0.1:8097), ``run_dir``
    (``runs/ENV``), ``flush_every`` (0.5 s between sends), ``points_per_trace`` (1000),
    ``timeout`` (5 s per request) and ``rewind_to`` (a checkpoint's run-log position). Under
    ``torch.distributed`` the callbacks run in every process (so collectives they make match)
    but only rank 0 has a sink; the others drop what they log. Build it after
    ``init_process_group``: that is where it learns its rank. ``raise_errors=True`` makes a
    callback's exception propagate (for tests); by default it is reported once and training
    goes on.

    Callbacks that keep state for checkpoints need distinct ``state_key`` values; stateless
    ones may repeat (``[Images(), Images(source="outputs")]``). With a
    ``Checkpoint(..., resume=True)`` among them, iterate ``monitor.epochs(n)`` and
    ``monitor.batches(loader)``: a killed run, started again, continues where it left off.
    """

    def __init__(self, callbacks: Iterable[Callback] = (), *, env: str | None = None,
                 server: str | None = None, port: int | None = None, username: str | None = None,
                 password: str | None = None, run_dir: str | os.PathLike | None = None,
                 flush_every: float | None = None, points_per_trace: int | None = None,
                 timeout: float | None = None, rewind_to: int | None = None, sink: Sink | None = None,
                 raise_errors: bool = False) -> None:
        self.callbacks = list(callbacks)
        for i, callback in enumerate(self.callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks[{i}] must be a monitor.Callback, got {type(callback).__name__}")
        keys = [c.state_key for c in self.callbacks if _has_state(c)]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"callbacks that keep state must have distinct state_key values, got "
                             f"{duplicates} more than once: give each its own state_key")
        for callback in self.callbacks:
            callback.check_among(self.callbacks)
        options = {name: value for name, value in (
            ("server", server), ("port", port), ("username", username), ("password", password),
            ("run_dir", run_dir), ("flush_every", flush_every), ("points_per_trace", points_per_trace),
            ("timeout", timeout), ("rewind_to", rewind_to)) if value is not None}
        warn_before_init("Monitor")
        self.rank, self.world_size = rank_and_world_size()
        label_ranks(self.rank, self.world_size)
        continued = [p for c in self.callbacks if (p := c.continues_run()) is not None]
        if continued and rewind_to is None and sink is None:
            options["rewind_to"] = continued[0].position
            if continued[0].run_id is not None:
                options["continues"] = continued[0].run_id
            env = env if env is not None else continued[0].env
            if run_dir is None and env is not None and (where := _run_folder_of(continued[0], env)) is not None:
                options["run_dir"] = where
        if sink is not None:
            if env is not None or options:
                raise TypeError(f"env and sink options are the sink's: pass them to the sink, not with "
                                f"sink=, got {sorted(options) + (['env'] if env is not None else [])}")
            if not isinstance(sink, Sink):
                missing = [name for name in ("put", "flush", "sync", "close", "env", "run_id", "position")
                           if not hasattr(sink, name)]
                raise TypeError(f"sink must provide monitor.log.Sink's put, flush, sync, close, env, run_id "
                                f"and position, got a {type(sink).__name__} without {missing}")
        elif self.rank != 0:
            sink = NullSink()  # under torch.distributed only rank 0 talks to Visdom
        else:
            from monitor.sink_process import SinkProcess
            sink = SinkProcess(env=env, **options)
        self.sink = sink
        for other in list(_unclosed):  # a notebook's Monitor cell run again: the sink replaced said how its run ended
            if getattr(other.sink, "replaced", None):
                other._let_go()  # and every hook of the Monitor replaced is refused, the per-step ones too
        self._end = [RunEnd("finished")]  # what close() records (exception() changes it), shared with _end_dropped
        self.state = LoopState()
        _watch_until_exit(self)
        self.log = Log(sink)
        self.raise_errors = raise_errors
        self._in_step = False
        self._started = False
        self._train_ended: int | None = None  # the step train_end was last called at
        self._hooks = threading.RLock()  # a validation in a thread of its own waits for the loop's hook to end
        self._loop_thread: int | None = None  # the thread that called train_start
        self._first_validation: tuple[int, str] | None = None  # the step of the latest validation, and its first's trace
        self._epoch_open = False
        self._epochs_ran = False  # monitor.epochs has yielded in this run
        self._in_steps = False  # in a monitor.steps loop
        self._failed = False
        self._ended = False
        self._entered = False  # in a `with` block
        self._error_shown: tuple[BaseException | None, int] | None = None  # an interactive session's, at a step
        self._resumable = Resumable()
        self._scaler_looked_for = False  # for a GradScaler train_start was not given (once a run)
        self._reports = Reports()
        self._watched: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # LBFGS optimizers: their hooks
        # Only the callbacks that override a hook are called for it, through bound methods.
        self._times_steps = any(c.times_steps for c in self.callbacks)
        self._subscribers = {hook: [(c, getattr(c, hook)) for c in self.callbacks
                                    if getattr(type(c), hook) is not getattr(Callback, hook)]
                             for hook in HOOKS}
        for callback in self.callbacks:
            callback.on_attach(self)

    @property
    def is_main(self) -> bool:
        """True in the process that logs and saves: rank 0, or the only process."""
        return self.rank == 0

    # --- the hooks the loop calls ------------------------------------------------------------
    def train_start(self, model: torch.nn.Module | None = None,
                    optimizer: Optimizers | None = None,
                    hparams: Mapping[str, Any] | None = None, *, scaler: Any = None) -> None:
        """Call once before the first epoch (and again after a resume).

        ``optimizer`` is one optimizer, a list of them, or a mapping of names to them (a GAN's
        ``{"G": opt_g, "D": opt_d}``); ``hparams`` a mapping, an ``argparse.Namespace`` or a
        dataclass (nested ones flattened: ``optim.lr``); ``scaler`` the ``torch.amp.GradScaler`` of a
        mixed-precision loop, so that gradient norms are those of the true, unscaled gradients.
        """
        self._refuse_if_closed()
        if model is not None and not isinstance(model, torch.nn.Module):
            several = (": several models go in as one, nn.ModuleDict({'actor': actor, 'critic': critic})"
                       if isinstance(model, (list, tuple, dict)) else "")
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}{several}")
        optimizers = _named_optimizers(optimizer)
        hparams = None if hparams is None else checks.hparams("hparams", hparams)  # before anything changes
        if scaler is not None and not all(callable(getattr(scaler, name, None))
                                          for name in ("scale", "unscale_", "get_scale", "is_enabled")):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        state = self.state
        if isinstance(model, torch.optim.swa_utils.AveragedModel):
            self._reports.once("averaged", "train_start was given an AveragedModel (an EMA or SWA copy): give it the "
                                           "model the optimizer trains, validate the copy with validation_end(..., "
                                           "trace='ema') and keep it in Checkpoint(extras=lambda: {'ema': "
                                           "ema.state_dict()})")
        if model is not None and state.model is not None and unwrap_model(model) is not unwrap_model(state.model):
            self._reports.once("another model", f"train_start was given another model: it goes on with this run, "
                                                f"from step {state.step}; make a Monitor for each run (a fold, a "
                                                f"trial) for a run of its own")
        state.model, state.optimizers, state.scaler = model, optimizers, scaler
        state.optimizer = next(iter(optimizers.values())) if len(optimizers) == 1 else None
        for one in optimizers.values():
            if isinstance(one, torch.optim.LBFGS):
                self._watch_closure(one)
        recorded = hparams is not None or not self._started  # a second train_start (an LBFGS after an Adam)
        if recorded:                                         # given none keeps the run's, given some adds them
            state.hparams = {**state.hparams, **hparams} if self._started and hparams else dict(hparams or {})
        self._started, self._failed, self._ending = True, False, RunEnd("finished")
        self._scaler_looked_for = scaler is not None
        state.step_began = None
        self._loop_thread = threading.get_ident()
        self._train_ended = None
        if getattr(self.sink, "ending", None) is not None:
            self.sink.ending = None
        if recorded and state.hparams and not any(c.records_hparams for c in self.callbacks):
            try:  # the run's record for comparing runs (monitor runs --where, compare), pane hparams
                self.log.hparams(state.hparams, {}, state.step)
            except (TypeError, ValueError) as error:
                self._reports.once("hparams", f"the hparams given to train_start are not recorded: {error}")
        self._fire("on_train_start")
        self._hand_on_now()

    def _hand_on_now(self) -> None:
        """Has the sink take what was logged now, not at its next poll (within 0.1 s): a run's
        record (hparams, summary) and a validation, which a SIGKILL in between would lose (a
        sweep's trial killed 43 ms after train_start was a run of nothing)."""
        hurry = getattr(self.sink, "hurry", None)
        if hurry is not None:
            hurry()

    def _watch_closure(self, optimizer: torch.optim.Optimizer) -> None:
        """An LBFGS calls its closure several times a step: a ``step_end`` in the closure would count
        each call a step (a ``monitor.steps(n)`` loop ending early), said once after the step."""
        if optimizer in self._watched:
            return
        me, started_at = weakref.ref(self), [0]

        def before(*_: Any) -> None:
            if (monitor := me()) is not None:
                started_at[0] = monitor.state.step

        def after(*_: Any) -> None:
            if (monitor := me()) is not None and monitor.state.step > started_at[0] + 1:
                monitor._reports.once("closure", f"step_end was called {monitor.state.step - started_at[0]} times "
                                      f"in one step of {type(optimizer).__name__}, which calls its closure several "
                                      f"times a step: call step_end after optimizer.step(closure), not in the "
                                      f"closure (after_backward may go in it: the last call's gradients count)")

        self._watched[optimizer] = (optimizer.register_step_pre_hook(before),
                                    optimizer.register_step_post_hook(after))

    def epoch_start(self, epoch: int | None = None) -> None:
        """Call at the start of each epoch; ``epoch`` is 0-based (default: the next one)."""
        with self._hooks:
            self._refuse_if_closed()
            self._step_over()
            if epoch is not None:
                state = self.state
                checks.integer("epoch", epoch, minimum=0)
                reached = state.epoch + (1 if state.batch else 0)  # the epochs this run has begun
                state.epoch = epoch
                if epoch < self._resumable.first_epoch:  # a resumed run whose loop counts its own epochs
                    self._reports.once("epoch-back", f"epoch_start({epoch}) goes back from epoch "
                                       f"{self._resumable.first_epoch}, where the resumed run continues: iterate "
                                       f"monitor.epochs(n) and monitor.batches(loader) to continue there")
                elif self._started and epoch < reached:  # a notebook's training cell run again
                    self._reports.once("epoch-back", f"epoch_start({epoch}) goes back from epoch {reached - 1}, "
                                       f"which this run has trained in: its epochs' points and checkpoints take "
                                       f"the numbers given again; epoch_start() with no number counts on (a "
                                       f"notebook's training cell run again), as monitor.epochs(n) does")
            elif self._started and self.state.batch:
                self.state.epoch += 1
            self.state.batch, self.state.batch_index = 0, None
            self._resumable.new_epoch()
            self._fire("on_epoch_start")
            if self._times_steps:
                self.state.step_began = time.perf_counter()

    def after_backward(self, optimizer: str | torch.optim.Optimizer | None = None) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()`` / ``zero_grad()``.

        With several optimizers and a backward pass each (a GAN), say whose gradients are ready:
        ``after_backward("D")`` or ``after_backward(opt_d)``; their norms get a window of their
        own. With gradient accumulation, calling it after every micro-batch or only after the
        last gives the same single point per step: the last call's, the accumulated gradients.
        """
        with self._hooks:
            if self._ended:
                self._refuse_if_closed()
            state = self.state
            state.backward_pass = None if optimizer is None else self._pass_of(optimizer)
            if not self._in_step:
                if self._resumable.at_next_batch is not None:
                    self._step_over()
                self._in_step = True
                state.step += 1
            if not self._scaler_looked_for:
                self._say_if_scaler_not_given()
            self._fire("on_after_backward")

    def step_end(self, loss: Any = None, metrics: Mapping[str, Any] | None = None,
                 inputs: Any = None, targets: Any = None, outputs: Any = None) -> None:
        """Call after ``optimizer.step()`` with this step's loss, metrics and (optionally) batch."""
        with self._hooks:
            if metrics is not None and type(metrics) is not dict:
                _check_metrics(metrics)
            if self._ended:
                self._refuse_if_closed()
            state = self.state
            resumable = self._resumable
            if not self._in_step:  # a loop that does not call after_backward
                if resumable.at_next_batch is not None:
                    self._step_over()
                state.step += 1
            state.batch += 1
            if resumable.drawn is resumable.drawn_at_step and resumable.drawn is not None:
                resumable.steps_share_batches = True  # a second step of one batch: truncated BPTT's chunks
            resumable.drawn_at_step = resumable.drawn  # the batches this step and those before it took
            resumable.begun_at_step = resumable.begun
            state.loss, state.inputs, state.targets, state.outputs = loss, inputs, targets, outputs
            state.metrics = dict(metrics) if metrics else {}
            try:
                self._fire("on_step_end")
            finally:
                if self._times_steps:
                    state.step_began = time.perf_counter()
                self._in_step = False
                # Keep no batch, output or graph alive past the hook: the loop decides their lifetime
                # (a metric tensor with its graph, freed at the next step_end, took a 322-layer model 0.3 ms there).
                state.loss = state.inputs = state.targets = state.outputs = None
                state.metrics = {}

    def _say_if_scaler_not_given(self) -> None:
        """Once a run: a GradScaler the loop scales its loss with, which train_start was not given,
        found among the names of the loop's code (``amp.scaler_near``), and what it costs."""
        self._scaler_looked_for = True
        wrong = [said for said in (c.without_scaler() for c in self.callbacks) if said]
        if not wrong:  # (a scaler given to train_start is never looked for)
            return
        name = scaler_near(sys._getframe(1))
        if name is not None:
            self._reports.once("scaler", f"the loop scales its loss with GradScaler {name}, which train_start was not "
                                         f"given: {'; '.join(wrong)}; pass monitor.train_start(model, optimizer, "
                                         f"scaler={name})")

    def validation_end(self, metrics: Mapping[str, Any], trace: str = "validation", *,
                       step: int | None = None) -> None:
        """Call after validation with its results, e.g. ``{"loss": 0.41, "accuracy": 0.87}``.

        A second validation of the step (an EMA copy's, another data set's) names its own
        trace of the same windows, ``validation_end(ema_metrics, trace="ema")``: the checkpoint's
        ranking and the run's final metrics stay the first's, whatever its trace
        (``trace="val/clean"`` and then ``trace="val/noisy"``: the clean set's).

        An evaluation in a thread of its own, of a copy of the weights of an earlier step, says
        which: ``validation_end(metrics, step=8)`` draws its points at step 8, and a Checkpoint
        ranks the checkpoint of step 8 by it, if one was written; the loop goes on meanwhile.
        """
        with self._hooks:
            self._refuse_if_closed()
            _check_metrics(metrics)
            state = self.state
            if step is not None:
                checks.integer("step", step, minimum=0)
                if step > state.step:
                    raise ValueError(f"step must be the step whose weights the validation measured, at most the "
                                     f"loop's step {state.step}, got {step}")
            in_loop = (step is None or step == state.step) and \
                self._loop_thread in (None, threading.get_ident())
            state.validated_step = None if in_loop else state.step if step is None else step
            at = state.step if in_loop else state.validated_step
            state.validation = trace = checks.name("trace", trace)
            first = self._first_validation
            if first is None or first[0] != at:
                self._first_validation = first = (at, trace)
            state.main_validation = trace == first[1]
            state.metrics = dict(metrics)
            self._train_ended = None  # a test after train_end: the next train_end records it
            self._fire("on_validation_end")
            self._hand_on_now()
            if self._times_steps and in_loop:
                state.step_began = time.perf_counter()

    def epoch_end(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Call at the end of each epoch, optionally with metrics of the epoch."""
        with self._hooks:
            self._refuse_if_closed()
            if metrics is not None:
                _check_metrics(metrics)
            self._epoch_open = False
            self._train_ended = None
            self.state.metrics = dict(metrics) if metrics else {}
            self._fire("on_epoch_end")

    def train_end(self) -> None:
        """Call once after training; the sink keeps delivering until :meth:`close`. Called again
        with no step, validation or epoch end since (a notebook's last cell run twice), it does nothing."""
        with self._hooks:
            if self._train_ended == self.state.step:
                return
            self._train_ended = self.state.step
            self._step_over()
            if self._epoch_open and not self._failed:  # a loop that broke out of monitor.epochs()
                self.epoch_end()
            self._fire("on_train_end")
            self._started = False
            ending = self._ending._replace(step=self.state.step)
            self.sink.put(ending)  # said now: a notebook idle after training, or killed, reads finished
            if hasattr(self.sink, "ending"):  # a notebook's setup cell run again after this: a run that finished
                self.sink.ending = ending

    def exception(self, error: BaseException) -> None:
        """Call from the loop's ``except`` block (the context-manager form does this for you)."""
        with self._hooks:
            self._failed = True
            self._ending = ending_of(error)
            self._fire("on_exception", error)

    def _pass_of(self, optimizer: str | torch.optim.Optimizer | None) -> str | None:
        if optimizer is None:
            return None
        named = self.state.optimizers
        if isinstance(optimizer, str):
            if optimizer in named:
                return optimizer
        else:
            for name, known in named.items():
                if known is optimizer:
                    return name
        given = repr(optimizer) if isinstance(optimizer, str) else f"a {type(optimizer).__name__} not given to it"
        raise ValueError(f"optimizer must name one of those given to train_start ({', '.join(named) or 'none'}), "
                         f"got {given}")

    # --- iteration that resumes ----------------------------------------------------------------
    def epochs(self, count: int) -> Iterator[int]:
        """``range(count)``, from the epoch a resumed run continues; calls epoch_start and epoch_end.

            for epoch in monitor.epochs(10):
                for x, y in monitor.batches(loader): ...
                monitor.validation_end(evaluate(model))

        ``epoch_end()`` is called after each epoch unless the loop called it itself (to pass
        metrics). An epoch that a checkpoint interrupted gets no second ``epoch_start``.
        """
        checks.integer("count", count, minimum=0)
        first, began = self._resumable.start()
        if self._resumable.trained:  # resumed after its train_end (killed in its own last work, an early stop)
            self._resumable.trained = False
            return
        if self._epochs_ran and not (first or began):  # a notebook's cell run again: as a resume would go on
            first, began = self._go_on_here()
            if first >= count:
                self._reports.once("epochs-done", f"monitor.epochs({count}) has no epoch left: the run has done "
                                   f"{first}, and monitor.epochs counts the run's epochs (a cell run again, or a "
                                   f"later phase after train_start again, goes on with them, as a resumed run "
                                   f"does); ask for more, monitor.epochs({first + count})")
        self._epochs_ran = True
        for epoch in range(first, count):
            if epoch == first and began:
                self.state.epoch = epoch
            else:
                self.epoch_start(epoch)
            self._epoch_open = True
            yield epoch
            if self._epoch_open:
                self.epoch_end()

    def _go_on_here(self) -> tuple[int, bool]:
        """(the epoch to run first, whether it began before): where this process left its epochs,
        the rest of an interrupted one's batches in the order it drew them."""
        from monitor.checkpoint.rng import capture_rng

        state, resumable = self.state, self._resumable
        done = not self._epoch_open
        position = resumable.state_dict()
        resumable.stopped()
        skip = 0 if done else batches_done({**position, "batch": state.batch})
        resumable.continue_from(state.epoch + done, skip, position["order_rng"], capture_rng() if skip else None,
                                position["batches_call"], position["batches_of"], position["batches_again"],
                                since="the loop stopped")
        return resumable.start()

    def steps(self, count: int) -> Iterator[int]:
        """The steps of a loop with no loader to resume (reinforcement learning's rollouts and
        updates, a stream): yields the number of steps done, from where a resumed run left off,
        until ``count`` are done.

            for update in monitor.steps(1000):
                rollout = collect(env, agent)     # the episode returns it logs belong to this step
                ...; loss.backward(); monitor.after_backward(); optimizer.step()
                monitor.step_end(loss=loss)

        Each iteration begins a step, so what it logs before ``after_backward`` (a rollout's
        episode returns) is that step's: a resumed run logs it again in place of what the killed
        run logged, not beside it, as in ``while monitor.state.step < count:``, where the step
        begins at ``after_backward``. An iteration that ends no step (a replay buffer still
        filling) is not counted: the next one yields the same number. ``monitor.state.step``
        counts the step from its ``after_backward`` on: values logged by hand before it belong at
        ``update + 1``, the step's number. A DataLoader the loop reads (a stream) goes through
        ``batches = iter(monitor.batches(loader))``, ``next(batches)`` each step, to go on after
        the batches done when resumed.
        """
        checks.integer("count", count, minimum=0)
        if self._resumable.trained:  # resumed after its train_end (killed in its own last work, an early stop)
            self._resumable.trained = False
            return
        self._in_steps = True
        idle, last = 0, None  # iterations in a row that ended no step
        try:
            while self.state.step < count:
                self._step_over()
                idle = idle + 1 if self.state.step == last else 0
                last = self.state.step
                if idle == 10_000:
                    self._reports.once("steps-idle", f"monitor.steps({count}) yielded {last} 10,000 times: it counts "
                                       f"the steps that end (step_end), not the iterations; a loop that steps an "
                                       f"environment each iteration and trains now and then (a replay buffer "
                                       f"filling, learning_starts) counts them itself, for global_step in "
                                       f"range(total), and calls the hooks at its updates")
                self._resumable.begun += 1
                if self.state.step_began is None and self._times_steps:  # its first step, a resumed run's: timed
                    self.state.step_began = time.perf_counter()
                yield self.state.step
        finally:
            self._in_steps = False

    def batches(self, loader: Iterable) -> Batches:
        """Iterates ``loader`` for this epoch, from the batch a resumed run continues with.

        Tells the loader's sampler the epoch (``EpochBatchSampler``, ``DistributedSampler``).
        After a resume in the middle of an epoch it skips the batches done, in the order the
        interrupted run drew them, ``DataLoader(shuffle=True)`` included (see
        :mod:`monitor.resumable`). Its ``len()`` is the batches it will give, for a progress bar:
        ``tqdm(monitor.batches(loader))``.
        """
        return self._resumable.batches(self, loader)

    @property
    def in_epochs(self) -> bool:
        """Whether the loop is inside an epoch of a ``monitor.epochs`` loop."""
        return self._epoch_open

    @property
    def in_step(self) -> bool:
        """Whether a step is in progress: begun by ``after_backward``, not yet ended by ``step_end``
        (still True while the callbacks' ``on_step_end`` run)."""
        return self._in_step

    @property
    def in_steps(self) -> bool:
        """Whether the loop is inside a ``monitor.steps`` loop."""
        return self._in_steps

    @property
    def steps_share_batches(self) -> bool:
        """Whether the loop took several steps from one batch of ``monitor.batches`` (truncated
        backpropagation through time's chunks of a batch of series)."""
        return self._resumable.steps_share_batches

    @property
    def in_ended_step(self) -> bool:
        """Whether a ``monitor.batches`` or ``monitor.steps`` loop is still in the iteration of the
        step that ended last (a validation after its ``step_end``), not at the top of the next
        one (nanoGPT's evaluation, before the step: a resumed run runs it again)."""
        return self._resumable.begun == self._resumable.begun_at_step

    @property
    def in_batches(self) -> bool:
        """Whether the loop is inside a ``monitor.batches`` loop, with batches still to come."""
        return self._resumable.iterating > 0

    def at_next_batch(self, action: Callable[[], None] | None) -> None:
        """Calls ``action`` once, when the step's code is over: before the ``monitor.batches``
        loop (not one inside it) takes its next batch, or in a loop that takes its own, when its
        next step, epoch or ``train_end`` begins; None takes back an action not yet called."""
        self._resumable.at_next_batch = action

    def _step_over(self) -> None:
        """Runs the action ``at_next_batch`` left, if any: the step before is over."""
        action, self._resumable.at_next_batch = self._resumable.at_next_batch, None
        if action is not None:
            action()

    # --- lifetime -----------------------------------------------------------------------------
    def flush(self, timeout: float | None = 10.0) -> bool:
        """Waits until everything logged so far reached the dashboard (or ``timeout`` passed)."""
        return self.sink.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Ends training as leaving a ``with`` block does, delivers what is pending (for up to
        ``timeout`` s), then stops the sink; safe to call twice.

        Called after ``train_start`` without ``train_end``, it calls ``train_end`` (the summary's
        final metrics, a Checkpoint's last save); from a ``finally`` or ``except`` block while
        the loop's exception is on its way, it first records that exception as :meth:`exception`
        does (a run that reached ``train_end``, or a ``with`` block that ended well, finished).
        """
        error = sys.exc_info()[1]
        if self._started and not self._ended and not self._failed and error is not None:
            self.exception(error)
        try:
            if self._started and not self._ended:
                self.train_end()
        finally:  # a final save that failed still leaves the run log complete
            delivered = self._close(timeout)
        return delivered

    def _refuse_if_closed(self) -> None:
        replaced = getattr(self.sink, "replaced", None)
        if self._ended or replaced:
            why = "a newer Monitor of its env in this process replaced it" if replaced else "it was closed"
            made_in = getattr(self.sink, "made_in", None)
            late = "" if made_in in (None, threading.current_thread()) else (
                f" (a thread of its own, {threading.current_thread().name!r}, that the loop did not join before "
                f"the end of its `with` block?)")
            raise RuntimeError(f"this Monitor of env {self.sink.env!r} cannot log any more, {why}{late}: what it "
                               f"logged now would be dropped; build a new Monitor for each run (each `with` block), "
                               f"or to go on with one run over several notebook cells, call its hooks without "
                               f"`with` and close() it after the last")

    def _close(self, timeout: float | None) -> bool:
        self._put_end()
        return self.sink.close(timeout)

    def _put_end(self) -> None:
        if not self._ended:  # the run log says how the run ended (a killed run says nothing)
            self._let_go()
            self.sink.put(self._ending._replace(step=self.state.step))

    def _let_go(self) -> None:
        """Ends this Monitor for good, its hooks refused; whoever calls it records how the run ended."""
        self._ended = True
        _unclosed.discard(self)
        self._dropped.detach()

    @property
    def _ending(self) -> RunEnd:
        return self._end[0]

    @_ending.setter
    def _ending(self, record: RunEnd) -> None:
        self._end[0] = record

    def __repr__(self) -> str:  # a notebook cell's output: where the dashboard is
        url = getattr(self.sink, "url", None)
        where = f" at {url}" if url else ""
        return f"<Monitor of env {self.sink.env!r}{where}, {'closed' if self._ended else f'step {self.state.step}'}>"

    def _repr_html_(self) -> str:  # Jupyter's: the dashboard's address as a link
        url = getattr(self.sink, "url", None)
        text = html.escape(repr(self))
        return f'<a href="{html.escape(url)}" target="_blank">{text}</a>' if url else text

    def __enter__(self) -> Monitor:
        self._refuse_if_closed()
        if self._entered:
            raise RuntimeError(f"this Monitor of env {self.sink.env!r} is in a `with` block already, whose end "
                               f"closes it: enter it once")
        self._entered = True
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._entered = False
        if error is not None and not self._failed:  # a callback's own exit (a pre-emption) said it already
            self.exception(error)
        try:
            if self._started:
                self.train_end()
        finally:  # a final save that failed still leaves the run log complete
            self._close(10.0)

    # --- callback state, for checkpoints ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop position and every callback's own state, keyed by ``state_key``."""
        return {"step": self.state.step, "epoch": self.state.epoch, "batch": self.state.batch,
                **self.batches_position(),
                "callbacks": {c.state_key: c.state_dict() for c in self.callbacks}}

    def batches_position(self) -> dict[str, Any]:
        """Where this process is in its epoch's ``monitor.batches``: which call, the batches it
        gave, the random state they were drawn from (each rank its own, under torch.distributed)."""
        return self._resumable.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Puts back a loop position and the callbacks' states; ``epoch_done``, ``trained``,
        ``batches_drawn``, ``batches_call``, ``batches_of``, ``batches_again``, ``order_rng`` and
        ``rng`` (optional) tell :meth:`epochs` and :meth:`batches` where to continue."""
        self.state.step, self.state.epoch, self.state.batch = state["step"], state["epoch"], state["batch"]
        done = bool(state.get("epoch_done", False))
        self._resumable.trained = bool(state.get("trained", False))
        self._resumable.continue_from(state["epoch"] + done, batches_done(state), state.get("order_rng"),
                                      state.get("rng"), state.get("batches_call"), state.get("batches_of"),
                                      state.get("batches_again", False))
        saved = state.get("callbacks", {})
        for callback in self.callbacks:
            if callback.state_key in saved:
                callback.load_state_dict(saved[callback.state_key])

    # --- internals ----------------------------------------------------------------------------
    def _fire(self, hook: str, *args: Any) -> None:
        state, log = self.state, self.log
        marked = _profiling()  # a profiler's trace and table show the callbacks' time apart from the loop's
        for callback, method in self._subscribers[hook]:
            try:
                if marked:
                    with torch.profiler.record_function(f"monitor.{type(callback).__name__}.{hook}"):
                        method(state, log, *args)
                else:
                    method(state, log, *args)
            except Exception as error:
                if self.raise_errors:
                    raise
                if self.world_size > 1 and _peer_gone(error):  # no step goes on without the other ranks
                    raise RuntimeError(f"{type(callback).__name__}.{hook} could not reach the other ranks: another "
                                       f"rank stopped (its own error is in its output): {type(error).__name__}: "
                                       f"{error}") from error
                self._report(callback, hook, error)

    def _report(self, callback: Callback, hook: str, error: Exception) -> None:
        """Once per callback and hook, or per what the error is ``about`` (the metrics Scalars refused)."""
        name = type(callback).__name__
        self._reports.once((name, hook, getattr(error, "about", None)),
                           f"callback {name} failed in {hook}: {type(error).__name__}: {error}. "
                           f"Training goes on, and {name} is called again at the next {hook}")


_profiling = torch._C._autograd._profiler_enabled  # whether a torch.profiler records, now


Optimizers = Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer], Mapping[str, torch.optim.Optimizer]]


def _run_folder_of(continued: Continuation, env: str) -> str | None:
    """The folder a resumed run's log is in, where it is not ``runs/ENV`` here: a job that starts in a
    working directory of its own (Hydra's outputs/DATE/TIME) would begin its curves again there."""
    from monitor.runlog import RunLog

    default = (Path("runs") / env).absolute()
    saved = Path(continued.run_dir) if continued.run_dir else None
    if saved is None or saved == default or (default / RunLog.FILENAME).exists() or \
            not (saved / RunLog.FILENAME).is_file():
        return None
    _log.warning("monitor: the run continues in its run folder %s, where its checkpoint says its log is, not in %s "
                 "(this job's working directory is another: pass run_dir= to choose)", saved, default)
    return str(saved)


def _peer_gone(error: Exception) -> bool:
    """Whether ``error`` is a collective's that failed because a rank of the job is gone."""
    return isinstance(error, torch.distributed.DistError) or isinstance(error, RuntimeError) and any(
        sign in str(error) for sign in ("Connection closed by peer", "Connection reset by peer", "gloo/transport"))


def _named_optimizers(optimizer: Optimizers | None) -> dict[str, torch.optim.Optimizer]:
    """One optimizer, a list or a mapping, as names to optimizers (a list's are numbered by class)."""
    if optimizer is None:
        return {}
    if isinstance(optimizer, torch.optim.Optimizer):
        return {type(optimizer).__name__: optimizer}
    if isinstance(optimizer, Mapping):
        named = dict(optimizer)
        for name in named:
            checks.name("optimizer name", name)
    elif isinstance(optimizer, (list, tuple)):
        classes = [type(o).__name__ for o in optimizer]
        named = {(c if classes.count(c) == 1 else f"{c} {i}"): o for i, (c, o) in enumerate(zip(classes, optimizer))}
    else:
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, a list of them or a mapping of names to them, "
                        f"got {type(optimizer).__name__}")
    for name, value in named.items():
        if not isinstance(value, torch.optim.Optimizer):
            raise TypeError(f"optimizer {name!r} must be a torch.optim.Optimizer, got {type(value).__name__}")
    if not named:
        raise ValueError("optimizer must hold at least one optimizer, got an empty collection")
    return named


_unclosed: "weakref.WeakSet[Monitor]" = weakref.WeakSet()  # monitors whose close() is still to come
os.register_at_fork(after_in_child=_unclosed.clear)  # a fork's exit closes none of them (nor waits on them)
_closed_at_exit = False  # whether _close_unclosed is registered


def _watch_until_exit(watched: Monitor) -> None:
    """Has the monitor closed at the interpreter's exit if the script does not close it, its run
    log saying how the script ended (an uncaught exception: crashed or interrupted); or, if the
    script lets go of it before (``_end_dropped``), then."""
    global _closed_at_exit
    if not _closed_at_exit:
        importlib.import_module("monitor.sink")  # registers its exit hook first: it runs after ours
        atexit.register(_close_unclosed)
        _closed_at_exit = True
        if interactive():
            _note_errors_shown()
    _unclosed.add(watched)
    watched._dropped = weakref.finalize(watched, _end_dropped, watched.sink, watched._end, watched.state,
                                        os.getpid())
    watched._dropped.atexit = False  # at the exit, _close_unclosed closes those still there


def _end_dropped(sink: Sink, end: list[RunEnd], state: LoopState, pid: int) -> None:
    """A monitor the script let go of without close() (a sweep making one a trial, a function's
    own): its run log records how it ended, and its steps, as close() would, and its sink closes
    in the background (its process, its run folder), not at the script's exit."""
    if os.getpid() != pid:  # a fork's copy of it
        return
    sink.put(end[0]._replace(step=state.step))
    threading.Thread(target=sink.close, name="monitor-close-dropped", daemon=True).start()


def _note_errors_shown() -> None:
    """In an interactive session, each error shown at the prompt is noted by every open monitor
    with its step: at the exit, the last one counts for a run whose loop it stopped (no step
    since, no train_end), not for one that went on after it (a typo, a Ctrl-C, then training)."""
    def note(error: BaseException | None) -> None:
        for monitor in list(_unclosed):
            monitor._error_shown = (error, monitor.state.step)

    previous = sys.excepthook  # python -i shows errors through it

    def shown(kind: type, error: BaseException, traceback: Any) -> None:
        note(error)
        previous(kind, error, traceback)

    sys.excepthook = shown
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    def ran(result: Any) -> None:
        if result.error_in_exec is not None:
            note(result.error_in_exec)

    if shell is not None:  # IPython and Jupyter show them themselves
        shell.events.register("post_run_cell", ran)


def _how_it_ended(monitor: Monitor) -> BaseException | None:
    shown = monitor._error_shown
    if shown is not None and monitor._started and shown[1] == monitor.state.step:
        return shown[0]  # the last error the session showed stopped its loop
    return exit_error()


def _close_unclosed() -> None:
    monitors = list(_unclosed)
    for monitor in monitors:  # every run's end queued first: closing one may wait on a slow dashboard
        if not monitor._failed:  # how the script ended, if an exception did
            monitor._ending = ending_of(_how_it_ended(monitor))
        monitor._put_end()
    from monitor.sink import close_together  # imported by now: its exit hook runs after this one

    # No train_end: the loop may have stopped half-way through a step.
    close_together([monitor.sink for monitor in monitors], timeout=2.0)


def _check_metrics(metrics: Any) -> None:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name to number, e.g. {{'accuracy': 0.9}}, got "
                        f"{type(metrics).__name__}")


def _has_state(callback: Callback) -> bool:
    """Whether ``callback`` keeps state for checkpoints (it overrides ``state_dict``)."""
    return type(callback).state_dict is not Callback.state_dict
