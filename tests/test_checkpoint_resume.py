"""Exact resume: a run killed with SIGKILL and resumed ends where the uninterrupted run ends.

Each case runs tests/helpers/checkpoint_training.py three times against a real Visdom server: straight
through; killed at a random step after a checkpoint; resumed from the killed run's folder. The
final weights must be bit-identical, and so must every window's (x, y), the run log's points and
the checkpoints kept.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monitor.checkpoint.folder import MANIFEST
from monitor.runlog import RunLog

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "helpers" / "checkpoint_training.py"
STEPS, BATCHES = 24, 6  # 4 epochs of 6 batches


def train(server, root: Path, name: str, env: str, options: list[str], kill: tuple[int, str] | None = None):
    command = [sys.executable, str(SCRIPT), "--checkpoints", str(root / name / "ckpt"), "--env", env,
               "--run-dir", str(root / name / "runs"), "--port", str(server.port), "--out", str(root / name / "final.pt"),
               *options]
    if kill:
        command += ["--kill-at", str(kill[0]), "--kill-phase", kill[1]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    expected = -signal.SIGKILL if kill else 0
    assert done.returncode == expected, f"{name} exited {done.returncode}: {done.stderr[-3000:]}"
    return {**json.loads(done.stdout.splitlines()[0]), "stderr": done.stderr[-3000:]}


def points(root: Path, name: str) -> list[tuple]:
    log = root / name / "runs" / RunLog.FILENAME
    return [(e["win"], e["x"], e["y"]) for e in RunLog.read(log) if e["k"] == "points"]


def last_checkpoint_before(kill: tuple[int, str], every: int) -> int:
    """The step of the latest every-``every``-steps checkpoint the kill leaves behind."""
    step, phase = kill
    done = step if phase == "step_end" else step - 1
    return done - done % every


def mid_epoch_kills() -> list[tuple[int, str]]:
    """Kills whose latest checkpoint (every 4 steps) is inside an epoch, with steps done after it."""
    return [(k, p) for k in range(1, STEPS) for p in ("after_backward", "step_end")
            if (s := last_checkpoint_before((k, p), 4)) and s % BATCHES and k > s]


@pytest.mark.parametrize("case", ["epoch-boundary", "mid-epoch"])
def test_a_run_killed_after_a_checkpoint_and_resumed_ends_bit_identical_with_the_same_curves(
        visdom_server, read_env, tmp_path, case):
    seed = random.SystemRandom().randrange(10**6)
    chooser = random.Random(seed)
    if case == "epoch-boundary":
        options = ["--every-epochs", "1"]
        kill = (chooser.randrange(BATCHES + 1, STEPS), chooser.choice(["after_backward", "step_end"]))
        checkpoint_step = (kill[0] - 1) // BATCHES * BATCHES
    else:
        options = ["--every-steps", "4"]
        kill = chooser.choice(mid_epoch_kills())
        checkpoint_step = last_checkpoint_before(kill, 4)
    about = f"{case}, killed at step {kill[0]} ({kill[1]}), random seed {seed}"
    straight_env, resumed_env = f"ckpt-{case}-straight", f"ckpt-{case}-resumed"

    train(visdom_server, tmp_path, "straight", straight_env, options)
    killed = train(visdom_server, tmp_path, "resumed", resumed_env, options, kill=kill)
    shown = read_env(visdom_server, resumed_env)
    assert "learning rate" in shown, f"{about}: the killed run showed {sorted(shown)}; {killed['stderr']}"
    # Points to take back: the rate is logged at after_backward (grad norms wait for step_end).
    assert max(shown["learning rate"]["lr"][0]) == kill[0] > checkpoint_step, about
    start = train(visdom_server, tmp_path, "resumed", resumed_env, options)

    assert start["step"] == checkpoint_step, about
    if case == "epoch-boundary":
        assert (start["epoch"], start["skip"]) == (checkpoint_step // BATCHES, 0), about
    else:
        assert (start["epoch"], start["skip"]) == divmod(checkpoint_step, BATCHES), about
        assert 0 < start["skip"] < BATCHES, about
    final = {name: torch.load(tmp_path / name / "final.pt", weights_only=True) for name in ("straight", "resumed")}
    for part in ("model", "optimizer"):
        assert _equal(final["straight"][part], final["resumed"][part]), f"{part} differs: {about}"
    expected = read_env(visdom_server, straight_env)
    assert set(expected) == {"loss", "learning rate", "grad norm"}
    assert read_env(visdom_server, resumed_env) == expected, about
    assert points(tmp_path, "resumed") == points(tmp_path, "straight"), about
    manifests = [json.loads((tmp_path / n / "ckpt" / MANIFEST).read_text()) for n in ("straight", "resumed")]
    assert [(m["last"], m["best"]) for m in manifests][0] == [(m["last"], m["best"]) for m in manifests][1], about
    kept = [sorted(p.name for p in (tmp_path / n / "ckpt").glob("step-*.pt")) for n in ("straight", "resumed")]
    assert kept[0] == kept[1], about


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
