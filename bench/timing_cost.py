"""Timing's cost: what the Timing callback takes of the training thread, against a bare step.

A cost of a microsecond or two is far below what comparing two runs of a loop can resolve (their
medians move by 1-3% between runs on this machine), so the hook is timed directly: its
``on_step_end`` is called ``--calls`` times as the Monitor calls it, with a live sink, and the
mean per call is set against the median bare step of the MLP and the CNN measured in the same
run. The worker's part (reading /proc for memory) is not on the training thread.

    .venv/bin/python bench/timing_cost.py [--calls 20000] [--steps 300]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

import harness
from overhead import WORKLOADS
from monitor import Monitor, Timing


def bare_step_us(name: str, steps: int) -> float:
    """The median step of the workload's plain loop, in microseconds."""
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs, targets = torch.rand(workload.input_shape), torch.randint(0, 10, (workload.input_shape[0],))
    times = []
    for _ in range(steps):
        began = time.perf_counter_ns()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter_ns() - began)
    return harness.median(times[steps // 10:]) / 1e3


def hook_us(every: int, calls: int, server, scratch: str) -> float:
    """Mean time of one Timing.on_step_end call (as step_end makes it), in microseconds."""
    model = nn.Linear(4, 4)
    monitor = Monitor([Timing(every=every)], env=f"timing-cost-{every}", server="http://127.0.0.1",
                      port=server.port, run_dir=f"{scratch}/{every}")
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    timing, state, log = monitor.callbacks[0], monitor.state, monitor.log
    inputs = torch.rand(64, 784)
    began = time.perf_counter()
    for step in range(1, calls + 1):
        state.step, state.inputs = step, inputs
        timing.on_step_end(state, log)
    spent = time.perf_counter() - began
    monitor.close()
    return spent / calls * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    harness.steady_allocator()
    bare = {name: bare_step_us(name, args.steps) for name in ("mlp", "cnn")}
    rows = []
    with harness.local_server() as server, tempfile.TemporaryDirectory() as scratch:
        for every in (1, 10):
            cost = hook_us(every, args.calls, server, scratch)
            rows.append([f"Timing(every={every})", f"{cost:.2f}"] +
                        [f"{100 * cost / bare[name]:.3f}% of {bare[name] / 1000:.2f} ms" for name in ("mlp", "cnn")])
    print(harness.markdown_table(["callback", "us per step (training thread)", "MLP step", "CNN step"], rows))


if __name__ == "__main__":
    main()
