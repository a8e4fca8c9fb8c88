"""Stage 2: label and OOD-score every image of a store from class names (the paper's steps A-C, docs/fit.md).

``fit_store(store, FitConfig(...))`` runs the whole method; ``zsfs.FittedRun.from_fit(result,
store).save(run_dir)`` writes a run folder; ``load_classifier`` reloads its classifier for inference on new images.
"""

from zsfs import api
from zsfs.fit.classifier import Classifier, load_classifier
from zsfs.fit.config import FitConfig
from zsfs.fit.run import FitResult, fit_store

api.callable_module(__name__, api.fit, api.spelled_out(api.fit, FitConfig))  # zsfs.fit(store, k=16): the front door (zsfs/api.py)

__all__ = ["Classifier", "FitConfig", "FitResult", "fit_store", "load_classifier"]
