"""The feature store: sharded HDF5 files written once by ``zsfs extract`` / ``zsfs import``
and read many times by ``zsfs fit``. Layout: :mod:`zsfs.store.schema` and ``docs/store.md``."""

from zsfs.store.arrays import write_store
from zsfs.store.reader import Store, Vocabulary
from zsfs.store.writer import ShardData, StoreWriter, write_vocabulary

__all__ = ["Store", "Vocabulary", "StoreWriter", "ShardData", "write_store", "write_vocabulary"]
