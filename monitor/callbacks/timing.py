"""Timing: where a step's time goes (compute or waiting for data), throughput, and memory."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

from monitor.callbacks._every import is_due
from monitor.checks import one_of, positive_int
from monitor.core import Callback, LoopState
from monitor.log import Log
from monitor.records import Order

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Timing(Callback):
    """Plots step time, the part of it spent waiting for data, samples per second, and memory.

        monitor = Monitor([Timing(every=10)], env="mnist")
        for x, y in monitor.batches(loader):     # the wait for each batch is timed here
            ...; monitor.step_end(loss=loss, inputs=x)

    Windows: ``step time`` (ms; trace ``step``, from the end of one ``step_end`` (its callbacks
    done: a checkpoint's save is in no step) to the next, an epoch's first from ``epoch_start``
    (its data wait holds the start of a loader's workers), and ``data wait``, the time
    ``monitor.batches(loader)`` spent getting the batch; a validation between two steps is not
    part of the next one's time: with a loop that iterates its loader itself there is no data
    wait trace); ``throughput`` (samples per second,
    from the first dimension of ``inputs`` given to ``step_end``; for a tuple or dict of parts,
    the lengths of time-major (T, B) sequences beside them (``(padded, lengths)``), else of
    ``targets`` where its first dimension is one of theirs or theirs disagree (a graph batch:
    nodes, edges, one label a graph), else of its first tensor, or its length where it is a tuple
    of samples: a detection batch's images; steps per second without them; where a step drew
    several batches through ``monitor.batches`` (micro-batches of gradient accumulation), the
    samples of all of them; ``unit="tokens"``: tokens per second, a language model's, every
    element of the token ids, ``inputs`` (B x T) or the first tensor of its parts); ``memory`` (MB: the
    process's resident memory and, on CUDA, memory allocated, reserved and the peak allocated, as
    ``torch.cuda.max_memory_allocated`` says: never reset here, so a loop's own
    ``reset_peak_memory_stats`` keeps its meaning). On CUDA the trace ``device`` is the
    time between CUDA events recorded at consecutive ``step_end`` calls, read by the sink's
    worker: the training thread never synchronizes. Logged every ``every`` steps (1, 1 + every,
    ...; the first step is timed from ``epoch_start``, or from where ``monitor.batches`` began
    drawing a resumed epoch's batches; a loop with neither has no time for its first step, and
    its points begin at 1 + every), and at ``train_end`` for the steps since the last point.
    Each point is the mean over the steps since the one before (their samples over their time
    for the throughput), as a progress bar's rate is: one slow step in ten shows as a tenth.
    """

    times_steps = True

    def __init__(self, every: int = 10, unit: str = "samples") -> None:
        self.every = positive_int("every", every)
        self.unit = one_of("unit", unit, ("samples", "tokens"))
        self._event: Any = None  # the CUDA event recorded at the previous step_end
        self._start: Any = None  # ... at the last point's step_end, while no validation or epoch came between
        self._device: torch.device | None = None
        # Since the last point: the steps timed, their seconds, data waits and samples
        self._steps = self._waits = self._samples = 0
        self._seconds = self._waited = 0.0
        self._drawn = [0, 0]  # the batches monitor.batches drew since the last step_end, and their samples
        self._steps_axis = False  # whether the throughput's axis was said to be steps per second

    def on_train_start(self, state: LoopState, log: Log) -> None:
        self._drawn = [0, 0]
        state.batch_drawn = self._count if self.unit == "samples" else self._count_tokens
        parameter = next(state.model.parameters(), None) if state.model is not None else None
        self._device = parameter.device if parameter is not None and parameter.device.type == "cuda" else None
        for window, ylabel in (("step time", "milliseconds"), ("throughput", f"{self.unit} per second"),
                               ("memory", "MB")):
            if window not in log.laid_out:
                log.lay_out(window, Order.TIMING, title=window, xlabel="step", ylabel=ylabel)

    def on_epoch_start(self, state: LoopState, log: Log) -> None:
        self._event = self._start = None  # validation and the epoch's end are not a step's time
        self._drawn = [0, 0]

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        if state.validated_step is not None:  # in a thread of its own: the loop's steps go on meanwhile
            return
        self._event = self._start = None  # the next step's starts after it
        self._drawn = [0, 0]  # a validation loader's batches are no step's

    def _count(self, batch: Any) -> None:
        drawn = self._drawn
        drawn[0] += 1
        drawn[1] += batch.shape[0] if type(batch) is torch.Tensor and batch.dim() else _batch_size(batch) or 0

    def _count_tokens(self, batch: Any) -> None:
        self._drawn[0] += 1
        self._drawn[1] += _tokens(batch)

    def on_step_end(self, state: LoopState, log: Log) -> None:
        now = time.perf_counter()
        began = state.step_began  # after the hooks before it: a save, a validation is in no step
        drawn, self._drawn = self._drawn, [0, 0]
        if began is not None:
            self._steps += 1
            self._seconds += now - began
            if state.data_wait is not None:
                self._waited += state.data_wait
                self._waits += 1
            inputs = state.inputs
            if drawn[0] > 1:  # micro-batches: the step's samples are all of theirs, not the last one's
                self._samples += drawn[1]
            elif inputs is not None and self.unit == "tokens":
                self._samples += _tokens(inputs)
            elif inputs is not None:
                self._samples += inputs.shape[0] if type(inputs) is torch.Tensor and inputs.dim() \
                    else _batch_size(inputs, state.targets) or 0
        due = is_due(state.step, self.every)
        event = previous = None
        if self._device is not None and (due or is_due(state.step + 1, self.every)):
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self._device))  # the model's device, whichever is current
            previous, self._event = self._event, event
        if not due:
            return
        start, self._start = self._start, event
        self._point(log, state.step, start, event, previous)

    def on_train_end(self, state: LoopState, log: Log) -> None:
        self._point(log, state.step)  # the steps since the last point: every=N's last ones
        self._event = self._start = None

    def _point(self, log: Log, step: int, start: Any = None, event: Any = None, previous: Any = None) -> None:
        """The mean of the steps since the last point, at ``step``; ``start``/``previous`` and
        ``event``: CUDA events the device's time is read between (by the sink)."""
        steps, seconds, waited, waits, samples = self._steps, self._seconds, self._waited, self._waits, self._samples
        self._steps = self._waits = self._samples = 0
        self._seconds = self._waited = 0.0
        if not steps:
            return
        times = {"step": seconds * 1000 / steps}
        if waits:
            times["data wait"] = waited * 1000 / waits
        log.scalars("step time", step, times)
        if start is not None:  # the steps since the last point, with nothing between them
            log.vector("step time", step, ("device",), lambda: [_elapsed_ms(start, event) / self.every])
        elif previous is not None:  # this step alone
            log.vector("step time", step, ("device",), lambda: [_elapsed_ms(previous, event)])
        trace = self.unit if samples else "steps"
        if not samples and not self._steps_axis:  # a loop with no batches to count (a monitor.steps one)
            self._steps_axis = True
            log.window("throughput", ylabel="steps per second")
        log.scalar("throughput", trace, step, (samples or steps) / seconds if seconds > 0 else float("nan"))
        device = self._device
        log.vector("memory", step, _MEMORY_TRACES[device is not None], lambda: _memory_mb(device))


_MEMORY_TRACES = {False: ("resident",), True: ("resident", "allocated", "reserved", "peak")}


def _elapsed_ms(start: Any, end: Any) -> float:
    """In the sink: waits for the device to pass ``end`` (this thread only), then the time between."""
    end.synchronize()
    return start.elapsed_time(end)


def _memory_mb(device: torch.device | None) -> list[float]:
    """In the sink: resident memory, and the CUDA allocator's figures (host-side counters, no sync)."""
    values = [_resident_bytes() / 2**20]
    if device is not None:
        values += [torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20,
                   torch.cuda.max_memory_allocated(device) / 2**20]
    return values


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm", "rb") as file:
            return int(file.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):  # not Linux: the peak is what there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _tokens(batch: Any) -> int:
    """The tokens of a language model's batch: every element of its token ids (B x T), the
    first tensor of a tuple or dict of parts (ids, then a mask or the targets)."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    return next((t.numel() for t in values if isinstance(t, torch.Tensor)), 0)


def _batch_size(inputs: Any, targets: Any = None) -> int | None:
    """The samples in a batch given as a tuple or dict of tensors: where the parts' first
    dimensions disagree, a 1-d part's length that is the others' second dimension (time-major
    sequences beside their lengths); the targets' first dimension where it is one of the parts'
    or the parts' disagree (a graph batch's nodes, edges and graph ids beside one label a graph;
    table columns of their own widths); else a tuple of samples' length (a detection batch's
    images); else the first part's first dimension (ids and a mask)."""
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (tuple, list)) else ()
    parts = [t for t in values if isinstance(t, torch.Tensor) and t.dim() > 0]
    if not parts:
        return None
    firsts = {t.shape[0] for t in parts}
    if len(firsts) > 1 and not (isinstance(targets, torch.Tensor) and targets.dim() == 1):
        # Time-major (T, B) parts beside their lengths (B): pad_sequence's and nn.GRU's default
        seconds = {t.shape[1] for t in parts if t.dim() > 1}
        if isinstance(targets, torch.Tensor) and targets.dim() > 1:
            seconds &= {targets.shape[1]}
        lengths = [t.shape[0] for t in parts if t.dim() == 1 and t.shape[0] in seconds]
        if lengths:
            return lengths[0]
    if isinstance(targets, torch.Tensor) and targets.dim() > 0 and (targets.shape[0] in firsts or len(firsts) > 1):
        return targets.shape[0]
    if isinstance(inputs, (tuple, list)) and _samples_each(inputs):
        return len(inputs)
    return parts[0].shape[0]


def _samples_each(inputs: tuple | list) -> bool:
    """Whether ``inputs`` holds a tensor a sample rather than parts of one batch (ids and a mask,
    features and labels: dim 0 the batch in each): CHW images, grey or colour (a detection batch),
    or 1-d or 2-d tensors of their own sizes (sequences, HW images)."""
    if not all(isinstance(t, torch.Tensor) for t in inputs) or len({t.dim() for t in inputs}) != 1:
        return False
    dims = inputs[0].dim()
    return all(t.shape[0] in (1, 3) for t in inputs) if dims == 3 else \
        dims in (1, 2) and len({t.shape for t in inputs}) > 1
