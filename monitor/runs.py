"""Runs on disk: what each run log holds, for managing runs from the command line and Python.

    points = exported("runs/mnist")                   # {window: {trace: [(x, y), ...]}}, every point
    write_csv(points, sys.stdout)                     # window,trace,x,y

A run is its folder (``runs/ENV``, holding ``runlog.jsonl``) or the run log itself; the log
keeps every point at full resolution, whatever the dashboard shows.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import IO, Any, Iterable

from monitor.runlog import RunLog

Points = dict[str, dict[str, list[tuple[float, float]]]]


def run_log_of(run: str | os.PathLike) -> Path:
    """The run log of ``run`` (a run folder or a run log); ValueError naming what was looked for."""
    path = Path(run)
    if path.is_dir():
        path = path / RunLog.FILENAME
    if not path.is_file():
        raise ValueError(f"run must be a run folder holding {RunLog.FILENAME} or a run log, got {str(run)!r} "
                         f"(no {path})")
    return path


def exported(run: str | os.PathLike, windows: Iterable[str] | None = None) -> Points:
    """Every point of the run, in the order logged: ``{window: {trace: [(x, y), ...]}}``."""
    wanted = None if windows is None else set(windows)
    points: Points = {}
    for entry in RunLog.read(run_log_of(run)):
        if entry.get("k") != "points" or wanted is not None and entry["win"] not in wanted:
            continue
        traces = points.setdefault(entry["win"], {})
        for trace, y in entry["y"].items():
            traces.setdefault(trace, []).append((entry["x"], y))
    if wanted is not None and wanted - set(points):
        raise ValueError(f"windows must name windows of the run's points, got {sorted(wanted - set(points))}; "
                         f"it has {sorted(points)}")
    return points


def write_csv(points: Points, out: IO[str]) -> None:
    """One row per point: window, trace, x, y (non-finite values as nan, inf, -inf)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["window", "trace", "x", "y"])
    for window, traces in points.items():
        for trace, values in traces.items():
            for x, y in values:
                writer.writerow([window, trace, _number(x), _number(y)])


def write_json(points: Points, out: IO[str]) -> None:
    """``{window: {trace: {"x": [...], "y": [...]}}}``; non-finite values as null (strict JSON)."""
    shaped = {window: {trace: {"x": [x for x, _ in values],
                               "y": [y if math.isfinite(y) else None for _, y in values]}
                       for trace, values in traces.items()}
              for window, traces in points.items()}
    json.dump(shaped, out, allow_nan=False)
    out.write("\n")


def _number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
