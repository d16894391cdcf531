"""Guard: the first bad step marked, its evidence kept, the loop stopped, the failure replayed."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from monitor import Checkpoint, Guard, Monitor, Scalars, TrainingDiverged
from monitor.log import NullSink

BAD_STEP = 37


def _run(tmp_path, port: int | None, action: str, steps_seen: dict, epochs: int = 3, keep_last: int = 1):
    """A resumable loop whose loss turns NaN at step 37 (the data's fault: it happens again on a replay)."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(160, 4), torch.randint(0, 3, (160,)))
    loader = DataLoader(data, batch_size=8, shuffle=True)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    checkpoint = Checkpoint(tmp_path / "checkpoints", every_steps=10, keep_last=keep_last, at_end=False,
                            resume=True)
    options = {"env": "guarded", "port": port, "run_dir": tmp_path / "run"} if port else {"sink": NullSink()}
    with Monitor([Scalars(), Guard(action=action), checkpoint], **options) as monitor:
        monitor.train_start(model, optimizer)
        for _ in monitor.epochs(epochs):
            for x, y in monitor.batches(loader):
                loss = nn.functional.cross_entropy(model(x), y)
                if monitor.state.step + 1 == BAD_STEP:
                    loss = loss * float("nan")
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward()
                optimizer.step()
                monitor.step_end(loss=loss)
                steps_seen[monitor.state.step] = [p.detach().clone() for p in model.parameters()]
        monitor.flush()
    return monitor


def test_a_nan_at_step_37_is_marked_kept_stopped_and_replayed_bit_for_bit(visdom_server, tmp_path, read_window):
    first: dict = {}
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 37; checkpoint step-000000030.pt is kept"):
        _run(tmp_path, visdom_server.port, "stop", first)
    assert max(first) == BAD_STEP - 1  # step 37 never finished
    assert read_window(visdom_server, "guarded", "loss")["guard"][0] == [BAD_STEP]
    assert (tmp_path / "checkpoints" / "step-000000030.pt").is_file()

    replay: dict = {}  # the same command again: resumes from step 30 and meets the same NaN
    with pytest.raises(TrainingDiverged, match="at step 37"):
        _run(tmp_path, visdom_server.port, "stop", replay)
    assert sorted(replay) == list(range(31, BAD_STEP))
    assert all(torch.equal(a, b) for a, b in zip(first[BAD_STEP - 1], replay[BAD_STEP - 1]))
    assert read_window(visdom_server, "guarded", "loss")["guard"][0] == [BAD_STEP]  # one mark, not two


def test_the_last_good_checkpoint_survives_later_pruning(tmp_path, caplog):
    seen: dict = {}
    with caplog.at_level("WARNING", logger="monitor"):
        _run(tmp_path, None, "warn", seen)
    assert max(seen) == 60  # training went on
    files = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert files == ["step-000000030.pt", "step-000000060.pt"]
    assert sum("Guard: the loss is nan at step 37" in r.getMessage() for r in caplog.records) == 1


def test_a_spike_and_bad_arguments():
    monitor = Monitor([Guard(spike=4.0, grads=False)], sink=NullSink())
    guard = monitor.callbacks[0]
    for loss in [1.0, 1.1, 0.9, 1.05, 0.95] * 4 + [9.0]:
        monitor.step_end(loss=loss)  # steps 1 to 21
    assert guard.bad_step == 21
    with pytest.raises(ValueError, match="action must be .warn. or .stop., got .halt."):
        Guard(action="halt")
    with pytest.raises(ValueError, match="spike must be a number of standard deviations > 0 or None, got -1"):
        Guard(spike=-1)
