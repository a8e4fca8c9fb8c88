"""Integrity of a store's files: what opening checks cheaply, and what ``zsfs info --verify`` checks.

HDF5 can make a file read data from anywhere: external links, external raw storage and
virtual datasets name other files by path. A store holds none of these except the master's
virtual datasets, which must map onto its own shard files; anything else is refused before a
single byte is read through it (so no error message can echo a foreign file's content).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from zsfs.errors import StoreError, one_line
from zsfs.signals import held_signals
from zsfs.store import schema
from zsfs.store.hdf5 import DAMAGED_FILE_ERRORS, read_strings

SHARD_FILE_PATTERN = re.compile(r"[^/\\]+\.shards/shard-\d+\.h5")
VERIFY_BLOCK_ROWS = 65536


def check_structure(file: h5py.File, path: Path, *, master: bool = False) -> None:
    """Refuse links and raw storage outside ``file``. Only a ``master`` may hold virtual
    datasets, and only the row datasets, mapped onto the shard files it lists. h5py's errors on
    damaged metadata pass through (``hdf5.DAMAGED_FILE_ERRORS``): each caller says what to do
    about its kind of file."""
    problems: list[str] = []
    virtual: list[tuple[str, h5py.Dataset]] = []

    def visit(name: str) -> None:
        link = file.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            problems.append(f"{name!r} is a {type(link).__name__}")
            return
        item = file.get(name)
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"{name!r} keeps its data in external files")
            elif item.is_virtual:
                if master and name in schema.VIRTUAL_DATASETS:
                    virtual.append((name, item))
                else:
                    problems.append(f"{name!r} is a virtual dataset")

    with held_signals():  # HDF5 calls visit
        file.visit_links(visit)  # visits links without following them
    if not problems and virtual:
        if schema.SHARDS_FILE not in file:
            problems.append(f"virtual datasets but no {schema.SHARDS_FILE!r} table")
        else:
            names = [str(name) for name in read_strings(file[schema.SHARDS_FILE])]
            check_shard_names(names, path)
            problems.extend(problem for name, dataset in virtual for problem in virtual_problems(name, dataset, names))
    if problems:
        raise StoreError(f"{path} is not a valid zsfs store file: {'; '.join(problems[:3])}; a store never points "
                         "outside its own files (refused, nothing was read through it)")


def virtual_problems(name: str, dataset: h5py.Dataset, shard_files: list[str]) -> list[str]:
    recorded = {schema.vds_file_name(shard_file) for shard_file in shard_files}
    for source in dataset.virtual_sources():
        if source.file_name not in recorded or source.dset_name.lstrip("/") != name:
            return [f"virtual dataset {name!r} maps data outside the store's shard files"]
    return []


def check_shard_names(names: list[str], path: Path) -> None:
    """Shard files named by the master must be ``<stem>.shards/shard-N.h5``: no absolute paths,
    no ``..``, nothing outside the store's folder."""
    bad = [name for name in names if not SHARD_FILE_PATTERN.fullmatch(name)]  # one folder down, no separator
    if bad:
        raise StoreError(f"{path} names shard files outside its folder ({len(bad)} of {len(names)}); refused")


def read_all(group: h5py.Group, path: Path) -> int:
    """Read every dataset of ``group`` in blocks (HDF5 checks each chunk's fletcher32
    checksum on the way); returns the number of bytes read."""
    total = 0
    names: list[str] = []
    try:
        with held_signals():  # HDF5 calls the lambda
            group.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    except DAMAGED_FILE_ERRORS as error:
        raise StoreError(f"{path} is damaged ({one_line(error)}); rebuild or replace the file") from None
    for name in names:
        try:
            dataset = group[name]
            if dataset.shape == () or not len(dataset):
                continue
            for start in range(0, len(dataset), VERIFY_BLOCK_ROWS):
                block = dataset[start : start + VERIFY_BLOCK_ROWS]
                total += block.nbytes if isinstance(block, np.ndarray) and block.dtype != object else len(block)
        except DAMAGED_FILE_ERRORS as error:
            raise StoreError(f"{path}: dataset {name!r} is damaged ({one_line(error)}); rebuild or replace "
                             "the file") from None
    return total


