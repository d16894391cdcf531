"""The L2 norms of many tensors (a model's gradients or weights), taken on the training thread.

Right after a backward pass caches are cold, and each small operation costs 10-40 us on a CPU
(measured in bench/overhead.py's loops), so the norms are taken in as few operations as can be:
one foreach pass, and on a CPU, stacks of small tensors alike. CPU norms are read at once, as
the Log reads CPU scalars: left to the sink, these small tensors of the training
thread were freed there in bunches, and glibc then gave heap back to the system and the next
backward faulted it in again (30-100 page faults a step in the MLP benchmark). Device norms
stay device scalars for the sink, whose read would wait for the device.

    stacks = stacks_of(list(model.parameters()))             # once per set of parameters
    norms = each_norm([p.grad for p in model.parameters()], stacks)  # each step
    values = read(norms)                                     # by the sink
"""
from __future__ import annotations

import torch

from monitor.host import on_host

STACKED_UP_TO = 4096  # elements: a CPU takes the norms of smaller tensors of one shape in a stack

Norms = list[float | torch.Tensor]  # each tensor's norm: a float once read, else a device scalar
Stacks = tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]  # positions normed one by one; in stacks


def stacks_of(tensors: list[torch.Tensor]) -> Stacks | None:
    """The positions of the tensors taken one by one, and of the small CPU tensors alike in shape
    and dtype, in groups; None where no two tensors make a group.

    A CPU's foreach norm is a loop of single norms, each a microsecond or two of calls whatever
    its size: for 80 tensors of 4,096 floats, stacking them and taking their norms in one
    reduction costs about 1 us a tensor less; from some 8,000 elements up the copy costs more
    than the calls save (bench/README, "A deep model").
    """
    alike: dict[tuple, list[int]] = {}
    for position, tensor in enumerate(tensors):
        if tensor.is_cpu and tensor.layout is torch.strided and tensor.numel() <= STACKED_UP_TO:
            alike.setdefault((tensor.shape, tensor.dtype), []).append(position)
    stacks = tuple(tuple(positions) for positions in alike.values() if len(positions) > 1)
    if not stacks:
        return None
    stacked = {position for stack in stacks for position in stack}
    return tuple(position for position in range(len(tensors)) if position not in stacked), stacks


def each_norm(tensors: list[torch.Tensor], stacks: Stacks | None = None) -> Norms:
    """Each tensor's L2 norm: floats on a CPU, device scalars elsewhere.

    ``stacks`` (``stacks_of`` the parameters) groups small CPU tensors; where the tensors no
    longer match it (moved to a device, a sparse gradient), one foreach pass takes them all.
    """
    if stacks is not None and tensors[0].is_cpu:
        norms = _stacked(tensors, stacks)
        if norms is not None:
            return norms
    # item() each beats torch.stack(norms).tolist() at any count (3 us against 7 for 4 norms,
    # 174 against 258 for 322, measured on one CPU thread).
    return [n.item() if n.is_cpu else n for n in foreach_norm(tensors)]


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's L2 norm as a scalar on its device: in float32 at least (float64 for float64
    tensors), whatever the tensors hold, half precision and sparse tensors included.

    On a CPU the dtype is named only where some tensor is narrower than float32: named, a CPU
    took the norm of a 200,000-float gradient in 24 us instead of 19 (the same value). A device
    is always told (its norms are queued, and checking every tensor's dtype would cost the
    training thread more than that).
    """
    first = tensors[0]
    try:
        if first.is_cpu and not any(t.dtype.itemsize < 4 for t in tensors):
            return torch._foreach_norm(tensors, 2)
        return torch._foreach_norm(tensors, 2, dtype=torch.float64 if first.dtype is torch.float64 else torch.float32)
    except (RuntimeError, NotImplementedError):  # dtypes mixed, or a sparse gradient (nn.Embedding(sparse=True))
        return [_norm(stored_values(t)) for t in tensors]


def read(norms: Norms) -> list[float]:
    """The norms as floats; in the sink, this reads what the training thread left on a device."""
    if set(map(type, norms)) <= _READ:  # a CPU's: read already
        return norms
    tensors = [n for n in norms if isinstance(n, torch.Tensor)]
    try:
        values = iter(on_host(torch.stack(tensors)).tolist())  # one read of the device
    except RuntimeError:  # tensors on several devices
        values = iter([on_host(n).item() for n in tensors])
    return [next(values) if isinstance(n, torch.Tensor) else n for n in norms]


def stored_values(tensor: torch.Tensor) -> torch.Tensor:
    """The values a tensor stores, each once: all of a dense tensor's; a sparse one's, whose COO
    form may hold an index twice (an embedding's row looked up twice in a batch), added up."""
    if tensor.layout is torch.sparse_coo:
        return tensor.coalesce().values()
    return tensor if tensor.layout is torch.strided else tensor.values()


def _stacked(tensors: list[torch.Tensor], stacks: Stacks) -> list[float | torch.Tensor] | None:
    singles, groups = stacks
    norms: list[float | torch.Tensor] = [0.0] * len(tensors)
    for group in groups:
        try:
            stacked = torch.stack([tensors[position] for position in group])
            if not stacked.is_cpu or stacked.layout is not torch.strided:
                return None
            values = _norm(stacked.reshape(len(group), -1), dim=1).tolist()  # channels_last: a copy
        except (RuntimeError, NotImplementedError):  # not alike as the parameters were
            return None
        for position, value in zip(group, values):
            norms[position] = value
    if singles:
        for position, norm in zip(singles, foreach_norm([tensors[position] for position in singles])):
            norms[position] = norm.item() if norm.is_cpu else norm
    return norms


def _norm(tensor: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The L2 norm, summed in float32 at least: a float16 norm overflows long before its values."""
    return torch.linalg.vector_norm(tensor, dim=dim, dtype=torch.float32 if tensor.dtype in _NARROW else None)


_NARROW = (torch.float16, torch.bfloat16)
_READ = {float}
