"""`monitor checkpoints DIR` and `monitor checkpoints inspect FILE`."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner
from torch import nn

from helpers.checkpoint_loop import attach, build, train
from monitor.cli import main


def folder_of_checkpoints(tmp_path: Path) -> Path:
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=2, keep_last=2, keep_best=2,
                                        metric="loss")
    train(parts, monitor, start, epochs=3)
    return tmp_path / "ckpt"


def test_checkpoints_dir_lists_step_epoch_metric_size_time_and_which_are_latest_best_last(tmp_path):
    folder = folder_of_checkpoints(tmp_path)
    result = CliRunner().invoke(main, ["checkpoints", str(folder)])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["file", "step", "epoch", "metric", "size", "time", "kept", "as"]
    names = sorted(p.name for p in folder.glob("step-*.pt"))
    assert [row.split()[0] for row in rows] == names
    latest = rows[-1].split()
    assert latest[:3] == ["step-000000015.pt", "15", "2"] and latest[3].startswith("loss=")
    assert "latest" in rows[-1] and "last" in rows[-1]
    assert sum("best #1" in row for row in rows) == 1 and sum("best #2" in row for row in rows) == 1
    assert CliRunner().invoke(main, ["checkpoints", "list", str(folder)]).output == result.output


def test_checkpoints_inspect_shows_the_schema_summary(tmp_path):
    folder = folder_of_checkpoints(tmp_path)
    result = CliRunner().invoke(main, ["checkpoints", "inspect", str(folder / "step-000000015.pt")])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert rows["format"].startswith("monitor.checkpoint version 1, written by torch")
    assert rows["loop"] == "epoch 2, step 15 (5 of the epoch, epoch done)"
    assert rows["model"] == "Sequential: 4 tensors, 58 numbers (float32), 232 B"
    assert rows["optimizer"] == "SGD: 1 parameter group(s), state for 4 tensors"
    assert rows["callbacks"] == "Checkpoint" and rows["metric"].startswith("loss = ")
    assert rows["rng"] == "python, numpy, torch CPU, 0 CUDA device(s)"


def test_inspect_counts_tied_weights_once_as_the_model_s_parameters_do(tmp_path):
    from monitor import Checkpoint, Monitor
    from monitor.log import NullSink

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # the output layer tied to the embedding, as language models do
    with Monitor([Checkpoint(tmp_path / "ckpt")], sink=NullSink()) as monitor:
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        monitor.train_end()
    [saved] = (tmp_path / "ckpt").glob("step-*.pt")
    result = CliRunner().invoke(main, ["checkpoints", "inspect", str(saved)])
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert sum(p.numel() for p in model.parameters()) == 40
    assert rows["model"] == "Sequential: 1 tensor (2 names: tied weights), 40 numbers (float32), 160 B"


def test_inspect_refuses_a_whole_pickled_model_saying_why_and_trust_loads_it(tmp_path):
    torch.save(nn.Linear(3, 2), tmp_path / "model.pt")
    refused = CliRunner().invoke(main, ["checkpoints", "inspect", str(tmp_path / "model.pt")])
    assert refused.exit_code == 1
    assert "refused to load" in refused.output and "whole pickled model" in refused.output
    assert "--trust" in refused.output
    trusted = CliRunner().invoke(main, ["checkpoints", "inspect", "--trust", str(tmp_path / "model.pt")])
    assert trusted.exit_code == 0, trusted.output
    assert "a whole pickled Linear model with 8 parameters, not a monitor checkpoint" in trusted.output


def test_inspect_with_trust_of_a_model_whose_class_was_its_script_s_says_so_in_a_line(tmp_path):
    saved = tmp_path / "whole_model.pt"
    subprocess.run([sys.executable, "-c", "import sys, torch\n"
                    "class Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.fc = torch.nn.Linear(2, 1)\n"
                    f"torch.save(Net(), {str(saved)!r})"], check=True, timeout=120)
    trusted = CliRunner().invoke(main, ["checkpoints", "inspect", "--trust", str(saved)])
    assert trusted.exit_code == 1 and "Traceback" not in trusted.output
    assert "needs code that is not here to load (" in trusted.output and "'Net'" in trusted.output
    assert "save model.state_dict() instead" in trusted.output


def test_inspect_refuses_a_malicious_pickle_and_runs_nothing_from_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return Path.touch, (marker,)

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"model": Payload()}))
    result = CliRunner().invoke(main, ["checkpoints", "inspect", str(tmp_path / "evil.pt")])
    assert result.exit_code == 1 and "it would import and call pathlib.Path.touch" in result.output
    assert not marker.exists()


def test_a_missing_folder_or_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    missing = CliRunner().invoke(main, ["checkpoints", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert "directory must be a folder of checkpoints, got" in missing.output and "no such folder" in missing.output
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(main, ["checkpoints", str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "DIR must hold checkpoints (step-*.pt)" in empty.output
    (tmp_path / "notes.txt").write_text("hello")
    text = CliRunner().invoke(main, ["checkpoints", "inspect", str(tmp_path / "notes.txt")])
    assert text.exit_code == 1 and "must be a file written by torch.save" in text.output
    assert "Traceback" not in missing.output + empty.output + text.output


def test_a_checkpoint_pruned_while_the_folder_is_listed_is_left_out_not_an_error(tmp_path, monkeypatch):
    # monitor checkpoints DIR of a live run: "[Errno 2] No such file or directory: .../step-000000040.pt"
    from monitor.checkpoint import listing

    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=1, keep_last=3)
    train(parts, monitor, start, epochs=1)
    first, *rest = sorted((tmp_path / "ckpt").glob("step-*.pt"))
    load = listing.load_checkpoint

    def pruned_meanwhile(path, **options):
        if path == first:
            path.unlink()  # the live run's save pruned it after the folder was listed
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return load(path, **options)

    monkeypatch.setattr(listing, "load_checkpoint", pruned_meanwhile)
    assert [info.path for info in listing.list_checkpoints(tmp_path / "ckpt")] == rest


def test_checkpoints_inspect_gives_a_loop_counted_in_steps_its_step_alone(tmp_path):
    # A GAN's monitor.steps loop cycling its loader read "epoch 0, step 60, batch 60 of the epoch".
    from monitor import Checkpoint, Monitor
    from monitor.log import NullSink

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor([Checkpoint(tmp_path, every_steps=3, at_end=False)], sink=NullSink()) as monitor:
        monitor.train_start(model, optimizer)
        for _ in monitor.steps(3):
            monitor.step_end(loss=1.0)
    result = CliRunner().invoke(main, ["checkpoints", "inspect", str(tmp_path / "step-000000003.pt")])
    assert dict(line.split(None, 1) for line in result.output.splitlines())["loop"] == "step 3"
