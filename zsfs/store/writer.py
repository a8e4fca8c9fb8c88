"""Writing stores: independent shard files, then a master that presents them as one store.

Every file is written whole under a fresh temporary name and renamed into place
(``zsfs.store.files``), so an interrupted run never leaves a half-written shard or master
behind: rerunning writes only the missing shards (``pending_shards``) and the result is
identical to an uninterrupted run. Vocabularies and the neighbour graph are files of their own
(``zsfs.store.extras``). The writer holds the store's lock while it lives.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from zsfs.errors import StoreError
from zsfs.store import schema
from zsfs.store.files import damaged_master_advice, new_hdf5, remove_file, remove_leftover_temp_files, temp_files_of
from zsfs.store.hdf5 import (DAMAGED_FILE_ERRORS, canonical_json, open_hdf5, read_identity, read_strings,
                             write_checked, write_strings)
from zsfs.digests import file_sha256
from zsfs.store.identity import mismatch_error
from zsfs.store.index import EXACT_MAX
from zsfs.store.integrity import check_structure, read_all
from zsfs.store.locks import acquire_lock, release_lock
from zsfs.store.master import (index_shards, make_room_for_shards, opened_shards, refuse_vds_prefix, strings_sha256,
                               text_is_whole, write_master)
from zsfs.store.placement import check_own_shards_folder, refuse_replacing_another_file
from zsfs.store.rows import usable_rows

SIZE_DTYPE = np.int32


class StoreFolderMoved(StoreError):
    """The store's folder, or its shards folder, is no longer where this run writes it."""


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


class StoreWriter:
    """Writes a store shard by shard; ``finalize`` then builds the master.

    ``identity`` says what makes existing shards reusable (source, listing, models, ...); the
    writer adds ``n_items``, ``shard_size`` and ``dtype`` to it. Shards are independent files,
    so several processes may each write a different subset of ``pending_shards()``: the
    coordinating writer holds the store's lock (a second ``zsfs`` run into the same output
    gets a clear error), helpers pass ``lock=False``. The lock is released by :meth:`close`
    (on leaving a ``with`` block), at the end of :meth:`finalize`, or when the writer is garbage-collected.
    """

    def __init__(self, master: Path, identity: dict, *, n_items: int, shard_size: int,
                 dtype: str = "float16", overwrite: bool = False, lock: bool = True) -> None:
        if dtype not in schema.EMBEDDING_DTYPES:
            raise ValueError(f"dtype must be one of {schema.EMBEDDING_DTYPES}, got {dtype!r}")
        if shard_size < 1 or n_items < 0:
            raise ValueError(f"need shard_size >= 1 and n_items >= 0, got {shard_size}, {n_items}")
        layout = {"n_items": int(n_items), "shard_size": int(shard_size), "dtype": dtype}
        clash = {key: identity[key] for key in layout if key in identity and identity[key] != layout[key]}
        if clash:
            raise ValueError(f"identity disagrees with the writer's arguments: {clash}")
        self.master = Path(master).absolute()
        refuse_vds_prefix(self.master)  # its reads would not be of the shards it writes: said before any is
        self.shards_dir = schema.shard_dir(self.master)
        self.identity = json.loads(canonical_json({**identity, **layout}))
        self.n_items, self.shard_size, self.dtype = int(n_items), int(shard_size), dtype
        self.n_shards = math.ceil(n_items / shard_size)
        self._release = lambda: None
        self._digests: dict[Path, tuple[tuple, str]] = {}
        self._folder_made = False  # by this run (a copy sent to a Ray worker keeps it)
        if lock:
            held = acquire_lock(self.master)
            self._release = weakref.finalize(self, release_lock, held)
        try:
            check_own_shards_folder(self.master, overwrite)  # before anything, --overwrite too: it would delete them
            refuse_replacing_another_file(self.master)
            if overwrite:
                self.remove_existing()
            else:
                self.check_existing()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the store's lock (idempotent)."""
        self._release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Not left to garbage collection: a kept traceback (a notebook's last error) holds the
        # writer, and with it the lock that keeps every other zsfs process out of this store.
        self.close()

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
        files = ([self.master] if self.master.exists() else []) + temp_files_of(self.master)
        if self.shards_dir.is_dir():
            files += sorted(self.shards_dir.glob(schema.SHARD_GLOB))
            files += sorted(self.shards_dir.glob(schema.VOCAB_GLOB))
            files += [path for path in [self.shards_dir / schema.GRAPH_FILE] if path.exists()]
            files += sorted(self.shards_dir.glob("*" + schema.TMP_SUFFIX))
        return files

    def check_existing(self) -> None:
        """Refuse to mix with a master or shards written from another source or other models."""
        for path in self.existing_files():
            if path.suffix == schema.TMP_SUFFIX:
                continue
            try:
                with open_hdf5(path) as file:
                    identity = read_identity(file)
            except Exception:  # unreadable, or damaged metadata (h5py's RuntimeError, a garbled identity)
                if path == self.master:
                    advice = damaged_master_advice(path)
                    fix = f"{advice}; else --overwrite replaces it (embedding every image again)," if advice else \
                        "; pass --overwrite to replace it"
                    raise StoreError(f"{path} exists and is not a readable zsfs store{fix} or choose another output") \
                        from None
                continue  # a damaged shard is simply rewritten
            if identity is None and path != self.master:
                continue  # so is one whose identity was lost: zsfs writes none without
            if identity != self.identity:
                raise mismatch_error(path, identity, self.identity)

    def remove_existing(self) -> None:
        for path in self.existing_files():
            path.unlink()
        if self.shards_dir.is_dir() and not any(self.shards_dir.iterdir()):
            self.shards_dir.rmdir()

    def remove_tmp_files(self) -> None:
        """Remove what interrupted runs left behind: temporary shards and master."""
        remove_leftover_temp_files(self.master, self.shards_dir)

    def recorded_shard_bytes(self) -> dict[Path, int]:
        """Each shard file's size as the finished master of this store recorded it (empty
        without such a master): a rerun re-writes shards that were cut short since."""
        return self._recorded(schema.SHARDS_BYTES, lambda sizes: sizes[:].tolist())

    def _recorded(self, dataset: str, read: Callable[[h5py.Dataset], Sequence]) -> dict[Path, object]:
        """Each shard file's entry in ``dataset`` of the finished master of this store (empty
        without such a master, or where it has no such dataset)."""
        if not self.master.is_file():
            return {}
        try:
            with open_hdf5(self.master) as master:
                if read_identity(master) != self.identity or dataset not in master:
                    return {}
                check_structure(master, self.master, master=True)  # its values would go into the new master
                names = read_strings(master[schema.SHARDS_FILE])
                values = read(master[dataset])
                return {self.master.parent / name: value for name, value in zip(names, values)}
        except (*DAMAGED_FILE_ERRORS, StoreError):  # a damaged master, or one reading another file, records
            return {}  # nothing: its shards are checked as without one

    def shard_is_complete(self, shard: int, recorded_bytes: dict[Path, int] | None = None) -> bool:
        """True if the shard's file opens and carries this shard's bounds and identity (and,
        where ``recorded_bytes`` has it, the size the master recorded)."""
        path = self.shard_path(shard)
        if not path.is_file():
            return False
        if recorded_bytes and path in recorded_bytes and path.stat().st_size != recorded_bytes[path]:
            return False
        try:
            with open_hdf5(path) as file:
                check_structure(file, path)  # one planted to read another file is written again, never read through
                attrs = file.attrs
                return (  # (the identity holds the listing's size and the shard size: the shard's rows follow)
                    read_identity(file) == self.identity
                    and attrs.get(schema.ATTR_SHARD) == shard
                    and all(name in file for name in schema.VIRTUAL_DATASETS)
                )
        except Exception:  # damaged metadata fails in h5py as RuntimeError, KeyError, ...: written again
            return False

    def master_is_current(self) -> bool:
        """True when the master exists and records every shard file as it is: a repair that
        stopped between its shards and the master's rebuild leaves it stale."""
        return self.master.is_file() and not self.shards_changed_since_master()

    def is_complete(self, *, remove_tmp: bool = True) -> bool:
        """Every shard whole and a current master: a rerun has nothing to write (``remove_tmp``:
        as for :meth:`pending_shards`)."""
        return not self.pending_shards(remove_tmp=remove_tmp) and self.master_is_current()

    def shards_changed_since_master(self) -> list[int]:
        """Shards whose file was written after the master and differs from the sha256 it recorded
        (none without a master). A copy, ``cp -r``, makes every shard newer than its master
        without changing a byte; only those newer files are hashed."""
        if not self.master.is_file():
            return []
        built = self.master.stat().st_mtime_ns
        paths = {shard: self.shard_path(shard) for shard in range(self.n_shards)}
        newer = [shard for shard, path in paths.items() if path.is_file() and path.stat().st_mtime_ns > built]
        recorded = self._recorded(schema.SHARDS_SHA256, read_strings) if newer else {}
        return [shard for shard in newer if recorded.get(paths[shard]) != self._sha256(paths[shard])]

    def _sha256(self, path: Path) -> str:
        """``path``'s sha256, hashed once while its size and time stay the same (a rerun asks
        twice: which shards to write, then whether the master is current)."""
        info = path.stat()
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        known = self._digests.get(path)
        if known is None or known[0] != key:
            known = self._digests[path] = (key, file_sha256(path))
        return known[1]

    def _shard_checksums(self, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
        """Each shard file's size and sha256, for the master (checked on open and by ``--verify``).
        A shard the finished master of this store recorded, at the size it recorded, and whose
        inode changed last before that master was written (its ctime: a write, a copy in place
        with its dates kept, ``touch``, a rename all set it; only bit rot leaves it) keeps the
        digest recorded: a rerun that adds or repairs a few shards of a large store hashes only
        those, and an older shard damaged since still fails ``--verify`` against its first digest
        instead of being recorded as it is now."""
        sizes = np.array([path.stat().st_size for path in paths], dtype=np.int64)
        built = self.master.stat().st_mtime_ns if self.master.is_file() else None
        digests = self._recorded(schema.SHARDS_SHA256, read_strings) if built is not None else {}
        recorded_bytes = self.recorded_shard_bytes() if digests else {}
        kept = [digests.get(path) if recorded_bytes.get(path) == size and path.stat().st_ctime_ns < built else None
                for path, size in zip(paths, sizes.tolist())]
        return sizes, [str(digest) if digest is not None else self._sha256(path) for path, digest in zip(paths, kept)]

    def pending_shards(self, *, remove_tmp: bool = True) -> list[int]:
        """Shards not yet completely written, or missing, cut short or damaged since the store's
        finished master recorded them (a rerun repairs them). Removes leftover temporary files unless
        ``remove_tmp=False`` (pass that when other processes write shards concurrently)."""
        if remove_tmp:
            self.remove_tmp_files()
        recorded = self.recorded_shard_bytes()
        pending = [shard for shard in range(self.n_shards) if not self.shard_is_complete(shard, recorded)]
        # changed in place since the master (same size): rewritten if a chunk fails its checksum or
        # its text its digest, else the rebuilt master would record the damaged file's digest as
        # the good one (crash review: a path changed so passed --verify after any rerun)
        changed = [shard for shard in self.shards_changed_since_master() if shard not in pending]
        pending += [shard for shard in changed if not self._is_whole(shard)]
        if not self.master.is_file():  # a stopped run's shards: their text is checked before a master copies it
            pending += [shard for shard in range(self.n_shards)
                        if shard not in pending and not self._is_whole(shard, data=False)]
        return sorted(pending)

    def announce(self, pending: Sequence[int], on_start: Callable[[int], None] | None,
                 on_resume: Callable[[int, int], None] | None) -> None:
        """Tell ``on_resume(kept, n_shards)`` how many shards an earlier run finished (when it finished
        some, not all), then ``on_start(items)`` how many items the ``pending`` shards hold. Before
        that, when there are shards to write, make sure the master can open them all once they are
        written (:func:`make_room_for_shards`): said now, not after hours of embedding."""
        if pending:
            make_room_for_shards(self.n_shards)
            self._make_shards_folder()
        if on_resume is not None and 0 < len(pending) < self.n_shards:
            on_resume(self.n_shards - len(pending), self.n_shards)
        if on_start is not None:
            on_start(sum(stop - start for start, stop in map(self.shard_bounds, pending)))

    def kept_for_a_rerun(self, pending: Sequence[int], item: str = "file", redo: str = "embeds") -> str:
        """What a stopped run leaves its rerun: the items of the shards finished before it, and of
        those of its ``pending`` shards it finished (a shard is kept whole or not at all); ``item``
        is what a row holds ("file", "row"), ``redo`` what the rerun does to the rest ("embeds")."""
        from zsfs.names import counted

        recorded = self.recorded_shard_bytes()
        unfinished = [shard for shard in pending if not self.shard_is_complete(shard, recorded)]
        kept = self.n_items - sum(stop - start for start, stop in map(self.shard_bounds, unfinished))
        if not kept:
            items = counted(self.n_items, item)
            shards = (f"the {items} here {'is' if self.n_items == 1 else 'are'} one shard"
                      if self.shard_size >= self.n_items else f"each holds {self.shard_size:,} {item}s")
            return (f"no shard was finished ({shards}: --shard-size {self.shard_size:,}): a rerun {redo} the "
                    f"{items} from the start")
        return (f"the finished shards hold {kept:,} of the {self.n_items:,} {item}s (--shard-size "
                f"{self.shard_size:,}): a rerun keeps them and {redo} the other {self.n_items - kept:,}")

    def tell_what_a_rerun_keeps(self, stop: BaseException, pending: Sequence[int], item: str = "file",
                                redo: str = "embeds") -> None:
        """Attach :meth:`kept_for_a_rerun` to ``stop``, what ended the writing of ``pending``: as
        ``stop.resume`` for the command line's one line and, for a Python caller, as a note its
        traceback prints (Python 3.11+). Never raises: a file system that fails now must not
        replace the error."""
        if isinstance(stop, StoreFolderMoved):  # counted at the old place, the finished shards would read as none
            return
        with suppress(Exception):
            stop.resume = resume = self.kept_for_a_rerun(pending, item, redo)
            if hasattr(stop, "add_note"):
                stop.add_note(f"{resume[0].upper()}{resume[1:]}.")

    def _is_whole(self, shard: int, *, data: bool = True) -> bool:
        """True when the shard's text (paths, labels, skip reasons) matches its digest and, with
        ``data``, every dataset of its file reads through its checksums."""
        path = self.shard_path(shard)
        try:
            with open_hdf5(path) as file:
                if data:
                    read_all(file, path)
                return text_is_whole(file)
        except Exception:  # damaged metadata fails in h5py as RuntimeError, KeyError, ...: not whole either
            return False

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, shard: int, data: ShardData) -> None:
        """Write one shard to a temporary file, flush it, then rename it into place."""
        data.validate()
        start, stop = self.shard_bounds(shard)
        n_listed = len(data) + len(data.skipped_paths)
        if n_listed != stop - start:
            raise ValueError(f"shard {shard} covers {stop - start} listed items, got {len(data)} "
                             f"embedded + {len(data.skipped_paths)} skipped")
        final = self.shard_path(shard)
        self._check_in_place()
        with new_hdf5(final, f"shard {final.name}") as file:
            self._write_shard_file(file, shard, start, stop, data)

    def _check_in_place(self) -> None:
        """Stop when the store's folder, or its shards folder, was moved, renamed or removed while
        this run wrote it (:meth:`announce` made it): writing on made new folders at the old path,
        beside no lock, and split the store in two, neither of them usable (a review moved the
        folder during an extract). A check of the name, which holds in every process that writes
        shards (Ray's workers get a copy of this writer) and on every file system."""
        if not self._folder_made:
            self._make_shards_folder()
        elif not self.shards_dir.is_dir():
            raise self._moved()

    def _make_shards_folder(self) -> None:
        """Make the shards folder, once (a shard never makes it again: see :meth:`_check_in_place`)."""
        try:
            self.shards_dir.mkdir(exist_ok=True)  # (not its parents: the lock made the store's folder)
        except FileNotFoundError:
            raise self._moved() from None
        self._folder_made = True

    def _moved(self) -> StoreFolderMoved:
        return StoreFolderMoved(f"{self.shards_dir} was moved, renamed or removed while this process wrote it; "
                                "nothing more was written: put it back where it was and rerun, which keeps the "
                                f"shards finished ({self.master})")

    def _write_shard_file(self, file: h5py.File, shard: int, start: int, stop: int, data: ShardData) -> None:
        for name, values in ((schema.CLIP, data.clip), (schema.BACKBONE, data.backbone)):
            with np.errstate(over="ignore"):  # checked as stored: float16 overflows above 65504
                stored = np.asarray(values, dtype=self.dtype)
            usable = usable_rows(stored)
            if not usable.all():  # every fit of the store would score every image NaN
                first = int(np.argmin(usable))
                raise ValueError(f"{name} row {first} ({data.paths[first]!r}) is NaN, infinite or all zero as "
                                 f"{self.dtype}; record that image as skipped instead")
            write_checked(file, name, stored)
        write_checked(file, schema.WIDTH, np.asarray(data.width, dtype=SIZE_DTYPE))
        write_checked(file, schema.HEIGHT, np.asarray(data.height, dtype=SIZE_DTYPE))
        write_strings(file, schema.PATH, data.paths)
        if data.labels is not None:
            write_strings(file, schema.LABEL, data.labels)
        write_strings(file, schema.SKIPPED_PATH, data.skipped_paths)
        write_strings(file, schema.SKIPPED_REASON, data.skipped_reasons)
        file.attrs[schema.ATTR_STRINGS_SHA256] = strings_sha256(file)  # read back: what the file holds
        file.attrs[schema.ATTR_FORMAT] = schema.SHARD_FORMAT
        file.attrs[schema.ATTR_FORMAT_VERSION] = schema.FORMAT_VERSION
        file.attrs[schema.ATTR_IDENTITY] = canonical_json(self.identity)
        file.attrs[schema.ATTR_START] = start
        file.attrs[schema.ATTR_STOP] = stop
        file.attrs[schema.ATTR_SHARD] = shard

    def finalize_if_changed(self, attrs: dict, *, shards_written: bool, **options) -> Path:
        """:meth:`finalize` when this run wrote shards or the master is older than one; otherwise
        keep the complete store as it is (a rebuilt master drops the neighbour graph and changes
        the store's fingerprint). Releases the lock either way; returns the master's path."""
        if shards_written or not self.master_is_current():
            return self.finalize(attrs, **options)
        self.close()
        return self.master

    def finalize(self, attrs: dict, *, exact_max: int = EXACT_MAX) -> Path:
        """Build the master from the shards; returns its path.

        ``attrs`` must hold ``source``, ``clip`` and ``backbone`` (dicts are stored as JSON).
        Vocabularies inside an existing master of the same identity (format 1) are carried over;
        vocabulary files beside the shards stay as they are; the neighbour graph is removed.
        """
        missing = {schema.ATTR_SOURCE, schema.ATTR_CLIP, schema.ATTR_BACKBONE} - set(attrs)
        if missing:
            raise ValueError(f"finalize needs attrs {sorted(missing)}")
        self._check_in_place()  # (the master too would be written at the old path)
        # not pending_shards(): shards written by this run differ from the old master's record
        pending = [shard for shard in range(self.n_shards) if not self.shard_is_complete(shard)]
        if pending:
            raise StoreError(f"{len(pending)} of {self.n_shards} shards are not written yet "
                             f"(first: {schema.shard_name(pending[0])}); rerun to finish them")
        shard_paths = [self.shard_path(shard) for shard in range(self.n_shards)]
        with opened_shards(shard_paths) as shards:
            # the long parts first: writing the master holds Ctrl-C until it ends
            checksums = self._shard_checksums(shard_paths)
            index, index_info = index_shards(shards, exact_max=exact_max)
            with new_hdf5(self.master, f"master {self.master.name}") as file:
                write_master(file, shards, identity=self.identity, attrs=attrs, previous=self.master,
                             index=index, index_info=index_info, checksums=checksums)
            del index
        # The graph described the embeddings of the previous build (it records that build's id).
        remove_file(schema.graph_file(self.shards_dir))
        self.close()
        return self.master
