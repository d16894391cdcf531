"""A folder of checkpoints: names, the ``latest.json`` pointer, retention and the fallback on damage.

    checkpoints/
        step-000000040.pt     one file per saved step (saving the same step again replaces it)
        step-000000050.pt
        latest.json           the pointer: {"latest": "step-000000050.pt", "run_id": ..., "best": [...],
                              "last": [...], "checkpoints": [records of the files kept], "finished": false}
        earlier/<run id>/     an earlier run's files, set aside by a new run

``latest.json`` is replaced atomically after each new file is durable, so it always names a
whole file; a reader that finds that file damaged anyway (a disk error, a copy cut short) falls
back to the previous good one and warns, naming the bad file.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import re
import signal
import uuid
from pathlib import Path
from typing import Any, Iterable

from monitor.atomic import write_atomic
from monitor.checkpoint.file import CheckpointError, CheckpointWriteError, DamagedCheckpointError, load_checkpoint
from monitor.records import exit_error, interactive

_log = logging.getLogger("monitor")

MANIFEST = "latest.json"
LOCK = ".checkpoints.lock"  # held by the live process writing the folder (monitor.rundir.FolderLock)
EARLIER = "earlier"  # where a new run sets aside the checkpoints of the folder's earlier run
_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMPORARY = re.compile(r"^\.(step-\d+\.pt|latest\.json)\.[0-9a-f]+\.tmp$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoint files in ``directory``, oldest step first."""
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def temporary_files(directory: Path) -> list[Path]:
    """Temporary files of writes that never finished (their process was killed)."""
    return sorted(p for p in directory.iterdir() if _TEMPORARY.fullmatch(p.name))


def retain(records: Iterable[dict[str, Any]], keep_last: int, keep_best: int,
           mode: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(the records to keep, oldest first; the last ``keep_last`` names; the best ``keep_best`` names).

    Best ranks by ``metric`` (lowest first for ``mode="min"``), an earlier step winning a tie;
    a record without a finite metric is never best. A record marked ``"kept"`` (the last good
    checkpoint before a Guard saw training go wrong) is kept whatever its rank.
    """
    by_step = sorted({r["file"]: r for r in records}.values(), key=lambda r: r["step"])
    last = [r["file"] for r in by_step[-keep_last:]] if keep_last else []
    sign = 1.0 if mode == "min" else -1.0
    scored = [r for r in by_step if r.get("metric") is not None and math.isfinite(r["metric"])]
    best = [r["file"] for r in sorted(scored, key=lambda r: (sign * r["metric"], r["step"]))[:keep_best]]
    kept = [r for r in by_step if r["file"] in set(last) | set(best) or r.get("kept")]
    return kept, last, best


def claim(directory: Path, run_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Makes ``directory`` run ``run_id``'s, cleaning temporary files of killed writes; refuses another run's.

    Returns the ``records`` (the run's checkpoints, as it saved them) whose files are present:
    resumed from an older checkpoint, a run may list files the abandoned run pruned.
    Raises CheckpointWriteError.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for temporary in temporary_files(directory):
            temporary.unlink(missing_ok=True)
        probe = directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}.tmp"  # read-only: said now, not at the first save
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CheckpointWriteError(f"directory {directory} cannot hold checkpoints: {error}") from error
    manifest = read_manifest(directory, warn=False)
    present = {p.name for p in checkpoint_files(directory)}
    records = [r for r in records if r["file"] in present]
    if manifest is not None and manifest.get("run_id") == run_id:  # a validation after a file ranked it later
        ranked = ranked_later(manifest)
        records = [{**r, "metric": ranked[r["file"]]} if r.get("metric") is None and ranked.get(r["file"]) is not None
                   else r for r in records]
    # Files the run's records lack are another run's, unless the pointer or the files say they are
    # this run's: killed twice between saving a file and the pointer's update, it let go of the
    # older one before deleting it. The next save prunes them.
    foreign = [] if manifest is not None and manifest.get("run_id") == run_id else [
        name for name in sorted(present - {r["file"] for r in records}) if _run_id_of(directory / name) != run_id]
    if foreign:
        raise foreign_checkpoints(directory, foreign)
    return records


continued_runs: set[str] = set()  # the runs resume() found a checkpoint of, in this process


def refuse_another_run(directory: Path, run_id: str | None) -> None:
    """Before a new run begins (and its Monitor sets the env's earlier run aside): CheckpointWriteError
    if ``directory`` holds checkpoints of a run other than ``run_id`` (the Checkpoint's, given to
    one Monitor after another) that no ``resume()`` of this process continues."""
    manifest = read_manifest(directory, warn=False)
    if manifest is not None and manifest.get("run_id") not in continued_runs | {run_id}:
        files = [path.name for path in checkpoint_files(directory)]
        if files:
            raise foreign_checkpoints(directory, files)


def foreign_checkpoints(directory: Path, files: list[str]) -> CheckpointWriteError:
    """The refusal of ``directory``, which holds ``files`` of another run."""
    listed = ", ".join(files[:3]) + ("..." if len(files) > 3 else "")
    return CheckpointWriteError(
        f"directory must be empty or hold this run's checkpoints, got {directory} with {len(files)} checkpoint(s) of "
        f"another run ({listed}; see its {MANIFEST}): continue that run with Checkpoint(..., resume=True), start a "
        f"new one with fresh=True, or choose another folder")


def ranked_later(manifest: dict[str, Any]) -> dict[str, Any]:
    """The metric of each file the manifest lists (a validation after a save ranks that save), by name."""
    return {r.get("file"): r.get("metric") for r in manifest.get("checkpoints") or [] if isinstance(r, dict)}


def _run_id_of(path: Path) -> str | None:
    """The run id a checkpoint file names (its tensors left on disk); None if it cannot be read."""
    try:
        run = load_checkpoint(path, verify=False, mmap=True)["run"]
    except (OSError, CheckpointError, RuntimeError, ValueError):
        return None
    return run.get("run_id") if isinstance(run, dict) else None


def prune(directory: Path, keep: set[str]) -> None:
    """Deletes the checkpoint files not named in ``keep`` (call it once the newest one is durable)."""
    for old in checkpoint_files(directory):
        if old.name not in keep:
            try:
                old.unlink()
            except OSError as error:
                _log.warning("monitor: old checkpoint %s could not be deleted: %s", old, error)


def write_manifest(directory: Path, *, run_id: str | None, latest: str, env: str | None, metric: dict[str, Any],
                   last: list[str], best: list[str], records: list[dict[str, Any]], finished: bool = False) -> None:
    """Replaces ``latest.json`` atomically: the pointer to ``latest``, what the folder keeps, and
    whether the run finished (a resume then starts a new run instead of continuing it)."""
    manifest = {"format": "monitor.checkpoints", "version": 1, "run_id": run_id, "latest": latest, "env": env,
                "metric": metric, "last": last, "best": best, "checkpoints": records, "finished": finished}
    _write_manifest(directory, manifest)


def mark_kept(directory: Path, records: list[dict[str, Any]]) -> None:
    """Records in ``latest.json`` which checkpoints are kept for good (``records`` with ``"kept"``)."""
    manifest = read_manifest(directory, warn=False)
    if manifest is not None:
        _write_manifest(directory, {**manifest, "checkpoints": records})


def mark_finished(directory: Path) -> None:
    """Records in ``latest.json`` that the run finished (its last checkpoint is already there)."""
    manifest = read_manifest(directory, warn=False)
    if manifest is not None and not manifest.get("finished"):
        _write_manifest(directory, {**manifest, "finished": True})


def mark_trained(directory: Path, step: int) -> None:
    """Records in ``latest.json`` that the run reached ``train_end`` at ``step``: resumed from that
    step's checkpoint (killed in its own last work, requeued), ``monitor.epochs`` has nothing
    left to run, an early-stopped run's remaining epochs included. A later save drops it."""
    manifest = read_manifest(directory, warn=False)
    if manifest is not None and manifest.get("trained") != step:
        _write_manifest(directory, {**manifest, "trained": step})


def finish(directory: Path) -> None:
    """The run in ``directory`` reached ``train_end``: marked finished at once in an interactive
    session, and in a script when it exits without an error. A script stopped after training,
    in its own last work (a scheduler's SIGTERM, a kill, an evaluation that fails), is not
    finished: the same command run again continues it, with nothing left to train, instead of
    training anew; any scheduler's requeue, not only those that say so (``preemption.requeued``)."""
    if interactive():
        mark_finished(directory)
        return
    if not _finishing:
        atexit.register(_finish_at_exit)
    _finishing.add(directory.resolve())


def finish_earlier(directory: Path) -> None:
    """A run of this script begins in ``directory``: those that reached ``train_end`` before it in
    other folders (a cross-validation's earlier folds) are over, their own last work included,
    and marked finished now, so that the script run again after a kill in a later run starts
    them anew instead of training them further."""
    for earlier in _finishing - {directory.resolve()}:
        _finishing.discard(earlier)
        _finish_now(earlier)


def is_finished(directory: Path) -> bool:
    """Whether ``directory`` holds the checkpoints of a run that finished (or that reached its
    ``train_end`` in this process)."""
    if directory.resolve() in _finishing:
        return True
    manifest = read_manifest(directory, warn=False)
    return bool(manifest and manifest.get("finished"))


_finishing: set[Path] = set()  # the runs of this script that reached train_end: finished at a clean exit


def _finish_at_exit() -> None:
    if exit_error() is None and _finishing:
        # The script ended well: a stop signal from here on (a scheduler's SIGTERM while the interpreter
        # winds down) would make the job's status 143 for a run marked finished, and its requeue train anew.
        from monitor.preemption import SIGNALS

        for number in SIGNALS:
            if signal.getsignal(number) is signal.SIG_DFL:
                signal.signal(number, signal.SIG_IGN)
        for directory in _finishing:
            _finish_now(directory)


def _finish_now(directory: Path) -> None:
    try:
        mark_finished(directory)
    except OSError:  # the folder is gone: nothing to mark
        pass


def set_aside(directory: Path) -> Path | None:
    """Moves the checkpoints and ``latest.json`` of ``directory`` into ``earlier/<run id>/``; returns that folder.

    What a new run in the folder keeps of the earlier one, instead of deleting it. None when
    there was nothing to move.
    """
    _finishing.discard(directory.resolve())  # the earlier run's: the folder's next one is not finished
    files = [*checkpoint_files(directory), *[p for p in (directory / MANIFEST,) if p.is_file()]] \
        if directory.is_dir() else []
    if not files:
        return None
    manifest = read_manifest(directory, warn=False) or {}
    run_id = manifest.get("run_id")
    name = run_id if isinstance(run_id, str) and re.fullmatch(r"[0-9A-Za-z_-]{1,64}", run_id) else "unknown"
    target = directory / EARLIER / name
    suffix = 1
    while target.exists():
        suffix += 1
        target = directory / EARLIER / f"{name}-{suffix}"
    try:
        target.mkdir(parents=True)
        for file in files:
            file.rename(target / file.name)
    except OSError as error:
        raise CheckpointWriteError(f"directory {directory} could not set the earlier run's checkpoints "
                                   f"aside into {target}: {error}") from error
    return target


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, allow_nan=False).encode()
    write_atomic(directory / MANIFEST, lambda file: file.write(data))


def read_manifest(directory: Path, *, warn: bool = True) -> dict[str, Any] | None:
    """The folder's ``latest.json``, or None if it is missing or damaged (with a warning)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("latest"), str):
            raise ValueError("it has no 'latest' entry")
        return manifest
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        if warn:
            _log.warning("monitor: %s is damaged (%s); looking for checkpoints by step instead", path, error)
        return None


def find_checkpoint(path: str | Path, *, trust: bool = False,
                    missing_ok: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from: ``path`` itself, or a folder's latest good one.

    In a folder, ``latest.json``'s file comes first, then the others newest first; a damaged
    one is skipped with a warning naming it. A missing path or a folder without checkpoints
    raises FileNotFoundError, or returns None with ``missing_ok``.
    """
    path = Path(path)
    if path.is_file():
        return path, load_checkpoint(path, trust=trust)
    if not path.is_dir() or not (candidates := _candidates(path)):
        if missing_ok:
            return None
        what = "a folder without checkpoints" if path.is_dir() else "nothing (no such file or folder)"
        raise FileNotFoundError(f"path must be a checkpoint file or a folder of checkpoints written by "
                                f"monitor.Checkpoint (step-*.pt, {MANIFEST}), got {str(path)!r}, which is {what}")
    skipped = []
    for candidate in candidates:
        try:
            return candidate, load_checkpoint(candidate, trust=trust)
        except (FileNotFoundError, DamagedCheckpointError) as error:
            skipped.append(f"{candidate.name} ({error})")
            _log.warning("monitor: checkpoint %s cannot be used (%s); falling back to the previous one", candidate,
                         error)
        except CheckpointError as error:
            if type(error) is not CheckpointError:
                raise  # unsafe files are refused, not skipped
            skipped.append(f"{candidate.name} ({error})")
            _log.warning("monitor: checkpoint %s is not a checkpoint (%s); falling back to the previous one",
                         candidate, error)
    raise DamagedCheckpointError(f"{path} holds no usable checkpoint; tried {'; '.join(skipped)}")


def _candidates(directory: Path) -> list[Path]:
    manifest = read_manifest(directory)
    names = []
    if manifest is not None:
        names.append(manifest["latest"])
        listed = manifest.get("checkpoints")
        records = [r for r in listed if isinstance(r, dict) and type(r.get("step")) is int] \
            if isinstance(listed, list) else []
        names += [r.get("file") for r in sorted(records, key=lambda r: -r["step"])]
    names += [p.name for p in reversed(checkpoint_files(directory))]
    # Only plain names of checkpoint files: a pointer cannot lead outside the folder.
    return [directory / n for n in dict.fromkeys(names) if isinstance(n, str) and _NAME.fullmatch(n)]
