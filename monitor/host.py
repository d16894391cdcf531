"""Reading a tensor left on a device, by the sink (off the training thread).

    values = on_host(snapshot).tolist()   # waits for the device: in the sink, never the loop

On CUDA the tensor is copied into pinned memory without blocking and the sink's thread then waits on an
event recorded after the copy: the wait ``.cpu()`` would make, but not one that
``torch.cuda.set_sync_debug_mode`` counts. A user hunting the synchronizes of their own loop with
it sees theirs alone, and under ``"error"`` the sink's reads still succeed (with ``.cpu()`` they
raised there and what was logged was skipped).
"""
from __future__ import annotations

import torch


def on_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU, once the device has finished the work queued before it."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(tensor.device))
    copied.synchronize()
    return host
