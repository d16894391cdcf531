"""Binning tensors on their own device: a histogram's edges and counts, nothing read.

    edges, counts, n = binned([p.grad for p in model.parameters()], bins=30)   # device tensors

The training thread bins; the sink reads the counts later and draws them
(:mod:`monitor.distribution`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from monitor.norms import stored_values


def binned(tensors: Sequence[torch.Tensor], bins: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Bin edges and counts of all the values of ``tensors``, computed on their device (no read),
    and how many values there are.

    ``bins`` is a number of equal bins over the finite values' range (one unit wide around a
    constant, as ``numpy.histogram`` does), or the edges themselves (1-d, increasing). A value
    is in bin i when ``edges[i] <= value < edges[i + 1]``, the last bin closed on the right, as
    in ``numpy.histogram``; values outside the edges and non-finite values are in none. The
    edges come back with the bins holding the smallest and the largest value cut to them, as
    TensorBoard draws its first bucket from the minimum and its last to the maximum (a bin of
    one value, a constant's, has no width). A sparse
    tensor (``nn.Embedding(sparse=True)``'s gradient) gives the values it stores; a complex one, its
    real and imaginary parts.
    """
    device = tensors[0].device
    given = isinstance(bins, torch.Tensor)
    # With given edges, values are compared in float64, as numpy compares them (where the device has it).
    wide = given and device.type != "mps" or any(t.dtype == torch.float64 for t in tensors)
    dtype = torch.float64 if wide else torch.float32
    tensors = [t for t in (_real(stored_values(t.detach())) for t in tensors) if t.numel()]  # one float copy at a time
    n = sum(t.numel() for t in tensors)
    if given:
        edges = _on(bins, device, dtype)
    elif not tensors:
        edges = torch.linspace(-0.5, 0.5, bins + 1, dtype=dtype, device=device)
    else:
        low, high = _finite_range(tensors, dtype)
        same = low == high
        start, end = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
        steps = torch.linspace(0, 1, bins + 1, dtype=dtype, device=device)
        edges = start * (1 - steps) + end * steps  # not start + (end - start) * steps: that overflows a wide range
        edges[-1] = end
    count = edges.numel() - 1
    if device.type == "cpu":
        counts = _counted_on_cpu(tensors, edges, dtype)
    else:
        counts = torch.zeros(count + 1, dtype=torch.int64, device=device)  # the last: values in no bin
        for tensor in tensors:
            flat = tensor.reshape(-1).to(dtype)
            index = torch.bucketize(flat, edges, right=True) - 1
            index = torch.where(index == count, count - 1, index)  # the last edge closes the last bin
            inside = (flat >= edges[0]) & (flat <= edges[-1])  # False for NaN
            index = torch.where(inside, index, count)
            counts.scatter_add_(0, index, torch.ones_like(index))  # bincount would read the device
    if tensors:
        if given:
            low, high = _finite_range(tensors, dtype)
        # The lowest value's bin starts at it and the highest's ends at it, with no width where
        # it holds one value only (a constant: TensorBoard draws every percentile there).
        following = torch.cat([edges[1:], edges[-1:]])  # each edge's next one (the last: itself)
        preceding = torch.cat([edges[:1], edges[:-1]])  # and the one before (the first: itself)
        edges = torch.where((edges < low) & (following > low), low, edges)
        edges = torch.where((edges > high) & (preceding <= high), high, edges)
    return edges, counts[:count], n


def _counted_on_cpu(tensors: Sequence[torch.Tensor], edges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The counts of the bins, in a pass and a count per tensor (2.5 times as fast as the
    device's way for TensorBoard's 1,549 edges): float32 values are compared in float32 with
    the edges rounded up to float32, which orders them as the float64 edges do."""
    count = edges.numel() - 1
    compared = edges
    if dtype == torch.float64 and all(t.dtype in _EXACT_IN_FLOAT32 for t in tensors):
        up = edges.to(torch.float32)
        up = torch.where(up.to(torch.float64) < edges, torch.nextafter(up, torch.tensor(math.inf)), up)
        if bool((up[1:] > up[:-1]).all()):  # v >= edge exactly when v >= edge rounded up, for a float32 v
            compared, dtype = up, torch.float32
    closes = float(compared[-1]) == float(edges[-1])  # a value can be on the last edge, which closes the last bin
    counts = torch.zeros(count, dtype=torch.int64)
    for tensor in tensors:
        flat = tensor.reshape(-1).to(dtype)
        index = torch.bucketize(flat, compared, right=True)  # 0: below the edges; count + 1: above, NaN
        counts += torch.bincount(index, minlength=count + 2)[1:count + 1]
        if closes:
            counts[-1] += int((flat == compared[-1]).sum())  # bucketized past it, in no bin
    return counts


_EXACT_IN_FLOAT32 = {torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.int8, torch.int16}


def _finite_range(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and the largest finite value of the tensors (inf and -inf where there is none)."""
    if tensors[0].is_cpu:  # one pass, where every value is finite (read: a CPU's)
        ranges = [torch.aminmax(t.reshape(-1)) for t in tensors]
        low, high = min(float(r.min) for r in ranges), max(float(r.max) for r in ranges)
        if math.isfinite(low) and math.isfinite(high):
            return torch.tensor(low, dtype=dtype), torch.tensor(high, dtype=dtype)
    lows, highs = [], []
    for tensor in tensors:
        flat = tensor.reshape(-1).to(dtype)
        finite = torch.isfinite(flat)
        lows.append(torch.where(finite, flat, math.inf).amin())
        highs.append(torch.where(finite, flat, -math.inf).amax())
    return torch.stack(lows).amin(), torch.stack(highs).amax()


def _real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


_EDGES: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _on(edges: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CPU ``edges`` on ``device``: copied there once per tensor, device and dtype, not at every call
    (a copy from pageable memory waits for the device)."""
    if device.type == "cpu":
        return edges.to(dtype)
    key = (id(edges), device, dtype)
    cached = _EDGES.get(key)
    if cached is None or cached[0] is not edges:
        while len(_EDGES) >= 16:  # edges made afresh at every call are copied at every call
            del _EDGES[next(iter(_EDGES))]
        source = edges.to(dtype).pin_memory() if device.type == "cuda" else edges.to(dtype)
        cached = _EDGES[key] = (edges, source.to(device, non_blocking=True))
    return cached[1]
