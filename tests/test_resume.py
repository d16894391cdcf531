"""resume(): what it could not restore, and a monitor of another env, said plainly."""
from __future__ import annotations


import pytest
import torch

from helpers.checkpoint_loop import build, trained_folder
from monitor import Monitor, resume
from monitor.log import NullSink


def test_resume_says_which_parts_it_could_not_restore(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    parts = build()
    with pytest.warns(UserWarning, match="holds a ExponentialLR scheduler state that is not restored"):
        resume(folder, parts.model, parts.optimizer)
    with pytest.raises(ValueError, match="scaler must be None for .* which holds no scaler state, got a GradScaler"):
        resume(folder, parts.model, parts.optimizer, parts.scheduler, torch.amp.GradScaler("cpu"))


def test_restoring_a_monitor_with_another_env_warns_that_curves_start_over(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    parts = build()
    start = resume(folder, parts.model, parts.optimizer, parts.scheduler)
    start = type(start)(**{**start.__dict__, "env": "elsewhere"})

    class Sink(NullSink):
        env = "mnist"

    monitor = Monitor([], sink=Sink())
    with pytest.warns(UserWarning, match="writes to env 'mnist', the checkpoint's run to 'elsewhere'"):
        start.restore(monitor)
    assert monitor.state.step == start.step == 5
