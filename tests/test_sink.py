"""VisdomSink against real Visdom servers: nothing logged is lost or doubled, and the loop never waits.

Servers: ``visdom_server`` is shared (one env per test); ``fresh_server`` is killed, paused and
restarted; a few tests start their own (never started until late, with login).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from click.testing import CliRunner

from monitor import Callback, Monitor
from monitor.cli import main as cli
from monitor.imaging import encode_grid
from monitor.log import Log
from monitor.windows import float32_digits
from monitor.records import Points, Text
from monitor.runlog import RunLog
from monitor.server import VisdomServer, start
from monitor.connection import Connection, DashboardError
from monitor.sink import VisdomSink
from helpers.monitors import shown_grid

FAST = {"flush_every": 0.05}


def sink_for(server, env: str, tmp_path: Path, **options) -> VisdomSink:
    return VisdomSink(env, server="http://127.0.0.1", port=server.port, run_dir=tmp_path / env,
                      **{**FAST, **options})


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


class LogLoss(Callback):
    """Logs the loss and this step's metrics, the way a user's own callback would."""

    def on_step_end(self, state, log):
        log.scalar("loss", "train", state.step, state.loss)
        log.scalars("metrics", state.step, state.metrics)


def plain_loop(monitor: Monitor, steps: range, expected: dict) -> None:
    """A small real model trained by a plain loop; ``expected[(window, trace)]`` gets (x, y)."""
    torch.manual_seed(steps.start)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in steps:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        error = (model(x) - y).abs().max()
        monitor.step_end(loss=loss, metrics={"max error": error, "bias": model.bias[0]})
        step = monitor.state.step
        expected.setdefault(("loss", "train"), []).append((step, loss.item()))
        expected.setdefault(("metrics", "max error"), []).append((step, error.item()))
        expected.setdefault(("metrics", "bias"), []).append((step, model.bias[0].item()))
        if step % 50 == 0:
            value = float(loss.item()) / 2
            monitor.log.scalar("loss", "validation", step, value)
            expected.setdefault(("loss", "validation"), []).append((step, value))


def assert_dashboard_holds(server, env: str, expected: dict, read_window, **client) -> None:
    """Every (window, trace) on the server holds exactly the expected points, in order, once."""
    for window in {w for w, _ in expected}:
        shown = read_window(server, env, window, **client)
        wanted = {t: expected[(w, t)] for w, t in expected if w == window}
        assert set(shown) == set(wanted), window
        for trace, points in wanted.items():
            xs, ys = shown[trace]
            assert xs == [x for x, _ in points], (window, trace)
            assert ys == pytest.approx([y for _, y in points], rel=1e-6), (window, trace)


# --- a plain loop ---------------------------------------------------------------------------
def test_a_plain_loop_delivers_every_scalar_once_in_step_order_to_its_window_and_trace(
        visdom_server, read_window, tmp_path):
    expected: dict = {}
    with Monitor([LogLoss()], sink=sink_for(visdom_server, "plain-loop", tmp_path), raise_errors=True) as monitor:
        plain_loop(monitor, range(300), expected)  # fewer steps than points_per_trace: nothing thinned
        assert monitor.flush(timeout=10)
    assert_dashboard_holds(visdom_server, "plain-loop", expected, read_window)
    assert len(expected[("loss", "train")]) == 300


# --- server trouble ---------------------------------------------------------------------------
def test_a_server_never_started_costs_the_loop_nothing_and_gets_everything_once_it_starts(
        tmp_path, read_window, caplog, capfd):
    server = VisdomServer(0, env_path=tmp_path / "visdom")  # a free port where nothing listens yet
    expected: dict = {}
    caplog.set_level(logging.DEBUG)
    try:
        sink = sink_for(server, "never-started", tmp_path)
        monitor = Monitor([LogLoss()], sink=sink, raise_errors=True)
        started = time.perf_counter()
        plain_loop(monitor, range(200), expected)
        time.sleep(0.5)  # several flushes fail meanwhile
        assert time.perf_counter() - started < 10
        assert monitor.flush(timeout=0.3) is False
        reports = warnings_in(caplog)
        out, err = capfd.readouterr()
        assert len(reports) == 1 and "unreachable" in reports[0], reports  # one report, not one per try
        assert out == "" and len(err.splitlines()) <= 3, err  # the one report, nothing per step

        server.start()
        assert monitor.flush(timeout=10)
        assert_dashboard_holds(server, "never-started", expected, read_window)
        assert monitor.close(timeout=10)

        replayed = CliRunner().invoke(cli, ["replay", str(sink.runlog.path), "--env", "never-started-replay",
                                            "--port", str(server.port)])
        assert replayed.exit_code == 0, replayed.output
        assert_dashboard_holds(server, "never-started-replay", expected, read_window)
    finally:
        server.stop()


def test_a_server_killed_and_restarted_mid_run_ends_with_every_point_once(
        fresh_server, read_window, read_window_raw, tmp_path):
    expected: dict = {}
    with Monitor([LogLoss()], sink=sink_for(fresh_server, "killed", tmp_path), raise_errors=True) as monitor:
        monitor.log.text("notes", 0, "logged once, before the crashes")
        plain_loop(monitor, range(0, 100), expected)
        assert monitor.flush(timeout=10)

        fresh_server.kill()  # the env is gone with it: it was never saved
        plain_loop(monitor, range(100, 200), expected)
        time.sleep(0.3)  # sends fail meanwhile
        fresh_server.start()  # same port
        plain_loop(monitor, range(200, 300), expected)
        assert monitor.flush(timeout=15)
        assert_dashboard_holds(fresh_server, "killed", expected, read_window)
        assert read_window_raw(fresh_server, "killed", "notes")["content"] == "logged once, before the crashes"

        fresh_server.kill()  # a restart between two flushes: no request failed
        fresh_server.start()
        assert monitor.flush(timeout=15)
    assert_dashboard_holds(fresh_server, "killed", expected, read_window)
    assert read_window_raw(fresh_server, "killed", "notes")["content"] == "logged once, before the crashes"
    assert [s for s, _ in expected[("loss", "train")]] == list(range(1, 301))


def test_a_server_that_lost_the_env_gets_every_window_again_even_while_others_change(
        visdom_server, read_window, read_window_raw, connect_client, tmp_path):
    sink = sink_for(visdom_server, "lost-env", tmp_path)
    sink.delivery.heartbeat = 0.2
    log = Log(sink)
    log.text("notes", 0, "logged once")
    log.scalar("loss", "train", 1, 1.0)
    assert sink.flush(timeout=5)
    connect_client(visdom_server).delete_env("lost-env")  # as a restart or a user would
    step, deadline = 1, time.monotonic() + 10
    while True:  # "loss" changes at every flush and recreates the env; "notes" never changes again
        step += 1
        log.scalar("loss", "train", step, 1.0 / step)
        time.sleep(0.02)
        try:
            if read_window_raw(visdom_server, "lost-env", "notes")["content"] == "logged once":
                break
        except LookupError:
            assert time.monotonic() < deadline, "the unchanged window never came back"
    assert sink.close(timeout=5)
    steps = list(range(1, step + 1))
    assert read_window(visdom_server, "lost-env", "loss") == {
        "train": (steps, float32_digits([1.0 / s for s in steps]))}


def test_a_server_stopped_for_5_s_leaves_the_loop_running_and_gets_everything_after(
        fresh_server, read_window, read_window_raw, tmp_path):
    class Busy(Callback):
        def on_step_end(self, state, log):
            log.scalar("loss", "train", state.step, state.loss)
            log.scalars("metrics", state.step, state.metrics)
            if state.step % 25 == 0:
                log.images("inputs", state.step, state.inputs)

    # The defaults a user gets (a flush every 0.5 s, requests that time out after 5 s), with
    # room for every step so the check below is exact.
    sink = VisdomSink("stopped", port=fresh_server.port, run_dir=tmp_path / "stopped", points_per_trace=20_000)
    monitor = Monitor([Busy()], sink=sink, raise_errors=True)
    losses, hook_seconds = [], []
    images = torch.rand(4, 3, 16, 16)
    paused_at = resumed_at = None
    # Start from a clean heap: a full collection of this test process (torch, visdom, pytest and
    # the earlier tests' leftovers) takes 100-280 ms here and lands in whichever call allocates
    # next, monitor or not. The sink's own objects stay counted.
    gc.collect()
    started = time.monotonic()
    while time.monotonic() - started < 8.0:  # 1.5 s running, 5 s stopped, then running again
        now = time.monotonic() - started
        if paused_at is None and now > 1.5:
            fresh_server.pause()
            paused_at = now
        if paused_at is not None and resumed_at is None and now > paused_at + 5.0:
            fresh_server.resume()
            resumed_at = now
        loss = torch.tensor(1.0 / (len(losses) + 1))
        time.sleep(0.002)  # the step's own work
        before = time.perf_counter()
        monitor.step_end(loss=loss, metrics={"lr": 0.1, "step": float(len(losses))}, inputs=images)
        hook_seconds.append(time.perf_counter() - before)
        losses.append(loss.item())
    assert monitor.flush(timeout=20)
    assert monitor.close()
    worst = max(hook_seconds)
    ordered = sorted(hook_seconds)
    print(f"\nSIGSTOP 5 s: {len(hook_seconds)} step_end calls, max {worst * 1e3:.2f} ms, "
          f"99.9th percentile {ordered[int(len(ordered) * 0.999)] * 1e3:.2f} ms, "
          f"median {statistics.median(hook_seconds) * 1e3:.3f} ms")
    # How slow the slowest call may be is a number: bench/responsiveness.py measures it.
    steps = list(range(1, len(losses) + 1))
    assert read_window(fresh_server, "stopped", "loss") == {"train": (steps, float32_digits(losses))}
    assert read_window(fresh_server, "stopped", "metrics")["step"][0] == steps
    shown = shown_grid(read_window_raw(fresh_server, "stopped", "inputs"))
    grids = [e for e in RunLog.read(sink.runlog.path) if e.get("win") == "inputs"]
    assert grids[-1]["x"] == len(losses) // 25 * 25  # the latest grid
    assert shown == (tmp_path / "stopped" / grids[-1]["file"]).read_bytes()


# --- snapshots ---------------------------------------------------------------------------------
def test_a_tensor_changed_in_place_after_logging_shows_its_value_at_logging_time(
        visdom_server, read_window, read_window_raw, tmp_path):
    sink = sink_for(visdom_server, "snapshots", tmp_path)
    log = Log(sink)
    loss, norms, batch = torch.tensor(0.25), torch.tensor([1.0, 2.0]), torch.rand(2, 1, 8, 8)
    logged_batch = batch.clone()
    log.scalar("loss", "train", 1, loss)
    log.scalars("accuracy", 1, {"train": loss * 2})
    log.vector("grad norm", 1, ["a", "b"], norms)
    log.images("inputs", 1, batch)
    loss.fill_(-1.0)
    norms.mul_(100)
    batch.zero_()
    assert sink.close(timeout=10)
    assert read_window(visdom_server, "snapshots", "loss") == {"train": ([1], [0.25])}
    assert read_window(visdom_server, "snapshots", "accuracy") == {"train": ([1], [0.5])}
    assert read_window(visdom_server, "snapshots", "grad norm") == {"a": ([1], [1.0]), "b": ([1], [2.0])}
    shown = shown_grid(read_window_raw(visdom_server, "snapshots", "inputs"))
    assert shown == encode_grid(logged_batch, heading="step 1")


# --- a long run --------------------------------------------------------------------------------
def _server_cpu_seconds(server) -> float:
    """CPU time the server process used so far, all threads (Linux /proc, nanosecond resolution)."""
    tasks = Path(f"/proc/{server.process.pid}/task")
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks.iterdir()) / 1e9


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/schedstat").exists(), reason="needs Linux /proc schedstat")
def test_a_200k_step_run_keeps_every_window_within_budget(
        visdom_server, read_window, tmp_path):
    """200k steps, 6 traces in 3 windows, fed straight through Log (no model).

    The server's time per flush is the CPU time the server process spent (from /proc, so the
    client's own Python work and its GIL do not blur it) divided by the flushes that sent
    something, over the first and the last 10% of the run. Windows fill their budget after 1000
    steps, so the first 10% already includes full windows; the point is that the cost does not
    keep growing with the run, as visdom's append does (2.3 s per append at 100k points).
    """
    budget, steps, segment = 1000, 200_000, 20_000
    sink = sink_for(visdom_server, "long-run", tmp_path, points_per_trace=budget)
    log = Log(sink)
    per_flush = []
    for first in (1, steps - segment + 1):
        if first > 1:  # the middle of the run, not measured
            for step in range(segment + 1, first):
                feed(log, step)
                if step % 500 == 0:
                    wait_for_worker(sink)
        assert sink.flush(timeout=30)
        cpu, since = _server_cpu_seconds(visdom_server), time.monotonic()
        for step in range(first, first + segment):
            feed(log, step)
            if step % 500 == 0:
                wait_for_worker(sink)  # a loop slower than the worker, as any real one is
        assert sink.flush(timeout=30)
        flushes = [t for t in sink.timings if t.when >= since]
        per_flush.append(((_server_cpu_seconds(visdom_server) - cpu) / len(flushes),
                          statistics.median(t.seconds for t in flushes),
                          statistics.mean(t.points for t in flushes), len(flushes)))
        for window in sink.windows.by_name.values():
            assert all(len(trace) <= budget for trace in window.traces.values())
    for name in ("loss", "lr", "grad norm"):
        for trace, (xs, ys) in read_window(visdom_server, "long-run", name).items():
            assert len(xs) <= budget and xs[0] == 1 and xs[-1] == steps, (name, trace)
    assert sink.close()
    (start_cpu, start_wall, start_points, n0), (end_cpu, end_wall, end_points, n1) = per_flush
    print(f"\n200k steps: server CPU per flush {start_cpu * 1e3:.2f} ms at the start ({n0} flushes, "
          f"{start_points:.0f} points each), {end_cpu * 1e3:.2f} ms at the end ({n1} flushes, "
          f"{end_points:.0f} points); median request time {start_wall * 1e3:.2f} / {end_wall * 1e3:.2f} ms")
    # That the cost stays flat is a number: bench/server_scaling.py measures it (run_all.py checks it).


def feed(log: Log, step: int) -> None:
    log.scalars("loss", step, {"train": math.sin(step / 1000), "validation": math.cos(step / 700)})
    log.scalar("lr", "lr", step, 0.1 * 0.99999 ** step)
    log.scalars("grad norm", step, {"layer 1": step % 17 / 17, "layer 2": step % 23 / 23, "total": 1.0})


def wait_for_worker(sink: VisdomSink) -> None:
    while sink.pending:
        time.sleep(0.001)


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda log: log.scalar("loss", "train", 1, "0.5"), r"value must be a number or a one-element tensor or numpy array, got '0.5'"),
    (lambda log: log.scalar("loss", "train", 1, torch.ones(3)), r"value must be a number .* shape \(3,\)"),
    (lambda log: log.scalar("loss", "train", 1, torch.tensor(1 + 2j)), r"value must be a real number, got .*complex"),
    (lambda log: log.scalar("loss", "train", math.nan, 1.0), r"x must be a finite number"),
    (lambda log: log.scalar("", "train", 1, 1.0), r"window must be a non-empty str, got ''"),
    (lambda log: log.scalars("loss", 1, [1.0]), r"values must be a mapping of trace name to number, got list"),
    (lambda log: log.images("inputs", 1, torch.rand(2, 5, 8, 8)), r"images must have 1 or 3 channels"),
    (lambda log: log.images("inputs", 1, torch.rand(8)), r"images must be NCHW, CHW, NHW or HW, got shape \(8,\)"),
    (lambda log: log.images("inputs", 1, "a picture"), r"images must be a torch.Tensor"),
    (lambda log: log.images("inputs", 1, torch.ones(2, 2, dtype=torch.complex64)),
     r"images must hold real numbers, got a tensor of dtype torch.complex64: pass its magnitude, \.abs\(\), its "
     r"phase, \.angle\(\), or its \.real part"),
    (lambda log: log.vector("grad norm", 1, ["a", "b"], torch.ones(3)), r"values must be a 1-d tensor of 2 elements"),
    (lambda log: log.vector("grad norm", 1, ["a"], torch.ones(1, dtype=torch.bool)), r"values must hold real numbers"),
    (lambda log: log.text("notes", 1, 42), r"text must be a str, got int"),
    (lambda log: log.sink.put({"window": "loss"}), r"record must be a monitor.records Points, .* got dict"),
])
def test_bad_input_is_refused_at_the_door_naming_the_argument(visdom_server, tmp_path, call, message):
    sink = sink_for(visdom_server, "bad-input-door", tmp_path)
    with pytest.raises((TypeError, ValueError), match=message):
        call(Log(sink))
    assert sink.close()


def test_a_bad_record_past_the_door_is_reported_once_and_the_rest_arrives(
        visdom_server, read_window, tmp_path, caplog):
    sink = sink_for(visdom_server, "bad-input-worker", tmp_path)
    for step in range(1, 6):
        sink.put(Points("loss", step, ("train",), (float(step),)))
        sink.put(Points("loss", step, ("train",), ("not a number",)))  # put directly, skipping Log's checks
        sink.put(Points("loss", step, ("train", "validation"), (1.0,)))
        sink.put(Text("notes", step, html=None))
        sink.put(Points("loss", step, ("train",), lambda: 1 / 0))  # work left to the worker fails there
        sink.put(Points("loss", step, ("train",), lambda: [1.0, 2.0]))  # or gives too many values
    assert sink.close(timeout=10)
    reports = warnings_in(caplog)
    assert len(reports) == 4, reports  # one per kind of trouble, not one per record
    assert any("trace 'train' must be a number, got 'not a number'" in r for r in reports)
    assert read_window(visdom_server, "bad-input-worker", "loss") == {"train": ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0])}


def test_a_function_left_to_the_worker_may_give_its_values_as_any_iterable(visdom_server, read_window, tmp_path):
    sink = sink_for(visdom_server, "iterable-values", tmp_path)
    sink.put(Points("norms", 1, ("a", "b"), lambda: (v for v in (1.0, 2.0))))
    assert sink.close(timeout=10)
    assert read_window(visdom_server, "iterable-values", "norms") == {"a": ([1], [1.0]), "b": ([1], [2.0])}


def test_non_finite_values_show_as_gaps_and_are_counted_in_the_legend_not_the_title(
        visdom_server, read_window_raw, tmp_path, caplog):
    caplog.set_level("WARNING", logger="monitor")
    sink = sink_for(visdom_server, "non-finite", tmp_path)
    log = Log(sink)
    log.lay_out("loss", 0, title="loss", xlabel="step")
    for step, value in enumerate([1.0, math.nan, math.inf, -math.inf, 0.5], 1):
        log.scalar("loss", "train", step, torch.tensor(value))
    assert sink.close(timeout=10)
    said = [r.getMessage() for r in caplog.records if "drawn as a gap" in r.getMessage()]
    assert said == ["monitor: window 'loss' trace 'train' got nan at step 2: drawn as a gap, counted in the legend's "
                    "title, kept in the run log; Guard() says at once which step went bad and keeps a checkpoint to "
                    "replay it (reported once)"]  # once a run, however many follow
    window = read_window_raw(visdom_server, "non-finite", "loss")
    assert window["content"]["data"][0]["y"] == [1.0, None, None, None, 0.5]
    assert window["title"] == "loss"
    assert window["content"]["layout"]["legend"]["title"]["text"] == "3 non-finite shown as gaps"


def test_a_window_given_points_and_then_images_is_said_once(visdom_server, tmp_path, caplog):
    # One pane shows one kind: the grid, in the run log, was silently missing from the dashboard.
    caplog.set_level("WARNING", logger="monitor")
    sink = sink_for(visdom_server, "kinds", tmp_path)
    log = Log(sink)
    log.scalar("samples", "train", 1, 0.5)
    log.images("samples", 2, torch.rand(2, 3, 8, 8))
    log.scalar("samples", "train", 3, 0.4)
    log.images("samples", 4, torch.rand(2, 3, 8, 8))
    assert sink.close(timeout=10)
    assert [r.getMessage() for r in caplog.records if "window 'samples'" in r.getMessage()] == [
        "monitor: window 'samples' was given points and then an image grid: its pane shows one kind, so one of them "
        "is not on the dashboard (the run log keeps both); give each its own window name (reported once)"]


def test_a_callback_logging_bad_input_never_crashes_the_loop(visdom_server, read_window, tmp_path, caplog):
    class Careless(Callback):
        def on_step_end(self, state, log):
            log.scalar("loss", "train", state.step, state.loss)
            log.images("inputs", state.step, state.inputs)  # not images: raises at the door

    with Monitor([Careless()], sink=sink_for(visdom_server, "careless", tmp_path)) as monitor:
        for step in range(1, 21):
            monitor.step_end(loss=1.0 / step, inputs=torch.rand(10))
        assert monitor.flush(timeout=10)
    assert len(warnings_in(caplog)) == 1
    assert read_window(visdom_server, "careless", "loss")["train"][0] == list(range(1, 21))


# --- memory -------------------------------------------------------------------------------------
def test_a_long_outage_keeps_the_sinks_memory_bounded(tmp_path):
    port = VisdomServer(0).port  # free, and nothing will listen there
    sink = VisdomSink("outage", port=port, run_dir=tmp_path / "outage", points_per_trace=200, **FAST)
    log = Log(sink)
    for step in range(1, 50_001):
        log.scalars("loss", step, {"train": 1 / step, "validation": math.sin(step)})
        log.scalar("lr", "lr", step, 0.1)
        if step % 10_000 == 0:
            assert sink.flush(timeout=0.01) is False  # callers that give up leave nothing behind
    sink.sync(timeout=30)
    assert sink.pending == 0  # the worker drained the queue while the server was down
    assert len(sink._waiting) == 0
    assert sink.runlog.position == sink.runlog.path.stat().st_size  # everything is in the run log
    for window in sink.windows.by_name.values():
        for trace in window.traces.values():
            assert trace.count == 50_000 and len(trace) <= 200
            assert sum(map(len, trace.buckets)) + len(trace.partial.points()) <= 200
    assert sink.close(timeout=0.2) is False


# --- flush, close, settings -------------------------------------------------------------------
def test_flush_and_close_deliver_what_is_pending_then_stop_and_are_idempotent(
        visdom_server, read_window, tmp_path, caplog):
    sink = sink_for(visdom_server, "closing", tmp_path, flush_every=30)  # no timed flush would come
    log = Log(sink)
    log.scalar("loss", "train", 1, 1.0)
    assert sink.flush(timeout=5)
    assert read_window(visdom_server, "closing", "loss") == {"train": ([1], [1.0])}
    log.scalar("loss", "train", 2, 0.5)
    assert sink.close(timeout=5) and sink.close(timeout=5) and sink.flush(timeout=5)
    assert not sink._worker.is_alive() and not sink._sender.is_alive()
    assert read_window(visdom_server, "closing", "loss") == {"train": ([1, 2], [1.0, 0.5])}  # never deleted
    log.scalar("loss", "train", 3, 0.1)
    log.scalar("loss", "train", 4, 0.1)
    assert [r for r in warnings_in(caplog) if "after close()" in r] == [
        "monitor: a record was logged after close() and is dropped (reported once)"]


def test_flush_returns_false_in_time_while_the_server_is_down(tmp_path):
    sink = VisdomSink("down", port=VisdomServer(0).port, run_dir=tmp_path, **FAST)
    Log(sink).scalar("loss", "train", 1, 1.0)
    started = time.monotonic()
    assert sink.flush(timeout=0.5) is False
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    assert sink.close(timeout=0.5) is False
    assert time.monotonic() - started < 1.5


def test_connection_settings_come_from_arguments_before_environment_variables(monkeypatch):
    for name in ("VISDOM_SERVER_URL", "VISDOM_PORT", "VISDOM_USERNAME", "VISDOM_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert Connection().url == "http://127.0.0.1:8097"
    monkeypatch.setenv("VISDOM_SERVER_URL", "http://dashboard.example:9000")
    assert Connection().url == "http://dashboard.example:9000"
    monkeypatch.setenv("VISDOM_PORT", "9001")
    assert Connection().url == "http://dashboard.example:9001"
    monkeypatch.setenv("VISDOM_USERNAME", "ada")
    monkeypatch.setenv("VISDOM_PASSWORD", "secret")
    connection = Connection()
    assert (connection.username, connection.password) == ("ada", "secret")
    connection = Connection("http://127.0.0.1:8200", username="bob", password="pw")
    assert connection.url == "http://127.0.0.1:8200" and connection.username == "bob"
    assert Connection("localhost", 8300).url == "http://localhost:8300"
    with pytest.raises(ValueError, match=r"port must be an int between 1 and 65535, got 0"):
        Connection(port=0)
    with pytest.raises(ValueError, match=r"server must be a URL like http://127.0.0.1, got 'ftp://x'"):
        Connection("ftp://x")
    with pytest.raises(ValueError, match=r"server must be a URL like http://127.0.0.1, got 'htp:/x'"):
        Connection("htp:/x")  # a misspelt scheme, not a host named htp
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0, got 0"):
        Connection(timeout=0)
    monkeypatch.setenv("VISDOM_PORT", "80x")
    with pytest.raises(ValueError, match=r"\$VISDOM_PORT must be an int, got '80x'"):
        Connection()
    monkeypatch.setenv("VISDOM_SERVER_URL", "ftp://y")
    with pytest.raises(ValueError, match=r"\$VISDOM_SERVER_URL must be a URL like http://127.0.0.1, got 'ftp://y'"):
        Connection()


def test_a_sink_finds_its_server_through_environment_variables(
        visdom_server, read_window, tmp_path, monkeypatch):
    monkeypatch.setenv("VISDOM_SERVER_URL", "http://127.0.0.1")
    monkeypatch.setenv("VISDOM_PORT", str(visdom_server.port))
    sink = VisdomSink("from-env-vars", run_dir=tmp_path, **FAST)
    Log(sink).scalar("loss", "train", 1, 2.0)
    assert sink.close(timeout=5)
    assert read_window(visdom_server, "from-env-vars", "loss") == {"train": ([1], [2.0])}


def test_each_run_has_one_env_named_or_generated(visdom_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = (VisdomSink(port=visdom_server.port, **FAST) for _ in range(2))
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", first.env) and first.env != second.env
    assert first.runlog.path == Path("runs") / first.env / "runlog.jsonl"
    assert first.url == f"http://127.0.0.1:{visdom_server.port}/env/{first.env}"
    assert first.close() and second.close()
    with pytest.raises(ValueError, match=r"env must be a non-empty str, not blank, got ' '"):
        VisdomSink(" ", port=visdom_server.port)
    with pytest.raises(ValueError, match=r"flush_every must be a number of seconds > 0, got 0"):
        VisdomSink("x", port=visdom_server.port, flush_every=0)


def test_a_login_server_receives_data_from_a_sink_with_the_right_credentials(
        tmp_path, read_window, caplog):
    credentials = {"username": "ada", "password": "a long passphrase"}
    with start(port=0, env_path=tmp_path / "visdom", login=True, **credentials) as server:
        sink = sink_for(server, "login", tmp_path, **credentials)
        Log(sink).scalar("loss", "train", 1, 3.0)
        assert sink.close(timeout=10)
        assert read_window(server, "login", "loss", **credentials) == {"train": ([1], [3.0])}

        wrong = sink_for(server, "login-wrong", tmp_path, username="ada", password="wrong")
        Log(wrong).scalar("loss", "train", 1, 3.0)
        assert wrong.flush(timeout=0.5) is False
        assert wrong.close(timeout=0.5) is False
        assert any("refused the login of 'ada'" in r for r in warnings_in(caplog))


def test_a_rewound_run_closes_the_windows_only_its_dropped_steps_wrote(visdom_server, read_window, tmp_path):
    first = sink_for(visdom_server, "rewound", tmp_path)
    log = Log(first)
    for step in range(1, 6):
        log.scalar("loss", "train", step, 1.0 / step)
    checkpoint = first.sync()
    for step in range(6, 9):
        log.scalar("loss", "train", step, 1.0 / step)
        log.scalar("late", "train", step, float(step))
    assert first.flush() and first.close()
    assert set(read_window(visdom_server, "rewound", "late")) == {"train"}

    resumed = sink_for(visdom_server, "rewound", tmp_path, rewind_to=checkpoint)
    assert resumed.flush() and resumed.close()
    assert read_window(visdom_server, "rewound", "loss")["train"][0] == [1, 2, 3, 4, 5]
    with pytest.raises(LookupError):
        read_window(visdom_server, "rewound", "late")


def test_sync_says_when_the_run_log_did_not_catch_up_in_time(tmp_path):
    sink = VisdomSink("slow", port=9, run_dir=tmp_path, flush_every=0.05)
    assert sink.sync(timeout=5) == sink.runlog.position
    Log(sink).scalar("loss", "train", 1, 1.0)
    assert sink.sync(timeout=0) is None  # no time to wait for the worker
    sink.close(timeout=0.5)


def test_a_connection_goes_on_over_a_new_socket_after_the_server_restarted(fresh_server):
    connection = Connection("http://127.0.0.1", fresh_server.port)
    assert connection.post("win_exists", {"win": "loss", "eid": "main"}) == "false"
    fresh_server.kill()
    with pytest.raises(DashboardError, match=r"is unreachable \((ConnectionRefusedError|RemoteDisconnected)\)"):
        connection.post("win_exists", {"win": "loss", "eid": "main"})
    fresh_server.start()  # same port
    assert connection.post("win_exists", {"win": "loss", "eid": "main"}) == "false"

    kept_alive = connection._http.sock
    fresh_server.kill()
    fresh_server.start()  # the socket kept alive is dead now: the next request opens another, once
    assert connection.post("win_exists", {"win": "loss", "eid": "main"}) == "false"
    assert connection._http.sock is not kept_alive


def test_close_gives_a_server_that_is_not_there_one_try_not_its_whole_timeout(tmp_path, caplog):
    sink = VisdomSink("gone", port=VisdomServer(0).port, run_dir=tmp_path, **FAST)
    Log(sink).scalar("loss", "train", 1, 1.0)
    started = time.monotonic()
    assert sink.close(timeout=30) is False
    assert time.monotonic() - started < 10  # one refused connection, then the run log keeps it
    assert [e["y"] for e in RunLog.read(sink.runlog.path) if e["k"] == "points"] == [{"train": 1.0}]
    assert any("monitor replay" in r for r in warnings_in(caplog))


FULL_DISK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # writes past 20 kB fail as on a full disk
from monitor.log import Log
from monitor.sink import VisdomSink
sink = VisdomSink("full-disk", port=int(sys.argv[1]), run_dir=sys.argv[2], flush_every=0.05)
log = Log(sink)
for step in range(1, 2001):
    log.scalar("loss", "train", step, 1.0 / step)
print(sink.close(timeout=30))
"""


def test_a_full_disk_still_lets_the_dashboard_get_everything_and_leaves_a_readable_run_log(
        visdom_server, read_window, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(visdom_server.port), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    xs, _ = read_window(visdom_server, "full-disk", "loss")["train"]
    assert xs[0] == 1 and xs[-1] == 2000
    logged = [e["x"] for e in RunLog.read(tmp_path / RunLog.FILENAME) if e["k"] == "points"]  # no torn line inside
    # What the disk took: from the first point on, each whole, however the worker's batches fell
    # (a shorter line may still fit after a longer one did not).
    assert 0 < len(logged) < 2000 and logged == sorted(set(logged)) and logged[:10] == list(range(1, 11))
    missing = re.search(r"(\d+) records of env 'full-disk' could not be written", done.stderr)
    assert "could not be written" in done.stderr and missing and int(missing.group(1)) == 2000 - len(logged)


def test_another_program_on_the_port_is_not_waited_for_as_a_dashboard_would_be(tmp_path, caplog):
    # A plain web server (a notebook's, a docs preview) answers 404/501: no later try gets better.
    import http.server
    import threading

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        sink = VisdomSink("elsewhere", port=other.server_address[1], run_dir=tmp_path, **FAST)
        Log(sink).scalar("loss", "train", 1, 1.0)
        started = time.monotonic()
        assert sink.flush(timeout=30) is False and sink.close(timeout=30) is False
        assert time.monotonic() - started < 5
    finally:
        other.shutdown()
        other.server_close()
    assert [e["y"] for e in RunLog.read(sink.runlog.path) if e["k"] == "points"] == [{"train": 1.0}]
    assert any("answered HTTP 501" in r for r in warnings_in(caplog))


@contextlib.contextmanager
def _a_request_hung(server: VisdomServer, sink: Any) -> Iterator[Log]:
    """Point 1 delivered, then the server stopped (SIGSTOP: connections taken, never answered)
    and point 2 logged: its send waits on the stopped server until the block ends."""
    log = Log(sink)
    log.scalar("loss", "train", 1, 1.0)
    assert sink.flush(timeout=10)
    server.pause()
    try:
        log.scalar("loss", "train", 2, 0.5)
        time.sleep(0.5)  # the send of it is in flight
        yield log
    finally:
        server.resume()


def test_close_while_a_request_hangs_on_a_stopped_server_waits_for_that_request_only(fresh_server, tmp_path):
    sink = VisdomSink("hung", port=fresh_server.port, run_dir=tmp_path, flush_every=0.05, timeout=3.0)
    with _a_request_hung(fresh_server, sink):
        started = time.monotonic()
        assert sink.close(timeout=30) is False
        took = time.monotonic() - started
    assert took < 4.5  # the request in flight (3 s at most) was the one try; a second one made it 5.5
    assert [e["x"] for e in RunLog.read(sink.runlog.path) if e["k"] == "points"] == [1, 2]


@pytest.mark.parametrize("kind", ["here", "process"])
def test_a_checkpoint_s_sync_is_answered_while_a_request_hangs_on_a_stopped_server(fresh_server, tmp_path, kind):
    # A DDP user's job stalled 5 s at each checkpoint while the dashboard was stopped: the sync
    # waited behind the worker's send. Writing the run log never waits on the server.
    from monitor.sink_process import SinkProcess

    make = VisdomSink if kind == "here" else SinkProcess
    sink = make("hung-sync", port=fresh_server.port, run_dir=tmp_path, flush_every=0.05, timeout=30.0)
    with _a_request_hung(fresh_server, sink) as log:  # for up to 30 s
        log.scalar("loss", "train", 3, 0.25)
        position = sink.sync(timeout=10)  # what Checkpoint asks before it writes
        assert position is not None and position == (tmp_path / RunLog.FILENAME).stat().st_size
        assert [e["x"] for e in RunLog.read(tmp_path / RunLog.FILENAME) if e["k"] == "points"] == [1, 2, 3]
    assert sink.close(timeout=30)


def test_a_base_url_is_a_path_with_or_without_its_slash():
    assert Connection("http://127.0.0.1", 8097, base_url="visdom").url == "http://127.0.0.1:8097/visdom"
    assert Connection("http://127.0.0.1", 8097, base_url="/visdom/").url == "http://127.0.0.1:8097/visdom"


def test_close_with_a_short_timeout_still_leaves_every_record_in_the_run_log(tmp_path):
    sink = VisdomSink("behind", port=VisdomServer(0).port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    for step in range(1, 3001):
        log.scalar("lr", "lr", step, 0.1)
    log.images("inputs", 3000, torch.rand(4, 1, 8, 8))
    assert sink.close(timeout=0.001) is False  # it said True while no send had happened yet
    kinds = [e["k"] for e in RunLog.read(sink.runlog.path)]  # at once: a script may exit right after close()
    assert kinds.count("points") == 3000 and kinds.count("image") == 1


def test_the_url_of_an_env_with_a_space_opens_that_env(visdom_server, tmp_path):
    from urllib.request import urlopen

    sink = VisdomSink("run 1 (retry)", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    Log(sink).scalar("loss", "train", 1, 1.0)
    assert sink.close(timeout=10)
    assert sink.url.endswith("/env/run%201%20%28retry%29")  # quoted ('#' and '?' are refused: the page shows none)
    with urlopen(sink.url, timeout=10) as page:
        assert page.status == 200


def test_an_env_of_more_windows_than_a_page_draws_well_is_said_once(tmp_path, caplog):
    # 1000 per-class metrics, each its own window: the page froze for minutes, without a word
    from monitor.sink import MANY_WINDOWS

    sink = VisdomSink("per-class", port=1, run_dir=tmp_path, timeout=0.2)
    log = Log(sink)
    with caplog.at_level("WARNING", logger="monitor"):
        for window in range(MANY_WINDOWS + 20):
            log.scalar(f"acc/{window}", "validation", 1, 0.5)
        sink.close(timeout=0.2)
    said = [r.getMessage() for r in caplog.records if "windows:" in r.getMessage()]
    assert len(said) == 1 and re.search(r"env 'per-class' has 1\d\d windows: a page draws each as a pane.* "
                                        r"traces of one window", said[0]), said  # counted in the worker's batches


def test_a_server_s_path_is_taken_from_its_url_and_said_in_the_replay_command_quoted_for_a_shell(tmp_path, caplog):
    assert Connection("http://127.0.0.1:1/vis/").url == "http://127.0.0.1:1/vis"
    assert Connection("127.0.0.1:1/vis").url == "http://127.0.0.1:1/vis"  # was refused as a misspelt scheme
    assert Connection("http://127.0.0.1:1/vis", base_url="/other").url == "http://127.0.0.1:1/other"
    folder = tmp_path / "runs" / "lr 0.1 (v1)"
    sink = VisdomSink("lr 0.1 (v1)", server="http://127.0.0.1:1/vis", run_dir=folder, timeout=0.2)
    sink.put(Points("loss", 1, ("train",), (0.5,)))
    with caplog.at_level("WARNING", logger="monitor"):
        sink.close(timeout=0.2)
    said = [r.getMessage() for r in caplog.records if "send it later with" in r.getMessage()]
    assert said and "were not confirmed by http://127.0.0.1:1/vis (down, or too slow to answer in time)" in said[0]
    assert f"`monitor replay '{folder / RunLog.FILENAME}' --server http://127.0.0.1/vis --port 1` (a sweep's " \
           f"runs at once: `monitor replay {folder.parent} --server http://127.0.0.1/vis --port 1`)" in said[0], said


def test_the_replay_command_said_for_a_server_with_a_login_says_where_the_login_goes(tmp_path, caplog):
    from monitor.sink import VisdomSink

    sink = VisdomSink("login-down", port=1, run_dir=tmp_path, username="ops", password="secret", timeout=0.2)
    sink.put(Points("loss", 1, ("train",), (0.5,)))
    with caplog.at_level("WARNING", logger="monitor"):
        sink.close(timeout=0.2)
    said = [r.getMessage() for r in caplog.records if "send it later with" in r.getMessage()]
    assert said and said[0].endswith(f"`monitor replay {tmp_path / RunLog.FILENAME} --port 1` (a sweep's runs at once: "
                                     f"`monitor replay {tmp_path.parent} --port 1`) (the server's login in "
                                     f"VISDOM_USERNAME and VISDOM_PASSWORD) (reported once)"), said
