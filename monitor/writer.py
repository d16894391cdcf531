"""SummaryWriter: TensorBoard's writer API, drawing on the dashboard; change one import.

A loop that logs through ``torch.utils.tensorboard.SummaryWriter`` keeps its calls; they go
through the same non-blocking, lossless sink and run log as the callbacks.
"""
from __future__ import annotations

import atexit
import base64
import datetime
import functools
import html
import io
import json
import logging
import os
import math
import re
import socket
import threading
import time
import wave
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from monitor import checks, embedding, mesh, pr_curve
from monitor.host import on_host
from monitor.distributed import launched_rank
from monitor.log import Log, NullSink
from monitor.norms import stored_values
from monitor.records import Embedding, Histogram, Mesh, Order, PrCurve, RunEnd, Text, ending_of, exit_error
from monitor.env_claims import claim
from monitor.rundir import RunDir, RunInUseError
from monitor.runlog import RunLog
from monitor.runs import HELD_OUT, TRAINING
from monitor.sink import open_sinks

_log = logging.getLogger("monitor")

# TensorBoard's default histogram bins: 0 and +-1e-12 * 1.1^k up to 1e20.
_TENSORFLOW_BINS: list[float] = []
_edge = 1e-12
while _edge < 1e20:
    _TENSORFLOW_BINS.append(_edge)
    _edge *= 1.1
_TENSORFLOW_BINS = [-e for e in reversed(_TENSORFLOW_BINS)] + [0.0] + _TENSORFLOW_BINS
del _edge
_TENSORFLOW_EDGES = torch.tensor(_TENSORFLOW_BINS, dtype=torch.float64)  # one tensor: copied to a device once

# What TensorBoard's writer also offers and the dashboard does not draw (yet): accepted, said once.
TEXTS = 10  # the texts of a tag shown, as TensorBoard's text view keeps 10 samples
SOUND_BYTES = 2_000_000  # of 16-bit samples a sound pane holds: its latest TEXTS clips, fewer long ones
_FLUSH_GAP = 0.5  # seconds: flush() waits for the dashboard at most this often (the sink's flush_every)

_NOT_DRAWN = ("add_onnx_graph", "add_tensor")


class SummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter``'s methods, with their signatures, on a Visdom env.

        from monitor import SummaryWriter   # was: from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(comment="-lr0.1")
        writer.add_scalar("Loss/train", loss.item(), step)     # window "Loss", trace "train"
        writer.close()

    **Tags.** A scalar's tag is split at its last ``/``: the window, then the trace, so
    ``Loss/train`` and ``Loss/test`` are two curves of window ``Loss``; a tag without ``/`` is
    both; a split's name leading it is the trace (``train/loss`` and ``eval/loss``: window
    ``loss``). ``add_scalars(main_tag, {"train": ..., "test": ...})`` draws the dict's keys as
    traces of window ``main_tag``. Images, histograms, texts, figures, PR curves and embeddings
    use the whole tag as window.

    **Runs.** ``log_dir`` is the run's folder (its run log, images, checkpoints), by default
    ``runs/<Mon><DD>_<HH>-<MM>-<SS>_<host><comment>`` as TensorBoard names it, with ``_2``,
    ``_3`` added for writers opened in the same second (a run each, where TensorBoard mixes
    them). The env is its path below ``runs/`` with ``_`` for ``/`` (``runs/resnet/train``: ``resnet_train``), else
    its last part, shortened with a hash past 100 characters. As with TensorBoard's event files,
    a ``log_dir`` keeps what was written to it: writers open on it in one process share its run,
    and a writer opened on it later (a resumed script) continues that run's curves, unless that
    run finished in another process (a script run again: a new run, the earlier one set aside);
    ``purge_step`` first takes every entry at that step or later out of the run log, as
    TensorBoard hides them, and continues even a finished run. A ``log_dir`` another live
    process writes is not shared: this writer writes a folder beside it (``exp1_2``). Logging
    after ``close()`` opens the run again. ``close()`` (or leaving a ``with`` block) records
    that the run finished, or crashed with the block's exception. ``monitor=`` writes to that
    Monitor's env instead (its sink, its run), as does a ``log_dir`` that a Monitor of this
    process writes (its ``run_dir``). Under ``torch.distributed`` only rank 0's writer writes
    (the other ranks' take what they log and drop it), as a Monitor does. Other keyword
    arguments go to :class:`monitor.SinkProcess` (``server``, ``port``, ...), for the first
    writer of a ``log_dir``.

    **Windows.** A scalar's tag is a window of its own, as TensorBoard draws it, unless a split
    names its trace (``Loss/train`` beside ``Loss/test``: :func:`split_tag`). A tag used for two
    kinds of data (a scalar ``weights/train`` and a histogram ``weights``) gets a window for
    each, the later one named ``weights (histogram)``.

    **Smoothing.** Scalar curves are drawn smoothed as TensorBoard's scalars view smooths them
    by default (``smoothing=0.6``, the weight of the past; 0 for none), the values themselves
    faint behind them; the run log keeps the values as logged.

    **Steps.** ``global_step=None``: TensorBoard records step 0 and draws the values in their
    order; here each tag counts its own calls (0, 1, 2, ...). ``walltime`` is accepted and not
    shown (the run log keeps the order). ``max_queue``, ``flush_secs``,
    ``filename_suffix``, ``new_style``, ``double_precision`` and ``hparam_domain_discrete`` are
    accepted and change nothing (the sink sends within a second and writes one run log), as are
    ``add_graph``'s ``verbose`` and ``use_strict_trace``. TensorBoard methods not drawn here
    (ONNX graphs, raw tensors) are accepted and say so once.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, comment: str = "", purge_step: int | None = None,
                 max_queue: int = 10, flush_secs: int = 120, filename_suffix: str = "", *,
                 monitor: Any = None, smoothing: float = 0.6, **sink_options: Any) -> None:
        weight = checks.smoothing_weight("smoothing", smoothing)
        # As TensorBoard's writer keeps them (read by scripts that make another writer alike).
        self.purge_step, self.max_queue, self.flush_secs = purge_step, max_queue, flush_secs
        self.filename_suffix = filename_suffix
        self._scalar_opts = {"xlabel": "step", **({"smoothing": weight} if weight else {})}
        self._curves: dict[tuple[str, str], str] = {}  # (window, trace): the call that draws that curve
        if monitor is not None:
            if log_dir is not None or sink_options:
                raise TypeError(f"a writer on a Monitor's env writes to its run: pass log_dir and sink options "
                                f"to the Monitor, got log_dir={log_dir!r} and {sorted(sink_options)}")
            self.log, self._run = monitor.log, None
            self._monitor = monitor  # its run is the monitor's: kept open while the writer writes to it
            self._kinds: dict[str, str] = {}
            self.log_dir = str(getattr(monitor.sink, "run_dir", ""))
        else:
            if not log_dir:  # None or "", as TensorBoard reads it
                comment = checks.text("comment", comment) if comment else ""
                log_dir = os.path.join("runs", time.strftime("%b%d_%H-%M-%S_") + socket.gethostname() + comment)
                if launched_rank() == 0:
                    log_dir = _new_folder(log_dir)
            if purge_step is not None:
                checks.integer("purge_step", purge_step, minimum=0)
            self.log_dir = log_dir if isinstance(log_dir, os.PathLike) else str(log_dir)  # as given, as TensorBoard
            self._sink_options = sink_options
            self._open(purge_step)
        self._steps: Counter[str] = Counter()  # calls without a global_step, per tag
        self._said: set[str] = set()
        self._range_checked: dict[str, int] = {}  # the images of each tag looked at for values outside 0-1
        self._finite_checked: dict[str, int] = {}  # the histograms of each tag looked at for values not finite
        self._sounds_said: set[str] = set()  # tags whose samples were said to be clipped or not finite
        self._said_pr: set[str] = set()  # tags whose predictions were said to be outside 0-1
        self._closed = False
        self._flushed = -math.inf  # when flush() last waited for the dashboard
        self._charts: list[tuple[str, list[Callable[[str], Any]]]] = []  # add_custom_scalars: window, matchers
        self._chart_of: dict[str, list[str]] = {}  # a tag's chart windows, found once

    def __repr__(self) -> str:  # a notebook cell's output: which env it draws in, and where
        url = getattr(self.log.sink, "url", None)
        return f"<SummaryWriter of env {self.log.sink.env!r}" + (f" at {url}>" if url else ">")

    def _repr_html_(self) -> str:  # Jupyter's: the dashboard's address as a link
        url = getattr(self.log.sink, "url", None)
        text = html.escape(repr(self))
        return f'<a href="{html.escape(url)}" target="_blank">{text}</a>' if url else text

    # --- TensorBoard's methods ----------------------------------------------------------------
    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None, walltime: float | None = None,
                   new_style: bool = False, double_precision: bool = False) -> None:
        """One point: window and trace from ``tag`` (``Loss/train``: window ``Loss``, trace ``train``)."""
        window, trace = split_tag(tag)
        value = _number(scalar_value, "scalar_value")
        if window != tag and (self._kinds.get(tag) == "scalars"  # drawn apart before (a requeued script)
                              or self._curves.setdefault((window, trace), tag) != tag):  # add_scalars draws it
            window = tag
        window = self._lay_out(window, "scalars", Order.METRICS, **self._scalar_opts)
        x = self._step(tag, global_step)
        self.log.scalar(window, _window_name(trace), x, value)
        if self._charts:
            self._chart(tag, tag, x, value, drawn_in=window)
        self._stepped(tag, global_step)

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any], global_step: int | None = None,
                    walltime: float | None = None) -> None:
        """A point for each key of ``tag_scalar_dict``, as traces of window ``main_tag``."""
        if not isinstance(tag_scalar_dict, Mapping):
            raise TypeError(f"tag_scalar_dict must be a dict of name to number, got {type(tag_scalar_dict).__name__}")
        values = {_window_name(str(k)): _number(v, f"tag_scalar_dict[{k!r}]") for k, v in tag_scalar_dict.items()}
        drawn, apart = f"{main_tag}\0", f"{main_tag} (scalars)"  # TensorBoard keeps add_scalar("Loss/train")
        clash = self._kinds.get(apart) == "scalars" or any(  # and add_scalars("Loss", {"train": ...}) apart
            [self._curves.setdefault((main_tag, key), drawn) != drawn for key in values])
        window = self._lay_out(apart if clash else main_tag, "scalars", Order.METRICS, **self._scalar_opts)
        x = self._step(main_tag, global_step)
        self.log.scalars(window, x, values)
        for key, value in values.items() if self._charts else ():  # TensorBoard's run of each key
            self._chart(main_tag, f"{main_tag}_{key}", x, value, drawn_in=window)
        self._stepped(main_tag, global_step)

    def add_custom_scalars(self, layout: Mapping[str, Mapping[str, Any]]) -> None:
        """Charts that gather scalars, ``{category: {title: [kind, tags]}}``: a ``"Multiline"``
        chart draws each scalar whose tag matches one of its regular expressions (from the tag's
        start, as TensorBoard matches them) as a trace of window ``title``; a ``"Margin"`` chart
        draws its three tags (value, lower, upper). Scalars logged from this call on are drawn there.
        """
        if not isinstance(layout, Mapping) or not all(isinstance(charts, Mapping) for charts in layout.values()):
            raise TypeError(f"layout must be a dict of category to a dict of chart title to [kind, tags], got "
                            f"{layout!r}")
        for category, charts in layout.items():
            for title, chart in charts.items():
                kind, tags = chart if isinstance(chart, (list, tuple)) and len(chart) == 2 else (None, None)
                if kind not in ("Multiline", "Margin") or not isinstance(tags, (list, tuple)) or \
                        not all(isinstance(t, str) for t in tags) or kind == "Margin" and len(tags) != 3:
                    raise ValueError(f"layout[{category!r}][{title!r}] must be ['Multiline', [tag regex, ...]] or "
                                     f"['Margin', [value tag, lower tag, upper tag]], got {chart!r}")
                try:
                    match = [re.compile(t).match for t in tags] if kind == "Multiline" else [tags.__contains__]
                except re.error as error:
                    raise ValueError(f"layout[{category!r}][{title!r}] has a tag that is not a regular "
                                     f"expression: {error}") from None
                window = self._lay_out(str(title), "scalars", Order.CHARTS, **self._scalar_opts)
                self._charts.append((window, match))
        self._chart_of.clear()

    def add_custom_scalars_multilinechart(self, tags: list[str], category: str = "default",
                                          title: str = "untitled") -> None:
        """A chart of the scalars whose tags match ``tags`` (``add_custom_scalars``' Multiline)."""
        self.add_custom_scalars({category: {title: ["Multiline", tags]}})

    def add_custom_scalars_marginchart(self, tags: list[str], category: str = "default",
                                       title: str = "untitled") -> None:
        """A chart of three scalars: value, lower and upper (``add_custom_scalars``' Margin)."""
        self.add_custom_scalars({category: {title: ["Margin", tags]}})

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None, bins: Any = "tensorflow",
                      walltime: float | None = None, max_bins: int | None = None) -> None:
        """The distribution of ``values`` with TensorBoard's bins: the same counts as its event file
        (of a sparse tensor, ``nn.Embedding(sparse=True)``'s gradient, the values it stores).

        ``bins="tensorflow"`` (the default) and explicit edges are binned on the tensor's
        device; numpy's rules (``"auto"``, a number of bins) and ``max_bins`` by the sink.
        """
        if isinstance(values, (int, float, np.generic)):  # one number, as TensorBoard takes it
            values = np.asarray(values)
        tensor = stored_values(_tensor(values, "values").detach())  # a sparse gradient's: those it stores
        if tensor.dtype == torch.bool:  # numpy counts them as 0 and 1
            tensor = tensor.to(torch.uint8)
        if isinstance(bins, np.integer):
            bins = int(bins)
        if tensor.numel() == 0:
            raise ValueError("values must hold at least one number, got an empty tensor")
        bins = _checked_bins(bins)
        self._say_if_not_finite(tag, tensor)
        if max_bins is not None:
            checks.positive_int("max_bins", int(max_bins) if isinstance(max_bins, np.integer) else max_bins)
        window = self._lay_out(tag, "histogram", Order.GRADIENTS, xlabel="step", ylabel="value")
        step = self._step(tag, global_step)
        if max_bins is None and (isinstance(bins, str) and bins == "tensorflow" or not isinstance(bins, (str, int))):
            self.log.histogram(window, step, tensor, _TENSORFLOW_EDGES if isinstance(bins, str) else bins)
        else:
            snapshot = tensor.detach().clone()  # read by the sink, as numpy reads it for TensorBoard
            self.log.sink.put(Histogram(window, step, lambda: _numpy_histogram(snapshot, bins, max_bins)))
        self._stepped(tag, global_step)

    def add_histogram_raw(self, tag: str, min: float, max: float, num: int, sum: float, sum_squares: float,
                          bucket_limits: Any, bucket_counts: Any, global_step: int | None = None,
                          walltime: float | None = None) -> None:
        """A distribution binned by the loop: ``bucket_counts[i]`` values up to ``bucket_limits[i]``,
        the first bucket from ``min`` and the last up to ``max``, as TensorBoard reads them
        (``sum`` and ``sum_squares`` are not drawn)."""
        limits = [float(v) for v in _tensor(bucket_limits, "bucket_limits").reshape(-1).tolist()]
        counts = [float(v) for v in _tensor(bucket_counts, "bucket_counts").reshape(-1).tolist()]
        if not counts or len(limits) != len(counts):
            raise ValueError(f"bucket_limits and bucket_counts must have one entry a bucket, at least one, got "
                             f"{len(limits)} and {len(counts)}")
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise ValueError(f"bucket_counts must be counts (numbers >= 0), got {counts[:5]}")
        low, high = (checks.finite(name, value) for name, value in (("min", min), ("max", max)))
        filled = [i for i, c in enumerate(counts) if c]
        first, last = (filled[0], filled[-1]) if filled else (0, len(counts) - 1)
        edges = [low, *limits[first:last], high]  # empty buckets past min and max hold nothing to draw
        if any(b < a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bucket_limits must increase from min ({low:g}) to max ({high:g}), got {limits[:5]}")
        window = self._lay_out(tag, "histogram", Order.GRADIENTS, xlabel="step", ylabel="value")
        n = int(num.item() if isinstance(num, (torch.Tensor, np.generic)) else num)
        self.log.sink.put(Histogram(window, self._step(tag, global_step), (edges, counts[first:last + 1], n)))
        self._stepped(tag, global_step)

    def add_pr_curve(self, tag: str, labels: Any, predictions: Any, global_step: int | None = None,
                     num_thresholds: int = 127, weights: Any = None, walltime: float | None = None) -> None:
        """A precision-recall curve of ``predictions`` (probabilities, 0 to 1) against ``labels``
        (0/1 or bools) at ``num_thresholds`` thresholds (at most 127, as TensorBoard), each
        prediction counted ``weights`` times (broadcast to the predictions' shape): window ``tag``,
        the latest steps' curves. Counted from a snapshot off the training thread, as TensorBoard
        counts them. On the CPU, labels outside 0-1 (class indices) are refused at the call, and
        predictions outside 0-1 (logits), which count at no threshold, said once a tag; a device's
        are not read here (the sink reports such labels, once per window)."""
        labels, predictions = _array(labels, "labels"), _array(predictions, "predictions")
        if labels.numel() != predictions.numel():
            raise ValueError(f"labels and predictions must have as many values, got {labels.numel()} and "
                             f"{predictions.numel()}")
        if isinstance(num_thresholds, np.integer):
            num_thresholds = int(num_thresholds)
        thresholds = min(checks.integer("num_thresholds", num_thresholds, minimum=2), pr_curve.MOST_THRESHOLDS)
        if weights is not None:
            weights = _array(weights, "weights").detach().clone()
            try:
                fits = torch.broadcast_shapes(weights.shape, predictions.shape) == predictions.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"weights must be one number or broadcast to the predictions' shape "
                                 f"{tuple(predictions.shape)}, got shape {tuple(weights.shape)}")
        labels, predictions = labels.detach().clone(), predictions.detach().clone()  # as they are now
        self._check_pr_inputs(tag, labels, predictions)
        window = self._lay_out(tag, "pr_curve", Order.METRICS)
        self.log.sink.put(PrCurve(window, self._step(tag, global_step), lambda: pr_curve.counts(
            _numpy(labels), _numpy(predictions), thresholds, None if weights is None else _numpy(weights))))
        self._stepped(tag, global_step)

    def add_pr_curve_raw(self, tag: str, true_positive_counts: Any, false_positive_counts: Any,
                         true_negative_counts: Any, false_negative_counts: Any, precision: Any, recall: Any,
                         global_step: int | None = None, num_thresholds: int = 127, weights: Any = None,
                         walltime: float | None = None) -> None:
        """A precision-recall curve from counts, precision and recall the loop computed, one of
        each per threshold; ``num_thresholds`` and ``weights`` are accepted and not used (their
        length gives the thresholds), as TensorBoard's drawing does not use them."""
        parts = {"true_positive_counts": true_positive_counts, "false_positive_counts": false_positive_counts,
                 "true_negative_counts": true_negative_counts, "false_negative_counts": false_negative_counts,
                 "precision": precision, "recall": recall}
        parts = {name: _tensor(part, name).detach().reshape(-1).clone() for name, part in parts.items()}
        sizes = {part.numel() for part in parts.values()}
        if len(sizes) != 1 or min(sizes) < 2:
            raise ValueError(f"the counts, precision and recall must have one value per threshold, at least 2, got "
                             f"{ {name: part.numel() for name, part in parts.items()} }")
        window = self._lay_out(tag, "pr_curve", Order.METRICS)
        self.log.sink.put(PrCurve(window, self._step(tag, global_step), tuple(parts.values())))
        self._stepped(tag, global_step)

    def add_embedding(self, mat: Any, metadata: list | None = None, label_img: Any = None,
                      global_step: int | None = None, tag: str = "default",
                      metadata_header: list | None = None) -> None:
        """The rows of ``mat`` (N x D) on their first three principal components, as TensorBoard's
        projector opens them: window ``tag`` (``embedding`` for the default tag), a 3-D scatter
        coloured by ``metadata`` (a label per row; with ``metadata_header``, a row of columns per
        vector, coloured by the first and all of them on hover). Projected from a snapshot off the
        training thread (metadata given as a tensor is read at the call, as TensorBoard reads it);
        ``label_img`` (N x C x H x W, one image a row, as TensorBoard checks it) is not drawn, said once."""
        matrix = _array(mat, "mat")
        if matrix.dim() != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"mat must be a matrix of one vector per row (N x D), got shape {tuple(matrix.shape)}")
        if label_img is not None:
            shape = tuple(getattr(label_img, "shape", ()))
            if len(shape) != 4 or shape[0] != matrix.shape[0]:
                raise ValueError(f"label_img must be N x C x H x W, an image for each of mat's {matrix.shape[0]} "
                                 f"rows, got shape {shape}")
            self._not_drawn("add_embedding's label_img")
        labels, hover = _embedding_labels(metadata, metadata_header, matrix.shape[0])
        snapshot = matrix.detach().clone()
        window = self._lay_out("embedding" if tag == "default" else tag, "embedding", Order.METRICS)
        self.log.sink.put(Embedding(window, self._step(tag, global_step),
                                    lambda: (*embedding.projected(_numpy(snapshot)), labels, hover)))
        self._stepped(tag, global_step)

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None, walltime: float | None = None,
                  dataformats: str = "CHW") -> None:
        """One image (``dataformats``: CHW, HWC, HW, ..., or with N a grid); floats are taken as 0-1, as
        TensorBoard does (said once for a tag whose values mostly fall outside, a log spectrogram's)."""
        self._say_if_out_of_range("add_image", tag, img_tensor)
        self._show(tag, global_step, self._pixels(img_tensor, dataformats))

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None, walltime: float | None = None,
                   dataformats: str = "NCHW") -> None:
        """A batch of images as one grid (``dataformats``: NCHW, NHWC, ...)."""
        self._say_if_out_of_range("add_images", tag, img_tensor)
        self._show(tag, global_step, self._pixels(img_tensor, dataformats))

    def add_image_with_boxes(self, tag: str, img_tensor: Any, box_tensor: Any, global_step: int | None = None,
                             walltime: float | None = None, rescale: float = 1, dataformats: str = "CHW",
                             labels: list[str] | None = None) -> None:
        """One image with boxes drawn on it (``box_tensor``: N x 4, x1 y1 x2 y2 in pixels) and their
        ``labels`` above them, as TensorBoard draws them; ``rescale`` scales the image and its boxes."""
        boxes = _tensor(box_tensor, "box_tensor").detach().to("cpu", torch.float64)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"box_tensor must be N x 4 (x1, y1, x2, y2 each), got shape {tuple(boxes.shape)}")
        if labels is not None and (isinstance(labels, str) or len(labels) != len(boxes)):
            raise ValueError(f"labels must be a list of {len(boxes)} labels, one a box, got {labels!r}")
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 < rescale <= 16:
            raise ValueError(f"rescale must be a number in (0, 16], got {rescale!r}")
        from monitor.imaging import with_boxes  # PIL, only where boxes are drawn

        pixels = self._pixels(img_tensor, dataformats)
        labels = None if labels is None else [str(x.item() if isinstance(x, (torch.Tensor, np.generic)) else x)
                                              for x in labels]  # a tensor of class numbers: their numbers
        drawn = with_boxes(pixels[0], boxes * rescale, labels, rescale)
        self._show(tag, global_step, drawn)

    def add_video(self, tag: str, vid_tensor: Any, global_step: int | None = None, fps: float = 4,
                  walltime: float | None = None) -> None:
        """Videos (N x T x C x H x W: uint8, or floats taken as 0-1) as one grid playing their
        frames at ``fps`` in a loop, where TensorBoard shows a GIF of that grid."""
        videos = _tensor(vid_tensor, "vid_tensor")
        if videos.dim() != 5 or 0 in videos.shape:
            raise ValueError(f"vid_tensor must be N x T x C x H x W, got shape {tuple(videos.shape)}")
        count, frames = videos.shape[:2]
        pixels = self._pixels(videos.reshape(count * frames, *videos.shape[2:]), "NCHW")
        window = self._lay_out(tag, "images", Order.IMAGES)  # its entries are image grids: "images" on resume too
        self.log.video(window, self._step(tag, global_step), pixels.reshape(count, frames, *pixels.shape[1:]),
                       fps.item() if isinstance(fps, np.generic) else fps)
        self._stepped(tag, global_step)

    def add_audio(self, tag: str, snd_tensor: Any, global_step: int | None = None, sample_rate: int = 44100,
                  walltime: float | None = None) -> None:
        """A sound (one channel: L or 1 x L samples) as a player under its step, in a pane of the tag's
        latest 10 (fewer long ones: about 2 MB of samples in all), as TensorBoard's audio view
        keeps 10. Floats are -1 to 1, clipped as TensorBoard clips them (said once a tag, as are
        samples not finite, played as silence); integers are PCM, as a WAV file holds them
        (``torchaudio.load(normalize=False)``'s int16, 8-bit's uint8 around 128). The WAV is made
        by the sink."""
        sound = _tensor(snd_tensor, "snd_tensor").detach().squeeze()
        checks.real_tensor("snd_tensor", sound)
        if sound.dim() != 1 or sound.numel() == 0:
            raise ValueError(f"snd_tensor must hold one channel (L or 1 x L samples), got shape "
                             f"{tuple(_tensor(snd_tensor, 'snd_tensor').shape)}")
        if isinstance(sample_rate, (float, np.floating)) and math.isfinite(sample_rate):
            sample_rate = round(sample_rate)  # 22050.0 from a config, as TensorBoard's wave module rounds it
        rate = checks.positive_int("sample_rate", int(sample_rate) if isinstance(sample_rate, np.integer)
                                   else sample_rate)
        window = self._lay_out(tag, "text", Order.IMAGES)  # its entries are texts: "text" on resume too
        step = self._step(tag, global_step)
        snapshot, keep = sound.clone(), max(1, min(TEXTS, SOUND_BYTES // (2 * sound.numel())))
        tell = functools.partial(self._say_of_sound, tag)
        self.log.sink.put(Text(window, step, lambda: _audio_html(snapshot, rate, tell), keep))
        self._stepped(tag, global_step)

    def add_mesh(self, tag: str, vertices: Any, colors: Any = None, faces: Any = None, config_dict: Any = None,
                 global_step: int | None = None, walltime: float | None = None) -> None:
        """A mesh (``faces``: B x F x 3 vertex indices) or a point cloud (without faces) in 3-D, its
        ``vertices`` B x N x 3 and ``colors`` B x N x 3 (0-255) as TensorBoard takes them; the
        first of the batch is drawn, and of a large one 20,000 vertices as points (``monitor.mesh``).
        ``config_dict`` (camera, lights) is accepted and not used."""
        parts = {"vertices": _tensor(vertices, "vertices")}
        for name, value in (("colors", colors), ("faces", faces)):
            if value is not None:
                parts[name] = _tensor(value, name)
        for name, part in parts.items():
            if part.dim() != 3 or part.shape[-1] != 3 or part.shape[0] == 0:
                raise ValueError(f"{name} must be B x {'F' if name == 'faces' else 'N'} x 3, got shape "
                                 f"{tuple(part.shape)}")
            checks.real_tensor(name, part)
        count = parts["vertices"].shape[1]
        if "colors" in parts and parts["colors"].shape[1] != count:
            raise ValueError(f"colors must have one colour per vertex ({count}), got {parts['colors'].shape[1]}")
        faces_here = parts.get("faces")
        if faces_here is not None and faces_here.is_cpu and faces_here.numel() and \
                not 0 <= int(faces_here.min()) <= int(faces_here.max()) < count:  # on a device: by the sink
            raise ValueError(f"faces must hold vertex indices from 0 to {count - 1}, got "
                             f"{int(faces_here.min())} to {int(faces_here.max())}")
        snapshot = {name: part[0].detach().clone() for name, part in parts.items()}  # read by the sink
        window = self._lay_out(tag, "mesh", Order.METRICS)
        self.log.sink.put(Mesh(window, self._step(tag, global_step), lambda: mesh.drawn(
            *(None if name not in snapshot else _numpy(snapshot[name]) for name in ("vertices", "faces", "colors")))))
        self._stepped(tag, global_step)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None,
                 walltime: float | None = None) -> None:
        """A text pane rendered from Markdown as TensorBoard does (any HTML in it escaped): the tag's
        latest 10 texts, newest first, each under its step, as TensorBoard's text view samples them."""
        window = self._lay_out(tag, "text", Order.METRICS)
        self.log.text(window, self._step(tag, global_step), text_string, markdown=True, keep=TEXTS)
        self._stepped(tag, global_step)

    def add_figure(self, tag: str, figure: Any, global_step: int | None = None, close: bool = True,
                   walltime: float | None = None) -> None:
        """A matplotlib figure (or a list of them, as a grid), as a PNG (needs ``pip install monitor[figures]``).

        Drawn here, as TensorBoard draws it, so a figure the loop reuses shows as it was at this
        call; ``close=True`` then closes it.
        """
        from monitor import figures as matplotlib_figures
        matplotlib_figures.require_matplotlib()
        figures = list(figure) if isinstance(figure, (list, tuple)) else [figure]
        if not figures:
            raise ValueError("figure must be a matplotlib figure or a non-empty list of them, got an empty list")
        window = self._lay_out(tag, "images", Order.IMAGES)
        self.log.images(window, self._step(tag, global_step),
                        torch.stack([matplotlib_figures.rendered(f) for f in figures]))
        self._stepped(tag, global_step)
        if close:
            for each in figures:
                matplotlib_figures.close(each)

    def add_hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, Any],
                    hparam_domain_discrete: Any = None, run_name: str | None = None,
                    global_step: int | None = None) -> None:
        """A trial's hyper-parameters and final metrics: a row of pane ``hparams`` (each call its own,
        as TensorBoard makes each a run; a ``run_name`` given again updates its row) and an entry of
        the run log."""
        for argument, given in (("hparam_dict", hparam_dict), ("metric_dict", metric_dict)):
            if not isinstance(given, Mapping):
                raise TypeError(f"{argument} must be a dict of name to value, got {type(given).__name__}")
        metrics = {k: _number(v, f"metric_dict[{k!r}]") for k, v in metric_dict.items()}
        window = self._claim("hparams", "hparams")
        # A call, a trial, as TensorBoard's run folder named by the time (there str(time.time())), readable
        trial = str(run_name) if run_name else datetime.datetime.now().isoformat(" ", "microseconds")
        self.log.hparams(hparam_dict, metrics, self._step("hparams", global_step), window=window, trial=trial)
        self._stepped("hparams", global_step)

    def add_graph(self, model: torch.nn.Module, input_to_model: Any = None, verbose: bool = False,
                  use_strict_trace: bool = True) -> None:
        """The model as a diagram in pane ``graph`` (see :class:`monitor.Graph`), traced on ``input_to_model``."""
        from monitor.callbacks.graph import _calls, show
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if input_to_model is None:
            raise ValueError("input_to_model must be a tensor or a tuple of tensors to trace the model with, got None")
        window = self._claim("graph", "graph")
        parts = _calls(input_to_model, "input_to_model")[-1]  # a list's tensors, as TensorBoard's, several inputs
        show(self.log, model, parts, self._step("graph", None), window)
        self._stepped("graph", None)

    def flush(self) -> None:
        """Waits (up to 10 s) until what was logged is in the run log and on the dashboard; not for
        a dashboard that cannot be reached. A loop that flushes every step (TensorBoard's writer
        holds events up to ``flush_secs``) waits at most every half second: between, the sink
        sends within that time anyway."""
        if time.monotonic() - self._flushed < _FLUSH_GAP:
            return
        self.log.sink.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Delivers what is pending and records that the run finished (a writer on a Monitor's env
        only makes what it logged durable). A writer the script lets go of unclosed ends its run
        then; one still open, at the script's exit."""
        self._close("finished", None)

    def get_logdir(self) -> str | os.PathLike:
        return self.log_dir

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self._close(*ending_of(error)[:2])  # its status and error

    @property
    def file_writer(self) -> _FileWriter:
        """For scripts that write TensorBoard summaries themselves, as ``file_writer.add_summary(exp)``
        for the ``hparams()`` summaries of ``torch.utils.tensorboard.summary``."""
        return _FileWriter(self)

    @property
    def all_writers(self) -> dict[str, _FileWriter]:
        return {str(self.log_dir): self.file_writer}

    def _get_file_writer(self) -> _FileWriter:
        return self.file_writer

    def __getattr__(self, name: str) -> Any:
        if name in _NOT_DRAWN:
            return lambda *args, **kwargs: self._not_drawn(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- the rest ---------------------------------------------------------------------------------
    def _open(self, purge_step: int | None) -> None:
        if launched_rank() != 0:  # under torch.distributed (made before its init too) only rank 0 writes
            self._run, self.log, self._kinds = None, Log(NullSink()), {}
            return
        monitors = _monitor_sink_of(Path(self.log_dir))
        if monitors is not None:  # a Monitor of this process writes that folder: beside it, as with monitor=
            self._run, self.log, self._kinds = None, Log(monitors), {}
            return
        self._run = _run_of(Path(self.log_dir), purge_step, self._sink_options)
        self.log, self._kinds = self._run.log, self._run.kinds
        if self._run.path != Path(self.log_dir):  # get_logdir() names the folder written (exp1_2)
            self.log_dir = type(self.log_dir)(self._run.path) if isinstance(self.log_dir, os.PathLike) \
                else str(self._run.path)
        # Let go of without close() (a trial's writer in a sweep): its run ends then, not at the exit.
        self._dropped = weakref.finalize(self, _leave_dropped, self._run, os.getpid())
        self._dropped.atexit = False  # at the exit, _end_open_runs ends those still open

    def _close(self, status: str, error: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._run is None:
            self.log.sink.sync()
        else:
            self._dropped.detach()
            self._run.leave(status, error)

    def _step(self, tag: str, global_step: Any) -> float:
        """The call's x: ``global_step``, or the tag's count of calls without one (after those
        of the run this writer continues); ``_stepped`` counts the call once it is logged."""
        if global_step is None:
            return self._steps[tag] + (self._run.next_step if self._run is not None else 0)
        if type(global_step) is int:  # the usual step, kept cheap
            return global_step
        if isinstance(global_step, (torch.Tensor, np.ndarray, np.generic)) and global_step.ndim <= 1:
            if global_step.size != 1 if isinstance(global_step, (np.ndarray, np.generic)) else global_step.numel() != 1:
                raise ValueError(f"global_step must be a step number, got a {type(global_step).__name__} of "
                                 f"shape {tuple(global_step.shape)}")
            global_step = global_step.item()
        elif isinstance(global_step, str):  # TensorBoard's event takes int(global_step)
            try:
                global_step = int(global_step)
            except ValueError:
                raise ValueError(f"global_step must be a step number, got {global_step!r}") from None
        return checks.finite("global_step", global_step)

    def _stepped(self, tag: str, global_step: Any) -> None:
        if global_step is None:
            self._steps[tag] += 1

    def _chart(self, tag: str, trace: str, x: float, value: Any, drawn_in: str) -> None:
        """Draws a scalar in the custom charts its ``tag`` matches, as trace ``trace``; not in the
        window ``drawn_in`` that already shows it (a chart titled as its tags' window, as in
        PyTorch's own example: ``"loss": ["Multiline", ["loss/train", ...]]``)."""
        windows = self._chart_of.get(tag)
        if windows is None:
            windows = self._chart_of[tag] = [w for w, match in self._charts
                                             if w != drawn_in and any(m(tag) for m in match)]
        for window in windows:
            self.log.scalar(window, _window_name(trace), x, value)

    def _claim(self, window: str, kind: str) -> str:
        """The window of ``kind`` for a tag: the tag itself, unless another kind drew there first.

        Every ``add_*`` call comes here first: after close(), it opens the run again, as
        TensorBoard's writer does.
        """
        if self._closed and self._run is not None:
            self._open(None)
            self._closed = False
            self._steps.clear()  # the continued run's next step counts them
        window = _window_name(window)
        first = self._kinds.setdefault(window, kind)
        if first == kind:
            return window
        return self._claim(f"{window} ({kind})", kind)

    def _lay_out(self, window: str, kind: str, order: int, **opts: Any) -> str:
        window = self._claim(window, kind)
        if window not in self.log.laid_out:
            self.log.lay_out(window, order, title=window, **opts)
        return window

    def _show(self, tag: str, global_step: Any, pixels: torch.Tensor) -> None:
        """Logs ``pixels`` (NCHW) as the grid of ``tag``'s image window at its step."""
        window = self._lay_out(tag, "images", Order.IMAGES)
        self.log.images(window, self._step(tag, global_step), pixels)
        self._stepped(tag, global_step)

    @staticmethod
    def _pixels(img_tensor: Any, dataformats: str) -> torch.Tensor:
        """The images as uint8 NCHW, 1 or 3 channels, by TensorBoard's rules."""
        given = _tensor(img_tensor, "img_tensor")
        pixels = _as_nchw(given, dataformats)
        n, c, h, w = pixels.shape
        if c not in (1, 2, 3, 4) or not (n and h and w):  # said of the shape the loop passed, not of NCHW
            raise ValueError(f"img_tensor must hold images laid out as dataformats={dataformats!r} says, with 1 or 3 "
                             f"channels (2 or 4 with alpha) and no empty side, got shape {tuple(given.shape)}: "
                             f"N={n}, C={c}, H={h}, W={w}")
        if pixels.dtype != torch.uint8:  # TensorBoard's rule: 0-1 floats times 255, clipped, truncated
            pixels = (pixels.to(torch.float32) * 255).clamp_(0, 255).to(torch.uint8)
        if pixels.shape[1] in (2, 4):  # grey or RGB with alpha: laid over white, as a page shows a PNG
            alpha = pixels[:, -1:].to(torch.float32) / 255
            pixels = (pixels[:, :-1] * alpha + 255 * (1 - alpha)).round_().to(torch.uint8)
        return pixels

    def _say_if_not_finite(self, tag: str, tensor: torch.Tensor) -> None:
        """Says once for ``tag`` that values not finite are left out of its bins (TensorBoard's
        writer raises on them), looked at in a tag's first histograms, on the CPU: no device read."""
        checked = self._finite_checked.get(tag, 0)
        if checked >= 3 or not tensor.is_cpu or not tensor.is_floating_point():
            return
        self._finite_checked[tag] = checked + 1
        left_out = tensor.numel() - int(torch.isfinite(tensor).sum())
        if left_out:
            self._finite_checked[tag] = 3
            _log.warning("monitor: add_histogram(%r): %d of its %d values are not finite (inf or NaN) and are left "
                         "out of its bins", tag, left_out, tensor.numel())

    def _say_if_out_of_range(self, method: str, tag: str, img_tensor: Any) -> None:
        """Says once for ``tag`` that its float values are in -1..1 (a tanh's, a diffusion model's
        samples) or mostly outside 0-1, and are drawn clipped, black or white (looked at in a tag's
        first images, on the CPU: no device read)."""
        checked = self._range_checked.get(tag, 0)
        if checked >= 3 or not isinstance(img_tensor, (torch.Tensor, np.ndarray)):
            return
        self._range_checked[tag] = checked + 1
        values = torch.as_tensor(img_tensor)
        if not values.is_floating_point() or not values.is_cpu or not values.numel():
            return
        below, outside = (values < 0).float().mean().item(), ((values < 0) | (values > 1)).float().mean().item()
        if below > 0.1 and values.min() >= -1 and values.max() <= 1:
            self._range_checked[tag] = 3
            _log.warning("monitor: %s(%r): its values are in -1..1 (%.0f%% below 0), drawn clipped to 0-1 (black below "
                         "0) as TensorBoard draws them: pass (x + 1) / 2", method, tag, 100 * below)
        elif outside > 0.5:
            self._range_checked[tag] = 3
            _log.warning("monitor: %s(%r): %.0f%% of its values are outside 0-1, drawn clipped (black below 0, "
                         "white above 1) as TensorBoard draws them: scale them to 0-1 first, or draw them with "
                         "writer.log.images(tag, step, images, value_range=(low, high)) (each image stretched to "
                         "its own range without value_range)",
                         method, tag, 100 * outside)

    def _check_pr_inputs(self, tag: str, labels: torch.Tensor, predictions: torch.Tensor) -> None:
        """Refuses labels outside 0-1, and says once for ``tag`` that predictions are outside 0-1,
        where they are on the CPU (a device's are the sink's to look at)."""
        if labels.is_cpu and labels.numel() and not labels.is_complex():
            outside = labels[~((labels >= 0) & (labels <= 1))]
            if outside.numel():
                raise ValueError(f"labels must be 0 to 1 (0/1 or bools: which are positives), got "
                                 f"{outside[:5].tolist()}: for class k of class indices, pass labels == k")
        if predictions.is_cpu and predictions.numel() and tag not in self._said_pr and \
                predictions.dtype != torch.bool and not predictions.is_complex():
            values = predictions.float()
            outside = ((values < 0) | (values > 1)).float().mean().item()
            if outside:
                self._said_pr.add(tag)
                _log.warning("monitor: add_pr_curve(%r): %.0f%% of its predictions are outside 0-1 (logits?) and "
                             "count at no threshold: pass probabilities, torch.sigmoid(logits) or "
                             "logits.softmax(1)[:, k]", tag, 100 * outside)

    def _say_of_sound(self, tag: str, trouble: str) -> None:
        """Says once for ``tag`` what its samples lost (called by the sink, which makes the WAV)."""
        if tag not in self._sounds_said:
            self._sounds_said.add(tag)
            _log.warning("monitor: add_audio(%r): %s", tag, trouble)

    def _not_drawn(self, method: str) -> None:
        if method not in self._said:
            self._said.add(method)
            _log.warning("monitor: SummaryWriter.%s is accepted but not drawn on the dashboard yet", method)


class _FileWriter:
    """TensorBoard's ``writer.file_writer`` for summaries a script makes itself: a summary's scalars
    and the hyper-parameters of ``hparams()``'s session start are drawn, other summaries said once."""

    def __init__(self, writer: SummaryWriter) -> None:
        self._writer = writer

    def add_summary(self, summary: Any, global_step: int | None = None, walltime: float | None = None) -> None:
        for value in getattr(summary, "value", ()):
            plugin = value.metadata.plugin_data.plugin_name
            if value.WhichOneof("value") == "simple_value":
                self._writer.add_scalar(value.tag, value.simple_value, global_step)
            elif plugin == "scalars" and value.WhichOneof("value") == "tensor":  # new_style=True
                number = value.tensor.float_val or value.tensor.double_val
                self._writer.add_scalar(value.tag, number[0], global_step)
            elif plugin == "hparams":
                self._hparams(value.metadata.plugin_data.content, global_step)
            else:
                self._writer._not_drawn(f"file_writer.add_summary of {plugin or value.WhichOneof('value')}")

    def _hparams(self, content: bytes, global_step: int | None) -> None:
        from tensorboard.plugins.hparams import plugin_data_pb2  # there: the script made the summary with it

        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.WhichOneof("data") == "session_start_info":  # the experiment and the session's end add nothing
            given = data.session_start_info.hparams
            hparams = {name: getattr(v, v.WhichOneof("kind")) for name, v in given.items() if v.WhichOneof("kind")}
            self._writer.add_hparams(hparams, {}, global_step=global_step)

    def add_event(self, event: Any, step: int | None = None, walltime: float | None = None) -> None:
        self._writer._not_drawn("file_writer.add_event")

    def add_graph(self, graph_profile: Any, walltime: float | None = None) -> None:
        self._writer._not_drawn("file_writer.add_graph")

    def get_logdir(self) -> str | os.PathLike:
        return self._writer.get_logdir()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _Run:
    """A log_dir's run in this process: its sink, and the writers open on it."""

    def __init__(self, path: Path, purge_step: int | None, sink_options: dict[str, Any], taken: set[str]) -> None:
        self.key = path.resolve()
        self.writers = 0
        try:
            self._open(path, purge_step, sink_options, taken)
        except RunInUseError as error:  # another process's (an eval job's): as TensorBoard's writers each
            beside = Path(_new_folder(str(path)))  # write a file of their own, this one writes a folder beside it
            self._open(beside, None, sink_options, taken)
            _log.warning("monitor: log_dir %s is written by another live process (%s): this writer writes %s, env %r",
                         path, str(error).split(": ", 1)[-1].split(";")[0], beside, self.env)

    def _open(self, path: Path, purge_step: int | None, sink_options: dict[str, Any], taken: set[str]) -> None:
        from monitor.sink_process import SinkProcess
        if purge_step is not None and not RunDir(path).is_live():
            _purge(path / RunLog.FILENAME, purge_step)
        position, self.next_step, self.kinds, env, finished = _continued(path / RunLog.FILENAME)
        if finished and purge_step is None and path.resolve() not in _shown.values() and not RunDir(path).is_live():
            # The script run again: a new run, as a Monitor's, not a zigzag of both (TensorBoard's)
            _log.warning("monitor: log_dir %s holds a run that finished: this writer starts a new run there, the "
                         "earlier one kept in its earlier/ (purge_step=N continues it from step N instead)", path)
            position, self.next_step, self.kinds = None, 0, {}
        self.env = env.translate(_NOT_IN_ENVS) if env else _env_apart(_envs_of(path), taken, path)  # '#': an old run's
        self.path = path  # the folder written: beside the one asked for where another process writes that
        self.log = Log(SinkProcess(env=self.env, run_dir=path, rewind_to=position, **sink_options))

    def leave(self, status: str, error: str | None) -> None:
        """One writer closed; the last one ends the run."""
        with _runs_lock:
            self.writers -= 1
            if self.writers:
                return
            if _runs.get(self.key) is self:
                del _runs[self.key]
        self.log.sink.put(RunEnd(status, error))
        self.log.sink.close()


def _leave_dropped(run: _Run, pid: int) -> None:
    """A writer the script let go of without close(): it leaves its run as close() would, the
    run's sink closing in the background (its process, its threads), not at the script's exit."""
    if os.getpid() == pid:  # not a fork's copy of it
        leaving = threading.Thread(target=run.leave, args=("finished", None), name="monitor-close-dropped",
                                   daemon=True)
        _leaving[run.key] = leaving
        leaving.start()


_leaving: dict[Path, threading.Thread] = {}  # runs of writers let go of, ending: a writer opened there waits


_runs: dict[Path, _Run] = {}
_shown: dict[str, Path] = {}  # each env a writer of this process drew in, and its log_dir (closed ones too)
_runs_lock = threading.Lock()


def _new_folder(name: str) -> str:
    """``name``, else ``name_2``, ``name_3``, ...: the first folder that did not exist, made now, so
    that writers opened in the same second (a sweep's processes, runs in a loop) each have a run."""
    os.makedirs(os.path.dirname(name), exist_ok=True)
    folder, number = name, 1
    while True:
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            number += 1
            folder = f"{name}_{number}"


def _monitor_sink_of(path: Path) -> Any:
    """The open sink of a Monitor in this process whose run folder is ``path`` (None: none)."""
    key = path.resolve()
    if key in _runs:  # a writer's run: the writers share it
        return None
    return next((sink for sink in list(open_sinks) if not sink._closed and sink.run_dir.resolve() == key), None)


def refuse_to_replace(run_dir: Path) -> None:
    """Raises RunInUseError where an open writer of this process writes ``run_dir``: a Monitor
    made there would end the writer's run, and drop what it logs next."""
    run = _runs.get(Path(run_dir).resolve())
    if run is not None:
        raise RunInUseError(f"run folder {run_dir} is written by an open SummaryWriter of this process: make the "
                            f"Monitor first (a writer on its run folder writes beside it), pass "
                            f"SummaryWriter(monitor=monitor), or use another env")


def _forget_runs_in_fork() -> None:
    """A forked child neither ends its parent's runs at its exit nor waits for them."""
    global _runs_lock
    _runs.clear()
    _leaving.clear()
    _runs_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_runs_in_fork)


def _run_of(path: Path, purge_step: int | None, sink_options: dict[str, Any]) -> _Run:
    global _ended_at_exit
    leaving = _leaving.pop(path.resolve(), None)
    if leaving is not None:  # its sink still writes the run log this writer would continue
        leaving.join()
    with _runs_lock:  # two threads opening one log_dir share one sink
        run = _runs.get(path.resolve())
        if run is None:
            taken = {env for env, key in _shown.items() if key != path.resolve()}
            run = _runs[path.resolve()] = _Run(path, purge_step, sink_options, taken)
            _shown[run.env] = run.key
            if not _ended_at_exit:  # registered after the sinks' own exit hook: runs before it
                atexit.register(_end_open_runs)
                _ended_at_exit = True
        run.writers += 1
        return run


_ended_at_exit = False


def _end_open_runs() -> None:
    """At the interpreter's exit: the end of every run whose writers the script never closed, as
    the script ended (an uncaught exception: crashed or interrupted)."""
    with _runs_lock:
        runs = list(_runs.values())
        _runs.clear()
    for run in runs:
        run.log.sink.put(ending_of(exit_error()))
        run.log.sink.close(timeout=2.0)


_KINDS = {"points": "scalars", "histogram": "histogram", "image": "images", "text": "text", "hparams": "hparams",
          "pr_curve": "pr_curve", "embedding": "embedding", "mesh": "mesh"}


def _purge(log: Path, purge_step: int) -> None:
    """Takes out of a run log every entry at step ``purge_step`` or later, as TensorBoard hides a
    resumed run's events from there on: those logged after them at earlier steps (an epoch's
    point, a text at step 0) stay."""
    def purged(entry: dict) -> bool:
        x = entry.get("x") if entry.get("k") != "run" else None
        return isinstance(x, (int, float)) and x >= purge_step

    if not log.is_file() or not any(map(purged, RunLog.read(log))):
        return
    kept = log.with_name(f"{log.name}.purged")
    kept.unlink(missing_ok=True)
    writer = RunLog(kept)
    writer.append(entry for entry in RunLog.read(log) if not purged(entry))  # compacted again as written
    writer.close()
    os.replace(kept, log)


def _continued(log: Path) -> tuple[int | None, float, dict[str, str], str | None, bool]:
    """How a writer continues the run log of a log_dir: where (its end; None: no run there yet),
    the step after the last one logged (where ``global_step=None`` counts from), the kind of
    data each window shows, the run's env, and whether the run finished."""
    if not log.is_file():
        return None, 0, {}, None, False
    end, position, last, kinds, env, finished = RunLog.end_of(log), 0, -1.0, {}, None, False
    with open(log, "rb") as file:
        for line in file:
            if position + len(line) > end:
                break
            entry = json.loads(line) if line.strip() else {}
            x = entry.get("x") if entry.get("k") != "run" else None
            position += len(line)
            if isinstance(x, (int, float)):
                last = max(last, x)
            kind = _KINDS.get(entry.get("k"))
            if kind is not None:
                kinds.setdefault(entry["win"], "graph" if entry["win"] == "graph" and kind == "text" else kind)
                finished = False  # logged after its end: running again
            elif entry.get("k") == "run" and env is None:
                env = entry.get("env")
            elif entry.get("k") == "end":
                finished = entry.get("status") == "finished"
    return position or None, math.floor(last) + 1, kinds, env if position else None, finished


def _envs_of(path: Path) -> list[str]:
    """The envs a new log_dir may show in, first choice first: its path below ``runs/``, else
    below the working directory, joined with ``_``, else its last part (``logs/exp1/train``:
    ``logs_exp1_train``); then with one more of its folders before each time (``b_exp``,
    ``data_b_exp``), for a log_dir whose name another folder shows in already."""
    resolved = path.resolve()
    parts = resolved.parts[1:] or ("runs",)
    if "runs" in parts[:-1]:
        below = len(parts) - parts[::-1].index("runs")
    elif resolved.is_relative_to(Path.cwd().resolve()) and resolved != Path.cwd().resolve():
        below = len(parts) - len(resolved.relative_to(Path.cwd().resolve()).parts)
    else:
        below = len(parts) - 1
    names = ["_".join(parts[start:]).translate(_NOT_IN_ENVS) for start in range(below, -1, -1)]
    return [checks.fitted(_window_name(name if name.strip("._ ") else "runs", "log_dir")) for name in names]


_NOT_IN_ENVS = str.maketrans({"/": "_", "\\": "_", "#": "_", "?": "_"})  # a folder's separators, an address's ends


def _env_apart(envs: list[str], taken: set[str], path: Path) -> str:
    """The first of ``envs`` that no other folder of this machine shows in (``env_claims``), nor
    another log_dir of this process (open or closed: ``runs/a/b`` and ``runs/a_b``), said once:
    two runs in one env would mix their curves."""
    env = claim(path, envs, taken)
    if env != envs[0]:
        _log.warning("monitor: log_dir %s would show in env %r, where another folder's run shows: it "
                     "shows in env %r", path, envs[0], env)
    return env


def _window_name(name: str, argument: str = "tag") -> str:
    """A tag as a usable env, window or trace name: control characters as spaces, at most 100 characters."""
    # A loop's few tags, checked at every call: 3 us each, 0.1 once known (a plain str: no other is cached).
    return _known_name(name, argument) if type(name) is str else _usable_name(name, argument)


def _usable_name(name: str, argument: str) -> str:
    if not isinstance(name, str):
        checks.text(argument, name)  # its error: what it must be, what it got
    if any(map(checks.is_control, name)):
        name = "".join(" " if checks.is_control(c) else c for c in name)
    checks.text(argument, name)
    return checks.fitted(name, path=False)


_known_name = functools.lru_cache(maxsize=4096)(_usable_name)  # bounded: tags made of a step number


_ESTIMATORS = ("tensorflow", "auto", "fd", "doane", "scott", "stone", "rice", "sturges", "sqrt")


def _checked_bins(bins: Any) -> Any:
    """TensorBoard's ``bins``: "tensorflow", one of numpy's estimators, a number of bins or the edges."""
    if isinstance(bins, np.integer):
        bins = int(bins)
    if isinstance(bins, str):
        if bins not in _ESTIMATORS:
            raise ValueError(f"bins must be one of {', '.join(map(repr, _ESTIMATORS))}, a number of bins or the "
                             f"bin edges, got {bins!r}")
    elif isinstance(bins, int) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"bins must be a positive number of bins, got {bins}")
    else:
        try:
            edges = np.asarray(bins.cpu() if isinstance(bins, torch.Tensor) else bins, dtype=float)
        except (TypeError, ValueError):
            edges = None
        if edges is None or edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
            raise ValueError(f"bins must be one of {', '.join(map(repr, _ESTIMATORS))}, a number of bins or "
                             f"increasing bin edges, got {bins!r}")
    return bins


SPLITS = TRAINING | HELD_OUT  # the data a metric was taken on: a trace, wherever a tag names it


def split_tag(tag: str) -> tuple[str, str]:
    """Window and trace of a scalar's tag. A split (``train``, ``val``, ``test``, ...) names the
    trace: ``"Loss/train"`` -> ``("Loss", "train")``, beside ``"Loss/test"``; one leading the tag
    too, ``"eval/loss"`` -> ``("loss", "eval")``; one inside it starts the trace,
    ``"Loss/val/clean"`` -> ``("Loss", "val/clean")``. Any other tag is a plot of its own, as
    TensorBoard draws it, its trace named by its last part: ``"charts/SPS"`` ->
    ``("charts/SPS", "SPS")``, ``"lr"`` -> ``("lr", "lr")``."""
    checks.text("tag", tag)
    window, _, trace = tag.rpartition("/")
    if not window or not trace:
        return tag, tag
    if trace.lower() in SPLITS:
        return window, trace
    split, _, rest = tag.partition("/")
    if split.lower() in SPLITS:
        return rest, split
    parts = tag.split("/")
    for i in range(1, len(parts) - 1):
        if parts[i].lower() in SPLITS and parts[i - 1]:
            return "/".join(parts[:i]), "/".join(parts[i:])
    return tag, trace


def _number(value: Any, argument: str) -> Any:
    """A number or a one-element tensor, as TensorBoard takes it (a bool as 0 or 1); errors name ``argument``."""
    if type(value) is float:  # the usual value (a loss's item()), kept cheap
        return value
    if isinstance(value, np.ndarray) and value.size == 1 or isinstance(value, np.generic):
        value = value.item()  # float(array) refuses a 1-d array of one element in numpy 2
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # argparse without type=float: TensorBoard takes float(value) too
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{argument} must be a number, got {value!r}") from None
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return value.to(torch.float32)
    return checks.scalar(argument, value)


def _embedding_labels(metadata: Any, header: Any, rows: int) -> tuple[list[str] | None, list[str] | None]:
    """add_embedding's metadata as a colour label per vector and, with a header, the hover text
    ("name: value, ..."), each checked against ``rows`` vectors."""
    if metadata is None:
        return None, None
    if isinstance(metadata, (torch.Tensor, np.ndarray)):
        metadata = (on_host(metadata) if isinstance(metadata, torch.Tensor) else metadata).tolist()  # one read
    if isinstance(metadata, (str, bytes)) or not hasattr(metadata, "__len__"):
        raise TypeError(f"metadata must be a list of one label per row of mat, got {type(metadata).__name__}")
    if len(metadata) != rows:
        raise ValueError(f"metadata must have one label per row of mat ({rows}), got {len(metadata)}")
    if header is None:
        return [_label(value) for value in metadata], None
    names = [str(name) for name in header]
    columns = [row.tolist() if hasattr(row, "tolist") else row for row in metadata]
    columns = [list(row) if isinstance(row, (list, tuple)) else [row] for row in columns]
    for row in columns:
        if len(row) != len(names):
            raise ValueError(f"metadata_header must name each column of metadata's rows ({len(row)}), "
                             f"got {len(names)}: {names}")
    return ([_label(row[0]) for row in columns],
            [", ".join(f"{name}: {_label(value)}" for name, value in zip(names, row)) for row in columns])


def _label(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.generic)):
        value = value.item()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _audio_html(sound: torch.Tensor, rate: int, tell: Callable[[str], None]) -> str:
    """A player of ``sound`` as 16-bit WAV: floats -1 to 1 (clipped, not finite as silence, each
    said through ``tell``), integers as PCM."""
    samples = _numpy(sound if not sound.is_floating_point() else sound.to(torch.float32))
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        half = (int(info.max) + 1) // 2 if info.min == 0 else int(info.max) + 1
        samples = (samples.astype(np.float64) - (half if info.min == 0 else 0)) / half
    elif np.issubdtype(samples.dtype, np.bool_):
        samples = samples.astype(np.float64)
    finite = np.isfinite(samples)
    if not finite.all():
        tell(f"{int((~finite).sum())} of its {samples.size} samples are not finite (NaN or inf), played as silence")
        samples = np.where(finite, samples, 0.0)
    loud = np.abs(samples) > 1
    if loud.any():
        tell(f"{100 * loud.mean():.0f}% of its samples are outside -1..1, clipped as TensorBoard clips them: "
             f"pass x / x.abs().max() to hear them whole")
    pcm = (samples.clip(-1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm.tobytes())
    return (f"<p>{len(pcm) / rate:.2f} s at {rate} Hz</p><audio controls style=\"width: 100%\" "
            f"src=\"data:audio/wav;base64,{base64.b64encode(buffer.getvalue()).decode()}\"></audio>")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A snapshot's values for numpy (read from its device; bfloat16, which numpy lacks, as float16,
    as TensorBoard's writer reads it)."""
    tensor = on_host(tensor)
    return (tensor.half() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _array(value: Any, argument: str) -> torch.Tensor:
    """``_tensor``, a single number too (a numpy scalar, a float)."""
    if isinstance(value, (bool, int, float, np.generic)):
        return torch.as_tensor(np.asarray(value))
    return _tensor(value, argument)


def _tensor(value: Any, argument: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (ValueError, TypeError, RuntimeError):  # numpy's "inhomogeneous shape": images of several sizes
            shapes = sorted({tuple(getattr(v, "shape", ())) for v in value}) if not isinstance(value, np.ndarray) \
                else None
            raise ValueError(f"{argument} must be a torch.Tensor or a numpy array of one shape, got a "
                             f"{type(value).__name__} of {len(value)} items" +
                             (f" of shapes {shapes[:4]}" if shapes else "")) from None
    raise TypeError(f"{argument} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _as_nchw(tensor: torch.Tensor, dataformats: str) -> torch.Tensor:
    """``tensor`` laid out as ``dataformats`` says, as NCHW (a missing C is 1, a missing N is 1)."""
    letters = checks.text("dataformats", dataformats).upper()
    if len(set(letters)) != len(letters) or not set(letters) <= set("NCHW") or not {"H", "W"} <= set(letters) \
            or tensor.dim() != len(letters):
        raise ValueError(f"dataformats must name each of the tensor's {tensor.dim()} dimensions once with "
                         f"N, C, H, W (H and W required), got {dataformats!r} for shape {tuple(tensor.shape)}")
    for letter in "NCHW":
        if letter not in letters:
            tensor, letters = tensor.unsqueeze(-1), letters + letter
    return tensor.permute(*(letters.index(letter) for letter in "NCHW"))


def _numpy_histogram(values: torch.Tensor, bins: Any, max_bins: int | None) -> tuple[list, list, int]:
    """TensorBoard's histogram of ``values``: numpy's bins, then at most ``max_bins`` of them."""
    array = values.detach().cpu().to(torch.float64).numpy().reshape(-1)  # numpy has no bfloat16
    counts, edges = np.histogram(array, bins=_TENSORFLOW_BINS if isinstance(bins, str) and bins == "tensorflow"
                                 else bins)
    if max_bins is not None and len(counts) > max_bins:
        group = len(counts) // max_bins
        counts = np.pad(counts, (0, (-len(counts)) % group)).reshape(-1, group).sum(axis=1)
        edges = np.append(edges[:-1:group][:len(counts)], edges[-1])
    used, finite = np.flatnonzero(counts), array[np.isfinite(array)]
    if used.size:  # the lowest value's bin from it, the highest's to it (a constant's: numpy's unit-wide bin, a point)
        edges[used[0]] = max(edges[used[0]], finite.min())
        edges[used[-1] + 1] = min(edges[used[-1] + 1], finite.max())
    return edges.tolist(), counts.tolist(), array.size
