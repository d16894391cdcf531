"""The ``monitor`` command run as a user runs it, in the background: ``serve`` and ``demo``."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_MONITOR = Path(sys.executable).with_name("monitor")  # the console script beside this Python
MONITOR_COMMAND = [str(_MONITOR)] if _MONITOR.exists() else [sys.executable, "-m", "monitor.cli"]


class ServeCommand:
    """``monitor serve`` running in the background, its stdout collected on a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*MONITOR_COMMAND, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
            # A shell may start background jobs with SIGINT ignored, which Python would keep.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def url(self, timeout: float = 60) -> str:
        """The dashboard URL the command printed once its server answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(r"http://127\.0\.0\.1:\d+[^\s(]*(?= )", line):  # and its path, if any
                    return match.group(0)
            if self.process.poll() is not None:
                raise AssertionError(f"monitor serve exited {self.process.returncode}: {self.process.stderr.read()}")
            time.sleep(0.05)
        raise AssertionError(f"monitor serve printed no URL within {timeout} s: {self.lines}")

    def finish(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig`` (SIGINT: Ctrl-C), wait; return the exit code and everything on stderr."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=15)
        return code, self.process.stderr.read()


class DemoCommand:
    """``monitor demo ARGS`` in ``cwd`` (``env`` added to the environment), its output collected.

        demo = DemoCommand("--port", "0", cwd=tmp_path)
        url = demo.wait_for("until Ctrl-C") and demo.url()
        code, stderr = demo.finish(signal.SIGINT)
    """

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [*MONITOR_COMMAND, "demo", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            # A shell may start background jobs with SIGINT ignored, which Python would keep.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """The first stdout line containing ``text``; fails if the command exits or times out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the readers catch up with the last lines
                if any(text in line for line in self.lines):
                    continue
                raise AssertionError(f"monitor demo exited {self.process.returncode} before printing {text!r}:\n"
                                     + "".join(self.lines) + "".join(self.stderr))
            time.sleep(0.05)
        raise AssertionError(f"monitor demo printed no {text!r} within {timeout} s:\n" + "".join(self.lines))

    def url(self) -> str:
        """The dashboard URL of the first line."""
        self.wait_for("Dashboard:")
        match = re.fullmatch(r"Dashboard: (http://127\.0\.0\.1:\d+/env/\S+)\n", self.lines[0])
        assert match, f"the first line is not the dashboard URL: {self.lines[0]!r}"
        return match.group(1)

    def finish(self, sig: int | None = signal.SIGINT, timeout: float = 120) -> tuple[int, str]:
        """Sends ``sig`` (None: none, let it end), waits; returns the exit code and all of stderr."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        time.sleep(0.1)
        return code, "".join(self.stderr)

    def kill(self) -> None:
        """SIGTERM (the demo stops the server it started), then SIGKILL if that is not enough."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
