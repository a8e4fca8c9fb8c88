"""zsfs: zero-shot feature store.

Two stages: ``zsfs extract`` embeds an image collection once into a sharded HDF5 store,
``zsfs fit`` labels and OOD-scores every image from that store alone, many times over.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zsfs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
