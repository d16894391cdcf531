"""The heatmap form of a line window with many traces: traces x steps, and a few of them as lines.

A model with 160 layers makes a grad-norm window of 160 curves: unreadable, and slow for a
browser to redraw. In the heatmap form (``form="heatmap"`` in a window's layout) the pane shows
every trace as a row of a heatmap over the steps, on a log colour scale, and above it the
``total`` and the ``top`` traces largest at the latest step as lines.

The heatmap's columns stay within a cell budget however long the run: up to it, a column is a
step; beyond, neighbouring columns merge, and a cell shows the highest value of its steps (an
exploding layer is never averaged away). The lines come from a finer grid of their own, a
column per step up to half the window's points per trace, then thinned as in any line window,
extremes kept (from the heatmap's columns, 322 layers gave a layer's line 40 points in 300 steps).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

HEATMAP_CELLS = 10_000  # a heatmap's cells in all: 62 columns for 161 layers, a page redraw of ~150 ms
_MIN_COLUMNS = 20
_MAX_COLUMNS = 400


class Grid:
    """Traces x columns of steps, keeping each trace's lowest and highest point in every column.

        grid = Grid()
        grid.add(1, {"fc1": 0.5, "fc2": 0.1})
        grid.add(2, {"fc1": 0.7, "fc2": None})   # None: not finite, counted in grid.nonfinite
        grid.log_rows(["fc1"])                    # [(-0.301, -0.155)]: log10 of each column's highest
        grid.points("fc1")                        # ([1, 2], [0.5, 0.7]): a curve, extremes kept

    Up to ``limit`` columns a column is a step; beyond, neighbouring columns merge. One grid
    stands for all the traces of a window (a layer's curve is drawn from it when it is among the
    largest). A column holds an array per extreme, a trace's row in each: a step of 161 layers
    is a few array operations (on the sink's worker, whose time a Python-heavy loop shares).
    """

    def __init__(self, cells: int = HEATMAP_CELLS, columns: int | None = None) -> None:
        self.cells = cells
        self.columns = columns  # a fixed number of columns instead (the lines' grid: finer)
        self.traces: dict[str, int] = {}  # every trace seen, in order: its row
        self.width = 1  # steps per column
        self.xs: list[float] = []  # each column's first x
        self.counts: list[int] = []  # steps in each column
        self.nonfinite = 0
        self._latest_x = -math.inf
        # Per column: the lowest and highest value of each row, and the x of each (NaN: none yet).
        self._columns: list[list[np.ndarray]] = []  # [low y, low x, high y, high x]
        self._ends = np.full((4, 0), np.nan)  # per row: first x, first y, latest x, latest y
        self._names: tuple[str, ...] = ()  # the keys of the last add, and their rows
        self._rows = np.zeros(0, dtype=np.intp)
        self._log_columns: list[list[float | None]] = []  # log10 of each full column's highs in these rows:
        self._logged_rows: list[int] = []

    @property
    def limit(self) -> int:
        """The columns this grid may hold, given how many traces it has."""
        if self.columns is not None:
            return self.columns
        return max(_MIN_COLUMNS, min(_MAX_COLUMNS, self.cells // max(1, len(self.traces))))

    @property
    def first(self) -> dict[str, tuple[float, float]]:
        """Each trace's first finite point, (x, y)."""
        return self._points_at(0)

    @property
    def latest(self) -> dict[str, tuple[float, float]]:
        """Each trace's latest finite point, (x, y)."""
        return self._points_at(2)

    def add(self, x: float, values: Mapping[str, float | None]) -> None:
        """Takes in one step: a value (None where not finite) for some or all traces.

        A step at the latest step's x joins its column; one before it is left out, as a line
        window refuses it.
        """
        if x < self._latest_x:
            return
        again, self._latest_x = x == self._latest_x, x
        names = tuple(values)
        if names != self._names:
            self._names, self._rows = names, np.fromiter(map(self._row, names), dtype=np.intp, count=len(names))
        rows, ys = self._rows, np.array(list(values.values()), dtype=float)  # None: NaN
        finite = np.isfinite(ys)
        if not finite.all():
            self.nonfinite += len(ys) - int(np.count_nonzero(finite))
            rows, ys = rows[finite], ys[finite]
        if not self.counts or self.counts[-1] >= self.width and not again:
            self.xs.append(x)
            self._columns.append([np.full(self._ends.shape[1], np.nan) for _ in range(4)])
            self.counts.append(0)
        self.counts[-1] += 1
        low, low_x, high, high_x = self._columns[-1]
        for extreme, at, kept_instead in ((low, low_x, low[rows] <= ys), (high, high_x, high[rows] >= ys)):
            if not kept_instead.all():  # NaN (nothing yet) compares False: the point is taken
                taken = rows[~kept_instead]
                extreme[taken] = ys[~kept_instead]
                at[taken] = x
        ends = self._ends
        new = np.isnan(ends[0, rows])
        if new.any():
            ends[0, rows[new]] = x
            ends[1, rows[new]] = ys[new]
        ends[2, rows] = x
        ends[3, rows] = ys
        while len(self.xs) > self.limit:
            self._merge()

    def log_rows(self, names: list[str]) -> list[tuple[float | None, ...]]:
        """For each of ``names``, log10 of its highest value in each column (None: none positive).

        A full column's logarithms are computed once (until columns merge or traces are added).
        """
        rows = [self.traces[name] for name in names]
        cached = self._log_columns
        if rows != self._logged_rows:
            cached.clear()
            self._logged_rows = rows
        while len(cached) < len(self._columns) - 1:
            cached.append(_log_column(self._columns[len(cached)][2], rows))
        columns = cached + [_log_column(self._columns[-1][2], rows)] if self._columns else []
        return list(zip(*columns)) if columns else [() for _ in names]

    def points(self, name: str) -> tuple[list[float], list[float]]:
        """The trace as a curve: its lowest and highest point in each column, its first and latest."""
        row = self.traces[name]
        kept = {(_plain(x), y) for low, low_x, high, high_x in self._columns
                for y, x in ((low[row], low_x[row]), (high[row], high_x[row])) if y == y}
        kept.update((_plain(self._ends[i, row]), float(self._ends[i + 1, row])) for i in (0, 2)
                    if self._ends[i, row] == self._ends[i, row])
        ordered = sorted(kept)
        return [p[0] for p in ordered], [float(p[1]) for p in ordered]

    def _row(self, name: str) -> int:
        row = self.traces.get(name)
        if row is None:
            row = self.traces[name] = len(self.traces)
            if row == self._ends.shape[1]:  # room for more rows in every array: twice as many
                grow = max(8, row)
                self._ends = _padded(self._ends, grow)
                self._columns = [[_padded(array, grow) for array in column] for column in self._columns]
        return row

    def _points_at(self, i: int) -> dict[str, tuple[float, float]]:
        xs, ys = self._ends[i].tolist(), self._ends[i + 1].tolist()
        return {name: (_plain(xs[row]), ys[row]) for name, row in self.traces.items() if xs[row] == xs[row]}

    def _merge(self) -> None:
        """Merges neighbouring columns: twice the steps, half the columns."""
        columns, counts = [], []
        for i in range(0, len(self.xs), 2):
            if i + 1 == len(self.xs):
                columns.append(self._columns[i])
                counts.append(self.counts[i])
                continue
            (low, low_x, high, high_x), (low2, low2_x, high2, high2_x) = self._columns[i], self._columns[i + 1]
            lower = ~(low <= low2) & (low2 == low2)  # the second column's point, where it is lower
            higher = ~(high >= high2) & (high2 == high2)
            columns.append([np.where(lower, low2, low), np.where(lower, low2_x, low_x),
                            np.where(higher, high2, high), np.where(higher, high2_x, high_x)])
            counts.append(self.counts[i] + self.counts[i + 1])
        self.xs, self._columns, self.counts = self.xs[::2], columns, counts
        self.width *= 2
        self._log_columns.clear()


def _padded(array: np.ndarray, more: int) -> np.ndarray:
    """``array`` with ``more`` NaN rows (its last axis) after its own."""
    return np.concatenate([array, np.full((*array.shape[:-1], more), np.nan)], axis=-1)


def _plain(x: float) -> float:
    """An x as the loop gave it: a step number stays an int."""
    x = float(x)
    return int(x) if x.is_integer() else x


def figure(grid: Grid, lines: list[dict[str, Any]], opts: Mapping[str, Any]) -> tuple[list, dict]:
    """Plotly data and layout: the lines on top, the heatmap (log10 of the values) below them."""
    names = [name for name in grid.traces if name != "total"]
    xs = grid.xs
    z = grid.log_rows(names)
    finite = [v for row in z for v in row if v is not None]
    low, high = (math.floor(min(finite)), math.ceil(max(finite))) if finite else (0, 1)
    ticks = list(range(low, high + 1)) if high - low <= 12 else list(range(low, high + 1, (high - low) // 6 + 1))
    label = opts.get("ylabel", "")
    heatmap = {"type": "heatmap", "x": xs, "y": names, "z": z, "xaxis": "x", "yaxis": "y2",
               "colorscale": "Viridis", "zmin": low, "zmax": high, "name": "layers",
               "colorbar": {"title": {"text": "log10"}, "tickvals": ticks, "ticktext": [f"1e{t}" for t in ticks],
                            "len": 0.62, "y": 0, "yanchor": "bottom"},
               "hovertemplate": "%{y}<br>from step %{x}<br>highest: 10^%{z:.2f}<extra></extra>"}
    data = [{**line, "xaxis": "x", "yaxis": "y"} for line in lines] + [heatmap]
    layout = {"showlegend": True, "legend": {"y": 1, "yanchor": "top"},
              "margin": {"l": 140, "r": 30, "t": 30, "b": 50},
              "xaxis": {"title": opts.get("xlabel", "step"), "anchor": "y2"},
              "yaxis": {"title": label, "type": opts.get("ytype", "linear"), "domain": [0.7, 1]},
              "yaxis2": {"domain": [0, 0.64], "type": "category", "autorange": "reversed",
                         "title": f"{len(names)} layers"}}
    return data, layout


def top(latest: Mapping[str, tuple[float, float]], count: int) -> list[str]:
    """The ``count`` names whose latest point (x, y) is highest, ``total`` left out."""
    ranked = sorted((-point[1], name) for name, point in latest.items() if name != "total")
    return [name for _, name in ranked[:count]]


def _log_column(highs: np.ndarray, rows: list[int]) -> list[float | None]:
    """log10 of each row's highest value in a column, to 3 decimals (None: absent or not positive).

    In arrays: a column of 161 layers takes 13 us, against 67 a value at a time (a merge of
    columns recomputes them all).
    """
    values = highs[rows]
    positive = values > 0  # NaN (absent) is not
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = (np.rint(np.log10(np.where(positive, values, 1.0)) * 1000) / 1000).tolist()
    return [v if p else None for v, p in zip(logs, positive.tolist())]
