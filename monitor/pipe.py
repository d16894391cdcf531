"""Messages over a pipe between the training process and its sink's process: length-prefixed pickles.

    send(pipe, ("ask", 7, "flush", 10.0))
    receive(pipe)                          # -> ("ask", 7, "flush", 10.0), or None at the pipe's end
"""
from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

_LENGTH = struct.Struct("<Q")
# Bytes a pipe holds where Linux lets it (64 KiB by default), so that its writer seldom waits; all
# of a user's pipes share a budget (64 MiB by default): 64 runs take a quarter of it.
_WIDE = 1 << 18


def send(pipe: BinaryIO, message: Any) -> None:
    """Writes one message (raises what pickle raises, before writing anything)."""
    write(pipe, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def write(pipe: BinaryIO, data: bytes) -> None:
    """Writes one message already pickled."""
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def receive(pipe: BinaryIO) -> Any:
    """The next message, or None at the pipe's end."""
    head = _exactly(pipe, _LENGTH.size)
    if head is None:
        return None
    data = _exactly(pipe, _LENGTH.unpack(head)[0])
    return None if data is None else pickle.loads(data)


def widen(pipe: BinaryIO) -> None:
    """Lets the pipe hold more before its writer waits, where the system allows."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _WIDE)
    except (ImportError, AttributeError, OSError):  # not Linux, or over the system's limit: the default
        pass


def _exactly(pipe: BinaryIO, size: int) -> bytes | None:
    """``size`` bytes (a raw pipe may give fewer at a time), or None at the pipe's end."""
    parts, left = [], size
    while left:
        part = pipe.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
