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
    tensors = _gathered([t for t in (_real(stored_values(t.detach())) for t in tensors) if t.numel()])
    n = sum(t.numel() for t in tensors)
    if not tensors:
        edges = _on(bins, device, dtype) if given else torch.linspace(-0.5, 0.5, bins + 1, dtype=dtype, device=device)
        return edges, torch.zeros(edges.numel() - 1, dtype=torch.int64, device=device), 0
    low, high = _finite_range(tensors, dtype)
    if given:
        edges = _on(bins, device, dtype)
        counts = _counted_on_cpu(tensors, edges, dtype) if device.type == "cpu" else _counted(tensors, edges, dtype)
    else:
        edges, counts = (_equal_bins_on_cpu if device.type == "cpu" else _equal_bins)(tensors, bins, low, high, dtype)
    # The lowest value's bin starts at it and the highest's ends at it, with no width where it
    # holds one value only (a constant: TensorBoard draws every percentile there).
    following = torch.cat([edges[1:], edges[-1:]])  # each edge's next one (the last: itself)
    preceding = torch.cat([edges[:1], edges[:-1]])  # and the one before (the first: itself)
    edges = torch.where((edges < low) & (following > low), low, edges)
    edges = torch.where((edges > high) & (preceding <= high), high, edges)
    return edges, counts, n


def _equal_bins(tensors: list[torch.Tensor], bins: int, low: torch.Tensor, high: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``bins`` equal bins over ``low`` to ``high`` (one unit wide around a constant, as numpy's),
    counted on the tensors' device."""
    same = low == high
    start, end = torch.where(same, low - 0.5, low), torch.where(same, high + 0.5, high)
    steps = torch.linspace(0, 1, bins + 1, dtype=dtype, device=low.device)
    edges = start * (1 - steps) + end * steps  # not start + (end - start) * steps: that overflows a wide range
    edges[-1] = end
    return edges, (_counted_on_cpu if low.device.type == "cpu" else _counted)(tensors, edges, dtype)


def _equal_bins_on_cpu(tensors: list[torch.Tensor], bins: int, low: torch.Tensor, high: torch.Tensor,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``_equal_bins``, by ``torch.histogram``: a bin found by arithmetic, not a search
    (2.4 times as fast for 30 bins); a range wider than the dtype holds, the other way."""
    start, end = float(low), float(high)
    if start == end:
        start, end = start - 0.5, end + 0.5
    if not (math.isfinite(start) and math.isfinite(end) and end - start < torch.finfo(dtype).max):
        return _equal_bins(tensors, bins, low, high, dtype)
    counts = torch.zeros(bins, dtype=torch.int64)
    for tensor in tensors:
        for part in tensor.to(dtype).split(GATHERED_UP_TO):  # counted in its dtype: exact up to 2**24 a bin
            hist, edges = torch.histogram(part, bins=bins, range=(start, end))
            counts += hist.to(torch.int64)
    return edges, counts


def _counted(tensors: list[torch.Tensor], edges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The counts of the bins on the tensors' device, nothing read (``bincount`` would read the
    largest index)."""
    count = edges.numel() - 1
    counts = torch.zeros(count + 1, dtype=torch.int64, device=edges.device)  # the last: values in no bin
    for tensor in tensors:
        flat = tensor.to(dtype)
        index = torch.bucketize(flat, edges, right=True) - 1
        index = torch.where(index == count, count - 1, index)  # the last edge closes the last bin
        inside = (flat >= edges[0]) & (flat <= edges[-1])  # False for NaN
        index = torch.where(inside, index, count)
        counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:count]


GATHERED_UP_TO = 1 << 20  # values: smaller tensors are binned together, in copies of at most this many


def _gathered(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors' values as flat tensors, the small ones of a dtype joined in copies of at most
    ``GATHERED_UP_TO`` values: a deep model's 644 gradients binned one by one took 34 ms."""
    gathered: list[torch.Tensor] = []
    group: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        flat = tensor.reshape(-1)
        if flat.numel() >= GATHERED_UP_TO:
            gathered.append(flat)
            continue
        if group and (size + flat.numel() > GATHERED_UP_TO or flat.dtype != group[0].dtype):
            gathered.append(torch.cat(group) if len(group) > 1 else group[0])
            group, size = [], 0
        group.append(flat)
        size += flat.numel()
    if group:
        gathered.append(torch.cat(group) if len(group) > 1 else group[0])
    return gathered


def _counted_on_cpu(tensors: list[torch.Tensor], edges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """As ``_counted``, in a search and a count per tensor (2.5 times as fast for TensorBoard's
    1,549 edges): float32 values are compared in float32 with the edges rounded up to float32,
    which orders them as the float64 edges do."""
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
        flat = tensor.to(dtype)
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
