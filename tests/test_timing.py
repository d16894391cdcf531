"""Timing: step time, data wait, throughput and memory, against the loop's own clock."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from monitor import Callback, Monitor, Timing
from monitor.records import Layout
from helpers.devices import DEVICES, never_synchronizing
from helpers.monitors import monitor_with, small_model

BATCH = 5


class SlowData(Dataset):
    """50 ms per batch of 5: a loader that makes the loop wait."""

    def __len__(self) -> int:
        return 60

    def __getitem__(self, index: int):
        time.sleep(0.010)
        return torch.randn(4), index % 3


@pytest.mark.parametrize("device", DEVICES)
def test_data_wait_step_time_and_throughput_match_the_loop_s_own_clock(visdom_server, tmp_path, read_window, device):
    model = small_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ends = []
    env = f"timing-{device}"
    loader = DataLoader(SlowData(), batch_size=BATCH, pin_memory=device == "cuda")

    class Saving(Callback):  # after Timing, as a Checkpoint is: its save was counted in the next step
        def on_step_end(self, state, log):
            if state.step == 4:
                time.sleep(0.1)

    with Monitor([Timing(every=1), Saving()], env=env, port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.train_start(model, optimizer)
        with never_synchronizing(device):
            for epoch in monitor.epochs(1):
                ends.append(time.perf_counter())  # the epoch's first step begins: timed from here
                for x, y in monitor.batches(loader):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    loss = nn.functional.cross_entropy(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    monitor.step_end(loss=loss, inputs=x)
                    ends.append(time.perf_counter())
        assert monitor.flush()
        times = read_window(visdom_server, env, "step time")
        throughput = read_window(visdom_server, env, "throughput")["samples"]
        memory = read_window(visdom_server, env, "memory")
    steps, waits = times["data wait"]
    assert steps == list(range(1, 13)) and all(abs(w - 50) <= 10 for w in waits), waits
    loop_ms = [(b - a) * 1000 for a, b in zip(ends, ends[1:])]
    loop_ms[3] -= 100  # step 4's save, in no step    assert times["step"][0] == steps
    assert all(abs(shown - own) <= max(2.0, 0.05 * own) for shown, own in zip(times["step"][1], loop_ms)), \
        (times["step"][1], loop_ms)
    assert all(step > wait for step, wait in zip(times["step"][1], waits))  # the wait is part of the step
    assert throughput[1] == pytest.approx([BATCH / (ms / 1000) for ms in times["step"][1]])
    resident = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    assert all(0.5 * resident < mb < 2 * resident for mb in memory["resident"][1])
    if device == "cuda":  # the device's own clock, read on the worker from events, agrees with the loop's
        assert times["device"][0] == steps
        assert all(abs(on_device - step) <= max(5.0, 0.1 * step)
                   for on_device, step in zip(times["device"][1], times["step"][1])), times["device"]
        allocated, reserved, peak = (memory[name][1] for name in ("allocated", "reserved", "peak"))
        assert all(0 < a <= p <= r for a, p, r in zip(allocated, peak, reserved)), memory
    else:
        assert set(times) == {"step", "data wait"} and set(memory) == {"resident"}


def test_without_the_loader_wrapper_or_inputs_there_is_no_data_wait_and_steps_per_second():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Timing(every=2))
    monitor.train_start(model, optimizer)
    for _ in range(5):
        monitor.step_end(loss=torch.tensor(1.0))
    assert set(sink.points("step time")) == {"step"}
    assert [x for x, _ in sink.points("step time")["step"]] == [3, 5]
    assert set(sink.points("throughput")) == {"steps"}
    assert [r.opts["ylabel"] for r in sink.of(Layout, "throughput")][-1] == "steps per second"  # was samples
    with pytest.raises(ValueError, match="every must be"):
        Timing(every=0)


def test_under_gradient_accumulation_the_data_wait_is_every_micro_batch_s_and_a_validation_inside_keeps_it(
        visdom_server, tmp_path, read_window):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    env = "timing-accumulation"
    with Monitor([Timing(every=1)], env=env, port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.train_start(model, optimizer)
        for epoch in monitor.epochs(1):
            for x, y in monitor.batches(DataLoader(SlowData(), batch_size=BATCH)):  # 50 ms a batch
                nn.functional.cross_entropy(model(x), y).backward()
                if monitor.state.batch_index % 2 == 1:  # two micro-batches a step
                    monitor.after_backward()
                    if monitor.state.step % 2 == 0:  # a validation inside the step, on a loader of its own
                        list(monitor.batches(DataLoader(SlowData(), batch_size=30)))
                    optimizer.step()
                    optimizer.zero_grad()
                    monitor.step_end()
        assert monitor.flush()
        steps, waits = read_window(visdom_server, env, "step time")["data wait"]
    assert steps == list(range(1, 7)) and all(abs(w - 100) <= 20 for w in waits), waits  # two batches' waits


def test_a_validation_between_two_steps_is_not_charged_to_the_next_step():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Timing(every=1))
    monitor.train_start(model, optimizer)
    for step in range(1, 5):
        monitor.step_end(loss=torch.tensor(1.0))
        if step == 2:  # an evaluation every N steps, as a step-based loop runs it
            time.sleep(0.3)
            monitor.validation_end({"loss": 0.5})
    times = dict(sink.points("step time")["step"])
    assert sorted(times) == [2, 3, 4] and times[3] < 100, times  # it was 300 ms: the validation's


def test_a_point_every_n_steps_is_the_mean_of_those_steps_and_their_throughput():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Timing(every=5))
    monitor.train_start(model, optimizer)
    ends = [time.perf_counter()]
    for step in range(1, 12):
        time.sleep(0.1 if step == 8 else 0.01)  # one slow step among the ten shown
        monitor.step_end(loss=torch.tensor(1.0), inputs=torch.zeros(BATCH, 4))
        ends.append(time.perf_counter())
    times = dict(sink.points("step time")["step"])
    assert sorted(times) == [6, 11]
    own = (ends[11] - ends[6]) * 1000 / 5  # steps 7 to 11, timed by the loop
    assert abs(times[11] - own) <= 2 and times[11] > 25, times  # a tenth of the slow step, not one 10 ms step
    throughput = dict(sink.points("throughput")["samples"])
    assert throughput[11] == pytest.approx(BATCH * 1000 / times[11])
    for _ in range(2):  # every=5's last steps: at train_end, not left out
        monitor.step_end(loss=torch.tensor(1.0), inputs=torch.zeros(BATCH, 4))
    monitor.train_end()
    assert sorted(dict(sink.points("step time")["step"])) == [6, 11, 13]


def test_throughput_counts_a_detection_batch_s_images_and_a_batch_in_parts_by_its_first():
    # A tuple of images of their own sizes (torchvision's detection collate) counted its first
    # image's channels (3) as the batch; a tuple of ids and a mask is one batch of 4.
    from monitor.callbacks.timing import _batch_size

    assert _batch_size((torch.zeros(3, 20, 30), torch.zeros(3, 24, 16), torch.zeros(3, 8, 8))) == 3
    assert _batch_size([torch.zeros(1, 32, 32)] * 8) == 8  # grey images of one size
    assert _batch_size((torch.zeros(4, 128, 80), torch.zeros(4, 128, 80))) == 4  # features and their mask
    assert _batch_size((torch.zeros(4, 16, dtype=torch.long), torch.ones(4, 16))) == 4
    assert _batch_size((torch.zeros(5, 3, 8, 8), torch.zeros(5))) == 5  # images and labels
    assert _batch_size([torch.zeros(7), torch.zeros(9)]) == 2  # sequences of their own lengths


def test_throughput_of_a_batch_in_parts_of_their_own_first_sizes_counts_the_labels():
    # A graph batch as a dict (node features, edges, each node's graph) counted 550 nodes as
    # samples, and a table's columns of two widths counted as 2 samples: one label a sample says.
    from monitor.callbacks.timing import _batch_size

    graphs = {"x": torch.zeros(550, 8), "edge_index": torch.zeros(2, 1800, dtype=torch.long),
              "batch": torch.zeros(550, dtype=torch.long)}
    assert _batch_size(graphs, torch.zeros(32)) == 32
    assert _batch_size({**graphs, "y": torch.zeros(32)}, torch.zeros(32)) == 32
    columns = (torch.zeros(64, 2, dtype=torch.long), torch.zeros(64, 3))
    assert _batch_size(columns, torch.zeros(64)) == 64
    assert _batch_size(columns + (torch.zeros(64),), None) == 64
    # Labels of another length beside parts that agree (CTC's targets, concatenated) are not the count
    assert _batch_size((torch.zeros(4, 16000), torch.full((4,), 16000)), torch.zeros(57)) == 4
    assert _batch_size((torch.zeros(3, 20, 30), torch.zeros(3, 24, 16)), [{"boxes": None}] * 2) == 2


def test_throughput_of_a_graph_batch_counts_its_graphs():
    model = small_model()
    monitor, sink = monitor_with(Timing(every=2))
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(3):
        batch = {"x": torch.zeros(550, 8), "edge_index": torch.zeros(2, 1800, dtype=torch.long)}
        monitor.step_end(loss=torch.tensor(1.0), inputs=batch, targets=torch.zeros(32))
    (step, samples_per_second), = sink.points("throughput")["samples"]
    seconds = dict(sink.points("step time")["step"])[3] / 1000
    assert step == 3 and samples_per_second * seconds == pytest.approx(32, rel=1e-6)


def test_throughput_of_time_major_sequences_beside_their_lengths_counts_the_sequences():
    # pad_sequence and nn.GRU default to (T, B): the padded length T was counted as the batch.
    from monitor.callbacks.timing import _batch_size

    padded, lengths = torch.zeros(50, 8, dtype=torch.long), torch.full((8,), 50)
    assert _batch_size((padded, lengths), torch.zeros(50, 8, dtype=torch.long)) == 8
    assert _batch_size({"input_ids": torch.zeros(30, 4, dtype=torch.long), "lengths": torch.full((4,), 30)}) == 4
    assert _batch_size((torch.zeros(8, 50), torch.full((8,), 50)), torch.zeros(8, 50)) == 8  # batch first


def test_under_gradient_accumulation_the_throughput_counts_every_micro_batch_of_the_step():
    # A bucketing sampler's micro-batches of their own sizes: the last one (step_end's inputs) held 11 of 42.
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Timing(every=1))
    monitor.train_start(model, optimizer)
    sizes = [10, 1, 20, 11] * 3
    loader = [(torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)) for n in sizes]
    for epoch in monitor.epochs(1):
        for x, y in monitor.batches(loader):
            if monitor.state.batch_index % 4 == 3:
                time.sleep(0.02)
                monitor.step_end(loss=1.0, inputs=x, targets=y)
        list(monitor.batches(loader[:2]))  # a validation's batches are no step's
        monitor.validation_end({"loss": 1.0})
    times, throughput = dict(sink.points("step time")["step"]), dict(sink.points("throughput")["samples"])
    assert sorted(throughput) == [1, 2, 3]  # the epoch's first step timed from epoch_start
    assert all(throughput[s] == pytest.approx(42 * 1000 / times[s]) for s in (1, 2, 3)), (throughput, times)


def test_a_language_model_s_throughput_is_in_tokens_when_asked_every_micro_batch_s():
    # An LM's throughput was sequences a second: 312 where the loop's own count was 19,750 tokens.
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor, sink = monitor_with(Timing(every=1, unit="tokens"))
    monitor.train_start(model, optimizer)
    loader = [torch.randint(0, 256, (8, 64)) for _ in range(4)]
    for epoch in monitor.epochs(1):
        for ids in monitor.batches(loader):
            if monitor.state.batch_index % 2 == 1:  # two micro-batches a step
                time.sleep(0.02)
                monitor.step_end(loss=1.0, inputs=ids)
    times, throughput = dict(sink.points("step time")["step"]), dict(sink.points("throughput")["tokens"])
    assert sorted(throughput) == [1, 2]
    assert all(throughput[s] == pytest.approx(2 * 8 * 64 * 1000 / times[s]) for s in (1, 2)), (throughput, times)
    monitor, sink = monitor_with(Timing(every=1, unit="tokens"))  # no monitor.batches: step_end's inputs
    monitor.train_start(model, optimizer)
    for _ in range(2):
        monitor.step_end(loss=1.0, inputs={"input_ids": torch.zeros(4, 32, dtype=torch.long),
                                           "attention_mask": torch.ones(4, 32)})
    assert set(sink.points("throughput")) == {"tokens"} and len(sink.points("throughput")["tokens"]) == 1
    with pytest.raises(ValueError, match="unit must be 'samples' or 'tokens', got 'words'"):
        Timing(unit="words")


def test_a_run_resumed_in_the_middle_of_an_epoch_times_its_first_step(tmp_path):
    # A requeued LM run lost step 31's point in step time, throughput and memory: the resumed epoch
    # had no epoch_start to time its first step from.
    from monitor import Checkpoint

    loader = [torch.zeros(2, 4)] * 6

    def run(stop_at: int | None = None):
        model = small_model()
        monitor, sink = monitor_with(Timing(every=1), Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True))
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for epoch in monitor.epochs(1):
            for x in monitor.batches(loader):
                monitor.step_end(loss=1.0, inputs=x)
                if monitor.state.step == stop_at:
                    return sink  # killed here
        monitor.close()
        return sink

    run(stop_at=3)
    resumed = run()
    assert [x for x, _ in resumed.points("step time")["step"]] == [3, 4, 5, 6]  # from the checkpoint of step 2
    assert [x for x, _ in resumed.points("memory")["resident"]] == [3, 4, 5, 6]


def test_a_steps_loop_times_its_first_step_and_a_resumed_run_s_first(tmp_path):
    # PPO in monitor.steps: step time had no point for step 1, nor for the step each resume began at
    from monitor import Checkpoint

    def run(stop_at: int | None = None):
        model = small_model()
        monitor, sink = monitor_with(Timing(every=1), Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True))
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for update in monitor.steps(6):
            monitor.step_end(loss=1.0)
            if monitor.state.step == stop_at:
                return sink  # killed here
        monitor.close()
        return sink

    assert [x for x, _ in run(stop_at=3).points("step time")["step"]] == [1, 2, 3]
    assert [x for x, _ in run().points("step time")["step"]] == [3, 4, 5, 6]  # from the checkpoint of step 2

