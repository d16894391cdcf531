"""Hook cost: what each callback adds to a training step, timed on alternate steps of one loop.

Comparing separate runs mixes the logging's cost with each run's own luck (memory layout, the
machine's other work), which moves an MLP step by several percent. Here one process trains one
model, calls the hooks on even steps only, and reports the median even step minus the median
odd step: the cost of the hooks, with everything else shared. (It slightly underestimates: an
odd step also pays for some of the cache the even step before it disturbed.) ``norms inline``
is the floor of any gradient-norm logging: the norms' arithmetic with no Python around it.
The second measure times the hook calls themselves on the even steps (``after_backward`` and
``step_end``, median of the steps): the training thread's time inside the monitor, which the
first measure's noise (some 5 us) hides; it leaves out what the sink's forwarder thread takes
from the loop by sharing the GIL, which only ``overhead.py`` sees.

    .venv/bin/python bench/hook_cost.py                 # NullSink; --live adds a real sink and server
    .venv/bin/python bench/hook_cost.py --model cnn --steps 1000 --repeats 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Callable

import torch
from torch import nn

import harness
from overhead import WORKLOADS, Workload
from monitor import GradNorms, Images, LearningRate, Monitor, Scalars, Timing
from monitor.log import NullSink

CASES: dict[str, Callable[[], list] | None] = {
    "norms inline": None,
    "a Monitor with no callbacks": lambda: [],
    "GradNorms()": lambda: [GradNorms()],
    "Scalars()": lambda: [Scalars()],
    "LearningRate()": lambda: [LearningRate()],
    "Timing(every=1)": lambda: [Timing(every=1)],
    "Timing()": lambda: [Timing()],
    "the benchmark's four callbacks": lambda: [Scalars(), LearningRate(), GradNorms(), Images(every=50, count=8)],
}


def added_us(workload: Workload, callbacks: Callable[[], list] | None, steps: int,
             sink_options: dict | None) -> tuple[float, float, float]:
    """Median even step (hooks called) minus median odd step (not called), that odd step, and the
    median time inside the hooks on the even steps, in us."""
    torch.manual_seed(0)
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = workload.input_shape[0]
    batches = [(torch.rand(workload.input_shape), torch.randint(0, 10, (batch,))) for _ in range(8)]
    params = list(model.parameters())
    monitor = None
    if callbacks is not None:
        monitor = Monitor(callbacks(), **(sink_options or {"sink": NullSink()}))
        monitor.train_start(model, optimizer)
    timed: tuple[list[int], list[int]] = ([], [])
    inside: list[int] = []
    for step in range(steps):
        inputs, targets = batches[step % len(batches)]
        hooks = step % 2 == 0
        began = time.perf_counter_ns()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        shown = inputs.view(workload.image_shape)
        hooked = time.perf_counter_ns()
        if hooks and monitor is not None:
            monitor.after_backward()
        elif hooks:
            [n.item() for n in torch._foreach_norm([p.grad for p in params], 2)]
        hooked = time.perf_counter_ns() - hooked
        optimizer.step()
        if hooks and monitor is not None:
            ended = time.perf_counter_ns()
            monitor.step_end(loss=loss, inputs=shown, targets=targets)
            hooked += time.perf_counter_ns() - ended
        timed[0 if hooks else 1].append(time.perf_counter_ns() - began)
        if hooks:
            inside.append(hooked)
    if monitor is not None:
        monitor.train_end()
        monitor.close()
    skip = steps // 20  # warm-up
    bare = harness.median(timed[1][skip:])
    return (harness.median(timed[0][skip:]) - bare) / 1e3, bare / 1e3, harness.median(inside[skip // 2:]) / 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=4000, help="steps per run, half of them with hooks")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--live", action="store_true", help="a VisdomSink and a local server instead of a NullSink")
    parser.add_argument("--cases", default="", metavar="TEXT", help="only the cases whose name contains TEXT")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    harness.steady_allocator()
    with harness.local_server() as server, tempfile.TemporaryDirectory() as scratch:
        rows = []
        for number, (name, callbacks) in enumerate(CASES.items()):
            if args.cases not in name:
                continue
            added, bare, inside = [], [], []
            for repeat in range(args.repeats):
                sink_options = ({"env": f"hook-cost-{number}-{repeat}", "server": "http://127.0.0.1",
                                 "port": server.port, "run_dir": scratch} if args.live else None)
                cost, step, hooks = added_us(WORKLOADS[args.model], callbacks, args.steps, sink_options)
                added.append(cost)
                bare.append(step)
                inside.append(hooks)
            rows.append([name, ", ".join(f"{a:.0f}" for a in added),
                         ", ".join(f"{100 * a / b:.2f}%" for a, b in zip(added, bare)),
                         ", ".join(f"{h:.1f}" for h in inside)])
    print(harness.markdown_table(["on the even steps", "us added to the step, per run", "share of a step",
                                  "us inside the hooks, per run"], rows))


if __name__ == "__main__":
    main()
