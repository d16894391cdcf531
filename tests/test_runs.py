"""monitor runs: what the run logs on disk hold, exported at full resolution."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from monitor import Checkpoint, GradNorms, Guard, Monitor, Scalars, Summary, SummaryWriter
from monitor.cli import main
from monitor.records import Order
from monitor.runlog import RunLog
from monitor.runs import Run, best_mode, collectable, compare, described, exported, listed, selected, table
from monitor.windows import float32_digits
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
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "run"), "--window", "los"])
    assert done.exit_code == 1 and "got ['los']; its windows of points: ['grad norm', 'loss']" in done.output
    with SummaryWriter(str(tmp_path / "tb"), port=1) as writer:  # a PR curve, beside a curve
        writer.add_scalar("loss", 0.5, 0)
        writer.add_pr_curve("pr/cat", torch.tensor([0, 1, 1]), torch.tensor([0.2, 0.9, 0.6]), 0)
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "tb"), "--window", "pr/cat"])
    assert done.exit_code == 1 and "got ['pr/cat']; 'pr/cat' holds pr curves, which export does not take; its " \
        "windows of points: ['loss']" in done.output, done.output


def test_a_guard_s_mark_on_the_loss_window_is_not_listed_as_a_metric(tmp_path):
    with Monitor([Scalars(), Guard(action="warn")], env="guarded", run_dir=tmp_path / "run", port=1,
                 timeout=0.2) as monitor:  # no server: the run log is written all the same
        for step in range(6):
            monitor.step_end(loss=float("nan") if step == 3 else 1.0 / (step + 1))
    assert described(tmp_path / "run").metrics == {"loss/train": (1 / 6, 1 / 6)}


def test_a_trial_that_diverged_is_listed_with_nan_ranked_last_and_collected_by_keep_best(visdom_server, tmp_path):
    root = tmp_path / "runs"
    for env, losses in (("good", [0.5, 0.3]), ("bad", [0.6, 0.4]), ("diverged", [float("nan"), float("inf")])):
        _finished_or_crashed(root, env, visdom_server.port, 0.1, losses, crash=False)
    assert described(root / "diverged").metrics["loss/train"][1] != described(root / "diverged").metrics[
        "loss/train"][1]  # NaN: no finite value
    done = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "loss/train"])
    assert [line.split()[0] for line in done.output.splitlines()[1:]] == ["good", "bad", "diverged"]
    assert "inf (-)" in done.output.splitlines()[-1]  # no best: no finite value
    gone = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "2", "--metric", "loss/train", "--yes",
                                     "--port", str(visdom_server.port)])
    assert gone.exit_code == 0 and sorted(p.name for p in root.iterdir()) == ["bad", "good"], gone.output


def test_list_names_the_folder_of_a_run_moved_to_another_name_so_rm_can_be_given_it(tmp_path):
    for env in ("kept", "moved"):  # no server: the run logs are written all the same
        with Monitor([Scalars()], env=env, run_dir=tmp_path / "runs" / env, port=1, timeout=0.2) as monitor:
            monitor.step_end(loss=torch.tensor(0.5))
    (tmp_path / "runs" / "moved").rename(tmp_path / "runs" / "renamed")
    done = CliRunner().invoke(main, ["runs", "list", str(tmp_path / "runs")])
    head, *rows = done.output.splitlines()
    assert head.split()[:2] == ["env", "folder"] and [row.split()[:2] for row in rows] == [["kept", "kept"],
                                                                                          ["moved", "renamed"]]


def test_losses_and_errors_are_best_lowest_in_the_languages_users_name_them():
    lowest = ["val_loss", "Top1 Error", "perplexity", "验证损失", "训练/误差率", "错误率", "検証損失", "손실",
              "wer/validation", "top1_err", "nll", "fid", "kl", "latency_ms", "miss_rate", "step time/step",
              "smape", "val_mase", "MAPE", "crps/validation", "pinball_q90", "rmsse", "wape",  # forecasting's
              "bits/dim", "bits_per_dim", "nelbo", "neg_elbo", "recon",  # a generative model's
              "rel_l2", "energy_drift", "residual", "chi2", "rmsd",  # a scientist's
              "gp", "loss_gp", "wasserstein",  # a WGAN-GP's
              "brier", "brier_score", "rmsle", "cross_entropy", "bce", "deviance", "median_ae", "ce",  # tabular's
              "hd95", "hausdorff95", "hausdorff", "assd", "asd/tumour", "ravd", "fpr", "eer", "false_positives"]
    highest = ["accuracy", "准确率", "f1", "正解率", "precision", "recall", "episodic_return", "bleu", "auc",
               "map", "mAP@0.5", "elbo", "r2", "dice", "mean_dice", "fps", "fp16_accuracy"]  # a detector's mean average precision; the ELBO itself
    assert [best_mode(name) for name in lowest + highest] == ["min"] * len(lowest) + ["max"] * len(highest)


def test_the_runs_table_lines_up_names_in_wide_characters(tmp_path):
    from monitor.runs import columns, table

    for env, loss in (("猫狗分类-实验一", [0.9, 0.5]), ("a", [0.8])):
        _finished_or_crashed(tmp_path, env, 1, 0.1, loss, crash=False)  # no server: the run logs alone
    lines = table(listed(tmp_path)).splitlines()
    starts = {columns(line[:line.index(word)]) for line, word in zip(lines, ("status", "finished", "finished"))}
    assert len(starts) == 1 and columns("猫狗分类-实验一") == 15 and columns("e\u0301") == 1


def test_export_prints_names_beyond_ascii_where_python_s_stdout_is_ascii(tmp_path):
    import os
    import subprocess

    from helpers.commands import MONITOR_COMMAND

    with Monitor([Scalars()], env="实验", run_dir=tmp_path / "实验", port=1) as monitor:  # no server: the log
        monitor.step_end(loss=0.5, metrics={"准确率": 0.75})
    printed = subprocess.run([*MONITOR_COMMAND, "runs", "export", str(tmp_path / "实验")],
                             capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert printed.returncode == 0, printed.stderr.decode(errors="replace")[-2000:]
    assert "准确率,train,1,0.75" in printed.stdout.decode()  # was a UnicodeEncodeError


def test_export_of_a_cross_validation_s_folds_is_one_table_each_row_naming_its_fold(tmp_path, monkeypatch):
    # One CSV for a paper's table took a shell loop, and its rows had no run column.
    monkeypatch.setenv("VISDOM_PORT", "1")
    for fold in range(2):
        with Monitor([Scalars()], env=f"cv-fold{fold}", run_dir=tmp_path / f"cv-fold{fold}", timeout=0.2) as monitor:
            monitor.step_end(loss=float(fold))
            monitor.validation_end({"auc": 0.5 + fold / 10})
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "cv-fold0"), str(tmp_path / "cv-fold1"),
                                     "--window", "auc"])
    assert done.exit_code == 0, done.output
    assert list(csv.reader(io.StringIO(done.output))) == [
        ["run", "window", "trace", "x", "y"], ["cv-fold0", "auc", "validation", "1", "0.5"],
        ["cv-fold1", "auc", "validation", "1", "0.6"]]
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path / "cv-fold0"), str(tmp_path / "cv-fold1"),
                                     "--format", "json", "--window", "loss"])
    assert json.loads(done.output) == {f"cv-fold{k}": {"loss": {"train": {"x": [1], "y": [float(k)]}}}
                                       for k in range(2)}


def test_export_names_what_is_missing(tmp_path):
    done = CliRunner().invoke(main, ["runs", "export", str(tmp_path)])
    assert done.exit_code != 0 and "run must be a run folder holding runlog.jsonl" in done.output


KILLED = """
import sys, time, torch
from monitor import Monitor, Scalars
with Monitor([Scalars()], env="killed", run_dir=sys.argv[1], port=int(sys.argv[2])) as monitor:
    step = 0
    while True:
        step += 1
        monitor.step_end(loss=torch.tensor(1.0 / step))
        if step % 10 == 0:
            monitor.flush()
        time.sleep(0.01)
"""


def _finished_or_crashed(root, env: str, port: int, lr: float, losses: list[float], crash: bool) -> None:
    from monitor import Summary

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    try:
        with Monitor([Summary(hparams={"lr": lr, "batch": 16}), Scalars()], env=env, run_dir=root / env,
                     port=port) as monitor:
            monitor.train_start(model, optimizer, hparams={"optimizer": "sgd"})
            for loss in losses:
                monitor.step_end(loss=torch.tensor(loss), metrics={"accuracy": 1 - loss})
            monitor.validation_end({"loss": losses[-1] + 0.1})
            if crash:
                raise RuntimeError("the data ran out")
    except RuntimeError:
        pass


@pytest.fixture(scope="module")
def three_runs(visdom_server, tmp_path_factory):
    """runs/good (finished, lr 0.1), runs/broken (raised, lr 0.3), runs/killed (SIGKILLed, no hparams)."""
    import subprocess
    import sys
    import time

    root = tmp_path_factory.mktemp("three") / "runs"
    _finished_or_crashed(root, "good", visdom_server.port, 0.1, [0.9, 0.5, 0.3, 0.4], crash=False)
    _finished_or_crashed(root, "broken", visdom_server.port, 0.3, [0.8, 0.2, 0.6], crash=True)
    process = subprocess.Popen([sys.executable, "-c", KILLED, str(root / "killed"), str(visdom_server.port)])
    try:
        log = root / "killed" / RunLog.FILENAME
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count('"points"') < 20):
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    return root


def test_list_tells_finished_killed_and_crashed_runs_apart_and_sorts_and_filters(three_runs):
    root = three_runs
    runs = {run.env: run for run in listed(root)}
    assert {env: run.status for env, run in runs.items()} == {"good": "finished", "broken": "crashed",
                                                              "killed": "killed"}
    assert runs["broken"].error == "RuntimeError: the data ran out"
    assert runs["good"].steps == 4 and runs["broken"].steps == 3 and runs["killed"].steps >= 20
    assert runs["good"].metrics["loss/train"] == pytest.approx((0.4, 0.3))  # last, best (lowest)
    assert runs["good"].metrics["accuracy/train"] == pytest.approx((0.6, 0.7))  # best is highest
    assert runs["good"].hparams == {"lr": 0.1, "batch": 16, "optimizer": "sgd"}

    assert [r.env for r in selected(list(runs.values()), sort="loss/train")] == ["killed", "broken", "good"]
    assert [r.env for r in selected(list(runs.values()), sort="accuracy/train")] == ["broken", "good", "killed"]
    assert [r.env for r in selected(list(runs.values()), where={"lr": "0.10"})] == ["good"]
    assert [r.env for r in selected(list(runs.values()), where={"lr": "0.1, 0.3"}, sort="lr")] == ["good", "broken"]
    assert [r.env for r in selected(list(runs.values()), sort="lr", mode="max")] == ["broken", "good", "killed"]
    flags = [runs["good"]._replace(env=f"double={flag}", hparams={"double": flag}) for flag in
             (True, False, None)]  # a command line and JSON write them true, false, null
    assert [[r.env for r in selected(flags, where={"double": wanted})] for wanted in ("true", "False", "0", "null")] \
        == [["double=True"], ["double=False"], ["double=False"], ["double=None"]]

    done = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "loss/validation", "--where", "batch=16"])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].startswith("env") and [line.split()[0] for line in lines[1:]] == ["good", "broken"]
    bad = CliRunner().invoke(main, ["runs", "list", str(root), "--where", "lr"])
    assert bad.exit_code == 2 and "must be NAME=VALUE (or NAME<VALUE, <=, >, >=, !=), got 'lr'" in bad.output
    by_lr = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "lr", "--where", "lr=0.3,0.1"])
    assert [line.split()[0] for line in by_lr.output.splitlines()[1:]] == ["good", "broken"], by_lr.output
    unknown = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "loss/valid"])
    assert "or hparams (batch, lr, optimizer), got 'loss/valid'" in unknown.output.replace("\n", " "), unknown.output
    typo = CliRunner().invoke(main, ["runs", "list", str(root), "--where", "LR=0.1"])
    assert typo.exit_code == 2 and "no run under" in typo.output and "has hparam 'LR'; they have batch, lr, optimizer" \
        in typo.output.replace("\n", " ").replace("  ", " "), typo.output
    alone = CliRunner().invoke(main, ["runs", "list", str(root), "--mode", "max"])
    assert alone.exit_code == 2 and "give --sort METRIC too" in alone.output
    ended = CliRunner().invoke(main, ["runs", "list", str(root), "--where", "status=crashed,killed"])  # a search's
    assert [line.split()[0] for line in ended.output.splitlines()[1:]] == ["broken", "killed"], ended.output
    assert [r.env for r in selected(list(runs.values()), where={"status": "finished"})] == ["good"]


def test_a_sweep_s_runs_are_picked_by_ranges_and_given_to_a_script_as_csv_or_json(three_runs):
    # A platform engineer picking the best of 64 trials from a script parsed the text table: no
    # lr<0.01, no --top, no machine-readable list.
    root = three_runs
    runs = list(listed(root))
    assert [r.env for r in selected(runs, where=[("lr", ">0.05"), ("lr", "<=0.3")], sort="lr")] == ["good", "broken"]
    assert [r.env for r in selected(runs, where={"lr": "<0.2"})] == ["good"]
    assert [r.env for r in selected(runs, where={"optimizer": "!=adam", "lr": "!=0.1"})] == ["broken"]
    assert [r.env for r in selected(runs, where={"optimizer": ">1"})] == []  # text has no order
    done = CliRunner().invoke(main, ["runs", "list", str(root), "--where", "lr>=0.1", "--where", "lr<0.3",
                                     "--format", "json"])
    assert done.exit_code == 0, done.output
    (good,) = json.loads(done.output)
    assert good["env"] == "good" and good["status"] == "finished" and good["steps"] == 4 and good["error"] is None
    assert good["metrics"]["loss/train"] == pytest.approx({"last": 0.4, "best": 0.3})
    assert good["hparams"] == {"lr": 0.1, "batch": 16, "optimizer": "sgd"}
    best = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "loss/train", "--top", "2", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(best.output)))
    assert [row["env"] for row in rows] == ["killed", "broken"] and rows[1]["error"] == "RuntimeError: the data ran out"
    assert list(rows[0])[:8] == ["env", "path", "status", "error", "steps", "started", "loss/train", "loss/train best"]
    assert float(rows[1]["loss/train best"]) == pytest.approx(0.2) and rows[1]["lr"] == "0.3" and rows[0]["lr"] == ""
    bad = CliRunner().invoke(main, ["runs", "list", str(root), "--where", "optimizer<sgd"])
    assert bad.exit_code == 2 and "< compares numbers, got 'optimizer<sgd'" in bad.output


def test_a_sweep_reusing_one_env_lists_its_earlier_runs_when_asked(visdom_server, tmp_path, connect_client):
    root = tmp_path / "runs"
    for lr in (0.1, 0.3, 0.5):  # each trial a new run of env "sweep": the one before is set aside
        _finished_or_crashed(root, "sweep", visdom_server.port, lr, [0.9, lr], crash=lr == 0.3)
    assert [run.hparams["lr"] for run in listed(root)] == [0.5]
    every = listed(root, earlier=True)
    assert sorted((run.hparams["lr"], run.status) for run in every) == [(0.1, "finished"), (0.3, "crashed"),
                                                                        (0.5, "finished")]
    assert [run.hparams["lr"] for run in every] == [0.5, 0.1, 0.3]  # the folder's, then the earlier ones in order
    assert [run.hparams["lr"] for run in listed(root / "sweep" / "earlier", earlier=True)] == [0.1, 0.3]
    assert not listed(root / "sweep" / "earlier")  # what gc and rm see: no folder of a run of its own
    shown = CliRunner().invoke(main, ["runs", "list", str(root / "sweep" / "earlier")])
    assert shown.exit_code == 0 and len(shown.output.splitlines()) == 3, shown.output
    done = CliRunner().invoke(main, ["runs", "list", str(root), "--earlier", "--sort", "loss/train"])
    assert done.exit_code == 0, done.output
    rows = [line.split() for line in done.output.splitlines()[1:]]
    earlier = {run.hparams["lr"]: run.log.name for run in every if run.log.parent.name == "earlier"}
    assert [row[1] for row in rows] == [f"earlier/{earlier[0.1]}", f"earlier/{earlier[0.3]}", "sweep"]  # lr 0.1 best

    # One earlier run deleted alone: its log goes; the folder's run, the other one and the env stay.
    crashed = next(run for run in every if run.hparams["lr"] == 0.3)
    gone = CliRunner().invoke(main, ["runs", "rm", str(crashed.log), "--yes", "--port", str(visdom_server.port)])
    assert gone.exit_code == 0 and f"{crashed.log}  (env sweep, crashed" in gone.output, gone.output
    assert sorted(run.hparams["lr"] for run in listed(root, earlier=True)) == [0.1, 0.5]
    assert (root / "sweep" / RunLog.FILENAME).is_file() and "sweep" in connect_client(visdom_server).get_env_list()


def test_a_notebook_s_setup_cell_run_again_ends_the_earlier_run_as_it_stood(visdom_server, tmp_path):
    options = {"env": "cell", "run_dir": tmp_path / "cell", "port": visdom_server.port}
    ended = Monitor([Scalars()], **options)
    ended.train_start()
    ended.step_end(loss=0.5)
    ended.train_end()  # the last cell ran, close() never called
    halfway = Monitor([Scalars()], **options)  # the setup cell again: it replaces the run above
    halfway.train_start()
    halfway.step_end(loss=0.4)  # stopped mid-training
    latest = Monitor([Scalars()], **options)
    latest.close()
    statuses = {run.run_id: (run.status, run.error) for run in listed(tmp_path, earlier=True)}
    assert statuses[ended.sink.run_id] == ("finished", None)
    assert statuses[halfway.sink.run_id] == ("interrupted", "a newer run of its env in this process replaced it")


@pytest.mark.parametrize("command", [["list"], ["gc", "--older-than", "2000-01-01"]])
def test_a_runs_folder_that_does_not_exist_is_an_error_not_an_empty_list(tmp_path, command):
    done = CliRunner().invoke(main, ["runs", *command, str(tmp_path / "runz")])
    assert done.exit_code == 2 and "does not exist" in done.output and "runz" in done.output
    assert "runs are written in runs/ENV of the folder it ran in" in done.output  # where to look


def test_monitor_runs_alone_where_no_runs_folder_is_says_where_runs_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a newcomer in another folder than the script's
    done = CliRunner().invoke(main, ["runs"])
    assert done.exit_code == 2 and "folder 'runs' does not exist: a script's runs are written in runs/ENV" in done.output


def test_compare_puts_a_trace_per_run_in_each_shared_window_on_a_server_that_never_saw_them(
        three_runs, fresh_server, read_window, read_window_raw, caplog):
    root = three_runs
    with caplog.at_level("WARNING", logger="monitor"):
        done = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "broken"),
                                         str(root / "killed"), "--into", "cmp", "--port", str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    # accuracy: of two runs, the killed one has none: drawn for those that have it, as TensorBoard does
    assert not [r.getMessage() for r in caplog.records if "left out of the comparison" in r.getMessage()]
    assert set(read_window(fresh_server, "cmp", "accuracy")) == {"lr=0.1/train", "lr=0.3/train"}
    shown = read_window(fresh_server, "cmp", "loss")
    labels = {"good": "lr=0.1", "broken": "lr=0.3", "killed": "killed"}
    expected = {}
    for env, label in labels.items():
        for window, traces in exported(root / env, ["loss"]).items():
            for trace, points in traces.items():
                expected[f"{label}/{trace}"] = ([x for x, _ in points], float32_digits([y for _, y in points]))
    assert shown == expected
    # Each run in a colour of its own, its traces (train, validation) told apart by dashes: with
    # a colour a trace, six runs' twelve traces reused Plotly's ten colours.
    drawn = [line for line in read_window_raw(fresh_server, "cmp", "loss")["content"]["data"]
             if line.get("showlegend", True)]
    styles = {line["name"]: (line["line"]["color"], line["line"].get("dash", "solid")) for line in drawn}
    colours = {label: {styles[name][0] for name in styles if name.startswith(label + "/")} for label in labels.values()}
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == 3, styles
    dashes = {name.split("/", 1)[1]: styles[name][1] for name in styles}
    assert dashes == {"train": "solid", "validation": "dash"}, styles
    table = read_window_raw(fresh_server, "cmp", "runs")["content"]
    header = table.split("</tr>")[0]
    assert "<td>lr</td>" in header and "batch" not in header and "optimizer" not in header


def test_compare_draws_the_total_grad_norm_of_runs_whose_layers_are_a_heatmap(tmp_path, fresh_server, read_window):
    """The grad-norm window of a deep model is a heatmap: compare left the window out, total too."""
    from monitor import GradNorms

    for env, form in (("deep", "heatmap"), ("shallow", "lines")):
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor([Scalars(), GradNorms(form=form)], env=env, run_dir=tmp_path / env, port=1) as monitor:
            monitor.train_start(model, optimizer)  # no server: the run logs alone
            for _ in range(3):
                model(torch.ones(2, 4)).sum().backward()
                monitor.after_backward()
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=1.0)
    done = CliRunner().invoke(main, ["runs", "compare", str(tmp_path / "deep"), str(tmp_path / "shallow"),
                                     "--into", "cmp-deep", "--port", str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    shown = read_window(fresh_server, "cmp-deep", "grad norm")
    assert sorted(shown) == ["deep/total", "shallow/total"] and shown["deep/total"][0] == [1, 2, 3]
    assert shown["deep/total"][1] == shown["shallow/total"][1]  # the same model, seed and batches


def _finished(root, env: str, port: int, loss: float) -> None:
    from monitor import Checkpoint

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor([Scalars(), Checkpoint(root / env / "checkpoints")], env=env, run_dir=root / env,
                 port=port) as monitor:
        monitor.train_start(model, optimizer)
        monitor.step_end(loss=torch.tensor(loss))


def test_rm_leaves_no_folder_no_checkpoints_and_no_env(visdom_server, tmp_path, connect_client):
    root = tmp_path / "runs"
    _finished(root, "doomed", visdom_server.port, 0.5)
    assert list((root / "doomed" / "checkpoints").glob("*.pt")) and "doomed" in connect_client(
        visdom_server).get_env_list()
    asked = CliRunner().invoke(main, ["runs", "rm", str(root / "doomed"), "--port", str(visdom_server.port)],
                               input="n\n")
    assert asked.exit_code == 1 and "1 checkpoint files" in asked.output and (root / "doomed").exists()
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "doomed"), "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert not (root / "doomed").exists() and "doomed" not in connect_client(visdom_server).get_env_list()


def test_rm_given_another_live_server_than_the_run_s_deletes_nothing_and_names_the_run_s(visdom_server, tmp_path,
                                                                                          connect_client):
    # A second server on the port given (a teammate's, another sweep's): the folder went, "Deleted",
    # and the env stayed on the run's own dashboard where no command could find it again.
    from monitor.server import start

    root = tmp_path / "runs"
    _finished(root, "trial04", visdom_server.port, 0.5)
    with start(port=0, env_path=tmp_path / "other") as other:
        refused = CliRunner().invoke(main, ["runs", "rm", str(root / "trial04"), "--yes", "--port", str(other.port)])
    assert refused.exit_code == 1 and (root / "trial04").exists(), refused.output
    assert f"the dashboard at http://127.0.0.1:{other.port} has no env 'trial04', whose run was sent to " \
           f"http://127.0.0.1:{visdom_server.port}, and env(s) trial04 would stay on it" in refused.output
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "trial04"), "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0 and "trial04" not in connect_client(visdom_server).get_env_list(), done.output


def test_rm_of_a_copied_run_folder_leaves_the_env_the_original_still_shows_in(visdom_server, tmp_path,
                                                                                connect_client):
    import shutil

    root = tmp_path / "runs"
    _finished(root, "original", visdom_server.port, 0.5)
    shutil.copytree(root / "original", root / "copy")  # its run log names env "original" too
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "copy"), "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0 and f"the run in {(root / 'original').resolve()} shows there too" in done.output
    assert not (root / "copy").exists() and "original" in connect_client(visdom_server).get_env_list()
    backup = tmp_path / "elsewhere" / "backup" / "original"  # not beside it: the env's claim names the original
    shutil.copytree(root / "original", backup)
    done = CliRunner().invoke(main, ["runs", "rm", str(backup), "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0 and f"the run in {(root / 'original').resolve()} shows there too" in done.output
    assert not backup.exists() and "original" in connect_client(visdom_server).get_env_list()


def test_rm_closes_only_the_run_s_windows_where_the_env_holds_the_user_s_own(visdom_server, tmp_path,
                                                                              connect_client):
    client = connect_client(visdom_server)
    client.text("my notes", win="notes", env="mine")  # the user's own Visdom call, in the run's env
    root = tmp_path / "runs"
    _finished(root, "mine", visdom_server.port, 0.5)
    assert set(json.loads(client.get_window_data(env="mine"))) == {"notes", "loss"}
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "mine"), "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert not (root / "mine").exists() and set(json.loads(client.get_window_data(env="mine"))) == {"notes"}


def test_rm_keeps_the_user_s_own_files_in_a_run_folder_and_says_so_before_asking(visdom_server, tmp_path):
    root = tmp_path / "runs"
    _finished(root, "mine", visdom_server.port, 0.5)
    torch.save({"w": torch.zeros(2)}, root / "mine" / "final_model.pt")  # saved beside the run log
    (root / "mine" / "analysis").mkdir()
    (root / "mine" / "analysis" / "notes.md").write_text("lr too high")
    _finished(root / "mine", "inner", visdom_server.port, 0.4)  # a run inside, with a file of its own
    (root / "mine" / "inner" / "inner.yaml").write_text("lr: 0.1")
    folder = next(p.parent for p in (root / "mine").rglob("latest.json") if "inner" not in p.parts)
    torch.save({"w": torch.zeros(2)}, folder / "adapters-step-0001.pt")  # the loop's own, beside the checkpoints
    assert described(root / "mine").checkpoints == 2  # its and the inner run's, not the user's model nor adapters
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "mine"), "--port", str(visdom_server.port)],
                              input="y\n")
    assert done.exit_code == 0, done.output
    assert "kept, with the folder: analysis/, final_model.pt, inner/inner.yaml" in done.output
    left = sorted(str(p.relative_to(root / "mine")) for p in (root / "mine").rglob("*"))
    assert left == ["analysis", "analysis/notes.md", "final_model.pt", "inner", "inner/inner.yaml"]


def test_rm_deletes_nothing_where_the_server_refuses_its_login_and_all_with_it(tmp_path, monkeypatch):
    # It used to delete the folder, then say the env stayed because the dashboard "could not be
    # reached", and exit 0: no command could find that env again.
    from monitor.server import start

    credentials = {"username": "ada", "password": "a long passphrase"}
    with start(port=0, env_path=tmp_path / "visdom", login=True, **credentials) as server:
        model = small_model()
        with Monitor([Scalars()], env="guarded", run_dir=tmp_path / "guarded", port=server.port,
                     **credentials) as monitor:
            monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
            monitor.step_end(loss=torch.tensor(0.5))
        command = ["runs", "rm", str(tmp_path / "guarded"), "--yes", "--port", str(server.port)]
        monkeypatch.delenv("VISDOM_USERNAME", raising=False)
        monkeypatch.delenv("VISDOM_PASSWORD", raising=False)
        anonymous = CliRunner().invoke(main, command)
        monkeypatch.setenv("VISDOM_USERNAME", "ada")
        monkeypatch.setenv("VISDOM_PASSWORD", "wrong")
        wrong = CliRunner().invoke(main, command)
        assert (tmp_path / "guarded").exists()
        monkeypatch.setenv("VISDOM_PASSWORD", credentials["password"])
        done = CliRunner().invoke(main, command)
        from monitor.connection import Connection

        gone = Connection(port=server.port, **credentials).post("win_exists", {"win": "loss", "eid": "guarded"})
    assert anonymous.exit_code == 1 and "answered HTTP 400 (a server with login? VISDOM_USERNAME and " \
        "VISDOM_PASSWORD are not set)" in anonymous.output
    assert wrong.exit_code == 1 and "refused the login of 'ada' (HTTP 400)" in wrong.output, wrong.output
    assert "would stay on it: give its --port (or --server), or --keep-envs" in wrong.output
    assert "Nothing was deleted." in wrong.output
    assert done.exit_code == 0 and not (tmp_path / "guarded").exists() and gone == "false", done.output


def test_gc_keeps_the_best_finished_runs_and_every_other_run(visdom_server, tmp_path):
    root = tmp_path / "runs"
    for env, loss in (("first", 0.3), ("second", 0.1), ("third", 0.2)):
        _finished(root, env, visdom_server.port, loss)
    _finished_or_crashed(root, "crashed", visdom_server.port, 0.3, [0.9], crash=True)

    class TrialPruned(Exception):  # a search's (Optuna's) way to stop a trial doing badly
        pass

    with pytest.raises(TrialPruned):
        with Monitor([Scalars()], env="pruned", run_dir=root / "pruned", port=visdom_server.port) as monitor:
            monitor.step_end(loss=torch.tensor(0.05))
            raise TrialPruned("trial 4 pruned at step 1 because its intermediate value was poor")
    (pruned,) = [run for run in listed(root) if run.env == "pruned"]
    assert (pruned.status, pruned.error) == ("pruned", "TrialPruned: trial 4 pruned at step 1 because its "
                                                       "intermediate value was poor")
    assert "pruned: TrialPruned: trial 4 pruned at step 1 b\u2026  " in table([pruned])  # cut, and said to be
    done = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1", "--metric", "loss/train", "--yes",
                                     "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in root.iterdir()) == ["crashed", "second"]  # a pruned trial is no best to keep
    # The cut, checkable before answering: what it keeps and the value it ranked each run by.
    assert f"  kept: {root / 'second'}  (loss/train 0.1)" in done.output
    assert f"{root / 'third'}  (env third, finished, loss/train 0.2, 1 checkpoint files)" in done.output
    nothing = CliRunner().invoke(main, ["runs", "gc", str(root), "--older-than", "2000-01-01", "--yes"])
    assert "nothing to collect" in nothing.output
    bad = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1"])
    assert bad.exit_code == 2 and "--keep-best 1 ranks the runs by a metric: give --metric METRIC too" in bad.output


def test_the_runs_pane_changes_only_when_a_run_does(visdom_server, tmp_path, read_window_raw):
    from monitor.runs import RunsPane

    root = tmp_path / "runs"
    pane = RunsPane(root, port=visdom_server.port)
    assert pane.update() and "no runs yet" in read_window_raw(visdom_server, "runs", "runs")["content"]
    _finished(root, "first", visdom_server.port, 0.5)
    assert pane.update() and not pane.update()
    html = read_window_raw(visdom_server, "runs", "runs")["content"]
    assert '<a href="first">first</a>' in html and "finished" in html


def test_the_runs_pane_sends_again_a_run_that_ended_without_reaching_the_dashboard(visdom_server, tmp_path,
                                                                                    read_window, caplog,
                                                                                    connect_client):
    # A trial that closes while the server hangs (or is down) leaves its env unfilled; the pane of
    # `monitor serve --runs` fills it from the run log once the run is over and the server answers.
    from monitor.runs import RunsPane

    root = tmp_path / "runs"
    _finished(root, "before", 1, 0.3)  # there at the first look: serve's start-up rebuild is its
    pane = RunsPane(root, port=visdom_server.port)
    pane.update()
    _finished(root, "delivered", visdom_server.port, 0.4)
    with Monitor([Scalars()], env="unreached", run_dir=root / "unreached", port=1, timeout=0.2) as monitor:
        for loss in (0.9, 0.5):
            monitor.step_end(loss=torch.tensor(loss))
    with caplog.at_level(logging.INFO, logger="monitor"):
        assert pane.update()
    assert read_window(visdom_server, "unreached", "loss") == {"train": ([1, 2], [0.9, 0.5])}
    sent = [r.getMessage() for r in caplog.records if "lacks windows" in r.getMessage()]
    assert len(sent) == 1 and "'unreached'" in sent[0]  # the delivered run was checked and left as it was
    assert "before" not in connect_client(visdom_server).get_env_list()


def test_a_run_that_went_on_after_an_end_and_stopped_without_one_was_killed(tmp_path):
    # A SummaryWriter logging again after close() continues its run: the earlier end no longer says how it ended.
    log = RunLog(tmp_path / "reopened" / RunLog.FILENAME)
    log.append([{"k": "run", "env": "reopened", "run_id": "r", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "points", "win": "loss", "x": 1, "y": {"loss": 1.0}},
                {"k": "end", "status": "finished", "error": None, "time": 1.0},
                {"k": "points", "win": "loss", "x": 2, "y": {"loss": 0.5}}])
    log.close()
    from monitor.runs import described
    assert described(tmp_path / "reopened").status == "killed"


ENDINGS = {  # a script's last lines -> (status, error) in the run log
    "monitor.train_end()": ("finished", None),  # and no close(): the script's exit closes it
    "raise RuntimeError('the data ran out')": ("crashed", "RuntimeError: the data ran out"),
    "raise KeyboardInterrupt": ("interrupted", "KeyboardInterrupt"),
    "class TrialPruned(Exception): pass\nwith monitor:\n    raise TrialPruned('trial 3 pruned at step 1')":
        ("pruned", "TrialPruned: trial 3 pruned at step 1"),  # Optuna's, or a search's own
    "with monitor:\n    sys.exit(0)": ("finished", None),
    "monitor = None  # let go of, never closed (a sweep's loop)\nimport gc; gc.collect()": ("finished", None),
    "with monitor:\n    sys.exit(75)": ("interrupted", "SystemExit: 75"),  # a pre-empted job, to run again
    "writer = SummaryWriter(sys.argv[1] + '/w', port=int(sys.argv[2]))\nwriter.add_scalar('x', 1.0, 0)\n"
    "raise ValueError('bad batch')": ("crashed", "ValueError: bad batch"),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_script_s_exit_records_how_its_run_ended_whether_or_not_it_closed_the_monitor(
        visdom_server, tmp_path, ending):
    import subprocess
    import sys

    script = ("import sys\nfrom monitor import Monitor, Scalars, SummaryWriter\n"
              "monitor = Monitor([Scalars()], env='ending', run_dir=sys.argv[1] + '/m', port=int(sys.argv[2]))\n"
              "monitor.step_end(loss=0.5)\n" + ending + "\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(visdom_server.port)],
                          capture_output=True, text=True, timeout=60)
    from monitor.runs import described

    run = described(tmp_path / ("w" if "SummaryWriter(" in ending else "m"))
    assert (run.status, run.error) == ENDINGS[ending], done.stderr[-2000:]


def test_an_interactive_session_s_last_error_ends_a_run_only_where_it_stopped_its_loop(visdom_server, tmp_path):
    import subprocess
    import sys

    def session(typed: str) -> str:  # python -i, as a person types at its prompt
        done = subprocess.run([sys.executable, "-i"], input="from monitor import Monitor, Scalars, SummaryWriter\n"
                              + typed, capture_output=True, text=True, timeout=60)
        return done.stderr

    went_on = session(f"monitor = Monitor([Scalars()], env='typo', run_dir={str(tmp_path / 'm')!r}, "
                      f"port={visdom_server.port})\n"
                      f"writer = SummaryWriter({str(tmp_path / 'w')!r}, port={visdom_server.port})\n"
                      "monitor.train_start(); monitor.step_end(loss=0.5)\n"
                      "printt('a typo')\n"  # NameError at the prompt: the session goes on, and so does training
                      "monitor.step_end(loss=0.4); writer.add_scalar('loss', 0.4, 1)\n")
    stopped = session(f"monitor = Monitor([Scalars()], env='oom', run_dir={str(tmp_path / 's')!r}, "
                      f"port={visdom_server.port})\n"
                      "monitor.train_start(); monitor.step_end(loss=0.3); raise RuntimeError('out of memory')\n")
    from monitor.runs import described

    assert "NameError" in went_on and "RuntimeError" in stopped
    for name in ("m", "w"):
        run = described(tmp_path / name)
        assert (run.status, run.error) == ("finished", None), went_on[-2000:]
    run = described(tmp_path / "s")  # its loop raised and nothing came after: that error ended it
    assert (run.status, run.error) == ("crashed", "RuntimeError: out of memory"), stopped[-2000:]


def test_a_run_reads_finished_from_its_train_end_while_its_process_lives_on(visdom_server, tmp_path):
    from monitor.runs import described
    monitor = Monitor([Scalars()], env="idle", run_dir=tmp_path / "idle", port=visdom_server.port)
    monitor.train_start()
    monitor.step_end(loss=0.5)
    monitor.flush()
    assert described(tmp_path / "idle").status == "running"
    monitor.train_end()  # a notebook's kernel idle after training, or killed then
    monitor.flush()
    assert (described(tmp_path / "idle").status, described(tmp_path / "idle").steps) == ("finished", 1)
    monitor.step_end(loss=0.4)  # trained on: running again until it ends
    monitor.flush()
    assert described(tmp_path / "idle").status == "running"
    monitor.close()
    assert described(tmp_path / "idle").status == "finished"


def test_compare_reads_each_run_log_it_is_given_even_two_in_one_folder(three_runs, fresh_server, read_window,
                                                                       tmp_path):
    import shutil

    logs = tmp_path / "logs_only"
    logs.mkdir()
    shutil.copy(three_runs / "good" / RunLog.FILENAME, logs / RunLog.FILENAME)
    shutil.copy(three_runs / "broken" / RunLog.FILENAME, logs / "broken.jsonl")
    done = CliRunner().invoke(main, ["runs", "compare", str(logs / RunLog.FILENAME), str(logs / "broken.jsonl"),
                                     "--into", "cmp-files", "--port", str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    shown = read_window(fresh_server, "cmp-files", "loss")
    for label, env in (("lr=0.1", "good"), ("lr=0.3", "broken")):  # each label shows its own run's curves
        for trace, points in exported(three_runs / env, ["loss"])["loss"].items():
            assert shown[f"{label}/{trace}"] == ([x for x, _ in points], float32_digits([y for _, y in points]))


def test_gc_and_rm_never_take_a_run_they_keep_with_the_folder_of_one_they_delete(visdom_server, tmp_path):
    root = tmp_path / "runs"
    _finished_or_crashed(root, "again", visdom_server.port, 0.1, [0.9, 0.5], crash=True)  # set aside by the next
    _finished(root, "again", visdom_server.port, 0.5)
    _finished(root, "sweep", visdom_server.port, 0.4)
    _finished_or_crashed(root / "sweep", "trial1", visdom_server.port, 0.1, [0.9], crash=True)  # a run inside a run
    _finished(root, "plain", visdom_server.port, 0.3)
    done = CliRunner().invoke(main, ["runs", "gc", str(root), "--older-than", "2999-01-01", "--yes",
                                     "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in root.iterdir()) == ["again", "sweep"]  # only the plain one was all finished
    assert "2 run(s) kept as their folders hold other runs (an earlier run of the env: see `monitor runs " \
           f"{root} --earlier`" in done.output  # a search run again: each folder holds its earlier run, said
    assert list((root / "again" / "earlier").glob("*.jsonl")) and (root / "sweep" / "trial1").is_dir()
    asked = CliRunner().invoke(main, ["runs", "rm", str(root / "sweep"), str(root / "sweep"),
                                      "--port", str(visdom_server.port)], input="y\n")  # named twice
    assert asked.exit_code == 0, asked.output
    assert "with the run in it: " + str(root / "sweep" / "trial1" / RunLog.FILENAME) in asked.output
    assert "Deleted 1 run(s)." in asked.output and not (root / "sweep").exists()


def test_gc_keep_best_counts_a_best_run_whose_folder_holds_an_earlier_one_among_the_best(visdom_server, tmp_path):
    root = tmp_path / "runs"
    _finished_or_crashed(root, "rerun", visdom_server.port, 0.1, [0.9], crash=False)  # run again by mistake:
    for env, loss in (("rerun", 0.2), ("second", 0.3), ("third", 0.4)):             # set aside in earlier/
        _finished(root, env, visdom_server.port, loss)
    done = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1", "--metric", "loss/train", "--yes",
                                     "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in root.iterdir()) == ["rerun"]  # the best, kept; not the second best with it


def test_rm_refuses_a_running_run_before_asking_and_deletes_nothing(visdom_server, tmp_path):
    root = tmp_path / "runs"
    _finished(root, "done", visdom_server.port, 0.5)
    live = Monitor([Scalars()], env="live", run_dir=root / "live", port=visdom_server.port)
    try:
        done = CliRunner().invoke(main, ["runs", "rm", str(root / "done"), str(root / "live"), "--yes",
                                         "--port", str(visdom_server.port)])
        assert done.exit_code == 1 and "run must not be running" in done.output
        assert (root / "done").exists()  # nothing deleted: the check comes first
    finally:
        live.close()
    # A dashboard not reached: once the folder is gone no command would find its env to delete
    kept = CliRunner().invoke(main, ["runs", "rm", str(root / "done"), "--yes", "--port", "1"])
    assert kept.exit_code == 1 and (root / "done").exists()
    assert ("the dashboard at http://127.0.0.1:1 could not be reached, and env(s) done would stay on it: give its "
            "--port (or --server), or --keep-envs to delete the files alone. Nothing was deleted.") in kept.output
    gone = CliRunner().invoke(main, ["runs", "rm", str(root / "done"), "--yes", "--port", "1", "--keep-envs"])
    assert gone.exit_code == 0 and not (root / "done").exists() and "dashboard" not in gone.output


def test_gc_keep_best_ranks_only_runs_with_the_metric_and_refuses_one_no_run_has(visdom_server, tmp_path):
    root = tmp_path / "runs"
    for env, loss in (("a", 0.1), ("b", 0.5), ("c", 2.0)):
        _finished(root, env, visdom_server.port, loss)
    with Monitor([Scalars()], env="other", run_dir=root / "other", port=visdom_server.port) as monitor:
        monitor.step_end(metrics={"wer": 0.3})  # no loss: not ranked by it, so kept
    typo = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1", "--metric", "loss/valid"])
    assert typo.exit_code == 2 and "metric must be one of the runs' metrics (loss/train, wer/train)" in typo.output
    bare = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1"])  # CLI flags, not Python's names
    assert bare.exit_code == 2 and "--keep-best 1 ranks the runs by a metric: give --metric METRIC too" in bare.output
    done = CliRunner().invoke(main, ["runs", "gc", str(root), "--keep-best", "1", "--metric", "loss/train",
                                     "--mode", "max", "--yes", "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert "Best by loss/train: the highest" in done.output
    assert sorted(p.name for p in root.iterdir()) == ["c", "other"]


def test_list_shows_the_sorted_metric_and_what_a_crash_raised_and_refuses_an_unknown_sort(three_runs):
    done = CliRunner().invoke(main, ["runs", "list", str(three_runs), "--sort", "accuracy/train"])
    assert done.exit_code == 0, done.output
    head, *rows = done.output.splitlines()
    assert re.split(r"\s{2,}", head)[6] == "accuracy/train last (best)"  # the sorted-by metric is shown first
    assert any("crashed: RuntimeError: the data ran out" in row for row in rows)
    short = CliRunner().invoke(main, ["runs", str(three_runs), "--sort", "accuracy/train"])  # list, by default
    assert short.exit_code == 0 and short.output == done.output
    bad = CliRunner().invoke(main, ["runs", "list", str(three_runs), "--sort", "bogus"])
    assert bad.exit_code == 2 and "must be one of the runs' metrics" in bad.output
    one = CliRunner().invoke(main, ["runs", "list", str(three_runs), "--sort", "accuracy/train", "--metrics", "1"])
    assert one.exit_code == 0 and [h for h in re.split(r"\s{2,}", one.output.splitlines()[0]) if "(best)" in h] == [
        "accuracy/train last (best)"]  # as many metric columns as asked (4 by default)


def test_list_says_which_run_log_it_could_not_read_instead_of_hiding_it(three_runs, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(three_runs / "good", root / "good")
    shutil.copytree(three_runs / "good", root / "damaged")
    log = root / "damaged" / RunLog.FILENAME
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3] + [b"{not json\n"] + lines[3:]))  # a line in the middle, not torn
    done = CliRunner().invoke(main, ["runs", "list", str(root)])
    assert done.exit_code == 0 and len(done.stdout.splitlines()) == 2  # the head and the good run
    assert f"monitor: left out {root / 'damaged'}: ValueError: run log {log} line 4 is not a JSON entry" \
        in done.stderr


def test_compare_again_into_an_env_replaces_the_earlier_comparison_and_refuses_a_run_s_env(
        three_runs, fresh_server, visdom_server, read_window, tmp_path):
    root = three_runs
    port = ["--port", str(fresh_server.port)]
    first = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "broken"), "--into", "again",
                                      *port])
    assert first.exit_code == 0, first.output
    assert read_window(fresh_server, "again", "accuracy")  # both logged accuracy
    second = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "killed"), "--into", "again",
                                       *port])
    assert second.exit_code == 0, second.output
    with pytest.raises(LookupError):  # the earlier comparison's window is gone
        read_window(fresh_server, "again", "accuracy")
    assert {trace.split("/")[0] for trace in read_window(fresh_server, "again", "loss")} == {"good", "killed"}
    refused = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "broken"), "--into", "good",
                                        "--port", str(visdom_server.port)])  # the live run's own env
    assert refused.exit_code != 0 and "into must be a new env or an earlier comparison's, got 'good'" in refused.output
    assert read_window(visdom_server, "good", "loss")  # untouched
    from monitor.runs import RunsPane

    RunsPane(root, port=fresh_server.port).update()  # serve --runs' table, in env "runs", window "runs" too
    table = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "broken"), "--into", "runs",
                                      *port])
    assert table.exit_code != 0 and "got 'runs', which holds 1 other windows" in table.output, table.output


def test_compare_tells_apart_two_runs_of_one_env_in_two_folders(three_runs, tmp_path):
    import shutil

    from monitor.runs import labels

    for place in ("a", "b"):
        shutil.copytree(three_runs / "good", tmp_path / place / "good")
    named, _ = labels([described(tmp_path / place / "good") for place in ("a", "b")])
    assert named == ["a/good/runlog", "b/good/runlog"]
    head, *rows = CliRunner().invoke(main, ["runs", str(tmp_path)]).output.splitlines()  # list tells them apart too
    assert re.split(r"\s{2,}", head)[:2] == ["env", "folder"]
    assert [re.split(r"\s{2,}", row)[:2] for row in rows] == [["good", "a/good"], ["good", "b/good"]]


def test_compare_draws_each_run_s_latest_pr_curve_in_the_window_they_share(fresh_server, tmp_path, read_window_raw):
    from monitor import SummaryWriter

    for env, spread in (("sharp", 0.6), ("blurred", 0.1)):
        g = torch.Generator().manual_seed(0)
        with SummaryWriter(tmp_path / "runs" / env, port=1, timeout=0.2) as writer:
            for step in range(3):
                labels = torch.randint(0, 2, (200,), generator=g)
                writer.add_pr_curve("pr", labels, torch.rand(200, generator=g) * (1 - spread) + labels * spread, step)
                writer.add_scalar("loss", 1.0 / (step + 1), step)
    done = CliRunner().invoke(main, ["runs", "compare", str(tmp_path / "runs" / "sharp"),
                                     str(tmp_path / "runs" / "blurred"), "--into", "cmp_pr", "--port",
                                     str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    curves = read_window_raw(fresh_server, "cmp_pr", "pr")["content"]["data"]
    assert [c["name"] for c in curves] == ["sharp, step 2", "blurred, step 2"]
    from monitor.pr_curve import precision_recall
    for curve, env in zip(curves, ("sharp", "blurred")):
        [*_, last] = [e for e in RunLog.read(tmp_path / "runs" / env / RunLog.FILENAME) if e["k"] == "pr_curve"]
        precision, recall = precision_recall(last)
        assert curve["x"] == pytest.approx(recall) and curve["y"] == pytest.approx(precision)


def test_the_final_metrics_add_hparams_gives_rank_and_compare_runs_as_their_curves_do(fresh_server, tmp_path,
                                                                                      read_window_raw):
    from monitor import SummaryWriter

    root = tmp_path / "runs"
    for lr, accuracy in ((0.1, 0.81), (0.3, 0.92), (1.0, 0.55)):
        with SummaryWriter(root / f"lr{lr}", port=1, timeout=0.2) as writer:
            writer.add_scalar("loss", 1.0 / lr, 0)
            writer.add_hparams({"lr": lr}, {"hparam/accuracy": accuracy, "loss": 99.0})
    runs = {run.env: run for run in listed(root)}
    assert runs["lr0.3"].metrics["hparam/accuracy"] == (0.92, 0.92)
    assert runs["lr0.3"].metrics["loss"] == (1.0 / 0.3, 1.0 / 0.3)  # its curve, named as its tag, goes first
    done = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "hparam/accuracy"])
    assert done.exit_code == 0, done.output
    assert [line.split()[0] for line in done.output.splitlines()[1:]] == ["lr0.3", "lr0.1", "lr1.0"]
    done = CliRunner().invoke(main, ["runs", "compare", *(str(root / f"lr{lr}") for lr in (0.1, 0.3)),
                                     "--into", "cmp_hparams", "--port", str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    header, *rows = read_window_raw(fresh_server, "cmp_hparams", "runs")["content"].split("</tr>")
    assert "<td>hparam/accuracy</td>" in header and "0.92" in "".join(rows)


def test_close_from_a_finally_or_except_block_records_the_exception_on_its_way(tmp_path):
    def trial(env: str, close_in: str) -> None:
        monitor = Monitor([Scalars()], env=env, run_dir=tmp_path / env, port=1, timeout=0.2)
        monitor.train_start()
        try:
            try:
                monitor.step_end(loss=1.0)
                raise RuntimeError("out of memory")
            except RuntimeError:
                if close_in == "except":
                    monitor.close()
                raise
            finally:
                monitor.close()
        except RuntimeError:
            pass  # the sweep goes on with its next trial

    trial("finally", "finally")
    trial("except", "except")
    for env in ("finally", "except"):
        run = described(tmp_path / env)
        assert (run.status, run.error) == ("crashed", "RuntimeError: out of memory")
    try:  # a run that ended well inside a handler of something else
        raise ImportError("an optional package")
    except ImportError:
        with Monitor([Scalars()], env="handled", run_dir=tmp_path / "handled", port=1, timeout=0.2) as monitor:
            monitor.train_start()
            monitor.step_end(loss=1.0)
    assert described(tmp_path / "handled").status == "finished"


def test_close_without_a_with_block_ends_training_as_the_block_does(tmp_path):
    # The summary's final metrics come at train_end: a loop that closes without calling it lost them.
    for form in ("with", "close"):
        monitor = Monitor([Summary(), Scalars()], env=form, run_dir=tmp_path / form, port=1, timeout=0.2)
        if form == "with":
            with monitor:
                monitor.train_start(hparams={"lr": 0.1})
                monitor.step_end(loss=0.5)
                monitor.validation_end({"accuracy": 0.7})
        else:
            monitor.train_start(hparams={"lr": 0.1})
            monitor.step_end(loss=0.5)
            monitor.validation_end({"accuracy": 0.7})
            monitor.close()
    for form in ("with", "close"):
        *_, last = (e for e in RunLog.read(tmp_path / form / RunLog.FILENAME) if e["k"] == "hparams")
        assert last["metrics"] == {"accuracy": 0.7} and described(tmp_path / form).status == "finished", form


def test_hparams_given_to_train_start_are_recorded_without_a_summary_callback(tmp_path):
    for lr in (0.1, 0.3):
        with Monitor([Scalars()], env=f"lr{lr}", run_dir=tmp_path / f"lr{lr}", port=1, timeout=0.2) as monitor:
            monitor.train_start(hparams={"lr": lr, "layers": [16, 16]})
            monitor.step_end(loss=lr)
    runs = {run.env: run for run in listed(tmp_path)}
    assert runs["lr0.1"].hparams == {"lr": 0.1, "layers": "[16, 16]"}  # as the hparams pane shows a list
    assert [r.env for r in selected(list(runs.values()), where={"lr": "0.3"})] == ["lr0.3"]


def test_compare_refuses_a_run_given_twice_and_tells_long_default_envs_apart(three_runs):
    root = three_runs
    done = CliRunner().invoke(main, ["runs", "compare", str(root / "good"), str(root / "good" / RunLog.FILENAME),
                                     "--port", "1"])
    assert done.exit_code != 0 and "runs must name each run once, got the run log" in done.output
    from monitor.runs import _comparison_env
    sweep = [f"sweep-resnet50-imagenet-lr{lr}" for lr in ("0.1", "0.2", "0.3", "0.4")]
    first, second = _comparison_env(sweep[:3]), _comparison_env(sweep[:2] + sweep[3:])
    assert first != second and len(first) == len(second) == 80
    assert _comparison_env(["a", "b"]) == "compare_a_b"


def test_runs_with_options_and_no_subcommand_lists_as_runs_list_does(three_runs):
    listed_out = CliRunner().invoke(main, ["runs", "list", "--sort", "loss/train", "--where", "batch=16",
                                           str(three_runs)])
    short = CliRunner().invoke(main, ["runs", "--sort", "loss/train", "--where", "batch=16", str(three_runs)])
    assert short.exit_code == listed_out.exit_code == 0 and short.output == listed_out.output
    assert "broken" in short.output and "killed" not in short.output


def test_a_run_read_on_as_its_log_grows_takes_the_new_lines_only_and_a_log_cut_back_anew(tmp_path):
    from monitor.runs import Reading, described

    path = tmp_path / "growing" / RunLog.FILENAME
    log = RunLog(path)
    log.append([{"k": "run", "env": "growing", "run_id": "r", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "points", "win": "loss", "x": 1, "y": {"train": 1.0}},
                {"k": "text", "win": "notes", "x": 1, "html": "the last line read"}])
    reading = Reading(path)
    reading.read_on()
    assert (reading.run().steps, reading.run().metrics) == (1, {"loss/train": (1.0, 1.0)})
    cut = log.position
    log.append([{"k": "points", "win": "loss", "x": 2, "y": {"train": 0.5}}])
    first = path.read_bytes().index(b'"x":1')
    with open(path, "r+b") as file:  # an old line spoilt in place: read on, it is not read again
        file.seek(first)
        file.write(b'"x":!')
    reading.read_on()
    assert (reading.run().steps, reading.run().metrics) == (2, {"loss/train": (0.5, 0.5)})
    with pytest.raises(ValueError, match="line 2 is not a JSON entry"):
        described(path.parent)
    with open(path, "r+b") as file:
        file.seek(first)
        file.write(b'"x":1')
    with open(path, "ab") as file:  # a line being written: taken once it is whole
        file.write(b'{"k":"points","win":"loss","x":3,')
    reading.read_on()
    assert reading.run().steps == 2
    with open(path, "ab") as file:
        file.write(b'"y":{"train":0.25}}\n')
    reading.read_on()
    assert (reading.run().steps, reading.run().metrics) == (3, {"loss/train": (0.25, 0.25)})
    log.close()
    resumed = RunLog(path, rewind_to=cut)  # a resumed run cuts its log back to its checkpoint: read anew
    resumed.append([{"k": "points", "win": "loss", "x": 2, "y": {"train": 3.0}}])
    resumed.close()
    reading.read_on()
    assert (reading.run().steps, reading.run().metrics) == (2, {"loss/train": (3.0, 1.0)})


def test_a_run_read_on_sees_its_log_replaced_and_a_window_that_becomes_a_curve(tmp_path):
    from monitor.runs import Reading, described

    path = tmp_path / "replaced" / RunLog.FILENAME

    def write(run_id: str, entries: list[dict]) -> None:
        log = RunLog(path)
        log.append([{"k": "run", "env": "replaced", "run_id": run_id, "time": 0.0, "pid": 1, "host": "h"}, *entries])
        log.close()

    points = [{"k": "points", "win": "loss", "x": x, "y": {"train": 1.0}} for x in (1, 2)]
    write("a" * 32, points)
    reading = Reading(path)
    reading.read_on()
    path.rename(path.with_name("set-aside.jsonl"))  # a new run of the env: the same lines after a new header
    write("b" * 32, [*points, {"k": "points", "win": "loss", "x": 3, "y": {"train": 0.5}}])
    reading.read_on()
    assert (reading.run().run_id, reading.run().steps) == ("b" * 32, 3)

    path.unlink()
    write("c" * 32, [{"k": "layout", "win": "g", "opts": {}, "order": Order.GRADIENTS},
                     {"k": "points", "win": "g", "x": 1, "y": {"a": 1.0}},
                     {"k": "layout", "win": "g", "opts": {}, "order": Order.METRICS},  # a curve from here on
                     {"k": "points", "win": "g", "x": 7, "y": {"a": 2.0}}])
    run = described(path.parent)
    assert (run.steps, run.metrics) == (7, {"g/a": (2.0, 2.0)})


def test_a_run_s_steps_are_those_of_the_windows_whose_x_is_the_step(tmp_path):
    # An RL loop's own window at its environment steps, or one at episodes, says nothing of the updates.
    from monitor.runs import described

    log = RunLog(tmp_path / "rl" / RunLog.FILENAME)
    log.append([{"k": "run", "env": "rl", "run_id": "r", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "points", "win": "loss", "x": 50, "y": {"train": 1.0}},
                {"k": "layout", "win": "return", "opts": {"xlabel": "environment steps"}, "order": Order.METRICS},
                {"k": "points", "win": "return", "x": 1600, "y": {"train": 3.0}},
                {"k": "points", "win": "length", "x": 40, "y": {"train": 9.0}}])
    assert described(tmp_path / "rl").steps == 50
    # Beside Scalars' loss (laid out at x = step), a window the loop never laid out (a language
    # model's loss at tokens seen) is not the step either
    log = RunLog(tmp_path / "lm" / RunLog.FILENAME)
    log.append([{"k": "run", "env": "lm", "run_id": "r", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "layout", "win": "loss", "opts": {"xlabel": "step"}, "order": Order.LOSS},
                {"k": "points", "win": "loss", "x": 150, "y": {"train": 1.0}},
                {"k": "points", "win": "loss vs tokens", "x": 9600, "y": {"train": 1.0}}])
    assert described(tmp_path / "lm").steps == 150


def test_a_run_a_guard_marked_and_let_go_on_is_listed_as_diverged_there(tmp_path):
    from monitor.runs import described, table

    log = RunLog(tmp_path / "nan" / RunLog.FILENAME)
    log.append([{"k": "run", "env": "nan", "run_id": "r", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "points", "win": "loss", "x": 299, "y": {"train": 0.5}},
                {"k": "layout", "win": "loss", "opts": {"markers": ["guard"]}, "order": Order.LOSS},
                {"k": "points", "win": "loss", "x": 300, "y": {"guard": 0.5}},
                {"k": "points", "win": "loss", "x": 300, "y": {"train": math.nan}},
                {"k": "end", "status": "finished", "error": None, "time": 1.0}])
    run = described(tmp_path / "nan")
    assert (run.status, run.diverged, run.metrics["loss/train"][1]) == ("finished", 300, 0.5)
    assert "finished, diverged at step 300" in table([run])


def test_checkpoints_saved_outside_the_run_folder_are_counted_for_their_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a script's Checkpoint("ckpt") beside runs/, as most loops write it
    for steps in (6, 4):  # the second run (fresh) sets the first one's checkpoints aside
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor([Scalars(), Checkpoint("ckpt", every_steps=2, keep_last=5, fresh=steps == 4)], env="outside",
                     port=1, timeout=0.2) as monitor:  # no server: the run log is written all the same
            monitor.train_start(model, optimizer)
            train(monitor, model, optimizer, steps=steps)
            monitor.train_end()
    assert json.loads((tmp_path / "runs" / "outside" / "checkpoints.json").read_text()) == [str(tmp_path / "ckpt")]
    current, = listed(tmp_path / "runs")
    earlier = [run for run in listed(tmp_path / "runs", earlier=True) if run.place != run.path]
    assert (current.checkpoints, [run.checkpoints for run in earlier]) == (2, [3])  # steps 2, 4 and 2, 4, 6
    done = CliRunner().invoke(main, ["runs", "list", str(tmp_path / "runs"), "--earlier"])
    column = done.output.splitlines()[0].index("ckpts")
    assert [line[column:].split()[0] for line in done.output.splitlines()[1:]] == ["2", "3"], done.output


def test_compare_follow_keeps_train_and_val_writers_in_one_chart_live_until_they_end(visdom_server, tmp_path,
                                                                                       read_window, monkeypatch):
    # TensorBoard's habit: SummaryWriter("runs/exp/train") and ("runs/exp/val"), one "loss" chart live
    import threading

    from monitor import SummaryWriter

    monkeypatch.chdir(tmp_path)
    writers = {name: SummaryWriter(f"runs/exp/{name}", port=visdom_server.port) for name in ("train", "val")}
    for name, writer in writers.items():
        writer.add_scalar("loss", 1.0 if name == "train" else 2.0, 0)
        writer.flush()
    done: list[str] = []
    following = threading.Thread(target=lambda: done.append(compare(["runs/exp/train", "runs/exp/val"], into="live",
                                                                    follow=True, every=0.2,
                                                                    port=visdom_server.port)))
    following.start()
    for step in range(1, 4):
        for name, writer in writers.items():
            writer.add_scalar("loss", step + (1.0 if name == "train" else 2.0), step)
            writer.flush()
        deadline = time.monotonic() + 20  # each step shows while the runs go on
        while time.monotonic() < deadline:
            try:
                if read_window(visdom_server, "live", "loss")["exp_train/loss"][0][-1] == step:
                    break
            except (LookupError, KeyError):
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"step {step} never showed")
    for writer in writers.values():
        writer.close()
    following.join(timeout=30)
    assert done == ["live"] and not following.is_alive()  # it ended with the runs
    assert read_window(visdom_server, "live", "loss") == {"exp_train/loss": ([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0]),
                                                          "exp_val/loss": ([0, 1, 2, 3], [2.0, 3.0, 4.0, 5.0])}


def test_the_table_puts_curves_of_held_out_data_first_also_a_named_validation_set_s():
    from monitor.runs import table

    run = Run(Path("runs/eval"), "eval", "1", 0.0, 39, "finished", None,
              {"loss/train": (0.3, 0.2), "loss/val/clean": (0.5, 0.4), "accuracy/val/noisy": (0.6, 0.7),
               "accuracy/train": (0.9, 0.9), "test_f1": (0.6, 0.6)}, {}, 0, 0, Path("runs/eval/runlog.jsonl"))
    head = re.split(r"\s{2,}", table([run], metrics=3).splitlines()[0])
    assert [h.split(" last")[0] for h in head if "(best)" in h] == ["loss/val/clean", "accuracy/val/noisy",
                                                                      "loss/train"]


def test_a_run_s_size_is_its_own_not_its_earlier_runs(tmp_path):
    # A trial of a shared env was listed at the folder's 67.6 KB, its own log being 8.6 KB
    from monitor import Images

    sizes = []
    for trial in range(3):
        with Monitor([Scalars(), Images(every=1)], env="shared", run_dir=tmp_path / "shared", port=1,
                     timeout=0.2) as monitor:
            for _ in range(20 * (trial + 1)):
                monitor.step_end(loss=torch.tensor(0.5), inputs=torch.rand(4, 3, 16, 16))
        folder = tmp_path / "shared"
        sizes.append(described(folder).size)
    current, *earlier = sorted(listed(tmp_path, earlier=True), key=lambda run: run.started, reverse=True)
    own = (tmp_path / "shared" / RunLog.FILENAME).stat().st_size + sum(
        p.stat().st_size for p in (tmp_path / "shared" / "images" / current.run_id).rglob("*") if p.is_file())
    whole = sum(p.stat().st_size for p in (tmp_path / "shared").rglob("*") if p.is_file())
    assert own <= current.size == sizes[-1] <= own + 512 < whole / 1.5  # the folder's lock file beside them
    for run in earlier:
        assert run.size == run.log.stat().st_size + sum(
            p.stat().st_size for p in (tmp_path / "shared" / "images" / run.run_id).rglob("*") if p.is_file())


def test_compare_of_runs_that_share_no_window_says_so_naming_each_run_s(fresh_server, tmp_path, caplog):
    # A Monitor's "loss" beside a writer's "Loss/train": compare filled the table alone, silently.
    from monitor import SummaryWriter

    root = tmp_path / "runs"
    with Monitor([Scalars()], env="callbacks", run_dir=root / "callbacks", port=fresh_server.port) as monitor:
        monitor.step_end(loss=0.5)
    with SummaryWriter(root / "writer", port=fresh_server.port) as writer:
        writer.add_scalar("Loss/train", 0.5, 1)
    with caplog.at_level("WARNING", logger="monitor"):
        compare([root / "callbacks", root / "writer"], into="cmp_none", port=fresh_server.port)
    said = [r.getMessage() for r in caplog.records if "share no window" in r.getMessage()]
    assert said == ["monitor: the runs share no window to draw side by side, only their table: callbacks: loss; "
                    "writer: Loss (a Monitor's 'loss' and a writer's 'Loss/train' are windows 'loss' and 'Loss')"]


def test_mode_ranks_lists_and_collects_by_the_lowest_or_highest_value_not_the_best_its_name_guessed(tmp_path):
    # Two runs on "Δε" (guessed highest-is-best): --mode min sorted by each run's highest value, so
    # gc --keep-best 1 --mode min listed the run with the lowest value for deletion.
    root = tmp_path / "runs"
    for env, values in (("a", [1.0, 5.0]), ("b", [2.0, 2.0])):
        log = RunLog(root / env / RunLog.FILENAME)
        log.append([{"k": "run", "env": env, "run_id": env, "time": 0.0, "pid": 1, "host": "h"},
                    {"k": "layout", "win": "Δε", "opts": {"xlabel": "step"}, "order": Order.METRICS},
                    *({"k": "points", "win": "Δε", "x": x + 1, "y": {"validation": y}} for x, y in enumerate(values)),
                    {"k": "end", "status": "finished", "error": None, "time": 1.0}])
        log.close()
    runs = listed(root)
    assert [r.env for r in selected(runs, sort="Δε/validation", mode="min")] == ["a", "b"]
    assert [r.env for r in selected(runs, sort="Δε/validation", mode="max")] == ["a", "b"]  # 5 beats 2
    assert [r.env for r in selected(runs, sort="Δε/validation")] == ["a", "b"]
    assert [r.env for r in collectable(runs, keep_best=1, metric="Δε/validation", mode="min")] == ["b"]
    lines = table(selected(runs, sort="Δε/validation", mode="min"), first="Δε/validation", mode="min").splitlines()
    assert "5 (1)" in lines[1] and "2 (2)" in lines[2]
    shown = CliRunner().invoke(main, ["runs", "list", str(root), "--sort", "Δε/validation", "--mode", "min"])
    assert "5 (1)" in shown.output, shown.output


def test_a_table_s_metrics_of_numbered_names_come_in_the_order_people_count():
    # mae_h6 was left out of 4 columns: h12 and h24 sort before h6 as text
    from types import SimpleNamespace

    from monitor.runs import _shown_metrics

    run = SimpleNamespace(metrics={f"mae_h{h}/validation": (1.0, 1.0) for h in (24, 12, 6, 1)})
    assert _shown_metrics([run], 3) == ["mae_h1/validation", "mae_h6/validation", "mae_h12/validation"]


@pytest.mark.parametrize("callbacks", ["grad norms only", "scalars by epoch"])
def test_a_run_lists_the_steps_it_trained_whatever_its_curves_x(tmp_path, callbacks):
    # A run with GradNorms alone, and a cross-validation's Scalars(x="epoch"), were listed as 0 steps.
    from monitor import GradNorms

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    chosen = [GradNorms()] if callbacks == "grad norms only" else [Scalars(x="epoch")]
    with Monitor(chosen, env="steps", run_dir=tmp_path / "steps", port=1, timeout=0.2) as monitor:
        monitor.train_start(model, optimizer)
        for epoch in monitor.epochs(2):
            for _ in range(3):
                model(torch.randn(4, 4)).sum().backward()
                monitor.after_backward()
                optimizer.step()
                optimizer.zero_grad()
                monitor.step_end(loss=1.0)
            monitor.validation_end({"loss": 0.5})
    assert described(tmp_path / "steps").steps == 6


def test_compare_draws_a_window_two_runs_have_and_leaves_out_one_of_a_single_run_said(tmp_path, fresh_server,
                                                                                     read_window, caplog):
    # An optimizer comparison: the lr window of six runs vanished as the seventh's optimizer had no lr.
    from monitor.log import Log
    from monitor.sink import VisdomSink

    for env, windows in (("sgd", ("loss", "learning rate")), ("adam", ("loss", "learning rate")),
                         ("prodigy", ("loss", "d"))):
        sink = VisdomSink(env, port=1, run_dir=tmp_path / env, timeout=0.2)
        for window in windows:
            Log(sink).scalar(window, "train", 1, 0.5)
        sink.close(timeout=0.2)
    with caplog.at_level("WARNING", logger="monitor"):
        done = CliRunner().invoke(main, ["runs", "compare", *(str(tmp_path / env) for env in ("sgd", "adam", "prodigy")),
                                         "--into", "opt", "--port", str(fresh_server.port)])
    assert done.exit_code == 0, done.output
    assert set(read_window(fresh_server, "opt", "learning rate")) == {"sgd/train", "adam/train"}
    assert [r.getMessage() for r in caplog.records if "left out of the comparison" in r.getMessage()] == [
        "monitor: 1 window(s) of one run only are left out of the comparison: d"]


def test_a_curve_is_named_without_its_trace_where_the_window_already_says_it():
    # A multi-task run's step_end(metrics={"train/task0/acc": ...}) was listed as train/task0/acc/train.
    from monitor.runs import metric_name

    assert [metric_name(w, t) for w, t in (("loss", "validation"), ("charts/SPS", "SPS"), ("lr", "lr"),
                                           ("train/task0/acc", "train"), ("task0/acc", "train"))] == [
        "loss/validation", "charts/SPS", "lr", "train/task0/acc", "task0/acc/train"]


def test_rm_keeps_the_windows_another_run_of_another_home_drew_in_its_env(visdom_server, tmp_path, monkeypatch,
                                                                         read_window, connect_client):
    # Two students named their env lab1, in folders of their own with homes of their own: the
    # teacher's rm of student 9's run deleted the env that showed student 10's.
    root = tmp_path / "class"
    monkeypatch.setenv("MONITOR_HOME", str(tmp_path / "home9"))
    _finished(root / "s9", "lab1", visdom_server.port, 0.5)
    monkeypatch.setenv("MONITOR_HOME", str(tmp_path / "home10"))
    _finished(root / "s10", "lab1", visdom_server.port, 0.25)
    shown = read_window(visdom_server, "lab1", "loss")
    monkeypatch.setenv("MONITOR_HOME", str(tmp_path / "home9"))
    done = CliRunner().invoke(main, ["runs", "rm", str(root / "s9" / "lab1"), "--yes",
                                    "--port", str(visdom_server.port)])
    assert done.exit_code == 0 and not (root / "s9" / "lab1").exists(), done.output
    assert "Env lab1 is still on the dashboard: it shows another run now (run " in done.output
    assert "lab1" in connect_client(visdom_server).get_env_list() and read_window(visdom_server, "lab1", "loss") == shown


def test_a_cross_validation_s_folds_are_summed_up_as_mean_and_std_per_experiment(tmp_path, monkeypatch):
    # Two experiments of two folds each: "CV AUC 0.9466 ± 0.0141" per experiment took a script.
    monkeypatch.setenv("VISDOM_PORT", "1")
    for lr, aucs in ((0.1, (0.8, 0.9)), (0.3, (0.6, 0.6))):
        for fold, auc in enumerate(aucs):
            env = f"cv-lr{lr}-fold{fold}"
            with Monitor([Scalars()], env=env, run_dir=tmp_path / env, timeout=0.2) as monitor:
                monitor.train_start(hparams={"lr": lr, "fold": fold})
                for value in (auc - 0.1, auc):
                    monitor.step_end(loss=1.0)
                    monitor.validation_end({"auc": value})
    done = CliRunner().invoke(main, ["runs", str(tmp_path), "--mean-over", "fold", "--sort", "auc/validation"])
    assert done.exit_code == 0, done.output
    head, first, second = done.output.splitlines()
    assert head.split()[:2] == ["runs", "envs"] and "auc/validation best: mean ± std" in head
    assert first.split()[:4] == ["2", "cv-lr0.1-fold1", "cv-lr0.1-fold0", "0.85"] and "± 0.05 (2)" in first
    assert first.endswith("lr=0.1") and "0.6 ± 0 (2)" in second and second.endswith("lr=0.3")
    wrong = CliRunner().invoke(main, ["runs", str(tmp_path), "--mean-over", "folds"])
    assert wrong.exit_code == 2 and "no run under" in wrong.output and "has hparam 'folds'; they have fold, lr" in wrong.output


def test_seeds_are_ranked_and_averaged_by_their_last_return_with_by_last(tmp_path, monkeypatch):
    # PPO's seed 2 ranked first on one lucky spike of 187 though it ended at 138, below seed 1's 162
    monkeypatch.setenv("VISDOM_PORT", "1")
    for seed, returns in ((0, (153.3, 106.7)), (1, (150.0, 162.0)), (2, (187.3, 137.7))):
        with Monitor([Scalars()], env=f"ppo-seed{seed}", run_dir=tmp_path / f"ppo-seed{seed}", timeout=0.2) as monitor:
            monitor.train_start(hparams={"seed": seed})
            for x, value in enumerate(returns):
                monitor.step_end(loss=1.0, metrics={"approx kl": 0.01})
                monitor.log.scalar("episode return", "train", 512 * (x + 1), value)
    def envs(*options):
        done = CliRunner().invoke(main, ["runs", str(tmp_path), "--sort", "episode return/train", *options])
        assert done.exit_code == 0, done.output
        return [line.split()[0] for line in done.output.splitlines()[1:]]
    assert envs() == ["ppo-seed2", "ppo-seed1", "ppo-seed0"]  # by the best, higher first for a return
    assert envs("--by", "last") == ["ppo-seed1", "ppo-seed2", "ppo-seed0"]
    done = CliRunner().invoke(main, ["runs", str(tmp_path), "--mean-over", "seed", "--by", "last"])
    assert "episode return/train last: mean ± std" in done.output.splitlines()[0] and "135.5 ± 23 (3)" in done.output
    done = CliRunner().invoke(main, ["runs", str(tmp_path), "--by", "last"])
    assert done.exit_code == 2 and "--by says what --sort ranks by" in done.output
    done = CliRunner().invoke(main, ["runs", str(tmp_path), "--metrics", "1"])  # the return: RL's headline
    assert "episode return/train last (best)" in done.output.splitlines()[0]


def test_the_validation_loss_comes_before_other_errors_in_the_default_columns(tmp_path, monkeypatch):
    # A forecaster's twelve horizon errors filled the columns, best lowest as a loss is: no loss/validation.
    from monitor.runs import table

    monkeypatch.setenv("VISDOM_PORT", "1")
    with Monitor([Scalars()], env="horizons", run_dir=tmp_path / "horizons", timeout=0.2) as monitor:
        monitor.step_end(loss=1.0)
        monitor.validation_end({"loss": 0.5, **{f"horizon/mape_h{h}": 0.1 * h for h in range(1, 13)}})
    head = table(listed(tmp_path), metrics=2).splitlines()[0]
    assert "loss/validation last (best)" in head and "loss/train last (best)" not in head


def test_a_final_metric_that_repeats_a_curve_s_last_value_takes_no_column(tmp_path, monkeypatch):
    # Summary's final "loss" beside "loss/validation": the same 4.28 twice, its "best" only the last
    from monitor.runs import table

    monkeypatch.setenv("VISDOM_PORT", "1")
    with Monitor([Scalars(), Summary(hparams={"lr": 0.1})], env="fedavg", run_dir=tmp_path / "fedavg",
                 timeout=0.2) as monitor:
        monitor.train_start(torch.nn.Linear(2, 1), hparams={"clients": 8})
        for loss in (3.0, 4.28):
            monitor.step_end(loss=1.0)
            monitor.validation_end({"loss": loss})
        monitor.train_end()
        monitor.log.hparams({}, {"test_accuracy": 0.5})  # a test's, given once: its own column
    run = listed(tmp_path)[0]
    assert run.metrics["loss"] == (4.28, 4.28)  # still there to sort and select by
    head = table([run]).splitlines()[0]
    assert "loss/validation last (best)" in head and "test_accuracy" in head and " loss last" not in head


def test_export_gives_the_points_the_dashboard_draws_after_a_curve_went_back_or_a_point_came_late(
        visdom_server, read_window, tmp_path):
    # A TensorBoard script run again without purge_step: export repeated steps 3 and 4 where the
    # dashboard, compare and TensorBoard went on from 3.
    with Monitor([], env="went-back", port=visdom_server.port, run_dir=tmp_path / "run") as monitor:
        for x in (1, 2, 3, 4, 5, 3, 4):  # run again from step 3
            monitor.log.scalar("loss", "train", x, float(x))
        for x in (10, 20, 40, 30):  # 30's evaluation finished after 40's
            monitor.log.scalar("auc", "validation", x, x / 100)
        assert monitor.flush()
        shown = {window: read_window(visdom_server, "went-back", window) for window in ("loss", "auc")}
    points = exported(tmp_path / "run")
    assert points["loss"]["train"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert points["auc"]["validation"] == [(10, 0.1), (20, 0.2), (30, 0.3), (40, 0.4)]
    assert all([x for x, _ in points[w][t]] == xs for w in shown for t, (xs, _) in shown[w].items())


def test_a_comparison_s_table_orders_its_columns_as_people_count(tmp_path, monkeypatch):
    # A forecaster's horizons read h=1, h=10, h=11, h=12, h=2: ordered as text.
    from monitor.runs import _comparison

    monkeypatch.setenv("VISDOM_PORT", "1")
    for cell in ("lstm", "gru"):
        with Monitor([Scalars()], env=cell, run_dir=tmp_path / cell, timeout=0.2) as monitor:
            monitor.train_start(hparams={"cell": cell})
            monitor.validation_end({f"mae_h{h}": 0.1 * h for h in (1, 2, 10)})
    found = [described(tmp_path / cell) for cell in ("lstm", "gru")]
    windows = _comparison(found, [list(RunLog.read(tmp_path / cell / RunLog.FILENAME)) for cell in ("lstm", "gru")])
    html = windows.by_name["runs"].content["html"]
    assert html.index("mae_h2/") < html.index("mae_h10/")


def test_a_folder_of_tensorboard_event_files_is_said_to_hold_them(tmp_path):
    (tmp_path / "tbruns" / "exp1").mkdir(parents=True)
    (tmp_path / "tbruns" / "exp1" / "events.out.tfevents.1700000000.host.1.0").write_bytes(b"")
    done = CliRunner().invoke(main, ["runs", str(tmp_path / "tbruns")])
    assert done.exit_code == 0 and "it holds TensorBoard's event files, which the monitor does not read" in done.output


def test_a_csv_of_the_runs_leaves_values_that_are_not_finite_empty_as_readme_says(tmp_path):
    # A diverged trial's row in a sweep's CSV held a literal nan (its JSON: null).
    run = tmp_path / "runs" / "diverged"
    run.mkdir(parents=True)
    (run / RunLog.FILENAME).write_text('{"k":"run","env":"diverged","run_id":"' + "a" * 32 + '","time":1.0}\n'
                                       '{"k":"points","win":"loss","x":1,"y":{"train":NaN}}\n'
                                       '{"k":"points","win":"loss","x":2,"y":{"train":Infinity}}\n')
    done = CliRunner().invoke(main, ["runs", "list", str(tmp_path / "runs"), "--format", "csv"])
    (row,) = list(csv.DictReader(io.StringIO(done.output)))
    assert row["loss/train"] == row["loss/train best"] == ""
