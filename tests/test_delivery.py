"""What a person sees first: panes in reading order, titles in the pane header, one caption per grid."""
from __future__ import annotations

import json
import time

import torch
from torch import nn

from monitor import GradNorms, Images, LearningRate, Monitor, Scalars, Summary
from monitor.log import Log
from monitor.sink import VisdomSink


def env_windows(server, env: str, connect_client) -> list[str]:
    """The env's windows in the order the server holds them: the order the page lays them out."""
    return list(json.loads(connect_client(server).get_window_data(None, env)))


def test_panes_come_in_the_order_a_person_reads_a_run(visdom_server, connect_client, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Given in another order than they should show: the page order does not depend on it.
    monitor = Monitor([Images(every=1), GradNorms(), LearningRate(), Scalars(), Summary()], env="reading-order",
                      port=visdom_server.port, run_dir=tmp_path, raise_errors=True)
    with monitor:
        monitor.train_start(model, optimizer)
        for _ in range(3):
            x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
            outputs = model(x)
            loss = nn.functional.cross_entropy(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward()
            optimizer.step()
            monitor.step_end(loss=loss, metrics={"accuracy": (outputs.argmax(1) == y).float().mean()},
                             inputs=x.reshape(8, 1, 2, 2), targets=y)
        assert monitor.flush(timeout=10)
    assert env_windows(visdom_server, "reading-order", connect_client) == [
        "summary", "loss", "accuracy", "learning rate", "grad norm", "inputs"]


def test_a_window_that_comes_later_still_takes_its_place_on_the_page(visdom_server, connect_client, read_window,
                                                                      monkeypatch, tmp_path):
    # Placed before "learning rate", "loss" has it closed and created again REOPEN later. A flush
    # waits for that, not for a page's late close of it too (the heartbeat after the flush checks);
    # a close, with no heartbeat after it, waits for both. A pane new at the close goes last:
    # moving the others held every run that gave its hparams at the end 2 s.
    from monitor.delivery import Delivery

    settled = []
    verify = Delivery._verify_reopened
    monkeypatch.setattr(Delivery, "_verify_reopened",
                        lambda self, limit, settle=False: (settled.append(settle), verify(self, limit, settle))[1])
    sink = VisdomSink("late-window", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    log.window("learning rate", order=30)
    log.scalar("learning rate", "lr", 1, 0.1)
    assert sink.flush(timeout=10)
    log.window("loss", order=10)
    log.scalar("loss", "train", 1, 2.0)
    assert sink.flush(timeout=10) and True not in settled
    assert env_windows(visdom_server, "late-window", connect_client) == ["loss", "learning rate"]
    log.scalar("learning rate", "lr", 2, 0.05)
    log.window("epoch time", order=5)  # before both
    log.scalar("epoch time", "train", 1, 3.0)
    assert sink.flush(timeout=10)
    assert env_windows(visdom_server, "late-window", connect_client) == ["epoch time", "loss", "learning rate"]
    log.window("hparams", order=0)  # as the run ends
    log.text("hparams", 0, "lr 0.1")
    assert sink.close(timeout=10) and settled[-1] is True
    assert env_windows(visdom_server, "late-window", connect_client) == ["epoch time", "loss", "learning rate",
                                                                         "hparams"]
    assert read_window(visdom_server, "late-window", "learning rate") == {"lr": ([1, 2], [0.1, 0.05])}


def test_a_window_created_again_survives_the_page_s_late_close(visdom_server, connect_client, read_window,
                                                              tmp_path):
    # Visdom's page answers a close with a close of its own: the window is created again only a
    # while later, and the heartbeat brings it back if a slow page's close took it even so.
    sink = VisdomSink("late-close", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    sink.delivery.heartbeat = 0.1
    log = Log(sink)
    log.window("summary", order=1)  # the heartbeat's probe of the env: it stays
    log.text("summary", 0, "a run")
    log.window("learning rate", order=30)
    log.scalar("learning rate", "lr", 1, 0.1)
    assert sink.flush(timeout=10)
    log.window("loss", order=10)  # placed before it: "learning rate" is closed and created again
    log.scalar("loss", "train", 1, 2.0)
    assert sink.flush(timeout=10)
    connect_client(visdom_server).close("learning rate", env="late-close")  # the page's late close
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "learning rate" not in env_windows(visdom_server, "late-close",
                                                                                connect_client):
        time.sleep(0.1)
    assert sink.close(timeout=10)
    assert env_windows(visdom_server, "late-close", connect_client) == ["summary", "loss", "learning rate"]
    assert read_window(visdom_server, "late-close", "learning rate") == {"lr": ([1], [0.1])}


def test_two_image_callbacks_show_two_windows(visdom_server, read_window_raw, tmp_path):
    with Monitor([Images(every=1, captions=None), Images(source="outputs", every=10, captions=None)],
                 env="two-grids", port=visdom_server.port, run_dir=tmp_path, raise_errors=True) as monitor:
        for _ in range(11):
            monitor.step_end(inputs=torch.rand(4, 1, 6, 6), outputs=torch.rand(4, 3, 6, 6))
        assert monitor.flush(timeout=10)
    for window in ("inputs", "outputs"):
        assert read_window_raw(visdom_server, "two-grids", window)["type"] == "image_history"


def test_a_title_is_in_the_pane_header_only_and_a_grid_has_no_second_caption(visdom_server, read_window_raw,
                                                                               tmp_path):
    sink = VisdomSink("headers", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    log.window("loss", title="loss", xlabel="step")
    log.scalar("loss", "train", 1, 1.0)
    log.images("inputs", 1, torch.rand(2, 1, 4, 4))
    assert sink.close(timeout=10)
    plot = read_window_raw(visdom_server, "headers", "loss")
    assert plot["title"] == "loss" and "title" not in plot["content"]["layout"]
    grid = read_window_raw(visdom_server, "headers", "inputs")
    assert grid["title"] == "inputs" and "caption" not in grid["content"]


def test_laying_out_a_window_again_the_same_way_sends_nothing(tmp_path):
    from monitor.log import NullSink
    from monitor.records import Layout

    class Layouts(NullSink):
        def __init__(self):
            self.layouts = []

        def put(self, record):
            if isinstance(record, Layout):
                self.layouts.append(record)

    sink = Layouts()
    log = Log(sink)
    for _ in range(3):
        log.window("loss", order=10, xlabel="step")
    log.window("loss", order=10, xlabel="epoch")
    assert [r.opts for r in sink.layouts] == [{"xlabel": "step"}, {"xlabel": "epoch"}]
