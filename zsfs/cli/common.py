"""What every command shares: error reporting, stops (Ctrl-C, SIGTERM), common option types and notes
(the console and progress they print with: ``zsfs.cli.console``)."""

from __future__ import annotations

import errno
import importlib
import io
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from zsfs.cli.console import console, shown
from zsfs.devices import MODEL_PRECISIONS
from zsfs.errors import ParameterError, ZsfsError, is_disk_full, one_line, shared_memory_full
from zsfs.names import as_argument, home_expanded, names_listed_in

if TYPE_CHECKING:
    from zsfs.fit.config import FitConfig


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
            with _stops_outlive_finalisers():
                return super().invoke(ctx)
        except click.UsageError as error:
            error.message += _form_hint(self.get_command(ctx, ctx.invoked_subcommand or ""), error)
            raise
        except ZsfsError as error:
            bad_argument = isinstance(error, ParameterError)
            if bad_argument:  # named as the user typed them: the command's flags
                error = error.render(option_flags(self.get_command(ctx, ctx.invoked_subcommand or "")))
            say_error(f"{error}{_resuming_hint(ctx, str(error))}")
            sys.exit(2 if bad_argument else 1)  # 2: a usage error, as click's own checks of the options exit
        except Exception as error:  # file-system failures, however a library wraps them (h5py, polars)
            if not (isinstance(error, OSError) or is_disk_full(error) or shared_memory_full(error)):
                raise  # a bug: keep its traceback
            said = describe_os_error(error)
            say_error(f"{said}{_resuming_hint(ctx, said)}")
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
    """End a command stopped by Ctrl-C or SIGTERM (``stop``): one line, "Interrupted." or
    "Terminated (SIGTERM)." then ``what`` (rich markup), and exit 130 or 143 as a shell reports them."""
    terminated = isinstance(stop, Terminated) or _SIGTERM_RECEIVED.is_set()
    console.print(f"[yellow]{'Terminated (SIGTERM)' if terminated else 'Interrupted'}.[/] {what}", soft_wrap=True)
    sys.exit(128 + signal.SIGTERM if terminated else 130)


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


def ignore_late_stops() -> None:
    """For a program whose command has ended (its result written, its last line said): Ctrl-C and
    SIGTERM are ignored through Python's shutdown (torch, h5py, Ray: up to a second), where they
    ended the process silently with 130/143 after it said it succeeded."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `docker stop` and Slurm send before SIGKILL), raised as Ctrl-C is:
    the same clean-up (the store's lock and temporary files) and a message, not a silent end."""


@contextmanager
def sigterm_stops_cleanly() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while a command runs, unless a host program handles it;
    what was there before is put back afterwards (a program calling the command line in-process
    keeps its own). Decoding processes (forks) put the default back (``embedding._start_worker``)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _SIGTERM_RECEIVED.clear()  # a later command of this process (a host's) starts unsignalled


_SIGTERM_RECEIVED = threading.Event()
"""Set by the SIGTERM handler: Ray's C++ waits (ray.get, ray.wait) turn the handler's Terminated
into a plain KeyboardInterrupt, and the command must still stop as terminated (exit 143)."""


def _raise_terminated(number: int, frame: object) -> None:
    _SIGTERM_RECEIVED.set()
    raise Terminated()


@contextmanager
def _stops_outlive_finalisers() -> Iterator[None]:
    """Ctrl-C or SIGTERM landing in a finaliser (``__del__``, a weakref callback, a Cython
    object's dealloc: h5py and torch free objects there) raises where Python cannot raise: it was
    printed as "Exception ignored" and dropped, and the command ran on. While a command runs, such
    a stop is sent again to this process a moment later; a command that ends first stops on it
    here, inside the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, resent = sys.unraisablehook, []

    def resend(unraisable: "sys.UnraisableHookArgs") -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        if resent and resent[-1].is_alive():  # one stop is enough (the kernel, too, merges a pending signal)
            return
        number = (signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) or _SIGTERM_RECEIVED.is_set()
                  else signal.SIGINT)
        # a moment later: the hook runs inside the finaliser's caller, where a stop is still lost
        timer = threading.Timer(0.01, os.kill, (os.getpid(), number))
        timer.start()
        resent.append(timer)

    sys.unraisablehook = resend
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in resent:
            timer.join()  # its signal is handled here if not before


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


def option_flags(command: click.Command | None, values: dict | None = None) -> dict[str, str]:
    """Each option's parameter name -> the flag a user types (``max_cycles`` -> ``--cycles``; with
    the ``values`` given, a switch given False as its off flag, ``--no-accumulate``)."""
    values = values or {}
    return {p.name: p.secondary_opts[0] if values.get(p.name) is False and p.secondary_opts else p.opts[0]
            for p in getattr(command, "params", []) if isinstance(p, click.Option)}


def note_fit_options(config: "FitConfig", given: dict) -> None:
    """Say which of the options the user gave the fit's method will not read (they are not errors:
    one set of options can serve runs of both methods), and when bf16 will be emulated."""
    note_emulated_bf16(config.precision, config.device)
    unread = config.unread(given)
    if unread:
        flags = option_flags(click.get_current_context().command, given)
        typed = [flags.get(name, name) for name in unread]
        readers = "cycles method (--method cycles, --paper)" if config.method == "balanced" else None
        note = config.unread_note(typed, readers)
        console.print(f"[yellow]Note:[/] {note}.", soft_wrap=True)


class ClosedStdout(io.TextIOBase):
    """What a command writes to a stdout closed at the start (``>&-``): the system's EBADF error."""

    @staticmethod
    def error() -> OSError:
        return OSError(errno.EBADF, "Bad file descriptor (stdout is closed)")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise self.error()

    @property
    def buffer(self) -> "ClosedStdout":
        return self


def prints_on_stdout(ctx: click.Context, parameter: click.Parameter, value: object) -> object:
    """Click callback of an option whose output goes to stdout (``--json``, ``--skipped``): with
    stdout closed at the start, the write's error now, before the work (a fit ran its minutes,
    then could not print what was asked for)."""
    if value and isinstance(sys.stdout, ClosedStdout):
        raise ClosedStdout.error()
    return value


def class_names_hint(option: str, value: str) -> str:
    """For a value of ``option`` (a class file) that names no file but lists class names separated by
    commas (``--classes cat,dog``): how to pass those names from the command line; else ""."""
    names = names_listed_in(value)
    if names is None or Path(home_expanded(value)).exists():
        return ""
    return (f"; to give class names on the command line, pass them as a file: {option} "
            f"<(printf '%s\\n' {' '.join(as_argument(name) for name in names)}) (bash, zsh)")


def class_file_check(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A click callback for a class file option: class names listed in its place are a usage error
    that says how to pass them (a missing file is the class file reader's error)."""
    hint = "" if value is None else class_names_hint(param.opts[0], str(value))
    if hint:
        raise click.BadParameter(f"no file is named {shown(str(value))}{hint}")
    return value


def usage_check(module: str, check: str) -> Callable[[click.Context, click.Parameter, object], object]:
    """A click callback running ``module.check(value)`` on a given value: its ZsfsError becomes a
    usage error (exit 2) before any work. Imported when called, so `zsfs --help` stays fast."""
    def callback(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value is not None:
            try:
                getattr(importlib.import_module(module), check)(value)
            except ZsfsError as error:
                raise click.BadParameter(str(error)) from None
        return value

    return callback


def note_a_borrowed_shards_folder(master: "os.PathLike", folder: str | None = None) -> None:
    """A note when ``master`` reads its shards (vocabularies, graph) from ``folder`` (default: the
    one its shard table names), another name's: it was renamed or copied under a new name, and
    what `text` and `neighbours` write there a copy shares with its original."""
    from zsfs.store import schema
    from zsfs.store.hdf5 import shard_folders_named

    master = Path(master)
    folder = folder or min(shard_folders_named(master), default=None)
    own = schema.shard_dir(master).name
    if folder and folder != own:
        console.print(f"[yellow]Note:[/] {shown(master.name)} reads its shards from {shown(folder)}/, not {shown(own)}/: "
                      "it was renamed or copied under a new name since it was built. `zsfs text` and `zsfs neighbours` "
                      "write into that folder, which a copy shares with the original (for an independent store, copy "
                      "the store and its shards folder, both under their first names, into another folder); "
                      "`zsfs extract` and `zsfs import` update the store only under its first name.", soft_wrap=True)


def note_emulated_bf16(precision: str, device: str) -> None:
    """Say so when bf16 products are asked for on a CPU that has none in hardware: torch then
    emulates them, many times slower than fp32 (``zsfs.devices.has_fast_bf16``). Torch before
    2.10 cannot tell: nothing is said there."""
    if precision == "bf16" and device == "cpu":
        import torch

        from zsfs.devices import has_fast_bf16

        if hasattr(torch.cpu, "get_capabilities") and not has_fast_bf16(torch.device("cpu")):
            console.print("[yellow]Note:[/] this CPU has no bf16 products in hardware (AVX512-BF16, AMX, Arm BF16): "
                          "torch emulates them, many times slower than fp32 (--precision fp32; fit's auto chooses it).",
                          soft_wrap=True)


def what_failed(error: BaseException) -> str:
    """What an operating-system failure was, and on which file where it says so (no advice)."""
    from zsfs.store.files import DISK_FULL

    where = getattr(error, "filename", None)
    where = f" ({where})" if where else ""
    if is_disk_full(error):
        return f"{DISK_FULL}{where}"
    return f"{getattr(error, 'strerror', None) or one_line(error)}{where}"


def describe_os_error(error: BaseException) -> str:
    """An operating-system failure outside the store's own error handling, as one line."""
    if shared_memory_full(error):
        return ("shared memory (/dev/shm) is full, or over a file-size limit: the decoding workers hand their "
                "batches over through it; rerun with --workers 0 (decoding in the main process) or a smaller "
                "--batch-size, or give it more room (Docker: docker run --shm-size=2g)")
    if is_disk_full(error):
        return f"{what_failed(error)}: free some space and rerun"
    if "No usable temporary directory" in str(error):  # tempfile's probe write failed
        return f"{one_line(error)}: the disk may be full; free some space (or set TMPDIR) and rerun"
    return what_failed(error)


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and infinities (which would silently poison a fit), with
    the range checks of ``click.FloatRange``: the type of every float option."""

    name = "finite float"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):  # said before a range check, which would call inf out of range
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def noting_made_folders(parameter: str) -> Callable[[Callable], Callable]:
    """A command decorator: after the command, a note naming the folders it made on the way to its
    output (the parameter ``parameter``), which a typo in --out makes where an error would be
    expected (``--out /data/sotre/x.h5``)."""
    import functools

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def noting(*args, **kwargs):
            output = kwargs.get(parameter)
            first_missing = None
            if output is not None:
                folder = Path(output).absolute().parent
                while not folder.exists() and folder != folder.parent:
                    first_missing, folder = folder, folder.parent
            result = command(*args, **kwargs)
            if first_missing is not None and first_missing.is_dir():
                console.print(f"Note: made the folder {shown(first_missing)} (it was not there) for {shown(output)}.",
                              soft_wrap=True)
            return result

        return noting

    return decorate


class GivenPath(click.Path):
    """``click.Path`` that refuses an empty argument: click reads "" as the current folder, so a
    script's unset variable (``zsfs extract "$DIR"``) would run on whatever folder it runs in; and
    reads a leading ``~`` as the home folder. The type of every path argument and option."""

    def __init__(self, *args, file_in_folder: str | None = None, **kwargs) -> None:
        """``file_in_folder``: a file name to suggest where a folder is given for a file."""
        super().__init__(*args, **kwargs)
        self.file_in_folder = file_in_folder

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if isinstance(value, str) and value == "":  # " " is a name a folder can have
            self.fail("is empty (an unset shell variable?); give a path", param, ctx)
        if isinstance(value, str):
            value = home_expanded(value)
        if self.file_in_folder and not self.dir_okay and isinstance(value, (str, os.PathLike)):
            text = os.fsdecode(value)
            # a trailing slash names a folder, there or not (`--out results/` would be a file "results")
            if os.path.isdir(text) or text.endswith(("/", os.sep)):
                self.fail(f"{text!r} {'is' if os.path.isdir(text) else 'names'} a folder; give a file in it, such as "
                          f"{os.path.join(text, self.file_in_folder)}", param, ctx)
        if self.exists and isinstance(value, (str, os.PathLike)):
            # a missing or unreadable file is an error of the run, as every command's own checks say it (exit 1),
            # not a usage error (click's own check of these said "Invalid value", exit 2)
            given = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name if param else ""
            given = f" (given as {given})" if given else ""
            try:
                os.stat(value)
            except PermissionError:  # os.path.exists says False: a folder on the way cannot be searched
                raise ZsfsError(f"{os.fsdecode(value)} cannot be read (permission denied: a folder on the way cannot "
                                f"be searched){given}") from None
            except OSError:
                raise ZsfsError(f"{os.fsdecode(value)} does not exist{given}") from None
            if self.readable and not os.access(value, os.R_OK):
                raise ZsfsError(f"{os.fsdecode(value)} cannot be read (permission denied){given}")
        return super().convert(value, param, ctx)


MAX_PIXELS_OPTION = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=None,
    help="Pixel budget of one image: larger JPEGs are decoded at 1/2 to 1/8 scale, larger files of other formats "
         "are skipped with a reason [default: 89,478,485, Pillow's own limit].")
"""Shared by the commands that decode images (the default lives in ``zsfs.decode.DEFAULT_MAX_PIXELS``)."""


def model_precision_option(models: str) -> Callable:
    """``--precision`` of the commands that run image models (``models``: "the models", "the backbone")."""
    return click.option("--precision", type=click.Choice(MODEL_PRECISIONS), default="fp32", show_default=True,
                        help=f"Autocast precision of {models} on CUDA (CPU and MPS always compute in fp32).")


def note_precision_off_cuda(precision: str, device: str, computing: str) -> None:
    """Say that ``--precision`` changes nothing off CUDA (it was ignored without a word);
    ``computing``: "the models compute", "the backbone computes"."""
    if precision != "fp32" and not device.startswith("cuda"):
        console.print(f"[yellow]Note:[/] --precision {precision} is an autocast on CUDA; on {device} {computing} "
                      "in fp32.", soft_wrap=True, highlight=False)
