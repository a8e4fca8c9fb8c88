"""What every command shares: error reporting, the console, common option types."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from zsfs.errors import ParameterError, ZsfsError

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
        except ParameterError as error:  # named as the user typed them: the command's flags
            command = self.get_command(ctx, ctx.invoked_subcommand or "")
            flags = {p.name: p.opts[0] for p in getattr(command, "params", []) if isinstance(p, click.Option)}
            console.print(f"[bold red]Error:[/] {escape(error.render(flags))}")
            sys.exit(1)
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


@contextmanager
def image_progress(description: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar over images (count, images/s, ETA) for a long library call; yields the
    call's ``(on_start(total), on_advance(n))`` hooks and stops the bar however the call ends.

    The bar starts at ``on_start``, once the total is known (after model loading), so that the
    rate is not diluted by set-up time.
    """
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
    task = progress.add_task(description, total=None, start=False)

    def on_start(total: int) -> None:
        progress.update(task, total=total)
        progress.start_task(task)
        progress.start()

    try:
        yield on_start, lambda n: progress.advance(task, n)
    finally:
        progress.stop()
