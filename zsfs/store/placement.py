"""Where a store may be written: which masters read which shards folder (a master keeps its
first name's folder when renamed or copied), and the outputs refused before any work: a folder
another store keeps its shards in, a link to a store, a file that is not a store."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import h5py

from zsfs.errors import StoreError
from zsfs.outputs import special_file_kind
from zsfs.store import schema
from zsfs.store.files import damaged_master_advice
from zsfs.store.hdf5 import DAMAGED_FILE_ERRORS, open_hdf5, read_identity, read_strings
from zsfs.store.identity import recorded_identity
from zsfs.store.locks import LOCK_SUFFIX, master_file, written_elsewhere


def shard_folders_named(path: Path) -> set[str]:
    """The folders a zsfs master's shard table names (none for other files): its own
    (``schema.shard_dir``), or its first name's when it was renamed or copied under a new name."""
    try:
        if not h5py.is_hdf5(path):
            return set()
        with open_hdf5(path) as file:
            if read_identity(file) is None or schema.SHARDS_FILE not in file:
                return set()
            return {PurePosixPath(name).parts[0] for name in read_strings(file[schema.SHARDS_FILE])}
    except (*DAMAGED_FILE_ERRORS, IndexError):  # (a damaged master's KeyError, RuntimeError, ...: crash review)
        return set()


def masters_reading(folder: Path, *, other_than: Path) -> list[Path]:
    """The masters beside ``folder`` (a store's shards folder) that read their shards from it,
    ``other_than`` left out: each file with an HDF5 suffix, or named as ``folder`` is for it, whose
    shard table names ``folder`` (an unlistable folder: none)."""
    try:
        entries = sorted(entry for entry in folder.parent.iterdir() if entry.name != other_than.name and entry.is_file()
                         and (entry.suffix.lower() in schema.HDF5_SUFFIXES or schema.shard_dir(entry) == folder))
    except OSError:
        return []
    return [entry for entry in entries if folder.name in shard_folders_named(entry)]


def check_own_shards_folder(master: Path, overwrite: bool = False) -> None:
    """Refuse to write ``master`` when its shards folder is a file, or when another store keeps
    its shards in that folder: ``x.h5`` and ``x.hdf5`` (or ``x``) would share ``x.shards/``, as
    would ``y.h5`` renamed from ``x.h5``, and writing one would replace the other's shards. A link
    to a store is refused too: its store keeps its shards beside the file linked to, so a rerun
    through the link would write a whole new store in place of the link. A copy of ``master``
    (the same identity, or any master reading the folder ``master`` itself reads) is not another
    store: the rerun of ``master`` goes on. Without
    ``overwrite``, a master renamed since it was built is refused: it reads its shards (and
    vocabularies, graph) from the folder of its first name, and a rerun under the new one would
    embed every image again into another folder, leaving those behind."""
    master = Path(master).absolute()
    if master.is_symlink():
        raise StoreError(f"{master} is a link to {master_file(master)}; pass that path to write or update the store "
                         "(a store is written where its master file lies)")
    folder = schema.shard_dir(master)
    used = sorted(shard_folders_named(master)) if master.is_file() and not overwrite else []
    if used and folder.name not in used:
        first_name = master.with_name(used[0].removesuffix(".shards") + master.suffix)
        raise StoreError(f"{master} reads its shards from {used[0]}/, not {folder.name}/: it was renamed (or copied "
                         f"under a new name) since it was built, and a rerun under this name would embed every image "
                         f"again into {folder.name}/. Rename it back to {first_name.name} to update that store, or "
                         "pass --overwrite to build a new one under this name")
    if folder.parent == master.parent and folder.name.casefold() == master.name.casefold():  # x.shards (x.SHARDS
        # on a file system that ignores case): the master would be its own shards folder
        raise StoreError(f"{master.name} is the name of the folder where a store keeps its shards; name the store "
                         f"{master.with_suffix('.h5').name}")
    if folder.exists() and not folder.is_dir():  # found before any work, not when the first shard is written
        raise StoreError(f"{folder} is a file, where {master.name} keeps its shards in a folder of that name; "
                         "move it, or choose an output with another name")
    for other in _stores_being_written_beside(master):  # their masters may not exist yet
        if other.name != master.name and schema.shard_dir(other) == folder:
            raise StoreError(f"{other} is being written by another zsfs process and keeps its shards in "
                             f"{folder.name}/, where {master.name} would write its own; wait for it to finish, or "
                             "choose an output with another name")
    if not folder.is_dir():
        return  # nobody's shards are there
    if master.is_file() and folder.name in shard_folders_named(master):
        return  # its own: another master reading them is a copy of this one, stale once this one is rebuilt
    identity = recorded_identity(master) if master.is_file() else {}
    for entry in masters_reading(folder, other_than=master):
        if master.exists() and os.path.samefile(entry, master):  # another name of this very store
            continue
        if not (identity and recorded_identity(entry) == identity):  # not a copy of its master
            raise StoreError(f"{entry} keeps its shards in {folder.name}/, where {master.name} would write its own "
                             f"(a store's shards folder is named after its name without the suffix); choose an "
                             f"output with another name")


def refuse_replacing_another_file(master: Path) -> None:
    """Refuse an output that is no zsfs store, --overwrite or not: a file that is not HDF5 or
    carries another format mark (the user's own features), a part of a store (a shard, a
    vocabulary, the graph), or any path inside a store's shards folder. Each is a typo for
    another argument (``import notes.csv ...``, ``--out x.shards/shard-00000.h5``), and
    --overwrite would replace it. A master too damaged to show its mark is a store to rebuild."""
    master = Path(master)
    keep = "zsfs replaces only stores, even with --overwrite: choose another output, or move that file away"
    if master.parent.name.endswith(schema.SHARDS_SUFFIX) and schema.holds_store_parts(master.parent):
        raise StoreError(f"{master} is inside {master.parent}, the folder where a store keeps its shards; "
                         "choose an output outside it")
    if master.is_dir():  # (the command line refuses it as an option; from Python, --overwrite's unlink failed)
        raise StoreError(f"{master} is a folder; give a file in it as the store, such as {master / 'STORE.h5'}")
    kind = special_file_kind(master)
    if kind is not None:  # (--overwrite replaced a device node by a store; without it, opening a pipe waited for ever)
        raise StoreError(f"{master} is {kind}, not a zsfs store; {keep}")
    if not master.is_file():
        return
    if not h5py.is_hdf5(master):
        raise StoreError(f"{master} exists and is not an HDF5 file, so not a zsfs store; {keep}"
                         f"{damaged_master_advice(master)}")
    mark = _format_mark(master)
    if mark in schema.PART_FORMATS:
        raise StoreError(f"{master} is {schema.PART_FORMATS[mark]} of a zsfs store, not a store; {keep}")
    if mark is not None and mark != schema.FORMAT_NAME:
        raise StoreError(f"{master} is an HDF5 file but not a zsfs store (no '{schema.FORMAT_NAME}' format mark); "
                         f"{keep}")


def _format_mark(path: Path) -> str | None:
    """The format mark of an HDF5 file ("" when it has none), or None when it cannot be read."""
    try:
        with open_hdf5(path) as file:
            mark = file.attrs.get(schema.ATTR_FORMAT, "")
    except DAMAGED_FILE_ERRORS:
        return None
    return mark.decode("utf-8", "replace") if isinstance(mark, bytes) else str(mark)


def _stores_being_written_beside(master: Path) -> list[Path]:
    """The stores in ``master``'s folder whose writer lock another process holds now."""
    try:
        names = os.listdir(master.parent)
    except OSError:
        return []
    stores = [master.parent / name[1 : -len(LOCK_SUFFIX)] for name in names
              if name.startswith(".") and name.endswith(LOCK_SUFFIX)]
    return [store for store in stores if written_elsewhere(store)]
