"""Writes that survive a crash or a power loss: content synced before the rename that publishes
it, then the rename itself (its folder) synced. Used by the store and by every result file."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process' umask (files made through ``mkstemp``/``mkdtemp`` get their mode from it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_file(path: str | Path) -> None:
    """Write ``path``'s content to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(handle)


def fsync_tree(folder: str | Path) -> None:
    """Write every file below ``folder`` to the disk, then each folder's entries (before ``folder``
    is renamed into place: a power loss must not publish a folder of empty files)."""
    for directory, _, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(directory, name)):
                fsync_file(os.path.join(directory, name))
        fsync_folder(directory)
