"""The user's model as the monitor reads it: the module inside its wrappers.

    model = unwrap_model(DistributedDataParallel(torch.compile(net)))    # net
    state = plain_state(model)          # its state_dict, named as if no part of it were compiled
    load_plain_state(model, state)      # back into it, compiled parts or not
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP/DataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def uncompiled(name: str) -> str:
    """A name without torch.compile's wrappers: ``backbone.0.weight`` for
    ``backbone._orig_mod.0.weight`` (a submodule compiled on its own), as a model compiled whole
    is named once unwrapped."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod") if "_orig_mod" in name else name


def plain_state(model: torch.nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` named without torch.compile's wrappers: a checkpoint of a model
    whose encoder was compiled in place loads into the model built plain, and back."""
    return {uncompiled(name): value for name, value in model.state_dict().items()}


def load_plain_state(model: torch.nn.Module, state: Mapping[str, Any], strict: bool = True) -> Any:
    """``model.load_state_dict`` of a state named with or without torch.compile's wrappers,
    whichever parts of ``model`` are compiled now; returns what it returns."""
    own = {uncompiled(name): name for name in model.state_dict()}
    return model.load_state_dict({own.get(uncompiled(name), name): value for name, value in state.items()},
                                 strict=strict)
