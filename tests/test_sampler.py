"""EpochBatchSampler: an order that depends on (seed, epoch) alone, and skips without loading."""
from __future__ import annotations


import pytest
import torch
from torch.utils.data import DataLoader

from monitor import EpochBatchSampler


def test_the_epoch_batch_sampler_order_depends_on_seed_and_epoch_alone_and_skips_without_loading():
    batches = EpochBatchSampler(10, batch_size=3, seed=4)
    batches.set_epoch(2)
    whole = list(batches)
    assert len(whole) == 4 and sorted(sum(whole, [])) == list(range(10))
    torch.manual_seed(123)  # the global generator plays no part
    again = EpochBatchSampler(10, batch_size=3, seed=4)
    again.set_epoch(2, skip=3)
    assert list(again) == whole[3:] and len(again) == 1
    again.set_epoch(1)
    assert list(again) != whole
    loader = DataLoader(list(range(10)), batch_sampler=again, generator=again.generator)
    again.set_epoch(2, skip=1)
    assert [b.tolist() for b in loader] == whole[1:]
    with pytest.raises(ValueError, match=r"skip must be an int between 0 and 4 \(the batches of an epoch\), got 5"):
        again.set_epoch(0, skip=5)
