"""One checkpoint file: its fixed schema, an unwrapped model, and a load that runs no code."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.checkpoint_loop import trained_folder
from monitor import resume
from monitor.checkpoint import (KEYS, CheckpointError, UnsafeCheckpointError, build_checkpoint,
                                load_checkpoint, save_checkpoint)
from monitor.checkpoint.folder import MANIFEST
from monitor.checkpoint.rng import capture_rng


def test_a_checkpoint_has_the_fixed_schema_and_loads_with_weights_only(tmp_path):
    folder = trained_folder(tmp_path)
    data = torch.load(folder / "step-000000010.pt", weights_only=True)
    assert tuple(data) == KEYS
    assert (data["format"], data["version"]) == ("monitor.checkpoint", 1)
    assert data["loop"] == {"epoch": 1, "step": 10, "batch": 5, "epoch_done": True, "order_rng": None,
                            "batches_drawn": None, "batches_call": None, "batches_of": None, "batches_again": False,
                            "ranks": None}
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


def test_a_model_with_a_submodule_compiled_in_place_is_saved_named_plain_and_resumes_either_way(tmp_path):
    # A multi-task loop's model.encoder = torch.compile(model.encoder): its checkpoint said
    # encoder._orig_mod.0.weight, so the best one did not load into the model built plain, and a
    # run killed without compile could not resume with it.
    def build(compiled: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Module()
        model.encoder, model.head = nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2)
        model.encoder[0].requires_grad_(False)
        if compiled:
            model.encoder = torch.compile(model.encoder, backend="eager")
        return model

    for saved_compiled, resumed_compiled in ((True, False), (False, True), (True, True)):
        model = build(saved_compiled)
        checkpoint = build_checkpoint(model=model, loop={"epoch": 0, "step": 3, "batch": 3, "epoch_done": False},
                                      rng=capture_rng(), callbacks={}, run={}, metric={})
        assert sorted(checkpoint["model"]) == ["encoder.0.bias", "encoder.0.weight", "head.bias", "head.weight"]
        assert checkpoint["frozen"] == ["encoder.0.weight", "encoder.0.bias"]
        save_checkpoint(tmp_path / "step-000000003.pt", checkpoint)
        fresh = build(resumed_compiled)
        with torch.no_grad():
            for parameter in fresh.parameters():
                parameter.zero_().requires_grad_(True)
        resume(tmp_path / "step-000000003.pt", fresh)
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
        assert [p.requires_grad for p in fresh.parameters()] == [False, False, True, True]
    plain = build(False)
    plain.load_state_dict(torch.load(tmp_path / "step-000000003.pt", weights_only=True)["model"])  # the user's own


def test_a_checkpoint_from_before_requires_grad_was_kept_loads_and_resumes(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    checkpoint = build_checkpoint(model=model, loop={"epoch": 0, "step": 4, "batch": 4, "epoch_done": False},
                                  rng=capture_rng(), callbacks={}, run={}, metric={})
    assert checkpoint["frozen"] == ["0.weight", "0.bias"]
    del checkpoint["frozen"]  # as written before it was kept
    save_checkpoint(tmp_path / "step-000000004.pt", checkpoint)
    fresh = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    assert resume(tmp_path / "step-000000004.pt", fresh).step == 4
    assert all(p.requires_grad for p in fresh.parameters())  # nothing said of it: left as it is


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


def test_a_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    folder = trained_folder(tmp_path, epochs=1)
    data = torch.load(folder / "step-000000004.pt", weights_only=True)
    data["version"] = 2
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version <= 1, got version 2 .* upgrade monitor"):
        load_checkpoint(tmp_path / "future.pt")
