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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from zsfs import __version__
from zsfs.errors import StoreError, StoreMismatchError, ZsfsError
from zsfs.store import schema
from zsfs.store.index import EXACT_MAX, build_index, serialize_index

STRING = h5py.string_dtype("utf-8")
SIZE_DTYPE = np.int32
UNKNOWN_SIZE = -1  # width/height of images whose size was not recorded (imported stores)
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


def disk_error(error: OSError, what: str) -> ZsfsError:
    """Turn a failed write into an actionable message (disk full is the usual cause)."""
    full = error.errno == errno.ENOSPC or "no space left" in str(error).lower()
    cause = "the disk is full" if full else f"{error}"
    advice = "free some space and rerun" if full else "fix the problem and rerun"
    return ZsfsError(f"could not write {what}: {cause}. Finished shards are kept; {advice} the same command to resume.")


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
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise disk_error(error, f"shard {final.name}") from error
        except BaseException:
            tmp.unlink(missing_ok=True)
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
            self._write_master(tmp, attrs, exact_max=exact_max, index_seed=index_seed)
            fsync_file(tmp)
            os.replace(tmp, self.master)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise disk_error(error, f"master {self.master.name}") from error
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.master

    def _write_master(self, path: Path, attrs: dict, *, exact_max: int, index_seed: int) -> None:
        if self.n_shards == 0:
            raise ValueError("cannot finalize a store of zero items")
        shards = [h5py.File(self.shard_path(shard), "r") for shard in range(self.n_shards)]
        try:
            rows = np.array([len(shard[schema.PATH]) for shard in shards], dtype=np.int64)
            labelled = {schema.LABEL in shard for shard in shards}
            if len(labelled) > 1:
                raise StoreError(f"some shards in {self.shards_dir} have labels and others not; "
                                 "pass --overwrite to rebuild the store")
            with h5py.File(path, "w") as master:
                dims = {name: self._link_virtual(master, name, shards, rows) for name in schema.VIRTUAL_DATASETS}
                for name in (schema.PATH, schema.LABEL) if labelled == {True} else (schema.PATH,):
                    write_strings(master, name, concat_strings(shards, name))
                skipped = concat_strings(shards, schema.SKIPPED_PATH)
                write_strings(master, schema.SKIPPED_PATH, skipped)
                write_strings(master, schema.SKIPPED_REASON, concat_strings(shards, schema.SKIPPED_REASON))
                write_strings(master, schema.SHARDS_FILE, [self.relative_shard_name(s) for s in range(self.n_shards)])
                master.create_dataset(schema.SHARDS_ROWS, data=rows)

                index, index_info = build_index(gather(shards, schema.CLIP), exact_max=exact_max, seed=index_seed)
                blob = serialize_index(index)
                del index  # an IVF index over 1M rows is gigabytes: keep one copy at a time
                master.create_dataset(schema.INDEX_DATASET, data=blob)
                del blob
                self._carry_over_vocabularies(master)

                master.attrs.update({
                    schema.ATTR_FORMAT: schema.FORMAT_NAME,
                    schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
                    schema.ATTR_ZSFS_VERSION: __version__,
                    schema.ATTR_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    schema.ATTR_IDENTITY: canonical_json(self.identity),
                    schema.ATTR_N_IMAGES: int(rows.sum()),
                    schema.ATTR_N_SKIPPED: len(skipped),
                    schema.ATTR_INDEX: json.dumps(index_info),
                })
                for key, value in attrs.items():
                    if key in (schema.ATTR_CLIP, schema.ATTR_BACKBONE):
                        value = with_dim(value, dims[schema.CLIP if key == schema.ATTR_CLIP else schema.BACKBONE], key)
                    master.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        finally:
            for shard in shards:
                shard.close()

    def relative_shard_name(self, shard: int) -> str:
        """Shard file name relative to the master's folder: the store folder can move."""
        return f"{self.shards_dir.name}/{schema.shard_name(shard)}"

    def _link_virtual(self, master: h5py.File, name: str, shards: list[h5py.File], rows: np.ndarray) -> int:
        """Create ``name`` as a virtual dataset over the shards; returns its row width (0 for 1-d)."""
        shapes = {shard[name].shape[1:] for shard in shards}
        if len(shapes) > 1:
            raise StoreError(f"shards disagree on the shape of {name!r} ({sorted(shapes)}); "
                             "pass --overwrite to rebuild the store")
        tail = shapes.pop()
        dtype = shards[0][name].dtype
        layout = h5py.VirtualLayout(shape=(int(rows.sum()), *tail), dtype=dtype)
        offsets = np.concatenate([[0], np.cumsum(rows)])
        for shard_number, (shard, start, stop) in enumerate(zip(shards, offsets[:-1], offsets[1:])):
            if stop > start:
                source = h5py.VirtualSource(self.relative_shard_name(shard_number), name, shape=shard[name].shape)
                layout[start:stop] = source
        fill = np.nan if np.issubdtype(dtype, np.floating) else UNKNOWN_SIZE
        master.create_virtual_dataset(name, layout, fillvalue=fill)
        return int(tail[0]) if tail else 0

    def _carry_over_vocabularies(self, master: h5py.File) -> None:
        """Keep vocabularies that were added to a previous master of the same store."""
        if not self.master.is_file():
            return
        try:
            with h5py.File(self.master, "r") as old:
                if read_identity(old) == self.identity and schema.VOCAB_GROUP in old:
                    old.copy(old[schema.VOCAB_GROUP], master, name=schema.VOCAB_GROUP)
        except OSError:
            pass  # an unreadable old master has nothing worth keeping


def concat_strings(files: list[h5py.File], name: str) -> np.ndarray:
    parts = [file[name].asstr()[:] for file in files]
    return np.concatenate(parts) if parts else np.array([], dtype=object)


def gather(files: list[h5py.File], name: str) -> np.ndarray:
    """Concatenate one dataset of every shard into one array of its stored dtype."""
    first = files[0][name]
    out = np.empty((sum(len(file[name]) for file in files), *first.shape[1:]), dtype=first.dtype)
    start = 0
    for file in files:
        dataset = file[name]
        if len(dataset):
            dataset.read_direct(out, dest_sel=np.s_[start : start + len(dataset)])
        start += len(dataset)
    return out


def with_dim(record: dict, dim: int, key: str) -> dict:
    if record.get("dim") not in (None, dim):
        raise ValueError(f"{key} record says dim={record['dim']} but the stored embeddings have {dim}")
    return {**record, "dim": dim}


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
    if not name or "/" in name:
        raise ZsfsError(f"invalid vocabulary name {name!r}: use a non-empty name without '/'")
    if not classes:
        raise ZsfsError(f"vocabulary {name!r} has no classes")
    if len(set(classes)) != len(classes):
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        raise ZsfsError(f"vocabulary {name!r} lists classes more than once: {duplicates[:5]}")
    try:
        file = h5py.File(master, "r+")
    except OSError as error:
        raise StoreError(f"cannot open {master} for writing ({error}); is it missing, read-only, or open "
                         "in another program?") from None
    with file:
        clip_dim = file[schema.CLIP].shape[1]
        arrays = {kind: normalise_rows(np.asarray(values, dtype=np.float32), f"{name}/{kind}")
                  for kind, values in ((schema.VOCAB_SINGLE, single), (schema.VOCAB_ENSEMBLE, ensemble))}
        for kind, values in arrays.items():
            if values.shape != (len(classes), clip_dim):
                raise ZsfsError(f"vocabulary {name!r}: {kind} embeddings have shape {values.shape}, expected "
                                f"({len(classes)} classes, {clip_dim} = the store's CLIP dim)")
        target = f"{schema.VOCAB_GROUP}/{name}"
        if target in file and not overwrite:
            raise StoreError(f"{master} already has a vocabulary named {name!r}; pass --overwrite to replace it "
                             "or choose another name")
        # Written under a temporary name and moved: the old vocabulary stays whole until the end.
        staging = f"{schema.VOCAB_GROUP}/.{name}{schema.TMP_SUFFIX}"
        if staging in file:
            del file[staging]
        group = file.create_group(staging)
        write_strings(group, schema.VOCAB_CLASSES, classes)
        for kind, values in arrays.items():
            group.create_dataset(kind, data=values)
        group.attrs[schema.ATTR_PROMPT] = prompt
        group.attrs[schema.ATTR_N_TEMPLATES] = int(n_templates)
        if target in file:
            del file[target]
        file.move(staging, target)


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
