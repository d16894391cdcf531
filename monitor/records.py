"""The records callbacks hand to the sink: small immutable snapshots, never live tensors.

A record is made on the training thread and read on the sink's worker. Anything in it that
the loop could change afterwards (a loss tensor, a batch of images) is a copy taken at
logging time; tensors may stay on their device until the worker reads them, so logging
never waits for the device.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence


class Points(NamedTuple):
    """One x and a value for each of a window's traces (``values[i]`` belongs to ``traces[i]``).

    ``values`` is a tuple of floats, or a 1-d tensor snapshot read by the worker.
    """

    window: str
    x: float
    traces: tuple[str, ...]
    values: Any


class Images(NamedTuple):
    """A batch of images (NCHW snapshot, any dtype and range) shown as one grid."""

    window: str
    x: float
    pixels: Any
    captions: Sequence[str] | None


class Text(NamedTuple):
    """An HTML text pane; a newer one replaces the older."""

    window: str
    x: float
    html: str


class Layout(NamedTuple):
    """Display options of a window (title, axis labels, ...), sent once before its data."""

    window: str
    opts: dict
