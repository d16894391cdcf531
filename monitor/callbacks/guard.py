"""Guard: notices the first step where training goes wrong, marks it, and keeps the evidence."""
from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any

import torch

from monitor.checks import one_of, positive_int
from monitor.core import Callback, LoopState, Monitor
from monitor.distributed import mean_across_ranks
from monitor.log import Log
from monitor.norms import foreach_norm
from monitor.records import Order

_log = logging.getLogger("monitor")
MARKER = "guard"


class TrainingDiverged(BaseException):
    """Raised by ``Guard(action="stop")`` at the first bad step. Like ``KeyboardInterrupt`` it is
    not an ``Exception``, so the Monitor's containment of callback errors lets it end the loop."""


SPIKE_STEPS = 10  # good steps before a spike is looked for


class Guard(Callback):
    """Watches the loss and the gradients for non-finite values (and, optionally, spikes).

        monitor = Monitor([Scalars(), Guard(action="stop"), Checkpoint("ckpt", every_steps=100, resume=True)])
        # a NaN loss at step 37: a mark at x=37 in "loss", the checkpoint before it kept, the loop stopped

    At the first bad step it puts a mark (trace ``guard``) in window ``loss`` at that step, keeps
    the latest checkpoint from before it out of the Checkpoint callback's pruning (the run's
    evidence: resuming from it replays the failing step exactly), logs a warning, and then goes
    on (``action="warn"``) or raises :class:`TrainingDiverged` (``"stop"``). Bad means a loss or,
    with ``grads=True``, a total gradient norm that is NaN or infinite, or with ``spike=k`` a loss
    more than k standard deviations above the mean of the last ``window`` good steps (at least
    10, the fewest a spike is looked for after).
    ``grads=True`` takes the norm of every gradient once a step (what GradNorms costs);
    ``grads=False`` watches the loss alone, at almost no cost. Under a GradScaler given to
    ``train_start`` the gradients are not watched: an overflow there is the scaler's to skip.

    A loss on the CPU is checked at once. One on an accelerator is copied to host memory
    without waiting and checked at a later step, when the device has got there: the training
    thread never synchronizes, and the mark still goes at the bad step.

    Under ``torch.distributed`` with ``action="stop"``, every rank watches the loss averaged over
    the ranks (one ``all_reduce`` a step, on the loss's device): every rank then stops at the
    same step, where a rank stopping alone would leave the others waiting at their next collective.
    """

    def __init__(self, action: str = "warn", spike: float | None = None, window: int = 100,
                 grads: bool = True) -> None:
        self.action = one_of("action", action, ("warn", "stop"))
        if spike is not None and (isinstance(spike, bool) or not isinstance(spike, (int, float)) or spike <= 0):
            raise ValueError(f"spike must be a number of standard deviations > 0 or None, got {spike!r}")
        self.spike = spike
        self.window = positive_int("window", window)
        if self.window < SPIKE_STEPS:
            raise ValueError(f"window must be at least {SPIKE_STEPS} steps (a spike is measured against their "
                             f"mean and spread), got {window}")
        self.grads = bool(grads)
        self.bad_step: int | None = None
        self._checkpoint: Any = None
        self._check_before_save: Any = None  # what the checkpoint calls before each save
        self._history: deque[float] = deque(maxlen=self.window)
        self._grad_norms: dict[str, Any] = {}  # the step's total norm, per pass ("grads D") where it names them
        self._pending: deque = deque()  # (step, names, values on host memory, event) from a device
        self._taken: int | None = None  # the step whose values were checked or queued last
        self._agree = False  # several ranks, which must stop together: watch the loss averaged over them
        self._main = True  # rank 0, or the only process: the one that says it and knows the checkpoints

    def on_attach(self, monitor: Monitor) -> None:
        from monitor.callbacks.checkpoint import Checkpoint

        self._agree = monitor.world_size > 1 and self.action == "stop"
        self._main = monitor.rank == 0
        # Given to another Monitor (a list of callbacks reused for each fold): a run of its own.
        self.bad_step, self._taken = None, None
        self._history.clear()
        self._pending.clear()
        self._grad_norms = {}
        earlier = self._checkpoint.before_save if self._checkpoint is not None else []
        if self._check_before_save in earlier:  # the last Monitor's: its model, its state
            earlier.remove(self._check_before_save)
        self._checkpoint = next((c for c in monitor.callbacks if isinstance(c, Checkpoint)), None)
        if self._checkpoint is not None:  # whichever comes first in the list: a save sees this step checked
            self._check_before_save = lambda: self._take(monitor.state, monitor.log, settle=True)
            self._checkpoint.before_save.append(self._check_before_save)

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        if not self.grads or self.bad_step is not None or state.model is None or \
                state.scaler is not None and state.scaler.is_enabled():
            return
        named = state.backward_pass  # a GAN's after_backward("D"): that optimizer's parameters
        params = state.model.parameters() if named is None else \
            (p for group in state.optimizers[named].param_groups for p in group["params"])
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            with torch.no_grad():  # in float32: a float16 norm overflows long before the gradients do
                self._grad_norms["grads" if named is None else f"grads {named}"] = \
                    torch.linalg.vector_norm(torch.stack(foreach_norm(grads)))

    def on_step_end(self, state: LoopState, log: Log) -> None:
        self._take(state, log, settle=False)

    def _take(self, state: LoopState, log: Log, settle: bool) -> None:
        """Checks the step's values, or queues them from a device; ``settle`` (before a checkpoint is
        written, which waits for the device anyway) waits for every queued one."""
        if self.bad_step is not None or self._taken == state.step:
            return
        self._taken = state.step
        loss = state.loss
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            raise ValueError(f"loss must be a number or a one-element tensor or numpy array, got a tensor of shape "
                             f"{tuple(loss.shape)}")
        if self._agree and loss is not None:  # a collective: every rank takes each step once, here
            loss = mean_across_ranks({"loss": loss})["loss"]
        watched = {"loss": loss, **self._grad_norms} if loss is not None else self._grad_norms
        self._grad_norms = {}
        device = next((v.device for v in watched.values() if isinstance(v, torch.Tensor) and v.device.type != "cpu"),
                      None)
        if watched and device is None:  # on the CPU: read at once
            self._check(state.step, {name: v.item() if isinstance(v, torch.Tensor) else float(v)
                                     for name, v in watched.items()}, log)
        elif watched:
            self._queue(state.step, watched, device)
        while self._pending and self.bad_step is None and (settle or self._pending[0][3].query()):
            step, names, host, event = self._pending.popleft()
            event.synchronize()
            self._check(step, dict(zip(names, host.tolist())), log)

    def _queue(self, step: int, watched: dict[str, Any], device: torch.device) -> None:
        on_device = torch.stack([v.detach().reshape(()).to(device, torch.float32) if isinstance(v, torch.Tensor)
                                 else torch.full((), float(v), device=device) for v in watched.values()])
        host = torch.empty(on_device.shape, dtype=torch.float32, pin_memory=device.type == "cuda")
        host.copy_(on_device, non_blocking=True)
        event = torch.Event(device=device)
        event.record(torch.accelerator.current_stream(device))  # the values' device, whichever is current
        self._pending.append((step, tuple(watched), host, event))

    def _check(self, step: int, values: dict[str, float], log: Log) -> None:
        loss = values.get("loss")
        reason = None
        passes = [name.removeprefix("grads ") for name, v in values.items()
                  if name.startswith("grads ") and not math.isfinite(v)]
        where = f" (in the backward pass of {', '.join(passes)})" if passes else ""
        if loss is not None and not math.isfinite(loss):
            reason = f"the loss is {loss}" + (f", a gradient too{where}" if passes else "")
        elif any(not math.isfinite(v) for name, v in values.items() if name != "loss"):
            reason = "a gradient is not finite" + where
        elif loss is not None and self.spike is not None and len(self._history) >= SPIKE_STEPS:
            mean, spread = statistics.fmean(self._history), statistics.pstdev(self._history)
            # A constant loss (clamped, a plateau) has no spread: a thousandth of its level stands
            # in, so a jump from it counts, and a loss held at 0 (a buffer filling) is left alone.
            spread = max(spread, abs(mean) * 1e-3)
            if spread and loss > mean + self.spike * spread:
                reason = f"the loss {loss:.4g} is {(loss - mean) / spread:.1f} standard deviations above its mean"
        if reason is None:
            if loss is not None:
                self._history.append(loss)
            return
        self.bad_step = step
        at = loss if loss is not None and math.isfinite(loss) else (self._history[-1] if self._history else 0.0)
        log.window("loss", order=Order.LOSS, markers=[MARKER])
        log.scalar("loss", MARKER, step, at)
        kept = self._checkpoint.keep_before(step, f"last good step before step {step}") \
            if self._checkpoint is not None else None
        message = f"monitor: Guard: {reason} at step {step}" + (
            "" if self._checkpoint is None else f"; checkpoint {kept} is kept to replay it" if kept
            else "; no checkpoint from before it to keep" if self._main
            else "; rank 0 says which checkpoint is kept")  # the others hold no list of them
        if self._main:  # said once: a loss gone NaN stays NaN, and the mark shows where it went
            cure = ("an inf from the loss itself (a CTC loss's impossible alignment, a log of 0) wants the loss "
                    "mended, nn.CTCLoss(zero_infinity=True) or a clamp; a diverging run a lower learning rate or "
                    "clip_grad_norm_" if loss is not None and math.isinf(loss) else
                    "a lower learning rate or clip_grad_norm_ is the usual cure")
            _log.warning(message + ("" if self.action == "stop" else
                                    f"; training goes on, said once (Guard(action='stop') stops it here; {cure})"))
        if self.action == "stop":
            raise TrainingDiverged(message.removeprefix("monitor: ") + "; training stopped")

    def state_dict(self) -> dict[str, Any]:
        return {"bad_step": self.bad_step, "history": list(self._history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_step = state.get("bad_step")
        self._history = deque(state.get("history", []), maxlen=self.window)
