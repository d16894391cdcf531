"""The default sink runs in a process of its own: what the training process hands it is kept and
delivered however the training process ends, and the training goes on if it dies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from monitor import Monitor, Scalars, SinkProcess
from monitor.log import Log
from monitor.records import Points
from monitor.runlog import RunLog

# A user's loop that logs a step every 20 ms and waits for a signal after ``--ready`` steps.
LOOP = textwrap.dedent("""
    import faulthandler, signal, sys, time
    import torch

    faulthandler.register(signal.SIGUSR1)  # the test asks for the stacks of a loop that does not end
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with it ignored
    from torch import nn
    from monitor import GradNorms, Monitor, Scalars

    port, run_dir, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = Monitor([Scalars(), GradNorms()], env=sys.argv[4], port=port, run_dir=run_dir)
    monitor.train_start(model, optimizer)
    for step in range(1, 100000):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        optimizer.step()
        if step <= steps:
            monitor.step_end(loss=float(step))
        if step == steps:
            time.sleep(0.5)  # the forwarder has handed everything on
            print("ready", flush=True)
        time.sleep(0.02)
""")


def _points(run_dir: Path, window: str = "loss") -> list[float]:
    return [e["x"] for e in RunLog.read(run_dir / "runlog.jsonl") if e["k"] == "points" and e["win"] == window]


def _until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _start(tmp_path: Path, visdom_server, env: str, steps: int) -> subprocess.Popen:
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    loop = subprocess.Popen([sys.executable, str(script), str(visdom_server.port), str(tmp_path / "run"), str(steps),
                             env], stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "w"), text=True,
                            start_new_session=True)
    assert loop.stdout.readline().strip() == "ready"
    return loop


def test_the_default_sink_runs_apart_without_torch_and_names_the_training_process(visdom_server, read_window,
                                                                                   tmp_path):
    with Monitor([Scalars()], env="apart", port=visdom_server.port, run_dir=tmp_path) as monitor:
        assert isinstance(monitor.sink, SinkProcess)
        child = monitor.sink._child.pid
        assert child != os.getpid()
        maps = Path(f"/proc/{child}/maps").read_text()
        assert "libtorch" not in maps and "numpy" in maps  # it draws and encodes with numpy and PIL alone
        for step in range(1, 6):
            monitor.step_end(loss=torch.tensor(float(step)))
        assert monitor.flush(timeout=10) and monitor.sink.delivered
        assert monitor.sink.sync() == (tmp_path / "runlog.jsonl").stat().st_size == monitor.sink.position
    assert read_window(visdom_server, "apart", "loss") == {"train": ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0])}
    assert next(RunLog.read(tmp_path / "runlog.jsonl"))["pid"] == os.getpid()  # the run is this process's
    assert monitor.sink._child.poll() == 0


def test_a_training_process_killed_with_sigkill_leaves_what_it_handed_on_in_the_log_and_on_the_server(
        visdom_server, read_window, tmp_path):
    loop = _start(tmp_path, visdom_server, "killed-loop", steps=40)
    loop.send_signal(signal.SIGKILL)  # no atexit, no close: only the sink's process is left
    loop.wait()
    _until(lambda: _points(tmp_path / "run") == list(range(1, 41)))
    _until(lambda: read_window(visdom_server, "killed-loop", "loss")["train"][0] == list(range(1, 41)))
    assert _points(tmp_path / "run", "grad norm") == list(range(1, 41))


# A sweep's trial killed moments after train_start, and after a validation: each kept its hparams
# only where the forwarder happened to poll (every 0.1 s) before the kill.
KILLED_EARLY = textwrap.dedent("""
    import os, signal, sys, time
    import torch
    from monitor import Monitor, Scalars

    monitor = Monitor([Scalars()], env=sys.argv[2], port=1, run_dir=sys.argv[1], timeout=0.2)
    model = torch.nn.Linear(3, 1)
    monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1), hparams={"lr": 0.1, "width": 64})
    if sys.argv[3] == "validated":
        for step in range(3):
            monitor.step_end(loss=1.0)
        time.sleep(0.3)
        monitor.validation_end({"loss": 0.5})
    time.sleep(0.02)  # the forwarder's poll: 0.1 s
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("when", ["started", "validated"])
def test_a_run_killed_just_after_train_start_or_a_validation_keeps_its_hparams_and_the_validation(tmp_path, when):
    script = tmp_path / "trial.py"
    script.write_text(KILLED_EARLY)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), f"killed-{when}", when],
                          capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    wanted = {"hparams"} if when == "started" else {"hparams", "validation"}

    def kept() -> set[str]:
        entries = list(RunLog.read(tmp_path / "run" / "runlog.jsonl"))
        return {e["k"] for e in entries if e["k"] == "hparams"} | \
            {"validation" for e in entries if e["k"] == "points" and "validation" in e["y"]}

    _until(lambda: kept() == wanted)


def test_a_ctrl_c_to_the_job_s_process_group_ends_the_loop_and_the_sink_still_delivers(visdom_server, read_window,
                                                                                     tmp_path):
    loop = _start(tmp_path, visdom_server, "ctrl-c-loop", steps=30)
    os.killpg(loop.pid, signal.SIGINT)  # what a terminal's Ctrl-C (or a scheduler's signal) reaches
    try:
        loop.wait(timeout=60)
    except subprocess.TimeoutExpired:
        loop.send_signal(signal.SIGUSR1)
        time.sleep(1)
        loop.kill()
        pytest.fail("the loop did not end after a Ctrl-C; its stacks:\n" + (tmp_path / "stderr").read_text())
    ends = [e for e in RunLog.read(tmp_path / "run" / "runlog.jsonl") if e["k"] == "end"]
    assert [e["status"] for e in ends] == ["interrupted"]
    assert _points(tmp_path / "run") == list(range(1, 31))
    assert read_window(visdom_server, "ctrl-c-loop", "loss")["train"][0] == list(range(1, 31))


def test_a_sink_process_that_dies_is_replaced_in_the_training_process_and_the_run_goes_on(
        visdom_server, read_window, tmp_path, caplog):
    with Monitor([Scalars()], env="child-dies", port=visdom_server.port, run_dir=tmp_path) as monitor:
        for step in range(1, 11):
            monitor.step_end(loss=float(step))
        assert monitor.flush(timeout=10)
        monitor.sink._child.kill()
        monitor.sink._child.wait()
        for step in range(11, 21):
            monitor.step_end(loss=float(step))
        assert monitor.flush(timeout=10)
    assert caplog.text.count("the sink's process ended unexpectedly") == 1
    assert _points(tmp_path) == list(range(1, 21))  # one run log, continued
    assert read_window(visdom_server, "child-dies", "loss")["train"][0] == list(range(1, 21))


def test_bad_arguments_are_named_as_the_sink_in_this_process_names_them(tmp_path):
    with pytest.raises(ValueError, match="flush_every must be"):
        SinkProcess("bad", run_dir=tmp_path, flush_every=-1)
    with pytest.raises(ValueError, match="points_per_trace must be"):
        SinkProcess("bad", run_dir=tmp_path, points_per_trace=1)
    with pytest.raises(TypeError, match="record must be a monitor.records"):
        SinkProcess("bad", run_dir=tmp_path, port=1).put("loss")


def test_a_record_that_cannot_be_read_is_reported_once_and_the_others_arrive(visdom_server, read_window,
                                                                              tmp_path, caplog):
    sink = SinkProcess("unreadable", port=visdom_server.port, run_dir=tmp_path)
    log = Log(sink)
    log.scalar("loss", "train", 1, 1.0)
    sink.put(Points("loss", 2, ("train",), lambda: 1 / 0))
    sink.put(Points("loss", 3, ("train",), lambda: 1 / 0))
    sink.put(Points("accuracy", 3, ("train",), lambda: 1 / 0))  # another window's trouble is said too
    log.scalar("loss", "train", 4, 4.0)
    assert sink.close(timeout=10)
    assert caplog.text.count("could not be read and is skipped: ZeroDivisionError") == 2
    assert "window 'loss'" in caplog.text and "window 'accuracy'" in caplog.text
    assert read_window(visdom_server, "unreadable", "loss") == {"train": ([1, 4], [1.0, 4.0])}


def test_a_run_started_again_at_once_waits_for_the_sink_of_its_killed_training_process(visdom_server, tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)  # a training process that was killed: its sink's process still holds the run
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from monitor.rundir import RunDir
        RunDir(Path({str(tmp_path)!r})).lock("killed", "again", pid={dead})
        print("held", flush=True)
        time.sleep(1.5)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    began = time.monotonic()
    with Monitor([Scalars()], env="again", port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.step_end(loss=1.0)
    assert holder.wait() == 0 and 0.5 < time.monotonic() - began < 15  # waited for it, then took the run
    assert _points(tmp_path) == [1]


def test_a_close_whose_sink_process_dies_before_answering_returns_and_the_log_stays_whole(visdom_server, tmp_path,
                                                                                         caplog):
    sink = SinkProcess("dies-in-close", port=visdom_server.port, run_dir=tmp_path)
    log = Log(sink)
    for step in range(1, 6):
        log.scalar("loss", "train", step, float(step))
    assert sink.flush(timeout=10)
    sink._child.send_signal(signal.SIGSTOP)  # handed the next records and the close, it never reads them
    for step in range(6, 11):
        log.scalar("loss", "train", step, float(step))
    began = time.monotonic()
    closed = []
    closer = threading.Thread(target=lambda: closed.append(sink.close(timeout=5)))
    closer.start()
    time.sleep(0.5)
    sink._child.kill()
    closer.join(30)
    assert closed and time.monotonic() - began < 10  # answered by the sink that took over, not after 35 s
    assert caplog.text.count("the sink's process ended unexpectedly") == 1
    assert _points(tmp_path)[:5] == [1, 2, 3, 4, 5]  # what it wrote is kept, and the log goes on whole
    assert [e["k"] for e in RunLog.read(tmp_path / "runlog.jsonl")][0] == "run"


# A training script with a forked worker, a value of its own class and a folder called monitor where it runs.
USER_SCRIPT = textwrap.dedent("""
    import enum, os, sys, time
    from monitor import SinkProcess
    from monitor.log import Log

    class Metric(float):  # a class only this script knows: the sink's process could not unpickle it
        pass

    class Step(enum.IntEnum):
        FIRST = 1

    class Html(str):
        pass

    class Scale(str, enum.Enum):
        LOG = "log"

    port, run_dir = int(sys.argv[1]), sys.argv[2]
    sink = SinkProcess("user-script", port=port, run_dir=run_dir)
    worker = os.fork()  # a DataLoader's or a Pool's worker, forked after the monitor started
    if worker == 0:
        time.sleep(60)
        os._exit(0)
    log = Log(sink)
    log.window("accuracy", ytype=Scale.LOG)
    log.scalar("loss", "train", Step.FIRST, Metric(1.0))
    log.text("notes", 1, Html("<b>first</b>"), html=True)
    for step in range(2, 6):
        log.scalar("loss", "train", step, Metric(step) if step % 2 else float(step))
    assert sink.flush(timeout=10), "not delivered"
    began = time.monotonic()
    if os.fork() == 0:
        sys.exit(0)  # a fork that ends as a script does, through the exit hooks it inherited
    os.wait()
    print(worker, sink._child.pid, time.monotonic() - began, flush=True)
    time.sleep(60)
""")


def test_a_killed_script_s_forked_worker_does_not_hold_its_sink_and_its_own_classes_arrive(visdom_server, read_window,
                                                                                            tmp_path):
    (tmp_path / "cwd" / "monitor").mkdir(parents=True)  # where the job runs: not the monitor package
    (tmp_path / "cwd" / "monitor" / "__init__.py").write_text("raise ImportError('a folder called monitor')\n")
    (tmp_path / "train.py").write_text(USER_SCRIPT)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    loop = subprocess.Popen([sys.executable, str(tmp_path / "train.py"), str(visdom_server.port), str(tmp_path / "run")],
                            cwd=tmp_path / "cwd", env=environment, stdout=subprocess.PIPE, text=True)
    worker, child, fork_s = loop.stdout.readline().split()
    worker, child = int(worker), int(child)
    assert float(fork_s) < 5  # it closed none of the script's sinks (it waited 32 s on one)
    try:
        loop.kill()
        loop.wait()
        _until(lambda: _ended(child), seconds=10)  # the pipe ended for it, though the worker holds what the script held
        assert Path(f"/proc/{worker}").exists()
    finally:
        os.kill(worker, signal.SIGKILL)
    assert _points(tmp_path / "run") == [1, 2, 3, 4, 5]
    assert read_window(visdom_server, "user-script", "loss") == {"train": ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4.0, 5.0])}


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie: not reaped yet
    except OSError:
        return True


def test_a_scheduler_s_sigterm_to_every_process_of_the_job_leaves_the_sink_to_deliver(visdom_server, read_window,
                                                                                    tmp_path):
    loop = _start(tmp_path, visdom_server, "sigterm-all", steps=25)
    child = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_sink_of(p, loop.pid))
    for pid in (loop.pid, child):  # what scancel does: every process of the job step, whatever its session
        os.kill(pid, signal.SIGTERM)
    loop.wait(timeout=30)
    _until(lambda: _points(tmp_path / "run") == list(range(1, 26)))
    _until(lambda: read_window(visdom_server, "sigterm-all", "loss")["train"][0] == list(range(1, 26)))


def _is_sink_of(process: Path, parent: int) -> bool:
    try:
        return (b"monitor.sink_child" in (process / "cmdline").read_bytes()
                and int((process / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent)
    except (OSError, ValueError):
        return False


def test_a_flush_waiting_on_a_hung_server_does_not_stop_records_reaching_the_sink_s_process(tmp_path):
    import socket

    hung = socket.socket()  # accepts connections, never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    sink = SinkProcess("hung", port=hung.getsockname()[1], run_dir=tmp_path, timeout=5.0)
    try:
        log = Log(sink)
        log.text("notes", 0, "first")
        threading.Thread(target=sink.flush, args=(8.0,), daemon=True).start()
        time.sleep(0.3)
        for step in range(1, 80):  # 1.6 MB: more than a pipe holds
            log.text("notes", step, "y" * 20000)
            time.sleep(0.02)
        _until(lambda: sink.pending == 0, seconds=3)  # the forwarder is not stuck writing to a full pipe
    finally:
        sink._child.kill()
        sink.close(timeout=1)
        hung.close()


def test_a_monitor_let_go_of_without_close_ends_its_run_and_its_sink_s_process(visdom_server, read_window, tmp_path):
    import gc

    monitor = Monitor([Scalars()], env="let-go", port=visdom_server.port, run_dir=tmp_path)  # a sweep's trial
    child = monitor.sink._child
    for step in range(1, 4):
        monitor.step_end(loss=float(step))
    del monitor  # the next trial's Monitor takes the name
    gc.collect()
    assert child.wait(timeout=20) == 0  # not at the script's exit: a sweep of 64 does not keep 64 processes
    assert [e["status"] for e in RunLog.read(tmp_path / "runlog.jsonl") if e["k"] == "end"] == ["finished"]
    assert read_window(visdom_server, "let-go", "loss")["train"][0] == [1, 2, 3]


KILLED_WHILE_OPENING = textwrap.dedent("""
    import os, signal, sys, threading, time

    def kill_once_the_sink_s_process_runs():
        me = os.getpid()
        while not open(f"/proc/{me}/task/{me}/children").read().split():
            time.sleep(0.002)
        time.sleep(0.05)  # it was sent "open": killed before it answers "ready"
        os.kill(me, signal.SIGKILL)

    threading.Thread(target=kill_once_the_sink_s_process_runs, daemon=True).start()
    from monitor import SinkProcess
    SinkProcess("killed-opening", port=int(sys.argv[1]), run_dir=sys.argv[2])
    time.sleep(30)
""")


def test_a_training_process_killed_while_its_sink_opens_the_run_leaves_no_traceback(visdom_server, tmp_path):
    (tmp_path / "train.py").write_text(KILLED_WHILE_OPENING)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, str(tmp_path / "train.py"), str(visdom_server.port), str(tmp_path / "run")],
                          env=environment, capture_output=True, text=True, timeout=60)  # until the sink's process ends
    assert done.returncode == -signal.SIGKILL
    assert "Traceback" not in done.stderr, done.stderr  # its "ready" met a broken pipe
    assert [e["k"] for e in RunLog.read(tmp_path / "run" / "runlog.jsonl")][0] == "run"  # the run log is whole


# Logs 120,000 scalars as fast as it can and prints the full collections it caused.
MANY_SCALARS = textwrap.dedent("""
    import gc, sys
    from monitor import SinkProcess
    from monitor.log import Log

    sink = SinkProcess("many", port=int(sys.argv[1]), run_dir=sys.argv[2])
    log = Log(sink)
    gc.collect()
    full = gc.get_stats()[2]["collections"]
    for step in range(3000):
        for k in range(40):
            log.scalar(f"window {k % 4}", f"trace {k}", step, float(k))
    print(gc.get_stats()[2]["collections"] - full)
    sink.close()
""")


def test_records_waiting_for_the_forwarder_do_not_bring_on_full_garbage_collections(visdom_server, tmp_path):
    # Queued as NamedTuples, a tenth of a second of records reached the oldest generation, and
    # its collections (over everything the process holds: 100-170 ms in a loop with a dataset in
    # memory) came every few hundred steps of a loop of many add_scalar calls; here, 2 of them.
    script = tmp_path / "many.py"
    script.write_text(MANY_SCALARS)
    done = subprocess.run([sys.executable, str(script), str(visdom_server.port), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert len(_points(tmp_path / "run", "window 0")) == 30000  # 10 traces a step, each its own record


def test_a_finished_run_s_log_says_it_ended_once_and_again_only_after_more_was_logged(visdom_server, tmp_path):
    # train_end's record and close()'s were two identical lines at the end of every finished run.
    with Monitor([Scalars()], env="ended-once", port=visdom_server.port, run_dir=tmp_path) as monitor:
        monitor.step_end(loss=1.0)
        monitor.train_end()
        monitor.flush()
    assert [e["status"] for e in RunLog.read(tmp_path / "runlog.jsonl") if e["k"] == "end"] == ["finished"]
    with Monitor([Scalars()], env="ended-twice", port=visdom_server.port, run_dir=tmp_path / "again") as monitor:
        monitor.step_end(loss=1.0)
        monitor.train_end()
        monitor.step_end(loss=0.5)  # a notebook trains on: running again, then ended again
        monitor.train_end()
    assert [e["k"] for e in RunLog.read(tmp_path / "again" / "runlog.jsonl")][-4:] == ["points", "end", "points", "end"]
