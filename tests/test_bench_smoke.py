"""The benchmarks in bench/ run and give sane answers, at tiny sizes (the timings mean nothing here).

The full runs are ``make bench``; these only check that every script still works against a real
Visdom server and that what it reports hangs together.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import browser_updates  # noqa: E402
import concurrent_runs  # noqa: E402
import deep_model  # noqa: E402
import hook_cost  # noqa: E402
import latency  # noqa: E402
import overhead  # noqa: E402
import run_all  # noqa: E402
import server_scaling  # noqa: E402
import timing_cost  # noqa: E402
import writer_cost  # noqa: E402

# visdom 0.2.4 warns about "PyTorch less than 0.4" whenever it is handed a tensor; ignite and
# tensorboard import torch.jit helpers that torch 2.13 calls deprecated.
pytestmark = [pytest.mark.filterwarnings("ignore:Support for versions of PyTorch:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]


def test_overhead_delivers_every_point_in_every_mode(visdom_server):
    summaries = overhead.run(visdom_server, ("mlp", "cnn"), steps=4, warmup=2, repeats=1, progress=lambda _: None)
    assert {(s.workload, s.mode) for s in summaries} == {
        (w, m) for w in ("mlp", "cnn") for m in ["bare", *overhead.available_modes()]}
    for s in summaries:
        assert s.median_ms > 0 and s.ratio > 0 and s.cpu_ms > 0 and 0 <= s.close_s < 10
        if s.mode == "bare":
            assert s.delivered is None
        else:
            assert s.expected > 0 and s.delivered == s.expected, s
    assert "| mlp | monitor |" in overhead.table(summaries)


def test_server_scaling_keeps_the_monitor_window_bounded_and_naive_growing(visdom_server):
    result = server_scaling.run(visdom_server, steps=1500, block=250, naive_seconds=1.0, progress=lambda _: None)
    assert [c.step for c in result.monitor.checkpoints] == [1000, 1500]
    assert all(0 < c.points_per_trace <= 1000 and c.server_ms >= 0 for c in result.monitor.checkpoints)
    assert result.naive.checkpoints[-1].points_per_trace == result.naive.steps_done > 0
    assert "server time per flush" in server_scaling.table(result)


def test_latency_sees_every_point_within_seconds(visdom_server):
    result = latency.run(visdom_server, steps=10, workload="mlp", progress=lambda _: None)
    assert result.seen == result.steps == 10
    assert 0 < result.p50_s <= result.p95_s <= result.max_s < 5
    assert "p95" in latency.table(result)


def test_hook_cost_times_every_case_with_a_null_and_a_live_sink(capsys):
    for live in ([], ["--live"]):
        hook_cost.main(["--steps", "40", "--repeats", "1", *live])
        table = capsys.readouterr().out
        assert all(f"| {case} |" in table for case in hook_cost.CASES), table


def test_timing_cost_reports_both_workloads(capsys):
    timing_cost.main(["--calls", "50", "--steps", "10"])
    table = capsys.readouterr().out
    assert "| Timing(every=1) |" in table and "| Timing(every=10) |" in table and table.count("% of") == 4


def test_writer_cost_runs_every_mode_in_a_process_of_its_own(capsys):
    writer_cost.main(["--steps", "30", "--tags", "4"])
    table = capsys.readouterr().out
    assert all(f"| {mode} |" in table for mode in writer_cost.MODES), table


def test_run_all_rewrites_only_the_results_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nbefore\n\n{run_all.START}\nold numbers\n{run_all.END}\n\nafter\n")
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--smoke", "--output", str(readme)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old numbers" not in text and text.count(run_all.START) == 1
    for heading in ("### Targets", "### Overhead", "### Server scaling", "### Latency"):
        assert heading in text
    assert "| MLP every point delivered |" in text and "| CNN every point delivered |" in text
    assert "| MLP overhead <= 1.10x with glibc's default allocator (paired median step) |" in text


@pytest.mark.parametrize("kind, width", [("linear", 64), ("conv", 4)])
def test_deep_model_times_three_modes_and_shows_a_heatmap(visdom_server, kind, width):
    result = deep_model.run(visdom_server, steps=3, repeats=1, warmup=2, width=width, kind=kind,
                            progress=lambda _: None)
    assert result.layers == 161 and result.shown.startswith("heatmap") and result.message_kb < 300
    assert "floor ratio" in deep_model.table([result])


@pytest.mark.parametrize("apart", [False, True], ids=["sink-thread", "sink-process"])
def test_concurrent_runs_lose_nothing(apart):
    result = concurrent_runs.run((2,), seconds=1.5, progress=lambda _: None, apart=apart)
    assert [row.lost for row in result.rows] == [0] and result.rows[0].logged > 0
    assert concurrent_runs.p95_s(result.rows[0]) < 5 and "p95" in concurrent_runs.table(result)


@pytest.mark.slow
@pytest.mark.skipif(not Path(browser_updates.CHROMEDRIVER).exists(), reason="needs chromium-driver")
def test_browser_updates_reads_the_page_s_long_tasks(visdom_server):
    results = browser_updates.run(visdom_server, layers=(5,), seconds=1.0, settle=0.5, progress=lambda _: None)
    assert results[0].layers == 5 and 0.0 <= results[0].long_task_share <= 1.0
