"""Metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zsfs.errors import ZsfsError
from zsfs.evaluate import (
    LabelCodes,
    accuracy,
    auroc,
    confusion_matrix,
    fpr_at_tpr,
    id_ood_splits,
    mean_std,
    ood_metrics,
    paper_score_counts,
    per_class_accuracy,
)


def brute_force_auroc(scores, is_positive):
    """P(score_pos > score_neg) + 1/2 P(tie), over every positive/negative pair."""
    scores, is_positive = np.asarray(scores, float), np.asarray(is_positive, bool)
    pos, neg = scores[is_positive], scores[~is_positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_label_codes_match_string_comparisons():
    labels = LabelCodes.of(np.array(["dog", "cat", "dog", "emu"], dtype=object))
    assert labels.classes.tolist() == ["cat", "dog", "emu"] and labels.codes.tolist() == [1, 0, 1, 2]
    assert labels.code(["emu", "yak", "cat"]).tolist() == [2, -1, 0]
    assert labels.is_any_of(["dog", "yak"]).tolist() == [True, False, True, False]
    assert not labels.is_any_of(["yak"]).any()
    assert labels.index_in(["yak", "dog", "cat"]).tolist() == [1, 2, 1, -1]
    assert labels.index_in([]).tolist() == [-1, -1, -1, -1]


def test_accuracy_hand_computed():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    assert accuracy(np.array(["cat", "dog"]), np.array(["dog", "dog"])) == 0.5


def test_confusion_matrix_rows_are_true_classes():
    true, predicted = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 1, 2, 1, 1])
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(true, predicted, 4), expected)
    np.testing.assert_allclose(np.diag(expected)[:3] / expected.sum(axis=1)[:3], per_class_accuracy(true, predicted, 4)[:3])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_confusion_matrix_of_narrow_integer_codes_does_not_overflow(dtype):
    """Review: true * n_classes + predicted was summed in the codes' own type: uint8 codes of 17
    classes put (16, 16) in cell (1, 15); int16 codes of 200 classes raised."""
    n_classes = 17 if dtype == np.uint8 else 200
    true = np.array([n_classes - 1, 0, n_classes - 1], dtype=dtype)
    predicted = np.array([n_classes - 1, 1, 0], dtype=dtype)
    matrix = confusion_matrix(true, predicted, n_classes)
    assert matrix[n_classes - 1, n_classes - 1] == 1 and matrix[0, 1] == 1 and matrix[n_classes - 1, 0] == 1
    assert matrix.sum() == 3


def test_label_codes_memory_does_not_grow_with_the_longest_label():
    """Review: the labels went through a numpy str array, as wide as the longest label: one label of
    250 characters made 200,000 labels take 200 MB (3.6 GB at ImageNet-train's 1.28M)."""
    import tracemalloc

    labels = np.array(["cat", "dog"] * 100_000 + ["a" * 250], dtype=object)
    tracemalloc.start()
    try:
        codes = LabelCodes.of(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes.classes.tolist() == ["a" * 250, "cat", "dog"]
    assert codes.codes[:4].tolist() == [1, 2, 1, 2] and codes.codes[-1] == 0 and codes.codes.dtype == np.int64
    assert peak < 30_000_000, f"{peak:,} bytes"


def test_paper_score_counts_each_level_and_a_missing_score_as_0():
    scores = np.array([0, 1 / 3, 1 / 3, 2 / 3, 1, 1, 1, np.nan], dtype=np.float32)  # float32 thirds
    assert paper_score_counts(scores) == [2, 2, 1, 3]
    assert paper_score_counts(np.array([], dtype=np.float32)) == [0, 0, 0, 0]
    assert paper_score_counts(np.array([0.0, 0.333333, 0.666667, 1.0])) == [1, 1, 1, 1]  # as a CSV rounds them


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1]), np.array([0]))


def test_per_class_accuracy_hand_computed_and_empty_class_is_nan():
    true = np.array([0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 2, 1, 1])
    result = per_class_accuracy(true, predicted, 4)
    np.testing.assert_allclose(result[:3], [1.0, 0.5, 1 / 3])
    assert result.shape == (4,) and math.isnan(result[3])
    with pytest.raises(ValueError):
        per_class_accuracy(true, predicted[:-1], 4)


@pytest.mark.parametrize("metric", [per_class_accuracy, confusion_matrix])
def test_class_metrics_refuse_codes_outside_the_classes(metric):
    """Review: a -1 ("no class", as LabelCodes.index_in gives it) was counted in another class's cell:
    confusion_matrix([1, 1], [1, -1], 3) put it at true 0 / predicted 2."""
    for true, predicted in (([1, 1], [1, -1]), ([1, 3], [1, 1]), ([0.0, 1.0], [0.0, 1.0])):
        with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
            metric(np.array(true), np.array(predicted), 3)
    assert metric(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3).shape[0] == 3


def test_auroc_hand_computed():
    # Positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 1+1+0+1 of 4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.0, 1.0], [False, True]) == 1.0
    assert auroc([1.0, 0.0], [False, True]) == 0.0


def test_auroc_ties_count_half():
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # positive 0.5 ties one negative (1/2) and beats the other (1) -> 0.75
    assert auroc([0.5, 0.2, 0.5], [0, 0, 1]) == 0.75


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=300) / 3.0  # the paper score's four values: heavy ties
    is_positive = rng.random(300) < 0.3
    assert auroc(scores, is_positive) == pytest.approx(brute_force_auroc(scores, is_positive), abs=1e-12)
    continuous = rng.normal(size=300) + is_positive
    assert auroc(continuous, is_positive) == pytest.approx(brute_force_auroc(continuous, is_positive), abs=1e-12)


def test_auroc_rejects_one_class_and_nan():
    for one_kind in ([True, True], [False, False]):  # review (mutation): only all-positive was tried
        with pytest.raises(ValueError, match="positive and one negative"):
            auroc([0.1, 0.2], one_kind)
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [True, False])


def test_fpr_at_tpr_hand_computed():
    # 20 positives with scores 1..20; negatives 0.5, 1.5, 2.5, 10.5. 95 % TPR needs 19 positives
    # -> threshold 2 -> negatives >= 2: 2.5 and 10.5 -> FPR 2/4.
    positives = np.arange(1, 21, dtype=float)
    negatives = np.array([0.5, 1.5, 2.5, 10.5])
    scores = np.concatenate([positives, negatives])
    flags = np.r_[np.ones(20, bool), np.zeros(4, bool)]
    assert fpr_at_tpr(scores, flags) == 0.5
    assert fpr_at_tpr(scores, flags, tpr=1.0) == 0.75  # threshold 1 -> 1.5, 2.5, 10.5
    assert fpr_at_tpr(scores, flags, tpr=0.5) == 0.0  # 10th highest positive = 11 > 10.5
    assert fpr_at_tpr(scores, flags, tpr=0.55) == 0.25  # 11th highest = 10 -> 10.5 counts
    # 0.56 x 25 is 14.000000000000002 in floating point: 14 positives are 56 %, not 15
    assert fpr_at_tpr(np.r_[np.arange(1, 26.0), 11.5], np.r_[np.ones(25, bool), False], tpr=0.56) == 0.0


def test_fpr_at_tpr_ties_at_threshold_count():
    # Every positive and negative scores 1/3: the only reachable operating point is (1, 1).
    assert fpr_at_tpr([1 / 3] * 4, [1, 1, 0, 0]) == 1.0
    assert fpr_at_tpr([1.0, 1.0, 0.0, 0.0], [1, 1, 0, 0]) == 0.0


def test_fpr_at_tpr_matches_roc_definition():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=500)
    flags = rng.random(500) < 0.4
    scores[flags] += 1.0
    # Brute force: smallest FPR over thresholds whose TPR >= 0.95.
    thresholds = np.unique(scores)
    tprs = (scores[flags][None, :] >= thresholds[:, None]).mean(axis=1)
    fprs = (scores[~flags][None, :] >= thresholds[:, None]).mean(axis=1)
    assert fpr_at_tpr(scores, flags) == pytest.approx(fprs[tprs >= 0.95].min())


def test_ood_metrics_keys():
    metrics = ood_metrics(np.array([0.0, 1.0, 0.2, 0.9]), np.array([False, True, False, True]))
    assert metrics == {"auroc": 1.0, "fpr95": 0.0}


def test_fpr95_is_the_share_of_ood_images_taken_as_id_at_95_percent_of_the_id_images():
    """Review: FPR95 was the share of ID images above the threshold catching 95 % of the OOD ones
    (0.96 here), not MCM's and OpenOOD's FPR95 (OOD kept at the threshold keeping 95 % of ID: 0.52)."""
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 5000), rng.normal(1.5, 2, 5000)]  # higher = more OOD
    is_ood = np.r_[np.zeros(5000, bool), np.ones(5000, bool)]
    keeps_95_percent_of_id = np.sort(scores[~is_ood])[int(np.ceil(0.95 * 5000)) - 1]  # ID: score <= it
    published = np.mean(scores[is_ood] <= keeps_95_percent_of_id)
    assert ood_metrics(scores, is_ood)["fpr95"] == pytest.approx(published) and 0.5 < published < 0.55
    # review: unsigned scores wrapped when negated (fpr95 1.0 for a perfect split), bools raised
    perfect = np.array([False] * 4 + [True] * 4)
    assert ood_metrics(np.array([0, 1, 2, 3, 200, 250, 251, 252], np.uint8), perfect) == {"auroc": 1.0, "fpr95": 0.0}
    assert ood_metrics(perfect, perfect) == {"auroc": 1.0, "fpr95": 0.0}


def test_id_ood_splits_reproducible_distinct_and_ordered():
    classes = [f"c{i}" for i in range(10)]
    splits = id_ood_splits(classes, 6, n_splits=5, seed=3)
    assert splits == id_ood_splits(classes, 6, n_splits=5, seed=3)
    assert splits != id_ood_splits(classes, 6, n_splits=5, seed=4)
    assert len(splits) == 5 and all(len(split) == 6 for split in splits)
    assert len({tuple(split) for split in splits}) == 5
    for split in splits:
        assert split == [name for name in classes if name in split]


def test_id_classes_that_are_no_label_are_named():
    with pytest.raises(ZsfsError, match=r"^2 ID classes are not among the store's labels: 'dog'; 'emu'\. "):
        id_ood_splits(["cat", "cow", "owl"], ["cat", "emu", "dog"])
    # review: "these ID classes ...: 2: 'Cow '" read as a line number, and no hint, where fit gives one
    with pytest.raises(ZsfsError, match=r"^1 ID class is not among the store's labels: 'Cow ' \(spelled like the "
                                        r"label 'cow'\)\. "):
        id_ood_splits(["cat", "cow", "owl"], ["cat", "Cow "])


def test_id_ood_splits_more_splits_than_combinations_gives_each_once():
    """It used to repeat splits, which only made the spread over them look smaller."""
    assert id_ood_splits(["a", "b", "c"], 2, n_splits=5, seed=0) == [["a", "b"], ["a", "c"], ["b", "c"]]
    drawn = id_ood_splits(["a", "b", "c"], 2, n_splits=3, seed=0)  # as many as exist: drawn, in the seed's order
    assert sorted(drawn) == [["a", "b"], ["a", "c"], ["b", "c"]] and drawn == [["b", "c"], ["a", "c"], ["a", "b"]]


def test_id_ood_splits_may_take_every_named_class_when_others_stay_ood():
    """Bug: with labels outside the vocabulary (always OOD), every named class as ID was refused."""
    assert id_ood_splits(["a", "b"], 2, n_splits=5, always_ood=1) == [["a", "b"]]
    assert id_ood_splits(["a", "b"], ["b", "a"], always_ood=1) == [["a", "b"]]
    assert id_ood_splits(["a"], 1, always_ood=2) == [["a"]]  # one named class: a one-class fit
    with pytest.raises(ZsfsError, match="between 1 and 2 .*3 classes, 2 of them in the vocabulary"):
        id_ood_splits(["a", "b"], 3, always_ood=1)


def test_id_ood_splits_explicit_list_is_one_split():
    assert id_ood_splits(["a", "b", "c", "d"], ["d", "b"], n_splits=5) == [["b", "d"]]


@pytest.mark.parametrize("bad", [0, 4, 5])
def test_id_ood_splits_rejects_bad_count(bad):
    with pytest.raises(ZsfsError, match="between 1 and 3"):
        id_ood_splits(["a", "b", "c", "d"], bad)


def test_id_ood_splits_rejects_unknown_or_all_classes():
    with pytest.raises(ZsfsError, match="'zebra'"):
        id_ood_splits(["a", "b", "c"], ["a", "zebra"])
    with pytest.raises(ZsfsError, match="at least one must stay OOD"):
        id_ood_splits(["a", "b"], ["a", "b"])


def test_mean_std_population():
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_label_codes_read_both_unicode_forms_of_a_name_as_one_class():
    """A label copied from macOS (decomposed: e + combining accent) is the same class as the
    composed one; the two forms sort apart ("cafz" between them), so codes must be remapped."""
    codes = LabelCodes.of(np.array(["cafe\u0301", "cafz", "caf\u00e9"]))
    assert codes.index_in(["caf\u00e9"]).tolist() == [0, -1, 0]


def test_random_id_ood_splits_are_distinct():
    """ood-bench promises distinct draws: a repeated split would be scored twice and shrink the std."""
    for seed in range(10):
        splits = id_ood_splits(list("abcd"), 2, n_splits=6, seed=seed)
        assert len({tuple(split) for split in splits}) == 6


def test_counts_of_labels_not_among_the_classes_most_first_in_composed_form():
    codes = LabelCodes.of(np.array(["cat", "dog", "eel", "eel", "cafe\u0301", "dog", "eel"]))
    assert codes.counts_not_among(["dog", "café"]) == {"eel": 3, "cat": 1}  # 'café' decomposed is the class
    assert codes.counts_not_among(["cat", "dog", "eel", "café"]) == {}
    assert codes.counts_not_among([]) == {"eel": 3, "dog": 2, "cat": 1, "café": 1}
    assert LabelCodes.of(np.array([], dtype=str)).counts_not_among(["a"]) == {}  # review: an IndexError
    names = [f"n{i:02d}" for i in range(50)]  # 40 labels of 1 image, 10 of 2: most first, then by name
    many = LabelCodes.of(np.array(names + names[40:]))
    assert list(many.counts_not_among(["other"]).items()) == [(n, 2) for n in names[40:]] + [(n, 1) for n in names[:40]]


def test_percent_keeps_two_digits_of_small_shares():
    """Review: 3 flagged images of 1,000 showed as "0 % of the images"."""
    from zsfs.names import percent

    assert [percent(x) for x in (0.123, 0.003, 0.0004, 1e-13, 0.0)] == ["12.3 %", "0.3 %", "0.04 %", "< 0.001 %", "0 %"]
    assert [percent(x) for x in (0.01, 1e-5)] == ["1.0 %", "0.001 %"]  # the boundaries: one decimal; two digits


def test_fpr_at_tpr_matches_the_roc_definition_with_tied_scores():
    """The lowest false-positive rate among thresholds whose true-positive rate reaches 95 %, by brute force."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        n = int(rng.integers(2, 80))
        scores, positive = rng.integers(0, 4, n) / 3.0, rng.random(n) < 0.4
        if positive.all() or not positive.any():
            continue
        cuts = np.unique(scores)
        tpr = np.array([(scores[positive] >= cut).mean() for cut in cuts])
        fpr = np.array([(scores[~positive] >= cut).mean() for cut in cuts])
        assert fpr_at_tpr(scores, positive) == pytest.approx(fpr[tpr >= 0.95 - 1e-12].min(), abs=1e-12)


def test_label_codes_of_some_rows_drop_the_labels_none_of_them_has():
    """extract's summary counts the labels of the images stored, not of the files skipped."""
    labels = LabelCodes.of(np.array(["b", "a", "c", "a", "b"]))
    kept = labels.of_rows(np.array([True, True, False, True, False]))
    assert kept.classes.tolist() == ["a", "b"] and kept.codes.tolist() == [1, 0, 0]
    assert kept.counts_not_among(["a"]) == {"b": 1} and kept.code(["c"]).tolist() == [-1]
