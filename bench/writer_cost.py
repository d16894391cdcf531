"""A loop that logs through a SummaryWriter: many add_scalar calls a step, a dataset in memory.

A user moving from TensorBoard keeps their writer calls, often dozens of metrics a step. Each
mode runs the same small MLP (one thread) holding 20,000 samples as Python objects, as a
Dataset of tensors does, and calls ``add_scalar`` ``--tags`` times a step, each tag an f-string
made at the call, as loops write them (``f"{split}/loss"``): bare (no calls),
``monitor.SummaryWriter`` with a live server, and TensorBoard's ``SummaryWriter``. Reported per
mode: steps a second, the training thread's time per ``add_scalar`` (the step less the bare
step, over the calls), the 99.9th-percentile step, and the garbage collector's full
collections during the loop (each goes over every object the process holds) with the longest.
Each mode runs in a process of its own, so that one's garbage does not count for another.

    .venv/bin/python bench/writer_cost.py [--steps 8000] [--tags 82]
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time

import harness

MODES = ("bare", "monitor", "tensorboard")


def run_mode(mode: str, steps: int, tags: int, port: int) -> dict[str, float]:
    """One mode's loop, in this process (called in a child by ``main``)."""
    import torch
    from torch import nn

    harness.steady_allocator()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = [(torch.randn(64), i % 10) for i in range(20_000)]  # what a full collection goes over
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.stack([x for x, _ in data[:32]]), torch.tensor([y for _, y in data[:32]])
    folder = tempfile.mkdtemp()
    if mode == "monitor":
        from monitor import SummaryWriter

        writer = SummaryWriter(log_dir=f"{folder}/run", port=port)
    elif mode == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=f"{folder}/run")
    began: dict[int, float] = {}
    full: list[float] = []

    def collected(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began[2] = time.perf_counter()
            else:
                full.append(time.perf_counter() - began[2])

    gc.collect()
    gc.callbacks.append(collected)
    times = []
    started = time.perf_counter()
    for step in range(steps):
        tick = time.perf_counter()
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if mode != "bare":
            value = loss.item()
            for k in range(tags):  # each tag made at its call, as a loop's f-strings make them
                writer.add_scalar(f"group{k // 8}/metric{k}", value + k, step)
        times.append(time.perf_counter() - tick)
    elapsed = time.perf_counter() - started
    gc.callbacks.remove(collected)
    if mode != "bare":
        writer.close()
    times.sort()
    return {"steps_per_s": steps / elapsed, "median_step_ms": 1e3 * harness.median(times),
            "p999_step_ms": 1e3 * times[int(len(times) * 0.999)], "full_collections": len(full),
            "longest_full_ms": 1e3 * max(full, default=0.0)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--tags", type=int, default=82, help="add_scalar calls a step")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.steps, args.tags, args.port)))
        return
    results = {}
    with harness.local_server() as server:
        for mode in MODES:
            done = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps), "--tags",
                                   str(args.tags), "--port", str(server.port)],
                                  capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    bare = results["bare"]["median_step_ms"]
    rows = [[mode, f"{r['steps_per_s']:.0f}", f"{r['median_step_ms']:.3f}",
             "-" if mode == "bare" else f"{1e3 * (r['median_step_ms'] - bare) / args.tags:.1f}",
             f"{r['p999_step_ms']:.1f}", r["full_collections"], f"{r['longest_full_ms']:.0f}"]
            for mode, r in results.items()]
    print(f"{args.steps} steps, {args.tags} add_scalar calls a step, 20,000 samples held in memory:\n")
    print(harness.markdown_table(["mode", "steps/s", "median step ms", "us per add_scalar (median step)",
                                  "p99.9 step ms", "full collections", "longest ms"], rows))


if __name__ == "__main__":
    main()
