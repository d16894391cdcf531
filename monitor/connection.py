"""Connection: Visdom's HTTP API with timeouts, status checks and login.

Visdom's own client has no timeouts, ignores status codes and starts a websocket thread per
instance; this small client posts the same JSON requests and says clearly what went wrong. It
keeps one HTTP/1.1 connection open (the standard library's ``http.client``: a request costs
its thread about a quarter of the CPU time a ``requests`` session took, time the sink's worker
would otherwise hold the GIL the training loop needs) and never goes through an HTTP proxy.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import select
import shlex
import time
from functools import partial
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from monitor import checks
from monitor.address import DEFAULT_PORT, DEFAULT_SERVER, base_path, resolve_address


class DashboardError(Exception):
    """The Visdom server could not be reached, refused a request or answered an error.

    ``status`` is the HTTP status of an answer, None when there was none.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Connection:
    """Posts Visdom's JSON requests with timeouts, logging in when credentials are given.

        connection = Connection("http://127.0.0.1", 8097)
        connection.post("win_exists", {"win": "loss", "eid": "mnist"})

    Arguments beat environment variables: the port is ``port``, else the port in ``server``,
    else ``VISDOM_PORT``, else the port in ``VISDOM_SERVER_URL``, else 8097
    (:mod:`monitor.address`); the server is
    ``server``, else ``VISDOM_SERVER_URL``, else http://127.0.0.1. ``username``/``password``
    default to ``VISDOM_USERNAME``/``VISDOM_PASSWORD``.
    """

    def __init__(self, server: str | None = None, port: int | None = None, *, base_url: str = "",
                 username: str | None = None, password: str | None = None, timeout: float = 5.0) -> None:
        address, self.port = resolve_address(server, port)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be an int between 1 and 65535, got {self.port}")
        self.timeout = checks.seconds("timeout", timeout)
        self.username = username or os.environ.get("VISDOM_USERNAME")
        self.password = password or os.environ.get("VISDOM_PASSWORD")
        if self.username and not self.password:
            raise ValueError("password must be given with username (or VISDOM_PASSWORD set), got none")
        self.last_seconds = 0.0  # wall time of the latest request
        self.last_bytes = 0  # size of the latest request's body
        self._open = partial(_http, f"{address}:{self.port}")
        path = (base_url or base_path(server)).strip().rstrip("/")
        self._path = quote(path if not path or path.startswith("/") else f"/{path}")
        self.url = f"{address}:{self.port}{self._path}"
        # What a command line adds to reach it (`monitor replay FILE --port 8098`); nothing for the defaults.
        server_option = f" --server {shlex.quote(address + self._path)}"
        self.cli_options = "" if self.url == f"{DEFAULT_SERVER}:{DEFAULT_PORT}" else \
            (server_option if address != DEFAULT_SERVER or self._path else "") + f" --port {self.port}"
        self._http: http.client.HTTPConnection | None = None
        self._cookie = ""  # the login's session cookie, sent with every request

    def post(self, endpoint: str, message: dict[str, Any], timeout: float | None = None) -> str:
        """Sends one request and returns the answer's text; raises DashboardError on any trouble.

        A message that is not valid JSON (NaN, an object) raises ValueError or TypeError instead.
        """
        body = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
        self.last_bytes = len(body)
        timeout = self.timeout if timeout is None else min(self.timeout, max(timeout, 0.05))
        started = time.perf_counter()
        status, text = self._request(endpoint, body, timeout)
        self.last_seconds = time.perf_counter() - started
        if status != 200:
            self.close()
            hint = "" if status != 400 else " (a server with login: check VISDOM_USERNAME/VISDOM_PASSWORD)" \
                if self.username else " (a server with login? VISDOM_USERNAME and VISDOM_PASSWORD are not set)"
            raise DashboardError(f"{self.url}/{endpoint} answered HTTP {status}{hint}", status)
        return text

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _request(self, endpoint: str, body: bytes, timeout: float) -> tuple[int, str]:
        """One POST on the open connection (opened, and logged in, first if need be).

        Never sent twice: a request that failed may have been applied (an append).
        """
        try:
            connection = self._connected(timeout)
            connection.request("POST", f"{self._path}/{endpoint}", body=body, headers=self._headers())
            answer = connection.getresponse()
            return answer.status, answer.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise DashboardError(f"{self.url} is unreachable ({type(error).__name__})") from None

    def _connected(self, timeout: float) -> http.client.HTTPConnection:
        """The kept-alive connection, or a new one where the server closed it meanwhile (a
        restart, an idle timeout): a socket with something to read between requests has ended."""
        if self._http is not None and self._http.sock is not None:  # None: the server said it closes
            if not select.select([self._http.sock], [], [], 0)[0]:
                self._http.sock.settimeout(timeout)
                return self._http
            self.close()
        self._http = self._open(timeout=timeout)
        self._http.connect()
        if self.username:
            self._log_in()
        return self._http

    def _log_in(self) -> None:
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        body = json.dumps({"username": self.username, "password": digest}).encode()
        self._http.request("POST", f"{self._path}/", body=body, headers={"Content-Type": "application/json"})
        answer = self._http.getresponse()
        answer.read()
        if answer.status == 400:
            self.close()
            raise DashboardError(f"{self.url} refused the login of {self.username!r} "
                                 f"(HTTP 400): check VISDOM_USERNAME/VISDOM_PASSWORD", 400)
        # Any other answer (a server without login answers 500) leaves the data requests to say
        # whether a login was needed.
        cookies = SimpleCookie(", ".join(answer.headers.get_all("Set-Cookie") or []))
        self._cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._cookie:
            headers["Cookie"] = self._cookie
        return headers




def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers at ``url`` with any status (a login page, an error).

    Never through an HTTP proxy: the dashboard is usually on this machine.
    """
    return _page(url, timeout) is not None


def is_visdom(url: str, timeout: float = 1.0) -> bool:
    """Whether what answers at ``url`` is a Visdom server: its page (or its login page) says so."""
    page = _page(url, timeout)
    return page is not None and b"visdom" in page.lower()


def _page(url: str, timeout: float) -> bytes | None:
    """The start of the answer to a GET of ``url`` (any status), or None where nothing answers."""
    connection = _http(url, timeout)
    try:
        connection.request("GET", urlsplit(url).path or "/")
        return connection.getresponse().read(1 << 16)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _http(url: str, timeout: float) -> http.client.HTTPConnection:
    """An unopened connection to the host and port of ``url``, over TLS for https."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout)
