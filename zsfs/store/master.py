"""The master file: one view over all shards, plus what readers need without the shards' help;
written here, and opened here with a clear message for each way a path can be the wrong file.

Row datasets become HDF5 virtual datasets whose sources are the shard files, named relative
to the master's folder (HDF5 resolves them from there, so the store folder can move). Strings
are copied (virtual datasets cannot map variable-length data portably), and the FAISS index
and root attributes are added.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from zsfs import __version__
from zsfs.digests import listing_sha256
from zsfs.errors import StoreError, one_line
from zsfs.store import schema
from zsfs.names import counted, utf8_text
from zsfs.store.files import REPAIR, check_written, damaged_master_advice
from zsfs.store.hdf5 import (canonical_json, closed_on_error, open_hdf5, read_identity, read_strings, write_checked,
                             write_strings)
from zsfs.store.identity import unfinished_run
from zsfs.store.index import STREAM_BLOCK, build_index, write_index_blocks
from zsfs.store.integrity import check_structure
from zsfs.store.locks import written_elsewhere
from zsfs.store.placement import masters_reading

if TYPE_CHECKING:  # faiss is imported lazily
    import faiss


def check_shards_agree(shards: list[h5py.File]) -> None:
    """Refuse shards that cannot make one store: none at all, labels in some only, rows of another
    width in some."""
    if not shards:
        raise ValueError("cannot write a master for a store of zero items")
    folder = Path(shards[0].filename).parent
    labelled = {schema.LABEL in shard for shard in shards}
    if len(labelled) > 1:
        raise StoreError(f"some shards in {folder} have labels and others not; pass --overwrite to rebuild the store")
    for name in schema.VIRTUAL_DATASETS:
        shapes = {shard[name].shape[1:] for shard in shards}
        if len(shapes) > 1:
            raise StoreError(f"shards in {folder} disagree on the shape of {name!r} ({sorted(shapes)}); "
                             "pass --overwrite to rebuild the store")


OPEN_FILES_SPARE = 64
"""Files a process keeps free beside its shards where it may (the master being written, the lock, Python's
own); :data:`OPEN_FILES_SPARE_AT_LEAST` where the hard limit allows no more."""
OPEN_FILES_SPARE_AT_LEAST = 16
"""The fewest files kept free beside the shards: a fit of a 1-shard store works with 20 open files in
all; a limit of 64 refused it, for want of the whole spare."""


def make_room_for_shards(n_shards: int, opening: str = "writing its master opens them all") -> None:
    """Raise this process's soft limit on open files (``ulimit -n``, often 1,024) so that the
    ``n_shards`` shard files fit at once, as writing the master opens them, and a read of a store
    (a read of a virtual dataset opens every shard it reaches at once, and reads one it cannot open
    as missing rows, NaN, without an error); a store of 100M images has 2,000. A StoreError where
    the hard limit, or the system, allows no such limit (``opening``: what opens them, for the message)."""
    try:
        import resource
    except ImportError:  # no such limits to raise (Windows)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = _open_files() + n_shards
    wanted, needed = in_use + OPEN_FILES_SPARE, in_use + OPEN_FILES_SPARE_AT_LEAST
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return
    if hard != resource.RLIM_INFINITY and wanted > hard:
        if needed <= hard:  # less to spare, enough for the work
            if soft < hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return
        reason = f"this process may open {hard} (its hard limit, `ulimit -Hn`)"
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return
        except (ValueError, OSError) as error:  # macOS: above kern.maxfilesperproc, whatever the hard limit
            reason = f"the system refused this process a limit of {wanted} ({error})"
            if needed <= soft:
                return
    shards = f"the store's {counted(n_shards, 'shard')} {'is' if n_shards == 1 else 'are'}"
    raise StoreError(f"{shards} more files than this process may open at once, "
                     f"and {opening}: {reason}; raise the limit to {wanted} (root's setting, "
                     "or the container's or job's nofile limit), or build the store with larger shards (--shard-size)")


def _open_files() -> int:
    """The files this process has open (0 where the system does not list them: the spare covers them)."""
    for listing in ("/proc/self/fd", "/dev/fd"):  # Linux; macOS and the BSDs
        try:
            return len(os.listdir(listing))
        except OSError:
            continue
    return 0


@contextmanager
def opened_shards(shard_paths: list[Path]) -> Iterator[list[h5py.File]]:
    """The shard files, open for reading and checked to make one store (:func:`check_shards_agree`);
    a shard that fails to open closes the ones opened before it."""
    make_room_for_shards(len(shard_paths))
    with ExitStack() as opened:
        shards = [opened.enter_context(open_hdf5(shard)) for shard in shard_paths]
        for shard, path in zip(shards, shard_paths):  # (one swapped in since it was found whole)
            check_structure(shard, path)
        check_shards_agree(shards)
        yield shards


def index_shards(shards: list[h5py.File], *, exact_max: int) -> tuple["faiss.Index", dict]:
    """The FAISS index of the shards' CLIP embeddings and its record (``build_index``), made before
    the master is written: that write holds Ctrl-C until it ends (``held_signals``)."""
    return build_index(gather(shards, schema.CLIP), exact_max=exact_max)


def write_master(master: h5py.File, shards: list[h5py.File], *, identity: dict, attrs: dict, previous: Path | None,
                 index: "faiss.Index", index_info: dict, checksums: tuple[np.ndarray, list[str]]) -> None:
    """Write into the new, empty file ``master`` the master of complete ``shards`` (from
    :func:`opened_shards`, all in one folder next to the master's final location); ``index`` and
    ``index_info``: theirs, from :func:`index_shards`; ``checksums``: each shard file's size and
    sha256. Format 1 vocabularies of ``previous``, an older master of the same store, are kept."""
    names = [f"{path.parent.name}/{path.name}" for path in (Path(shard.filename) for shard in shards)]
    labelled = schema.LABEL in shards[0]  # in every shard or none: check_shards_agree
    rows = np.array([len(shard[schema.PATH]) for shard in shards], dtype=np.int64)
    dims = {name: link_virtual(master, name, shards, names, rows) for name in schema.VIRTUAL_DATASETS}
    for name in (schema.PATH, schema.LABEL) if labelled else (schema.PATH,):
        write_strings(master, name, concat_strings(shards, name))
    skipped = concat_strings(shards, schema.SKIPPED_PATH)
    write_strings(master, schema.SKIPPED_PATH, skipped)
    write_strings(master, schema.SKIPPED_REASON, concat_strings(shards, schema.SKIPPED_REASON))
    write_strings(master, schema.SHARDS_FILE, names)
    # checksummed: a flipped bit here blamed a healthy shard (its rows or size no longer matched)
    write_checked(master, schema.SHARDS_ROWS, rows)
    write_checked(master, schema.SHARDS_BYTES, checksums[0])
    write_strings(master, schema.SHARDS_SHA256, checksums[1])

    write_index_dataset(master, index)
    master.attrs[schema.ATTR_STRINGS_SHA256] = strings_sha256(master)  # read back: what the file holds
    if previous is not None:
        carry_over_vocabularies(previous, master, identity)

    master.attrs.update({
        schema.ATTR_FORMAT: schema.FORMAT_NAME,
        schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
        schema.ATTR_ZSFS_VERSION: __version__,
        schema.ATTR_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        schema.ATTR_IDENTITY: canonical_json(identity),
        schema.ATTR_N_IMAGES: int(rows.sum()),
        schema.ATTR_N_SKIPPED: len(skipped),
        schema.ATTR_INDEX: json.dumps(index_info),
        schema.ATTR_BUILD: uuid.uuid4().hex,
    })
    for key, value in attrs.items():
        if key in (schema.ATTR_CLIP, schema.ATTR_BACKBONE):
            value = with_dim(value, dims[schema.CLIP if key == schema.ATTR_CLIP else schema.BACKBONE], key)
        if isinstance(value, str):  # HDF5 string attributes are UTF-8: other name bytes become \xNN
            value = utf8_text(value)
        master.attrs[key] = json.dumps(value) if isinstance(value, dict) else value


def strings_sha256(master: h5py.File) -> str:
    """sha256 of the text of a master or shard (image paths, labels, skip reasons; a master's shard
    names and digests): variable-length strings live in HDF5's global heap, which no filter
    checksums, so a flipped bit there read as another path or label, and `zsfs info --verify`
    found nothing."""
    digest = hashlib.sha256()
    for name in schema.MASTER_STRINGS:
        if name in master:
            digest.update(f"{name}\0{listing_sha256(read_strings(master[name]))}\n".encode())
    return digest.hexdigest()


def text_is_whole(file: h5py.File) -> bool:
    """Whether the text of a master or shard matches the :func:`strings_sha256` it recorded (files
    written before December 2026 recorded none: taken as whole)."""
    recorded = file.attrs.get(schema.ATTR_STRINGS_SHA256)
    return recorded is None or strings_sha256(file) == recorded


def write_index_dataset(master: h5py.File, index: "faiss.Index") -> None:
    """Stream the index into ``/index/faiss`` (an IVF index over 1M rows is gigabytes: no second copy)."""
    approximate_bytes = index.ntotal * (index.d * 4 + 8) + 65536
    chunk = int(min(STREAM_BLOCK, approximate_bytes))  # small stores stay small on disk
    dataset = master.create_dataset(schema.INDEX_DATASET, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                    chunks=(chunk,), fletcher32=True)
    write_index_blocks(index, dataset, after_block=lambda: check_written(master))


def link_virtual(master: h5py.File, name: str, shards: list[h5py.File], names: list[str], rows: np.ndarray) -> int:
    """Create ``name`` as a virtual dataset over the shards (which agree: :func:`check_shards_agree`);
    returns its row width (0 for 1-d)."""
    tail = shards[0][name].shape[1:]
    dtype = shards[0][name].dtype
    layout = h5py.VirtualLayout(shape=(int(rows.sum()), *tail), dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(rows)])
    for shard, file_name, start, stop in zip(shards, names, offsets[:-1], offsets[1:]):
        if stop > start:  # an all-skipped shard maps nothing
            layout[start:stop] = h5py.VirtualSource(schema.vds_file_name(file_name), name, shape=shard[name].shape)
    # Unmapped rows (a shard file gone missing) read as this value: NaN cannot pass for data.
    fill = np.nan if np.issubdtype(dtype, np.floating) else schema.UNKNOWN_SIZE
    master.create_virtual_dataset(name, layout, fillvalue=fill)
    return int(tail[0]) if tail else 0


def carry_over_vocabularies(previous: Path, master: h5py.File, identity: dict) -> None:
    """Keep vocabularies that were added to an older master of the same store."""
    if not previous.is_file():
        return
    try:
        with open_hdf5(previous) as old:
            if read_identity(old) == identity and schema.VOCAB_GROUP in old:
                old.copy(old[schema.VOCAB_GROUP], master, name=schema.VOCAB_GROUP)
    except OSError:
        pass  # an unreadable old master has nothing worth keeping


def concat_strings(files: list[h5py.File], name: str) -> np.ndarray:
    parts = []
    for file in files:
        with _damage_named(file):
            parts.append(read_strings(file[name]))
    return np.concatenate(parts) if parts else np.array([], dtype=object)


def gather(files: list[h5py.File], name: str) -> np.ndarray:
    """Concatenate one dataset of every shard into one array of its stored dtype."""
    first = files[0][name]
    out = np.empty((sum(len(file[name]) for file in files), *first.shape[1:]), dtype=first.dtype)
    start = 0
    for file in files:
        dataset = file[name]
        if len(dataset):
            with _damage_named(file):
                dataset.read_direct(out, dest_sel=np.s_[start : start + len(dataset)])
        start += len(dataset)
    return out


@contextmanager
def _damage_named(shard: h5py.File) -> Iterator[None]:
    """A shard whose data cannot be read (damaged after it was written, say by a copy) is named,
    with the repair: HDF5's own error names no file, and would read as a failed write of the master."""
    try:
        yield
    except OSError as error:
        raise StoreError(f"{shard.filename} cannot be read ({one_line(error)}): if it is damaged, remove it and "
                         f"{REPAIR}") from None


def with_dim(record: dict, dim: int, key: str) -> dict:
    """A model record with ``dim`` filled in from the stored data (and checked if given)."""
    if record.get("dim") not in (None, dim):
        raise ValueError(f"{key} record says dim={record['dim']} but the stored embeddings have {dim}")
    return {**record, "dim": dim}


def _did_you_mean(path: Path) -> str:
    """``"; did you mean photos.h5?"`` for ``photos`` (the image folder, say) beside the store extract wrote."""
    meant = path.with_suffix(".h5") if path.name else path
    return f"; did you mean {meant}?" if meant != path and meant.is_file() else ""


VDS_PREFIX_VARIABLE = "HDF5_VDS_PREFIX"
"""Where HDF5 looks for a virtual dataset's source files before the master's own folder."""


def refuse_vds_prefix(path: Path) -> None:
    """A StoreError while the environment sets :data:`VDS_PREFIX_VARIABLE` (review: another folder's
    shards of the same names were read as the store's); writers check it before any shard is written."""
    if os.environ.get(VDS_PREFIX_VARIABLE):
        raise StoreError(f"the environment sets {VDS_PREFIX_VARIABLE}={os.environ[VDS_PREFIX_VARIABLE]}, which makes "
                         f"HDF5 read a store's shards from that folder, not from beside its master; unset it "
                         f"(`unset {VDS_PREFIX_VARIABLE}`) to use {path}")


def open_master(path: Path) -> h5py.File:
    """Open a master file, with a clear message for each way it can be the wrong file."""
    refuse_vds_prefix(path)
    if not path.exists():
        if written_elsewhere(path):
            raise StoreError(f"store {path} is being written by another zsfs process; wait for it to finish")
        meant = _did_you_mean(path)
        if meant:
            raise StoreError(f"store {path} does not exist{meant}")
        shards = schema.shard_dir(path)
        if shards.is_dir():
            readers = masters_reading(shards, other_than=path)
            if readers:  # named without a suffix (--out photos), or renamed since: that file is the store
                raise StoreError(f"store {path} does not exist; {shards.name}/ holds the shards of the store "
                                 f"{readers[0]}: pass that path")
            raise StoreError(f"store {path} is not finished (its shards are in {shards.name}/){unfinished_run(path)}; "
                             "rerun the command that builds it to finish")
        raise StoreError(f"store {path} does not exist; create it with `zsfs extract` or `zsfs import`")
    if path.is_dir():
        raise StoreError(f"{path} is a folder; pass the store's master .h5 file{_did_you_mean(path)}")
    if not h5py.is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file (damaged, truncated, or not a zsfs store)"
                         f"{_did_you_mean(path) or damaged_master_advice(path)}")
    try:
        file = open_hdf5(path)
    except OSError as error:
        raise StoreError(f"{path} cannot be opened as HDF5 ({error}); it is probably truncated or damaged"
                         f"{damaged_master_advice(path)}") from None
    with closed_on_error(file, lambda error: StoreError(f"{path} is damaged ({one_line(error)})"
                                                        f"{damaged_master_advice(path)}")):
        _check_master(file, path)
    return file


def _check_master(file: h5py.File, path: Path) -> None:
    """A ``StoreError`` unless ``file`` (``path``, open) reads as a zsfs store's master; h5py's
    errors on damaged bytes pass through (:data:`zsfs.store.hdf5.DAMAGED_FILE_ERRORS`)."""
    fmt = file.attrs.get(schema.ATTR_FORMAT)
    version = file.attrs.get(schema.ATTR_FORMAT_VERSION)
    if fmt in schema.PART_FORMATS:
        masters = [path.parent.parent / f"{path.parent.stem}{suffix}" for suffix in schema.HDF5_SUFFIXES]
        master = next((candidate for candidate in masters if candidate.is_file()), None)
        raise StoreError(f"{path} is {schema.PART_FORMATS[fmt]} of a zsfs store, not the store; pass its master file"
                         + (f": {master}" if master else " (the .h5 file beside its folder)"))
    if fmt != schema.FORMAT_NAME or version is None:
        raise StoreError(f"{path} is an HDF5 file but not a zsfs store (no '{schema.FORMAT_NAME}' format mark)")
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 1:
        # int() took 2.5 as 2 and raised a traceback on 'two' (another tool's store)
        raise StoreError(f"{path} has the format version {version!r}, not a whole number from 1 on: it is damaged or "
                         f"was not written by zsfs{damaged_master_advice(path)}")
    if version > schema.FORMAT_VERSION:
        raise StoreError(f"{path} uses store format {int(version)}, newer than this zsfs understands "
                         f"({schema.FORMAT_VERSION}); upgrade zsfs")
    check_structure(file, path, master=True)
