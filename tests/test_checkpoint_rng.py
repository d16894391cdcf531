"""Every random generator a checkpoint keeps draws the same numbers after a restore."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from monitor.checkpoint.rng import capture_rng, restore_rng


def test_every_random_generator_draws_the_same_numbers_after_a_restore():
    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(state)
    assert (random.random(), np.random.rand()) == first[:2]
    assert torch.equal(torch.rand(3), first[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_cuda_device_draws_the_same_numbers_after_a_restore():
    devices = [torch.device("cuda", d) for d in range(torch.cuda.device_count())]
    torch.rand(1, device=devices[0])  # starts CUDA: only then is its state saved
    state = capture_rng()
    assert len(state["cuda"]) == len(devices)
    first = [torch.rand(3, device=d) for d in devices]
    restore_rng(state)
    assert all(torch.equal(torch.rand(3, device=d), f) for d, f in zip(devices, first))
