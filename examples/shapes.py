"""Shapes: a small synthetic image dataset of coloured circles, squares and triangles.

Every image is drawn with numpy when it is asked for, from a random generator seeded with
``(seed, index)``: the same index always gives the same image, nothing is downloaded, and a
small convolutional network learns to tell the three shapes apart in about a minute on a CPU.

    from shapes import CLASSES, Shapes
    train = Shapes(samples=3000, seed=0)
    image, label = train[0]          # a 3x32x32 float tensor in [0, 1], and 0, 1 or 2
    print(CLASSES[label])            # "circle", "square" or "triangle"
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "triangle")


class Shapes(Dataset):
    """``samples`` images of ``size`` x ``size`` pixels; item ``i`` is ``(image, label)``.

    A shape of a random colour, size, position and rotation on a darker, slightly noisy
    background of another colour. ``seed`` picks the set: use different seeds for the
    training and the validation set.
    """

    def __init__(self, samples: int = 3000, size: int = 32, seed: int = 0) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8 (pixels), got {size!r}")
        self.samples, self.size, self.seed = samples, size, seed
        # Pixel centres, in pixels from the top-left corner: reused by every drawing.
        self._y, self._x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.samples <= index < self.samples:
            raise IndexError(f"index must be in [{-self.samples}, {self.samples}), got {index}")
        index %= self.samples
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(len(CLASSES)))
        return torch.from_numpy(self._draw(rng, label)), label

    def _draw(self, rng: np.random.Generator, label: int) -> np.ndarray:
        size = self.size
        radius = rng.uniform(0.2, 0.4) * size
        centre = rng.uniform(radius, size - radius, 2)
        angle = rng.uniform(0, 2 * math.pi)
        dy, dx = self._y - centre[0], self._x - centre[1]
        # Coordinates along the shape's own (rotated) axes.
        u = math.cos(angle) * dx + math.sin(angle) * dy
        v = -math.sin(angle) * dx + math.cos(angle) * dy
        if CLASSES[label] == "circle":
            inside = u * u + v * v <= radius * radius
        elif CLASSES[label] == "square":
            inside = np.maximum(np.abs(u), np.abs(v)) <= radius * 0.8
        else:  # an equilateral triangle: on the inner side of its three edges
            inside = np.ones_like(u, dtype=bool)
            for k in range(3):
                normal = angle + math.pi + 2 * math.pi * k / 3
                inside &= u * math.cos(normal) + v * math.sin(normal) <= radius / 2
        background = rng.uniform(0.0, 0.45, 3).astype(np.float32)
        colour = _bright_colour(rng, background)
        image = np.where(inside, colour[:, None, None], background[:, None, None])
        image = image + rng.normal(0, 0.04, image.shape).astype(np.float32)
        return np.clip(image, 0, 1).astype(np.float32)


def _bright_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A saturated colour that stands out from ``background``."""
    while True:
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        colour[rng.integers(3)] = rng.uniform(0.8, 1.0)  # at least one strong channel
        if np.abs(colour - background).sum() > 0.6:
            return colour
