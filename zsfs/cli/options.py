"""The option types and checks the commands share: paths (never empty, ``~`` read as home), finite
floats, the pixel budget and model precision options, class-name hints, and the flags a user typed."""

from __future__ import annotations

import errno
import importlib
import io
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from zsfs.cli.console import console, shown
from zsfs.devices import MODEL_PRECISIONS
from zsfs.errors import ZsfsError
from zsfs.names import as_argument, home_expanded, names_listed_in


def option_flags(command: click.Command | None, values: dict | None = None) -> dict[str, str]:
    """Each option's parameter name -> the flag a user types (``max_cycles`` -> ``--cycles``; with
    the ``values`` given, a switch given False as its off flag, ``--no-accumulate``)."""
    values = values or {}
    return {p.name: p.secondary_opts[0] if values.get(p.name) is False and p.secondary_opts else p.opts[0]
            for p in getattr(command, "params", []) if isinstance(p, click.Option)}


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
            f"<(printf '%s\\n' {' '.join(as_argument(name, path=False) for name in names)}) (bash, zsh)")


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

    from zsfs.writable import missing_folders

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def noting(*args, **kwargs):
            output = kwargs.get(parameter)
            first_missing = next(iter(missing_folders(output)), None) if output is not None else None
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
        if isinstance(value, str) and value == "-":  # `--out -` made a run folder named "-", not standard output
            self.fail("'-' is not standard output or input here: zsfs reads and writes files by name (--json prints "
                      "on standard output); give a path (./- for a file so named)", param, ctx)
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
         "(progressive JPEGs too: they take all their pixels' memory at any scale) are skipped with a reason "
         "[default: 89,478,485, Pillow's own limit].")
"""Shared by the commands that decode images (the default lives in ``zsfs.decode.DEFAULT_MAX_PIXELS``)."""


def model_precision_option(models: str) -> Callable:
    """``--precision`` of the commands that run image models (``models``: "the models", "the backbone")."""
    return click.option("--precision", type=click.Choice(MODEL_PRECISIONS), default="fp32", show_default=True,
                        help=f"Autocast precision of {models} on CUDA (CPU and MPS always compute in fp32).")
