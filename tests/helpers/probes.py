"""Small probes of the network: a free loopback port, and whether something answers HTTP at a URL."""
from __future__ import annotations

import socket

from monitor.connection import answers

__all__ = ["answers", "free_port"]


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
