"""Profile: torch.profiler over a few steps; the top operators in a pane, the trace in the run dir."""
from __future__ import annotations

import gc
import json
import logging
import os
import time
import warnings
from html import escape
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.profiler import ProfilerAction

from monitor import checks
from monitor.core import Callback, LoopState
from monitor.log import Log
from monitor.records import Order
from monitor.windows import TABLE

_log = logging.getLogger("monitor")

WINDOW = "profile"
TOP = 15
_WAITING = ProfilerAction.NONE  # a scheduled profiler's wait steps


class Profile(Callback):
    """Runs ``torch.profiler`` over steps ``first`` to ``last`` and shows where their time went.

        monitor = Monitor([Profile(steps=(10, 14))], env="mnist")
        # pane "profile": the top operators, the time per step by phase, and where the trace is

    The steps before ``first`` are the profiler's wait and (one step) warm-up, as in
    ``torch.profiler.schedule``; a window from step 1 has none, so its first step is slower.
    When the last step ends, the Chrome trace is written to ``directory`` (default: the run's
    folder, ``runs/ENV/profile/``; open it in Perfetto or chrome://tracing) with ``table.json``,
    the pane's table, which ``monitor profile RUN_DIR`` prints. The table lists the operators
    with the most self time (self and total CPU time, device time where there is a device,
    calls, input shapes); the phases are each step's data wait (with ``monitor.batches``), up
    to ``after_backward`` (forward and backward), and the rest (the optimizer); a validation
    between two steps is in neither. The callbacks' work is under
    ``monitor.<callback>.<hook>`` (in any profiler's trace, the loop's own too). Writing the
    trace takes the training thread a moment, once.
    """

    def __init__(self, steps: Sequence[int] = (10, 14), directory: str | os.PathLike | None = None,
                 top: int = TOP) -> None:
        if isinstance(steps, range):
            steps = (steps.start, steps.stop - 1)
        if not isinstance(steps, (tuple, list)) or len(steps) != 2 or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in steps) or not 1 <= steps[0] <= steps[1]:
            raise ValueError(f"steps must be (first, last) with 1 <= first <= last, or a range, got {steps!r}")
        self.first, self.last = steps
        self.directory = None if directory is None else Path(directory)
        self.top = checks.positive_int("top", top)
        self._profiler: Any = None
        self._phases: list[dict[str, float]] = []
        self._began = self._backward = 0.0
        self._done = False

    def on_train_start(self, state: LoopState, log: Log) -> None:
        if self._done or self._profiler is not None or state.step >= self.last:
            return
        if _running_elsewhere(None):
            self._done = True  # the loop's own profiler is running: two at once crash torch
            raise RuntimeError("another torch.profiler is running in this process: Profile leaves it alone and "
                               "profiles nothing")
        from torch.profiler import ProfilerActivity, profile, schedule

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        ahead = self.first - 1 - state.step  # profiler steps before the first profiled one
        warmup = 1 if ahead >= 1 else 0
        with warnings.catch_warnings():  # a window from step 1 has no step to warm up on: said in the docstring
            warnings.filterwarnings("ignore", "Profiler won't be using warmup")
            steps = schedule(wait=max(ahead - warmup, 0), warmup=warmup,
                             active=self.last - max(self.first, state.step + 1) + 1, repeat=1)
        profiler = profile(activities=activities, record_shapes=True, schedule=steps,
                           on_trace_ready=lambda p: self._ready(p, state, log))
        profiler.start()
        self._profiler = profiler  # only once started: stopping one that never started crashes torch
        self._began = time.perf_counter()

    def on_after_backward(self, state: LoopState, log: Log) -> None:
        if self._profiler is not None:
            self._backward = time.perf_counter()

    def on_validation_end(self, state: LoopState, log: Log) -> None:
        if self._profiler is not None and state.validated_step is None:
            self._began = time.perf_counter()  # a validation between two steps is neither's phases

    def on_step_end(self, state: LoopState, log: Log) -> None:
        if self._profiler is None:
            return
        now = time.perf_counter()
        if self.first <= state.step <= self.last:
            wait = state.data_wait or 0.0
            backward = self._backward if self._backward > self._began else now
            self._phases.append({"step": state.step, "data wait": None if state.data_wait is None else wait * 1000,
                                 "forward and backward": (backward - self._began - wait) * 1000,
                                 "optimizer and the rest": (now - backward) * 1000})
        profiler = self._profiler
        if profiler.current_action is _WAITING and profiler.schedule(profiler.step_num + 1) is not _WAITING \
                and _running_elsewhere(profiler):  # the loop's own, started since train_start
            profiler.stop()  # in its wait: nothing to undo
            self._profiler, self._done = None, True
            raise RuntimeError("another torch.profiler started in this process: Profile leaves it alone and "
                               "profiles nothing")
        profiler.step()  # calls _ready after the last profiled step
        self._began = time.perf_counter()
        if self._done:
            self._profiler.stop()
            self._profiler = None

    def on_train_end(self, state: LoopState, log: Log) -> None:
        if self._profiler is not None:  # the run ended inside the window: the steps done are shown
            self._profiler.stop()
            self._profiler = None
        if not self._done and state.step < self.first:
            self._done = True
            _log.warning("monitor: the run ended at step %d, before Profile's first step %d: nothing was profiled "
                         "(pass steps=(first, last) within the run)", state.step, self.first)

    def _ready(self, profiler: Any, state: LoopState, log: Log) -> None:
        self._done = True
        directory = self.directory or Path(getattr(log.sink, "run_dir", None) or "runs") / "profile"
        directory.mkdir(parents=True, exist_ok=True)
        first, last = (self._phases[0]["step"], self._phases[-1]["step"]) if self._phases else (self.first, self.last)
        trace = directory / f"trace-steps-{first}-{last}.json"
        profiler.export_chrome_trace(str(trace))
        table = {**operator_table(profiler, self._phases, str(trace)), "top": self.top}
        (directory / "table.json").write_text(json.dumps(table, indent=1))
        log.window(WINDOW, order=Order.SUMMARY, title=WINDOW, width=760, height=560)
        log.text(WINDOW, state.step, table_html(table, self.top), html=True)


def _running_elsewhere(mine: Any) -> bool:
    """Whether a profiler other than ``mine`` runs in this process: recording now, or started on a
    schedule and in its wait steps (recording nothing yet: found among the live objects, once or
    twice a run; its warm-up during Profile's steps crashed the process)."""
    if torch._C._autograd._profiler_enabled():
        return True
    from torch.profiler import profile

    # type(), not isinstance(): an object's __class__ may warn (torch.distributed.reduce_op's does).
    return any(issubclass(type(o), profile) and o is not mine and o.step_rec_fn is not None
               for o in gc.get_objects())


def operator_table(profiler: Any, phases: list[dict[str, float]], trace: str) -> dict[str, Any]:
    """The profiled steps' operators (every one, the most self time first), phases and trace path."""
    rows = []
    for event in profiler.key_averages(group_by_input_shape=True):
        if event.key.startswith("ProfilerStep"):
            continue
        device = getattr(event, "self_device_time_total", 0.0) or 0.0
        rows.append({"name": event.key, "self_cpu_ms": event.self_cpu_time_total / 1000,
                     "cpu_ms": event.cpu_time_total / 1000, "device_ms": device / 1000, "calls": event.count,
                     "input_shapes": str(event.input_shapes) if event.input_shapes else ""})
    rows.sort(key=lambda r: -r["self_cpu_ms"])
    steps = sorted((e for e in profiler.events() if e.name.startswith("ProfilerStep")), key=lambda e: e.time_range.start)
    if phases:  # a run that ended inside the window: not the step it began and never ended
        steps = steps[:len(phases)]
    profiled_ms = sum(e.time_range.elapsed_us() for e in steps) / 1000
    outside = profiled_ms - sum(r["self_cpu_ms"] for r in rows)  # Python, and gaps between operators
    return {"trace": trace, "profiled_ms": profiled_ms, "outside_operators_ms": outside, "steps": len(steps),
            "operators": rows, "phases": phases}


def table_html(table: dict[str, Any], top: int = TOP) -> str:
    """The pane: where the trace is, the top operators, the phases of each step."""
    device = any(r["device_ms"] for r in table["operators"])
    head = ["operator", "self CPU ms", "CPU ms"] + (["device ms"] if device else []) + ["calls", "input shapes"]
    rows = []
    for r in table["operators"][:top]:
        cells = [r["name"], f"{r['self_cpu_ms']:.3f}", f"{r['cpu_ms']:.3f}"] + \
            ([f"{r['device_ms']:.3f}"] if device else []) + [str(r["calls"]), r["input_shapes"]]
        rows.append(cells)
    parts = ("data wait", "forward and backward", "optimizer and the rest")
    phases = [[str(p["step"])] + [_ms(p[k]) for k in parts] for p in table["phases"]]
    return (f"<p>{table['steps']} steps profiled, {table['profiled_ms']:.1f} ms, of which "
            f"{table['outside_operators_ms']:.1f} ms outside any operator (Python, gaps); trace (Perfetto, "
            f"chrome://tracing): <code>{escape(table['trace'])}</code></p>"
            + _html_table(head, rows)
            + "<h4>Time per step (ms)</h4>"
            + _html_table(["step", "data wait", _computing(table), "optimizer and the rest"], phases))


def text_table(table: dict[str, Any], top: int = TOP) -> str:
    """The same table as plain text, for ``monitor profile``."""
    lines = [f"{table['steps']} steps profiled, {table['profiled_ms']:.1f} ms, of which "
             f"{table['outside_operators_ms']:.1f} ms outside any operator; trace: {table['trace']}",
             f"{'operator':<32} {'self CPU ms':>12} {'CPU ms':>10} {'device ms':>10} {'calls':>7}  input shapes"]
    for r in table["operators"][:top]:
        name = r["name"] if len(r["name"]) <= 32 else r["name"][:30] + ".."
        lines.append(f"{name:<32} {r['self_cpu_ms']:>12.3f} {r['cpu_ms']:>10.3f} {r['device_ms']:>10.3f} "
                     f"{r['calls']:>7}  {r['input_shapes']}")
    lines.append("")
    computing = _computing(table).replace(" and ", "+").replace(", ", "+")
    lines.append(f"{'step':>6} {'data wait':>10} {computing:>22} {'optimizer+rest':>15}  (ms)")
    for p in table["phases"]:
        lines.append(f"{p['step']:>6} {_ms(p['data wait']):>10} {p['forward and backward']:>22.2f} "
                     f"{p['optimizer and the rest']:>15.2f}")
    return "\n".join(lines)


def _computing(table: dict[str, Any]) -> str:
    """The name of the phase up to ``after_backward``: a loop that reads its loader itself (no
    ``monitor.batches``) has its wait for the batch in it."""
    measured = any(p["data wait"] is not None for p in table["phases"])
    return "forward and backward" if measured or not table["phases"] else "data, forward and backward"


def _ms(value: float | None) -> str:
    """A phase's milliseconds; "-" where it was not measured (no ``monitor.batches``: no data wait)."""
    return "-" if value is None else f"{value:.2f}"


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div style="font-size:11px">{TABLE}<tr>{header}</tr>{body}</table></div>'
