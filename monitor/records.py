"""The records callbacks hand to the sink: small immutable snapshots, never live tensors.

A record is made on the training thread and read by the sink, off the training thread. Anything in it that
the loop could change afterwards (a loss tensor, a batch of images) is a copy taken at
logging time; tensors may stay on their device until the sink reads them, so logging
never waits for the device.
"""
from __future__ import annotations

import math
import sys
from numbers import Integral, Real
from typing import Any, Iterator, Mapping, NamedTuple, Sequence


class Points(NamedTuple):
    """One x and a value for each of a window's traces (``values[i]`` belongs to ``traces[i]``).

    ``values`` is a tuple of floats, a 1-d tensor snapshot read by the sink, or a function of
    no arguments the sink calls to get either (work that can wait, such as adding up a step's
    gradient norms into layers), or a dict of trace to value for the traces that have one.
    """

    window: str
    x: float
    traces: tuple[str, ...]
    values: Any


class ImageGrid(NamedTuple):
    """A batch of images (NCHW snapshot, any dtype and range) shown as one grid; ``pixels`` may be a
    function of no arguments the sink calls to get them (a figure to draw). With ``fps``, the
    pixels are videos (NTCHW), shown as a grid that plays their frames at ``fps``. With
    ``value_range`` (low, high), low is black and high white, values beyond them clipped;
    ``columns``: tiles a row (None: about as many as rows)."""

    window: str
    x: float
    pixels: Any
    captions: Sequence[str] | LabelCaptions | None
    fps: float | None = None
    value_range: tuple[float, float] | None = None
    columns: int | None = None


class LabelCaptions:
    """Captions made from labels by the sink, so that logging a grid never waits for the device.

        LabelCaptions([targets[:8].clone(), logits[:8].argmax(1)], class_names=["cat", "dog"])
        # iterates (in the sink) as "cat / dog", "dog / dog", ...

    Each part holds one label per image (a tensor snapshot or a list); an image's parts are
    joined with " / ", and integer labels are named through ``class_names`` when given. A first
    part of rows (N, K) is multi-hot labels where every value is 0 or 1 and some row has other
    than one 1: each image's classes that are 1, joined with ", ", and a later part of rows their
    predictions (scores above 0, or above 0.5 where all are in [0, 1]). Otherwise a row's class
    is its highest score's; a first part of soft labels (MixUp's, CutMix's: rows of weights that
    sum to 1) names each class of a tenth of the weight or more, ``cat 0.7 + dog 0.3``; rows of
    other values are no labels (left out).
    """

    __slots__ = ("parts", "class_names", "count")

    def __init__(self, parts: Sequence[Any], class_names: Sequence[str] | Mapping[int, str] | None,
                 count: int) -> None:
        self.parts, self.class_names, self.count = tuple(parts), class_names, count

    def __len__(self) -> int:
        return self.count

    def repeated(self, times: int) -> LabelCaptions:
        """Each image's caption ``times`` over, for as many views of each image."""
        parts = [part.repeat_interleave(times, 0) if hasattr(part, "repeat_interleave")
                 else [label for label in part for _ in range(times)] for part in self.parts]
        return LabelCaptions(parts, self.class_names, self.count * times)

    def __iter__(self) -> Iterator[str]:
        import torch  # only where a record is read

        from monitor.host import on_host

        lists = [on_host(part).tolist() if isinstance(part, torch.Tensor) else
                 part.tolist() if hasattr(part, "tolist") else list(part) for part in self.parts]
        hot = bool(lists) and _is_rows(lists[0]) and all(v in (0, 1) for row in lists[0] for v in row)
        multi_hot = hot and any(sum(row) != 1 for row in lists[0])  # one-hot rows: one class each
        lists = [_classes(part, hot, multi_hot, labels=i == 0) if _is_rows(part) else part
                 for i, part in enumerate(lists)]
        lists = [part for part in lists if part is not None]
        for labels in zip(*lists):
            yield " / ".join(self._name(label) for label in labels)

    def _name(self, label: Any) -> str:
        if isinstance(label, tuple) and label and isinstance(label[0], tuple):  # soft labels: (class, weight)s
            return " + ".join(f"{self._name(k)} {weight:.2g}" for k, weight in label)
        if isinstance(label, tuple):  # a multi-hot image's classes
            return ", ".join(map(self._name, label)) or "none"
        names = self.class_names
        if names is not None and isinstance(label, Real) and not isinstance(label, Integral) \
                and math.isfinite(label) and float(label).is_integer():  # a BCE loss's float targets
            label = int(label)
        if isinstance(label, Integral) and names is not None:
            if isinstance(names, Mapping):
                return str(names.get(label, label))
            if 0 <= label < len(names):
                return str(names[label])
        if isinstance(label, Real) and not isinstance(label, Integral):
            return f"{label:.3g}"
        return str(label)


def _is_rows(part: list) -> bool:
    return bool(part) and isinstance(part[0], list)


def _classes(rows: list[list], hot: bool, multi_hot: bool, labels: bool) -> list | None:
    """Each row's classes: where the labels are multi-hot, a tuple of those present (labels) or
    scored as present (predictions); else the highest score's, and no labels where they are
    not one-hot (boxes, soft labels)."""
    if not multi_hot:
        if labels and not hot:
            soft = all(min(row) >= 0 and abs(sum(row) - 1) < 1e-3 for row in rows)
            return [tuple(sorted(((k, v) for k, v in enumerate(row) if v >= 0.1), key=lambda kv: -kv[1]))
                    for row in rows] if soft else None
        return [max(range(len(row)), key=row.__getitem__) for row in rows]
    cut = 0.5 if labels or all(0 <= v <= 1 for row in rows for v in row) else 0.0
    return [tuple(k for k, v in enumerate(row) if v > cut) for row in rows]


class Text(NamedTuple):
    """An HTML text pane; a newer one replaces the older, or with ``keep`` > 1 joins the latest
    ``keep`` of them shown newest first, each under its step. ``html`` may be a function of no
    arguments the sink calls to get it (a sound to encode), or with ``markdown`` Markdown the
    sink renders (a long text's rendering is no time of the loop's)."""

    window: str
    x: float
    html: str
    keep: int = 1
    markdown: bool = False


class Histogram(NamedTuple):
    """A distribution: ``values`` is (edges, counts, n), tensors maybe still on their device, or a
    function of no arguments the sink calls to get them; ``n`` counts every value given."""

    window: str
    x: float
    values: Any


class PrCurve(NamedTuple):
    """A precision-recall curve at one step: ``counts`` is (true positives, false positives, true
    negatives, false negatives), a list each with one count per threshold ``i / (len - 1)``, maybe
    followed by the precision and recall the loop computed, or a function of no arguments the
    sink calls to get them."""

    window: str
    x: float
    counts: Any


class Embedding(NamedTuple):
    """Vectors projected to three dimensions at one step: ``values`` is (points, the variance each
    dimension explains, a label per point or None, a hover text per point or None), or a function
    of no arguments the sink calls to get them."""

    window: str
    x: float
    values: Any


class Mesh(NamedTuple):
    """A mesh or point cloud at one step: ``values`` is (vertices N x 3, faces F x 3 or None, colours
    N x 3 or None) as lists (``mesh.drawn``), or a function of no arguments the sink calls to get them."""

    window: str
    x: float
    values: Any


class Matrix(NamedTuple):
    """A matrix at one step (a confusion matrix): ``values`` is a 2-d tensor snapshot, maybe on its
    device, or rows of numbers; ``rows`` and ``columns`` name them (None: numbered)."""

    window: str
    x: float
    values: Any
    rows: tuple[str, ...] | None
    columns: tuple[str, ...] | None


class Hparams(NamedTuple):
    """A run's hyper-parameters (JSON values) and the metrics it ended with (numbers); the newest
    counts. ``trial`` names one of several trials a pane shows (a writer's ``add_hparams`` call);
    without it, the hyper-parameters do."""

    window: str
    x: float
    hparams: dict
    metrics: dict
    trial: str | None = None


class StepMark(NamedTuple):
    """Marks in the run log around the rest of a checkpointed step's code (what the loop logs
    after the ``step_end`` that saved, a validation inside the batches loop), which a resume from
    the checkpoint taken at byte ``position`` keeps: ``"rest_of_step"`` at that position, as the
    checkpoint is written, and ``"continues"`` where the loop takes its next batch."""

    kind: str  # "rest_of_step" or "continues"
    position: int


class RunEnd(NamedTuple):
    """How the run ended: "finished", or "crashed", "interrupted" or "pruned" with the error (a
    killed run leaves none)."""

    status: str
    error: str | None = None
    step: int | None = None  # the steps the run had trained (a Monitor's; a writer's: None)


def ending_of(error: BaseException | None) -> RunEnd:
    """How a run that raised ``error`` (None: nothing) ended: ``sys.exit(0)`` finishes it; Ctrl-C
    and another ``sys.exit`` (a pre-empted job's 75) interrupt it; a ``TrialPruned`` (Optuna's,
    or a search's own of that name) prunes it; anything else crashes it."""
    if error is None or isinstance(error, SystemExit) and error.code in (0, None):
        return RunEnd("finished")
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else \
        "pruned" if type(error).__name__ == "TrialPruned" else "crashed"
    return RunEnd(status, text)


def exit_error() -> BaseException | None:
    """At the interpreter's exit, the uncaught exception that ended the script, if one did.

    An interactive session (``python -i``, IPython, a Jupyter kernel) keeps the last error it
    showed at its prompt, which ended nothing: a typo, or a Ctrl-C the user went on from.
    """
    return None if interactive() else getattr(sys, "last_value", None)


def interactive() -> bool:
    """Whether this is an interactive session: ``python -i``, a prompt, IPython or a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or \
        ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None


class Order:
    """Where a window goes on the page: the order a person reads a run (ties: the order they came)."""

    SUMMARY = 0
    LOSS = 10
    METRICS = 20  # also the windows a loop lays out itself
    CHARTS = 25  # a writer's custom-scalar charts: copies of curves, which a table of runs leaves out
    LEARNING_RATE = 30
    TIMING = 35
    GRADIENTS = 40
    IMAGES = 50


class Layout(NamedTuple):
    """Display options of a window (title, axis labels, ...) and its place on the page."""

    window: str
    opts: dict
    order: int | None = Order.METRICS  # None: where it is (a new window: among the metrics)
