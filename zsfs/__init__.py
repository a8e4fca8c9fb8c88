"""zsfs: zero-shot feature store.

Two stages: ``zsfs extract`` embeds an image collection once into a sharded HDF5 store,
``zsfs fit`` labels and OOD-scores every image from that store alone, many times over.

From Python (see docs/python.md)::

    import zsfs
    zsfs.extract("photos/", "photos.h5")
    run = zsfs.fit(zsfs.Store("photos.h5"), k=16)
    run.save("runs/photos-k16")
    zsfs.load_run("runs/photos-k16").predict_images(["new.jpg"])

Names are imported on first use, so that ``import zsfs`` (and ``zsfs --help``) stay fast.
"""

from importlib import import_module

# The one place the version is written (pyproject.toml reads it): stores and runs record the code
# that made them, also when a source tree runs through PYTHONPATH beside another installed copy.
__version__ = "0.2.0"

# From the first import on (not when a stage first runs): its fork hooks note the thread pools a
# multiprocessing child would lose, also those the caller's own polars work started.
import_module("zsfs.devices")

_LAZY = {
    "extract": ("zsfs.extract", None),  # a callable module: zsfs.extract(...) runs the stage
    "fit": ("zsfs.fit", None),  # likewise: zsfs.fit(store, k=16)
    "Store": ("zsfs.store", "Store"),
    "FitConfig": ("zsfs.fit.config", "FitConfig"),
    "FittedRun": ("zsfs.runs", "FittedRun"),
    "load_run": ("zsfs.runs", "load_run"),
    "report": ("zsfs.report", None),  # likewise: zsfs.report(run_dir) writes report.html
    "ZsfsError": ("zsfs.errors", "ZsfsError"),
    "ParameterError": ("zsfs.errors", "ParameterError"),
    "StoreError": ("zsfs.errors", "StoreError"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'zsfs' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = import_module(module) if attribute is None else getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
