"""Latency: time from a log call in the loop to the point being readable on the Visdom server.

A real loop trains the small CNN of bench/overhead.py (about 13 ms a step here, a core busy) with
``Monitor([Scalars(), LearningRate(), GradNorms(), Images(every=50)])`` and the sink's defaults
(``flush_every=0.5``). Just before each ``monitor.step_end(loss=...)`` the loop notes the time;
a poller thread asks the server for the ``loss`` window every ``poll_every`` seconds (20 ms) and
notes when each step's point first shows up. The latency of a step is the difference, measured
when that poll returned, so it can overstate by up to one poll interval plus a request. The run
stays under the window's 1000 points per trace, so no point is thinned away before it is seen.
We report p50, p95 and the maximum. Target: p95 <= 1 s.

    .venv/bin/python bench/latency.py
    .venv/bin/python bench/latency.py --steps 300
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import requests
import torch
from torch import nn

import harness
from overhead import WORKLOADS
from monitor.server import VisdomServer


class Poller(threading.Thread):
    """Reads one window over and over and notes when each x first appears."""

    def __init__(self, server: VisdomServer, env: str, window: str, every: float) -> None:
        super().__init__(name="latency-poller", daemon=True)
        self.url = f"{harness.server_url(server)}/win_data"
        self.body = json.dumps({"win": window, "eid": env})
        self.every = every
        self.seen: dict[float, float] = {}
        self.polls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        session.trust_env = False
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                answer = session.post(self.url, data=self.body, timeout=10)
                window = json.loads(answer.text)
            except (requests.RequestException, ValueError):  # no window yet: an HTML error page
                window = None
            now = time.monotonic()
            self.polls += 1
            if window is not None:
                for trace in window.get("content", {}).get("data", []):
                    for x in trace.get("x", []):
                        self.seen.setdefault(x, now)
            self.stop.wait(max(0.0, self.every - (time.monotonic() - began)))


@dataclass
class Result:
    steps: int
    seen: int
    p50_s: float
    p95_s: float
    max_s: float
    poll_every: float
    flush_every: float
    median_step_ms: float


def run(server: VisdomServer, steps: int = 900, poll_every: float = 0.02, workload: str = "cnn",
        progress: Callable[[str], None] = print) -> Result:
    from monitor import GradNorms, Images, LearningRate, Monitor, Scalars

    torch.set_num_threads(1)
    env = "bench-latency"
    spec = WORKLOADS[workload]
    torch.manual_seed(0)
    model = spec.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.rand(spec.input_shape), torch.randint(0, 10, (spec.input_shape[0],))) for _ in range(8)]
    logged: dict[int, float] = {}
    step_times = []
    poller = Poller(server, env, "loss", poll_every)
    with tempfile.TemporaryDirectory(prefix="monitor-bench-latency-") as run_dir:
        monitor = Monitor([Scalars(), LearningRate(), GradNorms(), Images()], env=env,
                          server="http://127.0.0.1", port=server.port, run_dir=run_dir)
        flush_every = getattr(monitor.sink, "flush_every", float("nan"))
        poller.start()
        monitor.train_start(model, optimizer)
        for step in range(1, steps + 1):
            inputs, targets = batches[step % len(batches)]
            began = time.perf_counter()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            logged[step] = time.monotonic()
            monitor.step_end(loss=loss, inputs=inputs.view(spec.image_shape), targets=targets)
            step_times.append(time.perf_counter() - began)
        monitor.train_end()
        monitor.close()
        deadline = time.monotonic() + 10
        while len(poller.seen) < steps and time.monotonic() < deadline:
            time.sleep(poll_every)
        poller.stop.set()
        poller.join()
    harness.delete_env(server, env)
    latencies = [poller.seen[step] - t for step, t in logged.items() if step in poller.seen]
    result = Result(steps, len(latencies), harness.percentile(latencies, 50), harness.percentile(latencies, 95),
                    max(latencies, default=float("nan")), poll_every, flush_every,
                    harness.median(step_times) * 1e3)
    progress(f"latency: {result}")
    return result


def table(result: Result) -> str:
    return harness.markdown_table(
        ["points seen/logged", "p50 s", "p95 s", "max s", "poll every s", "sink flush_every s", "median step ms"],
        [[f"{result.seen}/{result.steps}", f"{result.p50_s:.3f}", f"**{result.p95_s:.3f}**", f"{result.max_s:.3f}",
          f"{result.poll_every:g}", f"{result.flush_every:g}", f"{result.median_step_ms:.1f}"]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=900, help="steps of the loop (default 900; at most 1000)")
    parser.add_argument("--poll-every", type=float, default=0.02, help="seconds between reads (default 0.02)")
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 1000:
        parser.error(f"--steps must be between 1 and 1000 (the window's points per trace), got {args.steps}")
    with harness.local_server() as server:
        print(table(run(server, args.steps, args.poll_every)))


if __name__ == "__main__":
    main()
