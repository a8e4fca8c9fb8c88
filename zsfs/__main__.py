"""``python -m zsfs``: the ``zsfs`` command line."""

from zsfs.cli import run

run()
