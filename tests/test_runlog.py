"""RunLog: every entry of a run, in order, at full resolution; a crash loses at most a torn line."""
from __future__ import annotations

import json
import math

import pytest

from monitor.runlog import RunLog

ENTRIES = [{"k": "run", "env": "e", "time": 1.0},
           {"k": "points", "win": "loss", "x": 1, "y": {"train": 0.5, "validation": math.nan}},
           {"k": "points", "win": "loss", "x": 2, "y": {"train": math.inf}},
           {"k": "text", "win": "notes", "x": 2, "html": "<b>hi</b>\nthere"}]


def test_entries_read_back_in_order_with_non_finite_values(tmp_path):
    log = RunLog(tmp_path / "run" / RunLog.FILENAME)
    log.append(ENTRIES[:2])
    log.append(ENTRIES[2:])
    log.close()
    read = list(RunLog.read(log.path))
    assert [e["k"] for e in read] == ["run", "points", "points", "text"]
    assert math.isnan(read[1]["y"]["validation"]) and read[2]["y"]["train"] == math.inf
    assert read[3] == ENTRIES[3]


def test_a_line_torn_by_a_crash_is_skipped_and_dropped_on_the_next_open(tmp_path):
    path = tmp_path / RunLog.FILENAME
    log = RunLog(path)
    log.append(ENTRIES)
    log.close()
    with open(path, "ab") as file:
        file.write(b'{"k": "points", "win": "lo')
    assert len(list(RunLog.read(path))) == 4
    reopened = RunLog(path)
    reopened.append([{"k": "points", "win": "loss", "x": 3, "y": {"train": 0.1}}])
    reopened.close()
    assert [e.get("x") for e in RunLog.read(path)][-2:] == [2, 3]


def test_rewind_cuts_the_log_back_to_a_position(tmp_path):
    path = tmp_path / RunLog.FILENAME
    log = RunLog(path)
    log.append(ENTRIES[:2])
    position = log.sync()
    log.append(ENTRIES[2:])
    log.close()
    assert len(list(RunLog.read(path, end=position))) == 2
    RunLog(path, rewind_to=position).close()
    assert len(list(RunLog.read(path))) == 2
    with pytest.raises(ValueError, match=rf"rewind_to must be between 0 and {position} .*, got 99999"):
        RunLog(path, rewind_to=99999)


def test_reading_reports_progress_in_bytes(tmp_path):
    log = RunLog(tmp_path / RunLog.FILENAME)
    log.append(ENTRIES)
    log.close()
    seen = []
    list(RunLog.read(log.path, progress=seen.append))
    assert seen[-1] == log.path.stat().st_size
    with open(log.path, "ab") as file:  # a crashed run's torn last line: read through all the same
        file.write(b'{"k": "points", "win"')
    seen = []
    list(RunLog.read(log.path, progress=seen.append))
    assert seen[-1] == log.path.stat().st_size


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / RunLog.FILENAME
    path.write_bytes(b'{"k": "run", "env": "e"}\nnot json\n')
    with pytest.raises(ValueError, match=r"runlog.jsonl line 2 is not a JSON entry"):
        list(RunLog.read(path))


def test_wide_entries_name_their_traces_once_and_read_back_whole_after_a_rewind(tmp_path):
    names = [f"{i}.Conv2d" for i in range(40)]
    wide = [{"k": "points", "win": "grad norm", "x": x, "y": {n: (x + i) / 7 for i, n in enumerate(names)}}
            for x in range(1, 7)]
    narrow = {"k": "points", "win": "loss", "x": 1, "y": {"train": 0.5}}
    path = tmp_path / "runlog.jsonl"
    log = RunLog(path)
    log.append(wide[:2] + [narrow])
    cut = log.position
    log.append(wide[2:4])
    log.close()
    lines = path.read_bytes().splitlines()
    assert b'"y"' in lines[0] and b'"f64"' in lines[1] and b'"y"' in lines[2]  # names once; a narrow entry whole
    assert len(lines[1]) < len(lines[0]) * 0.6
    assert list(RunLog.read(path)) == wide[:2] + [narrow] + wide[2:4]
    again = RunLog(path, rewind_to=cut)  # a resumed run: its writer names them again first
    again.append(wide[4:])
    again.close()
    assert list(RunLog.read(path)) == wide[:2] + [narrow] + wide[4:]
    renamed = {**wide[0], "y": {f"layer {n}": v for n, v in wide[0]["y"].items()}}  # other traces: whole again
    log = RunLog(path)
    log.append([wide[0], renamed, renamed])
    log.close()
    assert list(RunLog.read(path))[-3:] == [wide[0], renamed, renamed]


def test_wide_entries_keep_every_value_exactly_and_older_logs_with_value_lists_still_read(tmp_path):
    names = [f"{i}.Linear" for i in range(20)]
    odd = [0.1, 1e-300, 5e-324, -0.0, float("inf"), float("-inf"), 1 / 3, 2.0 ** 60] + [i / 7 for i in range(12)]
    entries = [{"k": "points", "win": "w", "x": x, "y": dict(zip(names, odd))} for x in (1, 2)]
    nan = {"k": "points", "win": "w", "x": 3, "y": dict(zip(names, [float("nan")] * 20))}
    path = tmp_path / "runlog.jsonl"
    log = RunLog(path)
    log.append(entries + [nan])
    log.close()
    read = list(RunLog.read(path))
    assert read[:2] == entries and [repr(v) for v in read[1]["y"].values()] == [repr(v) for v in odd]
    assert all(math.isnan(v) for v in read[2]["y"].values())
    older = tmp_path / "older.jsonl"  # the "v" form: values as a JSON list
    older.write_text(json.dumps(entries[0]) + "\n" + json.dumps({"k": "points", "win": "w", "x": 2, "v": odd}) + "\n")
    assert list(RunLog.read(older)) == entries


def test_a_histogram_of_many_edges_writes_them_as_bytes_and_reads_them_back_exactly(tmp_path):
    edges = [-(1e-12 * 1.1 ** k) for k in range(300, 0, -1)] + [0.0] + [1e-12 * 1.1 ** k for k in range(1, 301)]
    counts = [k % 5 for k in range(len(edges) - 1)]
    wide = {"k": "histogram", "win": "fc1.weight", "x": 3, "edges": edges, "counts": counts, "n": sum(counts)}
    narrow = {"k": "histogram", "win": "bias", "x": 3, "edges": [0.0, 0.5, 1.0], "counts": [1, 2], "n": 3}
    path = tmp_path / "runlog.jsonl"
    log = RunLog(path)
    log.append([wide, narrow])
    log.close()
    lines = path.read_bytes().splitlines()
    assert b'"e64"' in lines[0] and b'"edges"' in lines[1]
    assert len(lines[0]) < len(json.dumps(wide, separators=(",", ":"))) * 0.7
    read = list(RunLog.read(path))
    assert read == [wide, narrow] and [repr(e) for e in read[0]["edges"]] == [repr(e) for e in edges]
    older = tmp_path / "older.jsonl"  # a log written before: edges as JSON text
    older.write_text(json.dumps(wide) + "\n")
    assert list(RunLog.read(older)) == [wide]


def test_points_of_windows_a_reader_does_not_want_are_passed_over_unparsed(tmp_path):
    names = [f"{i}.Linear" for i in range(20)]
    entries = [{"k": "run", "env": "e"}]
    for x in range(1, 4):
        entries += [{"k": "points", "win": 'grad "norm"', "x": x, "y": {n: x / (i + 1) for i, n in enumerate(names)}},
                    {"k": "points", "win": "loss", "x": x, "y": {"train": 1 / x}}]
    path = tmp_path / RunLog.FILENAME
    log = RunLog(path)
    log.append(entries)
    log.close()
    asked = []
    read = list(RunLog.read(path, windows=lambda window: asked.append(window) or window == "loss"))
    assert asked == ['grad "norm"', "loss"]  # once each
    assert read == [entry if entry.get("win") != 'grad "norm"' else {"k": "points", "win": 'grad "norm"'}
                    for entry in entries]
    # unparsed: a line of theirs that is not JSON past its window's name is not noticed
    path.write_bytes(path.read_bytes().replace(b'"x":2,', b'"x":2,,', 1))
    assert [e for e in RunLog.read(path, windows="loss".__eq__) if "y" in e] == [e for e in entries if "y" in e
                                                                                 and e["win"] == "loss"]
    with pytest.raises(ValueError, match="line 4 is not a JSON entry"):
        list(RunLog.read(path))


def test_a_resume_keeps_the_rest_of_the_step_of_a_log_that_marked_its_earlier_checkpoint_s_end_first(tmp_path):
    from monitor.entries import resumes_at

    # As logs written before 2026-12-07 hold a step saved again after its validation: the first
    # save's "continues" mark at the second save's position, its "rest_of_step" after it.
    lines = [b'{"k":"points","win":"loss","x":40,"y":{"train":1.0}}\n']
    first = len(lines[0])
    lines += [b'{"k":"rest_of_step","from":%d}\n' % first,
              b'{"k":"points","win":"loss","x":40,"y":{"validation":0.5}}\n']
    second = sum(map(len, lines))
    lines += [b'{"k":"continues","from":%d}\n' % first, b'{"k":"rest_of_step","from":%d}\n' % second,
              b'{"k":"text","win":"samples","x":40,"html":"a sample","keep":10}\n',
              b'{"k":"continues","from":%d}\n' % second]
    path = tmp_path / "runlog.jsonl"
    path.write_bytes(b"".join(lines))
    assert resumes_at(path, second) == (len(path.read_bytes()), False)  # the sample stays
    assert resumes_at(path, first) == (second + len(lines[3]), False)  # up to the first save's mark
