"""RunLog: every record of a run, in order, at full resolution, one JSON object per line.

It is the truth the dashboard is built from: a live run, a replay, a server that lost its envs
and a resumed run all send what the log says. Entries are plain dicts (``{"k": "points",
"win": "loss", "x": 12, "y": {"train": 0.53}}``); :mod:`monitor.entries` owns their schema.

On disk, a points entry of ``WIDE`` traces or more whose traces are those of its window's last
such entry is written as ``"f64"``, its values in that order as little-endian float64 bytes in
base64 (a 161-layer model's grad norms: 1.8 KB a step instead of 5.9, and exact; writing 162
floats as JSON text took the worker about 80 us a step, this 5). :meth:`RunLog.read` gives it
back with its ``"y"``, as it does the ``"v"`` (values as a JSON list) of older logs. Each writer
writes its first one of a window whole, so a log cut at any position (a rewind) reads back.
A histogram of ``WIDE`` edges or more writes them as ``"e64"``, the same bytes (TensorBoard's
default bins, trimmed to a weight's range, are hundreds of full-precision edges: 13.1 KB an
entry as JSON text, 6.8 KB so, for a 784x256 MLP's parameters).

Only the sink's worker writes it. A line torn by a crash is dropped on the next open.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # writes NaN/Infinity as Python's json does; json.loads reads them
_decode = json.JSONDecoder().decode  # of str: json.loads(bytes) guesses their encoding each time
# How _ENCODER begins an entry of a window: its kind and the window's name (as JSON), read without
# parsing the line (an image's, a wide gradient norm's).
HEAD = re.compile(rb'\{"k":"([a-z_]+)","win":("(?:[^"\\]|\\.)*")')
WIDE = 16  # traces: a points entry with as many or more names them once, then gives values alone
# The log's format, in its header ("format"; none before 1): raised where an entry changes so that
# an earlier monitor would read it wrong, so that one can say the log is newer than it.
FORMAT = 1


class RunLog:
    """Appends entries to ``path``; ``position`` is the byte offset a checkpoint can rewind to.

        log = RunLog("runs/mnist/runlog.jsonl")
        log.append([{"k": "points", "win": "loss", "x": 1, "y": {"train": 0.5}}])
        entries = list(RunLog.read("runs/mnist/runlog.jsonl"))
    """

    FILENAME = "runlog.jsonl"

    def __init__(self, path: str | os.PathLike, rewind_to: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab+", buffering=0)  # each append one write: none left half in a buffer
        end = _last_complete_line_end(self._file)
        if rewind_to is not None:
            if not 0 <= rewind_to <= end:
                raise ValueError(f"rewind_to must be between 0 and {end} (the log's size), got {rewind_to}")
            end = rewind_to
        self._file.truncate(end)
        self._file.seek(end)
        self.position = end
        self._traces: dict[str, tuple[str, ...]] = {}  # per window: the traces of its last wide entry written

    def append(self, entries: Iterable[dict[str, Any]]) -> None:
        """Writes the entries and hands them to the operating system (a crash of ours loses none).

        A write the disk refuses (full) raises OSError and leaves the log as it was before the call.
        """
        data = memoryview("".join(_ENCODER.encode(self._compact(e)) + "\n" for e in entries).encode())
        written = 0
        try:
            while written < len(data):
                written += self._file.write(data[written:])
        except OSError:
            self._traces.clear()  # a wide entry that names its traces may be among those taken back
            if written:
                self._file.truncate(self.position)  # no half line for the next entries to follow
            raise
        self.position += len(data)

    def append_what_fits(self, entries: list[dict[str, Any]]) -> int:
        """Appends the entries one at a time until the disk refuses one; returns how many it took.

        After ``append`` failed on a full disk: the earliest entries of the batch are kept, each
        whole, rather than none of them.
        """
        for taken, entry in enumerate(entries):
            try:
                self.append([entry])
            except OSError:
                return taken
        return len(entries)

    def _compact(self, entry: dict[str, Any]) -> dict[str, Any]:
        kind = entry.get("k")
        if kind == "histogram" and len(entry["edges"]) >= WIDE:
            return _as_bytes(entry, "edges", "e64")
        if kind != "points" or len(entry["y"]) < WIDE:
            return entry
        traces = tuple(entry["y"])
        if self._traces.get(entry["win"]) != traces:
            self._traces[entry["win"]] = traces
            return entry
        return _as_bytes(entry, "y", "f64")

    def sync(self) -> int:
        """Makes what was appended durable (fsync) and returns the position."""
        os.fsync(self._file.fileno())
        return self.position

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    @staticmethod
    def end_of(path: str | os.PathLike) -> int:
        """The byte just after a log's last complete line (a line torn by a crash is not counted)."""
        with open(path, "rb") as file:
            return _last_complete_line_end(file)

    @staticmethod
    def ended(path: str | os.PathLike) -> bool:
        """Whether the log's last complete line says how its run ended (a killed run's does not)."""
        with open(path, "rb") as file:
            end = _last_complete_line_end(file)
            file.seek(max(0, end - 65536))
            lines = file.read(end - file.tell()).splitlines()
        return bool(lines) and lines[-1].startswith(b'{"k":"end"')

    @staticmethod
    def read(path: str | os.PathLike, end: int | None = None, progress: Callable[[int], None] | None = None,
             windows: Callable[[str], bool] | None = None) -> Iterator[dict[str, Any]]:
        """The entries of a log, up to byte ``end`` if given; a torn last line is skipped.

        Reads line by line (a log full of images need not fit in memory); ``progress(bytes)`` is
        told how far it got, about every MiB and at the end. ``windows``: see :class:`Reader`. A
        line that is not JSON raises ValueError naming the file and the line.
        """
        return Reader(path, windows).entries(end, progress)


class Reader:
    """Reads a log that grows: each ``entries()`` gives those appended since the one before.

        reader = Reader("runs/mnist/runlog.jsonl")
        first = list(reader.entries())
        later = list(reader.entries())   # only the newer lines; a torn last line waits for its end
        reader.continues()               # False once the log was cut back or replaced: read anew

    ``windows(name)``, given, is asked whether a window's points are wanted, at its first points
    and again after ``reconsider(name)``: those of a window it refuses are passed over unparsed,
    and come as ``{"k": "points", "win": name}`` alone (listing long runs reads their loss and
    metrics, not every step's gradient norms).
    """

    def __init__(self, path: str | os.PathLike, windows: Callable[[str], bool] | None = None) -> None:
        self.path, self.windows = Path(path), windows
        self.position = 0  # bytes read, up to the end of the last whole line
        self._lines = 0
        self._file: tuple[int, int] | None = None  # the log's device and inode, at the first read
        self._first = self._last = b""  # lines that stay where they are while the log only grows
        self._traces: dict[str, tuple[str, ...]] = {}  # per window: the traces of its last wide entry
        self._wanted: dict[bytes, tuple[str, bool]] = {}  # per window: its name, and what ``windows`` said
        self._passed_over: set[str] = set()  # windows some of whose points were not read

    def continues(self) -> bool:
        """Whether the log still holds what was read, at the same place: it only grew since (not
        cut back by a resumed run, nor set aside for a new run's log)."""
        if not self.position:
            return True
        try:
            with open(self.path, "rb") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_dev, stat.st_ino) != self._file or file.readline() != self._first:
                    return False
                file.seek(self.position - len(self._last))
                return file.read(len(self._last)) == self._last
        except OSError:
            return False

    def reconsider(self, window: str) -> None:
        """Asks ``windows`` again about ``window`` at its next points (a layout changed)."""
        self._wanted = {name: said for name, said in self._wanted.items() if said[0] != window}

    def entries(self, end: int | None = None,
                progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
        """The entries after those read before, up to byte ``end`` if given (see ``RunLog.read``)."""
        done = told = reached = self.position
        with open(self.path, "rb") as file:
            if self._file is None:
                stat = os.fstat(file.fileno())
                self._file = (stat.st_dev, stat.st_ino)
            file.seek(self.position)
            for line in file:
                if end is not None and done + len(line) > end:
                    break
                if not line.endswith(b"\n"):
                    reached += len(line)
                    break  # torn by a crash, or still being written
                entry = self._entry(line, self._lines + 1)
                done = reached = done + len(line)
                self._lines += 1
                self.position, self._last = done, line
                if self._lines == 1:
                    self._first = line
                if entry is not None:
                    yield entry
                if progress is not None and done - told >= 1 << 20:
                    progress(done)
                    told = done
        if progress is not None:
            progress(reached)

    def _entry(self, line: bytes, number: int) -> dict[str, Any] | None:
        try:
            if self.windows is not None and (found := HEAD.match(line)) is not None and found[1] == b"points":
                name = found[2]  # the window's, as JSON: parsed once
                if name not in self._wanted:
                    window = json.loads(name)
                    self._wanted[name] = (window, bool(self.windows(window)))
                window, keep = self._wanted[name]
                if not keep:
                    self._passed_over.add(window)
                    return {"k": "points", "win": window}  # that it came, without its values
            if not line.strip():
                return None
            traces = self._traces
            entry = _decode(line.decode())
            if entry.get("k") == "points":
                if ("f64" in entry or "v" in entry) and entry["win"] not in traces \
                        and entry["win"] in self._passed_over:  # its traces were named in a line passed over
                    return {"k": "points", "win": entry["win"]}
                if "f64" in entry:
                    values = np.frombuffer(base64.b64decode(entry.pop("f64")), dtype="<f8").tolist()
                    entry["y"] = dict(zip(traces[entry["win"]], values, strict=True))
                elif "v" in entry:  # a log written before the values were bytes
                    entry["y"] = dict(zip(traces[entry["win"]], entry.pop("v"), strict=True))
                elif len(entry["y"]) >= WIDE:
                    traces[entry["win"]] = tuple(entry["y"])
            elif "e64" in entry:
                entry["edges"] = np.frombuffer(base64.b64decode(entry.pop("e64")), dtype="<f8").tolist()
        except (ValueError, KeyError, AttributeError, TypeError) as error:
            raise ValueError(f"run log {self.path} line {number} is not a JSON entry: {error}") from None
        return entry


def _as_bytes(entry: dict[str, Any], key: str, as_key: str) -> dict[str, Any]:
    """``entry`` with the numbers at ``key`` (a list, or a dict's values) as little-endian float64
    bytes in base64 at ``as_key``; as it is where they are not all numbers."""
    numbers = entry[key].values() if isinstance(entry[key], dict) else entry[key]
    try:
        values = np.fromiter(numbers, dtype="<f8", count=len(numbers))
    except (TypeError, ValueError):  # not all numbers: written whole
        return entry
    compact = {name: value for name, value in entry.items() if name != key}
    compact[as_key] = base64.b64encode(values.tobytes()).decode("ascii")
    return compact


def _last_complete_line_end(file) -> int:
    file.seek(0, os.SEEK_END)
    size = file.tell()
    if size == 0:
        return 0
    block = min(size, 1 << 16)
    while True:
        file.seek(size - block)
        tail = file.read(block)
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return size - block + newline + 1
        if block == size:
            return 0
        block = min(size, block * 4)
