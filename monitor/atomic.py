"""Atomic files: a reader sees the old content or the new, whole, even if the writer is killed.

    write_atomic(Path("checkpoints/latest.json"), lambda file: file.write(data))

The bytes go to a temporary sibling (``.NAME.<random>.tmp``), are flushed and fsynced, replace
the target with ``os.replace``, and the folder is fsynced so the new name survives a power cut.
A temporary file left by a killed writer is garbage, never a half-written target.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Calls ``write(file)`` on a temporary sibling of ``path``, then makes it ``path`` durably."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Makes the names in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
