"""Small HDF5 helpers shared by the shard and master writers."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from zsfs.store import schema

STRING = h5py.string_dtype("utf-8")


def canonical_json(value: dict) -> str:
    """One JSON spelling per value, so that identities compare as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def read_identity(file: h5py.File) -> dict | None:
    """The identity recorded in a store or shard file, or None if it has none."""
    raw = file.attrs.get(schema.ATTR_IDENTITY)
    return None if raw is None else json.loads(raw)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.asarray(values, dtype=object).reshape(-1), dtype=STRING)
