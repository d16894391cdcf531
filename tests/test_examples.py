"""The examples, run as a newcomer runs them (``python examples/NAME.py ...``) against a real server,
with short settings: what their env holds afterwards. And the Shapes dataset they train on."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from shapes import CLASSES, Shapes  # noqa: E402  (the examples' folder is not a package)

SEQUENTIAL_LAYERS = ["0.Conv2d", "3.Conv2d", "7.Linear", "9.Linear"]
CUSTOM_LAYERS = ["conv1", "conv2", "conv3", "head"]


def example_command(name: str, server, env: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), "--server", "http://127.0.0.1", "--port", str(server.port),
            "--env", env, *args]


def run_example(name: str, server, env: str, cwd: Path, *args: str, timeout: float = 120
                ) -> subprocess.CompletedProcess:
    """``python examples/NAME --port P --env ENV ARGS`` in ``cwd``; fails the test on a non-zero exit."""
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(example_command(name, server, env, *args), cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def latest_checkpoint(directory: Path) -> Path:
    """The file ``latest.json`` points at."""
    return directory / json.loads((directory / "latest.json").read_text())["latest"]


# --- the dataset ------------------------------------------------------------------------------
def test_shapes_is_a_dataset_of_small_colour_images_with_three_labels() -> None:
    shapes = Shapes(samples=90, seed=0)
    assert isinstance(shapes, Dataset) and len(shapes) == 90
    image, label = shapes[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    labels = [shapes[i][1] for i in range(len(shapes))]
    assert set(labels) == {0, 1, 2} and len(CLASSES) == 3
    assert min(labels.count(k) for k in range(3)) >= 15  # roughly balanced


def test_shapes_draws_the_same_image_for_the_same_index_and_seed_only() -> None:
    first, again, other = Shapes(10, seed=0), Shapes(10, seed=0), Shapes(10, seed=1)
    assert torch.equal(first[3][0], again[3][0]) and first[3][1] == again[3][1]
    assert not torch.equal(first[3][0], first[4][0])
    assert not torch.equal(first[3][0], other[3][0])
    assert torch.equal(first[-1][0], first[9][0])


def test_shapes_batches_through_a_dataloader() -> None:
    images, labels = next(iter(DataLoader(Shapes(20), batch_size=8)))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and labels.dtype == torch.int64


def test_shapes_checks_its_arguments_and_indices() -> None:
    with pytest.raises(ValueError, match="samples must be an int >= 1, got 0"):
        Shapes(samples=0)
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        Shapes(size=4)
    with pytest.raises(IndexError, match=r"index must be in \[-5, 5\), got 5"):
        Shapes(5)[5]


# --- the examples on a real dashboard ---------------------------------------------------------
@pytest.mark.parametrize("example, layers", [("train_sequential.py", SEQUENTIAL_LAYERS),
                                             ("train_custom_module.py", CUSTOM_LAYERS)])
def test_each_example_fills_its_env_with_every_window(example, layers, visdom_server, read_window,
                                                       read_window_raw, tmp_path) -> None:
    env = f"example-{Path(example).stem}"
    # 64 images in batches of 32: 2 steps per epoch, validation after steps 2 and 4.
    result = run_example(example, visdom_server, env, tmp_path, "--samples", "64", "--epochs", "2")
    assert "epoch 2/2" in result.stdout  # the progress bar's label

    steps = [1, 2, 3, 4]
    for window in ("loss", "accuracy"):
        traces = read_window(visdom_server, env, window)
        assert set(traces) == {"train", "validation"}, window
        assert traces["train"][0] == steps and traces["validation"][0] == [2, 4]
    assert read_window(visdom_server, env, "learning rate")["lr"][0] == steps
    grad_norms = read_window(visdom_server, env, "grad norm")
    assert list(grad_norms) == [*layers, "total"]
    assert all(xs == steps and all(y > 0 for y in ys) for xs, ys in grad_norms.values())
    if example == "train_custom_module.py":  # its forward hook fired: the model is called as model(x)
        xs, ys = read_window(visdom_server, env, "confidence")["train"]
        assert xs == steps and all(1 / 3 <= y <= 1 for y in ys)  # a mean top-class probability

    grid = read_window_raw(visdom_server, env, "inputs")
    assert grid["type"] == "image_history" and grid["content"][-1]["src"].startswith("data:image/png;base64,")
    summary = read_window_raw(visdom_server, env, "summary")
    assert summary["type"] == "text"
    model_class = "Sequential" if "sequential" in example else "ShapeNet"
    assert f"<td><b>model</b></td><td>{model_class}</td>" in summary["content"]
    assert "<td><b>samples</b></td><td>64</td>" in summary["content"]


def test_a_new_run_in_the_same_env_replaces_the_curves(visdom_server, read_window, tmp_path) -> None:
    for samples in ("96", "64"):
        run_example("train_sequential.py", visdom_server, "example-again", tmp_path, "--samples", samples,
                    "--epochs", "1")
    assert read_window(visdom_server, "example-again", "loss")["train"][0] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 21], ids=["in-epoch-1", "in-epoch-2"])
def test_an_example_killed_and_run_again_continues_with_continuous_curves_and_the_same_weights(
        visdom_server, read_window, tmp_path, kill_after) -> None:
    # 640 images in batches of 32: 20 steps per epoch, 40 in all; a checkpoint every 3 steps
    # (inside epochs too) and after each epoch. Killed once a checkpoint of step >= kill_after exists.
    args = ("--samples", "640", "--epochs", "2", "--checkpoint-dir", "checkpoints", "--checkpoint-every", "3")
    env = f"resume-killed-{kill_after}"
    run_example("train_sequential.py", visdom_server, "resume-straight", tmp_path / "straight", *args)

    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen(example_command("train_sequential.py", visdom_server, env, *args),
                               cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while _latest_step(killed / "checkpoints") < kill_after and process.poll() is None:
            assert time.monotonic() < deadline, f"no checkpoint of step >= {kill_after} within 90 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        stderr = process.communicate(timeout=30)[1]
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr}"
    killed_at = json.loads((killed / "checkpoints" / "latest.json").read_text())["checkpoints"][-1]["step"]
    assert kill_after <= killed_at < 40

    resumed_run = run_example("train_sequential.py", visdom_server, env, killed, *args)  # the same command
    # An epoch the checkpoint finished is not run again; one it interrupted goes on.
    assert ("epoch 1/2" in resumed_run.stdout) == (killed_at < 20) and "epoch 2/2" in resumed_run.stdout

    steps = list(range(1, 41))
    for window in ("loss", "accuracy", "learning rate", "grad norm"):
        resumed, straight = (read_window(visdom_server, e, window) for e in (env, "resume-straight"))
        for trace, (xs, _) in resumed.items():  # no x repeated or going back
            assert xs == (steps if trace != "validation" else [20, 40]), (window, trace, resumed_run.stderr)
        assert resumed == straight, window  # and the same values as the run that was never killed

    weights = [torch.load(latest_checkpoint(folder / "checkpoints"), weights_only=True)["model"]
               for folder in (tmp_path / "straight", killed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def _latest_step(folder: Path) -> int:
    try:
        return json.loads((folder / "latest.json").read_text())["checkpoints"][-1]["step"]
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def test_fresh_needs_a_checkpoint_dir(visdom_server, tmp_path) -> None:
    result = subprocess.run(example_command("train_sequential.py", visdom_server, "resume-usage", "--fresh"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("Error: --fresh needs --checkpoint-dir DIR, the folder of the checkpoints")


@pytest.mark.parametrize("example", ["train_sequential.py", "train_custom_module.py", "train_ddp.py"])
def test_each_example_takes_h_for_help_as_the_monitor_command_does(example) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / example), "-h"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: {example} [OPTIONS]"), result.stderr


def test_a_finished_example_run_again_starts_a_new_run_and_keeps_the_earlier_checkpoints(visdom_server, read_window,
                                                                                         tmp_path) -> None:
    args = ("--samples", "64", "--epochs", "1", "--checkpoint-dir", "checkpoints")
    run_example("train_sequential.py", visdom_server, "again", tmp_path, *args)
    first = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    again = run_example("train_sequential.py", visdom_server, "again", tmp_path, *args)
    assert "epoch 1/1" in again.stdout  # trained again from the start
    assert [p.name for p in (tmp_path / "checkpoints" / "earlier").iterdir()] == [first["run_id"]]
    assert read_window(visdom_server, "again", "loss")["train"][0] == [1, 2]  # one run's curve, no zigzag


# --- the README's code, as written -------------------------------------------------------------
def readme_python_blocks() -> list[str]:
    readme = (EXAMPLES.parent / "README.md").read_text()
    return [block.split("```", 1)[0] for block in readme.split("```python\n")[1:]]


def test_the_readme_quick_start_and_custom_callback_run_as_written(visdom_server, read_window, read_window_raw,
                                                                    tmp_path, monkeypatch) -> None:
    from torch import nn

    quick_start, custom = (b for b in readme_python_blocks() if "env=\"my-run\"" in b or "env=\"my-timed-run\"" in b)
    monkeypatch.chdir(tmp_path)  # the run log goes to runs/my-run here
    monkeypatch.setenv("VISDOM_SERVER_URL", "http://127.0.0.1")
    monkeypatch.setenv("VISDOM_PORT", str(visdom_server.port))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    loss_fn = nn.CrossEntropyLoss()

    def evaluate(model, loader):
        images, labels = next(iter(loader))
        outputs = model(images)
        return loss_fn(outputs, labels).item(), (outputs.argmax(1) == labels).float().mean().item()

    loader = DataLoader(Shapes(64), batch_size=32)
    names = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1), "loss_fn": loss_fn,
             "loader": loader, "val_loader": loader, "evaluate": evaluate, "epochs": 2}
    exec(quick_start, names)
    exec(custom, names)
    second = names["monitor"]  # the custom callback's monitor, in an env of its own
    second.epoch_start(0)
    second.epoch_end()
    second.close()

    assert read_window(visdom_server, "my-run", "loss")["validation"][0] == [2, 4]
    assert set(read_window(visdom_server, "my-run", "accuracy")) == {"train", "validation"}
    assert set(read_window(visdom_server, "my-run", "grad norm")) == {"1.Linear", "total"}
    assert read_window(visdom_server, "my-run", "learning rate")["lr"][0] == [1, 2, 3, 4]
    assert read_window_raw(visdom_server, "my-run", "inputs")["type"] == "image_history"
    assert read_window_raw(visdom_server, "my-timed-run", "notes")["content"] == "baseline, lr 0.1"
    xs, ys = read_window(visdom_server, "my-timed-run", "epoch time")["seconds"]
    assert xs == [1] and ys[0] >= 0


def test_the_readme_cross_validation_runs_as_written_and_skips_its_finished_folds_when_run_again(
        visdom_server, read_window, tmp_path, monkeypatch) -> None:
    import math
    import textwrap

    from monitor import Checkpoint, Monitor, Scalars

    (block,) = (textwrap.dedent(b) for b in readme_python_blocks() if "cv-fold" in b)  # in a list item
    block = block.replace("...  ", "monitor.step_end(loss=1.0)  ", 1)  # its training, a step an epoch
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISDOM_SERVER_URL", "http://127.0.0.1")
    monkeypatch.setenv("VISDOM_PORT", str(visdom_server.port))
    made = []

    def make_model():
        made.append(torch.nn.Linear(2, 1))
        return made[-1]

    names = {"folds": [([0], [1]), ([1], [0])], "make_model": make_model, "epochs": 6, "patience": 2,
             "make_optimizer": lambda: torch.optim.SGD(made[-1].parameters(), lr=0.1), "val_loss": 0.5,
             "math": math, "Checkpoint": Checkpoint, "Monitor": Monitor, "Scalars": Scalars,
             "evaluate": lambda model, rows: 0.25, "test_rows": [2]}
    exec(block, dict(names))
    assert len(made) == 2  # a model a fold, each stopped early: no better loss for two epochs
    assert read_window(visdom_server, "cv-fold1", "loss")["validation"][0] == [1, 2, 3]
    from monitor.runs import listed
    assert [run.metrics["test_loss"][0] for run in listed(tmp_path / "runs")] == [0.25, 0.25]  # after train_end
    exec(block, dict(names))  # run again: both folds finished
    assert len(made) == 2
