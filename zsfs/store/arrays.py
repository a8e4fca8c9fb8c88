"""A whole store from arrays already in memory (or memory-mapped): ``zsfs import``, tests, benchmarks."""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from zsfs.errors import (ParameterError, ZsfsError, check_at_least, check_callbacks, check_choice, check_parameter_type,
                         check_path, literal, shown_value)
from zsfs.names import check_class_names, described_array, looks_blank
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.store import schema
from zsfs.digests import listing_sha256, rows_sha256
from zsfs.store.hdf5 import canonical_json
from zsfs.store.identity import recorded_identity
from zsfs.store.index import EXACT_MAX
from zsfs.store.extras import planned_vocabularies as recorded_plan
from zsfs.store.extras import check_vocabulary_name, refuse_other_classes, write_planned_vocabularies, write_vocabulary
from zsfs.store.locks import written_elsewhere
from zsfs.store.rows import normalise_rows, refuse_unusable_rows, text_embedding_rows
from zsfs.store.writer import ShardData, StoreWriter


def write_store(
    master: str | Path,
    *,
    clip: np.ndarray,
    backbone: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[str] | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    clip_info: dict,
    backbone_info: dict,
    source: str,
    vocabularies: dict[str, tuple[Sequence[str], np.ndarray, np.ndarray]] | None = None,
    planned_vocabularies: Sequence[str] = (),
    planned_by: str = "zsfs.store.write_store()",
    shard_size: int = schema.DEFAULT_SHARD_SIZE,
    dtype: str = "float16",
    overwrite: bool = False,
    exact_max: int = EXACT_MAX,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a complete store from row-aligned arrays; returns the master's path.

    Rows of ``clip`` and ``backbone`` are L2-normalised shard by shard while writing (already
    normalised input passes through unchanged), so arrays may be memory-mapped ``.npy`` files
    larger than RAM. ``width``/``height`` default to -1 (unknown). ``vocabularies`` maps a name
    to ``(classes, single, ensemble)``, recorded with ``SINGLE_PROMPT`` and the 80 ensemble templates
    (``ensemble`` None: the single rows stand in, as in an import without one; a rerun without
    ``overwrite`` refuses other classes or rows under a name the store has, as earlier fits used it); use
    :func:`write_vocabulary` directly to record other prompts (``planned_vocabularies``: the names the
    caller writes so, after this returns, recorded with these as ``planned_by``'s plan, which names a
    vocabulary missing after a stop: a command, ``"zsfs ..."``, or the Python function called). ``progress(rows)`` is called
    after each shard with the number of rows it wrote (for progress bars); before the first, ``on_resume(kept,
    n_shards)`` hears how many shards an earlier, stopped run finished (when it finished some) and
    ``on_start(rows)`` how many rows this run writes, as ``zsfs.extract``'s do. A rerun over a complete
    store with the same identity writes no shard and keeps its master (and index, ``exact_max``
    included) and neighbour graph; one that would also write the same vocabularies writes nothing
    (and so succeeds on a read-only copy of the store). A store is told from other rows by its paths,
    labels and an evenly spaced sample of 4,096 rows (``rows_sha256``: a rerun must not read every row
    of a memory-mapped import), so rows edited in place need ``overwrite=True`` to be written again.
    """
    # every argument is checked before anything is written or, with overwrite, removed
    master = Path(check_path("master", master))
    clip, clip_info = _embedding_rows("clip", clip, "clip_info", clip_info)
    backbone, backbone_info = _embedding_rows("backbone", backbone, "backbone_info", backbone_info)
    if isinstance(planned_vocabularies, str) or not all(isinstance(name, str) for name in planned_vocabularies):
        raise ParameterError(f"{{planned_vocabularies}} must be a list of vocabulary names, not "
                             f"{shown_value(planned_vocabularies)}")
    planned_vocabularies = [check_vocabulary_name(name) for name in planned_vocabularies]
    check_at_least("shard_size", shard_size, 1)
    check_choice("dtype", dtype, schema.EMBEDDING_DTYPES)
    overwrite = bool(overwrite) if isinstance(overwrite, np.bool_) else overwrite
    check_parameter_type("overwrite", overwrite, bool)
    check_at_least("exact_max", exact_max, 0)
    check_callbacks(progress=progress, on_start=on_start, on_resume=on_resume)  # (a tqdm bar is not one)
    n = len(paths)
    lengths = {"clip": len(clip), "backbone": len(backbone)}
    for name, values in (("labels", labels), ("width", width), ("height", height)):
        if values is not None:
            lengths[name] = len(values)
    wrong = {name: length for name, length in lengths.items() if length != n}
    if wrong:
        raise ZsfsError(f"row counts disagree: {n} paths but " + ", ".join(f"{k}={v}" for k, v in wrong.items()))
    if n == 0:
        raise ZsfsError("nothing to store: zero rows")
    paths = _checked_names("paths", [os.fspath(path) if isinstance(path, os.PathLike) else path for path in paths],
                           "every row its file's name", "name each file")
    if labels is not None:
        labels = _checked_names("labels", labels, "every row its class name", "write a store without labels "
                                "(labels=None) when some images have none")
    width, height = (_image_sizes(name, values, n) for name, values in (("width", width), ("height", height)))
    vocabularies = _text_embeddings(vocabularies, clip.shape[1])

    identity = {
        "source": str(source),
        "listing_sha256": listing_sha256(paths, labels),  # labels too: new labels must not reuse old shards
        "rows_sha256": rows_sha256(clip, backbone),  # re-exported embeddings must not reuse old shards either
        "clip": clip_info,
        "backbone": backbone_info,
    }
    if not overwrite and _same_store(master, identity):  # (another store's refusal names its rows, not these)
        # earlier fits used the store's vocabularies: a rerun may not change them
        for name, (classes, single, ensemble) in vocabularies.items():
            refuse_other_classes(master, name, classes, "write_store(..., overwrite=True) rebuilds the whole store, "
                                 "write_vocabulary(..., overwrite=True) this vocabulary",
                                 {"single": single, "ensemble": ensemble})

    features = {"the CLIP embeddings": clip, "the backbone features": backbone}
    if overwrite:  # every row is written again: checked before the old store is removed
        refuse_unusable_rows(features, None)
    planned = [*vocabularies, *planned_vocabularies]
    layout = dict(n_items=n, shard_size=shard_size, dtype=dtype)
    written = None if overwrite else _written_already(master, identity, layout, planned, planned_by)
    if written is None:
        written = _write_shards_and_master(master, identity, layout, features, paths=paths, labels=labels,
                                           width=width, height=height, attrs={schema.ATTR_SOURCE: str(source),
                                           schema.ATTR_CLIP: clip_info, schema.ATTR_BACKBONE: backbone_info},
                                           planned=planned, planned_by=planned_by, overwrite=overwrite,
                                           exact_max=exact_max, progress=progress, on_start=on_start,
                                           on_resume=on_resume)
    path, recorded = written
    for name, (classes, single, ensemble) in vocabularies.items():
        write_vocabulary(path, name, classes, single, ensemble, prompt=SINGLE_PROMPT,
                         n_templates=len(ENSEMBLE_TEMPLATES) if ensemble is not single else 1, overwrite=True,
                         identity=recorded)
    return path


def _embedding_rows(name: str, values: object, record_name: str, record: object) -> tuple[np.ndarray, dict]:
    """``values`` as a 2-d float array (a memory-mapped one stays so) and its model ``record``, or a
    ParameterError: a 1-d array or a list failed deep inside, a wrong ``dim`` after the shards were
    written (import refuses integer rows too: they are no embeddings' output)."""
    if not isinstance(record, dict) or not {"name", "weights"} <= set(record):  # what every reader takes
        raise ParameterError(f"{{{record_name}}} must be a dict with at least 'name' and 'weights' (and 'dim', or the "
                             f"embeddings' width is recorded), not {shown_value(record)}")
    # a numpy array (memory-mapped too) or a list; other row sources sliced alike (import's RowParts, an
    # h5py dataset, a torch tensor) are read a shard at a time, as float rows whatever their type
    rows = np.asarray(values) if isinstance(values, np.ndarray) or not hasattr(values, "shape") else values
    shape = tuple(rows.shape)
    if len(shape) != 2 or not shape[1] or isinstance(rows, np.ndarray) and not np.issubdtype(rows.dtype, np.floating):
        raise ParameterError(f"{{{name}}} must be floating-point rows, an (images, dim) array, not "
                             f"{shown_value(rows)}")
    dim = record.get("dim")
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Real) or dim != shape[1]:
            raise ParameterError(f"{{{record_name}}} says dim={shown_value(dim)} but {{{name}}} has "
                                 f"{shape[1]} columns")
        record = {**record, "dim": int(dim)}  # numpy's integers are no JSON
    return rows, record


def _checked_names(name: str, values: Sequence[str], what: str, remedy: str) -> Sequence[str]:
    """``values``, or a ParameterError for a path or label that is not text, is blank or holds a NUL
    (no store string can): no file or class is named so (fit and ood-bench counted an image labelled
    None out of distribution; a path stored as ``"b'x.jpg'"`` names no file); zsfs import refuses
    such columns too."""
    values = np.asarray(values, dtype=object)
    bad = [row for row, value in enumerate(values) if not isinstance(value, str) or looks_blank(value) or "\0" in value]
    if bad:
        raise ParameterError(f"{{{name}}} must give {what} as text; {len(bad):,} "
                             f"{'does' if len(bad) == 1 else 'do'} not (first: row {bad[0]}, "
                             f"{shown_value(values[bad[0]])}): {remedy}")
    return values


def _image_sizes(name: str, values: object, n: int) -> np.ndarray:
    """Image widths or heights as stored (int32, ``UNKNOWN_SIZE`` for unknown, the default); a
    ParameterError for fractions or sizes int32 cannot hold (2**40 was stored as 0)."""
    if values is None:
        return np.full(n, schema.UNKNOWN_SIZE, dtype=np.int32)
    sizes = np.asarray(values)
    whole = np.issubdtype(sizes.dtype, np.integer) or (
        np.issubdtype(sizes.dtype, np.floating) and bool(np.all(np.isfinite(sizes) & (sizes == np.round(sizes)))))
    if sizes.ndim != 1 or not whole:  # (a table column with a gap: NaN, stored as a garbage int32)
        raise ParameterError(f"{{{name}}} must be whole numbers, one per row, not {described_array(sizes)}")
    outside = (sizes < schema.UNKNOWN_SIZE) | (sizes > np.iinfo(np.int32).max)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ParameterError(f"{{{name}}} must be pixel counts ({schema.UNKNOWN_SIZE}: unknown), not "
                             f"{sizes[row]} (row {row})")
    return sizes.astype(np.int32)


def _text_embeddings(vocabularies: object, clip_dim: int) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """Each vocabulary's checked class names and unit text rows, ``ensemble`` the ``single`` rows
    where it is None (as an import without one); a ParameterError, before anything is written, for
    what ``write_vocabulary`` would refuse only after the store was (re)built."""
    if vocabularies is None:
        return {}
    if not isinstance(vocabularies, dict):
        raise ParameterError(f"{{vocabularies}} must be a dict of name: (classes, single, ensemble), not "
                             f"{shown_value(vocabularies)}")
    checked = {}
    for name, value in vocabularies.items():
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            raise ParameterError(f"{{vocabularies}}[{name!r}] must be a tuple (classes, single, ensemble), not "
                                 f"{shown_value(value)}")
        classes, single, ensemble = value
        try:
            classes = check_class_names(classes, f"vocabulary {check_vocabulary_name(name)!r}")
            shape = (len(classes), clip_dim)
            single = text_embedding_rows(np.asarray(single), f"vocabulary {name!r}: single", shape)
            ensemble = single if ensemble is None else text_embedding_rows(
                np.asarray(ensemble), f"vocabulary {name!r}: ensemble", shape)
        except ZsfsError as error:
            raise ParameterError("{vocabularies}: " + literal(str(error))) from None
        checked[name] = (classes, single, ensemble)
    return checked


def _written_already(master: Path, identity: dict, layout: dict, planned: list[str],
                     planned_by: str) -> tuple[Path, dict] | None:
    """``(master, its recorded identity)`` when ``master`` is a complete store of ``identity`` and
    ``layout`` with this plan of vocabularies recorded, judged by reading alone (no lock); None
    otherwise. A rerun then writes no store file, so it also succeeds where the store cannot be
    written (a read-only copy), as extract's does."""
    if written_elsewhere(master):
        return None
    try:
        with StoreWriter(master, identity, **layout, lock=False) as writer:
            done = (writer.is_complete(remove_tmp=False)
                    and recorded_plan(writer.shards_dir, writer.identity) == (planned, planned_by))
            return (writer.master, writer.identity) if done else None
    except (ZsfsError, OSError):
        return None  # the writing run says what is wrong


def _same_store(master: Path, identity: dict) -> bool:
    """Whether ``master`` (or a stopped run's shards) records ``identity``: the store a rerun resumes."""
    recorded = recorded_identity(master)
    return bool(recorded) and all(recorded.get(key) == value for key, value in json.loads(canonical_json(identity)).items())


def _write_shards_and_master(master: Path, identity: dict, layout: dict, features: dict, *, paths, labels, width,
                             height, attrs: dict, planned: list[str], planned_by: str, overwrite: bool,
                             exact_max: int, progress: Callable[[int], None] | None,
                             on_start: Callable[[int], None] | None,
                             on_resume: Callable[[int, int], None] | None) -> tuple[Path, dict]:
    clip, backbone = features.values()
    with StoreWriter(master, identity, **layout, overwrite=overwrite) as writer:
        pending = writer.pending_shards()
        if not overwrite:  # the rows this run writes, before it writes any: a bad row must not leave half a store
            refuse_unusable_rows(features, [writer.shard_bounds(shard) for shard in pending])
        # before the shards: a stop among them leaves a store whose error names the vocabularies to ask for again
        write_planned_vocabularies(writer.shards_dir, writer.identity, planned, planned_by)
        writer.announce(pending, on_start, on_resume)
        try:
            for shard in pending:
                start, stop = writer.shard_bounds(shard)
                rows = slice(start, stop)
                writer.write_shard(shard, ShardData(
                    clip=normalise_rows(np.asarray(clip[rows]), f"clip rows {start}-{stop}", start),
                    backbone=normalise_rows(np.asarray(backbone[rows]), f"backbone rows {start}-{stop}", start),
                    paths=paths[rows],
                    width=width[rows],
                    height=height[rows],
                    labels=None if labels is None else labels[rows],
                ))
                if progress is not None:
                    progress(stop - start)
        except (KeyboardInterrupt, Exception) as stop:  # Ctrl-C, SIGTERM, a full disk: the caller hears
            writer.tell_what_a_rerun_keeps(stop, pending, "row", "writes")  # what a rerun keeps
            raise
        return writer.finalize_if_changed(attrs, shards_written=bool(pending), exact_max=exact_max), writer.identity
