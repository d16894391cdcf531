"""Dashboards that outlive their server: ``monitor serve --runs DIR`` rebuilds every finished run's env."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from monitor.replay import rebuild, replay

QUICK_START = Path(__file__).parent / "helpers" / "quick_start.py"


def _train(server, runs: Path, env: str) -> None:
    subprocess.run([sys.executable, str(QUICK_START), "--env", env, "--port", str(server.port),
                    "--run-dir", str(runs / env)], check=True, capture_output=True, timeout=120)


def _windows(client, env: str) -> dict:
    data = json.loads(client.get_window_data(None, env))
    windows = {}
    for name, window in data.items():
        window = json.loads(window) if isinstance(window, str) else window
        windows[name] = (window["title"], window["content"])
    return windows


def _wait_for_line(command, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in command.lines:
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} within {timeout} s: {command.lines}")


def test_a_killed_server_started_again_with_runs_shows_every_finished_run_as_a_replay_would(
        fresh_server, monitor_serve, connect_client, tmp_path):
    runs = tmp_path / "runs"
    for env in ("rebuild-a", "rebuild-b"):
        _train(fresh_server, runs, env)
    port = fresh_server.port
    fresh_server.kill()  # a crash: visdom saved nothing

    serving = monitor_serve("--port", str(port), "--env-path", str(tmp_path / "new-envs"), "--runs", str(runs))
    url = serving.url()
    assert "Rebuilt 2 env(s)" in _wait_for_line(serving, "Rebuilt")
    client = connect_client(fresh_server)
    for env in ("rebuild-a", "rebuild-b"):
        rebuilt = _windows(client, env)
        assert {"loss", "learning rate", "grad norm", "summary"} <= set(rebuilt)
        replay(runs / env / "runlog.jsonl", f"{env}-replayed", server=url)
        assert rebuilt == _windows(client, f"{env}-replayed")


def test_rebuild_leaves_a_live_run_to_its_own_sink(visdom_server, tmp_path):
    from monitor.rundir import RunDir

    runs = tmp_path / "runs"
    _train(visdom_server, runs, "rebuild-live")
    holder = RunDir(runs / "rebuild-live")
    holder.lock("someone", "rebuild-live")
    try:
        assert rebuild(runs, port=visdom_server.port) == {"rebuild-live": "live"}
    finally:
        holder.unlock()
    assert rebuild(runs, port=visdom_server.port) == {"rebuild-live": "rebuilt"}


def test_serve_runs_on_a_folder_not_made_yet_says_so_and_lists_runs_once_they_start(monitor_serve, tmp_path):
    import visdom

    from monitor import Monitor, Scalars
    from monitor.runs import RunsPane

    runs = tmp_path / "runs"
    serving = monitor_serve("--port", "0", "--env-path", str(tmp_path / "envs"), "--runs", str(runs))
    serving.url()
    assert f"No runs yet in {runs}" in _wait_for_line(serving, "No runs yet")
    port = int(serving.url().rsplit(":", 1)[1])
    with Monitor([Scalars()], env="later", port=port, run_dir=runs / "later") as monitor:
        monitor.step_end(loss=1.0)
    client = visdom.Visdom(port=port, raise_exceptions=True, use_incoming_socket=False)
    deadline = time.monotonic() + 30
    while "later" not in client.get_window_data(None, RunsPane.ENV):
        assert time.monotonic() < deadline, "the run never reached the runs pane"
        time.sleep(0.2)


def test_an_entry_of_a_newer_monitor_is_skipped_and_said_and_the_runs_are_rebuilt(visdom_server, tmp_path, caplog,
                                                                                   read_window, connect_client):
    # One histogram entry in a newer format stopped `monitor serve --runs` for good (KeyError:
    # 'edges'), with no dashboard for any run; replay and a resume raised it too.
    from monitor.log import Log
    from monitor.runlog import FORMAT
    from monitor.sink import VisdomSink

    runs = tmp_path / "runs"
    for env in ("newer", "plain"):
        sink = VisdomSink(env, port=1, run_dir=runs / env, timeout=0.2)
        Log(sink).scalar("loss", "train", 1, 0.5)
        Log(sink).scalar("loss", "train", 2, 0.25)
        sink.close(timeout=0.2)
    log = runs / "newer" / "runlog.jsonl"
    header, *rest = log.read_text().splitlines()
    header = json.dumps({**json.loads(header), "format": FORMAT + 1})
    future = json.dumps({"k": "histogram", "win": "weights", "x": 2, "counts": [1, 2], "n": 3, "z64": "AAAA"})
    log.write_text("\n".join([header, rest[0], future, *rest[1:]]) + "\n")
    with caplog.at_level("WARNING", logger="monitor"):
        assert rebuild(runs, port=visdom_server.port) == {"newer": "rebuilt", "plain": "rebuilt"}
    said = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(said) == 1 and f"1 entry of {log} could not be read and is not shown, the first a 'histogram' " \
        f"entry of window 'weights': KeyError: 'edges'; it was written by a newer monitor (run log format " \
        f"{FORMAT + 1}, this one reads up to {FORMAT}): upgrade monitor to see them" in said[0], said
    assert read_window(visdom_server, "newer", "loss") == {"train": ([1, 2], [0.5, 0.25])}
    assert "weights" not in json.loads(connect_client(visdom_server).get_window_data(None, "newer"))
