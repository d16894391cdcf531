"""SummaryWriter: TensorBoard's writer API, drawing on the dashboard; change one import.

A loop that logs through ``torch.utils.tensorboard.SummaryWriter`` keeps its calls; they go
through the same non-blocking, lossless sink and run log as the callbacks.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from monitor import checks
from monitor.log import Log
from monitor.records import Histogram, Order

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
_NOT_DRAWN = ("add_audio", "add_video", "add_embedding", "add_pr_curve", "add_pr_curve_raw", "add_mesh",
              "add_custom_scalars", "add_custom_scalars_multilinechart", "add_custom_scalars_marginchart",
              "add_onnx_graph", "add_histogram_raw", "add_image_with_boxes", "add_tensor")


class SummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter``'s methods, with their signatures, on a Visdom env.

        from monitor import SummaryWriter   # was: from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(comment="-lr0.1")
        writer.add_scalar("Loss/train", loss.item(), step)     # window "Loss", trace "train"
        writer.close()

    **Tags.** A scalar's tag is split at its last ``/``: the window, then the trace, so
    ``Loss/train`` and ``Loss/test`` are two curves of window ``Loss``; a tag without ``/`` is
    both. ``add_scalars(main_tag, {"train": ..., "test": ...})`` draws the dict's keys as traces
    of window ``main_tag``. Images, histograms, texts and figures use the whole tag as window.

    **Runs.** ``log_dir`` is the run's folder (its run log, images, checkpoints), by default
    ``runs/<Mon><DD>_<HH>-<MM>-<SS>_<host><comment>`` as TensorBoard names it; the env is its
    last part. ``monitor=`` writes to that Monitor's env instead (its sink, its run). Other
    keyword arguments go to :class:`monitor.VisdomSink` (``server``, ``port``, ...).

    **Steps.** ``global_step=None``: TensorBoard records step 0 and draws the values in their
    order; here each tag counts its own calls (0, 1, 2, ...). ``walltime`` is accepted and not
    shown (the run log keeps the order). ``purge_step``, ``max_queue``, ``flush_secs``,
    ``filename_suffix``, ``new_style``, ``double_precision`` and ``hparam_domain_discrete`` are
    accepted and change nothing (the sink sends within a second and writes one run log), as are
    ``add_graph``'s ``verbose`` and ``use_strict_trace``. TensorBoard methods not drawn here
    (audio, video, embeddings, PR curves, meshes, custom scalars) are accepted and say so once.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, comment: str = "", purge_step: int | None = None,
                 max_queue: int = 10, flush_secs: int = 120, filename_suffix: str = "", *,
                 monitor: Any = None, **sink_options: Any) -> None:
        if monitor is not None:
            if log_dir is not None or sink_options:
                raise TypeError(f"a writer on a Monitor's env writes to its run: pass log_dir and sink options "
                                f"to the Monitor, got log_dir={log_dir!r} and {sorted(sink_options)}")
            self.log, self._owns_sink = monitor.log, False
            self.log_dir = str(getattr(monitor.sink, "run_dir", ""))
        else:
            if log_dir is None:
                comment = checks.text("comment", comment) if comment else ""
                log_dir = Path("runs") / (time.strftime("%b%d_%H-%M-%S_") + socket.gethostname() + comment)
            from monitor.sink import VisdomSink
            path = Path(log_dir)
            self.log = Log(VisdomSink(env=path.name, run_dir=path, **sink_options))
            self._owns_sink = True
            self.log_dir = str(path)
        self._steps: Counter[str] = Counter()  # calls without a global_step, per tag
        self._said: set[str] = set()
        self._closed = False

    # --- TensorBoard's methods ----------------------------------------------------------------
    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None, walltime: float | None = None,
                   new_style: bool = False, double_precision: bool = False) -> None:
        """One point: window and trace from ``tag`` (``Loss/train``: window ``Loss``, trace ``train``)."""
        window, trace = split_tag(tag)
        self._lay_out(window, Order.METRICS, xlabel="step")
        self.log.scalar(window, trace, self._step(tag, global_step), _number(scalar_value, "scalar_value"))

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any], global_step: int | None = None,
                    walltime: float | None = None) -> None:
        """A point for each key of ``tag_scalar_dict``, as traces of window ``main_tag``."""
        if not isinstance(tag_scalar_dict, Mapping):
            raise TypeError(f"tag_scalar_dict must be a dict of name to number, got {type(tag_scalar_dict).__name__}")
        self._lay_out(main_tag, Order.METRICS, xlabel="step")
        values = {str(k): _number(v, f"tag_scalar_dict[{k!r}]") for k, v in tag_scalar_dict.items()}
        self.log.scalars(main_tag, self._step(main_tag, global_step), values)

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None, bins: Any = "tensorflow",
                      walltime: float | None = None, max_bins: int | None = None) -> None:
        """The distribution of ``values`` with TensorBoard's bins: the same counts as its event file.

        ``bins="tensorflow"`` (the default) and explicit edges are binned on the tensor's
        device; numpy's rules (``"auto"``, a number of bins) and ``max_bins`` on the sink's worker.
        """
        tensor = _tensor(values, "values")
        if tensor.dtype == torch.bool:  # numpy counts them as 0 and 1
            tensor = tensor.to(torch.uint8)
        if isinstance(bins, np.integer):
            bins = int(bins)
        if tensor.numel() == 0:
            raise ValueError("values must hold at least one number, got an empty tensor")
        self._lay_out(tag, Order.GRADIENTS, xlabel="step", ylabel="value")
        step = self._step(tag, global_step)
        if max_bins is None and (isinstance(bins, str) and bins == "tensorflow" or not isinstance(bins, (str, int))):
            self.log.histogram(tag, step, tensor, _TENSORFLOW_EDGES if isinstance(bins, str) else bins)
            return
        if max_bins is not None:
            checks.positive_int("max_bins", max_bins)
        snapshot = tensor.detach().clone()  # read by the worker, as numpy reads it for TensorBoard
        self.log.sink.put(Histogram(tag, step, lambda: _numpy_histogram(snapshot, bins, max_bins)))

    def add_image(self, tag: str, img_tensor: Any, global_step: int | None = None, walltime: float | None = None,
                  dataformats: str = "CHW") -> None:
        """One image (``dataformats``: CHW, HWC, HW, ...); floats are taken as 0-1, as TensorBoard does."""
        self._images(tag, img_tensor, global_step, dataformats, batch=False)

    def add_images(self, tag: str, img_tensor: Any, global_step: int | None = None, walltime: float | None = None,
                   dataformats: str = "NCHW") -> None:
        """A batch of images as one grid (``dataformats``: NCHW, NHWC, ...)."""
        self._images(tag, img_tensor, global_step, dataformats, batch=True)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None,
                 walltime: float | None = None) -> None:
        """A text pane rendered from Markdown as TensorBoard does (any HTML in it escaped); a later call replaces it."""
        self._lay_out(tag, Order.METRICS)
        self.log.text(tag, self._step(tag, global_step), text_string, markdown=True)

    def add_figure(self, tag: str, figure: Any, global_step: int | None = None, close: bool = True,
                   walltime: float | None = None) -> None:
        """A matplotlib figure (or a list of them, as a grid), as a PNG (needs ``pip install monitor[figures]``).

        Drawn here, as TensorBoard draws it, so a figure the loop reuses shows as it was at this
        call; ``close=True`` then closes it.
        """
        from monitor import figures as matplotlib_figures
        matplotlib_figures.require_matplotlib()
        figures = list(figure) if isinstance(figure, (list, tuple)) else [figure]
        close = checks.boolean("close", close)
        self._lay_out(tag, Order.IMAGES)
        self.log.images(tag, self._step(tag, global_step), torch.stack([matplotlib_figures.rendered(f) for f in figures]))
        if close:
            for each in figures:
                matplotlib_figures.close(each)

    def add_hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, Any],
                    hparam_domain_discrete: Any = None, run_name: str | None = None,
                    global_step: int | None = None) -> None:
        """The run's hyper-parameters and final metrics: pane ``hparams`` and an entry of the run log."""
        metrics = {k: _number(v, f"metric_dict[{k!r}]") for k, v in metric_dict.items()} \
            if isinstance(metric_dict, Mapping) else metric_dict
        self.log.hparams(hparam_dict, metrics, self._step("hparams", global_step))

    def add_graph(self, model: torch.nn.Module, input_to_model: Any = None, verbose: bool = False,
                  use_strict_trace: bool = True) -> None:
        """The model as a diagram in pane ``graph`` (see :class:`monitor.Graph`), traced on ``input_to_model``."""
        from monitor.callbacks.graph import _as_tuple, show
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if input_to_model is None:
            raise ValueError("input_to_model must be a tensor or a tuple of tensors to trace the model with, got None")
        show(self.log, model, _as_tuple(input_to_model, "input_to_model"), self._step("graph", None))

    def flush(self) -> None:
        """Waits (up to 10 s) until what was logged is in the run log and on the dashboard."""
        self.log.sink.flush()

    def close(self) -> None:
        """Delivers what is pending and ends the run (a writer on a Monitor's env only flushes)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_sink:
            self.log.sink.close()
        else:
            self.log.sink.flush()

    def get_logdir(self) -> str:
        return self.log_dir

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _NOT_DRAWN:
            return lambda *args, **kwargs: self._not_drawn(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # --- the rest ---------------------------------------------------------------------------------
    def _step(self, tag: str, global_step: Any) -> float:
        if global_step is None:
            step = self._steps[tag]
            self._steps[tag] += 1
            return step
        if isinstance(global_step, torch.Tensor):
            global_step = global_step.item()
        return global_step

    def _lay_out(self, window: str, order: int, **opts: Any) -> None:
        self.log.window(window, order=order, title=window, **opts)

    def _images(self, tag: str, img_tensor: Any, global_step: Any, dataformats: str, batch: bool) -> None:
        tensor = _tensor(img_tensor, "img_tensor")
        pixels = _as_nchw(tensor, dataformats, batch)
        if pixels.dtype != torch.uint8:  # TensorBoard's rule: 0-1 floats times 255, clipped, truncated
            pixels = (pixels.to(torch.float32) * 255).clamp_(0, 255).to(torch.uint8)
        if pixels.shape[1] == 4:  # RGBA: laid over white, as a page shows a transparent PNG
            alpha = pixels[:, 3:].to(torch.float32) / 255
            pixels = (pixels[:, :3] * alpha + 255 * (1 - alpha)).round_().to(torch.uint8)
        self._lay_out(tag, Order.IMAGES)
        self.log.images(tag, self._step(tag, global_step), pixels)

    def _not_drawn(self, method: str) -> None:
        if method not in self._said:
            self._said.add(method)
            _log.warning("monitor: SummaryWriter.%s is accepted but not drawn on the dashboard yet", method)


def split_tag(tag: str) -> tuple[str, str]:
    """Window and trace of a scalar's tag: ``"Loss/train"`` -> ``("Loss", "train")``, ``"lr"`` -> ``("lr", "lr")``."""
    checks.text("tag", tag)
    window, _, trace = tag.rpartition("/")
    return (window, trace) if window and trace else (tag, tag)


def _number(value: Any, argument: str) -> Any:
    if isinstance(value, np.ndarray) and value.size == 1 or isinstance(value, np.generic):
        return float(value.item())  # float(array) refuses a 1-d array of one element in numpy 2
    return value


def _tensor(value: Any, argument: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(value))
    raise TypeError(f"{argument} must be a torch.Tensor or a numpy array, got {type(value).__name__}")


def _as_nchw(tensor: torch.Tensor, dataformats: str, batch: bool) -> torch.Tensor:
    """``tensor`` laid out as ``dataformats`` says, as NCHW (a missing C is 1, a missing N is 1)."""
    letters = checks.text("dataformats", dataformats).upper()
    allowed = "NCHW" if batch else "CHW"
    if len(set(letters)) != len(letters) or not set(letters) <= set(allowed) or not {"H", "W"} <= set(letters) \
            or batch and "N" not in letters or tensor.dim() != len(letters):
        raise ValueError(f"dataformats must name each of the tensor's {tensor.dim()} dimensions once with "
                         f"{', '.join(allowed)} (H and W{' and N' if batch else ''} required), got "
                         f"{dataformats!r} for shape {tuple(tensor.shape)}")
    for letter in "NCHW":
        if letter not in letters:
            tensor, letters = tensor.unsqueeze(-1), letters + letter
    return tensor.permute(*(letters.index(letter) for letter in "NCHW"))


def _numpy_histogram(values: torch.Tensor, bins: Any, max_bins: int | None) -> tuple[list, list, int]:
    """TensorBoard's histogram of ``values``: numpy's bins, then at most ``max_bins`` of them."""
    array = values.detach().cpu().numpy().reshape(-1).astype(float)
    counts, edges = np.histogram(array, bins=_TENSORFLOW_BINS if isinstance(bins, str) and bins == "tensorflow"
                                 else bins)
    if max_bins is not None and len(counts) > max_bins:
        group = len(counts) // max_bins
        counts = np.pad(counts, (0, (-len(counts)) % group)).reshape(-1, group).sum(axis=1)
        edges = np.append(edges[:-1:group][:len(counts)], edges[-1])
    return edges.tolist(), counts.tolist(), array.size
