"""Server scaling: what a long run costs the Visdom server, for the monitor and for naive appends.

A synthetic run (no model) logs ``traces`` scalars (4 by default) per step into one window, for
``steps`` steps (200k by default). Every ``block`` steps (250) the window is brought up to date on
the server, the cadence of a loop at 500 steps/s with the sink's ``flush_every=0.5``:

- ``monitor``: ``Log(VisdomSink(...)).scalars(...)`` each step and ``sink.flush()`` every block;
  the sink sends the window whole, thinned to at most ``points_per_trace`` (1000) per trace;
- ``naive``: one ``vis.line(X, Y, update="append")`` per block with the block's points, the
  cheapest way to use Visdom's append (a per-step append, as bench/overhead.py's naive mode does,
  makes 250 times as many requests). The window keeps every point, and visdom's server work per
  append grows with the points the window already holds, so this part stops at a time limit
  (``naive_seconds``, 60 s by default) and the cost at ``steps`` is extrapolated from a straight-line
  fit of server time against points held.

For each flush we take the server process's CPU time (all its threads, from /proc schedstat),
before and after, and the request's round trip. The table shows, at checkpoints of the run, the
median over the last 3 flushes of each, the points per trace the server holds (read back) and
the server's resident memory. Target: server time per flush at 200k steps within 2x of 1k steps.

    .venv/bin/python bench/server_scaling.py
    .venv/bin/python bench/server_scaling.py --steps 20000 --naive-seconds 10
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import harness
from monitor.server import VisdomServer

CHECKPOINTS = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)


@dataclass
class Flush:
    step: int
    server_ms: float   # server CPU used while the flush was handled
    request_ms: float  # the whole request, client encoding included


@dataclass
class Checkpoint:
    step: int
    server_ms: float        # median of the last 3 flushes up to here
    request_ms: float
    points_per_trace: int   # what the server holds, read back
    rss_mb: float


@dataclass
class Part:
    name: str
    checkpoints: list[Checkpoint]
    steps_done: int
    seconds: float
    fit: tuple[float, float] | None = None   # naive: server ms = a + b * points held
    stopped_early: bool = False


def _values(step: int, traces: int) -> dict[str, float]:
    """Deterministic, wiggly curves: a decaying loss-like shape plus a per-trace ripple."""
    return {f"metric {i}": 1.0 / math.sqrt(step) + 0.1 * math.sin(step / (50 + 7 * i)) for i in range(traces)}


def _checkpoint(server: VisdomServer, env: str, step: int, flushes: list[Flush]) -> Checkpoint:
    last = flushes[-3:]
    held = harness.plot_points(harness.window_data(server, env))
    per_trace = max((n for traces in held.values() for n in traces.values()), default=0)
    return Checkpoint(step, harness.median([f.server_ms for f in last]),
                      harness.median([f.request_ms for f in last]), per_trace, harness.server_rss_mb(server))


def run_monitor(server: VisdomServer, steps: int, traces: int, block: int,
                progress: Callable[[str], None]) -> Part:
    from monitor import Log, VisdomSink

    env = "bench-scaling-monitor"
    flushes: list[Flush] = []
    checkpoints: list[Checkpoint] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="monitor-bench-scaling-") as run_dir:
        sink = VisdomSink(env=env, server="http://127.0.0.1", port=server.port, run_dir=run_dir)
        post = sink.connection.post
        current: dict[str, float] = {}

        def timed_post(endpoint, message, *args, **kwargs):
            before_cpu, before = harness.server_cpu_s(server), time.perf_counter()
            try:
                return post(endpoint, message, *args, **kwargs)
            finally:
                if endpoint == "events":
                    current["server"] = current.get("server", 0.0) + harness.server_cpu_s(server) - before_cpu
                    current["request"] = current.get("request", 0.0) + time.perf_counter() - before

        sink.connection.post = timed_post  # measure each request the worker makes
        log = Log(sink)
        log.window("metrics", title="metrics", xlabel="step")
        for step in range(1, steps + 1):
            log.scalars("metrics", step, _values(step, traces))
            if step % block == 0:
                current.clear()
                if not sink.flush(timeout=60):
                    raise RuntimeError(f"the sink could not deliver by step {step}")
                if "server" in current:
                    flushes.append(Flush(step, current["server"] * 1e3, current["request"] * 1e3))
                if step in CHECKPOINTS or step == steps:
                    checkpoints.append(_checkpoint(server, env, step, flushes))
                    progress(f"monitor {step}: {checkpoints[-1]}")
        sink.close()
    harness.delete_env(server, env)
    return Part("monitor", checkpoints, steps, time.perf_counter() - began)


def run_naive(server: VisdomServer, steps: int, traces: int, block: int, seconds: float,
              progress: Callable[[str], None]) -> Part:
    from visdom import Visdom

    env = "bench-scaling-naive"
    vis = Visdom(server="http://127.0.0.1", port=server.port, env=env, use_incoming_socket=False,
                 raise_exceptions=True)
    names = list(_values(1, traces))
    flushes: list[Flush] = []
    checkpoints: list[Checkpoint] = []
    began = time.perf_counter()
    step = 0
    while step < steps and time.perf_counter() - began < seconds:
        xs, ys = [], []
        for step in range(step + 1, step + block + 1):
            xs.append([step] * traces)
            ys.append(list(_values(step, traces).values()))
        before_cpu, before = harness.server_cpu_s(server), time.perf_counter()
        vis.line(X=xs, Y=ys, win="metrics", update="append", opts={"title": "metrics", "legend": names})
        flushes.append(Flush(step, (harness.server_cpu_s(server) - before_cpu) * 1e3,
                             (time.perf_counter() - before) * 1e3))
        if step in CHECKPOINTS or step % 5000 == 0:
            checkpoints.append(_checkpoint(server, env, step, flushes))
            progress(f"naive {step}: {checkpoints[-1]}")
    if not checkpoints or checkpoints[-1].step != step:
        checkpoints.append(_checkpoint(server, env, step, flushes))
    held = [f.step * traces for f in flushes]  # points in the window when each append arrived
    fit = _line_fit([h - block * traces for h in held], [f.server_ms for f in flushes])
    harness.delete_env(server, env)
    return Part("naive", checkpoints, step, time.perf_counter() - began, fit, stopped_early=step < steps)


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares ``y = a + b * x``; None with fewer than 3 points."""
    if len(xs) < 3:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    variance = sum((x - mean_x) ** 2 for x in xs)
    if variance == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / variance
    return mean_y - slope * mean_x, slope


@dataclass
class Result:
    steps: int
    traces: int
    block: int
    monitor: Part
    naive: Part


def run(server: VisdomServer, steps: int = 200_000, traces: int = 4, block: int = 250, naive_seconds: float = 60.0,
        progress: Callable[[str], None] = print) -> Result:
    monitor = run_monitor(server, steps, traces, block, progress)
    naive = run_naive(server, steps, traces, block, naive_seconds, progress)
    return Result(steps, traces, block, monitor, naive)


def flatness(result: Result) -> float:
    """Server time per flush at the end of the run / at 1k steps (or the first checkpoint)."""
    points = result.monitor.checkpoints
    return points[-1].server_ms / points[0].server_ms if points and points[0].server_ms > 0 else math.nan


def table(result: Result) -> str:
    rows = []
    for part in (result.monitor, result.naive):
        for c in part.checkpoints:
            rows.append([part.name, f"{c.step:,}", f"{c.server_ms:.1f}", f"{c.request_ms:.1f}",
                         f"{c.points_per_trace:,}", f"{c.rss_mb:.0f}"])
    lines = [harness.markdown_table(["mode", "step", "server CPU ms per flush", "request ms per flush",
                                     "points per trace held", "server RSS MB"], rows), ""]
    lines.append(f"Monitor: server time per flush at {result.monitor.checkpoints[-1].step:,} steps is "
                 f"**{flatness(result):.2f}x** that at {result.monitor.checkpoints[0].step:,} steps "
                 f"(the {result.steps:,}-step run took {result.monitor.seconds:.0f} s).")
    naive = result.naive
    if naive.fit is not None:
        a, b = naive.fit
        at_end = a + b * result.steps * result.traces
        lines.append(f"Naive appends: stopped at {naive.steps_done:,} steps after {naive.seconds:.0f} s "
                     f"(time limit); server CPU per append fits {a:.1f} ms + {b * 1e3:.2f} us per point held, "
                     f"so one append at {result.steps:,} steps ({result.steps * result.traces:,} points held) "
                     f"would take about **{at_end / 1e3:.1f} s** of server time, and the whole run about "
                     f"{_naive_total(result) / 3600:.1f} h." if naive.stopped_early else
                     f"Naive appends: all {naive.steps_done:,} steps in {naive.seconds:.0f} s.")
    return "\n".join(lines)


def _naive_total(result: Result) -> float:
    """Seconds of server time for every append of the whole run, from the straight-line fit."""
    a, b = result.naive.fit
    appends = result.steps // result.block
    per_append = result.block * result.traces
    return sum(a + b * k * per_append for k in range(appends)) / 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps in the run (default 200000)")
    parser.add_argument("--traces", type=int, default=4, help="scalars per step (default 4)")
    parser.add_argument("--block", type=int, default=250, help="steps between flushes (default 250)")
    parser.add_argument("--naive-seconds", type=float, default=60.0,
                        help="time limit of the naive part (default 60)")
    args = parser.parse_args(argv)
    with harness.local_server() as server:
        result = run(server, args.steps, args.traces, args.block, args.naive_seconds)
    print(table(result))


if __name__ == "__main__":
    main()
