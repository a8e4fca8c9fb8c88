"""The command group: a command's errors (``ZsfsError``, a full disk, other file-system failures)
and stops (Ctrl-C, SIGTERM) become one line and an exit code, with a hint where the user typed
another command's form; the stops themselves: ``zsfs.cli.stops``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click

from zsfs.cli.console import console, shown
from zsfs.cli.options import option_flags
from zsfs.cli.stops import received_stop, sigterm_stops_cleanly, stops_outlive_finalisers
from zsfs.errors import ParameterError, ZsfsError, is_disk_full, one_line, out_of_open_files, shared_memory_full
from zsfs.names import as_argument
from zsfs.signals import STOP_SIGNALS


RESUMING_COMMANDS = ("extract", "import")
"""Commands whose rerun continues an interrupted run (finished shards are kept)."""
OVERWRITING = "zsfs.overwriting"
"""``ctx.meta`` key a resuming command sets under ``--overwrite``, which removes the finished shards:
its rerun resumes only without the flag."""
RESUME_WITHOUT_OVERWRITE = ("a rerun without --overwrite resumes from the shards this run finished (with it, the "
                            "store is built again from the start: --overwrite removes the earlier store before it writes)")


def say_error(message: str) -> None:
    """``Error: MESSAGE`` on one line (a log's reader greps it; a terminal folds it), as text, not markup."""
    console.print(f"[bold red]Error:[/] {shown(message)}", soft_wrap=True)


class ZsfsGroup(click.Group):
    """Turns ``ZsfsError``, file-system failures (a full disk above all) and Ctrl-C into a
    one-line message and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> object:
        console.quiet = False  # an earlier command of this process may have lost its reader (on_broken_pipe)
        with sigterm_stops_cleanly():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context) -> object:
        try:
            with stops_outlive_finalisers():
                return super().invoke(ctx)
        except click.UsageError as error:
            error.message += _form_hint(self.get_command(ctx, ctx.invoked_subcommand or ""), error)
            raise
        except ZsfsError as error:
            bad_argument = isinstance(error, ParameterError)
            if bad_argument:  # named as the user typed them: the command's flags
                error = error.render(option_flags(self.get_command(ctx, ctx.invoked_subcommand or "")))
            say_error(f"{error}{_kept_for_a_rerun(ctx, error, str(error))}{_resuming_hint(ctx, str(error))}")
            sys.exit(2 if bad_argument else 1)  # 2: a usage error, as click's own checks of the options exit
        except Exception as error:  # file-system failures, however a library wraps them (h5py, polars)
            if not (isinstance(error, OSError) or is_disk_full(error) or shared_memory_full(error)
                    or out_of_open_files(error)):
                raise  # a bug: keep its traceback
            options = getattr(self.get_command(ctx, ctx.invoked_subcommand or ""), "params", [])
            said = describe_os_error(error, decoding="workers" in {option.name for option in options})
            say_error(f"{said}{_kept_for_a_rerun(ctx, error, said)}{_resuming_hint(ctx, said)}")
            sys.exit(1)
        except KeyboardInterrupt as stop:
            resumes = ctx.invoked_subcommand in RESUMING_COMMANDS
            kept = getattr(stop, "kept", None)  # see kept_if_interrupted
            overwriting = ctx.meta.get(OVERWRITING, False)
            # extract says how much its finished shards hold (see zsfs.extract)
            resume = RESUME_WITHOUT_OVERWRITE if overwriting else \
                getattr(stop, "resume", None) or "a rerun resumes where this one stopped"
            say_stopped(stop, f"{shown(kept)}." if kept else "Nothing half-written was left"
                        + (f"; {resume}." if resumes else "."))


def say_stopped(stop: KeyboardInterrupt, what: str) -> NoReturn:
    """End a command stopped by Ctrl-C or a stop signal (``stop``): one line, "Interrupted.",
    "Terminated (SIGTERM)." or "Hung up (SIGHUP)." then ``what`` (rich markup), and exit 130, 143 or
    129 as a shell reports them."""
    number = received_stop(stop)
    console.print(f"[yellow]{STOP_SIGNALS[number] if number else 'Interrupted'}.[/] {what}", soft_wrap=True)
    sys.exit(128 + number if number else 130)


def _kept_for_a_rerun(ctx: click.Context, error: BaseException, said: str) -> str:
    """What a failed extract's finished shards hold for its rerun (``resume``, as a stop's), or ""
    (under --overwrite :func:`_resuming_hint` says what a rerun does), as a sentence after ``said``."""
    resume = None if ctx.meta.get(OVERWRITING) else getattr(error, "resume", None)
    if not resume:
        return ""
    return f"{'' if said.rstrip().endswith(('.', '!', '?')) else '.'} {resume[0].upper()}{resume[1:]}."


def _resuming_hint(ctx: click.Context, message: str) -> str:
    """After a failure that asks for a rerun (a full disk) of a resuming command under --overwrite:
    the same command would start over."""
    return f" Note: {RESUME_WITHOUT_OVERWRITE}." if ctx.meta.get(OVERWRITING) and "rerun" in message.lower() else ""


@contextmanager
def kept_if_interrupted(what: str) -> Iterator[None]:
    """For a command's work after its result is complete on disk: Ctrl-C, SIGTERM or a failed
    write there (stdout on a full disk) says ``what`` (plain text: that result, and how to finish), not
    "nothing half-written was left" or "free some space and rerun", which sent the user to a
    rerun that refuses the finished result."""
    try:
        yield
    except KeyboardInterrupt as stop:
        stop.kept = what
        raise
    except Exception as error:
        if isinstance(error, ZsfsError) or not (isinstance(error, OSError) or is_disk_full(error)):
            raise  # ours say what to do already (is_disk_full reads the causes too)
        raise ZsfsError(f"{what_failed(error)}. {what}.") from error


ARGUMENT_FORMS = {"--store": ("STORE", "the store"), "--run": ("RUN_DIR", "the run folder"),
                  "--out": ("OUT", "the store to write")}
"""Flags that one command takes as an option and another as an argument (fit --store, info
STORE; predict --run, report RUN_DIR; extract --out, import OUT): the argument's name and what it is."""


def _form_hint(command: click.Command | None, error: click.UsageError) -> str:
    """A usage error from typing the other form of :data:`ARGUMENT_FORMS` says which form this
    command takes; a SOURCE missing because ``--ray`` took it as its address, or extract given
    many, says so."""
    params = getattr(command, "params", [])
    if isinstance(error, click.MissingParameter) and error.param is not None:
        for flag, (argument, what) in ARGUMENT_FORMS.items():
            if flag in error.param.opts:
                # (click adds the space before it)
                return f"{what.capitalize()} is an option here: zsfs {command.name} {flag} {argument} ..."
        address = error.ctx.params.get("ray") if error.ctx is not None else None
        path_like = address and (os.path.exists(address) or ("/" in address and "://" not in address))
        # a folder, a list, 'shards/{0..9}.tar' given as --ray's value; not an address such as ray://head:10001
        if error.param.human_readable_name == "SOURCE" and path_like:
            return (f"--ray took {address!r} as its cluster address: put SOURCE first (zsfs {command.name} SOURCE "
                    "--ray ...) or give the address as --ray=ADDRESS")
    if command is not None and command.name == "extract" and error.message.startswith("Got unexpected extra argument"):
        first = (error.ctx.params.get("source") if error.ctx is not None else None) or Path()
        extra = error.message.partition("(")[2].removesuffix(")").split(" ")  # (a name with a space: no hint)
        if all(name.lower().endswith(".tar") for name in [first.name, *extra]):  # shards/{000..003}.tar unquoted
            pattern = as_argument(first.parent / f"{{{first.stem}..LAST}}.tar")
            folder = as_argument(first.parent) if first.parent != Path() else "'.' (the current one)"
            return (f". zsfs extract takes one SOURCE: quote a pattern of tar shards for zsfs to expand, {pattern}, "
                    f"or pass their folder, {folder}")
        return (". zsfs extract takes one SOURCE (a shell pattern such as photos/*.jpg gives many): a folder, a list "
                "file or tar shards; put the images in a folder, or list their paths in a .txt file")
    if isinstance(error, click.NoSuchOption) and error.option_name in ARGUMENT_FORMS:
        argument, what = ARGUMENT_FORMS[error.option_name]
        if any(isinstance(p, click.Argument) and p.human_readable_name == argument for p in params):
            error.possibilities = []  # click's "did you mean" guesses another option
            return (f" {what.capitalize()} is an argument here, without {error.option_name}: "
                    f"zsfs {command.name} {argument} ...")
    return ""


def what_failed(error: BaseException) -> str:
    """What an operating-system failure was, and on which file where it says so (no advice)."""
    from zsfs.store.files import DISK_FULL

    where = getattr(error, "filename", None)
    where = f" ({where})" if where else ""
    if is_disk_full(error):
        return f"{DISK_FULL}{where}"
    return f"{getattr(error, 'strerror', None) or one_line(error)}{where}"


def describe_os_error(error: BaseException, decoding: bool = False) -> str:
    """An operating-system failure outside the store's own error handling, as one line (``decoding``:
    the command decodes in --workers processes, which each hold files open)."""
    if shared_memory_full(error):
        return ("shared memory (/dev/shm) is full, or over a file-size limit: the decoding workers hand their "
                "batches over through it; rerun with --workers 0 (decoding in the main process) or a smaller "
                "--batch-size, or give it more room (Docker: docker run --shm-size=2g)")
    if is_disk_full(error):
        return f"{what_failed(error)}: free some space and rerun"
    if out_of_open_files(error):
        return (f"too many open files: this process may open {open_files_limit()} (`ulimit -n`); raise the limit"
                f"{' or use fewer --workers' if decoding else ''}, then rerun")
    if "No usable temporary directory" in str(error):  # tempfile's probe write failed
        return f"{one_line(error)}: the disk may be full; free some space (or set TMPDIR) and rerun"
    return what_failed(error)


def open_files_limit() -> str:
    """This process's limit on open files (``ulimit -n``), as a number, or "as many as the system allows"."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return "as many as the system allows"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "as many as the system allows" if soft == resource.RLIM_INFINITY else f"{soft:,}"
