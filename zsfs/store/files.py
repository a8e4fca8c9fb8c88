"""Crash-safe store files: exclusive temporary files, all-or-nothing publication, disk-full errors
(the writer lock: ``zsfs.store.locks``).

Every file of a store is written whole under a fresh temporary name in its final folder, then
fsynced, renamed into place and the folder fsynced: a full disk, kill -9 or power loss leaves
either the old file or the complete new one, never a mix.

HDF5 cannot be trusted with a failed write: after one, its C code leaves the file in a state
where closing it crashes the process (segfault) or spills "Exception ignored" screens from
garbage collection. So files are written through :class:`WriteSink`, a Python file object that
never reports a failure to HDF5; it records the first error instead, keeps what could not be
written in memory (so HDF5 can read back its own metadata), and the caller raises the error
after a clean close and deletes the temporary file.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from zsfs.durable import current_umask, fsync_folder
from zsfs.errors import ZsfsError, is_disk_full
from zsfs.signals import held_signals
from zsfs.store import schema
from zsfs.store.locks import check_store_lock, lock_path, written_elsewhere


# -- disk-full errors --------------------------------------------------------------------
def write_failed(error: BaseException) -> bool:
    """Errors that mean the file system refused a write (not a bug to show as a traceback)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and is_disk_full(error))


DISK_FULL = "the disk is full (or a file-size limit was reached)"
"""How every message names ENOSPC, EDQUOT and EFBIG (see :func:`is_disk_full`)."""


def disk_error(error: BaseException, what: str, *, resume: str = "the same command") -> ZsfsError:
    """A failed write as one actionable line (a full disk is the usual cause)."""
    if is_disk_full(error):
        cause, advice = DISK_FULL, "free some space and rerun"
    else:
        cause, advice = (getattr(error, "strerror", None) or str(error)), "fix that and rerun"
        # the folder or file that could not be made (a file in its place, say); of a rename, its target
        name = getattr(error, "filename2", None) or getattr(error, "filename", None)
        if isinstance(name, (str, bytes, os.PathLike)):
            name = os.fsdecode(name)
            # a temporary file that could not be made, or was removed since: its folder is what the user fixes
            cause += f" ({os.path.dirname(name) if name.endswith(schema.TMP_SUFFIX) else name})"
    # "its previous content" is the file's: with --overwrite the old store was removed on purpose first
    return ZsfsError(f"could not write {what}: {cause}. Nothing half-written was kept (a file it replaces keeps its "
                     f"previous content); {advice} {resume}.")


# -- temporary files and publication -----------------------------------------------------
def names_beside(master: Path) -> list[str]:
    """The names a store's writer creates next to ``master``: its temporary file, its lock and its
    shards folder (``zsfs.writable.check_writable``)."""
    return [temp_file_name(master), lock_path(master).name, schema.shard_dir(master).name]


def damaged_master_advice(master: Path) -> str:
    """What to do about a master that cannot be read beside a shards folder holding shard files:
    a rebuild reuses them, where ``--overwrite`` would embed every image again ("" without them)."""
    from zsfs.names import as_argument

    shards = schema.shard_dir(master)
    if master.suffix.lower() != schema.SHARD_SUFFIX or not any(shards.glob(schema.SHARD_GLOB)):
        return ""  # photos.csv / photos.tar beside photos.shards/: the store's source, not its master
    return (f"; if it is the damaged master of the store in {shards.name}/, remove it (`rm {as_argument(master)}`) "
            "and rerun the extract or import that made it: its finished shards are reused")


def _temp_prefix(final: Path) -> str:
    return f".{final.name}."


def temp_file_name(final: Path) -> str:
    """A name as long as the one :func:`temp_file` gives ``final``'s temporary file."""
    return f"{_temp_prefix(final)}{'x' * 8}{schema.TMP_SUFFIX}"  # mkstemp's random part: 8 characters


def temp_file(final: Path) -> Path:
    """A new empty file beside ``final``, created exclusively (``O_EXCL``, random name, mode
    0600): a link planted at a predictable name cannot redirect the write elsewhere."""
    handle, name = tempfile.mkstemp(dir=final.parent, prefix=_temp_prefix(final), suffix=schema.TMP_SUFFIX)
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the store from others
    finally:
        os.close(handle)
    return Path(name)


def temp_files_of(final: Path) -> list[Path]:
    """Temporary files that interrupted writes of ``final`` left behind."""
    legacy = final.with_name(final.name + schema.TMP_SUFFIX)  # the fixed name of format 1 writers
    # listed, not globbed: a store name with [, ] or * would be read as a pattern, matching other
    # stores' files and missing its own
    prefix = _temp_prefix(final)
    try:
        names = os.listdir(final.parent)
    except OSError:  # no folder yet, or one that can be written but not listed
        names = []
    found = [final.parent / name for name in names
             if name.startswith(prefix) and name.endswith(schema.TMP_SUFFIX)
             and "." not in name[len(prefix):-len(schema.TMP_SUFFIX)]]  # mkstemp's random part: not run.h5.v2.h5's
    return found + ([legacy] if legacy.is_file() or legacy.is_symlink() else [])


def publish(tmp: Path, final: Path) -> None:
    """Rename the complete, fsynced ``tmp`` over ``final`` and make the rename durable."""
    os.replace(tmp, final)
    fsync_folder(final.parent)


def remove_file(path: Path) -> None:
    """Delete ``path`` (if present) durably."""
    if path.exists() or path.is_symlink():
        path.unlink()
        fsync_folder(path.parent)


class WriteSink(io.RawIOBase):
    """The file HDF5 writes through: see the module docstring. ``error`` is the first failure."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._handle = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        self._position = 0
        self.error: OSError | None = None
        self._unwritten: list[tuple[int, bytes]] = []  # (offset, bytes) the disk refused

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size()}[whence]
        self._position = base + offset
        return self._position

    def _size(self) -> int:
        ends = [offset + len(data) for offset, data in self._unwritten]
        return max([os.fstat(self._handle).st_size, *ends])

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer).cast("B")
        count = os.preadv(self._handle, [view], self._position)
        for offset, data in self._unwritten:  # later writes win, as on disk
            low, high = max(offset, self._position), min(offset + len(data), self._position + len(view))
            if low < high:
                view[low - self._position : high - self._position] = data[low - offset : high - offset]
                count = max(count, high - self._position)
        self._position += count
        return count

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")  # no copy while the disk accepts the data
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._handle, view[done:], self._position + done)
            except OSError as error:
                self.error = error
        if self.error is not None:
            self._unwritten.append((self._position, bytes(view)))
        self._position += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._position if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._handle, size)
            except OSError as error:
                self.error = error
        return size

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        if self.error is None:
            try:
                os.fsync(self._handle)
            except OSError as error:
                self.error = error

    def close(self) -> None:
        if not self.closed:
            os.close(self._handle)
            self._unwritten.clear()
        super().close()


@contextmanager
def new_hdf5(final: Path, what: str) -> Iterator[h5py.File]:
    """Yield a new HDF5 file to fill; it replaces ``final`` only once complete and durable.

    On any error (a full disk, Ctrl-C, a bug) the temporary file is removed and ``final`` keeps
    its previous content; write failures become one ``ZsfsError`` line. The block runs with
    Ctrl-C and SIGTERM held (``held_signals``): only write in it, compute before.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_file(final)
    except OSError as error:  # a full disk or inode table, a read-only mount: nothing was written yet
        raise disk_error(error, what) from None
    sink = None
    try:
        sink = WriteSink(tmp)
        with held_signals(), h5py.File(sink, "w") as file:  # HDF5 calls the sink's methods
            _sinks[file.id] = sink
            try:
                yield file
            finally:
                del _sinks[file.id]
            check_sink(sink)
        sink.sync()
        check_sink(sink)
        sink.close()
        publish(tmp, final)
    except BaseException as error:
        if sink is not None:
            sink.close()
        tmp.unlink(missing_ok=True)
        failure = sink.error if sink is not None and sink.error is not None else error
        if failure is not error or write_failed(error):
            raise disk_error(failure, what) from None
        raise


def check_sink(sink: WriteSink) -> None:
    """Stop a long write as soon as the disk refused part of it (the caller reports it)."""
    if sink.error is not None:
        raise sink.error


_sinks: dict = {}  # h5py FileID -> the WriteSink under it, while new_hdf5 writes it


def check_written(file: h5py.File) -> None:
    """Raise the disk's refusal as soon as it happens, so that a long write (an index of
    gigabytes) stops instead of keeping the rest in memory. Files not from new_hdf5 pass."""
    sink = _sinks.get(file.id)
    if sink is not None:
        check_sink(sink)


def leftover_temp_files(master: Path, data_dir: Path) -> list[Path]:
    """The temporary files that stopped writes of a store left (a temporary master is as large as
    the master), while no process writes it: what :func:`remove_leftover_temp_files` removes."""
    return [] if written_elsewhere(master) else _temp_files_of_store(master, data_dir)


def _temp_files_of_store(master: Path, data_dir: Path) -> list[Path]:
    return temp_files_of(master) + sorted(data_dir.glob("*" + schema.TMP_SUFFIX) if data_dir.is_dir() else [])


def remove_leftover_temp_files(master: Path, data_dir: Path) -> None:
    """Remove what killed writes of a store left behind: temporary masters beside ``master``, and
    every temporary file in its shards folder ``data_dir`` (shards, vocabularies, the graph).
    Call it only under the store's lock, which every writer of these files holds: then none of
    them is being written."""
    for path in _temp_files_of_store(master, data_dir):
        path.unlink(missing_ok=True)


# -- repairs and updates -----------------------------------------------------------------
REPAIR = "rerun the command that made the store: it writes the missing shards again, and only those"
"""How a store with missing or damaged shard files is repaired (StoreWriter.pending_shards)."""


UPDATE_FIX = "make it writable, or copy the store (the .h5 file and its shards folder) to a place that is"
"""What to do when a store's folder cannot be written and the store is to be updated (another
location would build it anew)."""


def check_store_update(master: Path, data_dir: Path, adding: Path | None = None) -> None:
    """Fail now, before long work, if ``adding`` (a file in the store's shards folder ``data_dir``:
    a vocabulary; by default the neighbour graph) cannot be added to an existing store, or another
    process writes it."""
    check_store_writable(master, data_dir, adding)
    check_store_lock(master)


def check_store_writable(master: Path, data_dir: Path, adding: Path | None = None) -> None:
    """The folder checks of :func:`check_store_update`, without its lock: the lock file would be
    created in the master's folder, which fails there already when that is read-only."""
    from zsfs.writable import check_writable

    check_writable(master, "store", UPDATE_FIX, beside=[lock_path(master).name])  # an update writes only its lock there
    adding = data_dir / schema.GRAPH_FILE if adding is None else adding
    check_writable(adding, "store", UPDATE_FIX, beside=[temp_file_name(adding)])
