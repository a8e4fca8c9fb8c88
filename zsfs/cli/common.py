"""What every command shares: error reporting, the console, common option types."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from zsfs.errors import ZsfsError

console = Console(stderr=True, highlight=False, emoji=False)
"""Progress, tables and messages go to stderr so that stdout stays machine-readable.

Strings given to it are rich markup: pass every user-provided string (paths, class names, error
messages) through ``escape`` (or as ``rich.text.Text``), or '[draft]' vanishes and '[/x]' raises.
No emoji codes, so that ':smile:' in a file name stays as written.
"""


class ZsfsGroup(click.Group):
    """Turns ``ZsfsError`` (and Ctrl-C) into a one-line message and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZsfsError as error:
            console.print(f"[bold red]Error:[/] {escape(str(error))}")
            sys.exit(1)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Nothing half-written was left; `zsfs extract` and "
                          "`zsfs import` resume where they stopped when rerun.")
            sys.exit(130)


class _ImagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:,.1f} img/s" if task.speed else "… img/s", style="progress.data.speed")


def image_progress(description: str) -> Progress:
    """A progress bar over images (count, images/s, ETA) with one task, not started yet.

    Start it with ``progress.start_task(...)`` and ``progress.start()`` once the total is known
    (after model loading), so the rate is not diluted by set-up time.
    """
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
    progress.add_task(description, total=None, start=False)
    return progress
