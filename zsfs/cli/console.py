"""What a person sees while a command runs: the messages console (stderr, which keeps stdout for
data, and survives a reader that leaves), text shown exactly as written, and progress: a bar on a
terminal, lines in a log."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from zsfs.names import counted, visible


class _MessagesConsole(Console):
    """rich's Console whose reader may leave: a `2>&1 | head` that closes the pipe, or a messages
    file the system stops taking (a full disk or quota under `2>job.log`, /dev/full), ends the
    messages, not the command (rich's default sent stdout to /dev/null and exited 1, so a bench
    or a fit lost its finished results to a closed progress pipe)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.width < 1:  # COLUMNS=0 (rich took it as the width): every line, errors too, came out empty
            self.width = None  # measured at each use, where rich reads COLUMNS=0 as 80

    @property
    def animates(self) -> bool:
        """Whether spinners and bars show: a terminal, but not a dumb one (TERM=dumb: an Emacs shell,
        an IDE's console), where rich draws none and a long run showed nothing until its end."""
        return self.is_terminal and not self.is_dumb_terminal

    def status(self, status, *, logged: bool = False, **kwargs):
        """rich's spinner; where none shows, a :class:`_LoggedStatus` if ``logged`` (a long
        silent set-up; work that logs its own lines leaves it off)."""
        if logged and not self.animates:
            return _LoggedStatus(self, status)
        return super().status(status, **kwargs)

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written to it (until the next command: ZsfsGroup.invoke)
        try:
            fileno, data = self.file.fileno(), sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not real files: nothing to redirect
            return
        if os.path.sameopenfile(fileno, data):  # the command's data goes there too: a closed data pipe stops it
            return
        devnull = os.open(os.devnull, os.O_WRONLY)  # Python's own writes there at exit fail quietly too
        os.dup2(devnull, fileno)
        os.close(devnull)


class _LoggedStatus:
    """A status where no terminal shows a spinner (a log of nohup, Slurm, CI): its text as a line once it
    has lasted :data:`LOG_SECONDS` (a long start, ViT-G loading, left a log empty, as if the command hung;
    a bad input found at once stays one error line)."""

    def __init__(self, console: Console, text: str):
        self.console, self.text, self._timer = console, text, None

    def _say(self) -> None:
        self.console.print(self.text, highlight=False)

    def start(self) -> None:
        self.stop()
        self._timer = threading.Timer(LOG_SECONDS, self._say)
        self._timer.daemon = True
        self._timer.start()

    def update(self, status: str | None = None, **_) -> None:
        if status is not None:
            self.text = status

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> "_LoggedStatus":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Stderr:
    """``sys.stderr`` as it is at each write (a test runner's capture too), for the console: a
    write or flush the file system refuses is a reader gone, as a closed pipe is (rich then calls
    ``on_broken_pipe``); anything else is the stream's own."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except BrokenPipeError:
            raise
        except OSError as error:  # ENOSPC, EDQUOT, EIO
            raise BrokenPipeError(error.errno, error.strerror) from error

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise BrokenPipeError(error.errno, error.strerror) from error

    def __getattr__(self, name: str) -> object:  # fileno, isatty, encoding, ...
        return getattr(sys.stderr, name)


console = _MessagesConsole(file=_Stderr(), highlight=False, emoji=False)
"""Progress, tables and messages go to stderr so that stdout stays machine-readable.

Strings given to it are rich markup: pass every string that comes from files or users (paths,
class names, model names, error messages) through ``shown``, or '[draft]' vanishes, '[/x]' raises
and an escape sequence in a class name reaches the terminal. No emoji codes, so that ':smile:' in a
file name stays as written.
"""


def shown(value: object) -> str:
    """``value`` as rich markup that prints exactly its text, with unsafe characters written
    visibly (``zsfs.names.visible``). Every string from files or users that reaches the terminal
    goes through here."""
    return escape(visible(str(value)))


class _ItemsPerSecond(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        # rich's speed needs two updates within its window, and is None once the task is done: a
        # short run's bar ended on "… img/s"; the rate since the start stands in for it
        speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"… {self.unit}/s", style="progress.data.speed")


def resuming_line(kept: int, n_shards: int, done: str) -> str:
    """What a rerun of a stopped extract or import keeps, said before its work (``done``: what
    happens to the other shards now, "embedded", "written")."""
    left = n_shards - kept
    return (f"Resuming: {kept:,} of the {counted(n_shards, 'shard')} {'was' if kept == 1 else 'were'} finished by an "
            f"earlier run and {'is' if kept == 1 else 'are'} kept; {counted(left, 'shard')} {'is' if left == 1 else 'are'} "
            f"{done} now.")


LOG_SECONDS = 10.0
"""Where no terminal shows a bar (a log of nohup, Slurm, CI), a line of progress this often."""


@contextmanager
def image_progress(description: str, unit: str = "img",
                   one: str | None = None) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar over images (count, images/s, ETA) for a long library call; yields the
    call's ``(on_start(total), on_advance(n))`` hooks and stops the bar however the call ends.

    The bar starts at ``on_start``, once the total is known (after model loading), so that the
    rate is not diluted by set-up time. ``unit``: what is counted, for the rate column (``one``:
    its singular, where it differs: "1 class to do"). Where stderr is no terminal, lines instead
    (:func:`_logged_progress`).
    """
    if not console.animates:
        with _logged_progress(description, unit, one) as hooks:
            yield hooks
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ItemsPerSecond(unit),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
    task = progress.add_task(description, total=None, start=False)

    def on_start(total: int) -> None:
        if total == 0:  # nothing left to do (a rerun of finished work): no "0/0 ETA -:--:--" bar
            return
        progress.update(task, total=total)
        progress.start_task(task)
        progress.start()

    try:
        yield on_start, lambda n: progress.advance(task, n)
    finally:
        if progress.live.is_started:  # stopping a bar never shown prints an empty line where no terminal is
            progress.stop()


@contextmanager
def _logged_progress(description: str, unit: str,
                     one: str | None = None) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """:func:`image_progress` for a log: a line as the work starts, one every :data:`LOG_SECONDS`
    (done, share, rate since the start, time left) and one when it is done (a bar rendered once,
    at the end, showed nothing while the work ran, then the last batch's rate)."""
    state = {"total": 0, "done": 0, "started": 0.0, "logged": 0.0, "advanced": 0.0}

    def line(final: bool = False) -> None:
        now = time.monotonic()
        # at the end, up to the last item counted: what the call does after them is not their rate
        total, elapsed = state["total"], max((state["advanced"] if final else now) - state["started"], 1e-9)
        done = min(state["done"], total)
        rate = done / elapsed
        left = f", {timedelta(seconds=round((total - done) / rate))} left" if rate and not final and done < total else ""
        took = f" in {timedelta(seconds=round(elapsed))}" if final else ""
        console.print(f"{description}: {done:,} of {total:,} {unit} ({100 * done / total:.0f} %){took}, "
                      f"{rate:,.1f} {unit}/s{left}", markup=False, highlight=False)
        state["logged"] = now

    def on_start(total: int) -> None:
        if total == 0:
            return
        state.update(total=total, started=time.monotonic())
        console.print(f"{description}: {counted(total, one or unit, unit)} to do", markup=False, highlight=False)
        state["logged"] = state["started"]

    def on_advance(n: int) -> None:
        state["done"] += n
        state["advanced"] = time.monotonic()
        if time.monotonic() - state["logged"] >= LOG_SECONDS and state["done"] < state["total"]:
            line()

    yield on_start, on_advance  # stopped (an error, Ctrl-C): no end line, the stop's message follows
    if state["total"] and state["done"]:
        line(final=True)
