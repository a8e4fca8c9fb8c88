"""FAISS index over the CLIP image embeddings: build, (de)serialise, batched neighbour search.

Small stores get an exact inner-product index. Above ``exact_max`` rows an IVF index (inner
product, flat lists) keeps queries fast; it is trained on a seeded subsample so that building
it stays cheap and the same embeddings always give the same index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # faiss is imported lazily: `zsfs --help` must stay fast
    import faiss
    import h5py

MISSING = -1
"""No row: faiss pads a search's results with it where too few rows are found; zsfs' own searches
and candidate lists pad the same way."""
EXACT_MAX = 100_000
MAX_NLIST = 8192
TRAIN_POINTS_PER_LIST = 64  # k-means needs ~40+ points per centroid to be stable
MIN_NPROBE = 16
ADD_BATCH = 262_144  # rows converted to float32 at a time while adding
STREAM_BLOCK = 1 << 24  # bytes per read/write when streaming an index to or from HDF5


def as_float32(array: np.ndarray) -> np.ndarray:
    """C-contiguous float32 view or copy, the only layout faiss accepts."""
    return np.ascontiguousarray(array, dtype=np.float32)


def choose_nlist(n: int) -> int:
    """Number of IVF lists: the power of two nearest ``sqrt(n)``, capped at ``MAX_NLIST`` and at
    ``n / TRAIN_POINTS_PER_LIST`` so that every list gets enough training points.

    Building costs ~n * nlist * dim (assigning every row to a list); the common 4 * sqrt(n)
    took over 3 minutes at ImageNet scale on a busy 2-core machine without finishing, sqrt(n)
    about one (1.28M x 512: 64-84 s).
    """
    nearest = 2 ** round(math.log2(math.sqrt(max(n, 1))))
    trainable = 2 ** max(0, int(math.log2(max(n // TRAIN_POINTS_PER_LIST, 1))))
    return int(min(MAX_NLIST, nearest, trainable))


def choose_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/64 of them, at least ``MIN_NPROBE`` (16 of 1024 at ImageNet size)."""
    return int(min(nlist, max(MIN_NPROBE, nlist // 64)))


def build_index(embeddings: np.ndarray, *, exact_max: int = EXACT_MAX, seed: int = 0) -> tuple["faiss.Index", dict]:
    """Index ``embeddings`` (N, D) for inner-product search; returns ``(index, info)``.

    ``info`` records what was built: ``type`` ("flat" or "ivf_flat"), ``metric``, ``n``, ``dim``
    and for IVF ``nlist``, ``nprobe``, ``n_train`` and ``seed``.
    """
    import faiss

    n, dim = embeddings.shape
    info: dict = {"metric": "inner_product", "n": int(n), "dim": int(dim), "exact_max": int(exact_max)}
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
        info["type"] = "flat"
    else:
        nlist = choose_nlist(n)
        n_train = min(n, nlist * TRAIN_POINTS_PER_LIST)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10
        index.train(as_float32(embeddings[sample]))
        index.nprobe = choose_nprobe(nlist)
        info.update(type="ivf_flat", nlist=nlist, nprobe=int(index.nprobe), n_train=int(n_train), seed=seed)
    for start in range(0, n, ADD_BATCH):
        index.add(as_float32(embeddings[start : start + ADD_BATCH]))
    return index, info


def write_index_blocks(index: "faiss.Index", dataset: h5py.Dataset, after_block: Callable[[], None] | None = None) -> None:
    """Serialise ``index`` into ``dataset``, a resizable 1-d uint8 HDF5 dataset, block by block.

    Same bytes as ``faiss.serialize_index`` without holding a second copy of a multi-GB index.
    ``after_block()`` runs after each block is written (it may raise to stop the write).
    """
    import faiss

    pending: list[bytes] = []
    buffered = 0

    def flush() -> None:
        nonlocal buffered
        if buffered:
            start = len(dataset)
            dataset.resize((start + buffered,))
            dataset[start:] = np.frombuffer(b"".join(pending), dtype=np.uint8)
            pending.clear()
            buffered = 0
            if after_block is not None:
                after_block()

    def write(chunk: bytes) -> int:
        nonlocal buffered
        pending.append(chunk)
        buffered += len(chunk)
        if buffered >= STREAM_BLOCK:
            flush()
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(write, STREAM_BLOCK))
    flush()


def read_index_blocks(dataset: h5py.Dataset) -> "faiss.Index":
    """Inverse of :func:`write_index_blocks`: reads ``dataset`` (any 1-d uint8 sliceable) in
    blocks, so only the index itself is held in memory."""
    import faiss

    position = 0
    block = b""
    block_start = 0

    def read(size: int) -> bytes:
        nonlocal position, block, block_start
        out = []
        while size > 0 and position < len(dataset):
            if not block_start <= position < block_start + len(block):
                block_start = position
                block = np.asarray(dataset[position : position + STREAM_BLOCK], dtype=np.uint8).tobytes()
            piece = block[position - block_start : position - block_start + size]
            out.append(piece)
            position += len(piece)
            size -= len(piece)
        return b"".join(out)

    return faiss.read_index(faiss.PyCallbackIOReader(read, STREAM_BLOCK))


SAMPLE_ROWS = 16  # stored vectors compared with the store's own rows each time an index is read


def index_mismatch(index: "faiss.Index", info: dict, n: int, dim: int) -> str | None:
    """Why ``index`` is not an inner-product index of the ``info["type"]`` recorded over ``n`` rows
    of ``dim`` (an index copied in from another store, or written by hand), or None: faiss itself
    failed on it with an AssertionError or AttributeError traceback, or searched the wrong vectors."""
    import faiss

    kinds = {"flat": faiss.IndexFlat, "ivf_flat": faiss.IndexIVFFlat}
    expected = kinds.get(info.get("type"))
    if expected is not None and not isinstance(index, expected):
        return f"it is faiss's {type(index).__name__}, the master records an index of type {info.get('type')!r}"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "it does not search by inner product"
    if index.d != dim or index.ntotal != n:
        return f"it holds {index.ntotal:,} vectors of {index.d}, the store {n:,} of {dim}"
    if info.get("n", n) != n or info.get("dim", dim) != dim:
        return f"the master's index record says {info.get('n')} vectors of {info.get('dim')}, the store holds {n:,} of {dim}"
    return None


def stored_vectors(index: "faiss.Index", rows: np.ndarray) -> np.ndarray:
    """The vectors ``index`` holds for ``rows`` (an IVF index only finds them through a direct
    map, made for this and dropped after: it costs 8 bytes a row)."""
    import faiss

    ivf = isinstance(index, faiss.IndexIVF)
    if ivf:
        index.make_direct_map()
    try:
        return np.stack([index.reconstruct(int(row)) for row in rows]) if len(rows) else np.zeros((0, index.d), np.float32)
    finally:
        if ivf:
            index.set_direct_map_type(faiss.DirectMap.NoMap)


def vectors_differ(stored: np.ndarray, rows: np.ndarray) -> bool:
    """Whether an index's ``stored`` vectors are not the store's ``rows``: compared by direction, as
    a writer may index its float32 rows beside float16 ones stored (docs/store.md's recipe)."""
    rows = as_float32(rows)
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(rows, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.einsum("ij,ij->i", stored, rows) / norms
    return bool(len(rows)) and not bool(np.all(cosine > 0.99))


def nearest_neighbours(
    index: "faiss.Index", queries: np.ndarray, query_rows: np.ndarray, k: int, batch_size: int = 16384
) -> np.ndarray:
    """Row ids (len(queries), k) of each query's ``k`` nearest stored rows, itself excluded.

    ``query_rows[i]`` is the stored row of ``queries[i]``. Each batch asks faiss for ``k + 1``
    neighbours; the query's own row is dropped where it appears, otherwise the last one is.
    Where the probed IVF lists hold fewer than ``k + 1`` rows in all, faiss pads with ``MISSING``.
    """
    query_rows = np.asarray(query_rows, dtype=np.int64)
    if len(queries) != len(query_rows):
        raise ValueError(f"{len(queries)} queries but {len(query_rows)} query rows")
    if not 0 < k < index.ntotal:
        raise ValueError(f"k must be in [1, {index.ntotal - 1}] for an index of {index.ntotal} rows, got {k}")
    result = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        stop = start + batch_size
        _, found = index.search(as_float32(queries[start:stop]), k + 1)
        result[start:stop] = drop_self(found, query_rows[start:stop])
    return result


def drop_self(found: np.ndarray, own_rows: np.ndarray) -> np.ndarray:
    """Remove one column per row of ``found`` (n, k+1): the row's own id, else the last column."""
    is_self = found == own_rows[:, None]
    # Position to drop: first occurrence of self, or the last column when self is absent.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(len(found)), drop] = False
    return found[keep].reshape(len(found), found.shape[1] - 1)
