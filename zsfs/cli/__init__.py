"""Command line: one module per group of commands, each only parses, checks and presents.

The work itself lives in the library (``zsfs.extract``, ``zsfs.fit.run``, ...), so every
command is also a plain function call for notebooks and tests.
"""

from __future__ import annotations

import errno
import os
import sys

import click

from zsfs import __version__
from zsfs.cli.group import ZsfsGroup
from zsfs.cli.options import ClosedStdout
from zsfs.cli.stops import ignore_late_stops


@click.group(cls=ZsfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zsfs")
def main() -> None:
    """zsfs: label and OOD-score an unlabeled image folder from class names alone.

    \b
    Stage 1 (GPU, once per collection):  zsfs extract imagenet/ --device cuda
    Stage 2 (CPU, many times per store): zsfs fit --store imagenet.h5 --k 16
    """
    from zsfs.decode import quiet_decoder_warnings

    quiet_decoder_warnings()  # decoding workers set it too (embedding._start_worker)


def run() -> None:
    """The ``zsfs`` program (its entry point): :func:`main`, then a stop during Python's shutdown ignored.

    A standard stream closed at the start (``2>&-``, ``>&-``) is None to Python, and every write to
    it an AttributeError: a closed stderr drops the progress and messages and the work is done
    (it stopped every command, silently); an option that prints on a closed stdout (--json, --skipped)
    is refused before the work with the write's error, as a shell's own commands fail ("Bad file
    descriptor"; see ``prints_on_stdout``), and so is --help's or --version's text."""
    for descriptor in (0, 1, 2):  # the system's too: the first file opened would get the number, and C
        try:                      # libraries' and child processes' writes to it would land in that file
            os.fstat(descriptor)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != descriptor:
                os.dup2(devnull, descriptor)
                os.close(devnull)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    try:
        main()
    except OSError as error:  # click's own --help and --version text, written before any command runs
        if error.errno != errno.EBADF or not isinstance(sys.stdout, ClosedStdout):
            raise
        print(f"Error: {error.strerror}", file=sys.stderr)
        sys.exit(1)
    finally:
        ignore_late_stops()


def _register() -> None:
    # Imported here so that each command module can import ``main`` helpers freely.
    from zsfs.cli import commands

    for command in commands.ALL:
        main.add_command(command)


_register()
