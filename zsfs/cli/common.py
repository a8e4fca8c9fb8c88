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

from zsfs.errors import ZsfsError

console = Console(stderr=True, highlight=False, emoji=False)
"""Progress, tables and messages go to stderr so that stdout stays machine-readable.

Strings given to it are rich markup: pass every user-provided string (paths, class names, error
messages) through ``escape`` (or as ``rich.text.Text``), or '[draft]' vanishes and '[/x]' raises.
No emoji codes, so that ':smile:' in a file name stays as written.
"""


class ZsfsGroup(click.Group):
    """Turns ``ZsfsError``, file-system failures (a full disk above all) and Ctrl-C into a
    one-line message and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZsfsError as error:
            fail(str(error))
        except Exception as error:  # file-system failures, however a library wraps them (h5py, polars)
            from zsfs.store.files import is_disk_full

            if not (isinstance(error, OSError) or is_disk_full(error)):
                raise  # a bug: keep its traceback
            fail(describe_os_error(error))
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Nothing half-written was left; `zsfs extract` and "
                          "`zsfs import` resume where they stopped when rerun.")
            sys.exit(130)


def fail(message: str) -> None:
    console.print(f"[bold red]Error:[/] {escape(message)}")
    sys.exit(1)


def describe_os_error(error: BaseException) -> str:
    """An operating-system failure outside the store's own error handling, as one line."""
    from zsfs.store.files import is_disk_full

    where = getattr(error, "filename", None)
    where = f" ({where})" if where else ""
    if is_disk_full(error):
        return f"the disk is full (or a file-size limit was reached){where}: free some space and rerun"
    from zsfs.store.integrity import first_line

    if "No usable temporary directory" in str(error):  # tempfile's probe write failed
        return f"{first_line(error)}: the disk may be full; free some space (or set TMPDIR) and rerun"
    return f"{getattr(error, 'strerror', None) or first_line(error)}{where}"


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
