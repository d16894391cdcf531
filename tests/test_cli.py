"""The ``monitor`` command, run as a user runs it: a subprocess, reading its output and exit code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from helpers.commands import MONITOR_COMMAND as COMMAND
from helpers.probes import answers, free_port


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def _assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(f"Error: {pattern}", last), result.stderr




def test_help_imports_neither_torch_nor_visdom() -> None:
    # How fast it is, is measured in bench/responsiveness.py.
    code = "import sys, monitor.cli; print('torch' in sys.modules, 'visdom' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    result = _run("--help")
    assert result.returncode == 0 and "serve" in result.stdout and "assets" in result.stdout


def test_serve_prints_the_url_and_ctrl_c_stops_cleanly(monitor_serve, tmp_path: Path) -> None:
    running = monitor_serve("--port", "0", "--env-path", str(tmp_path))
    url = running.url()
    assert answers(url)
    code, stderr = running.finish(signal.SIGINT)
    assert code == 0 and "Traceback" not in stderr
    assert not answers(url)  # the server went down with the command


def test_serve_takes_the_port_from_visdom_port_and_stops_on_sigterm(monitor_serve, tmp_path: Path) -> None:
    port = free_port()
    running = monitor_serve("--env-path", str(tmp_path), env={"VISDOM_PORT": str(port)})
    url = running.url()
    assert url == f"http://127.0.0.1:{port}"
    code, stderr = running.finish(signal.SIGTERM)
    assert code == 0 and "Traceback" not in stderr
    assert not answers(url)
    assert not [line for line in running.lines if "Scripts send to port" in line]  # where they look already


def test_serve_on_a_port_scripts_do_not_look_at_says_how_to_send_there(monitor_serve, tmp_path: Path) -> None:
    # A shared login node's 8097 was someone else's: a script without VISDOM_PORT would write there.
    port = free_port()
    running = monitor_serve("--port", str(port), "--env-path", str(tmp_path), env={"VISDOM_PORT": ""})
    running.url()
    running.finish(signal.SIGTERM)
    assert f"Scripts send to port 8097 unless told: run them with VISDOM_PORT={port} (or Monitor(..., port={port})).\n" \
        in running.lines, running.lines


def test_serve_takes_the_port_from_visdom_server_url_where_clients_look(monitor_serve, tmp_path: Path) -> None:
    port = free_port()
    url_env = {"VISDOM_SERVER_URL": f"http://127.0.0.1:{port}", "VISDOM_PORT": ""}
    running = monitor_serve("--env-path", str(tmp_path), env=url_env)
    assert running.url() == f"http://127.0.0.1:{port}"
    code, _ = running.finish(signal.SIGTERM)
    assert code == 0


def test_serve_names_a_bad_port_in_the_environment(tmp_path: Path) -> None:
    result = _run("serve", "--env-path", str(tmp_path), env={"VISDOM_PORT": "eighty"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "$VISDOM_PORT must be an int, got 'eighty'" in result.stderr


def test_serve_on_all_interfaces_prints_a_warning(monitor_serve, tmp_path: Path) -> None:
    running = monitor_serve("--port", "0", "--host", "0.0.0.0", "--env-path", str(tmp_path))
    running.url()
    _, stderr = running.finish(signal.SIGINT)
    assert "Warning: the Visdom server on port" in stderr and "every network interface" in stderr


def test_serve_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("serve", "--port", str(port), "--env-path", str(tmp_path))
    _assert_one_line_error(result, f"port {port} is already in use on 127.0.0.1")


def test_serve_unwritable_env_path_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = _run("serve", "--port", "0", "--env-path", str(tmp_path / "a-file" / "envs"))
    _assert_one_line_error(result, "env_path must be a writable folder .*Not a directory")


def test_serve_login_without_credentials_is_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VISDOM_USERNAME", "VISDOM_PASSWORD")}
    result = subprocess.run([*COMMAND, "serve", "--login", "--port", "0", "--env-path", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    _assert_one_line_error(result, "login needs a username and a password: set VISDOM_USERNAME and VISDOM_PASSWORD")


def test_assets_without_npm_is_a_one_line_error(tmp_path: Path) -> None:
    # An empty static folder, no npm on PATH, visdom's CDN download skipped: nothing can install them.
    result = _run("assets", "--static-dir", str(tmp_path / "static"), "--no-visdom-download",
                  env={"PATH": str(tmp_path)})
    _assert_one_line_error(result, r"30 dashboard asset\(s\) missing .*`npm` is not on PATH")


def test_assets_on_a_complete_folder_says_so() -> None:
    result = _run("assets")
    assert result.returncode == 0 and "Dashboard assets are complete" in result.stdout


def test_serve_exits_non_zero_when_its_server_dies(monitor_serve, tmp_path: Path) -> None:
    running = monitor_serve("--port", "0", "--env-path", str(tmp_path))
    running.url()
    pid = running.process.pid
    server_pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    os.kill(server_pid, signal.SIGKILL)
    code = running.process.wait(timeout=15)
    stderr = running.process.stderr.read()
    assert code == 1 and "Traceback" not in stderr
    assert re.search(r"Error: the Visdom server exited unexpectedly \(code -9\); see .*server\.log", stderr)
