"""RunDir: a run's folder: the log of the run in progress, the earlier runs' logs kept aside, a lock.

    runs/mnist/
        runlog.jsonl            the run in progress (or the latest one)
        earlier/<run id>.jsonl  earlier runs of this env, set aside when a new run started
        .lock                   held by the live process writing runlog.jsonl
        checkpoints.json        the checkpoint folders outside it that its runs saved in

One env is one run at a time: a new run in an env starts its windows afresh and sets the
earlier run's log aside instead of appending to it (running a script twice with the same env
would otherwise draw both runs into one zigzag), and a second live process is refused,
naming the first. The lock is the operating system's (``flock``): it goes with the process
that held it, even a SIGKILLed one, so a killed run never leaves its env locked. A forked
child (a DataLoader worker) closes its copy of the lock at once: a ``flock`` lasts while any
copy is open, and workers that outlive their run, or persist into the next, held it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from monitor.atomic import write_atomic
from monitor.runlog import RunLog


_held: set[int] = set()  # the lock files' descriptors this process holds


def _close_inherited_locks() -> None:
    """In a forked child: lets go of the parent's locks (the parent keeps holding them)."""
    for fd in _held:
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


class FolderLock:
    """The operating system's lock on a file of a folder, held by the one live process writing there.

        lock = FolderLock(Path("runs/mnist/.lock"))
        holder = lock.take({"run_id": run_id})    # None: taken; else who holds it ("pid 42 on gpu1 ...")
        lock.release()
    """

    _mine: dict[Path, "FolderLock"] = {}  # the locks this process holds, by file

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def take(self, facts: dict[str, object], take_over: bool = False) -> str | None:
        """Takes the lock, writing who holds it; returns None, or who holds it if another does.

        ``take_over``: a lock this process holds on the same file through another FolderLock (a
        notebook cell run again) is let go of and taken.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        earlier = FolderLock._mine.get(self.path.resolve())
        if take_over and earlier is not None and earlier is not self:
            earlier.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace")
            os.close(fd)
            return _describe(holder)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **facts,
                                     "since": time.time()}).encode())
        except OSError as error:  # a full disk: os.write's error names no file
            os.close(fd)
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self.fd = fd
        _held.add(fd)
        FolderLock._mine[self.path.resolve()] = self
        return None

    def release(self) -> None:
        """Lets another process take it (closing the file releases the lock). Idempotent."""
        if self.fd is not None:
            _held.discard(self.fd)
            os.close(self.fd)
            self.fd = None
            if FolderLock._mine.get(self.path.resolve()) is self:
                del FolderLock._mine[self.path.resolve()]

    def holder_ended(self) -> bool:
        """Whether the training process the lock names, on this host, has ended (its holder, a
        sink's process, is finishing on its own)."""
        try:
            facts = json.loads(self.path.read_text())
            if facts["host"] != socket.gethostname():
                return False
            os.kill(int(facts["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return False

    def held_for(self, pid: int) -> bool:
        """Whether the lock names ``pid``, on this host, as its training process (held by a sink
        of that process that is ending: one whose close a Ctrl-C interrupted lets go on its own)."""
        try:
            facts = json.loads(self.path.read_text())
            return facts["host"] == socket.gethostname() and int(facts["pid"]) == pid
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def is_held(self) -> bool:
        """Whether a live process holds the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


class RunInUseError(RuntimeError):
    """Another live process is writing this run folder (the same env, in the same place)."""


class RunDir:
    """The folder of one env's runs; the sink takes it with :meth:`lock` and lets go in :meth:`unlock`.

        folder = RunDir("runs/mnist")
        folder.lock(run_id, "mnist")        # RunInUseError if another live process holds it
        kept = folder.set_aside()           # runs/mnist/earlier/<its run id>.jsonl, or None
    """

    EARLIER = "earlier"
    LOCK = ".lock"
    CHECKPOINTS = "checkpoints.json"
    ENDING = 15.0  # seconds: a sink whose training process ended sends for at most 10 s (twice its timeout)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.log_path = self.path / RunLog.FILENAME
        self._lock = FolderLock(self.path / self.LOCK)

    def lock(self, run_id: str, env: str, pid: int | None = None) -> None:
        """Makes this process the folder's only writer, for the training process ``pid`` (by default
        this one); raises RunInUseError naming the one that is.

        A holder whose training process has ended (killed: its sink's process still writes and
        sends what it was handed) is waited for, up to ``ENDING`` seconds: a killed job started
        again at once continues its run. So is one of this process's own sinks, still ending.
        """
        facts = {"run_id": run_id, "pid": pid or os.getpid()}
        deadline = time.monotonic() + self.ENDING
        holder = self._lock.take(facts)
        while holder is not None and time.monotonic() < deadline and (
                self.training_ended() or self._lock.held_for(facts["pid"])):
            time.sleep(0.1)
            holder = self._lock.take(facts)
        if holder is not None:
            raise RunInUseError(f"env {env!r} must have one live run at a time, got another one "
                                f"writing to {self.path}: {holder}; stop it, or use another env")

    def unlock(self) -> None:
        """Lets another process write here. Idempotent."""
        self._lock.release()

    def is_live(self) -> bool:
        """Whether a live process holds the folder (one that is writing its run log now)."""
        return self._lock.is_held()

    def training_ended(self) -> bool:
        """Whether the folder's holder is the sink of a training process that has ended (killed:
        the sink's process still writes and sends what it was handed)."""
        return self._lock.holder_ended()

    def set_aside(self) -> Path | None:
        """Moves the latest run's log to ``earlier/<its run id>.jsonl``; returns where, or None if
        there was no run (no log, or only its first line)."""
        try:
            with open(self.log_path, "rb") as file:
                first, second = file.readline(), file.readline()
        except FileNotFoundError:
            return None
        if not second:
            self.log_path.unlink()
            return None
        try:
            header = json.loads(first)
        except ValueError:
            header = {}
        run_id = header.get("run_id") if isinstance(header, dict) else None
        name = run_id if isinstance(run_id, str) and run_id.isalnum() else f"before-{int(self.log_path.stat().st_mtime)}"
        kept = self.path / self.EARLIER / f"{name}.jsonl"
        kept.parent.mkdir(exist_ok=True)
        os.replace(self.log_path, kept)
        return kept

    def run_id(self) -> str | None:
        """The run id in the latest run's log header; None without a log (or a header)."""
        try:
            with open(self.log_path, "rb") as file:
                header = json.loads(file.readline())
        except (OSError, ValueError):
            return None
        return header.get("run_id") if isinstance(header, dict) else None

    def earlier_log(self, run_id: str) -> Path | None:
        """The log of the earlier run ``run_id``, if the folder keeps it."""
        kept = self.path / self.EARLIER / f"{run_id}.jsonl"
        return kept if run_id.isalnum() and kept.is_file() else None

    def bring_back(self, kept: Path) -> Path | None:
        """Makes an earlier run's log (``earlier_log``) the latest again, a run resumed after a
        later run of its env began: the latest run's is set aside first; returns where (None: no run)."""
        later = self.set_aside()
        os.replace(kept, self.log_path)
        return later

    def note_checkpoints(self, folder: Path) -> None:
        """Records that a run of this env saves checkpoints in ``folder``, where it is not inside
        this one (``Checkpoint("ckpt/")``): ``monitor runs`` counts them from here."""
        folder = folder.absolute()
        if folder.is_relative_to(self.path.absolute()) or folder in self.checkpoint_folders():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        listed = [str(path) for path in self.checkpoint_folders()] + [str(folder)]
        write_atomic(self.path / self.CHECKPOINTS, lambda file: file.write(json.dumps(listed).encode()))

    def checkpoint_folders(self) -> list[Path]:
        """The checkpoint folders outside this one that its runs saved in (:meth:`note_checkpoints`)."""
        try:
            listed = json.loads((self.path / self.CHECKPOINTS).read_text())
        except (OSError, ValueError):
            return []
        return [Path(entry) for entry in listed if isinstance(entry, str)] if isinstance(listed, list) else []

    def earlier(self) -> list[Path]:
        """The logs of the env's earlier runs, oldest first."""
        folder = self.path / self.EARLIER
        return sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


def _describe(holder: str) -> str:
    try:
        facts = json.loads(holder)
        return f"pid {facts['pid']} on {facts['host']}" + (f" (run {facts['run_id']})" if facts.get("run_id") else "")
    except (ValueError, KeyError, TypeError):
        return "a process that did not say which"
