"""A validation run in a thread of its own, on a copy of an earlier step's weights, while the loop goes on."""
from __future__ import annotations

import copy
import json
import queue
import threading
import time

import pytest
import torch
from torch import nn

from helpers.monitors import live_monitor, monitor_with
from monitor import Callback, Checkpoint, Scalars, Timing
from monitor.checkpoint.folder import MANIFEST, checkpoint_name


def test_a_thread_s_evaluation_of_an_earlier_step_lands_at_that_step_and_ranks_its_checkpoint(
        visdom_server, read_window, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = torch.randn(64, 4), torch.randn(64, 1)
    # keep_last holds the checkpoints whose evaluation is still running (one pruned first is not ranked)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=4, keep_last=3, keep_best=1, metric="loss")
    evaluations: queue.Queue = queue.Queue()
    losses = {4: 0.9, 8: 0.2, 12: 0.5}  # what the evaluation "measures": step 8's weights are the best

    with live_monitor(visdom_server, "async-eval", tmp_path, Scalars(), Timing(), checkpoint) as monitor:
        def evaluate() -> None:  # the user's evaluator: a copy of the weights, validated while training goes on
            while (job := evaluations.get()) is not None:
                step, weights = job
                time.sleep(0.05)  # the loop is steps further on when this ends
                monitor.validation_end({"loss": losses[step]}, step=step)

        evaluator = threading.Thread(target=evaluate)
        evaluator.start()
        monitor.train_start(model, optimizer)
        for _ in monitor.steps(16):
            loss = nn.functional.mse_loss(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.step_end(loss=loss)
            if monitor.state.step in losses:
                evaluations.put((monitor.state.step, copy.deepcopy(model.state_dict())))
            time.sleep(0.01)
        evaluations.put(None)
        evaluator.join()
        assert monitor.flush(timeout=10)

    xs, ys = read_window(visdom_server, "async-eval", "loss")["validation"]
    assert xs == [4, 8, 12] and ys == pytest.approx([0.9, 0.2, 0.5])
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    assert manifest["best"] == [checkpoint_name(8)] and manifest["latest"] == checkpoint_name(16)
    step_times = read_window(visdom_server, "async-eval", "step time")
    # A thread's validation does not restart the loop's clock: each step holds the 10 ms the loop slept after the
    # one before (step 1, timed from its iteration's start, has none before it)
    assert step_times["step"][0][-1] > 1 and all(y >= 5 for x, y in zip(*step_times["step"]) if x > 1)


def test_a_thread_s_validation_waits_for_the_loop_s_hook_and_never_mixes_its_metrics_with_the_step_s():
    seen: list[tuple[str, dict]] = []
    inside = threading.Event()

    class Slow(Callback):  # a callback whose validation takes a while, as a save or a DDP average may
        def on_validation_end(self, state, log):
            inside.set()
            time.sleep(0.2)
            seen.append(("validation", dict(state.metrics)))

        def on_step_end(self, state, log):
            seen.append(("step", dict(state.metrics)))

    monitor, sink = monitor_with(Slow(), Scalars())
    monitor.train_start()
    monitor.step_end(loss=1.0, metrics={"accuracy": 0.5})
    evaluator = threading.Thread(target=monitor.validation_end, args=({"accuracy": 0.4},))
    evaluator.start()
    inside.wait(5)
    monitor.step_end(loss=0.9, metrics={"accuracy": 0.6})  # while the thread's callbacks run
    evaluator.join()
    assert seen == [("step", {"accuracy": 0.5}), ("validation", {"accuracy": 0.4}), ("step", {"accuracy": 0.6})]
    assert sink.points("accuracy") == {"train": [(1, 0.5), (2, 0.6)], "validation": [(1, 0.4)]}


@pytest.mark.parametrize("step, error", [(5, "step must be the step whose weights the validation measured, at "
                                             "most the loop's step 2, got 5"),
                                         (-1, "step"), ("8", "step")])
def test_a_validation_s_step_must_be_one_the_loop_reached(step, error):
    monitor, sink = monitor_with(Scalars())
    monitor.train_start()
    monitor.step_end(loss=1.0)
    monitor.step_end(loss=1.0)
    with pytest.raises((TypeError, ValueError), match=error):
        monitor.validation_end({"loss": 0.5}, step=step)
    monitor.validation_end({"loss": 0.5}, step=1)
    assert sink.points("loss")["validation"] == [(1, 0.5)]
