"""Result folders (fit runs, ood-bench reports) and files: complete or absent, never over earlier
results; synced to the disk before they are renamed into place, so a power loss cannot publish
half of one."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from zsfs.devices import check_polars_usable
from zsfs.errors import ZsfsError, is_disk_full
from zsfs.durable import current_umask, fsync_file, fsync_folder, fsync_tree
from zsfs.names import json_text

if TYPE_CHECKING:
    import polars as pl


class FolderExistsError(ZsfsError):
    """The result folder exists already (results are never overwritten)."""


def check_new_folder(path: str | Path) -> None:
    """Fail before any work when ``path`` exists (results are never overwritten), a link to
    nothing included (the folder could not be put in its place), or another process of this host
    is filling it (:func:`new_folder`): the later would find it taken only at its end."""
    if os.path.lexists(path):
        what = "is a link to nothing" if not os.path.exists(path) else "already exists"
        raise FolderExistsError(f"{path} {what}; choose another folder (results are never overwritten)")
    writer = writer_of(path)
    if writer is not None:
        raise FolderExistsError(f"another zsfs process (pid {writer}) is writing {path} now; choose another folder "
                                "(results are never overwritten)")


def folder_taken(path: str | Path) -> bool:
    """Whether :func:`check_new_folder` would refuse ``path``: it exists (a link to nothing too),
    or another process of this host is filling it."""
    return os.path.lexists(path) or writer_of(path) is not None


def writer_of(path: str | Path) -> int | None:
    """The pid of another live process of this host whose :func:`new_folder` is filling ``path`` now."""
    path = Path(path).absolute()
    try:
        names = os.listdir(path.parent)
    except OSError:  # no folder yet (nothing is written there), or one that cannot be listed
        return None
    host, own = _host(), os.fsencode(path.name)
    for name in names:
        match = _TMP_NAME.fullmatch(name)
        if match is None or match["host"] != host or int(match["pid"]) == os.getpid() \
                or not os.path.isdir(path.parent / name):
            continue
        written = os.fsencode(name[1:match.start("pid") - 1])  # the name, cut when long (_temporary_prefix)
        cut = len(os.fsencode(name)) == _NAME_BYTES and own.startswith(written)
        if (written == own or cut) and _writing(path.parent / name, int(match["pid"])):
            return int(match["pid"])
    return None


@contextmanager
def new_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; it becomes ``path`` when the block succeeds.

    On any error (Ctrl-C included) the temporary folder is removed and ``path`` stays absent.
    A process killed outright (kill -9, power loss) cannot clean up: its temporary folder is
    named after its host and pid, and the next call into the same parent removes it once that
    process is gone (and no process holds it: :func:`_held`).
    """
    path = Path(path).absolute()
    check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        with _held(os.open(tmp, os.O_RDONLY)):
            # mkdtemp's 0700 would hide results from the user's group; the setgid bit a group folder
            # passed on stays, or the files written into it would take the user's own group
            os.chmod(tmp, 0o777 & ~current_umask() | os.stat(tmp).st_mode & stat.S_ISGID)
            yield tmp
            fsync_tree(tmp)
            # os.rename replaces an *empty* folder on POSIX: check again right before it.
            check_new_folder(path)
            try:
                os.rename(tmp, path)
            except OSError:  # another process made it since (ENOTEMPTY / EEXIST): say so, as before any work
                check_new_folder(path)
                raise
            try:
                fsync_folder(path.parent)
            except KeyboardInterrupt as stop:  # the folder is in place, whole: a stop must not say nothing was
                stop.kept = f"{path} was written in full before that"  # (the command line's line: kept_if_interrupted)
                raise
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_result(error, tmp, path)
        raise


@contextmanager
def _held(descriptor: int) -> Iterator[None]:
    """An exclusive flock on the open ``descriptor`` of a temporary file or folder for the block
    (closed after): a process in another pid namespace that shares this host name (containers on
    one machine and one volume) cannot tell from the pid in the name that its writer is alive,
    but sees the lock (:func:`_in_use`)."""
    import fcntl

    try:
        with suppress(OSError):  # a file system without flock: the pid in the name is all there is
            # blocking: another process's probe (:func:`_in_use`) holds it for an instant, and an entry
            # left unlocked would pass for a killed writer's once it is LOCKED_FROM old
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


LOCKED_FROM = 60.0
"""Seconds after which a temporary entry's writer holds its lock (:func:`_held`) for sure: the lock
decides, not the pid in the name, which another process may have been given since (failure test)."""


def _writing(entry: Path, pid: int) -> bool:
    """Whether the writer of the temporary ``entry`` of this host (``pid``, from its name) is alive."""
    held = _in_use(entry)
    return _alive(pid) if held is None else held


def _in_use(entry: Path) -> bool | None:
    """Whether a live process holds ``entry`` (:func:`_held`): True, False where it is free, None where
    this cannot tell (a file system without flock, or an entry just unlocked and so maybe not yet locked)."""
    import fcntl

    try:
        status = os.lstat(entry)
        if not (stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode)):
            return False  # no writer's (a FIFO planted under such a name would block the open below)
        if stat.S_ISDIR(status.st_mode) and status.st_uid == os.geteuid() and not status.st_mode & stat.S_IRUSR:
            os.chmod(entry, stat.S_IMODE(status.st_mode) | stat.S_IRWXU)  # ours, made unreadable since: opened
        descriptor = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # gone meanwhile, or not ours to open: not to be removed by us either way
        return os.path.lexists(entry)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no flock here: the pid decides
        return None
    finally:
        os.close(descriptor)
    return None if time.time() - status.st_mtime <= LOCKED_FROM else False


def _name_the_result(error: BaseException, tmp: Path, path: Path) -> None:
    """Make a failed write name the file the user asked for (``path``, or its file under
    ``tmp``'s name), not the hidden temporary one, nor none (polars' and torch's writers name none)."""
    failed = getattr(error, "filename", None)
    if isinstance(failed, (str, os.PathLike)) and Path(failed).absolute().is_relative_to(tmp):
        error.filename = str(path / Path(failed).absolute().relative_to(tmp))
    elif failed is None and (isinstance(error, OSError) or is_disk_full(error)):
        with suppress(AttributeError):  # an exception type without attributes of its own
            error.filename = str(path)


_TMP_NAME = re.compile(r"\..+\.(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp", re.DOTALL)
"""``.<name>.<pid>-<host>.<random>.tmp``: a temporary folder of :func:`new_folder`. Read with
``fullmatch`` and DOTALL: a name may hold a newline (``$`` would also take a name ending in one)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_name(path: Path) -> str:
    """A name as long as those of the temporary files and folders written on the way to ``path``."""
    return f"{_temporary_prefix(path)}{'x' * 8}.tmp"  # mkstemp's and mkdtemp's random part: 8 characters


_NAME_BYTES = 255
"""The longest file name of the usual file systems (NAME_MAX)."""


def _temporary_prefix(path: Path) -> str:
    """``.<name>.<pid>-<host>.``: what :data:`_TMP_NAME` reads back; ``<name>`` cut to the bytes
    that leave the whole temporary name within 255, so that any name the file system takes for
    ``path`` can be written (the pid and the random part keep it apart from another's)."""
    owner = _owner()
    room = _NAME_BYTES - len(os.fsencode(f"..{owner}.{'x' * 8}.tmp"))
    return f".{os.fsdecode(os.fsencode(path.name)[:max(room, 1)])}.{owner}."


def _owner() -> str:
    return f"{os.getpid()}-{_host()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_folders(parent: str | Path) -> list[Path]:
    """Remove the temporary folders (and files) that killed writers left in ``parent``.

    Only folders made on this host by a process that no longer exists and that no process holds
    (:func:`_held`): a folder of a live process (in another container sharing the host name too,
    or of another host sharing the file system) is never touched. Returns those removed.
    """
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(Path(parent).iterdir())
    except PermissionError:  # a folder one may write to but not list (a drop box): nothing to find
        return removed
    for entry in entries:
        match = _TMP_NAME.fullmatch(entry.name)
        if match is None or match["host"] != host or entry.is_symlink() or _writing(entry, int(match["pid"])):
            continue
        if entry.is_dir():
            _remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _remove_tree(folder: Path) -> None:
    """``shutil.rmtree``, also where a folder inside is this user's but no longer readable or
    writable by them (a chmod since): each is given its owner's rights back and removed. Errors
    are ignored: another process may be removing the same folder."""
    def unlock(function, path, error) -> None:
        error = error[1] if isinstance(error, tuple) else error  # rmtree's onerror: sys.exc_info()
        if not isinstance(error, PermissionError):
            return
        for locked in {os.path.dirname(path), path}:  # the folder that could not be listed, or emptied
            with suppress(OSError):
                status = os.lstat(locked)
                if stat.S_ISDIR(status.st_mode) and status.st_uid == os.geteuid():
                    os.chmod(locked, stat.S_IMODE(status.st_mode) | stat.S_IRWXU)
        with suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                _remove_tree(Path(path))  # its own insides may be locked too
            else:
                os.unlink(path)

    shutil.rmtree(folder, onerror=unlock)


def refuse_read_only_file(path: str | Path, what: str) -> None:
    """ZsfsError when ``path`` is a file nobody may write (mode without write bits): a rename
    would replace it all the same, where a user made it read-only to keep it."""
    path = Path(path)
    if path.is_file() and not path.stat().st_mode & 0o222:
        raise ZsfsError(f"cannot write the {what} {path}: it is read-only, and zsfs does not replace a read-only "
                        "file; make it writable (chmod u+w) or choose another name")


def written_file(path: str | Path) -> Path:
    """The file that writing ``path`` replaces: ``path`` (absolute), or the file a link there
    names: replacing the link itself would leave the file it names stale, perhaps on another disk.
    A folder that cannot be searched is left to the writability check to name."""
    path = Path(path).absolute()
    try:
        if not path.is_symlink():
            return path
        owner = path.lstat().st_uid
    except OSError:
        return path
    if hasattr(os, "geteuid") and owner != os.geteuid():  # (the kernel's protected_symlinks rule, in any folder)
        # a link planted in a shared run folder (report.html) would have any file of this user's replaced
        raise ZsfsError(f"{path} is a link of another user (uid {owner}) to {os.path.realpath(path)}; zsfs writes "
                        "only through the user's own links: give the file's own name, or remove the link")
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops where links go round in a loop
        raise ZsfsError(f"{path} is a link that leads back to itself (through {target}); give a file's own name")
    return target


def suffix_rule(path: Path, suffixes: "Sequence[str]") -> str:
    """What a refusal of ``path``'s suffix says: the ``suffixes`` it must end in, and, for a name that
    is one of them alone (``.csv``, a hidden file's name with no suffix), that a name comes first."""
    rule = f"its name must end in {' or '.join(suffixes) if len(suffixes) < 3 else 'one of ' + ', '.join(suffixes)}"
    return rule + (f", after a name ({path.name} alone names a hidden file with no suffix)"
                   if path.name.lower() in suffixes else "")


def check_output_names(path: str | Path, check: "Callable[[Path], None]") -> Path:
    """``check`` (which raises on a name it refuses) of ``path`` and, for a link, of the file it
    names too (a link named page.html to a store must not replace the store); returns that file."""
    path, target = Path(path), written_file(path)
    check(path)
    if target != path.absolute():
        try:
            check(target)
        except ZsfsError as error:
            raise ZsfsError(f"{path} links to {target}; {error}") from None
    if os.path.isdir(target):  # not Path.is_dir: an unsearchable folder is the writability check's to name
        raise ZsfsError(f"{path} is a folder{'' if target == path.absolute() else f' ({target})'}; give a file name")
    kind = special_file_kind(target)
    if kind is not None:  # the written file is renamed over the name: a reader waiting on a pipe would never hear
        raise ZsfsError(f"{path} is {kind}{'' if target == path.absolute() else f' ({target})'}, which zsfs would "
                        "replace with a file (it writes a new file, then renames it into place); give a file name")
    return target


def special_file_kind(path: Path) -> str | None:
    """'a named pipe', 'a device', 'a socket' for such a file at ``path``; None for anything else."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


@contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block succeeds,
    so readers never see half a file, and keeps its permissions. On any error it is removed and
    ``path`` keeps its old content; one left by a killed process is removed as :func:`new_folder`'s
    are. A read-only ``path`` is refused (:func:`refuse_read_only_file`); a link is written
    through (:func:`written_file`)."""
    path = written_file(path)
    refuse_read_only_file(path, "file")
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~current_umask()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(path.parent)
    handle, name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with _held(handle):
            yield tmp
            fsync_file(tmp)  # before the chmod: a umask without the owner's read bit could not reopen it
            os.chmod(tmp, mode)  # mkstemp's 0600: the replaced file's, or like any file the user creates instead
            os.replace(tmp, path)
            fsync_folder(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        _name_the_result(error, tmp, path)
        raise


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``path`` through :func:`replacing_file`."""
    with replacing_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> "pl.DataFrame":
    """A parquet file as a polars DataFrame (only those of ``columns`` it has, when given).
    Read through a Python file: polars takes only UTF-8 paths."""
    import polars as pl

    check_polars_usable(f"read {path}")
    with open(path, "rb") as handle:
        if columns is not None:
            present = set(pl.read_parquet_schema(handle))
            columns = [name for name in columns if name in present]
            if not columns:  # polars 1.20 refused an empty selection ("index_columns([]) not allowed")
                return pl.DataFrame()
            handle.seek(0)
        return pl.read_parquet(handle, columns=columns)


TABLE_FORMATS = ("csv", "parquet", "json")


def write_table(frame: "pl.DataFrame", path: str | Path, table_format: str = "parquet") -> None:
    """Write a polars table as csv, parquet or json, through a Python file (polars takes only
    UTF-8 paths). A failed write raises the OSError the system gave: polars' writers report a
    full disk without its errno (csv "[Errno None]", parquet a ComputeError), or, json, not at
    all (a cut file and no error)."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table_format must be one of {TABLE_FORMATS}, not {table_format!r}")
    check_polars_usable(f"write {path}")  # before the file is opened: nothing left half made
    with open(path, "wb") as handle:
        sink = _FirstWriteError(handle)
        try:
            getattr(frame, f"write_{table_format}")(sink)
        except BaseException as error:  # polars' own errors, and its Rust panics (not Exceptions)
            if sink.error is not None and not isinstance(error, KeyboardInterrupt):
                raise sink.error from None
            raise
        if sink.error is not None:
            raise sink.error


class _FirstWriteError(io.RawIOBase):
    """A writable file that keeps the first OSError of its writes (and fails every later one)."""

    def __init__(self, handle: BinaryIO):
        super().__init__()
        self.handle, self.error = handle, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self.handle.write(data)
            except OSError as error:
                self.error = error
        raise self.error


def write_json(path: str | Path, value: object) -> None:
    """:func:`strict_json` text, written to ``path``."""
    Path(path).write_text(strict_json(value) + "\n")


def strict_json(value: object) -> str:
    """Indented strict JSON (what duckdb, polars and pyarrow read): numpy values become plain ones,
    NaN/inf null, and a string that is not UTF-8 text (a store's or run's path with an undecodable
    byte: a lone surrogate, which those readers refuse) is escaped as ``zsfs info --json`` writes
    it, its JSON pointer listed under ``escaped`` (an object's member added only when some was:
    :func:`zsfs.runs.load_run` reads the names back)."""
    escaped: list[str] = []
    written = json_text(_plain(value), escaped=escaped)
    if escaped and isinstance(written, dict):
        written = {**written, "escaped": escaped}
    return json.dumps(written, indent=2, allow_nan=False)


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
