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


def compiled_parts(model: torch.nn.Module) -> dict[str, str]:
    """The parts of ``model`` wrapped by torch.compile, named plain (``""``: the whole model), each
    with its backend's name where torch tells it (``{"enc": "inductor"}``)."""
    outer = []  # DDP's and torch.compile's wrappers around the whole model
    while model is not unwrap_model(model):
        outer.append(("", model))
        model = model._orig_mod if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module) else model.module
    parts = {}
    for path, module in [*outer, *model.named_modules()]:
        if isinstance(getattr(module, "_orig_mod", None), torch.nn.Module) and uncompiled(path) not in parts:
            backend = getattr(getattr(module, "dynamo_ctx", None), "callback", None)
            for _ in range(5):  # torch's wrappers of the backend, the name on one of them
                name = getattr(backend, "_compiler_name", None) or getattr(backend, "compiler_name", None)
                if isinstance(name, str) or backend is None:
                    break
                backend = getattr(backend, "_torchdynamo_orig_backend", None)
            parts[uncompiled(path)] = name if isinstance(name, str) else "torch.compile"
    return parts


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


Masks = dict[int, tuple[torch.nn.Module, str]]  # a pruned parameter's id: its module and mask buffer's name


def pruning_masks(model: torch.nn.Module) -> Masks:
    """The parameters ``torch.nn.utils.prune`` masks (``weight_orig``), by id: the module and the
    name of its mask buffer (``weight_mask``), read when used: pruning again registers a new one."""
    from torch.nn.utils.prune import BasePruningMethod

    found: Masks = {}
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():  # how prune itself finds its methods
            if isinstance(hook, BasePruningMethod):
                orig = module._parameters.get(f"{hook._tensor_name}_orig")
                if orig is not None:
                    found[id(orig)] = (module, f"{hook._tensor_name}_mask")
    return found


def as_used(params: list[torch.Tensor], masks: Masks) -> list[torch.Tensor]:
    """The weights the forward pass uses: a pruned parameter masked (``weight_orig * weight_mask``,
    a new tensor), the others as they are."""
    if not masks:
        return params
    with torch.no_grad():
        return [p * getattr(*masks[id(p)]) if id(p) in masks else p for p in params]
