"""A deep model: 161 parameter layers, GradNorms every step. Step-time ratio and bytes per message.

    .venv/bin/python bench/deep_model.py [--steps 300] [--repeats 3] [--width 64] [--kind conv]

The model is built here (no download): 80 blocks of Linear(64, 64) + LayerNorm(64) and a head,
161 modules that own parameters, as many as ResNet-50 or GPT-2 small; small layers, so a step is
short and a per-layer cost shows: the hardest case, with few operations per parameter (a batch
of 32 rows). ``--kind conv`` builds 80 blocks of Conv2d(16, 16, 3) + BatchNorm2d(16) on 8 x 8
images and a head instead, each weight used at every pixel as in a ResNet (a batch of 8), and
``--width`` is then the channels. Three modes alternate: bare; the floor, a bare loop that itself
takes every parameter's gradient norm as GradNorms does (``monitor.norms.each_norm``: stacks of
the small parameters alike, read on the training thread), what no per-layer gradient norm can go below; and the monitor
(Scalars and GradNorms every step, a live server). Each repetition runs a floor and a monitor
block between two bare blocks; a ratio is the median over repetitions of the block's median step
over the mean of the two bare medians beside it (paired: the machine's drift between blocks cancels).
The step times in the table are the modes' medians, pooled. The message size is the grad-norm window's, as the sink would send it at the end.

``loop off-CPU`` is, per step, the wall time less the training thread's own CPU time, averaged:
the time the loop waited, for the GIL (held by the sink's worker, in the same process) or for a
core (taken by the worker, the server or the machine's other work). A bare loop's is about 0;
the monitor's says what its worker takes from the loop, and is far less disturbed by the
machine's drift than a ratio of step times, which moved by 5% between blocks a few seconds apart.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import harness
from monitor.norms import each_norm, stacks_of
from monitor.runlog import RunLog
from monitor.windows import Windows

BLOCKS = 80


SIDE = 8  # pixels of the conv model's images


def deep_model(width: int = 64, kind: str = "linear") -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(BLOCKS):
        if kind == "conv":
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        else:
            layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
    head = [nn.Flatten(), nn.Linear(width * SIDE * SIDE, 10)] if kind == "conv" else [nn.Linear(width, 10)]
    return nn.Sequential(*layers, *head)


def _batch(model: nn.Module) -> torch.Tensor:
    first = model[0]
    if isinstance(first, nn.Conv2d):
        return torch.randn(8, first.in_channels, SIDE, SIDE)
    return torch.randn(32, first.in_features)


@dataclass
class Result:
    layers: int
    width: int
    kind: str
    steps: int
    bare_ms: float
    floor_ms: float
    monitor_ms: float
    bare_off_us: float
    monitor_off_us: float
    ratio: float
    floor_ratio: float
    message_kb: float
    shown: str


def _steps(model: nn.Module, steps: int, monitor=None, floor: bool = False,
           off_cpu: list[float] | None = None) -> list[float]:
    """Step times in seconds; ``off_cpu`` (if given) gets each step's wall time less the thread's CPU time."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = _batch(model)
    y = torch.randint(0, 10, (len(x),))
    loss_fn = nn.CrossEntropyLoss()
    parameters = list(model.parameters())
    stacks = stacks_of(parameters)
    if monitor is not None:
        monitor.train_start(model, optimizer)
    times = []
    for _ in range(steps):
        began, cpu = time.perf_counter(), time.thread_time()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.after_backward()
        if floor:
            assert each_norm([p.grad for p in parameters], stacks)
        optimizer.step()
        if monitor is not None:
            monitor.step_end(loss=loss)
        times.append(time.perf_counter() - began)
        if off_cpu is not None:
            off_cpu.append(times[-1] - (time.thread_time() - cpu))
    return times


def run(server, steps: int = 300, repeats: int = 3, warmup: int = 30, width: int = 64, kind: str = "linear",
        progress=print) -> Result:
    from monitor import GradNorms, Monitor, Scalars

    torch.set_num_threads(1)
    model = deep_model(width, kind)
    layers = sum(1 for m in model.modules() if any(True for _ in m.parameters(recurse=False)))
    bare, floor, monitored, message, shown = [], [], [], 0, ""
    bare_off: list[float] = []
    monitor_off: list[float] = []
    _steps(model, warmup)
    bare.append(_steps(model, steps, off_cpu=bare_off))
    for repeat in range(repeats):
        progress(f"deep model: repetition {repeat + 1} of {repeats}")
        floor.append(_steps(model, steps, floor=True))
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as run_dir:
            monitor = Monitor([Scalars(), GradNorms()], env=f"deep-{repeat}", port=server.port, run_dir=run_dir)
            off: list[float] = []
            monitored.append(_steps(model, steps + warmup, monitor, off_cpu=off)[warmup:])
            monitor_off += off[warmup:]
            monitor.close(timeout=60)
            windows = Windows(run_dir=run_dir)  # as the sink's process held them: built from the run log
            windows.apply(RunLog.read(Path(run_dir) / RunLog.FILENAME))
            window = windows.by_name["grad norm"]
            message = max(message, len(json.dumps(window.message("e")[1], separators=(",", ":"))))
            shown = (f"heatmap of {len(window.grid.xs)} columns" if window.grid is not None else
                     f"{max(len(t) for name, t in window.traces.items() if name != 'total')} points per layer")
        bare.append(_steps(model, steps, off_cpu=bare_off))
    median = statistics.median
    # Each repetition's floor and monitor blocks against the bare blocks either side of them.
    around = [(median(before) + median(after)) / 2 for before, after in zip(bare, bare[1:])]
    ratio = median(median(block) / base for block, base in zip(monitored, around))
    floor_ratio = median(median(block) / base for block, base in zip(floor, around))
    pooled = {name: median([t for block in blocks for t in block]) * 1e3
              for name, blocks in (("bare", bare), ("floor", floor), ("monitor", monitored))}
    return Result(layers, width, kind, steps * repeats, pooled["bare"], pooled["floor"], pooled["monitor"],
                  statistics.mean(bare_off) * 1e6, statistics.mean(monitor_off) * 1e6, ratio, floor_ratio,
                  message / 1e3, shown)


def table(results: list[Result]) -> str:
    return harness.markdown_table(
        ["model", "steps timed (each mode)", "bare median ms", "floor (norms alone) ms", "monitor median ms",
         "floor ratio", "monitor ratio", "loop off-CPU us/step (bare, monitor)", "grad-norm message", "window shows"],
        [[f"{result.layers} layers ({_blocks(result)})", result.steps, f"{result.bare_ms:.2f}",
          f"{result.floor_ms:.2f}", f"{result.monitor_ms:.2f}", f"{result.floor_ratio:.3f}x",
          f"**{result.ratio:.3f}x**", f"{max(0.0, result.bare_off_us):.0f}, {max(0.0, result.monitor_off_us):.0f}",
          f"{result.message_kb:.0f} KB", result.shown] for result in results])


def _blocks(result: Result) -> str:
    if result.kind == "conv":
        return f"Conv2d({result.width}, {result.width}, 3) + BatchNorm2d on {SIDE} x {SIDE}"
    return f"Linear({result.width}, {result.width}) + LayerNorm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=None,
                        help="the layers' width, or the conv model's channels (default 64, or 16 for conv)")
    parser.add_argument("--kind", default="linear", choices=("linear", "conv"))
    args = parser.parse_args()
    width = args.width or (16 if args.kind == "conv" else 64)
    harness.steady_allocator()
    with harness.local_server() as server:
        print(table([run(server, steps=args.steps, repeats=args.repeats, width=width, kind=args.kind)]))


if __name__ == "__main__":
    main()
