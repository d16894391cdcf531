"""Embeddings: many vectors projected on their first three principal components, and the pane.

    points, explained = projected(vectors)             # numpy, off the training thread
    data, layout = figure(entry)                       # a 3-D scatter, a colour per label

What TensorBoard's projector opens with (PCA, three components): the run log keeps every
point's projection (six significant digits of the largest) and label; the pane shows at most
``SHOWN`` points, evenly spread, and labels of at most ``LABEL_CHARS`` characters, so its message
stays within a window's budget (about 300 KB). The projection costs about N x D x min(N, D)
multiply-adds: 0.04 s for 50,000 vectors of 64, about 2 s for 20,000 of 2,048.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

SHOWN = 3000  # points in the pane
COLOURED = 20  # labels drawn as traces of their own (a colour each); more share one trace
LABEL_CHARS = 40  # a label's characters shown on hover


def projected(vectors: Any) -> tuple[list[list[float]], list[float]]:
    """Each row of ``vectors`` (N x D) on the first three principal components, and the share of
    the variance each explains. Fewer than three dimensions or rows give zeros for the rest."""
    matrix = np.asarray(vectors)
    if not np.isfinite(matrix).all():
        raise ValueError(f"mat must hold finite numbers, got {int((~np.isfinite(matrix)).sum())} NaN or infinite")
    centred = matrix.astype(np.float64) - matrix.mean(axis=0, dtype=np.float64)
    scale = float(np.abs(centred).max()) or 1.0
    centred = (centred / scale).astype(np.float32)  # directions as they are; float32 sums: half the time
    rows, columns = centred.shape
    if rows >= columns:  # the D x D covariance: its eigenvectors are the components
        variance, vectors_of = np.linalg.eigh((centred.T @ centred).astype(np.float64))
        top = np.argsort(variance)[::-1][:3]
        points = centred.astype(np.float64) @ vectors_of[:, top]
    else:  # fewer vectors than dimensions: the N x N Gram matrix gives the projections directly
        variance, vectors_of = np.linalg.eigh((centred @ centred.T).astype(np.float64))
        top = np.argsort(variance)[::-1][:3]
        points = vectors_of[:, top] * np.sqrt(np.clip(variance[top], 0, None))
    variance = np.clip(variance, 0, None)
    total = variance.sum()
    explained = (variance[top] / total if total > 0 else np.zeros(len(top))).tolist()
    padding = 3 - points.shape[1]
    if padding:
        points = np.pad(points, ((0, 0), (0, padding)))
        explained += [0.0] * padding
    points *= scale
    largest = float(np.abs(points).max())
    digits = 5 - math.floor(math.log10(largest)) if largest > 0 else 0  # six significant digits of the largest
    return np.round(points, digits).tolist(), explained


def _label_order(label: str) -> tuple:
    """Numbers first, by value, then names alphabetically."""
    try:
        return 0, float(label), ""
    except ValueError:
        return 1, 0.0, label


def figure(entry: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plotly traces and layout: the entry's points in 3-D, a trace per label (beyond ``COLOURED``
    labels, the most common ones of those on more than one point, the rest in one trace
    ``other``), each point's label (or its ``hover`` text) on hover."""
    points, labels, hover = entry["points"], entry.get("labels"), entry.get("hover")
    shown = np.linspace(0, len(points) - 1, min(len(points), SHOWN)).round().astype(int).tolist() if points else []
    groups: dict[str, list[int]] = {}
    for i in shown:
        groups.setdefault("points" if labels is None else _short(labels[i]), []).append(i)
    other: list[int] = []
    if len(groups) > COLOURED:  # the most common labels a colour each, the rest one trace (100 classes' CIFAR)
        # ... of those that label more than one point: words, each its own label, are one trace
        common = [name for name in sorted(groups, key=lambda name: -len(groups[name]))[:COLOURED - 1]
                  if len(groups[name]) > 1]
        other = sorted(i for name, rows in groups.items() if name not in common for i in rows)
        groups = {name: groups[name] for name in common}
    groups = dict(sorted(groups.items(), key=lambda group: _label_order(group[0])))  # the legend: 0, 1, 2, ... 10
    if other:
        groups[f"{'other (' if groups else '('}{len({labels[i] for i in other})} labels)"] = other
    data = []
    for name, rows in groups.items():
        trace = {"type": "scatter3d", "mode": "markers", "name": name, "marker": {"size": 3},
                 "x": [points[i][0] for i in rows], "y": [points[i][1] for i in rows],
                 "z": [points[i][2] for i in rows], "hoverinfo": "name"}
        # Each point's own text where the trace's name does not say it
        texts = hover if hover is not None else labels if len(groups) == 1 or rows is other else None
        if texts is not None:
            trace.update(text=[_short(texts[i]) for i in rows], hoverinfo="text")
        data.append(trace)
    axes = {f"{axis}axis": {"title": f"PC{n} ({share:.1%})"}
            for n, (axis, share) in enumerate(zip("xyz", entry["explained"]), 1)}
    note = "" if len(shown) == len(points) else f", {len(shown)} of {len(points)} shown"
    layout = {"showlegend": len(data) > 1, "margin": {"l": 0, "r": 0, "t": 30, "b": 0}, "scene": axes,
              "annotations": [{"text": f"step {entry['x']:g}: PCA of {len(points)} vectors{note}", "showarrow": False,
                               "xref": "paper", "yref": "paper", "x": 0, "y": 0, "xanchor": "left",
                               "yanchor": "bottom", "font": {"size": 11}}]}
    return data, layout


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"
