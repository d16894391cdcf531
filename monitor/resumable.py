"""Epochs and batches that start where a resumed run left off: ``monitor.epochs`` and ``monitor.batches``.

    for epoch in monitor.epochs(10):
        for x, y in monitor.batches(loader):
            ...

A run resumed from a checkpoint taken in the middle of an epoch continues with that epoch's next
batch, in the order the interrupted run would have seen. A loader whose batch sampler is
:class:`monitor.EpochBatchSampler` skips the batches done without loading them; any other
(``DataLoader(shuffle=True)`` included, with or without a ``generator=`` of its own) is iterated
as it was, from the random state the epoch began with, and the batches done are loaded and
dropped. Then every generator is put back to where the checkpoint left it. A loader with
``persistent_workers=True`` draws its workers' seed once, before its first epoch's order: where
the interrupted epoch reused the workers, the resumed one starts them first, then draws its
order from that state (the workers' own random streams are new ones).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from monitor.preemption import shield_workers, started

if TYPE_CHECKING:
    from monitor.core import Monitor

_log = logging.getLogger("monitor")


class Resumable:
    """The loop position a resume starts from, and the random state each epoch's order came from."""

    def __init__(self) -> None:
        self.first_epoch = 0
        self.skip = 0                             # batches of the first epoch done before the checkpoint
        self.skip_since = "the checkpoint"        # ... or before the loop was stopped, in this process
        self.skip_epoch = 0                       # that epoch
        self.skip_call = 0                        # ... and which of its monitor.batches calls gave them
        self.skip_of: tuple[int | None, int | None] | None = None  # ... from a loader of (samples, batch size)
        self.skip_again = False                   # ... that the epoch had iterated before: the next like it goes on
        self.resumed_from: tuple[int | None, int | None] | None = None  # (samples, batch size): the resumed epoch's
        self.calls = 0                            # monitor.batches calls made this epoch
        self.iterating = 0                        # monitor.batches generators started and not ended
        self.generation = 0                       # ... since the loop was stopped (a notebook's stop button)
        self.said_interleaved = False             # that two were iterated in turn (a zip), not one inside the other
        self.at_next_batch: Callable[[], None] | None = None  # called once, before the outermost loop's next batch
        self.begun = 0                            # iterations the outermost monitor.batches or monitor.steps began
        self.begun_at_step = 0                    # ... as the latest step_end found it
        self.steps_share_batches = False          # two step_ends came with one batch of monitor.batches
        self.trained = False                      # resumed from the checkpoint of its train_end: no epochs left
        self.waited_in: int | None = None         # state.batch (steps of the epoch) at the latest batch's wait
        # (batches given, the random state they were drawn from: torch's CPU state and the loader's
        # own generator's as the iteration began, which call of the epoch it is, the loader's
        # samples and batch size, whether the epoch's steps before it came from a loader of that
        # shape: another pass) of the
        # monitor.batches generator that yielded last, and as it was at the latest step_end: what a
        # checkpoint keeps (None: monitor.batches not used this epoch). A validation loader's
        # generator in between, or a save at validation_end, leaves it be.
        self.drawn: tuple[int, dict[str, torch.Tensor | None], int, tuple, bool] | None = None
        self.drawn_at_step: tuple[int, dict[str, torch.Tensor | None], int, tuple, bool] | None = None
        self.order_rng: dict[str, torch.Tensor | None] | None = None  # the interrupted epoch's, to resume
        self.rng: Mapping[str, Any] | None = None  # every generator, as the checkpoint left it

    def start(self) -> tuple[int, bool]:
        """(the epoch to run first, whether it began before the checkpoint); asked once per run."""
        first, self.first_epoch = self.first_epoch, 0
        return first, self.skip > 0

    def batches(self, monitor: Monitor, loader: Iterable) -> Batches:
        return Batches(self, monitor, loader)

    def continues(self, epoch: int, call: int, shape: tuple) -> bool:
        """Whether the ``call``-th monitor.batches of ``epoch``, over a loader of ``shape``, is the
        one to take the batches done. Only the loader the steps drew from takes them: the same call
        of the same epoch (a validation loader iterated first in an epoch is another call); in a loop
        of passes without epochs, the first call with its shape (the passes before are not run again)."""
        if self.skip_again:
            return epoch == self.skip_epoch and self.skip_of is not None and shape == tuple(self.skip_of)
        return (epoch, call) == (self.skip_epoch, self.skip_call)

    def to_skip(self, monitor: Monitor, loader: Iterable) -> int:
        """The batches the next monitor.batches(loader) will drop (a resumed epoch's done ones)."""
        shape = _shape(loader)
        if not self.skip or not self.continues(monitor.state.epoch, self.calls, shape):
            return 0
        if self.skip_of is not None and tuple(self.skip_of) != shape:
            return _skip_in(self.skip, tuple(self.skip_of), shape, say=False)
        return self.skip

    def iterate(self, monitor: Monitor, loader: Iterable) -> Iterator[Any]:
        from monitor.sampler import EpochBatchSampler

        epoch, call, shape = monitor.state.epoch, self.calls, _shape(loader)
        self.calls += 1
        continued = self.continues(epoch, call, shape)
        if continued:
            again = self.skip_again
        else:  # another pass over the loader the epoch's steps came from: a loop of passes without epochs
            steps_from = self.drawn_at_step[3] if self.drawn_at_step is not None else self.resumed_from
            again = steps_from == shape
        skip, rng = (self.skip, self.rng) if continued else (0, None)
        if skip:
            self.skip, self.rng = 0, None
        at_epoch_start = continued and not skip and self.order_rng is not None  # resumed at its start
        if continued:
            self.skip_epoch = None  # once
        if skip and self.skip_of is not None and tuple(self.skip_of) != shape:
            skip = _skip_in(skip, tuple(self.skip_of), shape)
        drawn = skip
        resuming = skip > 0
        for part in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
            if isinstance(part, EpochBatchSampler):
                part.set_epoch(epoch, skip=skip)
                skip = 0
            elif callable(getattr(part, "set_epoch", None)):  # DistributedSampler
                part.set_epoch(epoch)
        generator = getattr(loader, "generator", None)  # DataLoader(generator=g) draws from g, not torch's
        own = generator if isinstance(generator, torch.Generator) else None
        shield_workers(loader)  # a scheduler's SIGTERM to the whole job is the loop's to act on
        persistent = bool(getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0))
        if persistent and (resuming or at_epoch_start) and monitor.rank == 0:
            _log.warning("monitor: the resumed run's loader has persistent_workers=True: its batches come in the "
                         "interrupted run's order, but its workers' random streams start anew, so what the dataset "
                         "draws at random in them (augmentation) differs from the interrupted run's from here on; "
                         "for an exact resume, persistent_workers=False (workers started each epoch are seeded "
                         "again), or draw from a generator seeded by (seed, epoch, index)")
        kept = persistent and getattr(loader, "_iterator", None) is not None  # its workers draw no seed now
        if resuming and self.order_rng is not None:  # the order the interrupted epoch was drawn in
            if self.order_rng.get("kept_workers") and persistent and not kept:
                started(loader)  # the workers start, drawing their seed, as in the interrupted run's first epoch
                kept = True
            torch.set_rng_state(self.order_rng["torch"])
            if own is not None and self.order_rng.get("loader") is not None:
                own.set_state(self.order_rng["loader"])
        elif at_epoch_start and persistent and not kept:
            # The interrupted run's workers, started in an earlier epoch, draw no seed now: started
            # here, they must not move the generators the epoch's order is drawn from.
            before = torch.get_rng_state(), own.get_state() if own is not None else None
            started(loader)
            kept = True
            torch.set_rng_state(before[0])
            if own is not None:
                own.set_state(before[1])
        order = {"torch": torch.get_rng_state(), "loader": own.get_state() if own is not None else None,
                 "kept_workers": kept}
        iterator = started(loader)  # a DataLoader draws its order here, and its workers' seed unless kept
        if skip and monitor.rank == 0:  # every rank drops its own share: said once, for the job
            stream = isinstance(getattr(loader, "dataset", None), torch.utils.data.IterableDataset)
            _log.warning("monitor: %s the %d batch%s done before %s%s", "reading the stream again from "
                         "its start and dropping" if stream else "loading and dropping", skip,
                         "" if skip == 1 else "es", self.skip_since, "" if stream else
                         " (a DataLoader(batch_sampler=EpochBatchSampler(...)) skips them without loading)")
        for _ in range(skip):
            if next(iterator, _END) is _END:
                break
        if resuming and rng is not None:
            from monitor.checkpoint.rng import restore_rng

            restore_rng(rng)  # every generator as the checkpoint left it, for the batches to come
        state = monitor.state
        # A loader iterated inside another's loop (validation in the middle of a step, say) leaves
        # the outer loader's position as it found it: its batch_index, and what a checkpoint keeps.
        outer = (state.batch_index, self.drawn) if self.iterating else None
        generation = self.generation
        self.iterating += 1
        depth = self.iterating
        if depth == 1 and state.step_began is None:  # a resumed epoch's first step, which had no epoch_start
            state.step_began = time.perf_counter()
        try:
            while True:  # the waits for a step's batches are its data wait (Timing shows it)
                if self.iterating > depth and not self.said_interleaved:  # another one, not ended, not inside
                    self.said_interleaved = True
                    _log.warning("monitor: two loaders are iterated through monitor.batches at once (a zip of "
                                 "them?): a checkpoint keeps the position of one, so a resume repeats or skips "
                                 "batches; iterate them as one, monitor.batches(zip(loader_a, "
                                 "itertools.cycle(loader_b)))")
                outermost = self.iterating == 1  # not a validation loader's inside it
                if self.at_next_batch is not None and outermost:
                    action, self.at_next_batch = self.at_next_batch, None
                    action()
                began = time.perf_counter()
                batch = next(iterator, _END)
                if outermost:
                    wait = time.perf_counter() - began
                    if batch is _END:
                        state.data_wait = None
                    elif self.waited_in == state.batch and state.data_wait:  # another micro-batch of this step
                        state.data_wait += wait
                    else:
                        state.data_wait = wait
                    self.waited_in = state.batch
                if batch is _END:
                    return
                state.batch_index = drawn
                drawn += 1
                self.drawn = (drawn, order, call, shape, again)
                if outermost:
                    self.begun += 1
                    if state.batch_drawn is not None:
                        state.batch_drawn(batch)
                yield batch
        finally:
            if generation == self.generation:  # not one the stopped loop left (its traceback holds it)
                self.iterating -= 1
            if outer is not None:
                state.batch_index, self.drawn = outer

    def stopped(self) -> None:
        """The loop was stopped (a KeyboardInterrupt) and starts again in this process: the
        generators it left are over, whenever they are collected."""
        self.generation += 1
        self.iterating = self.calls = 0

    def new_epoch(self) -> None:
        self.drawn = self.drawn_at_step = None  # until monitor.batches draws this epoch's
        self.resumed_from = None
        self.calls = 0

    def state_dict(self) -> dict[str, Any]:
        drawn, order, call, shape, again = self.drawn_at_step or (None, None, None, None, False)
        return {"order_rng": order, "batches_drawn": drawn, "batches_call": call,
                "batches_of": None if shape is None else list(shape), "batches_again": again}

    def continue_from(self, epoch: int, skip: int, order_rng: dict[str, torch.Tensor | None] | None,
                      rng: Mapping[str, Any] | None, call: int | None = None,
                      batches_of: Sequence[int | None] | None = None, again: bool = False,
                      since: str = "the checkpoint") -> None:
        self.first_epoch, self.skip, self.order_rng, self.rng = epoch, skip, order_rng, rng
        self.skip_since = since
        self.skip_epoch, self.skip_call, self.skip_of, self.skip_again = epoch, call or 0, batches_of, bool(again)
        self.resumed_from = tuple(batches_of) if batches_of is not None and skip else None


def _shape(loader: Iterable) -> tuple[int | None, int | None]:
    """(samples in the loader's dataset, its batch size), each None where the loader does not say."""
    try:
        samples = len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        samples = None
    size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return samples, size if isinstance(size, int) else None


def _skip_in(skip: int, then: tuple, now: tuple, say: bool = True) -> int:
    """The batches to skip of a loader of ``now`` (samples, batch size) for ``skip`` batches of one
    of ``then``: by samples where only the batch size changed (the samples' order is drawn the
    same), else as many batches as before, the order no longer the interrupted one's."""
    (samples, size), (samples_now, size_now) = then, now
    if samples == samples_now and size and size_now:
        done = min(skip * size, samples)
        batches = done // size_now
        if say:
            _log.warning("monitor: the resumed epoch's loader has batches of %d, the interrupted one's had %d: "
                         "it goes on after the %d samples done (%d batches now%s)", size_now, size, done, batches,
                         f"; {done - batches * size_now} of them are trained again" if done % size_now else "")
        return batches
    if say:
        _log.warning("monitor: the resumed epoch's loader holds %s samples in batches of %s, the interrupted "
                     "one's held %s in batches of %s: it skips the %d batches done as before, but its order is "
                     "not the interrupted one's", samples_now, size_now, samples, size, skip)
    return skip


class Batches:
    """What ``monitor.batches(loader)`` gives: the loader's batches from where a resumed epoch
    goes on, and, for a progress bar (``tqdm(monitor.batches(loader))``), their number: the
    loader's length less the batches a resumed epoch drops (a TypeError for a loader of no length)."""

    def __init__(self, resumable: Resumable, monitor: Monitor, loader: Iterable) -> None:
        self._resumable, self._monitor, self._loader = resumable, monitor, loader
        self._iterator: Iterator[Any] | None = None
        self._length: int | None = None

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            # Counted before the first batch, drawing which moves what the count reads; not for a
            # stream (a DataLoader asked its IterableDataset's length warns when more comes).
            if hasattr(self._loader, "__len__") and \
                    not isinstance(getattr(self._loader, "dataset", None), torch.utils.data.IterableDataset):
                try:
                    len(self)
                except Exception:  # noqa: BLE001 - len() says so when asked
                    pass
            self._iterator = self._resumable.iterate(self._monitor, self._loader)
        return next(self._iterator)

    def __len__(self) -> int:
        if self._length is None:
            self._length = max(len(self._loader) - self._resumable.to_skip(self._monitor, self._loader), 0)
        return self._length


_END = object()


def position_of_rank(loop: Mapping[str, Any], rank: int, world_size: int) -> Mapping[str, Any]:
    """A checkpoint's loop position as rank ``rank`` of a job of ``world_size`` continues from:
    its own where the checkpoint holds each rank's (``loop["ranks"]``) and the job is as big."""
    ranks = loop.get("ranks") or []
    return {**loop, **ranks[rank]} if len(ranks) == world_size else loop


def batches_done(loop: Mapping[str, Any]) -> int:
    """The batches of its epoch a checkpoint's loop position had used: none once the epoch was
    done; those ``monitor.batches`` gave (more than the steps under gradient accumulation); else,
    for a loop that iterates its loader itself or an older checkpoint, one a step."""
    if loop.get("epoch_done"):
        return 0
    drawn = loop.get("batches_drawn")
    return loop["batch"] if drawn is None else drawn
