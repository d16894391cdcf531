"""Guard: the first bad step marked, its evidence kept, the loop stopped, the failure replayed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import Checkpoint, Guard, Monitor, Scalars, TrainingDiverged
from monitor.cli import main
from monitor.log import NullSink
from helpers.devices import DEVICES

BAD_STEP = 37


def _run(tmp_path, port: int | None, action: str, steps_seen: dict, epochs: int = 3, keep_last: int = 1,
         bad: int = BAD_STEP, device: str = "cpu"):
    """A resumable loop whose loss turns NaN at step 37 (the data's fault: it happens again on a replay)."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(160, 4), torch.randint(0, 3, (160,)))
    loader = DataLoader(data, batch_size=8, shuffle=True)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    checkpoint = Checkpoint(tmp_path / "checkpoints", every_steps=10, keep_last=keep_last, at_end=False,
                            resume=True)
    options = {"env": f"guarded-{device}", "port": port, "run_dir": tmp_path / "run"} if port else {"sink": NullSink()}
    with Monitor([Scalars(), Guard(action=action), checkpoint], **options) as monitor:
        monitor.train_start(model, optimizer)
        for _ in monitor.epochs(epochs):
            for x, y in monitor.batches(loader):
                loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
                if monitor.state.step + 1 == bad:
                    loss = loss * float("nan")
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                optimizer.step()
                monitor.step_end(loss=loss)
                steps_seen[monitor.state.step] = [p.detach().clone() for p in model.parameters()]
        monitor.flush()
    return monitor


def _stopped_in_time(steps_seen: dict, device: str) -> bool:
    """On the CPU step 37 never finishes; on CUDA the loss is read once the device has got there,
    a step or two later, and never after the next save (step 40), which waits for the device."""
    last = max(steps_seen)
    in_time = last == BAD_STEP - 1 if device == "cpu" else BAD_STEP - 1 <= last < 40
    return in_time and sorted(steps_seen) == list(range(min(steps_seen), last + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_a_nan_at_step_37_is_marked_kept_stopped_and_replayed_bit_for_bit(visdom_server, tmp_path, read_window,
                                                                          device):
    first: dict = {}
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 37; checkpoint step-000000030.pt is kept"):
        _run(tmp_path, visdom_server.port, "stop", first, device=device)
    assert _stopped_in_time(first, device)
    assert read_window(visdom_server, f"guarded-{device}", "loss")["guard"][0] == [BAD_STEP]
    assert (tmp_path / "checkpoints" / "step-000000030.pt").is_file()

    replay: dict = {}  # the same command again: resumes from step 30 and meets the same NaN
    with pytest.raises(TrainingDiverged, match="at step 37"):
        _run(tmp_path, visdom_server.port, "stop", replay, device=device)
    assert min(replay) == 31 and _stopped_in_time(replay, device)
    assert all(torch.equal(a, b) for a, b in zip(first[BAD_STEP - 1], replay[BAD_STEP - 1]))
    assert read_window(visdom_server, f"guarded-{device}", "loss")["guard"][0] == [BAD_STEP]  # one mark, not two


def test_the_last_good_checkpoint_survives_later_pruning(tmp_path, caplog):
    seen: dict = {}
    with caplog.at_level("WARNING", logger="monitor"):
        _run(tmp_path, None, "warn", seen)
    assert max(seen) == 60  # training went on
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert files == ["step-000000030.pt", "step-000000060.pt"]
    assert sum("Guard: the loss is nan at step 37" in r.getMessage() for r in caplog.records) == 1
    listed = CliRunner().invoke(main, ["checkpoints", "list", str(tmp_path / "checkpoints")]).output
    kept_line = next(line for line in listed.splitlines() if line.startswith("step-000000030.pt"))
    assert kept_line.endswith("kept: last good step before step 37")  # not "-", which reads as prunable


def test_a_nan_at_a_saving_step_keeps_the_checkpoint_before_it(tmp_path):
    _run(tmp_path, None, "warn", {}, bad=40)  # step 40's save would prune step 30 if it were not kept first
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert files == ["step-000000030.pt", "step-000000060.pt"]
    manifest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert [r["step"] for r in manifest["checkpoints"] if r.get("kept")] == [30]


def test_the_kept_mark_is_in_the_folder_at_once(tmp_path):
    # Killed right after the bad step: the folder already says what to keep.
    with pytest.raises(TrainingDiverged):
        _run(tmp_path, None, "stop", {})
    manifest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert [r["step"] for r in manifest["checkpoints"] if r.get("kept")] == [30]


def test_without_a_loss_the_gradients_alone_are_watched_and_no_spike_is_read_into_them():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor([Guard(spike=2.0)], sink=NullSink())
    guard = monitor.callbacks[0]
    monitor.train_start(model, optimizer)
    for step in range(1, 31):  # the gradient grows tenfold at step 25: not a loss spike
        optimizer.zero_grad()
        (model(torch.ones(2, 4)).sum() * (10.0 if step >= 25 else 1.0)).backward()
        monitor.after_backward()
        monitor.step_end()
    assert guard.bad_step is None
    optimizer.zero_grad()
    (model(torch.ones(2, 4)).sum() * float("inf")).backward()
    monitor.after_backward()
    monitor.step_end()
    assert guard.bad_step == 31


def _guarded_gan(d_scale: dict[int, float], g_scale: dict[int, float], loss: bool = False) -> Monitor:
    """Three steps of a GAN under a Guard, D's and G's losses multiplied at the steps given."""
    torch.manual_seed(0)
    generator, discriminator = nn.Linear(4, 4), nn.Linear(4, 1)
    optimizers = {"G": torch.optim.SGD(generator.parameters(), lr=0.1),
                  "D": torch.optim.SGD(discriminator.parameters(), lr=0.1)}
    monitor = Monitor([Guard()], sink=NullSink())
    monitor.train_start(nn.ModuleDict({"G": generator, "D": discriminator}), optimizers)
    for step in range(1, 4):
        fake = generator(torch.randn(8, 4))
        optimizers["D"].zero_grad()
        (discriminator(fake.detach()).mean() * d_scale.get(step, 1.0)).backward()
        monitor.after_backward("D")
        optimizers["D"].step()
        optimizers["G"].zero_grad()
        g_loss = -discriminator(fake).mean() * g_scale.get(step, 1.0)
        g_loss.backward()
        monitor.after_backward("G")
        optimizers["G"].step()
        monitor.step_end(loss=g_loss if loss else None)
    return monitor


def test_a_gan_s_gradient_gone_bad_is_named_by_its_backward_pass(caplog):
    # G's loss inf at step 3: D's gradients are inf too then, but its pass was over before
    monitor = _guarded_gan({}, {3: float("inf")})
    assert monitor.callbacks[0].bad_step == 3
    assert "Guard: a gradient is not finite (in the backward pass of G) at step 3" in caplog.text


def test_a_gan_whose_critic_went_nan_names_its_pass_beside_the_loss(caplog):
    # The loss given to step_end (G's) went NaN after D's did: only "the loss is nan" was said.
    _guarded_gan({2: float("nan")}, {}, loss=True)
    assert "Guard: the loss is nan, a gradient too (in the backward pass of D" in caplog.text


def test_a_guard_given_to_a_monitor_per_fold_watches_each_fold_afresh(tmp_path):
    """A list of callbacks built once for every fold's Monitor: a Guard tripped in fold 0 said
    nothing of fold 1's NaN."""
    guard, checkpoint = Guard(), None
    for fold, bad_at in enumerate((5, 6)):
        model = nn.Linear(4, 1)
        fresh = Checkpoint(tmp_path / f"fold{fold}", every_steps=100)
        checkpoint = checkpoint or fresh  # one Checkpoint reused too: its checks before a save are this fold's
        monitor = Monitor([Scalars(), guard, checkpoint], sink=NullSink())
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for step in range(1, 8):
            monitor.step_end(loss=torch.tensor(float("nan") if step == bad_at else 1.0))
        assert guard.bad_step == bad_at and len(checkpoint.before_save) == 1
        monitor.close()


def test_overflowing_gradients_under_a_grad_scaler_are_the_scaler_s_to_skip():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # float32 overflows: the first steps are skipped
    monitor = Monitor([Guard()], sink=NullSink())
    guard = monitor.callbacks[0]
    monitor.train_start(model, optimizer, scaler=scaler)
    skipped = 0
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))) * 1e6
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        monitor.after_backward()
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < before
        monitor.step_end(loss=loss)
    assert skipped > 0 and guard.bad_step is None


def test_a_spike_and_bad_arguments():
    monitor = Monitor([Guard(spike=4.0, grads=False)], sink=NullSink())
    guard = monitor.callbacks[0]
    for loss in [1.0, 1.1, 0.9, 1.05, 0.95] * 4 + [9.0]:
        monitor.step_end(loss=loss)  # steps 1 to 21
    assert guard.bad_step == 21
    monitor = Monitor([Guard(spike=4.0, grads=False)], sink=NullSink())
    for loss in [1.0] * 20 + [1.0000001, 100.0]:  # after a constant loss: rounding, then a spike
        monitor.step_end(loss=loss)
    assert monitor.callbacks[0].bad_step == 22
    monitor = Monitor([Guard(spike=6.0, grads=False)], sink=NullSink())
    for loss in [0.0] * 20 + [0.5]:  # a loss held at 0 while a buffer fills, then real: no spike
        monitor.step_end(loss=loss)
    assert monitor.callbacks[0].bad_step is None
    with pytest.raises(ValueError, match="action must be .warn. or .stop., got .halt."):
        Guard(action="halt")
    with pytest.raises(ValueError, match="spike must be a number of standard deviations > 0 or None, got -1"):
        Guard(spike=-1)
    with pytest.raises(ValueError, match="window must be at least 10 steps .* got 5"):  # would never see a spike
        Guard(spike=4.0, window=5)


def test_a_loss_of_many_values_is_named_and_a_guard_without_checkpoints_says_none_of_them(caplog):
    monitor = Monitor([Guard(grads=False)], sink=NullSink(), raise_errors=True)
    with pytest.raises(ValueError, match=r"loss must be a number or a one-element tensor or numpy array, got a tensor of shape \(8,\)"):
        monitor.step_end(loss=torch.ones(8))  # a loss_fn(reduction="none")
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.step_end(loss=float("nan"))
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: Guard: the loss is nan at step 2; training goes on, said once (Guard(action='stop') stops it "
        "here; a lower learning rate or clip_grad_norm_ is the usual cure)"]
    caplog.clear()
    monitor = Monitor([Guard(grads=False)], sink=NullSink(), raise_errors=True)
    with caplog.at_level("WARNING", logger="monitor"):
        monitor.step_end(loss=float("inf"))  # a CTC loss of an utterance too short for its labels
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: Guard: the loss is inf at step 1; training goes on, said once (Guard(action='stop') stops it "
        "here; an inf from the loss itself (a CTC loss's impossible alignment, a log of 0) wants the loss mended, "
        "nn.CTCLoss(zero_infinity=True) or a clamp; a diverging run a lower learning rate or clip_grad_norm_)"]


@pytest.mark.parametrize("bad", ["nan", "spike"])
def test_under_ddp_a_loss_gone_bad_on_one_rank_stops_every_rank_at_that_step(tmp_path, bad):
    script = Path(__file__).parent / "helpers" / "ddp_guard.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), "--out", str(tmp_path), "--bad", bad], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]  # a rank left alone fails at the group's timeout
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["stopped"] for r in ranks] == [30, 30]
    # Rank 0 holds the list of checkpoints and says which one is kept, once; rank 1 points there.
    assert ranks[0]["message"].endswith("at step 30; checkpoint step-000000020.pt is kept to replay it; training stopped")
    assert ranks[1]["message"].endswith("at step 30; rank 0 says which checkpoint is kept; training stopped")
    assert done.stderr.count("Guard:") == done.stderr.count("monitor (rank 0): Guard:") == 1  # rank 0 says it


def test_a_nan_in_the_step_after_a_checkpoint_that_waits_for_its_validation_resumes_from_that_checkpoint(tmp_path):
    # Once the loop validated after a save step, a step's checkpoint becomes the latest at the next
    # step's end; a Guard stopping that next step must still leave the run at that checkpoint.
    directory = tmp_path / "ckpt"
    model = nn.Linear(2, 1)
    monitor = Monitor([Guard(action="stop", grads=False), Checkpoint(directory, every_steps=2, keep_last=1,
                                                                     at_end=False, resume=True)],
                      sink=NullSink(), raise_errors=True)
    with pytest.raises(TrainingDiverged):
        with monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), 0.1))
            for _ in monitor.batches(range(20)):
                step = monitor.state.step + 1
                monitor.step_end(loss=float("nan") if step == 7 else 1.0)
                if step % 4 == 0:
                    monitor.validation_end({"loss": 0.5})
    assert json.loads((directory / "latest.json").read_text())["latest"] == "step-000000006.pt"
