"""``monitor demo`` from an installed package: a wheel of this tree, installed by pip into a fresh
virtualenv and run from a folder outside the checkout, as a user who ran ``pip install`` runs it.

The new virtualenv takes its dependencies (torch, visdom with its dashboard assets, numpy, and pip
and setuptools themselves) from the environment running the tests rather than from an index: a
folder of links to that environment's site-packages, monitor itself left out, is put on the
venv's path by a ``.pth`` file. pip then installs the wheel with ``--no-index``, checking its
requirements against those packages: nothing is downloaded and torch is not installed again, yet
monitor, its console script and its examples come only from the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_demo import SHORT, WINDOWS, run_log_windows

ROOT = Path(__file__).resolve().parent.parent
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                      "runs", "checkpoints", "artifacts")


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def user_environment() -> dict[str, str]:
    """This process's environment, less what would import monitor from the checkout or pick a server."""
    hidden = ("PYTHONPATH", "PYTHONHOME", "VISDOM_SERVER_URL", "VISDOM_PORT", "MONITOR_HOME")
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, "PYTHONNOUSERSITE": "1"}


def dependencies_without_monitor(folder: Path) -> Path:
    """A folder of links to everything installed beside the running Python, except monitor."""
    folder.mkdir()
    for site in dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")):
        for entry in Path(site).iterdir():
            if (entry.name == "monitor" or entry.name.startswith(("monitor-", "__editable__"))
                    or entry.suffix in (".pth", ".egg-link") or (folder / entry.name).exists()):
                continue
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with a wheel of this tree installed by pip; returns its ``bin/``."""
    work = tmp_path_factory.mktemp("installed")
    source = work / "source"  # a copy, so that building writes nothing into the checkout
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES, symlinks=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", work / "dist",
        source, env=user_environment())
    (wheel,) = (work / "dist").glob("monitor-*.whl")

    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # pip comes with the dependencies
    python = venv / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    deps = dependencies_without_monitor(work / "deps")
    (Path(site) / "monitor_test_dependencies.pth").write_text(f"{deps}\n")
    run(python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--constraint", ROOT / "constraints.txt",
        wheel, env=user_environment())
    return venv / "bin"


@pytest.mark.slow
def test_monitor_demo_runs_from_an_installed_wheel_outside_the_checkout(installed, tmp_path):
    probe = "import monitor.demo as d; print(d.__file__); print(d.EXAMPLES)"
    module, examples = map(Path, run(installed / "python", "-c", probe, cwd=tmp_path, env=user_environment())
                           .stdout.splitlines())
    assert module.is_relative_to(installed.parent), module  # the wheel's monitor, not the checkout's
    assert examples == module.parent / "examples"  # shipped inside it

    result = subprocess.run([installed / "monitor", "demo", "--no-keep", "--port", "0", "--env", "installed",
                             "--env-path", tmp_path / "envs", *SHORT], cwd=tmp_path, env=user_environment(),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Dashboard: http://127.0.0.1:") and lines[0].endswith("/env/installed")
    assert "epoch 1/1" in result.stdout  # the example's progress bar: it trained
    assert "not confirmed" not in result.stderr and "Traceback" not in result.stderr  # every window delivered
    assert run_log_windows(tmp_path, "installed") == WINDOWS
