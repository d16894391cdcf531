"""Checkpoints: one file's schema and atomic write (file), a folder of them with last-k/best-k
(folder), their listing (listing), RNG capture (rng), the refusal of unsafe pickles
(pickle_scan) and exact resume (resume). The callback that writes them during training is
:class:`monitor.callbacks.Checkpoint`.

    from monitor.checkpoint import load_checkpoint
    data = load_checkpoint("runs/mnist/checkpoints/step-000000500.pt")   # weights_only, no code runs
"""
from monitor.checkpoint.file import (FORMAT, KEYS, VERSION, CheckpointError, CheckpointResumeError, CheckpointWriteError,
                                     DamagedCheckpointError, UnsafeCheckpointError, build_checkpoint,
                                     load_checkpoint, save_checkpoint)

__all__ = ["FORMAT", "KEYS", "VERSION", "CheckpointError", "CheckpointResumeError", "CheckpointWriteError", "DamagedCheckpointError",
           "UnsafeCheckpointError", "build_checkpoint", "load_checkpoint", "save_checkpoint"]
