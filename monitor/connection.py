"""Connection: Visdom's HTTP API with timeouts, status checks and login.

Visdom's own client has no timeouts, ignores status codes and starts a websocket thread per
instance; this small client posts the same JSON requests and says clearly what went wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import requests

from monitor import checks
from monitor.address import resolve_address


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
        self.url = f"{address}:{self.port}{base_url.rstrip('/')}"
        self.username = username or os.environ.get("VISDOM_USERNAME")
        self.password = password or os.environ.get("VISDOM_PASSWORD")
        if self.username and not self.password:
            raise ValueError("password must be given with username (or VISDOM_PASSWORD set), got none")
        self.last_seconds = 0.0  # wall time of the latest request
        self.last_bytes = 0  # size of the latest request's body
        self._session: requests.Session | None = None

    def post(self, endpoint: str, message: dict[str, Any], timeout: float | None = None) -> str:
        """Sends one request and returns the answer's text; raises DashboardError on any trouble.

        A message that is not valid JSON (NaN, an object) raises ValueError or TypeError instead.
        """
        body = json.dumps(message, allow_nan=False, separators=(",", ":"))
        self.last_bytes = len(body)
        timeout = self.timeout if timeout is None else min(self.timeout, max(timeout, 0.05))
        try:
            session = self._logged_in(timeout)
            started = time.perf_counter()
            answer = session.post(f"{self.url}/{endpoint}", data=body, timeout=timeout)
            self.last_seconds = time.perf_counter() - started
        except requests.RequestException as error:
            self._session = None
            raise DashboardError(f"{self.url} is unreachable ({type(error).__name__})") from None
        if answer.status_code != 200:
            self._session = None
            hint = " (a server with login: check VISDOM_USERNAME/VISDOM_PASSWORD)" if answer.status_code == 400 else ""
            raise DashboardError(f"{self.url}/{endpoint} answered HTTP {answer.status_code}{hint}",
                                 answer.status_code)
        return answer.text

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _logged_in(self, timeout: float) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # a loopback dashboard must not go through an HTTP proxy
            if self.username:
                digest = hashlib.sha256(self.password.encode()).hexdigest()
                answer = session.post(f"{self.url}/", timeout=timeout,
                                      json={"username": self.username, "password": digest})
                if answer.status_code == 400:
                    raise DashboardError(f"{self.url} refused the login of {self.username!r} "
                                         f"(HTTP 400): check VISDOM_USERNAME/VISDOM_PASSWORD")
                # Any other answer (a server without login answers 500) leaves the data requests
                # to say whether a login was needed.
            self._session = session
        return self._session


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers at ``url`` with any status (a login page, an error).

    Never through an HTTP proxy: the dashboard is usually on this machine.
    """
    with requests.Session() as session:
        session.trust_env = False
        try:
            session.get(url, timeout=timeout, allow_redirects=False, stream=True).close()
        except requests.RequestException:
            return False
    return True
