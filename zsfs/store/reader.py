"""Reading stores: metadata, row datasets (whole, sliced, gathered or chunked), vocabularies, index
(row selection: ``zsfs.store.rows``; reading a vocabulary file: ``zsfs.store.extras``)."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from zsfs.digests import evenly_spaced_rows, file_sha256
from zsfs.errors import (ParameterError, StoreError, check_at_least, check_parameter_type, check_path,
                         checked_arguments, one_line, shown_value)
from zsfs.names import as_argument, counted, some_names, spelled_like
from zsfs.store import schema
from zsfs.store.extras import (Vocabulary, checked_extra, open_extra, planned_vocabularies, read_vocabulary,
                               reading_extra, vocabulary_files, vocabulary_name_as_stored)
from zsfs.store.files import REPAIR, damaged_master_advice, leftover_temp_files
from zsfs.store.locks import master_file, written_elsewhere
from zsfs.store.hdf5 import (DAMAGED_FILE_ERRORS, canonical_json, open_hdf5, read_errors, read_identity, read_strings,
                             string_view)
from zsfs.store.index import (MISSING, SAMPLE_ROWS, index_mismatch, read_index_blocks, stored_vectors,
                              vectors_differ)
from zsfs.store.integrity import check_structure, read_all
from zsfs.store.master import make_room_for_shards, open_master, strings_sha256, text_is_whole
from zsfs.store.rows import READ_BLOCK, read_rows

if TYPE_CHECKING:
    import faiss



def _model_record(attrs: h5py.AttributeManager, role: str) -> dict:
    """The master's ``clip`` or ``backbone`` record; ValueError without the ``dim`` every reader
    takes (a master written by hand: its fit or ``info`` failed on a KeyError deep inside).
    ``name`` and ``weights`` (which ``write_store`` asks for) read as None when missing."""
    record = json.loads(attrs[role])
    if not isinstance(record, dict):
        raise ValueError(f"its {role} record is not a JSON object")
    if "dim" not in record:
        raise ValueError(f"its {role} record has no 'dim'")
    if not isinstance(record["dim"], int) or isinstance(record["dim"], bool) or record["dim"] < 1:
        raise ValueError(f"its {role} record's dim is not a whole number >= 1: {record['dim']!r}")
    return {"name": None, "weights": None, **record}


class Store:
    """An open store (read-only). Use as a context manager, or call :meth:`close`.

    Opening checks cheaply that every shard file is the one the master recorded (identity,
    position, rows, size) and that no file points outside the store; :meth:`verify` checks
    every byte.
    """

    @checked_arguments
    def __init__(self, path: str | Path) -> None:
        self.path = master_file(check_path("path", path))  # a link's store: shards beside the master, not the link
        # Stamped before it is opened: a rebuild (shards first, the master last) that ends
        # after this point replaces the master, so check_unchanged sees it, however it interleaves.
        master_stamp = file_stamp(self.path)
        self._master = open_master(self.path)
        self._graph_file: h5py.File | None = None
        self._unreadable_graph: str | None = None  # why the graph file cannot be read: set aside, as a vocabulary's
        try:
            self._opened_stamps = [master_stamp]
            with self._rebuild_named():  # a shard or vocabulary "of another store", met halfway through a rebuild
                self._read_metadata()
                self._check_shards()
                self._vocabulary_files, self._unreadable_vocabularies = vocabulary_files(self.data_dir, self.identity)
                if self._unreadable_vocabularies:
                    self.check_unchanged()  # a file "of another store" met halfway through a rebuild: name the rebuild
            self._too_many_shards: StoreError | None = None
            try:  # HDF5 reads a shard it cannot open as missing rows, NaN, without an error (review)
                make_room_for_shards(self.n_shards, "reading its rows opens them all")
            except StoreError as error:  # said by the first read through the shards: the master's own
                self._too_many_shards = error  # datasets (paths, labels, skips: info, reruns) stay readable
            self._shard_folders = sorted({(self.path.parent / name).parent for name in self.shard_files})
            self._folder_stamps = self._shard_folder_stamps()  # first: a change after it shows in the quick check
            self._opened_stamps = [master_stamp, *self._file_stamps()[1:]]  # the shards' stamps, now they are known
        except BaseException:
            self._master.close()
            raise

    @property
    def _file(self) -> h5py.File:
        """The open master file (h5py's own errors on a closed one name no store, or mislead)."""
        self._check_open()
        return self._master

    def _check_open(self) -> None:
        if not self._master:  # a closed h5py file is false
            raise StoreError(f"the store {self.path} was closed; open it again: zsfs.Store(path)")

    def _read_metadata(self) -> None:
        attrs = self._file.attrs
        try:
            self.n_images = int(attrs[schema.ATTR_N_IMAGES])
            self.n_skipped = int(attrs[schema.ATTR_N_SKIPPED])
            self.clip_info: dict = _model_record(attrs, schema.ATTR_CLIP)
            self.backbone_info: dict = _model_record(attrs, schema.ATTR_BACKBONE)
            self.index_info: dict = json.loads(attrs[schema.ATTR_INDEX])
            self.identity: dict = json.loads(attrs[schema.ATTR_IDENTITY])
            self.source = str(attrs[schema.ATTR_SOURCE])
            self.created = str(attrs[schema.ATTR_CREATED])
            self.zsfs_version = str(attrs[schema.ATTR_ZSFS_VERSION])
            self.shard_files = [str(name) for name in read_strings(self._file[schema.SHARDS_FILE])]
            self.shard_rows = self._file[schema.SHARDS_ROWS][:]
            self.shard_bytes = self._file[schema.SHARDS_BYTES][:] if schema.SHARDS_BYTES in self._file else None
            self.dtype = str(self._file[schema.CLIP].dtype)
            self.build = str(attrs.get(schema.ATTR_BUILD, ""))
            self.has_labels = schema.LABEL in self._file
            self._check_counts()
        except DAMAGED_FILE_ERRORS as error:
            raise StoreError(f"{self.path} is damaged or incomplete ({one_line(error)}); rebuild it"
                             f"{damaged_master_advice(self.path)}") from None
        self.n_shards = len(self.shard_files)
        # Vocabularies and the graph live beside the shards (the master may have been renamed).
        first = self.shard_files[0] if self.shard_files else schema.shard_dir(self.path).name + "/x"
        self.data_dir = self.path.parent / Path(first).parent

    def _check_counts(self) -> None:
        """ValueError when the master's counts and widths disagree with its datasets (a master edited
        by hand, or written so): a fit read ``n_images`` rows of labels into ``len(path)`` and failed on
        a numpy traceback; a wrong CLIP ``dim`` was blamed on every vocabulary file instead."""
        file, expected = self._file, {}
        if schema.PATH not in file:  # (a fit failed on it at its predict step, after all its work: a review)
            raise ValueError(f"it has no {schema.PATH!r} dataset")
        for name in (*schema.VIRTUAL_DATASETS, schema.PATH, schema.LABEL):
            if name in file:
                expected[name] = (self.n_images, "n_images")
        expected[schema.SKIPPED_PATH] = (self.n_skipped, "n_skipped")
        for name, (count, attribute) in expected.items():
            if name in file and len(file[name]) != count:
                raise ValueError(f"its {attribute} attribute is {count:,} but its {name!r} dataset holds "
                                 f"{len(file[name]):,} rows")
        if int(self.shard_rows.sum()) != self.n_images:
            raise ValueError(f"its n_images attribute is {self.n_images:,} but its shards hold "
                             f"{int(self.shard_rows.sum()):,} rows")
        for role, record in ((schema.CLIP, self.clip_info), (schema.BACKBONE, self.backbone_info)):
            width = file[role].shape[1] if role in file and file[role].ndim == 2 else None
            if width is not None and width != record["dim"]:
                raise ValueError(f"its {role} record's dim is {record['dim']} but its {role!r} dataset is "
                                 f"{width} wide")

    def _repairable(self) -> bool:
        """A rerun of the command that made the store repairs its shards only under the master's
        first name: under another, it would build the store anew in another shard folder."""
        return bool(self.shard_files) and Path(self.shard_files[0]).parent.name == schema.shard_dir(self.path).name

    def _how_to_repair(self, files: str) -> str:
        if self._repairable():
            return f"remove {files} and {REPAIR}"
        return "rebuild the store (rerun the command that made it, with --overwrite)"

    def _check_shards(self) -> None:
        """Missing shards would read as fill values without any error, so check them up front."""
        folder = self.path.parent
        try:
            missing = [name for name in self.shard_files if not (folder / name).is_file()]
        except PermissionError as error:  # a shards folder others may not open (chmod 700): not missing, unreachable
            name = Path(os.fsdecode(error.filename)).relative_to(folder)
            raise StoreError(f"{self.path}: cannot read {name} ({error.strerror}: its folder {name.parent} cannot be "
                             "opened); make that folder readable") from None
        if missing:
            recorded = Path(missing[0]).parent  # the folder the master was built with (a renamed master keeps it)
            repair = f", or {REPAIR}" if self._repairable() else ""
            raise StoreError(f"{self.path} is missing {len(missing)} of {self.n_shards} shard files "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); keep the "
                             f"{recorded}/ folder, under that name, next to {self.path.name}{repair}")
        damaged, misplaced, first_error = [], [], None
        for position, (name, rows) in enumerate(zip(self.shard_files, self.shard_rows)):
            size_ok = self.shard_bytes is None or (folder / name).stat().st_size == self.shard_bytes[position]
            try:  # HDF5 notices truncation on open (end of file before its recorded end)
                with open_hdf5(folder / name) as shard:
                    check_structure(shard, folder / name)
                    ok = size_ok and read_identity(shard) == self.identity and all(
                        shard[dataset].shape[0] == rows for dataset in schema.VIRTUAL_DATASETS)
                    if ok and shard.attrs.get(schema.ATTR_SHARD) != position:
                        misplaced.append(f"{name} holds shard {shard.attrs.get(schema.ATTR_SHARD)}")
            except PermissionError as error:  # not damage: removing it would lose a whole shard
                raise StoreError(f"{self.path}: cannot read {name} ({os.strerror(error.errno)}); make it readable") \
                    from None  # (h5py's strerror is its whole message)
            except DAMAGED_FILE_ERRORS as error:  # ValueError too: an identity that is not JSON
                ok = False
                first_error = first_error or (name, one_line(error))  # damage, or a fault of ours to report
            if not ok:
                damaged.append(name)
        if damaged:
            one = len(damaged) == 1
            why = "" if first_error is None else f" ({first_error[1]})" if one else " ({}: {})".format(*first_error)
            raise StoreError(f"{self.path}: {'shard file' if one else 'shard files'} "
                             f"{some_names(damaged, 3, with_count=False, separator=', ')} "
                             f"{'is damaged or does' if one else 'are damaged or do'} not belong to this store{why}; "
                             f"{self._how_to_repair('it' if one else 'them')}")
        if misplaced:
            raise StoreError(f"{self.path}: shard files were swapped or renamed ({', '.join(misplaced[:3])}); "
                             "put them back under their own names or rebuild the store")

    def _file_stamps(self) -> list[tuple[int, int, int, int] | None]:
        """:func:`file_stamp` of the master and of each shard file (those the master lists, once read)."""
        shards = getattr(self, "shard_files", [])
        return [file_stamp(path) for path in (self.path, *(self.path.parent / name for name in shards))]

    def _shard_folder_stamps(self) -> list[tuple[int, int, int, int] | None]:
        """:func:`file_stamp` of each folder holding shard files (one, but for old stores)."""
        return [file_stamp(folder) for folder in getattr(self, "_shard_folders", [])]

    def check_unchanged(self, thorough: bool = True) -> None:
        """StoreError when the master or a shard file was replaced, moved or deleted since the
        store was opened: the shards are read by name, so rows read since may come from the new
        build (or be NaN, a missing shard's fill) while the master's paths and labels are the old
        one's. Long readers (a fit) call it before they hand out results: ``thorough``, a stat of
        every file. :meth:`read` and :meth:`iter_chunks` call it after each read, not thorough:
        the master's and the shards' folder's stamps, which a shard replaced (renamed into place,
        as zsfs writes), moved or deleted changes; one overwritten in place (``cp`` over it) only
        the thorough check sees, as folders on some network file systems keep no reliable times."""
        opened = self._opened_stamps
        if not thorough and len(opened) > 1 and file_stamp(self.path) == opened[0] and \
                self._shard_folder_stamps() == self._folder_stamps:
            return  # nothing in the shards' folders changed (the usual case): two stats
        folder_stamps = self._shard_folder_stamps()
        stamps = self._file_stamps()[: len(opened)]  # while opening: the master only
        if stamps == opened:  # a vocabulary or graph was written beside the shards: they are as opened
            self._folder_stamps = folder_stamps
            return
        reopen = "open the store again (from Python: zsfs.Store(path))"
        if stamps[0] is None and written_elsewhere(self.path):  # a rebuild with --overwrite removes it first
            raise StoreError(f"{self.path} is gone while another zsfs process writes the store (an extract or import "
                             "with --overwrite removes the old master before it writes the new one), so what this "
                             "process read may be the old store's; nothing was written: rerun once that process is "
                             f"done (if the store was moved instead, {reopen} where it is now)")
        if stamps[0] is None:
            raise StoreError(f"{self.path} was moved or deleted since this process opened it; {reopen} where it is now")
        gone = [name for name, stamp in zip(getattr(self, "shard_files", []), stamps[1:]) if stamp is None]
        if gone and stamps[0] == opened[0]:  # the same master: its shards went, no rebuild took their place
            raise StoreError(f"{self.path.parent / gone[0]} was moved or deleted since this process opened the store "
                             f"({counted(len(gone), 'shard file')} gone), so rows read from it are not the store's; put "
                             f"it back (or {REPAIR}), then {reopen}")
        raise StoreError(f"{self.path} was rebuilt or repaired while this process was reading it (by a zsfs "
                         "extract or import, here or in another process), so what it read may mix the old and the "
                         "new store; nothing was written: rerun once that is done (from Python: open the store "
                         "again, zsfs.Store(path))")

    @contextmanager
    def _rebuild_named(self) -> Iterator[None]:
        """A StoreError raised in the block (damage, a file of another store) names the rebuild
        instead, when the store was rebuilt since it was opened: that is the cause then."""
        try:
            yield
        except StoreError:
            self.check_unchanged()
            raise

    @contextmanager
    def _read_errors(self, what: str) -> Iterator[None]:
        with self._rebuild_named(), read_errors(self.path, what):
            yield

    # -- context manager ------------------------------------------------------------------
    def close(self) -> None:
        """Close the store's files (``with Store(path) as store:`` does it on leaving)."""
        if self._graph_file is not None:
            self._graph_file.close()
            self._graph_file = None
        self._master.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, n_images={self.n_images})"

    def __reduce__(self):  # pickle, multiprocessing's spawn, a Pool's arguments: h5py's own TypeError named none
        raise ParameterError(f"a Store holds HDF5 files and cannot be pickled or copied (to send it to another "
                             f"process, say): pass its path ({str(self.path)!r}) and open it there with zsfs.Store(path)")

    # -- rows -----------------------------------------------------------------------------
    def paths(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """The images' paths, as recorded (``rows``: as :meth:`read` takes them; None = all)."""
        with self._read_errors(schema.PATH):
            paths = read_rows(string_view(self._dataset(schema.PATH)), rows)
        self.check_unchanged(thorough=False)  # as read's: the open master is the old build's after a rebuild
        return paths

    def labels(self) -> np.ndarray | None:
        """Each image's true label (strings, in row order), or None for a store without labels."""
        if self.has_labels:
            return self._strings(schema.LABEL)
        self._check_open()  # as reading them would: closed, or rebuilt (with labels, maybe) since it was opened
        self.check_unchanged(thorough=False)
        return None

    def skipped(self) -> tuple[np.ndarray, np.ndarray]:
        """The files extract skipped and why: (paths, reasons), in listing order."""
        return self._strings(schema.SKIPPED_PATH), self._strings(schema.SKIPPED_REASON)

    def check_enough_images(self, least: int, needs: str) -> None:
        """A ``StoreError`` when the store holds fewer than ``least`` images; ``needs`` says for
        what (``"a fit"``): checked before anything else, whose advice could not help."""
        if self.n_images < least:
            skipped = (f" ({counted(self.n_skipped, 'file')} skipped: `zsfs info --skipped {as_argument(self.path)}` lists "
                       "them and why)" if self.n_skipped else "")
            raise StoreError(f"{self.path} holds {counted(self.n_images, 'embedded image')}; {needs} needs at "
                             f"least {least}{skipped}")

    def _strings(self, name: str) -> np.ndarray:
        with self._read_errors(name):
            strings = read_strings(self._dataset(name))
        self.check_unchanged(thorough=False)  # as paths'
        return strings

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self._file:
            raise StoreError(f"{self.path} has no dataset {name!r}")
        return self._file[name]

    def read(self, dataset: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Rows of ``dataset`` ("clip", "backbone", "width", "height") in the stored dtype.

        ``rows``: None (all), a slice, integer row ids (any order, repeats allowed) or a
        boolean mask.
        """
        self._check_row_dataset(dataset)
        with self._read_errors(dataset):
            read = read_rows(self._dataset(dataset), rows)
        self.check_unchanged(thorough=False)  # the shards are read by name: a rebuild's would pass for this store's
        return read

    def _check_row_dataset(self, dataset: str) -> None:
        if dataset not in schema.VIRTUAL_DATASETS:  # the others have their own readers
            raise ParameterError(f"{{dataset}}: read() and iter_chunks() read {', '.join(schema.VIRTUAL_DATASETS)}, "
                                 f"not {shown_value(dataset)}; paths(), labels(), skipped() and neighbour_graph() read "
                                 "the rest")
        self._check_room_for_shards()

    def _check_room_for_shards(self) -> None:
        """The open-files error of a read through the shards (the virtual datasets) past the limit."""
        if self._too_many_shards is not None:
            raise self._too_many_shards

    def iter_chunks(self, dataset: str, chunk_rows: int = READ_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` blocks of ``dataset`` (as :meth:`read`'s) in order: bounded memory for big stores."""
        check_at_least("chunk_rows", chunk_rows, 1)  # 0 failed in range(), -1 yielded nothing
        self._check_row_dataset(dataset)  # here, not at the first block: a generator runs nothing until then
        return self._blocks(self._dataset(dataset), dataset, chunk_rows)

    def _blocks(self, data: h5py.Dataset, dataset: str, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(data), chunk_rows):
            self._check_open()  # closed since the last block (a `with` left): said so, not "damaged"
            with self._read_errors(dataset):
                block = data[start : start + chunk_rows]
            self.check_unchanged(thorough=False)  # as read's
            yield start, block

    # -- vocabularies and index -----------------------------------------------------------
    def vocabulary_names(self) -> list[str]:
        """The store's vocabularies, as its folder holds them now: those added (zsfs text, import
        --vocab) or removed since it was opened too (a folder listing; the files are read if it changed)."""
        group = self._file.get(schema.VOCAB_GROUP)  # format 1 kept vocabularies in the master
        listed = set(self.data_dir.glob(schema.VOCAB_GLOB))
        if listed != {*self._vocabulary_files.values(), *self._unreadable_vocabularies}:
            self._vocabulary_files, self._unreadable_vocabularies = vocabulary_files(self.data_dir, self.identity)
            if self._unreadable_vocabularies:  # as when opened: a file "of another store" may be a rebuild's
                self.check_unchanged()
        legacy = [name for name in group if not name.startswith(".")] if group is not None else []
        return sorted(set(legacy) | set(self._vocabulary_files))

    @property
    def unwritten_vocabularies(self) -> list[str]:
        """The vocabularies that the command which built the store writes after its master, and has
        not written: it was stopped between (killed, a full disk). A rerun of it writes them."""
        return self._unwritten()[0]

    def _unwritten(self) -> tuple[list[str], str]:
        """:attr:`unwritten_vocabularies`, and the command that planned them."""
        planned, command = planned_vocabularies(self.data_dir, self.identity)
        if self.n_images == 0:  # nothing was embedded: its command stopped there, on purpose
            return [], command
        written = set(self.vocabulary_names())  # a file that cannot be read was written: it is damaged
        return [name for name in planned
                if name not in written and not schema.vocabulary_file(self.data_dir, name).exists()], command

    def unwritten_note(self) -> str:
        """Why :attr:`unwritten_vocabularies` are missing, and what writes them ("" when none are)."""
        names, command = self._unwritten()
        if not names:
            return ""
        kind = "command" if command.startswith("zsfs ") else "call"  # a CLI command, or a Python function
        one = len(names) == 1
        named = f"{'vocabulary' if one else 'vocabularies'} {', '.join(map(repr, names))}"
        maker, them = f"the {command}{'' if kind == 'command' else ' call'} that made the store", "it" if one else "them"
        if written_elsewhere(self.path):  # its command may still be running (or a `zsfs text`, which takes the lock too)
            return (f"{named} {'is' if one else 'are'} not written: {maker} writes {them} after its images, and "
                    f"another zsfs process is writing the store now; once that is done, rerun the {kind} if "
                    f"{'it is' if one else 'they are'} still missing")
        return (f"{named} {'was' if one else 'were'} not written: {maker} was stopped before it wrote {them} (after "
                f"the store's images); rerun that {kind}, which reuses the finished shards")

    def how_to_add_a_vocabulary(self) -> str:
        """The command that adds a vocabulary to this store: imported CLIP embeddings come with
        their text embeddings (zsfs cannot embed new class names in another tool's space)."""
        if self.clip_info.get("weights") == schema.IMPORTED_WEIGHTS:
            return (f"`zsfs import {as_argument(self.path)} ... --vocab NAME=FILE.npz` (rerun it with the other tool's "
                    "text embeddings; finished shards are reused)")
        return f"`zsfs text {as_argument(self.path)} --classes FILE --vocab NAME`"

    @property
    def unreadable_vocabularies(self) -> dict[str, str]:
        """Vocabulary file -> why it cannot be read (damaged, another store's): set aside when the
        store was opened, so that the other vocabularies stay usable; ``verify`` fails on them."""
        return {str(path): why for path, why in self._unreadable_vocabularies.items()}

    def stored_vocabulary_name(self, name: str) -> str:
        """``name`` as the store spells it: 'café' typed as e + U+0301 (as some keyboards and file
        names give it) names the store's 'café' in either form (zsfs writes new names composed,
        NFC; a store of an earlier zsfs may hold a decomposed one); a new name, composed."""
        return vocabulary_name_as_stored(name, self.vocabulary_names())

    def vocabulary(self, name: str) -> Vocabulary:
        """The vocabulary ``name``: its classes and text embeddings (``vocabulary_names()`` lists them)."""
        check_parameter_type("name", name, str)
        names = self.vocabulary_names()  # (a folder listing: once)
        name = vocabulary_name_as_stored(name, names)
        if name not in names:
            available = ", ".join(names) if names else f"none; add one with {self.how_to_add_a_vocabulary()}"
            unreadable = ""
            if self._unreadable_vocabularies:  # it may be the one in a damaged file (a digest names it)
                unreadable = (f"; {counted(len(self._unreadable_vocabularies), 'vocabulary file')} could not be read, "
                              f"maybe that one: {next(iter(self._unreadable_vocabularies.values()))}")
            hint = spelled_like(names, "the vocabulary")(name)  # --vocab Fashion for fashion
            if name in self.unwritten_vocabularies:
                hint = f": {self.unwritten_note()}"
            raise StoreError(f"{self.path.name} has no vocabulary {name!r}{hint} (available: {available}){unreadable}")
        if name not in self._vocabulary_files:  # format 1: a group in the master
            with self._read_errors(f"vocabulary {name!r}"):
                return read_vocabulary(self._file[schema.VOCAB_GROUP][name], name, self.path, self.clip_info["dim"])
        path = self._vocabulary_files[name]
        with self._rebuild_named(), reading_extra(path, schema.VOCAB_FORMAT, self.identity) as file:
            return read_vocabulary(file, name, path, self.clip_info["dim"])

    def _graph_dataset(self) -> h5py.Dataset | None:
        """The neighbour graph of this build of the store, or None."""
        master = self._file  # the store is open
        path = schema.graph_file(self.data_dir)
        if self._graph_file is None and self._unreadable_graph is None and path.is_file():
            try:
                file = open_extra(path, schema.GRAPH_FORMAT, self.identity)
                with checked_extra(file, path, schema.GRAPH_FORMAT):
                    this_build = str(file.attrs.get(schema.ATTR_BUILD)) == self.build
                    if this_build:  # read here once: damage found later would stop a fit, not set the graph aside
                        json.loads(file[schema.GRAPH_ROWS].attrs[schema.ATTR_GRAPH])
                        self._check_graph_shape(file[schema.GRAPH_ROWS], path)
            except StoreError as error:  # derived data: without it fits search neighbours themselves
                self.check_unchanged()  # unless the store was rebuilt since it was opened: that is the cause then
                self._unreadable_graph = str(error)
                return master.get(schema.GRAPH_DATASET)
            if this_build:
                self._graph_file = file
            else:  # left over from an earlier build (its removal was interrupted): not this store's
                file.close()
        if self._graph_file is not None:
            return self._graph_file[schema.GRAPH_ROWS]
        return master.get(schema.GRAPH_DATASET)  # format 1

    def _check_graph_shape(self, dataset: h5py.Dataset, path: Path) -> None:
        """StoreError unless ``dataset`` holds (N, K) whole numbers: a graph file edited by hand (or
        another build's, its ``build`` set to this one's) failed a fit on an out-of-range row id, not
        naming the file; set aside as damage is."""
        if dataset.ndim != 2 or dataset.shape[0] != self.n_images or dataset.shape[1] < 1 or \
                not np.issubdtype(dataset.dtype, np.integer):
            raise StoreError(f"{path} holds neighbours of shape {dataset.shape} ({dataset.dtype}), not "
                             f"({self.n_images:,}, K) row ids: it is not this store's graph; remove it, then rerun "
                             "`zsfs neighbours`")

    def _checked_graph_rows(self, found: np.ndarray) -> np.ndarray:
        """``found``, rows of the graph, or a StoreError naming its file when one is no store row
        (a fit failed on numpy's IndexError traceback, or read another image's row)."""
        if found.size and (found.min() < MISSING or found.max() >= self.n_images):
            raise StoreError(f"{schema.graph_file(self.data_dir)} holds row ids outside [-1, {self.n_images:,}): it "
                             "is damaged or was edited; remove it, then rerun `zsfs neighbours`")
        return found

    @property
    def unreadable_graph(self) -> str | None:
        """Why the neighbour graph file cannot be read (damaged, another store's), or None: set
        aside, so that the store stays usable (fits search neighbours themselves); ``verify`` fails on it."""
        self._graph_dataset()
        return self._unreadable_graph

    @property
    def graph_info(self) -> dict | None:
        """How the store's neighbour graph was built (``k``, ``search``, ``precision``), or None
        when it has none (``zsfs neighbours`` adds one)."""
        dataset = self._graph_dataset()
        if dataset is None:
            return None
        return {**json.loads(dataset.attrs[schema.ATTR_GRAPH]), "k": int(dataset.shape[1])}

    def neighbour_graph(self, rows: np.ndarray | slice | None) -> np.ndarray:
        """``(len(rows), K)`` int64: the stored nearest rows of ``rows`` (``-1`` where none)."""
        graph = self._graph_dataset()
        if graph is None:
            raise StoreError(self._unreadable_graph or f"{self.path} has no neighbour graph; add one with `zsfs neighbours`")
        with self._read_errors(schema.GRAPH_DATASET):
            found = read_rows(graph, rows).astype(np.int64)
        return self._checked_graph_rows(found)

    def index(self) -> "faiss.Index":
        """The FAISS index over ``clip`` (inner product; row ids are store rows), checked to be this
        store's: of the recorded type and size, holding :data:`SAMPLE_ROWS` evenly spaced rows of
        ``clip`` as they are."""
        try:
            index = read_index_blocks(self._dataset(schema.INDEX_DATASET))
        except (RuntimeError, OSError) as error:  # faiss / the checksum filter report damage this way
            raise StoreError(f"the FAISS index in {self.path} is damaged ({one_line(error)}); rebuild the store") from None
        problem = index_mismatch(index, self.index_info, self.n_images, self.clip_info["dim"])
        if problem is None:  # another store's index of the same size passed for this one: wrong neighbours
            rows = evenly_spaced_rows(self.n_images, SAMPLE_ROWS)
            if vectors_differ(stored_vectors(index, rows), self.read(schema.CLIP, rows)):
                problem = "its vectors are not the store's CLIP embeddings"
        if problem is not None:
            raise StoreError(f"the FAISS index in {self.path} is not this store's ({problem}): it was replaced or "
                             f"written by hand; rebuild the store{damaged_master_advice(self.path)}")
        return index

    def verify(self) -> dict:
        """Check every byte: shard files against the sizes and sha256 digests the master
        recorded, and every dataset of every file read through its checksums. Raises
        ``StoreError`` naming the first damaged file; returns what was checked."""
        with self._rebuild_named():  # a rebuild during the minutes of hashing: named, not a healthy shard (review)
            try:
                return self._verified()
            except OSError as error:  # a shard file gone or unreadable meanwhile: named as the rebuild, if one
                raise StoreError(f"{self.path}: cannot read {error.filename or 'a file'} ({error.strerror or error}) "
                                 "to verify it") from error

    def _verified(self) -> dict:
        folder = self.path.parent
        recorded = self._file.attrs.get(schema.ATTR_STRINGS_SHA256)  # first: the shards' digests are among them
        if recorded is not None and strings_sha256(self._file) != recorded:
            raise StoreError(f"{self.path}: the master's text (image paths, labels, skip reasons, shard names) does "
                             "not match its recorded checksum; the master is damaged"
                             f"{damaged_master_advice(self.path)}")
        if self._file.get(schema.SHARDS_SHA256) is not None:
            for name, expected in zip(self.shard_files, self._strings(schema.SHARDS_SHA256)):
                if file_sha256(folder / name) != expected:
                    raise StoreError(f"{self.path}: shard file {name} does not match its recorded checksum; it "
                                     f"is damaged: {self._how_to_repair('it')}")
        self._check_room_for_shards()  # the master's virtual datasets are read below
        checked = 0
        for name in self.shard_files:  # before the master, whose virtual datasets read them: name the file
            with open_hdf5(folder / name) as shard:
                checked += read_all(shard, folder / name)
                if not text_is_whole(shard):  # a master rebuilt since recorded the damaged file's digest
                    raise StoreError(f"{self.path}: the text of shard file {name} (image paths, labels, skip "
                                     f"reasons) does not match its recorded checksum; it is damaged: "
                                     f"{self._how_to_repair('it')}")
        checked += read_all(self._file, self.path)
        if self._unreadable_vocabularies or self.unreadable_graph:
            raise StoreError(next(iter(self._unreadable_vocabularies.values()), self._unreadable_graph))
        if self.unwritten_vocabularies:
            raise StoreError(f"{self.path}: {self.unwritten_note()}")
        for path in self._vocabulary_files.values():
            with open_hdf5(path) as file:
                checked += read_all(file, path)
        if self._graph_dataset() is not None and self._graph_file is not None:  # the graph this store opened, not
            checked += read_all(self._graph_file, schema.graph_file(self.data_dir))  # one a `neighbours` wrote since
            for start in range(0, self.n_images, READ_BLOCK):  # its row ids too, as a fit reads them (in blocks:
                self.neighbour_graph(slice(start, start + READ_BLOCK))  # 1.5 GB of int64 at 1.28M x 100 at once)
        for name in self.vocabulary_names():  # whole: then each held to the format, as a fit reads it
            self.vocabulary(name)
        self.index()
        return {"shards": self.n_shards, "shard_checksums": self.shard_bytes is not None,
                "master_text_checksum": recorded is not None,
                "vocabularies": len(self.vocabulary_names()), "neighbour_graph": self.graph_info is not None,
                "bytes_read": checked}

    # -- descriptions ---------------------------------------------------------------------
    def summary(self) -> dict:
        """What the store holds, as `zsfs info --json` prints it (beside ``verified``, ``skipped`` and
        ``escaped``, which the command adds)."""
        names = self.vocabulary_names()  # first: it lists the folder again when it changed
        vocabularies, unreadable = {}, self.unreadable_vocabularies
        for name in names:
            try:
                vocabularies[name] = self.vocabulary(name).classes
            except StoreError as error:  # a file written by hand against the format: named, the rest shown
                self.check_unchanged()  # unless the store was rebuilt since it was opened: that is the cause then
                where = self._vocabulary_files.get(name)  # none: in the master (format 1), which holds several
                unreadable[str(where) if where else f"{self.path} (vocabulary {name!r})"] = str(error)
        reasons, counts = np.unique(self.skipped()[1], return_counts=True)
        labels = {}
        if self.has_labels:
            names, label_counts = np.unique(np.asarray(self.labels(), dtype=str), return_counts=True)
            for name, count in zip(names.tolist(), label_counts.tolist()):  # one label per NFC form, as fits count them
                composed = unicodedata.normalize("NFC", name)
                labels[composed] = labels.get(composed, 0) + count
        return {
            "path": str(self.path),
            "format_version": int(self._file.attrs[schema.ATTR_FORMAT_VERSION]),
            "zsfs_version": self.zsfs_version,
            "created": self.created,
            "source": self.source,
            "n_images": self.n_images,
            "n_skipped": self.n_skipped,
            "skipped_reasons": {str(r): int(c) for r, c in sorted(zip(reasons, counts), key=lambda rc: -rc[1])},
            "has_labels": self.has_labels,
            "labels": labels,  # images per true label, by name ({} without labels)
            "dtype": self.dtype,
            "clip": dict(self.clip_info),  # name, weights (None when unrecorded), dim, and what else the master records
            "backbone": dict(self.backbone_info),
            "vocabularies": vocabularies,
            "unreadable_vocabularies": unreadable,  # file -> why ({} when none)
            "unwritten_vocabularies": self.unwritten_vocabularies,  # the command that made it was stopped first
            "n_shards": self.n_shards,
            "shards_folder": self.data_dir.name,  # beside the master; another name's when it was renamed or copied
            "index": self.index_info,
            "neighbour_graph": self.graph_info,
            "unreadable_graph": self.unreadable_graph,  # why the graph file cannot be read (None when it can)
            # what stopped writes left (a temporary master is as large as the master): the next writer removes them
            "leftover_files": [str(path) for path in leftover_temp_files(self.path, self.data_dir)],
        }

    def build_key(self) -> tuple:
        """What tells this build of this store's content from any other (a run's fit and its store
        must have the same): the master's random build id, and for masters written before it, their
        identity, creation time and size."""
        return (self.build, canonical_json(self.identity), self.created, self.n_images)

    def fingerprint(self) -> dict:
        """What identifies this store's content: recorded by runs fitted on it."""
        identity = canonical_json(self.identity)
        return {"path": str(self.path), "created": self.created, "n_images": self.n_images,
                "n_skipped": self.n_skipped, "identity_sha256": hashlib.sha256(identity.encode()).hexdigest()}


def check_store_or_path(name: str, value: object) -> None:
    """ParameterError unless ``value`` is an open :class:`Store` or a path (the calls that read a
    store take either; an empty one is named as ``name``, not as the ``path`` of ``Store``)."""
    if not isinstance(value, (Store, str, os.PathLike)):
        raise ParameterError(f"{{{name}}} must be a zsfs.Store or its path, not {shown_value(value)}")
    if not isinstance(value, Store):
        check_path(name, value)


def check_open_store(name: str, value: object) -> None:
    """ParameterError unless ``value`` is an open :class:`Store` (the functions that work on one;
    a path failed on an AttributeError inside)."""
    if not isinstance(value, Store):
        raise ParameterError(f"{{{name}}} must be an open zsfs.Store (zsfs.Store(path)), not {shown_value(value)}")


def file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of a file, None when it is gone: a rebuild or a repair replaces
    files (written aside, renamed into place), so their stamps change."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


