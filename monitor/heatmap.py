"""The heatmap form of a line window with many traces: traces x steps, and a few of them as lines.

A model with 160 layers makes a grad-norm window of 160 curves: unreadable, and slow for a
browser to redraw. In the heatmap form (``form="heatmap"`` in a window's layout) the pane shows
every trace as a row of a heatmap over the steps, on a log colour scale, and above it the
``total`` and the ``top`` traces largest at the latest step as lines.

The heatmap's columns stay within a cell budget however long the run: up to it, a column is a
step; beyond, neighbouring columns merge, and a cell shows the highest value of its steps (an
exploding layer is never averaged away). The lines are the window's usual traces, thinned as
in any line window, extremes kept.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

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
    largest), which costs a few comparisons per trace and step.
    """

    def __init__(self, cells: int = HEATMAP_CELLS) -> None:
        self.cells = cells
        self.traces: dict[str, None] = {}  # every trace seen, in order
        self.width = 1  # steps per column
        self.xs: list[float] = []  # each column's first x
        self.lows: list[dict[str, tuple[float, float]]] = []  # per column: trace -> (y, x) of its lowest
        self.highs: list[dict[str, tuple[float, float]]] = []
        self.counts: list[int] = []  # steps in each column
        self.first: dict[str, tuple[float, float]] = {}  # trace -> (x, y) of its first and latest finite point
        self.latest: dict[str, tuple[float, float]] = {}
        self.nonfinite = 0
        self._log_columns: list[list[float | None]] = []  # log10 of each full column's highs, in traces' order

    @property
    def limit(self) -> int:
        """The columns this grid may hold, given how many traces it has."""
        return max(_MIN_COLUMNS, min(_MAX_COLUMNS, self.cells // max(1, len(self.traces))))

    def add(self, x: float, values: Mapping[str, float | None]) -> None:
        """Takes in one step: a value (None where not finite) for some or all traces."""
        if not self.counts or self.counts[-1] >= self.width:
            self.xs.append(x)
            self.lows.append({})
            self.highs.append({})
            self.counts.append(0)
        self.counts[-1] += 1
        lows, highs, latest, first = self.lows[-1], self.highs[-1], self.latest, self.first
        for name, y in values.items():
            if y is None or not math.isfinite(y):
                self.nonfinite += 1
                if name not in self.traces:
                    self.traces[name] = None
                continue
            point = (y, x)
            low = lows.get(name)
            if low is None:
                lows[name] = highs[name] = point
                if name not in first:
                    first[name] = (x, y)
                    self.traces[name] = None
            elif y < low[0]:
                lows[name] = point
            elif y > highs[name][0]:
                highs[name] = point
            latest[name] = (x, y)
        while len(self.xs) > self.limit:
            self._merge()

    def log_rows(self, names: list[str]) -> list[tuple[float | None, ...]]:
        """For each of ``names``, log10 of its highest value in each column (None: none positive).

        A full column's logarithms are computed once (until columns merge or traces are added).
        """
        cached = self._log_columns
        if cached and len(cached[0]) != len(names):
            cached.clear()
        while len(cached) < len(self.highs) - 1:
            cached.append(_log_column(self.highs[len(cached)], names))
        columns = cached + [_log_column(self.highs[-1], names)] if self.highs else []
        return list(zip(*columns)) if columns else [() for _ in names]

    def points(self, name: str) -> tuple[list[float], list[float]]:
        """The trace as a curve: its lowest and highest point in each column, its first and latest."""
        kept = {(x, y) for column in (*self.lows, *self.highs) if (point := column.get(name)) for y, x in (point,)}
        kept.update(p for p in (self.first.get(name), self.latest.get(name)) if p is not None)
        ordered = sorted(kept)
        return [p[0] for p in ordered], [p[1] for p in ordered]

    def _merge(self) -> None:
        """Merges neighbouring columns: twice the steps, half the columns."""
        xs, lows, highs, counts = [], [], [], []
        for i in range(0, len(self.xs), 2):
            low, high, count = dict(self.lows[i]), dict(self.highs[i]), self.counts[i]
            if i + 1 < len(self.xs):
                for name, point in self.lows[i + 1].items():
                    if name not in low or point[0] < low[name][0]:
                        low[name] = point
                for name, point in self.highs[i + 1].items():
                    if name not in high or point[0] > high[name][0]:
                        high[name] = point
                count += self.counts[i + 1]
            xs.append(self.xs[i])
            lows.append(low)
            highs.append(high)
            counts.append(count)
        self.xs, self.lows, self.highs, self.counts = xs, lows, highs, counts
        self.width *= 2
        self._log_columns.clear()


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


def _log_column(highs: Mapping[str, tuple[float, float]], names: list[str]) -> list[float | None]:
    """log10 of each trace's highest value in a column, to 3 decimals (None: absent or not positive)."""
    column = []
    for name in names:
        point = highs.get(name)
        column.append(round(math.log10(point[0]), 3) if point is not None and point[0] > 0 else None)
    return column
