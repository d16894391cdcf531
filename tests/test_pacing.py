"""Pacing by cost: a window's sends are spaced by what they cost the server; nothing is lost."""
from __future__ import annotations

import json

import torch

from monitor.log import Log
from monitor.runlog import RunLog
from monitor.sink import VisdomSink
from monitor.windows import Windows


def test_a_large_window_waits_in_proportion_to_its_size_while_small_ones_keep_the_interval(
        visdom_server, connect_client, tmp_path):
    sink = VisdomSink("pacing", port=visdom_server.port, run_dir=tmp_path / "run", flush_every=0.05)
    log = Log(sink)
    layers = [f"layer{i}" for i in range(160)]
    for step in range(1, 301):
        log.vector("grad norm", step, layers, torch.arange(160.0) + step)  # a deep model's window
        log.scalar("loss", "train", step, 1.0 / step)
        if step % 100 == 0:
            assert sink.flush(timeout=30)
    pacing = dict(sink.delivery.pacing)
    assert sink.close(timeout=30)

    assert pacing["loss"] < 0.5  # small: the flush interval, or ten times a slow request
    assert pacing["grad norm"] >= 0.5 > pacing["loss"]  # about 80 KB (160 traces of 42 points): 0.8 s
    expected = Windows(1000)
    expected.apply(RunLog.read(tmp_path / "run" / RunLog.FILENAME))
    shown = json.loads(connect_client(visdom_server).get_window_data(None, "pacing"))
    for name in ("grad norm", "loss"):  # the latest state of every window arrived in the end
        window = json.loads(shown[name]) if isinstance(shown[name], str) else shown[name]
        sent = window["content"]["data"]
        logged = expected.by_name[name].message("pacing")[1]["data"]
        assert [(t["name"], t["x"], t["y"]) for t in sent] == [(t["name"], t["x"], t["y"]) for t in logged]
        assert sent[0]["x"][-1] == 300


def test_every_window_of_many_changing_every_step_gets_its_turn_between_flushes(visdom_server, connect_client,
                                                                                   tmp_path):
    # Sends go one window at a time, SPREAD apart: taken in page order, the first four windows
    # were due again before the fifth's turn came, and the others froze until a flush.
    import time

    sink = VisdomSink("turns", port=visdom_server.port, run_dir=tmp_path / "run")  # sends every 0.5 s
    log = Log(sink)
    names = [f"metric {i}" for i in range(10)]
    began, step, logged_at = time.monotonic(), 0, {}
    while time.monotonic() - began < 8:
        step += 1
        for name in names:
            log.scalar(name, "train", step, float(step))
        logged_at[step] = time.monotonic()
        time.sleep(0.02)
    shown = json.loads(connect_client(visdom_server).get_window_data(None, "turns"))  # before any flush
    sink.close(timeout=30)
    recent = max(s for s, t in logged_at.items() if t <= logged_at[step] - 4)  # logged 4 s before the end
    last = {name: (json.loads(shown[name]) if isinstance(shown[name], str) else shown[name])
            ["content"]["data"][-1]["x"][-1] for name in names}
    assert all(x >= recent for x in last.values()), (recent, last)


def test_a_pane_of_megabytes_that_lags_the_run_is_said_once(visdom_server, tmp_path, caplog):
    # A metric-learning run's grid of 64 images of 128 x 128 was a 2.3 MB message, sent every
    # 77 s: the pane showed epoch 1 until the run ended, unsaid.
    sink = VisdomSink("big-grids", port=visdom_server.port, run_dir=tmp_path / "run", flush_every=0.05)
    log = Log(sink)
    noise = torch.Generator().manual_seed(0)
    with caplog.at_level("WARNING", logger="monitor"):
        for step in range(2):
            log.images("samples", step, torch.rand(16, 3, 128, 128, generator=noise))  # noise: about 0.8 MB
            assert sink.flush(timeout=60)
        assert sink.close(timeout=60)
    said = [r.getMessage() for r in caplog.records if "sent at most every" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("monitor: window 'samples' is a ") and \
        "MB message, sent at most every" in said[0] and "Images(count=16)" in said[0], said
