"""OOD scoring from the classifier's logits, calibrated on the seed images.

Three statistics of each logit vector (method.md step C.8): the top logit, the gap between
the top two logits and the standard deviation of all logits. Images of unknown classes tend to
have lower values of all three. With mean ``mu`` and standard deviation ``sigma`` of each
statistic over the seeds, and the user's multiplier ``m``:

- paper score: one flag per statistic below ``mu - m * sigma``; score = flags / 3;
- continuous score: the mean of the three deficits ``(mu - value) / sigma``. A statistic is
  flagged exactly when its deficit exceeds ``m``, so this is the paper score before
  thresholding: it ranks images within each of the four paper levels and needs no ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STATISTICS = ("top_logit", "top_gap", "logit_std")
_EPS = 1e-6  # keeps deficits finite when the seeds agree exactly on a statistic


def logit_statistics(logits: torch.Tensor) -> torch.Tensor:
    """(n, 3) float32: top logit, top-1 minus top-2 logit, population std of the logits."""
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
