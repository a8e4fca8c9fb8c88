"""CLIP-space nearest neighbours of the seed candidates (the re-ranking of the paper's step A; docs/fit.md, "What it does").

:class:`NeighbourSearch` runs one of three searches, chosen by :func:`choose_search`:

- ``"faiss"``: the store's exact (flat) FAISS index, on CPU in float32, where faiss' own
  search is the fastest exact one.
- ``"ivf"``: the store's IVF index (stores above 100k images) on CPU: each query scans the
  same ``nprobe`` lists as faiss would (so the same neighbours, up to ties), but all queries
  that probe a list are scored against it in one matrix product (:func:`probed_neighbours`),
  not one query at a time. Asked for on
  a store with an exact index (``--ivf-neighbours``, part of ``--fast``), the fit builds the
  lists itself (``zsfs.store.index.build_index``: under a second at 50k images).
- ``"exact"``: every query against every row by blocked matrix products, on a GPU for any
  store, and on CPU for flat stores with a bf16 scan (faster than faiss' float32 search on
  CPUs with AVX512-BF16).

With a bf16 scan each query keeps ``k + 1 + SHORTLIST_MARGIN`` rows, re-scored in float32: the
result is the float32 one unless more than ``SHORTLIST_MARGIN`` rows lie within bf16 rounding
(~1e-3) of the k-th neighbour's score, and then the swapped rows are that close.

:func:`neighbour_graph` runs a search for every row, once per store (``zsfs neighbours``): a
store holding that graph spares every later fit the search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from zsfs.devices import SEARCH_PRECISIONS
from zsfs.store import schema
from zsfs.store.index import MISSING, build_index, drop_self, nearest_neighbours

if TYPE_CHECKING:
    import faiss

    from zsfs.store import Store

SEARCHES = ("faiss", "ivf", "exact")

SEARCH_DTYPES = dict(zip(SEARCH_PRECISIONS, (torch.float32, torch.bfloat16)))
"""The dtype of the neighbour search's scores per ``--precision`` (a fit's and ``zsfs neighbours``')."""

SCORE_BLOCK = {"cpu": 1 << 26, "gpu": 1 << 29}
"""Scores computed at once (queries x rows): on CPU 128 MB in bf16, 256 MB in float32; on a
GPU 8x that, so that a block of queries is not a handful of rows against 1.28M stored rows."""

SHORTLIST_MARGIN = 8
"""Extra rows kept by a low-precision scan before exact re-scoring."""

IVF_MIN_ROWS = 20_000
"""Smallest store for which a fit builds IVF lists when asked to (``--ivf-neighbours``)."""

GRAPH_K = 16
"""Neighbours per image in a stored graph by default (fits use up to this many)."""

GRAPH_MAX_K = 100
"""Most neighbours per image a stored graph may hold (its build holds ~GRAPH_BLOCK x k x 24 bytes)."""

GRAPH_BLOCK = 131072
"""Most rows per block when building a graph (one progress step). Large, because each block
visits every IVF list once: with 16k-row blocks the 1.28M graph spent its time gathering lists."""

GRAPH_STEPS = 10
"""Blocks a graph of up to ``GRAPH_STEPS x GRAPH_BLOCK`` rows is built in: a tenth of the store
each, so the progress bar moves on a small store too (a 50k store's single block held it at 0
for the whole search), and every IVF list is gathered 10 times up to that size (as the 1.28M
graph was); larger stores take more blocks of ``GRAPH_BLOCK`` rows."""


class RunningTop:
    """The ``width`` best scores seen so far per query, and the rows that gave them (``MISSING``: none)."""

    def __init__(self, n_queries: int, width: int, device: torch.device):
        self.width = width
        self.scores = torch.full((n_queries, width), -torch.inf, device=device)
        self.rows = torch.full((n_queries, width), MISSING, dtype=torch.int64, device=device)

    def update(self, queries: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Merge ``scores`` (len(queries) x len(rows)); each query at most once per call.
        ``rows`` None: column j is row j."""
        best, where = torch.topk(scores, min(self.width, scores.shape[1]), dim=1)
        merged = torch.cat([self.scores[queries], best.float()], dim=1)
        merged_rows = torch.cat([self.rows[queries], where if rows is None else rows[where]], dim=1)
        self.scores[queries], pick = torch.topk(merged, self.width, dim=1)
        self.rows[queries] = torch.gather(merged_rows, 1, pick)


def probed_neighbours(
    embeddings: torch.Tensor, query_rows: np.ndarray, k: int, lists: Sequence[np.ndarray | None],
    probes: np.ndarray, *, scan_dtype: torch.dtype = torch.float32, scan: torch.Tensor | None = None,
) -> np.ndarray:
    """Row ids ``(len(query_rows), k)``: each query row's ``k`` nearest rows by inner product
    among the rows of the lists it probes, itself excluded; ``MISSING`` where those hold too few.

    ``embeddings``: ``(N, D)`` rows on the device to search on (any float dtype). ``lists``:
    row ids per list (None: all rows); ``probes``: ``(len(query_rows), P)`` list numbers per
    query, distinct per query. The queries probing a list are scored against it in blocks of
    matrix products. ``scan``: ``embeddings`` already in ``scan_dtype``, to skip converting
    rows per list (worth its memory when every query scans every row).
    """
    device = embeddings.device
    low_precision = scan_dtype != torch.float32
    width = k + 1 + (SHORTLIST_MARGIN if low_precision else 0)
    block = SCORE_BLOCK["cpu" if device.type == "cpu" else "gpu"]
    query_rows = np.asarray(query_rows, dtype=np.int64)
    queries = torch.as_tensor(query_rows, device=device)
    top = RunningTop(len(query_rows), width, device)

    def in_scan_dtype(rows: torch.Tensor | None) -> torch.Tensor:
        if scan is not None:
            return scan if rows is None else scan[rows]
        return (embeddings if rows is None else embeddings[rows]).to(scan_dtype)

    flat_lists = probes.ravel()
    order = np.argsort(flat_lists, kind="stable")
    probing = np.repeat(np.arange(len(query_rows)), probes.shape[1])[order]
    bounds = np.searchsorted(flat_lists[order], np.arange(len(lists) + 1))
    for number, members in enumerate(lists):
        asking = probing[bounds[number] : bounds[number + 1]]
        size = len(embeddings) if members is None else len(members)
        if len(asking) == 0 or size == 0:
            continue
        rows = None if members is None else torch.as_tensor(members, device=device)
        keys = in_scan_dtype(rows)
        step = max(1, block // size)
        for start in range(0, len(asking), step):
            which = torch.as_tensor(asking[start : start + step], device=device)
            top.update(which, in_scan_dtype(queries[which]) @ keys.T, rows)

    found = top.rows
    if low_precision:  # re-score the shortlist in float32, a block of queries at a time
        step = max(1, block // (width * embeddings.shape[1]))
        for start in range(0, len(found), step):
            part = found[start : start + step]
            exact = torch.bmm(embeddings[part.clamp(min=0)].float(),
                              embeddings[queries[start : start + step]].float().unsqueeze(2)).squeeze(2)
            exact[part < 0] = -torch.inf
            found[start : start + step] = torch.gather(part, 1, torch.topk(exact, width, dim=1).indices)
    return drop_self(found[:, : k + 1].cpu().numpy(), query_rows)


def exact_neighbours(embeddings: torch.Tensor, query_rows: np.ndarray, k: int, *,
                     scan_dtype: torch.dtype = torch.float32, scan: torch.Tensor | None = None) -> np.ndarray:
    """Each query row's ``k`` nearest rows among all rows, itself excluded (one list of all rows)."""
    n = len(embeddings)
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} embeddings, got {k}")
    probes = np.zeros((len(query_rows), 1), dtype=np.int64)
    return probed_neighbours(embeddings, query_rows, k, [None], probes, scan_dtype=scan_dtype, scan=scan)


def ivf_lists(index: "faiss.IndexIVF") -> tuple[list[np.ndarray], np.ndarray]:
    """``(row ids per list, centroids (nlist, D) float32)`` of a FAISS IVF index."""
    import faiss

    lists = [faiss.rev_swig_ptr(index.invlists.get_ids(number), index.invlists.list_size(number)).copy()
             if index.invlists.list_size(number) else np.empty(0, dtype=np.int64) for number in range(index.nlist)]
    return lists, index.quantizer.reconstruct_n(0, index.nlist)


def nearest_lists(queries: torch.Tensor, centroids: torch.Tensor, nprobe: int, chunk_rows: int = 65536) -> np.ndarray:
    """``(len(queries), nprobe)``: the lists each query probes (highest centroid inner product)."""
    chunks = [torch.topk(queries[start : start + chunk_rows].float() @ centroids.T, nprobe, dim=1).indices.cpu().numpy()
              for start in range(0, len(queries), chunk_rows)]
    return np.concatenate(chunks) if chunks else np.empty((0, nprobe), dtype=np.int64)


def choose_search(store: "Store", device: torch.device, scan_dtype: torch.dtype = torch.float32, *,
                  ivf: bool = False) -> str:
    """Which search a fit on ``device`` runs over ``store`` (see the module doc); ``ivf`` asks
    for IVF lists on CPU even when the store's index is exact (the fit then builds them, for
    stores of at least ``IVF_MIN_ROWS`` images: below that exact search costs under a second)."""
    if device.type != "cpu":
        return "exact"
    if store.index_info.get("type") != "flat" or (ivf and store.n_images >= IVF_MIN_ROWS):
        return "ivf"
    return "faiss" if scan_dtype == torch.float32 else "exact"


class NeighbourSearch:
    """One search over a store's CLIP embeddings (``clip``, all rows), set up once and then
    queried in blocks of rows. ``index`` (the store's, or lists built for the fit) is needed by
    the "faiss" and "ivf" searches; "ivf" keeps only its lists, so the caller may drop it."""

    def __init__(self, clip: np.ndarray, *, method: str, index: "faiss.Index | None" = None,
                 device: torch.device, scan_dtype: torch.dtype = torch.float32, lists_built: bool = False):
        if method not in SEARCHES:
            raise ValueError(f"unknown search {method!r}; use one of {SEARCHES}")
        self.method, self.clip, self.scan_dtype, self.lists_built = method, clip, scan_dtype, lists_built
        self.index = index if method == "faiss" else None
        self.embeddings = None if method == "faiss" else torch.as_tensor(clip).to(device)
        # Every query scans every row: convert the rows to the scan dtype once.
        self.scan = self.embeddings.to(scan_dtype) if method == "exact" else None
        self.search = {"faiss": "exact (faiss flat index)", "exact": "exact"}.get(method)
        if method == "ivf":
            self.lists, centroids = ivf_lists(index)
            self.centroids = torch.as_tensor(centroids, device=device)
            self.nprobe = int(index.nprobe)
            self.search = f"ivf ({len(self.lists)} lists, nprobe {self.nprobe})"

    def __call__(self, query_rows: np.ndarray, k: int) -> np.ndarray:
        """``(len(query_rows), k)`` neighbours of the given store rows, themselves excluded."""
        if self.method == "faiss":
            return nearest_neighbours(self.index, self.clip[query_rows], query_rows, k)
        if self.method == "exact":
            return exact_neighbours(self.embeddings, query_rows, k, scan_dtype=self.scan_dtype, scan=self.scan)
        queries = self.embeddings[torch.as_tensor(np.asarray(query_rows), device=self.embeddings.device)]
        probes = nearest_lists(queries, self.centroids, self.nprobe)
        return probed_neighbours(self.embeddings, query_rows, k, self.lists, probes, scan_dtype=self.scan_dtype)

    def describe(self) -> dict:
        """``{"search", "precision"[, "lists"]}`` for run configs and a stored graph's record."""
        low_precision = self.method != "faiss" and self.scan_dtype != torch.float32
        record = {"search": self.search, "precision": "bf16 scan, fp32 re-scoring" if low_precision else "fp32"}
        return {**record, "lists": "built by the fit"} if self.lists_built else record


def open_search(store: "Store", method: str, *, device: torch.device, scan_dtype: torch.dtype = torch.float32,
                seed: int = 0) -> tuple[NeighbourSearch, np.ndarray]:
    """``(search, clip)``: read what ``method`` needs from ``store``, and its CLIP embeddings.

    The index is read first: deserialising it briefly holds two copies (for 1.28M images,
    2 x 2.6 GB), better before the CLIP embeddings are in memory than after. For "ivf" on a
    store whose index is exact, the lists are built here (``build_index``, seeded).
    """
    build_lists = method == "ivf" and store.index_info.get("type") == "flat"
    index = store.index() if method in ("faiss", "ivf") and not build_lists else None
    clip = store.read("clip")
    if build_lists:
        index, _ = build_index(clip, exact_max=0, seed=seed)
    search = NeighbourSearch(clip, method=method, index=index, device=device, scan_dtype=scan_dtype,
                             lists_built=build_lists)
    return search, clip


def graph_unused(graph: dict | None, n_neighbours: int, method: str) -> str | None:
    """Why a stored graph (its record, see ``Store.graph_info``) cannot stand in for ``method``,
    None when it can (or there is none): it must hold enough neighbours and be at least as exact
    (an IVF graph only replaces an IVF search)."""
    if graph is None:
        return None
    if graph["k"] < n_neighbours:
        return (f"the store's graph holds {graph['k']} neighbours per image, this fit uses {n_neighbours} "
                f"(zsfs neighbours --k {n_neighbours} stores enough)")
    if not str(graph.get("search", "")).startswith("exact") and method != "ivf":
        return f"the store's graph is approximate ({graph.get('search')}), this fit searches exactly"
    return None


def neighbour_graph(search: NeighbourSearch, n_rows: int, k: int, *,
                    on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """``(n_rows, k)`` row ids (``schema.graph_dtype``): the ``k`` neighbours of every store row, in blocks of
    a tenth of the rows (:data:`GRAPH_STEPS`; at most ``GRAPH_BLOCK``); ``on_rows(n)`` is called after each
    block (progress)."""
    graph = np.empty((n_rows, k), dtype=schema.graph_dtype(n_rows))
    block = min(GRAPH_BLOCK, max(1, -(-n_rows // GRAPH_STEPS)))
    for start in range(0, n_rows, block):
        rows = np.arange(start, min(n_rows, start + block))
        graph[start : start + len(rows)] = search(rows, k)
        if on_rows is not None:
            on_rows(len(rows))
    return graph
