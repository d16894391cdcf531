"""The demo behind ``monitor demo``: the Sequential example, trained live on a dashboard.

It uses the Visdom server it is given (``server``/``port``, else ``$VISDOM_SERVER_URL`` and
``$VISDOM_PORT``, else http://127.0.0.1:8097). When nothing answers there and the address is
this machine, it starts a local server (:func:`monitor.server.start`, which works offline),
gives it back the envs of the finished runs under ``runs/`` (as ``monitor serve --runs runs/``),
and keeps it up after training until Ctrl-C, so the dashboard can still be looked at.

    from monitor.demo import run_demo
    run_demo(port=8097, keep=False)      # prints the dashboard URL, then trains for about a minute
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable
from urllib.parse import quote, urlparse

from monitor.address import resolve_address
from monitor.connection import answers, is_visdom

__all__ = ["DEMO_ENV", "DemoError", "EXAMPLES", "run_demo"]

DEMO_ENV = "demo"
_PACKAGE = Path(__file__).resolve().parent
# Installed, the examples are monitor/examples/ (setup.py maps the repository's examples/ there); in a
# source checkout (an editable install, or the tree on sys.path) they are examples/ beside the package.
EXAMPLES = _PACKAGE / "examples" if (_PACKAGE / "examples").is_dir() else _PACKAGE.parent / "examples"
_THIS_MACHINE = ("127.0.0.1", "localhost")


class DemoError(RuntimeError):
    """The demo could not reach or start a server, or could not find its example."""


def run_demo(server: str | None = None, port: int | None = None, *, env: str = DEMO_ENV, keep: bool = True,
             env_path: str | os.PathLike | None = None, epochs: int | None = None, samples: int | None = None,
             echo: Callable[[str], None] = print) -> str:
    """Trains ``examples/train_sequential.py`` live in ``env`` and returns the dashboard's URL.

    ``echo`` gets the URL first, then one line on each change of state. ``port=0`` starts a
    local server on a free port. ``env_path`` is where a server started here keeps its envs.
    ``keep`` holds a server started here up after training until Ctrl-C (a server that was
    already running stays up anyway). ``epochs`` and ``samples`` shorten the run (the
    example's defaults otherwise). Raises :class:`DemoError` or :class:`monitor.server.ServerError`.
    """
    from monitor.server import VisdomServer

    base, port = _address(server, port)
    host = urlparse(base).hostname
    example = _load_example("train_sequential")
    local = None
    if port == 0 or not answers(f"{base}:{port}", timeout=2.0):
        if host not in _THIS_MACHINE:
            raise DemoError(f"server must answer or be this machine (127.0.0.1 or localhost) for the demo "
                            f"to start one, got nothing answering at {base}:{port}")
        local = VisdomServer(port=port, host=host, env_path=env_path)
        base, port = f"http://{host}", local.port
    elif not is_visdom(f"{base}:{port}", timeout=2.0):
        raise DemoError(f"server must be a Visdom server, got something else answering at {base}:{port}: "
                        f"give the demo another --port")
    url = f"{base}:{port}/env/{quote(env, safe='')}"  # a terminal's link ends at a space
    echo(f"Dashboard: {url}")
    try:
        if local is not None:
            echo(f"Starting a local Visdom server on port {port} (nothing answered there)...")
            local.start()
            _rebuild(Path("runs"), f"{base}:{port}", echo)
        else:
            echo(f"Using the Visdom server already answering at {base}:{port} (another port: --port or "
                 f"$VISDOM_PORT).")
        options = {k: v for k, v in (("epochs", epochs), ("samples", samples)) if v is not None}
        echo("Training an nn.Sequential on the Shapes dataset (examples/train_sequential.py)...")
        example.train(server=base, port=port, env=env, **options)
        if local is None:
            echo(f"Done. The run stays on the server at {url}")
        elif keep:
            echo(f"Done. The dashboard stays at {url} until Ctrl-C.")
            _wait_for_ctrl_c(local)
        else:
            echo("Done. Stopping the local server (--no-keep).")
    finally:
        if local is not None:
            local.stop()
    return url


def _address(server: str | None, port: int | None) -> tuple[str, int]:
    """The server and port as the sink's connection reads them; port 0 starts one on a free port."""
    try:
        base, port = resolve_address(server, port)
    except ValueError as error:
        raise DemoError(str(error)) from None
    if not 0 <= port <= 65535:
        raise DemoError(f"port must be an int in 0..65535 (0: start a server on a free port), got {port}")
    return base, port


def _load_example(name: str) -> ModuleType:
    """Imports ``EXAMPLES/<name>.py`` (with its folder on ``sys.path``)."""
    path = EXAMPLES / f"{name}.py"
    if not path.is_file():
        raise DemoError(f"the demo runs {path.name} from the examples installed with monitor, got no file "
                        f"at {path}: reinstall monitor (pip install .)")
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import their neighbours (shapes, options)
    spec = importlib.util.spec_from_file_location(f"monitor_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rebuild(runs: Path, url: str, echo: Callable[[str], None]) -> None:
    """Replays the finished runs under ``runs`` into the fresh server, as ``monitor serve --runs`` does."""
    from monitor.replay import rebuild

    if runs.is_dir():
        rebuilt = sorted(env for env, what in rebuild(runs, server=url).items() if what == "rebuilt")
        if rebuilt:
            echo(f"Rebuilt {len(rebuilt)} earlier run(s) from {runs}/: {', '.join(rebuilt)}")


def _wait_for_ctrl_c(server) -> None:
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        return
    raise DemoError(f"the local Visdom server exited unexpectedly (code {code}); see {server.log_path}")
