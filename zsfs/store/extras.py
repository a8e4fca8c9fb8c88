"""What is added to a finished store: class vocabularies (written and read) and the neighbour graph.

Each lives in a file of its own beside the shards (``docs/store.md``), written whole and renamed
into place like a shard: adding or replacing one never rewrites the master, a full disk or a
kill leaves the previous version intact, and a replaced file's space is freed at once (HDF5
never reclaims space inside a file it modifies). Reading one holds it to what zsfs writes.
"""

from __future__ import annotations

import fnmatch
import os
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from zsfs.digests import listing_sha256
from zsfs.errors import ParameterError, StoreError, ZsfsError, check_choice, literal, one_line
from zsfs.names import as_argument, check_class_names, some_names, spelled_like, utf8_text
from zsfs.store import schema
from zsfs.store.files import new_hdf5, remove_leftover_temp_files
from zsfs.store.locks import store_lock
from zsfs.store.hdf5 import (canonical_json, closed_on_error, open_hdf5, read_identity, read_strings, write_checked,
                             write_strings)
from zsfs.store.rows import normalise_rows



def refuse_other_classes(master: Path, name: str, classes: Sequence[str], how_to_replace: str,
                         embeddings: dict[str, np.ndarray] | None = None) -> None:
    """Before a rerun of extract or import into ``master``: its vocabulary ``name``, if any, must
    hold these ``classes`` (the rerun rewrites it), not others that earlier runs were fitted on;
    and, with ``embeddings`` (``single`` / ``ensemble`` rows given, as an import has them), these
    text embeddings. Call it after ``refuse_another_listing``: for a store of other images,
    replacing its vocabulary is not the fix."""
    from zsfs.store.reader import Store

    if not master.is_file():
        return  # a new store (or one whose first run was interrupted: no vocabulary yet)
    try:
        store = Store(master)
    except StoreError:
        return  # shards missing or damaged: this rerun re-writes them (vocabularies are checked after)
    with store:
        name = store.stored_vocabulary_name(name)
        if name not in store.vocabulary_names():
            return
        existing = store.vocabulary(name)
    if list(existing.classes) != [str(c) for c in classes]:
        raise ZsfsError(f"{master.name} already has a vocabulary {name!r} with other classes "
                        f"({some_names(list(existing.classes), 5)}); give "
                        f"these classes another vocabulary name (--vocab), or replace it: {how_to_replace}")
    def differs(given: np.ndarray, stored: np.ndarray) -> bool:  # stored as float32 unit rows
        return np.shape(given) != stored.shape or not np.allclose(
            normalise_rows(np.asarray(given, dtype=np.float32), "text embeddings"), stored, atol=1e-5)

    # an ensemble where the stored one is the single prompt's stand-in (none was given) is added, not replaced
    filled_in = not differs(existing.single, existing.ensemble)
    other = [kind for kind, rows in (embeddings or {}).items()
             if differs(rows, getattr(existing, kind)) and not (kind == schema.VOCAB_ENSEMBLE and filled_in)]
    if other:
        raise ZsfsError(f"{master.name} already has a vocabulary {name!r} of these classes with other text "
                        f"embeddings ({' and '.join(other)}; a file without an ensemble would store its single "
                        f"rows as one), which earlier fits used; give these another vocabulary name (--vocab), or "
                        f"replace it: {how_to_replace}")


def write_vocabulary(master: Path, name: str, classes: Sequence[str], single: np.ndarray, ensemble: np.ndarray,
                     *, prompt: str, n_templates: int, overwrite: bool = False, identity: dict | None = None) -> None:
    """Add (or with ``overwrite`` replace) the text embeddings of a class vocabulary.

    Only the vocabulary's own file changes; image data is not touched. Rows are stored
    L2-normalised. ``identity``: that of the store whose models embedded the text, when the
    caller did not hold the store's lock since (a writer that finished): a store another process
    rebuilt meanwhile, with other models maybe, is refused, not given these embeddings.
    """
    from zsfs.store.reader import Store

    name = check_vocabulary_name(name)
    classes = check_class_names(classes, f"vocabulary {name!r}")
    arrays = {kind: normalise_rows(np.asarray(values, dtype=np.float32), f"vocabulary {name!r} {kind}")
              for kind, values in ((schema.VOCAB_SINGLE, single), (schema.VOCAB_ENSEMBLE, ensemble))}
    if identity is not None:
        _refuse_moved_since_opened(master)
    if overwrite and _holds_vocabulary(master, name, classes, arrays, prompt, n_templates, identity):
        return  # a rerun writes nothing, so it also succeeds on a store it cannot write (a read-only copy)
    with store_lock(master), Store(master) as store:
        if identity is not None and store.identity != identity:
            raise StoreError(f"{master} was rebuilt by another process (other data or models) after this run opened "
                             f"it; vocabulary {name!r} was not written into it (`zsfs info {as_argument(master)}` shows what "
                             "it holds now)")
        name = store.stored_vocabulary_name(name)  # a store of an earlier zsfs may spell it decomposed
        clip_dim = int(store.clip_info["dim"])
        for kind, values in arrays.items():
            if values.shape != (len(classes), clip_dim):
                raise ZsfsError(f"vocabulary {name!r}: {kind} embeddings have shape {values.shape}, expected "
                                f"({len(classes)} classes, {clip_dim} = the store's CLIP dim)")
        if name in store.vocabulary_names() and not overwrite:
            raise StoreError(f"{master} already has a vocabulary named {name!r}; pass --overwrite to replace it "
                             "or choose another name")
        remove_leftover_temp_files(store.path, store.data_dir)  # a killed `zsfs text` left one
        with new_hdf5(schema.vocabulary_file(store.data_dir, name), f"vocabulary {name!r} of {store.path}") as file:
            write_strings(file, schema.VOCAB_CLASSES, classes)
            for kind, values in arrays.items():
                write_checked(file, kind, values)
            file.attrs.update({schema.ATTR_FORMAT: schema.VOCAB_FORMAT, schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
                               schema.ATTR_IDENTITY: canonical_json(store.identity), schema.ATTR_NAME: name,
                               schema.ATTR_PROMPT: prompt, schema.ATTR_N_TEMPLATES: int(n_templates),
                               schema.ATTR_STRINGS_SHA256: listing_sha256(classes)})  # (text has no HDF5 checksum)


def _holds_vocabulary(master: Path, name: str, classes: list[str], arrays: dict[str, np.ndarray], prompt: str,
                      n_templates: int, identity: dict | None) -> bool:
    """Whether the store ``master`` (of ``identity``, when given) already holds vocabulary ``name``
    exactly so: these classes, unit rows, prompt and template count."""
    from zsfs.store.reader import Store

    try:
        with Store(master) as store:
            name = store.stored_vocabulary_name(name)
            if (identity is not None and store.identity != identity) or name not in store.vocabulary_names():
                return False
            stored = store.vocabulary(name)
    except (StoreError, OSError):
        return False  # the write says what is wrong
    return (stored.classes == classes and stored.prompt == prompt and stored.n_templates == int(n_templates)
            and all(np.array_equal(getattr(stored, kind), rows) for kind, rows in arrays.items()))


def write_planned_vocabularies(shards: Path, identity: dict, names: Sequence[str], command: str) -> None:
    """Record, before the master of the store ``identity`` is written, the vocabularies ``command``
    writes after it (:data:`schema.PLANNED_FILE`); call it under the store's lock. Replaces the
    last run's record: a rerun that drops a vocabulary drops it from the plan too."""
    with new_hdf5(shards / schema.PLANNED_FILE, "the planned vocabularies") as file:
        write_strings(file, schema.VOCAB_CLASSES, list(names))
        file.attrs.update({schema.ATTR_FORMAT: schema.PLANNED_FORMAT, schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
                           schema.ATTR_IDENTITY: canonical_json(identity), schema.ATTR_COMMAND: command})


def planned_vocabularies(shards: Path, identity: dict) -> tuple[list[str], str]:
    """The vocabularies the last extract/import of the store ``identity`` planned to write after its
    master, and that command; none when it recorded none (an older zsfs, a store written otherwise),
    or the record is another build's or damaged (a plan, not data: nothing to repair)."""
    path = shards / schema.PLANNED_FILE
    if not path.is_file():
        return [], ""
    try:
        with reading_extra(path, schema.PLANNED_FORMAT, identity) as file:
            return [str(name) for name in read_strings(file[schema.VOCAB_CLASSES])], str(file.attrs[schema.ATTR_COMMAND])
    except StoreError:
        return [], ""


def check_vocabulary_name(name: str) -> str:
    """``name`` in Unicode's composed form (NFC), or a ``ZsfsError`` for an invalid one: 'café'
    typed as e + U+0301 (as some keyboards and file names give it) prints as 'café' and names that
    vocabulary, not a second one."""
    if isinstance(name, str) and utf8_text(name) != name:  # (failure test: said as invisible characters)
        raise ParameterError(literal(f"invalid vocabulary name '{utf8_text(name)}': it is not UTF-8 text (its other "
                                     "bytes shown as \\xNN); name it in UTF-8"))
    if not schema.valid_vocabulary_name(name):  # always the caller's: an option or a parameter
        raise ParameterError(literal(schema.INVALID_VOCABULARY_NAME.format(name)))
    return unicodedata.normalize("NFC", name)


def _refuse_moved_since_opened(master: Path) -> None:
    """StoreError when the store a caller opened (and searched, or embedded text for) is no longer
    at ``master``: it said "store ... does not exist; create it with zsfs extract", after the work
    (a review moved the folder during a neighbour search), and its lock made the folder again."""
    if not os.path.lexists(master):
        raise StoreError(f"{master} was moved or deleted since this process opened it; nothing was written: run the "
                         "command again where the store is now")


def write_neighbour_graph(master: Path, rows: np.ndarray, info: dict, *, build: str) -> None:
    """Add (or replace) the store's neighbour graph: ``rows`` (N, K), each image's K nearest
    store rows by CLIP inner product, best first, itself excluded, ``-1`` where none.
    ``info`` records how they were found: ``search`` and ``precision`` (``k`` is ``K``).
    ``build``: the store build whose embeddings were searched; a store rebuilt since (an
    ``extract``/``import --overwrite`` during a long search) is refused, not stamped with rows of
    other embeddings."""
    from zsfs.store.reader import Store

    _refuse_moved_since_opened(master)
    rows = np.asarray(rows)
    missing = {"search", "precision"} - set(info)
    if missing:
        raise ZsfsError(f"a neighbour graph's record needs {sorted(missing)}")
    with store_lock(master), Store(master) as store:
        if store.build != build:
            raise StoreError(f"{master} was rebuilt while its neighbours were searched; run `zsfs neighbours` again")
        n_images = store.n_images
        if rows.ndim != 2 or len(rows) != n_images or not 0 < rows.shape[1] < max(n_images, 2):
            raise ZsfsError(f"a neighbour graph for {master} needs shape ({n_images}, K) with 0 < K < "
                            f"{n_images}, got {rows.shape}")
        if not np.issubdtype(rows.dtype, np.integer):  # (review: 1.9 was stored as row 1)
            raise ZsfsError(f"a neighbour graph for {master} holds row ids, integers; got {rows.dtype} values")
        if rows.size and (rows.min() < -1 or rows.max() >= n_images):
            raise ZsfsError(f"a neighbour graph for {master} holds row ids outside [-1, {n_images})")
        remove_leftover_temp_files(store.path, store.data_dir)  # a killed `zsfs neighbours` left one
        with new_hdf5(schema.graph_file(store.data_dir), f"the neighbour graph of {store.path}") as file:
            dataset = write_checked(file, schema.GRAPH_ROWS, rows.astype(schema.graph_dtype(n_images)))
            dataset.attrs[schema.ATTR_GRAPH] = canonical_json({**info, "k": int(rows.shape[1])})
            file.attrs.update({schema.ATTR_FORMAT: schema.GRAPH_FORMAT, schema.ATTR_FORMAT_VERSION: schema.FORMAT_VERSION,
                               schema.ATTR_IDENTITY: canonical_json(store.identity), schema.ATTR_BUILD: store.build})


def open_extra(path: Path, kind: str, identity: dict) -> h5py.File:
    """Open a vocabulary or graph file (``kind``: its format name), checked to belong to the store."""
    from zsfs.store.integrity import check_structure

    try:
        file = open_hdf5(path)
    except OSError as error:
        raise damaged_extra(path, kind, error) from None
    with checked_extra(file, path, kind):
        check_structure(file, path)
        if file.attrs.get(schema.ATTR_FORMAT) != kind:
            raise StoreError(f"{path} is not a {kind} file; remove it")
        try:  # compared as JSON values, as shards' are: a file written by hand may spell it otherwise
            recorded = read_identity(file)
        except ValueError:
            recorded = None
        if recorded != identity:
            raise StoreError(f"{path} belongs to another store (its identity differs); remove it")
    return file


@contextmanager
def reading_extra(path: Path, kind: str, identity: dict) -> Iterator[h5py.File]:
    """:func:`open_extra`'s file for the block, closed after it; damage met in the block is
    :func:`checked_extra`'s ``StoreError``."""
    file = open_extra(path, kind, identity)
    with file, checked_extra(file, path, kind):
        yield file


def checked_extra(file: h5py.File, path: Path, kind: str) -> AbstractContextManager[None]:
    """Reads of ``file``, the open vocabulary or graph file ``path``: any error closes it, and
    damage is a ``StoreError`` that says how to get the file back."""
    return closed_on_error(file, lambda error: damaged_extra(path, kind, error))


def damaged_extra(path: Path, kind: str, error: BaseException) -> StoreError:
    # removing it first works for both (a vocabulary written again would also replace its file)
    writer = ("`zsfs neighbours`" if kind == schema.GRAPH_FORMAT
              else "the `zsfs text`, `zsfs extract` or `zsfs import` that wrote it")
    return StoreError(f"{path} is damaged ({one_line(error)}); remove it, then rerun {writer}")


def vocabulary_files(shards: Path, identity: dict) -> tuple[dict[str, Path], dict[Path, str]]:
    """Every vocabulary file in the store's shard folder: ``(name -> file, unreadable file -> why)``.

    A file that cannot be read (damaged, another store's, misnamed) is set aside with its reason
    rather than raised: its file name is a digest, so its vocabulary is unknown, and the store's
    other vocabularies must stay usable (``Store.vocabulary`` and ``zsfs info`` name it)."""
    found, unreadable = {}, {}
    try:
        names = os.listdir(shards)
    except PermissionError as error:  # glob finds nothing where it may not list (chmod 711): "no vocabulary yet"
        raise StoreError(f"cannot list {shards}, the folder of the store's vocabularies ({error.strerror}); "
                         "make that folder readable") from None
    except OSError:  # no shards folder (yet): no vocabulary
        names = []
    for path in sorted(shards / name for name in fnmatch.filter(names, schema.VOCAB_GLOB)):
        try:
            with reading_extra(path, schema.VOCAB_FORMAT, identity) as file:  # a damaged name (its heap): set aside too
                name = str(file.attrs.get(schema.ATTR_NAME, ""))
        except StoreError as error:
            unreadable[path] = str(error)
            continue
        if path != schema.vocabulary_file(shards, name):
            unreadable[path] = f"{path} holds vocabulary {name!r} under another name; remove it"
            continue
        found[name] = path
    return found, unreadable


@dataclass(frozen=True)
class Vocabulary:
    """Class names and their CLIP text embeddings (C, D), L2-normalised."""

    name: str
    classes: list[str]
    single: np.ndarray
    ensemble: np.ndarray
    prompt: str = ""
    n_templates: int = 0

    def embeddings(self, prompts: str) -> np.ndarray:
        """Text embeddings for ``prompts``: "single" (one prompt) or "ensemble" (template mean)."""
        check_choice("prompts", prompts, schema.PROMPT_KINDS)
        return self.single if prompts == schema.VOCAB_SINGLE else self.ensemble

    def prompts_used(self, prompts: str) -> str:
        """The text embeddings ``embeddings(prompts)`` gives in truth: "single" for an ensemble that is
        the single prompt's rows (a vocabulary imported without one, where they stand in)."""
        check_choice("prompts", prompts, schema.PROMPT_KINDS)
        return schema.VOCAB_SINGLE if np.array_equal(self.single, self.ensemble) else prompts

    def subset(self, classes: Sequence[str]) -> "Vocabulary":
        """The vocabulary restricted to ``classes``, in the order given, spelled as the vocabulary
        spells them (a name in another Unicode form, café composed or not, is that class: labels
        and ood-bench's ID classes are matched so)."""
        classes = check_class_names(classes, f"the classes to take from vocabulary {self.name!r}")
        position = {unicodedata.normalize("NFC", name): i for i, name in enumerate(self.classes)}
        composed = [unicodedata.normalize("NFC", name) for name in classes]
        unknown = [name for name, form in zip(classes, composed) if form not in position]
        if unknown:
            hint = spelled_like(self.classes, "its class")
            raise StoreError(f"vocabulary {self.name!r} has no class {unknown[0]!r}{hint(unknown[0])}"
                             f"{f' (and {len(unknown) - 1} more unknown)' if len(unknown) > 1 else ''}")
        rows = np.array([position[form] for form in composed], dtype=np.int64)
        return Vocabulary(self.name, [self.classes[row] for row in rows], self.single[rows], self.ensemble[rows],
                          self.prompt, self.n_templates)


def vocabulary_name_as_stored(name: str, names: Sequence[str]) -> str:
    """:meth:`Store.stored_vocabulary_name` among the store's vocabulary ``names``."""
    composed = unicodedata.normalize("NFC", name)
    return name if name in names else next(
        (stored for stored in names if unicodedata.normalize("NFC", stored) == composed), composed)


HAND_WRITTEN_VOCABULARY = ("zsfs does not write such a vocabulary: write it again (`zsfs text --overwrite`, or rerun "
                           "the `zsfs extract` or `zsfs import` that wrote it)")


def read_vocabulary(group: h5py.Group, name: str, path: Path, clip_dim: int) -> Vocabulary:
    """Vocabulary ``name`` from its file (or format 1 group), held to what zsfs writes: a file
    written by hand (docs/store.md) with names given twice, rows of another count, width or type,
    or NaN rows is refused naming the file, not met later as a torch error or as NaN images."""
    where = f"{path}: vocabulary {name!r}"
    kinds = (schema.VOCAB_CLASSES, *schema.PROMPT_KINDS)
    missing = [kind for kind in kinds if not isinstance(group.get(kind), h5py.Dataset)]
    if missing:
        raise StoreError(f"{where} lacks {', '.join(missing)}; {HAND_WRITTEN_VOCABULARY}")
    datasets = {kind: group[kind] for kind in kinds}
    texts = datasets[schema.VOCAB_CLASSES]
    wrong_type = ([f"{schema.VOCAB_CLASSES} is not a 1-d dataset of strings"]
                  if texts.ndim != 1 or not h5py.check_string_dtype(texts.dtype) else []) + \
                 [f"{kind} does not hold floating-point numbers" for kind in schema.PROMPT_KINDS
                  if datasets[kind].dtype.kind != "f"]
    if wrong_type:
        raise StoreError(f"{where}: {wrong_type[0]}; {HAND_WRITTEN_VOCABULARY}")
    # damaged bytes raise h5py's errors here: Store.vocabulary names the file and how to get it back
    raw_classes = texts[:]  # bytes: check_class_names decodes them, or says why it cannot
    recorded = group.attrs.get(schema.ATTR_STRINGS_SHA256)  # vocabularies written since December 2026
    as_written = [raw.decode("utf-8", "surrogateescape") for raw in raw_classes]
    if recorded is not None and listing_sha256(as_written) != recorded:
        # a flipped bit in a class name read as another name: its embedding then labelled images with it
        raise damaged_extra(path, schema.VOCAB_FORMAT, ValueError("its class names do not match their recorded sha256"))
    arrays = {kind: datasets[kind][:] for kind in schema.PROMPT_KINDS}
    prompt = str(group.attrs.get(schema.ATTR_PROMPT, ""))
    n_templates = int(group.attrs.get(schema.ATTR_N_TEMPLATES, 0))
    try:
        classes = check_class_names(raw_classes.tolist(), where)
        for kind, values in arrays.items():
            if values.shape != (len(classes), clip_dim):
                raise ZsfsError(f"{where}: {kind} has shape {values.shape}, not ({len(classes)} classes, {clip_dim} = "
                                "the store's CLIP dim)")
            arrays[kind] = normalise_rows(values, f"{where}: {kind}")
    except ZsfsError as error:
        raise StoreError(f"{error}; {HAND_WRITTEN_VOCABULARY}") from None
    return Vocabulary(name=name, classes=classes, single=arrays[schema.VOCAB_SINGLE],
                      ensemble=arrays[schema.VOCAB_ENSEMBLE], prompt=prompt, n_templates=n_templates)
