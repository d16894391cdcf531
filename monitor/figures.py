"""Matplotlib figures as pixels, for ``SummaryWriter.add_figure`` (matplotlib: the ``figures`` extra).

    pixels = rendered(figure)   # a CHW uint8 tensor of the figure drawn by matplotlib's Agg renderer
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def require_matplotlib() -> None:
    """Raises a one-line ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("add_figure needs matplotlib: pip install 'monitor[figures]' (or matplotlib)") from None


def rendered(figure: Any) -> torch.Tensor:
    """The figure drawn off screen, as RGB pixels (CHW, uint8)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(figure, Figure):
        raise TypeError(f"figure must be a matplotlib Figure or a list of them, got {type(figure).__name__}")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)


def close(figure: Any) -> None:
    """Takes the figure off pyplot's list of open figures (what ``add_figure(close=True)`` does)."""
    from matplotlib import pyplot

    pyplot.close(figure)
