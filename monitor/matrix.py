"""A matrix pane (a confusion matrix, attention weights): the latest one logged, as a heatmap.

    monitor.log.heatmap("confusion", epoch, counts, rows=classes, columns=classes)
    data, layout = figure(entry, opts)                                  # Plotly, for Visdom

Row 0 is drawn at the top, as a matrix is read; a matrix of at most ``LABELLED`` cells has
each cell's value written in it. Non-finite values are gaps.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

LABELLED = 400  # cells, 20 x 20: more are too small to read their numbers


def figure(entry: Mapping[str, Any], opts: Mapping[str, Any]) -> tuple[list, dict]:
    """Plotly data and layout of a ``heatmap`` run-log entry; ``opts``' xlabel and ylabel name the axes."""
    z = [[v if math.isfinite(v) else None for v in row] for row in entry["z"]]
    rows = _distinct(entry.get("rows") or [str(i) for i in range(len(z))])
    columns = _distinct(entry.get("columns") or [str(j) for j in range(len(z[0]))])
    finite = [v for row in z for v in row if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    heatmap = {"type": "heatmap", "z": z, "x": columns, "y": rows, "colorscale": "Viridis",
               "hovertemplate": "%{y}, %{x}: %{z:.6g}<extra></extra>"}
    x = entry["x"]
    step = f"step {int(x) if float(x).is_integer() else x}"
    xlabel = opts.get("xlabel")
    layout = {"margin": {"l": 90, "r": 30, "t": 30, "b": 70},
              "xaxis": {"title": f"{xlabel} ({step})" if xlabel else step, "type": "category"},
              "yaxis": {"title": opts.get("ylabel", ""), "type": "category", "autorange": "reversed"}}
    if len(z) * len(z[0]) <= LABELLED:
        middle = (low + high) / 2
        layout["annotations"] = [
            {"x": column, "y": row, "text": f"{value:.3g}", "showarrow": False,
             "font": {"color": "white" if value < middle else "black"}}  # Viridis: dark low, light high
            for row, values in zip(rows, z) for column, value in zip(columns, values) if value is not None]
    return [heatmap], layout


def _distinct(labels: list[str]) -> list[str]:
    """The labels as Plotly can place them: each one a category of its own, a repeated one (a
    token twice in a sentence) made distinct by zero-width spaces, which show nothing; a blank
    one (a space token) shown quoted."""
    seen: dict[str, int] = {}
    shown = []
    for label in labels:
        label = label if label.strip() else repr(label)
        seen[label] = seen.get(label, -1) + 1
        shown.append(label + "\u200b" * seen[label])
    return shown
