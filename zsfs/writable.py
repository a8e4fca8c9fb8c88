"""Fail before any work when an output cannot be written (read-only mount, no permission, a file
in the way), instead of after an hour of embedding or fitting."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from zsfs.errors import ZsfsError
from zsfs.outputs import temporary_name


def check_writable(path: str | Path, what: str, fix: str = "choose another location", *,
                   beside: Iterable[str] | None = None) -> None:
    """Check that ``path`` (a file or folder to create or update) can be written.

    Creates and removes a probe file in the nearest existing folder on its way: the operating
    system's answer, which ``os.access`` does not give for root, ACLs or read-only mounts.
    ``beside``: the names the writer creates next to ``path`` on the way (a store's temporary
    file, lock and shards folder) [the temporary name of ``zsfs.outputs``' writers]; one longer
    than the file system takes is refused now, not once the work is done.
    """
    path = Path(path).absolute()
    if path.name == "..":  # (a fit ran to its end, then found "dd/sub/.." there already, and left dd/sub made)
        raise ZsfsError(f"cannot write the {what} {path}: a name ending in '..' names a folder above, not a new "
                        "one; give the new one's own name")
    missing = missing_folders(path)
    for folder in missing:
        if os.path.islink(folder):  # a share not mounted: making the folders failed with "File exists" after the work
            raise ZsfsError(f"cannot write the {what} {path}: {folder} is {_unfollowed_link(folder)}, or {fix}")
    folder = missing[0].parent if missing else path.parent
    if not folder.is_dir():
        raise ZsfsError(f"cannot write the {what} {path}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".zsfs-write-check-", dir=folder)
    except OSError as error:
        # ENOENT for a folder that is there: a file system that makes no files (/proc, /sys)
        reason = "it takes no new files" if error.errno == errno.ENOENT and folder.is_dir() else error.strerror or error
        raise ZsfsError(f"cannot write the {what} {path}: {folder} is not writable ({reason}); {fix}") from None
    os.close(handle)
    os.unlink(probe)
    limit = _longest_name(folder)
    made = path.relative_to(folder).parts  # the folders made on the way, then the output itself
    too_long = [name for name in made if len(os.fsencode(name)) > limit]
    if too_long:  # (fit and report found it once their work was done)
        raise ZsfsError(f"cannot write the {what} {path}: the name {too_long[0]} is too long for the file system, "
                        f"which takes names of {limit} bytes at most; choose a shorter name")
    longest = max(len(os.fsencode(name)) for name in ([temporary_name(path)] if beside is None else beside))
    if longest > limit:
        raise ZsfsError(f"cannot write the {what} {path}: its name is too long for the file system, which takes "
                        f"names of {limit} bytes at most, as zsfs also writes a {longest}-byte name beside it (a "
                        "temporary file or a shards folder); choose a shorter name")


def _unfollowed_link(link: Path) -> str:
    """Why the link ``link`` leads nowhere, and what mends it: a link to nothing, or one whose target
    cannot be reached."""
    try:
        os.stat(link)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ENOTDIR):  # EACCES, ELOOP, ...
            return f"a link that cannot be followed ({error.strerror}) ({os.readlink(link)}); mend the link"
    return f"a link to nothing ({os.readlink(link)}); mount or make what it names"


def missing_folders(path: str | Path) -> list[Path]:
    """The folders on the way to ``path`` (made absolute) that are not there, outermost first: what
    writing it makes."""
    missing = []
    folder = Path(path).absolute().parent
    while not os.path.exists(folder) and folder != folder.parent:  # (Path.exists raised for a name too long)
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def refuse_input_as_output(output: str | Path, inputs: Iterable[tuple[str, str | Path | None]],
                           written: str = "store") -> None:
    """ZsfsError when ``output`` is one of the files the command reads (``(what, path)`` pairs; by
    any name, links too): the ``written`` file (a store, a predictions table) would replace that
    input, and a store's ``--overwrite`` would do it."""
    output = Path(output)
    if not output.is_file():  # a new file replaces nothing
        return
    for what, given in inputs:
        try:
            same = given is not None and Path(given).is_file() and os.path.samefile(output, given)
        except OSError:
            continue
        if same:
            example = (output.with_suffix(".h5").name if written == "store"
                       else f"{output.stem}-{written.split()[0]}{output.suffix}")
            raise ZsfsError(f"{output} is the {what} this command reads, not a place for the {written} it writes; "
                            f"give the {written} another name (e.g. {example})")


def _longest_name(folder: Path) -> int:
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer: the usual limit
        return 255
    return limit if limit > 0 else 255  # -1: no limit known; 0 from some FUSE and 9p mounts
