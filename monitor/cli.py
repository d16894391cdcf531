"""The ``monitor`` command: one small function per subcommand, each a thin wrapper over the library.

Heavy modules (torch, visdom) are imported inside commands, never here, so ``monitor --help`` is
instant. A command reports expected failures as one line through :class:`click.ClickException`.
To add a command, write a function decorated with ``@main.command()`` below.
"""

from __future__ import annotations

import logging
import re
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable

import click

from monitor.address import DEFAULT_PORT, DEFAULT_SERVER, resolve_address


def server_options(*, port_zero: str | None = None) -> Callable[[Callable], Callable]:
    """``--server URL`` and ``--port PORT``, as every command that talks to a Visdom server takes them.

    ``port_zero`` says what ``--port 0`` does where it is allowed (e.g. "starts a local server on a
    free port"). Both default to None: :func:`monitor.address.resolve_address` reads the environment.
    """
    zero = f"; 0 {port_zero}" if port_zero else ""
    server = click.option("--server", default=None, metavar="URL",
                          help=f"Visdom server.  [default: $VISDOM_SERVER_URL or {DEFAULT_SERVER}]")
    port = click.option("--port", type=click.IntRange(0 if port_zero else 1, 65535), default=None, metavar="PORT",
                        help=f"Its port{zero}.  [default: $VISDOM_PORT, or the one in $VISDOM_SERVER_URL, "
                             f"or {DEFAULT_PORT}]")
    return lambda command: server(port(command))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """A live Visdom dashboard for plain PyTorch training loops."""


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Port to serve on; 0 picks a free one.  [default: $VISDOM_PORT, or the one in "
                   f"$VISDOM_SERVER_URL, or {DEFAULT_PORT}]")
@click.option("--host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Interface to bind: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface, "
                   "reachable from other machines; prints a warning).")
@click.option("--env-path", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder where the server keeps its envs.  [default: $MONITOR_HOME/visdom, ~/.monitor/visdom]")
@click.option("--login", is_flag=True,
              help="Require a login; the credentials come from $VISDOM_USERNAME and $VISDOM_PASSWORD.")
@click.option("--runs", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="Rebuild the env of every run under DIR (DIR/ENV/runlog.jsonl) once the server answers: "
                   "a restarted server shows finished runs again; env 'runs' lists them, updated as runs "
                   "start and end.")
@click.option("--base-url", default="", metavar="PATH",
              help="Serve under PATH (e.g. /visdom, behind a proxy); scripts then give it in their server's "
                   "URL: Monitor(server='http://HOST:PORT/visdom').")
def serve(port: int | None, host: str, env_path: Path | None, login: bool, runs: Path | None, base_url: str) -> None:
    """Start a Visdom server and keep it running until Ctrl-C.

    Serves where clients look by default: the port in $VISDOM_PORT or $VISDOM_SERVER_URL.
    Installs the dashboard assets first if they are missing (see `monitor assets`).
    """
    from monitor.assets import AssetsError
    from monitor.server import ServerError, start

    try:
        _, port = resolve_address(port=port)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None  # names $VISDOM_PORT or $VISDOM_SERVER_URL
    if not 0 <= port <= 65535:
        raise click.UsageError(f"port must be in 0..65535, got {port} (from $VISDOM_PORT / $VISDOM_SERVER_URL)")
    _log_progress()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            server = start(port=port, host=host, env_path=env_path, login=login, base_url=base_url)
        except (ServerError, AssetsError) as exc:
            raise click.ClickException(str(exc)) from None
    for warning in caught:
        click.secho(f"Warning: {warning.message}", fg="yellow", err=True)
    # A supervisor's SIGTERM stops the server the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        click.echo(f"Visdom dashboard at {server.url} (envs in {server.env_path}); Ctrl-C to stop.")
        if server.base_url:  # under a path: scripts must be told it
            click.echo(f"Scripts reach it at its path: run them with VISDOM_SERVER_URL={server.url} "
                       f"(or Monitor(..., server={server.url!r})).")
        elif server.port != resolve_address()[1]:  # not where a script sends by default: say how to get there
            click.echo(f"Scripts send to port {resolve_address()[1]} unless told: run them with "
                       f"VISDOM_PORT={server.port} (or Monitor(..., port={server.port})).")
        if runs is not None:
            from monitor.runs import RunsPane

            _rebuild(runs, server)
            pane = RunsPane(runs, server=server.url)
            pane.start()
            click.echo(f"The runs in {runs}: {server.url}/env/{RunsPane.ENV}")
        code = server.process.wait()
    except KeyboardInterrupt:
        click.echo("Stopping the server.", err=True)
        code = None
    finally:
        server.stop()
    if code is not None:
        raise click.ClickException(f"the Visdom server exited unexpectedly (code {code}); see {server.log_path}")


@main.command()
@server_options(port_zero="starts a local server on a free port")
@click.option("--env", default="demo", show_default=True, metavar="ENV", help="Env (dashboard page) of the run.")
@click.option("--env-path", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Where a server started by the demo keeps its envs.  "
                   "[default: $MONITOR_HOME/visdom, ~/.monitor/visdom]")
@click.option("--keep/--no-keep", default=True, show_default=True,
              help="Keep a server started by the demo up after training, until Ctrl-C.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Epochs to train (fewer for a quicker look on a slow machine).  [default: the example's 6]")
@click.option("--samples", type=click.IntRange(min=2), default=None, metavar="N",
              help="Images in its training set.  [default: the example's 8000]")
def demo(server: str | None, port: int | None, env: str, env_path: Path | None, keep: bool,
         epochs: int | None, samples: int | None) -> None:
    """Train a small model live on a Visdom dashboard (about a minute on a CPU).

    Prints the dashboard URL first. Uses the server at --server/--port when one answers there,
    else starts a local one (offline too), and keeps it up after training until Ctrl-C.
    """
    from monitor.assets import AssetsError
    from monitor.demo import DemoError, run_demo
    from monitor.server import ServerError

    _log_progress()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stops a server the demo started
    try:
        run_demo(server, port, env=env, keep=keep, env_path=env_path, epochs=epochs, samples=samples,
                 echo=click.echo)
    except (DemoError, ServerError, AssetsError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command()
@click.option("--static-dir", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="DIR",
              help="Folder to check and fill.  [default: the installed visdom's static/]")
@click.option("--no-visdom-download", is_flag=True,
              help="Skip visdom's own download from its CDNs and go straight to npm.")
def assets(static_dir: Path | None, no_visdom_download: bool) -> None:
    """Install the dashboard's scripts, styles and fonts if any are missing.

    Tries visdom's own download (needs internet access to its CDNs), then `npm pack` from the npm
    registry, and marks the folder built so visdom never tries to download again.
    """
    from monitor.assets import AssetsError, ensure_assets, visdom_static_dir

    _log_progress()
    target = static_dir if static_dir is not None else visdom_static_dir()
    try:
        installed = ensure_assets(target, visdom_download=not no_visdom_download)
    except AssetsError as exc:
        raise click.ClickException(str(exc)) from None
    if installed:
        click.echo(f"Installed {len(installed)} dashboard asset(s) into {target}.")
    else:
        click.echo(f"Dashboard assets are complete in {target}.")


class _ListsByDefault(click.Group):
    """`monitor checkpoints DIR` means `monitor checkpoints list DIR` (and `monitor runs DIR`,
    `runs list DIR`; `monitor runs --sort M`, `runs list --sort M`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["list", *args]
        return super().parse_args(ctx, args)


@main.group(cls=_ListsByDefault)
def checkpoints() -> None:
    """List a folder of checkpoints (`monitor checkpoints DIR`) or show one (`inspect FILE`)."""


@checkpoints.command("list")
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
def checkpoints_list(directory: Path) -> None:
    """List the checkpoints in DIR: step, epoch, metric, size, time, and which are latest/best/last
    or kept for good (Guard's last good step before a divergence)."""
    import time

    from monitor.checkpoint.listing import list_checkpoints
    from monitor.runs import padded

    try:
        infos = list_checkpoints(directory)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if not infos:
        raise click.ClickException(f"DIR must hold checkpoints (step-*.pt), got {str(directory)!r}, which holds none")
    click.echo(f"{'file':<20} {'step':>8} {'epoch':>5} {'metric':>18} {'size':>10}  {'time':<19}  kept as")
    for info in infos:
        metric = f"{info.metric_name}={info.metric:.6g}" if info.metric is not None else "-"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.time)) if info.time else "-"
        kept = [w for w, on in (("latest", info.latest), (f"best #{info.best_rank}", info.best_rank),
                                ("last", info.last), (f"kept: {info.kept}", info.kept)) if on]
        epoch = "-" if info.epoch is None else info.epoch
        click.echo(f"{info.path.name:<20} {info.step:>8} {epoch:>5} {padded(metric, 18, right=True)} {info.size:>10,}  "
                   f"{when:<19}  "
                   + (f"UNREADABLE: {info.problem}" if info.problem else ", ".join(kept) or "-"))


@checkpoints.command("inspect")
@click.argument("file", type=click.Path(path_type=Path), metavar="FILE")
@click.option("--trust", is_flag=True,
              help="Load a file that needs unsafe unpickling (a whole pickled model): runs code from it, "
                   "so only for files you trust.")
def checkpoints_inspect(file: Path, trust: bool) -> None:
    """Show what a checkpoint FILE holds: loop position, run, metric, model, optimizer, RNG, callbacks."""
    from monitor.checkpoint import CheckpointError
    from monitor.checkpoint.listing import describe_checkpoint

    try:
        rows = describe_checkpoint(file, trust=trust)
    except (CheckpointError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    for label, text in rows:
        click.echo(f"{label:<10} {text}")


@main.command("replay")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="RUN...")
@click.option("--env", default=None, metavar="ENV",
              help="Env to fill (one RUN only).  [default: the env named in the run log]")
@server_options()
def replay_command(runs: tuple[Path, ...], env: str | None, server: str | None, port: int | None) -> None:
    """Send run logs (runs/ENV/runlog.jsonl, its folder runs/ENV, or a folder of runs such as
    runs/) to a Visdom server.

    For runs trained without a dashboard (a sweep's trials that ended before the server was up),
    or envs the server lost. Windows are sent whole, so replaying twice leaves the same windows.
    A server with login takes $VISDOM_USERNAME and $VISDOM_PASSWORD.
    """
    from monitor.runs import listed, run_log_of

    logs = []
    for run in runs:
        try:
            logs.append(run_log_of(run))  # a run folder, as export, compare and rm take
        except ValueError as exc:
            found = [one.log for one in listed(run)] if run.is_dir() else []  # a folder of runs
            if not found:
                raise click.BadParameter(f"{exc}, nor a folder of runs", param_hint="RUN") from None
            logs += found
    if env is not None and len(logs) > 1:
        raise click.UsageError(f"--env fills one env, got {len(logs)} runs to replay")
    for run_log in logs:
        _replay_one(run_log, env, server, port)


def _replay_one(run_log: Path, env: str | None, server: str | None, port: int | None) -> None:
    from monitor.connection import DashboardError
    from monitor.replay import replay

    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            label = f"Reading {run_log.name}" if stage == "read" else f"Sending {total} window(s)"
            bars[stage] = click.progressbar(length=total, label=label, file=sys.stderr).__enter__()
        bar = bars[stage]
        bar.update(done - bar.pos)

    try:
        filled = replay(run_log, env, progress=progress, server=server, port=port)
    except (DashboardError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
    click.echo(f"Replayed {run_log} into env {filled!r}.")


@main.command("profile")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="RUN_DIR")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="Operators to list.  [default: the Profile callback's top]")
def profile_command(run_dir: Path, top: int | None) -> None:
    """Print the table a Profile callback wrote: the top operators and the time per step.

    RUN_DIR is the run's folder (runs/ENV) or the profile folder in it (Profile(directory=...)'s).
    """
    import json

    from monitor.callbacks.profile import text_table

    for path in (run_dir / "profile" / "table.json", run_dir / "table.json"):
        if path.is_file():
            table = json.loads(path.read_text())
            click.echo(text_table(table, top or table.get("top", 15)))
            return
    raise click.ClickException(f"no profile in {run_dir}: expected {run_dir / 'profile' / 'table.json'}, which "
                               f"the Profile callback writes when its last step ends (one given directory=... "
                               f"writes table.json there: give that folder)")


@main.group(cls=_ListsByDefault, invoke_without_command=True)
@click.pass_context
def runs(context: click.Context) -> None:
    """The runs on disk: list them (the default: `monitor runs [DIR]`), compare, export, rm and gc them."""
    if context.invoked_subcommand is None:
        context.invoke(runs_list)


def _runs_folder(context: click.Context, parameter: click.Parameter, value: Path) -> Path:
    """A folder of runs that exists, or an error that says where runs are written."""
    if not value.is_dir():
        raise click.BadParameter(f"folder '{value}' does not exist: a script's runs are written in runs/ENV of "
                                 f"the folder it ran in (or its Monitor's run_dir=); run this there, or give "
                                 f"that folder")
    return value


KEEP_ENVS = click.option("--keep-envs", is_flag=True,
                         help="Delete the files alone, leaving the runs' envs on the dashboard.")


MODE = click.option("--mode", type=click.Choice(["min", "max"]), default=None,
                    help="Whether the lowest or the highest METRIC is best.  [default: lowest for losses and "
                         "errors, by their name, else highest]")


@runs.command("list")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
                metavar="[DIR]")
@click.option("--sort", metavar="METRIC", help="Best first by METRIC's best value (window/trace, e.g. "
                                               "loss/validation), or in the order of an hparam (lr).")
@MODE
@click.option("--by", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which value of a metric --sort ranks by and --mean-over averages: its best, or its last (a "
                   "noisy return's final one rather than its luckiest).")
@click.option("--where", multiple=True, metavar="NAME=VALUE",
              help="Only runs with this hparam value, or one of several (lr=0.1,0.3), or status=crashed,pruned; "
                   "also NAME<VALUE, <=, >, >= (numbers) and != (repeatable: 'lr>=0.001' 'lr<0.1').")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N runs (with --sort, the N best).")
@click.option("--format", "form", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="csv or json: a row a run for a script, every metric's last and best value and every hparam.")
@click.option("--metrics", type=click.IntRange(min=0), default=4, show_default=True, metavar="N",
              help="Metric columns shown: the --sort one first, then the loss, the rest by name.")
@click.option("--earlier", is_flag=True, help="Also the earlier runs of each env (set aside in its earlier/).")
@click.option("--mean-over", "over", multiple=True, metavar="HPARAM",
              help="One row per group of runs differing only in HPARAM (a cross-validation's fold, a seed): each "
                   "metric's best as mean ± std over them (repeatable).")
def runs_list(directory: Path = Path("runs"), sort: str | None = None, where: tuple[str, ...] = (),
              mode: str | None = None, metrics: int = 4, earlier: bool = False, over: tuple[str, ...] = (),
              top: int | None = None, form: str = "table", by: str = "best") -> None:
    """One row per run under DIR (default runs/): status, steps, metrics (last and best), hparams."""
    from monitor.runs import COMPARISONS, check_metric, grouped_table, listed, selected, table, write_runs

    _runs_folder(click.get_current_context(), None, directory)  # here, not a callback: `monitor runs` alone too
    if over and form != "table":
        raise click.UsageError("--mean-over makes a table: leave --format out")

    conditions = []
    for condition in where:
        parsed = re.fullmatch(rf"([^<>=!]+)({'|'.join(COMPARISONS)}|=)(.*)", condition)
        if parsed is None:
            raise click.BadParameter(f"must be NAME=VALUE (or NAME<VALUE, <=, >, >=, !=), got {condition!r}",
                                     param_hint="--where")
        name, op, value = parsed.group(1).strip(), parsed.group(2), parsed.group(3).strip()
        if op in ("<", "<=", ">", ">="):
            try:
                float(value)
            except ValueError:
                raise click.BadParameter(f"{op} compares numbers, got {condition!r}", param_hint="--where") from None
        conditions.append((name, value if op == "=" else op + value))
    unreadable: list[str] = []
    every = listed(directory, unreadable, earlier=earlier or directory.name == "earlier")
    for message in unreadable:
        click.echo(f"monitor: left out {message}", err=True)
    if sort is not None and every:
        try:
            check_metric(every, sort, "sort", hparams=True)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--sort") from None
    if mode is not None and sort is None:
        raise click.UsageError("--mode says how --sort ranks: give --sort METRIC too")
    if by != "best" and sort is None and not over:
        raise click.UsageError("--by says what --sort ranks by and --mean-over averages: give either too")
    named = sorted({name for run in every for name in run.hparams})
    for hint, names in (("--where", [n for n, _ in conditions if n != "status"]), ("--mean-over", over)):
        unknown = [name for name in names if name not in named]
        if unknown and every:
            raise click.BadParameter(f"no run under {directory} has hparam {', '.join(map(repr, unknown))}; they "
                                     f"have {', '.join(named) or 'none'}", param_hint=hint)
    found = selected(every, conditions, sort, mode, by)[:top]
    if form != "table":
        write_runs(found, sys.stdout, form, first=sort)
        return
    if not found:
        events = not every and next(directory.rglob("events.out.tfevents.*"), None) is not None
        click.echo(f"no runs under {directory}" + (" matching " + " ".join(where) if where else "") + (
            ": it holds TensorBoard's event files, which the monitor does not read (a script writes runs "
            "here through `from monitor import SummaryWriter`)" if events else ""))
        return
    click.echo(grouped_table(found, over, metrics, first=sort, mode=mode, by=by) if over else
               table(found, metrics, first=sort, mode=mode))


@runs.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="RUN...")
@click.option("--into", default=None, metavar="ENV", help="Env to fill.  [default: compare_ and the runs' envs]")
@click.option("--follow", is_flag=True, help="Keep the env up to date while the runs go on (every 2 s), until "
                                             "each has ended (a killed run may be run again); Ctrl-C stops.")
@server_options()
def runs_compare(run_dirs: tuple[Path, ...], into: str | None, follow: bool, server: str | None,
                 port: int | None) -> None:
    """Fill an env with RUN... side by side: a trace per run in each window they share, named by
    the hparams that differ, and a table of the runs. Built from the run logs alone."""
    from monitor.connection import DashboardError
    from monitor.runs import compare

    if follow:
        click.echo(f"Comparing {len(run_dirs)} runs as they go on; Ctrl-C stops.")
    try:
        env = compare(list(run_dirs), into, follow=follow, server=server, port=port)
    except (DashboardError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("Stopped.")
        return
    click.echo(f"Compared {len(run_dirs)} runs in env {env!r}" + (", until they ended." if follow else "."))


@runs.command("rm")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="RUN...")
@click.option("--yes", is_flag=True, help="Do not ask for a confirmation.")
@KEEP_ENVS
@server_options()
def runs_rm(run_dirs: tuple[Path, ...], yes: bool, keep_envs: bool, server: str | None, port: int | None) -> None:
    """Delete RUN... (runs/ENV): the folder with its run log, images and checkpoints, and the env on
    the server; or an earlier run (runs/ENV/earlier/ID.jsonl), with its images and checkpoints."""
    from monitor.runs import described

    try:
        doomed = [described(path) for path in run_dirs]
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _remove(doomed, yes, keep_envs, server, port)


@runs.command("gc")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
                metavar="[DIR]", callback=_runs_folder)
@click.option("--older-than", type=click.DateTime(), default=None, metavar="DATE",
              help="Finished runs started before DATE (YYYY-MM-DD).")
@click.option("--keep-best", type=click.IntRange(min=0), default=None, metavar="N",
              help="Finished runs beyond the N best by --metric.")
@click.option("--metric", default=None, metavar="METRIC", help="window/trace ranking --keep-best.")
@MODE
@click.option("--yes", is_flag=True, help="Do not ask for a confirmation.")
@KEEP_ENVS
@server_options()
def runs_gc(directory: Path, older_than, keep_best: int | None, metric: str | None, mode: str | None, yes: bool,
            keep_envs: bool, server: str | None, port: int | None) -> None:
    """Delete finished and pruned runs under DIR that are older than a date or beyond the N best
    (crashed, interrupted, killed and running runs are kept, and so are runs without --metric and
    folders holding other runs, said)."""
    from monitor.runs import best_mode, best_runs, gc_candidates, holds_other_runs, listed

    if older_than is None and keep_best is None:
        raise click.UsageError("say what to collect: --older-than DATE and/or --keep-best N --metric METRIC")
    if keep_best is not None and metric is None:
        raise click.UsageError(f"--keep-best {keep_best} ranks the runs by a metric: give --metric METRIC too")
    every = listed(directory)
    try:
        candidates = gc_candidates(every, older_than.timestamp() if older_than else None, keep_best, metric, mode)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metric") from None
    doomed = [run for run in candidates if not holds_other_runs(run)]
    if len(doomed) < len(candidates):  # a search run again in its folders: every one holds its earlier run
        click.echo(f"{len(candidates) - len(doomed)} run(s) kept as their folders hold other runs (an earlier run "
                   f"of the env: see `monitor runs {shlex.quote(str(directory))} --earlier`, delete one with "
                   f"`monitor runs rm RUN/earlier/ID.jsonl`)")
    if keep_best is not None and metric is not None:
        lowest = best_mode(metric, mode) == "min"
        click.echo(f"Best by {metric}: the {'lowest' if lowest else 'highest'}"
                   + ("" if mode else f" (guessed from its name; --mode {'max' if lowest else 'min'} says otherwise)"))
        for run in best_runs(every, metric, mode)[:keep_best]:  # what the cut keeps, to check it before answering
            click.echo(f"  kept: {run.place}  ({metric} {run.best(metric, mode):.6g})")
    if not doomed:
        click.echo("nothing to collect")
        return
    _remove(doomed, yes, keep_envs, server, port, (metric, mode) if keep_best is not None else None)


def _remove(doomed, yes: bool, keep_envs: bool, server: str | None, port: int | None,
            ranked_by: tuple[str, str | None] | None = None) -> None:
    from monitor.runlog import RunLog
    from monitor.runs import (check_removable, holds_other_runs, not_written_by_monitor, remove, removal_trouble,
                              shares_env)

    doomed = list({run.place.resolve(): run for run in doomed}.values())  # a run named twice goes once
    try:
        for run in doomed:  # all of them, before anything is asked or deleted
            check_removable(run)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for run in doomed:
        value = "" if ranked_by is None or ranked_by[0] not in run.metrics else \
            f", {ranked_by[0]} {run.best(*ranked_by):.6g}"
        click.echo(f"{run.place}  (env {run.env}, {run.status}{value}, {run.checkpoints} checkpoint files)")
        if run.place != run.path:  # an earlier run's log: its folder and env are the current run's
            continue
        for other in holds_other_runs(run):
            click.echo(f"  with the run in it: {other}")
        for other in shares_env(run):
            click.echo(f"  its env stays on the dashboard: the run in {other} shows there too")
        yours = not_written_by_monitor(run.path)
        if yours:
            click.echo(f"  kept, with the folder: {', '.join(_shown(p, run.path) for p in yours)}")
    envs = sorted({run.env for run in doomed if run.place == run.path and not shares_env(run)})
    sent_to = {run.env: next(RunLog.read(run.log), {}).get("server") for run in doomed if run.env in envs}
    trouble = None if not envs or keep_envs else removal_trouble(sent_to, server=server, port=port)
    if trouble is not None:  # once the folders are gone no command finds the envs
        raise click.ClickException(f"{trouble}, and env(s) {', '.join(envs)} would stay on it: give its --port "
                                   f"(or --server), or --keep-envs to delete the files alone. "
                                   f"Nothing was deleted.")
    if not yes:
        envs_too = "" if keep_envs or not envs else (" and their envs" if len(envs) == len(doomed) else
                                                     f" and {len(envs)} of their envs (those said to stay, stay)")
        click.confirm(f"Delete these {len(doomed)} run(s), their checkpoints{envs_too}?", abort=True)
    troubles = [(run.env, remove(run, dashboard=not keep_envs, server=server, port=port)) for run in doomed]
    click.echo(f"Deleted {len(doomed)} run(s).")
    for env, trouble in troubles:
        if trouble is not None:
            click.echo(f"Env {env} is still on the dashboard: {trouble}.", err=True)


def _shown(path: Path, below: Path) -> str:
    """``path`` below ``below``, a folder with a trailing ``/``."""
    return str(path.relative_to(below)) + ("/" if path.is_dir() else "")


@runs.command("export")
@click.argument("runs_given", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path), metavar="RUN...")
@click.option("--format", "form", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: window,trace,x,y rows; json: {window: {trace: {x: [...], y: [...]}}}; several runs: "
                   "a run column first, {run: {window: ...}}.")
@click.option("--window", "windows", multiple=True, metavar="WINDOW", help="Only this window (repeatable).")
def runs_export(runs_given: tuple[Path, ...], form: str, windows: tuple[str, ...]) -> None:
    """Print every point of each RUN (runs/ENV or its run log) at full resolution: several (a
    cross-validation's folds, runs/cv-fold*) in one table, each row naming its run."""
    from monitor.runs import exported, write_csv, write_json

    try:
        points = {_run_name(run): exported(run, windows or None) for run in runs_given}
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    out = click.get_text_stream("stdout")
    if len(points) == 1:
        (write_csv if form == "csv" else write_json)(next(iter(points.values())), out)
    else:
        (write_csv if form == "csv" else write_json)(points, out, by_run=True)


def _run_name(run: Path) -> str:
    """A run's name in an export of several: its folder's (runs/cv-fold0: cv-fold0)."""
    return (run.parent if run.is_file() else run).name


def _rebuild(runs: Path, server) -> None:
    from monitor.replay import rebuild

    if not runs.is_dir():
        click.echo(f"No runs yet in {runs}: runs started there will be listed as they start.")
        return
    outcome = rebuild(runs, server=server.url)
    rebuilt = sorted(env for env, what in outcome.items() if what == "rebuilt")
    live = sorted(env for env, what in outcome.items() if what == "live")
    click.echo(f"Rebuilt {len(rebuilt)} env(s) from the run logs in {runs}" + (f": {', '.join(rebuilt)}" if rebuilt else "")
               + (f"; left {len(live)} live run(s) to themselves" if live else "") + ".")


def _log_progress() -> None:
    """Show the library's progress messages (asset installs) on stderr, without log decoration."""
    logger = logging.getLogger("monitor")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


if __name__ == "__main__":
    main()
