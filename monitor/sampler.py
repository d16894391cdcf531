"""EpochBatchSampler: a DataLoader order fixed by (seed, epoch) alone, which can start part-way in.

A plain ``DataLoader(shuffle=True)`` draws its order from the global torch generator when an
epoch starts, so a run resumed in the middle of an epoch sees another order, and skipping the
batches already done by iterating would load them all. This sampler computes each epoch's order
from its own seed, skips done batches without loading them, and owns the ``generator`` the
DataLoader should use for its workers' seeds, so augmentations in workers repeat too.

Under torch.distributed it also does what ``DistributedSampler`` does: each rank gets its share
of every batch. The job's batch ``k`` is what one process with ``batch_size * world_size`` would
see as its batch ``k``, split between the ranks, so a DDP run trains on the same global batches
as a single-process run of the same seed, and a resumed rank skips without loading.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler

from monitor.checks import integer, positive_int
from monitor.distributed import rank_and_world_size


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices in an order that depends only on ``seed`` and the epoch.

        batches = EpochBatchSampler(train_set, batch_size=32, seed=0)
        loader = DataLoader(train_set, batch_sampler=batches, generator=batches.generator)
        batches.set_epoch(epoch, skip=start.batches_done(epoch))    # before iterating each epoch

    ``skip`` leaves out the epoch's first ``skip`` batches (those a resumed run already did);
    ``len()`` counts the batches still to come.

    ``batch_size`` is per rank. ``rank`` and ``world_size`` default to the job's under an
    initialised torch.distributed (else 0 and 1): rank ``r`` gets the ``r``-th slice of each
    global batch of ``batch_size * world_size`` indices. A last, partial global batch is split
    into equal slices, padded with the epoch's first indices as DistributedSampler pads, so
    every rank runs the same number of steps (``drop_last=True`` drops it instead).
    """

    def __init__(self, data: Sized | int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None) -> None:
        size = data if isinstance(data, int) and not isinstance(data, bool) else None
        if size is None:
            if not isinstance(data, Sized):
                raise TypeError(f"data must be a dataset with a length or an int, got {type(data).__name__}")
            size = len(data)
        if size < 0:
            raise ValueError(f"data must have a length >= 0, got {size}")
        positive_int("batch_size", batch_size)
        integer("seed", seed, 0, 2**62 - 1, expected="an int between 0 and 2**62")
        job_rank, job_size = rank_and_world_size()
        world_size = positive_int("world_size", job_size if world_size is None else world_size)
        rank = integer("rank", job_rank if rank is None else rank, 0, world_size - 1,
                       expected=f"an int between 0 and world_size - 1 = {world_size - 1}")
        self.rank, self.world_size = rank, world_size
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.epoch, self.skip = 0, 0
        self.generator = torch.Generator()
        self.set_epoch(0)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.size, self.batch_size * self.world_size)
        return full if self.drop_last or not rest else full + 1

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Use ``epoch``'s order from now on, leaving out its first ``skip`` batches."""
        integer("epoch", epoch, minimum=0)
        integer("skip", skip, 0, self.batches_per_epoch,
                expected=f"an int between 0 and {self.batches_per_epoch} (the batches of an epoch)")
        self.epoch, self.skip = epoch, skip
        # The DataLoader draws its workers' base seed from this generator when an epoch's
        # iteration starts: reseeding it here makes that draw depend on the epoch alone.
        self.generator.manual_seed(2 * (self.seed + epoch) + 1)

    def order(self) -> torch.Tensor:
        """The indices of the current epoch, in the order the job visits them (every rank's; no batch skipped)."""
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(2 * (self.seed + self.epoch))
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.order().tolist()
        size = self.batch_size * self.world_size
        for batch in range(self.skip, self.batches_per_epoch):
            chunk = indices[batch * size:(batch + 1) * size]
            share = -(-len(chunk) // self.world_size)  # batch_size, except in a last, partial batch
            chunk += itertools.islice(itertools.cycle(indices), share * self.world_size - len(chunk))
            yield chunk[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip
