"""A small batched Visdom logger: what a careful user writes in an afternoon, the bar to beat.

Values are read on the loop's thread into lists (the per-layer gradient norms in one
``_foreach_norm`` and one ``stack``); a thread sends what has gathered every 0.5 s, one append
per window, and the image grid as it comes. No run log, no checks, no retry: a point that a
failed request carried is gone.

    logger = BatchedLogger(vis, every=0.5)
    logger.norms(step, layers)                           # after backward()
    logger.scalars("loss", step, {"train": loss.item()})
    logger.close()
"""
from __future__ import annotations

import threading
from typing import Any

import torch


class BatchedLogger:
    def __init__(self, vis: Any, every: float = 0.5) -> None:
        self.vis, self.every = vis, every
        self._pending: dict[str, tuple[list[str], list[int], list[list[float]]]] = {}
        self._images: list[tuple[str, torch.Tensor]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def scalars(self, window: str, step: int, values: dict[str, float]) -> None:
        with self._lock:
            names, xs, ys = self._pending.setdefault(window, (list(values), [], []))
            xs.append(step)
            ys.append(list(values.values()))

    def norms(self, step: int, layers: list[tuple[str, list[torch.nn.Parameter]]]) -> None:
        """Each layer's gradient norm and the total: one foreach pass, one stack, one read."""
        grads = [p.grad for _, params in layers for p in params]
        norms = torch._foreach_norm(grads, 2)
        squares = torch.stack(norms).square().tolist()
        values, i = {}, 0
        for name, params in layers:
            values[name] = sum(squares[i:i + len(params)]) ** 0.5
            i += len(params)
        values["total"] = sum(squares) ** 0.5
        self.scalars("grad norm", step, values)

    def images(self, window: str, batch: torch.Tensor) -> None:
        with self._lock:
            self._images.append((window, batch.detach().clone()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._send()
        self._send()

    def _send(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            images, self._images = self._images, []
        for window, (names, xs, ys) in pending.items():
            x = torch.tensor(xs, dtype=torch.float64)[:, None].expand(-1, len(names))
            self.vis.line(X=x, Y=torch.tensor(ys), win=window, update="append",
                          opts={"title": window, "legend": names})
        for window, batch in images:
            self.vis.images(batch, win=window, opts={"title": window})
