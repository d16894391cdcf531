"""Distributed training: two processes started by torchrun on the CPU (gloo), against a real server.

tests/helpers/ddp_training.py is a small DDP run that records what each rank saw; the examples are run
as a user runs them. Each launch takes a few seconds (three Python processes start torch).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monitor import Scalars
from monitor.checkpoint import load_checkpoint
from monitor.checkpoint.rng import rng_of_rank
from monitor.runlog import RunLog
from monitor.sampler import EpochBatchSampler
from monitor.windows import float32_digits
from helpers.monitors import says

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "helpers" / "ddp_training.py"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
STEPS = 12  # 3 epochs of 32 samples in global batches of 8: 4 steps an epoch
LAYERS = ["0.Linear", "3.Linear", "total"]


def script_command(server, out: Path, env: str, *options: str, ranks: int = 2,
                   run_dir: Path | None = None) -> list[str]:
    """tests/helpers/ddp_training.py under torchrun (or one plain process), recording into ``out``."""
    launcher = TORCHRUN if ranks == 2 else [sys.executable]
    return [*launcher, str(SCRIPT), "--env", env, "--port", str(server.port),
            "--run-dir", str(run_dir or out / "runs"), "--out", str(out), *options]


def run(command: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 and ABORTED_AT_EXIT in done.stderr and _trained_and_saved(command):
        # A rank aborted by gloo's teardown at the interpreter's exit, after it had trained and
        # saved its weights: seen in 2 of 4 full-suite runs (the 2-rank run with checkpoints every
        # 3 steps), never alone, with the DDP model freed before destroy_process_group. The run is
        # judged by what it wrote; the abort is torch's, at the very end.
        return done
    assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done


ABORTED_AT_EXIT = "terminate called without an active exception"


def _trained_and_saved(command: list[str]) -> bool:
    """Whether every rank of a ddp_training.py run wrote its final weights (its last act)."""
    if "--out" not in command:
        return False
    out = Path(command[command.index("--out") + 1])
    return all((out / f"final-rank{rank}.pt").is_file() for rank in range(2))


def steps_of(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"steps-rank{rank}.jsonl").read_text().splitlines()]


def windows(server, env: str, connect_client) -> dict[str, dict[str, tuple[list, list]]]:
    """Every window of ``env``: {window: {trace: (xs, ys)}} (text and image panes: {})."""
    data = json.loads(connect_client(server).get_window_data(None, env))
    shown = {}
    for win, window in data.items():
        window = json.loads(window) if isinstance(window, str) else window
        traces = window["content"].get("data", []) if isinstance(window["content"], dict) else []
        shown[win] = {t.get("name"): (t["x"], t["y"]) for t in traces}
    return shown


# --- the sampler: each rank's share of the single-process batches --------------------------------
@pytest.mark.parametrize("size, drop_last", [(40, False), (37, False), (37, True)])
def test_the_ranks_batches_together_are_the_single_process_batches(size, drop_last) -> None:
    single = EpochBatchSampler(size, batch_size=8, seed=3, drop_last=drop_last)
    ranks = [EpochBatchSampler(size, batch_size=4, seed=3, drop_last=drop_last, rank=r, world_size=2)
             for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch, skip=1)
        shares = [list(r) for r in ranks]
        assert len(shares[0]) == len(shares[1]) == len(single)  # every rank runs the same number of steps
        for batch, (first, second) in zip(single, zip(*shares)):
            assert len(first) == len(second)
            assert (first + second)[:len(batch)] == batch  # the last one padded with the epoch's first


def test_each_rank_restores_its_own_random_state_and_a_job_of_another_size_is_warned(caplog) -> None:
    states = [{"torch": torch.tensor([rank])} for rank in range(2)]
    saved = {**states[0], "ranks": states}
    assert [rng_of_rank(saved, rank, 2) for rank in (0, 1)] == states
    with says(caplog, "random state of 1 process.*this job has 2"):
        assert rng_of_rank(states[0], 0, 2) is states[0]
    assert rng_of_rank(states[0], 1, 2) is states[0]  # the same draws on every rank, said once by rank 0
    with says(caplog, "random state of 2 process.*this job has 1"):
        assert rng_of_rank(saved, 0, 1) is states[0]


def test_scalars_checks_what_to_average() -> None:
    assert Scalars(average=["loss"]).average == {"loss"}
    with pytest.raises(TypeError, match=r"average must be True, False or metric names such as \("):
        Scalars(average="loss")
    with pytest.raises(ValueError, match=r"average_validation=True averages the names of average.*got average=False"):
        Scalars(average_validation=True)
    with pytest.raises(TypeError, match="average_validation"):
        Scalars(average=True, average_validation="yes")


def test_the_sampler_checks_its_rank() -> None:
    with pytest.raises(ValueError, match="rank must be an int between 0 and world_size - 1 = 1, got 2"):
        EpochBatchSampler(10, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be an int >= 1, got 0"):
        EpochBatchSampler(10, batch_size=2, rank=0, world_size=0)


# --- one run of two ranks, and one process on the same global batches ----------------------------
@pytest.fixture(scope="module")
def two_ranks_and_one(visdom_server, tmp_path_factory) -> dict[str, Path]:
    """A 2-rank run (4 samples a rank a step, loss and accuracy averaged) and a 1-process run (8 a step)."""
    root = tmp_path_factory.mktemp("ddp")
    run(script_command(visdom_server, root / "ddp", "ddp-averaged", "--average"), root)
    run(script_command(visdom_server, root / "single", "ddp-single", "--average", "--batch-size", "8", ranks=1),
        root)
    return {"ddp": root / "ddp", "single": root / "single"}


def test_two_ranks_show_one_set_of_curves(two_ranks_and_one, visdom_server, connect_client) -> None:
    shown = windows(visdom_server, "ddp-averaged", connect_client)
    assert set(shown) == {"loss", "accuracy", "rank", "learning rate", "grad norm"}
    steps = list(range(1, STEPS + 1))
    assert shown["loss"]["train"][0] == steps and shown["loss"]["validation"][0] == [4, 8, 12]
    assert list(shown["grad norm"]) == LAYERS and all(xs == steps for xs, _ in shown["grad norm"].values())
    assert shown["rank"] == {"train": (steps, [0.0] * STEPS)}  # rank 0 logs; "rank" is not averaged
    runs = sorted(p.relative_to(two_ranks_and_one["ddp"]) for p in two_ranks_and_one["ddp"].rglob("*.jsonl")
                  if p.name == RunLog.FILENAME)
    assert runs == [Path("runs") / RunLog.FILENAME]
    logged = [e for e in RunLog.read(two_ranks_and_one["ddp"] / runs[0]) if e["k"] == "points" and e["win"] == "loss"]
    assert len(logged) == STEPS + 3  # each step and validation once: rank 1 wrote nothing


WRITER_ON_EVERY_RANK = """
import sys, torch, torch.distributed as dist
from monitor import SummaryWriter
dist.init_process_group("gloo")
writer = SummaryWriter("runs/ddp", port=int(sys.argv[1]))  # made on every rank, as many DDP scripts do
for step in range(3):
    loss = torch.tensor([float(step + dist.get_rank())])
    writer.add_scalar("rank", dist.get_rank(), step)  # every rank logs this one
    dist.all_reduce(loss)
    if dist.get_rank() == 0:
        writer.add_scalar("Loss/train", loss.item(), step)
writer.close()
dist.destroy_process_group()
"""


def test_a_tensorboard_writer_made_on_every_rank_writes_rank_0_s_run(visdom_server, read_window, tmp_path) -> None:
    (tmp_path / "train.py").write_text(WRITER_ON_EVERY_RANK)
    run([*TORCHRUN, "train.py", str(visdom_server.port)], tmp_path)  # rank 1 stopped: its run folder was taken
    assert read_window(visdom_server, "ddp", "Loss")["train"] == ([0, 1, 2], [1.0, 3.0, 5.0])
    assert read_window(visdom_server, "ddp", "rank")["rank"] == ([0, 1, 2], [0.0, 0.0, 0.0])  # rank 1's dropped
    assert [p.parent for p in tmp_path.rglob(RunLog.FILENAME)] == [tmp_path / "runs" / "ddp"]


def test_an_averaged_metric_is_the_mean_of_the_ranks_values_from_one_all_reduce_a_step(
        two_ranks_and_one, visdom_server, read_window) -> None:
    ranks = [steps_of(two_ranks_and_one["ddp"], rank) for rank in (0, 1)]
    assert [s["step"] for s in ranks[0]] == [s["step"] for s in ranks[1]] == list(range(1, STEPS + 1))
    assert ranks[0] != ranks[1]  # the ranks saw different batches
    for name in ("loss", "accuracy"):
        xs, ys = read_window(visdom_server, "ddp-averaged", name)["train"]
        assert ys == float32_digits([(a[name] + b[name]) / 2 for a, b in zip(*ranks)]), name
    assert all(s["all_reduces"] == 1 for rank in ranks for s in rank)  # loss and accuracy together


NAMES_ON_EACH_RANK = """
import sys, torch.distributed as dist
from monitor import Monitor, Scalars
dist.init_process_group("gloo")
rank = dist.get_rank()
with Monitor([Scalars(average=True, smoothing=0)], env="ddp-names", port=int(sys.argv[1])) as monitor:
    # the same names in another order on rank 1 (a dict filled as results come), then names of its own
    monitor.step_end(metrics={"acc": 0.9, "top5": 0.1} if rank == 0 else {"top5": 0.3, "acc": 0.7})
    monitor.step_end(metrics={f"acc of rank {rank}": 1.0})
    monitor.step_end(metrics={"acc": 0.5, "top5": 0.5})
dist.destroy_process_group()
"""


def test_averaged_metrics_match_by_name_and_names_that_differ_across_ranks_are_said(
        visdom_server, read_window, tmp_path) -> None:
    (tmp_path / "train.py").write_text(NAMES_ON_EACH_RANK)
    done = run([*TORCHRUN, "train.py", str(visdom_server.port)], tmp_path)
    assert read_window(visdom_server, "ddp-names", "acc")["train"] == ([1, 3], [pytest.approx(0.8), 0.5])
    assert read_window(visdom_server, "ddp-names", "top5")["train"] == ([1, 3], [pytest.approx(0.2), 0.5])
    assert "names averaged over the ranks must be the same on every rank, got ['acc of rank 0']" in done.stderr
    # Each rank says what it sees, naming itself: the same line twice, each "(reported once)", read as a bug.
    said = sorted(line.split(":", 1)[0] for line in done.stderr.splitlines() if "must be the same on every" in line)
    assert said == ["monitor (rank 0)", "monitor (rank 1)"], done.stderr[-3000:]


def test_grad_norms_under_ddp_equal_those_of_one_process_on_the_same_global_batches(
        two_ranks_and_one, visdom_server, read_window) -> None:
    ddp, single = (read_window(visdom_server, env, "grad norm") for env in ("ddp-averaged", "ddp-single"))
    assert list(ddp) == list(single) == LAYERS  # no "module." from the DDP wrapper
    for trace in LAYERS:
        assert ddp[trace][0] == single[trace][0]
        assert ddp[trace][1] == pytest.approx(single[trace][1], rel=1e-5, abs=1e-7), trace
    ddp_loss, single_loss = (read_window(visdom_server, env, "loss")["train"][1] for env in ("ddp-averaged", "ddp-single"))
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5)  # the mean of two halves' means is the whole's
    assert all(s["all_reduces"] == 0 for s in steps_of(two_ranks_and_one["single"], 0))


# --- kill the job after a checkpoint, resume it ---------------------------------------------------
def kill_when_paused(command: list[str], cwd: Path, out: Path, timeout: float = 120) -> None:
    """Starts ``command`` (torchrun), waits until both ranks paused, then SIGKILLs every process of the job."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(cwd / "killed.log", "w") as log:
        job = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    paused = [out / f"paused-rank{rank}" for rank in (0, 1)]
    workers: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while not all(p.exists() and p.read_text() for p in paused):
            assert job.poll() is None, f"the job ended before its pause: {(cwd / 'killed.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no pause within {timeout} s"
            time.sleep(0.05)
        workers = [int(p.read_text()) for p in paused]
    finally:  # torchrun's agent's group and its workers', which run in sessions of their own
        for group in (job.pid, *workers):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.wait(timeout=30)
    assert job.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(map(_running, workers)):
        assert time.monotonic() < deadline, f"ranks still running after SIGKILL: {workers}"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (dead, waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_ddp_job_killed_after_a_checkpoint_resumes_both_ranks_from_it_with_the_same_final_weights(
        visdom_server, connect_client, tmp_path) -> None:
    # A checkpoint every 3 steps; paused (and killed) after step 7: the latest is step 6, half-way
    # through the second epoch. Dropout and input noise draw different numbers on each rank.
    options = ["--random-draws", "--every-steps", "3"]
    straight, killed, resumed = tmp_path / "straight", tmp_path / "killed", tmp_path / "resumed"
    checkpoints = ["--checkpoints", str(tmp_path / "ckpt")]
    run(script_command(visdom_server, straight, "ddp-straight", *options,
                       "--checkpoints", str(straight / "ckpt")), tmp_path)
    kill_when_paused(script_command(visdom_server, killed, "ddp-resumed", *options, *checkpoints, "--pause-at", "7",
                                    run_dir=tmp_path / "runs"), tmp_path, killed)
    shown = windows(visdom_server, "ddp-resumed", connect_client)
    assert max(shown["loss"]["train"][0]) == 7  # steps after the checkpoint, for the resume to take back

    saved = load_checkpoint(tmp_path / "ckpt" / "step-000000006.pt")  # weights_only: plain tensors
    ranks = saved["rng"]["ranks"]
    assert len(ranks) == 2 and torch.equal(ranks[0]["torch"], saved["rng"]["torch"])
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each rank's own state

    run(script_command(visdom_server, resumed, "ddp-resumed", *options, *checkpoints, run_dir=tmp_path / "runs"),
        tmp_path)
    starts = [json.loads((resumed / f"start-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert starts[0] == starts[1]
    assert (starts[0]["step"], starts[0]["epoch"], starts[0]["skip"]) == (6, 1, 2)
    assert [s["step"] for s in steps_of(resumed, 1)] == list(range(7, STEPS + 1))

    final = {(name, rank): torch.load(folder / f"final-rank{rank}.pt", weights_only=True)
             for name, folder in (("straight", straight), ("resumed", resumed)) for rank in (0, 1)}
    for rank in (0, 1):
        for part in ("model", "optimizer"):
            assert _equal(final["straight", rank][part], final["resumed", rank][part]), (part, rank)
    assert _equal(final["resumed", 0]["model"], final["resumed", 1]["model"])
    assert windows(visdom_server, "ddp-resumed", connect_client) == windows(visdom_server, "ddp-straight",
                                                                          connect_client)
    assert all(s["all_reduces"] == 0 for rank in (0, 1) for s in steps_of(straight, rank))  # no average asked


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


# --- the example, and checkpoints that go from one example to the other -------------------------
SEQUENTIAL_LAYERS = ["0.Conv2d", "3.Conv2d", "7.Linear", "9.Linear", "total"]
EXAMPLE_ARGS = ("--samples", "64", "--epochs", "2", "--checkpoint-dir", "checkpoints")  # 2 steps an epoch


def example_command(server, name: str, env: str, *args: str) -> list[str]:
    launcher = TORCHRUN if name == "train_ddp.py" else [sys.executable]
    return [*launcher, str(EXAMPLES / name), "--server", "http://127.0.0.1", "--port", str(server.port),
            "--env", env, *args]


@pytest.fixture(scope="module")
def both_examples(visdom_server, tmp_path_factory) -> dict[str, Path]:
    """train_ddp.py on two ranks and train_sequential.py, 4 steps each, checkpoints after each epoch."""
    root = tmp_path_factory.mktemp("examples")
    folders = {"ddp": root / "ddp", "single": root / "single"}
    for (name, folder), example in zip(folders.items(), ("train_ddp.py", "train_sequential.py")):
        run(example_command(visdom_server, example, f"example-{name}", *EXAMPLE_ARGS), folder)
    return folders


def test_the_ddp_example_shows_the_curves_of_the_sequential_example(both_examples, visdom_server,
                                                                     read_window) -> None:
    steps = [1, 2, 3, 4]
    ddp, single = ({window: read_window(visdom_server, f"example-{name}", window)
                    for window in ("loss", "accuracy", "learning rate", "grad norm")} for name in ("ddp", "single"))
    assert list(ddp["grad norm"]) == SEQUENTIAL_LAYERS
    for window, traces in single.items():
        assert list(ddp[window]) == list(traces), window
        for trace, (xs, ys) in traces.items():
            assert ddp[window][trace][0] == xs == (steps if trace != "validation" else [2, 4]), (window, trace)
            assert ddp[window][trace][1] == pytest.approx(ys, rel=1e-4, abs=1e-6), (window, trace)


def test_a_checkpoint_folder_of_another_run_stops_every_rank(both_examples, visdom_server,
                                                                             tmp_path) -> None:
    folder = both_examples["ddp"] / "checkpoints"  # rank 0 refuses it; rank 1 must not wait for rank 0
    command = script_command(visdom_server, tmp_path, "ddp-refused", "--checkpoints", str(folder), "--no-resume")
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert refused.returncode != 0
    message = f"CheckpointWriteError: directory must be empty or hold this run's checkpoints, got {folder}"
    assert refused.stderr.count(message) == 2, refused.stderr[-3000:]  # from each rank, neither stuck


def test_a_checkpoint_of_either_example_resumes_the_other(both_examples, visdom_server, read_window,
                                                          tmp_path) -> None:
    final = {}
    for name, folder in both_examples.items():
        final[name] = load_checkpoint(folder / "checkpoints" / "step-000000004.pt")["model"]
        (folder / "first-epoch").mkdir()  # the checkpoint after epoch 1, alone in a folder of its own
        (folder / "first-epoch" / "step-000000002.pt").write_bytes(
            (folder / "checkpoints" / "step-000000002.pt").read_bytes())
    args = ("--samples", "64", "--epochs", "2", "--checkpoint-dir", "first-epoch")  # a killed run: it continues
    onto_single = run(example_command(visdom_server, "train_sequential.py", "example-ddp", *args), both_examples["ddp"])
    onto_ddp = run(example_command(visdom_server, "train_ddp.py", "example-single", *args), both_examples["single"])

    for resumed in (onto_single, onto_ddp):
        assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout  # it started after epoch 1
    for name in ("ddp", "single"):  # each run's curves continue where the other example's left them
        assert read_window(visdom_server, f"example-{name}", "loss")["train"][0] == [1, 2, 3, 4]
        weights = load_checkpoint(both_examples[name] / "first-epoch" / "step-000000004.pt")["model"]
        assert list(weights) == list(final["single"])  # the plain model's names, no "module."
        for key, value in weights.items():  # and where training both epochs in one example ends
            assert torch.allclose(value, final["single"][key], rtol=1e-4, atol=1e-5), (name, key)
            assert torch.allclose(final["ddp"][key], final["single"][key], rtol=1e-4, atol=1e-5), key


# --- validation: on rank 0 alone, or on every rank ---------------------------------------------
VALIDATION_SCRIPT = Path(__file__).parent / "helpers" / "ddp_validation.py"


@pytest.mark.parametrize("where", ["on-rank-0-alone", "on-every-rank-averaged", "at-epoch-start-on-rank-0"])
def test_a_validation_runs_where_the_loop_says_and_a_job_killed_after_it_resumes_as_if_never_stopped(
        where, visdom_server, read_window, connect_client, tmp_path) -> None:
    # `if rank == 0: validate()` is how many DDP loops validate: a collective there (averaging its
    # metrics, writing the step's checkpoint again) would pair with DDP's next all_reduce on rank 1.
    # Killed after step 6's validation (after its checkpoint), the job resumes from that checkpoint
    # with the validation in it; a validation loader that rank 0 alone iterates through
    # monitor.batches leaves each rank continuing its own epoch's loader.
    option = {"on-rank-0-alone": [], "on-every-rank-averaged": ["--every-rank"],
              "at-epoch-start-on-rank-0": ["--at-epoch-start"]}[where]

    def command(env: str, out: Path, *more: str) -> list[str]:
        return [*TORCHRUN, str(VALIDATION_SCRIPT), "--env", env, "--port", str(visdom_server.port), "--run-dir",
                str(tmp_path / env), "--out", str(out), *option, *more]

    straight, killed, resumed = tmp_path / "straight", tmp_path / "killed", tmp_path / "resumed"
    run(command(f"ddp-validation-{where}", straight), tmp_path, timeout=120)
    ranks = [json.loads((straight / f"validation-rank{rank}.json").read_text()) for rank in (0, 1)]
    xs, ys = read_window(visdom_server, f"ddp-validation-{where}", "loss")["validation"]
    if where == "on-every-rank-averaged":
        assert xs == [2, 4, 6, 8] and ranks[0] != ranks[1]
        assert ys == pytest.approx([(a + b) / 2 for a, b in zip(*ranks)])
    else:
        assert xs == ([4] if where == "at-epoch-start-on-rank-0" else [2, 4, 6, 8])
        assert ranks[1] == [] and ys == pytest.approx(ranks[0])

    env = f"ddp-validation-{where}-resumed"
    (killed / "ckpt").mkdir(parents=True)
    kill_when_paused(command(env, killed, "--pause-at", "6"), tmp_path / "first", killed)
    (resumed / "ckpt").parent.mkdir()
    (killed / "ckpt").rename(resumed / "ckpt")
    run(command(env, resumed), tmp_path / "second", timeout=120)
    for rank in (0, 1):
        assert _equal(torch.load(straight / f"final-rank{rank}.pt", weights_only=True),
                      torch.load(resumed / f"final-rank{rank}.pt", weights_only=True)), rank
    if where != "at-epoch-start-on-rank-0":  # (that loop validates again when it resumes in an epoch)
        assert windows(visdom_server, env, connect_client) == windows(
            visdom_server, f"ddp-validation-{where}", connect_client)


def test_a_monitor_made_before_init_process_group_under_a_launcher_says_to_move_it(monkeypatch, tmp_path,
                                                                                    caplog) -> None:
    from monitor import Monitor, Scalars, SummaryWriter
    from monitor.log import NullSink
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # torchrun's, before the script's init_process_group
    with caplog.at_level("WARNING", logger="monitor"):
        Monitor([Scalars()], sink=NullSink()).close()
    assert "Monitor made while torch.distributed is not initialized, in a job of 2 processes (WORLD_SIZE=2, " \
           "RANK=1 from its launcher)" in caplog.text and "make it after init_process_group" in caplog.text
    writer = SummaryWriter(tmp_path / "w")  # TensorBoard's takes it anywhere: rank 1's, as after the init
    writer.add_scalar("loss", 1.0, 0)
    writer.close()
    assert not (tmp_path / "w").exists()


def test_a_job_of_another_size_resumed_mid_epoch_is_told_its_epoch_is_dealt_anew(tmp_path, caplog) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from monitor import Checkpoint, Monitor
    from monitor.checkpoint import load_checkpoint, save_checkpoint
    from monitor.checkpoint.resume import find_start
    from monitor.log import NullSink

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.randn(16, 2), torch.randn(16, 1)), batch_size=4)
    with Monitor([Checkpoint(tmp_path, every_steps=2, at_end=False)], sink=NullSink()) as monitor:
        monitor.train_start(model, optimizer)
        for _ in monitor.epochs(1):
            for step, (x, y) in enumerate(monitor.batches(loader)):
                monitor.step_end(loss=1.0)
                if step == 1:
                    break  # killed after step 2's checkpoint, halfway through the epoch
    saved = tmp_path / "step-000000002.pt"
    checkpoint = load_checkpoint(saved)
    position = {key: checkpoint["loop"][key] for key in ("batch", "batches_drawn") if key in checkpoint["loop"]}
    checkpoint["loop"]["ranks"] = [position, position]  # as a job of two processes writes it
    save_checkpoint(saved, checkpoint)
    with says(caplog, "written by a job of 2 process.*middle of epoch 0, and this job has 1: "
                      "a DistributedSampler deals"):
        find_start(tmp_path)


@pytest.mark.parametrize("at", ["a checkpoint", "averaging metrics (Scalars(average=...))",
                                "averaging a validation's metrics (Scalars(average_validation=True): a validation run "
                                "on rank 0 alone wants average_validation=False)"])
def test_a_rank_kept_waiting_at_a_checkpoint_s_or_an_average_s_collective_says_so(tmp_path, at) -> None:
    # Averaging (README's advice under DDP) waited in silence: the timer was the checkpoint's alone; then
    # it was the first averaging's alone, and a validation on rank 0 alone hung without a word (a DDP trial).
    late = Path(__file__).parent / "helpers" / "ddp_late_rank.py"
    mode = ["validation"] if "validation" in at else ["average"] if at.startswith("averaging") else []
    done = run([*TORCHRUN, str(late), str(tmp_path / "ckpt"), *mode], tmp_path)
    assert "rank 0 went on" in done.stdout and "rank 1 went on" in done.stdout
    said = [line for line in done.stderr.splitlines() if "has waited" in line]
    assert len(said) == 1 and said[0].startswith(f"monitor: rank 0 has waited 1 s for the other ranks at {at} "
                                                 "(it goes on waiting)"), done.stderr[-3000:]


PEER_CRASHES = """
import sys, torch.distributed as dist
from monitor import Monitor, Scalars, Summary
dist.init_process_group("gloo")
with Monitor([Summary(), Scalars(average=True)], env="ddp-crash", port=int(sys.argv[1])) as monitor:
    monitor.train_start()
    for step in range(1, 6):
        if step == 3 and dist.get_rank() == 1:
            raise RuntimeError("rank 1 ran out of data")
        monitor.step_end(loss=1.0)
"""


def test_a_rank_whose_peer_crashed_stops_saying_another_rank_stopped_not_that_training_goes_on(
        visdom_server, read_window_raw, tmp_path) -> None:
    # Rank 0 said Scalars failed and "Training goes on", and its run was recorded with gloo's error alone.
    from monitor.runs import listed

    (tmp_path / "train.py").write_text(PEER_CRASHES)
    done = subprocess.run([*TORCHRUN, "train.py", str(visdom_server.port)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "Training goes on" not in done.stderr, done.stderr[-3000:]
    (run,) = listed(tmp_path / "runs")
    assert run.status == "crashed" and run.error.startswith(
        "RuntimeError: Scalars.on_step_end could not reach the other ranks: another rank stopped"), run.error
    summary = read_window_raw(visdom_server, "ddp-crash", "summary")["content"]
    assert "<td><b>distributed</b></td><td>2 processes (gloo)</td>" in summary  # the job's size, in its pane
