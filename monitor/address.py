"""Where the Visdom server is: arguments first, then the environment, then the defaults.

Every part of monitor that talks to a server (the sink, replay, the demo, ``monitor serve``)
reads its address here, the way Visdom's own client does: ``$VISDOM_SERVER_URL`` and
``$VISDOM_PORT``. This module imports nothing heavy, so the CLI can show the defaults in
``--help`` at once.

    resolve_address("http://10.0.0.2:9000")   # ("http://10.0.0.2", 9000)
    resolve_address(port=8098)                 # ("http://127.0.0.1", 8098) unless $VISDOM_SERVER_URL says otherwise
    base_path("https://lab.example:443/visdom")  # "/visdom": a server behind a proxy's path (Visdom's -base_url)
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

DEFAULT_SERVER = "http://127.0.0.1"
DEFAULT_PORT = 8097


def resolve_address(server: str | None = None, port: int | str | None = None,
                    default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``("http://host", port)`` from the arguments, else the environment, else the defaults.

    The port is ``port``, else the one in ``server``, else ``$VISDOM_PORT``, else the one in
    ``$VISDOM_SERVER_URL``, else ``default_port``. Raises ValueError for a server that is not
    an http(s) URL or a port that is not an int (its range is the caller's to check).
    """
    given = server
    server_from = "server" if server else "$VISDOM_SERVER_URL"
    server = server or os.environ.get("VISDOM_SERVER_URL") or DEFAULT_SERVER
    parsed = urlparse(server if "://" in server else f"http://{server}")
    try:
        url_port = parsed.port
    except ValueError:
        url_port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or url_port == -1 or \
            "://" not in server and not url_port and (parsed.path or parsed.query):  # "htp:/x": a scheme misspelt
        raise ValueError(f"{server_from} must be a URL like http://127.0.0.1, got {server!r}")
    port_from = "port"
    if port is None:
        port = (url_port if given else None) or os.environ.get("VISDOM_PORT") or url_port or default_port
        port_from = "$VISDOM_PORT" if port == os.environ.get("VISDOM_PORT") else "port"
    if isinstance(port, bool):
        raise ValueError(f"{port_from} must be an int, got {port!r}")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"{port_from} must be an int, got {port!r}") from None
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{parsed.scheme}://{host}", port


def base_path(server: str | None = None) -> str:
    """The path in ``server`` (else in ``$VISDOM_SERVER_URL``): where a server started with
    ``-base_url`` (or behind a proxy) answers, ``"/visdom"``; ``""`` for none."""
    server = server or os.environ.get("VISDOM_SERVER_URL") or DEFAULT_SERVER
    return urlparse(server if "://" in server else f"http://{server}").path.rstrip("/")
