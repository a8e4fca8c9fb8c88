"""``zsfs neighbours``: store every image's CLIP neighbours once, so that no fit searches again.

The neighbour search is the one step of a fit that depends only on the images, not on the
vocabulary, k or the ID/OOD split; a store that holds its result (``<stem>.shards/neighbours.h5``;
``index/neighbours`` in the master of a format-1 store; see docs/store.md) gives every later fit
and every ood-bench split the neighbours for free.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from zsfs.devices import check_device
from zsfs.errors import ParameterError, check_at_least, check_choice
from zsfs.fit.neighbours import GRAPH_K, GRAPH_MAX_K, SEARCH_DTYPES, choose_search, neighbour_graph, open_search
from zsfs.store.files import check_store_update
from zsfs.store.locks import store_lock


def add_neighbour_graph(store_path: str | Path, *, k: int | None = None, device: str = "cpu", precision: str = "fp32",
                        on_start: Callable[[int], None] | None = None,
                        on_rows: Callable[[int], None] | None = None) -> dict:
    """Compute the ``k`` nearest CLIP neighbours of every image and write them into the store
    (replacing an older graph). Returns the graph's record (``k``, ``search``, ``precision``).
    ``k=None``: ``GRAPH_K``, or each image's every other image in a store of ``GRAPH_K`` or fewer.

    ``on_start(n_images)`` and ``on_rows(n)`` report progress. The search is the one a fit with
    the same ``device`` and ``precision`` would run.
    """
    from zsfs.store import Store, write_neighbour_graph

    check_at_least("k", k, 1)  # a whole number (None: chosen for the store), before a search that would fail on it
    torch_device = check_device(device)
    check_choice("precision", precision, tuple(SEARCH_DTYPES))
    with ExitStack() as held:  # the store's lock, taken after the checks, held until the graph is written
        with Store(store_path) as store:
            store.check_enough_images(2, "a neighbour graph")
            k = min(GRAPH_K, store.n_images - 1) if k is None else k
            most = min(store.n_images - 1, GRAPH_MAX_K)
            if not 0 < k <= most:
                why = "the most a graph holds" if most == GRAPH_MAX_K else "each image has that many others"
                raise ParameterError(f"{{k}} {k} is not possible for a store of {store.n_images} images: use 1 <= "
                                     f"{{k}} <= {most} ({why})")
            check_store_update(store.path, store.data_dir)  # before the search, not after it
            # Held through the search: another writer of the store is refused now, not this search at its end.
            held.enter_context(store_lock(store.path))
            dtype = SEARCH_DTYPES[precision]
            search, _ = open_search(store, choose_search(store, torch_device, dtype), device=torch_device,
                                    scan_dtype=dtype)
            record = {"k": k, **search.describe()}
            n_images, path, build = store.n_images, store.path, store.build
        if on_start is not None:
            on_start(n_images)
        graph = neighbour_graph(search, n_images, k, on_rows=on_rows)
        del search
        write_neighbour_graph(path, graph, record, build=build)
    return record
