"""The zero-shot OOD benchmark: ID/OOD class splits of a labelled store, one fit per split.

For each split only the ID class names are given to the fit; the images whose true label is
not ID are the OOD positives. Each split scores four OOD detectors on the same images:
zsfs' default ``ood_score``, its paper score (flags / 3), its continuous score, and the MCM
baseline (max softmax of cosine / 1 over the ID class texts, same prompts, same store; negated
so higher = OOD), which the fit computes in the same pass as its zero-shot scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from zsfs import __version__
from zsfs.errors import ParameterError, ZsfsError, check_at_least, checked_arguments, literal, shown_value
from zsfs.names import counted, near_spellings, some_names, spelled_like
from zsfs.evaluate import OOD_DETECTORS, LabelCodes, accuracy, composed_names, id_ood_splits, mean_std, ood_metrics

if TYPE_CHECKING:
    from zsfs.fit.config import FitConfig
    from zsfs.fit.run import FitResult
    from zsfs.store import Store
    from zsfs.store.extras import Vocabulary


METRICS_FILE = "metrics.json"
FPR95_DEFINITION = "FPR95: share of OOD images taken as ID at 95% TPR on ID images"
"""In a benchmark's ``protocol`` since 2026-12-06 (before, FPR95 was the share of ID images above the
threshold catching 95 % of the OOD ones): figures without it are not comparable with today's."""


@dataclass
class SplitResult:
    """One ID/OOD split: the ID classes, image counts, each detector's metrics, ID accuracy."""

    id_classes: list[str]
    n_id_images: int
    n_ood_images: int
    ood: dict[str, dict[str, float]]  # detector -> {"auroc", "fpr95"}
    id_accuracy: float
    zero_shot_id_accuracy: float
    fit_seconds: float = 0.0
    neighbour_search: dict = field(default_factory=dict)  # where the fit's neighbours came from


def score_split(result: "FitResult", labels: LabelCodes, id_classes: Sequence[str]) -> SplitResult:
    """Metrics of one fit (restricted to ``id_classes``) against the true labels."""
    is_id = labels.is_any_of(id_classes)
    is_ood = ~is_id
    if is_ood.all() or not is_ood.any():
        raise ZsfsError("a split needs both ID and OOD images; the store's labels give only one kind")
    truth = labels.index_in(result.classes)[is_id]  # predicted -1 (no class) never matches
    return SplitResult(
        id_classes=list(id_classes),
        n_id_images=int(is_id.sum()),
        n_ood_images=int(is_ood.sum()),
        ood={detector.bench_name: ood_metrics(np.asarray(getattr(result, detector.column), np.float64), is_ood)
             for detector in OOD_DETECTORS},
        id_accuracy=accuracy(truth, result.predicted[is_id]),
        zero_shot_id_accuracy=accuracy(truth, result.zero_shot_predicted[is_id]),
        fit_seconds=float(sum(result.timings.values())),
        neighbour_search=dict(result.neighbour_search),
    )


def _check_same_vocabulary(store: "Store", read_first: "Vocabulary", n_done: int) -> None:
    """A ZsfsError when the benchmark's vocabulary was replaced since it started (``zsfs text
    --overwrite``): its splits would mix two vocabularies (failure test: "has no class 'cat'")."""
    now = store.vocabulary(read_first.name)
    if now.classes != read_first.classes or not np.array_equal(now.ensemble, read_first.ensemble) \
            or not np.array_equal(now.single, read_first.single):
        raise ZsfsError(f"vocabulary {read_first.name!r} of {store.path} was replaced while the benchmark ran (after "
                        f"{counted(n_done, 'split')}); its splits would mix two vocabularies: rerun the benchmark")


def summarize(splits: Sequence[SplitResult]) -> dict[str, float]:
    """Mean and std over splits: ``auroc_mean``, ``mcm_fpr95_std``, ``id_accuracy_mean``, ..."""
    summary: dict[str, float] = {}
    for detector in OOD_DETECTORS:  # "auroc_mean", "continuous_auroc_mean", "mcm_fpr95_std", ...
        for metric in ("auroc", "fpr95"):
            mean, std = mean_std([split.ood[detector.bench_name][metric] for split in splits])
            key = f"{detector.bench_prefix}{metric}"
            summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
    for key in ("id_accuracy", "zero_shot_id_accuracy"):
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean_std([getattr(split, key) for split in splits])
    return summary


def _vocabulary_naming(store: "Store", labels: list[str], asked: str) -> str:
    """``"vocabulary 'x' names all 10 of them: choose it with --vocab x"`` for the store's other
    vocabulary naming most of ``labels`` (NFC, as labels are compared); "" when none names one."""
    named = {}
    for name in store.vocabulary_names():
        if name != asked:
            with suppress(ZsfsError):  # a damaged or unwritten vocabulary: the others may do
                named[name] = len(set(labels) & set(composed_names(store.vocabulary(name).classes).tolist()))
    best = max(named, key=named.__getitem__, default=None)
    if best is None or not named[best]:
        return ""
    share = "all" if named[best] == len(labels) else f"{named[best]}"
    return f"vocabulary {best!r} names {share} of them: choose it with --vocab {best}"


@checked_arguments
def ood_bench(
    store: "Store",
    id_classes: int | Sequence[str],
    config: "FitConfig",
    *,
    n_splits: int = 5,
    vocabulary: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_split: Callable[[int, SplitResult], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict:
    """Run the protocol on an open ``Store``; returns the metrics.json content.

    ``id_classes``: a count N (``n_splits`` random splits, drawn from ``config.seed`` as the fits are; fewer
    when fewer distinct ones exist) or the ID class names (one split). ID classes are drawn
    among the labels that the vocabulary names; labels it does not name can never be ID, so
    they are always OOD (listed as ``always_ood_classes``). ``config`` is the ``FitConfig``
    used for every split. ``on_start(n_splits)``, ``on_split(number, result)`` and ``on_phase(name)``
    (each phase of each split's fit, as ``fit_store`` names it) report progress.
    """
    from zsfs.fit.config import check_fit_config
    from zsfs.fit.run import fit_store, resolve_vocabulary
    from zsfs.store.reader import check_open_store

    check_open_store("store", store)
    check_fit_config("config", config)
    named = isinstance(id_classes, (list, tuple, np.ndarray))
    if isinstance(id_classes, (bool, np.bool_)) or not (named or isinstance(id_classes, (int, np.integer))) \
            or (named and not all(isinstance(name, str) for name in id_classes)):
        raise ParameterError(f"{{id_classes}} must be a number of ID classes or a list of class names, not "
                             f"{shown_value(id_classes)}")
    check_at_least("n_splits", n_splits, 1)
    store.check_enough_images(2, "the OOD benchmark")
    labels = store.labels()
    if labels is None:
        raise ZsfsError(f"{store.path.name} has no labels: the OOD benchmark needs the true class of every "
                        f"image (extract a folder with one subfolder per class, or import with labels)")
    labels = LabelCodes.of(labels)
    vocab_name = resolve_vocabulary(store, vocabulary)
    read_first = store.vocabulary(vocab_name)
    vocabulary_classes = read_first.classes
    # labels are compared in NFC (LabelCodes); splits name classes as the vocabulary spells them
    spelled = dict(zip(composed_names(vocabulary_classes).tolist(), vocabulary_classes))
    label_classes = labels.classes.tolist()
    eligible = [spelled[name] for name in label_classes if name in spelled]
    always_ood = [name for name in label_classes if name not in spelled]
    if not eligible:
        near = near_spellings(label_classes, vocabulary_classes, "its class")  # compared exactly: say which differ
        other = _vocabulary_naming(store, label_classes, vocab_name)
        # an option that does not fit the store: exit code 2, as the README says (walkthrough: 1)
        raise ParameterError(literal(
            f"none of the store's {len(label_classes)} label classes is in vocabulary {vocab_name!r}"
            f"{f' (labels are compared exactly: {some_names(near, 3, with_count=False)})' if near else ''}; "
            + (other or f"add a vocabulary of the label names with {store.how_to_add_a_vocabulary()}")))
    if not isinstance(id_classes, (int, np.integer)):
        given = dict.fromkeys(zip(map(str, id_classes), composed_names(list(id_classes)).tolist()))
        unnamed = [name for name, composed in given if composed in always_ood]
        if unnamed:
            hint = spelled_like(vocabulary_classes, f"{vocab_name!r}'s class")
            raise ParameterError(literal(
                f"{counted(len(unnamed), 'ID class', 'ID classes')} {'is a label' if len(unnamed) == 1 else 'are labels'} "
                f"that vocabulary {vocab_name!r} does not name: "
                f"{', '.join(f'{name!r}{hint(name)}' for name in unnamed[:10])}; an ID class needs its class name's text "
                f"embedding: add a vocabulary that names it with {store.how_to_add_a_vocabulary()}"))
        id_classes = [spelled.get(composed, name) for name, composed in given]
    seed = config.seed
    splits = id_ood_splits(eligible, id_classes, n_splits=n_splits, seed=seed, always_ood=len(always_ood))
    if on_start is not None:
        on_start(len(splits))

    results = []
    for number, split in enumerate(splits):
        _check_same_vocabulary(store, read_first, number)
        fitted = fit_store(store, config, vocabulary=vocab_name, classes=split, on_phase=on_phase)
        results.append(score_split(fitted, labels, split))
        if on_split is not None:
            on_split(number, results[-1])

    return {
        "protocol": "zero-shot OOD: only the ID class names are given to the fit; OOD = images whose "
                    f"true label is not ID; AUROC with OOD as the positive class, {FPR95_DEFINITION}",
        "id_classes": int(id_classes) if isinstance(id_classes, (int, np.integer)) else list(splits[0]),
        "n_splits": len(splits),
        "seed": seed,
        "vocabulary": vocab_name,
        "n_images": int(len(labels.codes)),
        "n_label_classes": len(label_classes),
        "always_ood_classes": always_ood,
        **summarize(results),
        "splits": [asdict(result) for result in results],
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "store": store.fingerprint(),
        "zsfs_version": __version__,
    }
