"""CLIP-space nearest neighbours of the seed candidates (the re-ranking of method.md step A).

:func:`candidate_neighbours` picks one of two searches:

- exact, :func:`exact_neighbours`: blocked matrix products of the queries against every stored
  embedding, in torch on the fit's device. Used where the store's index is exact (flat, up to
  100k rows): it finds the same neighbours as that index (faiss' flat search is the same
  products), and it also runs on a GPU and can scan in bf16. Used on a GPU for every store:
  1.28M x 100k products take seconds there.
- the store's FAISS IVF index on CPU for big stores, where probing a few lists beats exact
  products by far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from zsfs.store.index import drop_self, nearest_neighbours

if TYPE_CHECKING:
    import faiss

    from zsfs.store import Store

SCORE_BLOCK = 1 << 26
"""Scores computed at once (query rows x stored rows): 128 MB in bf16, 256 MB in float32."""

SHORTLIST_MARGIN = 8
"""Extra rows kept by a low-precision scan before exact re-scoring."""


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
    block = max(1, SCORE_BLOCK // n)
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


def uses_exact_search(store: "Store", device: torch.device) -> bool:
    """Exact search where the store's index is exact, and on GPUs; its FAISS IVF index otherwise."""
    return store.index_info.get("type") == "flat" or device.type != "cpu"


def candidate_neighbours(
    clip: np.ndarray, query_rows: np.ndarray, k: int, *, index: "faiss.Index | None",
    device: torch.device, scan_dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """``(len(query_rows), k)`` CLIP neighbours of the given store rows: exact search over
    ``clip`` (all the store's CLIP embeddings) when ``index`` is None, else ``index``'s search."""
    if index is None:
        embeddings = torch.as_tensor(clip).to(device=device, dtype=torch.float32)
        return exact_neighbours(embeddings, query_rows, k, scan_dtype=scan_dtype)
    return nearest_neighbours(index, clip[query_rows], query_rows, k)
