"""Graph: the model drawn as a diagram in pane ``graph``, traced from one forward pass."""
from __future__ import annotations

import logging
from typing import Any

import torch

from monitor.core import Callback, LoopState
from monitor.graph import fitted, traced
from monitor.log import Log
from monitor.models import unwrap_model
from monitor.records import Order

WINDOW = "graph"
_log = logging.getLogger("monitor")


class Graph(Callback):
    """Draws the model in pane ``graph``: its modules in their hierarchy, the shapes between them.

        monitor = Monitor([Graph()], env="mnist")
        monitor.step_end(loss=loss, inputs=x)    # the first step's inputs are traced, once

    ``inputs`` (a tensor, or a tuple of them for a model of several inputs) draws it at
    ``train_start`` instead. The trace runs the model once more, in eval mode and without
    gradients; a model ``torch.fx`` cannot trace is drawn from its modules in the order they ran.
    """

    def __init__(self, inputs: Any = None) -> None:
        self.inputs = None if inputs is None else _calls(inputs, "inputs")
        self._drawn = False
        self._started_at = 0  # the step train_start came at: a run with no step since has no inputs to trace

    def on_train_start(self, state: LoopState, log: Log) -> None:
        self._started_at = state.step
        if self.inputs is not None and not self._drawn:
            self._draw(state, log, self.inputs)

    def on_step_end(self, state: LoopState, log: Log) -> None:
        if not self._drawn and state.inputs is not None:
            self._draw(state, log, _calls(state.inputs, "step_end(inputs=...)"))

    def on_epoch_end(self, state: LoopState, log: Log) -> None:
        self._say_if_not_drawn(state, f"the end of epoch {state.epoch}")

    def on_train_end(self, state: LoopState, log: Log) -> None:
        self._say_if_not_drawn(state, "train_end")

    def _say_if_not_drawn(self, state: LoopState, when: str) -> None:
        """Once: a run with steps and no inputs to trace the model on (none given anywhere)."""
        if not self._drawn and state.step > self._started_at:
            self._drawn = True
            _log.warning("monitor: Graph was given no inputs by %s, and draws no pane %r: pass the batch, "
                         "monitor.step_end(loss=loss, inputs=x), or Graph(inputs=example)", when, WINDOW)

    def _draw(self, state: LoopState, log: Log, calls: list[tuple]) -> None:
        self._drawn = True
        if state.model is None:
            raise ValueError("Graph needs the model: pass it to monitor.train_start(model, optimizer), got None")
        for inputs in calls:  # tried once: the trace runs the model, which each step would pay for
            try:
                show(log, unwrap_model(state.model), inputs, state.step)
                return
            except Exception as error:
                failed = error
        _log.warning("monitor: Graph could not run the model on the %s and draws no pane %r: %s: %s; "
                     "Graph(inputs=...) traces it at train_start on inputs of your choosing",
                     "inputs given" if calls is self.inputs else f"inputs of step {state.step}", WINDOW,
                     type(failed).__name__, failed)


def show(log: Log, model: torch.nn.Module, inputs: tuple, x: float = 0, window: str = WINDOW) -> None:
    """Traces ``model`` on ``inputs`` and writes its diagram to text pane ``window``."""
    nodes, how = traced(model, inputs)
    title = type(model).__name__ + ("" if how == "fx" else " (modules in the order they ran)")
    svg = fitted(nodes, model, title)
    log.window(window, order=Order.SUMMARY, title=window, width=min(_size(svg, "width") + 40, 640),
               height=min(_size(svg, "height") + 60, 720))
    log.text(window, x, f'<div style="overflow:auto">{svg}</div>', html=True)


def _calls(inputs: Any, argument: str) -> list[tuple]:
    """The arguments to try the model with, in order: a tensor's, a tuple's parts, or a list (a
    detection model's images of their own sizes) as one argument, then as its parts."""
    parts = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not parts or not all(isinstance(i, torch.Tensor) for i in parts):
        raise TypeError(f"{argument} must be a tensor, a tuple of tensors (one an input) or a list of them (one "
                        f"input) to trace the model with, got {[type(i).__name__ for i in parts]}")
    return [(list(inputs),), parts] if isinstance(inputs, list) else [parts]


def _size(svg: str, attribute: str) -> int:
    return int(float(svg.split(f' {attribute}="', 1)[1].split('"', 1)[0]))
