"""One env, one run at a time: a script run again starts afresh, the earlier run is kept aside."""
from __future__ import annotations

import concurrent.futures
import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from monitor import Checkpoint, Monitor, Scalars
from monitor.checkpoint import load_checkpoint
from monitor.log import Log
from monitor.replay import replay
from monitor import env_claims
from monitor.rundir import RunInUseError
from monitor.runlog import RunLog
from monitor.runs import described
from monitor.server import VisdomServer
from monitor.sink import VisdomSink

HELPER = Path(__file__).parent / "helpers" / "quick_start.py"
_spec = importlib.util.spec_from_file_location("quick_start", HELPER)
quick_start = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quick_start)


def logged_points(path: Path) -> dict[tuple[str, str], tuple[list, list]]:
    """``{(window, trace): (xs, ys)}`` of a run log, every point as logged."""
    points: dict[tuple[str, str], tuple[list, list]] = {}
    for entry in RunLog.read(path):
        if entry.get("k") == "points":
            for trace, y in entry["y"].items():
                xs, ys = points.setdefault((entry["win"], trace), ([], []))
                xs.append(entry["x"])
                ys.append(y)
    return points


def assert_the_dashboard_shows_exactly(server, env, points, read_window) -> None:
    for (window, trace), (xs, ys) in points.items():
        shown_xs, shown_ys = read_window(server, env, window)[trace]
        assert shown_xs == xs and shown_ys == pytest.approx(ys), (window, trace)
        assert all(a < b for a, b in zip(shown_xs, shown_xs[1:])), (window, trace)  # no zigzag


def check_two_runs(server, env, run_dir: Path, read_window) -> None:
    """The dashboard shows the second run only; the first, replayed elsewhere, shows itself only."""
    (earlier,) = (run_dir / "earlier").glob("*.jsonl")
    first, second = logged_points(earlier), logged_points(run_dir / "runlog.jsonl")
    assert first.keys() == second.keys() and first != second  # two seeds: two different runs
    assert_the_dashboard_shows_exactly(server, env, second, read_window)
    first_id = next(RunLog.read(earlier))["run_id"]
    second_id = next(RunLog.read(run_dir / "runlog.jsonl"))["run_id"]
    assert earlier.stem == first_id != second_id  # listed by its id
    replay(earlier, f"{env}-first", port=server.port)
    assert_the_dashboard_shows_exactly(server, f"{env}-first", first, read_window)


def test_the_quick_start_run_twice_in_one_process_shows_only_the_second_run_and_says_so_once(
        visdom_server, read_window, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="monitor"):
        for seed in (1, 2):  # a cross-validation's folds given one env by mistake
            quick_start.train("twice-in-process", visdom_server.port, str(tmp_path), seed)
    check_two_runs(visdom_server, "twice-in-process", tmp_path, read_window)
    said = [r.getMessage() for r in caplog.records if "sets aside" in r.getMessage()]
    assert said == [f"monitor: a new run in {tmp_path} sets aside the one this process ran there before: the "
                    f"dashboard and `monitor runs` show the new one only (the earlier one's log goes to earlier/); "
                    f"give each run (a fold, a trial, a phase: a linear probe after pretraining) an env of its "
                    f"own, env=f\"cv-fold{{k}}\""]
    caplog.clear()
    with caplog.at_level("WARNING", logger="monitor"):
        quick_start.train("twice-in-process", visdom_server.port, str(tmp_path), 3)
    assert not [r for r in caplog.records if "sets aside" in r.getMessage()]  # said once


def test_a_second_phase_s_monitor_of_the_env_the_first_still_has_open_is_said_once(visdom_server, tmp_path, caplog):
    """Pretraining, then a linear probe with a new Monitor of the same env inside the first's
    with-block: the pretraining's curves left the dashboard, nothing said, the script exited 0."""
    from monitor import Monitor, Scalars

    with caplog.at_level("WARNING", logger="monitor"):
        with Monitor([Scalars()], env="phases", port=visdom_server.port, run_dir=tmp_path) as pretraining:
            pretraining.step_end(loss=3.9)
            with Monitor([Scalars()], env="phases", port=visdom_server.port, run_dir=tmp_path) as probe:
                probe.step_end(loss=0.3)
    said = [r.getMessage() for r in caplog.records if "sets aside" in r.getMessage()]
    assert len(said) == 1 and "a linear probe after pretraining" in said[0], said


def test_the_quick_start_run_twice_as_two_processes_shows_only_the_second_run(visdom_server, read_window, tmp_path):
    for seed in (1, 2):
        subprocess.run([sys.executable, str(HELPER), "--env", "twice-as-processes", "--port", str(visdom_server.port),
                        "--run-dir", str(tmp_path), "--seed", str(seed)], check=True, timeout=120)
    check_two_runs(visdom_server, "twice-as-processes", tmp_path, read_window)


def test_a_new_run_closes_the_windows_only_the_earlier_run_had(visdom_server, read_window, tmp_path):
    earlier = VisdomSink("closes-earlier", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    Log(earlier).scalar("only earlier", "train", 1, 1.0)
    Log(earlier).scalar("loss", "train", 1, 1.0)
    assert earlier.close(timeout=10)
    later = VisdomSink("closes-earlier", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    Log(later).scalar("loss", "train", 1, 0.5)
    assert later.close(timeout=10)
    assert read_window(visdom_server, "closes-earlier", "loss") == {"train": ([1], [0.5])}
    with pytest.raises(LookupError):
        read_window(visdom_server, "closes-earlier", "only earlier")


def test_a_second_live_process_on_one_env_is_refused_naming_the_first(visdom_server, tmp_path):
    first = subprocess.Popen([sys.executable, str(HELPER), "--env", "busy", "--port", str(visdom_server.port),
                              "--run-dir", str(tmp_path), "--sleep", "5"])
    try:
        deadline = time.monotonic() + 60
        log = tmp_path / "runlog.jsonl"
        while not (log.exists() and log.read_bytes().count(b"\n") > 1):  # it took the env and logged a step
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        with pytest.raises(RunInUseError, match=rf"env 'busy' must have one live run at a time, got another one "
                                                rf"writing to .*: pid {first.pid} on {os.uname().nodename}"):
            Monitor([Scalars()], env="busy", port=visdom_server.port, run_dir=tmp_path)
        before = (tmp_path / "runlog.jsonl").read_bytes()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (tmp_path / "runlog.jsonl").read_bytes().startswith(before)  # the refused run wrote nothing
    with Monitor([Scalars()], env="busy", port=visdom_server.port, run_dir=tmp_path) as monitor:  # killed: free
        monitor.step_end(loss=1.0)
    assert len(list((tmp_path / "earlier").glob("*.jsonl"))) == 1


def test_a_thread_pool_s_second_trial_of_one_env_is_refused_while_the_first_trains(visdom_server, tmp_path):
    # Two threads sharing an env: the second Monitor either waited for the first trial's end or
    # replaced it mid-run (its next hook raised, blaming a notebook cell), by chance.
    training, finish = threading.Event(), threading.Event()

    def trial() -> None:
        with Monitor([Scalars()], env="pool", port=visdom_server.port, run_dir=tmp_path) as monitor:
            monitor.step_end(loss=1.0)
            training.set()
            finish.wait(30)
            monitor.step_end(loss=0.5)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(trial)
        assert training.wait(30)
        with pytest.raises(RunInUseError, match=r"env 'pool' must have one live run at a time, got another one "
                                                r"writing to .* from thread 'ThreadPoolExecutor-\d+_0' of this "
                                                r"process .* close\(\) it first, or give each thread's run an env"):
            Monitor([Scalars()], env="pool", port=visdom_server.port, run_dir=tmp_path)
        finish.set()
        first.result(timeout=60)  # the first trial was left alone
    with Monitor([Scalars()], env="pool", port=visdom_server.port, run_dir=tmp_path) as monitor:  # ended: free
        monitor.step_end(loss=2.0)
    (earlier,) = (tmp_path / "earlier").glob("*.jsonl")
    assert [e["y"]["train"] for e in map(json.loads, earlier.read_text().splitlines()) if e.get("x") is not None] == [1.0, 0.5]


def test_a_monitor_left_open_by_a_thread_that_ended_is_replaced(visdom_server, tmp_path):
    left = []
    thread = threading.Thread(target=lambda: left.append(
        Monitor([Scalars()], env="left", port=visdom_server.port, run_dir=tmp_path)))
    thread.start()
    thread.join()
    with Monitor([Scalars()], env="left", port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.step_end(loss=1.0)
    assert left[0].sink.replaced == "set aside"


def test_two_machines_drawing_one_env_on_a_shared_server_are_each_told_once(visdom_server, tmp_path, monkeypatch,
                                                                          caplog):
    # Teammates on two machines (or two MONITOR_HOMEs): no lock or claim of either sees the
    # other, and their windows took turns on the team's dashboard without a word.
    sinks = []
    for name in ("alice", "bob"):
        monkeypatch.setenv("MONITOR_HOME", str(tmp_path / name / "home"))
        sinks.append(VisdomSink("shared", port=visdom_server.port, run_dir=tmp_path / name / "runs", flush_every=0.05))
    for sink in sinks:
        sink.delivery.owner_check, sink.delivery.heartbeat = 0.3, 0.1
    logs = [Log(sink) for sink in sinks]
    with caplog.at_level("WARNING", logger="monitor"):
        deadline = time.monotonic() + 30
        step = 0
        while sum("drawn by another run" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, caplog.text
            step += 1
            for log, scale in zip(logs, (1.0, 2.0)):
                log.scalar("loss", "train", step, scale / step)
            time.sleep(0.05)
        for sink in sinks:
            assert sink.close(timeout=10)
    said = sorted(r.getMessage() for r in caplog.records if "drawn by another run" in r.getMessage())
    assert len(said) == 2 and all(f"(run {sink.run_id[:8]} on " in " ".join(said) for sink in sinks)
    assert said[0].startswith(f"monitor: env 'shared' on http://127.0.0.1:{visdom_server.port} is drawn by another "
                              f"run too")

    with caplog.at_level("WARNING", logger="monitor"):  # one run at a time, and a replay of it: nothing to say
        caplog.clear()
        alone = VisdomSink("alone", port=visdom_server.port, run_dir=tmp_path / "alone", flush_every=0.05)
        alone.delivery.owner_check, alone.delivery.heartbeat = 0.3, 0.1
        for step in range(1, 30):
            Log(alone).scalar("loss", "train", step, 1.0 / step)
            time.sleep(0.05)
        assert alone.close(timeout=10)
        replay(tmp_path / "alone" / "runlog.jsonl", "alone", port=visdom_server.port)
    assert not [r for r in caplog.records if "another run" in r.getMessage()]


def test_a_live_run_of_another_folder_in_the_env_is_refused_naming_it_and_a_finished_one_is_followed(
        visdom_server, tmp_path, read_window):
    """Two working directories (a Hydra sweep's trials, run at once) with Monitor(env="sweep"):
    both drew into one env; now the second is refused, as a second process on one folder is."""
    first = subprocess.Popen([sys.executable, str(HELPER), "--env", "sweep", "--port", str(visdom_server.port),
                              "--run-dir", str(tmp_path / "a"), "--sleep", "5"])
    try:
        deadline = time.monotonic() + 60
        log = tmp_path / "a" / "runlog.jsonl"
        while not (log.exists() and log.read_bytes().count(b"\n") > 1):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        with pytest.raises(RunInUseError, match=rf"env 'sweep' must have one live run at a time, got another one "
                                                rf"writing to {re.escape(str(tmp_path / 'a'))}; stop it, or use another env"):
            Monitor([Scalars()], env="sweep", port=visdom_server.port, run_dir=tmp_path / "b")
        assert not (tmp_path / "b" / "runlog.jsonl").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with Monitor([Scalars()], env="sweep", port=visdom_server.port, run_dir=tmp_path / "b") as monitor:  # ended: followed
        monitor.step_end(loss=0.25)
    assert read_window(visdom_server, "sweep", "loss") == {"train": ([1], [0.25])}
    assert env_claims.holder("sweep") == tmp_path / "b"


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))  # no byte more may be written: a full disk
from monitor import Monitor
try:
    Monitor([], env="full", run_dir=sys.argv[1], port=1)
except OSError as error:
    print(error)
"""


def test_a_run_folder_that_cannot_be_written_is_named_in_the_error(tmp_path):
    # ENOSPC from os.write names no file: the user was left with "[Errno 28] No space left on device".
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.stdout.strip() == f"[Errno {errno.EFBIG}] File too large: '{tmp_path / 'runs' / '.lock'}'", \
        done.stderr[-3000:]


def test_data_loader_workers_that_outlive_a_run_do_not_keep_its_env_locked(visdom_server, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = DataLoader(data, batch_size=8, num_workers=2, persistent_workers=True)  # forked once, kept
    for lr in (0.1, 0.01):  # a sweep in one process: the workers started in the first run live on
        with Monitor([Scalars()], env="workers", port=visdom_server.port, run_dir=tmp_path) as monitor:
            for _, y in loader:
                monitor.step_end(loss=float(y.mean()) * lr)
        assert described(tmp_path).status == "finished"  # not "running": nothing holds the lock


def test_a_notebook_cell_run_again_closes_the_previous_monitor_and_starts_clean(visdom_server, read_window, tmp_path):
    def cell() -> Monitor:  # a cell that builds a monitor and trains, never closing it
        monitor = Monitor([Scalars()], env="notebook", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
        for _ in range(3):
            monitor.step_end(loss=torch.tensor(1.0))
        return monitor

    first = cell()
    second = cell()
    assert first.sink._child.poll() is not None and not first.sink._forwarder.is_alive()  # closed, its process gone
    assert [t.name for t in threading.enumerate()].count("monitor-forward-notebook") == 1
    assert second.flush(timeout=10)
    assert read_window(visdom_server, "notebook", "loss") == {"train": ([1, 2, 3], [1.0, 1.0, 1.0])}
    assert first.sink.run_id != second.sink.run_id
    [earlier] = (tmp_path / "earlier").glob("*.jsonl")
    [end] = [e for e in RunLog.read(earlier) if e["k"] == "end"]  # the first run says why it ended
    assert (end["status"], end["error"]) == ("interrupted", "a newer run of its env in this process replaced it")
    with pytest.raises(RuntimeError, match="a newer Monitor of its env in this process replaced it"):
        first.step_end(loss=torch.tensor(1.0))  # the first cell's monitor, still referenced, logs again
    second.close()


def test_a_checkpoint_names_the_run_its_log_names(visdom_server, tmp_path):
    model = torch.nn.Linear(2, 1)
    checkpoint = Checkpoint(tmp_path / "checkpoints")
    with Monitor([Scalars(), checkpoint], env="run-id", port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        monitor.step_end(loss=1.0)
    header = next(RunLog.read(tmp_path / "runlog.jsonl"))
    (saved,) = (tmp_path / "checkpoints").glob("step-*.pt")
    assert load_checkpoint(saved)["run"]["run_id"] == header["run_id"] == monitor.sink.run_id
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["run_id"] == header["run_id"]


def test_a_new_run_whose_env_the_server_never_had_is_delivered_without_trouble(visdom_server, read_window, tmp_path,
                                                                                caplog):
    offline = VisdomSink("never-there", port=VisdomServer(0).port, run_dir=tmp_path, flush_every=0.05)
    Log(offline).scalar("loss", "train", 1, 1.0)  # an earlier run trained without a dashboard
    assert offline.close(timeout=0.2) is False
    caplog.clear()
    later = VisdomSink("never-there", port=visdom_server.port, run_dir=tmp_path, flush_every=0.05)
    Log(later).scalar("loss", "train", 1, 0.5)
    assert later.close(timeout=10)  # closing the earlier run's windows, which the server never had, is no trouble
    assert read_window(visdom_server, "never-there", "loss") == {"train": ([1], [0.5])}
    assert not [r for r in caplog.records if "trouble" in r.getMessage()]


def test_a_monitor_whose_close_was_interrupted_is_waited_for_by_the_next_one_of_its_env(fresh_server, tmp_path):
    # A notebook cell interrupted (Ctrl-C) while its new Monitor closed the previous one: that
    # sink's process still ends its run, under this process's pid; the cell run again waits for it.
    from monitor.sink import open_sinks
    from monitor.sink_process import SinkProcess

    first = SinkProcess("interrupted", port=fresh_server.port, run_dir=tmp_path, timeout=2.0)
    Log(first).scalar("loss", "train", 1, 1.0)
    assert first.flush(timeout=10)
    fresh_server.pause()  # its last send hangs for its 2 s timeout
    Log(first).scalar("loss", "train", 2, 0.5)
    open_sinks.discard(first)  # where an interrupted replacement leaves it: ending, no longer listed
    closing = threading.Thread(target=first.close, kwargs={"timeout": 5.0})
    closing.start()
    try:
        time.sleep(0.3)
        with Monitor([Scalars()], env="interrupted", port=fresh_server.port, run_dir=tmp_path) as monitor:
            monitor.step_end(loss=0.25)
    finally:
        fresh_server.resume()
        closing.join()
    assert len(list((tmp_path / "earlier").glob("*.jsonl"))) == 1  # the first run, whole, set aside


@pytest.mark.parametrize("ending", [None, {"k": "end", "status": "finished", "error": None, "time": 1.0}])
def test_a_new_run_after_a_killed_one_says_the_killed_run_is_not_continued(tmp_path, caplog, ending):
    # A killed script re-run before its first checkpoint started over without a word
    log = RunLog(tmp_path / RunLog.FILENAME)
    log.append([{"k": "run", "env": "again", "run_id": "r1", "time": 0.0, "pid": 1, "host": "h"},
                {"k": "points", "win": "loss", "x": 84, "y": {"train": 0.5}}, *([ending] if ending else [])])
    log.close()
    with caplog.at_level("INFO", logger="monitor"):
        VisdomSink("again", port=1, run_dir=tmp_path, timeout=0.2).close(timeout=0.2)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "earlier run" in r.getMessage()]
    if ending is None:
        assert said == [("WARNING", f"monitor: env 'again' starts a new run from step 0; the earlier run stopped "
                                    f"without ending (killed) and is not continued, as no checkpoint of it was found "
                                    f"to resume from (Checkpoint(..., resume=True) writes them: this run had none "
                                    f"yet, or none was asked for); its log is kept in "
                                    f"{tmp_path / 'earlier' / 'r1.jsonl'}")]
    else:  # a script run again: its earlier curves leave the page, said where they went
        assert said == [("WARNING", f"monitor: env 'again' starts a new run; the earlier run's log is kept in "
                                    f"{tmp_path / 'earlier' / 'r1.jsonl'} (monitor runs --earlier lists it, monitor "
                                    f"replay shows it again)")]


def test_splits_each_with_a_resumable_checkpoint_in_one_env_are_told_once_they_set_each_other_aside(tmp_path, caplog):
    # A walk-forward forecaster's splits: each a fresh run under Checkpoint(resume=True), one env for all
    with caplog.at_level("WARNING", logger="monitor"):
        for split in range(3):
            model = torch.nn.Linear(2, 1)
            with Monitor([Scalars(), Checkpoint(tmp_path / f"ckpt{split}", resume=True)], env="walk-forward",
                         run_dir=tmp_path / "run", port=1, timeout=0.2) as monitor:
                monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
                monitor.step_end(loss=1.0)
    said = [r.getMessage() for r in caplog.records
            if "sets aside the one this process ran there before" in r.getMessage()]
    assert len(said) == 1


def test_a_notebook_s_setup_cell_run_again_onto_a_checkpoint_folder_of_the_run_is_refused_before_replacing_it(
        visdom_server, read_window, tmp_path):
    """The new Monitor set the run aside and blanked its env, then its train_start refused the
    folder; the run's curves were gone and a run of 0 steps stood in its place (a notebook's
    setup cell run again; a cross-validation script run again for a second experiment)."""
    from monitor import Checkpoint
    from monitor.checkpoint import CheckpointWriteError

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Monitor([Scalars(), Checkpoint(tmp_path / "ckpt", every_steps=2)], env="cell", port=visdom_server.port,
                    run_dir=tmp_path / "run")
    first.train_start(model, optimizer)
    for step in range(4):
        first.step_end(loss=float(step))
    assert first.flush()
    with pytest.raises(CheckpointWriteError, match="directory must be empty or hold this run's checkpoints"):
        Monitor([Scalars(), Checkpoint(tmp_path / "ckpt", every_steps=2)], env="cell", port=visdom_server.port,
                run_dir=tmp_path / "run")
    first.step_end(loss=4.0)  # the run goes on, its curve on the page
    assert first.flush()
    assert read_window(visdom_server, "cell", "loss")["train"][0] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "run" / "earlier").exists()
    first.close()
