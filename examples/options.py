"""The command-line options every example takes, so each example's file is about its loop."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import click

from monitor.cli import server_options


COMMAND_SETTINGS = {"help_option_names": ["-h", "--help"]}  # as `monitor` takes them


def example_options(env: str, epochs: int, samples: int) -> Callable:
    """Adds the common options, with this example's defaults, to a click command."""
    options = [
        click.option("--epochs", type=click.IntRange(min=1), default=epochs, show_default=True,
                     help="Passes over the training set."),
        click.option("--samples", type=click.IntRange(min=2), default=samples, show_default=True,
                     help="Training images (a fifth as many for validation); small for a quick run."),
        server_options(),
        click.option("--env", default=env, show_default=True, help="Visdom env (dashboard page) of the run."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     metavar="DIR", help="Save checkpoints here (none without it)."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True,
                     metavar="STEPS", help="Save one every STEPS steps, besides after each epoch."),
        click.option("--fresh", is_flag=True,
                     help="Start a new run even where --checkpoint-dir holds a killed run's checkpoints "
                          "(without it, that run continues, curves included)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the weights' initialisation and the batches' order."),
    ]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def checked(**values):
            if values["fresh"] and values["checkpoint_dir"] is None:
                raise click.UsageError("--fresh needs --checkpoint-dir DIR, the folder of the checkpoints")
            return command(**values)

        for option in reversed(options):
            checked = option(checked)
        return checked

    return decorate
