"""What every command shares: error reporting, the console, common option types."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from zsfs.errors import ZsfsError

console = Console(stderr=True, highlight=False)
"""Progress, tables and messages go to stderr so that stdout stays machine-readable."""


class ZsfsGroup(click.Group):
    """Turns ``ZsfsError`` (and Ctrl-C) into a one-line message and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZsfsError as error:
            console.print(f"[bold red]Error:[/] {error}")
            sys.exit(1)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Finished work is kept; rerun the same command to resume.")
            sys.exit(130)
