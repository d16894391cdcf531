"""Profile: torch.profiler over steps 10-14, its trace, the table of operators, the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from monitor import Monitor, Profile
from monitor.cli import main
from monitor.log import NullSink
from helpers.devices import DEVICES


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 28 * 28, 3))


def _train(monitor: Monitor | None, steps: int = 20, device: str = "cpu") -> nn.Module:
    model = _conv_net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    if monitor is not None:
        monitor.train_start(model, optimizer)
    for _ in range(steps):
        x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 3, (32,), generator=g)
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.after_backward()
        optimizer.step()
        if monitor is not None:
            monitor.step_end(loss=loss, inputs=x)
    return model


@pytest.mark.parametrize("device", DEVICES)
def test_steps_10_to_14_are_profiled_and_training_is_unaffected(visdom_server, tmp_path, read_window_raw, device,
                                                                 monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # two runs to compare bit for bit
    env = f"profiled-{device}"
    with Monitor([Profile(steps=(10, 14))], env=env, port=visdom_server.port, run_dir=tmp_path) as monitor:
        profiled = _train(monitor, device=device)
        assert monitor.flush()
        pane = read_window_raw(visdom_server, env, "profile")["content"]
    plain = _train(None, device=device)
    assert all(torch.equal(a, b) for a, b in zip(profiled.state_dict().values(), plain.state_dict().values()))

    trace = json.loads((tmp_path / "profile" / "trace-steps-10-14.json").read_text())
    steps = sorted({e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep#")})
    assert len(steps) == 5, steps
    table = json.loads((tmp_path / "profile" / "table.json").read_text())
    names = [r["name"] for r in table["operators"]]
    assert "aten::addmm" in names and "aten::convolution" in names
    top_level = sum(r["self_cpu_ms"] for r in table["operators"])
    if device == "cpu":  # on CUDA the host's share is kernel launches and Python, the work is the device's
        assert top_level == pytest.approx(table["profiled_ms"], rel=0.10), (top_level, table["profiled_ms"])
    assert [p["step"] for p in table["phases"]] == [10, 11, 12, 13, 14]
    assert "aten::addmm" in pane and "trace-steps-10-14.json" in pane and "Time per step" in pane
    assert "data, forward and backward" in pane  # a loop drawing its own batches: its wait is in that phase
    on_device = [r for r in table["operators"] if r["device_ms"] > 0]
    assert (on_device and "device ms" in pane) if device == "cuda" else not on_device, on_device[:5]

    printed = CliRunner().invoke(main, ["profile", str(tmp_path)])
    assert printed.exit_code == 0 and "aten::addmm" in printed.output and "data+forward+backward" in printed.output
    missing = CliRunner().invoke(main, ["profile", str(tmp_path / "profile" / "..")  + "/nothing"])
    assert missing.exit_code != 0


def test_bad_steps_are_named():
    with pytest.raises(ValueError, match=r"steps must be \(first, last\) with 1 <= first <= last, .* got \(5, 2\)"):
        Profile(steps=(5, 2))
    assert (Profile(steps=range(3, 6)).first, Profile(steps=range(3, 6)).last) == (3, 5)


def test_a_run_that_ends_inside_the_window_shows_the_steps_it_profiled(tmp_path):
    monitor = Monitor([Profile(steps=(3, 50), directory=tmp_path, top=3)], sink=NullSink())
    _train(monitor, steps=5)
    monitor.train_end()
    table = json.loads((tmp_path / "table.json").read_text())
    assert [p["step"] for p in table["phases"]] == [3, 4, 5] and table["steps"] == 3  # not the unfinished 6th
    assert all(p["data wait"] is None for p in table["phases"])  # not measured: no monitor.batches
    printed = CliRunner().invoke(main, ["profile", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    assert "\n     3          - " in printed.output  # shown as not measured, not as 0.00
    assert "ProfilerStep" not in printed.output and all(len(line.split("  ")[0]) <= 32 for line in
                                                        printed.output.splitlines()[2:5])
    assert printed.output.splitlines()[5] == ""  # the callback's top=3 rows, unless --top says otherwise
    more = CliRunner().invoke(main, ["profile", str(tmp_path), "--top", "4"])
    assert more.output.splitlines()[6] == "" and more.output.splitlines()[5]
    assert (tmp_path / "trace-steps-3-5.json").is_file()
    assert not torch.autograd.profiler._is_profiler_enabled


def test_a_loop_that_runs_its_own_profiler_keeps_it_and_profile_says_so(tmp_path, caplog):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as own:  # around the whole loop, as torch's recipes do
        monitor = Monitor([Profile(steps=(2, 3), directory=tmp_path)], sink=NullSink())
        _train(monitor, steps=5)
        monitor.train_end()
    assert len(own.key_averages()) > 0  # the loop's profile is whole (it was empty, or the process crashed)
    assert not (tmp_path / "table.json").exists()
    assert "another torch.profiler is running in this process" in caplog.text


def test_a_validation_between_two_profiled_steps_is_in_neither_s_phases(tmp_path):
    import time
    model = _conv_net()
    monitor = Monitor([Profile(steps=(2, 4), directory=tmp_path)], sink=NullSink())
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for step in range(1, 6):
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        monitor.after_backward()
        monitor.step_end()
        if step == 2:  # an evaluation every N steps
            time.sleep(0.3)
            monitor.validation_end({"accuracy": 0.5})
    phases = {p["step"]: p for p in json.loads((tmp_path / "table.json").read_text())["phases"]}
    assert phases[3]["forward and backward"] + phases[3]["optimizer and the rest"] < 150, phases[3]  # not 300 ms


def test_a_run_that_ends_before_the_window_says_nothing_was_profiled(tmp_path, caplog):
    monitor = Monitor([Profile(steps=(10, 14), directory=tmp_path)], sink=NullSink())
    _train(monitor, steps=5)
    monitor.train_end()
    assert "the run ended at step 5, before Profile's first step 10: nothing was profiled" in caplog.text
    assert not (tmp_path / "table.json").exists() and not torch.autograd.profiler._is_profiler_enabled


def test_a_window_from_the_first_step_profiles_it_without_a_warning(tmp_path, recwarn):
    # Neither torch's about its warm-up nor one that the look for the loop's own profiler
    # touched off among the live objects (torch.distributed.reduce_op's, "deprecated").
    monitor = Monitor([Profile(steps=(1, 2), directory=tmp_path)], sink=NullSink())
    _train(monitor, steps=3)
    monitor.train_end()
    assert [p["step"] for p in json.loads((tmp_path / "table.json").read_text())["phases"]] == [1, 2]
    assert not [w for w in recwarn if "warmup" in str(w.message) or "deprecated" in str(w.message)]


def test_the_callbacks_time_is_marked_apart_from_the_loop_s_in_the_profile(tmp_path):
    from monitor import GradNorms, Histograms
    monitor = Monitor([Profile(steps=(2, 3), directory=tmp_path), GradNorms(), Histograms(every=1)], sink=NullSink())
    _train(monitor, steps=4)
    names = {r["name"] for r in json.loads((tmp_path / "table.json").read_text())["operators"]}
    assert {"monitor.GradNorms.on_after_backward", "monitor.Histograms.on_step_end"} <= names, sorted(names)[:20]


OWN_SCHEDULED_PROFILER = """
import sys, torch
from torch import nn
from monitor import Monitor, Profile
from monitor.log import NullSink
torch.set_num_threads(1)
started_at = int(sys.argv[1])  # the loop's profiler: before the Monitor (-1), or at that step
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), 0.1)
traces = []
own = torch.profiler.profile(schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
                             on_trace_ready=lambda p: traces.append(len(p.key_averages())))
if started_at < 0:
    own.start()
monitor = Monitor([Profile(steps=(6, 8), directory=sys.argv[2])], sink=NullSink())
monitor.train_start(model, optimizer)
for step in range(12):
    if step == started_at:
        own.start()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); monitor.after_backward(); optimizer.step()
    monitor.step_end(loss=loss)
    if started_at <= step:
        own.step()
own.stop()
monitor.train_end()
print(traces)
"""


@pytest.mark.parametrize("started_at", [-1, 2])
def test_a_loop_s_own_scheduled_profiler_in_its_wait_steps_is_found_and_kept(tmp_path, started_at):
    """In its wait steps a scheduled profiler records nothing, and Profile took the process for
    free: the loop's warm-up then stopped it with "Profiler is already enabled on this thread",
    or crashed it (SIGSEGV)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "train.py").write_text(OWN_SCHEDULED_PROFILER)
    done = subprocess.run([sys.executable, "train.py", str(started_at), str(tmp_path / "profile")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() not in ("[]", "[0]")  # the loop's profile, whole
    said = "another torch.profiler is running" if started_at < 0 else "another torch.profiler started"
    assert said in done.stderr and not (tmp_path / "profile" / "table.json").exists()
