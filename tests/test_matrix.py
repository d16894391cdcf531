"""log.heatmap: a matrix pane (a confusion matrix), drawn as Visdom's heatmap was, from the run log."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor import Monitor
from monitor.log import NullSink
from monitor.replay import replay

CLASSES = ["cat", "dog", "cow"]


def _confusion(truth: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    return torch.bincount(truth * len(CLASSES) + predicted, minlength=len(CLASSES) ** 2).reshape(len(CLASSES), -1)


def test_a_confusion_matrix_shows_its_latest_counts_named_row_0_on_top_each_written_in_its_cell(
        visdom_server, tmp_path, read_window_raw):
    # An evaluation loop's confusion matrix each epoch (what a Visdom user drew with viz.heatmap,
    # which blocked the loop while the server was stopped).
    torch.manual_seed(0)
    truth = torch.randint(0, 3, (60,))
    with Monitor([], env="confusion", port=visdom_server.port, run_dir=tmp_path / "run") as monitor:
        monitor.log.window("confusion", xlabel="predicted", ylabel="true")
        for epoch in range(1, 4):
            predicted = torch.where(torch.rand(60) < epoch / 4, truth, torch.randint(0, 3, (60,)))
            counts = _confusion(truth, predicted)
            monitor.log.heatmap("confusion", epoch * 10, counts, rows=CLASSES, columns=CLASSES)
        monitor.log.heatmap("attention", 30, np.random.rand(24, 24))
        assert monitor.flush()
    shown = read_window_raw(visdom_server, "confusion", "confusion")["content"]
    (cells,) = shown["data"]
    assert cells["type"] == "heatmap" and cells["z"] == counts.tolist()
    assert cells["x"] == cells["y"] == CLASSES and shown["layout"]["yaxis"]["autorange"] == "reversed"
    assert shown["layout"]["xaxis"]["title"] == "predicted (step 30)" and shown["layout"]["yaxis"]["title"] == "true"
    written = {(a["y"], a["x"]): a["text"] for a in shown["layout"]["annotations"]}
    assert written == {(row, column): str(counts[i, j].item()) for i, row in enumerate(CLASSES)
                       for j, column in enumerate(CLASSES)}
    attention = read_window_raw(visdom_server, "confusion", "attention")["content"]
    assert len(attention["data"][0]["z"]) == 24 and "annotations" not in attention["layout"]  # too small to read
    replay(tmp_path / "run" / "runlog.jsonl", "confusion-replayed", port=visdom_server.port)
    assert read_window_raw(visdom_server, "confusion-replayed", "confusion")["content"] == shown


def test_attention_over_a_sentence_that_repeats_a_token_keeps_a_row_and_a_column_for_each_token(
        visdom_server, tmp_path, read_window_raw):
    # Plotly places a category once: "the" twice made one column, cells landing on each other.
    source, target = ["the", "cat", "sat", "on", "the", "mat", " "], ["le", "chat", "sur", "le", "tapis"]
    with Monitor([], env="attention", port=visdom_server.port, run_dir=tmp_path / "run") as monitor:
        monitor.log.heatmap("attention", 1, torch.eye(5, 7), rows=target, columns=source)
        assert monitor.flush()
    shown = read_window_raw(visdom_server, "attention", "attention")["content"]
    (cells,) = shown["data"]
    assert len(set(cells["x"])) == 7 and len(set(cells["y"])) == 5
    assert [label.rstrip("\u200b") for label in cells["x"]] == [*source[:-1], "' '"]  # a space token, quoted
    assert [label.rstrip("\u200b") for label in cells["y"]] == target
    ones = {(a["y"], a["x"]) for a in shown["layout"]["annotations"] if a["text"] == "1"}
    assert ones == {(cells["y"][i], cells["x"][i]) for i in range(5)}  # the diagonal, each in its own cell


def test_a_heatmap_of_rows_keeps_gaps_and_bad_input_is_named():
    log = Monitor([], sink=NullSink()).log
    log.heatmap("rows", 1, [[1, float("nan")], [3, 4]])
    for values, names, error in (
            ([[1, 2], [3]], None, r"values must have as many numbers in each row, got rows of \[1, 2\]"),
            ("counts", None, "values must be a 2-d tensor, a numpy array or rows of numbers, got str"),
            ([[True]], None, "values must be numbers, got True"),
            (torch.zeros(3), None, r"values must be a matrix of at least one row and column, got shape \(3,\)"),
            ([[1, 2]], ["a", "b"], r"rows must name each of the 1 rows, got \['a', 'b'\]")):
        with pytest.raises((TypeError, ValueError), match=error):
            log.heatmap("bad", 1, values, rows=names)
    from monitor.entries import encode
    from monitor.matrix import figure
    from monitor.records import Matrix

    entry = encode(Matrix("rows", 1, [[1, float("nan")], [3, 4]], None, None))
    data, layout = figure(entry, {})
    assert data[0]["z"] == [[1.0, None], [3.0, 4.0]] and data[0]["y"] == ["0", "1"]
    assert layout["xaxis"]["title"] == "step 1" and len(layout["annotations"]) == 3  # the gap says nothing
