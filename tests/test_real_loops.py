"""Loops written the way users write them: re-runs, names from anywhere, text from a dataset."""
from __future__ import annotations

import pytest
import torch

from monitor import Monitor
from monitor.log import Log, NullSink
from monitor.replay import replay
from monitor.runlog import RunLog
from monitor.server import VisdomServer
from monitor.sink import VisdomSink


def test_text_arrives_escaped_unless_html_is_asked_for(visdom_server, read_window_raw, tmp_path):
    sink = VisdomSink("escaped-text", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    log.text("from a dataset", 0, "<img src=x onerror=alert(1)>\nsecond  line\tend")
    log.text("markup", 0, "<b>bold</b>", html=True)
    assert sink.close(timeout=10)
    assert read_window_raw(visdom_server, "escaped-text", "from a dataset")["content"] == \
        '<div style="white-space: pre-wrap">&lt;img src=x onerror=alert(1)&gt;\nsecond  line\tend</div>'
    assert read_window_raw(visdom_server, "escaped-text", "markup")["content"] == "<b>bold</b>"


def test_windows_going_back_one_after_another_as_a_restarted_script_logs_them_are_said_in_one_line(
        visdom_server, tmp_path, caplog):
    # A TensorBoard script run again: seven lines, one a batch the sink took in, each window's first
    # point going back as the script reached it.
    import time

    sink = VisdomSink("backwards-apart", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    for window in ("loss", "accuracy", "lr"):
        for x in (1, 2, 3):
            log.scalar(window, "train", x, 1.0)
    for window in ("loss", "accuracy", "lr"):  # run again: each window's first point 0.2 s apart
        log.scalar(window, "train", 1, 1.0)
        time.sleep(0.2)
    assert sink.close(timeout=10)
    reports = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert len(reports) == 1 and reports[0].startswith("monitor: 3 windows went back to an earlier x"), reports


def test_a_trace_that_goes_back_in_x_goes_on_from_there_reported_once(visdom_server, read_window, tmp_path,
                                                                       caplog):
    # A script resumed from step 3's checkpoint (or a notebook cell run again) logs from step 3
    # again: the curve goes on from there, as the run that goes on sees it, without a zigzag.
    sink = VisdomSink("backwards", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    log = Log(sink)
    for x, y in [(1, 1.0), (2, 0.8), (3, 0.75), (4, 0.65), (5, 0.5), (3, 0.7), (4, 0.6), (6, 0.4), (2, 0.9)]:
        log.scalar("loss", "train", x, y)
    log.histogram("weights", 4, torch.arange(10.0))
    log.histogram("weights", 1, torch.arange(10.0) * 2)  # percentile bands are traces too
    log.scalar("loss", "validation", 2, 0.9)  # another trace keeps its own order
    assert sink.close(timeout=10)
    assert read_window(visdom_server, "backwards", "loss") == {"train": ([1, 2], [1.0, 0.9]),
                                                              "validation": ([2], [0.9])}
    bands = {name: xs for name, (xs, _) in read_window(visdom_server, "backwards", "weights").items()
             if not name.startswith("step ")}  # beside the latest histogram
    assert len(bands) == 9 and all(xs == [1] for xs in bands.values())
    reports = [r.getMessage() for r in caplog.records if "went back" in r.getMessage()]
    assert reports[0].startswith("monitor: ") and "'loss' (trace 'train': x=3, after x=5)" in reports[0]
    assert reports[-1].endswith("curves go on from there, the points after it taken off the plot (the run log keeps "
                                "them) (reported once)")
    said = " ".join(reports)  # once a window, however many of its traces (a histogram's nine bands)
    assert said.count("'loss' (") == said.count("'weights' (") == 1 and len(reports) <= 2
    assert [e["x"] for e in RunLog.read(tmp_path / RunLog.FILENAME) if e.get("win") == "loss"][:9] == [
        1, 2, 3, 4, 5, 3, 4, 6, 2]


BAD_NAMES = ["../x", "/abs", "a/b", "a\\b", "..", "a\0b", "tab\tin", "x" * 300, "日" * 90, "", " ", "实验#1", "问?号"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_an_env_that_is_not_a_plain_name_is_refused_and_nothing_is_written(tmp_path, monkeypatch, bad):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match=r"^env must "):
        Monitor([], env=bad, port=VisdomServer(0).port)
    with pytest.raises(ValueError, match=r"^env must "):
        replay_env(tmp_path, bad)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["work", "work/run.jsonl"]


def replay_env(tmp_path, env):
    """``replay`` of a small run log into ``env`` (refused before anything is sent)."""
    path = tmp_path / "work" / "run.jsonl"
    path.write_text('{"k": "run", "env": "fine"}\n')
    return replay(path, env, port=VisdomServer(0).port)


@pytest.mark.parametrize("bad", ["a\0b", "line\nbreak", "x" * 300, "", " "])
def test_window_and_trace_names_are_checked_at_the_door(bad):
    log = Log(NullSink())
    with pytest.raises(ValueError, match=r"^window must "):
        log.scalar(bad, "train", 1, 1.0)
    with pytest.raises(ValueError, match=r"^trace must "):
        log.scalars("loss", 1, {bad: 1.0})
    with pytest.raises(ValueError, match=r"^trace must "):
        log.vector("norms", 1, ["total", bad], torch.ones(2))


def test_window_and_trace_names_may_hold_a_slash_they_name_no_file():
    log = Log(NullSink())
    log.scalar("loss/train", "D/total", 1, 1.0)
