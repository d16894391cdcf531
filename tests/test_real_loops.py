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
