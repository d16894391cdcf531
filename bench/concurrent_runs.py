"""Concurrent runs: N training runs at once, each its own process, all logging to one Visdom server.

For each N (1, 8, 32 and 64 by default) a fresh server starts (``harness.local_server``) and N
runs are forked from this process once it has imported monitor and torch, so they start in
seconds and share the libraries' memory; each is then a process of its own with its own
``Monitor([Scalars()], env=...)``, sink, worker thread, run log and connection, as N training
scripts would be. A run is a synthetic loop without a model: every ``step_ms`` (30 ms) it burns
``busy_ms`` (0.1 ms) of CPU (its own thread's clock), then calls
``monitor.step_end(loss=..., metrics={"accuracy": ..., "lr": ...})``: three floats, so three
windows of one trace each, into its own env. The runs wait until all N are ready, then loop
for ``seconds`` (30 s; at most 1000 steps, so the server holds every point unthinned) and
``close()``.

What is timed:

- **latency**: each run notes ``time.monotonic()`` just before each ``step_end``, and wraps its
  sink's ``connection.post`` to note when the server answered each window's request and the
  last x it carried. Visdom stores a window before it answers, so from that moment a
  ``/win_data`` read returns the point: the latency of a point is the first such answer at or
  after its x, minus its log call. This costs the server nothing extra, so it scales to 64 runs
  (a poller reading 64 envs at latency.py's 20 ms would itself be 3,200 requests a second). We
  report p50, p95 and the maximum over every point of every run and window. As a check, a poller
  (``latency.Poller``) reads run 0's ``loss`` window every ``poll_every`` s (0.1 s, so the server
  barely notices) and we report the p95 it sees for run 0, which can overstate by a poll interval;
- **CPU**: from the moment the runs start looping until the last one stops: the server process's
  CPU time (all threads, /proc schedstat) over that wall time, as a share of one core (Visdom's
  server handles requests on one tornado thread, so 100% is its ceiling); the runs' own CPU
  (every thread of every run process, ``time.process_time``); the whole machine's busy share of
  its cores (/proc/stat: anything else running counts too);
- **points lost**: after every run's ``close()``, each env is read back (``/win_data``) and each
  window's points compared, x and value, with what its run logged;
- the steps a run made per second (the target is ``1000 / step_ms``: fewer means the machine
  could not keep the loops on time), the server's requests per second and their median time,
  and the slowest ``close()``.

Must show: 64 runs with p95 <= 1 s and nothing lost, or the number of runs where that fails and
the bottleneck, named from the CPU shares (the server's one thread, or the machine's cores).

    .venv/bin/python bench/concurrent_runs.py                       # 1, 8, 32, 64 runs, about 2.5 minutes
    .venv/bin/python bench/concurrent_runs.py --runs 1,4 --seconds 5  # a quick look
    .venv/bin/python bench/concurrent_runs.py --sink process          # each run with the default SinkProcess

With ``--sink process`` each run has the default sink, a process of its own (two processes a run),
whose requests cannot be timed from the run: the latency is the poller's, for run 0, and the
request columns count its sends.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import harness
from latency import Poller
from monitor.server import VisdomServer

WINDOWS = ("loss", "accuracy", "lr")  # what Scalars makes of step_end(loss=..., metrics={accuracy, lr})
MAX_STEPS = 1000  # a window's points per trace: beyond it the sink thins the curve, and counting needs them all
TARGET_P95_S = 1.0


def _values(run: int, step: int) -> dict[str, float]:
    """A run's deterministic curves, so the read-back can check every value without being sent them."""
    loss = 2.0 / (1.0 + step / 100) + 0.05 * math.sin(step / 7 + run)
    return {"loss": loss, "accuracy": 1.0 - loss / 3, "lr": 0.1 * 0.999 ** step}


def _one_run(run: int, env: str, port: int, run_dir: str, seconds: float, step_s: float, busy_s: float,
             apart: bool, go: Any, out: Any) -> None:
    """One training run, in a process of its own: ready, wait for ``go``, loop, close, report."""
    from monitor import Monitor, Scalars, VisdomSink

    answered: dict[str, list[tuple[float, float]]] = {name: [] for name in WINDOWS}
    if apart:  # the default SinkProcess: its requests are made in its own process, where they cannot be timed
        monitor = Monitor([Scalars()], env=env, server="http://127.0.0.1", port=port, run_dir=run_dir)
        _loop(monitor, run, seconds, step_s, busy_s, go, out, answered, [])
        return
    # The sink in the run's own process, so that its requests can be timed here.
    monitor = Monitor([Scalars()], sink=VisdomSink(env, server="http://127.0.0.1", port=port, run_dir=run_dir))
    connection = monitor.sink.connection
    post = connection.post
    request_s: list[float] = []

    def noted_post(endpoint: str, message: dict, *args: Any, **kwargs: Any) -> str:
        answer = post(endpoint, message, *args, **kwargs)
        now = time.monotonic()
        request_s.append(connection.last_seconds)
        if endpoint == "events" and message.get("win") in answered:
            last = max((trace["x"][-1] for trace in message["data"] if trace.get("x")), default=None)
            if last is not None:
                answered[message["win"]].append((now, last))
        return answer

    connection.post = noted_post  # the worker's requests: when the server answered, and up to which x
    _loop(monitor, run, seconds, step_s, busy_s, go, out, answered, request_s)


def _loop(monitor: Any, run: int, seconds: float, step_s: float, busy_s: float, go: Any, out: Any,
          answered: dict[str, list[tuple[float, float]]], request_s: list[float]) -> None:
    child = getattr(getattr(monitor.sink, "_child", None), "pid", None)  # a SinkProcess's: its CPU is the run's

    def cpu_s() -> float:
        return time.process_time() + (harness._cpu_of(child) if child else 0.0)

    out.put(("ready", run, None))
    go.wait()
    logged: list[float] = []
    began, cpu = time.monotonic(), cpu_s()
    due = began
    for step in range(1, MAX_STEPS + 1):
        if time.monotonic() - began >= seconds:
            break
        burn = time.thread_time() + busy_s
        while time.thread_time() < burn:
            pass
        values = _values(run, step)
        logged.append(time.monotonic())
        monitor.step_end(loss=values["loss"], metrics={"accuracy": values["accuracy"], "lr": values["lr"]})
        due += step_s
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:  # behind: go on from now, no burst of steps to catch up
            due = time.monotonic()
    looped = time.monotonic()
    out.put(("looped", run, {"seconds": looped - began, "cpu_s": cpu_s() - cpu}))
    monitor.close(timeout=30)  # whether it all arrived is read back from the server
    if child:  # its sends (not each request), as of the close
        request_s += [timing.seconds for timing in monitor.sink.timings]
    out.put(("done", run, {"logged": logged, "answered": answered, "request_s": request_s,
                           "close_s": time.monotonic() - looped}))


class _Inbox:
    """The runs' messages, filed by kind as they come, whatever order they come in."""

    def __init__(self, messages: Any) -> None:
        self.messages = messages
        self.filed: dict[str, dict[int, Any]] = {}

    def wait(self, kind: str, count: int, timeout: float) -> dict[int, Any]:
        deadline = time.monotonic() + timeout
        while len(self.filed.get(kind, {})) < count:
            try:
                got, run, body = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"only {len(self.filed.get(kind, {}))} of {count} runs said {kind!r} "
                                   f"within {timeout:.0f} s") from None
            self.filed.setdefault(got, {})[run] = body
        return self.filed[kind]


def _machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores together so far (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def _latencies(logged: list[float], answers: list[tuple[float, float]]) -> list[float]:
    """For each step (x = 1, 2, ...) the first answer that carried it, minus its log call."""
    latencies, i = [], 0
    answers = sorted(answers)
    for step, when in enumerate(logged, start=1):
        while i < len(answers) and answers[i][1] < step:
            i += 1
        if i == len(answers):
            break
        latencies.append(answers[i][0] - when)
    return latencies


def _lost(windows: dict[str, dict], run: int, steps: int) -> int:
    """Points of ``run``'s windows that the server does not hold, or holds with another x or value."""
    lost = 0
    by_title = {w.get("title") or name: w for name, w in windows.items()}
    for name in WINDOWS:
        traces = by_title.get(name, {}).get("content", {}).get("data", [])
        # The values are the trace's last line of its name (a smoothed curve of that name comes first).
        held = dict(zip(traces[-1].get("x", []), traces[-1].get("y", []))) if traces else {}
        for step in range(1, steps + 1):
            y = held.get(step)
            if y is None or not math.isclose(y, _values(run, step)[name], rel_tol=1e-12):
                lost += 1
    return lost


@dataclass
class Row:
    runs: int
    steps_per_s: float      # median over the runs
    target_steps_per_s: float
    logged: int             # points, all runs and windows
    lost: int
    p50_s: float
    p95_s: float
    max_s: float
    polled_p95_s: float     # run 0's loss window, seen by the poller
    server_cores: float     # CPU share of the server process (1.0 = one core)
    runs_cores: float       # CPU share of all run processes together
    machine_cores: float    # busy share of the machine, everything on it
    other_cores: float      # of which neither the runs, the server nor this process (the poller)
    requests_per_s: float
    request_ms: float       # median
    close_s: float          # slowest
    seconds: float          # wall time of the loops


def measure(server: VisdomServer, runs: int, seconds: float = 30.0, step_ms: float = 30.0, busy_ms: float = 0.1,
            poll_every: float = 0.1, progress: Callable[[str], None] = print, apart: bool = False) -> Row:
    """``runs`` runs at once against ``server``; see the module docstring for what is timed."""
    import monitor.callbacks  # noqa: F401  (imported once here, before the fork, not in every run)

    context = multiprocessing.get_context("fork")  # torch is imported, no thread runs yet: cheap, safe
    go, messages = context.Event(), context.Queue()
    inbox = _Inbox(messages)
    envs = [f"bench-concurrent-{runs}-{i:02d}" for i in range(runs)]
    with tempfile.TemporaryDirectory(prefix="monitor-bench-concurrent-") as runs_dir:
        processes = [context.Process(target=_one_run, name=f"run-{i}", daemon=True,
                                     args=(i, env, server.port, os.path.join(runs_dir, env), seconds,
                                           step_ms / 1e3, busy_ms / 1e3, apart, go, messages))
                     for i, env in enumerate(envs)]
        poller = Poller(server, envs[0], "loss", poll_every)
        for process in processes:
            process.start()
        try:
            inbox.wait("ready", runs, timeout=60 + runs)
            poller.start()
            server_cpu, own_cpu, machine = harness.server_cpu_s(server), harness.process_cpu_s(), _machine_cpu()
            began = time.monotonic()
            go.set()
            looped = inbox.wait("looped", runs, timeout=seconds + 60)
            wall = time.monotonic() - began
            server_cpu = harness.server_cpu_s(server) - server_cpu
            own_cpu = harness.process_cpu_s() - own_cpu
            busy, total = (now - before for now, before in zip(_machine_cpu(), machine))
            done = inbox.wait("done", runs, timeout=60)
        finally:
            poller.stop.set()
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
        if poller.is_alive():
            poller.join()
    latencies, lost, logged = [], 0, 0
    for i, env in enumerate(envs):
        steps = len(done[i]["logged"])
        for name in WINDOWS:
            latencies += _latencies(done[i]["logged"], done[i]["answered"][name])
        logged += steps * len(WINDOWS)
        lost += _lost(harness.window_data(server, env), i, steps)
    polled = [poller.seen[step] - when for step, when in enumerate(done[0]["logged"], start=1) if step in poller.seen]
    request_s = [s for body in done.values() for s in body["request_s"]]
    runs_cpu = sum(body["cpu_s"] for body in looped.values())
    machine_cores = busy / total * (os.cpu_count() or 1)
    bench_cores = (server_cpu + runs_cpu + own_cpu) / wall
    steps_per_s = [len(done[i]["logged"]) / looped[i]["seconds"] for i in range(runs)]
    row = Row(runs=runs, steps_per_s=harness.median(steps_per_s),
              target_steps_per_s=1e3 / step_ms, logged=logged, lost=lost,
              p50_s=harness.percentile(latencies, 50), p95_s=harness.percentile(latencies, 95),
              max_s=max(latencies, default=math.nan), polled_p95_s=harness.percentile(polled, 95),
              server_cores=server_cpu / wall, runs_cores=runs_cpu / wall, machine_cores=machine_cores,
              other_cores=max(0.0, machine_cores - bench_cores), requests_per_s=len(request_s) / wall,
              request_ms=harness.median(request_s) * 1e3, close_s=max(body["close_s"] for body in done.values()),
              seconds=wall)
    progress(f"concurrent runs {runs}: {row}")
    return row


@dataclass
class Result:
    rows: list[Row]
    seconds: float
    step_ms: float
    busy_ms: float
    cores: int
    apart: bool = False


def run(counts: tuple[int, ...] = (1, 8, 32, 64), seconds: float = 30.0, step_ms: float = 30.0,
        busy_ms: float = 0.1, poll_every: float = 0.1, progress: Callable[[str], None] = print,
        apart: bool = False) -> Result:
    """Each count of runs against a fresh server of its own."""
    rows = []
    for runs in counts:
        with harness.local_server() as server:
            rows.append(measure(server, runs, seconds, step_ms, busy_ms, poll_every, progress, apart))
    return Result(rows, seconds, step_ms, busy_ms, os.cpu_count() or 1, apart)


def p95_s(row: Row) -> float:
    """Every point's p95; run 0's, polled, where the requests could not be timed (SinkProcess)."""
    return row.polled_p95_s if math.isnan(row.p95_s) else row.p95_s


def holds(row: Row) -> bool:
    return p95_s(row) <= TARGET_P95_S and row.lost == 0


def load(row: Row, cores: int) -> str:
    """Where the CPU went while the runs looped."""
    return (f"the server used {row.server_cores:.0%} of its one core ({row.requests_per_s:.0f} requests/s, "
            f"median {row.request_ms:.1f} ms each); the machine was busy {row.machine_cores:.0%} of {cores * 100}% "
            f"(the runs {row.runs_cores:.0%}, the server {row.server_cores:.0%}, other work {row.other_cores:.0%})")


def bottleneck(row: Row, cores: int) -> str:
    """The resource the numbers say ran out."""
    if row.server_cores >= 0.85:
        return "the Visdom server's one tornado thread, which handles every request in turn"
    if row.machine_cores >= 0.9 * cores:
        if row.other_cores > row.runs_cores + row.server_cores:
            return f"the machine's {cores} cores, taken mostly by other work on the machine (run it again when idle)"
        return f"the machine's {cores} cores, which the runs and the server share"
    return "no CPU: the sink's pacing (a window waits 10x its last request's time) under slow requests"


def verdict(result: Result) -> str:
    """Whether the largest N holds p95 <= 1 s with nothing lost; else where it first fails, and why."""
    failed = next((row for row in result.rows if not holds(row)), None)
    if failed is None:
        top = result.rows[-1]
        return (f"**{top.runs} runs hold**: p95 {p95_s(top):.2f} s (at most {TARGET_P95_S:g} s), "
                f"{top.lost} of {top.logged:,} points lost; {load(top, result.cores)}.")
    passed = [row.runs for row in result.rows if row.runs < failed.runs and holds(row)]
    return (f"**Fails at {failed.runs} runs** (p95 {p95_s(failed):.2f} s, {failed.lost} of {failed.logged:,} "
            f"points lost){f'; {passed[-1]} runs hold' if passed else ''}. Bottleneck: "
            f"{bottleneck(failed, result.cores)}: {load(failed, result.cores)}.")


def table(result: Result) -> str:
    rows = [[row.runs, f"{row.steps_per_s:.1f}/{row.target_steps_per_s:.1f}", f"{row.lost}/{row.logged:,}",
             f"{row.p50_s:.3f}", f"**{row.p95_s:.3f}**", f"{row.max_s:.3f}", f"{row.polled_p95_s:.3f}",
             f"{row.server_cores:.0%}", f"{row.runs_cores:.0%}", f"{row.machine_cores:.0%}", f"{row.other_cores:.0%}",
             f"{row.requests_per_s:.0f}", f"{row.request_ms:.1f}", f"{row.close_s:.2f}"]
            for row in result.rows]
    return "\n".join([
        harness.markdown_table(
            ["runs", "steps/s per run (median/target)", "points lost/logged", "p50 s", "p95 s", "max s",
             "p95 s, run 0 polled", "server CPU (% of a core)", "runs' CPU (% of a core)",
             f"machine busy (% of a core, of {result.cores * 100}%)", "other work (% of a core)", "server requests/s",
             "median request ms", "slowest close() s"], rows),
        "",
        f"Each run: a {result.step_ms:g} ms step ({result.busy_ms:g} ms of it CPU), 3 scalars a step in 3 "
        f"windows, for {result.seconds:g} s; CPU shares over the loops' wall time. "
        + ("Each run's sink in a process of its own (SinkProcess, the default; its CPU counted with its run's): "
           "latency from the poller alone, requests are its sends." if result.apart else
           "Each run's sink in the run's process (VisdomSink), so that its requests can be timed."),
        "",
        verdict(result)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="1,8,32,64", metavar="N,N,...",
                        help="numbers of concurrent runs, each against a fresh server (default 1,8,32,64)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds each run loops (default 30)")
    parser.add_argument("--step-ms", type=float, default=30.0, help="a run's step time in ms (default 30)")
    parser.add_argument("--busy-ms", type=float, default=0.1, help="CPU a run burns per step, in ms (default 0.1)")
    parser.add_argument("--poll-every", type=float, default=0.1,
                        help="seconds between the poller's reads of run 0's loss window (default 0.1)")
    parser.add_argument("--sink", choices=("thread", "process"), default="thread",
                        help="each run's sink in its own process (process: the default SinkProcess) or in a thread of "
                             "the run (thread: VisdomSink, whose requests are timed); default thread")
    args = parser.parse_args(argv)
    try:
        counts = tuple(int(n) for n in args.runs.split(","))
    except ValueError:
        parser.error(f"--runs must be numbers separated by commas, got {args.runs!r}")
    if not counts or min(counts) < 1:
        parser.error(f"--runs must be numbers >= 1, got {args.runs!r}")
    if not 0 < args.busy_ms < args.step_ms:
        parser.error(f"--busy-ms must be > 0 and below --step-ms ({args.step_ms:g}), got {args.busy_ms:g}")
    if args.seconds <= 0 or args.seconds * 1e3 / args.step_ms > MAX_STEPS:
        parser.error(f"--seconds must be > 0 and at most {MAX_STEPS} steps of --step-ms "
                     f"({MAX_STEPS * args.step_ms / 1e3:g} s: a window's points per trace), got {args.seconds:g}")
    print(table(run(counts, args.seconds, args.step_ms, args.busy_ms, args.poll_every, apart=args.sink == "process")))


if __name__ == "__main__":
    main()
