"""Log: the training thread's side of the sink. Checks input at the door, snapshots it, queues it.

Everything here runs on the training thread, so it stays cheap: no encoding, no file or
network work, and no device synchronisation (a tensor on an accelerator is copied on its
device and read later by the sink, off the training thread).
"""
from __future__ import annotations

import collections
import logging
import math
import numbers
from collections.abc import Mapping
from html import escape
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from monitor import checks
from monitor.binning import binned
from monitor.records import Histogram, Hparams, ImageGrid, LabelCaptions, Layout, Matrix, Order, Points, Text


@runtime_checkable
class Sink(Protocol):
    """Where records go; :class:`monitor.VisdomSink` is the one that reaches a dashboard.

    ``put`` must never block on the network. A sink with a run log says where it ends:
    ``position`` now, and ``sync`` once it is durable (what a checkpoint records, to rewind the
    log to on resume); ``env`` names the run's dashboard page and ``run_id`` the run. A sink
    without a run log returns None for all four.
    """

    env: str | None
    run_id: str | None

    @property
    def position(self) -> int | None: ...
    def put(self, record: Any) -> None: ...
    def flush(self, timeout: float | None = 10.0) -> bool: ...
    def sync(self, timeout: float | None = 10.0) -> int | None: ...
    def close(self, timeout: float | None = 10.0) -> bool: ...


class NullSink:
    """Takes records and drops them: for processes that must not log (e.g. ranks other than 0)."""

    env = None
    run_id = None
    position = None

    def put(self, record: Any) -> None:
        pass

    def flush(self, timeout: float | None = 10.0) -> bool:
        return True

    def sync(self, timeout: float | None = 10.0) -> int | None:
        return None

    def close(self, timeout: float | None = 10.0) -> bool:
        return True


MOST_PIXELS = 2048 * 2048  # in one grid: a batch with more is shrunk, each image alike, before it is logged


_log = logging.getLogger("monitor")
_BEHIND = 8  # image grids of one window waiting for the sink: said once each time it gets so far behind


class Log:
    """Writes scalars, image grids and text panes to a sink, as snapshots taken now.

    Callbacks use it through ``Monitor.log``; so can the user's loop:

        monitor.log.scalar("loss", "train", step, loss)
        monitor.log.scalars("accuracy", epoch, {"train": 0.91, "validation": 0.88})
        monitor.log.images("inputs", step, batch[:8], captions=["cat", "dog", ...])
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        # What window() sent last, by window; and the windows a callback laid out (lay_out), which
        # it looks up (``name in log.laid_out``) instead of laying them out every step.
        self.layouts: dict[str, tuple[int | None, dict[str, Any]]] = {}
        self.laid_out: set[str] = set()
        self._names: set[str] = set()  # window and trace names already checked
        self._checked_traces: tuple[str, ...] = ()
        # The metrics given to hparams() so far, by window (not a writer's trials): a run's final
        # test metrics, which Summary's record at train_end keeps beside the validation's; and
        # the hyper-parameters they were given with.
        self.final_metrics: dict[str, dict[str, Any]] = {}
        self._final_hparams: dict[str, dict[str, Any]] = {}
        self._images_put: collections.Counter[str] = collections.Counter()  # image grids put, by window

    def _put_image(self, window: str) -> None:
        self._images_put[window] += 1
        hurry = getattr(self.sink, "hurry", None)
        if hurry is not None:  # taken in now, not at the sink's next poll: the next grid need not skip
            hurry()
        if self.images_waiting(window) == _BEHIND:  # once a backlog: it says where memory goes
            _log.warning("monitor: %d image grids of window %r wait for the sink to read them: they are logged "
                         "faster than it takes them in, each held in memory meanwhile; log them less often or "
                         "smaller", _BEHIND, window)

    def images_waiting(self, window: str) -> int:
        """The image grids of ``window`` put and not yet taken in by the sink (read and handed on):
        more than none, and a loop logging grids faster than the sink can take them in would hold
        them all in memory (a sink that does not count them: none)."""
        taken = getattr(self.sink, "images_taken", None)
        return self._images_put[window] - taken[window] if taken is not None else 0

    def _name(self, argument: str, value: Any) -> str:
        """``value`` if it is a usable window or trace name (checked once per name)."""
        if type(value) is str and value in self._names:  # the usual case, kept cheap
            return value
        value = checks.name(argument, value)  # a plain str (numpy's str_ made one)
        self._names.add(value)
        return value

    def _traces(self, traces: Sequence[str]) -> tuple[str, ...]:
        """``traces`` as a checked tuple; a caller that passes the same tuple again is not checked again."""
        if traces is not self._checked_traces:
            traces = tuple(traces)  # the same tuple, where it is one: found again by the test above
            for trace in traces:
                if self._name("trace", trace) is not trace:  # numpy's str_: plain ones from here on
                    traces = tuple(self._name("trace", trace) for trace in traces)
                    break
            self._checked_traces = traces
        return traces

    def scalar(self, window: str, trace: str, x: float, value: Any) -> None:
        """One point of one trace; ``value`` is a number or a one-element tensor or numpy array."""
        if type(value) is not float:
            value = _snapshot(value, "value")
        names = self._names
        if type(window) is not str or window not in names or type(trace) is not str or trace not in names:
            window, trace = self._name("window", window), self._name("trace", trace)  # checked once per name
        self.sink.put(Points(window, x if type(x) is int else _x(x), (trace,), (value,)))

    def scalars(self, window: str, x: float, values: Mapping[str, Any]) -> None:
        """One point for each trace named in ``values`` (trace -> number or one-element tensor)."""
        if type(values) is not dict and not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping of trace name to number, got {type(values).__name__}")
        if not values:
            return
        traces, snapshots = [], []
        for trace, value in values.items():
            traces.append(self._name("trace", trace))
            snapshots.append(value if type(value) is float else _snapshot(value, "values", trace))
        self.sink.put(Points(self._name("window", window), _x(x), tuple(traces), tuple(snapshots)))

    def vector(self, window: str, x: float, traces: Sequence[str],
               values: torch.Tensor | np.ndarray | Callable[[], Sequence[float] | torch.Tensor], *,
               copy: bool = True) -> None:
        """One point per trace: ``values[i]`` for ``traces[i]``, from a 1-d real tensor (or numpy
        array) or a function.

        A CPU tensor is read now; one on an accelerator is copied on its device and read by the
        sink (``copy=False`` skips the copy, for a tensor made for this call that
        nothing changes afterwards). A function of no arguments is called by the sink
        and returns the values (floats or a 1-d tensor, or a dict of trace to value for those
        of ``traces`` that have one): work that can wait, kept off the training thread; it must
        only use what nothing changes afterwards.
        """
        if callable(values):
            if type(window) is not str or window not in self._names:
                window = self._name("window", window)
            if traces is not self._checked_traces:
                traces = self._traces(traces)
            self.sink.put(Points(window, x if type(x) is int else _x(x), traces, values))
            return
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":  # feature importances from numpy
            values = torch.from_numpy(values.astype(np.float64))
        if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() != len(traces):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"values must be a 1-d tensor of {len(traces)} elements, got {got}")
        checks.real_tensor("values", values)
        if values.device.type == "cpu":  # read now, as _snapshot does: no tensor to free on another thread
            values = tuple(float(v) for v in values.tolist())
        else:
            if values.requires_grad:
                values = values.detach()
            if values.dtype != torch.float32:
                values = values.to(torch.float32)  # a copy
            elif copy:
                values = values.clone()  # a third of the cost of .to(..., copy=True) here
        self.sink.put(Points(self._name("window", window), _x(x), self._traces(traces), values))

    def images(self, window: str, x: float, images: torch.Tensor | np.ndarray,
               captions: Sequence[str] | None = None, *, value_range: tuple[float, float] | None = None,
               columns: int | None = None) -> None:
        """A grid of ``images``, a tensor or numpy array: NCHW, CHW, NHW or HW; 1 or 3 channels
        (NCHW also 4: RGBA, laid over white as TensorBoard's PNG shows on a page); any float,
        uint8 or bool range; or a list of CHW or HW images of their own sizes (a detection
        batch), each padded with zeros to the largest.
        Channels last (NHWC, HWC: a numpy or PIL image) are taken where the channels can only be
        the last dim (``channels_first``).

        A batch of more than ``MOST_PIXELS`` pixels (2048 x 2048) is shrunk to fit, each image
        by the same factor (each pixel the average of those it covers), on its device, before
        the copy: a grid of 8 images of 2048 x 2048 made a 100 MB PNG that no browser page
        draws. A figure or a photo of a few megapixels is kept whole.

        ``value_range=(-1, 1)`` shows -1 black and 1 white whatever the batch holds (a
        generator's samples, which may overshoot), values beyond clipped; by default a float
        batch within [0, 1] or [-1, 1] is shown so, any other stretched image by image.
        ``columns`` images a row (``make_grid``'s ``nrow``: 8 samples in a row); by default about
        as many as rows.
        """
        value_range = checks.value_range("value_range", value_range)
        if columns is not None:
            checks.positive_int("columns", columns)
        batch = _as_nchw(images)
        if captions is not None:
            if not isinstance(captions, LabelCaptions):  # those are read by the sink
                captions = [str(c) for c in captions]
            if len(captions) != batch.shape[0]:
                raise ValueError(f"captions must have one entry per image ({batch.shape[0]}), "
                                 f"got {len(captions)}")
        shrunk = _shrunk(batch)
        window = self._name("window", window)
        self.sink.put(ImageGrid(window, _x(x), batch.detach().clone() if shrunk is batch else shrunk, captions,
                                value_range=value_range, columns=columns))
        self._put_image(window)

    def video(self, window: str, x: float, videos: torch.Tensor, fps: float = 4, *,
              value_range: tuple[float, float] | None = None) -> None:
        """A grid of ``videos`` (NTCHW: N videos of T frames, 1 or 3 channels) playing at ``fps``
        frames a second, in a loop; values as in :meth:`images`, each video as one image (a
        denoising from noise to an image in [-1, 1] wants ``value_range=(-1, 1)``, or its noise
        sets the range and the image shows grey).
        A frame's grid of more than ``MOST_PIXELS`` is shrunk as a batch of images is.
        """
        value_range = checks.value_range("value_range", value_range)
        if not isinstance(videos, torch.Tensor):
            raise TypeError(f"videos must be a torch.Tensor (NTCHW), got {type(videos).__name__}")
        checks.real_tensor("videos", videos)
        if videos.dim() != 5 or videos.shape[2] not in (1, 3) or 0 in videos.shape:
            conv3d = videos.dim() == 5 and videos.shape[1] in (1, 3) and videos.shape[2] not in (1, 3)
            hint = ": a Conv3d's N x C x T x H x W, pass videos.permute(0, 2, 1, 3, 4)" if conv3d else ""
            raise ValueError(f"videos must be NTCHW with 1 or 3 channels and no empty dimension, "
                             f"got shape {tuple(videos.shape)}{hint}")
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps <= 1000:
            raise ValueError(f"fps must be a number of frames a second in (0, 1000], got {fps!r}")
        count, frames, channels, height, width = videos.shape
        flat = videos.reshape(count, frames * channels, height, width)  # each frame's grid shrunk alike
        shrunk = _shrunk(flat)
        snapshot = videos.detach().clone() if shrunk is flat else shrunk.reshape(count, frames, channels,
                                                                                  *shrunk.shape[2:])
        window = self._name("window", window)
        self.sink.put(ImageGrid(window, _x(x), snapshot, None, float(fps), value_range))
        self._put_image(window)

    def histogram(self, window: str, x: float, values: torch.Tensor | Sequence[torch.Tensor],
                  bins: int | Sequence[float] = 30) -> None:
        """The distribution of ``values`` (a tensor, or several pooled: a model's gradients) at ``x``.

        Binned where the values are, so nothing on an accelerator is read here: ``bins`` equal
        bins over the finite values' range, or the bin edges (increasing numbers); a value is
        in a bin as in ``numpy.histogram``. The window draws the percentiles over ``x``, as
        TensorBoard's distributions view does, and the latest histogram.
        """
        tensors = [values] if isinstance(values, torch.Tensor) else values
        if not isinstance(tensors, (list, tuple)) or not tensors or \
                not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"values must be a tensor or a non-empty list of tensors, got {type(values).__name__}")
        for tensor in tensors:
            checks.real_tensor("values", tensor)
        if len({t.device for t in tensors}) > 1:
            raise ValueError(f"values must be on one device, got {sorted({str(t.device) for t in tensors})}")
        edges, counts, n = binned(tensors, _bins(bins))
        if not n:
            raise ValueError("values must hold at least one number, got none")
        self.sink.put(Histogram(self._name("window", window), _x(x), (edges, counts, n)))

    def heatmap(self, window: str, x: float, values: Any, rows: Sequence[Any] | None = None,
                columns: Sequence[Any] | None = None) -> None:
        """A matrix at ``x`` (a confusion matrix, attention weights), as a heatmap of its latest value.

        ``values`` is a 2-d tensor (copied on its device, read by the sink), a numpy array or
        rows of numbers; ``rows`` and ``columns`` name its rows and columns (numbered if not
        given), drawn with row 0 at the top. ``log.window(window, xlabel="predicted",
        ylabel="true")`` names the axes. A matrix of at most 20 x 20 has its values written in it.
        """
        shape = tuple(values.shape) if hasattr(values, "shape") else None  # a tensor's or an array's
        if shape is None:
            if not isinstance(values, Sequence) or isinstance(values, str) or not values or \
                    not all(isinstance(row, Sequence) and not isinstance(row, str) for row in values):
                raise TypeError(f"values must be a 2-d tensor, a numpy array or rows of numbers, got "
                                f"{type(values).__name__}")
            shape = (len(values), len(values[0]))
            if any(len(row) != shape[1] for row in values):
                raise ValueError(f"values must have as many numbers in each row, got rows of "
                                 f"{sorted({len(row) for row in values})}")
            for value in (v for row in values for v in row):
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise TypeError(f"values must be numbers, got {value!r}")
            values = [[float(v) for v in row] for row in values]
        elif isinstance(values, torch.Tensor):
            checks.real_tensor("values", values)
            values = values.detach().clone()
        else:
            try:
                values = np.array(values, dtype=np.float64)  # a copy, as numbers
            except (TypeError, ValueError):
                raise TypeError(f"values must be numbers, got an array of {values.dtype}") from None
        if len(shape) != 2 or not shape[0] or not shape[1]:
            raise ValueError(f"values must be a matrix of at least one row and column, got shape {shape}")
        names = []
        for argument, given, count in (("rows", rows, shape[0]), ("columns", columns, shape[1])):
            if given is not None and (isinstance(given, str) or len(given) != count):
                raise ValueError(f"{argument} must name each of the {count} {argument}, got {given!r}")
            names.append(None if given is None else tuple(str(name) for name in given))
        self.sink.put(Matrix(self._name("window", window), _x(x), values, *names))

    def text(self, window: str, x: float, text: str, *, html: bool = False, markdown: bool = False,
             keep: int = 1) -> None:
        """A text pane; a later call for the same window replaces it, or with ``keep`` > 1 the pane
        shows the latest ``keep`` texts, newest first, each under its step (TensorBoard's text view).

        ``text`` is shown as written: escaped, with its line breaks and runs of spaces and tabs
        kept (a character model's sample, a table of columns), so a string from a dataset or a
        config cannot inject markup into the dashboard. ``markdown=True`` renders
        it as Markdown (CommonMark and tables, as TensorBoard's text view does), any HTML in it
        still escaped. ``html=True`` sends it as HTML, for markup you wrote yourself.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        markdown = checks.boolean("markdown", markdown)  # rendered by the sink
        if not markdown and not checks.boolean("html", html):
            text = escape(text)
            text = f'<div style="white-space: pre-wrap">{text}</div>' if "  " in text or "\t" in text \
                else text.replace("\n", "<br>")
        self.sink.put(Text(self._name("window", window), _x(x), str(text), checks.positive_int("keep", keep),
                           markdown))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, Any] | None = None, x: float = 0, *,
                window: str = "hparams", trial: str | None = None) -> None:
        """The run's hyper-parameters and the metrics it reached, as a table in pane ``window`` and
        as one ``hparams`` entry of the run log (what a comparison of runs reads).

        Numpy scalars and one-element CPU tensors are numbers; other values that are not numbers,
        strings, booleans or None are shown as their ``str``;
        metrics are numbers or one-element tensors (one on an accelerator is read by the sink).
        A pane shows a row per ``trial`` (a writer's ``add_hparams`` call), or without one per set
        of hyper-parameters (a run updating its own). Without a trial, metrics add to those given
        before with the same hyper-parameters, or some of them, or none (a test set's after the
        validation's that ``Summary`` recorded at ``train_end``); a call with none starts the row again.
        """
        if not isinstance(metrics or {}, Mapping):
            raise TypeError(f"metrics must be a mapping of name to value, got {type(metrics).__name__}")
        plain = {k: _plain(v) for k, v in checks.hparams("hparams", hparams).items()}
        numbers = {str(k): _snapshot(v, "metrics", k) for k, v in (metrics or {}).items()}
        if trial is None:
            recorded = self._final_hparams.get(window)
            if numbers and recorded is not None and plain.items() <= recorded.items():
                # The run's own, given again in part or not at all (a test set's metrics after
                # training, with the hparams that matter): they join its record.
                plain, numbers = recorded, {**self.final_metrics.get(window, {}), **numbers}
            self.final_metrics[window], self._final_hparams[window] = dict(numbers), plain
        self.window(window, order=Order.SUMMARY, title=window)
        self.sink.put(Hparams(window, _x(x), plain, numbers, trial))

    def window(self, window: str, order: int | None = None, **opts: Any) -> None:
        """Sets a window's display options (``xlabel``, ``ylabel``, ``ytype="log"``...) and place;
        they add up with those it has, a callback's included (before or after its first point).

        ``order`` places it on the page (:class:`monitor.records.Order`: summary, loss, metrics,
        learning rate, gradients, images; None: where it is, a new window among the metrics).
        Calling it again with the same options sends nothing.
        """
        if self.layouts.get(window) == (order, opts):
            return
        self.layouts[self._name("window", window)] = (order, opts)
        self.sink.put(Layout(window, dict(opts), None if order is None else checks.integer("order", order)))

    def lay_out(self, window: str, order: int, **opts: Any) -> None:
        """A callback's layout of its window, once (it looks in ``laid_out`` first): its options
        and place, under those the loop gave it before (``log.window(name, ytype="log")``)."""
        self.laid_out.add(window)
        given = self.layouts.get(window)
        if given is not None:
            order = order if given[0] is None else given[0]
            opts = {**opts, **given[1]}
        self.window(window, order, **opts)




def _x(x: Any) -> float:
    if type(x) is int:  # the usual step number: finite, nothing to check
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_cuda:
        x = x.item()
    return checks.finite("x", x)


def _snapshot(value: Any, argument: str, key: str | None = None) -> Any:
    """A float now, or a copy on the tensor's own device when reading it would wait for the device.

    Errors name ``argument`` (``argument[key]`` when ``key`` is given).
    """
    if type(value) is float:  # a learning rate, a metric already read: the common case, kept cheap
        return value
    if isinstance(value, torch.Tensor):
        if value.is_cpu and value.numel() == 1:  # a loss: read now, in as few tensor calls as we can
            number = value.item()
            if type(number) is float or type(number) is int:
                return float(number)
        checks.scalar(argument if key is None else f"{argument}[{key!r}]", value)
        return value.detach().reshape(()).to(torch.float32).clone()
    return float(checks.scalar(argument if key is None else f"{argument}[{key!r}]", value))


def _shrunk(batch: torch.Tensor) -> torch.Tensor:
    """NCHW images of at most ``MOST_PIXELS`` in all, in their dtype; ``batch`` if they are."""
    count, height, width = batch.shape[0], batch.shape[2], batch.shape[3]
    if count * height * width <= MOST_PIXELS:
        return batch
    scale = math.sqrt(MOST_PIXELS / (count * height * width))
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    with torch.no_grad():
        small = torch.nn.functional.interpolate(batch.float(), size=size, mode="area")
    return small.to(batch.dtype) if batch.is_floating_point() else small.round().to(batch.dtype)


def _plain(value: Any) -> Any:
    """A hyper-parameter as JSON holds it: ``np.float32(0.1)`` and ``torch.tensor(3)`` as numbers."""
    if isinstance(value, torch.Tensor) and value.is_cpu and value.numel() == 1:
        value = value.detach().reshape(())
        value = (value.float() if value.dtype is torch.bfloat16 else value).numpy()  # a numpy scalar, below
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.floating):
        value = float(str(value))  # its shortest form: np.float32(0.1) as 0.1, not 0.10000000149011612
    elif isinstance(value, np.generic):
        value = value.item()
    return value if value is None or isinstance(value, (str, bool, int, float)) else str(value)


def _bins(bins: Any) -> int | torch.Tensor:
    """A number of bins, or the edges as a CPU float64 tensor (checked: at least two, increasing)."""
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):  # numpy's ints too
        return checks.positive_int("bins", int(bins))
    try:
        edges = torch.as_tensor(bins, dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        edges = None
    if edges is None or edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()) \
            or not bool(torch.isfinite(edges).all()):
        raise ValueError(f"bins must be a number of bins or at least two increasing finite edges, "
                         f"got {bins!r}"[:200])
    return edges


def _as_nchw(images: Any) -> torch.Tensor:
    if isinstance(images, (list, tuple)) and images and all(_is_image(i) for i in images):
        return _padded([_as_nchw(image) for image in images])
    if not isinstance(images, torch.Tensor) and hasattr(images, "__array_interface__"):
        images = _from_array(images)  # a numpy array (librosa's spectrogram) or a PIL image
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array (NCHW, CHW, NHW or HW) or a list of images "
                        f"(CHW or HW, of any sizes), got {type(images).__name__}")
    if images.dtype is not torch.bool:  # a mask: black and white
        checks.real_tensor("images", images)
    shape = tuple(images.shape)
    images = channels_first(images)
    if images.dim() == 2:  # HW
        images = images[None, None]
    elif images.dim() == 3:  # CHW with 1 or 3 channels, else NHW
        images = images[None] if images.shape[0] in (1, 3) else images[:, None]
    elif images.dim() != 4:
        raise ValueError(f"images must be NCHW, CHW, NHW or HW, got shape {shape}" + (
            ": a volume's middle slice, x[:, :, x.shape[2] // 2], or its slices as a video, "
            "log.video(window, x, v.transpose(1, 2))" if images.dim() == 5 else ""))
    if images.shape[1] not in (1, 3, 4) or 0 in images.shape:
        raise ValueError(f"images must have 1 or 3 channels (NCHW also 4, RGBA; NHWC and HWC as well, the "
                         f"channels last) and a non-empty batch, got shape {shape}")
    return images


def _is_image(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or hasattr(value, "__array_interface__")


def _from_array(images: Any) -> Any:
    """A numpy array or PIL image as a tensor of its own (the array may change after the call);
    left as it is where torch has no dtype for it, for the TypeError to name."""
    array = np.array(images)
    try:
        return torch.from_numpy(array)
    except TypeError:
        return array


def _padded(batches: list[torch.Tensor]) -> torch.Tensor:
    """NCHW batches of any sizes (a detection batch's images) as one, each padded with zeros to
    the largest height and width; grey ones as RGB where others are in colour."""
    channels = {batch.shape[1] for batch in batches}
    if len(channels) > 1 and channels != {1, 3}:
        raise ValueError(f"images must all have 1 or 3 channels, or all 4, got {sorted(channels)}")
    if len({(batch.dtype, batch.device) for batch in batches}) > 1:
        raise ValueError(f"images must have one dtype and device, got "
                         f"{sorted({f'{b.dtype} on {b.device}' for b in batches})}")
    height, width = max(b.shape[2] for b in batches), max(b.shape[3] for b in batches)
    colour = max(channels)
    return torch.cat([torch.nn.functional.pad(b.expand(-1, colour, -1, -1),
                                              (0, width - b.shape[3], 0, height - b.shape[2]))
                      for b in batches])


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """Channels-last images (NHWC, HWC: numpy's and PIL's layout, a Dataset without ToTensor) as
    NCHW, where the last dim can only be the channels: 1, 3 or 4 there (HWC: 3 or 4), and dim 1
    (HWC: dim 0) is not. Others as they are."""
    shape = images.shape
    if images.dim() == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
        return images.permute(0, 3, 1, 2)
    if images.dim() == 3 and shape[0] not in (1, 3, 4) and shape[2] in (3, 4):
        return images.permute(2, 0, 1)[None]
    return images
