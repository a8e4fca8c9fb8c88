"""The ``zsfs`` program: ``python -m zsfs``, and the installed script (pyproject.toml's entry point).

Light on purpose: a Ctrl-C while the command line's modules load (click, numpy, the commands: a few
tenths of a second) ends the program as a stop during a command does, in one line and exit 130; it
was a traceback of the import."""

import sys


def run() -> None:
    try:
        from zsfs.cli import run as command_line
    except KeyboardInterrupt:
        if sys.stderr is not None:  # (closed at the start: 2>&-)
            print("Interrupted. Nothing half-written was left.", file=sys.stderr)
        sys.exit(130)
    command_line()


if __name__ == "__main__":
    run()
