"""Overhead: what logging costs a plain training loop, and whether every point arrives.

One plain loop (forward, loss, zero_grad, backward, [after-backward logging], optimizer.step,
[step-end logging]) trains two models on synthetic in-memory data with ``torch.set_num_threads(1)``:

- ``mlp``: ``nn.Sequential(Linear(784, 256), ReLU, Linear(256, 10))``, batch 64;
- ``cnn``: a custom Module, two 3x3 convs (3->16->32) each followed by 2x2 max-pooling, then two
  linear layers, on 3x32x32 images, batch 32.

Every step logs the loss, the learning rate, each layer's gradient norm and the total; every 50
steps (steps 1, 51, 101, ...) a grid of the batch's first 8 images. The modes:

- ``bare``: no logging at all, the reference;
- ``monitor``: ``Monitor([Scalars(), LearningRate(), GradNorms(), Images(every=50)])``;
- ``naive``: direct visdom client calls on the loop's thread, as a first script would do them:
  ``vis.line(..., update="append")`` per window per step, ``vis.images`` for the grid;
- ``batched``: the small batched Visdom logger of ``reference_logger.py`` (about 80 lines: the
  norms in one ``_foreach_norm`` and one ``stack``, read on the loop's thread, sent by a thread
  every 0.5 s as one append per window), the bar a careful user sets in an afternoon;
- ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter``: ``add_scalar`` per value,
  ``add_images`` for the grid;
- ``ignite``: pytorch-ignite's ``VisdomLogger`` with its ``OutputHandler`` (loss),
  ``OptimizerParamsHandler`` (lr) and ``GradsScalarHandler`` (its own per-parameter norms; ignite
  has no per-layer or total norm), called from the same plain loop through a bare ``Engine``
  whose state carries the step; ignite has no image handler, so the grid goes through the
  logger's own client (``logger.vis.images``). Its client is made without the incoming socket,
  which ignite does not use.

Runs are interleaved, ``bare, A, bare, B, ...``, and the whole sequence repeated (5 times by
default: with 3, a mode's median moved by up to +-0.04 from one run of the benchmark to the
next), each run on a fresh model with the same seed. The monitor, whose targets the benchmark
checks, gets ``MONITOR_RUNS`` pairs ``bare, monitor`` per repetition: one run's median step
scatters by +-6% here whatever the mode, so 5 runs leave its ratio +-3% off, 15 about +-1.5%.
Each run does ``warmup`` untimed steps, then ``steps`` timed ones; a step's time covers the
whole step including its logging calls. We report the median step time over every timed step
of a mode's runs and its ratio to the median of all bare runs (the mean too: periodic costs
such as a grid every 50 steps hide from a median), the points delivered/expected, read back from the Visdom server after ``close()`` for
visdom-based modes and counted in the event files for TensorBoard, and the time from the loop's
end until ``close()`` returns. ``loop off-CPU`` is, per step, the wall time less the loop
thread's CPU time, averaged: what a logger's threads take from the loop (the GIL they hold, a
core), measured inside each run, so the machine's drift between runs hardly moves it.

    .venv/bin/python bench/overhead.py                   # full run, prints a markdown table
    .venv/bin/python bench/overhead.py --steps 20 --warmup 5 --repeats 1   # a quick look
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import harness
from monitor.server import VisdomServer

GRID_EVERY = 50
GRID_COUNT = 8
MODES = ("monitor", "batched", "naive", "tensorboard", "ignite")
MONITOR_RUNS = 3  # pairs (bare, monitor) per repetition; the other modes get one


class SmallCNN(nn.Module):
    """Two 3x3 convs with max-pooling, two linear layers: 3x32x32 -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@dataclass
class Workload:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]   # one batch
    image_shape: tuple[int, ...]   # how the batch is shown as images (a view)


WORKLOADS = {
    "mlp": Workload("mlp", lambda: nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)),
                    (64, 784), (64, 1, 28, 28)),
    "cnn": Workload("cnn", SmallCNN, (32, 3, 32, 32), (32, 3, 32, 32)),
}


def grid_due(step: int) -> bool:
    return (step - 1) % GRID_EVERY == 0


def layers_of(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Modules that own parameters, with their parameters: what a script would loop over."""
    return [(name, list(module.parameters(recurse=False))) for name, module in model.named_modules()
            if next(module.parameters(recurse=False), None) is not None]


def layer_grad_norms(layers: list[tuple[str, list[nn.Parameter]]]) -> list[float]:
    """Each layer's gradient norm, then the total, as plain floats: the usual hand-written way."""
    norms = [torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) for _, params in layers]
    total = torch.linalg.vector_norm(torch.stack(norms))
    return [n.item() for n in norms] + [total.item()]


class Mode:
    """One way of logging, driven by the loop; the default logs nothing (``bare``)."""

    name = "bare"

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...
    def after_backward(self, step: int) -> None: ...
    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None: ...
    def close(self) -> None: ...

    def delivered(self) -> tuple[int, int] | None:
        """(points delivered, points expected), or None when nothing is logged."""
        return None


class MonitorMode(Mode):
    name = "monitor"

    def __init__(self, server: VisdomServer, env: str, run_dir: Path) -> None:
        self.server, self.env, self.run_dir = server, env, run_dir
        self.steps = 0

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from monitor import GradNorms, Images, LearningRate, Monitor, Scalars
        self.traces = 2 + len(layers_of(model)) + 1   # loss, lr, per-layer, total
        self.monitor = Monitor([Scalars(), LearningRate(), GradNorms(), Images(every=GRID_EVERY, count=GRID_COUNT)],
                               env=self.env, server="http://127.0.0.1", port=self.server.port,
                               run_dir=self.run_dir)
        self.monitor.train_start(model, optimizer)

    def after_backward(self, step: int) -> None:
        self.monitor.after_backward()

    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.monitor.step_end(loss=loss, inputs=images, targets=targets)
        self.steps = step

    def close(self) -> None:
        self.monitor.train_end()
        self.monitor.close()

    def delivered(self) -> tuple[int, int]:
        return harness.count_points(harness.window_data(self.server, self.env)), self.steps * self.traces


class NaiveVisdomMode(Mode):
    """What a first script does: one visdom call per window per step, on the loop's thread."""

    name = "naive"

    def __init__(self, server: VisdomServer, env: str) -> None:
        self.server, self.env = server, env
        self.steps = 0

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from visdom import Visdom
        self.vis = Visdom(server="http://127.0.0.1", port=self.server.port, env=self.env,
                          use_incoming_socket=False, raise_exceptions=True)
        self.optimizer, self.layers = optimizer, layers_of(model)
        self.legend = [name for name, _ in self.layers] + ["total"]
        self.traces = 2 + len(self.legend)

    def after_backward(self, step: int) -> None:
        norms = layer_grad_norms(self.layers)
        self.vis.line(X=[[step] * len(norms)], Y=[norms], win="grad norm", update="append",
                      opts={"title": "grad norm", "legend": self.legend})

    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.vis.line(X=[step], Y=[loss.item()], win="loss", update="append", opts={"title": "loss"})
        self.vis.line(X=[step], Y=[self.optimizer.param_groups[0]["lr"]], win="learning rate",
                      update="append", opts={"title": "learning rate"})
        if grid_due(step):
            self.vis.images(images[:GRID_COUNT], win="inputs", opts={"title": "inputs"})
        self.steps = step

    def delivered(self) -> tuple[int, int]:
        return harness.count_points(harness.window_data(self.server, self.env)), self.steps * self.traces


class BatchedMode(NaiveVisdomMode):
    """The small batched logger of ``reference_logger.py``, on the naive mode's client."""

    name = "batched"

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from reference_logger import BatchedLogger
        super().start(model, optimizer)
        self.logger = BatchedLogger(self.vis)

    def after_backward(self, step: int) -> None:
        self.logger.norms(step, self.layers)

    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.logger.scalars("loss", step, {"loss": loss.item()})
        self.logger.scalars("learning rate", step, {"lr": self.optimizer.param_groups[0]["lr"]})
        if grid_due(step):
            self.logger.images("inputs", images[:GRID_COUNT])
        self.steps = step

    def close(self) -> None:
        self.logger.close()


class TensorBoardMode(Mode):
    name = "tensorboard"

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.steps = 0

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.logdir))
        self.optimizer, self.layers = optimizer, layers_of(model)
        self.tags = [f"grad norm/{name}" for name, _ in self.layers] + ["grad norm/total"]
        self.traces = 2 + len(self.tags)

    def after_backward(self, step: int) -> None:
        for tag, norm in zip(self.tags, layer_grad_norms(self.layers)):
            self.writer.add_scalar(tag, norm, step)

    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.writer.add_scalar("loss", loss.item(), step)
        self.writer.add_scalar("learning rate", self.optimizer.param_groups[0]["lr"], step)
        if grid_due(step):
            self.writer.add_images("inputs", images[:GRID_COUNT], step)
        self.steps = step

    def close(self) -> None:
        self.writer.close()

    def delivered(self) -> tuple[int, int]:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        scalars = 0
        for path in self.logdir.glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(path)).Load():
                scalars += sum(1 for value in event.summary.value if value.tag != "inputs")
        return scalars, self.steps * self.traces


class IgniteMode(Mode):
    """pytorch-ignite's VisdomLogger and handlers, called from the plain loop through a bare Engine."""

    name = "ignite"

    def __init__(self, server: VisdomServer, env: str) -> None:
        self.server, self.env = server, env
        self.steps = 0

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from ignite.engine import Engine, Events
        from ignite.handlers.visdom_logger import (GradsScalarHandler, OptimizerParamsHandler,
                                                   OutputHandler, VisdomLogger)
        self.event = Events.ITERATION_COMPLETED
        self.engine = Engine(lambda engine, batch: None)
        # Without the incoming socket: ignite never uses it, and after the server stops, the socket's
        # thread would keep reconnecting for the rest of the process.
        self.logger = VisdomLogger(server="http://127.0.0.1", port=self.server.port, env=self.env,
                                   use_incoming_socket=False)
        self.loss_handler = OutputHandler(tag="training", output_transform=lambda loss: {"loss": loss})
        self.lr_handler = OptimizerParamsHandler(optimizer)
        self.grads_handler = GradsScalarHandler(model)
        self.traces = 2 + sum(1 for p in model.parameters() if p.requires_grad)

    def after_backward(self, step: int) -> None:
        self.engine.state.iteration = step
        self.grads_handler(self.engine, self.logger, self.event)

    def step_end(self, step: int, loss: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.engine.state.output = loss.item()
        self.loss_handler(self.engine, self.logger, self.event)
        self.lr_handler(self.engine, self.logger, self.event)
        if grid_due(step):
            self.logger.vis.images(images[:GRID_COUNT], win="inputs", env=self.env, opts={"title": "inputs"})
        self.steps = step

    def close(self) -> None:
        # VisdomLogger.close() is these two calls; between them we read what reached the server,
        # because vis.close() closes every window of the env (the env file its handlers saved
        # after each call keeps what it held at the last save).
        self.logger.executor.shutdown()
        began = time.perf_counter()
        self.held = harness.count_points(harness.window_data(self.server, self.env))
        self.reading_s = time.perf_counter() - began
        self.logger.vis.close()

    def delivered(self) -> tuple[int, int]:
        return self.held, self.steps * self.traces


@dataclass
class Run:
    mode: str
    step_times: list[float]
    cpu_s: float           # CPU per timed step: this process's threads, its sink process and the server, together
    off_cpu_us: float      # per timed step, the wall time less the loop thread's CPU time, averaged
    faults: float          # minor page faults of this process per timed step
    close_s: float
    delivered: tuple[int, int] | None


def train(workload: Workload, mode: Mode, steps: int, warmup: int, server: VisdomServer | None = None,
          seed: int = 0) -> Run:
    """The plain loop: ``warmup`` untimed steps, then ``steps`` timed ones, then ``mode.close()``.

    ``server`` is only read for its CPU time, which counts in ``Run.cpu_s`` (per timed step).
    """
    torch.manual_seed(seed)
    model = workload.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    batches = [(torch.rand(workload.input_shape), torch.randint(0, 10, (workload.input_shape[0],)))
               for _ in range(8)]
    mode.start(model, optimizer)
    times, off_cpu = [], []
    cpu_before, faults_before = 0.0, 0
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            cpu_before, faults_before = _cpu(server), harness.page_faults()
        inputs, targets = batches[step % len(batches)]
        began, thread_cpu = time.perf_counter(), time.thread_time()
        plain_step(workload, model, optimizer, scheduler, mode, step, inputs, targets)
        times.append(time.perf_counter() - began)
        off_cpu.append(times[-1] - (time.thread_time() - thread_cpu))
    loop_end = time.perf_counter()
    cpu, faults = (_cpu(server) - cpu_before) / steps, (harness.page_faults() - faults_before) / steps
    mode.close()
    close_s = time.perf_counter() - loop_end - getattr(mode, "reading_s", 0.0)
    return Run(mode.name, times[warmup:], cpu, max(0.0, _mean(off_cpu[warmup:]) * 1e6), faults, close_s,
               mode.delivered())


def plain_step(workload: Workload, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, mode: Mode,
               step: int, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """One step of the plain loop, ``mode``'s hooks where a user puts them."""
    loss = nn.functional.cross_entropy(model(inputs), targets)
    optimizer.zero_grad()
    loss.backward()
    mode.after_backward(step)
    optimizer.step()
    scheduler.step()
    mode.step_end(step, loss, inputs.view(workload.image_shape), targets)


def _cpu(server: VisdomServer | None) -> float:
    """CPU seconds used so far by this process (every thread) and by the server."""
    return harness.process_cpu_s() + (harness.server_cpu_s(server) if server is not None else 0.0)


def available_modes() -> list[str]:
    modes = ["monitor", "batched", "naive"]
    for name, module in (("tensorboard", "tensorboard"), ("ignite", "ignite")):
        try:
            __import__(module)
            modes.append(name)
        except ImportError:
            pass
    return modes


def make_mode(name: str, server: VisdomServer, label: str, scratch: Path) -> Mode:
    if name == "bare":
        return Mode()
    if name == "monitor":
        return MonitorMode(server, f"bench-{label}", scratch / label)
    if name == "naive":
        return NaiveVisdomMode(server, f"bench-{label}")
    if name == "batched":
        return BatchedMode(server, f"bench-{label}")
    if name == "tensorboard":
        return TensorBoardMode(scratch / label)
    if name == "ignite":
        return IgniteMode(server, f"bench-{label}")
    raise ValueError(f"mode must be one of bare, {', '.join(MODES)}, got {name!r}")


@dataclass
class Summary:
    workload: str
    mode: str
    median_ms: float
    mean_ms: float
    ratio: float          # median step time / bare's
    paired: float         # median over runs of: the run's median step / its neighbouring bare runs'
    mean_ratio: float     # mean step time / bare's
    cpu_ms: float         # median over runs of CPU per step (loop and sink processes + server)
    off_cpu_us: float     # median over runs of the loop thread's off-CPU time per step
    faults: float         # median over runs of page faults per step (loop process)
    delivered: int | None
    expected: int | None
    close_s: float        # worst run
    runs: int


def run(server: VisdomServer, workloads: tuple[str, ...] = ("mlp", "cnn"), modes: list[str] | None = None,
        steps: int = 300, warmup: int = 30, repeats: int = 5, progress: Callable[[str], None] = print
        ) -> list[Summary]:
    """Runs every workload in every mode, interleaved with bare runs; one Summary per (workload, mode)."""
    torch.set_num_threads(1)
    modes = modes or available_modes()
    pairs = [(name, pair) for name in modes for pair in range(MONITOR_RUNS if name == "monitor" else 1)]
    summaries = []
    with tempfile.TemporaryDirectory(prefix="monitor-bench-overhead-") as scratch:
        for workload_name in workloads:
            workload = WORKLOADS[workload_name]
            # One short untimed run per mode first: lazy imports and first-call set-up happen there.
            for name in ["bare", *modes]:
                label = f"{workload_name}-{name}-priming"
                train(workload, make_mode(name, server, label, Path(scratch)), 5, 5, server)
                harness.delete_env(server, f"bench-{label}")
            runs: dict[str, list[Run]] = {name: [] for name in ["bare", *modes]}
            order: list[Run] = []  # every run in the order it ran, for the pairing
            for repeat in range(repeats):
                for name, pair in pairs:
                    for current in ("bare", name):
                        label = f"{workload_name}-{current}-{name}-{repeat}-{pair}"
                        result = train(workload, make_mode(current, server, label, Path(scratch)), steps, warmup,
                                       server)
                        runs[current].append(result)
                        order.append(result)
                        harness.delete_env(server, f"bench-{label}")
                        progress(f"{label}: median {harness.median(result.step_times) * 1e3:.3f} ms/step, "
                                 f"CPU {result.cpu_s * 1e3:.3f} ms/step, close {result.close_s:.3f} s, "
                                 f"delivered {result.delivered}")
            bare_times = [t for r in runs["bare"] for t in r.step_times]
            paired = _paired(order)
            for name in ["bare", *modes]:
                times = [t for r in runs[name] for t in r.step_times]
                delivered = [r.delivered for r in runs[name] if r.delivered is not None]
                summaries.append(Summary(
                    workload_name, name, harness.median(times) * 1e3, _mean(times) * 1e3,
                    harness.median(times) / harness.median(bare_times),
                    harness.median(paired[name]) if paired.get(name) else 1.0, _mean(times) / _mean(bare_times),
                    harness.median([r.cpu_s for r in runs[name]]) * 1e3,
                    harness.median([r.off_cpu_us for r in runs[name]]),
                    harness.median([r.faults for r in runs[name]]),
                    sum(d[0] for d in delivered) if delivered else None,
                    sum(d[1] for d in delivered) if delivered else None,
                    max(r.close_s for r in runs[name]), len(runs[name])))
    return summaries


def _paired(order: list[Run]) -> dict[str, list[float]]:
    """Each run's median step over the mean of the bare runs just before and after it (those
    that exist): a ratio the machine's drift over the benchmark hardly moves."""
    ratios: dict[str, list[float]] = {}
    for i, run in enumerate(order):
        if run.mode == "bare":
            continue
        before = next((r for r in reversed(order[:i]) if r.mode == "bare"), None)
        after = next((r for r in order[i + 1:] if r.mode == "bare"), None)
        neighbours = [harness.median(r.step_times) for r in (before, after) if r is not None]
        ratios.setdefault(run.mode, []).append(harness.median(run.step_times) / _mean(neighbours))
    return ratios


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def table(summaries: list[Summary]) -> str:
    rows = []
    for s in summaries:
        delivered = "-" if s.expected is None else f"{s.delivered}/{s.expected}"
        rows.append([s.workload, s.mode, f"{s.median_ms:.3f}", f"**{s.ratio:.2f}x**", f"**{s.paired:.3f}x**",
                     f"{s.mean_ratio:.2f}x",
                     f"{s.cpu_ms:.2f}", f"{s.off_cpu_us:.0f}", f"{s.faults:.1f}", delivered, f"{s.close_s:.3f}"])
    return harness.markdown_table(["model", "mode", "median step ms", "ratio to bare (median)",
                                   "paired ratio (median of runs)", "ratio (mean)",
                                   "CPU ms/step (loop and sink processes + server)", "loop off-CPU us/step", "page faults/step",
                                   "points delivered/expected", "close() s (worst run)"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps before them (default 30)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (default 5)")
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=sorted(WORKLOADS))
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES,
                        help="default: monitor, naive, and tensorboard/ignite when installed")
    parser.add_argument("--allocator", default="steady", choices=("steady", "default"),
                        help="raise glibc's trim and mmap thresholds first (steady, the default) or not")
    args = parser.parse_args(argv)
    if args.allocator == "steady":
        harness.steady_allocator()
    with harness.local_server() as server:
        summaries = run(server, tuple(args.models), args.modes, args.steps, args.warmup, args.repeats)
    print(table(summaries))


if __name__ == "__main__":
    main()
