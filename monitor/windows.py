"""What each Visdom window should show, built from run-log entries and kept small.

A line window holds at most ``points_per_trace`` points per trace however long the run: when a
trace outgrows it, neighbouring buckets of points merge, each bucket keeping its lowest and
highest point (and a gap where a value was not finite). So the curve keeps its shape and its
extremes while the server's cost per update stays flat; full resolution stays in the run log.

Every update sends a window whole (Visdom's append costs the server ~10x more per point
than a replace, and a replace is idempotent, so a retry can never duplicate a point).
"""
from __future__ import annotations

import math
import struct
from typing import Any, Iterable

Point = tuple[float, Any]  # (x, y); y is None for a gap


class Trace:
    """One curve's points, thinned by min/max buckets to stay within ``budget`` points."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.width = 1  # raw points per bucket
        self.buckets: list[list[Point]] = []
        self.partial: list[Point] = []
        self.partial_count = 0  # raw points the partial bucket stands for
        self.count = 0  # raw points seen
        self.nonfinite = 0

    def add(self, x: float, y: float) -> None:
        self.count += 1
        if not math.isfinite(y):
            self.nonfinite += 1
            y = None
        self.partial.append((x, y))
        self.partial_count += 1
        if self.partial_count == self.width:
            self.buckets.append(_summarise(self.partial))
            self.partial, self.partial_count = [], 0
            if (len(self.buckets) + 1) * 3 > self.budget:  # a bucket keeps at most 3 points
                self._halve()

    def _halve(self) -> None:
        """Merges neighbouring buckets: twice the width, half the buckets."""
        odd = self.buckets.pop() if len(self.buckets) % 2 else None
        self.buckets = [_summarise(a + b) for a, b in zip(self.buckets[::2], self.buckets[1::2])]
        if odd is not None:  # half a bucket at the new width
            self.partial, self.partial_count = odd, self.width
        self.width *= 2

    def points(self) -> tuple[list, list]:
        """The x and y lists to draw (y is None at a gap)."""
        kept = [p for bucket in self.buckets for p in bucket] + _summarise(self.partial)
        return [p[0] for p in kept], [p[1] for p in kept]


def _summarise(points: list[Point]) -> list[Point]:
    """The lowest and highest point of a bucket, and its first gap, in x order."""
    if len(points) <= 2:
        return list(points)
    finite = [p for p in points if p[1] is not None]
    kept = []
    if finite:
        kept = [min(finite, key=lambda p: p[1]), max(finite, key=lambda p: p[1])]
    gap = next((p for p in points if p[1] is None), None)
    if gap is not None:
        kept.append(gap)
    return sorted(set(kept), key=lambda p: p[0]) if len(kept) > 1 else kept


class Window:
    """One pane: a line plot, an image grid or a text; ``message(env)`` is its full content."""

    def __init__(self, name: str, points_per_trace: int) -> None:
        self.name = name
        self.kind = "line"
        self.opts: dict[str, Any] = {}
        self.traces: dict[str, Trace] = {}
        self.budget = points_per_trace
        self.content: Any = None  # the latest image or text entry
        self.changed = True

    def apply(self, entry: dict[str, Any]) -> None:
        kind = entry["k"]
        if kind == "points":
            self.kind = "line"
            for name, y in entry["y"].items():
                trace = self.traces.get(name)
                if trace is None:
                    trace = self.traces[name] = Trace(self.budget)
                trace.add(entry["x"], float(y))
        elif kind in ("image", "text"):
            self.kind, self.content = kind, entry
        elif kind == "layout":
            self.opts.update(entry["opts"])
        self.changed = True

    @property
    def nonfinite(self) -> int:
        return sum(t.nonfinite for t in self.traces.values())

    def message(self, env: str) -> tuple[str, dict[str, Any]] | None:
        """The request that makes the server's window equal this one (None: nothing to show)."""
        title = self.opts.get("title", self.name)
        if self.kind == "line":
            if not self.traces:
                return None
            if self.nonfinite:
                title = f"{title} ({self.nonfinite} non-finite shown as gaps)"
            data = []
            for name, trace in self.traces.items():
                xs, ys = trace.points()
                data.append({"x": xs, "y": ys, "name": name, "type": "scatter", "mode": "lines"})
            layout = {"title": title, "showlegend": True, "margin": {"l": 60, "r": 30, "t": 50, "b": 50},
                      "xaxis": {"title": self.opts.get("xlabel", "step")},
                      "yaxis": {"title": self.opts.get("ylabel", ""), "type": self.opts.get("ytype", "linear")}}
            opts = {**self.opts, "title": title}
            return "events", {"data": data, "win": self.name, "eid": env, "layout": layout, "opts": opts}
        if self.kind == "image":
            png, x = self.content["png"], self.content["x"]
            width, height = _png_size(png)
            caption = f"{title}, step {_number(x)}"
            content = {"src": "data:image/png;base64," + png, "caption": caption}
            opts = {**self.opts, "title": title, "caption": caption, "width": width, "height": height}
            return "events", {"data": [{"content": content, "type": "image"}], "win": self.name,
                              "eid": env, "opts": opts}
        if self.kind == "text":
            return "events", {"data": [{"content": self.content["html"], "type": "text"}],
                              "win": self.name, "eid": env, "opts": {**self.opts, "title": title}}
        return None


class Windows:
    """All windows of one env, in the order they first appeared."""

    def __init__(self, points_per_trace: int = 1000) -> None:
        if isinstance(points_per_trace, bool) or not isinstance(points_per_trace, int) or points_per_trace < 10:
            raise ValueError(f"points_per_trace must be an int >= 10, got {points_per_trace!r}")
        self.points_per_trace = points_per_trace
        self.by_name: dict[str, Window] = {}

    def apply(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            name = entry.get("win")
            if name is None:
                continue  # the run header
            window = self.by_name.get(name)
            if window is None:
                window = self.by_name[name] = Window(name, self.points_per_trace)
            window.apply(entry)

    def changed(self) -> list[Window]:
        return [w for w in self.by_name.values() if w.changed]

    def mark_all_changed(self) -> None:
        for window in self.by_name.values():
            window.changed = True


def _png_size(png_base64: str) -> tuple[int, int]:
    import base64
    header = base64.b64decode(png_base64[:32])
    return struct.unpack(">II", header[16:24])


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
