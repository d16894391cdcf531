"""Distributions over time: tensors binned on their own device, shown as TensorBoard shows them.

    edges, counts, n = binned([p.grad for p in model.parameters()], bins=30)   # device tensors, nothing read
    bands({"edges": [0, 1, 2], "counts": [3, 1], "n": 4})   # {"min": 0.0, ..., "median": 0.67, ..., "max": 2.0}

A histogram entry of the run log holds the bins that have values (``edges`` one longer than
``counts``) and ``n``, the number of values given (those outside the edges or not finite are
not in a bin). A window of histograms draws, over the steps, the bands between the percentiles
TensorBoard's distributions view draws (0, 7, 16, 31, 50, 69, 84, 93, 100), as line traces
thinned like any other, so the window stays within its budget however long the run; below
them, the latest histogram as bars.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from monitor.norms import stored_values

BANDS = {"min": 0.0, "7%": 0.07, "16%": 0.16, "31%": 0.31, "median": 0.5, "69%": 0.69, "84%": 0.84,
         "93%": 0.93, "max": 1.0}


def binned(tensors: Sequence[torch.Tensor], bins: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Bin edges and counts of all the values of ``tensors``, computed on their device (no read),
    and how many values there are.

    ``bins`` is a number of equal bins over the finite values' range (one unit wide around a
    constant, as ``numpy.histogram`` does), or the edges themselves (1-d, increasing). A value
    is in bin i when ``edges[i] <= value < edges[i + 1]``, the last bin closed on the right, as
    in ``numpy.histogram``; values outside the edges and non-finite values are in none. A sparse
    tensor (``nn.Embedding(sparse=True)``'s gradient) gives the values it stores; a complex one, its
    real and imaginary parts.
    """
    device = tensors[0].device
    given = isinstance(bins, torch.Tensor)
    # With given edges, values are compared in float64, as numpy compares them (where the device has it).
    wide = given and device.type != "mps" or any(t.dtype == torch.float64 for t in tensors)
    dtype = torch.float64 if wide else torch.float32
    tensors = [t for t in (_real(stored_values(t.detach())) for t in tensors) if t.numel()]  # one float copy at a time
    n = sum(t.numel() for t in tensors)
    if given:
        edges = _on(bins, device, dtype)
    elif not tensors:
        edges = torch.linspace(-0.5, 0.5, bins + 1, dtype=dtype, device=device)
    else:
        lows, highs = [], []
        for tensor in tensors:
            flat = tensor.reshape(-1).to(dtype)
            finite = torch.isfinite(flat)
            lows.append(torch.where(finite, flat, math.inf).amin())
            highs.append(torch.where(finite, flat, -math.inf).amax())
        low, high = torch.stack(lows).amin(), torch.stack(highs).amax()
        same = low == high
        low, high = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
        steps = torch.linspace(0, 1, bins + 1, dtype=dtype, device=device)
        edges = low * (1 - steps) + high * steps  # not low + (high - low) * steps: that overflows a wide range
        edges[-1] = high
    count = edges.numel() - 1
    counts = torch.zeros(count + 1, dtype=torch.int64, device=device)  # the last: values in no bin
    for tensor in tensors:
        flat = tensor.reshape(-1).to(dtype)
        index = torch.bucketize(flat, edges, right=True) - 1
        index = torch.where(index == count, count - 1, index)  # the last edge closes the last bin
        inside = (flat >= edges[0]) & (flat <= edges[-1])  # False for NaN
        index = torch.where(inside, index, count)
        counts.scatter_add_(0, index, torch.ones_like(index))
    return edges, counts[:count], n


def _real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


_EDGES: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _on(edges: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CPU ``edges`` on ``device``: copied there once per tensor, device and dtype, not at every call
    (a copy from pageable memory waits for the device)."""
    if device.type == "cpu":
        return edges.to(dtype)
    key = (id(edges), device, dtype)
    cached = _EDGES.get(key)
    if cached is None or cached[0] is not edges:
        while len(_EDGES) >= 16:  # edges made afresh at every call are copied at every call
            del _EDGES[next(iter(_EDGES))]
        source = edges.to(dtype).pin_memory() if device.type == "cuda" else edges.to(dtype)
        cached = _EDGES[key] = (edges, source.to(device, non_blocking=True))
    return cached[1]


def trimmed(edges: Sequence[float], counts: Sequence[int]) -> tuple[list[float], list[int]]:
    """Only the bins from the first to the last with values (none when no bin has one)."""
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return [], []
    first, last = used[0], used[-1]
    return [float(e) for e in edges[first:last + 2]], [int(c) for c in counts[first:last + 1]]


def bands(entry: Mapping[str, Any]) -> dict[str, float]:
    """The percentiles of a histogram entry (linear within a bin), by band name; none when it is empty."""
    edges, counts = entry["edges"], entry["counts"]
    total = sum(counts)
    if not total:
        return {}
    values, below, i = {}, 0, 0
    for name, share in BANDS.items():
        target = share * total
        while i < len(counts) - 1 and below + counts[i] < target:
            below += counts[i]
            i += 1
        inside = (target - below) / counts[i] if counts[i] else 0.0
        values[name] = edges[i] + min(max(inside, 0.0), 1.0) * (edges[i + 1] - edges[i])
    return values


_MOST_BARS = 200  # even bins drawn as they are, up to this many: a message stays small


def evenly(edges: list[float], counts: list[int], bins: int = 30) -> tuple[list[float], list[float]]:
    """The histogram drawn over even bins: uneven ones (TensorBoard's default) are spread over
    ``bins`` in proportion to their overlap, as TensorBoard draws its histograms; even ones as
    they are, or merged into ``_MOST_BARS`` when there are more."""
    if not counts:
        return edges, counts
    widths = [b - a for a, b in zip(edges, edges[1:])]
    low, high = edges[0], edges[-1]
    if max(widths) - min(widths) <= 1e-6 * (high - low):
        if len(counts) <= _MOST_BARS:
            return edges, counts
        bins = _MOST_BARS
    step = (high - low) / bins
    spread = [0.0] * bins
    for a, b, count in zip(edges, edges[1:], counts):
        if not count:
            continue
        for k in range(min(int((a - low) / step), bins - 1), min(int((b - low) / step), bins - 1) + 1):
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
        trace = {"x": xs, "y": ys, "name": name, "type": "scatter", "mode": "lines", "showlegend": False,
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
    caption = f"latest histogram, step {latest['x']:g}" + (f" ({outside} values in no bin)" if outside else "")
    layout = {"showlegend": False, "margin": {"l": 60, "r": 30, "t": 30, "b": 50},
              "xaxis": {"title": opts.get("xlabel", "step"), "anchor": "y"},
              "yaxis": {"title": opts.get("ylabel", "value"), "domain": [0.45, 1]},
              "xaxis2": {"title": caption, "anchor": "y2"},
              "yaxis2": {"title": "count", "domain": [0, 0.3]}}
    return data, layout
