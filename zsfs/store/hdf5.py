"""Small HDF5 helpers shared by the store's writers and its readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from zsfs.errors import StoreError, one_line
from zsfs.names import name_bytes
from zsfs.outputs import special_file_kind
from zsfs.store import schema

STRING = h5py.string_dtype("utf-8")
DAMAGED_FILE_ERRORS = (OSError, RuntimeError, SystemError, KeyError, ValueError, TypeError, AttributeError)
"""What h5py raises on reading a file whose bytes are damaged: a bad checksum or a cut file
(OSError), damaged metadata met while visiting links (RuntimeError; SystemError when met inside the
visit's own lock), an object or attribute that no longer opens (KeyError), a garbled name, string
or type (ValueError, TypeError, AttributeError: a dataset read back as a named type). Found by
flipping each byte of each kind of store file in turn; caught only around reads of a file's bytes."""


def open_hdf5(path: str | Path) -> h5py.File:
    """``path`` open for reading, without HDF5's own file lock. zsfs writes every HDF5 file aside and
    renames it into place (its writer lock keeps writers apart: ``zsfs.store.locks``), so no file
    is read while written; HDF5's lock on a read only made reads fail where the file system takes
    no locks (NFS without its lock daemon, some Lustre and GPFS mounts: "unable to lock file,
    errno = 37 / 95 / 524"), and the store read as damaged. A named pipe or device at ``path`` is an
    ``OSError``: HDF5 opens it by name, and a pipe planted among a store's files would wait for a writer forever."""
    kind = special_file_kind(Path(path))
    if kind is not None:
        raise OSError(f"{kind}, not a file")
    return h5py.File(path, "r", locking=False)


def canonical_json(value: dict) -> str:
    """One JSON spelling per value, so that identities compare as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def read_identity(file: h5py.File) -> dict | None:
    """The identity recorded in a store or shard file, or None if it has none."""
    raw = file.attrs.get(schema.ATTR_IDENTITY)
    return None if raw is None else json.loads(raw)


CHUNK_BYTES = 1 << 20  # checksummed datasets are chunked by rows, about this much per chunk


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """Strings as UTF-8, except that a file name's bytes that are not UTF-8 are kept as they are
    (see ``zsfs.names``): ``read_strings`` gives back the very ``str`` that was written."""
    raw = np.empty(len(values), dtype=object)
    raw[:] = [name_bytes(str(value)) for value in values]
    group.create_dataset(name, data=raw, dtype=STRING)


def read_strings(dataset: h5py.Dataset) -> np.ndarray:
    """An object array of ``str``; bytes that are not UTF-8 come back as surrogates (PEP 383)."""
    return string_view(dataset)[:]


def string_view(dataset: h5py.Dataset) -> "h5py._hl.dataset.AsStrView":
    """``dataset`` read as ``str`` (as :func:`read_strings`), for reading some rows only."""
    return dataset.asstr(errors="surrogateescape")


def write_checked(group: h5py.Group, name: str, data: np.ndarray, **options) -> h5py.Dataset:
    """A numeric dataset with HDF5's fletcher32 checksum on every chunk: a flipped bit makes
    reading it fail instead of returning wrong numbers. Chunks hold whole rows."""
    data = np.asarray(data)
    row_bytes = max(1, int(np.prod(data.shape[1:], dtype=np.int64)) * data.dtype.itemsize)
    rows = int(min(max(len(data), 1), max(1, CHUNK_BYTES // row_bytes)))
    options.setdefault("chunks", (rows, *data.shape[1:]))
    if not data.size:  # HDF5 refuses fixed-size chunked datasets of zero rows
        options.setdefault("maxshape", (None, *data.shape[1:]))
    return group.create_dataset(name, data=data, fletcher32=True, **options)


@contextmanager
def closed_on_error(file: h5py.File, damaged: Callable[[BaseException], StoreError]) -> Iterator[None]:
    """Reads of the open ``file``: any error closes it, and damage (:data:`DAMAGED_FILE_ERRORS`)
    becomes ``damaged(error)``, a message that says what to do about that kind of file."""
    try:
        yield
    except BaseException as error:
        file.close()
        if isinstance(error, DAMAGED_FILE_ERRORS):
            raise damaged(error) from None
        raise


@contextmanager
def read_errors(path: Path, what: str) -> Iterator[None]:
    """A failed read (a checksum mismatch, a truncated file, damaged metadata) as one clear ``StoreError``."""
    try:
        yield
    except DAMAGED_FILE_ERRORS as error:
        raise StoreError(f"{path}: cannot read {what} ({one_line(error)}); the store is damaged: run "
                         f"`zsfs info --verify {path}` and rebuild what it names") from None
