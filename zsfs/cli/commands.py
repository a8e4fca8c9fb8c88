"""The list of commands, in the order ``zsfs --help`` shows them."""

from __future__ import annotations

from zsfs.cli import extract, fit, oodbench, predict, store

ALL = [*extract.COMMANDS, *store.COMMANDS, *fit.COMMANDS, *oodbench.COMMANDS, *predict.COMMANDS]
