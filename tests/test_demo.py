"""``monitor demo``, the project's first command, run as a user runs it with short settings."""
from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.commands import MONITOR_COMMAND, DemoCommand
from helpers.probes import answers, free_port
from monitor.demo import DemoError, run_demo
from monitor.log import Log
from monitor.sink import VisdomSink

pytestmark = pytest.mark.slow

SHORT = ("--samples", "64", "--epochs", "1")  # 2 steps: a few seconds
WINDOWS = {"loss", "accuracy", "learning rate", "grad norm", "inputs", "summary"}


def run_log_windows(cwd: Path, env: str) -> set[str]:
    """The windows the run's log (runs/ENV/runlog.jsonl, beside where the demo ran) has data for."""
    lines = (cwd / "runs" / env / "runlog.jsonl").read_text().splitlines()
    return {entry["win"] for entry in map(json.loads, lines) if entry.get("k") in ("points", "image", "text")}


def test_with_no_server_running_the_demo_starts_one_prints_its_url_first_and_no_keep_stops_it(tmp_path):
    port = free_port()
    demo = DemoCommand("--port", str(port), "--env-path", str(tmp_path / "envs"), "--no-keep", *SHORT,
                       cwd=tmp_path)
    code, stderr = demo.finish(None)
    assert code == 0, "".join(demo.lines) + stderr
    assert demo.lines[0] == f"Dashboard: http://127.0.0.1:{port}/env/demo\n"
    assert "Starting a local Visdom server" in demo.lines[1]
    assert any("epoch 1/1" in line for line in demo.lines)  # the example's progress bar
    assert "not confirmed" not in stderr and "Traceback" not in stderr  # every window was delivered
    assert run_log_windows(tmp_path, "demo") == WINDOWS
    assert not answers(f"http://127.0.0.1:{port}")  # --no-keep: the server it started is gone


def test_the_demo_keeps_the_server_it_started_until_ctrl_c(tmp_path, read_window, read_window_raw):
    finished = VisdomSink("earlier", port=free_port(), run_dir=tmp_path / "runs" / "earlier")  # no server: offline
    Log(finished).scalar("loss", "train", 1, 0.5)
    finished.close(timeout=0.1)
    demo = DemoCommand("--port", "0", "--env-path", str(tmp_path / "envs"), "--env", "kept", *SHORT, cwd=tmp_path)
    try:
        url = demo.url()
        demo.wait_for("until Ctrl-C")
        port = int(re.search(r":(\d+)/", url).group(1))
        server = SimpleNamespace(host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}")
        assert read_window(server, "kept", "loss")["train"][0] == [1, 2]
        assert read_window_raw(server, "kept", "inputs")["type"] == "image_history"
        assert read_window(server, "earlier", "loss") == {"train": ([1], [0.5])}  # a finished run, rebuilt
        assert demo.process.poll() is None  # still serving the dashboard
        code, stderr = demo.finish(signal.SIGINT)
    finally:
        demo.kill()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert not answers(server.url)


def test_the_demo_uses_a_server_that_answers_and_leaves_it_running(visdom_server, read_window, tmp_path):
    demo = DemoCommand("--env", "démo existing", *SHORT, cwd=tmp_path,
                       env={"VISDOM_SERVER_URL": "http://127.0.0.1", "VISDOM_PORT": str(visdom_server.port)})
    code, stderr = demo.finish(None)  # without --no-keep too: the server is not the demo's to keep
    assert code == 0, stderr
    assert demo.lines[0] == f"Dashboard: {visdom_server.url}/env/d%C3%A9mo%20existing\n"  # a link to the end
    assert not any("Starting a local" in line for line in demo.lines)
    assert demo.lines[1] == f"Using the Visdom server already answering at {visdom_server.url} (another port: " \
                            f"--port or $VISDOM_PORT).\n"  # someone else's on 8097 took the demo silently
    traces = read_window(visdom_server, "démo existing", "loss")
    assert traces["train"][0] == [1, 2] and traces["validation"][0] == [2]
    assert answers(visdom_server.url)


def test_a_remote_server_that_does_not_answer_is_a_one_line_error() -> None:
    result = subprocess.run([*MONITOR_COMMAND, "demo", "--server", "http://192.0.2.1", "--port", "9"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: server must answer or be this machine (127.0.0.1 or localhost) for the demo to start one, "
        "got nothing answering at http://192.0.2.1:9")


def test_run_demo_checks_its_address_at_the_door() -> None:
    with pytest.raises(DemoError, match=r"server must be a URL like http://127.0.0.1, got 'ftp://x'"):
        run_demo("ftp://x")
    with pytest.raises(DemoError, match=r"port must be an int in 0..65535 .*, got 70000"):
        run_demo(port=70000)


def test_the_demo_refuses_a_server_that_is_not_visdom(tmp_path) -> None:
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # another tool's page on that port
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DemoError, match=r"server must be a Visdom server, got something else answering at "
                                            rf"http://127.0.0.1:{other.server_port}"):
            run_demo(port=other.server_port, echo=lambda line: None)
    finally:
        other.shutdown()
        other.server_close()


def test_make_demo_runs_monitor_demo() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert recipe.strip() == "$(BIN)/monitor demo"
