"""CLIP-space nearest neighbours of the seed candidates (the re-ranking of method.md step A).

:class:`NeighbourSearch` is one of two searches (:func:`uses_exact_search` picks it):

- exact, :func:`exact_neighbours`: blocked matrix products of the queries against every stored
  embedding, in torch on the fit's device. On a GPU for every store (100k candidates against
  1.28M rows are 131 TFLOP, seconds at GPU rates; not measured yet), and on CPU with a bf16
  scan where the store's index is exact (up to 100k rows): the same neighbours as that index,
  1.2x faster than faiss' float32 flat search on a CPU with AVX512-BF16 (50k store: 11.1 vs 13.6 s).
- the store's FAISS index otherwise: exact (flat) or IVF for big stores on CPU, where probing
  a few lists beats exact products by far.

:func:`neighbour_graph` runs a search for every row, once per store (``zsfs neighbours``): a
store holding that graph spares every later fit the search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from zsfs.store.index import drop_self, nearest_neighbours

if TYPE_CHECKING:
    import faiss

    from zsfs.store import Store

SCORE_BLOCK = {"cpu": 1 << 26, "gpu": 1 << 29}
"""Scores computed at once (query rows x stored rows): on CPU 128 MB in bf16, 256 MB in float32;
on a GPU 8x that, so that a block of queries is not a handful of rows at 1.28M stored rows."""

SHORTLIST_MARGIN = 8
"""Extra rows kept by a low-precision scan before exact re-scoring."""

GRAPH_K = 16
"""Neighbours per image in a stored graph by default (fits use up to this many)."""

GRAPH_BLOCK = 16384
"""Rows per block when building a graph (one progress step)."""


def exact_neighbours(
    embeddings: torch.Tensor, query_rows: np.ndarray, k: int, *, scan_dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """Row ids ``(len(query_rows), k)`` of each query row's ``k`` nearest rows by inner product,
    itself excluded.

    ``embeddings``: ``(N, D)`` float32 on the device to search on. With ``scan_dtype`` bfloat16
    the scan keeps ``k + 1 + SHORTLIST_MARGIN`` rows per query, which are re-scored in float32:
    the result is the exact one unless more than ``SHORTLIST_MARGIN`` rows lie within bf16
    rounding (~1e-3) of the k-th neighbour's score, and then the swapped rows are that close.
    """
    n = len(embeddings)
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} embeddings, got {k}")
    query_rows = np.asarray(query_rows, dtype=np.int64)
    low_precision = scan_dtype != torch.float32
    scan = embeddings.to(scan_dtype)
    shortlist = min(n, k + 1 + SHORTLIST_MARGIN) if low_precision else k + 1
    block = max(1, SCORE_BLOCK["cpu" if embeddings.device.type == "cpu" else "gpu"] // n)
    result = np.empty((len(query_rows), k), dtype=np.int64)
    for start in range(0, len(query_rows), block):
        own = query_rows[start : start + block]
        rows = torch.as_tensor(own, device=embeddings.device)
        found = torch.topk(scan[rows] @ scan.T, shortlist, dim=1).indices
        if low_precision:
            exact = torch.bmm(embeddings[found], embeddings[rows].unsqueeze(2)).squeeze(2)
            found = torch.gather(found, 1, torch.topk(exact, k + 1, dim=1).indices)
        result[start : start + len(own)] = drop_self(found.cpu().numpy(), own)
    return result


def uses_exact_search(store: "Store", device: torch.device, scan_dtype: torch.dtype = torch.float32) -> bool:
    """Exact torch search on GPUs, and on CPU for a bf16 scan of a store whose index is exact;
    otherwise the store's FAISS index (in float32 on CPU, faiss' flat search is the faster one)."""
    if device.type != "cpu":
        return True
    return store.index_info.get("type") == "flat" and scan_dtype != torch.float32


class NeighbourSearch:
    """The search over a store's CLIP embeddings (``clip``, all rows) that fit uses: exact
    products when ``index`` is None, else ``index``'s search; queried in blocks of rows."""

    def __init__(self, clip: np.ndarray, *, index: "faiss.Index | None", device: torch.device,
                 scan_dtype: torch.dtype = torch.float32):
        self.clip, self.index, self.scan_dtype = clip, index, scan_dtype
        self.embeddings = None if index is not None else torch.as_tensor(clip).to(device=device, dtype=torch.float32)

    def __call__(self, query_rows: np.ndarray, k: int) -> np.ndarray:
        """``(len(query_rows), k)`` neighbours of the given store rows, themselves excluded."""
        if self.embeddings is not None:
            return exact_neighbours(self.embeddings, query_rows, k, scan_dtype=self.scan_dtype)
        return nearest_neighbours(self.index, self.clip[query_rows], query_rows, k)

    def describe(self, index_info: dict) -> dict:
        """``{"search", "precision"}`` for run configs and the stored graph's record."""
        if self.embeddings is not None:
            return {"search": "exact", "precision": "bf16 scan, fp32 re-scoring"
                    if self.scan_dtype != torch.float32 else "fp32"}
        search = f"faiss {index_info.get('type')}" + (f", nprobe {self.index.nprobe}" if hasattr(self.index, "nprobe") else "")
        return {"search": search, "precision": "fp32"}


def neighbour_graph(search: NeighbourSearch, n_rows: int, k: int, *,
                    on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """``(n_rows, k)`` int32: the ``k`` neighbours of every store row, in blocks of
    ``GRAPH_BLOCK`` rows; ``on_rows(n)`` is called after each block (progress)."""
    graph = np.empty((n_rows, k), dtype=np.int32)
    for start in range(0, n_rows, GRAPH_BLOCK):
        rows = np.arange(start, min(n_rows, start + GRAPH_BLOCK))
        graph[start : start + len(rows)] = search(rows, k)
        if on_rows is not None:
            on_rows(len(rows))
    return graph
