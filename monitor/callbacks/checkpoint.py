"""Checkpoint: saves everything a run needs to continue exactly, atomically, keeping the last and best few."""
from __future__ import annotations

import gc
import logging
import math
import re
import signal
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from monitor import preemption
from monitor.checks import boolean, integer, one_of, positive_int, text
from monitor.checkpoint import CheckpointResumeError, CheckpointWriteError, build_checkpoint, save_checkpoint
from monitor.checkpoint.file import plain_value
from monitor.checkpoint.folder import (LOCK, MANIFEST, checkpoint_name, claim, finish, finish_earlier, is_finished,
                                       mark_kept, mark_trained, prune, read_manifest, refuse_another_run, retain,
                                       set_aside, write_manifest)
from monitor.checkpoint.resume import ResumePoint, find_start, named_schedulers, restore_parts
from monitor.core import Callback, Continuation, LoopState, Monitor
from monitor.distributed import gather_on_main, on_main, rank_and_world_size
from monitor.log import Log
from monitor.models import unwrap_model
from monitor.records import StepMark, interactive
from monitor.rundir import FolderLock, RunDir
from monitor.checkpoint.rng import capture_rng

_log = logging.getLogger("monitor")
# The Checkpoints of this process that put a run back, while their Monitor lives: two at once
# (a Monitor per model of one loop) restore the process's random state in turn, from files
# that a kill between their saves left at different points of the loop.
_RESUMED: weakref.WeakSet = weakref.WeakSet()

REQUEUE_EXIT_STATUS = 75  # EX_TEMPFAIL: "try again", what a job saved on a pre-emption signal exits with


class Checkpoint(Callback):
    """Writes the model, optimizer, scheduler, scaler, RNG, loop position and every callback's state.

        checkpoint = Checkpoint("runs/mnist/checkpoints", every_epochs=1, metric="loss", keep_best=2)
        monitor = Monitor([Scalars(), checkpoint], env="mnist")   # last, so it holds what the others logged

    Saves every ``every_steps`` steps (at step_end), every ``every_epochs`` epochs (at
    epoch_end) and at train_end (``at_end``; not after an exception). Keeps the last
    ``keep_last`` files and the best ``keep_best`` by ``metric`` (``mode`` "min" or "max"; by
    default "min" for a loss or an error, by its name, else "max"), read from the metrics the
    loop passes at ``metric_from``: "validation", "step" (where "loss" is the step's loss) or
    "epoch"; a checkpoint gets the value measured since the one before it, if any, or that of a
    validation right after it (after the batches loop or ``epoch_end``, before the next step).
    ``best_path`` is the best one's file, for the best weights after training (an early stop's).
    ``scheduler`` is one lr scheduler or several (a list, a warm-up's and a plateau's, or a dict
    by name). ``extras()`` returns the user's own tensors and primitives to keep.
    ``save_frozen=False`` leaves the frozen parameters (``requires_grad=False``) out of the
    files: a fine-tuning loop's pretrained base, which it loads itself before ``train_start``,
    as LoRA adapters are kept apart from their base. A folder
    belongs to one run: a fresh run refuses a folder that holds another run's checkpoints
    instead of mixing with or deleting them.

    ``resume=True`` makes a re-run of the same command continue: the Monitor rewinds the run
    log to the latest checkpoint, ``train_start`` restores the model, optimizer, ``scheduler``,
    ``scaler``, every random generator and the callbacks' states, and ``monitor.epochs`` /
    ``monitor.batches`` go on from the next batch. A folder whose run finished (``train_end``
    without an exception), or ``fresh=True``, starts a new run instead: the earlier run's files
    move to ``DIR/earlier/<run id>/``. ``extend=True`` continues a finished run too: train it
    further by raising ``monitor.epochs(n)`` and running the command again. With ``resume``,
    SIGTERM or SIGUSR1 (a scheduler's pre-emption) saves a checkpoint at the next step's end
    (after its validation, where the loop validates inside its batches loop) and exits with
    status 75 (``REQUEUE_EXIT_STATUS``), for the job to be run again (single-process runs; a
    signal the program handles itself is left to it).

    A write that fails raises :class:`monitor.checkpoint.CheckpointWriteError` out of the hook.
    It is not an ``Exception``, so the Monitor's containment of callback errors lets it through
    and the loop stops: going on without the checkpoints one asked for is worse than stopping.

    Under torch.distributed it runs on every rank: rank 0 writes the file (the model unwrapped
    from DDP, every rank's random state) while the others wait for it, and a failed write stops
    every rank. ``directory`` must be one folder all ranks can read, for ``resume``.
    """

    def __init__(self, directory: str | Path, *, every_steps: int | None = None, every_epochs: int | None = None,
                 at_end: bool = True, keep_last: int = 2, keep_best: int | None = None, metric: str | None = None,
                 mode: str | None = None, metric_from: str = "validation", scheduler: Any = None, scaler: Any = None,
                 extras: Callable[[], Mapping[str, Any]] | None = None, resume: bool = False,
                 fresh: bool = False, extend: bool = False, save_frozen: bool = True) -> None:
        if not isinstance(directory, (str, Path)) or not str(directory):
            raise TypeError(f"directory must be a non-empty str or Path, got {directory!r}")
        self.directory = Path(directory).expanduser().absolute()  # a later chdir (Hydra's) must not move it
        self.every_steps = positive_int("every_steps", every_steps) if every_steps is not None else None
        self.every_epochs = positive_int("every_epochs", every_epochs) if every_epochs is not None else None
        if self.every_steps is None and self.every_epochs is None and not at_end:
            raise ValueError("every_steps, every_epochs or at_end must ask for a checkpoint, got none of them")
        self.at_end = bool(at_end)
        self.keep_last = positive_int("keep_last", keep_last)
        if metric is not None:
            text("metric", metric)
        keep_best = integer("keep_best", 1 if metric and keep_best is None else keep_best or 0, minimum=0)
        if keep_best and metric is None:
            raise ValueError(f"metric must be given to rank checkpoints for keep_best={keep_best}, got None")
        self.keep_best, self.metric = keep_best, metric
        if mode is None and metric is not None:  # as `monitor runs` ranks: losses and errors lowest, by name
            from monitor.runs import best_mode, named_a_score
            mode = best_mode(metric)
            if mode == "max" and not named_a_score(metric):
                _log.warning("monitor: Checkpoint(metric=%r) keeps the highest as best: its name is neither a loss's "
                             "or an error's nor a score's; pass mode='min' if lower is better (mode='max' says "
                             "this is right)", metric)
        self.mode = one_of("mode", mode or "min", ("min", "max"))
        self.metric_from = one_of("metric_from", metric_from, ("validation", "step", "epoch"))
        scheduler = named_schedulers(scheduler)
        parts = ({f"scheduler[{key!r}]": one for key, one in scheduler.items()} if isinstance(scheduler, Mapping)
                 else {"scheduler": scheduler})
        for name, part in {**parts, "scaler": scaler}.items():
            if part is not None and not callable(getattr(part, "state_dict", None)):
                raise TypeError(f"{name} must have state_dict()/load_state_dict(), got {type(part).__name__}")
        if extras is not None and not callable(extras):
            raise TypeError(f"extras must be a function returning a dict, got {type(extras).__name__}")
        self.scheduler, self.scaler, self.extras = scheduler, scaler, extras
        self.resume, self.fresh = boolean("resume", resume), boolean("fresh", fresh)
        self.extend = boolean("extend", extend)
        self.save_frozen = boolean("save_frozen", save_frozen)
        if self.extend and (self.fresh or not self.resume):
            raise ValueError(f"extend continues a finished run: it needs resume=True and not fresh, got "
                             f"resume={self.resume}, fresh={self.fresh}")
        self.start: ResumePoint | None = None  # where a resume continues (resume or fresh only)
        self._saved: dict[str, Any] | None = None  # the checkpoint train_start restores
        self._stop_signal: int | None = None
        self._requeue: SystemExit | None = None  # the exit for requeue, once the run is closed
        self._stopping: str | None = None  # the signal's name, once its step's checkpoint is written
        self._handlers: dict[int, Any] = {}
        self._set_aside = False  # a new run: the folder's earlier checkpoints move at train_start
        self.run_id: str | None = None
        self._monitor: Monitor | None = None
        self._model: torch.nn.Module | None = None  # the model the run trains, unwrapped (one per resumable run)
        self._step_hooks: list[Any] = []  # on the optimizers: a step after step_end is said once
        self._ended_begun_step = False  # the last step_end ended a step after_backward began
        self._said_late_step = False
        self._trained_here = False  # a step ended, or an optimizer stepped, in this process
        self._steps_unstepped = 0  # step_ends in a row with no step of an optimizer train_start was given
        self._looked_inside = False  # whether an optimizer's own inner optimizer (SAM's) was looked at
        self._given_rates: list[float | None] | None = None  # the lr the run's latest train_start was given
        self._records: list[dict[str, Any]] = []
        self.before_save: list[Callable[[], None]] = []  # run first by every save (a Guard's last check)
        self._metric_value: float | torch.Tensor | None = None  # a device tensor is read only when saving
        self._metric_at: int | None = None  # the step whose weights it measured
        self._said_unvalidated = False
        self._told_missing = False  # that the metric is not among those the loop passes, or was seen
        self._told_shared = False  # that a resume cannot go back into the middle of a batch
        self._check_loop = False
        self._epoch_done = False
        self._last_saved: list | None = None
        self._unpointed = False  # a scheduled checkpoint written, latest.json not yet at it (every rank)
        self._validates_after_saving = False  # seen a validation_end at the step of a scheduled save
        self._pointer: tuple | None = None  # what latest.json is to say of it (rank 0)
        self._continues_from: int | None = None  # the run-log position of a save, until the loop's next
                                                 # batch, step or epoch says its step's code is over (rank 0)
        self._every_rank_validates = False  # under DDP: said by Scalars(average_validation=True)
        self._point_at_next_batch = False  # the step's checkpoint written again at validation_end: latest then
        self._schedule_at_save: tuple | None = None  # (scheduler, its position, epoch) at a step's save
        self._saved_at_epoch_end: tuple | None = None  # in the epoch_end checkpoint: its scheduler, last_epoch, extras
        self._said_changed_after = False
        self._ranks: list[tuple] | None = None  # (random state, batches position) of every rank at the last save
        self._aborted = False
        self._claimed = False
        self._lock = FolderLock(self.directory / LOCK)  # held by the writing process while the run lasts

    @property
    def best_path(self) -> Path | None:
        """The file of the best checkpoint by ``metric`` (None before one, or without a metric):
        this run's, or before it has written one, the folder's (a finished run's), to load the
        best weights after training:

            model.load_state_dict(torch.load(checkpoint.best_path, weights_only=True)["model"])
        """
        if self._records:
            best = retain(self._records, self.keep_last, self.keep_best, self.mode)[2]
        else:
            best = (read_manifest(self.directory, warn=False) or {}).get("best") or []
        return self.directory / best[0] if best else None

    @property
    def finished(self) -> bool:
        """Whether the folder holds a run that finished: a script that trains several runs in
        turn (a cross-validation's folds), run again after a kill, skips those done:

            if checkpoint.finished:
                model.load_state_dict(torch.load(checkpoint.best_path, weights_only=True)["model"])
        """
        return is_finished(self.directory)

    def continues_run(self) -> Continuation | None:
        """With ``resume`` or ``fresh``: finds where the run continues, and says where its run log does.

        A new run's earlier checkpoints are set aside only at train_start, once the Monitor's
        sink holds the run's folder: a second process of a live run moves nothing.
        """
        if not (self.resume or self.fresh):
            refuse_another_run(self.directory, self.run_id)  # now, before the Monitor sets the env's run aside
            return None
        on_main(self._lock_directory)  # before reading it: another live job's checkpoints are not ours to take
        self._set_aside = on_main(self._starts_a_new_run)
        if self._set_aside:
            self.start, self._saved = ResumePoint(path=None), None
        else:
            self.start, self._saved = find_start(self.directory, missing_ok=True)
        return Continuation(self.start.env, self.start.runlog_position or 0, self.start.run_id, self.start.run_dir)

    def _starts_a_new_run(self) -> bool:
        """``fresh``, or a run that finished: the command run again trains anew, unless ``extend``,
        or a scheduler requeued the job (stopped after training, in the script's own last work)."""
        if self.fresh or self.extend or not is_finished(self.directory):
            return self.fresh
        again = preemption.requeued()
        if again is not None:
            _log.warning("monitor: the run in %s had finished and this job was requeued (%s): it continues that "
                         "run, with nothing left to train, instead of training anew (fresh=True starts over)",
                         self.directory, again)
        return again is None

    def check_among(self, callbacks: list[Callback]) -> None:
        if not callbacks or callbacks[-1] is not self:
            where = next((i for i, c in enumerate(callbacks) if c is self), None)
            raise ValueError(f"this Checkpoint must be the last of the monitor's callbacks, so that a checkpoint "
                             f"holds what the others logged for its step; got it at index {where} of "
                             f"{len(callbacks)}")

    def without_scaler(self) -> str | None:
        return None if self.scaler is not None else \
            "its checkpoints leave the scale out (a resumed run starts again from init_scale)"

    def on_attach(self, monitor: Monitor) -> None:
        """Lets this callback save the state of ``monitor``'s loop and of all its callbacks."""
        if not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a monitor.Monitor, got {type(monitor).__name__}")
        self.check_among(monitor.callbacks)
        self._monitor = monitor
        self._model = None
        if self.start is not None and self.start.path is not None:
            if self.extend:  # a run trained further: its epochs go on past its train_end
                self.start.monitor_state["trained"] = False
            # The Monitor was built on the checkpoint's run-log position, and its sink said so where
            # the log is shorter (gone, another working directory): no advice for the manual form.
            self.start.restore(monitor, check_runlog=False)

    # --- hooks --------------------------------------------------------------------------------
    def on_train_start(self, state: LoopState, log: Log) -> None:
        self._aborted = False
        monitor = self._require_monitor()
        model = unwrap_model(state.model) if state.model is not None else None
        if self.resume and model is not None and self._model is not None and model is not self._model:
            raise CheckpointResumeError(
                f"train_start was given another model in a run whose Checkpoint resumes: run again, the command "
                f"would put the latest checkpoint in {self.directory}, this model's, back into the first model; "
                f"give each model (a fold, a trial) a Monitor and a Checkpoint folder of its own")
        self._model = model
        self._check_extras()
        if self._given_rates is None or self._saved is None:  # a resumed run's are its checkpoint's
            self._given_rates = _rates(state)  # a new phase's optimizer (train_start again): its own
        self._watch_optimizer_steps(state)
        # Under DDP, a validation every rank runs (said by averaging it) lets every rank save at its end.
        self._every_rank_validates = any(getattr(c, "average_validation", False) for c in monitor.callbacks)
        if self._saved is not None:
            self._restore(state)
        if self._set_aside:
            self._set_aside = False
            on_main(self._set_earlier_aside)
        on_main(self._claim_directory)  # another run's folder stops every rank, not just rank 0
        on_main(lambda: finish_earlier(self.directory))
        self._say_what_is_not_kept(state)
        if self.resume:
            self._catch_preemption()

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        self._point_at_written()
        self._exit_if_stopping()
        self._epoch_done = False
        self._say_if_changed_after_saving()

    def _say_if_changed_after_saving(self) -> None:
        """Once: the scheduler stepped, or ``extras`` changed, after epoch_end wrote the epoch's
        checkpoint (Lightning's order: the epoch's logging, then the scheduler and early stopping's
        bookkeeping), so a resume from it goes on a step behind them."""
        saved_at, self._saved_at_epoch_end = self._saved_at_epoch_end, None
        if saved_at is None or self._said_changed_after or self._monitor.rank != 0:
            return
        scheduler, last_epoch, extras = saved_at
        late = []
        if scheduler is self.scheduler and _schedule(scheduler) != last_epoch:
            late.append("the lr scheduler stepped")  # the same scheduler, not a later phase's set since
        try:
            now = _plain_values(self._extras())
        except Exception:  # said where a save calls it
            now = {}
        changed = sorted(name for name in extras.keys() & now.keys() if not _same(extras[name], now[name]))
        if changed:
            shown = ", ".join(f"{name}: {extras[name]!r} then {now[name]!r}" for name in changed[:3])
            late.append(f"Checkpoint(extras=...) changed ({shown})")
        if late:
            self._said_changed_after = True
            _log.warning("monitor: %s after epoch_end() wrote the epoch's checkpoint (step %d): a run resumed from it "
                         "goes on a step behind; step the scheduler and update what extras keeps (an early stop's "
                         "best and patience) before monitor.epoch_end(...)", " and ".join(late),
                         self._last_saved[0] if self._last_saved else 0)

    def _say_if_stepped_after_step_end(self) -> None:
        """Once: the scheduler stepped after a step's checkpoint was written, before the loop's next
        batch of the same epoch (PPO's annealing after an iteration's last update), so a resume
        from it goes on a schedule step behind. Code after the batches loop runs again on a resume
        (the epoch's end follows the last step's checkpoint again): not said for it."""
        saved, self._schedule_at_save = self._schedule_at_save, None
        monitor = self._monitor
        if saved is None or self._said_changed_after or monitor.rank != 0 or self._epoch_done or \
                not (monitor.in_batches or monitor.in_steps):
            return
        scheduler, position, epoch, extras = saved
        if epoch != monitor.state.epoch:
            return
        if scheduler is self.scheduler and _schedule(scheduler) != position:
            self._said_changed_after = True
            _log.warning("monitor: the lr scheduler stepped after step_end() wrote the checkpoint of step %d, before "
                         "the loop's next batch: a run resumed from it goes on a schedule step behind (what a saved "
                         "step does after its step_end is not run again); step the scheduler before "
                         "monitor.step_end(...), or, at a validation there, before monitor.validation_end(...)",
                         self._last_saved[0] if self._last_saved else 0)
            return
        now = _watched(self._extras)
        changed = sorted(name for name in extras.keys() & now.keys() if not _same(extras[name], now[name]))
        if changed:
            self._said_changed_after = True
            _log.warning("monitor: Checkpoint(extras=...) changed after step_end() wrote the checkpoint of step %d, "
                         "before the loop's next batch (%s): a run resumed from it goes on from their values before "
                         "that (what a saved step does after its step_end is not run again; a generator kept there "
                         "draws the same numbers again); change them before monitor.step_end(...), or draw "
                         "samples from a generator seeded by the step, torch.Generator().manual_seed(seed + "
                         "monitor.state.step)", self._last_saved[0] if self._last_saved else 0, ", ".join(changed[:3]))

    def on_step_end(self, state: LoopState, log: Log) -> None:
        # The step before is over, its validation included. (Not at after_backward: a hook there
        # would cost every step of every loop; a kill in this step goes back one step further.)
        self._point_at_written()
        self._exit_if_stopping()
        self._epoch_done = False
        self._trained_here = True
        self._ended_begun_step = self._monitor.in_step
        self._steps_unstepped += 1
        if self._steps_unstepped == 51 and self._step_hooks:  # the step whose optimizer stepped counts 1
            _log.warning("monitor: no optimizer given to train_start has stepped in the last 50 steps (to step %d): "
                         "where the loop made a new one (a new task's, a phase's), give it to "
                         "monitor.train_start(model, optimizer) again: the learning rate, gradient norms and "
                         "checkpoints follow the optimizers it was given", state.step)
        if self._check_loop:
            self._check_loop = False
            monitor = self._monitor
            if not (monitor.in_batches or monitor.in_steps) and (self.start.skip_batches or not monitor.in_epochs):
                start = self.start  # a loop counted in steps (no epochs) is at an epoch 0 of all its steps
                where = f"step {start.step}" + (f" (epoch {start.epoch}, {start.skip_batches} batches done)"
                                                if start.epoch or monitor.in_epochs else "")
                _log.warning("monitor: the run continues from %s in a loop that takes %s: one that counts on from "
                             "monitor.state.step or checkpoint.start goes on where it left off, one that counts from 0 "
                             "again trains on what was done again (iterate monitor.epochs(n) and "
                             "monitor.batches(loader) to skip it; a loop counted in steps, `for batch in "
                             "monitor.batches(loader):` inside `while True:`; monitor.steps(n) in a loop without a "
                             "loader)", where,
                             "its own batches" if monitor.in_epochs or not start.epoch else "its own epochs and batches")
            elif monitor.in_steps and not monitor.in_batches and _reads_a_loader():
                _log.warning("monitor: the run continues from step %d in a monitor.steps loop that reads a DataLoader "
                             "itself: the loader starts over from its first batch (a stream's too), so the batches "
                             "of the steps done are trained on again; draw them through monitor.batches, batches = "
                             "iter(monitor.batches(loader)) and next(batches) each step, to go on after them",
                             self.start.step)
        if self.metric_from == "step":
            self._note_metric(state.metrics, state.loss)
        if self.every_steps and state.step % self.every_steps == 0:
            self._save(point=None)
        if self._stop_signal is not None:
            self._stop_for_requeue(state)

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        if state.validated_step is not None:  # off the loop (a thread's evaluation of an earlier copy)
            self._rank_off_the_loop(state)
            return
        if self.metric_from == "validation" and state.main_validation:  # not an EMA copy's after it
            self._note_metric(state.metrics)
        if (self._monitor.in_batches or self._monitor.in_steps) and self._monitor.in_ended_step:
            # A loop that validates inside its batches (or steps) loop, after a step_end (at a save's step or
            # not): from now on a step's checkpoint becomes the latest at the next step's end, after any
            # validation. (One at the top of the next iteration, nanoGPT's, is run again by a resume.)
            self._validates_after_saving = True
            if self._last_saved == [state.step, state.epoch, self._epoch_done]:
                # After the step's checkpoint: that again, with the validation (its random numbers,
                # its point, the metric it ranks by), or a resume would go on with the next batch and
                # skip it. (One after the loop runs again on a resume, as the rest of the epoch does.)
                # In one process, the latest once the loop goes on to its next batch (or step, or the
                # epoch's end): what it does after validation_end (a language model's samples, its
                # adapters saved) is the validation's too, and a kill in it validates again. (Under DDP
                # at once: rank 0 alone takes the next batch's action, and pointing is a collective.)
                if self._monitor.world_size == 1:
                    self._save(point=False)
                    self._point_at_next_batch = True
                elif self._every_rank_validates:
                    self.save()  # a collective, as Scalars' averaging of the validation is
                elif self._monitor.rank == 0:  # a validation that may run on rank 0 alone: no collective
                    self._write_again_alone()
        elif self._metric_value is not None and self._last_saved is not None and self._last_saved[0] == state.step:
            # A validation after the batches loop or epoch_end, at the step of the checkpoint written
            # last (no step since): it measured that checkpoint's weights, so it ranks that one.
            metric, self._metric_value = float(self._metric_value), None  # a save has just read the device
            if self._monitor.rank == 0:  # its records and folder: no collective (it may validate alone)
                self._rank(checkpoint_name(state.step), metric)
        self._exit_if_stopping()

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        self._point_at_written()  # a resume from the last step's checkpoint ends the epoch again
        self._exit_if_stopping()
        self._epoch_done = True
        if self.metric_from == "epoch":
            self._note_metric(state.metrics)
        if self.every_epochs and (state.epoch + 1) % self.every_epochs == 0:
            self._save(point=None)
            self._saved_at_epoch_end = (self.scheduler, _schedule(self.scheduler),
                                       _plain_values(self._extras()))
        if self._stop_signal is not None:  # came after the epoch's last step, in its validation: saved with it
            self._stop_for_requeue(state)

    def on_exception(self, state: LoopState, log: Log, error: BaseException) -> None:
        self._aborted = True  # the loop may be half-way through a step: nothing consistent to save
        self._stopping = None
        if self._last_saved is not None and state.step > self._last_saved[0]:
            self._point_at_written()  # a later step failed: the one written is over, its validation too
        if self._stop_signal is not None and isinstance(error, RuntimeError) and \
                str(error).startswith("DataLoader worker"):
            self._requeue_after_workers_died(signal.Signals(self._stop_signal).name, error)

    def _requeue_after_workers_died(self, name: str, error: RuntimeError) -> None:
        """The scheduler's signal reached the workers of a loader not iterated through
        ``monitor.batches`` (a validation's), which died, and torch raised in the loop wherever it
        was: no state to save, but the job goes on from its latest checkpoint if requeued. The
        exit for requeue comes at train_end, once the run is closed (the Checkpoint is the last
        callback: every other has had its train_end)."""
        self._stop_signal = None
        since = f"the checkpoint of step {self._last_saved[0]}" if self._last_saved else "its start (no checkpoint yet)"
        _log.warning("monitor: %s killed the workers of a DataLoader not iterated through monitor.batches (%s), "
                     "which stopped the loop: the job goes on from %s; exiting with status %d to be run again",
                     name, error, since, REQUEUE_EXIT_STATUS)
        self._requeue = SystemExit(REQUEUE_EXIT_STATUS)
        self._requeue.__cause__ = error
        self._monitor.exception(self._requeue)  # the run's end says so, not the workers' error

    def on_train_end(self, state: LoopState, log: Log) -> None:
        self._release_signals(exiting=self._requeue is not None and not interactive())
        self._stopping = None  # the signal came in the last step: the run is done
        position = [state.step, state.epoch, self._epoch_done]
        if self.at_end and not self._aborted and position != self._last_saved:
            self.save()
        elif not self._aborted:
            self._point_at_written()
        if not self._aborted:
            on_main(lambda: self._trained(state.step))
        self._unwatch_optimizer_steps()
        self._lock.release()
        requeue, self._requeue = self._requeue, None
        if requeue is not None:
            raise requeue

    def _trained(self, step: int) -> None:
        """At train_end: a resume from this step's checkpoint has no epochs left to run, and a re-run
        of the command starts a new run (once this script ends well, or begins another run)."""
        if self._claimed:
            mark_trained(self.directory, step)
            finish(self.directory)

    def _watch_optimizer_steps(self, state: LoopState) -> None:
        """Hooks the optimizers' steps: one that comes after the step_end of a step after_backward
        began means the step's checkpoint holds its weights before the update (said once)."""
        self._unwatch_optimizer_steps()
        self._steps_unstepped = 0
        me = weakref.ref(self)

        def stepped(optimizer: Any, args: tuple, kwargs: dict) -> None:
            owner = me()
            if owner is not None:
                owner._trained_here, owner._steps_unstepped = True, 0
            # A closure's step (LBFGS; args hold the optimizer, then the closure) may come before
            # after_backward, which then follows it.
            if owner is not None and owner._ended_begun_step and not owner._said_late_step and \
                    owner._monitor is not None and not owner._monitor.in_step and len(args) < 2 and not kwargs:
                owner._said_late_step = True
                _log.warning("monitor: optimizer.step() came after step_end (step %d) and before the next "
                             "after_backward: where it is the step's own update, the step's checkpoints hold the "
                             "weights from before it, and a resume from one loses it; call after_backward before "
                             "optimizer.step() and step_end after it", owner._monitor.state.step)

        self._step_hooks = [optimizer.register_step_post_hook(stepped) for optimizer in state.optimizers.values()
                            if callable(getattr(optimizer, "register_step_post_hook", None))]

    def _unwatch_optimizer_steps(self) -> None:
        for hook in self._step_hooks:
            hook.remove()
        self._step_hooks = []

    def _say_what_is_not_kept(self, state: LoopState) -> None:
        """Warns of state the loop has and no checkpoint will hold: a GAN's ``train_start(G, {"G":
        opt_g, "D": opt_d})`` (D's weights), a scheduler the Checkpoint was not given."""
        if state.model is not None:
            kept = self._extra_tensors()
            held = {id(p) for p in state.model.parameters()} | {id(t) for t in kept}
            copied = {_place(t) for t in kept}  # a state_dict()'s detached tensors: the parameters' own memory
            outside = []
            for name, optimizer in state.optimizers.items():
                groups = [repr(group["name"]) if group.get("name") else str(i)
                          for i, group in enumerate(optimizer.param_groups)
                          if any(id(p) not in held and _place(p) not in copied for p in group["params"])]
                if groups:
                    outside.append(f"optimizer {name}" if len(groups) == len(optimizer.param_groups) else
                                   f"optimizer {name}'s group{'s' if len(groups) > 1 else ''} {', '.join(groups)}")
            if outside:
                _log.warning("monitor: %s updates parameters outside the model given to train_start: their values "
                             "are not in the checkpoints (give train_start a module holding them all, or keep them "
                             "in Checkpoint(extras=lambda: {...}) and set them back from checkpoint.start.extras)",
                             "; ".join(outside))
        scheduled = [name for name, optimizer in state.optimizers.items()
                     if any("initial_lr" in group for group in optimizer.param_groups)]  # an LRScheduler's mark
        if scheduled and self.scheduler is None:
            _log.warning("monitor: an lr scheduler steps optimizer %s, and Checkpoint was given no scheduler=: "
                         "its state is not saved, so a resumed run starts its schedule over", ", ".join(scheduled))
        elif scheduled:
            held = _schedulers_in(self.scheduler)
            unheld = [name for name in scheduled if not any(
                getattr(one, "optimizer", None) is state.optimizers[name]
                and not isinstance(one, torch.optim.lr_scheduler.ReduceLROnPlateau) for one in held)]
            if unheld:  # a warm-up's LambdaLR beside the plateau given
                _log.warning("monitor: an lr scheduler steps optimizer %s, and Checkpoint(scheduler=...) does not "
                             "hold it (a ReduceLROnPlateau aside): its state is not saved, so a resumed run starts its "
                             "schedule over (a warm-up starts again); give every scheduler the loop steps, e.g. "
                             "scheduler=[warmup, plateau]", ", ".join(unheld))

    # --- saving -------------------------------------------------------------------------------
    def save(self) -> Path:
        """Writes a checkpoint of the loop as it is now and prunes old ones; returns its path.

        Raises CheckpointWriteError on failure. Under torch.distributed every rank must call it
        (the hooks do): rank 0 writes, as every rank holds the same weights, and each rank's
        random state goes with them; the others return once the file is on disk.

        A ``validation_end`` inside a ``monitor.batches`` loop, at the step of a checkpoint the
        hooks wrote, writes it again with the validation done; from then on, such a checkpoint
        becomes the latest (in ``latest.json``) only at the next step's end, so a run killed
        during the validation resumes from the checkpoint before and validates again.
        """
        return self._save(point=True)

    def _save(self, point: bool | None) -> Path:
        """Writes a checkpoint on rank 0; ``point`` None: latest.json at it unless validations
        follow the saves (then at the next step's end), as rank 0 knows (it may validate alone)."""
        monitor = self._require_monitor()
        for hook in self.before_save:
            hook()
        state = monitor.state
        if monitor.steps_share_batches and not self._told_shared and monitor.rank == 0:
            self._told_shared = True
            _log.warning("monitor: the loop takes several steps from one batch of monitor.batches (truncated "
                         "backpropagation through time's chunks?): a run resumed from a checkpoint of a step in the "
                         "middle of a batch goes on with the next batch, the rest of this one untrained; draw each "
                         "chunk through monitor.batches, `for chunk in monitor.batches(chunks(loader)):`, and keep "
                         "the hidden state in extras, to resume exactly")
        # On every rank, so that all of them agree on whether train_end still has to save.
        self._last_saved = [state.step, state.epoch, self._epoch_done]
        rng, positions = capture_rng(), None
        if monitor.world_size > 1:  # each rank's own random state and place in its epoch's batches
            self._ranks = gather_on_main((rng, monitor.batches_position()))
            rng, positions = self._of_every_rank(rng)

        def write() -> tuple[Path, bool]:
            pointed = not self._validates_after_saving if point is None else point
            return self._write(monitor, rng, pointed, positions), pointed

        path, pointed = on_main(write)
        self._unpointed = not pointed
        return path

    def _write_again_alone(self) -> None:
        """Rank 0 writes the step's checkpoint again after a validation no other rank may share
        (no collective): with its own random state now and the other ranks' as saved."""
        rng, positions = self._of_every_rank(capture_rng())
        self._write(self._require_monitor(), rng, True, positions)

    def _of_every_rank(self, rng: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """(rank 0's random state ``rng`` with every rank's under ``ranks``, every rank's batches
        position): rank 0's now, the others' as gathered at the last save (rank 0)."""
        if self._ranks is None:
            return rng, None
        others = self._ranks[1:]
        return ({**rng, "ranks": [rng] + [r for r, _ in others]},  # rank 0's tensors stored once
                [self._monitor.batches_position()] + [p for _, p in others])

    def keep_before(self, step: int, reason: str) -> str | None:
        """Keeps the latest checkpoint from before ``step`` out of pruning for good; returns its file name."""
        earlier = [r for r in self._records if r["step"] < step]
        if not earlier:
            return None
        record = max(earlier, key=lambda r: r["step"])
        record["kept"] = reason
        if rank_and_world_size()[0] == 0 and self._claimed:  # said in the folder at once: a crash keeps it too
            mark_kept(self.directory, self._records)
        return record["file"]

    def _write(self, monitor: Monitor, rng: dict[str, Any], point: bool,
               positions: list[dict[str, Any]] | None = None) -> Path:
        self._claim_directory()
        state = monitor.state
        if state.model is None:
            raise CheckpointWriteError("a checkpoint needs the model: pass it to monitor.train_start(model, "
                                       "optimizer), got None")
        if not self._looked_inside:  # once its optimizers have state: after their first step
            self._looked_inside = True
            _say_what_wrappers_leave_out(state.optimizers)
        path = self.directory / checkpoint_name(state.step)
        # The value measured since the last save is this checkpoint's; a save after it, before the
        # next measurement, has none (it would claim a validation it was not given).
        metric, self._metric_value = self._metric_value, None
        measured_at, self._metric_at = self._metric_at, None
        if isinstance(metric, torch.Tensor):  # saving reads the device anyway
            metric = float(metric)
        if metric is not None and measured_at is not None and measured_at != state.step and \
                not self._said_unvalidated and self._monitor.rank == 0:
            self._said_unvalidated = True
            n = self.every_epochs or self.every_steps
            when = (f" (every_epochs={n} writes after epochs {n - 1}, {2 * n - 1}, ...: validate when (epoch + 1) % "
                    f"{n} == 0)" if self.every_epochs else f" (every_steps={n}: steps {n}, {2 * n}, ...)" if n else "")
            _log.warning("monitor: the checkpoint of step %d is ranked by the %s of step %d (%s %.6g): its weights "
                         "had %d more updates, which nothing measured, so the checkpoint kept as best may not hold "
                         "the best weights; validate at the steps checkpoints are written%s, or write one after the "
                         "validation, checkpoint.save()", state.step, self.metric_from, measured_at, self.metric,
                         metric, state.step - measured_at, when)
        if metric is None:  # the step's checkpoint written again (its epoch_end after its validation)
            metric = next((r["metric"] for r in self._records if r["file"] == path.name), None)
        record = {"file": path.name, "step": state.step, "epoch": state.epoch, "batch": state.batch,
                  "epoch_done": self._epoch_done, "metric": metric, "time": time.time()}
        if record["metric"] is not None and not math.isfinite(record["metric"]):
            record["metric"] = None
        kept, last, best = retain([*self._records, record], self.keep_last, self.keep_best, self.mode)
        # This checkpoint's own state must already say what the folder holds once it is written.
        self._records = kept
        if self._continues_from is not None:  # saved again at a later point of the step (after its validation):
            monitor.sink.put(StepMark("continues", self._continues_from))  # the mark goes before this one's position
            self._continues_from = None
        try:
            position = monitor.sink.sync()
            if position is None and monitor.sink.position is not None:
                _log.warning("monitor: the run log did not reach the disk in time for checkpoint %s; "
                             "after a resume from it the dashboard may show steps twice", path.name)
            loop = monitor.state_dict()
            checkpoint = build_checkpoint(
                model=state.model, optimizer=_optimizers(state), scheduler=self.scheduler,
                scaler=self.scaler or state.scaler,
                loop={**loop, "epoch_done": self._epoch_done, "ranks": positions}, rng=rng,
                callbacks=loop["callbacks"],
                run={"env": monitor.sink.env, "run_id": self.run_id, "runlog_position": position,
                     "run_dir": _absolute(getattr(monitor.sink, "run_dir", None))},
                metric={"name": self.metric, "value": metric, "mode": self.mode}, save_frozen=self.save_frozen,
                extras=self._extras())
            save_checkpoint(path, checkpoint)
        except Exception as error:
            interrupt = _raised_in(error, KeyboardInterrupt)
            if interrupt is not None:  # Ctrl-C in torch's zip writer, which then failed on its own
                raise interrupt from None
            cause = _raised_in(error, OSError) or error  # a full disk shows as torch's own error around it
            raise CheckpointWriteError(f"checkpoint {path} could not be written: {type(cause).__name__}: "
                                       f"{cause}") from error
        self._pointer = (path, checkpoint["run"]["env"], last, best, kept)
        if point:
            self._point()
        if position is not None:
            # What the rest of the step's code logs (a clip norm, a validation, an episode's return)
            # is never logged again by a run resumed from this checkpoint: marked, it stays in the
            # log (entries.resumes_at).
            monitor.sink.put(StepMark("rest_of_step", position))
            monitor.sink.sync()  # the mark on disk: a kill in the rest of the step keeps what reached the log
            self._continues_from = position
            # Where a step's (not an epoch's) checkpoint left the schedule: the rest of the step is
            # never run again by a resume, so a scheduler stepped in it is a step behind.
            self._schedule_at_save = None if self._epoch_done else (self.scheduler, _schedule(self.scheduler),
                                                                    state.epoch, _watched(self._extras))
            monitor.at_next_batch(self._at_next_batch)
        return path

    def _at_next_batch(self) -> None:
        """Before the loop's next batch, step or epoch (or its end): the saved step's code is over."""
        self._say_if_stepped_after_step_end()
        if self._continues_from is not None:
            self._monitor.sink.put(StepMark("continues", self._continues_from))
            self._continues_from = None
            # What the saved step's code logged after the save (never run again by a resume) is in the
            # run log before the next step trains: a kill from here on keeps it.
            self._monitor.sink.sync()
        if self._point_at_next_batch:  # the validation written with it is over, and what followed it
            self._point_at_next_batch = False
            self._point_at_written()
        self._exit_if_stopping()

    def _point_at_written(self) -> None:
        """Makes the checkpoint written last the latest, if it is not yet (every rank calls it)."""
        if self._unpointed:
            self._unpointed = False
            on_main(self._point)

    def _point(self) -> None:
        """``latest.json`` at the checkpoint written last, then the files it no longer keeps pruned."""
        pointer, self._pointer = self._pointer, None
        if pointer is None:
            return
        path, env, last, best, kept = pointer
        try:
            write_manifest(self.directory, run_id=self.run_id, latest=path.name, env=env,
                           metric={"name": self.metric, "mode": self.mode}, last=last, best=best, records=kept)
        except Exception as error:
            cause = _raised_in(error, OSError) or error
            raise CheckpointWriteError(f"{self.directory / MANIFEST} could not be written to point at {path}: "
                                       f"{type(cause).__name__}: {cause}") from error
        prune(self.directory, {r["file"] for r in kept})

    def _rank_off_the_loop(self, state: LoopState) -> None:
        """A validation of the weights of ``state.validated_step``, made while the loop went on,
        ranks the checkpoint of that step, if one was written; the next save's metric is its own."""
        if self.metric_from != "validation" or not state.main_validation or self._monitor.rank != 0:
            return
        value = state.metrics.get(self.metric) if self.metric else None
        if value is not None:
            self._rank(checkpoint_name(state.validated_step), float(value))

    def _rank(self, name: str, metric: float) -> None:
        """Gives checkpoint ``name`` (rank 0) ``metric``: in the records its later checkpoints hold,
        and in ``latest.json`` now, which stays at the checkpoint written last."""
        record = next((r for r in self._records if r["file"] == name), None)
        if record is None:
            return
        record["metric"] = metric if math.isfinite(metric) else None
        kept, last, best = retain(self._records, self.keep_last, self.keep_best, self.mode)
        self._records = kept
        pending = self._pointer
        latest = pending[0] if pending is not None else self.directory / checkpoint_name(self._last_saved[0])
        self._pointer = (latest, self._monitor.sink.env, last, best, kept)
        if pending is None:  # else latest.json moves to the one written at the next step's end
            self._point()

    def _extra_tensors(self) -> list[Any]:
        """The tensors ``extras()`` returns now, in it or its dicts and lists (a learned loss weight,
        a ``state_dict()`` of learned inner rates)."""
        try:
            extras = self.extras() if self.extras is not None else {}
        except Exception:  # not ready before the first step: it says so when a checkpoint is saved
            return []
        found, pending = [], [extras] if isinstance(extras, Mapping) else []
        while pending:
            value = pending.pop()
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, Mapping):
                pending.extend(value.values())
            elif isinstance(value, (list, tuple)):
                pending.extend(value)
        return found

    def _check_extras(self) -> None:
        """What ``extras()`` returns at train_start, checked as a save would (a save may be far off:
        a replay buffer's numpy arrays ended an RL run at its first save, step 250). One that
        cannot be called yet (a buffer made after train_start) waits for the first save."""
        try:
            extras = self._extras()
        except Exception:  # noqa: BLE001 - not ready before the loop: checked when saved
            return
        try:
            plain_value(extras, "checkpoint['extras']")
        except TypeError as error:
            raise CheckpointWriteError(f"extras cannot be saved: {error}") from None

    def _extras(self) -> dict[str, Any] | None:
        if self.extras is None:
            return None
        extras = self.extras()
        if not isinstance(extras, Mapping):
            raise TypeError(f"extras must return a dict of name to value, got {type(extras).__name__}")
        return dict(extras)

    def _restore(self, state: LoopState) -> None:
        checkpoint, self._saved = self._saved, None
        if state.model is None:
            raise CheckpointResumeError(f"resuming from {self.start.path} needs the model: pass it to "
                                        f"monitor.train_start(model, optimizer), got None")
        given = _rates(state)
        try:
            restore_parts(self.start.path, checkpoint, state.model, _optimizers(state), self.scheduler,
                          self.scaler or state.scaler)
        except Exception as error:
            text = str(error).rstrip(". \n")
            grown = "size mismatch" in text or "Unexpected key(s)" in text or "Missing key(s)" in text
            advice = (": the model differs from the checkpoint's (" + _changed_since(text) + "); build it as the run "
                      "had it before train_start (when checkpoint.start is past the step that changed it), e.g. from "
                      "what Checkpoint(extras=...) kept, checkpoint.start.extras; or, for a new run of this model, "
                      "Checkpoint(..., fresh=True), which sets the run's checkpoints aside" if grown else "")
            raise CheckpointResumeError(f"the run could not be put back from {self.start.path}: "
                                        f"{type(error).__name__}: {text}{advice}") from error
        others = [c for c in _RESUMED if c._monitor is not self._monitor and not c._monitor._ended]
        _RESUMED.add(self)
        if others and self._monitor.rank == 0 and not _said_together:
            _say_resumed_together(others[0], self)
        if self._monitor.rank == 0:  # said once for the job
            _log.warning("monitor: continuing from %s (step %d)", self.start.path, self.start.step)
            restored, first = _rates(state), self._given_rates
            if given != (restored if first is None else first):  # resumed to try another lr (Guard's cure)
                _log.warning("monitor: the optimizer was given learning rate %s, the run %s: a resume trains at the "
                             "rates its checkpoint saved (%s); to change them, set each group's lr (and a "
                             "scheduler's base_lrs) after train_start", _shown(given),
                             _shown(restored if first is None else first), _shown(restored))
        self._check_loop = True  # at the first step: does the loop go on where the run left off?

    def _set_earlier_aside(self) -> None:
        earlier = set_aside(self.directory)
        if earlier is not None:  # said louder than info: a re-run that meant to go on starts from scratch here
            own = sorted(p.name for p in self.directory.iterdir() if p.is_file() and p.name != LOCK)
            left = "" if not own else (
                f"; the loop's own files stay in the folder, where this run may write over them: "
                f"{', '.join(own[:3])}{f' and {len(own) - 3} more' if len(own) > 3 else ''} (move them first, or "
                f"name them by run)")
            _log.warning("monitor: a new run in %s (%s); the earlier run's checkpoints are in %s%s%s", self.directory,
                         "fresh=True" if self.fresh else "the earlier run had finished", earlier,
                         "" if self.fresh else ": to train a finished run further, pass Checkpoint(extend=True)",
                         left)

    def _catch_preemption(self) -> None:
        # Under torch.distributed the ranks would have to agree on the step to stop at: not yet.
        if self._monitor.world_size > 1:
            return
        if threading.current_thread() is not threading.main_thread():  # Python signals reach the main thread only
            _log.warning("monitor: Checkpoint(resume=True) trains in thread %r, not the main thread, where Python "
                         "takes signals: a scheduler's SIGTERM or SIGUSR1 ends the job without a checkpoint of its "
                         "step (it resumes from the latest one); train in the main thread to save at the stop",
                         threading.current_thread().name)
            return
        for number in preemption.SIGNALS:
            previous = signal.getsignal(number)
            if previous is signal.SIG_IGN and number in preemption.ignored_while_exiting:  # a trial of this
                previous = preemption.ignored_while_exiting.pop(number)  # process that exited for requeue
            if previous is signal.SIG_DFL:  # never take a signal the program handles itself
                signal.signal(number, self._note_signal)
                self._handlers[number] = previous
        preemption.caught = preemption.caught or bool(self._handlers)  # loaders' workers leave them to us

    def _note_signal(self, number: int, frame: Any) -> None:
        self._stop_signal = number
        if not self._trained_here and self._monitor is not None and not self._monitor.in_step:
            # Before this process trained anything (a replay buffer filling, a first validation): nothing
            # to save, and the first step_end may be further off than the scheduler waits. Out now.
            self._stop_signal = None
            self._monitor.flush(timeout=2.0)
            self._release_signals(exiting=not interactive())
            start = self.start
            since = "its start" if start is None or start.path is None else f"the checkpoint of step {start.step}"
            _log.warning("monitor: %s before this run trained a step: nothing to save since %s; exiting with status "
                         "%d to be run again", signal.Signals(number).name, since, REQUEUE_EXIT_STATUS)
            stop = SystemExit(REQUEUE_EXIT_STATUS)
            self._monitor.exception(stop)
            raise stop

    def _release_signals(self, exiting: bool = False) -> None:
        """Gives the stop signals back; ``exiting`` for requeue ignores them instead (a scheduler's
        second signal must not turn the requeue status into a kill) and leaves them to the next
        Checkpoint of this process."""
        if self._handlers:
            preemption.caught = False
        for number, previous in self._handlers.items():
            signal.signal(number, signal.SIG_IGN if exiting else previous)
            if exiting:
                preemption.ignored_while_exiting[number] = previous
        self._handlers.clear()

    def _stop_for_requeue(self, state: LoopState) -> None:
        self._stopping = signal.Signals(self._stop_signal).name
        self._stop_signal = None  # a second signal while saving changes nothing
        if self._last_saved != [state.step, state.epoch, self._epoch_done]:
            self._save(point=False)
        # The exit comes when the step's code is over (a validation of this step goes into its
        # checkpoint first, in a batches loop): before the next batch, step or epoch.
        self._monitor.at_next_batch(self._at_next_batch)

    def _exit_if_stopping(self) -> None:
        if self._stopping is None:
            return
        name, self._stopping = self._stopping, None
        self._monitor.at_next_batch(None)
        self._point_at_written()
        self._monitor.flush(timeout=2.0)  # a scheduler's grace period is short; the run log has it all
        # A Jupyter kernel catches the SystemExit and lives on: the next stop signal must end it.
        self._release_signals(exiting=not interactive())
        _log.warning("monitor: %s: checkpoint of step %d saved in %s; exiting with status %d to be run again",
                     name, self._last_saved[0], self.directory, REQUEUE_EXIT_STATUS)
        stop = SystemExit(REQUEUE_EXIT_STATUS)
        self._monitor.exception(stop)  # said here: the exit hook of a loop without `with` cannot see the status
        raise stop

    def _lock_directory(self) -> None:
        if self._lock.fd is None:
            holder = self._lock.take({}, take_over=True)  # held by this process already: a notebook cell run again
            if holder is not None:
                raise CheckpointWriteError(f"directory must be used by one live run at a time, got {self.directory} "
                                           f"in use by {holder}: this job's earlier run, still alive (let it "
                                           f"end, or kill it), or another job's (give each job a folder of its own)")

    def _claim_directory(self) -> None:
        self._lock_directory()
        if not self._claimed:
            self.run_id = self.run_id or self._monitor.sink.run_id or uuid.uuid4().hex
            self._records = claim(self.directory, self.run_id, self._records)
            self._claimed = True
            run_dir = getattr(self._monitor.sink, "run_dir", None)
            if run_dir is not None:
                try:
                    RunDir(run_dir).note_checkpoints(self.directory)
                except OSError as error:  # only `monitor runs`' count of checkpoints misses them
                    _log.warning("monitor: could not note checkpoint folder %s in %s: %s", self.directory, run_dir,
                                 error)

    def _require_monitor(self) -> Monitor:
        if self._monitor is None:
            raise CheckpointWriteError("Checkpoint needs its Monitor to save every callback's state: give it "
                                       "to Monitor([..., checkpoint]), got a Checkpoint used without one")
        return self._monitor

    def _note_metric(self, metrics: Mapping[str, Any], loss: Any = None) -> None:
        value = metrics.get(self.metric) if self.metric else None
        if value is None and self.metric == "loss":
            value = loss
        if value is None and self.metric and metrics and not self._told_missing:
            self._told_missing = True
            _log.warning("monitor: Checkpoint's metric %r is not among the metrics the loop passed at %s, got %s: "
                         "its checkpoints are not ranked", self.metric, self.metric_from, sorted(map(str, metrics)))
        if value is not None:
            self._told_missing = True  # a later validation of other metrics (an SWA model's) is no news
            self._metric_at = self._monitor.state.step
            if isinstance(value, torch.Tensor) and not value.is_cpu:
                # Read when a checkpoint is written, never here: a read would wait for the device every step.
                self._metric_value = value.detach().reshape(()).to(torch.float32, copy=True)
            else:
                self._metric_value = float(value.detach() if isinstance(value, torch.Tensor) else value)

    # --- state, for the checkpoint itself -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        metric = float(self._metric_value) if isinstance(self._metric_value, torch.Tensor) else self._metric_value
        return {"run_id": self.run_id, "records": [dict(r) for r in self._records], "metric": metric,
                "epoch_done": self._epoch_done, "last_saved": self._last_saved,
                "validates_after_saving": self._validates_after_saving, "given_rates": self._given_rates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id, self._records = state["run_id"], [dict(r) for r in state["records"]]
        self._metric_value, self._epoch_done = state["metric"], state["epoch_done"]
        self._last_saved = list(state["last_saved"]) if state["last_saved"] is not None else None
        self._validates_after_saving = state.get("validates_after_saving", False)
        self._given_rates = state.get("given_rates")  # None in older checkpoints
        self._claimed = False


def _reads_a_loader() -> bool:
    """Whether a DataLoader is being iterated in this process (its iterator alive): looked for
    once, at a resumed steps loop's first step, among the objects the collector tracks."""
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    # By type(), not isinstance(): an object's __class__ may be a property that warns (torch's deprecated ones).
    return any(issubclass(type(thing), _BaseDataLoaderIter) for thing in gc.get_objects())


def _watched(extras: Callable[[], Mapping[str, Any] | None]) -> dict[str, Any]:
    """What of ``extras`` a step's code may change after its checkpoint, to tell whether it did:
    the plain values, and copies of small CPU tensors (a generator's ``get_state()``)."""
    try:
        given = extras() or {}
    except Exception:  # said where a save calls it
        return {}
    watched = _plain_values(given)
    for name, value in given.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.numel() <= 65536:
            watched[name] = value.detach().clone()
    return watched


def _same(before: Any, now: Any) -> bool:
    if isinstance(before, torch.Tensor):
        return isinstance(now, torch.Tensor) and before.shape == now.shape and torch.equal(before, now)
    return before == now or before != before  # NaN stays NaN


def _plain_values(extras: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers, strings and booleans of ``extras`` (a counter, a best score), to tell whether
    the loop changed them; tensors and the rest are left out (no device read, no copy)."""
    return {name: value for name, value in (extras or {}).items() if type(value) in (int, float, str, bool)}


def _changed_since(error: str) -> str:
    """What changed the model since the checkpoint, as its unexpected keys show it: torch's
    pruning (``weight_orig``, ``weight_mask``), quantization-aware training's fake-quant modules,
    else a layer added or widened."""
    unexpected = error.partition("Unexpected key(s) in state_dict:")[2].partition("Missing key(s)")[0]
    if re.search(r'_orig"|_mask"', unexpected):
        return ("pruned with torch.nn.utils.prune, which keeps weight_orig and weight_mask: prune the same "
                "modules first, prune.identity(module, 'weight') on each, and let the checkpoint's masks in")
    if "fake_quant" in unexpected or "activation_post_process" in unexpected:
        return "prepared for quantization-aware training: call torch.ao.quantization.prepare_qat(model) first"
    return "a layer added or widened since the run began"


def _rates(state: LoopState) -> list[float | None]:
    """Every group's lr as the loop set it (a scheduler's starting one, ``initial_lr``, where it has
    one: a warm-up's first lr is no choice), where it is a number (a tensor's is not read)."""
    return [rate if isinstance(rate := g.get("initial_lr", g.get("lr")), (int, float)) else None
            for optimizer in state.optimizers.values() for g in optimizer.param_groups]


def _shown(rates: list[float | None]) -> str:
    shown = ", ".join("-" if rate is None else f"{rate:g}" for rate in rates)
    return shown if len(rates) == 1 else f"[{shown}]"


def _absolute(folder: Any) -> str | None:
    return str(Path(folder).absolute()) if folder is not None else None


def _say_what_wrappers_leave_out(optimizers: Mapping[str, Any]) -> None:
    """Warns of an optimizer that holds another (SAM's base_optimizer) whose state its own
    state_dict() leaves out (SGD's momentum): a resume would start that afresh."""
    for name, optimizer in optimizers.items():
        kept = {key for entry in optimizer.state_dict().get("state", {}).values() for key in entry}
        for attribute, inner in vars(optimizer).items():
            if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer and inner.state:
                missing = sorted({key for entry in inner.state.values() for key in entry} - kept)
                if missing:
                    _log.warning("monitor: optimizer %s (%s) holds another, %s (%s), whose state (%s) its "
                                 "state_dict() leaves out: a resume starts that afresh; keep it in Checkpoint("
                                 "extras=lambda: {%r: optimizer.%s.state_dict()}) and load it back from "
                                 "checkpoint.start.extras", name, type(optimizer).__name__, attribute,
                                 type(inner).__name__, ", ".join(missing), attribute, attribute)


def _optimizers(state: LoopState) -> Any:
    """The one optimizer, or several by name (saved as a dict of their state_dicts)."""
    return state.optimizers if len(state.optimizers) > 1 else state.optimizer


E = TypeVar("E", bound=BaseException)


def _raised_in(error: BaseException, kind: type[E]) -> E | None:
    """The error of ``kind`` (an OSError: a full disk, a read-only folder) that ``error`` was raised
    from or while handling, or is."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_said_together = False


def _place(tensor: torch.Tensor) -> tuple:
    """Where a tensor's values are (a detached copy's are its parameter's), or its id if it has none yet."""
    try:
        return tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype
    except RuntimeError:  # a lazy parameter: no memory yet
        return (id(tensor),)


def _schedulers_in(scheduler: Any) -> list[Any]:
    """Every scheduler given, those a SequentialLR or ChainedScheduler runs too."""
    named = named_schedulers(scheduler)
    found = []
    for one in named.values() if isinstance(named, Mapping) else [named]:
        found += [one, *_schedulers_in(list(getattr(one, "_schedulers", None) or []))]
    return found


def _schedule(scheduler: Any) -> Any:
    """Where a scheduler (or each of several) is: its ``last_epoch`` (a plateau's counts it too)."""
    named = named_schedulers(scheduler)
    if isinstance(named, Mapping):
        return tuple(getattr(one, "last_epoch", None) for one in named.values())
    return getattr(named, "last_epoch", None)


def _say_resumed_together(first: Checkpoint, second: Checkpoint) -> None:
    """Once a process: two live Monitors continue runs of their own (a Monitor per model of one loop)."""
    global _said_together
    _said_together = True
    _log.warning("monitor: two Monitors of this process continue from checkpoints of their own (env %r from step "
                 "%d, env %r from step %d): each puts back the process's random state, the last one's wins, and a "
                 "kill between their saves leaves them at different points of the loop; keep every model and "
                 "optimizer of one loop in one Monitor, train_start(nn.ModuleDict({...}), {name: optimizer, ...}), "
                 "for them to be saved and resumed together", getattr(first._monitor.sink, "env", "?"),
                 first.start.step, getattr(second._monitor.sink, "env", "?"), second.start.step)
