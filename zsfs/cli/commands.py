"""The list of commands, in the order ``zsfs --help`` shows them."""

from __future__ import annotations

from zsfs.cli import extract, fit, oodbench, predict, report, store

ALL = [*extract.COMMANDS, *store.COMMANDS, *fit.COMMANDS, *oodbench.COMMANDS, *predict.COMMANDS, *report.COMMANDS]
