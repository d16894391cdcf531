"""``monitor replay``: a run log sent to a server, idempotently, with progress; against a real server."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from monitor.cli import main as cli
from monitor.log import Log
from monitor.runlog import RunLog
from monitor.server import VisdomServer
from monitor.connection import DashboardError
from monitor.replay import replay
from monitor.sink import VisdomSink

WINDOWS = ("loss", "lr", "inputs", "notes")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> VisdomSink:
    """A run trained where no dashboard was reachable: 3000 steps (thinned on replay), an image, a text."""
    run_dir = tmp_path_factory.mktemp("offline")
    sink = VisdomSink("offline-run", port=VisdomServer(0).port, run_dir=run_dir, flush_every=0.05)
    log = Log(sink)
    log.window("loss", ytype="log", ylabel="loss")
    log.text("notes", 0, "<b>trained offline</b>", html=True)
    for step in range(1, 3001):
        log.scalars("loss", step, {"train": 1 / step, "validation": math.nan if step == 7 else 2 / step})
        log.scalar("lr", "lr", step, 0.1)
    log.images("inputs", 3000, torch.rand(4, 1, 8, 8))
    assert sink.close(timeout=0.2) is False  # nothing reached a server
    return sink


def shown(server, env, read_window_raw) -> dict:
    """What each window shows (its content and title; not visdom's random ids)."""
    return {w: (read_window_raw(server, env, w)["content"], read_window_raw(server, env, w)["title"])
            for w in WINDOWS}


def test_replay_twice_leaves_the_same_windows_and_shows_progress(
        visdom_server, read_window_raw, offline_run):
    args = ["replay", str(offline_run.runlog.path), "--env", "replayed-twice", "--port", str(visdom_server.port)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "Reading runlog.jsonl" in first.output and "Sending 4 window(s)" in first.output
    assert "Replayed" in first.output and "'replayed-twice'" in first.output
    once = shown(visdom_server, "replayed-twice", read_window_raw)
    second = CliRunner().invoke(cli, ["replay", str(offline_run.runlog.path.parent), *args[2:]])  # its folder
    assert second.exit_code == 0, second.output
    assert shown(visdom_server, "replayed-twice", read_window_raw) == once
    loss = once["loss"][0]["data"]
    assert [t["name"] for t in loss] == ["train", "validation"]
    assert all(len(t["x"]) <= 1000 for t in loss) and loss[0]["x"][-1] == 3000


def test_replay_fills_the_env_named_in_the_run_log(visdom_server, read_window, offline_run):
    env = replay(offline_run.runlog.path, port=visdom_server.port)
    assert env == "offline-run"
    assert read_window(visdom_server, "offline-run", "lr")["lr"][0][-1] == 3000


def test_replay_shows_what_the_live_sink_showed(visdom_server, read_window_raw, tmp_path):
    sink = VisdomSink("live-then-replayed", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    log.text("notes", 0, "live")
    for step in range(1, 2501):
        log.scalar("loss", "train", step, math.sin(step / 50))
    log.images("inputs", 1, torch.rand(2, 3, 4, 4))
    log.scalar("lr", "lr", 1, 0.1)
    assert sink.close(timeout=10)
    live = shown(visdom_server, "live-then-replayed", read_window_raw)
    replay(sink.runlog.path, "live-then-replayed-copy", port=visdom_server.port)
    assert shown(visdom_server, "live-then-replayed-copy", read_window_raw) == live


def test_replay_reports_progress_while_reading_and_sending(visdom_server, offline_run):
    calls = []
    replay(offline_run.runlog.path, "replay-progress", port=visdom_server.port,
           progress=lambda stage, done, total: calls.append((stage, done, total)))
    size = offline_run.runlog.path.stat().st_size
    assert calls[[c[0] for c in calls].index("send") - 1] == ("read", size, size)
    assert [c for c in calls if c[0] == "send"] == [("send", n, 4) for n in range(1, 5)]


def test_replay_to_a_server_that_is_down_is_a_one_line_error(offline_run):
    result = CliRunner().invoke(cli, ["replay", str(offline_run.runlog.path), "--port", str(VisdomServer(0).port)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: http://127.0.0.1:")
    assert "is unreachable" in result.output
    with pytest.raises(DashboardError, match=r"is unreachable \(ConnectionRefusedError\)"):
        replay(offline_run.runlog.path, port=VisdomServer(0).port)


def test_replay_of_a_log_that_names_no_env_needs_one(visdom_server, tmp_path):
    log = RunLog(tmp_path / RunLog.FILENAME)
    log.append([{"k": "points", "win": "loss", "x": 1, "y": {"train": 1.0}}])
    log.close()
    result = CliRunner().invoke(cli, ["replay", str(log.path), "--port", str(visdom_server.port)])
    assert result.exit_code == 1 and "Error: env must be given: the run log" in result.output
    assert CliRunner().invoke(cli, ["replay", str(log.path), "--env", "named",
                                    "--port", str(visdom_server.port)]).exit_code == 0


def test_replay_of_a_log_naming_an_env_that_is_no_plain_name_needs_one(visdom_server, tmp_path):
    # A run log from elsewhere: the env it names is held to the rules of one given with --env.
    log = RunLog(tmp_path / RunLog.FILENAME)
    log.append([{"k": "run", "env": "../../etc", "run_id": "x"}, {"k": "points", "win": "loss", "x": 1,
                                                                  "y": {"train": 1.0}}])
    log.close()
    result = CliRunner().invoke(cli, ["replay", str(log.path), "--port", str(visdom_server.port)])
    assert result.exit_code == 1 and "names an env that cannot be used" in result.output


def test_replaying_an_earlier_run_into_the_env_of_the_current_one_needs_an_env(visdom_server, tmp_path,
                                                                              read_window):
    import shlex

    from monitor import Monitor, Scalars

    env = "l'été $HOME " + "é" * 85  # a quote and a $ to paste into a shell; no room for the suggestion's suffix
    for losses in ([1.0, 0.5, 0.25], [2.0]):  # a second run of the env sets the first aside
        with Monitor([Scalars()], env=env, run_dir=tmp_path / "again", port=visdom_server.port) as monitor:
            for loss in losses:
                monitor.step_end(loss=loss)
    (earlier,) = (tmp_path / "again" / "earlier").iterdir()
    refused = CliRunner().invoke(cli, ["replay", str(earlier), "--port", str(visdom_server.port)])
    assert refused.exit_code == 1 and f"Error: env must be given to replay an earlier run: env {env!r} shows" \
        in refused.output
    assert read_window(visdom_server, env, "loss")["train"] == ([1], [2.0])  # the current run's, untouched
    suggested = shlex.split(refused.output.split("for instance ")[1])  # as a shell reads it, pasted
    done = CliRunner().invoke(cli, ["replay", str(earlier), *suggested, "--port", str(visdom_server.port)])
    assert done.exit_code == 0, done.output
    assert read_window(visdom_server, suggested[1], "loss")["train"][1] == [1.0, 0.5, 0.25]


def test_replay_takes_several_runs_and_a_folder_of_runs(visdom_server, read_window, tmp_path):
    """A sweep's trials that ended before the server was up took a shell loop, one replay a trial."""
    for trial in range(3):
        sink = VisdomSink(f"late-trial{trial}", port=VisdomServer(0).port, run_dir=tmp_path / "runs" / f"late-trial{trial}")
        Log(sink).scalar("loss", "train", 1, float(trial))
        assert sink.close(timeout=0.2) is False
    port = ["--port", str(visdom_server.port)]
    folder = CliRunner().invoke(cli, ["replay", str(tmp_path / "runs"), *port])
    assert folder.exit_code == 0 and folder.output.count("Replayed") == 3, folder.output
    assert [read_window(visdom_server, f"late-trial{t}", "loss") for t in range(3)] == [
        {"train": ([1], [float(t)])} for t in range(3)]
    two = CliRunner().invoke(cli, ["replay", *(str(tmp_path / "runs" / f"late-trial{t}") for t in (0, 1)), *port])
    assert two.exit_code == 0 and two.output.count("Replayed") == 2, two.output
    named = CliRunner().invoke(cli, ["replay", str(tmp_path / "runs"), "--env", "one", *port])
    assert named.exit_code == 2 and "--env fills one env, got 3 runs to replay" in named.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = CliRunner().invoke(cli, ["replay", str(empty), *port])
    assert nothing.exit_code == 2 and "nor a folder of runs" in nothing.output
