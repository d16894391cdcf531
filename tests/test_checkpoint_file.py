"""One checkpoint file: its schema, loading without running code, damage, and the random state it keeps."""
from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from helpers.checkpoint_loop import attach, build, train
from monitor import EpochBatchSampler, Monitor, resume
from monitor.checkpoint import (KEYS, CheckpointError, DamagedCheckpointError, UnsafeCheckpointError,
                                build_checkpoint, load_checkpoint, save_checkpoint)
from monitor.checkpoint.folder import MANIFEST
from monitor.log import NullSink
from monitor.checkpoint.rng import capture_rng, restore_rng


def trained_folder(tmp_path: Path, epochs: int = 2) -> Path:
    parts = build()
    checkpoint, monitor, start = attach(parts, tmp_path / "ckpt", every_steps=2, keep_last=3, metric="loss",
                                        extras=lambda: {"note": "hi", "table": torch.arange(3)})
    train(parts, monitor, start, epochs=epochs)
    return tmp_path / "ckpt"


def test_a_checkpoint_has_the_fixed_schema_and_loads_with_weights_only(tmp_path):
    folder = trained_folder(tmp_path)
    data = torch.load(folder / "step-000000010.pt", weights_only=True)
    assert tuple(data) == KEYS
    assert (data["format"], data["version"]) == ("monitor.checkpoint", 1)
    assert data["loop"] == {"epoch": 1, "step": 10, "batch": 5, "epoch_done": True, "order_rng": None}
    assert list(data["model"]) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert data["classes"] == {"model": "Sequential", "optimizer": "SGD", "scheduler": "ExponentialLR", "scaler": None}
    assert data["optimizer"]["param_groups"][0]["momentum"] == 0.9 and data["scaler"] is None
    assert data["scheduler"]["last_epoch"] == 10
    assert set(data["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert set(data["callbacks"]) == {"Checkpoint"}
    assert data["run"]["env"] is None and data["run"]["runlog_position"] is None  # a NullSink keeps no log
    assert len(data["run"]["run_id"]) == 32
    assert data["metric"]["name"] == "loss" and data["metric"]["mode"] == "min"
    assert data["extras"]["note"] == "hi" and torch.equal(data["extras"]["table"], torch.arange(3))


def test_the_model_is_saved_unwrapped_from_ddp_and_torch_compile_and_resumes_into_either(tmp_path):
    import torch.distributed as dist

    model = nn.Linear(3, 2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for wrapped in (nn.parallel.DistributedDataParallel(model), torch.compile(model, backend="eager"),
                        torch.compile(nn.parallel.DistributedDataParallel(model), backend="eager")):
            checkpoint = build_checkpoint(model=wrapped, loop={"epoch": 0, "step": 0, "batch": 0, "epoch_done": False},
                                          rng=capture_rng(), callbacks={}, run={}, metric={})
            assert list(checkpoint["model"]) == ["weight", "bias"]
            save_checkpoint(tmp_path / "step-000000000.pt", checkpoint)
            fresh = nn.Linear(3, 2)
            resume(tmp_path / "step-000000000.pt", torch.compile(fresh, backend="eager"))
            assert torch.equal(fresh.weight, model.weight)
    finally:
        dist.destroy_process_group()


class Payload:
    """Unpickling this would create a file: the proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    evil = folder / "step-000000009.pt"
    payload = {"format": "monitor.checkpoint", "model": Payload(marker)}
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    (folder / MANIFEST).write_text('{"latest": "step-000000009.pt"}')
    for attempt in (lambda: load_checkpoint(evil), lambda: resume(evil, nn.Linear(2, 2)),
                    lambda: resume(folder, nn.Linear(2, 2))):
        with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*step-000000009.pt: it would import and "
                                                        r"call .*pathlib.*trust=True"):
            attempt()
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_the_reason_and_loads_with_trust(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"whole pickled model \(torch.save\(model\).*Linear.*save "
                                                    r"model.state_dict\(\) instead"):
        load_checkpoint(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="must be a monitor checkpoint .* got Linear"):
        load_checkpoint(tmp_path / "model.pt", trust=True)


def test_a_truncated_latest_falls_back_to_the_previous_checkpoint_with_a_warning_naming_it(tmp_path):
    folder = trained_folder(tmp_path)
    latest = folder / "step-000000010.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    parts = build(seed=3)
    with pytest.warns(UserWarning, match=r"checkpoint .*step-000000010.pt cannot be used \(.*damaged"):
        start = resume(folder, parts.model, parts.optimizer, parts.scheduler)
    assert start.path == folder / "step-000000008.pt" and start.step == 8


def test_a_flipped_byte_in_the_latest_fails_its_crc_and_is_skipped(tmp_path):
    folder = trained_folder(tmp_path)
    latest = folder / "step-000000010.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match="fails its CRC check"):
        load_checkpoint(latest)
    with pytest.warns(UserWarning, match="step-000000010.pt cannot be used"):
        parts = build()
        assert resume(folder, parts.model, parts.optimizer, parts.scheduler).step == 8


def test_a_damaged_pointer_falls_back_to_the_newest_good_file(tmp_path):
    folder = trained_folder(tmp_path)
    (folder / MANIFEST).write_text('{"latest": "step-0000')
    with pytest.warns(UserWarning, match=r"latest.json is damaged"):
        parts = build()
        assert resume(folder, parts.model, parts.optimizer, parts.scheduler).step == 10


def test_a_folder_where_every_checkpoint_is_damaged_is_an_error_listing_them(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    for path in folder.glob("step-*.pt"):
        path.write_bytes(b"PK\x03\x04 cut short")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DamagedCheckpointError, match="holds no usable checkpoint; tried step-000000005.pt .*; step-000000004.pt"):
            resume(folder, build().model)


def test_a_missing_path_or_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(FileNotFoundError, match=r"path must be a checkpoint file or a folder of checkpoints .* "
                                                r"got '.*nowhere', which is nothing"):
        resume(tmp_path / "nowhere", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="which is a folder without checkpoints"):
        resume(tmp_path / "empty", model)
    assert resume(tmp_path / "empty", model, missing_ok=True).path is None
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"must be a file written by torch.save, got .*notes.txt.* neither"):
        resume(tmp_path / "notes.txt", model)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"must be a monitor checkpoint .* got a dict with keys \['bias', 'weight'\]"):
        resume(tmp_path / "weights.pt", model)


def test_a_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    data = torch.load(folder / "step-000000004.pt", weights_only=True)
    data["version"] = 2
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version <= 1, got version 2 .* upgrade monitor"):
        load_checkpoint(tmp_path / "future.pt")


def test_resume_says_which_parts_it_could_not_restore(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    parts = build()
    with pytest.warns(UserWarning, match="holds a ExponentialLR scheduler state that is not restored"):
        resume(folder, parts.model, parts.optimizer)
    with pytest.raises(ValueError, match="scaler must be None for .* which holds no scaler state, got a GradScaler"):
        resume(folder, parts.model, parts.optimizer, parts.scheduler, torch.amp.GradScaler("cpu"))


def test_every_random_generator_draws_the_same_numbers_after_a_restore():
    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(state)
    assert (random.random(), np.random.rand()) == first[:2]
    assert torch.equal(torch.rand(3), first[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_cuda_device_draws_the_same_numbers_after_a_restore():
    devices = [torch.device("cuda", d) for d in range(torch.cuda.device_count())]
    torch.rand(1, device=devices[0])  # starts CUDA: only then is its state saved
    state = capture_rng()
    assert len(state["cuda"]) == len(devices)
    first = [torch.rand(3, device=d) for d in devices]
    restore_rng(state)
    assert all(torch.equal(torch.rand(3, device=d), f) for d, f in zip(devices, first))


def test_the_epoch_batch_sampler_order_depends_on_seed_and_epoch_alone_and_skips_without_loading():
    batches = EpochBatchSampler(10, batch_size=3, seed=4)
    batches.set_epoch(2)
    whole = list(batches)
    assert len(whole) == 4 and sorted(sum(whole, [])) == list(range(10))
    torch.manual_seed(123)  # the global generator plays no part
    again = EpochBatchSampler(10, batch_size=3, seed=4)
    again.set_epoch(2, skip=3)
    assert list(again) == whole[3:] and len(again) == 1
    again.set_epoch(1)
    assert list(again) != whole
    loader = DataLoader(list(range(10)), batch_sampler=again, generator=again.generator)
    again.set_epoch(2, skip=1)
    assert [b.tolist() for b in loader] == whole[1:]
    with pytest.raises(ValueError, match=r"skip must be an int between 0 and 4 \(the batches of an epoch\), got 5"):
        again.set_epoch(0, skip=5)


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
