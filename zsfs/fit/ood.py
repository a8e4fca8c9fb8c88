"""OOD scores: the paper's, from the classifier's logits, and zsfs' default rank score.

The paper's (``ood_paper``, ``ood_continuous``), calibrated on the seed images: three statistics of each logit vector (the paper's step C): the top logit, the gap between
the top two logits and the standard deviation of all logits. Images of unknown classes tend to
have lower values of all three. With mean ``mu`` and standard deviation ``sigma`` of each
statistic over the seeds, and the user's multiplier ``m``:

- paper score: one flag per statistic below ``mu - m * sigma``; score = flags / 3;
- continuous score: the mean of the three deficits ``(mu - value) / sigma``. A statistic is
  flagged exactly when its deficit exceeds ``m``, so this is the paper score before
  thresholding: it ranks images within each of the four paper levels and needs no ``m``.

The default (``ood_score``, the second half of this module): the mean collection rank of MCM and
of the backbone distance to the fit's reference images (``ood_distance``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from zsfs.store.index import MISSING  # padding in candidate lists

STATISTICS = ("top_logit", "top_gap", "logit_std")
_EPS = 1e-6  # keeps deficits finite when the seeds agree exactly on a statistic


def logit_statistics(logits: torch.Tensor) -> torch.Tensor:
    """(n, 3) float32: top logit, top-1 minus top-2 logit, population std of the logits."""
    if not len(logits):  # torch warns of "degrees of freedom <= 0" for the std of no rows
        return torch.zeros((0, 3), dtype=torch.float32, device=logits.device)
    top = torch.topk(logits, min(2, logits.shape[1]), dim=1).values
    gap = top[:, 0] - top[:, 1] if top.shape[1] == 2 else torch.zeros_like(top[:, 0])
    std = logits.std(dim=1, correction=0)
    return torch.stack([top[:, 0], gap, std], dim=1).float()


@dataclass(frozen=True)
class OodThresholds:
    """Seed statistics and the multiplier: everything needed to score new images."""

    mean: np.ndarray  # (3,) per statistic, over the seeds
    std: np.ndarray  # (3,)
    multiplier: float

    @property
    def thresholds(self) -> np.ndarray:
        return self.mean - self.multiplier * self.std

    def to_dict(self) -> dict:
        return {
            "statistics": list(STATISTICS),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "multiplier": float(self.multiplier),
            "thresholds": [float(v) for v in self.thresholds],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "OodThresholds":
        return cls(np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64),
                   float(data["multiplier"]))


def fit_thresholds(seed_statistics: torch.Tensor | np.ndarray, multiplier: float) -> OodThresholds:
    """Mean and (population) std of each statistic over the seed images."""
    stats = np.asarray(seed_statistics, np.float64)
    return OodThresholds(stats.mean(axis=0), stats.std(axis=0), float(multiplier))


def paper_score(statistics: torch.Tensor | np.ndarray, thresholds: OodThresholds) -> np.ndarray:
    """Flags / 3 in {0, 1/3, 2/3, 1}: higher = more likely out of distribution."""
    flags = np.asarray(statistics, np.float64) < thresholds.thresholds
    return (flags.sum(axis=1) / 3.0).astype(np.float32)


def continuous_score(statistics: torch.Tensor | np.ndarray, thresholds: OodThresholds) -> np.ndarray:
    """Mean standardised deficit of the three statistics: higher = more likely OOD."""
    deficits = (thresholds.mean - np.asarray(statistics, np.float64)) / np.maximum(thresholds.std, _EPS)
    return deficits.mean(axis=1).astype(np.float32)


# --- The default OOD score: two independent signals, each read as a rank in the collection ---
#
# MCM (Ming et al. 2022) asks whether CLIP finds any listed class in the image; the reference
# distance (deep nearest neighbours, Sun et al. 2022: the distance to the k-th nearest
# in-distribution training feature in the backbone space; here the training set is what the
# fit trusts most: the re-ranked zero-shot candidates of every present class, seeds among them)
# asks whether the backbone puts the image near the images that define the classes. They fail on
# different images, so their mean rank beats either. Each component becomes its empirical CDF
# over the whole collection (the distance's is stored as quantiles, so that `zsfs predict`
# scores new images on the same scale; predict has no CLIP, so no MCM).

NEAREST_REFERENCE = 20
"""The OOD distance is at most to the 20th nearest reference row (10 and 40 measured within 1
AUROC point on the real-data benchmark, with the lowest FPR95, by its definition of then, at 20
or 40, docs/fit.md): the 20th of the 100 candidates per class of the default, a fifth; fewer rows
per class (a small collection, a random subset of the reference) take a smaller k (:func:`nearest_rank`)."""
MAX_REFERENCE_ROWS = 4096
"""At most this many reference rows (a seeded random subset) are kept: every image is compared
with each of them (at 1000 classes x 100 candidates, all of them would cost 100x the classifier's
product)."""
N_QUANTILES = 1001
FLAG_FPR = 0.05
"""``ood_flag`` marks images whose score exceeds that of 95 % of the seeds (at most 5 % false positives on them)."""
_ROWS_PER_PRODUCT = 4096  # (rows x reference rows) similarity blocks stay small at any store size


def reference_distance(features: torch.Tensor, reference: torch.Tensor, k: int = NEAREST_REFERENCE) -> torch.Tensor:
    """(n,) one minus the cosine to the k-th nearest reference row: higher = farther from them.

    ``features`` and ``reference`` are unit rows; the products run in ``reference``'s dtype.
    A reference row identical to a feature row counts (a reference image is at distance 0 of itself).
    """
    k = min(k, len(reference))
    out = torch.empty(len(features), dtype=torch.float32, device=features.device)
    for start in range(0, len(features), _ROWS_PER_PRODUCT):
        block = features[start : start + _ROWS_PER_PRODUCT].to(reference.dtype) @ reference.T
        out[start : start + len(block)] = 1.0 - block.topk(k, dim=1).values[:, -1].float()
    return out


def reference_rows(candidate_rows: np.ndarray, seed: int, limit: int = MAX_REFERENCE_ROWS) -> np.ndarray:
    """Sorted unique ``candidate_rows``, or a seeded random ``limit`` of them."""
    rows = np.unique(candidate_rows)
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))


def nearest_rank(candidates: np.ndarray, n_kept: int, k: int = NEAREST_REFERENCE) -> int:
    """The k for a reference of ``n_kept`` rows drawn from the candidate lists ``candidates``
    ((C, R) store rows, ``MISSING``-padded): a fifth of the median class's candidates, times the
    kept fraction (the rows of one class a reference holds), at most ``k``, at least 2 (a
    reference image is its own nearest: with k = 1 it would sit at distance 0). The k-th nearest
    reference row of an in-distribution image must lie in its class: with 10 candidates per class
    the 20th lay in another, and the distance ranked new images near chance (AUROC 0.54 on 30
    Fashion-MNIST images, 0.91 with this k). A random subset of the candidates
    (``MAX_REFERENCE_ROWS``) holds fewer rows per class, so k falls with the kept fraction, as Sun
    et al. scale k with the fraction of the training set they keep. Classes without candidates
    (listed, absent from the collection) do not count. :func:`reference_distance` caps k at the
    reference's size."""
    listed = candidates != MISSING
    counts = listed.sum(axis=1)
    if not counts.any():
        return 2
    per_class = float(np.median(counts[counts > 0])) * n_kept / len(np.unique(candidates[listed]))
    return min(k, max(2, round(per_class / 5)))


def quantiles(values: np.ndarray) -> np.ndarray:
    """``N_QUANTILES`` evenly spaced quantiles of ``values`` (a compact, storable CDF)."""
    return np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, N_QUANTILES))


def cdf(values: np.ndarray, stored_quantiles: np.ndarray, ties_within: float = 0.0) -> np.ndarray:
    """Fraction of the reference population below each value, from :func:`quantiles`; a value
    that many share (identical images), or within ``ties_within`` of it, gets the middle of their
    range, as average ranks do, not its top (np.interp alone gave a whole collection of duplicates
    the score 1: most OOD). Away from ties the two shifted reads average to the plain one."""
    stored = np.maximum.accumulate(np.asarray(stored_quantiles, np.float64))  # np.interp needs sorted points
    values = np.asarray(values, np.float64)
    levels = np.linspace(0.0, 1.0, len(stored))
    from_above = np.interp(values + ties_within, stored, levels)  # on a run of equal points: the run's last level
    from_below = np.interp(ties_within - values, -stored[::-1], levels[::-1])  # ... its first level
    return (from_above + from_below) / 2


TIE_TOLERANCE = 1e-3
"""The ``ood_distance`` column, in the fit and in ``predict``, counts distances closer than this
fraction of the stored quantiles' range (about one of their 1,000 steps) as ties. Without it,
1e-7 of rounding (torch's product kernel for a batch of 1-3 rows; a file embedded again) moved a
duplicate image from the middle of its run of equal quantiles to its bottom or top: `zsfs
predict` gave a fit's 16 black images 1.0 instead of 0.674, and flagged them. Only there
(``ood_score`` averages MCM's rank with ``ood_distance`` itself): MCM's rank is compared within the
fit alone, and its range shrinks with the vocabulary (1.8e-4 at 1,000 classes), where a fixed floor
squeezed its ranks."""


def distance_rank(distance: np.ndarray, stored_quantiles: np.ndarray) -> np.ndarray:
    """``ood_distance``: the :func:`cdf` of reference distances, ties within :data:`TIE_TOLERANCE`
    of the quantiles' range (1e-6 where every quantile is equal: a collection of one image)."""
    stored = np.asarray(stored_quantiles, np.float64)
    spread = float(stored.max() - stored.min())
    return cdf(distance, stored, TIE_TOLERANCE * spread if spread > 0 else 1e-6).astype(np.float32)


def combined_score(ranks: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the components' collection ranks (:func:`cdf`, :func:`distance_rank`; higher =
    more OOD), in [0, 1]."""
    return np.mean(ranks, axis=0).astype(np.float32)


def flag_threshold(seed_scores: np.ndarray, false_positive_rate: float = FLAG_FPR) -> float:
    """The score above which at most ``false_positive_rate`` of the seeds (surely in distribution)
    lie: the lowest seed score with at most floor(rate x n) seeds above it (fewer with ties at the
    cut; an interpolated quantile flagged more, 6 of 112 seeds for 5 %)."""
    if not 0 <= false_positive_rate < 1:
        raise ValueError(f"false_positive_rate must be in [0, 1), not {false_positive_rate}")
    scores = np.sort(np.asarray(seed_scores, np.float64))
    above = min(math.floor(round(false_positive_rate * len(scores), 9)), len(scores) - 1)  # 0.05 x 140 is 7.000000000000001
    return float(scores[len(scores) - 1 - above])
