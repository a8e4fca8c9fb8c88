"""The feature store: sharded HDF5 files written once by ``zsfs extract`` / ``zsfs import``
and read many times by ``zsfs fit``. Layout: :mod:`zsfs.store.schema` and ``docs/store.md``.

The public names are loaded on first use, so that importing ``zsfs.store.schema`` (constants
only, used by CLI option defaults) does not pull in h5py and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsfs.store.arrays import write_store
    from zsfs.store.reader import Store
    from zsfs.store.extras import Vocabulary, write_neighbour_graph, write_vocabulary
    from zsfs.store.writer import ShardData, StoreWriter

_EXPORTS = {
    "Store": "zsfs.store.reader",
    "Vocabulary": "zsfs.store.extras",
    "StoreWriter": "zsfs.store.writer",
    "ShardData": "zsfs.store.writer",
    "write_vocabulary": "zsfs.store.extras",
    "write_neighbour_graph": "zsfs.store.extras",
    "write_store": "zsfs.store.arrays",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zsfs.store' has no attribute {name!r}")
