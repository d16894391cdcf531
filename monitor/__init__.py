"""monitor: a live Visdom dashboard for plain PyTorch training loops.

    monitor = Monitor([Scalars(), GradNorms()], env="mnist")
    monitor.train_start(model, optimizer)
    ...  # your loop, calling monitor.after_backward() and monitor.step_end(loss=loss)

Names are imported on first use, so ``monitor --help`` does not wait for torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Monitor": "monitor.core",
    "Callback": "monitor.core",
    "LoopState": "monitor.core",
    "Log": "monitor.log",
    "VisdomSink": "monitor.sink",
    "SinkProcess": "monitor.sink_process",
    "RunLog": "monitor.runlog",
    "SummaryWriter": "monitor.writer",
    "Scalars": "monitor.callbacks",
    "LearningRate": "monitor.callbacks",
    "GradNorms": "monitor.callbacks",
    "Images": "monitor.callbacks",
    "Histograms": "monitor.callbacks",
    "Graph": "monitor.callbacks",
    "Timing": "monitor.callbacks",
    "Profile": "monitor.callbacks",
    "Guard": "monitor.callbacks",
    "TrainingDiverged": "monitor.callbacks",
    "Summary": "monitor.callbacks",
    "Checkpoint": "monitor.callbacks",
    "resume": "monitor.checkpoint.resume",
    "ResumePoint": "monitor.checkpoint.resume",
    "EpochBatchSampler": "monitor.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a module of the package, as README writes them: monitor.runs.exported(...) after `import monitor`
            value = importlib.import_module(f"monitor.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"monitor.{name}":
                raise
            raise AttributeError(f"module 'monitor' has no attribute {name!r}") from None
        globals()[name] = value
        return value
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
