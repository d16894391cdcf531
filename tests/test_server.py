"""monitor.server against real Visdom server processes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import monitor
from monitor.server import ServerError, VisdomServer, default_env_path, start

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, payload: dict, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    try:
        with _DIRECT.open(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets in LISTEN state on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word little endian
            found.add(socket.inet_ntop(family, raw))
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _non_loopback_ipv4() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_start_returns_once_the_dashboard_answers(visdom_server: VisdomServer) -> None:
    status, page = _get(visdom_server.url)
    assert status == 200 and b"<title>visdom</title>" in page
    assert visdom_server.url == f"http://127.0.0.1:{visdom_server.port}"
    assert visdom_server.host == "127.0.0.1" and visdom_server.running


def test_default_bind_listens_on_loopback_only(visdom_server: VisdomServer) -> None:
    assert _listening_addresses(visdom_server.port) == {"127.0.0.1"}


def test_connect_through_a_non_loopback_address_is_refused(visdom_server: VisdomServer) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, visdom_server.port), timeout=5).close()


def test_all_interfaces_is_an_explicit_opt_in_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="listens on every network interface"):
        server = start(port=0, host="0.0.0.0", env_path=tmp_path)
    with server:
        assert "0.0.0.0" in _listening_addresses(server.port)
        assert _get(server.url)[0] == 200


def test_other_hosts_are_rejected_with_what_was_given(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"host must be 127.0.0.1, localhost or 0.0.0.0 .*got '10.1.2.3'"):
        start(port=0, host="10.1.2.3", env_path=tmp_path)


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} is already in use on 127.0.0.1"):
            start(port=port, env_path=tmp_path)


def test_env_path_that_cannot_be_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    regular_file = tmp_path / "a-file"
    regular_file.write_text("")
    with pytest.raises(ServerError, match=r"env_path must be a writable folder .*a-file/envs: Not a directory"):
        start(port=0, env_path=regular_file / "envs")


def test_server_that_dies_on_start_reports_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "site" / "visdom"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('broken visdom for this test')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))  # the child imports this visdom instead
    with pytest.raises(ServerError, match=r"exited on start \(code 1\)(.|\n)*broken visdom for this test"):
        start(port=0, env_path=tmp_path / "envs")


def test_stop_is_idempotent_and_frees_the_port(fresh_server: VisdomServer) -> None:
    fresh_server.stop()
    fresh_server.stop()
    assert not fresh_server.running
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", fresh_server.port))


def test_context_manager_stops_the_server(tmp_path: Path) -> None:
    with start(port=0, env_path=tmp_path) as server:
        process = server.process
    assert process.poll() is not None and not server.running


def test_a_server_outlives_no_parent_even_one_killed_with_sigkill(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from monitor.server import start\n"
        f"server = start(port=0, env_path={str(tmp_path)!r}); print(server.process.pid, server.port, flush=True)\n"
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    with parent, parent.stdout:
        server_pid, port = map(int, parent.stdout.readline().split())
        try:
            assert _get(f"http://127.0.0.1:{port}/")[0] == 200
            parent.kill()  # no atexit, no stop(): only the server's own watch can end it
            parent.wait()
            deadline = time.monotonic() + 10
            while _alive(server_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(server_pid), "the server outlived its SIGKILLed parent"
            # and nothing listens on its port any more. (Read from the kernel's table: binding the port
            # failed once in a full run, a port from the ephemeral range being any connection's once free,
            # and connecting to it once succeeded, a TCP socket connected to itself.) Polled: the main
            # thread shows as a zombie while the others still exit and hold the process's sockets.
            while _listening_addresses(port) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
            assert _listening_addresses(port) == set()
        finally:
            parent.kill()
            if _alive(server_pid):
                os.kill(server_pid, signal.SIGKILL)


def test_killed_server_restarts_on_same_port_with_saved_envs(fresh_server: VisdomServer, connect_client,
                                                             read_window) -> None:
    client = connect_client(fresh_server)
    client.line(X=[0, 1], Y=[3.0, 2.0], win="loss", env="saved", opts={"legend": ["train"]})
    client.save(["saved"])
    client.line(X=[0], Y=[1.0], win="loss", env="unsaved")
    port = fresh_server.port

    fresh_server.kill()
    assert not fresh_server.running
    fresh_server.start()

    assert fresh_server.port == port
    assert read_window(fresh_server, "saved", "loss") == {"train": ([0, 1], [3.0, 2.0])}
    with pytest.raises(LookupError, match="no window 'loss' in env 'unsaved'"):
        read_window(fresh_server, "unsaved", "loss")


def test_paused_server_answers_nothing_until_resumed(fresh_server: VisdomServer) -> None:
    fresh_server.pause()
    try:
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _DIRECT.open(fresh_server.url, timeout=0.5)
    finally:
        fresh_server.resume()
    assert _get(fresh_server.url)[0] == 200


def test_stop_ends_a_paused_server(fresh_server: VisdomServer) -> None:
    fresh_server.pause()
    fresh_server.stop(timeout=5)
    assert not fresh_server.running


def test_server_does_not_restart_itself_when_a_module_file_changes(fresh_server: VisdomServer) -> None:
    # visdom turns on tornado's autoreload, which re-executes the server (losing unsaved envs)
    # when any imported module's file changes, e.g. during a pip install.
    module = Path(importlib.util.find_spec("visdom.server.app").origin)
    time.sleep(0.8)  # autoreload, if on, records modification times every 0.5 s
    before = module.stat()
    try:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
        time.sleep(1.2)
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert fresh_server.running and _get(fresh_server.url)[0] == 200


def test_login_refuses_data_without_credentials_and_serves_them_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect_client, read_window
) -> None:
    fake_home = tmp_path / "home"
    fake_home.mkdir()
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("VISDOM_USERNAME", "ada")
    monkeypatch.setenv("VISDOM_PASSWORD", "s3cret-pw")
    with start(port=0, env_path=tmp_path / "envs", login=True) as server:
        user = {"username": "ada", "password": "s3cret-pw"}
        connect_client(server, **user).line(X=[0, 1], Y=[1.0, 0.5], win="loss", env="private",
                                            opts={"legend": ["train"]})

        status, body = _post(f"{server.url}/win_data", {"win": "loss", "eid": "private"})
        assert status == 400 and b"0.5" not in body
        assert _get(f"{server.url}/env/private")[0] == 400
        assert b"Visdom Login" in _get(server.url)[1]
        assert connect_client(server).line(X=[2], Y=[9.0], win="loss", env="private", update="append") == ""
        assert read_window(server, "private", "loss", **user) == {"train": ([0, 1], [1.0, 0.5])}

        assert b"s3cret-pw" not in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert not (fake_home / ".visdom").exists()  # the cookie secret lives under env_path


def test_a_server_under_a_path_is_reached_by_a_monitor_given_the_path_in_its_url(tmp_path: Path, read_window) -> None:
    from monitor import Monitor, Scalars

    with start(port=0, env_path=tmp_path / "envs", base_url="visdom/") as server:  # behind a proxy's /visdom
        assert server.url == f"http://127.0.0.1:{server.port}/visdom" and b"visdom" in _get(server.url)[1].lower()
        with Monitor([Scalars()], env="proxied", server=server.url, run_dir=tmp_path / "run") as monitor:
            for step in range(3):
                monitor.step_end(loss=1.0 / 2 ** step)
        assert monitor.sink.url == f"{server.url}/env/proxied"  # was the address without its path: HTTP 404 at every send
        assert read_window(server, "proxied", "loss", base_url="/visdom")["train"] == ([1, 2, 3], [1.0, 0.5, 0.25])


def test_login_without_credentials_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISDOM_USERNAME", raising=False)
    monkeypatch.setenv("VISDOM_PASSWORD", "pw")
    with pytest.raises(ServerError, match="set VISDOM_USERNAME in the environment"):
        start(port=0, env_path=tmp_path, login=True)


def test_default_env_path_is_outside_the_installed_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MONITOR_HOME", raising=False)
    assert default_env_path() == Path.home() / ".monitor" / "visdom"
    package = Path(monitor.__file__).parent
    assert package not in default_env_path().parents
    monkeypatch.setenv("MONITOR_HOME", str(tmp_path))
    assert default_env_path() == tmp_path / "visdom"
