"""The run folder: its file names, writing it (complete or absent) and reading it back.

A run folder is what ``zsfs fit`` leaves behind and what ``zsfs predict`` and ``zsfs report``
read; this module is the only one that knows its layout::

    RUN_DIR/predictions.parquet  one row per image of the store
    RUN_DIR/classifier.pt        the linear head + OOD thresholds (zsfs.fit.classifier)
    RUN_DIR/config.json          parameters, classes, cycles, timings, provenance
    RUN_DIR/metrics.json         accuracy figures, only when the store has labels
    RUN_DIR/report.html          written later by ``zsfs report`` / ``zsfs fit --report``
"""

from __future__ import annotations

import copy
import json
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsfs import __version__
from zsfs.errors import (ParameterError, ZsfsError, check_path, checked_arguments, literal, refuse_unknown_parameters,
                         shown_value)
from zsfs.evaluate import LabelCodes, fit_metrics
from zsfs.names import unescaped_name, utf8_texts
from zsfs.outputs import new_folder, read_parquet, write_json, write_table, writer_of
from zsfs.run_summary import classes_not_predicted
from zsfs.writable import check_writable

if TYPE_CHECKING:
    from collections.abc import Sequence

    import polars as pl

    from zsfs.fit.classifier import Classifier
    from zsfs.fit.config import FitConfig
    from zsfs.fit.run import FitResult
    from zsfs.store import Store

PREDICTIONS = "predictions.parquet"
CLASSIFIER = "classifier.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
REPORT = "report.html"


def refuse_run_file(path: Path) -> None:
    """Refuse to write over a fit run's own files (its predictions, config, metrics, classifier):
    the run, and every report and prediction made from it, would then read another table."""
    own = {name.casefold() for name in (PREDICTIONS, CLASSIFIER, CONFIG, METRICS)}  # casefold: macOS, Windows
    if path.name.casefold() in own and (path.parent / CONFIG).is_file() and (path.parent / PREDICTIONS).is_file():
        raise ZsfsError(f"{path} is a file of the fit run in {path.parent}: writing it would replace the run's "
                        "own; choose another file")


PREDICTION_COLUMNS = ("predicted", "confidence", "ood_distance", "ood_paper", "ood_continuous", "ood_distance_flag")
"""What a fitted run says of new images (``Classifier.classify``'s outputs, and the flag of their ``ood_distance``)."""


def new_image_predictions(predicted: np.ndarray, confidence: np.ndarray, ood_distance: np.ndarray, ood_paper: np.ndarray,
                          ood_continuous: np.ndarray, *, distance_threshold: float | None) -> "pl.DataFrame":
    """The :data:`PREDICTION_COLUMNS` as a table (``FittedRun.predict``, ``zsfs predict``): class
    names, null where there is none; NaN scores (an image not read, a run older than its OOD
    reference) null as well, so a table's reader finds every missing value one way;
    ``ood_distance_flag``: ``ood_distance`` above ``distance_threshold`` (null where either is missing)."""
    import polars as pl

    ood_distance = np.asarray(ood_distance)
    flag = np.full(len(ood_distance), None, dtype=object)
    if distance_threshold is not None:
        known = ~np.isnan(ood_distance)
        flag[known] = ood_distance[known] > distance_threshold
    # Set to null as the Series is made, not by fill_nan: that runs on polars' thread pool, which a
    # process forked after the pool started (multiprocessing's fork) waits on for ever.
    # the flag last: the columns of runs before it keep their places (upgrade test)
    scores = {name: pl.Series(name, np.asarray(values), nan_to_null=True) for name, values in (
        ("confidence", confidence), ("ood_distance", ood_distance), ("ood_paper", ood_paper),
        ("ood_continuous", ood_continuous))}
    scores["ood_distance_flag"] = pl.Series("ood_distance_flag", flag.tolist(), dtype=pl.Boolean)
    return pl.DataFrame({"predicted": pl.Series(np.asarray(predicted, dtype=object).tolist(), dtype=pl.String),
                         **scores})


# --- writing -------------------------------------------------------------------------------------


def _checked_fit(result: "FitResult", store: "Store", config: "FitConfig | None") -> "FitConfig":
    """The configuration ``result`` was fitted with, or a ParameterError where ``store`` is not the
    store it read or ``config`` not that configuration: the run would pair one store's labels with
    another's images, or record parameters the fit did not use (walkthrough: both were saved)."""
    from zsfs.fit.config import FitConfig, check_fit_config
    from zsfs.fit.run import FitResult
    from zsfs.store.reader import check_open_store

    if not isinstance(result, FitResult):
        raise ParameterError(f"{{result}} must be the FitResult of zsfs.fit.fit_store(store, config), not "
                             f"{shown_value(result)}")
    check_open_store("store", store)
    if result.store_build is not None and result.store_build != store.build_key():
        raise ParameterError(f"{{store}} ({literal(store.path)}) is not the store this fit read (another store, or "
                             "another build of it); pass the store given to fit_store")
    if config is None:
        if result.config is None:
            raise ParameterError("{config} is needed: this FitResult does not record the configuration it was "
                                 "fitted with")
        return result.config
    check_fit_config("config", config)
    if result.config is not None and config != result.config:
        fields = [name for name in FitConfig.__dataclass_fields__
                  if getattr(config, name) != getattr(result.config, name)]
        differing = [literal(f"{name} {getattr(config, name)!r} (the fit's: {getattr(result.config, name)!r})")
                     for name in fields]
        raise ParameterError(f"{{config}} is not the configuration this fit ran with: {'; '.join(differing)}; leave "
                             "it out (the result records its own)")
    return config


def run_config(result: "FitResult", store: "Store", config: "FitConfig") -> dict:
    """The content of config.json: how the run was made, enough to redo it."""
    import torch

    return {
        "zsfs_version": __version__,
        "torch_version": torch.__version__,
        "parameters": asdict(config),
        "vocabulary": result.vocabulary,
        "classes": result.classes,
        "prompts_used": result.prompts_used,
        "store": {**store.fingerprint(), "dtype": store.dtype},  # predict rounds new features so (zsfs.predict)
        "clip": store.clip_info,
        "backbone": store.backbone_info,
        "stop_reason": result.stop_reason,
        "absent_classes": result.absent_classes,
        "classes_without_seeds": result.unseeded_classes,
        "classes_not_predicted": classes_not_predicted(
            result.classes, [result.classes[index] for index in np.unique(result.predicted)], result.absent_classes),
        "seeds_per_class": result.seeds_per_class,
        "classes_read_as_one": [list(pair) for pair in result.classes_read_as_one],
        "class_shares": result.class_shares,
        "estimated_shares": result.estimated_shares,
        "neighbour_search": result.neighbour_search,
        "precision": result.precision,
        "cycles": [{"cycle": c.index, "n_candidates": c.n_candidates, "n_kept": c.n_kept,
                    "n_trained": c.n_trained, "epochs": len(c.losses), "first_loss": c.first_loss,
                    "last_loss": c.losses[-1] if c.losses else None} for c in result.cycles],
        "ood": result.classifier.ood.to_dict(),
        "ood_flag_threshold": result.ood_flag_threshold,
        "ood_distance_flag_threshold": result.classifier.ood_distance_threshold,
        "timings_s": result.timings,
        "cpu_timings_s": result.cpu_timings,
    }


def run_predictions(result: "FitResult", store: "Store", labels: "Sequence | None") -> "pl.DataFrame":
    """The content of predictions.parquet: one row per image of the store, in store order
    (``labels``: the store's, read once by the caller)."""
    import polars as pl

    names = pl.Series(result.classes, dtype=pl.String)

    def class_names(codes: np.ndarray) -> pl.Series:  # -1: no class (null)
        return names.gather(pl.Series(np.maximum(codes, 0)).scatter(np.flatnonzero(codes < 0), None))

    columns = {
        "path": pl.Series(utf8_texts(store.paths()), dtype=pl.String),  # UTF-8 text: undecodable bytes as \xNN
        "predicted": class_names(result.predicted),
        "confidence": result.confidence,
        "ood_score": result.ood_score,
        "ood_flag": result.ood_flag,
        "ood_distance": result.ood_distance,
        "ood_paper": result.ood_paper,
        "ood_continuous": result.ood_continuous,
        "is_seed": result.is_seed,
        "pseudo_label": class_names(result.pseudo_label),
        "pseudo_cycle": result.pseudo_cycle,
        "zero_shot_predicted": class_names(result.zero_shot_predicted),
        "zero_shot_confidence": result.zero_shot_confidence,
        "mcm_score": result.mcm_score,
    }
    if labels is not None:
        columns["label"] = pl.Series(labels_as_compared(labels, result.classes), dtype=pl.String)
    return pl.DataFrame({name: pl.Series(name, values) for name, values in columns.items()})


def labels_as_compared(labels: "Sequence", classes: "Sequence[str]") -> list[str]:
    """Each label as the metrics read it: the class it names, spelled as the class list spells it
    (labels and classes are compared in NFC: a folder 'café' copied from macOS is decomposed), or
    else in NFC, as ``zsfs info`` and ``labels_not_classes`` spell it. A reader of the table who
    compares ``label`` with ``predicted`` then counts what metrics.json counts."""
    codes = LabelCodes.of(np.asarray(labels, dtype=object))
    spelled = codes.classes.astype(object)
    named = codes.code(classes)
    spelled[named[named >= 0]] = np.asarray(classes, dtype=object)[named >= 0]
    return spelled[codes.codes].tolist()


# --- reading -------------------------------------------------------------------------------------

_ON_FIRST_USE = object()
"""A run's metrics that :func:`load_run` leaves in metrics.json until they are asked for."""


class FittedRun:
    """A fit run: just made by :func:`zsfs.fit` (``path`` None: :meth:`save` returns the run as saved,
    and this object stays unsaved) or read from its
    folder by :func:`load_run`, where the classifier and predictions are read on first use (a report
    needs no torch, a prediction no parquet).

    ``config`` is config.json, ``metrics`` metrics.json (None without labels), ``predictions`` the
    per-image polars DataFrame, ``classifier`` the linear head with its OOD thresholds.
    """

    def __init__(self, path: Path | None, config: dict, metrics: "dict | None | object" = _ON_FIRST_USE, *,
                 predictions: "pl.DataFrame | None" = None, classifier: "Classifier | None" = None):
        self.path, self._config, self._metrics = path, config, metrics
        self._predictions, self._classifier = predictions, classifier

    @classmethod
    def from_fit(cls, result: "FitResult", store: "Store", config: "FitConfig | None" = None) -> "FittedRun":
        """The run a fit of ``store`` made (``fit_store(store, config)``), not saved yet: everything
        the store is needed for is taken now. ``config``: the fit's own, recorded in ``result``
        (given, it must be the same)."""
        config = _checked_fit(result, store, config)
        labels = store.labels()
        run = cls(None, run_config(result, store, config), fit_metrics(result, labels) if labels is not None else None,
                  predictions=run_predictions(result, store, labels), classifier=result.classifier)
        store.check_unchanged()  # the fit's rows and these paths and labels are of one build of the store
        return run

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}" if self.path is not None else "not saved"
        return f"FittedRun({where}, {len(self._config.get('classes', []))} classes)"

    @property
    def classes(self) -> list[str]:
        """The vocabulary's classes the run was fitted with, absent ones too (config.json's
        ``classes``); the classifier's outputs are ``classifier.classes``, the present ones."""
        return list(self._config["classes"])

    @property
    def config(self) -> dict:
        """config.json, a copy (walkthrough: a caller sorting its classes for a plot edited what `save` writes)."""
        return copy.deepcopy(self._config)

    @property
    def metrics(self) -> dict | None:
        """metrics.json: accuracy and OOD figures against the store's labels (None without labels); a copy."""
        if self._metrics is _ON_FIRST_USE:  # read when asked for: predict needs none, nor a damaged one
            self._metrics = None if self.path is None else _read_json(self.path / METRICS, required=False)
        return copy.deepcopy(self._metrics)

    @property
    def classifier(self) -> "Classifier":
        """The linear head and its OOD reference (``.classify(features)``), read on first use."""
        if self._classifier is None:
            from zsfs.fit.classifier import load_classifier

            self._classifier = load_classifier(self.path / CLASSIFIER)
        return self._classifier

    @property
    def predictions(self) -> "pl.DataFrame":
        """A row per image of the store: its label, confidence and OOD scores (docs/fit.md lists the columns)."""
        if self._predictions is None:
            self._predictions = self.read_predictions()
        return self._predictions

    def read_predictions(self, columns: list[str] | None = None) -> "pl.DataFrame":
        """The predictions (only ``columns`` of them, those that exist, when given: a run written
        before a column was added lacks it)."""
        import polars as pl

        if columns is not None and not (isinstance(columns, (list, tuple))
                                        and all(isinstance(name, str) for name in columns)):
            raise ParameterError(f"{{columns}} must be a list of column names, not {shown_value(columns)}")
        if self._predictions is not None:
            # by the constructor, not select: that runs on polars' pool (see new_image_predictions)
            return self._predictions if columns is None else pl.DataFrame(
                [self._predictions.get_column(name) for name in columns if name in self._predictions.columns])
        path = self.path / PREDICTIONS
        if not path.is_file():
            raise ZsfsError(f"{self.path} has no {PREDICTIONS}; is it a run folder written by `zsfs fit`?")
        try:
            frame = read_parquet(path, columns)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise ZsfsError(f"{path} is unreadable ({error}); rerun `zsfs fit`") from None
        fitted = (self._config.get("store") or {}).get("n_images")
        # one row per store image, in store order (a frame of none of the columns asked for has no rows)
        if isinstance(fitted, int) and frame.width and frame.height != fitted:
            raise ZsfsError(f"{path} holds {frame.height:,} rows, but the run was fitted on {fitted:,} images "
                            f"({CONFIG}): it is another run's file; rerun `zsfs fit`")
        return frame

    def save(self, run_dir: str | Path) -> "FittedRun":
        """Write the run folder ``run_dir`` (complete or absent; never over an existing one); returns
        the same run, read from there (``run = run.save(dir)``: this object keeps ``path`` None)."""
        run_dir = Path(check_path("run_dir", run_dir)).absolute()
        check_writable(run_dir, "run folder")  # as `zsfs fit` checks its --out (new_folder refuses an existing one)
        with new_folder(run_dir) as tmp:
            self.write_files(tmp)
        return self.saved_as(run_dir)

    def write_files(self, folder: Path) -> None:
        """Write the run's files into the empty ``folder`` (a :func:`zsfs.outputs.new_folder`'s):
        what :meth:`save` does, for a caller that reserved the run folder before its fit."""
        write_table(self.predictions, folder / PREDICTIONS)
        self.classifier.save(folder / CLASSIFIER)
        write_json(folder / CONFIG, self._config)
        if self.metrics is not None:
            write_json(folder / METRICS, self.metrics)

    def saved_as(self, run_dir: Path) -> "FittedRun":
        """This run, as saved in ``run_dir``."""
        return FittedRun(Path(run_dir).absolute(), self._config, self.metrics, predictions=self._predictions,
                         classifier=self._classifier)

    @checked_arguments
    def predict(self, features: np.ndarray) -> "pl.DataFrame":
        """Class, confidence and OOD scores of backbone features (rows of the store's backbone)."""
        return new_image_predictions(*self.classifier.classify(features),
                                     distance_threshold=self.classifier.ood_distance_threshold)

    @checked_arguments
    def predict_images(self, images: "Sequence[str | Path] | str | Path" = (), **options) -> "pl.DataFrame":
        """Classify image files and/or folders, and the images of ``lists=[...]`` (options as
        :func:`zsfs.predict.predict_images`)."""
        import inspect

        from zsfs.predict import predict_images

        taken = [name for name in inspect.signature(predict_images).parameters if name not in ("run_dir", "inputs")]
        refuse_unknown_parameters(options, ["images", *taken], "predict_images")
        return predict_images(self, images, **options)


@checked_arguments
def load_run(run_dir: str | Path) -> FittedRun:
    """Open a run folder written by ``zsfs fit`` or ``FittedRun.save``: ``.predict(features)``,
    ``.predict_images(paths)``, ``.predictions``, ``.metrics``, ``.config``; ZsfsError when it is not one."""
    run_dir = Path(check_path("run_dir", run_dir))
    if not run_dir.is_dir():
        writer = None if run_dir.exists() else writer_of(run_dir)
        if writer is not None:  # (it said "does not exist" of a run a fit was saving: a review's report)
            raise ZsfsError(f"{run_dir} is not finished: another zsfs process (pid {writer}) is writing it now; rerun "
                            "this once it is done")
        problem = "is not a folder" if run_dir.exists() else "does not exist"
        raise ZsfsError(f"{run_dir} {problem}; pass a run folder written by `zsfs fit --out RUN_DIR`")
    config = _read_json(run_dir / CONFIG, required=True)
    classes = config.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes)):
        raise ZsfsError(f"{run_dir / CONFIG} lists no class names under \"classes\" (it holds {classes!r:.60}); "
                        "it was changed since the fit: rerun `zsfs fit`")
    return FittedRun(run_dir, config)


def _read_json(path: Path, *, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise ZsfsError(f"{path.parent} has no {path.name}; is it a run folder written by `zsfs fit`?")
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ZsfsError(f"{path} is unreadable ({error}); rerun `zsfs fit`") from None
    if not isinstance(value, dict):
        raise ZsfsError(f"{path} holds a JSON {type(value).__name__}, not the object zsfs fit writes; rerun `zsfs fit`")
    return _names_read_back(value)


def _names_read_back(value: dict) -> dict:
    """A run file's object as it was before :func:`zsfs.outputs.strict_json` escaped its strings
    that are not UTF-8 text (``escaped``): the store's path must reopen the store (the report's
    images). Only string values are read back: zsfs writes no member name that needs escaping."""
    pointers = value.pop("escaped", None)
    for pointer in dict.fromkeys(pointers if isinstance(pointers, list) else ()):
        *parents, last = [token.replace("~1", "/").replace("~0", "~") for token in str(pointer).split("/")[1:]] or [""]
        with suppress(KeyError, IndexError, TypeError, ValueError):  # a pointer edited by hand: left as it is
            holder = value
            for token in parents:
                holder = holder[token if isinstance(holder, dict) else int(token)]
            key = last if isinstance(holder, dict) else int(last)
            if isinstance(holder[key], str):
                holder[key] = unescaped_name(holder[key])
    return value
