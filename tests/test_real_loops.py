"""Loops written the way users write them: re-runs, names from anywhere, text from a dataset."""
from __future__ import annotations

from monitor.log import Log
from monitor.sink import VisdomSink


def test_text_arrives_escaped_unless_html_is_asked_for(visdom_server, read_window_raw, tmp_path):
    sink = VisdomSink("escaped-text", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    log.text("from a dataset", 0, "<img src=x onerror=alert(1)>\nsecond line")
    log.text("markup", 0, "<b>bold</b>", html=True)
    assert sink.close(timeout=10)
    assert read_window_raw(visdom_server, "escaped-text", "from a dataset")["content"] == \
        "&lt;img src=x onerror=alert(1)&gt;<br>second line"
    assert read_window_raw(visdom_server, "escaped-text", "markup")["content"] == "<b>bold</b>"


def test_a_point_that_goes_back_in_x_is_reported_once_and_not_drawn(visdom_server, read_window, tmp_path, caplog):
    sink = VisdomSink("backwards", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    for x, y in [(1, 1.0), (5, 0.5), (3, 0.7), (4, 0.6), (6, 0.4)]:
        log.scalar("loss", "train", x, y)
    log.scalar("loss", "validation", 2, 0.9)  # another trace keeps its own order
    assert sink.close(timeout=10)
    assert read_window(visdom_server, "backwards", "loss") == {"train": ([1, 5, 6], [1.0, 0.5, 0.4]),
                                                              "validation": ([2], [0.9])}
    reports = [r.getMessage() for r in caplog.records if "not after" in r.getMessage()]
    assert reports == ["monitor: window 'loss', trace 'train': x=3 is not after the trace's last x=5; "
                       "the point is kept in the run log but not drawn (reported once)"]
