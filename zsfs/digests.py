"""Digests that identify what a store was made from: its listing, its input arrays, model files.

Kept apart from the store's modules (no h5py here): image sources and model loading use them too.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zsfs.names import name_bytes


def listing_sha256(paths: Sequence[str], labels: Sequence[str] | None = None) -> str:
    """sha256 of an ordered listing, paths and labels (part of a store's identity).

    Each entry hashes as ``path\\0`` (then ``label\\0`` when labels are given) and ``\\n``, so
    adding, removing or changing a label changes the digest as surely as changing a path does.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
    digest = hashlib.sha256()
    for start in range(0, len(paths), 65536):  # bounded memory; one encode per block (5x faster than per name)
        entries = list(map(str, paths[start : start + 65536]))
        if labels is not None:
            entries = [f"{path}\0{label}" for path, label in zip(entries, map(str, labels[start : start + 65536]))]
        digest.update(name_bytes("\0\n".join(entries) + "\0\n"))
    return digest.hexdigest()


SAMPLED_ROWS = 4096


def rows_sha256(*arrays: np.ndarray, sampled_rows: int = SAMPLED_ROWS) -> str:
    """Digest of the arrays' shapes, dtypes and ``sampled_rows`` evenly spaced rows (first and last
    included): embeddings exported again by another model or weights change every row, and reading
    a sample keeps a resumed import of millions of memory-mapped rows from reading them all."""
    digest = hashlib.sha256()
    for array in arrays:
        rows = evenly_spaced_rows(len(array), sampled_rows)
        sample = np.concatenate([np.asarray(array[int(row) : int(row) + 1]) for row in rows])
        digest.update(f"{tuple(array.shape)}|{sample.dtype.str}|".encode())
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()


def evenly_spaced_rows(n: int, count: int) -> np.ndarray:
    """Up to ``count`` evenly spaced row numbers of ``n`` rows, the first and last included."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def file_sha256(path: Path | str, chunk_size: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks (shards and checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_unchanged_digests: dict[tuple[int, ...], str] = {}
_SETTLED_NS = 2_000_000_000  # FAT's timestamps step by 2 s; other file systems' by a few ms


def unchanged_file_sha256(path: Path | str) -> str:
    """:func:`file_sha256` of a model's weights file, read once per process while the file is
    unchanged: checking a store's record and loading the model each need it, and a checkpoint is
    GBs (ViT-bigG's: 10 GB). Unchanged means the same device, inode, size, mtime and ctime (a
    rewrite sets the ctime, which no user can set back); a file changed in the last 2 s is read
    every time, as a rewrite within a timestamp's step would keep them all. (A store's writer keeps
    its shards' digests for one run only, under the store's lock; damage checks read every time.)"""
    info = os.stat(path)
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key in _unchanged_digests:
        return _unchanged_digests[key]
    digest = file_sha256(path)
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLED_NS:
        _unchanged_digests[key] = digest
    return digest
