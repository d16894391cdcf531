"""What ``monitor checkpoints`` shows: a folder's checkpoints in a table, and one file's contents."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monitor.checkpoint.file import FORMAT, CheckpointError, check_schema, load_checkpoint, load_file
from monitor.checkpoint.folder import checkpoint_files, ranked_later, read_manifest


@dataclass(frozen=True)
class CheckpointInfo:
    """One file of a checkpoint folder, as ``monitor checkpoints DIR`` lists it."""

    path: Path
    step: int
    epoch: int | None
    metric_name: str | None
    metric: float | None
    size: int
    time: float | None
    latest: bool
    best_rank: int | None  # 1 for the best
    last: bool
    problem: str | None = None
    kept: str | None = None  # why it is kept for good, e.g. Guard's "last good step before step 16"


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint file in ``directory``, oldest step first, read without loading tensors.

        for info in list_checkpoints("runs/mnist/checkpoints"):
            print(info.step, info.metric, "latest" if info.latest else "")
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file" if directory.exists() else "nothing (no such folder)"
        raise FileNotFoundError(f"directory must be a folder of checkpoints, got {str(directory)!r}, which is {what}")
    manifest = read_manifest(directory) or {}
    best, last = list(manifest.get("best") or []), list(manifest.get("last") or [])
    ranked = ranked_later(manifest)
    kept = {r.get("file"): r["kept"] for r in manifest.get("checkpoints") or [] if isinstance(r, dict) and r.get("kept")}
    infos = []
    for path in checkpoint_files(directory):
        step = int(path.name[len("step-"):-len(".pt")])
        epoch = name = value = when = problem = None
        try:
            data = load_checkpoint(path, verify=False, mmap=True)
            step, epoch, when = data["loop"]["step"], data["loop"]["epoch"], data["time"]
            name, value = data["metric"]["name"], data["metric"]["value"]
            if value is None:  # ranked by the validation that followed it
                value = ranked.get(path.name)
            size = path.stat().st_size
        except (CheckpointError, OSError) as error:
            if not path.exists():  # pruned since the folder was listed: a live run's
                continue
            problem, size = str(error), path.stat().st_size
        infos.append(CheckpointInfo(path, step, epoch, name, value, size, when,
                                    manifest.get("latest") == path.name,
                                    best.index(path.name) + 1 if path.name in best else None,
                                    path.name in last, problem, kept.get(path.name)))
    return infos


def describe_checkpoint(path: str | Path, *, trust: bool = False) -> list[tuple[str, str]]:
    """(label, text) rows summarising a checkpoint file; any other torch file only with ``trust``.

        for label, text in describe_checkpoint("runs/mnist/checkpoints/step-000000120.pt"):
            print(f"{label:<10} {text}")
    """
    path = Path(path)
    data = load_file(path, trust=trust)
    head = [("file", f"{path} ({_size(path.stat().st_size)}, modified {_when(path.stat().st_mtime)})")]
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return head + [("contents", _foreign(data))]
    data = check_schema(data, path)
    loop, run, metric, rng = data["loop"], data["run"], data["metric"], data["rng"]
    classes = data["classes"]
    rows = head + [
        ("format", f"{data['format']} version {data['version']}, written by torch {data['torch']} "
                   f"at {_when(data['time'])}"),
        ("loop", _position(loop)),
        ("run", f"env {run['env']!r}, run id {run['run_id']}, run log at byte {run['runlog_position']}"),
        ("metric", f"{metric['name']} = {metric['value']} ({metric['mode']})" if metric["name"] else "none"),
        ("model", f"{classes['model']}: {_tensors(data['model'])}"),
    ]
    for part in ("optimizer", "scheduler", "scaler"):
        rows.append((part, _part(classes.get(part), data[part])))
    rows.append(("rng", f"python, {'numpy, ' if rng.get('numpy') else ''}torch CPU, "
                        f"{len(rng.get('cuda') or [])} CUDA device(s)"
                        + (f"; for each of {len(rng['ranks'])} ranks" if rng.get("ranks") else "")))
    rows.append(("callbacks", ", ".join(data["callbacks"]) or "none"))
    rows.append(("extras", ", ".join(map(str, data["extras"])) or "none"))
    return rows


def _tensors(state: dict[str, Any]) -> str:
    """How many tensors, numbers and bytes; tied weights (an embedding shared with the output
    layer: two names, one tensor, as the file keeps them) counted once, as the model's parameters are."""
    named = [t for t in state.values() if isinstance(t, torch.Tensor)]
    tensors = list({(t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride()): t
                    for t in named}.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors})
    count = sum(t.numel() for t in tensors)
    size = sum(t.numel() * t.element_size() for t in tensors)
    tied = f" ({len(named)} names: tied weights)" if len(named) > len(tensors) else ""
    plural = "" if len(tensors) == 1 else "s"
    return f"{len(tensors)} tensor{plural}{tied}, {count:,} numbers ({', '.join(dtypes) or 'none'}), {_size(size)}"


def _part(name: Any, state: Any) -> str:
    if state is None:
        return "none"
    if isinstance(name, dict):  # several optimizers, by name
        return "; ".join(f"{key}: {_part(name[key], state.get(key))}" for key in name)
    if isinstance(state, dict) and "param_groups" in state:
        return f"{name}: {len(state['param_groups'])} parameter group(s), state for {len(state.get('state', {}))} tensors"
    return f"{name}: {', '.join(map(str, state))[:120]}" if isinstance(state, dict) else str(name)


def _position(loop: dict[str, Any]) -> str:
    """Where the loop was: a loop counted in steps alone (no epoch, each step a batch of it) by its step."""
    if loop["epoch"] == 0 and loop["batch"] == loop["step"] and not loop["epoch_done"]:
        return f"step {loop['step']}"
    return f"epoch {loop['epoch']}, step {loop['step']} ({loop['batch']} of the epoch{', epoch done' * loop['epoch_done']})"


def _foreign(data: Any) -> str:
    if isinstance(data, torch.nn.Module):
        count = sum(p.numel() for p in data.parameters())
        return f"a whole pickled {type(data).__name__} model with {count:,} parameters, not a monitor checkpoint"
    if isinstance(data, dict):
        keys = ", ".join(map(str, list(data)[:8]))
        return f"a dict that is not a monitor checkpoint (keys: {keys}{', ...' if len(data) > 8 else ''})"
    return f"a {type(data).__name__}, not a monitor checkpoint"


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
