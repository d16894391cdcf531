"""Shared fixtures: real Visdom servers started through ``monitor.server.start`` and readers for
what they hold. visdom (and with it torch) is imported only inside the helpers that need it.

- ``visdom_server``: one server for the whole session (free loopback port, its own env dir).
  Use your own env name per test; do not kill it.
- ``fresh_server``: a server for one test, which it may ``kill()``, ``pause()``/``resume()`` and
  ``start()`` again on the same port and env dir.
- ``connect_client(server, **kwargs)``: a visdom client that raises on errors and opens no socket.
- ``read_window(server, env, win)``: ``{trace name: (xs, ys)}`` of a plot window.
- ``read_env(server, env)``: ``{window: {trace name: (xs, ys)}}`` of every plot window of an env.
- ``read_window_raw(server, env, win)``: the window's full dict (type, content, ...), e.g. for
  image and text panes.
- ``monitor_serve(*args, env=None)``: ``monitor serve ARGS`` as a background command, with
  ``.url()`` (waits for the printed URL) and ``.finish(signal)`` (exit code, stderr).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers.commands import ServeCommand
from monitor.server import VisdomServer, start


@pytest.fixture(autouse=True)
def _stop_signals_given_back() -> Iterator[None]:
    """A run "killed" in a test (an exception) leaves its Checkpoint's SIGTERM and SIGUSR1
    handlers, as a killed process would not: each test gets the signals back as they were."""
    from monitor import preemption

    before = {number: signal.getsignal(number) for number in preemption.SIGNALS}
    yield
    for number, handler in before.items():
        signal.signal(number, handler)
    preemption.caught = False


@pytest.fixture(autouse=True)
def _home_of_each_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own ``$MONITOR_HOME`` (the envs claimed by log_dirs, a served env folder),
    the scripts it starts included: none reads another's, nor the user's ``~/.monitor``."""
    monkeypatch.setenv("MONITOR_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def visdom_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    """A real server shared by the session; isolate tests by env name."""
    with start(port=0, env_path=tmp_path_factory.mktemp("visdom-env")) as server:
        yield server


@pytest.fixture
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VisdomServer]:
    """A real server for one test, free to be killed, paused and restarted; stopped afterwards."""
    with start(port=0, env_path=tmp_path_factory.mktemp("visdom-env")) as server:
        yield server


def _connect_client(server: VisdomServer, **kwargs: Any) -> Any:
    from visdom import Visdom

    options = {"use_incoming_socket": False, "raise_exceptions": True, **kwargs}
    return Visdom(server=f"http://{server.host if server.host != '0.0.0.0' else '127.0.0.1'}",
                  port=server.port, **options)


def _read_window_raw(server: VisdomServer, env: str, win: str, **client_kwargs: Any) -> dict:
    reply = _connect_client(server, **client_kwargs).get_window_data(win, env)
    try:
        return json.loads(reply)  # a missing env/window answers an HTML error page (status ignored)
    except (TypeError, ValueError):
        raise LookupError(f"no window {win!r} in env {env!r} on {server.url}") from None


def _read_window(server: VisdomServer, env: str, win: str, **client_kwargs: Any) -> dict[str, tuple[list, list]]:
    traces = _read_window_raw(server, env, win, **client_kwargs)["content"]["data"]
    return {trace.get("name", str(i)): (list(trace["x"]), list(trace["y"])) for i, trace in enumerate(traces)}


def _read_env(server: VisdomServer, env: str) -> dict[str, dict[str, tuple[list, list]]]:
    data = json.loads(_connect_client(server).get_window_data(None, env))
    shown = {}
    for win, window in data.items():
        window = json.loads(window) if isinstance(window, str) else window
        shown[win] = {t.get("name"): (t["x"], t["y"]) for t in window["content"]["data"]}
    return shown


@pytest.fixture(scope="session")
def read_env() -> Callable[..., dict[str, dict[str, tuple[list, list]]]]:
    """``read_env(server, env) -> {window: {trace name: (xs, ys)}}``: every plot window of an env."""
    return _read_env


@pytest.fixture(scope="session")
def connect_client() -> Callable[..., Any]:
    """``connect_client(server, **kwargs) -> visdom.Visdom``; kwargs override the defaults."""
    return _connect_client


@pytest.fixture(scope="session")
def read_window() -> Callable[..., dict[str, tuple[list, list]]]:
    """``read_window(server, env, win) -> {trace name: (xs, ys)}``; raises LookupError if absent."""
    return _read_window


@pytest.fixture(scope="session")
def read_window_raw() -> Callable[..., dict]:
    """``read_window_raw(server, env, win) -> dict`` as the server stores the window."""
    return _read_window_raw


@pytest.fixture
def monitor_serve() -> Iterator[Callable[..., ServeCommand]]:
    """``monitor_serve(*args, env=None) -> ServeCommand``; whatever is still running is killed after."""
    started: list[ServeCommand] = []

    def run(*args: str, env: dict[str, str] | None = None) -> ServeCommand:
        started.append(ServeCommand(*args, env=env))
        return started[-1]

    yield run
    for command in started:
        try:
            command.finish(signal.SIGTERM)  # lets the command stop its server; a SIGKILL would orphan it
        except subprocess.TimeoutExpired:
            command.process.kill()
            command.process.wait()
