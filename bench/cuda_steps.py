"""On a CUDA device: the monitor's step-time ratio against a bare loop, beside the alternatives.

    python bench/cuda_steps.py [--steps 200] [--repeats 5] [--models mlp cnn deep]

A GPU runs a step while the loop's thread queues the next one, so a logger costs the loop what it
adds to that thread, plus any wait for the device it causes (a ``.item()`` is one). A step's time
here is a block's wall time between two ``torch.cuda.synchronize()`` calls (none inside it) over
its steps. Each repetition runs bare, then each logging mode followed by a bare block; a ratio is
the median over repetitions of the mode's step time over the mean of the bare blocks either side.
Models: ``overhead.py``'s MLP and CNN, and ``deep_model.py``'s 161-layer conv model. Modes: the
monitor as in ``overhead.py`` (Scalars, LearningRate, GradNorms, Images every 50, a live server),
the 80-line batched logger and TensorBoard's writer, both of which read values on the loop's thread.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import harness
from deep_model import SIDE, deep_model
from overhead import WORKLOADS, Mode, Workload, make_mode, plain_step

DEEP = Workload("deep", lambda: deep_model(16, "conv"), (8, 16, SIDE, SIDE), (128, 1, SIDE, SIDE))
MODELS = {**WORKLOADS, "deep": DEEP}
MODES = ("monitor", "batched", "tensorboard")


def block(workload: Workload, mode: Mode, steps: int, warmup: int) -> float:
    """Milliseconds per step over ``steps`` steps after ``warmup``, the device synchronized at both ends."""
    torch.manual_seed(0)
    model = workload.build().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
    batches = [(torch.rand(workload.input_shape, device="cuda"),
                torch.randint(0, 10, (workload.input_shape[0],), device="cuda")) for _ in range(8)]
    mode.start(model, optimizer)
    began = 0.0
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            torch.cuda.synchronize()
            began = time.perf_counter()
        inputs, targets = batches[step % len(batches)]
        plain_step(workload, model, optimizer, scheduler, mode, step, inputs, targets)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    mode.close()
    return elapsed / steps * 1000


def run(models: list[str], steps: int, warmup: int, repeats: int) -> list[list[str]]:
    rows = []
    with harness.local_server() as server, tempfile.TemporaryDirectory(prefix="monitor-bench-") as scratch:
        for name in models:
            workload = MODELS[name]
            bare: list[float] = [block(workload, Mode(), steps, warmup)]
            logged: dict[str, list[float]] = {mode: [] for mode in MODES}
            around: dict[str, list[float]] = {mode: [] for mode in MODES}
            delivered: dict[str, tuple[int, int] | None] = {}
            for repeat in range(repeats):
                print(f"{name}: repetition {repeat + 1} of {repeats}", flush=True)
                for mode_name in MODES:
                    mode = make_mode(mode_name, server, f"{name}-{mode_name}-{repeat}", Path(scratch))
                    logged[mode_name].append(block(workload, mode, steps, warmup))
                    delivered[mode_name] = mode.delivered() if name != "deep" else None  # 161 layers: a heatmap
                    bare.append(block(workload, Mode(), steps, warmup))
                    around[mode_name].append((bare[-2] + bare[-1]) / 2)
            median = statistics.median
            rows.append([name, "bare", f"{median(bare):.3f}", "1.000x", ""])
            for mode_name in MODES:
                ratio = median(ms / base for ms, base in zip(logged[mode_name], around[mode_name]))
                got = delivered[mode_name]
                rows.append([name, mode_name, f"{median(logged[mode_name]):.3f}", f"**{ratio:.3f}x**",
                             f"{got[0]}/{got[1]}" if got else "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_steps.py needs a CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = run(args.models, args.steps, args.warmup, args.repeats)
    print(harness.markdown_table(["model", "mode", "ms per step (median)", "paired ratio", "points delivered"],
                                 rows))


if __name__ == "__main__":
    main()
