"""Responsiveness: what the user waits for when nothing is wrong, and when the dashboard hangs.

    .venv/bin/python bench/responsiveness.py

- ``monitor --help``: wall time of the command, which must not import torch (it starts at once);
- ``step_end`` while the Visdom server is stopped with SIGSTOP for 5 s (it holds its port and
  answers nothing, the worst a dashboard can do): the slowest call, the 99.9th percentile and
  the median, over a loop of about 2 ms steps that logs a loss, two metrics and an image batch.

The tests check what must hold (the loop goes on, every point arrives after the server resumes);
the numbers are kept here, where this project keeps numbers.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import harness

MONITOR = Path(sys.executable).with_name("monitor")


@dataclass
class Result:
    help_s: float        # the best of a few runs of `monitor --help`
    steps: int
    worst_ms: float      # the slowest step_end while the server was stopped, or around it
    p999_ms: float
    median_ms: float
    delivered: bool      # every point on the server once it ran again


def help_seconds(runs: int = 3) -> float:
    command = [str(MONITOR)] if MONITOR.exists() else [sys.executable, "-m", "monitor.cli"]
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*command, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return min(times)


def step_end_while_stopped(server, seconds_before: float = 1.5, stopped: float = 5.0,
                           seconds_after: float = 1.5) -> tuple[list[float], bool]:
    from monitor import Monitor, Scalars, Images

    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as run_dir:
        monitor = Monitor([Scalars(), Images(every=25)], env="stopped", port=server.port, run_dir=run_dir,
                          flush_every=0.05)
        monitor.train_start()
        images = torch.rand(8, 3, 16, 16)
        hook_seconds: list[float] = []
        gc.collect()
        began = time.monotonic()
        paused = resumed = False
        while time.monotonic() - began < seconds_before + stopped + seconds_after:
            now = time.monotonic() - began
            if not paused and now > seconds_before:
                server.pause()
                paused = True
            if paused and not resumed and now > seconds_before + stopped:
                server.resume()
                resumed = True
            loss = torch.tensor(1.0 / (len(hook_seconds) + 1))
            time.sleep(0.002)  # the step's own work
            before = time.perf_counter()
            monitor.step_end(loss=loss, metrics={"lr": 0.1, "step": float(len(hook_seconds))}, inputs=images)
            hook_seconds.append(time.perf_counter() - before)
        delivered = monitor.flush(timeout=30)
        monitor.close()
    return hook_seconds, delivered


def run(server, progress=print, **pause) -> Result:
    progress("responsiveness: monitor --help")
    help_s = help_seconds()
    progress("responsiveness: step_end with the server stopped")
    seconds, delivered = step_end_while_stopped(server, **pause)
    ordered = sorted(seconds)
    return Result(help_s, len(seconds), ordered[-1] * 1e3, ordered[int(len(ordered) * 0.999)] * 1e3,
                  statistics.median(seconds) * 1e3, delivered)


def table(result: Result) -> str:
    return harness.markdown_table(
        ["measure", "value"],
        [["`monitor --help` (best of 3)", f"{result.help_s:.2f} s"],
         ["step_end calls (the server stopped for most of the run)", f"{result.steps}"],
         ["slowest step_end", f"{result.worst_ms:.2f} ms"],
         ["99.9th percentile step_end", f"{result.p999_ms:.2f} ms"],
         ["median step_end", f"{result.median_ms:.3f} ms"],
         ["every point delivered after the server ran again", "yes" if result.delivered else "**no**"]])


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with harness.local_server() as server:
        print(table(run(server)))


if __name__ == "__main__":
    main()
