"""Distributions over time: histograms (binned by :mod:`monitor.binning`) shown as TensorBoard shows them.

    edges, counts, n = binned([p.grad for p in model.parameters()], bins=30)   # monitor.binning, on the device
    bands({"edges": [0, 1, 2], "counts": [3, 1], "n": 4})   # {"min": 0.0, ..., "median": 0.67, ..., "max": 2.0}

A histogram entry of the run log holds the bins that have values (``edges`` one longer than
``counts``) and ``n``, the number of values given (those outside the edges or not finite are
not in a bin). A window of histograms draws, over the steps, the bands between the percentiles
TensorBoard's distributions view draws (0, 6.68, 15.87, 30.85, 50, 69.15, 84.13, 93.32, 100: a
normal distribution's -inf, -1.5, -1, -0.5, 0, ... sigma, named 7%, 16%, ...), as line traces
thinned like any other, so the window stays within its budget however long the run; below
them, the latest histogram as bars.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

BANDS = {"min": 0.0, "7%": 0.0668, "16%": 0.1587, "31%": 0.3085, "median": 0.5, "69%": 0.6915, "84%": 0.8413,
         "93%": 0.9332, "max": 1.0}  # TensorBoard's: the normal distribution's -inf, -1.5, -1, -0.5, 0, ... sigma


def trimmed(edges: Sequence[float], counts: Sequence[int]) -> tuple[list[float], list[int]]:
    """Only the bins from the first to the last with values (none when no bin has one)."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return [], []
    first, last = used[0], used[-1]
    return [float(e) for e in edges[first:last + 2]], [int(c) for c in counts[first:last + 1]]


def bands(entry: Mapping[str, Any]) -> dict[str, float]:
    """The percentiles of a histogram entry by band name, as TensorBoard's distributions view
    takes them: linear within the first bin whose values reach past the share, a share that
    falls between two bins taken at the start of the next; none when the entry is empty."""
    edges, counts = entry["edges"], entry["counts"]
    total = sum(counts)
    if not total:
        return {}
    values, reached, i = {}, 0, -1  # reached: the values in the bins up to i
    for name, share in BANDS.items():
        target = share * total
        while i < len(counts) - 1 and reached <= target:
            i += 1
            reached += counts[i]
        if reached <= target:  # past every bin: the highest value
            values[name] = edges[-1]
            continue
        before = reached - counts[i]
        values[name] = edges[i] + (target - before) / counts[i] * (edges[i + 1] - edges[i])
    return values


_MOST_BARS = 200  # even bins drawn as they are, up to this many: a message stays small


def evenly(edges: list[float], counts: list[int], bins: int = 30) -> tuple[list[float], list[float]]:
    """The histogram drawn over even bins: uneven ones (TensorBoard's default) are spread over
    ``bins`` in proportion to their overlap, as TensorBoard draws its histograms; even ones as
    they are, or merged into ``_MOST_BARS`` when there are more."""
    if not counts:
        return edges, counts
    low, high = edges[0], edges[-1]
    if low == high:  # one value: a bar a hundredth of its size wide, to be seen
        half = abs(low) / 200 or 0.005
        return [low - half, high + half], counts
    widths = [b - a for a, b in zip(edges, edges[1:])]
    if max(widths) - min(widths) <= 1e-6 * (high - low):
        if len(counts) <= _MOST_BARS:
            return edges, counts
        bins = _MOST_BARS
    step = (high - low) / bins
    spread = [0.0] * bins
    for a, b, count in zip(edges, edges[1:], counts):
        if not count:
            continue
        first, last = (min(int((v - low) / step), bins - 1) for v in (a, b))
        if a == b:  # a bin of one value (the lowest or the highest)
            spread[first] += count
            continue
        for k in range(first, last + 1):
            overlap = min(b, low + (k + 1) * step) - max(a, low + k * step)
            spread[k] += count * max(overlap, 0.0) / (b - a)
    return [low + k * step for k in range(bins)] + [high], [round(c, 3) for c in spread]


_BAND_COLOUR = "rgba(31, 119, 180, {})"


def figure(lines: dict[str, tuple[list, list]], latest: Mapping[str, Any], opts: Mapping[str, Any]
           ) -> tuple[list, dict]:
    """Plotly data and layout: the percentile bands over the steps, the latest histogram below."""
    data = []
    names = [name for name in BANDS if name in lines]
    for i, name in enumerate(names):
        xs, ys = lines[name]
        middle = abs(BANDS[name] - 0.5)  # bands nearer the median are darker
        trace = {"x": xs, "y": ys, "name": name, "type": "scatter", "showlegend": False,
                 "mode": "lines" if len(xs) > 1 else "markers",  # a line of one step is not drawn
                 "marker": {"line": {"width": 0}},  # Visdom's smoothing button writes there (monitor.windows)
                 "line": {"width": 2 if name == "median" else 0.5, "color": _BAND_COLOUR.format(1.0)},
                 "hovertemplate": f"{name}: %{{y:.4g}}<br>step %{{x}}<extra></extra>"}
        if i:
            trace.update(fill="tonexty", fillcolor=_BAND_COLOUR.format(round(0.55 - 0.8 * middle, 2)))
        data.append(trace)
    edges, counts = evenly(latest["edges"], latest["counts"])
    data.append({"type": "bar", "x": [(a + b) / 2 for a, b in zip(edges, edges[1:])], "y": counts,
                 "width": [b - a for a, b in zip(edges, edges[1:])], "xaxis": "x2", "yaxis": "y2",
                 "name": f"step {latest['x']:g}", "showlegend": False, "marker": {"color": _BAND_COLOUR.format(0.8)},
                 "hovertemplate": "%{x:.4g}: %{y}<extra></extra>"})
    outside = latest["n"] - sum(latest["counts"])
    caption = f"latest histogram, step {latest['x']:g}" + (
        f" ({outside:,} of {latest['n']:,} values not finite or outside the bins)" if outside else "")
    layout = {"showlegend": False, "margin": {"l": 60, "r": 30, "t": 30, "b": 50},
              "xaxis": {"title": opts.get("xlabel", "step"), "anchor": "y"},
              "yaxis": {"title": opts.get("ylabel", "value"), "domain": [0.45, 1]},
              "xaxis2": {"title": caption, "anchor": "y2"},
              "yaxis2": {"title": "count", "domain": [0, 0.3]}}
    return data, layout
