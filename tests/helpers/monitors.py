"""Monitors for tests: an in-memory sink that keeps every record, a small model and loop, and a
monitor on a real server."""
from __future__ import annotations

import base64
import contextlib
import re
import time
from typing import Iterator

import torch
from torch import nn

from monitor import Monitor
from monitor.log import NullSink
from monitor.records import Points


class ListSink(NullSink):
    def __init__(self) -> None:
        self.records: list = []

    def put(self, record) -> None:
        self.records.append(record)

    def points(self, window: str) -> dict[str, list[tuple[float, float]]]:
        """``{trace: [(x, value), ...]}`` of a window, in the order logged."""
        traces: dict[str, list] = {}
        for r in self.records:
            if isinstance(r, Points) and r.window == window:
                for trace, value in valued(r).items():
                    traces.setdefault(trace, []).append((r.x, float(value)))
        return traces

    def of(self, kind: type, window: str | None = None) -> list:
        return [r for r in self.records if isinstance(r, kind) and (window is None or r.window == window)]


def values_of(record: Points) -> list[float]:
    """A record's values as the sink's worker reads them (it calls a function, reads a tensor)."""
    values = record.values() if callable(record.values) else record.values
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def valued(record: Points) -> dict[str, float]:
    """``{trace: value}`` of a record, as the sink's worker reads it (a function may give some traces none)."""
    values = record.values() if callable(record.values) else record.values
    if isinstance(values, dict):
        return values
    return dict(zip(record.traces, values.tolist() if isinstance(values, torch.Tensor) else values))


def monitor_with(*callbacks, raise_errors: bool = True) -> tuple[Monitor, ListSink]:
    sink = ListSink()
    return Monitor(list(callbacks), sink=sink, raise_errors=raise_errors), sink


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 3))


def train(monitor: Monitor, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
          on_backward=None) -> None:
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        if on_backward:
            on_backward()
        optimizer.step()
        monitor.step_end(loss=loss)


def expected_norms(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, float]:
    grads = {name: [p.grad for p in m.parameters(recurse=False) if p.grad is not None]
             for name, m in layers.items()}
    norms = {name: torch.linalg.vector_norm(torch.cat([g.flatten() for g in gs])).item()
             for name, gs in grads.items() if gs}
    every = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    norms["total"] = torch.linalg.vector_norm(torch.cat(every)).item()
    return norms


def live_monitor(server, env: str, tmp_path, *callbacks) -> Monitor:
    return Monitor(list(callbacks), env=env, server="http://127.0.0.1", port=server.port,
                   run_dir=tmp_path / env, raise_errors=True)


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))


def shown_grid(window: dict) -> bytes:
    """The PNG a pane read back from the server shows: an image pane's, or a history pane's selected grid."""
    content = window["content"]
    if window["type"] == "image_history":
        content = content[window["selected"]]
    return unpadded(base64.b64decode(content["src"].split(",", 1)[1]))


def unpadded(png: bytes) -> bytes:
    """A grid as it was drawn, from the PNG a history pane shows (``windows.on_slider_pane``
    centres a narrow grid on white and says where)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as shown:
        if "grid" not in shown.info:
            return png
        left, width = map(int, shown.info["grid"].split(","))
        grid = shown.crop((left, 0, left + width, shown.height))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG", compress_level=1)  # as encode_grid saves it
    return buffer.getvalue()


@contextlib.contextmanager
def says(caplog, pattern: str) -> Iterator[None]:
    """Asserts that the block logs a warning through the ``monitor`` logger matching ``pattern``."""
    caplog.clear()
    with caplog.at_level("WARNING", logger="monitor"):
        yield
    said = [record.getMessage() for record in caplog.records if record.name == "monitor"]
    assert any(re.search(pattern, message) for message in said), said


def grid_taken(monitor: Monitor, window: str = "inputs") -> None:
    """Waits until the sink has taken in the window's last image grid: ``Images`` skips a due step
    while it has not, as a loop faster than the sink reads grids would."""
    while monitor.log.images_waiting(window):
        time.sleep(0.001)
