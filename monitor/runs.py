"""Runs on disk: what each run log holds, for managing runs from the command line and Python.

    for run in listed("runs"): print(run.env, run.status, run.steps, run.metrics)
    points = exported("runs/mnist")                   # {window: {trace: [(x, y), ...]}}, every point
    write_csv(points, sys.stdout)                     # window,trace,x,y

A run is its folder (``runs/ENV``, holding ``runlog.jsonl``) or the run log itself; the log
keeps every point at full resolution, whatever the dashboard shows.
"""
from __future__ import annotations

import bisect
import collections
import csv
import datetime
import hashlib
import json
import logging
import math
import os
import re
import statistics
import time
import unicodedata
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, NamedTuple

from monitor import env_claims
from monitor.imagestore import FOLDER as IMAGES
from monitor.records import Order
from monitor.rundir import RunDir
from monitor.runlog import Reader, RunLog
from monitor.windows import RECENT, came_late, joins

Points = dict[str, dict[str, list[tuple[float, float]]]]
# The data a metric was taken on, as traces name it (a SummaryWriter tag's split, in several languages).
TRAINING = frozenset({"train", "training", "训练", "訓練", "学習", "학습"})
HELD_OUT = frozenset({"val", "valid", "validation", "test", "testing", "eval", "evaluation", "dev", "验证", "测试",
                      "评估", "検証", "評価", "テスト", "검증", "평가", "테스트"})
_log = logging.getLogger("monitor")
COMPARED = "runs (last values)"  # the title of a comparison's table, which tells its env from others


def run_log_of(run: str | os.PathLike) -> Path:
    """The run log of ``run`` (a run folder or a run log); ValueError naming what was looked for."""
    path = Path(run)
    if path.is_dir():
        path = path / RunLog.FILENAME
    if not path.is_file():
        raise ValueError(f"run must be a run folder holding {RunLog.FILENAME} or a run log, got {str(run)!r} "
                         f"(no {path})")
    return path


class Run(NamedTuple):
    """One run as its folder tells it."""

    path: Path
    env: str
    run_id: str
    started: float          # seconds since the epoch
    steps: int              # the steps it trained, as its end says (a Monitor's), else the highest step of
                            # its loss and metric curves (those whose x is the step)
    status: str             # running, finished, crashed (an exception), interrupted (Ctrl-C, sys.exit(N)),
                            # pruned (a TrialPruned raised: a search stopped it), or killed (never closed)
    error: str | None       # what a crashed, interrupted or pruned run raised
    metrics: dict[str, tuple[float, float]]  # "window/trace": (last, best) of its loss and metric curves
                                             # (best NaN where no value was finite), and the final metrics
                                             # given with its hparams
    hparams: dict[str, Any]
    size: int               # bytes of its log, images and other files in its folder (not its earlier runs')
    checkpoints: int        # its checkpoint files: in checkpoint folders in its folder or noted outside it
                            # (RunDir.checkpoint_folders); an earlier run's, those set aside for it
    log: Path               # the run log it was read from (runlog.jsonl, or an earlier run's log)
    diverged: float | None = None  # the step a Guard marked its loss or gradients bad at (None: never)
    extremes: dict[str, tuple[float, float]] | None = None  # each metric's lowest and highest finite values
                                                            # (NaN where none), for a best by --mode

    def best(self, metric: str, mode: str | None = None) -> float:
        """Metric ``metric``'s best value: its lowest with ``mode="min"``, highest with ``"max"``,
        by default as its name says (:func:`best_is_lowest`); NaN where it was never finite."""
        if mode is None or not self.extremes or metric not in self.extremes:
            return self.metrics[metric][1]
        lowest, highest = self.extremes[metric]
        return lowest if mode == "min" else highest

    @property
    def shown_status(self) -> str:
        """The status as a listing shows it: ``finished, diverged at step 300`` for a run a Guard
        marked and let go on."""
        return self.status if self.diverged is None else f"{self.status}, diverged at step {self.diverged:g}"

    @property
    def place(self) -> Path:
        """Where the run is: its folder, or an earlier run's log (set aside in ``earlier/``)."""
        return self.path if self.log.name == RunLog.FILENAME else self.log


def best_is_lowest(metric: str) -> bool:
    """Whether lower is better: losses, errors, distances and times; anything else (accuracy, F1,
    ...) is best highest."""
    name = metric.lower()
    return any(word in name for word in _LOWEST_BEST) or not _LOWEST_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", name))


# Losses and errors, in English and as Chinese, Japanese and Korean write them (损失 loss, 误差 error, ...).
_LOWEST_BEST = ("loss", "error", "perplexity", "mse", "mae", "neg_elbo", "cross_entropy", "crossentropy", "hausdorff",
                "false_pos", "false_neg", "损失",
                "误差", "错误", "困惑度", "損失", "誤差", "손실", "오차", "오류")
# ... and those named in short, as words of the name (top1_err, val/nll, fid): not inside others (precision)
_LOWEST_WORDS = frozenset(("err", "nll", "wer", "cer", "ppl", "rmse", "fid", "kid", "ece", "kl", "bpd", "bpc",
                           "regret", "latency", "distance", "miss", "ms", "seconds", "time",
                           # forecasting's errors (sMAPE, MASE, CRPS, pinball loss), a few more
                           "mape", "smape", "wmape", "mase", "rmsse", "wape", "crps", "pinball", "msle", "mad",
                           "sse", "huber",
                           # tabular and Kaggle's: Brier score, RMSLE, (binary) cross-entropy, deviance, median_ae
                           "brier", "rmsle", "bce", "ce", "xent", "deviance", "ae",
                           # a generative model's: bits/dim, the negative ELBO, the reconstruction term
                           "bits", "nelbo", "recon",
                           # a scientist's: norms of an error (rel_l2), residuals, drifts, misfits
                           "l1", "l2", "linf", "residual", "drift", "misfit", "rmsd", "chi2", "divergence",
                           "violation", "cost", "penalty",
                           # a GAN's: WGAN-GP's gradient penalty, its critic's estimate of the distance
                           "gp", "wasserstein", "emd",
                           # a segmentation's surface distances (HD95, ASSD), a detector's or verifier's false rates
                           "hd", "hd95", "assd", "asd", "msd", "ravd", "fpr", "fnr", "eer", "fp", "fn"))
# Scores, by name, best highest: a name in neither list is ranked highest best on a guess.
_HIGHEST_BEST = ("acc", "precision", "recall", "score", "reward", "return", "similarity", "correlation",
                 "likelihood", "elbo", "准确率", "正解率", "精度", "召回")
_HIGHEST_WORDS = frozenset(("f1", "auc", "auroc", "auprc", "ap", "map", "iou", "miou", "dice", "psnr", "ssim", "bleu",
                            "rouge", "meteor", "r2", "top1", "top5", "ndcg", "mrr", "hit", "hits", "kappa", "mcc",
                            "success", "win", "sharpe", "jaccard", "coverage", "sps", "throughput", "fps"))


def metric_name(window: str, trace: str) -> str:
    """A curve's name in a table of runs: ``window/trace`` (``loss/validation``), or the window
    where the trace only repeats its first or last part (a TensorBoard tag's, ``charts/SPS``,
    ``lr``; a metric the loop named ``train/task0/acc``, trace ``train``)."""
    if trace == window or window.endswith("/" + trace) or window.startswith(trace + "/"):
        return window
    return f"{window}/{trace}"


def named_a_score(metric: str) -> bool:
    """Whether ``metric``'s name says it is best highest (accuracy, F1, mAP, return), not only
    that it is no loss's or error's."""
    name = metric.lower()
    return any(word in name for word in _HIGHEST_BEST) or not _HIGHEST_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", name))


def best_mode(metric: str, mode: str | None = None) -> str:
    """``mode`` ("min": lowest is best, "max"), or the one :func:`best_is_lowest` guesses for ``metric``."""
    return mode or ("min" if best_is_lowest(metric) else "max")


def check_metric(runs: list[Run], metric: str, argument: str = "metric", hparams: bool = False) -> str:
    """``metric`` if some run has it (or, with ``hparams``, an hparam of that name); ValueError
    naming ``argument`` and the metrics (and hparams) the runs have."""
    known = sorted({m for run in runs for m in run.metrics})
    named = sorted({h for run in runs for h in run.hparams}) if hparams else []
    if metric not in known and metric not in named:
        raise ValueError(f"{argument} must be one of the runs' metrics ({', '.join(known) or 'none'})"
                         + (f" or hparams ({', '.join(named)})" if named else "") + f", got {metric!r}")
    return metric


class NoRunYet(ValueError):
    """A run log without its header line (torn at its first line): not a run yet."""


def listed(root: str | os.PathLike = "runs", unreadable: list[str] | None = None,
           earlier: bool = False) -> list[Run]:
    """Every run under ``root``: each folder with a run log, and with ``earlier`` the earlier
    runs a newer run of their env set aside in its ``earlier/`` (:func:`described` reads one
    given its log; they are not folders of their own, for ``rm`` or ``gc``). A log that cannot
    be read is left out and, given ``unreadable``, said there (one torn at its first line is
    no run yet)."""
    root = Path(root)
    set_aside = [] if not earlier else \
        root.glob("*.jsonl") if root.name == RunDir.EARLIER else root.rglob(f"{RunDir.EARLIER}/*.jsonl")
    runs: list[list[Run]] = [[], []]  # the folders' runs, by folder; the earlier runs, by when they started
    for kind, logs in enumerate((sorted(root.rglob(RunLog.FILENAME)), set_aside)):
        for path in logs:
            try:
                runs[kind].append(described(path if path.name != RunLog.FILENAME else path.parent))
            except NoRunYet:
                continue
            except (OSError, ValueError, KeyError) as error:
                if unreadable is not None:
                    unreadable.append(f"{path.parent}: {type(error).__name__}: {error}")
    return runs[0] + sorted(runs[1], key=lambda run: run.started)


def described(run: str | os.PathLike) -> Run:
    """What one run's folder says: its header, curves, hparams, how it ended, its size."""
    reading = Reading(run_log_of(run))
    reading.read_on()
    return reading.run()


class Reading:
    """What a run log says so far, read on as it grows: ``monitor serve --runs`` keeps one per run.

        reading = Reading(Path("runs/mnist/runlog.jsonl"))
        reading.read_on()      # the lines appended since (all of them, the first time)
        reading.run()          # -> Run

    A log cut back (a resumed run rewinds it) or replaced (a new run of the env) is read again
    from its start.
    """

    def __init__(self, log: Path) -> None:
        self.log = log
        self._start()

    def _start(self) -> None:
        self.reader = Reader(self.log, windows=self._curve_window)
        self.header: dict | None = None
        self.end: dict | None = None
        self.hparams: dict[str, Any] = {}
        self.declared: dict[str, Any] = {}
        self.orders: dict[str, int] = {}
        self.markers: dict[str, tuple] = {}  # each window's traces of marks (a Guard's), not curves
        self.diverged: float | None = None  # the step of the first mark (a Guard's: the loss went bad)
        self.other_x: set[str] = set()  # windows whose x is not the step (xlabel "episode", "epoch")
        self.step_x: set[str] = set()  # windows laid out with xlabel "step" (the loss's, a writer's scalars)
        self.curves: dict[str, list] = {}  # metric_name: [last value, best finite value or None, lowest is best,
                                           # lowest finite value or None, highest]
        self.steps = 0  # the highest x of the step_x windows, else of any window not in other_x
        self.unlabelled_steps = 0  # ... of windows not laid out (the loop's own log.scalar("tokens", ...))

    def _curve_window(self, window: str) -> bool:
        return self.orders.get(window, Order.METRICS) in (Order.LOSS, Order.METRICS)

    def read_on(self) -> None:
        """Takes in the entries appended since the last call."""
        if not self.reader.continues():
            self._start()
        curves = self.curves
        for entry in self.reader.entries():
            kind = entry.get("k")
            if self.end is not None and kind != "end":  # the run went on after an end (a writer opened it again)
                self.end = None
            if kind == "run" and self.header is None:
                self.header = entry
            elif kind == "layout":
                window, was = entry["win"], self._curve_window(entry["win"])
                self.orders[window] = entry.get("order", self.orders.get(window, Order.METRICS))
                marks = (entry.get("opts") or {}).get("markers")
                if marks is not None:  # as a window's options add up
                    self.markers[window] = tuple(marks)
                xlabel = (entry.get("opts") or {}).get("xlabel")
                if xlabel == "step":
                    self.other_x.discard(window)
                    self.step_x.add(window)
                elif xlabel is not None:
                    self.other_x.add(window)
                    self.step_x.discard(window)
                if self._curve_window(window) != was:  # its points from here on read, or passed over
                    self.reader.reconsider(window)
            elif kind == "points" and "y" in entry and self._curve_window(entry["win"]):  # others: passed over
                marks = self.markers.get(entry["win"], ())
                for trace, y in entry["y"].items():
                    if trace in marks:
                        if self.diverged is None:
                            self.diverged = entry["x"]
                        continue
                    name = metric_name(entry["win"], trace)
                    curve = curves.get(name) or curves.setdefault(name, [y, None, best_is_lowest(name), None, None])
                    curve[0] = y
                    if y is not None and math.isfinite(y):
                        if curve[3] is None or y < curve[3]:
                            curve[3] = y
                        if curve[4] is None or y > curve[4]:
                            curve[4] = y
                        curve[1] = curve[3] if curve[2] else curve[4]
                if float(entry["x"]).is_integer() and entry["win"] not in self.other_x:
                    if entry["win"] in self.step_x:
                        self.steps = max(self.steps, int(entry["x"]))
                    else:
                        self.unlabelled_steps = max(self.unlabelled_steps, int(entry["x"]))
            elif kind == "hparams":
                given, metrics = entry["hparams"], entry.get("metrics") or {}
                if joins(entry, self.hparams):  # a test's metrics added later, by another process
                    self.declared = {**self.declared, **metrics}
                else:
                    self.hparams, self.declared = given, metrics
            elif kind == "end":
                self.end = entry

    def run(self) -> Run:
        """The run as read so far, its status and size as they are now; NoRunYet before its header."""
        header, end, log = self.header, self.end, self.log
        if header is None:
            raise NoRunYet(f"{log} has no run header")
        folder = log.parent
        run_dir = RunDir(folder)
        current = log.name == RunLog.FILENAME  # not an earlier run's log, set aside by a newer run of its env
        # Running while its sink holds the folder and the loop has not ended (a killed run's sink sends on).
        if current and end is None and run_dir.is_live() and not run_dir.training_ended():
            status = "running"
        else:
            status = end["status"] if end is not None else "killed"
        # A curve with no finite value (a diverged trial) has NaN for its best: listed, ranked last.
        metrics = {name: (last, math.nan if best is None else best) for name, (last, best, *_) in self.curves.items()
                   if last is not None or best is not None}
        extremes = {name: (math.nan if low is None else low, math.nan if high is None else high)
                    for name, (*_, low, high) in self.curves.items() if name in metrics}
        for name, value in self.declared.items():  # add_hparams' final metrics; a curve of that name goes first
            if name not in metrics and value is not None and math.isfinite(value):
                metrics[name] = (value, value)
                extremes[name] = (value, value)
        files = _own_files(folder, header["run_id"]) if current else \
            [log, *(p for p in (folder.parent / IMAGES / header["run_id"]).rglob("*") if p.is_file())]
        # The steps its end says it trained (a Monitor's), else the highest step its curves reached
        steps = end.get("step") if end is not None and end.get("step") else \
            self.steps if self.step_x else self.unlabelled_steps
        return Run(folder, header["env"], header["run_id"], header["time"], steps, status,
                   end.get("error") if end is not None else None, metrics, self.hparams,
                   sum(p.stat().st_size for p in files),
                   _checkpoints(run_dir if current else RunDir(folder.parent), header["run_id"], current),
                   log, self.diverged, extremes)


def _own_files(folder: Path, run_id: str) -> list[Path]:
    """The files of a folder's current run: all but its earlier runs' (their logs, images and
    checkpoints, set aside in ``earlier/`` folders)."""
    images = folder / IMAGES
    return [p for p in folder.rglob("*") if p.is_file() and RunDir.EARLIER not in p.relative_to(folder).parts[:-1]
            and not (p.is_relative_to(images) and p.relative_to(images).parts[0] != run_id)]


_MISSING = object()


def selected(runs: list[Run], where: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
             sort: str | None = None, mode: str | None = None, by: str = "best") -> list[Run]:
    """The runs whose hparams match ``where`` (values compared as text, or as numbers when both
    are; ``"0.1,0.3"``: either; ``"<0.01"``, ``">=64"``, ``"!=adam"``: compared so, the order
    ones as numbers; pairs, to give a name twice; ``status``, unless an hparam, how the run
    ended), best first by metric ``sort`` (``window/trace``, by its best
    value; runs where it was never finite, a diverged trial's, next to last, runs without it
    last): lowest first with ``mode="min"``, highest with ``"max"``, by default as
    :func:`best_is_lowest` guesses (``by="last"``: by its last value instead, a noisy return's
    final one rather than its luckiest). A ``sort`` that is no run's metric but an hparam orders the
    runs by it, lowest first (``mode="max"``: highest), numbers before text, runs without it last."""
    conditions = list(where.items() if isinstance(where, Mapping) else where or ())

    def matches(run: Run) -> bool:
        for name, wanted in conditions:
            # status, where no run has an hparam of that name: how the run ended (status=crashed,pruned)
            value = run.status if name == "status" and not any("status" in r.hparams for r in runs) else \
                run.hparams.get(name, _MISSING)
            if value is _MISSING or not _meets(value, wanted):
                return False
        return True

    kept = [run for run in runs if matches(run)]
    if sort is not None and not any(sort in run.metrics for run in runs) and any(sort in run.hparams for run in runs):
        present = [run for run in kept if sort in run.hparams]
        present.sort(key=lambda run: _hparam_order(run.hparams[sort]), reverse=mode == "max")
        return present + [run for run in kept if sort not in run.hparams]
    if sort is not None:
        sign = 1.0 if best_mode(sort, mode) == "min" else -1.0
        def rank(run: Run) -> tuple:
            best = math.nan if sort not in run.metrics else run.metrics[sort][0] if by == "last" else \
                run.best(sort, mode)
            best = math.nan if best is None else best
            return sort not in run.metrics, not math.isfinite(best), sign * best if math.isfinite(best) else 0.0

        kept.sort(key=rank)
    return kept


def table(runs: list[Run], metrics: int = 4, first: str | None = None, mode: str | None = None) -> str:
    """The runs as a plain-text table: env (and the folder, where two runs share an env or a
    folder is not named as its env: moved, renamed, a SummaryWriter's ``runs/a/b``), status (and
    what a crashed run raised), steps, start, size, checkpoints, ``metrics`` metrics (``first``
    first, its best by ``mode``, then the loss, the rest by name), hparams."""
    names = _shown_metrics(runs, metrics, first)
    shared = len({run.env for run in runs}) < len(runs) or any(run.path.name != run.env for run in runs)
    common = Path(os.path.commonpath([run.place for run in runs])) if shared else None
    head = ["env", *(["folder"] if shared else []), "status", "steps", "started", "size", "ckpts"] + \
        [f"{m} last (best)" for m in names] + ["hparams"]
    rows = [head]
    for run in runs:
        status = f"{run.shown_status}: {_cut(run.error, 40)}" if run.error else run.shown_status
        place = run.place
        folder = [place.relative_to(common).as_posix() if place != common else place.name] if common else []
        cells = [run.env, *folder, status, str(run.steps), time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)),
                 _size(run.size), str(run.checkpoints)]
        cells += [_last_and_best(run.metrics[m][0], run.best(m, mode if m == first else None))
                  if m in run.metrics else "-" for m in names]
        cells.append(" ".join(f"{k}={v}" for k, v in run.hparams.items()))
        rows.append(cells)
    return _aligned(rows)


def grouped_table(runs: list[Run], over: Iterable[str], metrics: int = 4, first: str | None = None,
                  mode: str | None = None, by: str = "best") -> str:
    """One row per group of runs whose hparams differ only in those named ``over`` (a
    cross-validation's ``fold``, a ``seed``): how many, their envs, and each metric's best value
    (``by="last"``: its last) as the mean and standard deviation over them (as numpy's,
    ``ddof=0``), then the hparams."""
    over = set(over)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        rest = {k: v for k, v in run.hparams.items() if k not in over}
        groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(run)
    names = _shown_metrics(runs, metrics, first)
    rows = [["runs", "envs"] + [f"{m} {by}: mean ± std" for m in names] + ["hparams"]]
    for members in groups.values():
        cells = [str(len(members)), _cut(" ".join(run.env for run in members), 40)]
        for m in names:
            values = [run.metrics[m][0] if by == "last" else run.best(m, mode if m == first else None)
                      for run in members if m in run.metrics]
            values = [v for v in values if v is not None and math.isfinite(v)]
            cells.append(f"{statistics.fmean(values):.4g} ± {statistics.pstdev(values):.2g} ({len(values)})"
                         if values else "-")
        cells.append(" ".join(f"{k}={v}" for k, v in members[0].hparams.items() if k not in over))
        rows.append(cells)
    return _aligned(rows)


def _aligned(rows: list[list[str]]) -> str:
    """The rows as plain text, each column as wide as its widest cell in a terminal."""
    widths = [max(columns(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(padded(cell, width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def columns(text: str) -> int:
    """The columns ``text`` takes in a terminal: two for a wide character (Chinese, Japanese,
    Korean), none for a combining one."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def padded(text: str, width: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` terminal columns, on its right (or its left: ``right``-aligned)."""
    room = " " * max(0, width - columns(text))
    return room + text if right else text + room


def labels(runs: list[Run]) -> tuple[list[str], list[str]]:
    """Each run's name in a comparison, by the hparams that differ between the runs that have
    them (``lr=0.1``), or its env where those do not tell it apart; and the names of those hparams."""
    names = sorted({k for run in runs for k in run.hparams})
    differing = [k for k in names if len({json.dumps(run.hparams[k], sort_keys=True, default=str)
                                          for run in runs if k in run.hparams}) > 1]
    named = [",".join(f"{k}={run.hparams[k]}" for k in differing if k in run.hparams) or run.env for run in runs]
    if len(set(named)) < len(named):
        named = [f"{run.env}:{name}" if name != run.env else name for run, name in zip(runs, named)]
    if len(set(named)) < len(named):  # one env in two places (runs/a/x, runs/b/x): the logs' paths tell them apart
        common = Path(os.path.commonpath([run.log.parent for run in runs]))
        named = [run.log.relative_to(common).with_suffix("").as_posix() for run in runs]
    return named, differing


def compare(runs: list[str | os.PathLike], into: str | None = None, follow: bool = False, every: float = 2.0,
            **connection: Any) -> str:
    """Fills env ``into`` with the runs side by side, from their run logs; returns the env.

    Each line window the runs share holds one trace per run and original trace, named
    ``LABEL/TRACE`` (:func:`labels`); each PR-curve window they share, each run's latest curve;
    pane ``runs`` is a table of the runs, the hparams that differ and their final metrics.
    ``connection`` takes :class:`monitor.connection.Connection`'s arguments. The server needs none
    of the runs' envs (a restarted server is fine). ``follow=True`` keeps the env up to date as
    the runs go on (TensorBoard's live view of ``runs/exp/train`` beside ``runs/exp/val``): the
    logs are read on every ``every`` seconds and the windows that changed sent again, until every
    run has ended (finished, crashed or interrupted: a killed run may be run again, and is followed).
    """
    from monitor import checks
    from monitor.connection import Connection

    if len(runs) < 2:
        raise ValueError(f"runs must name at least two runs to compare, got {len(runs)}")
    readings = [Reading(run_log_of(run)) for run in runs]
    logs = [reading.log.resolve() for reading in readings]
    twice = next((log for log in logs if logs.count(log) > 1), None)
    if twice is not None:
        raise ValueError(f"runs must name each run once, got the run log {twice} twice")
    for reading in readings:
        reading.read_on()
    found = [reading.run() for reading in readings]
    env = checks.name("into", into or _comparison_env([run.env for run in found]), path=True)
    readers = [Reader(log) for log in logs]
    entries: list[list[dict[str, Any]]] = [[] for _ in logs]
    sent: dict[str, str] = {}  # each window's last message, as sent
    sender = Connection(**connection)
    try:
        _empty_for_comparison(sender, env)
        while True:
            grew = False
            for i, reader in enumerate(readers):
                if not reader.continues():  # a resumed run cut its log back: read it anew
                    reader = readers[i] = Reader(logs[i])
                    entries[i] = []
                new = list(reader.entries())
                entries[i] += new
                grew = grew or bool(new)
            if grew or not sent:
                for reading in readings:
                    reading.read_on()
                found = [reading.run() for reading in readings]
                windows = _comparison(found, entries)
                if not sent and list(windows.by_name) == ["runs"]:
                    _log.warning("monitor: the runs share no window to draw side by side, only their table: %s "
                                 "(a Monitor's 'loss' and a writer's 'Loss/train' are windows 'loss' and 'Loss')",
                                 "; ".join(f"{run.env}: {', '.join(_point_windows(log)[:4]) or 'none'}"
                                           for run, log in zip(found, entries)))
                elif not sent and (apart := [w for w in dict.fromkeys(w for log in entries for w in _point_windows(log))
                                             if w not in windows.by_name]):
                    _log.warning("monitor: %d window(s) of one run only are left out of the comparison: %s",
                                 len(apart), ", ".join(apart[:8]) + (", ..." if len(apart) > 8 else ""))
                for window in windows.changed():
                    for message in window.messages(env):
                        text = json.dumps(message, sort_keys=True, default=str)
                        if sent.get(window.name) != text:
                            sender.post(*message)
                            sent[window.name] = text
            if not follow or not grew and all(run.status in _ENDED for run in found):
                return env
            time.sleep(every)
    finally:
        sender.close()


def _point_windows(log: list[dict[str, Any]]) -> list[str]:
    """The windows of a run's points, in the order they came."""
    return list(dict.fromkeys(e["win"] for e in log if e.get("k") == "points"))


_ENDED = ("finished", "crashed", "interrupted", "pruned")  # a run that said how it ended (a killed one said nothing)


def _comparison(found: list[Run], entries: list[list[dict[str, Any]]]) -> Any:
    """The comparison's windows (:class:`monitor.windows.Windows`) from the runs' log entries."""
    from html import escape

    from monitor.windows import TABLE, Windows

    named, differing = labels(found)
    # Windows of two runs or more (one the others lack, an lr window of an optimizer that has none: each
    # run that has it), of every run where there is one run
    least = min(2, len(entries))
    lines = _in_runs([{e["win"] for e in log if e.get("k") == "points"} for log in entries], least)
    # A deep model's layers as a heatmap in some run: their total alone (the layers differ between models).
    totals = {e["win"] for log in entries for e in log if e.get("k") == "layout" and e["opts"].get("form") == "heatmap"}
    totals &= {e["win"] for log in entries for e in log if e.get("k") == "points" and "total" in e["y"]}
    curves = _in_runs([{e["win"] for e in log if e.get("k") == "pr_curve"} for log in entries], least)
    shared = lines | curves
    windows = Windows()
    for label, log in zip(named, entries):
        latest = {}  # each PR-curve window's last entry
        for entry in log:
            if entry.get("win") not in shared:
                continue
            if entry["win"] in totals:
                if entry["k"] == "layout":
                    entry = {**entry, "opts": {k: v for k, v in entry["opts"].items() if k not in ("form", "top")}}
                elif entry["k"] == "points":
                    if "total" not in entry["y"]:
                        continue
                    entry = {**entry, "y": {"total": entry["y"]["total"]}}
            if entry["k"] == "points":
                entry = {**entry, "y": {f"{label}/{trace}": y for trace, y in entry["y"].items()}}
            if entry["k"] in ("points", "layout"):
                windows.apply([entry])
            elif entry["k"] == "pr_curve":
                latest[entry["win"]] = {**entry, "run": label}
        windows.apply(list(latest.values()))
    for name in lines:  # each run in a colour of its own, its traces (train, validation) in dashes
        if name in windows.by_name:
            windows.by_name[name].opts["runs"] = list(named)
    head = ["run", "env", "status", "steps"] + differing + sorted({m for run in found for m in run.metrics},
                                                                  key=_natural)  # h2 before h10
    rows = [[label, run.env, run.shown_status, str(run.steps)] + [str(run.hparams.get(k, "-")) for k in differing]
            + [f"{run.metrics[m][0]:.4g}" if m in run.metrics else "-" for m in head[4 + len(differing):]]
            for label, run in zip(named, found)]
    html = TABLE + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                               for row in [head, *rows]) + "</table>"
    windows.apply([{"k": "layout", "win": "runs", "opts": {"title": COMPARED}, "order": Order.SUMMARY},
                   {"k": "text", "win": "runs", "x": 0, "html": html}])
    return windows


def _in_runs(each: list[set[str]], least: int) -> set[str]:
    """The names in at least ``least`` of the sets."""
    counts = collections.Counter(name for names in each for name in names)
    return {name for name, count in counts.items() if count >= least}


def _comparison_env(envs: list[str]) -> str:
    """``compare_`` and the envs joined; past 80 characters, cut and told apart by a hash of them all."""
    name = ("compare_" + "_".join(envs)).translate({ord("#"): "_", ord("?"): "_"})  # envs before they were refused
    if len(name) <= 80:
        return name
    return f"{name[:71]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _empty_for_comparison(sender: Any, env: str) -> None:
    """Deletes an earlier comparison in ``env`` (its windows would stay beside the new ones);
    an env holding anything else is refused, not emptied."""
    from monitor.connection import DashboardError

    try:
        held = json.loads(sender.post("win_data", {"win": None, "eid": env}))
    except (DashboardError, ValueError):  # no such env: Visdom answers an error page
        return
    table = held.get("runs") if isinstance(held, dict) else None
    if held and (not isinstance(table, dict) or table.get("title") != COMPARED):  # serve --runs' is "runs in DIR"
        raise ValueError(f"into must be a new env or an earlier comparison's, got {env!r}, which holds "
                         f"{len(held)} other windows")
    if held:
        try:
            sender.post("delete_env", {"eid": env})
        except DashboardError:  # Visdom answers an error for an env it never saved, even as it drops it
            pass


def removal_trouble(envs: Mapping[str, str | None], **connection: Any) -> str | None:
    """Why :func:`remove` could not delete ``envs`` from the dashboard (not reached, a login
    refused, another server than the one a run was sent to, its env not there), asked before
    anything is deleted; None when the server answers as a deletion needs. ``envs``: each env
    and the server its run log says it was sent to (None: not said, an older run); ``connection``
    takes Connection's arguments."""
    from monitor.connection import Connection, DashboardError

    sender = Connection(**connection)
    try:
        sender.post("win_exists", {"win": "runs", "eid": next(iter(envs))}, timeout=2.0)
        elsewhere = {env: url for env, url in envs.items() if url is not None and url != sender.url}
        if elsewhere:
            held = set(json.loads(sender.post("env_state", {}, timeout=2.0)))
            env, url = next(((env, url) for env, url in elsewhere.items() if env not in held), (None, None))
            if env is not None:
                return f"the dashboard at {sender.url} has no env {env!r}, whose run was sent to {url}"
    except DashboardError as error:
        return _trouble(sender, error)
    finally:
        sender.close()
    return None


def _trouble(sender: Any, error: Any) -> str:
    return f"the dashboard at {sender.url} could not be reached" if error.status is None else str(error)


def remove(run: Run, dashboard: bool = True, **connection: Any) -> str | None:
    """Deletes the run's folder (run log, images, checkpoint folders kept in it, and any run
    inside it: see :func:`holds_other_runs`) and its env on the server, unless another run beside
    it shows there (:func:`shares_env`). Files and folders the monitor did not write (a final
    model, notes: :func:`not_written_by_monitor`) stay, and the folder with them. An env that also
    holds windows the runs did not make (the user's own Visdom calls) keeps them: only the runs'
    windows are closed. Returns None, or why the env is still on the server (not reached, a
    login refused).

    An earlier run (its log set aside in ``earlier/``) goes with its images and the checkpoints
    set aside for it; the env, which shows the folder's current run, stays.

    Refuses a running run, or a folder with a running run inside. ``connection`` takes
    Connection's arguments; ``dashboard=False`` leaves the server alone. Visdom answers HTTP
    500 for an env it does not hold (or never saved to disk, even as it drops it): no trouble.
    """
    import shutil

    from monitor.connection import Connection, DashboardError

    check_removable(run)
    if run.place != run.path:  # an earlier run, set aside: its env shows the folder's current run
        folder = run.log.parent.parent
        run.log.unlink(missing_ok=True)  # its folder named too, and gone first
        for path in [folder / IMAGES / run.run_id, *(checkpoints / RunDir.EARLIER / run.run_id
                                                      for checkpoints in folder.rglob("*")
                                                      if _is_checkpoint_folder(checkpoints))]:
            if path.is_dir():
                shutil.rmtree(path)
        return None
    trouble = None
    if dashboard and not shares_env(run):
        sender = Connection(**connection)
        try:
            trouble = _remove_from_dashboard(sender, run)
        except DashboardError as error:
            if error.status != 500:
                trouble = _trouble(sender, error)
        finally:
            sender.close()
    kept = not_written_by_monitor(run.path)
    if not kept:
        shutil.rmtree(run.path)
        return trouble
    holding = {folder for path in kept for folder in path.parents if folder.is_relative_to(run.path)}
    for folder in holding:  # what the monitor wrote in each folder that holds something kept
        for entry in folder.iterdir():
            if entry not in kept and entry not in holding:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return trouble


# What a run folder holds of the monitor's
_OWNED = {RunLog.FILENAME, RunDir.LOCK, RunDir.EARLIER, RunDir.CHECKPOINTS, IMAGES}
_CHECKPOINT_FOLDER = ("latest.json", ".checkpoints.lock")  # monitor.checkpoint.folder's MANIFEST, LOCK (not
                                                            # imported: it imports torch)
_CHECKPOINT = "step-[0-9]*.pt"  # its checkpoint files' names: not the loop's own files beside them (adapters)


def _is_checkpoint_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in _CHECKPOINT_FOLDER)


def _checkpoints(run_dir: RunDir, run_id: Any, current: bool) -> int:
    """The checkpoint files of run ``run_id`` of the folder: in the checkpoint folders inside it
    and those outside it that its runs noted, or for an earlier run those set aside for it there."""
    inside = []
    for parent, folders, _ in os.walk(run_dir.path):
        for name in list(folders):
            path = Path(parent, name)
            if name in (RunDir.EARLIER, IMAGES) or _is_checkpoint_folder(path):
                folders.remove(name)  # nothing of the current run's below
                inside += [path] if name not in (RunDir.EARLIER, IMAGES) else []
    count = 0
    for folder in [*inside, *run_dir.checkpoint_folders()]:
        if not current:
            kept = folder / RunDir.EARLIER / str(run_id)
            count += sum(1 for _ in kept.glob(_CHECKPOINT)) if kept.is_dir() else 0
        elif folder in inside or _manifest_run_id(folder) == run_id:  # a folder outside may hold a later run's
            count += sum(1 for _ in folder.glob(_CHECKPOINT))
    return count


def _manifest_run_id(folder: Path) -> Any:
    try:
        manifest = json.loads((folder / _CHECKPOINT_FOLDER[0]).read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("run_id") if isinstance(manifest, dict) else None


def not_written_by_monitor(folder: Path) -> list[Path]:
    """What a run folder holds that the monitor did not write (a final model, notes), in the
    folder or a run's folder below it; a checkpoint folder counts as the monitor's."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name in _OWNED or entry.name.startswith(RunLog.FILENAME):  # its log, or one being purged
            continue
        if entry.is_dir() and not entry.is_symlink():
            if _is_checkpoint_folder(entry):
                continue
            if (entry / RunLog.FILENAME).is_file():
                found += not_written_by_monitor(entry)
                continue
        found.append(entry)
    return found


def _remove_from_dashboard(sender: Any, run: Run) -> str | None:
    """Deletes the run's env, or where it holds windows of others, closes the windows of the run
    and of the earlier runs in its folder, and saves the env as it is left (a saved copy with
    the run's windows would bring them back at the server's restart). Windows of its names that
    another run drew last (their plots' mark: a run of another folder and MONITOR_HOME in the env)
    stay; returns why the env stays, then."""
    from monitor.connection import DashboardError

    try:
        shown = json.loads(sender.post("win_data", {"win": None, "eid": run.env}))
    except DashboardError as error:
        if error.status != 500:  # not reached, or a login refused
            raise
        shown = {}  # no such env: Visdom answers HTTP 500
    held = set(shown)
    others = holds_other_runs(run)
    ours = set().union(*(windows_of(log, run.env) for log in [run.log, *others]))
    ids = {run.run_id, *(next(RunLog.read(log), {}).get("run_id") for log in others)}
    theirs = {name: mark for name in held & ours if (mark := _run_mark(shown[name])) and mark.get("id") not in ids}
    if not held - ours and not theirs:
        sender.post("delete_env", {"eid": run.env})
        return None
    for window in sorted(held & ours - set(theirs)):
        sender.post("close", {"win": window, "eid": run.env})
    sender.post("save", {"data": [run.env]})
    if theirs:
        other = next(iter(theirs.values()))
        return (f"it shows another run now (run {str(other.get('id'))[:8]} on {other.get('host')}, pid "
                f"{other.get('pid')}), whose windows stay")
    return None


def _run_mark(window: Any) -> dict[str, Any] | None:
    """The run that drew a window last, as its plot's mark says (None: not a monitor's plot)."""
    try:
        mark = window["content"]["layout"]["meta"]["monitor_run"]
    except (KeyError, TypeError):
        return None
    return mark if isinstance(mark, dict) else None


def windows_of(log: Path, env: str) -> set[str]:
    """The names of the windows a run log draws in ``env`` (none if its run is of another env),
    read without decoding its points; an unreadable log draws none."""
    names: set[str] = set()

    def seen(window: str) -> bool:
        names.add(window)
        return False

    try:
        entries = RunLog.read(log, windows=seen)
        if next(entries, {}).get("env") != env:
            return set()
        for entry in entries:
            if "win" in entry:
                names.add(entry["win"])
    except (OSError, ValueError):
        return set()
    return names


def check_removable(run: Run) -> None:
    """Raises ValueError if a live process writes the run's folder or a run folder inside it."""
    for folder in [run.path, *(log.parent for log in holds_other_runs(run))]:
        if RunDir(folder).is_live():
            raise ValueError(f"run must not be running: {folder} is held by a live process")


def collectable(runs: list[Run], older_than: float | None = None, keep_best: int | None = None,
                metric: str | None = None, mode: str | None = None) -> list[Run]:
    """The finished (and pruned) runs to clean up: started before ``older_than`` (seconds since
    the epoch), or with ``metric`` and not among the ``keep_best`` best by it (``mode`` as in
    :func:`selected`; a pruned run, stopped early, is never among them).

    Running, crashed, interrupted and killed runs are kept, and so is a run whose folder holds
    another run (an earlier run of its env, a run in a folder below it): deleting the folder
    would take that run too. Such a run still counts among the ``keep_best`` best.
    """
    return [run for run in gc_candidates(runs, older_than, keep_best, metric, mode) if not holds_other_runs(run)]


def best_runs(runs: list[Run], metric: str, mode: str | None = None) -> list[Run]:
    """The finished runs that have ``metric``, best first: what ``gc --keep-best`` ranks."""
    return selected([run for run in runs if run.status == "finished" and metric in run.metrics], sort=metric,
                    mode=mode)


def gc_candidates(runs: list[Run], older_than: float | None = None, keep_best: int | None = None,
                  metric: str | None = None, mode: str | None = None) -> list[Run]:
    """The runs :func:`collectable` would take were their folders to hold no other run."""
    finished = [run for run in runs if run.status in ("finished", "pruned")]
    doomed = {run.path for run in finished if older_than is not None and run.started < older_than}
    if keep_best is not None:
        if metric is None:
            raise ValueError("metric must be given with keep_best, got None")
        check_metric(runs, metric)
        doomed |= {run.path for run in best_runs(runs, metric, mode)[keep_best:]}
        doomed |= {run.path for run in finished if run.status == "pruned"}  # stopped early: never among the best
    return [run for run in finished if run.path in doomed]


def shares_env(run: Run) -> list[Path]:
    """The folders of other runs that show in the run's env, beside it (below its parent: a run
    folder copied) or the one that last started a run there (``env_claims``, anywhere on this
    machine: the run is a copy, or was followed in its env): its env stays on the server when it is removed."""
    shared = []
    here = run.path.resolve()
    claimed = env_claims.holder(run.env)
    for log in sorted(here.parent.rglob(RunLog.FILENAME)) + ([claimed / RunLog.FILENAME] if claimed else []):
        if log.parent.is_relative_to(here) or log.parent in shared:
            continue
        try:
            header = next(RunLog.read(log), {})
        except (OSError, ValueError):
            continue
        if header.get("k") == "run" and header.get("env") == run.env:
            shared.append(log.parent)
    return shared


def holds_other_runs(run: Run) -> list[Path]:
    """The logs of other runs inside the run's folder: earlier runs of its env, runs in folders below."""
    return sorted(log for log in run.path.rglob("*.jsonl") if log != run.log)


class RunsPane:
    """Keeps pane ``runs`` of env ``runs`` listing the runs under a folder, as they start and end.

        pane = RunsPane("runs", server="http://127.0.0.1:8097")
        pane.start()     # a daemon thread looks every ``every`` seconds; pane.stop() ends it

    Each row links to the run's env. A run log is read on from where it stopped when it has
    grown (from its start if it was cut back), so a folder of long runs costs a look at their
    sizes and their new lines. A run that ends after the first look (its process gone) has its
    env checked: one its sink could not fill (the server hung or down as it closed) is sent
    again from its log. ``monitor serve --runs DIR`` runs one.
    """

    ENV = WINDOW = "runs"

    def __init__(self, root: str | os.PathLike, every: float = 3.0, **connection: Any) -> None:
        import threading

        self.root, self.every, self.connection = Path(root), every, connection
        self._cache: dict[Path, tuple[tuple, Reading, Run]] = {}
        self._shown: str | None = None
        self._over: dict[Path, bool] = {}  # each run log's run at the last look: whether it was over
        self._looked = False  # once: what ends from then on has its env checked
        self._to_check: set[Path] = set()  # runs over since the first look whose env is still to check
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-runs-pane", daemon=True)

    def update(self) -> bool:
        """Lists the runs and sends the pane if it changed; True when it sent."""
        from monitor.connection import Connection

        runs = []
        for log in sorted(self.root.rglob(RunLog.FILENAME)):
            try:
                stat = log.stat()
                key = (stat.st_size, stat.st_mtime_ns, RunDir(log.parent).is_live())
                known = self._cache.get(log)
                if known is None or known[0] != key:
                    reading = known[1] if known is not None else Reading(log)
                    reading.read_on()  # what was appended since: a growing log is not read again
                    self._cache[log] = known = (key, reading, reading.run())
                runs.append(known[2])
                over = not key[2] and known[2].status != "running"
                if over and self._looked and not self._over.get(log, False):  # ended, or new and over
                    self._to_check.add(log)
                self._over[log] = over
            except (OSError, ValueError, KeyError):
                self._cache.pop(log, None)  # read anew next time
                continue
        self._looked = True
        for log in sorted(self._to_check):
            try:
                self._fill(log)
            except (OSError, ValueError, KeyError) as error:  # gone (runs rm), or a log replay refuses
                self._to_check.discard(log)
                _log.debug("monitor: the env of %s is not checked: %s", log, error)
            except Exception as error:  # the server cannot say now: checked again at the next look
                _log.debug("monitor: the env of %s was not checked: %s", log, error)
        html = runs_html(runs)
        if html == self._shown:
            return False
        sender = Connection(**self.connection)
        try:
            sender.post("events", {"data": [{"content": html, "type": "text"}], "win": self.WINDOW, "eid": self.ENV,
                                   "opts": {"title": f"runs in {self.root}", "width": 720, "height": 320}})
        finally:
            sender.close()
        self._shown = html
        return True

    def _fill(self, log: Path) -> None:
        """Sends the run of ``log`` again if its env lacks a window of it; left to check again when
        the server cannot say."""
        from monitor.connection import Connection
        from monitor.replay import replay

        env = self._cache[log][2].env
        sender = Connection(**self.connection)
        try:
            missing = [w for w in sorted(windows_of(log, env))
                       if sender.post("win_exists", {"win": w, "eid": env}) != "true"]
        finally:
            sender.close()
        if missing:
            _log.info("monitor: env %r on this server lacks windows of its run (%s: it drew on another server, "
                      "or ended before they reached this one): sending them from %s", env, ", ".join(missing), log)
            replay(log, **self.connection)
        self._to_check.discard(log)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.update()
            except Exception as error:  # the server is down: try again later
                _log.debug("monitor: the runs pane was not updated: %s", error)
            self._stop.wait(self.every)


def runs_html(runs: list[Run], metrics: int = 3) -> str:
    """The runs as an HTML table, each env a link to its page (relative: /env/runs -> /env/ENV)."""
    from html import escape
    from urllib.parse import quote

    from monitor.windows import TABLE

    names = _shown_metrics(runs, metrics)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["env", "status", "steps", "started", *names, "hparams"])
    rows = []
    for run in sorted(runs, key=lambda r: -r.started):
        cells = [f'<a href="{quote(run.env)}">{escape(run.env)}</a>', escape(run.shown_status), str(run.steps),
                 time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started))]
        cells += [f"{run.metrics[m][0]:.4g}" if m in run.metrics else "-" for m in names]
        cells.append(escape(" ".join(f"{k}={v}" for k, v in run.hparams.items())))
        rows.append('<tr class="run">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'{TABLE}<tr>{head}</tr>{"".join(rows)}</table>' if runs else "<p>no runs yet</p>"


def exported(run: str | os.PathLike, windows: Iterable[str] | None = None) -> Points:
    """Every point of the run the dashboard draws, in the order of x: ``{window: {trace: [(x, y), ...]}}``.

    As on the dashboard, a curve that goes back to an x it had (a script run again from its
    start) goes on from there, the points after it left out, and a point that came late (an
    evaluation in a thread of its own) takes its place among the latest."""
    wanted = None if windows is None else set(windows)
    points: Points = {}
    every: dict[str, None] = {}  # the windows of points, in order
    other_kinds: dict[str, str] = {}  # the windows of other entries (a PR curve, a histogram), their kind
    for entry in RunLog.read(run_log_of(run), windows=None if wanted is None else wanted.__contains__):
        if entry.get("k") != "points":
            if entry.get("k") not in (None, "layout") and "win" in entry:
                other_kinds.setdefault(entry["win"], entry["k"])
            continue
        every[entry["win"]] = None
        if wanted is not None and entry["win"] not in wanted:  # passed over unread, as the log's writer writes it
            continue
        traces = points.setdefault(entry["win"], {})
        x = entry["x"]
        for trace, y in entry["y"].items():
            values = traces.setdefault(trace, [])
            if values and x < values[-1][0]:
                recent = [kept for kept, _ in values[-RECENT:]]
                if came_late(recent, x):  # takes its place among the latest
                    values.insert(bisect.bisect(recent, x) + len(values) - len(recent), (x, y))
                    continue
                del values[bisect.bisect_left([kept for kept, _ in values], x):]  # went back: goes on from x
            values.append((x, y))
    if wanted is not None and wanted - set(points):
        missing = sorted(wanted - set(points))
        kinds = "".join(f"; {w!r} holds {other_kinds[w].replace('_', ' ')}s, which export does not take"
                        for w in missing if w in other_kinds and w not in every)
        raise ValueError(f"windows must name windows of the run's points (curves), got {missing}{kinds}; "
                         f"its windows of points: {sorted(every)}")
    return points


def write_csv(points: Points | dict[str, Points], out: IO[str], by_run: bool = False) -> None:
    """One row per point: window, trace, x, y (non-finite values as nan, inf, -inf); ``by_run``:
    ``points`` of several runs by name, each row naming its run first."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "window", "trace", "x", "y"] if by_run else ["window", "trace", "x", "y"])
    for run, one in (points.items() if by_run else [(None, points)]):
        first = [run] if by_run else []
        for window, traces in one.items():
            for trace, values in traces.items():
                for x, y in values:
                    writer.writerow([*first, window, trace, _number(x), _number(y)])


def write_json(points: Points | dict[str, Points], out: IO[str], by_run: bool = False) -> None:
    """``{window: {trace: {"x": [...], "y": [...]}}}`` (``by_run``: ``{run: {window: ...}}``);
    non-finite values as null (strict JSON)."""
    def shaped(one: Points) -> dict[str, Any]:
        return {window: {trace: {"x": [x for x, _ in values], "y": [y if math.isfinite(y) else None for _, y in values]}
                         for trace, values in traces.items()}
                for window, traces in one.items()}

    json.dump({run: shaped(one) for run, one in points.items()} if by_run else shaped(points), out, allow_nan=False)
    out.write("\n")


def write_runs(runs: list[Run], out: IO[str], form: str, first: str | None = None) -> None:
    """The runs for a script: ``form`` ``"json"``, a list of ``{"env", "path", "status",
    "error", "steps", "started", "metrics": {name: {"last", "best"}}, "hparams"}`` (non-finite
    values as null), or ``"csv"``, a row a run: those, each metric's last value and its best
    (``NAME best``; non-finite values as empty), then the hparams; metrics in the table's order
    (``first`` first)."""
    names = _shown_metrics(runs, len({m for run in runs for m in run.metrics}), first)
    hparams = sorted({name for run in runs for name in run.hparams}, key=_natural)

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    def described(run: Run) -> dict[str, Any]:
        return {"env": run.env, "path": str(run.path), "status": run.status, "error": run.error, "steps": run.steps,
                "started": datetime.datetime.fromtimestamp(run.started).isoformat(timespec="seconds"),
                "metrics": {m: {"last": finite(run.metrics[m][0]), "best": finite(run.metrics[m][1])}
                            for m in names if m in run.metrics},
                "hparams": run.hparams}

    if form == "json":
        json.dump([described(run) for run in runs], out, allow_nan=False, default=str)
        out.write("\n")
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["env", "path", "status", "error", "steps", "started",
                     *(f"{m}{end}" for m in names for end in ("", " best")), *hparams])
    for run in runs:
        row = described(run)
        writer.writerow([*(row[k] if row[k] is not None else "" for k in ("env", "path", "status", "error", "steps",
                                                                          "started")),
                         *(_number(run.metrics[m][i]) if m in run.metrics and math.isfinite(run.metrics[m][i])
                           else "" for m in names for i in (0, 1)),
                         *(run.hparams.get(h, "") for h in hparams)])


def _shown_metrics(runs: list[Run], count: int, first: str | None = None) -> list[str]:
    """The metrics a table has room for: ``first``, then the curves of held-out data (what a sweep
    is judged by; a reinforcement learner's return or reward too), of training data, the rest
    (final metrics given with the hparams; one that only repeats a curve's last value, Summary's
    ``loss`` of ``loss/validation``, left out); in each, losses (a name with "loss" in it) first,
    then other errors, then the most common, by name."""
    seen: dict[str, int] = {}
    for run in runs:
        for name in run.metrics:
            seen[name] = seen.get(name, 0) + 1

    def data(name: str) -> int:  # by the trace's last part, or the one before: "loss/val/clean" is held out
        if any(word in name.lower().split("/")[0] for word in ("return", "reward")):  # RL's: what a run is judged by
            return 0
        for split in name.lower().split("/")[:0:-1][:2]:
            if split in HELD_OUT or split in TRAINING:
                return 0 if split in HELD_OUT else 1
        return 2

    def repeated(name: str) -> bool:  # a final metric that is a curve's last value in every run (Summary's loss)
        return all(any(other.startswith(f"{name}/") and run.metrics[other][0] == run.metrics[name][0]
                       for other in run.metrics) for run in runs if name in run.metrics)

    ranked = sorted((name for name in seen if name == first or not repeated(name)),
                    key=lambda name: (name != first, data(name), "loss" not in name.lower(),
                                      not best_is_lowest(name), -seen[name], _natural(name)))
    return ranked[:count]


def _natural(name: str) -> list:
    """``name`` ordered as people count: ``mae_h6`` before ``mae_h12``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _last_and_best(last: float, best: float) -> str:
    """``0.31 (0.29)``; a curve with no finite value (inf perplexities, a diverged trial) has no best: ``inf (-)``."""
    return f"{last:.4g} ({'-' if math.isnan(best) else f'{best:.4g}'})"


def _hparam_order(value: Any) -> tuple:
    """Numbers by value, then the rest by their text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return 0, float(value), ""
    return 1, 0.0, str(value)


COMPARISONS = ("<=", ">=", "!=", "<", ">")  # what --where takes beside NAME=VALUE


def _meets(value: Any, wanted: str) -> bool:
    """Whether an hparam's value meets ``wanted``: a value (or several, ``0.1,0.3``), or one after
    an operator of ``COMPARISONS`` (an order compared as numbers: no other value meets it)."""
    op = next((op for op in COMPARISONS if wanted.startswith(op)), None)
    if op is None:
        return _same(value, wanted) or "," in wanted and any(_same(value, one.strip()) for one in wanted.split(","))
    wanted = wanted[len(op):].strip()
    if op == "!=":
        return not _same(value, wanted)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        have, bound = float(value), float(wanted)
    except ValueError:
        return False
    return {"<": have < bound, "<=": have <= bound, ">": have > bound, ">=": have >= bound}[op]


def _same(value: Any, wanted: str) -> bool:
    if str(value) == wanted:
        return True
    if isinstance(value, bool) or value is None:  # as a command line or JSON writes them: true, null
        return wanted.lower() in ({"true", "1"} if value else {"false", "0"} if value is False else {"none", "null"})
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def _number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
