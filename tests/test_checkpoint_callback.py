"""The Checkpoint callback in a loop: when it saves, what it keeps, and how it fails loudly."""
from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil

import pytest
import torch

from helpers.checkpoint_loop import BATCHES, attach, build, train
from helpers.monitors import ListSink, says
from monitor import Checkpoint, LearningRate, Monitor, Scalars, resume
from monitor.checkpoint import CheckpointResumeError, CheckpointWriteError, load_checkpoint
from monitor.checkpoint.listing import list_checkpoints
from monitor.checkpoint.folder import LOCK, MANIFEST, checkpoint_name
from monitor.log import NullSink
from monitor.runlog import RunLog


def files(directory) -> set[str]:
    return {p.name for p in directory.glob("step-*.pt")}


def expected(history: dict[int, float], keep_last: int, keep_best: int, mode: str) -> tuple[list, list]:
    """(last names, best names) over every save so far, computed the slow, obvious way."""
    steps = sorted(history)
    last = [checkpoint_name(s) for s in steps[-keep_last:]]
    sign = 1 if mode == "min" else -1
    best = [checkpoint_name(s) for s in sorted(steps, key=lambda s: (sign * history[s], s))[:keep_best]]
    return last, best


def run_and_check(parts, directory, mode, stop_at=None, history=None, source=None, exact=True):
    """Trains with saves every 2 steps; after every save the folder must hold exactly last ∪ best."""
    options = dict(every_steps=2, at_end=False, keep_last=2, keep_best=3, metric="noisy",
                   metric_from="step", mode=mode)
    checkpoint = Checkpoint(directory, scheduler=parts.scheduler, **options)
    start = resume(source or directory, parts.model, parts.optimizer, parts.scheduler, missing_ok=True)
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    start.restore(monitor)
    history = {s: m for s, m in (history or {}).items() if s <= start.step}
    monitor.train_start(parts.model, parts.optimizer)
    for epoch in range(start.epoch, 4):
        skip = start.batches_done(epoch)
        if not skip:
            monitor.epoch_start(epoch)
        for _ in range(skip, BATCHES):
            loss = parts.model(torch.randn(3, 4)).pow(2).mean()
            parts.optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            parts.optimizer.step()
            noisy = round(random.uniform(0, 1), 1)  # ties happen: the earlier step must win them
            monitor.step_end(loss=loss, metrics={"noisy": noisy})
            step = monitor.state.step
            if step % 2 == 0:
                history[step] = noisy
                last, best = expected(history, 2, 3, mode)
                manifest = json.loads((directory / MANIFEST).read_text())
                if exact:
                    assert files(directory) == set(last) | set(best), f"after step {step}"
                    assert (manifest["latest"], manifest["last"], manifest["best"]) == (last[-1], last, best)
                else:
                    assert files(directory) == set(manifest["last"]) | set(manifest["best"])
            if step == stop_at:
                return history
        monitor.epoch_end()
    return history


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_k_and_last_k_are_kept_over_a_run_with_a_noisy_metric_including_after_a_resume(tmp_path, mode):
    straight = run_and_check(build(), tmp_path / "straight", mode)
    assert len(straight) == 10
    seed = random.SystemRandom().randrange(10**6)
    stop_at = random.Random(seed).randrange(3, 19)
    interrupted = run_and_check(build(), tmp_path / "resumed", mode, stop_at=stop_at)
    resumed = run_and_check(build(seed=99), tmp_path / "resumed", mode, history=interrupted)
    assert resumed == straight, f"seed {seed}: the metric after resuming at {stop_at} differs"
    assert files(tmp_path / "resumed") == files(tmp_path / "straight")
    manifests = [json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("straight", "resumed")]
    assert [(m["last"], m["best"]) for m in manifests][0] == [(m["last"], m["best"]) for m in manifests][1]


def test_resuming_from_an_older_checkpoint_prunes_the_later_ones_it_abandons(tmp_path):
    directory = tmp_path / "ckpt"
    history = run_and_check(build(), directory, "min")
    older = sorted(directory.glob("step-*.pt"))[0]
    step = load_checkpoint(older)["loop"]["step"]
    kept_then = {r["file"] for r in load_checkpoint(older)["callbacks"]["Checkpoint"]["records"]}
    parts = build(seed=5)
    stop_at = step + 2  # one more save, then look
    # The abandoned run may have pruned files the older checkpoint kept: those are gone for good.
    run_and_check(parts, directory, "min", stop_at=stop_at, history=history, source=older, exact=False)
    assert all(int(name[5:14]) <= stop_at for name in files(directory))
    assert checkpoint_name(stop_at) in files(directory)
    assert files(directory) <= kept_then | {checkpoint_name(stop_at)}


def test_where_a_resume_continues_shows_briefly_in_a_notebook(tmp_path):
    run_and_check(build(), tmp_path / "ckpt", "min", stop_at=6)
    parts = build()
    start = resume(tmp_path / "ckpt", parts.model, parts.optimizer, parts.scheduler)
    shown = repr(start)  # what a notebook cell ending in `checkpoint.start` prints
    assert "step=6" in shown and "runlog_position" in shown and len(shown) < 1000, shown
    assert "rng" in start.monitor_state  # kept, only not shown: the whole RNG state ran to 17,840 characters


def test_saves_every_n_steps_every_n_epochs_and_once_at_the_end(tmp_path):
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=3, every_epochs=2, keep_last=100)
    train(parts, monitor, start, epochs=4)
    saved = sorted((load_checkpoint(p)["loop"]["step"], load_checkpoint(p)["loop"]["epoch_done"])
                   for p in (tmp_path / "ckpt").glob("step-*.pt"))
    # every 3 steps; epochs 2 and 4 end at steps 10 and 20; train_end at 20 is the same position
    assert saved == [(3, False), (6, False), (9, False), (10, True), (12, False), (15, False), (18, False), (20, True)]


def test_no_checkpoint_is_saved_at_train_end_after_an_exception(tmp_path):
    parts = build()
    checkpoint = Checkpoint(tmp_path / "ckpt")
    monitor = Monitor([checkpoint], sink=NullSink())
    with pytest.raises(RuntimeError, match="diverged"):
        with monitor:
            monitor.train_start(parts.model, parts.optimizer)
            monitor.step_end(loss=1.0)
            raise RuntimeError("diverged")
    assert files(tmp_path / "ckpt") == set()


def test_a_failed_write_stops_the_loop_although_the_monitor_contains_callback_errors(tmp_path, monkeypatch):
    parts = build()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1)
    monitor = Monitor([Scalars(), checkpoint], sink=NullSink())  # raise_errors=False: errors are contained
    monitor.train_start(parts.model, parts.optimizer)
    monitor.step_end(loss=1.0)
    good = (tmp_path / "ckpt" / MANIFEST).read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="step-000000002.pt could not be written: OSError.*No space") as caught:
        monitor.step_end(loss=1.0)
    assert isinstance(caught.value.__cause__, OSError)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [LOCK, MANIFEST, "step-000000001.pt"]  # no temp
    assert (tmp_path / "ckpt" / MANIFEST).read_bytes() == good


def test_extras_that_are_not_tensors_or_primitives_are_refused_at_train_start_or_when_saving(tmp_path):
    import collections
    import numpy as np

    parts = build()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1, extras=lambda: {"callback": print})
    monitor = Monitor([checkpoint], sink=NullSink())
    with pytest.raises(CheckpointWriteError, match=r"checkpoint\['extras'\]\['callback'\] must hold only tensors "
                                                   r"and primitives .* got builtins.builtin_function_or_method"):
        monitor.train_start(parts.model, parts.optimizer)  # not at the first save, 250 steps on
    # What an RL loop keeps: each refused with what to keep instead
    for value, hint in ((np.zeros(3), r"keep torch.from_numpy\(array\)"), (collections.deque([1]), r"keep list\(queue\)"),
                        (np.random.default_rng(0), "keep generator.bit_generator.state"),
                        (torch.Generator(), r"keep generator.get_state\(\)"),  # a task sampler's own
                        (torch.optim.swa_utils.AveragedModel(torch.nn.Linear(2, 2)), r"keep its state_dict\(\)")):
        monitor = Monitor([Checkpoint(tmp_path / "rl", extras=lambda: {"buffer": value})], sink=NullSink())
        with pytest.raises(CheckpointWriteError, match=rf"extras cannot be saved: .*\['buffer'\] .*{hint}"):
            monitor.train_start(parts.model, parts.optimizer)
    later = Checkpoint(tmp_path / "later", every_steps=1, extras=lambda: {"buffer": buffer})  # made after train_start
    monitor = Monitor([later], sink=NullSink())
    monitor.train_start(parts.model, parts.optimizer)
    buffer = np.zeros(3)
    with pytest.raises(CheckpointWriteError, match=r"torch.from_numpy"):
        monitor.step_end(loss=1.0)


def test_a_multistep_scheduler_and_what_else_weights_only_loads_are_saved_and_resumed(tmp_path):
    from collections import Counter

    parts = build()
    milestones = torch.optim.lr_scheduler.MultiStepLR(parts.optimizer, [2, 4])  # its milestones are a Counter
    extras = {"phase": 1 + 2j, "raw": bytearray(b"ab"), "seen": Counter({"cat": 2})}
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1, scheduler=milestones, extras=lambda: extras)
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    for _ in range(3):
        parts.optimizer.step()
        milestones.step()
        monitor.step_end(loss=1.0)
    saved = torch.load(tmp_path / "ckpt" / checkpoint_name(3), weights_only=True)
    assert saved["scheduler"]["milestones"] == Counter({2: 1, 4: 1}) and saved["extras"] == extras
    again = torch.optim.lr_scheduler.MultiStepLR(parts.optimizer, [9])
    resume(tmp_path / "ckpt", parts.model, parts.optimizer, again)
    assert again.milestones == Counter({2: 1, 4: 1}) and again.last_epoch == 3


class _WarmUp:
    """A LambdaLR's callable object, as users write them: its state (``__dict__``) holds NumPy numbers."""

    def __init__(self, peak, steps) -> None:
        self.peak, self.steps = peak, steps

    def __call__(self, step: int):
        return self.peak * min(1.0, (step + 1) / self.steps)


def test_numpy_numbers_python_computes_alike_are_saved_as_python_numbers_others_refused(tmp_path):
    import numpy as np

    parts = build()
    warm_up = torch.optim.lr_scheduler.LambdaLR(parts.optimizer, _WarmUp(np.float64(0.5), np.int64(4)))
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, scheduler=warm_up)
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    for _ in range(2):
        parts.optimizer.step()
        warm_up.step()
        monitor.step_end(loss=1.0)
    saved = load_checkpoint(tmp_path / "ckpt" / checkpoint_name(2))  # weights_only
    assert saved["scheduler"]["lr_lambdas"][0] == {"peak": 0.5, "steps": 4}
    again = torch.optim.lr_scheduler.LambdaLR(parts.optimizer, _WarmUp(0.1, 1))
    resume(tmp_path / "ckpt", parts.model, parts.optimizer, again)
    assert again.get_last_lr() == warm_up.get_last_lr() and again.lr_lambdas[0].peak == 0.5

    warm_up.lr_lambdas[0].peak = np.float32(0.5)  # float32 arithmetic: as a Python float it would differ
    with pytest.raises(CheckpointWriteError, match=r"\['lr_lambdas'\]\[0\]\['peak'\] must hold only tensors .* "
                                                   r"got numpy.float32"):
        monitor.step_end(loss=1.0)
        monitor.step_end(loss=1.0)


def test_a_checkpoint_used_without_a_monitor_refuses_to_save(tmp_path):
    checkpoint = Checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointWriteError, match=r"give it to Monitor\(\[\.\.\., checkpoint\]\)"):
        checkpoint.save()


def test_a_checkpoint_must_be_the_last_callback_and_a_monitor_refused_so_leaves_the_env_s_last_run(tmp_path):
    checkpoint = Checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="must be the last of the monitor's callbacks.*got it at index 0 of 2"):
        Monitor([checkpoint, Scalars()], sink=NullSink())
    with Monitor([Scalars()], env="refused", run_dir=tmp_path / "runs", port=1) as monitor:  # no server: the log
        monitor.step_end(loss=0.5)
    log = tmp_path / "runs" / RunLog.FILENAME
    kept = log.read_text()
    with pytest.raises(ValueError, match="must be the last"):  # refused before its sink opened a run
        Monitor([Checkpoint(tmp_path / "ckpt"), Scalars()], env="refused", run_dir=tmp_path / "runs", port=1)
    assert log.read_text() == kept and not (tmp_path / "runs" / "earlier").exists()

def test_a_fresh_run_refuses_a_folder_with_another_runs_checkpoints_and_leaves_them(tmp_path):
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=5)
    train(parts, monitor, start, epochs=1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.name != LOCK}
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=5)
    with pytest.raises(CheckpointWriteError, match=r"directory must be empty or hold this run's checkpoints, got "
                                                   r".* with 1 checkpoint\(s\) of another run \(step-000000005.pt; see"):
        Monitor([checkpoint], sink=NullSink())  # refused before the Monitor sets the env's run aside
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.name != LOCK} == before


@pytest.mark.parametrize("options, message", [
    ({"every_steps": 0}, "every_steps must be an int >= 1, got 0"),
    ({"at_end": False}, "every_steps, every_epochs or at_end must ask for a checkpoint"),
    ({"keep_best": 2}, "metric must be given to rank checkpoints for keep_best=2, got None"),
    ({"metric": "loss", "mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
    ({"metric": "loss", "metric_from": "train"}, "metric_from must be 'validation' or 'step' or 'epoch'"),
    ({"keep_last": 0}, "keep_last must be an int >= 1, got 0"),
])
def test_arguments_are_checked_at_the_door(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        Checkpoint(tmp_path, **options)


def test_resume_and_fresh_are_checked_at_the_door(tmp_path):
    with pytest.raises(TypeError, match="resume must be True or False, got .yes."):
        Checkpoint(tmp_path, resume="yes")
    with pytest.raises(TypeError, match="fresh must be True or False, got 1"):
        Checkpoint(tmp_path, fresh=1)


def test_a_resume_that_cannot_put_the_run_back_stops_the_loop_and_leaves_the_folder(tmp_path):
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=5)
    train(parts, monitor, start, epochs=2, stop_at=7)  # killed: a run to continue
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.name != LOCK}
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=5, scheduler=parts.scheduler, resume=True)],
                      sink=NullSink())
    with pytest.raises(CheckpointResumeError, match="(?s)could not be put back from .*step-000000005.pt: RuntimeError.*"
                                                    "build it as the run had it before train_start.*; or, for a new "
                                                    r"run of this model, Checkpoint\(\.\.\., fresh=True\)"):
        monitor.train_start(torch.nn.Linear(3, 3), parts.optimizer)  # another model (a grown one's shapes)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir() if p.name != LOCK} == before


def test_a_run_pruned_before_its_kill_is_resumed_into_a_model_pruned_alike_and_the_refusal_says_so(tmp_path):
    # A compression researcher pruned at step 3 and was killed after the checkpoint of step 4: the
    # resume blamed "a layer added or widened" where weight_orig and weight_mask said pruning.
    from torch.nn.utils import prune

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    def steps(monitor, model, optimizer, count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad()
            model(torch.randn(4, 6)).square().mean().backward()
            optimizer.step()
            monitor.step_end(loss=1.0)

    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=4)], sink=NullSink())
    monitor.train_start(model, optimizer)
    steps(monitor, model, optimizer, 3)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    steps(monitor, model, optimizer, 1)  # the checkpoint of step 4, pruned; then killed
    pruned = (model[0].weight_orig * model[0].weight_mask).detach()  # as the next forward computes `weight`

    again = net()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=4, resume=True)
    monitor = Monitor([checkpoint], sink=NullSink())
    with pytest.raises(CheckpointResumeError, match="pruned with torch.nn.utils.prune, which keeps weight_orig and "
                                                    r"weight_mask: prune the same modules first, prune.identity\(module, "
                                                    r"'weight'\) on each"):
        monitor.train_start(again, torch.optim.SGD(again.parameters(), lr=0.1))
    monitor.close()
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=4, resume=True)], sink=NullSink())
    prune.identity(again[0], "weight")  # as the advice says
    monitor.train_start(again, torch.optim.SGD(again.parameters(), lr=0.1))
    resumed = again[0].weight_orig * again[0].weight_mask
    assert torch.equal(resumed, pruned) and int((resumed == 0).sum()) == 24


def test_a_kill_after_validation_end_while_the_loop_logs_its_samples_validates_again(tmp_path):
    # An LM fine-tune validated at step 30, then logged a generated sample and saved its adapters:
    # killed there, the re-run went on from step 30's checkpoint, and step 30's sample was never logged.
    loader = [torch.zeros(2, 3)] * 8

    def run(kill_after_validating_at: int | None = None) -> tuple[int, list[int]]:
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True)
        monitor = Monitor([checkpoint], sink=ListSink())
        model = torch.nn.Linear(3, 1)
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        sampled = []
        for epoch in monitor.epochs(1):
            for x in monitor.batches(loader):
                monitor.step_end(loss=1.0)
                if monitor.state.step % 2 == 0:
                    monitor.validation_end({"loss": 1.0})
                    if monitor.state.step == kill_after_validating_at:
                        return checkpoint.start.step, sampled  # killed while it generates the sample
                    sampled.append(monitor.state.step)  # the sample, logged after validation_end
        monitor.close()
        return checkpoint.start.step, sampled

    assert run(kill_after_validating_at=4) == (0, [2])
    assert run() == (2, [4, 6, 8])  # from step 2's checkpoint: step 4 validated and sampled again


@pytest.mark.parametrize("order", ["epoch_end, then the scheduler", "the scheduler at the body's end"])
def test_a_scheduler_stepped_after_epoch_end_wrote_the_checkpoint_is_said_once(tmp_path, caplog, order):
    # A Lightning user logged the epoch's mean with epoch_end(), then stepped StepLR: resumed, the
    # run trained the rest of its schedule an epoch behind, unsaid.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)  # two, as a list: looked at both
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_epochs=1, scheduler=[warmup, scheduler])], sink=NullSink())
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for epoch in monitor.epochs(3):
            for x in monitor.batches([torch.zeros(2, 3)] * 2):
                optimizer.step()
                monitor.step_end(loss=1.0)
            if order.startswith("epoch_end"):
                monitor.epoch_end({"loss": 0.5})
            scheduler.step()
        monitor.close()
    said = [r.getMessage() for r in caplog.records if "after epoch_end() wrote" in r.getMessage()]
    assert said == ([] if order.startswith("the scheduler") else [
        "monitor: the lr scheduler stepped after epoch_end() wrote the epoch's checkpoint (step 2): a run resumed "
        "from it goes on a step behind; step the scheduler and update what extras keeps (an early stop's best and "
        "patience) before monitor.epoch_end(...)"])


@pytest.mark.parametrize("loop", ["PPO: annealed after an iteration's last update", "stepped before step_end",
                                  "per epoch, after the batches loop"])
def test_a_scheduler_stepped_after_a_step_s_checkpoint_in_the_rest_of_the_step_is_said_once(tmp_path, caplog, loop):
    # PPO annealed both optimizers' rates after the 32nd update's step_end, which had written the
    # checkpoint: resumed, the run trained a schedule step behind to its end, unsaid.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedulers = {"policy": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / 10),
                  "value": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)}
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=4, scheduler=schedulers)], env="ppo",
                      run_dir=tmp_path / "run", port=1, timeout=0.2)  # a run log: what a resume goes back to
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        if loop.startswith("per epoch"):
            for epoch in monitor.epochs(3):
                for x in monitor.batches([torch.zeros(2, 3)] * 4):
                    optimizer.step()
                    monitor.step_end(loss=1.0)
                schedulers["policy"].step()  # runs again on a resume from the epoch's last step
        else:
            for update in monitor.steps(12):
                optimizer.step()
                if loop.startswith("stepped before") and update % 4 == 3:
                    schedulers["policy"].step()
                monitor.step_end(loss=1.0)
                if loop.startswith("PPO") and update % 4 == 3:
                    schedulers["policy"].step()
        monitor.close()
    said = [r.getMessage() for r in caplog.records if "stepped after step_end()" in r.getMessage()]
    assert said == ([] if not loop.startswith("PPO") else [
        "monitor: the lr scheduler stepped after step_end() wrote the checkpoint of step 4, before the loop's next "
        "batch: a run resumed from it goes on a schedule step behind (what a saved step does after its step_end is "
        "not run again); step the scheduler before monitor.step_end(...), or, at a validation there, before "
        "monitor.validation_end(...)"])


@pytest.mark.parametrize("drawn", ["after step_end", "before step_end"])
def test_a_generator_kept_in_extras_drawn_from_after_a_step_s_checkpoint_is_said_once(tmp_path, caplog, drawn):
    # An RLHF loop sampled text after step_end from a generator kept in extras: resumed, its first
    # sample repeated the killed run's last one, the generator put back to before those draws.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sampling = torch.Generator().manual_seed(1234)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=4, extras=lambda: {"sampling": sampling.get_state()})
    monitor = Monitor([checkpoint], env="rlhf", run_dir=tmp_path / "run", port=1, timeout=0.2)
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for step in monitor.steps(12):
            optimizer.step()
            if drawn.startswith("before"):
                torch.randint(100, (8,), generator=sampling)
            monitor.step_end(loss=1.0)
            if drawn.startswith("after"):
                torch.randint(100, (8,), generator=sampling)
        monitor.close()
    said = [r.getMessage() for r in caplog.records if "changed after step_end()" in r.getMessage()]
    assert said == ([] if drawn.startswith("before") else [
        "monitor: Checkpoint(extras=...) changed after step_end() wrote the checkpoint of step 4, before the loop's "
        "next batch (sampling): a run resumed from it goes on from their values before that (what a saved step does "
        "after its step_end is not run again; a generator kept there draws the same numbers again); change them "
        "before monitor.step_end(...), or draw samples from a generator seeded by the step, "
        "torch.Generator().manual_seed(seed + monitor.state.step)"])


def test_an_early_stop_s_count_updated_after_epoch_end_wrote_the_checkpoint_is_said_once(tmp_path, caplog):
    # A tabular loop counted its epochs without improvement after epoch_end(metrics): resumed, it
    # went on with the count one epoch stale and stopped an epoch later than the run never killed.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = 0
    checkpoint = Checkpoint(tmp_path / "ckpt", every_epochs=1, extras=lambda: {"bad": bad, "note": "x"})
    monitor = Monitor([checkpoint], sink=NullSink())
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for epoch in monitor.epochs(3):
            for x in monitor.batches([torch.zeros(2, 3)] * 2):
                monitor.step_end(loss=1.0)
            monitor.validation_end({"loss": 1.0})
            monitor.epoch_end({"loss": 0.5})
            bad += 1  # no better: one more epoch of patience spent
        monitor.close()
    assert [r.getMessage() for r in caplog.records if "after epoch_end() wrote" in r.getMessage()] == [
        "monitor: Checkpoint(extras=...) changed (bad: 0 then 1) after epoch_end() wrote the epoch's checkpoint "
        "(step 2): a run resumed from it goes on a step behind; step the scheduler and update what extras keeps (an "
        "early stop's best and patience) before monitor.epoch_end(...)"]


def test_a_new_run_in_a_finished_run_s_folder_names_the_loop_s_own_files_it_leaves_there(tmp_path, caplog):
    # A LoRA script saved adapters-step-N.pt beside the checkpoints: the next run set the
    # checkpoints aside and wrote over the earlier run's adapters, unsaid.
    def run() -> None:
        monitor = Monitor([Checkpoint(tmp_path, every_steps=1, resume=True)], sink=NullSink())
        model = torch.nn.Linear(3, 1)
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        monitor.step_end(loss=1.0)
        torch.save(model.state_dict(), tmp_path / "adapters-step-0001.pt")
        monitor.close()

    run()
    with caplog.at_level("WARNING", logger="monitor"):
        run()
    (said,) = [r.getMessage() for r in caplog.records if "a new run in" in r.getMessage()]
    assert said.endswith("; the loop's own files stay in the folder, where this run may write over them: "
                         "adapters-step-0001.pt (move them first, or name them by run)"), said


def _epochs(monitor: Monitor, losses: list[float], steps: int = 4) -> None:
    for epoch, loss in enumerate(losses):
        monitor.epoch_start(epoch)
        for _ in range(steps):
            monitor.step_end(loss=1.0)
        monitor.validation_end({"loss": loss, "accuracy": 1 - loss})
        monitor.epoch_end()


def test_a_checkpoint_is_ranked_by_the_value_measured_for_it_and_the_mode_follows_the_metric(tmp_path, caplog):
    parts = build()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=3, every_epochs=1, keep_last=1, keep_best=3, metric="loss")
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    _epochs(monitor, [0.5, 0.3, 0.4, 0.2])
    # The best three are the epochs' saves at 16, 8 and 12; step 9, saved after the 0.3 of step 8, has no value.
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt")) == [checkpoint_name(s) for s in (8, 12, 16)]
    with caplog.at_level("WARNING", logger="monitor"):
        assert Checkpoint(tmp_path / "a", metric="accuracy").mode == "max"
        assert Checkpoint(tmp_path / "b", metric="val_loss").mode == "min"
        assert Checkpoint(tmp_path / "b", metric="rel_l2").mode == "min"  # a relative L2 error
        assert Checkpoint(tmp_path / "b", metric="nusselt").mode == "max"  # a guess: said
        assert Checkpoint(tmp_path / "b", metric="nusselt", mode="max").mode == "max"
    assert [r.getMessage() for r in caplog.records if "best" in r.getMessage()] == [
        "monitor: Checkpoint(metric='nusselt') keeps the highest as best: its name is neither a loss's or an error's "
        "nor a score's; pass mode='min' if lower is better (mode='max' says this is right)"]
    caplog.clear()
    named = Checkpoint(tmp_path / "c", every_epochs=1, metric="val_loss")
    monitor = Monitor([named], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        _epochs(monitor, [0.5, 0.3])
    assert [r.getMessage() for r in caplog.records if "metric" in r.getMessage()] == [
        "monitor: Checkpoint's metric 'val_loss' is not among the metrics the loop passed at validation, got "
        "['accuracy', 'loss']: its checkpoints are not ranked"]
    caplog.clear()
    seen = Checkpoint(tmp_path / "d", every_epochs=1, metric="loss")
    monitor = Monitor([seen], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        _epochs(monitor, [0.5, 0.3])
        monitor.validation_end({"swa_loss": 0.2})  # an averaged model's, once: no warning
    assert not [r for r in caplog.records if "metric" in r.getMessage()]


def test_a_validation_after_a_step_s_checkpoint_ranks_that_checkpoint(tmp_path):
    parts = build()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, keep_last=1, keep_best=1, metric="loss")
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    losses = iter([5.0, 1.0, 9.0, 7.0])
    for _ in monitor.batches(range(8)):
        monitor.step_end(loss=1.0)
        if monitor.state.step % 2 == 0:
            monitor.validation_end({"loss": next(losses)})  # measured on the weights of this step's checkpoint
    monitor.train_end()
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    assert manifest["best"] == [checkpoint_name(4)] and manifest["latest"] == checkpoint_name(8)
    assert load_checkpoint(tmp_path / "ckpt" / checkpoint_name(4))["metric"]["value"] == 1.0


@pytest.mark.parametrize("every, validated", [("every_epochs", "after epoch_end"), ("every_steps", "after epoch_end"),
                                              ("every_steps", "before epoch_end"), ("every_steps", "left to epochs")])
def test_a_validation_after_the_epoch_s_checkpoint_ranks_that_checkpoint_also_after_a_resume(tmp_path, every,
                                                                                               validated):
    parts = build()
    losses = [5.0, 9.0, 1.0, 7.0]

    def train(checkpoint: Checkpoint, epochs: int) -> None:
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(parts.model, parts.optimizer)
            for epoch in monitor.epochs(epochs):
                for _ in monitor.batches(range(2)):
                    monitor.step_end(loss=1.0)
                if validated == "after epoch_end":  # a scheduler and early stopping after it, as many loops have
                    monitor.epoch_end()
                monitor.validation_end({"loss": losses[epoch]})  # measured on the weights just saved
                if validated == "before epoch_end":
                    monitor.epoch_end()

    options = {every: 1 if every == "every_epochs" else 2, "keep_last": 1, "keep_best": 1, "metric": "loss",
               "at_end": False, "resume": True}  # (a save at train_end would rank the last one itself)
    first = Checkpoint(tmp_path / "ckpt", **options)
    train(first, 3)
    listed = {info.path.name: info.metric for info in list_checkpoints(tmp_path / "ckpt")}
    assert first.best_path.name == checkpoint_name(6) and listed == {checkpoint_name(6): 1.0}
    # Resumed from the step-6 file, whose own records had no value for it yet, it keeps its rank.
    again = Checkpoint(tmp_path / "ckpt", extend=True, **options)
    train(again, 4)
    assert again.best_path.name == checkpoint_name(6)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt")) == [checkpoint_name(6), checkpoint_name(8)]


def test_extras_that_are_not_a_dict_and_a_full_disk_say_what_went_wrong(tmp_path, monkeypatch):
    parts = build()
    monitor = Monitor([Checkpoint(tmp_path / "a", every_steps=1, extras=lambda: 5)], sink=NullSink())
    monitor.train_start(parts.model, parts.optimizer)
    with pytest.raises(CheckpointWriteError, match="extras must return a dict of name to value, got int"):
        monitor.step_end(loss=1.0)

    def full_disk(*args, **kwargs):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20480 vs 20368")

    monkeypatch.setattr(torch, "save", full_disk)
    monitor = Monitor([Checkpoint(tmp_path / "b", every_steps=1)], sink=NullSink())
    monitor.train_start(parts.model, parts.optimizer)
    with pytest.raises(CheckpointWriteError, match=r"could not be written: OSError: \[Errno 28\] No space left"):
        monitor.step_end(loss=1.0)


def test_a_relative_directory_stays_where_it_was_named_after_a_chdir(tmp_path, monkeypatch):
    (tmp_path / "job").mkdir()
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path / "job")
    checkpoint = Checkpoint("ckpt", every_steps=1)
    monkeypatch.chdir(tmp_path / "outputs")  # as Hydra does once the script runs
    parts = build()
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    monitor.step_end(loss=1.0)
    assert (tmp_path / "job" / "ckpt" / checkpoint_name(1)).is_file() and not (tmp_path / "outputs" / "ckpt").exists()


def test_resuming_into_an_optimizer_of_another_class_names_both(tmp_path):
    parts = build()
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=1)], sink=NullSink(), raise_errors=True)
    monitor.train_start(parts.model, parts.optimizer)
    parts.model(torch.ones(2, 4)).sum().backward()
    parts.optimizer.step()  # SGD's momentum buffers: no state AdamW can take
    monitor.step_end(loss=1.0)
    other = torch.optim.AdamW(parts.model.parameters())
    with pytest.raises(ValueError, match="optimizer must be of the class whose state .* holds, SGD, got AdamW"):
        resume(tmp_path / "ckpt", parts.model, other)
    # An Adam's state loads into an LBFGS (whose step then fails, its groups holding Adam's options): refused too.
    monitor = Monitor([Checkpoint(tmp_path / "adam", every_steps=1)], sink=NullSink(), raise_errors=True)
    adam = torch.optim.Adam(parts.model.parameters())
    monitor.train_start(parts.model, adam)
    parts.model(torch.ones(2, 4)).sum().backward()
    adam.step()
    monitor.step_end(loss=1.0)
    lbfgs = torch.optim.LBFGS(parts.model.parameters())
    before = [p.clone() for p in parts.model.parameters()]
    with pytest.raises(ValueError, match=r"optimizer must be of the class whose state .* holds, Adam, got LBFGS "
                                         r"\(a loop that changes its optimizer mid-run passes train_start both.*; "
                                         r"one whose later phase makes a new optimizer, or a new head, builds them "
                                         r"before train_start .*checkpoint.start.began\(phase2_epoch\)\)"):
        resume(tmp_path / "adam", parts.model, lbfgs)
    assert all(torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))  # nothing half put back


def test_a_scheduler_not_given_to_the_checkpoint_and_a_loop_that_counts_its_own_epochs_are_told(tmp_path, caplog):
    parts = build()  # its ExponentialLR steps the optimizer
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1, resume=True)
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(parts.model, parts.optimizer)
        monitor.epoch_start(0)
        monitor.epoch_start(1)
        for _ in range(3):
            monitor.step_end(loss=1.0)
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: an lr scheduler steps optimizer SGD, and Checkpoint was given no scheduler=: its state is not "
        "saved, so a resumed run starts its schedule over"]
    caplog.clear()
    again = build()
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1, resume=True)
    monitor = Monitor([checkpoint], sink=NullSink(), raise_errors=True)  # continues at epoch 1, step 3
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(again.model, again.optimizer)
        monitor.epoch_start(0)  # for epoch in range(epochs): the loop's own count, from 0 again
    assert [r.getMessage() for r in caplog.records if "epoch_start" in r.getMessage()] == [
        "monitor: epoch_start(0) goes back from epoch 1, where the resumed run continues: iterate "
        "monitor.epochs(n) and monitor.batches(loader) to continue there (reported once)"]


@pytest.mark.parametrize("given, said", [("plateau", True), ("both", False), ("sequential", False)])
def test_a_warm_up_beside_the_plateau_given_to_the_checkpoint_is_told_its_schedule_starts_over(tmp_path, caplog,
                                                                                             given, said):
    # A forecaster's loop: a LambdaLR warm-up stepped each batch, a ReduceLROnPlateau each epoch.
    from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, SequentialLR
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    plateau = ReduceLROnPlateau(optimizer, patience=1)
    scheduler = {"plateau": plateau, "both": [warmup, plateau],
                 "sequential": SequentialLR(optimizer, [warmup, LambdaLR(optimizer, lambda s: 1.0)], [30])}[given]
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=1, scheduler=scheduler)], sink=NullSink(),
                      raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(model, optimizer)
    assert [r.getMessage() for r in caplog.records] == ([
        "monitor: an lr scheduler steps optimizer AdamW, and Checkpoint(scheduler=...) does not hold it (a "
        "ReduceLROnPlateau aside): its state is not saved, so a resumed run starts its schedule over (a warm-up starts "
        "again); give every scheduler the loop steps, e.g. scheduler=[warmup, plateau]"] if said else [])


def test_a_gan_s_optimizer_outside_the_model_is_reported_and_a_read_only_folder_fails_at_train_start(
        tmp_path, caplog, monkeypatch):
    from pathlib import Path

    generator, discriminator = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizers = {"G": torch.optim.Adam(generator.parameters()), "D": torch.optim.Adam(discriminator.parameters())}
    monitor = Monitor([Checkpoint(tmp_path / "gan", every_steps=1)], sink=NullSink(), raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.train_start(generator, optimizers)  # the model is G alone: D's weights are in no checkpoint
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: optimizer D updates parameters outside the model given to train_start: their values are not in "
        "the checkpoints (give train_start a module holding them all, or keep them in Checkpoint(extras=lambda: "
        "{...}) and set them back from checkpoint.start.extras)"]
    # A meta-learned rate in a group of its own: named; kept through extras=, nothing to say
    model, inner_lr = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.tensor(0.1))
    optimizer = torch.optim.Adam([{"params": model.parameters()}, {"params": [inner_lr], "name": "inner_lr"}])
    rates = torch.nn.ParameterDict({"fc": inner_lr})
    for n, (extras, said) in enumerate((
            (None, ["monitor: optimizer Adam's group 'inner_lr' updates parameters outside the model"]),
            (lambda: {"inner_lr": inner_lr, "best": 0.5}, []),
            (lambda: {"inner_lrs": rates.state_dict()}, []),  # MAML's: as README keeps an EMA, was said all the same
            (lambda: {"meta": [{"fc": inner_lr.detach()}]}, []))):
        caplog.clear()
        monitor = Monitor([Checkpoint(tmp_path / f"meta-{n}", every_steps=1, extras=extras)],
                          sink=NullSink(), raise_errors=True)
        with caplog.at_level("WARNING", logger="monitor"):
            monitor.train_start(model, optimizer)
        assert [r.getMessage()[:len(said[0])] if said else r.getMessage() for r in caplog.records] == said

    def read_only(self, data):  # as root here, a chmod cannot make a folder read-only
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    parts = build()
    monitor = Monitor([Checkpoint(tmp_path / "ro", every_steps=500, scheduler=parts.scheduler)], sink=NullSink())
    with pytest.raises(CheckpointWriteError, match=r"directory .*ro cannot hold checkpoints: .*Read-only file system"):
        monitor.train_start(parts.model, parts.optimizer)  # not 500 steps later, at the first save


_INITIALIZED = []  # in a DataLoader worker: what the loader's own worker_init_fn did


def _own_init(worker_id: int) -> None:
    _INITIALIZED.append(worker_id)


class _WhatWorkersSee(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        import signal
        return torch.tensor([signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,
                             signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN, _INITIALIZED == [0]])


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_loader_workers_ignore_the_stop_signals_while_a_checkpoint_catches_them_and_keep_their_own_init(
        tmp_path, start):
    loader = torch.utils.data.DataLoader(_WhatWorkersSee(), batch_size=4, num_workers=1, worker_init_fn=_own_init,
                                         multiprocessing_context=start)
    plain = torch.utils.data.DataLoader(_WhatWorkersSee(), batch_size=4, num_workers=1)
    with Monitor([Checkpoint(tmp_path, resume=True)], sink=NullSink()) as monitor:
        monitor.train_start(torch.nn.Linear(2, 2))
        for _ in monitor.epochs(1):
            (seen,) = list(monitor.batches(loader))
        assert seen.all()  # both ignored, and the loader's own worker_init_fn ran
        from types import SimpleNamespace

        from monitor.preemption import shield_workers
        other = SimpleNamespace(num_workers=2)  # an iterable with workers of its own, not a DataLoader
        shield_workers(other)
        assert not hasattr(other, "worker_init_fn")
    (outside,) = list(plain)  # a loader not iterated through monitor.batches is left as it was
    assert not outside[:, :2].any()


def _two_schedulers() -> tuple[torch.nn.Module, torch.optim.Optimizer, list]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    return model, optimizer, [warmup, plateau]


def test_a_list_of_schedulers_is_saved_and_each_restored_to_its_own(tmp_path):
    model, optimizer, schedulers = _two_schedulers()
    with Monitor([Checkpoint(tmp_path, scheduler=schedulers)], sink=NullSink()) as monitor:
        monitor.train_start(model, optimizer)
        for step in range(5):
            optimizer.step()
            schedulers[0].step()
            schedulers[1].step(1.0 + step)  # a rising validation loss: the plateau cuts the rate
            monitor.step_end(loss=torch.tensor(1.0))
    assert schedulers[1].num_bad_epochs == 0 and optimizer.param_groups[0]["lr"] < 0.5

    model, optimizer, again = _two_schedulers()
    resume(tmp_path, model, optimizer, again)
    assert [s.state_dict() for s in again] == [s.state_dict() for s in schedulers]
    with pytest.raises(ValueError, match=r"scheduler must be the schedulers .* holds \(0, 1\), got a, b"):
        resume(tmp_path, model, optimizer, {"a": again[0], "b": again[1]})
    with pytest.raises(TypeError, match=r"scheduler\['1'\] must have state_dict\(\)/load_state_dict\(\), got int"):
        Checkpoint(tmp_path, scheduler=[again[0], 3])


def test_extend_needs_resume_and_not_fresh(tmp_path):
    with pytest.raises(ValueError, match=r"extend continues a finished run: it needs resume=True and not fresh, "
                                         r"got resume=False, fresh=False"):
        Checkpoint(tmp_path, extend=True)
    with pytest.raises(ValueError, match=r"got resume=True, fresh=True"):
        Checkpoint(tmp_path, resume=True, fresh=True, extend=True)


# A max-steps script: it iterates its loader by hand and ends before the epoch does, workers still running.
_HELD_ITERATOR = """
import sys, torch
from torch.utils.data import DataLoader, TensorDataset
from monitor import Checkpoint, Monitor
from monitor.log import NullSink
loader = DataLoader(TensorDataset(torch.randn(256, 4)), batch_size=8, num_workers=2,
                    persistent_workers=sys.argv[2] == "persistent")
monitor = Monitor([Checkpoint(sys.argv[1], resume=True)], sink=NullSink())
monitor.train_start(torch.nn.Linear(4, 1))
batches = monitor.batches(loader)
for step in range(5):
    next(batches)
    monitor.step_end()
print("trained", flush=True)
"""


@pytest.mark.parametrize("workers", ["persistent", "per-epoch"])
def test_a_script_ends_while_its_shielded_loader_workers_still_run(tmp_path, workers):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HELD_ITERATOR, str(tmp_path), workers], capture_output=True,
                          text=True, timeout=60)  # multiprocessing's exit waited forever on workers ignoring SIGTERM
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]


PRE_EMPTED_WITHOUT_WITH = """
import os, signal, sys, torch
from monitor import Checkpoint, Monitor, Scalars
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
monitor = Monitor([Scalars(), Checkpoint(sys.argv[1] + "/ckpt", every_steps=100, resume=True)], env="pre-empted",
                  run_dir=sys.argv[1] + "/run", port=1, timeout=0.2)
monitor.train_start(model, optimizer)
for step in range(10):
    loss = model(torch.ones(1, 2)).sum()
    optimizer.zero_grad()
    loss.backward()
    monitor.after_backward()
    optimizer.step()
    if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    monitor.step_end(loss=loss)
"""


def test_a_pre_empted_loop_without_a_with_block_is_recorded_as_interrupted_with_its_status(tmp_path):
    # The exit hook that closes an unclosed Monitor cannot see a SystemExit's status.
    import subprocess
    import sys

    from monitor.callbacks.checkpoint import REQUEUE_EXIT_STATUS
    from monitor.runs import described

    done = subprocess.run([sys.executable, "-c", PRE_EMPTED_WITHOUT_WITH, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == REQUEUE_EXIT_STATUS, done.stderr[-2000:]
    run = described(tmp_path / "run")
    assert (run.status, run.error) == ("interrupted", f"SystemExit: {REQUEUE_EXIT_STATUS}")


SIGTERM_WHILE_EXITING = """
import atexit, os, signal, sys, time, torch
from monitor import Checkpoint, Monitor

def stopped_late():  # registered first, so it runs last: the scheduler's SIGTERM as the interpreter winds down
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)

atexit.register(stopped_late)
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with Monitor([Checkpoint(sys.argv[1] + "/ckpt", every_steps=2, resume=True)], env="late", run_dir=sys.argv[1] + "/run",
             port=1, timeout=0.2) as monitor:
    monitor.train_start(model, optimizer)
    for step in range(4):
        model(torch.ones(1, 2)).sum().backward()
        monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step_end()
"""


def test_a_stop_signal_while_a_script_that_ended_well_exits_leaves_its_status_0_for_a_run_marked_finished(tmp_path):
    # A SIGTERM in the ~1 s the interpreter takes to wind down gave status 143 for a run latest.json called
    # finished: a requeue then trained anew from scratch.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_EXITING, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert json.loads((tmp_path / "ckpt" / MANIFEST).read_text())["finished"] is True


LOGS_AFTER_STEP_END = """
import os, sys, torch
from monitor import Checkpoint, Monitor, Scalars
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
loader = [torch.randn(8, 4) for _ in range(8)]
with Monitor([Scalars(), Checkpoint(sys.argv[1] + "/ckpt", every_steps=4, resume=True)], env="after", port=1,
             run_dir=sys.argv[1] + "/run", timeout=0.2) as monitor:
    monitor.train_start(model, optimizer)
    for epoch in monitor.epochs(3):
        for x in monitor.batches(loader):
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss=loss)
            monitor.log.histogram("latent", monitor.state.step, x.abs())  # the step's, after its step_end
            if monitor.state.step == int(sys.argv[2]):
                os._exit(9)  # SIGKILL's way: nothing flushed
"""


def test_what_a_checkpoint_s_step_logged_after_step_end_survives_a_kill_two_steps_later(tmp_path):
    # A VAE's histogram logged after step_end at the checkpoint's step 12 was gone after a kill at 14: it
    # was still in the training process's queue, and the step mark that keeps it was not on disk either.
    import subprocess
    import sys

    for kill_at in (14, 0):
        subprocess.run([sys.executable, "-c", LOGS_AFTER_STEP_END, str(tmp_path), str(kill_at)], capture_output=True,
                       timeout=120)
    logged = [e["x"] for e in RunLog.read(tmp_path / "run" / RunLog.FILENAME) if e.get("k") == "histogram"]
    assert logged == list(range(1, 25))


def test_a_trial_that_exited_for_requeue_in_a_process_that_goes_on_leaves_the_next_one_the_signals(tmp_path):
    # A sweep running trials in one process, catching SystemExit: the next trial's Checkpoint
    # takes the stop signals the one that exited ignored while it exited.
    import signal

    before = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        parts = build()
        first = Monitor([Checkpoint(tmp_path / "a", resume=True, scheduler=parts.scheduler)], sink=NullSink())
        first.train_start(parts.model, parts.optimizer)
        first.step_end(loss=1.0)  # a step trained: a stop signal waits for the next step's end
        signal.raise_signal(signal.SIGTERM)
        first.step_end(loss=1.0)  # saved; the exit waits for the rest of the step's code
        with pytest.raises(SystemExit):
            first.step_end(loss=1.0)  # the next step begins
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second signal while it exits
        second = Monitor([Checkpoint(tmp_path / "b", resume=True, scheduler=parts.scheduler)], sink=NullSink())
        second.train_start(parts.model, parts.optimizer)
        assert signal.getsignal(signal.SIGTERM) == second.callbacks[-1]._note_signal
        second.train_end()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _step(monitor: Monitor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
          crash_at: int | None = None) -> None:
    """One step as a loop writes it; a KeyboardInterrupt (the job killed) after step ``crash_at``."""
    model(inputs).square().mean().backward()
    monitor.after_backward()
    optimizer.step()
    optimizer.zero_grad()
    monitor.step_end()
    if monitor.state.step == crash_at:
        raise KeyboardInterrupt


@pytest.mark.parametrize("every_steps, crash_at, resumed_at", [
    (1, 5, 5),  # from a checkpoint after the unfreeze
    (3, 4, 3)])  # from the epoch's end before it, which continues in the unfreeze's epoch
def test_a_run_that_unfroze_layers_into_its_optimizer_says_how_to_resume_and_resumes_so(tmp_path, every_steps,
                                                                                         crash_at, resumed_at):
    sink = ListSink()

    def job(crash_at: int | None) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
        sink.records.clear()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        backbone = model[0].requires_grad_(False)
        optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1, momentum=0.9)
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=every_steps, every_epochs=1, resume=True)
        with Monitor([LearningRate(), checkpoint], sink=sink, raise_errors=True) as monitor:
            unfreeze = lambda: (backbone.requires_grad_(True),
                                optimizer.add_param_group({"params": backbone.parameters(), "lr": 0.01}))
            if checkpoint.start.began(1):  # as README says: the groups again before train_start
                unfreeze()
            monitor.train_start(model, optimizer)
            for epoch in monitor.epochs(2):
                if epoch == 1 and len(optimizer.param_groups) == 1:
                    unfreeze()
                for _ in monitor.batches(range(3)):
                    torch.manual_seed(monitor.state.step)
                    _step(monitor, model, optimizer, torch.randn(5, 4), crash_at)
        return model, optimizer, checkpoint.start.step

    with pytest.raises(KeyboardInterrupt):
        job(crash_at=crash_at)
    groups = 2 if resumed_at == 5 else 1
    with pytest.raises(CheckpointResumeError, match=rf"optimizer must have the {groups} parameter groups? it had at "
                                                    rf"step {resumed_at} \(epoch \d\), .* got {3 - groups}: .* adds "
                                                    rf"them again before train_start when the run it resumes had"):
        resumed = Checkpoint(tmp_path / "ckpt", every_steps=1, resume=True)
        with Monitor([resumed], sink=NullSink(), raise_errors=True) as monitor:
            model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1, momentum=0.9)
            if groups == 1:  # the groups added one checkpoint too early
                optimizer.add_param_group({"params": model[0].parameters(), "lr": 0.01})
            monitor.train_start(model, optimizer)
    model, optimizer, resumed_from = job(crash_at=None)
    # The head's curve goes on as lr, not group 0 (LearningRate's trace names are in the checkpoint).
    steps = range(resumed_at + 1, 7)
    assert sink.points("learning rate") == {"lr": [(s, 0.1) for s in steps], "group 1": [(s, 0.01) for s in steps]}
    shutil.rmtree(tmp_path / "ckpt")
    straight, _, _ = job(crash_at=None)
    assert resumed_from == resumed_at and len(optimizer.param_groups) == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), straight.state_dict().values()))


def test_a_job_killed_twice_between_a_file_and_its_pointer_still_resumes(tmp_path, monkeypatch):
    import monitor.callbacks.checkpoint as callback

    written = callback.write_manifest

    def job(killed_at_save_of: int | None) -> int:
        def write_manifest(directory, **fields):
            if fields["latest"] == checkpoint_name(killed_at_save_of or 0):
                raise KeyboardInterrupt  # SIGKILL after the file's os.replace, before latest.json's
            written(directory, **fields)

        monkeypatch.setattr(callback, "write_manifest", write_manifest)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, keep_last=1, resume=True)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            for _ in monitor.batches(range(8)):
                _step(monitor, model, optimizer, torch.ones(4, 3))
        return checkpoint.start.step

    for step in (2, 4):
        with pytest.raises(KeyboardInterrupt):
            job(killed_at_save_of=step)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt")) == [checkpoint_name(2), checkpoint_name(4)]
    assert not (tmp_path / "ckpt" / MANIFEST).exists()
    assert job(killed_at_save_of=None) == 4  # not refused as another run's folder
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*.pt")) == [checkpoint_name(8)]


@pytest.mark.parametrize("loop, every, told", [
    ("monitor.epochs and monitor.batches", "steps", None),
    ("monitor.epochs, its own batches", "steps", "continues from step 3 (epoch 0, 3 batches done) in a loop "
                                                 "that takes its own batches"),
    ("monitor.epochs, its own batches", "epochs", None),  # from an epoch's end: the next begins as it would
    ("its own epochs and batches", "steps", "continues from step 3 in a loop that takes its own batches"),
    ("its own epochs and batches", "steps, in epoch 1", "continues from step 5 (epoch 1, 1 batches done) in a loop "
                                                        "that takes its own epochs and batches"),
    ("its own steps", "steps", "continues from step 3 in a loop that takes its own batches: one that counts on"),
    ("its own steps, monitor.batches cycled", "steps", None)])
def test_a_resumed_run_whose_loop_takes_its_own_batches_is_told_it_trains_on_them_again(tmp_path, caplog, loop,
                                                                                         every, told):
    def job(crash_at: int | None) -> None:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpoint = Checkpoint(tmp_path / "ckpt", resume=True, **{f"every_{every.split(',')[0]}": 1})
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            if loop.startswith("its own steps"):  # a diffusion model's: an endless iterator over the loader
                def forever():  # as README shows it
                    while True:
                        yield from monitor.batches(range(4))

                batches = forever() if loop.endswith("cycled") else itertools.chain.from_iterable(
                    itertools.repeat(range(4)))
                for _ in range(monitor.state.step, 8):
                    drawn.append(next(batches))
                    _step(monitor, model, optimizer, torch.ones(2, 3), crash_at)
                return
            for epoch in monitor.epochs(2) if loop.startswith("monitor.epochs") else range(2):
                if every == "steps, in epoch 1":
                    monitor.epoch_start(epoch)
                for _ in monitor.batches(range(4)) if loop.endswith("monitor.batches") else range(4):
                    _step(monitor, model, optimizer, torch.ones(2, 3), crash_at)

    drawn = []
    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5 if every != "steps" else 3)  # mid-epoch; in epoch 1, after epoch 0's checkpoint
    with caplog.at_level("WARNING", logger="monitor"):
        job(crash_at=None)
    if loop == "its own steps, monitor.batches cycled":
        assert drawn == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3][:3] + [3, 0, 1, 2, 3]  # on after the batches done
    said = [r.getMessage() for r in caplog.records if "trains on what was done again" in r.getMessage()]
    assert said == [] if told is None else len(said) == 1 and told in said[0], said


def test_ctrl_c_while_a_checkpoint_is_written_is_an_interrupt_not_a_failed_write(tmp_path, monkeypatch):
    import monitor.callbacks.checkpoint as callback

    def interrupted(path, checkpoint):  # torch's zip writer fails on its own while the interrupt unwinds it
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7808 vs 7760")

    monkeypatch.setattr(callback, "save_checkpoint", interrupted)
    model = torch.nn.Linear(3, 1)
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=1)], sink=NullSink(), raise_errors=True)
    with pytest.raises(KeyboardInterrupt):
        with monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            monitor.step_end()
    assert monitor._ending.status == "interrupted"


def test_a_stop_signal_in_a_jupyter_kernel_leaves_the_next_one_to_end_it(tmp_path, monkeypatch):
    # IPython catches the SystemExit(75) of a cell: the kernel lives on, and must not go on ignoring SIGTERM.
    import os
    import signal
    import monitor.callbacks.checkpoint as callback

    monkeypatch.setattr(callback, "interactive", lambda: True)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    model = torch.nn.Linear(3, 1)
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=5, resume=True)], sink=NullSink(), raise_errors=True)
    with pytest.raises(SystemExit) as stopped:
        with monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            monitor.step_end()
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the Checkpoint: saved at this step's end
            monitor.step_end()
    assert stopped.value.code == 75 and (tmp_path / "ckpt" / "step-000000002.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_resumed_run_trains_the_layers_its_checkpoint_trained_whatever_the_loop_froze_at_its_start(tmp_path, caplog):
    # requires_grad is in no state_dict: a loop that adds an unfrozen backbone's group again
    # but leaves it frozen, as at its start, would train on without it, and say nothing.
    def job(crash_at: int | None) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        backbone = model[0].requires_grad_(False)
        optimizer = torch.optim.SGD(model[2].parameters(), lr=0.1)
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=1, resume=True)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            if checkpoint.start.began(1):
                optimizer.add_param_group({"params": backbone.parameters(), "lr": 0.01})  # requires_grad left out
            monitor.train_start(model, optimizer)
            for epoch in monitor.epochs(2):
                if epoch == 1 and len(optimizer.param_groups) == 1:
                    optimizer.add_param_group({"params": backbone.requires_grad_(True).parameters(), "lr": 0.01})
                for _ in monitor.batches(range(3)):
                    torch.manual_seed(monitor.state.step)
                    _step(monitor, model, optimizer, torch.randn(5, 4), crash_at)
        return model

    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5)
    with says(caplog, r"requires_grad of 2 parameters of the model set as at step 5, .*: "
                      r"0.weight True, 0.bias True$"):
        resumed = job(crash_at=None)
    shutil.rmtree(tmp_path / "ckpt")
    straight = job(crash_at=None)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def _fold(root, name: str, steps: int, crash_at: int | None = None) -> None:
    """A cross-validation's fold in env "folds", its checkpoints in ``root / name``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(root / name, every_steps=2, resume=True)
    with Monitor([Scalars(), checkpoint], env="folds", run_dir=root / "runs", port=1) as monitor:  # no server
        monitor.train_start(model, optimizer)
        while monitor.state.step < steps:
            loss = model(torch.ones(2, 3)).square().mean()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.step_end(loss=loss)
            if monitor.state.step == crash_at:
                raise KeyboardInterrupt


def _loss_steps(log) -> list:
    return [e["x"] for e in RunLog.read(log) if e.get("win") == "loss" and e["k"] == "points"]


def test_a_fold_resumed_after_a_later_fold_of_its_env_goes_on_in_its_own_log_and_keeps_the_later_one(tmp_path):
    # One env for every fold: fold a killed at step 5 (saved at 4), fold b trained since, then
    # fold a run again. Its log, set aside by b's, comes back and goes on; b's stays whole.
    with pytest.raises(KeyboardInterrupt):
        _fold(tmp_path, "a", 6, crash_at=5)
    _fold(tmp_path, "b", 9)
    _fold(tmp_path, "a", 6)
    runs = tmp_path / "runs"
    (later,) = (runs / "earlier").iterdir()
    assert _loss_steps(later) == list(range(1, 10))
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["run_id"] == later.stem
    log = runs / RunLog.FILENAME
    assert next(RunLog.read(log))["run_id"] == json.loads((tmp_path / "a" / MANIFEST).read_text())["run_id"]
    assert _loss_steps(log) == [1, 2, 3, 4, 5, 6]


def test_one_resumable_run_refuses_a_second_model_a_second_fold_whose_checkpoint_a_re_run_would_mix_up(tmp_path):
    first, second = build(0), build(1)
    monitor = Monitor([Checkpoint(tmp_path / "cv", every_steps=1, resume=True)], sink=NullSink())
    monitor.train_start(first.model, first.optimizer, hparams={"fold": 0})
    monitor.step_end(loss=1.0)
    monitor.train_start(first.model, torch.optim.Adam(first.model.parameters()))  # the same model trained on
    with pytest.raises(CheckpointResumeError, match="train_start was given another model in a run whose Checkpoint "
                                                    "resumes: .* give each model .* a Checkpoint folder of its own"):
        monitor.train_start(second.model, second.optimizer, hparams={"fold": 1})
    monitor.close()
    plain = Monitor([Checkpoint(tmp_path / "plain", every_steps=1)], sink=NullSink(), raise_errors=True)
    plain.train_start(first.model, first.optimizer)
    plain.train_start(second.model, second.optimizer)  # not resumed: told once by the Monitor, and goes on
    plain.close()


def test_a_run_that_reached_train_end_is_finished_once_the_script_begins_another(tmp_path):
    # A cross-validation killed in its second fold: run again, the first starts anew rather than
    # training further from its last checkpoint (an early-stopped fold had epochs left).
    _fold(tmp_path, "a", 2)
    assert not json.loads((tmp_path / "a" / MANIFEST).read_text())["finished"]  # a script's: at its clean exit
    with pytest.raises(KeyboardInterrupt):
        _fold(tmp_path, "b", 4, crash_at=3)
    assert json.loads((tmp_path / "a" / MANIFEST).read_text())["finished"]
    assert not json.loads((tmp_path / "b" / MANIFEST).read_text())["finished"]


def test_an_early_stopped_run_killed_in_its_own_last_work_resumes_with_no_epochs_left(tmp_path):
    from monitor.checkpoint import folder

    def job(**options) -> list[int]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        checkpoint = Checkpoint(tmp_path / "ckpt", every_epochs=1, resume=True, **options)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            for epoch in monitor.epochs(4):
                for _ in monitor.batches(range(3)):
                    _step(monitor, model, optimizer, torch.ones(2, 3))
                    steps.append(monitor.state.step)
                if epoch == 1 and not options:
                    break  # early stopping, with two epochs left
        folder._finishing.discard((tmp_path / "ckpt").resolve())  # the script killed after training: not finished
        return steps

    assert job() == [1, 2, 3, 4, 5, 6]
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    assert manifest["trained"] == 6 and not manifest["finished"]
    assert job() == []  # run again: the test after training runs again, nothing is trained further
    assert job(extend=True) == [7, 8, 9, 10, 11, 12]  # trained further on purpose: the epochs left


def test_a_steps_loop_resumes_at_the_step_after_its_checkpoint_and_an_early_stopped_one_trains_no_further(
        tmp_path, caplog):
    from monitor.checkpoint import folder

    def job(crash_at: int | None = None, stop_at: int | None = None, **options) -> list[int]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        done = []
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True, **options)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            for update in monitor.steps(8):
                done.append(update)
                _step(monitor, model, optimizer, torch.ones(2, 3), crash_at)
                if monitor.state.step == stop_at:
                    break  # early stopping
        folder._finishing.discard((tmp_path / "ckpt").resolve())  # the script killed after training
        return done

    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5)  # saved at step 4
    with caplog.at_level("WARNING", logger="monitor"):
        assert job(stop_at=6) == [4, 5]  # the steps done before each: updates 5 and 6
    assert not [r for r in caplog.records if "trains on what was done again" in r.getMessage()]
    assert job() == []  # run again after the early stop: nothing trained further
    assert job(extend=True) == [6, 7]


@pytest.mark.parametrize("order", ["step, step_end", "step_end, step", "LBFGS step, after_backward, step_end"])
def test_an_optimizer_step_after_step_end_is_told_once_as_the_step_s_checkpoint_lacks_its_update(tmp_path, caplog,
                                                                                                  order):
    parts = build()
    if order.startswith("LBFGS"):  # after_backward after step(closure), as README allows: no late step
        parts.optimizer = torch.optim.LBFGS(parts.model.parameters(), lr=0.1, max_iter=2)

    def closure() -> torch.Tensor:
        parts.optimizer.zero_grad()
        loss = parts.model(torch.ones(2, 4)).square().sum()
        loss.backward()
        return loss

    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Checkpoint(tmp_path / "ckpt", every_steps=2)], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(parts.model, parts.optimizer)
            for _ in range(4):
                if order.startswith("LBFGS"):
                    parts.optimizer.step(closure)
                    monitor.after_backward()
                    monitor.step_end()
                    continue
                parts.model(torch.ones(2, 4)).sum().backward()
                monitor.after_backward()
                if order == "step, step_end":
                    parts.optimizer.step()
                    monitor.step_end()
                else:
                    monitor.step_end()
                    parts.optimizer.step()  # a student's order: the checkpoint of step 2 missed step 2's update
                parts.optimizer.zero_grad()
    told = [r.getMessage() for r in caplog.records if "came after step_end" in r.getMessage()]
    assert told == ([] if order != "step_end, step" else [
        "monitor: optimizer.step() came after step_end (step 1) and before the next after_backward: where it is the "
        "step's own update, the step's checkpoints hold the weights from before it, and a resume from one loses it; "
        "call after_backward before optimizer.step() and step_end after it"])


def test_a_job_that_starts_in_a_working_directory_of_its_own_each_time_continues_its_run_log_where_it_was(
        tmp_path, monkeypatch, caplog):
    # Hydra's chdir into outputs/DATE/TIME: the default runs/ENV was another folder at each requeue,
    # so the resumed run's log was gone and its curves began again (1 point a curve after 7 requeues).
    from monitor.runs import exported

    def job(workdir: str, crash_at: int | None = None) -> None:
        (tmp_path / workdir).mkdir()
        monkeypatch.chdir(tmp_path / workdir)
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor([Scalars(), Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True)], env="hydra", port=1,
                     timeout=0.2) as monitor:
            monitor.train_start(model, optimizer)
            for update in monitor.steps(6):
                model(torch.ones(2, 3)).square().mean().backward()
                monitor.after_backward()
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=float(update + 1))  # a loss point a step, its step's number
                if monitor.state.step == crash_at:
                    raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job("first", crash_at=3)  # saved at step 2
    with caplog.at_level("WARNING", logger="monitor"):
        job("second")
    said = [r.getMessage() for r in caplog.records if "continues in its run folder" in r.getMessage()]
    assert said == [f"monitor: the run continues in its run folder {tmp_path / 'first' / 'runs' / 'hydra'}, where its "
                    f"checkpoint says its log is, not in {tmp_path / 'second' / 'runs' / 'hydra'} (this job's "
                    f"working directory is another: pass run_dir= to choose)"]
    steps = [x for x, _ in exported(tmp_path / "first" / "runs" / "hydra")["loss"]["train"]]
    assert steps == [1, 2, 3, 4, 5, 6] and not (tmp_path / "second" / "runs").exists()


def test_a_run_resumed_with_another_learning_rate_is_told_it_trains_at_the_checkpoint_s(tmp_path, caplog):
    # Guard's cure, a lower lr, given on the command line of the re-run: the checkpoint put 0.1 back silently
    def job(lr: float, crash_at: int | None = None) -> float:
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
        with Monitor([Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True, scheduler=warmup)], sink=NullSink(),
                     raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            for _ in monitor.steps(6):
                _step(monitor, model, optimizer, torch.ones(2, 3), crash_at)
                warmup.step()
        return optimizer.param_groups[0]["initial_lr"]

    with pytest.raises(KeyboardInterrupt):
        job(0.1, crash_at=3)
    with caplog.at_level("WARNING", logger="monitor"):
        assert job(0.1) == 0.1  # the same command: its warm-up's first lr differs, and nothing is said
    assert not [r for r in caplog.records if "learning rate" in r.getMessage()]
    caplog.clear()
    shutil.rmtree(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        job(0.1, crash_at=3)
    with caplog.at_level("WARNING", logger="monitor"):
        job(0.001)
    assert [r.getMessage() for r in caplog.records if "learning rate" in r.getMessage()] == [
        "monitor: the optimizer was given learning rate 0.001, the run 0.1: a resume trains at the rates its "
        "checkpoint saved (0.1); to change them, set each group's lr (and a scheduler's base_lrs) after train_start"]

    def by_hand(crash_at: int | None = None) -> None:  # a cosine schedule set each step, no scheduler
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with Monitor([Checkpoint(tmp_path / "by-hand", every_steps=2, resume=True)], sink=NullSink(),
                     raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            for update in monitor.steps(6):
                optimizer.param_groups[0]["lr"] = 1e-3 * (1 + math.cos(math.pi * update / 6)) / 2
                _step(monitor, model, optimizer, torch.ones(2, 3), crash_at)

    with pytest.raises(KeyboardInterrupt):
        by_hand(crash_at=3)
    caplog.clear()
    with caplog.at_level("WARNING", logger="monitor"):
        by_hand()  # the same command: the checkpoint's lr is the schedule's, not another choice
    assert not [r for r in caplog.records if "learning rate" in r.getMessage()]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from (torch.full((3,), float(n)) for n in itertools.count())


@pytest.mark.parametrize("through", ["monitor.batches", "its own iterator"])
def test_a_resumed_steps_loop_over_a_stream_goes_on_after_its_batches_through_monitor_batches_or_is_told(
        tmp_path, caplog, through):
    def job(crash_at: int | None = None) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        firsts = []
        loader = torch.utils.data.DataLoader(_Stream(), batch_size=2)
        with Monitor([Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True)], sink=NullSink(),
                     raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            batches = iter(monitor.batches(loader) if through == "monitor.batches" else loader)
            for _ in monitor.steps(6):
                x = next(batches)
                firsts.append(float(x[0, 0]))
                _step(monitor, model, optimizer, x, crash_at)
        return firsts

    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5)  # saved at step 4
    with caplog.at_level("WARNING", logger="monitor"):
        firsts = job()
    told = [r.getMessage() for r in caplog.records
            if "in a monitor.steps loop that reads a DataLoader" in r.getMessage()]
    if through == "monitor.batches":
        assert firsts == [8.0, 10.0] and not told  # steps 5 and 6 get the stream's 5th and 6th batches
    else:
        assert firsts == [0.0, 2.0] and told == [
            "monitor: the run continues from step 4 in a monitor.steps loop that reads a DataLoader itself: the "
            "loader starts over from its first batch (a stream's too), so the batches of the steps done are trained "
            "on again; draw them through monitor.batches, batches = iter(monitor.batches(loader)) and next(batches) "
            "each step, to go on after them"]


def test_a_fine_tuning_run_that_leaves_its_frozen_base_out_of_its_checkpoints_resumes_exactly(tmp_path, caplog):
    # LoRA's way: the pretrained base loaded from its own file, frozen; the checkpoints hold the
    # adapter (and the optimizer, the RNG, ...) alone, a fraction of the size.
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(64, 64).state_dict(), tmp_path / "base.pt")
    torch.save(torch.nn.Linear(64, 64).state_dict(), tmp_path / "other-base.pt")

    def job(crash_at: int | None = None, base: str = "base.pt") -> tuple[torch.nn.Module, list[int]]:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))
        model[0].load_state_dict(torch.load(tmp_path / base, weights_only=True))  # the base
        model[0].requires_grad_(False)
        optimizer = torch.optim.AdamW(model[1].parameters(), lr=0.1)
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True, save_frozen=False)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, optimizer)
            done = []
            for update in monitor.steps(6):
                done.append(update)
                _step(monitor, model, optimizer, torch.randn(4, 64), crash_at)
        return model, done

    straight, _ = job()
    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5)  # a new run (the one before finished), saved at step 4
    resumed, done = job()
    assert done == [4, 5]
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
    saved = torch.load(sorted((tmp_path / "ckpt").glob("step-*.pt"))[-1], weights_only=True)
    assert list(saved["model"]) == ["1.weight", "1.bias"] and saved["frozen"] == ["0.weight", "0.bias"]
    assert not [r for r in caplog.records if "not those the model holds now" in r.getMessage()]
    # Requeued on another base file: the adapters were trained on the first (perplexity 106 -> 202, unsaid).
    with pytest.raises(KeyboardInterrupt):
        job(crash_at=5)
    with caplog.at_level("WARNING", logger="monitor"):
        job(base="other-base.pt")
    assert [r.getMessage() for r in caplog.records if "not those the model holds now" in r.getMessage()] == [
        "monitor: the frozen parameters the checkpoint left out (save_frozen=False) are not those the model holds "
        "now: 2 of 2 differ (0.weight, 0.bias), where the run trained on another base; load the base the run began "
        "with before train_start"]

    grown = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1), torch.nn.Linear(1, 1))
    grown[0].requires_grad_(False)
    with pytest.raises(RuntimeError, match=r"missing keys \['2.weight', '2.bias'\], unexpected keys \[\] \(the 2 "
                                           r"frozen parameters left out of the checkpoint are not missing\)"):
        resume(tmp_path / "ckpt", grown)


def test_the_best_checkpoint_s_file_is_at_hand_to_load_the_best_weights_after_training(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_epochs=1, metric="auc", mode="max")
    assert checkpoint.best_path is None
    with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
        monitor.train_start(model, optimizer)
        for _, auc in zip(monitor.epochs(3), (0.5, 0.9, 0.7)):
            for _ in monitor.batches(range(2)):
                _step(monitor, model, optimizer, torch.ones(2, 3))
            monitor.validation_end({"auc": auc})
    best = torch.load(checkpoint.best_path, weights_only=True)
    assert (best["loop"]["step"], best["metric"]["value"]) == (4, 0.9)
    # The script run again (a cross-validation's fold done before a kill): skipped, its best at hand.
    again = Checkpoint(tmp_path / "ckpt", every_epochs=1, metric="auc", mode="max", resume=True)
    assert again.finished and again.best_path == checkpoint.best_path
    assert not Checkpoint(tmp_path / "other", resume=True).finished


@pytest.mark.parametrize("first, second", [("validation", "ema"), ("val/clean", "val/noisy")])
def test_a_second_validation_named_apart_is_its_own_trace_and_leaves_the_ranking_to_the_first(tmp_path, first,
                                                                                             second):
    # A distillation loop validating the student, then its EMA copy, at each epoch's end; an
    # evaluation loop validating on two data sets, each under its own name.
    from monitor import Summary
    from monitor.records import Hparams

    sink = ListSink()
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_epochs=1, metric="loss")
    with Monitor([Summary(hparams={"lr": 0.1}), Scalars(), checkpoint], sink=sink, raise_errors=True) as monitor:
        monitor.train_start(model, optimizer)
        for _, (student, ema) in zip(monitor.epochs(2), [(0.5, 0.4), (0.3, 0.6)]):
            for _ in monitor.batches(range(2)):
                _step(monitor, model, optimizer, torch.ones(2, 3))
            monitor.validation_end({"loss": student}, trace=first)
            monitor.validation_end({"loss": ema}, trace=second)
    assert sink.points("loss") == {first: [(2, 0.5), (4, 0.3)], second: [(2, 0.4), (4, 0.6)]}
    assert torch.load(checkpoint.best_path, weights_only=True)["metric"]["value"] == 0.3
    assert [r.metrics for r in sink.records if isinstance(r, Hparams)][-1] == {"loss": 0.3}
    with pytest.raises(ValueError, match="trace must be"):
        Monitor([Scalars()], sink=NullSink()).validation_end({"loss": 0.1}, trace="")


def test_a_fold_whose_own_log_is_gone_starts_its_curves_over_under_its_run_id_and_goes_on_in_them(tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt):
        _fold(tmp_path, "a", 6, crash_at=5)  # saved at 4
    _fold(tmp_path, "b", 9)
    for log in (tmp_path / "runs" / "earlier").iterdir():
        log.unlink()  # fold a's log, deleted
    with caplog.at_level("WARNING", logger="monitor"), pytest.raises(KeyboardInterrupt):
        _fold(tmp_path, "a", 8, crash_at=7)  # from 4: curves start over; saved at 6
    assert any("is another run's" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="monitor"):
        _fold(tmp_path, "a", 8)  # from 6, in the log the run before began
    assert not any("start over" in r.getMessage() for r in caplog.records)
    log = tmp_path / "runs" / RunLog.FILENAME
    assert next(RunLog.read(log))["run_id"] == json.loads((tmp_path / "a" / MANIFEST).read_text())["run_id"]
    assert _loss_steps(log) == [5, 6, 7, 8]


WARM_UP = """
import sys, time, torch
from monitor import Checkpoint, Monitor
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
warm_up, updates, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
with Monitor([Checkpoint("ckpt", every_steps=1, resume=True)], env="dqn", run_dir="runs") as monitor:
    monitor.train_start(model, optimizer)
    print("filling the replay buffer from step", monitor.state.step, flush=True)
    for _ in range(warm_up):  # a DQN's learning_starts: no update yet
        time.sleep(0.1)
    for update in monitor.steps(updates):
        loss = model(torch.ones(2, 3)).square().mean()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step_end(loss=loss)
        print("step", monitor.state.step, flush=True)
        time.sleep(pause)
"""


@pytest.mark.parametrize("resumed", [False, True])
def test_a_stop_signal_before_the_run_trained_a_step_exits_for_requeue_at_once(visdom_server, tmp_path, resumed):
    """A DQN filling its replay buffer got SIGTERM and said nothing; it exited at its first update,
    21 s later: a scheduler's grace period of 30 s would have killed a longer warm-up."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    from monitor.callbacks.checkpoint import REQUEUE_EXIT_STATUS

    (tmp_path / "dqn.py").write_text(WARM_UP)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "VISDOM_PORT": str(visdom_server.port)}

    def start(*args: int | float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "dqn.py", *map(str, args)], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    if resumed:  # killed after its third step: the re-run fills its buffer again from there
        first = start(0, 10, 0.5)
        for line in first.stdout:
            if line.strip() == "step 3":
                break
        first.kill()
        first.communicate()
    job = start(300, 10, 0)  # 30 s of filling before its first update
    assert job.stdout.readline().strip() == f"filling the replay buffer from step {3 if resumed else 0}"
    began = time.monotonic()
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=60)
    assert job.returncode == REQUEUE_EXIT_STATUS and time.monotonic() - began < 10, err[-3000:]
    since = "the checkpoint of step 3" if resumed else "its start"
    assert f"monitor: SIGTERM before this run trained a step: nothing to save since {since}; exiting with status " \
           f"75 to be run again" in err, err[-3000:]
    again = start(0, 6, 0)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and out.split("\n")[:2] == [
        f"filling the replay buffer from step {3 if resumed else 0}", f"step {4 if resumed else 1}"], err[-3000:]


def test_a_resumable_run_trained_in_a_thread_is_told_a_stop_signal_cannot_save_its_step(tmp_path, caplog):
    # A loop run from a thread pool: SIGTERM ended the job with 143 and no checkpoint, nothing said.
    import signal
    from concurrent.futures import ThreadPoolExecutor

    def train() -> None:
        model = torch.nn.Linear(3, 1)
        with Monitor([Checkpoint(tmp_path / "ckpt", resume=True)], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            _step(monitor, model, monitor.state.optimizer, torch.ones(2, 3))

    with caplog.at_level("WARNING", logger="monitor"), ThreadPoolExecutor(1, thread_name_prefix="trainer") as pool:
        pool.submit(train).result()
    said = [r.getMessage() for r in caplog.records if "not the main thread" in r.getMessage()]
    assert len(said) == 1 and "'trainer_0'" in said[0] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_loop_s_own_stop_handler_that_saves_and_exits_75_has_the_next_job_continue(tmp_path):
    # Its handler set a flag and the loop broke out: the run ended as finished, the requeue began anew.
    def job(stop_after: int | None) -> int:
        model = torch.nn.Linear(3, 1)
        checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=100, resume=True)
        with Monitor([checkpoint], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            for _ in monitor.steps(6):
                _step(monitor, model, monitor.state.optimizer, torch.ones(2, 3))
                if monitor.state.step == stop_after:  # the flag its SIGTERM handler set
                    checkpoint.save()
                    raise SystemExit(75)  # as README says: inside the with block
        return checkpoint.start.step

    with pytest.raises(SystemExit):
        job(stop_after=3)
    assert job(stop_after=None) == 3


EPISODES = """
import sys, torch
from monitor import Checkpoint, Monitor
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with Monitor([Checkpoint("ckpt", every_steps=2, resume=True)], env="dqn", port=1, timeout=0.2) as monitor:
    monitor.train_start(model, optimizer)
    episode = 0  # counted by the loop, not kept in the checkpoint
    for update in monitor.steps(8):
        model(torch.ones(2, 3)).sum().backward()
        monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        monitor.step_end()
        episode += 1
        monitor.log.scalar("episode return", "train", episode, float(update))
        if monitor.state.step == int(sys.argv[1]):
            raise KeyboardInterrupt  # killed
"""


def test_a_curve_that_goes_back_in_a_resumed_run_names_the_loop_s_own_counter(tmp_path):
    """A DQN's episode counter, not in the checkpoint, started at 1 again: 105 episodes left the
    plot, and the line that said so did not connect it with the resume."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "dqn.py").write_text(EPISODES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    runs = [subprocess.run([sys.executable, "dqn.py", kill], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120) for kill in ("5", "0")]
    said = [line for line in runs[1].stderr.splitlines() if "went back" in line]
    assert len(said) == 1 and "'episode return' (trace 'train': x=1, after x=4)" in said[0], runs[1].stderr
    assert "an x the loop counts itself (an episode number) starts over unless the checkpoint keeps it" in said[0]
    assert not [line for line in runs[0].stderr.splitlines() if "went back" in line]


def test_a_new_optimizer_not_given_to_train_start_is_said_after_50_steps_in_which_none_given_stepped(tmp_path, caplog):
    # A continual-learning loop made a new task's optimizer and went on: the learning rate, the
    # gradient norms and the checkpoints followed the old one, frozen, with nothing said.
    columns = torch.nn.ModuleList([torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)])
    first = torch.optim.SGD(columns[0].parameters(), lr=0.1)
    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Checkpoint(tmp_path / "ckpt", every_steps=1000)], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(columns, first)
            optimizer = first
            for step in range(1, 120):
                if step == 40:
                    optimizer = torch.optim.SGD(columns[1].parameters(), lr=0.05)  # task 2, not given
                _step(monitor, columns[1 if step >= 40 else 0], optimizer, torch.ones(2, 3))
    said = [r.getMessage() for r in caplog.records if "no optimizer given to train_start" in r.getMessage()]
    assert len(said) == 1 and "in the last 50 steps (to step 89)" in said[0], said


class _SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization as it is usually written: a base optimizer inside, sharing the
    groups, whose state (SGD's momentum) the wrapper's own state_dict() leaves out."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["old_p"] = p.data.clone()
        self.base_optimizer.step()


def test_an_optimizer_that_holds_another_whose_state_it_leaves_out_is_said_at_the_first_save(tmp_path, caplog):
    # A SAM wrapper's base SGD kept its momentum to itself: a kill and resume differed by up to 0.24, nothing said.
    model = torch.nn.Linear(3, 1)
    sam = _SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Checkpoint(tmp_path / "ckpt", every_steps=2)], sink=NullSink(), raise_errors=True) as monitor:
            monitor.train_start(model, sam)
            for _ in range(4):
                _step(monitor, model, sam, torch.ones(2, 3))
    said = [r.getMessage() for r in caplog.records if "holds another" in r.getMessage()]
    assert len(said) == 1 and "(_SAM) holds another, base_optimizer (SGD), whose state (momentum_buffer) its " \
        "state_dict() leaves out" in said[0] and "optimizer.base_optimizer.state_dict()" in said[0], said


def test_two_monitors_of_one_loop_each_resuming_from_a_checkpoint_of_its_own_are_told_once(tmp_path, caplog,
                                                                                            monkeypatch):
    # A federated simulation's Monitor per client: each put the process's random state back in turn,
    # and a kill between their saves left them at different rounds.
    import monitor.callbacks.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "_said_together", False)
    models = [torch.nn.Linear(4, 1) for _ in range(3)]

    def session(steps: int, clients: int = 3) -> list[Monitor]:
        monitors = [Monitor([Checkpoint(tmp_path / f"client{i}", every_steps=1, resume=True)], sink=NullSink(),
                            raise_errors=True) for i in range(clients)]
        optimizers = [torch.optim.SGD(model.parameters(), lr=0.1) for model in models[:clients]]
        for monitor, model, optimizer in zip(monitors, models, optimizers):
            monitor.train_start(model, optimizer)
        for _ in range(steps):
            for monitor, model, optimizer in zip(monitors, models, optimizers):
                _step(monitor, model, optimizer, torch.ones(2, 4))
        return monitors

    session(2)  # killed: runs to continue
    with caplog.at_level("WARNING", logger="monitor"):
        for monitor in session(1):
            monitor.close()
    said = [r.getMessage() for r in caplog.records if "two Monitors of this process" in r.getMessage()]
    assert len(said) == 1 and re.search(r"continue from checkpoints of their own \(env .* from step 2, env .* from "
                                        r"step 2\).*train_start\(nn.ModuleDict", said[0]), said


def test_a_folder_under_the_home_is_there_not_in_a_folder_named_tilde(tmp_path, monkeypatch):
    # Checkpoint("~/ckpt") made ./~/ckpt, which a later `rm -rf ~` meant to clean up would not spare.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor([Checkpoint("~/ckpt", every_steps=1)], env="tilde", run_dir="~/runs/tilde", port=1) as monitor:
        monitor.train_start(model, optimizer)
        monitor.step_end(loss=1.0)
    assert (tmp_path / "home" / "ckpt" / "step-000000001.pt").is_file()
    assert (tmp_path / "home" / "runs" / "tilde" / "runlog.jsonl").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("validated", ["epoch % 10 == 0", "(epoch + 1) % 10 == 0"])
def test_a_checkpoint_ranked_by_a_validation_of_earlier_weights_is_said_once(tmp_path, caplog, validated):
    # A GCN's full-batch loop (a step an epoch) validated at epochs 0, 10, 20 and saved after epochs
    # 9, 19, 29: each file was ranked by weights 9 updates older, and the best kept was the worse.
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_epochs=10, metric="accuracy", mode="max")
    monitor = Monitor([checkpoint], sink=NullSink())
    monitor.train_start(model, optimizer)
    with caplog.at_level("WARNING", logger="monitor"):
        for epoch in monitor.epochs(30):
            optimizer.step()
            monitor.step_end(loss=1.0)
            if eval(validated):
                monitor.validation_end({"accuracy": 0.5 + epoch / 100})
    said = [r.getMessage() for r in caplog.records if "more updates" in r.getMessage()]
    assert said == ([] if validated.startswith("(") else [
        "monitor: the checkpoint of step 10 is ranked by the validation of step 1 (accuracy 0.5): its weights had 9 "
        "more updates, which nothing measured, so the checkpoint kept as best may not hold the best weights; "
        "validate at the steps checkpoints are written (every_epochs=10 writes after epochs 9, 19, ...: validate "
        "when (epoch + 1) % 10 == 0), or write one after the validation, checkpoint.save()"])
