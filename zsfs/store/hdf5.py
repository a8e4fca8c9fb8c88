"""Small HDF5 helpers shared by the shard and master writers."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from zsfs.names import name_bytes
from zsfs.store import schema

STRING = h5py.string_dtype("utf-8")


def canonical_json(value: dict) -> str:
    """One JSON spelling per value, so that identities compare as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def listing_sha256(paths: Sequence[str], labels: Sequence[str] | None = None) -> str:
    """sha256 of an ordered listing, paths and labels (part of a store's identity).

    Each entry hashes as ``path\\0`` (then ``label\\0`` when labels are given) and ``\\n``, so
    adding, removing or changing a label changes the digest as surely as changing a path does.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    digest = hashlib.sha256()
    for start in range(0, len(paths), 65536):
        stop = min(start + 65536, len(paths))
        parts = []
        for i in range(start, stop):
            parts.append(name_bytes(str(paths[i])) + b"\0")
            if labels is not None:
                parts.append(name_bytes(str(labels[i])) + b"\0")
            parts.append(b"\n")
        digest.update(b"".join(parts))
    return digest.hexdigest()


def read_identity(file: h5py.File) -> dict | None:
    """The identity recorded in a store or shard file, or None if it has none."""
    raw = file.attrs.get(schema.ATTR_IDENTITY)
    return None if raw is None else json.loads(raw)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    """Strings as UTF-8, except that a file name's bytes that are not UTF-8 are kept as they are
    (see ``zsfs.names``): ``read_strings`` gives back the very ``str`` that was written."""
    raw = np.empty(len(values), dtype=object)
    raw[:] = [name_bytes(str(value)) for value in values]
    group.create_dataset(name, data=raw, dtype=STRING)


def read_strings(dataset: h5py.Dataset) -> np.ndarray:
    """An object array of ``str``; bytes that are not UTF-8 come back as surrogates (PEP 383)."""
    return dataset.asstr(errors="surrogateescape")[:]
