"""Writing stores: independent shard files, then a master that presents them as one store.

Every file is written under a temporary name, flushed and renamed into place, so an interrupted
run never leaves a half-written shard or master behind: rerunning writes only the missing
shards (``pending_shards``) and the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from zsfs.errors import StoreError, StoreMismatchError, ZsfsError
from zsfs.store import schema
from zsfs.store.hdf5 import canonical_json, fsync_file, read_identity, write_strings
from zsfs.store.index import EXACT_MAX
from zsfs.store.master import write_master

SIZE_DTYPE = np.int32
NORM_TOLERANCE = 1e-3  # float16 rounding moves a unit row's norm by ~1e-4


@dataclass
class ShardData:
    """Rows ``[start, stop)`` of the source listing: the embedded images plus the skipped ones."""

    clip: np.ndarray  # (n, D_clip), L2-normalised
    backbone: np.ndarray  # (n, D_backbone), L2-normalised
    paths: Sequence[str]
    width: np.ndarray
    height: np.ndarray
    labels: Sequence[str] | None = None
    skipped_paths: Sequence[str] = ()
    skipped_reasons: Sequence[str] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def validate(self) -> None:
        n = len(self.paths)
        if self.clip.ndim != 2 or self.backbone.ndim != 2:
            raise ValueError("clip and backbone must be 2-d arrays (rows, dim)")
        lengths = {"clip": len(self.clip), "backbone": len(self.backbone), "width": len(self.width),
                   "height": len(self.height)}
        if self.labels is not None:
            lengths["labels"] = len(self.labels)
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"shard has {n} paths but {wrong} rows")
        if len(self.skipped_paths) != len(self.skipped_reasons):
            raise ValueError("skipped_paths and skipped_reasons differ in length")


def is_disk_full(error: BaseException) -> bool:
    """True if ``error`` or one it arose from reports ENOSPC. h5py raises RuntimeError with the
    C errno in its message (and often a second error while closing), so look at the whole chain."""
    while error is not None:
        message = str(error).lower()
        if getattr(error, "errno", None) == errno.ENOSPC or "no space left" in message or "errno = 28" in message:
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_error(error: BaseException, what: str) -> ZsfsError:
    """Turn a failed write into an actionable message (disk full is the usual cause)."""
    full = is_disk_full(error)
    cause = "the disk is full" if full else f"{error}"
    advice = "free some space and rerun" if full else "fix the problem and rerun"
    return ZsfsError(f"could not write {what}: {cause}. Finished shards are kept; {advice} the same command to resume.")


def write_failed(error: BaseException) -> bool:
    """Errors that mean the file system refused a write (not a bug to show as a traceback)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and is_disk_full(error))


class StoreWriter:
    """Writes a store shard by shard; ``finalize`` then builds the master.

    ``identity`` says what makes existing shards reusable (source, listing, models, ...); the
    writer adds ``n_items``, ``shard_size`` and ``dtype`` to it. Shards are independent files,
    so several processes may each write a different subset of ``pending_shards()``.
    """

    def __init__(self, master: Path, identity: dict, *, n_items: int, shard_size: int,
                 dtype: str = "float16", overwrite: bool = False) -> None:
        if dtype not in schema.EMBEDDING_DTYPES:
            raise ValueError(f"dtype must be one of {schema.EMBEDDING_DTYPES}, got {dtype!r}")
        if shard_size < 1 or n_items < 0:
            raise ValueError(f"need shard_size >= 1 and n_items >= 0, got {shard_size}, {n_items}")
        layout = {"n_items": int(n_items), "shard_size": int(shard_size), "dtype": dtype}
        clash = {key: identity[key] for key in layout if key in identity and identity[key] != layout[key]}
        if clash:
            raise ValueError(f"identity disagrees with the writer's arguments: {clash}")
        self.master = Path(master).absolute()
        self.shards_dir = schema.shard_dir(self.master)
        self.identity = json.loads(canonical_json({**identity, **layout}))
        self.n_items, self.shard_size, self.dtype = int(n_items), int(shard_size), dtype
        self.n_shards = math.ceil(n_items / shard_size)
        if overwrite:
            self.remove_existing()
        else:
            self.check_existing()

    # -- layout ---------------------------------------------------------------------------
    def shard_bounds(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.n_shards})")
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_items)

    def shard_path(self, shard: int) -> Path:
        return self.shards_dir / schema.shard_name(shard)

    # -- existing files -------------------------------------------------------------------
    def existing_files(self) -> list[Path]:
        """Master and every shard or temporary file this writer would own."""
        files = [path for path in (self.master, self.master_tmp()) if path.exists()]
        if self.shards_dir.is_dir():
            files += sorted(self.shards_dir.glob("shard-*" + schema.SHARD_SUFFIX))
            files += sorted(self.shards_dir.glob("*" + schema.TMP_SUFFIX))
        return files

    def check_existing(self) -> None:
        """Refuse to mix with a master or shards written from another source or other models."""
        for path in self.existing_files():
            if path.suffix == schema.TMP_SUFFIX:
                continue
            try:
                with h5py.File(path, "r") as file:
                    identity = read_identity(file)
            except OSError:
                if path == self.master:
                    raise StoreError(f"{path} exists and is not a readable zsfs store; "
                                     "pass --overwrite to replace it or choose another output") from None
                continue  # a damaged shard is simply rewritten
            if identity != self.identity:
                raise StoreMismatchError(
                    f"{path} was built from another source, other models or other settings "
                    f"({describe_difference(identity, self.identity)}); pass --overwrite to "
                    "replace it or choose another output")

    def remove_existing(self) -> None:
        for path in self.existing_files():
            path.unlink()
        if self.shards_dir.is_dir() and not any(self.shards_dir.iterdir()):
            self.shards_dir.rmdir()

    def master_tmp(self) -> Path:
        return self.master.with_name(self.master.name + schema.TMP_SUFFIX)

    def remove_tmp_files(self) -> None:
        """Remove what interrupted runs left behind: temporary shards and master."""
        self.master_tmp().unlink(missing_ok=True)
        if self.shards_dir.is_dir():
            for path in self.shards_dir.glob("*" + schema.TMP_SUFFIX):
                path.unlink(missing_ok=True)

    def shard_is_complete(self, shard: int) -> bool:
        """True if the shard's file opens and carries this shard's bounds and identity."""
        path = self.shard_path(shard)
        if not path.is_file():
            return False
        try:
            with h5py.File(path, "r") as file:
                attrs = file.attrs
                start, stop = self.shard_bounds(shard)
                return (
                    read_identity(file) == self.identity
                    and attrs.get(schema.ATTR_SHARD) == shard
                    and attrs.get(schema.ATTR_START) == start
                    and attrs.get(schema.ATTR_STOP) == stop
                    and all(name in file for name in schema.VIRTUAL_DATASETS)
                )
        except OSError:
            return False

    def pending_shards(self, *, remove_tmp: bool = True) -> list[int]:
        """Shards not yet completely written. Removes leftover temporary files unless
        ``remove_tmp=False`` (pass that when other processes write shards concurrently)."""
        if remove_tmp:
            self.remove_tmp_files()
        return [shard for shard in range(self.n_shards) if not self.shard_is_complete(shard)]

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, shard: int, data: ShardData) -> None:
        """Write one shard to a temporary file, flush it, then rename it into place."""
        data.validate()
        start, stop = self.shard_bounds(shard)
        n_listed = len(data) + len(data.skipped_paths)
        if n_listed != stop - start:
            raise ValueError(f"shard {shard} covers {stop - start} listed items, got {len(data)} "
                             f"embedded + {len(data.skipped_paths)} skipped")
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        final = self.shard_path(shard)
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}{schema.TMP_SUFFIX}")
        try:
            self._write_shard_file(tmp, shard, start, stop, data)
            fsync_file(tmp)
            os.replace(tmp, final)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if write_failed(error):
                raise disk_error(error, f"shard {final.name}") from error
            raise

    def _write_shard_file(self, path: Path, shard: int, start: int, stop: int, data: ShardData) -> None:
        with h5py.File(path, "w") as file:
            file.create_dataset(schema.CLIP, data=np.asarray(data.clip, dtype=self.dtype))
            file.create_dataset(schema.BACKBONE, data=np.asarray(data.backbone, dtype=self.dtype))
            file.create_dataset(schema.WIDTH, data=np.asarray(data.width, dtype=SIZE_DTYPE))
            file.create_dataset(schema.HEIGHT, data=np.asarray(data.height, dtype=SIZE_DTYPE))
            write_strings(file, schema.PATH, data.paths)
            if data.labels is not None:
                write_strings(file, schema.LABEL, data.labels)
            write_strings(file, schema.SKIPPED_PATH, data.skipped_paths)
            write_strings(file, schema.SKIPPED_REASON, data.skipped_reasons)
            file.attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME + "-shard"
            file.attrs[schema.ATTR_FORMAT_VERSION] = schema.FORMAT_VERSION
            file.attrs[schema.ATTR_IDENTITY] = canonical_json(self.identity)
            # Written last: a shard counts as complete only when these are present.
            file.attrs[schema.ATTR_START] = start
            file.attrs[schema.ATTR_STOP] = stop
            file.attrs[schema.ATTR_SHARD] = shard
            file.flush()

    def finalize(self, attrs: dict, *, exact_max: int = EXACT_MAX, index_seed: int = 0) -> Path:
        """Build the master from the shards; returns its path.

        ``attrs`` must hold ``source``, ``clip`` and ``backbone`` (dicts are stored as JSON).
        Vocabularies of an existing master with the same identity are carried over.
        """
        missing = {schema.ATTR_SOURCE, schema.ATTR_CLIP, schema.ATTR_BACKBONE} - set(attrs)
        if missing:
            raise ValueError(f"finalize needs attrs {sorted(missing)}")
        pending = self.pending_shards(remove_tmp=False)
        if pending:
            raise StoreError(f"{len(pending)} of {self.n_shards} shards are not written yet "
                             f"(first: {schema.shard_name(pending[0])}); rerun to finish them")
        tmp = self.master_tmp()
        try:
            write_master(tmp, [self.shard_path(shard) for shard in range(self.n_shards)], identity=self.identity,
                         attrs=attrs, previous=self.master, exact_max=exact_max, index_seed=index_seed)
            fsync_file(tmp)
            os.replace(tmp, self.master)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if write_failed(error):
                raise disk_error(error, f"master {self.master.name}") from error
            raise
        return self.master

def describe_difference(found: dict | None, expected: dict) -> str:
    if found is None:
        return "it records no identity"
    keys = sorted(key for key in set(found) | set(expected) if found.get(key) != expected.get(key))
    return "differs in " + ", ".join(keys) if keys else "identity differs"


def write_vocabulary(master: Path, name: str, classes: Sequence[str], single: np.ndarray, ensemble: np.ndarray,
                     *, prompt: str, n_templates: int, overwrite: bool = False) -> None:
    """Add (or with ``overwrite`` replace) the text embeddings of a class vocabulary.

    Only ``/vocab/<name>`` changes; image data is not touched. Rows are stored L2-normalised.
    """
    classes = [str(c) for c in classes]
    if not schema.valid_vocabulary_name(name):
        raise ZsfsError(schema.INVALID_VOCABULARY_NAME.format(name))
    if not classes:
        raise ZsfsError(f"vocabulary {name!r} has no classes")
    duplicates = sorted(c for c, count in Counter(classes).items() if count > 1)
    if duplicates:
        raise ZsfsError(f"vocabulary {name!r} lists classes more than once: {duplicates[:5]}")
    arrays = {kind: normalise_rows(np.asarray(values, dtype=np.float32), f"vocabulary {name!r} {kind}")
              for kind, values in ((schema.VOCAB_SINGLE, single), (schema.VOCAB_ENSEMBLE, ensemble))}
    with open_for_update(master) as file:
        clip_dim = file[schema.CLIP].shape[1]
        for kind, values in arrays.items():
            if values.shape != (len(classes), clip_dim):
                raise ZsfsError(f"vocabulary {name!r}: {kind} embeddings have shape {values.shape}, expected "
                                f"({len(classes)} classes, {clip_dim} = the store's CLIP dim)")
        target = f"{schema.VOCAB_GROUP}/{name}"
        if target in file and not overwrite:
            raise StoreError(f"{master} already has a vocabulary named {name!r}; pass --overwrite to replace it "
                             "or choose another name")

        def write(staging: str) -> None:
            group = file.create_group(staging)
            write_strings(group, schema.VOCAB_CLASSES, classes)
            for kind, values in arrays.items():
                group.create_dataset(kind, data=values)
            group.attrs[schema.ATTR_PROMPT] = prompt
            group.attrs[schema.ATTR_N_TEMPLATES] = int(n_templates)

        replace_staged(file, target, write, f"vocabulary {name!r}")


def write_neighbour_graph(master: Path, rows: np.ndarray, info: dict) -> None:
    """Add (or replace) the store's neighbour graph: ``rows`` (N, K), each image's K nearest
    store rows by CLIP inner product, best first, itself excluded, ``-1`` where none.
    ``info`` records how they were found: ``search`` and ``precision`` (``k`` is ``K``)."""
    rows = np.asarray(rows)
    missing = {"search", "precision"} - set(info)
    if missing:
        raise ZsfsError(f"a neighbour graph's record needs {sorted(missing)}")
    with open_for_update(master) as file:
        n_images = file[schema.CLIP].shape[0]
        if rows.ndim != 2 or len(rows) != n_images or not 0 < rows.shape[1] < max(n_images, 2):
            raise ZsfsError(f"a neighbour graph for {master} needs shape ({n_images}, K) with 0 < K < "
                            f"{n_images}, got {rows.shape}")
        if rows.size and (rows.min() < -1 or rows.max() >= n_images):
            raise ZsfsError(f"a neighbour graph for {master} holds row ids outside [-1, {n_images})")

        def write(staging: str) -> None:
            dataset = file.create_dataset(staging, data=rows.astype(np.int32), chunks=True)
            dataset.attrs[schema.ATTR_GRAPH] = canonical_json({**info, "k": int(rows.shape[1])})

        replace_staged(file, schema.GRAPH_DATASET, write, "the neighbour graph")


@contextmanager
def open_for_update(master: Path) -> Iterator[h5py.File]:
    """The master opened read-write, with a clear error when that is impossible."""
    try:
        file = h5py.File(master, "r+")
    except OSError as error:
        raise StoreError(f"cannot open {master} for writing ({error}); is it missing, read-only, or open "
                         "in another program?") from None
    with file:
        yield file


def replace_staged(file: h5py.File, target: str, write: Callable[[str], None], what: str) -> None:
    """Write ``target`` under a hidden sibling name with ``write(name)``, then move it into place:
    an existing ``target`` stays whole until the new one is complete."""
    parent, _, name = target.rpartition("/")
    staging = f"{parent}/.{name}{schema.TMP_SUFFIX}" if parent else f".{name}{schema.TMP_SUFFIX}"
    try:
        if staging in file:
            del file[staging]
        write(staging)
        if target in file:
            del file[target]
        file.move(staging, target)
    except BaseException as error:
        if write_failed(error):
            cause = "the disk is full; free some space" if is_disk_full(error) else f"{error}; fix that"
            raise ZsfsError(f"could not write {what} into {file.filename}: {cause} and rerun") from error
        raise


def normalise_rows(values: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit L2 norm; rows already unit-norm (to float16 precision) are returned
    as they are, without a copy. Zero or non-finite rows are an error, never silently kept."""
    if values.ndim != 2:
        raise ZsfsError(f"{what}: expected a 2-d array (rows, dim), got shape {values.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float32))
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise ZsfsError(f"{what}: {int(bad.sum())} rows are zero or not finite (first: row {int(np.argmax(bad))})")
    if np.all(np.abs(norms - 1) <= NORM_TOLERANCE):
        return values
    return values / norms[:, None]
