"""Run the ``zsfs`` command line in-process, as the tests do."""

from __future__ import annotations

from click.testing import CliRunner, Result


def run_cli(*args) -> Result:
    """``zsfs ARGS...`` through click's runner; exceptions other than exits propagate."""
    from zsfs.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def output_text(result: Result) -> str:
    """What the command printed, with the console's line wrapping undone (one space between words)."""
    return " ".join(result.output.split())
