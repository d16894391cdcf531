"""Resume in two lines: the same command, run again after a kill, continues the run exactly.

tests/helpers/short_form.py is a user's loop with ``Checkpoint(..., resume=True)``,
``monitor.epochs`` and ``monitor.batches``; each test runs it as a process against a real Visdom
server and compares it with an uninterrupted run: weights bit-identical, every window equal.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from monitor import Monitor, Scalars
from monitor.callbacks.checkpoint import REQUEUE_EXIT_STATUS
from monitor.runs import described, exported

SCRIPT = Path(__file__).parent / "helpers" / "short_form.py"
ROLLOUTS = Path(__file__).parent / "helpers" / "rollouts.py"  # a loop with no loader (RL's)
STEPS = 24  # 4 epochs of 6 batches, a checkpoint every 3 steps

pytestmark = pytest.mark.slow


class Job:
    """One run folder and env, and the one command that (re)runs its job."""

    def __init__(self, server, root: Path, name: str, loader: str = "shuffle", script: Path = SCRIPT) -> None:
        self.env, self.folder = f"short-{name}-{loader}", root / name
        self.command = [sys.executable, str(script), "--env", self.env, "--port", str(server.port),
                        "--run-dir", str(self.folder / "runs"), "--checkpoints", str(self.folder / "ckpt"),
                        "--out", str(self.folder / "final.pt"), *(("--loader", loader) if script == SCRIPT else ())]

    def run(self, *extra: str) -> list[int]:
        done = subprocess.run([*self.command, *extra], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        self.stderr = done.stderr
        return _steps(done.stdout)

    def start(self, *extra: str, session: bool = False) -> subprocess.Popen:
        """The job in the background; ``session``: in a process group of its own, as a scheduler runs it."""
        return subprocess.Popen([*self.command, "--sleep", "0.05", *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=session)

    def weights(self) -> dict:
        return torch.load(self.folder / "final.pt", weights_only=True)


def _steps(stdout: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("step ")]


def _wait_for_step(process: subprocess.Popen, step: int) -> list[int]:
    seen = []
    for line in process.stdout:
        if line.startswith("step "):
            seen.append(int(line.split()[1]))
            if seen[-1] >= step:
                return seen
    raise AssertionError(f"the job ended before step {step}: {process.stderr.read()[-3000:]}")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _same(a[k], b[k]) if isinstance(a[k], dict) else
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


@pytest.fixture(scope="module")
def straight(visdom_server, read_env, tmp_path_factory):
    """An uninterrupted run of each loader: its weights and windows."""
    runs = {}
    for loader in ("shuffle", "sampler", "generator"):
        job = Job(visdom_server, tmp_path_factory.mktemp("straight"), "straight", loader)
        assert job.run() == list(range(1, STEPS + 1))
        runs[loader] = (job.weights(), read_env(visdom_server, job.env))
    return runs


@pytest.mark.parametrize("loader", ["shuffle", "sampler", "generator"])
def test_killed_at_five_random_moments_and_rerun_with_the_same_command_ends_as_if_never_killed(
        visdom_server, read_env, tmp_path, straight, loader):
    seed = random.SystemRandom().randrange(10**6)
    chooser = random.Random(seed)
    job = Job(visdom_server, tmp_path, "killed", loader)
    for target in sorted(chooser.sample(range(2, STEPS), 5)):
        process = job.start()
        _wait_for_step(process, target)
        time.sleep(chooser.uniform(0, 0.05))  # anywhere in the step: forward, backward, a save
        process.kill()
        process.communicate()
    job.run()
    weights, windows = straight[loader]
    about = f"{loader}, kills from random seed {seed}"
    assert _same(job.weights(), weights), about
    shown = read_env(visdom_server, job.env)
    assert shown == windows, about
    for trace in shown["loss"].values():  # each step once, in order
        assert trace[0] == sorted(set(trace[0])), about


def test_what_a_checkpoint_s_step_logs_after_its_hooks_stays_through_two_kills_at_that_step(
        visdom_server, read_env, tmp_path):
    # Step 6 saves in step_end; the loop then logs its own point of step 6 and is killed before
    # its next batch: the re-run resumes from step 6's checkpoint, keeps that point and logs no
    # step twice; killed again at step 7, the next re-run from the same checkpoint drops step 7's.
    straight = Job(visdom_server, tmp_path, "after-hooks-straight")
    assert straight.run("--log-after-hooks") == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "after-hooks")
    for target in (6, 7):
        process = job.start("--log-after-hooks", "--sleep", "0.5")  # killed in that step, before the next
        _wait_for_step(process, target)  # printed after the step's own point was logged
        job_log = job.folder / "runs" / "runlog.jsonl"
        deadline = time.monotonic() + 10
        while f'"win":"after step_end","x":{target},' not in job_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # in the run log (the sink writes it within 0.1 s)
        process.kill()
        process.communicate()
    assert job.run("--log-after-hooks")[0] == 7
    assert _same(job.weights(), straight.weights())
    shown = read_env(visdom_server, job.env)
    assert shown["after step_end"]["step"][0] == list(range(1, STEPS + 1))
    assert shown == read_env(visdom_server, straight.env)


def test_what_a_checkpoint_s_step_logs_after_its_validation_stays_through_a_kill(visdom_server, read_env, tmp_path):
    # Step 6 saves at step_end and again after its validation (inside the batches loop); the
    # loop then logs its own point (a text sample's place) and is killed before its next batch.
    straight = Job(visdom_server, tmp_path, "after-validation-straight")
    assert straight.run("--log-after-hooks", "--validate-every", "6") == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "after-validation")
    process = job.start("--log-after-hooks", "--validate-every", "6", "--sleep", "0.5")
    _wait_for_step(process, 6)
    _wait_for_point(job, "after step_end", 6)
    process.kill()
    process.communicate()
    assert job.run("--log-after-hooks", "--validate-every", "6")[0] == 7
    shown = read_env(visdom_server, job.env)
    assert shown["after step_end"]["step"][0] == list(range(1, STEPS + 1))
    assert shown == read_env(visdom_server, straight.env)


def _wait_for_point(job: Job, window: str, x: int) -> None:
    """Until the run log holds ``window``'s point at ``x`` (the sink writes it within 0.1 s)."""
    log, deadline = job.folder / "runs" / "runlog.jsonl", time.monotonic() + 10
    while f'"win":"{window}","x":{x},' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_loop_without_a_loader_keeps_what_a_checkpoint_s_step_logged_after_step_end_through_kills(
        visdom_server, read_env, tmp_path):
    # Update 6 saves in step_end, then evaluates and logs its episode return; killed after
    # that, the re-run resumes from update 6's checkpoint and keeps both; killed again in
    # update 7, the next re-run from the same checkpoint drops update 7's points.
    straight = Job(visdom_server, tmp_path, "rollouts-straight", script=ROLLOUTS)
    assert straight.run() == list(range(1, 13))
    job = Job(visdom_server, tmp_path, "rollouts", script=ROLLOUTS)
    for target in (6, 7):
        process = job.start("--sleep", "0.5")  # killed in that update, before the next
        _wait_for_step(process, target)
        _wait_for_point(job, "episode return", target)
        process.kill()
        process.communicate()
    assert job.run()[0] == 7
    assert _same(job.weights(), straight.weights())
    shown = read_env(visdom_server, job.env)
    assert shown["loss"]["validation"][0] == [3, 6, 9, 12]
    assert shown["episode return"]["train"][0] == list(range(1, 13))
    assert shown == read_env(visdom_server, straight.env)


def test_sigterm_in_a_loop_without_a_loader_exits_once_the_update_s_own_logging_is_done(
        visdom_server, read_env, tmp_path):
    # The exit for requeue waits for the loop's next update: what the signalled update logs
    # after step_end (its evaluation, its episode return) is in the run, and the re-run goes on.
    straight = Job(visdom_server, tmp_path, "rollouts-straight", script=ROLLOUTS)
    assert straight.run() == list(range(1, 13))
    job = Job(visdom_server, tmp_path, "rollouts-term", script=ROLLOUTS)
    process = job.start("--sleep", "0.3")
    _wait_for_step(process, 4)
    process.send_signal(signal.SIGTERM)  # in update 5's sleep: saved at its end
    out, err = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, err[-3000:]
    last = _steps(out)[-1]
    assert last in (4, 5), out
    assert job.run()[0] == last + 1
    assert _same(job.weights(), straight.weights())
    shown = read_env(visdom_server, job.env)
    assert shown["episode return"]["train"][0] == list(range(1, 13))
    assert shown == read_env(visdom_server, straight.env)


def test_a_loop_of_monitor_steps_killed_in_a_rollout_logs_that_rollout_once_when_run_again(
        visdom_server, read_env, tmp_path):
    # Update 7 logs its rollout's episodes before its backward; killed there (update 6 saved
    # last, its evaluation and episode return logged after its step_end), the re-run does update
    # 7 again: every point is in the run once, as in a run never killed, and nothing is said of
    # a loop that trains on what was done again.
    straight = Job(visdom_server, tmp_path, "steps-straight", script=ROLLOUTS)
    straight.command.append("--steps-loop")
    assert straight.run() == list(range(1, 13))
    job = Job(visdom_server, tmp_path, "steps", script=ROLLOUTS)
    job.command.append("--steps-loop")
    process = job.start("--sleep", "0.5")
    for line in process.stdout:
        if line.startswith("rollout 7"):
            break
    _wait_for_point(job, "episode length", 64 * 6 + 64)
    process.kill()
    process.communicate()
    again = subprocess.run(job.command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _steps(again.stdout)[0] == 7
    assert "went back" not in again.stderr and "trains on what was done again" not in again.stderr, again.stderr
    assert _same(job.weights(), straight.weights())
    logged = exported(job.folder / "runs")
    assert logged["episode length"]["train"] == [(32 * n, 32) for n in range(1, 25)]
    assert logged == exported(straight.folder / "runs")
    assert read_env(visdom_server, job.env) == read_env(visdom_server, straight.env)


def test_a_step_based_loop_of_passes_without_epochs_killed_at_random_moments_ends_as_if_never_killed(
        visdom_server, read_env, tmp_path):
    # while step < steps: for x, y in monitor.batches(loader): ... (epoch 0 throughout, a call a pass)
    reference = Job(visdom_server, tmp_path, "passes")
    assert reference.run("--passes") == list(range(1, STEPS + 1))
    seed = random.SystemRandom().randrange(10**6)
    chooser = random.Random(seed)
    job = Job(visdom_server, tmp_path, "passes-killed")
    for target in sorted(chooser.sample(range(8, STEPS), 3)):  # in the second pass or later
        process = job.start("--passes")
        _wait_for_step(process, target)
        time.sleep(chooser.uniform(0, 0.05))
        process.kill()
        process.communicate()
    job.run("--passes")
    about = f"kills from random seed {seed}"
    assert _same(job.weights(), reference.weights()), about
    assert read_env(visdom_server, job.env) == read_env(visdom_server, reference.env), about


def test_a_loop_that_validates_through_monitor_batches_first_each_epoch_resumes_exactly(
        visdom_server, tmp_path):
    reference = Job(visdom_server, tmp_path, "validated")
    assert reference.run("--validate-first") == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "validated-killed")
    process = job.start("--validate-first")
    _wait_for_step(process, 10)  # epoch 2, after its validation: its training loader is its second
    process.kill()
    process.communicate()
    assert job.run("--validate-first")[-1] == STEPS  # resumed from step 9 or 10: not the whole epoch again
    assert _same(job.weights(), reference.weights())


def test_a_second_job_on_a_live_job_s_checkpoint_folder_is_refused_before_it_takes_anything(
        visdom_server, tmp_path):
    from monitor import Checkpoint
    from monitor.checkpoint import CheckpointWriteError

    job = Job(visdom_server, tmp_path, "shared")
    process = job.start()
    try:
        _wait_for_step(process, 4)  # it holds its folder, a checkpoint is in it
        before = sorted((job.folder / "ckpt").glob("step-*.pt"))
        with pytest.raises(CheckpointWriteError, match=rf"directory must be used by one live run at a time, got "
                                                       rf".*ckpt in use by pid {process.pid} .*: this job's earlier "
                                                       rf"run, still alive \(let it end, or kill it\), or another "
                                                       rf"job's"):
            Monitor([Scalars(), Checkpoint(job.folder / "ckpt", resume=True)], env="another-sweep-point",
                    port=visdom_server.port, run_dir=tmp_path / "other")
        assert before and all(p.exists() for p in before)
    finally:
        process.kill()
        process.communicate()


def test_sigterm_in_mid_epoch_saves_that_step_exits_for_requeue_and_the_rerun_continues(
        visdom_server, read_env, tmp_path, straight):
    job = Job(visdom_server, tmp_path, "sigterm")
    process = job.start()
    _wait_for_step(process, 7)  # epoch 2 of 4, its first step; checkpoints are every 3 steps
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, stderr[-3000:]
    assert _steps(stdout) in ([], [8])  # the step in progress ends; no other starts
    saved = max(int(p.stem.split("-")[1]) for p in (job.folder / "ckpt").glob("step-*.pt"))
    assert saved in (7, 8) and "SIGTERM: checkpoint of step" in stderr
    assert job.run()[0] == saved + 1
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]


def test_sigterm_in_the_first_step_that_validates_saves_its_validation_too_and_the_rerun_continues(
        visdom_server, read_env, tmp_path):
    # A loop that validates inside its batches loop every 6 steps, a checkpoint every 3: the
    # signal comes during step 6, the run's first validation, which the rerun must not skip.
    straight = Job(visdom_server, tmp_path, "validating-straight")
    assert straight.run("--validate-every", "6") == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "validating-sigterm")
    process = job.start("--validate-every", "6")
    _wait_for_step(process, 5)
    process.send_signal(signal.SIGTERM)  # in step 5's sleep or step 6: its step_end takes it
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS and "SIGTERM: checkpoint of step 6" in stderr, stderr[-3000:]
    assert _steps(stdout) == []  # it exits at step 6's validation_end, once the validation is in its checkpoint
    assert job.run("--validate-every", "6")[0] == 7
    assert _same(job.weights(), straight.weights())
    assert read_env(visdom_server, job.env) == read_env(visdom_server, straight.env)


def test_sigterm_in_the_validation_after_an_epoch_s_batches_saves_the_epoch_and_trains_no_further(
        visdom_server, read_env, tmp_path, straight):
    job = Job(visdom_server, tmp_path, "sigterm-epoch-validation")
    process = job.start("--pause-validating", "6")  # epoch 1's validation, after its 6 steps
    for line in process.stdout:
        if line.startswith("validating 6"):
            break
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS and "SIGTERM: checkpoint of step 6" in stderr, stderr[-3000:]
    assert _steps(stdout) == []  # no step of the next epoch in the grace period
    assert job.run()[0] == 7
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]


def test_a_job_killed_in_its_first_validation_at_a_checkpoint_s_step_validates_again_when_rerun(
        visdom_server, read_env, tmp_path):
    # Validations every 4 steps inside the batches loop, a checkpoint every 3: the first at a
    # checkpoint's step is step 12's, the run's third; SIGKILL during it, then the same command.
    straight = Job(visdom_server, tmp_path, "killed-validating-straight")
    assert straight.run("--validate-every", "4") == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "killed-validating")
    process = job.start("--validate-every", "4", "--hang-validating", "12")
    for line in process.stdout:
        if line.startswith("validating 12"):
            break
    process.kill()
    process.wait()
    assert job.run("--validate-every", "4")[0] == 10  # from step 9's checkpoint: step 12's was not the latest yet
    assert _same(job.weights(), straight.weights())  # the validation's shuffled loader drew as in the straight run
    assert read_env(visdom_server, job.env) == read_env(visdom_server, straight.env)


def test_a_second_sigterm_while_the_job_exits_for_requeue_leaves_the_requeue_status(visdom_server, tmp_path,
                                                                                    straight):
    # A scheduler may signal twice (a time-limit warning, then its stop; srun forwarding one to the
    # step): a requeue script that tests for status 75 must still see it.
    job = Job(visdom_server, tmp_path, "twice")
    process = job.start()
    _wait_for_step(process, 7)
    process.send_signal(signal.SIGTERM)
    for line in process.stderr:
        if "SIGTERM: checkpoint of step" in line:
            break
    process.send_signal(signal.SIGTERM)  # while it flushes, closes and exits
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, stderr[-3000:]
    job.run()
    assert _same(job.weights(), straight["shuffle"][0])


def test_sigterm_to_the_job_s_process_group_with_loader_workers_saves_and_requeues_all_the_same(
        visdom_server, read_env, tmp_path, straight):
    # A scheduler (SLURM's scancel or pre-emption, Kubernetes) signals every process of the job:
    # the DataLoader's worker processes too, which must not die under the loop before it saves.
    job = Job(visdom_server, tmp_path, "group")
    process = job.start("--workers", "2", session=True)
    _wait_for_step(process, 7)
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, stderr[-3000:]
    saved = max(int(p.stem.split("-")[1]) for p in (job.folder / "ckpt").glob("step-*.pt"))
    assert saved in (7, 8) and "SIGTERM: checkpoint of step" in stderr
    assert job.run("--workers", "2")[0] == saved + 1
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]


def test_sigterm_to_the_job_s_process_group_while_spawned_loader_workers_start_saves_and_requeues(
        visdom_server, tmp_path, straight):
    # A spawned worker imports torch for a second or so before its worker_init_fn can ignore the
    # signal; without persistent workers new ones start every epoch: the job is signalled then.
    job = Job(visdom_server, tmp_path, "spawning")
    process = job.start("--workers", "2", "--start", "spawn", session=True)
    _wait_for_step(process, 1)  # the first epoch's workers have started: wait for the second's
    first = set(_spawned_workers(process.pid))
    deadline = time.monotonic() + 60
    while not set(_spawned_workers(process.pid)) - first and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, stderr[-3000:]
    assert "SIGTERM: checkpoint of step" in stderr and "killed the workers" not in stderr, stderr[-3000:]
    saved = max(int(p.stem.split("-")[1]) for p in (job.folder / "ckpt").glob("step-*.pt"))
    assert job.run("--workers", "2", "--start", "spawn")[0] == saved + 1
    assert _same(job.weights(), straight["shuffle"][0])


def _spawned_workers(pid: int) -> list[int]:
    """The children of process ``pid`` that multiprocessing spawned (not its resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread, or a child, may end meanwhile
            children = (task / "children").read_text().split()
            found += [int(child) for child in children if b"spawn_main" in _cmdline(child)]
        except OSError:
            pass
    return found


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


def test_a_run_with_persistent_loader_workers_killed_and_run_again_ends_as_if_never_killed(visdom_server, read_env,
                                                                                          tmp_path):
    # persistent_workers=True: the workers' seed is drawn once, before the first epoch's order, not each
    # epoch; and at the exit multiprocessing ends them with a SIGTERM they must not ignore.
    options = ("--workers", "2", "--persistent")
    straight = Job(visdom_server, tmp_path, "persistent-straight")
    assert straight.run(*options) == list(range(1, STEPS + 1))  # and it exited, within the run's timeout
    job = Job(visdom_server, tmp_path, "persistent")
    process = job.start(*options)
    _wait_for_step(process, 15)  # the third epoch, whose workers the first started
    process.kill()
    process.wait()
    assert job.run(*options)[0] in (13, 14, 15, 16)
    assert _same(job.weights(), straight.weights())
    assert read_env(visdom_server, job.env) == read_env(visdom_server, straight.env)
    # Its dataset draws nothing at random; one that does (augmentation) would differ, and is told so.
    said = "the resumed run's loader has persistent_workers=True: its batches come in the interrupted run's order"
    assert said in job.stderr and said not in straight.stderr


def test_a_run_with_persistent_loader_workers_resumed_at_an_epoch_s_start_ends_as_if_never_stopped(
        visdom_server, tmp_path):
    # The straight run's workers, started in its first epoch, drew their seed from torch's
    # generator then; a run resumed at a later epoch's start must not draw it again before the order.
    options = ("--workers", "2", "--persistent")
    straight = Job(visdom_server, tmp_path, "persistent-whole")
    assert straight.run(*options) == list(range(1, STEPS + 1))
    job = Job(visdom_server, tmp_path, "persistent-extended")
    assert job.run(*options, "--epochs", "2") == list(range(1, 13))
    assert job.run(*options, "--epochs", "4", "--extend") == list(range(13, STEPS + 1))
    assert _same(job.weights(), straight.weights())
    assert "the resumed run's loader has persistent_workers=True" in job.stderr


def test_a_run_resumed_with_another_batch_size_goes_on_after_the_samples_done(visdom_server, tmp_path):
    # Out of memory at 16 a batch: the user halves it and runs again; the epoch's order is the same.
    job = Job(visdom_server, tmp_path, "halved")
    process = job.start()
    _wait_for_step(process, 7)  # the second epoch's first step (6 batches of 16 an epoch)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    saved = max(int(p.stem.split("-")[1]) for p in (job.folder / "ckpt").glob("step-*.pt"))
    done = (saved - 6) * 16  # of the second epoch's samples
    rerun = subprocess.run([*job.command, "--batch", "8"], capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"the resumed epoch's loader has batches of 8, the interrupted one's had 16: it goes on after the " \
           f"{done} samples done ({done // 8} batches now)" in rerun.stderr
    assert len(_steps(rerun.stdout)) == (96 - done) // 8 + 2 * 12  # the epoch's rest, then two of 12 batches


def test_a_finished_run_trained_further_with_extend_ends_as_a_run_that_was_never_stopped(
        visdom_server, read_env, tmp_path, straight):
    job = Job(visdom_server, tmp_path, "extended")
    assert job.run("--epochs", "2") == list(range(1, 13))  # finished after 2 epochs
    assert job.run("--epochs", "4", "--extend") == list(range(13, STEPS + 1))  # 2 more, not 4 from scratch
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]
    assert not (job.folder / "ckpt" / "earlier").exists()


def test_a_finished_run_rerun_starts_fresh_and_keeps_the_earlier_run(visdom_server, read_env, tmp_path,
                                                                      straight):
    job = Job(visdom_server, tmp_path, "finished")
    first = job.run()
    again = job.run()
    assert first == again == list(range(1, STEPS + 1))
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]  # no zigzag: one run
    (earlier,) = (job.folder / "ckpt" / "earlier").iterdir()
    assert sorted(p.name for p in earlier.iterdir()) == ["latest.json", "step-000000021.pt", "step-000000024.pt"]
    assert [p.name for p in (job.folder / "runs" / "earlier").iterdir()] == [f"{earlier.name}.jsonl"]


def test_a_finished_run_requeued_by_its_scheduler_continues_with_nothing_left_to_train(
        visdom_server, read_env, tmp_path, straight, monkeypatch):
    # SLURM requeued a job stopped after training, in the script's own last work (saving, testing).
    job = Job(visdom_server, tmp_path, "requeued-finished")
    assert job.run() == list(range(1, STEPS + 1))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    done = subprocess.run(job.command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and _steps(done.stdout) == [], done.stderr[-3000:]
    assert "had finished and this job was requeued (SLURM_RESTART_COUNT=1): it continues that run" in done.stderr
    assert not (job.folder / "ckpt" / "earlier").exists()
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]


def test_fresh_starts_a_new_run_even_after_a_kill(visdom_server, read_env, tmp_path, straight):
    job = Job(visdom_server, tmp_path, "fresh")
    process = job.start()
    _wait_for_step(process, 10)
    process.kill()
    process.communicate()
    assert job.run("--fresh") == list(range(1, STEPS + 1))
    assert _same(job.weights(), straight["shuffle"][0])
    assert read_env(visdom_server, job.env) == straight["shuffle"][1]
    assert len(list((job.folder / "ckpt" / "earlier").iterdir())) == 1


def test_a_resume_without_an_env_continues_in_the_checkpoints_env(visdom_server, read_env, tmp_path, monkeypatch):
    from monitor import Checkpoint, Monitor, Scalars

    monkeypatch.chdir(tmp_path)  # the run log goes to runs/<env>/, as by default

    def run(stop_at: int | None) -> Monitor:
        monitor = Monitor([Scalars(), Checkpoint("ckpt", every_steps=2, resume=True)],
                          port=visdom_server.port, flush_every=0.05)
        model = torch.nn.Linear(2, 1)
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        for _ in monitor.epochs(2):
            for x in monitor.batches([torch.ones(1, 2)] * 3):
                monitor.step_end(loss=model(x).sum())
                if monitor.state.step == stop_at:
                    monitor.flush()
                    return monitor  # killed: no train_end
        monitor.train_end()
        monitor.close()
        return monitor

    first = run(stop_at=5)
    second = run(stop_at=None)  # no env given: the checkpoint's, not a new random one
    assert second.sink.env == first.sink.env
    assert read_env(visdom_server, first.sink.env)["loss"]["train"][0] == [1, 2, 3, 4, 5, 6]


def test_a_resume_whose_run_log_is_gone_starts_the_curves_over_and_trains_on(visdom_server, read_env, tmp_path,
                                                                             caplog):
    job = Job(visdom_server, tmp_path, "lost-log")
    process = job.start()
    _wait_for_step(process, 10)
    process.kill()
    process.communicate()
    (job.folder / "runs" / "runlog.jsonl").unlink()  # runs/ deleted, or another working directory
    done = subprocess.run(job.command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = _steps(done.stdout)
    assert "runlog.jsonl is not there (moved or deleted), the checkpoint continues it at byte" in done.stderr
    assert "start over from the checkpoint's step, their points before it gone from the dashboard" in done.stderr
    assert "rewind_to=start.runlog_position" not in done.stderr  # advice for the manual form, not this one
    assert steps[0] - 1 in (9, 12) and steps[-1] == STEPS  # continued from its latest checkpoint
    assert read_env(visdom_server, job.env)["loss"]["train"][0] == list(range(steps[0], STEPS + 1))


def test_sigterm_to_the_job_during_a_validation_loader_s_workers_requeues_from_the_last_checkpoint(
        visdom_server, read_env, tmp_path):
    """A validation's own DataLoader (not through monitor.batches): its workers die of the
    scheduler's SIGTERM and torch raises in the loop. That was a crash, status 1, and a scheduler
    does not requeue a failed job; now it exits 75 and the job goes on from its last checkpoint."""
    options = ("--validation-workers", "2")
    straight = Job(visdom_server, tmp_path, "validation-workers-straight")
    straight.run(*options)
    job = Job(visdom_server, tmp_path, "validation-workers")
    process = job.start(*options, "--pause-validating", "12", session=True)
    for line in process.stdout:
        if line.startswith("validating 12"):
            break
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == REQUEUE_EXIT_STATUS, stderr[-3000:]
    assert "SIGTERM killed the workers of a DataLoader not iterated through monitor.batches" in stderr
    assert "the job goes on from the checkpoint of step 12" in stderr
    assert described(job.folder / "runs").status == "interrupted"
    assert job.run(*options)[0] == 13
    assert _same(job.weights(), straight.weights())
    assert read_env(visdom_server, job.env) == read_env(visdom_server, straight.env)


def test_a_job_stopped_after_training_in_its_own_last_work_continues_and_one_that_ended_well_starts_anew(
        visdom_server, tmp_path, straight):
    """Any scheduler's requeue, not only SLURM's and torchrun's (which say so): a run is finished
    once its script ends well, not at train_end, so a stop in the script's own last work (a test
    set, an export) does not train it all again."""
    job = Job(visdom_server, tmp_path, "after-training")
    process = job.start("--work-after-training", "60")
    for line in process.stdout:
        if line.startswith("trained"):
            break
    process.send_signal(signal.SIGTERM)  # the Checkpoint gave the signal back at train_end: it ends the script
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM
    assert job.run() == []  # the same command: nothing left to train, its last work done again
    assert _same(job.weights(), straight["shuffle"][0])
    assert job.run() == list(range(1, 25))  # ended well: run again, a new run
    assert len(list((job.folder / "ckpt" / "earlier").iterdir())) == 1


class _Stream(torch.utils.data.IterableDataset):
    """A stream of items: one way to resume is to read it again from its start."""

    def __iter__(self):
        return iter([torch.full((2,), float(i)) for i in range(3)])


@pytest.mark.parametrize("data", ["stream", "dataset"])
def test_a_resume_says_it_reads_the_batches_done_again_to_drop_them(visdom_server, read_env, tmp_path, caplog,
                                                                    data):
    # A stream resumed exactly, but read again up to the checkpoint without a word
    from helpers.monitors import says
    from monitor import Checkpoint, Monitor, Scalars

    def run(stop_at: int | None) -> None:
        monitor = Monitor([Scalars(), Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True)], env=f"said-{data}",
                          port=visdom_server.port, run_dir=tmp_path / "runs", flush_every=0.05)
        model = torch.nn.Linear(2, 1)
        monitor.train_start(model, torch.optim.SGD(model.parameters(), lr=0.1))
        items = _Stream() if data == "stream" else [torch.full((2,), float(i)) for i in range(3)]
        for _ in monitor.epochs(2):
            for x in monitor.batches(torch.utils.data.DataLoader(items, batch_size=1)):
                monitor.step_end(loss=model(x).sum())
                if monitor.state.step == stop_at:
                    monitor.flush()
                    return  # killed: no train_end
        monitor.close()

    run(stop_at=5)
    said = ("reading the stream again from its start and dropping the 1 batch done" if data == "stream" else
            r"loading and dropping the 1 batch done before the checkpoint \(a DataLoader\(batch_sampler="
            r"EpochBatchSampler\(...\)\) skips them without loading\)")
    with says(caplog, said):
        run(stop_at=None)
    assert read_env(visdom_server, f"said-{data}")["loss"]["train"][0] == [1, 2, 3, 4, 5, 6]


def test_a_run_continued_with_other_hyper_parameters_says_so(visdom_server, tmp_path):
    # A student ran the script again with another lr, resume on: the run went on at the saved rate
    # while its record said the new one, without a word.
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import torch
        from monitor import Checkpoint, Monitor, Scalars
        lr, kill_at = float(sys.argv[1]), int(sys.argv[2])
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        with Monitor([Scalars(), Checkpoint("ckpt", every_steps=2, resume=True)], env="changed",
                     port={visdom_server.port}) as monitor:
            monitor.train_start(model, optimizer, hparams={{"lr": lr, "batch": 16}})
            for step in monitor.steps(6):
                optimizer.step()
                monitor.step_end(loss=1.0)
                if monitor.state.step == kill_at:
                    monitor.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
        """))
    first = subprocess.run([sys.executable, str(script), "0.1", "3"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    again = subprocess.run([sys.executable, str(script), "0.01", "0"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the run continued from its checkpoint was given other hyper-parameters than it began with (lr: 0.1 " \
           "then 0.01): its record shows the new ones from here" in again.stderr
