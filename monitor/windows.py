"""What each Visdom window should show, built from run-log entries and kept small.

A line window holds at most ``points_per_trace`` points per trace, and ``WINDOW_POINTS`` in all
(about 300 KB of JSON), however long the run and however many traces: a model with 160 layers
gets about 75 points per layer trace. Up to
that many points a trace is exact; beyond, neighbouring buckets of points merge, each bucket
keeping its lowest and highest point (and its first gap, where a value was not finite). So the
curve keeps its shape and its extremes while the server's cost per update stays flat; the full
resolution stays in the run log.

Every update sends a window whole (Visdom's append costs the server ~10x more per point than a
replace, and a replace is idempotent, so a retry can never duplicate a point).
"""
from __future__ import annotations

import base64
import bisect
import colorsys
import json
from collections import deque
from html import escape
import math
import struct
from typing import Any, Iterable, NamedTuple, Sequence

from pathlib import Path

import numpy as np

from monitor import checks, distribution, embedding, heatmap, matrix, mesh, pr_curve
from monitor.imagestore import KEEP, kept
from monitor.records import Order
from monitor.runlog import FORMAT

Point = tuple[int, float, Any]  # (arrival number, x, y); y is None for a gap

TRIALS = 500  # rows of an hparams pane (the run log keeps every entry)
WINDOW_POINTS = 12_000  # points a line window shows in all: its message stays under about 300 KB
# A table as the text panes show one: cells apart (a pane's page gives them no padding).
TABLE = ('<style>table.monitor td, table.monitor th {padding: 1px 8px; text-align: left; vertical-align: top}'
         '</style><table class="monitor">')
SMOOTHED_POINTS = 500  # a smoothed curve's points: it has no extremes to keep, and a pane is about as wide
SMOOTHED_WINDOW_POINTS = 3_000  # a window's smoothed curves' points in all, beside its WINDOW_POINTS
_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # Plotly's: a trace and its smoothed curve
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")  # a compared run's traces (train, validation, ...)


def _colour(index: int, count: int) -> tuple[int, int, int]:
    """Colour ``index`` of ``count`` compared runs: Plotly's ten, and past ten (a sweep's 64, which
    shared ten), hues a golden-ratio turn apart, alternately dark and light: none twice."""
    if count <= len(_COLORS):
        return _COLORS[index]
    red, green, blue = colorsys.hls_to_rgb(index * 0.6180339887 % 1, 0.35 if index % 2 else 0.55, 0.8)
    return round(red * 255), round(green * 255), round(blue * 255)

_MIN_TRACE_POINTS = 10
RECENT = 8  # the latest points among which one that comes late takes its place (threads' evaluations)


class _Summary:
    """A bucket of raw points reduced to its lowest, highest and first non-finite point, and the
    sums of its finite points' x and y (its mean, which the smoothed curve is drawn from)."""

    __slots__ = ("low", "high", "gap", "count", "finite", "sum_x", "sum_y")

    def __init__(self) -> None:
        self.low: Point | None = None
        self.high: Point | None = None
        self.gap: Point | None = None
        self.count = 0  # raw points it stands for
        self.finite, self.sum_x, self.sum_y = 0, 0.0, 0.0

    def add(self, point: Point) -> None:
        self.count += 1
        y = point[2]
        if y is None:
            if self.gap is None:
                self.gap = point
        else:
            self.finite, self.sum_x, self.sum_y = self.finite + 1, self.sum_x + point[1], self.sum_y + y
            if self.low is None or y < self.low[2]:
                self.low = point
            if self.high is None or y > self.high[2]:
                self.high = point

    def means(self) -> list[tuple[float, float | None, int]]:
        """(x, mean y, finite points) of the bucket's finite points, and (x, None, 0) at its
        first non-finite one, in x order: a gap stays a gap in the smoothed curve too."""
        parts = [(self.sum_x / self.finite, self.sum_y / self.finite, self.finite)] if self.finite else []
        if self.gap is not None:
            parts.append((self.gap[1], None, 0))
        return sorted(parts, key=lambda part: part[0])

    def merge(self, other: _Summary) -> None:
        """Takes in a later bucket: the result is the summary of both buckets' raw points."""
        self.count += other.count
        self.finite, self.sum_x, self.sum_y = (self.finite + other.finite, self.sum_x + other.sum_x,
                                               self.sum_y + other.sum_y)
        if other.gap is not None and self.gap is None:
            self.gap = other.gap
        if other.low is not None and (self.low is None or other.low[2] < self.low[2]):
            self.low = other.low
        if other.high is not None and (self.high is None or other.high[2] > self.high[2]):
            self.high = other.high

    def points(self) -> list[Point]:
        """The kept points (at most 3), in arrival order."""
        kept = {p for p in (self.low, self.high, self.gap) if p is not None}
        return sorted(kept)


class Backwards(NamedTuple):
    """A point whose x is before its trace's last x: a run that went back to an earlier step (a
    resumed script, a notebook cell run again). The trace goes on from it, without the points
    at or after its x (a zigzag otherwise); the run log keeps them."""

    window: str
    trace: str | None  # None: an image pane's grids
    x: float
    last: float

    @staticmethod
    def said(points: list["Backwards"]) -> str:
        """One line for the windows that went back together (a script run again on its run
        folder: every window), each named once, its first trace that went back."""
        first: dict[str, Backwards] = {}
        for point in points:
            first.setdefault(point.window, point)
        named = [f"{p.window!r} ({'' if p.trace is None else f'trace {p.trace!r}: '}x={p.x}, after x={p.last})"
                 for p in list(first.values())[:3]]
        more = f" and {len(first) - 3} more" if len(first) > 3 else ""
        grids = any(p.trace is None for p in first.values())
        return (f"{'window' if len(first) == 1 else f'{len(first)} windows'} went back to an earlier x: "
                f"{', '.join(named)}{more}; {'its' if len(first) == 1 else 'their'} "
                f"{'curves and image grids' if grids else 'curves'} go on from there, the "
                f"{'points and grids' if grids else 'points'} after it taken off the plot (the run log keeps them)")


def came_late(recent: Sequence[float], x: float) -> bool:
    """Whether ``x``, before the last of the ``recent`` points' x (the latest ``RECENT``), came
    late (evaluations that finished out of order, in threads of their own): among them, not one
    of them; not a run that went back to an x it had logged (a resumed script's), or before all of them."""
    return x not in recent and (x > recent[0] or len(recent) < RECENT)


class Trace:
    """One curve: exact up to ``budget`` points, then min/max buckets that stay within it.

    The first and the latest point are always shown, so the curve spans the whole run and ends
    at the value just logged.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.width = 1  # raw points per bucket
        self.buckets: list[list[Point]] = []
        self.summaries: list[_Summary] = []  # each bucket's, beside its points: its mean, for the smoothed curve
        self.kept = 0  # points in self.buckets
        self.partial = _Summary()  # the bucket being filled
        self.first: Point | None = None
        self.last: Point | None = None
        self.count = 0  # raw points seen
        self.nonfinite = 0
        self.recent: deque[float] = deque(maxlen=RECENT)  # the x of the latest raw points

    def add(self, x: float, y: float | None) -> bool:
        """Adds a point at or after the last one's x; one before it is refused (False).

        Points at one x (a learning rate logged every batch at the epoch's number) are all
        drawn, one above the other, as TensorBoard draws them.
        """
        if self.last is not None and not x >= self.last[1]:
            return False
        self.count += 1
        if y is None or not math.isfinite(y):
            self.nonfinite += 1
            y = None
        point = (self.count, x, y)
        self.last = point
        self.recent.append(x)
        if self.first is None:
            self.first = point
        self.partial.add(point)
        if self.partial.count == self.width:
            done = self.partial.points()
            self.buckets.append(done)
            self.summaries.append(self.partial)
            self.kept += len(done)
            self.partial = _Summary()
        self._fit()
        return True

    def takes_late(self, x: float) -> bool:
        """Whether ``x``, before the last point's, came late (see :func:`came_late`)."""
        return came_late(self.recent, x)

    def with_late(self, x: float, y: float | None) -> Trace:
        """This trace with the late point at its place among the points shown."""
        xs, ys = self.points()
        at = bisect.bisect(xs, x)
        trace = Trace(self.budget)
        for kept_x, kept_y in zip(xs[:at] + [x] + xs[at:], ys[:at] + [y] + ys[at:]):
            trace.add(kept_x, kept_y)
        return trace

    def before(self, x: float) -> Trace:
        """A trace of this one's points before ``x``, as drawn now, to go on from ``x``."""
        trace = Trace(self.budget)
        for kept_x, kept_y in zip(*self.points()):
            if kept_x < x:
                trace.add(kept_x, kept_y)
        return trace

    def shrink(self, budget: int) -> None:
        """Shows at most ``budget`` points from now on (a window that gained traces shares its points)."""
        if budget < self.budget:
            self.budget = budget
            self._fit()

    def _fit(self) -> None:
        while self.kept + 5 > self.budget and len(self) > self.budget and self.buckets:
            self._merge()

    def _merge(self) -> None:
        """Merges neighbouring buckets: twice the width, half the buckets."""
        summaries = self.summaries
        if len(summaries) % 2:  # the odd one out is a part of a bucket at the new width
            odd = summaries.pop()
            odd.merge(self.partial)
            self.partial = odd
        self.buckets, self.summaries = [], []
        for first, second in zip(summaries[::2], summaries[1::2]):
            first.merge(second)
            self.buckets.append(first.points())
            self.summaries.append(first)
        self.kept = sum(len(b) for b in self.buckets)
        self.width *= 2

    def __len__(self) -> int:
        """The number of points shown."""
        partial = self.partial.points()
        if self.first is None:
            return 0
        head = self.buckets[0][0] if self.buckets else partial[0]
        tail = partial[-1] if partial else self.buckets[-1][-1]
        return self.kept + len(partial) + (head != self.first) + (tail != self.last)

    def bucket_means(self) -> list[tuple[float, float | None, int]]:
        """Each bucket's (x, mean y, finite points), oldest first: what its raw points average, which
        the lowest and highest it shows do not (a noisy loss's mean 1.0 drew at 3.3 smoothed). The
        first and the last are placed at the first and the latest x, as the curve spans the run."""
        means = [part for summary in [*self.summaries, self.partial] for part in summary.means()]
        if means:
            means[0], means[-1] = (self.first[1], *means[0][1:]), (self.last[1], *means[-1][1:])
        return means

    def points(self) -> tuple[list, list]:
        """The x and y lists to draw (y is None at a gap)."""
        kept = [p for bucket in self.buckets for p in bucket] + self.partial.points()
        if self.first is not None:
            if kept[0] != self.first:
                kept.insert(0, self.first)
            if kept[-1] != self.last:
                kept.append(self.last)
        return [p[1] for p in kept], [p[2] for p in kept]


def float32_digits(values: list[float | None]) -> list[float | None]:
    """The values to send: each that a float32 holds exactly (what ``.item()`` of a float32
    tensor gives, most logged values) in the fewest digits that read back as that float32,
    the others to 15 significant digits (a scheduler's 0.0006000000000000001 shows as 0.0006,
    its hover too); whole numbers as they are. TensorBoard keeps every scalar as a float32; here the run log keeps
    the values as logged, and a loss curve's message is half as long (1,000 points: 17 KB of
    values become 9), so the delivery's pacing by size holds it back half as long."""
    exact = np.array(values, dtype=np.float64)  # None: NaN
    with np.errstate(over="ignore"):
        narrow = exact.astype(np.float32)
    out = list(values)
    fractions = np.isfinite(exact)
    counts = fractions & (np.abs(np.where(fractions, exact, 0)) < 2.0**53)
    fractions[counts] = np.floor(exact[counts]) != exact[counts]  # a count of 64,000,192 as it is
    for i in np.flatnonzero((narrow == exact) & fractions).tolist():
        out[i] = float(str(narrow[i]))  # numpy writes a float32 in its fewest digits
    for i in np.flatnonzero((narrow != exact) & fractions).tolist():
        out[i] = float(f"{out[i]:.15g}")  # float64 arithmetic's last-digit noise
    return out


def smoothed(xs: list[float], ys: list[float | None], weight: float, points: int = SMOOTHED_POINTS,
             counts: list[int] | None = None) -> tuple[list[float], list[float | None]]:
    """The curve as TensorBoard's scalars view smooths it: an exponential moving average with
    ``weight`` (0 to 1) given to the past, debiased at the start; a gap stays a gap, a constant
    curve stays as it is; six significant digits. ``counts``: each y the mean of that many raw
    points (a long curve's buckets), taken in as they would be one by one. Thinned to
    ``points`` evenly spread points, the last and the gaps kept."""
    finite = [y for y in ys if y is not None]
    if not finite or all(y == finite[0] for y in finite):
        out = list(ys)
    else:
        out, last, count = [], 0.0, 0
        for y, n in zip(ys, counts or [1] * len(ys)):
            if y is None:
                out.append(None)
                continue
            decay = weight ** n
            last, count = last * decay + (1 - decay) * y, count + n
            out.append(float(f"{last / (1 - weight ** count):.6g}"))  # as drawn: half the digits to send
    if len(xs) <= points:
        return list(xs), out
    step = len(xs) / points
    gaps = {i for i, y in enumerate(out) if y is None}
    keep = sorted({int(i * step) for i in range(points)} | {len(xs) - 1} | gaps)
    return [xs[i] for i in keep], [out[i] for i in keep]


class Window:
    """One pane: a line plot, distributions, PR curves, an embedding, an image grid or a text; ``message(env)``
    is its full content.

    ``changed`` says the server's copy may differ from this one; ``sent`` that it was delivered
    at least once (so the server should have it). Only the window flips them: ``apply`` and
    ``mark_changed`` make it changed, ``mark_sent`` says the server took its message.
    """

    def __init__(self, name: str, points_per_trace: int, run_dir: Path | None = None) -> None:
        self.name = name
        self.run_dir = run_dir  # where the image files an entry names are
        self.kind = "line"
        self.opts: dict[str, Any] = {}
        self.traces: dict[str, Trace] = {}
        self.budget = points_per_trace
        self.content: Any = None  # the latest image or text entry
        self.order = Order.METRICS  # its place on the page
        self.grid: heatmap.Grid | None = None  # in the heatmap form: every trace, steps in columns
        self.lines: heatmap.Grid | None = None  # ... and in finer columns, for the largest layers' lines
        self.history: list[dict[str, Any]] = []  # the kept image entries of a history pane, oldest first
        self.curves: list[dict[str, Any]] = []  # a PR-curve pane's latest entries, oldest first
        self.texts: list[dict[str, Any]] = []  # a text pane's latest entries when it keeps several, oldest first
        self.trials: dict[str, dict[str, Any]] = {}  # an hparams pane's latest entry per trial
        self.on_server: list[int] | None = None  # the grid numbers the server's history pane holds
        self._sending: list[int] = []  # what the server's pane holds once the latest messages are taken
        self._taken_back: set[int] = set()  # the grid numbers at or after an x the run went back to
        self.changed = True
        self.sent = False
        self.version = 0  # counts the entries taken in: a send marks the window sent as of the version it took

    def apply(self, entry: dict[str, Any]) -> list[Backwards]:
        """Takes in a run-log entry; returns the points that went back in x (none, mostly)."""
        went_back = []
        kind = entry["k"]
        if kind == "points":
            self.kind = "line"
            x = entry["x"]
            values = entry["y"]
            if self.grid is not None:  # every trace in the grids; only the total as a line of its own
                self.grid.add(x, values)
                self.lines.add(x, values)
                values = {"total": values["total"]} if "total" in values else {}
            for name, y in values.items():
                trace = self.traces.get(name)
                if trace is None:
                    trace = self._new_trace(name)
                y = None if y is None else float(y)
                if not trace.add(x, y):
                    if trace.takes_late(x):
                        self.traces[name] = trace.with_late(x, y)
                        continue
                    went_back.append(Backwards(self.name, name, x, trace.last[1]))
                    self.traces[name] = trace = trace.before(x)
                    trace.add(x, y)
        elif kind == "image" and "file" in entry:  # a grid in the image store: a pane to step through
            self.kind = "history"
            if self.history and entry["x"] < self.history[-1]["x"]:  # as a curve goes on from an earlier x
                went_back.append(Backwards(self.name, None, entry["x"], self.history[-1]["x"]))
                self._taken_back.update(e["n"] for e in self.history if e["x"] >= entry["x"])
                self.history = [e for e in self.history if e["x"] < entry["x"]]
            self.history.append(entry)
            stays = set(kept([e["n"] for e in self.history]))
            self.history = [e for e in self.history if e["n"] in stays]
        elif kind == "histogram":  # percentile bands as traces, and the latest histogram
            bands = distribution.bands(entry)
            if 2 * sum(entry["counts"]) < entry["n"]:  # most values in no bin: not finite (a diverged model's)
                bands = dict.fromkeys(self.traces or distribution.BANDS)  # a gap, as a NaN loss is
            self.kind, self.content = "distribution", entry
            for name, y in bands.items():
                trace = self.traces.get(name) or self._new_trace(name)
                if trace.last is not None and trace.last[1] == entry["x"]:  # one histogram a step: a resumed
                    self.traces[name] = trace = trace.before(entry["x"])    # run's takes the killed run's place
                if not trace.add(entry["x"], y):
                    went_back.append(Backwards(self.name, name, entry["x"], trace.last[1]))
                    self.traces[name] = trace = trace.before(entry["x"])
                    trace.add(entry["x"], y)
        elif kind == "hparams":  # a text pane: the hparams and metrics, a row per trial when several
            trials = self.trials
            if entry.get("trial") is None:  # a run's own
                own = next((t for t in reversed(trials.values())
                            if t.get("trial") is None and joins(entry, t["hparams"])), None)
                if own is not None:  # its metrics given later, with some of its hparams or none
                    entry = {**entry, "hparams": own["hparams"],
                             "metrics": {**(own.get("metrics") or {}), **entry["metrics"]}}
                # Updated (a second phase's train_start, adding or changing some): the row of the set it covers.
                given = entry["hparams"].keys()
                for key in [k for k, t in trials.items() if t.get("trial") is None and t["hparams"].keys() <= given]:
                    del trials[key]
            trials[entry.get("trial") or json.dumps(entry["hparams"], sort_keys=True, default=str)] = entry
            if len(trials) > TRIALS:
                del trials[next(iter(trials))]
            self.kind, self.content = "text", {**entry, "html": _hparams_html(list(trials.values()))}
        elif kind == "pr_curve":  # the latest steps' curves; in a comparison, each run's latest
            self.kind = "pr_curve"
            if "run" in entry:
                self.curves = [*(c for c in self.curves if c.get("run") != entry["run"]), entry]
            else:
                self.curves = [*self.curves[1 - pr_curve.CURVES:], entry]
        elif kind == "text" and entry.get("keep", 1) > 1:  # the latest few, newest first
            self.texts = [*self.texts[1 - entry["keep"]:], entry]
            html = "".join(f"<h5>step {t['x']:g}</h5>{t['html']}" for t in reversed(self.texts))
            self.kind, self.content = "text", {**entry, "html": html}
        elif kind in ("image", "text", "embedding", "mesh", "heatmap"):  # the latest
            self.kind, self.content = kind, entry
        elif kind == "layout":
            self.opts.update(entry["opts"])
            self.order = entry.get("order", self.order)
            if self.opts.get("form") == "heatmap" and self.grid is None:
                lines = 1 + self.opts.get("top", 5)  # the total's and the largest layers'
                self.grid = heatmap.Grid()
                self.lines = heatmap.Grid(columns=max(10, min(self.budget, WINDOW_POINTS // lines) // 2))
                # Drawn as lines until now (a model that grew past their number): its steps so far, as shown
                steps: dict[float, dict[str, float | None]] = {}
                for name, trace in self.traces.items():
                    for x, y in zip(*trace.points()):
                        steps.setdefault(x, {})[name] = y
                for x in sorted(steps):
                    self.grid.add(x, steps[x])
                    self.lines.add(x, steps[x])
        self.changed = True
        self.version += 1
        return went_back

    def _new_trace(self, name: str) -> Trace:
        if self.grid is not None:  # the total, beside the grid
            trace = self.traces[name] = Trace(self.budget)
            return trace
        share = max(_MIN_TRACE_POINTS, min(self.budget, WINDOW_POINTS // (len(self.traces) + 1)))
        for trace in self.traces.values():
            trace.shrink(share)
        trace = self.traces[name] = Trace(share)
        return trace

    def mark_sent(self, version: int | None = None) -> None:
        """The server took this window's messages made at ``version`` (None: the latest); a
        window that changed since they were made stays changed."""
        self.changed, self.sent = version is not None and version != self.version, True
        if self.kind == "history":
            self.on_server = self._sending

    def mark_skipped(self, version: int | None = None) -> None:
        """Nothing to send until this window changes again (it is empty, or its message is not JSON)."""
        self.changed = version is not None and version != self.version

    def mark_changed(self) -> None:
        """The server's copy may differ from this one (it lost the env, or went down)."""
        self.changed, self.on_server = True, None

    def mark_closed(self) -> None:
        """The server no longer has this window (it was closed to be placed again)."""
        self.changed, self.sent, self.on_server = True, False, None

    def must_reopen(self) -> bool:
        """The server's history pane cannot take the new grids as appends: it must be closed and
        created again with the kept grids only.

        A pane grows by appends while it holds at most ``PANE_GRIDS`` grids: it keeps showing
        grids the store has since thinned out, until that bound, rather than be created again
        for each grid (every grid after the ``KEEP``-th thins the store). Not replaced in place:
        an open page keeps its slider's place, and a pane created again with fewer grids than
        that place breaks Visdom's page (it reads a grid that is not there).
        """
        if self.kind != "history":
            return False
        held = self.on_server  # None: unknown (the server went down, or lost the env)
        if not held:
            return held is None
        new = [e["n"] for e in self.history if e["n"] > held[-1]]
        return self.history[-1]["n"] < held[-1] or len(held) + len(new) > PANE_GRIDS or \
            not self._taken_back.isdisjoint(held)

    @property
    def nonfinite(self) -> int:
        if self.grid is not None:
            return self.grid.nonfinite
        return sum(t.nonfinite for t in self.traces.values())

    def gaps_said(self) -> str | None:
        """The legend's count of gaps: the steps a window's ``steps_of`` trace lost (GradNorms'
        ``total``: a step a GradScaler skipped), else the points of every trace."""
        counted = self.traces.get(self.opts.get("steps_of", ""))
        if counted is not None:
            return f"{counted.nonfinite} step{'s' * (counted.nonfinite != 1)} not finite, shown as gaps" \
                if counted.nonfinite else None
        return f"{self.nonfinite} non-finite shown as gaps" if self.nonfinite else None

    def messages(self, env: str) -> list[tuple[str, dict[str, Any]]]:
        """The requests that make the server's window equal this one (none: nothing to show).

        A history pane is created with its first grid and appended to one grid a request; only
        the grids newer than the server's latest are sent, unless the pane must be created
        again (``must_reopen``).
        """
        if self.kind != "history":
            message = self.message(env)
            return [] if message is None else [message]
        held = self.on_server
        fresh = not held or self.must_reopen()
        requests, self._sending = [], [] if fresh else list(held)
        for entry in self.history if fresh else [e for e in self.history if e["n"] > held[-1]]:
            try:
                png = on_slider_pane((self.run_dir / entry["file"]).read_bytes())
            except (OSError, TypeError):  # removed since (a resumed run, a copied log): not shown
                continue
            content = {"content": {"src": "data:image/png;base64," + base64.b64encode(png).decode()},
                       "type": "image_history"}
            if not self._sending:
                width, height = _png_size(png)
                # Visdom fits the image to the pane's whole width or height, the slider drawn over it:
                # as wide as the pane, it leaves the slider its own room below.
                pane_width = max(width + _IMAGE_MARGIN, _SLIDER_WIDTH)
                opts = {**self.opts, "title": self.opts.get("title", self.name), "show_slider": True,
                        "width": pane_width, "height": math.ceil((pane_width + 1) * height / width) + _SLIDER}
                requests.append(("events", {"data": [content], "win": self.name, "eid": env, "opts": opts}))
            else:
                requests.append(("update", {"data": [content], "win": self.name, "eid": env}))
            self._sending.append(entry["n"])
        return requests

    def message(self, env: str) -> tuple[str, dict[str, Any]] | None:
        """The request that makes the server's line, distribution, PR-curve, embedding, mesh,
        heatmap, image or text window equal this one (None: nothing)."""
        title = self.opts.get("title", self.name)
        if self.kind == "line":
            if self.grid is not None and self.grid.traces:
                return self._heatmap_message(env, title)
            if not self.traces:
                return None
            smoothing, styles = self.opts.get("smoothing", 0), self._run_styles()
            data = [line for i, name in enumerate(self.traces) for line in (
                    self._smoothed(name, i, smoothing, styles.get(name)) if smoothing and self._smooths(name)
                    else (self._line(name, styles.get(name)),))]
            # No title inside the plot: the pane's header shows it, where Visdom's toolbar would cover it.
            layout = {"showlegend": True, "margin": {"l": 60, "r": 30, "t": 30, "b": 50},
                      "xaxis": {"title": self.opts.get("xlabel", "step")},
                      "yaxis": {"title": self.opts.get("ylabel", ""), "type": self.opts.get("ytype", "linear")}}
            if said := self.gaps_said():  # in the legend: the title stays the name, which compare views match on
                layout["legend"] = {"title": {"text": said}}
            flat = _one_value([line["y"] for line in data])
            if flat and layout["yaxis"]["type"] == "linear":  # Plotly's range is the value +- 1: 0.001 read as 0
                layout["yaxis"]["range"] = [flat - abs(flat) / 2, flat + abs(flat) / 2]
            opts = {**self.opts, "title": title}
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout, "opts": opts}
        if self.kind == "distribution":
            if not self.traces:
                return None
            data, layout = distribution.figure({name: trace.points() for name, trace in self.traces.items()},
                                               self.content, self.opts)
            opts = {"height": 480, **self.opts, "title": title}
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout, "opts": opts}
        if self.kind == "pr_curve":
            data, layout = pr_curve.figure(self.curves)
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout,
                              "opts": {**self.opts, "title": title}}
        if self.kind in ("embedding", "mesh"):
            data, layout = (embedding if self.kind == "embedding" else mesh).figure(self.content)
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout,
                              "opts": {"height": 480, "width": 560, **self.opts, "title": title}}
        if self.kind == "heatmap":
            data, layout = matrix.figure(self.content, self.opts)
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout,
                              "opts": {"height": 480, "width": 560, **self.opts, "title": title}}
        if self.kind == "image":
            png = self.content["png"]
            width, height = _png_size(base64.b64decode(png[:32]))
            # The step is drawn in the grid: Visdom would show a caption twice, above and below it.
            content = {"src": "data:image/png;base64," + png}
            # Room for the pane's own margins: sized to the PNG alone, Visdom cuts off its last rows.
            opts = {**self.opts, "title": title, "width": width + _IMAGE_MARGIN, "height": height + _IMAGE_MARGIN}
            return "events", {"data": [{"content": content, "type": "image"}], "win": self.name,
                              "eid": env, "opts": opts}
        if self.kind == "text":
            return "events", {"data": [{"content": self.content["html"], "type": "text"}],
                              "win": self.name, "eid": env, "opts": {**self.opts, "title": title}}
        return None


    def _line(self, name: str, style: tuple[tuple[int, int, int], str] | None = None) -> dict[str, Any]:
        xs, ys = self.traces[name].points()
        ys = float32_digits(ys)
        if name in self.opts.get("markers", ()):  # marks on steps (a Guard's), not a curve
            return {"x": xs, "y": ys, "name": name, "type": "scatter", "mode": "markers",
                    "marker": {"symbol": "x", "size": 12, "color": "#d62728"}}
        color = None if style is None else "rgb({},{},{})".format(*style[0])  # a comparison's: a colour a run
        line = {"x": xs, "y": ys, "name": name, "type": "scatter", **_drawn(ys, color)}
        if style is not None:
            line["line"] = {"color": color, "dash": style[1]}
        return line

    def _smooths(self, name: str) -> bool:
        """Whether trace ``name`` is drawn smoothed: every one, or those named in opts ``smoothed``
        (Scalars' ``train``; in a comparison, each run's ``train``)."""
        only = self.opts.get("smoothed")
        if only is None:
            return True
        run = next((label for label in self.opts.get("runs") or () if name.startswith(label + "/")), None)
        return (name if run is None else name[len(run) + 1:]) in only

    def _run_styles(self) -> dict[str, tuple[tuple[int, int, int], str]]:
        """In a comparison (opts ``runs``, the runs' labels), each trace's colour, its run's, and
        dash, one for each of a run's traces (train, validation); elsewhere none."""
        runs, at, kinds = self.opts.get("runs") or (), {}, {}
        for name in self.traces:
            run = next((i for i, label in enumerate(runs) if name.startswith(label + "/")), None)
            if run is not None:
                at[name] = (run, kinds.setdefault(name[len(runs[run]) + 1:], len(kinds)))
        # More traces a run than dashes (a multi-task model's twelve) and few runs: a colour a trace, a dash a run
        swap = len(kinds) > len(_DASHES) and len(runs) <= len(_DASHES)
        colours = len(kinds) if swap else len(runs)
        return {name: (_colour(kind if swap else run, colours), _DASHES[(run if swap else kind) % len(_DASHES)])
                for name, (run, kind) in at.items()}

    def _smoothed(self, name: str, index: int, weight: float,
                  style: tuple[tuple[int, int, int], str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trace smoothed as TensorBoard smooths it, in the legend, and the trace itself faint
        behind it, in its colour (read back by name, the trace itself comes last)."""
        line = self._line(name)
        if line["mode"] == "markers":  # marks, not a curve
            return (line,)
        (red, green, blue), dash = style or (_COLORS[index % len(_COLORS)], None)
        # Many traces share the smoothed curves' points as they share the window's (40: 75 each).
        points = min(SMOOTHED_POINTS, max(_MIN_TRACE_POINTS, SMOOTHED_WINDOW_POINTS // len(self.traces)))
        means = self.traces[name].bucket_means()  # of the raw points: not of the extremes shown
        xs, ys = smoothed([m[0] for m in means], [m[1] for m in means], weight, points, [m[2] for m in means])
        at = f"{self.opts.get('xlabel') or 'x'} %{{x}}"  # the hover names the step (or epoch) as TensorBoard's does
        # Faint by its colour: Visdom sets every line's opacity to 1 while its own smoothing is off.
        faint = f"rgba({red},{green},{blue},0.3)"
        return ({"x": xs, "y": ys, "name": name, "type": "scatter", **_drawn(ys, f"rgb({red},{green},{blue})"),
                 "legendgroup": name, "line": {"color": f"rgb({red},{green},{blue})", **({"dash": dash} if dash else {})},
                 "hovertemplate": f"{at}: %{{y:.6g}} smoothed"},
                {**line, **_drawn(line["y"], faint), "legendgroup": name, "showlegend": False,
                 "hovertemplate": f"{at}: %{{y:.6g}}", "line": {"color": faint}})

    def _heatmap_message(self, env: str, title: str) -> tuple[str, dict[str, Any]]:
        grid = self.grid
        lines = [self._line("total")] if "total" in self.traces else []
        for name in heatmap.top(grid.latest, self.opts.get("top", 5)):
            xs, ys = self.lines.points(name)
            lines.append({"x": xs, "y": float32_digits(ys), "name": name, "type": "scatter", **_drawn(ys)})
        data, layout = heatmap.figure(grid, lines, self.opts)
        if said := self.gaps_said():
            layout["legend"]["title"] = {"text": said}
        opts = {"height": 640, "width": 720, **self.opts, "title": title}
        return "events", {"data": data, "win": self.name, "eid": env, "layout": layout, "opts": opts}


def joins(entry: dict[str, Any], hparams: dict[str, Any]) -> bool:
    """Whether hparams ``entry`` adds metrics to a run's record of ``hparams``: the run's own (no
    trial), with metrics, given some of its hyper-parameters or none (``log.hparams({}, {"test_acc":
    acc})`` after training, in this process or another)."""
    return entry.get("trial") is None and bool(entry.get("metrics")) and bool(hparams) and \
        entry["hparams"].items() <= hparams.items()


class Windows:
    """All windows of one env, in the order they first appeared."""

    def __init__(self, points_per_trace: int = 1000, run_dir: str | Path | None = None) -> None:
        self.points_per_trace = checks.integer("points_per_trace", points_per_trace, minimum=10)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.by_name: dict[str, Window] = {}
        self.unreadable = 0  # entries skipped: another version's (a newer one's kind or fields)
        self.first_unreadable: str | None = None
        self.kinds: dict[str, str] = {}  # each window's first kind of entry ("points", "image", ...)
        self.mixed: dict[str, tuple[str, str]] = {}  # windows given another kind since: (first, other)

    def apply(self, entries: Iterable[dict[str, Any]]) -> list[Backwards]:
        """Takes in run-log entries; returns the points that went back in x. An entry it cannot
        read (another version of monitor wrote it) is counted in ``unreadable`` and skipped."""
        went_back = []
        for entry in entries:
            name = entry.get("win")
            if name is None:
                continue  # the run header
            kind = entry["k"]
            if kind != "layout" and self.kinds.setdefault(name, kind) != kind and name not in self.mixed:
                self.mixed[name] = (self.kinds[name], kind)  # one pane shows one kind: log.scalar, then log.images
            window = self.by_name.get(name)
            new = window is None
            if new:
                window = self.by_name[name] = Window(name, self.points_per_trace, self.run_dir)
            try:
                went_back += window.apply(entry)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
                if new:
                    del self.by_name[name]  # no empty pane for it
                self.unreadable += 1
                self.first_unreadable = self.first_unreadable or \
                    f"a {entry.get('k')!r} entry of window {name!r}: {type(error).__name__}: {error}"[:300]
        return went_back

    def unread(self, path: str | Path, header: dict[str, Any] | None) -> str | None:
        """What to say of the entries of log ``path`` that could not be read, if any."""
        if not self.unreadable:
            return None
        written = header.get("format", 0) if isinstance(header, dict) else 0
        newer = f"; it was written by a newer monitor (run log format {written}, this one reads up to " \
                f"{FORMAT}): upgrade monitor to see them" if isinstance(written, int) and written > FORMAT else \
                " (written by another version of monitor?)"
        return f"{self.unreadable} entr{'y' if self.unreadable == 1 else 'ies'} of {path} could not be read and " \
               f"{'is' if self.unreadable == 1 else 'are'} not shown, the first {self.first_unreadable}{newer}"

    def changed(self) -> list[Window]:
        """The windows to send, in their order on the page."""
        return sorted((w for w in self.by_name.values() if w.changed), key=lambda w: w.order)

    def mark_all_changed(self) -> None:
        for window in self.by_name.values():
            window.mark_changed()


_IMAGE_MARGIN = 32  # pixels
PANE_GRIDS = 2 * (KEEP + 1)  # grids a history pane on the server holds at most
_SLIDER = 92  # pixels: a history pane's title bar and slider, the grid centred between (twice the 45 they take)
_SLIDER_WIDTH = 320  # pixels: a history pane is at least this wide, for its slider to be usable


METRIC_DIGITS = 6  # a metric's significant digits in a table (a mean of float32 values: 1.33475914001465)


def _hparams_html(trials: list[dict[str, Any]]) -> str:
    """One trial: its hparams and metrics as two tables of name and value. Several (one writer's
    ``add_hparams`` per trial, as in TensorBoard's HPARAMS table): a row each, oldest first, the
    first column its run (``run_name``, else the time of the call, as TensorBoard names its run)."""
    if len(trials) == 1:
        def table(rows: dict[str, Any], digits: int) -> str:
            cells = "".join(f"<tr><td><b>{escape(str(k))}</b></td><td>{escape(_value(v, digits))}</td></tr>"
                            for k, v in rows.items())
            return f"{TABLE}{cells}</table>"

        (entry,) = trials
        run = f" of run {escape(entry['trial'])}" if entry.get("trial") else ""
        metrics = f"<h4>Metrics</h4>{table(entry['metrics'], METRIC_DIGITS)}" if entry["metrics"] else ""
        return f"<h4>Hyper-parameters{run}</h4>{table(entry['hparams'], 12)}{metrics}"
    hparams = list(dict.fromkeys(k for trial in trials for k in trial["hparams"]))
    metrics = list(dict.fromkeys(k for trial in trials for k in trial["metrics"]))
    named = any(trial.get("trial") for trial in trials)
    head = "<th>run</th>" * named + "".join(f"<th>{escape(str(name))}</th>" for name in hparams + metrics)
    rows = "".join("<tr>" + f"<td>{escape(str(trial.get('trial') or '-'))}</td>" * named
                   + "".join(f"<td>{escape(_value(trial[part].get(name, '-'), digits))}</td>"
                             for part, names, digits in (("hparams", hparams, 12), ("metrics", metrics, METRIC_DIGITS))
                             for name in names)
                   + "</tr>" for trial in trials)
    return f"<h4>Trials ({len(trials)})</h4>{TABLE}<tr>{head}</tr>{rows}</table>"


def _value(value: Any, digits: int = 12) -> str:
    """A table's value; a float to ``digits`` significant digits, without arithmetic's last-digit
    noise (``0.1 * 3`` shows as 0.3), or one a float32 holds in its fewest digits (a float32 tensor's
    0.7, read as 0.699999988079071); a whole number without ``.0``, as a page shows a number
    (a metric ``best_epoch`` of 4, which the run log holds as 4.0)."""
    if not isinstance(value, float):
        return str(value)
    short = float32_digits([value])[0]
    if digits < 12 and value.is_integer() and abs(value) < 1e15:  # a count: whole
        return str(int(value))
    if digits < 12:
        rounded = f"{value:.{digits}g}"
        if float(rounded) != value and len(rounded.split("e")[0].strip("-").replace(".", "").strip("0")) < digits:
            return _value(value, 12)  # the digits left out made it: an energy ratio of 1.000000000123, not 1
        if float(rounded) != value and abs(value) >= 10 ** digits:
            return rounded  # 6.53461e+08: rounded, not a whole number 653461000
    text = repr(float(f"{value:.{digits}g}") if digits < 12 or short == value else short)
    return text[:-2] if text.endswith(".0") else text


def _one_value(series: list[list]) -> float | None:
    """The one value every finite point of the curves has (a constant learning rate), else None."""
    one = None
    for ys in series:
        for y in ys:
            if y is not None and math.isfinite(y):
                if one is None:
                    one = y
                elif y != one:  # a curve that changes: at once, most often
                    return None
    return one


def _drawn(ys: list, color: str | None = None) -> dict[str, Any]:
    """A curve's Plotly mode and markers: a line, with a dot (in ``color``, the line's) on each
    finite point that has no finite neighbour (a line of one point is not drawn: a first
    validation, a test accuracy logged once, one after a NaN, an episode's return logged at the
    few updates that ended one)."""
    finite = np.isfinite(np.array(ys, dtype=np.float64))  # None: NaN
    alone = finite & ~np.r_[False, finite[:-1]] & ~np.r_[finite[1:], False]
    # A marker line is what Visdom's smoothing button (a pane's "~") writes to: without one (Plotly
    # drops an empty one) the page fails.
    marker: dict[str, Any] = {"line": {"width": 0}}
    if not alone.any():
        return {"mode": "lines", "marker": marker}
    if color is not None:
        marker["color"] = color
    if not (alone == finite).all():  # dots on the lone points only; every finite point alone (one): all
        marker["size"] = np.where(alone, 6, 0).tolist()
    return {"mode": "lines+markers", "marker": marker}


def on_slider_pane(png: bytes) -> bytes:
    """A grid as a history pane shows it: one narrower than the pane's slider centred on white as
    wide as that, so that Visdom, which fits an image to the pane's width, does not blow it up."""
    width = _png_size(png)[0]
    if width >= _SLIDER_WIDTH - _IMAGE_MARGIN:
        return png
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(io.BytesIO(png)) as grid:
        if getattr(grid, "is_animated", False) or grid.mode not in ("L", "RGB"):  # a video's frames: as they are
            return png
        wide = Image.new(grid.mode, (_SLIDER_WIDTH - _IMAGE_MARGIN, grid.height), "white")
        left = (wide.width - width) // 2
        wide.paste(grid, (left, 0))
    said = PngInfo()
    said.add_text("grid", f"{left},{width}")  # where the grid is: its left column and width
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG", compress_level=1, pnginfo=said)
    return buffer.getvalue()


def _png_size(png: bytes) -> tuple[int, int]:
    """A PNG's width and height, from its header (its first 24 bytes)."""
    return struct.unpack(">II", png[16:24])

