"""A folder of checkpoints: the latest good one is found, a damaged one skipped with a warning."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.checkpoint_loop import build, trained_folder
from helpers.monitors import says
from monitor import resume
from monitor.checkpoint import (CheckpointError, DamagedCheckpointError, load_checkpoint)
from monitor.checkpoint.folder import MANIFEST


def test_a_truncated_latest_falls_back_to_the_previous_checkpoint_with_a_warning_naming_it(tmp_path, caplog):
    folder = trained_folder(tmp_path)
    latest = folder / "step-000000010.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    parts = build(seed=3)
    with says(caplog, r"checkpoint .*step-000000010.pt cannot be used \(.*damaged"):
        start = resume(folder, parts.model, parts.optimizer, parts.scheduler)
    assert start.path == folder / "step-000000008.pt" and start.step == 8


def test_a_job_that_turns_warnings_into_errors_still_falls_back_from_a_damaged_checkpoint(tmp_path):
    # Under python -W error (or PYTHONWARNINGS=error) a warnings.warn raised: a requeued job
    # crashed on every restart in the very case the fallback is for. The monitor logs instead.
    folder = trained_folder(tmp_path)
    (folder / "step-000000010.pt").write_bytes(b"garbage")
    script = "import sys; from monitor.checkpoint.folder import find_checkpoint; print(find_checkpoint(sys.argv[1])[0].name)"
    done = subprocess.run([sys.executable, "-W", "error", "-c", script, str(folder)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.stdout.strip() == "step-000000008.pt", done.stderr[-3000:]
    assert "step-000000010.pt is not a checkpoint" in done.stderr


def test_a_flipped_byte_in_the_latest_fails_its_crc_and_is_skipped(tmp_path, caplog):
    folder = trained_folder(tmp_path)
    latest = folder / "step-000000010.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match="fails its CRC check"):
        load_checkpoint(latest)
    with says(caplog, "step-000000010.pt cannot be used"):
        parts = build()
        assert resume(folder, parts.model, parts.optimizer, parts.scheduler).step == 8


def test_a_damaged_pointer_falls_back_to_the_newest_good_file(tmp_path, caplog):
    folder = trained_folder(tmp_path)
    (folder / MANIFEST).write_text('{"latest": "step-0000')
    with says(caplog, r"latest.json is damaged"):
        parts = build()
        assert resume(folder, parts.model, parts.optimizer, parts.scheduler).step == 10


def test_a_folder_where_every_checkpoint_is_damaged_is_an_error_listing_them(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    for path in folder.glob("step-*.pt"):
        path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DamagedCheckpointError, match="holds no usable checkpoint; tried step-000000005.pt .*; step-000000004.pt"):
        resume(folder, build().model)


def test_a_missing_path_or_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(FileNotFoundError, match=r"path must be a checkpoint file or a folder of checkpoints .* "
                                                r"got '.*nowhere', which is nothing"):
        resume(tmp_path / "nowhere", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="which is a folder without checkpoints"):
        resume(tmp_path / "empty", model)
    assert resume(tmp_path / "empty", model, missing_ok=True).path is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"must be a file written by torch.save, got .*notes.txt.* neither"):
        resume(tmp_path / "notes.txt", model)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"must be a monitor checkpoint .* got a dict with keys \['bias', 'weight'\]"):
        resume(tmp_path / "weights.pt", model)
