"""The store's contract: file layout, dataset names, dtypes and attributes.

Every reader and writer imports its names from here; ``docs/store.md`` documents the same
layout for other tools. Bump ``FORMAT_VERSION`` on any incompatible change.

Layout for ``imagenet.h5``::

    imagenet.h5                      master: what readers open
    imagenet.shards/shard-00000.h5   rows [0, shard_size) of the source listing
    imagenet.shards/shard-00001.h5   ...
    imagenet.shards/vocab-<id>.h5    one class vocabulary per file (format 2)
    imagenet.shards/neighbours.h5    the optional neighbour graph (format 2)

Master file (all row datasets have the same length N = number of embedded images, in the
order of the source listing with skipped files left out):

    /clip        (N, D_clip)     float16|float32  L2-normalised CLIP image embeddings  [virtual]
    /backbone    (N, D_backbone) float16|float32  L2-normalised backbone features       [virtual]
    /width       (N,) int32      decoded image width (before any EXIF rotation: after)  [virtual]
    /height      (N,) int32                                                              [virtual]
    /path        (N,) utf-8 str  path relative to the source folder (or as listed)
    /label       (N,) utf-8 str  ground-truth label; only when the source has labels
    /skipped/path, /skipped/reason   (M,) utf-8 str   files that could not be embedded
    /shards/file (S,) utf-8 str  shard file names, relative to the master's folder
    /shards/rows (S,) int64      embedded rows per shard
    /shards/bytes, /shards/sha256   (S,) int64, utf-8 str   each shard file's size and digest
    /index/faiss  (B,) uint8     faiss.serialize_index of an index over /clip (inner product)

Vocabulary file (any number; format 1 kept them in the master under /vocab/<name>/):

    /classes   (C,) utf-8 str
    /single    (C, D_clip) float32  text embedding of SINGLE_PROMPT, normalised
    /ensemble  (C, D_clip) float32  mean of the template embeddings, renormalised

Neighbour-graph file: /neighbours (N, K) int32 (format 1 kept it in the master as
/index/neighbours). Numeric datasets carry HDF5's fletcher32 checksum filter.

Virtual datasets map onto the shards, so plain ``h5py`` reads ``f["clip"][:]`` as one array.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zsfs.names import visible

FORMAT_NAME = "zsfs-store"
FORMAT_VERSION = 2  # readers also read format 1 (vocabularies and graph inside the master)

# Row datasets (master and shards).
CLIP = "clip"
BACKBONE = "backbone"
WIDTH = "width"
HEIGHT = "height"
PATH = "path"
LABEL = "label"
VIRTUAL_DATASETS = (CLIP, BACKBONE, WIDTH, HEIGHT)  # mapped onto shards

SKIPPED_PATH = "skipped/path"
SKIPPED_REASON = "skipped/reason"

SHARDS_FILE = "shards/file"
SHARDS_ROWS = "shards/rows"
SHARDS_BYTES = "shards/bytes"  # format 2: file size, checked on every open
SHARDS_SHA256 = "shards/sha256"  # format 2: file digest, checked by `zsfs info --verify`

VOCAB_GROUP = "vocab"
VOCAB_CLASSES = "classes"
VOCAB_SINGLE = "single"
VOCAB_ENSEMBLE = "ensemble"
PROMPT_KINDS = (VOCAB_SINGLE, VOCAB_ENSEMBLE)

INDEX_DATASET = "index/faiss"
GRAPH_DATASET = "index/neighbours"  # format 1 only: the graph inside the master
GRAPH_ROWS = "neighbours"  # in the graph file: (N, K) row ids (graph_dtype), each row's K nearest rows, best first
ATTR_GRAPH = "graph"  # JSON on the graph dataset: {"k", "search", "precision"}

# Files beside the shards (format 2), each written whole and renamed into place.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")  # names a master may have
VOCAB_FILE_PREFIX = "vocab-"  # + the first 16 hex digits of sha256(name) + ".h5"
GRAPH_FILE = "neighbours.h5"
SHARD_FORMAT = FORMAT_NAME + "-shard"
VOCAB_FORMAT = FORMAT_NAME + "-vocabulary"
GRAPH_FORMAT = FORMAT_NAME + "-neighbours"
PLANNED_FORMAT = FORMAT_NAME + "-planned-vocabularies"
PLANNED_FILE = "planned-vocabularies.h5"
"""In the shards folder: the vocabularies the last extract/import of the store writes after its master
(names, and the command), recorded before the master: a stop between leaves the store without them,
named rather than silent."""
ATTR_COMMAND = "command"  # the planned-vocabularies file's writer, as messages name it
PART_FORMATS = {SHARD_FORMAT: "a shard", VOCAB_FORMAT: "a vocabulary file", GRAPH_FORMAT: "the neighbour graph",
                PLANNED_FORMAT: "the plan of vocabularies"}
"""The files a store keeps in its shards folder, by their format mark, as messages name them."""
ATTR_NAME = "name"  # a vocabulary file's vocabulary name
ATTR_BUILD = "build"  # random id of one master build; the graph file records the one it was made for

# Root attributes of the master (JSON-encoded where marked).
ATTR_FORMAT = "format"  # == FORMAT_NAME
ATTR_FORMAT_VERSION = "format_version"
ATTR_ZSFS_VERSION = "zsfs_version"
ATTR_CREATED = "created"  # ISO 8601, UTC
ATTR_SOURCE = "source"  # absolute path of the folder or list file
ATTR_IDENTITY = "identity"  # JSON: what makes shards compatible: the caller's (source, models, ...)
#                            plus n_items, shard_size and dtype, which the writer adds
ATTR_CLIP = "clip"  # JSON: {"name", "weights", "sha256", "dim", ...}
ATTR_BACKBONE = "backbone"  # JSON: {"name", "weights", "sha256", "dim", "output", ...}
ATTR_INDEX = "index"  # JSON: {"type", "metric", "n", ...}; on the master root
ATTR_N_IMAGES = "n_images"
ATTR_N_SKIPPED = "n_skipped"
ATTR_STRINGS_SHA256 = "strings_sha256"  # digest of MASTER_STRINGS (no HDF5 checksum covers text); since 2026-12
MASTER_STRINGS = (PATH, LABEL, SKIPPED_PATH, SKIPPED_REASON, SHARDS_FILE, SHARDS_SHA256)
"""The master's string datasets (those it holds), in the order their digest reads them."""

# Shard attributes.
ATTR_SHARD = "shard"  # shard number
ATTR_START = "start"  # first position in the source listing (inclusive)
ATTR_STOP = "stop"  # last position in the source listing (exclusive)

# Vocabulary attributes.
ATTR_PROMPT = "prompt"  # the single prompt template, e.g. "a photo of a {}"
ATTR_N_TEMPLATES = "n_templates"

IMPORTED_WEIGHTS = "imported"
"""The ``weights`` of a model record in a store built by ``zsfs import``: the model that made
the embeddings is not known to zsfs, so it cannot be reloaded."""
IMPORTED_PROMPT = "imported"
"""The ``prompt`` of an imported vocabulary: its texts were embedded outside zsfs."""

UNKNOWN_SIZE = -1
"""width/height of rows whose size is not known (imported stores); also the fill value that
the virtual datasets read where a shard file is missing (NaN for the embeddings)."""

SHARD_SUFFIX = ".h5"
TMP_SUFFIX = ".tmp"
SHARDS_SUFFIX = ".shards"  # a master's shards folder: imagenet.h5 -> imagenet.shards
SHARD_GLOB = "shard-*" + SHARD_SUFFIX  # the shard files of a shards folder
VOCAB_GLOB = VOCAB_FILE_PREFIX + "*" + SHARD_SUFFIX  # its vocabulary files
DEFAULT_SHARD_SIZE = 50_000
EMBEDDING_DTYPES = ("float16", "float32")


def valid_vocabulary_name(name: str) -> bool:
    """A vocabulary name is one HDF5 group name and part of default run folder names: not empty,
    no '/', no leading '.', nothing that a terminal would not show as typed (control, invisible
    and bidirectional characters: ``zsfs.names.visible``), no space at either end (``--vocab x``
    would not find ``" x "``)."""
    return (bool(name) and "/" not in name and not name.startswith(".") and visible(name) == name
            and name == name.strip())


INVALID_VOCABULARY_NAME = ("invalid vocabulary name {!r}: use a non-empty name without '/', control or invisible "
                           "characters, a leading '.' or spaces at either end")


def shard_dir(master: Path) -> Path:
    """Folder holding a master's shards: ``imagenet.h5`` -> ``imagenet.shards``.

    The master's virtual datasets name their files as UTF-8 text (h5py reads them back strictly),
    so bytes of the master's name that are not UTF-8 are written as ``%NN`` in the folder's.
    """
    master = Path(master)
    stem = os.fsencode(master.stem).decode("utf-8", "surrogateescape")  # such bytes: U+DC80-U+DCFF
    stem = "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in stem)
    return master.with_name(stem + SHARDS_SUFFIX)


def vds_file_name(shard_file: str) -> str:
    """A shard file's name as the master's virtual datasets record it: HDF5 reads ``%`` there as a
    format specifier, ``%%`` as a literal ``%``."""
    return shard_file.replace("%", "%%")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}{SHARD_SUFFIX}"


def vocabulary_file(shards: Path, name: str) -> Path:
    """The file of vocabulary ``name`` in the store's shard folder ``shards``: named by a digest,
    so that any name is a safe file name (no separators, no case clashes on case-insensitive
    file systems); the name is inside."""
    import hashlib

    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(shards) / f"{VOCAB_FILE_PREFIX}{digest}{SHARD_SUFFIX}"


def graph_file(shards: Path) -> Path:
    return Path(shards) / GRAPH_FILE


def holds_store_parts(folder: Path) -> bool:
    """Whether ``folder`` holds a shard, vocabulary or graph file of a store (by name)."""
    patterns = (SHARD_GLOB, VOCAB_GLOB, GRAPH_FILE)
    try:
        return any(next(Path(folder).glob(pattern), None) is not None for pattern in patterns)
    except OSError:
        return False


def graph_dtype(n_rows: int) -> type:
    """The row ids of a neighbour graph: int32 (half the bytes) unless a store's last row is past its range."""
    return np.int32 if n_rows - 1 <= np.iinfo(np.int32).max else np.int64
