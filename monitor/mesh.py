"""Meshes and point clouds (``SummaryWriter.add_mesh``): the values a run log keeps, and the pane.

    vertices, faces, colors = drawn(vertices, faces, colors)   # numpy in, lists out: the sink's side
    data, layout = figure(entry)                               # Plotly's mesh3d, or scatter3d for points

A mesh of at most ``SHOWN`` vertices is kept and drawn whole; a larger one is kept as a point
cloud of ``SHOWN`` of its vertices, evenly spread (its faces would name vertices left out), so
the pane's message stays within a window's budget.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

SHOWN = 20_000  # vertices in the run log and the pane


def drawn(vertices: Any, faces: Any = None, colors: Any = None
          ) -> tuple[list[list[float]], list[list[int]] | None, list[list[int]] | None]:
    """One mesh as lists: vertices (N x 3 floats, six significant digits of the largest), faces (F x 3 vertex
    indices) and colours (N x 3, 0-255), the latter two None where not given or not kept."""
    points = np.asarray(vertices, dtype=np.float64)
    if not np.isfinite(points).all():
        raise ValueError(f"vertices must be finite numbers, got {int((~np.isfinite(points)).sum())} NaN or infinite")
    if len(points) > SHOWN:
        kept = np.linspace(0, len(points) - 1, SHOWN).round().astype(int)
        points, faces = points[kept], None
        colors = None if colors is None else np.asarray(colors)[kept]
    rgb = None if colors is None else np.clip(np.asarray(colors, dtype=np.float64), 0, 255).round().astype(int).tolist()
    triangles = None if faces is None else np.asarray(faces, dtype=np.int64)
    if triangles is not None and triangles.size and not 0 <= triangles.min() <= triangles.max() < len(points):
        raise ValueError(f"faces must hold vertex indices from 0 to {len(points) - 1}, got "
                         f"{triangles.min()} to {triangles.max()}")
    triangles = None if triangles is None else triangles.tolist()
    largest = float(np.abs(points).max()) if points.size else 0.0
    digits = 5 - math.floor(math.log10(largest)) if largest > 0 else 0  # six significant digits of the largest
    return np.round(points, digits).tolist(), triangles, rgb


def figure(entry: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Plotly traces and layout: the entry's mesh (or its points) in 3-D, equal scales on the axes."""
    xs, ys, zs = (list(axis) for axis in zip(*entry["vertices"])) if entry["vertices"] else ([], [], [])
    colors = entry.get("colors")
    shades = None if colors is None else [f"rgb({r},{g},{b})" for r, g, b in colors]
    if entry.get("faces"):
        i, j, k = (list(corner) for corner in zip(*entry["faces"]))
        trace = {"type": "mesh3d", "x": xs, "y": ys, "z": zs, "i": i, "j": j, "k": k, "flatshading": True}
        if shades is None:
            trace["color"] = "#1f77b4"
        else:
            trace["vertexcolor"] = shades
    else:
        trace = {"type": "scatter3d", "mode": "markers", "x": xs, "y": ys, "z": zs,
                 "marker": {"size": 2, "color": shades or "#1f77b4"}}
    layout = {"margin": {"l": 0, "r": 0, "t": 30, "b": 0}, "showlegend": False,
              "scene": {"aspectmode": "data"}}
    return [trace], layout
