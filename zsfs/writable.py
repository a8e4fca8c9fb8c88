"""Fail before any work when an output cannot be written (read-only mount, no permission, a file
in the way), instead of after an hour of embedding or fitting."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from zsfs.errors import ZsfsError
from zsfs.outputs import _owner


def check_writable(path: str | Path, what: str, fix: str = "choose another location") -> None:
    """Check that ``path`` (a file or folder to create or update) can be written.

    Creates and removes a probe file in the nearest existing folder on its way: the operating
    system's answer, which ``os.access`` does not give for root, ACLs or read-only mounts.
    """
    path = Path(path).absolute()
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ZsfsError(f"cannot write the {what} {path}: {folder} is a file, not a folder")
    try:  # named as zsfs' longest temporary file for ``path`` is (outputs._owner): a name too long fails now
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=folder)
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise ZsfsError(f"cannot write the {what} {path}: its name is too long for the file system once zsfs "
                            f"adds its temporary files' {len(os.fsencode(f'.{_owner()}.12345678.tmp'))} bytes; "
                            "choose a shorter name") from None
        raise ZsfsError(f"cannot write the {what} {path}: {folder} is not writable "
                        f"({error.strerror or error}); {fix}") from None
    os.close(handle)
    os.unlink(probe)
