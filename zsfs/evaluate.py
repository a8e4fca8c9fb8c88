"""Evaluation metrics (a fit's against the store's true labels: metrics.json) and the zero-shot OOD
protocol's ID/OOD class splits (pure numpy).

Conventions: OOD metrics treat the *positive* class as OOD and expect higher scores to mean
"more likely positive" (as zsfs' OOD scores do; negate a confidence before passing it).
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zsfs.errors import ParameterError, ZsfsError, check_at_least, literal
from zsfs.names import counted, some_names, spelled_like

if TYPE_CHECKING:
    from zsfs.fit.run import FitResult

__all__ = [
    "OOD_DETECTORS",
    "LabelCodes",
    "accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "most_confused",
    "composed_names",
    "paper_score_counts",
    "auroc",
    "fpr_at_tpr",
    "ood_metrics",
    "fit_metrics",
    "id_ood_splits",
    "mean_std",
]


@dataclass(frozen=True)
class LabelCodes:
    """True labels as integer codes into their sorted class names: metrics then compare integers
    (string comparisons over a million labels take seconds each)."""

    classes: np.ndarray  # (C,) str, sorted
    codes: np.ndarray  # (N,) int64

    @classmethod
    def of(cls, labels: np.ndarray) -> "LabelCodes":
        """Labels compared in Unicode's composed form (NFC): folder names copied from macOS
        spell 'café' decomposed, a typed class list composed, and both are the same name."""
        # Objects, not a str array: numpy's str is as wide as the longest label, so one long
        # label would cost every image its width (a 250-character one: 1 KB each, GBs at 1.28M).
        labels = np.asarray(labels, dtype=object).reshape(-1)
        # The distinct labels by hashing, not np.unique: sorting a million label objects compares them
        # in Python, ~20 comparisons each (0.8 s per call at 1M rows; a report made two such calls).
        distinct = dict.fromkeys(labels)
        classes, merged = np.unique(composed_names(list(distinct)), return_inverse=True)
        code_of = dict(zip(distinct, merged.reshape(-1).tolist()))
        return cls(classes, np.fromiter(map(code_of.__getitem__, labels), np.int64, len(labels)))

    def of_rows(self, rows: np.ndarray) -> "LabelCodes":
        """The labels of ``rows`` (a mask or indices) alone: a label none of them has is dropped."""
        present, codes = np.unique(self.codes[rows], return_inverse=True)
        return LabelCodes(self.classes[present], codes.astype(np.int64).reshape(-1))

    def code(self, names: Sequence[str]) -> np.ndarray:
        """Codes of ``names`` (compared in NFC, as the labels); -1 for a name that is no label."""
        names = composed_names(list(names))
        if not len(self.classes):  # no labels at all
            return np.full(len(names), -1, np.int64)
        position = np.clip(np.searchsorted(self.classes, names), 0, len(self.classes) - 1)
        return np.where(self.classes[position] == names, position, -1)

    def is_any_of(self, names: Sequence[str]) -> np.ndarray:
        """(N,) bool: the image's label is one of ``names``."""
        return self.index_in(names) >= 0

    def counts_not_among(self, names: Sequence[str]) -> dict[str, int]:
        """Each label that is none of ``names``, with its images, most images first (the images a
        fit evaluates as out of distribution; a near-miss class name shows here)."""
        outside = np.ones(len(self.classes), bool)
        code = self.code(names)
        outside[code[code >= 0]] = False
        per_label = np.bincount(self.codes, minlength=len(self.classes))
        order = np.flatnonzero(outside)[np.argsort(-per_label[outside], kind="stable")]
        return {str(self.classes[i]): int(per_label[i]) for i in order}

    def index_in(self, names: Sequence[str]) -> np.ndarray:
        """(N,) position in ``names`` of each image's label; -1 where it is none of them."""
        code = self.code(names)
        position = np.full(len(self.classes) + 1, -1, np.int64)  # the extra slot absorbs code -1
        position[code[code >= 0]] = np.flatnonzero(code >= 0)
        return position[:-1][self.codes]


def composed_names(names: Sequence[str] | np.ndarray) -> np.ndarray:
    """``names`` in Unicode's composed form (NFC), as a numpy str array; one call per distinct name."""
    return np.asarray([unicodedata.normalize("NFC", str(name)) for name in names], dtype=str).reshape(-1)


def accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of positions where ``predicted`` equals ``true`` (labels of any comparable dtype)."""
    true, predicted = _same_length(true, predicted)
    if true.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(true == predicted))


def per_class_accuracy(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) accuracy over the items of each true class; NaN for a class with no items.

    ``true`` and ``predicted`` are class indices (``LabelCodes.index_in`` turns names into them).
    """
    true, predicted = _class_codes(true, predicted, n_classes)
    hits = np.bincount(true, weights=true == predicted, minlength=n_classes)
    totals = np.bincount(true, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class (class indices)."""
    true, predicted = _class_codes(true, predicted, n_classes)
    return np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def most_confused(true: np.ndarray, predicted: np.ndarray, n_classes: int,
                  top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(true, predicted, count)`` of the ``top`` most frequent (true, predicted) pairs of
    different classes, most frequent first (equal counts: the higher class indices first), from
    the pairs that occur: never an n_classes x n_classes matrix (21,841 classes: 3.8 GB a copy)."""
    true, predicted = _class_codes(true, predicted, n_classes)
    pairs, counts = np.unique(true * n_classes + predicted, return_counts=True)
    confused = pairs // n_classes != pairs % n_classes
    pairs, counts = pairs[confused], counts[confused]
    order = np.lexsort((pairs, counts))[::-1][:top]
    return pairs[order] // n_classes, pairs[order] % n_classes, counts[order]


def auroc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """Area under the ROC curve, via the Mann-Whitney U statistic.

    Ties get average ranks, so a tied positive/negative pair counts 1/2 (the exact area under
    the ROC curve with ties drawn as diagonal segments). Raises ``ValueError`` when one class
    is empty or a score is NaN.
    """
    scores, is_positive = _binary_inputs(scores, is_positive)
    n_pos = int(is_positive.sum())
    n_neg = is_positive.size - n_pos
    ranks = _average_ranks(scores)
    u_statistic = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def fpr_at_tpr(scores: np.ndarray, is_positive: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate reaches ``tpr``.

    An item is called positive when its score is >= the threshold; the threshold is the
    ``ceil(tpr * n_pos)``-th highest positive score, so ties at the threshold all count.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    scores, is_positive = _binary_inputs(scores, is_positive)
    positive_scores = np.sort(scores[is_positive])[::-1]
    # The small tolerance keeps e.g. 0.95 * 20 = 19.000000000000004 from asking for 20 positives.
    needed = max(1, math.ceil(tpr * positive_scores.size - 1e-9))
    threshold = positive_scores[needed - 1]
    return float(np.mean(scores[~is_positive] >= threshold))


@dataclass(frozen=True)
class OodDetector:
    """One OOD score of a fit, and the names it goes by: a fit's metrics.json, ood-bench's."""

    column: str  # the FitResult attribute and predictions column (higher = more OOD)
    title: str  # on screen
    fit_metric: str  # a fit's metrics.json key of its AUROC
    bench_name: str  # ood-bench's key of it in each split's "ood"
    bench_prefix: str  # ood-bench's summary keys: f"{bench_prefix}auroc_mean", ...
    baseline: bool = False  # not zsfs' own: the score zsfs' are measured against


OOD_DETECTORS = (
    OodDetector("ood_score", "ood_score", "ood_auroc", "zsfs", ""),
    OodDetector("ood_paper", "paper score", "ood_paper_auroc", "zsfs_paper", "paper_"),
    OodDetector("ood_continuous", "ood_continuous", "ood_continuous_auroc", "zsfs_continuous", "continuous_"),
    OodDetector("mcm_score", "MCM", "mcm_auroc", "mcm", "mcm_", baseline=True),  # negated by the fit: higher = OOD
)
"""The OOD scores every fit writes and every evaluation compares, in the order they are shown."""


def ood_metrics(scores: np.ndarray, is_ood: np.ndarray) -> dict[str, float]:
    """``{"auroc", "fpr95"}`` of an OOD score (higher = more OOD) against the true OOD flags.

    AUROC with OOD as the positive class (the same with ID positive); FPR95 as MCM, ODIN and
    OpenOOD define it: the share of OOD images taken as ID at the threshold that keeps 95 % of the
    ID images (review: it was the share of ID images above the threshold that catches 95 % of the
    OOD ones, a figure no published table gives)."""
    scores, is_ood = np.asarray(scores, np.float64), np.asarray(is_ood, bool)  # negated below: no unsigned wrap
    return {"auroc": auroc(scores, is_ood), "fpr95": fpr_at_tpr(-scores, ~is_ood, 0.95)}


def id_ood_splits(
    classes: Sequence[str],
    id_classes: int | Sequence[str],
    n_splits: int = 5,
    seed: int = 0,
    *,
    always_ood: int = 0,
) -> list[list[str]]:
    """ID class lists for the zero-shot OOD protocol; every other class is OOD.

    ``id_classes`` is either a count N (``n_splits`` distinct random draws of N classes,
    reproducible from ``seed``; every combination once, in order, when there are fewer) or an
    explicit list (one split). Each returned list keeps the order of ``classes``.
    ``always_ood``: how many more label classes are OOD in every split (the vocabulary does not
    name them), so that all of ``classes`` may be ID.
    """
    classes = list(dict.fromkeys(str(name) for name in classes))
    if len(classes) + always_ood < 2:
        raise ZsfsError(f"the OOD protocol needs at least 2 classes, the labels have {len(classes) + always_ood}")

    if not isinstance(id_classes, (int, np.integer)):
        wanted = list(dict.fromkeys(str(name) for name in id_classes))
        unknown = sorted(set(wanted) - set(classes))
        if unknown:
            hint = spelled_like(classes, "the label")
            named = [f"{name!r}{hint(name)}" for name in unknown]
            raise ParameterError(literal(f"{counted(len(unknown), 'ID class', 'ID classes')} "
                                         f"{'is' if len(unknown) == 1 else 'are'} not among the store's labels: "
                                         f"{some_names(named, 10, with_count=False)}. Use the exact label names "
                                         "(`zsfs info` lists them)."))
        _check_id_count(len(wanted), len(classes), always_ood)
        chosen = set(wanted)
        return [[name for name in classes if name in chosen]]

    n_id = int(id_classes)
    _check_id_count(n_id, len(classes), always_ood)
    check_at_least("n_splits", n_splits, 1)
    if math.comb(len(classes), n_id) < n_splits:  # a repeated split would only shrink the spread
        return [list(split) for split in itertools.combinations(classes, n_id)]
    rng = np.random.default_rng(seed)
    splits: list[list[str]] = []
    seen: set[tuple[int, ...]] = set()
    while len(splits) < n_splits:
        picked = tuple(np.sort(rng.choice(len(classes), size=n_id, replace=False)).tolist())
        if picked not in seen:
            seen.add(picked)
            splits.append([classes[i] for i in picked])
    return splits


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0, as OOD papers report over splits)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std of no values is undefined")
    return float(array.mean()), float(array.std())


def _check_id_count(n_id: int, n_classes: int, always_ood: int) -> None:
    most = n_classes if always_ood else n_classes - 1
    if not 1 <= n_id <= most:
        named = f", {n_classes} of them in the vocabulary," if always_ood else ""
        raise ParameterError(
            f"{{id_classes}}: the number of ID classes must be between 1 and {most} (the store's labels "
            f"have {n_classes + always_ood} classes{literal(named)} and at least one must stay OOD), got {n_id}"
        )


def _same_length(true: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, predicted = np.asarray(true), np.asarray(predicted)
    if true.shape != predicted.shape or true.ndim != 1:
        raise ValueError(f"expected two 1-d arrays of equal length, got {true.shape} and {predicted.shape}")
    return true, predicted


def _class_codes(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``_same_length`` arrays of class indices in [0, n_classes): a -1 ("no class", as
    ``LabelCodes.index_in`` gives it) would count in another class's cell."""
    true, predicted = _same_length(true, predicted)
    for name, codes in (("true", true), ("predicted", predicted)):
        if codes.size and not (np.issubdtype(codes.dtype, np.integer) and 0 <= codes.min() and codes.max() < n_classes):
            raise ValueError(f"{name} must hold class indices in [0, {n_classes}); filter out other codes first")
    # int64: sums such as ``true * n_classes + predicted`` overflow a narrower type (uint8 codes of 17 classes)
    return true.astype(np.int64, copy=False), predicted.astype(np.int64, copy=False)


def _binary_inputs(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    if scores.shape != is_positive.shape or scores.ndim != 1:
        raise ValueError(f"expected scores and flags as 1-d arrays of equal length, "
                         f"got {scores.shape} and {is_positive.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_pos = int(is_positive.sum())
    if n_pos == 0 or n_pos == is_positive.size:
        raise ValueError("need at least one positive and one negative item")
    return scores, is_positive


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    _, group_of_item, group_sizes = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(group_sizes)
    group_rank = last_rank - (group_sizes - 1) / 2.0
    return group_rank[group_of_item.reshape(-1)]


def paper_score_counts(ood_paper: np.ndarray) -> list[int]:
    """How many images have each level of the paper's OOD score: 0, 1/3, 2/3, 1 (a missing score counts as 0)."""
    levels = np.rint(np.nan_to_num(np.asarray(ood_paper, dtype=np.float64)) * 3).astype(np.int64)
    return np.bincount(levels, minlength=4)[:4].tolist()


def fit_metrics(result: "FitResult", labels: np.ndarray) -> dict:
    """Accuracy figures against true labels (images whose label is a vocabulary class).

    Images whose true label is outside the vocabulary are the OOD ones: when there are some,
    the AUROC of each of ``OOD_DETECTORS`` (``ood_score`` first) is added.
    """
    codes = LabelCodes.of(labels)
    truth = codes.index_in(result.classes)  # each image's class index; -1: its label is no class
    is_id = truth >= 0
    metrics: dict = {"n_images": int(len(truth)), "n_evaluated": int(is_id.sum())}
    if not is_id.all():  # their images are the OOD ones; a near-miss name ('bird ' for 'bird') shows here
        metrics["labels_not_classes"] = codes.counts_not_among(result.classes)
    if not is_id.any():  # no label names a class: nothing here can be measured (not "precision 0")
        return metrics
    metrics["accuracy"] = accuracy(truth[is_id], result.predicted[is_id])
    metrics["zero_shot_accuracy"] = accuracy(truth[is_id], result.zero_shot_predicted[is_id])
    per_class = per_class_accuracy(truth[is_id], result.predicted[is_id], len(result.classes))
    metrics["per_class_accuracy"] = {name: (None if np.isnan(value) else float(value))
                                     for name, value in zip(result.classes, per_class)}
    metrics["seed_precision"] = [
        {"cycle": c.index, "n_kept": c.n_kept,
         "precision": float(np.mean(truth[c.rows] == c.labels)) if c.n_kept else None}
        for c in result.cycles
    ]
    if result.absent_classes:
        truly_absent = [name for name, code in zip(result.absent_classes, codes.code(result.absent_classes))
                        if code < 0]
        metrics["absent_classes"] = {"reported": list(result.absent_classes), "truly_absent": truly_absent,
                                     "precision": len(truly_absent) / len(result.absent_classes)}
    if not is_id.all():
        for detector in OOD_DETECTORS:
            metrics[detector.fit_metric] = auroc(getattr(result, detector.column), ~is_id)
    return metrics
