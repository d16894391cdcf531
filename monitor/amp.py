"""What a ``torch.amp.GradScaler`` has done to the gradients, read without waiting for the device.

Under mixed precision ``loss.backward()`` leaves gradients multiplied by the scaler's scale
(65536 at first) until ``scaler.unscale_(optimizer)`` divides them, which ``scaler.step`` does
if the loop did not. Gradient norms must be those of the true gradients, whichever order the
loop calls ``monitor.after_backward()`` and ``unscale_`` in.

GradScaler says neither whether an optimizer's gradients were unscaled nor its scale without a
device sync (``get_scale()`` calls ``.item()``). This module reads its ``_per_optimizer_states``
and ``_scale``, the two private attributes torch's own ``step``/``update`` use, here alone.

    divisor = scale_of(scaler, [optimizer])   # None: the gradients are unscaled already
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def scale_of(scaler: Any, optimizers: Iterable[torch.optim.Optimizer]) -> float | torch.Tensor | None:
    """The scale the gradients of ``optimizers`` are multiplied by now, or None if they are not.

    A float for a scaler on the CPU; on an accelerator a 0-d copy of its scale tensor (taken on
    the device, read later), since ``scaler.update()`` changes the scale in place after the step.
    """
    if scaler is None or not scaler.is_enabled():
        return None
    scale = getattr(scaler, "_scale", None)
    if scale is None:  # scaler.scale() never ran: no gradient was scaled
        return None
    states = getattr(scaler, "_per_optimizer_states", {})
    from torch.amp.grad_scaler import OptState

    optimizers = list(optimizers)
    if optimizers and all(id(o) in states and states[id(o)]["stage"] is not OptState.READY for o in optimizers):
        return None  # unscale_ (or step) already divided them
    return float(scale) if scale.device.type == "cpu" else scale.detach().reshape(()).clone()


def current_scale(scaler: Any) -> float | torch.Tensor | None:
    """The scaler's scale as it is now (after ``update()``), without a device sync; None if disabled.

    On an accelerator, the scaler's own one-element tensor, which ``update()`` changes in place:
    log it at once (``Log.scalar`` copies it on its device).
    """
    if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
        return None
    scale = scaler._scale
    return float(scale) if scale.device.type == "cpu" else scale


def scaler_near(frame: Any) -> str | None:
    """The name of a GradScaler in use (enabled, its loss scaled already) among the names the
    loop's code sees: those of the first frame outside this package, its module's, and its
    ``self``'s attributes (a trainer class's ``self.scaler``); None where there is none.

    A look at one frame's names, taken once a run: what a loop that never gave ``train_start``
    its scaler would otherwise show only as norms 65,536 times too large.
    """
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == __package__:
        frame = frame.f_back
    if frame is None:
        return None
    owner = frame.f_locals.get("self")
    places = [("", frame.f_locals), ("", frame.f_globals)]
    if owner is not None and isinstance(getattr(owner, "__dict__", None), dict):
        places.append(("self.", vars(owner)))
    for prefix, names in places:
        for name, value in list(names.items()):
            if isinstance(value, torch.amp.GradScaler) and value.is_enabled() and \
                    getattr(value, "_scale", None) is not None:
                return prefix + name
    return None
