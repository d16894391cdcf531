"""resume(): puts a run back exactly where its checkpoint left it, and says where the loop goes on."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from monitor.checkpoint.file import RESUME_KEYS, load_checkpoint, sampled_sums
from monitor.models import load_plain_state, uncompiled, unwrap_model
from monitor.checkpoint.folder import continued_runs, find_checkpoint, read_manifest
from monitor.core import Monitor
from monitor.distributed import on_main, rank_and_world_size
from monitor.resumable import batches_done, position_of_rank
from monitor.checkpoint.rng import restore_rng, rng_of_rank

_log = logging.getLogger("monitor")


@dataclass(frozen=True)
class ResumePoint:
    """Where the loop continues: a fresh start when ``path`` is None.

        start = resume("checkpoints", model, optimizer, missing_ok=True)
        monitor = Monitor([Scalars(), checkpoint], env="mnist", rewind_to=start.runlog_position)
        start.restore(monitor)

    ``epoch`` is the epoch to run next; ``skip_batches`` how many of its batches are done
    (``batches_done(epoch)`` says it per epoch). When ``skip_batches`` is 0 the loop calls
    ``monitor.epoch_start(epoch)`` as usual; when it is not, the epoch had started before the
    checkpoint, so the loop skips ``epoch_start`` and those batches (EpochBatchSampler does).
    ``runlog_position`` is where the run log is cut back to (``rewind_to``): 0 on a fresh
    start, which clears a log left by a run that never saved a checkpoint. ``trained``: the
    checkpoint is the one of the run's ``train_end`` (``monitor.epochs`` then runs no epoch).
    """

    path: Path | None
    epoch: int = 0
    skip_batches: int = 0
    step: int = 0
    env: str | None = None
    run_id: str | None = None
    runlog_position: int | None = 0
    run_dir: str | None = None  # the run folder its log was written in (absolute), where the checkpoint says
    extras: dict[str, Any] = field(default_factory=dict)
    trained: bool = False  # saved at the run's train_end: monitor.epochs has nothing left to run
    monitor_state: dict[str, Any] = field(default_factory=dict, repr=False)  # RNG states: 17,840 characters shown

    def batches_done(self, epoch: int) -> int:
        """The batches of ``epoch`` done before the checkpoint (0 for every later epoch)."""
        return self.skip_batches if epoch == self.epoch else 0

    def began(self, epoch: int) -> bool:
        """Whether the checkpointed run had begun ``epoch`` (what the loop does at its start, such
        as unfreezing layers into the optimizer, is then in the checkpoint, and done again first):

            if checkpoint.start.began(unfreeze_epoch):
                unfreeze()                              # before train_start restores the optimizer
        """
        return self.path is not None and (self.epoch > epoch or (self.epoch == epoch and self.skip_batches > 0))

    def restore(self, monitor: Monitor, *, check_runlog: bool = True) -> None:
        """Gives ``monitor`` its loop position and its callbacks' states back.

        Warns (the dashboard is not the training) when the monitor writes to another env, or
        (``check_runlog``) its run log was not cut back to the checkpoint with
        ``rewind_to=start.runlog_position``.
        """
        if not isinstance(monitor, Monitor):
            raise TypeError(f"monitor must be a monitor.Monitor, got {type(monitor).__name__}")
        if self.path is not None:
            env, position = monitor.sink.env, monitor.sink.position
            if self.env is not None and env is not None and env != self.env:
                _log.warning("monitor: the monitor writes to env %r, the checkpoint's run to %r: the curves start "
                             "over there instead of continuing", env, self.env)
            elif check_runlog and self.runlog_position is not None and position is not None \
                    and position != self.runlog_position \
                    and position != _resumed_at(monitor, self.runlog_position):
                _log.warning("monitor: the monitor's run log ends at byte %d, the checkpoint at %d: build the "
                             "Monitor with rewind_to=start.runlog_position, or curves may repeat steps", position,
                             self.runlog_position)
            monitor.load_state_dict(self.monitor_state)


def resume(source: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
           scheduler: Any = None, scaler: Any = None, monitor: Monitor | None = None, *,
           missing_ok: bool = False, trust: bool = False, strict: bool = True) -> ResumePoint:
    """Restores model, optimizer, scheduler, scaler and every RNG from a checkpoint file or folder.

        start = resume("runs/mnist/checkpoints", model, optimizer, scheduler, missing_ok=True)
        for epoch in range(start.epoch, epochs): ...

    The low-level form of ``Checkpoint(..., resume=True)``. A folder gives its latest good
    checkpoint (a damaged one is skipped with a warning naming it). ``missing_ok`` turns a
    missing folder or file into a fresh start. ``monitor``, if given, is restored too (see
    :meth:`ResumePoint.restore`): pass it when its sink needs no rewinding, else build it with
    ``rewind_to=start.runlog_position`` and call ``restore``. ``trust=True`` loads a file that
    needs unsafe unpickling: only for files you trust.

    Under torch.distributed every rank calls it: rank 0 picks the file, every rank loads that
    one (so ``source`` must be readable by all) and restores its own random state from it. The
    model may be wrapped in DDP or not, whichever way the checkpoint was saved.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    point, checkpoint = find_start(source, missing_ok=missing_ok, trust=trust)
    if checkpoint is not None:
        restore_parts(point.path, checkpoint, model, optimizer, scheduler, scaler, strict=strict)
    if monitor is not None:
        point.restore(monitor)
    return point


def find_start(source: str | Path, *, missing_ok: bool = False,
               trust: bool = False) -> tuple[ResumePoint, dict[str, Any] | None]:
    """The resume point of ``source``'s latest good checkpoint, and that checkpoint (None, None: a fresh start).

    Under torch.distributed rank 0 picks the file and every rank loads that one.
    """
    chosen: dict[str, Any] = {}

    def choose() -> Path | None:
        found = find_checkpoint(source, trust=trust, missing_ok=missing_ok)
        if found is not None:
            chosen["checkpoint"] = found[1]
        return found[0] if found is not None else None

    path = on_main(choose)  # every rank loads the file rank 0 chose, even if the folder changes meanwhile
    if path is None:
        return ResumePoint(path=None), None
    checkpoint = chosen.get("checkpoint") or load_checkpoint(path, trust=trust)
    rank, world_size = rank_and_world_size()
    loop, run = position_of_rank(checkpoint["loop"], rank, world_size), checkpoint["run"]
    continued_runs.add(run["run_id"])  # a Checkpoint of its folder goes on with it
    done = bool(loop["epoch_done"])
    saved_by = len(checkpoint["loop"].get("ranks") or [None])  # the saving job's processes
    if saved_by != world_size and batches_done(loop) and rank == 0:
        _log.warning("monitor: %s was written by a job of %d process(es) in the middle of epoch %s, and this job has "
                     "%d: a DistributedSampler deals an epoch's samples to the ranks by their number, so the rest of "
                     "this epoch repeats or skips some of them (a checkpoint at an epoch's end, every_epochs, changes "
                     "the world size exactly)", path.name, saved_by, loop["epoch"], world_size)
    manifest = read_manifest(path.parent, warn=False) if Path(source).is_dir() else None
    trained = manifest is not None and manifest.get("trained") == loop["step"] and manifest.get("latest") == path.name
    point = ResumePoint(
        path=path, epoch=loop["epoch"] + done, skip_batches=batches_done(loop), step=loop["step"],
        env=run["env"], run_id=run["run_id"], runlog_position=run["runlog_position"], run_dir=run.get("run_dir"),
        extras=checkpoint["extras"], trained=trained,
        monitor_state={"step": loop["step"], "epoch": loop["epoch"], "batch": loop["batch"], "epoch_done": done,
                       "trained": trained,
                       **{key: loop.get(key) for key in RESUME_KEYS},
                       "rng": rng_of_rank(checkpoint["rng"], rank, world_size, warn=False),  # said at restore
                       "callbacks": checkpoint["callbacks"]})
    return point, checkpoint


def named_schedulers(scheduler: Any) -> Any:
    """Several schedulers (a list, as a warm-up's and a plateau's, or a mapping) as names to
    schedulers, a list's named by position; one, or a list of one, as itself (saved unnamed)."""
    if isinstance(scheduler, (list, tuple)):
        scheduler = dict(enumerate(scheduler))
    if isinstance(scheduler, Mapping):
        named = {str(name): one for name, one in scheduler.items()}
        return next(iter(named.values())) if len(named) == 1 else named
    return scheduler


def restore_parts(path: Path, checkpoint: dict[str, Any], model: torch.nn.Module, optimizer: Any = None,
                  scheduler: Any = None, scaler: Any = None, *, strict: bool = True) -> None:
    """Loads ``checkpoint`` (read from ``path``) into the parts given, and this rank's random state."""
    parts = {"optimizer": optimizer, "scheduler": named_schedulers(scheduler), "scaler": scaler}
    if isinstance(optimizer, Mapping) and len(optimizer) == 1 and not isinstance(checkpoint["classes"].get("optimizer"), dict):
        parts["optimizer"] = next(iter(optimizer.values()))  # one optimizer, saved as one
    for name in ("optimizer", "scheduler"):
        if isinstance(parts[name], Mapping):
            saved = checkpoint["classes"].get(name)
            if not isinstance(saved, dict) or set(saved) != set(parts[name]):
                held = ", ".join(saved) if isinstance(saved, dict) else f"one {saved}, not named"
                raise ValueError(f"{name} must be the {name}s {path} holds ({held}), got {', '.join(parts[name])}")
    for name, part in parts.items():
        saved_class = checkpoint["classes"].get(name)
        if isinstance(part, Mapping):
            for key, one in part.items():
                _check_class(path, f"{name} {key!r}", saved_class.get(key), one)
            continue
        if part is not None and checkpoint[name] is None:
            raise ValueError(f"{name} must be None for {path}, which holds no {name} state, "
                             f"got a {type(part).__name__}")
        if part is None and checkpoint[name] is not None:
            _log.warning("monitor: %s holds the %s's state (%s), which is not restored: pass %s=", path, name,
                         saved_class, name)
        elif part is not None:
            _check_class(path, name, saved_class, part)
    optimizers = parts["optimizer"] if isinstance(parts["optimizer"], Mapping) else {None: parts["optimizer"]}
    for key, one in optimizers.items():
        saved = checkpoint["optimizer"] if key is None else checkpoint["optimizer"].get(key)
        groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
        if one is not None and isinstance(groups, list) and len(groups) != len(one.param_groups):
            raise ValueError(_groups_added_mid_run(path, checkpoint["loop"], key, len(one.param_groups), len(groups)))
    _load_model(unwrap_model(model), checkpoint, strict)
    if isinstance(checkpoint.get("frozen"), list):  # left out by checkpoints before it was kept
        _freeze_as_saved(path, checkpoint["loop"], unwrap_model(model), set(checkpoint["frozen"]))
    for name, part in parts.items():
        if isinstance(part, Mapping):
            for key, one in part.items():
                one.load_state_dict(checkpoint[name][key])
        elif part is not None:
            part.load_state_dict(checkpoint[name])
    restore_rng(rng_of_rank(checkpoint["rng"], *rank_and_world_size()))


def _check_class(path: Path, name: str, saved_class: str | None, part: Any) -> None:
    """Refuses a part of another class than the one saved: its state would load (an Adam's into an
    LBFGS, whose groups then lack ``max_iter``; an Adam's into an AdamW, which then decays as Adam
    does) and fail or train otherwise later."""
    given = type(part).__name__
    if isinstance(saved_class, dict):
        raise ValueError(f"{name} must be the {name}s {path} holds, by name ({', '.join(saved_class)}), "
                         f"got one {given}")
    if saved_class is not None and saved_class != given:
        hint = (" (a loop that changes its optimizer mid-run passes train_start both from the start, as a "
                "dict: {'adam': adam, 'lbfgs': lbfgs}; one whose later phase makes a new optimizer, or a new "
                "head, builds them before train_start where checkpoint.start says the run is in that phase: "
                "if checkpoint.start.began(phase2_epoch))" if name.startswith("optimizer") else "")
        raise ValueError(f"{name} must be of the class whose state {path} holds, {saved_class}, got {given}{hint}")


def _load_model(model: torch.nn.Module, checkpoint: dict[str, Any], strict: bool) -> None:
    """The model's state from the checkpoint; the frozen parameters it left out (``save_frozen=False``)
    stay as the loop loaded them, and only they may be missing."""
    saved = checkpoint["model"]
    left_out = {name for name in checkpoint.get("frozen") or () if name not in saved}
    _say_if_another_base(model, checkpoint.get("frozen_sums") or {})
    result = load_plain_state(model, saved, strict=strict and not left_out)
    missing = [name for name in result.missing_keys if uncompiled(name) not in left_out]
    if strict and (missing or result.unexpected_keys):
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__}: missing keys {missing}, "
                           f"unexpected keys {result.unexpected_keys} (the {len(left_out)} frozen parameters "
                           f"left out of the checkpoint are not missing)")


def _say_if_another_base(model: torch.nn.Module, saved: Mapping[str, float]) -> None:
    """Warns where the frozen parameters a checkpoint left out (``save_frozen=False``) are not
    those the loop loaded now: adapters trained on one base, resumed on another."""
    if not saved:
        return
    now = sampled_sums({uncompiled(name): p for name, p in model.named_parameters() if uncompiled(name) in saved})
    differ = [name for name, value in saved.items()
              if name in now and not math.isclose(now[name], value, rel_tol=1e-9, abs_tol=1e-12)]
    if differ:
        _log.warning("monitor: the frozen parameters the checkpoint left out (save_frozen=False) are not those the "
                     "model holds now: %d of %d differ (%s%s), where the run trained on another base; load the "
                     "base the run began with before train_start", len(differ), len(saved), ", ".join(differ[:3]),
                     ", ..." if len(differ) > 3 else "")


def _freeze_as_saved(path: Path, loop: Mapping[str, Any], model: torch.nn.Module, frozen: set[str]) -> None:
    """Gives each parameter the ``requires_grad`` it had when the checkpoint was saved: no
    state_dict holds it, and a fine-tuning loop that froze its backbone at the start and
    unfroze it mid-run would otherwise train on with the backbone frozen, saying nothing."""
    frozen = {uncompiled(name) for name in frozen}  # a checkpoint from before names were kept plain
    changed = [(uncompiled(name), p) for name, p in model.named_parameters()
               if p.requires_grad == (uncompiled(name) in frozen)]
    if not changed:
        return
    for name, parameter in changed:
        parameter.requires_grad_(name not in frozen)
    shown = ", ".join(f"{name} {name not in frozen}" for name, _ in changed[:4])
    _log.warning("monitor: requires_grad of %d parameter%s of the model set as at step %s, where %s was saved (no "
                 "state_dict holds it; a loop that unfreezes layers mid-run does it again before train_start when it "
                 "resumes): %s%s", len(changed), "s" if len(changed) != 1 else "", loop["step"], path, shown,
                 ", ..." if len(changed) > 4 else "")


def _groups_added_mid_run(path: Path, loop: Mapping[str, Any], name: str | None, groups: int, saved: int) -> str:
    which = "optimizer" if name is None else f"optimizer {name!r}"
    return (f"{which} must have the {saved} parameter group{'s' if saved != 1 else ''} it had at step "
            f"{loop['step']} (epoch {loop['epoch']}), where {path} was saved, got {groups}: a loop that adds "
            f"groups mid-run (add_param_group, unfreezing layers) adds them again before train_start when the "
            f"run it resumes had added them, e.g. `if checkpoint.start.began(unfreeze_epoch): unfreeze()` (a "
            f"Checkpoint's start is known once its Monitor is made)")


def _resumed_at(monitor: Monitor, position: int) -> int | None:
    """Where ``monitor``'s run log would have been cut for a checkpoint at ``position``: past what
    the checkpointed step logged after it (``entries.resumes_at``); None where it cannot say."""
    from monitor.entries import resumes_at
    from monitor.runlog import RunLog

    run_dir = getattr(monitor.sink, "run_dir", None)
    try:
        return resumes_at(Path(run_dir) / RunLog.FILENAME, position)[0] if run_dir is not None else None
    except OSError:
        return None
