"""A local Visdom server in a child process: loopback by default, assets installed, optional login.

Visdom 0.2.4's own entry point downloads its page assets from CDNs on every start (and crashes
offline), listens on every interface unless told otherwise and keeps state in ``~/.visdom``
(its login cookie secret; the envs its compare view lists) whatever ``-env_path`` says.
:func:`start` installs the assets once (:mod:`monitor.assets`), runs visdom's server without that
download step (:mod:`monitor.visdom_child`), binds 127.0.0.1 unless asked otherwise, gives it a
private home inside the env folder, and returns once the server answers HTTP.

Example::

    from monitor.server import start
    with start(port=8097) as server:
        print(server.url)        # http://127.0.0.1:8097
"""

from __future__ import annotations

import atexit
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from pathlib import Path

from monitor.address import DEFAULT_PORT
from monitor.assets import ensure_assets
from monitor.connection import answers

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerError", "VisdomServer", "default_env_path", "start"]

DEFAULT_HOST = "127.0.0.1"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_ALL_INTERFACES = "0.0.0.0"
_STATE_DIR = ".monitor-server"  # inside env_path: the server's log and its private HOME

_CHILD = Path(__file__).with_name("visdom_child.py")  # run by path: see that module

_running: weakref.WeakSet[VisdomServer] = weakref.WeakSet()


class ServerError(RuntimeError):
    """The Visdom server could not be started (or was used in a state that does not allow it)."""


def default_env_path() -> Path:
    """Where envs persist when no ``env_path`` is given: ``~/.monitor/visdom`` (``$MONITOR_HOME/visdom``)."""
    return Path(os.environ.get("MONITOR_HOME", Path.home() / ".monitor")).expanduser() / "visdom"


class VisdomServer:
    """Handle on one Visdom server process; :func:`start` makes one and starts it.

    ``stop()`` is idempotent; ``kill()``, ``pause()`` and ``resume()`` are there to test what a
    crashed or hung server does to a client; ``start()`` runs it again on the same port and env
    folder (what the server had not saved to ``env_path`` is gone, as with any visdom restart).

    Example::

        server = start(port=0, env_path="/tmp/envs")   # port 0: any free loopback port
        server.kill(); server.start()                  # same port, same envs on disk
        server.stop()
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        env_path: str | os.PathLike | None = None,
        *,
        login: bool = False,
        username: str | None = None,
        password: str | None = None,
        wait: float = 60.0,
        log_level: str = "WARNING",
        base_url: str = "",
    ) -> None:
        if host not in (*_LOOPBACK_HOSTS, _ALL_INTERFACES):
            raise ServerError(
                f"host must be 127.0.0.1, localhost or 0.0.0.0 (visdom can bind nothing else), got {host!r}"
            )
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ServerError(f"port must be an int in 0..65535 (0: pick a free one), got {port!r}")
        if wait <= 0:
            raise ServerError(f"wait must be > 0 seconds, got {wait!r}")
        self.host = host
        self.base_url = "/" + base_url.strip().strip("/") if base_url.strip().strip("/") else ""
        self.port = port or _free_port()
        self.env_path = Path(env_path if env_path is not None else default_env_path()).expanduser().absolute()
        self.login = login
        self.wait = wait
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self._credentials = _credentials(username, password) if login else None

    @property
    def url(self) -> str:
        """Where a browser or client reaches the dashboard (loopback even when bound to 0.0.0.0)."""
        return f"http://{'localhost' if self.host == 'localhost' else '127.0.0.1'}:{self.port}{self.base_url}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, appended across restarts."""
        return self.env_path / _STATE_DIR / "server.log"

    @property
    def running(self) -> bool:
        """Whether the server process exists and has not exited (a paused one counts as running)."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> VisdomServer:
        """Start the server and return once it answers HTTP; raises :class:`ServerError` otherwise."""
        if self.running:
            raise ServerError(f"the server on port {self.port} is already running (pid {self.process.pid})")
        ensure_assets()
        state = self._prepare_env_path()
        _check_port_free(self.host, self.port)
        if self.host == _ALL_INTERFACES:
            warnings.warn(
                f"the Visdom server on port {self.port} listens on every network interface: anyone who can "
                "reach this machine can read and change its envs" + ("" if self.login else " (no --login)"),
                stacklevel=3,
            )
        args = [sys.executable, str(_CHILD), "serve", "-port", str(self.port), "-env_path", str(self.env_path),
                "-logging_level", self.log_level]
        if self.host != _ALL_INTERFACES:
            args.append("-bind_local")
        if self.base_url:  # behind a proxy's path: every page and request under it
            args += ["-base_url", self.base_url]
        env = dict(os.environ, MONITOR_SERVER_PARENT=str(os.getpid()), **self._home(state))
        if self._credentials:
            args.append("-enable_login")
            env.update(self._login_env(state))
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.env_path, start_new_session=True,
            )
        _running.add(self)
        self._wait_until_answering(offset)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; does nothing if it is not running."""
        if not self.running:
            return
        self.process.terminate()
        self._signal(signal.SIGCONT)  # a paused process only acts on SIGTERM once continued
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (envs not saved to disk are lost)."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its port but answers nothing until :meth:`resume`."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        self._signal(signal.SIGCONT)

    def __enter__(self) -> VisdomServer:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.process.pid}" if self.running else "stopped"
        return f"VisdomServer({self.url}, env_path={str(self.env_path)!r}, {state})"

    def _signal(self, sig: int) -> None:
        if self.running:
            self.process.send_signal(sig)

    def _prepare_env_path(self) -> Path:
        state = self.env_path / _STATE_DIR
        try:
            state.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.env_path):
                pass
        except OSError as exc:
            raise ServerError(
                f"env_path must be a writable folder (where the server keeps its envs), got {self.env_path}: "
                f"{exc.strerror or exc}"
            ) from None
        return state

    def _home(self, state: Path) -> dict[str, str]:
        # visdom keeps state in ~/.visdom whatever -env_path says: its login cookie secret (it crashes
        # if ~/.visdom is missing) and the env folder its compare view lists. A private HOME under
        # env_path keeps both beside the envs; the user's config dir is kept for their style.css.
        home = state / "home"
        (home / ".visdom").mkdir(parents=True, exist_ok=True, mode=0o700)
        return {"HOME": str(home),
                "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config"))}

    def _login_env(self, state: Path) -> dict[str, str]:
        # A cookie secret that survives restarts, so a browser stays logged in.
        secret = state / "home" / ".visdom" / "COOKIE_SECRET"
        if not secret.is_file():
            secret.write_text(secrets.token_urlsafe(32))
            secret.chmod(0o600)
        username, password = self._credentials
        return {
            "VISDOM_USE_ENV_CREDENTIALS": "1",
            "VISDOM_USERNAME": username,
            "VISDOM_PASSWORD": password,
        }

    def _wait_until_answering(self, log_offset: int) -> None:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"the Visdom server exited on start (code {self.process.returncode}); "
                    f"last lines of {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            if answers(self.url):
                return
            time.sleep(0.05)
        self.kill()
        raise ServerError(
            f"the Visdom server did not answer {self.url} within wait={self.wait} s and was killed; "
            f"last lines of {self.log_path}:\n{self._log_tail(log_offset)}"
        )

    def _log_tail(self, offset: int, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def start(
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    env_path: str | os.PathLike | None = None,
    *,
    login: bool = False,
    username: str | None = None,
    password: str | None = None,
    wait: float = 60.0,
    log_level: str = "WARNING",
    base_url: str = "",
) -> VisdomServer:
    """Start a Visdom server and return its handle once it answers HTTP.

    ``port=0`` picks a free port. ``host`` is 127.0.0.1 (default), localhost, or 0.0.0.0 to accept
    connections from other machines (warns). ``env_path`` defaults to :func:`default_env_path`.
    With ``login``, ``username``/``password`` default to ``$VISDOM_USERNAME``/``$VISDOM_PASSWORD``;
    they reach the server through its environment, never its command line. ``wait`` is how many
    seconds to wait for the first HTTP answer. ``base_url`` serves under a path (``"/visdom"``, a
    proxy's), in ``server.url``; clients give it in their server's URL. Raises
    :class:`ServerError` (port in use, env_path not writable, server died on start) or
    :class:`monitor.assets.AssetsError`.
    """
    server = VisdomServer(port, host, env_path, login=login, username=username, password=password,
                          wait=wait, log_level=log_level, base_url=base_url)
    return server.start()


def _credentials(username: str | None, password: str | None) -> tuple[str, str]:
    username = username or os.environ.get("VISDOM_USERNAME")
    password = password or os.environ.get("VISDOM_PASSWORD")
    if not (username and password):
        given = {"VISDOM_USERNAME": username, "VISDOM_PASSWORD": password}
        unset = [name for name, value in given.items() if not value]
        raise ServerError(f"login needs a username and a password: set {' and '.join(unset)} in the environment")
    return username, password


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    address = "127.0.0.1" if host in _LOOPBACK_HOSTS else host
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a killed server is fine
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"port {port} is already in use on {address}: stop what listens there or choose another "
                    "port (--port / VISDOM_PORT)"
                ) from None
            raise ServerError(f"cannot bind port {port} on {address}: {exc.strerror}") from None


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop(timeout=2.0)
