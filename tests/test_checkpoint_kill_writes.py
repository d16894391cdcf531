"""SIGKILL in the middle of checkpoint writes, again and again: the latest checkpoint always loads."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.checkpoint import load_checkpoint
from monitor.checkpoint.folder import find_checkpoint, read_manifest, temporary_files

HELPER = Path(__file__).parent / "helpers" / "checkpoint_writer.py"
ROUNDS = 24
SEED = 20261203  # the kills' moments: fixed, so a failure repeats

pytestmark = pytest.mark.slow


def test_sigkill_at_chosen_moments_of_checkpoint_writes_always_leaves_a_latest_that_loads(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    chooser = random.Random(SEED)
    # Every fourth kill lands inside a write for sure (the child kills itself after some bytes of a
    # checkpoint); the others at a time, wherever the child is then.
    rounds = [f"inside {chooser.randrange(1_000, 2_500_000)}" if i % 4 == 3 else f"after {chooser.uniform(0.1, 0.4):.3f}"
              for i in range(ROUNDS)]
    writer = subprocess.Popen([sys.executable, str(HELPER), str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps: list[int] = []
    mid_write = 0
    try:
        for round_, order in enumerate(rounds):
            writer.stdin.write(order + "\n")
            writer.stdin.flush()
            reply = writer.stdout.readline().split()
            about = f"round {round_} ({order})"
            if reply[1:] != ["SIGKILL"]:  # its stderr is read once it has ended: it waits for the next round
                writer.kill()
                raise AssertionError(f"{about}: the writer died by itself: {reply} {writer.stderr.read()[-3000:]}")
            cut_short = folder.exists() and bool(temporary_files(folder))
            if order.startswith("inside"):
                assert cut_short, f"{about}: no write was cut short"
            mid_write += cut_short
            caplog.clear()
            with caplog.at_level("WARNING", logger="monitor"):
                found = find_checkpoint(folder, missing_ok=True)
            assert not caplog.records, f"{about}: the latest must load as it is, no fallback: {caplog.text}"
            if found is None:
                assert not steps, f"{about}: the checkpoints are gone"
                continue
            path, checkpoint = found
            assert path.name == read_manifest(folder)["latest"], about
            assert checkpoint["loop"]["step"] >= (steps[-1] if steps else 1), f"{about}: progress was lost"
            steps.append(checkpoint["loop"]["step"])
            for record in read_manifest(folder)["checkpoints"]:  # nothing kept was deleted too early
                assert load_checkpoint(folder / record["file"])["loop"]["step"] == record["step"], about
    finally:
        if writer.poll() is None:
            writer.stdin.write("quit\n")
            writer.stdin.close()
        writer.wait(timeout=30)
    assert len(steps) >= ROUNDS - 2 and steps[-1] > ROUNDS, f"too little progress: {steps}"
    assert mid_write >= ROUNDS // 4, f"only {mid_write} of {ROUNDS} kills landed inside a write"
