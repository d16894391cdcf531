"""Embeddings: many vectors projected on their first three principal components, and the pane.

    points, explained = projected(vectors)             # numpy, off the training thread
    data, layout = figure(entry)                       # a 3-D scatter, a colour per label

What TensorBoard's projector opens with (PCA, three components): the run log keeps every
point's projection and label; the pane shows at most ``SHOWN`` of them, evenly spread, so its
message stays within a window's budget whatever the number of vectors.
"""
from __future__ import annotations

from typing import Any

import numpy as np

SHOWN = 3000  # points in the pane: about 150 KB of JSON with their labels
COLOURED = 20  # labels drawn as traces of their own (a colour each); more share one trace


def projected(vectors: Any) -> tuple[list[list[float]], list[float]]:
    """Each row of ``vectors`` (N x D) on the first three principal components, and the share of
    the variance each explains. Fewer than three dimensions or rows give zeros for the rest."""
    matrix = np.asarray(vectors, dtype=np.float64)
    centred = matrix - matrix.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:3].T
    variance = singular ** 2
    total = variance.sum()
    explained = (variance[:3] / total if total > 0 else np.zeros(min(3, len(variance)))).tolist()
    padding = 3 - points.shape[1]
    if padding:
        points = np.pad(points, ((0, 0), (0, padding)))
        explained += [0.0] * padding
    return np.round(points, 6).tolist(), explained


def figure(entry: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plotly traces and layout: the entry's points in 3-D, a trace per label (up to ``COLOURED``),
    each point's label on hover."""
    points, labels = entry["points"], entry.get("labels")
    shown = np.linspace(0, len(points) - 1, min(len(points), SHOWN)).round().astype(int).tolist() if points else []
    groups: dict[str, list[int]] = {}
    for i in shown:
        groups.setdefault("points" if labels is None else str(labels[i]), []).append(i)
    if len(groups) > COLOURED:
        groups = {"points": shown}
    data = []
    for name, rows in groups.items():
        data.append({"type": "scatter3d", "mode": "markers", "name": name, "marker": {"size": 3},
                     "x": [points[i][0] for i in rows], "y": [points[i][1] for i in rows],
                     "z": [points[i][2] for i in rows],
                     "text": None if labels is None else [str(labels[i]) for i in rows],
                     "hoverinfo": "text+name" if labels is not None else "x+y+z"})
    axes = {f"{axis}axis": {"title": f"PC{n} ({share:.0%})"}
            for n, (axis, share) in enumerate(zip("xyz", entry["explained"]), 1)}
    note = "" if len(shown) == len(points) else f", {len(shown)} of {len(points)} shown"
    layout = {"showlegend": len(data) > 1, "margin": {"l": 0, "r": 0, "t": 30, "b": 0}, "scene": axes,
              "annotations": [{"text": f"step {entry['x']:g}: PCA of {len(points)} vectors{note}", "showarrow": False,
                               "xref": "paper", "yref": "paper", "x": 0, "y": 0, "xanchor": "left",
                               "yanchor": "bottom", "font": {"size": 11}}]}
    return data, layout
