"""What the benchmarks share: a private Visdom server, reading back what it holds, stats, tables.

Every benchmark talks to a server it started itself on a free loopback port (``local_server``),
so runs stop by themselves and nothing leaves the machine. What arrived is read back from the
server's own state (``/win_data``), not taken from the client's word.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import requests

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # `python bench/x.py` from anywhere imports this checkout's monitor
    sys.path.insert(0, str(REPO))

from monitor.server import VisdomServer, start  # noqa: E402


@contextlib.contextmanager
def local_server() -> Iterator[VisdomServer]:
    """A fresh Visdom server on a free 127.0.0.1 port with a throwaway env folder; stopped after."""
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as env_path:
        with start(port=0, env_path=env_path) as server:
            yield server


def server_url(server: VisdomServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def window_data(server: VisdomServer, env: str, session: requests.Session | None = None) -> dict[str, dict]:
    """Every window of ``env`` as the server holds it (``{}`` when the env does not exist)."""
    post = (session or requests).post
    answer = post(f"{server_url(server)}/win_data", data=json.dumps({"win": None, "eid": env}), timeout=60)
    try:
        return json.loads(answer.text)
    except ValueError:  # visdom answers an HTML error page for an unknown env
        return {}


def plot_points(windows: dict[str, dict]) -> dict[str, dict[str, int]]:
    """``{window title: {trace name: points held}}`` for the plot windows among ``windows``."""
    held: dict[str, dict[str, int]] = {}
    for win, window in windows.items():
        if window.get("type") != "plot":
            continue
        title = window.get("title") or win
        traces = window.get("content", {}).get("data", [])
        held[title] = {trace.get("name", str(i)): len(trace.get("x", [])) for i, trace in enumerate(traces)}
    return held


def count_points(windows: dict[str, dict]) -> int:
    """All points held by the plot windows among ``windows``."""
    return sum(sum(traces.values()) for traces in plot_points(windows).values())


def delete_env(server: VisdomServer, env: str) -> None:
    requests.post(f"{server_url(server)}/delete_env", data=json.dumps({"eid": env}), timeout=60)


def server_rss_mb(server: VisdomServer) -> float:
    """Resident memory of the server process, in MB (Linux /proc)."""
    try:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
    except OSError:
        return math.nan
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kb / 1024


def server_cpu_s(server: VisdomServer) -> float:
    """CPU seconds the server process has used so far, all its threads (Linux schedstat, in ns)."""
    return _cpu_of(server.process.pid)


def process_cpu_s() -> float:
    """CPU seconds of this process, all threads together, and of its live sink processes
    (:class:`monitor.SinkProcess`'s children: the training process's logging, done elsewhere)."""
    return time.process_time() + sum(_cpu_of(pid) for pid in _sink_processes())


def _cpu_of(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _sink_processes() -> list[int]:
    mine = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid() and \
                    b"monitor.sink_child" in (stat.parent / "cmdline").read_bytes():
                mine.append(int(stat.parent.name))
    return mine


def page_faults() -> int:
    """Minor page faults of this process so far, all threads together."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_steady = False  # whether steady_allocator() took effect in this process


def steady_allocator() -> bool:
    """Keeps glibc from handing freed heap back to the system between training steps.

    With glibc's defaults, a PyTorch CPU loop's step time depends on where its tensors landed:
    the same small CNN, bare, took 9.5 ms a step with 8 page faults a step in one run and 12.5 ms
    with 1,000 in the next, as the memory of a step's activations went back to the system and
    was faulted in again. That noise would swamp a 3% overhead target, and it is the
    allocator's, not the logging's: benchmark processes call this first, and every mode runs
    under it alike (the overhead table still counts page faults per step). The same as running
    with MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ set; False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _steady
    m_trim_threshold, m_mmap_threshold = -1, -3
    _steady = bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))
    return _steady


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, memory, versions, date, commit."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kb / 2**20:.0f} GiB"
    import torch
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "monitor"], cwd=REPO, capture_output=True,
                             text=True).stdout.split("\n")
    changed = sorted(line[3:] for line in changed if line.strip())
    if changed:  # what was measured is not exactly the commit
        commit += f" with uncommitted changes to {', '.join(changed)}"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit,
        "cpu": f"{cpu}, {os.cpu_count()} cores (training loop, sink process and Visdom server share them)",
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__}, torch.set_num_threads(1)",
        "allocator": "glibc, trim and mmap thresholds raised for every mode (harness.steady_allocator)"
                     if _steady else "the system's defaults",
        "visdom": installed("visdom"),
        "tensorboard": installed("tensorboard"),
        "pytorch-ignite": installed("pytorch-ignite"),
    }
