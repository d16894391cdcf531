"""monitor runs: what the run logs on disk hold, exported at full resolution."""
from __future__ import annotations

import csv
import io
import json
import math

import torch
from click.testing import CliRunner

from monitor import GradNorms, Monitor, Scalars
from monitor.cli import main
from monitor.runlog import RunLog
from helpers.monitors import small_model, train


def _logged_points(run_dir) -> list[tuple[str, str, float, float]]:
    return [(e["win"], trace, e["x"], y) for e in RunLog.read(run_dir / RunLog.FILENAME) if e["k"] == "points"
            for trace, y in e["y"].items()]


def test_export_gives_every_point_of_every_window_as_the_run_log_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VISDOM_PORT", "1")  # no server: the run log is written all the same
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor([Scalars(), GradNorms()], env="exported", run_dir=tmp_path / "run", timeout=0.2) as monitor:
        monitor.train_start(model, optimizer)
        train(monitor, model, optimizer, steps=1500)
        monitor.validation_end({"loss": float("nan")})
    logged = _logged_points(tmp_path / "run")
    assert len({x for w, _, x, _ in logged if w == "loss"}) == 1500

    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    rows = list(csv.reader(io.StringIO(done.output)))
    assert rows[0] == ["window", "trace", "x", "y"]
    shown = sorted((w, t, float(x), float(y)) for w, t, x, y in rows[1:])
    expected = sorted((w, t, float(x), float(y)) for w, t, x, y in logged)
    assert len(shown) == len(expected) and all(
        a[:3] == b[:3] and (a[3] == b[3] or math.isnan(a[3]) and math.isnan(b[3])) for a, b in zip(shown, expected))

    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "run" / RunLog.FILENAME), "--format", "json",
                                     "--window", "loss"])
    exported = json.loads(done.output)
    assert list(exported) == ["loss"] and exported["loss"]["train"]["x"] == list(range(1, 1501))
    assert exported["loss"]["validation"]["y"] == [None]  # NaN as null: strict JSON


def test_export_names_what_is_missing(tmp_path):
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path)])
    assert done.exit_code != 0 and "run must be a run folder holding runlog.jsonl" in done.output
