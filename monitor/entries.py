"""The run log's entries: the schema, and the one place that makes entries from records.

    {"k": "run", "env": "mnist", "run_id": "5f2a...", "time": 1764300000.0, "pid": 4242, "host": "gpu1", "format": 1,
     "server": "http://127.0.0.1:8097"}
    {"k": "layout", "win": "loss", "opts": {"xlabel": "step"}, "order": 10}
    {"k": "points", "win": "loss", "x": 12, "y": {"train": 0.53, "validation": NaN}}
    {"k": "image", "win": "inputs", "x": 50, "n": 1, "file": "images/5f2a.../inputs/0000001.png"}
    {"k": "image", "win": "inputs", "x": 50, "png": "<base64>"}       (without an image store)
    {"k": "text", "win": "summary", "x": 0, "html": "<pre>...</pre>"}
    {"k": "hparams", "win": "hparams", "x": 0, "hparams": {"lr": 0.1}, "metrics": {"accuracy": 0.91}}
    {"k": "end", "status": "crashed", "error": "RuntimeError: CUDA out of memory", "time": 1764300500.0, "step": 1200}
    {"k": "rest_of_step", "from": 48213}   (a checkpoint taken at byte 48213, in a batches loop)
    {"k": "continues", "from": 48213}      (its step's code is over: a run resumed from it goes on here)
    {"k": "histogram", "win": "weights", "x": 100, "edges": [-0.5, 0, 0.5], "counts": [40, 24], "n": 64}
                                           (as "e64" on disk where wide: see monitor.runlog)
    {"k": "pr_curve", "win": "pr/cat", "x": 3, "tp": [5, 4, 0], "fp": [5, 1, 0], "tn": [0, 4, 5], "fn": [0, 1, 5]}
    {"k": "heatmap", "win": "confusion", "x": 40, "z": [[9, 1], [2, 8]], "rows": ["cat", "dog"], "columns": null}
    {"k": "embedding", "win": "features", "x": 3, "points": [[0.1, 0.0, 0.2], ...], "explained": [0.5, 0.2, 0.1],
     "labels": ["cat", ...], "hover": null}

``read`` brings a record's values to the host (deferred values called, tensors read, labels
named), off the training thread; ``encode`` makes the entry of a record read so, encoding image
grids. A sink in a process of its own reads in the training process and encodes in its own,
which never imports torch. ``windows_after`` says which windows a part of a log wrote (what a
rewind takes off the dashboard); ``resumes_at`` where a rewind to a checkpoint cuts the log.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import socket
import time
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from monitor import checks
from monitor.distribution import trimmed
from monitor.imagestore import ImageStore
from monitor.imaging import display_values, encode_grid
from monitor.layer_sums import LayerNorms
from monitor.records import (Embedding, Histogram, Hparams, ImageGrid, Layout, Matrix, Mesh, Points, PrCurve,
                             RunEnd, StepMark, Text)
from monitor.runlog import FORMAT, HEAD


def header(env: str, run_id: str, pid: int | None = None, server: str | None = None) -> dict[str, Any]:
    """The first entry of a run's log: which run, where (``pid``: the training process, by default
    this one; ``server``: the dashboard it is sent to), since when."""
    entry = {"k": "run", "env": env, "run_id": run_id, "time": time.time(), "pid": pid or os.getpid(),
             "host": socket.gethostname(), "format": FORMAT}
    return entry if server is None else {**entry, "server": server}


def read(record: Points | ImageGrid | Text | Layout | Histogram | PrCurve | Embedding | Hparams | RunEnd
         ) -> Points | ImageGrid | Text | Layout | Histogram | PrCurve | Embedding | Hparams | RunEnd:
    """The record with plain values: functions called, tensors read (waiting for their device),
    numbers as int or float, trace names and captions as strings, pixels as uint8 display values.
    Runs off the training thread, where torch is; what it returns unpickles anywhere (without
    torch, or a class only the training script defines). Raises TypeError or ValueError."""
    if isinstance(record, (RunEnd, StepMark)):
        return record
    if type(record.window) is not str and isinstance(record.window, str):  # a str Enum, say
        record = record._replace(window=str.__str__(record.window))
    if isinstance(record, Layout):
        return record if _plain_json(record.opts) else record._replace(opts=json.loads(json.dumps(record.opts)))
    x = record.x
    if type(x) not in (int, float) or not math.isfinite(x):  # a numpy or other Real: plain JSON numbers
        record = record._replace(x=int(x) if isinstance(x, Integral) else float(checks.finite("x", x)))
    if isinstance(record, Points):
        if set(map(type, record.traces)) != _NAMES:
            record = record._replace(traces=tuple(map(str, record.traces)))
        values = record.values
        if type(values) is LayerNorms:
            scale = values.scale
            if set(map(type, values.norms)) <= _PLAIN and (scale is None or type(scale) is float):
                return record  # read: added up where the entry is made (encode)
            from monitor.norms import read as read_norms  # torch: device norms, read here

            if checks._is_tensor(scale):
                scale = scale.reshape(())  # a GradScaler's has one element
            norms = read_norms(values.norms if scale is None else [*values.norms, scale])  # one read of the device
            return record._replace(values=values._replace(norms=norms[:len(values.norms)],
                                                          scale=None if scale is None else float(norms[-1])))
        if callable(values):
            values = values()
            if type(values) is dict:  # values for some of the traces: the others have none at this x
                record = record._replace(traces=tuple(values))
                values = list(values.values())
        if checks._is_tensor(values):
            values = _on_host(values).tolist()
        elif type(values) not in (list, tuple) or not set(map(type, values)) <= _PLAIN:
            values = [_plain(record.traces, i, v) for i, v in enumerate(values)]
        return record if values is record.values else record._replace(values=values)
    if isinstance(record, ImageGrid):
        pixels = record.pixels() if callable(record.pixels) else record.pixels
        captions = None if record.captions is None else [str(c) for c in record.captions] or None  # none to show
        return record._replace(pixels=display_values(pixels, record.value_range), captions=captions, value_range=None)
    if isinstance(record, Histogram):
        edges, counts, n = record.values() if callable(record.values) else record.values
        edges, counts = (_on_host(v).tolist() if checks._is_tensor(v) else v for v in (edges, counts))
        return record._replace(values=(edges, counts, int(n)))
    if isinstance(record, PrCurve):
        counts = record.counts() if callable(record.counts) else record.counts
        counts = [_on_host(part).reshape(-1).tolist() if checks._is_tensor(part) else
                  part.tolist() if hasattr(part, "tolist") else part for part in counts]  # torch, numpy
        return record._replace(counts=tuple([_plain(_PR_KEYS, i, v) for v in part] for i, part in enumerate(counts)))
    if isinstance(record, Embedding):
        points, explained, labels, hover = record.values() if callable(record.values) else record.values
        texts = [None if part is None else [str(text) for text in part] for part in (labels, hover)]
        return record._replace(values=(points.tolist() if hasattr(points, "tolist") else points,
                                       [float(v) for v in explained], *texts))
    if isinstance(record, Mesh):
        return record._replace(values=record.values()) if callable(record.values) else record
    if isinstance(record, Matrix):
        values = record.values
        values = _on_host(values).tolist() if checks._is_tensor(values) else \
            values.tolist() if hasattr(values, "tolist") else [list(row) for row in values]  # numpy, or rows
        return record._replace(values=values)
    if isinstance(record, Text):
        html = record.html() if callable(record.html) else record.html
        if type(html) is not str and isinstance(html, str):
            html = str.__str__(html)
        return record if html is record.html else record._replace(html=html)
    if isinstance(record, Hparams):
        metrics = {str(k): float(_on_host(v).item() if checks._is_tensor(v) else v) for k, v in record.metrics.items()}
        hparams = record.hparams if _plain_json(record.hparams) else json.loads(json.dumps(record.hparams))
        return record._replace(metrics=metrics, hparams=hparams)
    return record


def with_scalars_read(records: list) -> list:
    """The records, with the device scalars they hold (a GPU step's loss, its gradient norms and
    scale) read in one copy per device for all of them; ``read`` does the rest, record by record.

    Read a record at a time, each cost the sink's forwarder a copy, a wait for the device and
    the GIL time of a dozen tensor calls, in the training process. Only 0-d floating-point
    tensors are read together; other values are left for ``read``. Raises what the read raises
    (a device gone): the caller then reads the records one by one.
    """
    held = []  # (position, the record's scalars) of each record holding a tensor
    for position, record in enumerate(records):
        if type(record) is Points:
            values = record.values
            if type(values) is LayerNorms:
                if type(values.norms[0] if values.norms else 0.0) in _PLAIN and type(values.scale) in _SCALES:
                    continue  # a CPU's, read already: a device leaves all its norms as tensors
                scalars = values.norms if values.scale is None else [*values.norms, values.scale]
            elif type(values) is tuple:
                scalars = values
            else:
                continue
            if not set(map(type, scalars)) <= _PLAIN:
                held.append((position, scalars))
    if not held:
        return records
    import torch  # a tensor is here: torch is

    by_device: dict[Any, dict[int, Any]] = {}  # each device's 0-d floating-point tensors, by id
    for _, scalars in held:
        for value in scalars:  # stacked, floats of any width are exact; an int or a bool is read alone
            if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
                by_device.setdefault(value.device, {})[id(value)] = value
    number_of: dict[int, float] = {}
    for tensors in by_device.values():
        number_of.update(zip(tensors, _on_host(torch.stack(list(tensors.values()))).tolist()))
    records = list(records)
    for position, scalars in held:
        plain = [value if type(value) in _PLAIN else number_of.get(id(value), value) for value in scalars]
        values = records[position].values
        if type(values) is LayerNorms:
            values = values._replace(norms=plain[:len(values.norms)],
                                     scale=None if values.scale is None else plain[-1])
        else:
            values = tuple(plain)
        records[position] = records[position]._replace(values=values)
    return records


def encode(record: Points | ImageGrid | Text | Layout | Histogram | PrCurve | Embedding | Hparams | RunEnd,
           images: ImageStore | None = None) -> dict[str, Any]:
    """The entry of a record: values read (``read``), images encoded (into ``images`` where
    given, else inline). Runs on the sink's worker.

    Checks again what the Log checked at the door (a record may be put on a sink directly, and
    a function left to the worker may return anything); raises TypeError or ValueError.
    """
    if isinstance(record, RunEnd):
        entry = {"k": "end", "status": record.status, "error": record.error, "time": time.time()}
        return entry if record.step is None else {**entry, "step": record.step}
    if isinstance(record, StepMark):
        return {"k": record.kind, "from": record.position}
    if not isinstance(record.window, str) or not record.window:
        raise TypeError(f"window must be a non-empty str, got {record.window!r}")
    if isinstance(record, Layout):
        json.dumps(record.opts, allow_nan=False)
        entry = {"k": "layout", "win": record.window, "opts": dict(record.opts)}
        return entry if record.order is None else {**entry, "order": record.order}
    record = read(record)
    x = record.x
    if isinstance(record, Points):
        values = record.values() if type(record.values) is LayerNorms else record.values
        if len(values) != len(record.traces):
            raise ValueError(f"{len(record.traces)} traces need as many values, got {len(values)}")
        if set(map(type, values)) == _FLOATS and set(map(type, record.traces)) == _NAMES:  # the usual record
            return {"k": "points", "win": record.window, "x": x, "y": dict(zip(record.traces, values))}
        for trace, value in zip(record.traces, values):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"the value of trace {trace!r} must be a number, got {value!r}")
        return {"k": "points", "win": record.window, "x": x, "y": dict(zip(record.traces, map(float, values)))}
    if isinstance(record, ImageGrid):
        png = encode_grid(record.pixels, record.captions, columns=record.columns, heading=f"step {_number(x)}",
                          fps=record.fps)
        if images is not None:
            n, file = images.add(record.window, png)
            return {"k": "image", "win": record.window, "x": x, "n": n, "file": file}
        return {"k": "image", "win": record.window, "x": x, "png": base64.b64encode(png).decode()}
    if isinstance(record, Hparams):
        metrics = {k: float(v) for k, v in record.metrics.items()}
        json.dumps(record.hparams)  # plain values only
        entry = {"k": "hparams", "win": record.window, "x": x, "hparams": dict(record.hparams), "metrics": metrics}
        return entry if record.trial is None else {**entry, "trial": record.trial}
    if isinstance(record, Histogram):
        edges, counts, n = record.values
        edges, counts = trimmed(edges, counts)
        return {"k": "histogram", "win": record.window, "x": x, "edges": edges, "counts": counts, "n": int(n)}
    if isinstance(record, PrCurve):
        if len(record.counts) not in (4, 6) or len({len(part) for part in record.counts}) != 1 \
                or len(record.counts[0]) < 2:
            raise ValueError(f"counts must be 4 lists (TP, FP, TN, FN), or 6 with precision and recall, of one "
                             f"value per threshold, at least 2, got {[len(part) for part in record.counts]}")
        for key, part in zip(_PR_KEYS, record.counts):  # a loop's own precision may be NaN (0 / 0): a gap
            if not all(isinstance(v, Real) and not isinstance(v, bool) and (math.isfinite(v) or key in _PR_KEYS[4:])
                       for v in part):
                raise TypeError(f"the {key} values must be finite numbers, got {list(part)[:5]}")
        return {"k": "pr_curve", "win": record.window, "x": x, **dict(zip(_PR_KEYS, map(list, record.counts)))}
    if isinstance(record, Embedding):
        points, explained, labels, hover = record.values
        if type(points) is not list or not all(type(p) is list and len(p) == 3 for p in points) \
                or len(explained) != 3:
            raise ValueError("an embedding needs a list of 3 coordinates per point and 3 shares of the variance")
        for name, texts in (("labels", labels), ("hover", hover)):
            if texts is not None and len(texts) != len(points):
                raise ValueError(f"{name} must have one text per point ({len(points)}), got {len(texts)}")
        return {"k": "embedding", "win": record.window, "x": x, "points": points, "explained": explained,
                "labels": labels, "hover": hover}
    if isinstance(record, Matrix):
        z = record.values
        if type(z) is not list or not z or not all(type(row) is list and len(row) == len(z[0]) for row in z) \
                or not z[0]:
            raise ValueError("a heatmap needs rows of numbers, as many in each, at least one")
        for value in (v for row in z for v in row):
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"a heatmap's values must be numbers, got {value!r}")
        z = [[float(v) for v in row] for row in z]
        for name, names, count in (("rows", record.rows, len(z)), ("columns", record.columns, len(z[0]))):
            if names is not None and len(names) != count:
                raise ValueError(f"{name} must name each of the {count} {name}, got {len(names)} names")
        return {"k": "heatmap", "win": record.window, "x": x, "z": z,
                "rows": None if record.rows is None else [str(n) for n in record.rows],
                "columns": None if record.columns is None else [str(n) for n in record.columns]}
    if isinstance(record, Mesh):
        vertices, faces, colors = record.values
        if type(vertices) is not list or not all(type(v) is list and len(v) == 3 for v in vertices):
            raise ValueError("a mesh needs a list of 3 coordinates per vertex")
        for name, part in (("faces", faces), ("colors", colors)):
            if part is not None and (type(part) is not list or not all(type(v) is list and len(v) == 3 for v in part)):
                raise ValueError(f"a mesh's {name} must be a list of 3 numbers each")
        return {"k": "mesh", "win": record.window, "x": x, "vertices": vertices, "faces": faces, "colors": colors}
    if not isinstance(record.html, str):
        raise TypeError(f"html must be a str, got {type(record.html).__name__}")
    entry = {"k": "text", "win": record.window, "x": x,
             "html": _rendered(record.html) if record.markdown else record.html}
    return entry if record.keep == 1 else {**entry, "keep": record.keep}


def _rendered(markdown: str) -> str:
    """Markdown as HTML (CommonMark and tables, raw HTML escaped), tables ruled and padded as
    TensorBoard's text view draws them (a page's plain table ran its cells together)."""
    html = _markdown().render(markdown).replace("<table>", f'<table style="{_TABLE}">')
    return _CELLS.sub(lambda cell: f'<{cell[1]} style="{_CELL}{cell[2] or ""}">', html)  # an alignment kept


_TABLE = "border-collapse: collapse; margin: 4px 0;"
_CELL = "border: 1px solid #ccc; padding: 2px 8px; "
_CELLS = re.compile(r'<(th|td)(?: style="([^"]*)")?>')  # markdown-it's own cells: the text's HTML is escaped


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML is escaped


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types alone (what unpickles without the script's classes)."""
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if type(value) in (list, tuple):
        return all(map(_plain_json, value))
    return value is None or type(value) in (str, int, float, bool)


def _plain(traces: tuple[str, ...], i: int, value: Any) -> Any:
    """A trace's value as a plain int or float, read from its device (a bool stays, for encode to refuse)."""
    if type(value) in _PLAIN or type(value) is bool:
        return value
    if checks._is_tensor(value):
        return _on_host(value).item()
    if isinstance(value, Real):
        return int(value) if isinstance(value, Integral) else float(value)
    trace = traces[i] if i < len(traces) else i
    raise TypeError(f"the value of trace {trace!r} must be a number, got {value!r}")


def _on_host(tensor: Any) -> Any:
    from monitor.host import on_host  # torch: only where a tensor is read

    return on_host(tensor)


_FLOATS, _NAMES, _PLAIN, _SCALES = {float}, {str}, {float, int}, {float, type(None)}
_PR_KEYS = ("tp", "fp", "tn", "fn", "precision", "recall")


def windows_after(path: str | os.PathLike, position: int) -> set[str]:
    """The windows that entries after byte ``position`` of a run log write to (read line by line)."""
    path = Path(path)
    if not path.exists():
        return set()
    names = set()
    with open(path, "rb") as file:
        file.seek(position)
        for line in file:
            head = HEAD.match(line)  # no need to parse an image
            try:
                names.add(json.loads(head[2]) if head else json.loads(line)["win"])
            except (ValueError, KeyError, TypeError):
                pass  # the header, or a line torn by a crash
    return names


def resumes_at(path: str | os.PathLike, position: int) -> tuple[int, bool]:
    """Where a run resumed from the checkpoint taken at byte ``position`` of its log goes on, and
    whether its ``continues`` mark is still to be written there.

    After a checkpoint written in a batches loop (``rest_of_step`` at ``position``), the rest of
    its step's code is never run again, so what it logged stays: up to the ``continues`` mark of
    the next batch, or to the log's end where the run was killed before it (the resumed run
    writes the mark then, or a second resume would keep its steps too). Else at ``position``.
    """
    with open(path, "rb") as file:
        file.seek(position)
        end = mark = position  # where the rest_of_step mark is: at position, or after the continues mark
        for line in file:      # of the step's earlier checkpoint, in logs written before 2026-12-07
            if not line.endswith(b"\n"):  # torn by the kill
                break
            end += len(line)
            if end - len(line) == mark:
                if mark == position and line.startswith(b'{"k":"continues"'):
                    mark = end
                elif not _marks(line, b"rest_of_step", position):
                    return position, False
            elif _marks(line, b"continues", position):
                return end, False
    return end, end > position


def _marks(line: bytes, kind: bytes, position: int) -> bool:
    """Whether a run-log line is the step mark ``kind`` of the checkpoint at ``position``."""
    if not line.startswith(b'{"k":"' + kind + b'"'):
        return False
    try:
        return json.loads(line).get("from") == position
    except ValueError:
        return False


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
