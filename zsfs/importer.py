"""``zsfs import``: a store from embeddings computed elsewhere (numpy arrays, clip-retrieval output).

Users who already embedded their images must not pay twice. Embeddings are memory-mapped and
streamed into the store shard by shard, so imports larger than RAM work.

Accepted inputs for image embeddings / backbone features:
- a ``.npy`` file (N, D);
- a folder of ``.npy`` parts, concatenated in the order of the number in their names
  (``img_emb_0.npy``, ``img_emb_1.npy``, ..., ``img_emb_10.npy``);
- a clip-retrieval output folder (its ``img_emb/`` parts, with ``metadata/`` parquet parts
  holding the ``image_path`` column, used when no paths table is given).

``zsfs.import_inputs`` reads and checks them; this module writes the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsfs.digests import file_sha256, listing_sha256
from zsfs.errors import (ParameterError, StoreMismatchError, ZsfsError, check_at_least, check_callbacks, check_choice,
                         check_parameter_type, check_path, checked_arguments, shown_value)
from zsfs.import_inputs import (CLIP_RETRIEVAL_METADATA, PATH_COLUMNS, RowParts, check_rows_exist, column, load_rows,
                                load_vocabulary, read_table)
from zsfs.names import as_argument, repeated, visible
from zsfs.store import schema, write_store, write_vocabulary
from zsfs.store.extras import check_vocabulary_name, refuse_other_classes
from zsfs.store.files import names_beside
from zsfs.store.identity import recorded_identity, refuse_another_listing
from zsfs.store.locks import store_lock
from zsfs.store.placement import check_own_shards_folder, refuse_replacing_another_file
from zsfs.writable import check_writable, refuse_input_as_output

if TYPE_CHECKING:
    import polars as pl

@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_store` did."""

    master: Path  # the store's master file
    n_images: int
    repeated_paths: list[str]  # paths the table gives more than once, in the order first seen (each row is kept)


@checked_arguments
def import_store(
    out: str | Path,
    *,
    clip_embeddings: str | Path,
    backbone_features: str | Path,
    paths: str | Path | None = None,
    path_column: str | None = None,
    label_column: str | None = None,
    vocabularies: dict[str, str | Path] | None = None,
    clip_name: str = "imported-clip",
    backbone_name: str = "imported-backbone",
    shard_size: int = schema.DEFAULT_SHARD_SIZE,
    dtype: str = "float16",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Build the store ``out`` from precomputed, row-aligned embeddings.

    ``paths`` may be omitted when ``clip_embeddings`` is a clip-retrieval output folder (its
    ``metadata/`` parts are used). All inputs must list the same images in the same order.
    ``progress``, ``on_start`` and ``on_resume`` are passed to :func:`write_store`.
    """
    out, clip_embeddings, backbone_features, paths, vocabularies = _check_arguments(
        out, clip_embeddings, backbone_features, paths, path_column, label_column, vocabularies, clip_name,
        backbone_name, shard_size, dtype, overwrite, progress, on_start, on_resume)
    check_rows_exist(clip_embeddings, "CLIP embeddings")  # before the paths table's absence (walkthrough: that
    check_rows_exist(backbone_features, "backbone features")  # was said instead)
    if paths is None and not (clip_embeddings / CLIP_RETRIEVAL_METADATA).is_dir():
        raise ParameterError("no paths table: pass {paths} (a parquet, CSV or TSV file), or a clip-retrieval output "
                             "folder (with metadata/) as {clip_embeddings}")
    try:
        check_writable(out, "store", beside=names_beside(out))
        unwritable = None
    except ZsfsError as error:  # a rerun of the import that made the store has nothing to write: known once read
        if overwrite or not out.is_file():
            raise
        unwritable = error
    refuse_input_as_output(out, [("CLIP embeddings file", clip_embeddings), ("backbone features file", backbone_features),
                                 ("paths table", paths), *(("vocabulary file", file) for file in (vocabularies or {}).values())])
    refuse_replacing_another_file(out)  # before any input is read
    check_own_shards_folder(out, overwrite)
    clip = load_rows(clip_embeddings, "CLIP embeddings")
    backbone = load_rows(backbone_features, "backbone features")
    table_location = paths if paths is not None else clip_embeddings
    table = read_table(table_location)
    image_paths = column(table, path_column, PATH_COLUMNS, "path")
    labels = column(table, label_column, (), "label") if label_column else None

    for what, folder in (("CLIP embeddings", clip_embeddings), ("backbone features", backbone_features)):
        if folder != table_location and (folder / CLIP_RETRIEVAL_METADATA).is_dir():
            _check_same_listing(folder, what, image_paths, table_location, path_column if paths is None else None)

    counts = {f"CLIP embeddings ({clip_embeddings})": len(clip),
              f"backbone features ({backbone_features})": len(backbone),
              f"paths ({table_location})": len(image_paths)}
    if len(set(counts.values())) != 1:
        listing = "; ".join(f"{name}: {count} rows" for name, count in counts.items())
        raise ZsfsError(f"row counts disagree ({listing}); all inputs must list the same images in the same order")

    named = {check_vocabulary_name(name): file for name, file in (vocabularies or {}).items()}
    if len(named) < len(vocabularies or {}):  # two that print alike (the command line refuses them first)
        raise ZsfsError("two vocabulary names differ only in Unicode form (é as one character or as e + U+0301); "
                        "name each vocabulary once")
    loaded = {name: load_vocabulary(file, clip.shape[1]) for name, file in named.items()}
    earlier = {} if overwrite else recorded_identity(out)  # the store being resumed or added to, if any
    source = recorded_location(table_location, earlier.get("source"))
    if earlier:  # a finished store or the shards of a stopped import (and not --overwrite)
        try:
            refuse_another_listing(out, {"source": source, "listing_sha256": listing_sha256(image_paths, labels),
                                         "n_items": len(image_paths)})
        except StoreMismatchError:
            labelled = _label_column_hint(earlier.get("listing_sha256"), table, image_paths, labels, path_column,
                                          label_column)
            if not labelled:
                raise
            raise StoreMismatchError(f"{out} {labelled} (labels are part of what identifies the images), and its "
                                     "finished shards are reused only so; --overwrite imports it again with this "
                                     "run's labels") from None
    refuse_other_vocabularies(out, loaded, overwrite)
    # the lock held from the images to the vocabularies (a failure test: between the two, readers were told
    # the import had been stopped and to rerun it); an identical rerun on a read-only store writes nothing
    with _failing_as(unwritable), store_lock(out) if unwritable is None else nullcontext():
        master = write_store(
            out,
            clip=clip,
            backbone=backbone,
            paths=np.asarray(image_paths, dtype=object),
            labels=None if labels is None else np.asarray(labels, dtype=object),
            clip_info=imported_record(clip_name, clip, clip_embeddings, earlier.get("clip")),
            backbone_info=imported_record(backbone_name, backbone, backbone_features, earlier.get("backbone")),
            source=source,
            planned_vocabularies=list(loaded),
            planned_by="zsfs import",
            shard_size=shard_size,
            dtype=dtype,
            overwrite=overwrite,
            progress=progress,
            on_start=on_start,
            on_resume=on_resume,
        )
        refuse_other_vocabularies(master, loaded, overwrite)  # again: shards this run repaired hid them before
        for name, vocabulary in loaded.items():
            write_vocabulary(master, name, vocabulary.classes, vocabulary.single, vocabulary.ensemble,
                             prompt=schema.IMPORTED_PROMPT, n_templates=vocabulary.n_templates, overwrite=True)
    return ImportSummary(master=master, n_images=len(image_paths), repeated_paths=repeated(image_paths))


def _check_same_listing(folder: Path, what: str, image_paths: list[str], table_location: Path,
                        path_column: str | None) -> None:
    """A ZsfsError where a clip-retrieval folder's own metadata lists other images than the paths
    the import takes, or the same in another order (walkthrough: a second clip-retrieval run, which
    wrote its images in another order, had its rows stored against the first run's paths). A path
    that ends with the other's, after a ``/``, is the same image moved (``/node/data/a/1.jpg`` and
    ``a/1.jpg``: a table that relocates the paths; review)."""
    import polars as pl

    listed = column(read_table(folder), path_column, PATH_COLUMNS, "path")
    if len(listed) != len(image_paths):
        differ = None
    else:
        there, here = pl.col("there"), pl.col("here")
        same = pl.DataFrame({"there": listed, "here": image_paths}).select(
            (there == here) | there.str.ends_with(pl.concat_str([pl.lit("/"), here]))
            | here.str.ends_with(pl.concat_str([pl.lit("/"), there]))).to_series()
        if same.all():
            return
        differ = int((~same).arg_true()[0])
    at = (f"row {differ} (counted from 0) is {visible(listed[differ])!r} there, {visible(image_paths[differ])!r} "
          f"in {table_location}" if differ is not None
          else f"it lists {len(listed):,} images, {table_location} {len(image_paths):,}")
    raise ZsfsError(f"{what}: the metadata of {folder} lists other images than {table_location}, or the same ones "
                    f"in another order ({at}); all inputs must list the same images in the same order")


@contextmanager
def _failing_as(unwritable: ZsfsError | None) -> Iterator[None]:
    """Where the store was found unwritable before the inputs were read (an identical rerun writes
    nothing, so it went on): writing it fails as that check said, not with the lock's error."""
    try:
        yield
    except ZsfsError:
        if unwritable is None:
            raise
        raise unwritable from None


def _label_column_hint(recorded: str | None, table: "pl.DataFrame", image_paths: list[str], labels: list[str] | None,
                       path_column: str | None, label_column: str | None) -> str:
    """``"was imported ...: ..."`` when the store whose listing digest is ``recorded`` differs from
    this import only in its labels: made
    without --label-column, with one of ``table``'s columns, or with the labels' spaces at their
    ends kept ("" otherwise). The listing digest covers paths and labels, so a rerun that left the
    option out read as "the names or labels changed"."""
    if labels is not None:
        if listing_sha256(image_paths, None) == recorded:
            return "was imported without --label-column: leave it out to add to that store"
        as_written = column(table, label_column, (), "label", as_written=True)
        return ("was imported by a zsfs that kept spaces at the ends of labels (before 2026-12-05), which this one "
                "strips" if as_written != labels and listing_sha256(image_paths, as_written) == recorded else "")
    for name in table.columns:
        if name == path_column or name in PATH_COLUMNS:
            continue
        try:
            values = column(table, name, (), "label")
        except ZsfsError:  # not one text value per row: no label column
            continue
        if listing_sha256(image_paths, values) == recorded:
            return f"was imported with --label-column {as_argument(name, path=False)}: pass it again"
    return ""


def _check_arguments(out, clip_embeddings, backbone_features, paths, path_column, label_column, vocabularies,
                     clip_name, backbone_name, shard_size, dtype, overwrite, progress, on_start,
                     on_resume) -> tuple[Path, Path, Path, Path | None, dict[str, Path] | None]:
    """ParameterError for an argument of :func:`import_store` of the wrong kind, before anything is
    read (``overwrite="no"`` is true: it would replace the store); the paths as read (``~`` expanded):
    ``out``, ``clip_embeddings``, ``backbone_features``, ``paths`` and ``vocabularies``."""
    out, clip_embeddings, backbone_features = (Path(check_path(name, value)) for name, value in (
        ("out", out), ("clip_embeddings", clip_embeddings), ("backbone_features", backbone_features)))
    if paths is not None:
        paths = Path(check_path("paths", paths))
    for name, value in (("clip_name", clip_name), ("backbone_name", backbone_name)):
        check_parameter_type(name, value, str)
        if not value.strip():  # an unset shell variable: a blank name in every table
            raise ParameterError(f"{{{name}}} is empty; give the model's name (it is shown and recorded)")
    for name, value in (("path_column", path_column), ("label_column", label_column)):
        if value is not None:
            check_parameter_type(name, value, str)
    if vocabularies is not None:
        if not isinstance(vocabularies, dict):
            raise ParameterError(f"{{vocabularies}} must be a dict of vocabulary name: .npz file, not "
                                 f"{shown_value(vocabularies)}")
        vocabularies = {name: Path(check_path("vocabularies", file)) for name, file in vocabularies.items()}
    check_at_least("shard_size", shard_size, 1)
    check_choice("dtype", dtype, schema.EMBEDDING_DTYPES)
    check_parameter_type("overwrite", overwrite, bool)
    check_callbacks(progress=progress, on_start=on_start, on_resume=on_resume)
    return out, clip_embeddings, backbone_features, paths, vocabularies


def refuse_other_vocabularies(out: Path, loaded: dict, overwrite: bool) -> None:
    """A rerun must not replace a vocabulary of the store with other classes or text embeddings
    (``--overwrite`` rebuilds all)."""
    if not overwrite:
        for name, vocabulary in loaded.items():
            refuse_other_classes(out, name, vocabulary.classes, "`zsfs import ... --overwrite` rebuilds the whole store",
                                 {"single": vocabulary.single, "ensemble": vocabulary.ensemble})


def recorded_location(location: Path, recorded: object = None) -> str:
    """How a store records an input ``location``: absolute, with ``..`` and its folder's links
    resolved, so that one file is one source however it is spelled; a linked file keeps its own
    name (the report looks for the images beside it, where a table's relative paths point). Where
    the store already records the same file otherwise (``recorded``: an earlier zsfs kept the path
    as typed), that record stands, so the import that made the store is still the same import."""
    location = Path(location)
    here = str(location.resolve() if location.is_dir() else location.absolute().parent.resolve() / location.name)
    if isinstance(recorded, str) and recorded != here and Path(recorded).resolve() == Path(here).resolve():
        return recorded
    return here


def imported_record(name: str, rows: RowParts, location: Path, earlier: dict | None = None) -> dict:
    """Model record of imported embeddings: the name as given, no weights file zsfs could reload,
    where they came from, and each file's stamp (:func:`file_stamps`): the identity samples 4,096
    rows, so a file exported again in place with a few rows changed is told apart by these (it is
    then imported anew, not left stale). ``earlier``: the record of the store being resumed; one
    made before the files were recorded (2026-12-03) is resumed without them, as before."""
    earlier = earlier if isinstance(earlier, dict) else {}
    record = {"name": name, "weights": schema.IMPORTED_WEIGHTS, "file": None, "sha256": None,
              "dim": int(rows.shape[1]), "imported_from": recorded_location(location, earlier.get("imported_from"))}
    if not earlier or "imported_files" in earlier:
        record["imported_files"] = file_stamps(rows.files, earlier.get("imported_files") or [])
    return record


def file_stamps(files: list[Path], earlier: list[list]) -> list[list]:
    """Each file's ``[name, size, modification time in ns, sha256]``. A file whose name, size and
    time are those ``earlier`` recorded is not read again; one whose time alone changed (``touch``,
    a copy, a restore) and whose bytes hash as recorded keeps the recorded stamp, so its store
    resumes (a stamp recorded before the sha256 was, three entries, matches only as it is). A
    first import reads each file once more to hash it (1.6 GB/s here, from the page cache)."""
    recorded = {entry[0]: entry for entry in earlier if isinstance(entry, list) and entry}
    stamps = []
    for file in files:
        info = file.stat()
        now = [file.name, info.st_size, info.st_mtime_ns]
        known = recorded.get(file.name)
        if known is not None and known[1:3] == now[1:]:
            stamps.append(known)
        else:
            digest = file_sha256(file)
            same_bytes = known is not None and known[1] == info.st_size and known[3:] == [digest]
            stamps.append(known if same_bytes else [*now, digest])
    return stamps
