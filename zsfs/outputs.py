"""Result folders (fit runs, ood-bench reports): complete or absent, never over earlier results."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from zsfs.errors import ZsfsError


def check_new_folder(path: str | Path) -> None:
    """Fail before any work when ``path`` exists (results are never overwritten)."""
    if Path(path).exists():
        raise ZsfsError(f"{path} already exists; choose another --out (results are never overwritten)")


@contextmanager
def new_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it becomes ``path`` when the block succeeds.

    On any error (Ctrl-C included) the temporary folder is removed and ``path`` stays absent.
    """
    path = Path(path).absolute()
    check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        # os.rename replaces an *empty* folder on POSIX: check again right before it.
        check_new_folder(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | Path, value) -> None:
    """Indented JSON; numpy values become plain ones and NaN/inf become null (valid JSON)."""
    Path(path).write_text(json.dumps(_plain(value), indent=2, allow_nan=False) + "\n")


def _plain(value):
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # paths and the like
