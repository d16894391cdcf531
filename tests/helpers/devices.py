"""The devices a test runs on: the CPU always, CUDA where there is one (skipped elsewhere).

    @pytest.mark.parametrize("device", DEVICES)
    def test_x(device):
        with never_synchronizing(device):
            ...  # the loop: on CUDA any host-device synchronize raises
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]


@contextlib.contextmanager
def never_synchronizing(device: str | torch.device) -> Iterator[None]:
    """On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` for the block; nothing elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
