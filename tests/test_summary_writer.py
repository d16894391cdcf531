"""monitor.SummaryWriter beside torch.utils.tensorboard's: the same calls, the same numbers.

TensorBoard's side is a real event file read back with its EventAccumulator; ours is read back
from the Visdom server (and, for what a window draws from, the run log).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter as TensorBoardWriter

from monitor import Monitor, Scalars, SummaryWriter, checks, embedding, pr_curve
from monitor.fonts import pillows
from monitor.imaging import PAD
from monitor.entries import encode
from monitor.graph import traced
from monitor.records import Embedding, Histogram, Hparams, ImageGrid, Layout, Points, PrCurve, Text
from monitor.runlog import RunLog
from monitor.windows import Windows
from monitor.writer import split_tag
from helpers.graph_models import models_and_inputs
from helpers.monitors import ListSink, shown_grid

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402

STEPS = 6


def _figure(step: int):
    figure = pyplot.figure(figsize=(2, 1.5), dpi=50)
    pyplot.plot([0, 1, 2], [step, step * step, 1])
    return figure


def _calls(writer, step: int) -> None:
    """What a TensorBoard loop logs; the same for both writers."""
    g = torch.Generator().manual_seed(step)
    writer.add_scalar("Loss/train", 1.0 / (step + 1), step)
    writer.add_scalar("Loss/test", torch.tensor(2.0 / (step + 1)), step)
    writer.add_scalar("lr", np.float32(0.1 * 0.9 ** step), step)
    writer.add_scalar("momentum", np.array([0.9]), step)  # a one-element array, as numpy code leaves it
    writer.add_scalars("accuracy", {"train": 0.5 + step / 20, "test": 0.4 + step / 30}, step)
    writer.add_histogram("weights", torch.randn(1000, generator=g) * (step + 1), step)
    writer.add_histogram("sizes", np.random.default_rng(step).random(300), step, bins=np.linspace(0, 1, 11))
    writer.add_histogram("auto", torch.randn(500, generator=g), step, bins="auto", max_bins=7)
    writer.add_histogram("one", 0.5 + step, step)  # a plain number
    writer.add_image("image", torch.rand(3, 10, 12, generator=g), step)
    writer.add_image("hwc", (torch.rand(10, 12, 3, generator=g) * 255).to(torch.uint8), step, dataformats="HWC")
    writer.add_images("batch", torch.rand(4, 1, 8, 8, generator=g) * 1.4 - 0.2, step)
    writer.add_text("notes", f"step {step}: **bold** <b>not bold</b>\n\n| a | b |\n|---|---|\n| {step} | 2 |", step)
    writer.add_figure("figure", _figure(step), step)
    labels = torch.randint(0, 2, (300,), generator=g)
    writer.add_pr_curve("pr", labels, torch.rand(300, generator=g) * 0.7 + labels * 0.3, step)
    rng = np.random.default_rng(step)
    writer.add_pr_curve("pr/weighted", labels.numpy().astype(bool), rng.random(300) * 1.2 - 0.1, step,
                        num_thresholds=40, weights=rng.random(300))  # some predictions outside 0-1: in no bucket
    counts = np.array([[9, 5, 2], [9, 3, 0], [0, 6, 9], [0, 4, 7]], dtype=float)  # TP, FP, TN, FN
    writer.add_pr_curve_raw("pr/raw", *counts, counts[0] / (counts[0] + counts[1] + 1e-7),
                            counts[0] / (counts[0] + counts[3]), step, num_thresholds=3)
    writer.add_audio("voice", torch.sin(torch.arange(400) * (step + 1) / 7) * 1.3, step, sample_rate=8000)  # clipped
    writer.add_histogram_raw("raw", min=-1.5 - step, max=2.5, num=10 + step, sum=1.0, sum_squares=5.0,
                             bucket_limits=[-1.0, 0.0, 1.0, 2.0, 3.0], bucket_counts=[2 + step, 3, 4, 1, 0],
                             global_step=step)


HPARAMS, METRICS = {"lr": 0.1, "optimizer": "sgd", "batch_size": 16}, {"hparam/accuracy": 0.9}


def _tensorboard(path: Path) -> dict:
    with TensorBoardWriter(log_dir=str(path)) as writer:
        for step in range(STEPS):
            _calls(writer, step)
        writer.add_hparams(HPARAMS, METRICS)
    read = {}
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:  # add_scalars writes sub-runs
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "audio": 0,
                                                              "tensors": 0})
        events.Reload()
        read[folder.name if folder != path else ""] = events
    return read


def _tile(png: bytes, index: int, count: int, height: int, width: int) -> np.ndarray:
    """Image ``index`` of a grid of ``count`` (no captions, a heading), cut out of our PNG."""
    columns = int(np.ceil(np.sqrt(count)))
    row, column = divmod(index, columns)
    top = pillows().getbbox("Ag")[3] + PAD + PAD + row * (height + PAD)
    left = PAD + column * (width + PAD)
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    return pixels[top:top + height, left:left + width]


def test_the_same_calls_show_what_tensorboard_records(visdom_server, tmp_path, read_window, read_window_raw,
                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    tensorboard = _tensorboard(tmp_path / "tensorboard")
    with SummaryWriter(log_dir="runs/side-by-side", port=visdom_server.port) as writer:
        for step in range(STEPS):
            _calls(writer, step)
        writer.add_hparams(HPARAMS, METRICS)
        writer.flush()
        env = "side-by-side"
        shown = {window: read_window(visdom_server, env, window) for window in ("Loss", "lr", "accuracy")}
        panes = {window: read_window_raw(visdom_server, env, window)
                 for window in ("image", "hwc", "batch", "notes", "figure", "weights", "sizes", "auto", "one", "pr",
                                "voice", "raw")}
    events = tensorboard[""]

    # Scalars: every value at every step (TensorBoard keeps float32).
    for tag, (window, trace) in {"Loss/train": ("Loss", "train"), "Loss/test": ("Loss", "test"),
                                 "lr": ("lr", "lr")}.items():
        expected = [(e.step, e.value) for e in events.Scalars(tag)]
        xs, ys = shown[window][trace]
        assert list(zip(xs, np.float32(ys).tolist())) == expected
    for trace in ("train", "test"):
        expected = [(e.step, e.value) for e in tensorboard[f"accuracy_{trace}"].Scalars("accuracy")]
        xs, ys = shown["accuracy"][trace]
        assert list(zip(xs, np.float32(ys).tolist())) == expected

    # Histograms: the same counts in the same bins at every step; the window draws the latest.
    entries = list(RunLog.read(Path("runs/side-by-side", RunLog.FILENAME)))
    for tag in ("weights", "sizes", "auto", "one"):
        ours = [e for e in entries if e.get("k") == "histogram" and e["win"] == tag]
        theirs = events.Histograms(tag)
        assert [e["x"] for e in ours] == [e.step for e in theirs] == list(range(STEPS))
        for entry, event in zip(ours, theirs):
            value = event.histogram_value
            assert entry["n"] == value.num
            expected = {limit: count for limit, count in zip(value.bucket_limit, value.bucket) if count}
            shown = {edge: count for edge, count in zip(entry["edges"][1:], entry["counts"]) if count}
            # The same counts; the first bin from the minimum and the last up to the maximum, as
            # TensorBoard draws them from its min and max (its last limit is past the maximum).
            assert list(shown.values()) == list(expected.values()) and list(shown)[:-1] == list(expected)[:-1]
            if tag in ("weights", "one"):  # its default bins (the others: numpy's, from min to max already)
                assert entry["edges"][0] == value.min and entry["edges"][-1] in (value.max, list(expected)[-1])
        bars = panes[tag]["content"]["data"][-1]
        assert bars["type"] == "bar" and sum(bars["y"]) == pytest.approx(sum(ours[-1]["counts"]), abs=0.1)

    # A histogram the loop binned: TensorBoard's buckets, the first from min, the last up to max.
    ours = [e for e in entries if e.get("k") == "histogram" and e["win"] == "raw"]
    theirs = [e.histogram_value for e in events.Histograms("raw")]
    assert [e["x"] for e in ours] == list(range(STEPS)) and len(theirs) == STEPS
    for entry, value in zip(ours, theirs):
        filled = [i for i, count in enumerate(value.bucket) if count]
        assert entry["edges"] == [value.min, *value.bucket_limit[:filled[-1]], value.max]
        assert entry["counts"] == [value.bucket[i] for i in range(filled[-1] + 1)] and entry["n"] == value.num
    assert panes["raw"]["content"]["data"][-1]["type"] == "bar"

    # Audio: the same 16-bit samples at the same rate, in a player under its step.
    wav = re.search(r'<h5>step (\d+)</h5><p>[^<]*</p><audio controls [^>]*src="data:audio/wav;base64,([^"]+)"',
                    panes["voice"]["content"])  # the newest first
    assert wav and wav.group(1) == str(STEPS - 1)
    assert re.findall(r"<h5>step (\d+)</h5>", panes["voice"]["content"]) == [str(s) for s in reversed(range(STEPS))]
    with wave.open(io.BytesIO(base64.b64decode(wav.group(2)))) as ours_wav, \
            wave.open(io.BytesIO(events.Audio("voice")[-1].encoded_audio_string)) as theirs_wav:
        assert ours_wav.getframerate() == theirs_wav.getframerate() == 8000
        assert ours_wav.readframes(10 ** 6) == theirs_wav.readframes(10 ** 6)

    # PR curves: the same counts, precision and recall at every threshold of every step; the pane
    # draws the latest steps' curves, the latest last.
    for tag in ("pr", "pr/weighted", "pr/raw"):
        ours = [e for e in entries if e.get("k") == "pr_curve" and e["win"] == tag]
        theirs = events.Tensors(tag)
        assert [e["x"] for e in ours] == [e.step for e in theirs] == list(range(STEPS))
        for entry, event in zip(ours, theirs):
            expected = tensor_util.make_ndarray(event.tensor_proto)  # rows: TP, FP, TN, FN, precision, recall
            assert np.array_equal(np.float32([entry[k] for k in ("tp", "fp", "tn", "fn")]), expected[:4])
            assert np.allclose(pr_curve.precision_recall(entry), expected[4:], rtol=1e-6, atol=1e-7)
    curves = panes["pr"]["content"]["data"]
    assert [c["name"] for c in curves] == [f"step {step}" for step in range(STEPS - 5, STEPS)]
    precision, recall = pr_curve.precision_recall(ours_pr := [e for e in entries if e.get("win") == "pr"][-1])
    assert curves[-1]["x"] == pytest.approx(recall) and curves[-1]["y"] == pytest.approx(precision)
    assert len(curves[-1]["x"]) == 127 and ours_pr["x"] == STEPS - 1

    # Images: every pixel of the latest of each, as TensorBoard encoded it (grey shown as one channel).
    for tag, count in (("image", 1), ("hwc", 1), ("batch", 4), ("figure", 1)):
        theirs = np.asarray(Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)))
        png = shown_grid(panes[tag])
        if count == 1:
            height, width = theirs.shape[:2]
            assert np.array_equal(_tile(png, 0, 1, height, width), theirs[..., :3])
        else:  # TensorBoard tiles a batch 8 across, without gaps
            for i in range(count):
                tile = _tile(png, i, count, 8, 8)
                assert np.array_equal(tile, theirs[:8, 8 * i:8 * i + 8, 0])

    # hparams: the same values, the same final metric (TensorBoard writes them to a run of their own).
    [run] = [events for events in tensorboard.values() if events.Tags()["scalars"] == ["hparam/accuracy"]]
    [data] = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in run.PluginTagToContent("hparams").values()
              if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info")]
    theirs = {k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()}
    [ours] = [e for e in entries if e["k"] == "hparams"]
    assert ours["hparams"] == theirs == HPARAMS
    assert {k: float(np.float32(v)) for k, v in ours["metrics"].items()} == \
        {"hparam/accuracy": run.Scalars("hparam/accuracy")[0].value}

    # Text: the same string, rendered from Markdown with its HTML escaped.
    text = events.Tensors("notes/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.startswith(f"step {STEPS - 1}: **bold**")
    html = panes["notes"]["content"]
    assert f"step {STEPS - 1}: <strong>bold</strong> &lt;b&gt;not bold&lt;/b&gt;" in html
    assert "<table style=" in html and f"px; \">{STEPS - 1}</td>" in html
    # Every step's text, as TensorBoard's text view lists them (up to 10): newest first, under its step.
    steps = [e.step for e in events.Tensors("notes/text_summary")]
    assert re.findall(r"<h5>step (\d+)</h5><p>step (\d+):", html) == [(str(s), str(s)) for s in reversed(steps)]


def test_add_video_plays_the_frames_of_every_video_as_one_grid_at_its_fps(visdom_server, tmp_path, read_window_raw,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    videos = torch.rand(2, 3, 3, 6, 5, generator=torch.Generator().manual_seed(0))  # N T C H W, floats 0-1
    with SummaryWriter(log_dir="runs/video", port=visdom_server.port) as writer:
        writer.add_video("clip", videos, 4, fps=5)
        writer.add_video("grey", torch.full((1, 2, 1, 4, 4), 255, dtype=torch.uint8), 4)
        writer.flush()
        pane = read_window_raw(visdom_server, "video", "clip")
    shown = Image.open(io.BytesIO(shown_grid(pane)))
    assert shown.n_frames == 3 and shown.info["duration"] == 200 and shown.info["loop"] == 0
    expected = (videos * 255).clamp(0, 255).to(torch.uint8).permute(1, 0, 3, 4, 2).numpy()  # TensorBoard's rule
    for frame in range(3):
        shown.seek(frame)
        png = io.BytesIO()
        shown.convert("RGB").save(png, format="PNG")
        for i in range(2):
            assert np.array_equal(_tile(png.getvalue(), i, 2, 6, 5), expected[frame, i])
    # In the run log as any grid is (replayed, resumed, exported alike).
    [entry] = [e for e in RunLog.read(Path("runs/video", RunLog.FILENAME))
               if e.get("k") == "image" and e["win"] == "clip"]
    assert Image.open(Path("runs/video", entry["file"])).n_frames == 3

    monitor = Monitor([], sink=ListSink())
    with pytest.raises(ValueError, match=r"vid_tensor must be N x T x C x H x W, got shape \(3, 6, 5\)"):
        SummaryWriter(monitor=monitor).add_video("clip", torch.rand(3, 6, 5))
    with pytest.raises(ValueError, match="fps must be a number of frames a second in \\(0, 1000\\], got 0"):
        monitor.log.video("clip", 0, torch.rand(1, 2, 3, 4, 4), fps=0)
    with pytest.raises(ValueError, match=r"videos must be NTCHW with 1 or 3 channels.*got shape \(1, 2, 2, 4, 4\)"):
        monitor.log.video("clip", 0, torch.rand(1, 2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"got shape \(4, 3, 8, 32, 32\): a Conv3d's N x C x T x H x W, pass "
                                         r"videos.permute\(0, 2, 1, 3, 4\)"):
        monitor.log.video("clip", 0, torch.rand(4, 3, 8, 32, 32))
    monitor.log.video("big", 0, torch.zeros(2, 3, 1, 2048, 2048, dtype=torch.uint8))  # frames shrunk, as images are
    [grid] = [r for r in monitor.sink.of(ImageGrid) if r.window == "big"]
    assert grid.pixels.shape == (2, 3, 1, 1448, 1448) and grid.pixels.dtype == torch.uint8 and grid.fps == 4


def test_add_mesh_draws_the_first_mesh_of_the_batch_or_its_points_in_3d(visdom_server, tmp_path, read_window_raw,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    vertices = torch.tensor([[[1, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1]]], dtype=torch.float32)  # a tetrahedron
    colors = torch.tensor([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=torch.int32)
    faces = torch.tensor([[[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]], dtype=torch.int32)
    cloud = torch.randn(2, 30_000, 3, generator=torch.Generator().manual_seed(0))
    with SummaryWriter(log_dir="runs/mesh", port=visdom_server.port) as writer:
        writer.add_mesh("tetrahedron", vertices=vertices, colors=colors, faces=faces, global_step=2,
                        config_dict={"camera": {"cls": "PerspectiveCamera", "fov": 75}})
        writer.add_mesh("cloud", vertices=cloud, global_step=2)
        writer.flush()
        solid, points = (read_window_raw(visdom_server, "mesh", w)["content"]["data"] for w in ("tetrahedron", "cloud"))
    [solid] = solid
    assert solid["type"] == "mesh3d" and [solid[a] for a in "xyz"] == vertices[0].T.tolist()
    assert [solid[a] for a in "ijk"] == faces[0].T.tolist()
    assert solid["vertexcolor"] == ["rgb(255,0,0)", "rgb(0,255,0)", "rgb(0,0,255)", "rgb(255,255,255)"]
    [points] = points  # the first of the batch, 20,000 of its 30,000 points, evenly spread, as a cloud
    assert points["type"] == "scatter3d" and len(points["x"]) == 20_000
    assert points["x"][-1] == pytest.approx(cloud[0, -1, 0].item(), rel=1e-5)
    [entry] = [e for e in RunLog.read(Path("runs/mesh", RunLog.FILENAME)) if e.get("win") == "tetrahedron"
               and e["k"] == "mesh"]
    assert entry["x"] == 2 and entry["faces"] == faces[0].tolist()

    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    with pytest.raises(ValueError, match=r"vertices must be B x N x 3, got shape \(4, 3\)"):
        writer.add_mesh("m", vertices[0])
    with pytest.raises(ValueError, match="faces must hold vertex indices from 0 to 3, got 0 to 4"):
        writer.add_mesh("m", vertices, faces=faces + (faces == 3).int())
    with pytest.raises(ValueError, match=r"colors must have one colour per vertex \(4\), got 3"):
        writer.add_mesh("m", vertices, colors=colors[:, :3])


def test_custom_scalars_gather_the_scalars_whose_tags_their_expressions_match_as_tensorboard_s_charts(
        visdom_server, tmp_path, read_window, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SummaryWriter(log_dir="runs/custom", port=visdom_server.port) as writer:
        writer.add_custom_scalars({"Losses": {"losses": ["Multiline", ["loss/", "aux"]]},
                                   "Bands": {"accuracy": ["Margin", ["acc", "acc/low", "acc/high"]]}})
        writer.add_custom_scalars_multilinechart(["lr$"], title="rates")
        writer.add_custom_scalars({"Losses": {"loss": ["Multiline", ["loss/"]]}})  # titled as the tags' window
        for step in range(3):
            writer.add_scalar("loss/train", 1 / (step + 1), step)
            writer.add_scalar("loss/test", 2 / (step + 1), step)
            writer.add_scalar("aux_loss", 0.5 * step, step)
            writer.add_scalar("other/loss", 5.0, step)  # matched from the tag's start, as TensorBoard matches
            writer.add_scalars("aux", {"a": 1.0, "b": 2.0}, step)  # TensorBoard's runs aux_a and aux_b, tag aux
            for tag, value in (("acc", 0.5), ("acc/low", 0.4), ("acc/high", 0.6), ("acc/other", 0.0), ("lr", 0.1)):
                writer.add_scalar(tag, value + step, step)
        writer.flush()
        losses, band, rates = (read_window(visdom_server, "custom", w) for w in ("losses", "accuracy", "rates"))
        assert read_window(visdom_server, "custom", "loss")["train"] == (  # as before, to 15 digits
            [0, 1, 2], [1.0, 0.5, 0.333333333333333])
        assert set(read_window(visdom_server, "custom", "loss")) == {"train", "test"}  # each curve once
    assert set(losses) == {"loss/train", "loss/test", "aux_loss", "aux_a", "aux_b"}
    assert losses["loss/test"] == ([0, 1, 2], [2.0, 1.0, 0.666666666666667])
    assert losses["aux_b"] == ([0, 1, 2], [2.0] * 3)
    assert band == {"acc": ([0, 1, 2], [0.5, 1.5, 2.5]), "acc/low": ([0, 1, 2], [0.4, 1.4, 2.4]),
                    "acc/high": ([0, 1, 2], [0.6, 1.6, 2.6])}
    assert set(rates) == {"lr"}
    from monitor.runs import described  # the charts are copies: a table of runs has each curve once
    assert not [name for name in described("runs/custom").metrics if name.split("/")[0] in ("losses", "rates")]

    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    with pytest.raises(ValueError, match=r"layout\['a'\]\['b'\] must be \['Multiline', \[tag regex, ...\]\] or "
                                         r"\['Margin', \[value tag, lower tag, upper tag\]\], got \['Margin', \['x'\]\]"):
        writer.add_custom_scalars({"a": {"b": ["Margin", ["x"]]}})
    with pytest.raises(ValueError, match=r"layout\['a'\]\['b'\] has a tag that is not a regular expression"):
        writer.add_custom_scalars({"a": {"b": ["Multiline", ["loss("]]}})


def test_a_text_tag_shows_its_latest_ten_texts_and_a_callback_s_text_pane_its_latest():
    sink = ListSink()
    monitor = Monitor([], sink=sink)
    writer = SummaryWriter(monitor=monitor)
    for step in range(12):
        writer.add_text("samples", f"sample {step}", step)
        monitor.log.text("status", step, f"status {step}")
    windows = Windows()
    windows.apply([encode(record) for record in sink.of(Text)])
    samples = windows.by_name["samples"].message("env")[1]["data"][0]["content"]
    assert re.findall(r"<h5>step (\d+)</h5>", samples) == [str(step) for step in range(11, 1, -1)]
    assert windows.by_name["status"].message("env")[1]["data"][0]["content"] == "status 11"


def test_markdown_is_rendered_by_the_sink_not_on_the_training_thread():
    # A 100 KB generated sample rendered at add_text took the loop 90-105 ms each call
    sink = ListSink()
    monitor = Monitor([], sink=sink)
    text = "# Sample\n\n| a | b |\n|---|---|\n| 1 | <b>2</b> |\n\n" + "word " * 20_000
    SummaryWriter(monitor=monitor).add_text("samples", text, 3)
    (record,) = sink.of(Text)
    assert record.html == text and record.markdown  # as given: rendered when the sink encodes it
    html = encode(record)["html"]
    assert html.startswith("<h1>Sample</h1>") and ">&lt;b&gt;2&lt;/b&gt;</td>" in html  # its HTML escaped
    # Tables ruled and padded (a page's plain table read "epochs4")
    assert '<table style="border-collapse: collapse;' in html and '<td style="border: 1px solid #ccc;' in html


def test_a_tag_names_a_window_and_a_trace():
    assert split_tag("Loss/train") == ("Loss", "train")
    # Any other tag a plot of its own, as TensorBoard draws it: CleanRL's charts/ and losses/
    # tags, whose scales (1e-3 to 1e3) cannot share an axis.
    assert [split_tag(t) for t in ("charts/episodic_return", "charts/SPS", "model/fc1/grad")] == [
        ("charts/episodic_return", "episodic_return"), ("charts/SPS", "SPS"), ("model/fc1/grad", "grad")]
    assert split_tag("lr") == ("lr", "lr")
    assert split_tag("odd/") == ("odd/", "odd/")
    # Hugging Face's tags: the split leads; train and eval share a plot, the rate gets its own.
    assert [split_tag(t) for t in ("train/loss", "eval/loss", "train/learning_rate", "Test/Accuracy/top1")] == [
        ("loss", "train"), ("loss", "eval"), ("learning_rate", "train"), ("Accuracy/top1", "Test")]
    assert split_tag("train/val") == ("train", "val")  # a split at the end still wins
    # A split inside the tag starts the trace: two validation sets beside the training curve.
    assert [split_tag(t) for t in ("Loss/val/clean", "Loss/val/noisy", "acc/test/top5")] == [
        ("Loss", "val/clean"), ("Loss", "val/noisy"), ("acc", "test/top5")]
    assert [split_tag(t) for t in ("训练/准确率", "验证/准确率", "損失/検証")] == [  # Chinese, Japanese
        ("准确率", "训练"), ("准确率", "验证"), ("損失", "検証")]


def test_a_tag_that_is_no_str_is_named_in_the_error_and_odd_characters_become_spaces_every_time(tmp_path):
    with SummaryWriter(tmp_path / "tags", port=1) as writer:  # no server: names are checked here
        for _ in range(2):  # the first check and the remembered one
            with pytest.raises(TypeError, match=r"tag must be a non-empty str, got \['a'\]"):
                writer.add_text(["a"], "x")
            writer.add_scalar("odd\ttag", 1.0, 0)
        assert "odd tag" in writer.log.layouts


@pytest.mark.parametrize("first", ["add_scalar", "add_scalars"])
def test_a_tag_s_curve_and_add_scalars_of_the_same_name_keep_curves_of_their_own(tmp_path, first):
    # PyTorch's tutorial: a step's "Loss/train", and each epoch's "Loss" with train and val.
    with SummaryWriter(tmp_path / "run", port=1, timeout=0.2) as writer:
        for epoch in range(2):
            if first == "add_scalars" or epoch:
                writer.add_scalars("Loss", {"train": 0.5 - epoch / 10, "val": 0.6 - epoch / 10}, epoch)
            for step in range(3):
                writer.add_scalar("Loss/train", 1.0 - step / 10, epoch * 3 + step)
    steps = [(step, pytest.approx(1.0 - step % 3 / 10)) for step in range(6)]
    with SummaryWriter(tmp_path / "run", port=1, timeout=0.2) as writer:  # requeued: the other call comes first
        if first == "add_scalar":
            writer.add_scalars("Loss", {"train": 0.3, "val": 0.4}, 2)
        writer.add_scalar("Loss/train", 0.7, 6)
        writer.add_scalars("Loss", {"train": 0.3, "val": 0.4}, 2)
    if first == "add_scalar":  # the tag's curve came first: window Loss is its
        assert _points(tmp_path / "run", "Loss", "train") == steps + [(6, 0.7)]
        assert _points(tmp_path / "run", "Loss (scalars)", "val") == [(1, pytest.approx(0.5)), (2, 0.4), (2, 0.4)]
    else:
        assert _points(tmp_path / "run", "Loss", "val") == [(0, 0.6), (1, pytest.approx(0.5)), (2, 0.4)]
        assert _points(tmp_path / "run", "Loss/train", "train") == steps + [(6, 0.7)]


def test_steps_left_out_count_per_tag_and_a_monitor_shares_its_env(visdom_server, tmp_path, read_window):
    monitor = Monitor([Scalars()], env="shared-writer", port=visdom_server.port, run_dir=tmp_path / "run")
    writer = SummaryWriter(monitor=monitor)
    for value in (3.0, 2.0, 1.0):
        writer.add_scalar("extra", value)
    writer.add_scalar("other", 5.0)
    monitor.log.scalar("loss", "train", 1, 0.5)
    writer.close()
    assert monitor.flush()
    assert read_window(visdom_server, "shared-writer", "extra")["extra"] == ([0, 1, 2], [3.0, 2.0, 1.0])
    assert read_window(visdom_server, "shared-writer", "other")["other"] == ([0], [5.0])
    assert read_window(visdom_server, "shared-writer", "loss")["train"] == ([1], [0.5])
    beside = SummaryWriter(tmp_path / "run", port=visdom_server.port)  # the Monitor's run folder: its run
    beside.add_scalar("beside", 4.0, 3)
    beside.close()
    monitor.log.scalar("loss", "train", 2, 0.25)  # the Monitor's run goes on (a writer of its own took it over)
    monitor.close()
    assert _points(tmp_path / "run", "loss", "train") == [(1, 0.5), (2, 0.25)]
    assert _points(tmp_path / "run", "beside", "beside") == [(3, 4.0)]


def test_tensorboard_arguments_that_change_nothing_here_are_accepted(tmp_path, caplog):
    monitor = Monitor([], sink=ListSink())
    writer = SummaryWriter(monitor=monitor)
    writer.add_scalar("a", 1.0, 1, walltime=123.0, new_style=True, double_precision=True)
    writer.add_hparams({"lr": 0.1, "optimizer": "<sgd>"}, {"hparam/accuracy": 0.9}, hparam_domain_discrete={},
                       run_name="x")
    with caplog.at_level(logging.WARNING, logger="monitor"):
        writer.add_tensor("raw", torch.rand(4, 3))
        writer.add_tensor("raw", torch.rand(4, 3))
        writer.add_onnx_graph("model.onnx")
    assert [r.getMessage().split(".")[1].split(" ")[0] for r in caplog.records] == ["add_tensor", "add_onnx_graph"]
    [record] = monitor.sink.of(Hparams)
    assert record.hparams == {"lr": 0.1, "optimizer": "<sgd>"} and record.metrics == {"hparam/accuracy": 0.9}
    windows = Windows()
    windows.apply([encode(record)])
    assert "&lt;sgd&gt;" in windows.by_name["hparams"].message("env")[1]["data"][0]["content"]
    with pytest.raises(AttributeError, match="add_nothing"):
        writer.add_nothing
    given = SummaryWriter(tmp_path / "given", purge_step=3, max_queue=5, flush_secs=30, filename_suffix=".x", port=1,
                          timeout=0.2)
    assert (given.purge_step, given.max_queue, given.flush_secs, given.filename_suffix) == (3, 5, 30, ".x")
    given.close()


def test_bad_image_layouts_are_named(tmp_path):
    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    with pytest.raises(ValueError, match=r"dataformats must name .* got 'CHW' for shape \(4, 4\)"):
        writer.add_image("x", torch.rand(4, 4))
    with pytest.raises(ValueError, match="dataformats"):
        writer.add_images("x", torch.rand(3, 4, 4), dataformats="NCHW")
    with pytest.raises(TypeError, match="img_tensor must be a torch.Tensor or a numpy array, got str"):
        writer.add_image("x", "cat.png")
    writer.add_image("x", np.random.rand(4, 4), dataformats="HW")
    writer.add_images("y", torch.rand(4, 4, 2), dataformats="HWN")


def test_images_mostly_outside_0_1_and_histograms_of_values_not_finite_are_told_once_a_tag(caplog):
    # A log-mel spectrogram through add_image came out 89% black; a histogram of CTC losses lost its infs.
    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    with caplog.at_level("WARNING", logger="monitor"):
        for step in range(3):
            writer.add_image("spec", torch.full((80, 120), -6.0), step, dataformats="HW")
            writer.add_images("fine", torch.rand(2, 1, 4, 4), step)
            writer.add_images("samples", torch.linspace(-0.9, 0.9, 32).reshape(2, 1, 4, 4), step)  # a diffusion model's, in -1..1
            writer.add_histogram("losses", torch.tensor([1.0, 2.0, math.inf, 3.0]), step)
            writer.add_histogram("weights", torch.randn(100), step)
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: add_image('spec'): 100% of its values are outside 0-1, drawn clipped (black below 0, white above "
        "1) as TensorBoard draws them: scale them to 0-1 first, or draw them with writer.log.images(tag, step, "
        "images, value_range=(low, high)) (each image stretched to its own range without value_range)",
        "monitor: add_images('samples'): its values are in -1..1 (50% below 0), drawn clipped to 0-1 (black below 0) "
        "as TensorBoard draws them: pass (x + 1) / 2",
        "monitor: add_histogram('losses'): 1 of its 4 values are not finite (inf or NaN) and are left out of its bins"]


def test_sounds_sparse_gradients_and_logits_are_taken_as_an_audio_or_recommender_script_gives_them(caplog):
    # An audio researcher's clips (too loud, int16 from a WAV file, NaN, a rate from a config) and a
    # recommender's sparse embedding gradient through add_histogram, which crashed the loop.
    monitor = Monitor([], sink=ListSink())
    writer = SummaryWriter(monitor=monitor)
    wave_ = torch.sin(torch.arange(800) / 5)
    with caplog.at_level("WARNING", logger="monitor"):
        for step in range(2):
            writer.add_audio("loud", 3 * wave_, step, sample_rate=8000.0)
        pcm = (wave_.numpy() * 16384).astype(np.int16)  # as a WAV file holds it
        writer.add_audio("pcm", pcm, 0, sample_rate=np.float64(8000))
        writer.add_audio("nan", torch.where(torch.arange(800) < 200, math.nan, wave_), 0, sample_rate=8000)
        writer.add_audio("long", torch.zeros(400_000), 0, sample_rate=8000)
        texts = {}
        for record in monitor.sink.of(Text):
            texts.setdefault(record.window, []).append((record.keep, record.html()))
        emb = torch.nn.Embedding(50, 4, sparse=True)
        emb(torch.tensor([1, 2, 2])).sum().backward()
        writer.add_histogram("user.weight.grad", emb.weight.grad, 0)
        writer.add_pr_curve("pr/logits", torch.tensor([0, 1, 1, 0]), torch.tensor([-2.0, 3.0, 0.5, 0.1]), 0)
        writer.add_pr_curve("pr/logits", torch.tensor([0, 1]), torch.tensor([-2.0, 3.0]), 1)
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: add_audio('loud'): 78% of its samples are outside -1..1, clipped as TensorBoard clips them: pass "
        "x / x.abs().max() to hear them whole",
        "monitor: add_audio('nan'): 200 of its 800 samples are not finite (NaN or inf), played as silence",
        "monitor: add_pr_curve('pr/logits'): 50% of its predictions are outside 0-1 (logits?) and count at no "
        "threshold: pass probabilities, torch.sigmoid(logits) or logits.softmax(1)[:, k]"]

    def samples(html: str) -> np.ndarray:
        encoded = re.search(r'<p>0.10 s at 8000 Hz</p><audio [^>]*src="data:audio/wav;base64,([^"]+)"', html)
        with wave.open(io.BytesIO(base64.b64decode(encoded.group(1)))) as file:
            return np.frombuffer(file.readframes(10 ** 6), dtype="<i2")

    assert [keep for keep, _ in texts["loud"]] == [10, 10] and texts["long"][0][0] == 2  # about 2 MB of samples
    assert np.abs(samples(texts["pcm"][0][1]) - pcm.astype(float) * 32767 / 32768).max() <= 1  # PCM: as it was
    assert (samples(texts["nan"][0][1])[:200] == 0).all()
    (histogram,) = monitor.sink.of(Histogram)
    assert encode(histogram)["n"] == 8  # the two rows the batch looked up, coalesced


def test_pr_curves_name_bad_arguments_and_count_the_values_as_they_were_at_the_call():
    monitor = Monitor([], sink=ListSink())
    writer = SummaryWriter(monitor=monitor)
    with pytest.raises(ValueError, match="labels and predictions must have as many values, got 3 and 4"):
        writer.add_pr_curve("pr", torch.ones(3), torch.rand(4))
    with pytest.raises(ValueError, match="num_thresholds must be .*got 1"):
        writer.add_pr_curve("pr", torch.ones(3), torch.rand(3), num_thresholds=1)
    with pytest.raises(TypeError, match="predictions must be a torch.Tensor or a numpy array, got str"):
        writer.add_pr_curve("pr", torch.ones(3), "0.5")
    with pytest.raises(ValueError, match=r"one value per threshold, at least 2, got .*'recall': 2"):
        writer.add_pr_curve_raw("raw", *[[1.0, 0.0, 0.0]] * 5, [1.0, 0.0], 0)
    labels, predictions = torch.tensor([1, 0, 1, 0]), torch.tensor([0.9, 0.8, 0.3, 0.1])
    writer.add_pr_curve("pr", labels, predictions, 0, num_thresholds=3)
    predictions.fill_(0.0)  # after the call: not what the curve counts
    with pytest.raises(ValueError, match=r"labels must be 0 to 1 .*got \[2\]: for class k of class indices, pass "
                                         r"labels == k"):
        writer.add_pr_curve("classes", torch.tensor([0, 2, 1]), torch.rand(3), 0)  # class indices, not 0/1
    writer.add_pr_curve_raw("raw", [2, 1, 0], [2, 0, 0], [0, 2, 2], [0, 1, 2], [0.5, 1.0, math.nan],
                            [1.0, 0.5, 0.0], 0, num_thresholds=3)
    good, raw = monitor.sink.of(PrCurve)
    # thresholds 0, 0.5, 1: buckets floor(p * 2) = 1, 1, 0, 0
    assert encode(good) == {"k": "pr_curve", "win": "pr", "x": 0, "tp": [2.0, 1.0, 0.0], "fp": [2.0, 1.0, 0.0],
                            "tn": [0.0, 1.0, 2.0], "fn": [0.0, 1.0, 2.0]}
    with pytest.raises(ValueError, match=r"labels must be 0 to 1 \(0/1 or bools: which are positives\), got \[2\]"):
        pr_curve.counts(np.array([0, 2, 1]), np.random.rand(3))  # a device's, counted by the sink: reported once
    entry = encode(raw)
    assert entry["precision"][:2] == [0.5, 1.0] and math.isnan(entry["precision"][2])
    data, _ = pr_curve.figure([entry])
    assert data[0]["y"] == [0.5, 1.0, None] and data[0]["x"] == [1.0, 0.5, 0.0]  # NaN: a gap


@pytest.mark.parametrize("case", ["float16", "bfloat16", "float64", "ints", "on-thresholds", "nan-and-logits",
                                  "2-d-with-row-weights", "scalar-weight", "soft-labels", "numpy-scalars"])
def test_pr_curve_counts_equal_tensorboard_s_on_awkward_inputs(case):
    from torch.utils.tensorboard.summary import compute_curve
    from torch.utils.tensorboard._convert_np import make_np

    g = torch.Generator().manual_seed(3)
    labels, predictions = torch.randint(0, 2, (64,), generator=g).bool(), torch.rand(64, generator=g)
    weights, thresholds = None, 127
    if case in ("float16", "bfloat16", "float64"):
        predictions = predictions.to(getattr(torch, case))
    elif case == "ints":
        predictions = (predictions > 0.5).long()
    elif case == "on-thresholds":
        thresholds = np.int64(11)
        predictions = torch.arange(64) % 11 / 10.0
    elif case == "nan-and-logits":
        predictions = predictions * 4 - 2
        predictions[::7] = math.nan
    elif case == "2-d-with-row-weights":
        labels, predictions, weights = labels.reshape(16, 4), predictions.reshape(16, 4), np.arange(4.0)
    elif case == "scalar-weight":
        weights = 2.5
    elif case == "soft-labels":
        labels = torch.rand(64, generator=g)
    elif case == "numpy-scalars":
        labels, predictions, weights = np.bool_(True), np.float32(0.7), np.float64(3.0)
    monitor = Monitor([], sink=ListSink())
    SummaryWriter(monitor=monitor).add_pr_curve("pr", labels, predictions, 0, num_thresholds=thresholds,
                                                weights=weights)
    entry = encode(monitor.sink.of(PrCurve)[0])
    expected = compute_curve(make_np(labels), make_np(predictions), num_thresholds=int(thresholds),
                             weights=None if weights is None else np.asarray(weights))
    assert np.array_equal([entry[k] for k in ("tp", "fp", "tn", "fn")], expected[:4])
    assert np.allclose(pr_curve.precision_recall(entry), expected[4:], rtol=1e-12, atol=0)


def test_add_embedding_draws_the_principal_components_of_what_tensorboard_stores_coloured_by_label(
        visdom_server, tmp_path, read_window_raw, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    coordinates = torch.randn(200, 3, generator=g) * torch.tensor([5.0, 2.0, 0.5])
    matrix = coordinates @ torch.randn(3, 10, generator=g) + 1.0  # 10-d vectors on a 3-d plane
    labels = (torch.arange(200) + 2) % 4  # first seen: 2, 3, 0, 1; the legend sorts them
    with TensorBoardWriter(log_dir=str(tmp_path / "tensorboard")) as theirs:
        theirs.add_embedding(matrix, metadata=labels.tolist(), label_img=torch.rand(200, 1, 4, 4))
    stored = np.loadtxt(next((tmp_path / "tensorboard").glob("*/default/tensors.tsv")), delimiter="\t")
    with SummaryWriter(log_dir="runs/embedded", port=visdom_server.port) as writer:
        writer.add_embedding(matrix, metadata=labels, label_img=torch.rand(200, 1, 4, 4))
        writer.add_embedding(torch.randn(5000, 2, generator=g), global_step=1, tag="wide")
        writer.flush()
        pane = read_window_raw(visdom_server, "embedded", "embedding")
        wide = read_window_raw(visdom_server, "embedded", "wide")
    [entry] = [e for e in RunLog.read(Path("runs/embedded", RunLog.FILENAME))
               if e["k"] == "embedding" and e["win"] == "embedding"]
    points = np.array(entry["points"])
    distances = lambda rows: np.linalg.norm(rows[:, None] - rows[None], axis=-1)  # noqa: E731
    # All of the plane, nothing else (to the six significant digits of the largest that are kept).
    assert np.allclose(distances(points), distances(stored), rtol=0, atol=1e-3)
    assert entry["explained"] == sorted(entry["explained"], reverse=True)
    assert sum(entry["explained"]) == pytest.approx(1)
    traces = pane["content"]["data"]
    assert [t["name"] for t in traces] == ["0", "1", "2", "3"] and {t["type"] for t in traces} == {"scatter3d"}
    assert all(len(t["x"]) == 50 and t["hoverinfo"] == "name" for t in traces)  # the label is the trace's name
    assert pane["content"]["layout"]["scene"]["xaxis"]["title"].startswith("PC1 (")
    [shown] = wide["content"]["data"]  # no labels: one trace, at most 3000 of the 5000 points
    assert len(shown["x"]) == 3000 and shown["z"] == [0.0] * 3000  # two dimensions: the third is 0
    with pytest.raises(ValueError, match=r"mat must be a matrix of one vector per row \(N x D\), got shape \(4,\)"):
        writer.add_embedding(torch.rand(4))
    with pytest.raises(ValueError, match=r"metadata must have one label per row of mat \(4\), got 3"):
        writer.add_embedding(torch.rand(4, 2), metadata=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"label_img must be N x C x H x W, an image for each of mat's 4 rows, got "
                                         r"shape \(3, 1, 4, 4\)"):  # TensorBoard raises too
        writer.add_embedding(torch.rand(4, 2), label_img=torch.rand(3, 1, 4, 4))
    assert "SummaryWriter.add_embedding's label_img is accepted but not drawn" in caplog.text


def test_embedding_metadata_columns_tiny_scales_and_non_finite_vectors():
    monitor = Monitor([], sink=ListSink())
    writer = SummaryWriter(monitor=monitor)
    g = torch.Generator().manual_seed(0)
    rows = [[i % 2, f"sample {i}"] for i in range(30)]
    writer.add_embedding(torch.randn(30, 5, generator=g) * 1e-7, metadata=rows, metadata_header=["class", "name"])
    writer.add_embedding(torch.randn(30, 5, generator=g), metadata=torch.rand(30, generator=g), tag="soft")
    writer.add_embedding(torch.tensor([[1.0, math.nan], [0.0, 1.0]]), tag="broken")
    with pytest.raises(ValueError, match=r"metadata_header must name each column of metadata's rows \(2\), got 1"):
        writer.add_embedding(torch.randn(30, 5), metadata=rows, metadata_header=["class"])
    tiny, soft, broken = monitor.sink.of(Embedding)
    entry = encode(tiny)
    assert entry["labels"] == ["0", "1"] * 15 and entry["hover"][3] == "class: 1, name: sample 3"
    assert len({tuple(p) for p in entry["points"]}) == 30  # rounded to the largest's digits, not to 1e-6
    data, _ = embedding.figure(entry)
    assert [t["name"] for t in data] == ["0", "1"] and data[1]["text"][1] == "class: 1, name: sample 3"
    assert max(len(label) for label in encode(soft)["labels"]) <= 12  # six digits, not 0.30000001192092896
    with pytest.raises(ValueError, match="mat must hold finite numbers, got 1 NaN or infinite"):
        encode(broken)  # projected off the training thread: the sink reports it once for the window
    long = {**entry, "labels": None, "hover": ["x" * 300] * 30}
    assert {len(text) for text in embedding.figure(long)[0][0]["text"]} == {embedding.LABEL_CHARS}
    # 25 classes (a metric-learning set's): one grey trace with no legend; now the 19 most common a
    # colour each and the rest one trace, each point's label on hover, the axes' shares to a tenth.
    many = {**entry, "hover": None, "labels": [f"class{i % 25}" for i in range(100)] + ["class0"] * 5,
            "points": [[float(i), 0.0, 0.0] for i in range(105)], "explained": [0.996, 0.004, 0.0]}
    data, layout = embedding.figure(many)
    assert len(data) == 20 and data[0]["name"] == "class0" and len(data[0]["x"]) == 9
    assert data[-1]["name"] == "other (6 labels)" and len(data[-1]["x"]) == 24 and data[-1]["text"][0] == "class19"
    assert layout["scene"]["yaxis"]["title"] == "PC2 (0.4%)"
    # 500 word vectors, each its token: no 19 of them coloured at random, one trace, each word on hover
    words = {**many, "labels": [f"w{i}" for i in range(500)] + ["w7"], "points": [[float(i), 0.0, 0.0] for i in range(501)]}
    data, layout = embedding.figure(words)
    assert [(t["name"], len(t["x"])) for t in data] == [("w7", 2), ("other (499 labels)", 499)]
    words["labels"] = [f"w{i}" for i in range(501)]
    data, layout = embedding.figure(words)
    assert [t["name"] for t in data] == ["(501 labels)"] and data[0]["text"][3] == "w3" and not layout["showlegend"]


def test_pr_curve_weights_that_do_not_fit_the_predictions_are_named_at_the_call():
    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    with pytest.raises(ValueError, match=r"weights must be one number or broadcast to the predictions' shape "
                                         r"\(4, 2\), got shape \(3,\)"):
        writer.add_pr_curve("pr", torch.ones(4, 2), torch.rand(4, 2), weights=np.ones(3))


def test_what_tensorboard_also_takes_a_reused_figure_rgba_numpy_ints_and_bools():
    sink = ListSink()
    writer = SummaryWriter(monitor=Monitor([], sink=sink))
    figure = pyplot.figure(figsize=(1, 1), dpi=20)
    drawn = []
    for colour in ("red", "blue"):  # one figure, changed between calls: each call shows it as it was
        figure.clear()
        figure.patch.set_facecolor(colour)
        writer.add_figure("reused", figure, close=False)
        drawn.append(sink.of(ImageGrid, "reused")[-1].pixels[0, :, 0, 0].tolist())
    assert drawn == [[255, 0, 0], [0, 0, 255]]
    pyplot.close(figure)
    rgba = torch.zeros(4, 2, 2)
    rgba[0], rgba[3, 0] = 1.0, 1.0  # red, opaque in the top row and transparent below
    writer.add_image("rgba", rgba)
    pixels = sink.of(ImageGrid, "rgba")[-1].pixels
    assert pixels.shape == (1, 3, 2, 2) and pixels[0, :, 0, 0].tolist() == [255, 0, 0]
    assert pixels[0, :, 1, 0].tolist() == [255, 255, 255]  # laid over white
    writer.add_histogram("flags", torch.tensor([True, False, True]), bins=np.int64(2))
    edges, counts, n = sink.of(Histogram, "flags")[-1].values()  # numpy's rule: binned on the worker
    assert list(counts) == [1, 2] and n == 3


def test_what_tensorboard_also_takes_numbers_and_steps_as_text_any_layout_in_either_image_call(tmp_path):
    # Each of these raised here and not in TensorBoard: a script switched by its import crashed.
    sink = ListSink()
    writer = SummaryWriter(monitor=Monitor([], sink=sink))
    writer.add_scalar("lr", "0.5", "6")  # argparse without type=float
    writer.add_hparams({"lr": "0.5"}, {"hparam/accuracy": "0.75"})
    assert [(p.x, dict(zip(p.traces, p.values))) for p in sink.of(Points, "lr")] == [(6, {"lr": 0.5})]
    assert sink.of(Hparams)[-1].metrics == {"hparam/accuracy": 0.75}
    with pytest.raises(ValueError, match="scalar_value must be a number, got 'fast'"):
        writer.add_scalar("lr", "fast", 7)
    with pytest.raises(ValueError, match="global_step must be a step number, got 'seven'"):
        writer.add_scalar("lr", 0.1, "seven")
    with pytest.raises(ValueError, match=r"global_step must be a step number, got a Tensor of shape \(2,\)"):
        writer.add_scalar("lr", 0.1, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="tag must be a non-empty str, got None"):
        writer.add_text(None, "x", 0)
    # said of the shape the loop passed, in its dataformats
    with pytest.raises(ValueError, match=r"laid out as dataformats='HWC' says.*got shape \(3, 8, 12\): N=1, C=12, H=3"):
        writer.add_image("bad", torch.rand(3, 8, 12), dataformats="HWC")
    with pytest.raises(ValueError, match=r"no empty side, got shape \(3, 0, 5\): N=1, C=3, H=0, W=5"):
        writer.add_image("bad", np.zeros((3, 0, 5)))
    writer.add_image("batch", torch.rand(4, 3, 5, 6), dataformats="NCHW")  # a grid, as add_images
    writer.add_image("batch-last", torch.rand(2, 5, 6, 3), dataformats="NHWC")
    writer.add_images("one", torch.rand(3, 5, 6), dataformats="CHW")  # one image, as add_image
    assert [sink.of(ImageGrid, tag)[-1].pixels.shape for tag in ("batch", "batch-last", "one")] == [
        (4, 3, 5, 6), (2, 3, 5, 6), (1, 3, 5, 6)]
    grey_alpha = torch.zeros(2, 2, 2)
    grey_alpha[1, 0] = 1.0  # black, opaque in the top row and transparent below (PNG's LA)
    writer.add_image("la", grey_alpha)
    assert sink.of(ImageGrid, "la")[-1].pixels[0, 0].tolist() == [[0, 0], [255, 255]]
    figure = pyplot.figure(figsize=(1, 1), dpi=20)
    writer.add_figure("kept", figure, close=0)  # any truth value, as TensorBoard's `if close:`
    assert pyplot.fignum_exists(figure.number)
    pyplot.close(figure)
    with pytest.raises(ValueError, match="figure must be a matplotlib figure or a non-empty list of them"):
        writer.add_figure("none", [])


def test_a_path_log_dir_is_given_back_as_it_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("VISDOM_PORT", "1")
    with SummaryWriter(tmp_path / "run") as writer:
        assert writer.get_logdir() == writer.log_dir == tmp_path / "run"  # writer.log_dir / "model.pt" works
    with SummaryWriter(str(tmp_path / "other")) as writer:
        assert writer.get_logdir() == str(tmp_path / "other")


def test_summaries_a_script_writes_itself_through_file_writer_draw_their_scalars_and_hparams(tmp_path):
    # The recipe for hparams in the run's own folder: hparams() summaries through file_writer.
    from torch.utils.tensorboard.summary import hparams, scalar

    sink = ListSink()
    writer = SummaryWriter(monitor=Monitor([], sink=sink))
    for summary in hparams({"lr": 0.1, "optimizer": "sgd"}, {"hparam/accuracy": 0}):
        writer.file_writer.add_summary(summary)
    writer.file_writer.add_summary(scalar("hparam/accuracy", 0.75), global_step=3)
    writer._get_file_writer().add_summary(scalar("loss", 0.5, new_style=True), 4)
    assert sink.of(Hparams)[-1].hparams == {"lr": 0.1, "optimizer": "sgd"}
    assert [(p.x, dict(zip(p.traces, p.values))) for p in sink.of(Points, "hparam/accuracy")] == [(3, {"accuracy": 0.75})]
    assert [(p.x, dict(zip(p.traces, p.values))) for p in sink.of(Points, "loss")] == [(4, {"loss": 0.5})]
    assert list(writer.all_writers.values())[0].get_logdir() == writer.get_logdir()


def test_add_figure_without_matplotlib_names_the_extra(monkeypatch):
    writer = SummaryWriter(monitor=Monitor([], sink=ListSink()))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a machine without it does on import
    with pytest.raises(ImportError, match=r"add_figure needs matplotlib: pip install 'monitor\[figures\]'"):
        writer.add_figure("f", object())


def test_a_tensorboard_script_runs_with_only_its_import_changed(visdom_server, tmp_path, connect_client,
                                                                read_window):
    script = (Path(__file__).parent / "helpers" / "tensorboard_tutorial.py").read_text()
    changed = script.replace("from torch.utils.tensorboard import SummaryWriter", "from monitor import SummaryWriter")
    assert changed.count("\n") == script.count("\n") and changed != script
    (tmp_path / "train.py").write_text(changed)
    env = {**os.environ, "VISDOM_PORT": str(visdom_server.port)}
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    env = "fashion_mnist_experiment_1"
    shown = json.loads(connect_client(visdom_server).get_window_data(None, env))
    assert {"training loss", "loss", "fc1.weight", "four_fashion_mnist_images", "predictions vs. actuals",
            "hparams", "graph"} <= set(shown)
    assert set(read_window(visdom_server, env, "loss")) == {"train", "scaled"}
    assert len(read_window(visdom_server, env, "training loss")["training loss"][0]) == 8
    entries = [json.loads(line) for line in (tmp_path / "runs/fashion_mnist_experiment_1" / RunLog.FILENAME).open()]
    assert sum(e["k"] == "histogram" for e in entries) == 8


@pytest.mark.parametrize("name, model, inputs", models_and_inputs())
def test_add_graph_shows_the_modules_and_shapes_tensorboard_traces(name, model, inputs, tmp_path):
    with TensorBoardWriter(log_dir=str(tmp_path)) as writer:
        writer.add_graph(model, inputs)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    leaves = {path for path, m in model.named_modules() if not any(True for _ in m.children())}
    theirs = {}  # leaf module's path -> the shape of the last operation TensorBoard traced inside it
    for node in events.Graph().node:
        path = ".".join(re.findall(r"\[([^\]]+)\]", "/".join(node.name.split("/")[1:-1])))
        if node.op.startswith("aten::") and path in leaves:
            theirs[path] = str([d.size for d in node.attr["_output_shapes"].list.shape[0].dim])
    sink = ListSink()
    SummaryWriter(monitor=Monitor([], sink=sink)).add_graph(model, inputs)
    nodes, _ = traced(model, inputs)
    assert {n.module: n.shape for n in nodes if n.name == n.module} == theirs
    assert all(f">{shape}<" in sink.of(Text, "graph")[0].html for shape in theirs.values())


# --- what a TensorBoard user's loop does with its writers and folders ---------------------------
def _points(log_dir: Path, window: str, trace: str) -> list[tuple[float, float]]:
    return [(e["x"], e["y"][trace]) for e in RunLog.read(log_dir / RunLog.FILENAME)
            if e.get("k") == "points" and e["win"] == window and trace in e["y"]]


def test_scalars_logged_at_one_step_are_all_drawn_as_tensorboard_records_them(visdom_server, tmp_path, read_window):
    logged = []
    ours, theirs = SummaryWriter(tmp_path / "ours", port=visdom_server.port), TensorBoardWriter(tmp_path / "tb")
    for epoch in range(2):
        for batch in range(3):  # the epoch as the step, every batch: a common loop
            lr = 0.1 / (1 + epoch * 3 + batch)
            logged.append((epoch, lr))
            for writer in (ours, theirs):
                writer.add_scalar("lr", lr, epoch)
    ours.close()
    theirs.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lr")] == [(x, pytest.approx(y)) for x, y in logged]
    xs, ys = read_window(visdom_server, "ours", "lr")["lr"]
    assert list(zip(xs, ys)) == [(x, pytest.approx(y)) for x, y in logged]


def test_add_hparams_once_per_trial_shows_a_row_per_call_as_tensorboard_s_table(visdom_server, tmp_path,
                                                                                 read_window_raw):
    with SummaryWriter(tmp_path / "sweep", port=visdom_server.port) as writer:  # TensorBoard's documented example
        for i in range(5):
            writer.add_hparams({"lr": 0.1 * i, "bsize": i}, {"hparam/accuracy": 10 * i, "hparam/loss": 10 * i})
        writer.add_hparams({"lr": 0.1 * 4, "bsize": 4}, {"hparam/accuracy": 45, "hparam/loss": 40})  # another seed
        writer.add_hparams({"lr": 0.5, "bsize": 5}, {"hparam/accuracy": 1, "hparam/loss": 1}, run_name="named")
        writer.add_hparams({"lr": 0.5, "bsize": 5}, {"hparam/accuracy": 50, "hparam/loss": 50}, run_name="named")
    html = read_window_raw(visdom_server, "sweep", "hparams")["content"]
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in rows]
    assert cells[0] == ["run", "lr", "bsize", "hparam/accuracy", "hparam/loss"]
    # A row a call, as TensorBoard makes a run of each (the same hparams twice: two seeds, say),
    # named by its run_name or the time of the call; a run_name given again is that run's row,
    # with its latest metrics.
    assert [row[2] for row in cells[1:]] == ["0", "1", "2", "3", "4", "4", "5"]
    assert [row[1] for row in cells[1:]] == ["0", "0.1", "0.2", "0.3", "0.4", "0.4", "0.5"]  # 0.1 * 3 as 0.3
    assert cells[-2][3:] == ["45", "40"] and cells[-1][3:] == ["50", "50"]
    assert cells[-1][0] == "named" and all(re.fullmatch(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", row[0])
                                           for row in cells[1:-1])  # the time of the call, as TensorBoard's
    entries = [e for e in RunLog.read(tmp_path / "sweep" / "runlog.jsonl") if e["k"] == "hparams"]
    assert len(entries) == 8  # every call in the run log


def test_a_log_dir_keeps_what_every_writer_wrote_to_it_as_tensorboard_s_folders_do(
        visdom_server, tmp_path, read_window, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = SummaryWriter("runs/exp1", port=visdom_server.port)
    first.add_scalar("Loss/train", 1.0, 0)
    second = SummaryWriter("runs/exp1", port=visdom_server.port)  # one per trial, or a helper's own
    second.add_scalar("Acc/val", 0.5, 0)
    first.add_scalar("Loss/train", 0.9, 1)
    first.close()
    second.add_scalar("Acc/val", 0.6, 1)  # the other writer is still open
    second.close()
    second.add_scalar("Acc/val", 0.7, 2)  # after close(): TensorBoard's writer opens again
    second.flush()
    assert read_window(visdom_server, "exp1", "Loss") == {"train": ([0, 1], [1.0, 0.9])}
    assert read_window(visdom_server, "exp1", "Acc") == {"val": ([0, 1, 2], [0.5, 0.6, 0.7])}
    second.close()

    resumed = SummaryWriter("runs/exp1", purge_step=1, port=visdom_server.port)  # a requeued script
    resumed.add_scalar("Loss/train", 0.5, 1)
    resumed.close()
    assert _points(Path("runs/exp1"), "Loss", "train") == [(0, 1.0), (1, 0.5)]  # step 1 on: the new run's
    assert read_window(visdom_server, "exp1", "Loss") == {"train": ([0, 1], [1.0, 0.5])}
    from monitor.runs import described
    assert described(Path("runs/exp1")).status == "finished"


def test_purge_step_takes_out_what_tensorboard_hides_and_keeps_earlier_steps_logged_later(
        visdom_server, tmp_path, read_window, monkeypatch, caplog):
    # An epoch-indexed tag and a text at step 0, logged after iteration 5: TensorBoard keeps them
    # (its EventAccumulator, reading these calls' event files: the points expected below).
    monkeypatch.chdir(tmp_path)
    writer = SummaryWriter("runs/purged", port=visdom_server.port)
    for step in range(10):
        writer.add_scalar("it/loss", float(step), step)
        if step % 5 == 4:
            writer.add_scalar("ep/acc", float(step // 5), step // 5)
    writer.add_text("final", "done", 0)
    writer.close()
    with caplog.at_level("WARNING", logger="monitor"):
        writer = SummaryWriter("runs/purged", purge_step=5, port=visdom_server.port)  # resumed from iteration 5
    assert not [r for r in caplog.records if "sets aside" in r.getMessage()]  # it goes on: nothing set aside
    for step in (5, 6):
        writer.add_scalar("it/loss", 100.0 + step, step)
    writer.close()
    expected = {("it/loss", "loss"): [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 105.0), (6, 106.0)],
                ("ep/acc", "acc"): [(0, 0.0), (1, 1.0)]}
    for (window, trace), points in expected.items():
        assert _points(Path("runs/purged"), window, trace) == points
        assert read_window(visdom_server, "purged", window) == {trace: tuple(map(list, zip(*points)))}
    assert [e["x"] for e in RunLog.read("runs/purged/runlog.jsonl") if e["k"] == "text"] == [0]


def test_a_script_resumed_without_purge_step_shows_its_new_values_from_the_step_it_went_back_to(
        visdom_server, tmp_path, read_window, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with SummaryWriter("runs/requeued", port=visdom_server.port) as writer:
        for step in range(10):
            writer.add_scalar("loss", float(step), step)
    with SummaryWriter("runs/requeued", port=visdom_server.port) as writer:  # from step 5's checkpoint
        for step in range(5, 12):
            writer.add_scalar("loss", 100.0 + step, step)
    assert read_window(visdom_server, "requeued", "loss") == {
        "loss": (list(range(12)), [0.0, 1.0, 2.0, 3.0, 4.0, *(100.0 + step for step in range(5, 12))])}
    assert len(_points(Path("runs/requeued"), "loss", "loss")) == 17  # the run log keeps both


def test_runs_in_nested_folders_get_envs_of_their_own(visdom_server, tmp_path, read_window, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model, value in (("resnet", 1.0), ("vgg", 2.0)):
        with SummaryWriter(f"runs/{model}/train", port=visdom_server.port) as writer:
            writer.add_scalar("loss", value, 0)
    assert read_window(visdom_server, "resnet_train", "loss") == {"loss": ([0], [1.0])}
    assert read_window(visdom_server, "vgg_train", "loss") == {"loss": ([0], [2.0])}
    long = SummaryWriter(comment="_resnet50_imagenet_lr0.1_bs256_wd1e-4_cosine_warmup5_ep90_mixup0.2_cutmix1.0_"
                                 "ls0.1_ema", port=visdom_server.port)
    long.add_scalar("x" * 150, True, 0)  # a bool is 1, as TensorBoard takes it
    long.close()
    assert len(long.log.sink.env) == 100 and long.log_dir.startswith("runs/") and not long.log.sink.pending
    with pytest.raises(RuntimeError):
        with SummaryWriter("", port=visdom_server.port) as default:  # "" is TensorBoard's default folder too
            default.add_scalar("loss", 1.0, 0)
            raise RuntimeError("diverged")
    from monitor.runs import described
    crashed = described(Path(default.log_dir))
    assert default.log_dir.startswith("runs/") and (crashed.status, crashed.error) == ("crashed", "RuntimeError: diverged")


def test_a_tag_used_for_two_kinds_of_data_gets_a_window_for_each(tmp_path):
    sink = ListSink()
    writer = SummaryWriter(monitor=Monitor([], sink=sink))
    writer.add_scalar("weights/train", 1.0, 0)
    writer.add_histogram("weights", torch.randn(100), 0)
    writer.add_text("hparams", "my notes", 0)
    writer.add_hparams({"lr": 0.1}, {"acc": 0.5})
    assert [r.window for r in sink.records if not isinstance(r, Layout)] == [
        "weights", "weights (histogram)", "hparams", "hparams (hparams)"]


def test_tensorboard_s_bins_and_steps_are_checked_at_the_call_and_errors_name_its_arguments(tmp_path):
    sink = ListSink()
    writer = SummaryWriter(monitor=Monitor([], sink=sink))
    for bins, message in (("foo", r"bins must be one of 'tensorflow', 'auto'.*got 'foo'"),
                          (0, "bins must be a positive number of bins, got 0"),
                          ([3, 2, 1], r"bins must be .* increasing bin edges, got \[3, 2, 1\]")):
        with pytest.raises(ValueError, match=message):
            writer.add_histogram("h", torch.randn(10), 0, bins=bins)
    with pytest.raises(ValueError, match="global_step must be a step number, got 'five'"):
        writer.add_histogram("h", torch.randn(10), "five", bins="auto")
    with pytest.raises(ValueError, match="scalar_value must be a number, got 'abc'"):
        writer.add_scalar("x", "abc")
    with pytest.raises(ValueError, match=r"tag_scalar_dict\['a'\] must be a number"):
        writer.add_scalars("x", {"a": "abc"})
    with pytest.raises(TypeError, match="hparam_dict must be a dict of name to value, got list"):
        writer.add_hparams([], {})
    writer.add_scalar("y", 0.5)
    with pytest.raises(ValueError):
        writer.add_scalar("y", "refused")
    writer.add_scalar("y", torch.tensor(True))
    assert sink.points("y") == {"y": [(0, 0.5), (1, 1.0)]}  # a refused call takes no step
    writer.add_histogram("bf16", torch.randn(100).bfloat16(), 0, bins="auto")  # numpy has no bfloat16
    edges, counts, n = sink.of(Histogram, "bf16")[-1].values()
    assert n == 100 and sum(counts) == 100


def test_flush_and_close_do_not_wait_on_a_dashboard_that_is_not_there(tmp_path, monkeypatch):
    from monitor.server import VisdomServer
    monkeypatch.chdir(tmp_path)
    writer = SummaryWriter("runs/offline", port=VisdomServer(0).port)  # nothing listens there
    started = time.monotonic()
    for epoch in range(3):
        writer.add_scalar("Loss/train", 1.0 / (epoch + 1), epoch)
        writer.flush()
    writer.close()
    assert time.monotonic() - started < 5  # each used to wait its 10 s
    assert _points(Path("runs/offline"), "Loss", "train") == [(0, 1.0), (1, 0.5), (2, 1 / 3)]


def test_a_continued_log_dir_counts_on_from_its_last_step_and_keeps_its_windows_kinds(tmp_path, monkeypatch):
    from monitor.server import VisdomServer
    monkeypatch.chdir(tmp_path)
    port = VisdomServer(0).port  # no dashboard needed: the run log says it all
    media = {"add_video": torch.rand(1, 2, 3, 4, 4), "add_audio": torch.rand(10),
             "add_mesh": torch.rand(1, 4, 3)}
    with SummaryWriter("runs/counted", port=port) as writer:
        for method, value in media.items():
            getattr(writer, method)(method, value)
        for value in (3.0, 2.0):
            writer.add_scalar("w", value)  # no global_step: 0, 1
        writer.add_histogram("w", torch.randn(10))  # "w (histogram)"
        with pytest.raises(TypeError, match="values must hold real numbers"):
            writer.add_histogram("w", torch.randn(4, dtype=torch.complex64))  # refused: takes no step
    with SummaryWriter("runs/counted", port=port) as again:  # the script run again
        again.add_histogram("w", torch.randn(10))
        again.add_scalar("w", 1.0)
        for method, value in media.items():
            getattr(again, method)(method, value)
    entries = list(RunLog.read(Path("runs/counted", RunLog.FILENAME)))
    assert {e["win"] for e in entries if e.get("k") in ("image", "text", "mesh")} == set(media)  # the same windows
    # Calls without a global_step count per tag (0, 1, 2), then on from the run's last step (3, 4).
    assert [(e["x"], e["y"]["w"]) for e in entries if e["k"] == "points"] == [(0, 3.0), (1, 2.0), (4, 1.0)]
    assert [(e["win"], e["x"]) for e in entries if e["k"] == "histogram"] == [("w (histogram)", 2),
                                                                              ("w (histogram)", 3)]


def test_writers_opened_together_in_threads_share_one_run(tmp_path, monkeypatch):
    import threading
    from monitor.server import VisdomServer
    from monitor.writer import _runs
    monkeypatch.chdir(tmp_path)
    port, writers = VisdomServer(0).port, []
    threads = [threading.Thread(target=lambda: writers.append(SummaryWriter("runs/threads", port=port)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(writers) == 4 and len({id(w.log) for w in writers}) == 1
    monkeypatch.chdir(tmp_path / "runs")  # a script that changes folders before it closes
    for writer in writers:
        writer.close()
    assert not _runs and writers[0].log.sink._child.poll() is not None


def test_odd_log_dirs_still_name_an_env(tmp_path, monkeypatch):
    from monitor.writer import _envs_of
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert _envs_of(Path("runs/a/b"))[0] == "a_b" and _envs_of(Path("runs"))[0] == "runs"
    assert _envs_of(Path("/"))[0] == "runs" and _envs_of(Path("runs/x\\y"))[0] == "x_y"
    assert _envs_of(Path("runs/实验#1?"))[0] == "实验_1_"  # what ends an address: the env's page would be empty
    for long in ("x" * 120, "長" * 80):  # too many characters; 80 characters but 240 bytes, too many for a folder
        env = _envs_of(Path("runs") / long)[0]
        assert env.startswith(long[:50]) and env == checks.name("env", env, path=True)
    from monitor.runs import _comparison_env
    assert _comparison_env(["lr#1", "b"]) == "compare_lr_1_b"
    old = tmp_path / "runs" / "lr#1"  # a run written before such envs were refused: it goes on, in env lr_1
    old.mkdir()
    (old / RunLog.FILENAME).write_text('{"k":"run","env":"lr#1","run_id":"' + "a" * 32 + '","time":1.0}\n'
                                       '{"k":"points","win":"loss","x":0,"y":{"loss":1.0}}\n')
    with SummaryWriter(old, port=1) as writer:  # no server: the log
        writer.add_scalar("loss", 0.5, 1)
    assert writer.log.sink.env == "lr_1"
    assert [e["x"] for e in RunLog.read(old / RunLog.FILENAME) if e["k"] == "points"] == [0, 1]
    assert _envs_of(Path("runs/.."))[0] == tmp_path.name  # resolved: the folder it names
    with pytest.raises(ValueError, match="log_dir must be a non-empty str"):
        _envs_of(Path("runs/\t"))
    assert _envs_of(tmp_path / "x" / "exp")[:3] == ["x_exp", f"{tmp_path.name}_x_exp", f"{tmp_path.parent.name}_{tmp_path.name}_x_exp"]
    monkeypatch.chdir(tmp_path / "runs")
    assert _envs_of(tmp_path / "x" / "exp")[:2] == ["exp", "x_exp"]  # not below the working directory: its name


def test_log_dirs_outside_runs_are_named_by_their_path_and_two_alike_in_one_process_get_envs_apart(
        tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    envs = {}
    for place in ("logs/exp1/train", "logs/exp2/train", "runs/a/b", "runs/a_b"):
        writer = SummaryWriter(place, port=1, timeout=0.2)
        writer.add_scalar("loss", 1.0, 0)
        envs[place] = writer
    assert {place: w.log.sink.env for place, w in envs.items()} == {
        "logs/exp1/train": "logs_exp1_train", "logs/exp2/train": "logs_exp2_train", "runs/a/b": "a_b",
        "runs/a_b": "runs_a_b"}
    assert "log_dir runs/a_b would show in env 'a_b', where another folder's run shows: it shows in env 'runs_a_b'" \
        in caplog.text
    for writer in envs.values():
        writer.close()
    monkeypatch.chdir(tmp_path / "logs")  # a requeued script started elsewhere: the run's env goes on
    with SummaryWriter("exp1/train", port=1, timeout=0.2) as writer:
        assert writer.log.sink.env == "logs_exp1_train"
    monkeypatch.chdir(tmp_path)
    with SummaryWriter("runs/c/d", port=1, timeout=0.2) as writer:
        writer.add_scalar("loss", 1.0, 0)
    with SummaryWriter("runs/c_d", port=1, timeout=0.2) as writer:  # the first one closed: its env stays its own
        assert writer.log.sink.env == "runs_c_d"


def test_boxes_are_drawn_on_the_image_with_their_labels(visdom_server, tmp_path, read_window_raw):
    image = torch.zeros(3, 40, 48)
    with SummaryWriter(log_dir=tmp_path / "runs" / "boxes", port=visdom_server.port) as writer:
        writer.add_image_with_boxes("detections", image, torch.tensor([[4, 16, 30, 36]]), 0, labels=["cat"])
        writer.add_image_with_boxes("doubled", image[:1, :20, :24], np.array([[2, 8, 15, 18]]), 0, rescale=2)
        writer.flush()
        boxes = _tile(shown_grid(read_window_raw(visdom_server, "boxes", "detections")), 0, 1, 40, 48)
        doubled = _tile(shown_grid(read_window_raw(visdom_server, "boxes", "doubled")), 0, 1, 40, 48)
        with pytest.raises(ValueError, match=r"box_tensor must be N x 4 \(x1, y1, x2, y2 each\), got shape \(4,\)"):
            writer.add_image_with_boxes("x", image, torch.zeros(4))
        with pytest.raises(ValueError, match=r"labels must be a list of 1 labels, one a box, got 'cat'"):
            writer.add_image_with_boxes("x", image, torch.zeros(1, 4), labels="cat")
        # A detection model's class numbers as a tensor are their numbers, not "tensor(3)".
        writer.add_image_with_boxes("numbered", image, torch.tensor([[4, 16, 30, 36]]), 0, labels=torch.tensor([3]))
        writer.add_image_with_boxes("named", image, torch.tensor([[4, 16, 30, 36]]), 0, labels=["3"])
        assert writer.log.sink.flush()  # writer.flush() within 0.5 s of the last one does not wait
        assert shown_grid(read_window_raw(visdom_server, "boxes", "numbered")) == \
            shown_grid(read_window_raw(visdom_server, "boxes", "named"))
        with pytest.raises(ValueError, match=r"img_tensor must be a torch.Tensor or a numpy array of one shape, got "
                                             r"a list of 2 items of shapes \[\(3, 4, 4\), \(3, 5, 5\)\]"):
            writer.add_images("x", [torch.zeros(3, 4, 4), torch.zeros(3, 5, 5)], 0)
    red = [255, 0, 0]
    assert boxes[16, 10].tolist() == boxes[36, 10].tolist() == boxes[25, 4].tolist() == red  # the box's edges
    assert boxes[25, 15].tolist() == [0, 0, 0]  # inside it, the image
    assert (boxes[:15, 4:30] == red).all(axis=-1).sum() > 20  # the label's band, above the box
    assert doubled[16, 10].tolist() == doubled[36, 10].tolist() == red  # the image and its boxes scaled by 2


FORKING_SCRIPT = """
import os, sys, time
from monitor import SummaryWriter
writer = SummaryWriter("runs/forked", port=int(sys.argv[1]))
writer.add_scalar("loss", 1.0, 0)
began = time.monotonic()
if os.fork() == 0:  # a worker forked by the script (a Pool's), which logs and ends through the exit hooks
    writer.add_scalar("loss", 99.0, 7)
    writer.close()
    sys.exit(0)
os.wait()
print(f"{time.monotonic() - began:.1f}", flush=True)
writer.add_scalar("loss", 2.0, 1)
writer.close()
"""


def test_a_forked_child_with_the_writer_neither_waits_at_its_exit_nor_ends_the_parent_s_run(visdom_server, tmp_path,
                                                                                            read_window):
    (tmp_path / "train.py").write_text(FORKING_SCRIPT)
    done = subprocess.run([sys.executable, "train.py", str(visdom_server.port)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 5  # the child closed its copy of the run at once (it waited 32 s)
    assert "logged in a forked process" in done.stderr and "dropped" in done.stderr  # said once, in the child
    assert _points(tmp_path / "runs" / "forked", "loss", "loss") == [(0, 1.0), (1, 2.0)]
    assert read_window(visdom_server, "forked", "loss")["loss"] == ([0, 1], [1.0, 2.0])


def test_a_loop_that_flushes_every_step_waits_for_the_dashboard_at_most_every_half_second(visdom_server, tmp_path,
                                                                                          read_window):
    writer = SummaryWriter(tmp_path / "flushing", port=visdom_server.port)
    waits, flush = [], writer.log.sink.flush
    writer.log.sink.flush = lambda *a, **k: waits.append(1) or flush(*a, **k)  # counts the real flushes
    began = time.monotonic()
    for step in range(200):  # as TensorBoard scripts do, its writer holding events up to flush_secs
        for k in range(10):
            writer.add_scalar(f"m{k}/train", float(step), step)
        writer.flush()
    assert len(waits) <= 2 + (time.monotonic() - began) / 0.5  # each waited for 10 windows (7 ms a step)
    time.sleep(0.5)
    writer.flush()  # half a second on: it waits
    assert read_window(visdom_server, "flushing", "m9")["train"][0] == list(range(200))
    writer.close()


def test_a_monitor_made_on_an_open_writer_s_run_folder_is_refused_naming_what_to_do(tmp_path, monkeypatch):
    from monitor.rundir import RunInUseError
    from monitor.server import VisdomServer
    monkeypatch.chdir(tmp_path)
    port = VisdomServer(0).port  # the run log says it all
    writer = SummaryWriter("runs/mixed", port=port)
    writer.add_scalar("extra", 1.0, 0)
    with pytest.raises(RunInUseError, match=r"runs/mixed is written by an open SummaryWriter .* make the Monitor "
                                            r"first .* SummaryWriter\(monitor=monitor\)"):
        Monitor([Scalars()], env="mixed", port=port)
    writer.add_scalar("extra", 2.0, 1)  # the writer's run goes on (it was ended, and this dropped)
    writer.close()
    assert _points(Path("runs/mixed"), "extra", "extra") == [(0, 1.0), (1, 2.0)]
    Monitor([Scalars()], env="mixed", port=port).close()  # once the writer closed, the env is free


def test_writers_opened_in_the_same_second_each_get_a_run_of_their_own(tmp_path, monkeypatch):
    """TensorBoard's default folder names the second only: a sweep's processes started at once
    shared one, where the second process stopped at RunInUseError, and runs in a loop mixed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda form, *when: "Dec06_09-30-46_")
    first = SummaryWriter(port=1)  # still open, as another process's would be
    with SummaryWriter(port=1) as second, SummaryWriter(comment="-lr0.1", port=1) as other:
        second.add_scalar("loss", 2.0, 0)
        other.add_scalar("loss", 3.0, 0)
    first.add_scalar("loss", 1.0, 0)
    first.close()
    with SummaryWriter(port=1) as third:  # closed ones keep their folders too
        third.add_scalar("loss", 4.0, 0)
    name = f"runs/Dec06_09-30-46_{socket.gethostname()}"
    writers = (first, second, other, third)
    assert [w.log_dir for w in writers] == [name, f"{name}_2", f"{name}-lr0.1", f"{name}_3"]
    assert [_points(Path(w.log_dir), "loss", "loss") for w in writers] == [[(0, v)] for v in (1.0, 2.0, 3.0, 4.0)]


def test_a_writer_let_go_of_without_close_ends_its_run_and_its_sink_s_process(visdom_server, read_window, tmp_path):
    """A sweep's trials each with a writer never closed kept a process each until the exit (800 MB for 20)."""
    import gc

    writer = SummaryWriter(tmp_path / "trial", port=visdom_server.port)
    child = writer.log.sink._child
    for step in range(3):
        writer.add_scalar("loss", float(step), step)
    del writer
    gc.collect()
    assert child.wait(timeout=20) == 0
    assert [e["status"] for e in RunLog.read(tmp_path / "trial" / RunLog.FILENAME) if e["k"] == "end"] == ["finished"]
    assert read_window(visdom_server, "trial", "loss")["loss"][0] == [0, 1, 2]
    for step in range(6):  # a trial's function, its writer never closed, each on one folder: nothing lost
        trial = SummaryWriter(tmp_path / "trials", port=visdom_server.port)
        trial.add_scalar("loss", float(step), step)
        child = trial.log.sink._child
        del trial
        gc.collect()
    assert child.wait(timeout=20) == 0
    assert [e["x"] for e in RunLog.read(tmp_path / "trials" / RunLog.FILENAME) if e["k"] == "points"] == list(range(6))
    with SummaryWriter(tmp_path / "closed", port=visdom_server.port) as closed:  # closed: ends its run once
        closed.add_scalar("loss", 1.0, 0)
    del closed
    gc.collect()
    assert [e["k"] for e in RunLog.read(tmp_path / "closed" / RunLog.FILENAME)].count("end") == 1


SWEEP_TRIAL = """
import sys, time
from pathlib import Path
from monitor import SummaryWriter
trial, port = int(sys.argv[1]), int(sys.argv[2])
with SummaryWriter("tb", port=port) as writer:  # as in each working directory of a Hydra sweep
    writer.add_scalar("loss", float(trial), 0)
    Path(f"../started{trial}").touch()
    while not all(Path(f"../started{t}").exists() for t in (0, 1)):  # both trials live at once
        time.sleep(0.05)
    writer.add_scalar("loss", float(trial), 1)
print(writer.log.sink.env)
"""


def test_log_dirs_named_alike_in_two_processes_show_in_envs_apart_until_the_first_folder_is_gone(
        visdom_server, tmp_path, read_window):
    for trial in (0, 1, 2):
        (tmp_path / str(trial)).mkdir()
    (tmp_path / "train.py").write_text(SWEEP_TRIAL)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}

    def trial(number: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "../train.py", str(number), str(visdom_server.port)],
                                cwd=tmp_path / str(number), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    trials = [trial(0)]
    while not (tmp_path / "started0").exists():  # the first one claims "tb"
        assert trials[0].poll() is None, trials[0].communicate()
        time.sleep(0.05)
    trials.append(trial(1))
    (out0, err0), (out1, err1) = (t.communicate(timeout=120) for t in trials)
    assert (out0.strip(), out1.strip()) == ("tb", "1_tb"), (err0, err1)
    assert "log_dir tb would show in env 'tb', where another folder's run shows: it shows in env '1_tb'" in err1
    assert read_window(visdom_server, "tb", "loss")["loss"] == ([0, 1], [0.0, 0.0])
    assert read_window(visdom_server, "1_tb", "loss")["loss"] == ([0, 1], [1.0, 1.0])
    shutil.rmtree(tmp_path / "0")  # a trial deleted: its env is free for the next
    (tmp_path / "started0").touch()
    out2, err2 = trial(2).communicate(timeout=120)
    assert out2.strip() == "tb" and "would show" not in err2
    assert read_window(visdom_server, "tb", "loss")["loss"] == ([0, 1], [2.0, 2.0])


def test_a_distribution_s_bands_are_tensorboard_s_and_a_constant_s_are_its_value(visdom_server, tmp_path,
                                                                                  read_window_raw):
    """TensorBoard's distributions view (its compressed histograms) from the same add_histogram
    calls: a constant drawn as a band up to 0.9% above its value, a one-parameter bias 6.6%."""
    from monitor import distribution

    torch.manual_seed(0)
    cases = {"constant": torch.full((100,), 3.0), "bias": torch.tensor([0.019013]), "two": torch.tensor([1.0, 2.0]),
             "normal": torch.randn(1000), "skewed": torch.rand(500) ** 4, "on an edge": torch.tensor([0.0, 1.0, 1.0])}
    with TensorBoardWriter(log_dir=str(tmp_path / "tensorboard")) as tensorboard, \
            SummaryWriter(tmp_path / "runs" / "bands", port=visdom_server.port) as writer:
        for tag, values in cases.items():
            tensorboard.add_histogram(tag, values, 0)
            writer.add_histogram(tag, values, 0)
            writer.add_histogram(f"{tag} in numpy's bins", values, 0, bins="auto")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    entries = {e["win"]: e for e in RunLog.read(tmp_path / "runs" / "bands" / RunLog.FILENAME) if e["k"] == "histogram"}
    for tag, values in cases.items():
        expected = [value for _, value in events.CompressedHistograms(tag)[0].compressed_histogram_values]
        assert list(distribution.bands(entries[tag]).values()) == pytest.approx(expected, rel=1e-6, abs=1e-9), tag
        shown = distribution.bands(entries[f"{tag} in numpy's bins"])
        assert (shown["min"], shown["max"]) == (values.min().item(), values.max().item()), tag
    constant = read_window_raw(visdom_server, "bands", "constant")["content"]["data"]
    assert {trace["name"]: trace["y"] for trace in constant[:-1]} == {name: [3.0] for name in distribution.BANDS}
    assert constant[-1]["y"] == [100] and constant[-1]["x"] == [3.0] and 0 < constant[-1]["width"][0] < 0.1


RUN_TWICE = """
import torch
from monitor import SummaryWriter
for seed in (0, 1):  # the script, then the same script again
    with SummaryWriter("gan", port=1, timeout=0.2) as writer:
        for step in range(4):
            for layer in range(12):
                writer.add_histogram(f"G/layer{layer}.weight", torch.randn(50) + seed, step)
            writer.add_scalars("loss", {"D": 1.0, "G": 2.0}, step)
"""


def test_a_script_run_again_on_its_log_dir_says_its_windows_went_back_in_a_line_or_two(tmp_path):
    """TensorBoard is silent there; once a trace (a histogram's nine bands) was ~200 lines for a GAN."""
    (tmp_path / "train.py").write_text(RUN_TWICE)
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    said = [line for line in done.stderr.splitlines() if "went back" in line]
    assert done.returncode == 0 and 1 <= len(said) <= 2, done.stderr
    assert sum(int(re.search(r"(\d+) windows", line).group(1)) if "windows" in line else 1 for line in said) == 13
    assert "'G/layer0.weight' (trace 'min': x=0, after x=3)" in said[0]


RERUN = """
import sys, time
from monitor import SummaryWriter
steps, pause = int(sys.argv[1]), float(sys.argv[2])
with SummaryWriter("runs/exp1") as writer:
    for step in range(steps):
        writer.add_scalar("loss/train", 10.0 * steps + step, step)
        writer.flush()
        time.sleep(pause)
print("wrote", writer.log.sink.run_dir, "logdir", writer.get_logdir(), flush=True)
"""


def _rerun(tmp_path: Path, port: int, steps: int, pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "rerun.py", str(steps), str(pause)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "VISDOM_PORT": str(port),
                                 "PYTHONPATH": str(Path(__file__).parent.parent)})


def test_a_script_run_again_on_a_finished_log_dir_starts_a_new_run_and_keeps_the_earlier(visdom_server, tmp_path,
                                                                                          read_window):
    # TensorBoard draws both runs over each other; a Monitor's re-run starts afresh: so does a writer's
    (tmp_path / "rerun.py").write_text(RERUN)
    for steps in (5, 3):
        out, err = _rerun(tmp_path, visdom_server.port, steps).communicate(timeout=120)
        assert out.startswith("wrote"), err
    assert "holds a run that finished: this writer starts a new run there" in err
    assert _points(tmp_path / "runs/exp1", "loss", "train") == [(0, 30.0), (1, 31.0), (2, 32.0)]
    assert read_window(visdom_server, "exp1", "loss") == {"train": ([0, 1, 2], [30.0, 31.0, 32.0])}
    from monitor.runs import listed
    runs = listed(tmp_path / "runs", earlier=True)
    assert sorted((run.steps, run.status) for run in runs) == [(2, "finished"), (4, "finished")]


def test_a_second_process_on_a_live_log_dir_writes_a_folder_beside_it_instead_of_failing(visdom_server, tmp_path,
                                                                                          read_window):
    # TensorBoard's writers each write a file of their own in it (a training and an eval job)
    (tmp_path / "rerun.py").write_text(RERUN)
    first = _rerun(tmp_path, visdom_server.port, 20, 0.3)  # still writing when the second has started, under load too
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs/exp1" / RunLog.FILENAME).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    out, err = _rerun(tmp_path, visdom_server.port, 3).communicate(timeout=120)
    assert out.strip() == f"wrote {Path('runs/exp1_2')} logdir runs/exp1_2", err  # files saved beside it go there
    assert f"log_dir runs/exp1 is written by another live process (pid {first.pid}" in err
    assert first.communicate(timeout=120)[0].startswith("wrote")
    assert read_window(visdom_server, "exp1_2", "loss") == {"train": ([0, 1, 2], [30.0, 31.0, 32.0])}
    assert len(read_window(visdom_server, "exp1", "loss")["train"][0]) == 20


def test_a_writer_in_a_notebook_cell_s_output_shows_its_env_and_where_its_dashboard_is(tmp_path):
    # It showed <monitor.writer.SummaryWriter object at 0x7f...>: neither the env nor the page.
    with SummaryWriter(tmp_path / "tb_nb", port=1, timeout=0.2) as writer:
        assert repr(writer) == "<SummaryWriter of env 'tb_nb' at http://127.0.0.1:1/env/tb_nb>"
        assert writer._repr_html_().startswith('<a href="http://127.0.0.1:1/env/tb_nb" target="_blank">')
