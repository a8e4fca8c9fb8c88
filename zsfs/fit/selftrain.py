"""Self-training (the paper's step B): train on the seeds, then grow the pseudo-labels in cycles.

Cycle t takes list positions ``t*k .. t*k+k-1`` of every class's re-ranked candidates, keeps
those the current head assigns to that class, and fine-tunes on them (the paper) or on
everything kept so far, seeds included (``accumulate=True``). The cycles stop when a cycle's
first-epoch loss exceeds the previous one's (the seed training counts as cycle 0), when an
epoch's loss falls below ``loss_floor``, when the candidates run out, or after ``max_cycles``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from zsfs.fit.classifier import LinearHead
from zsfs.fit.seeds import positions

STOP_LOSS_ROSE = "first-epoch loss rose"
STOP_LOSS_FLOOR = "training loss below the floor"
STOP_NO_CANDIDATES = "candidates ran out"
STOP_MAX_CYCLES = "maximum number of cycles"


@dataclass
class Cycle:
    """One training round; cycle 0 records the seeds (the cycles method trains on them; the
    balanced method trains nothing in it: ``n_trained`` 0, no losses)."""

    index: int
    n_candidates: int  # images offered to the agreement filter (the seeds for cycle 0)
    rows: np.ndarray  # store rows kept in this cycle (pseudo-labelled)
    labels: np.ndarray  # their pseudo-labels (class indices)
    n_trained: int  # size of the training set of this cycle
    losses: list[float] = field(default_factory=list)  # mean cross-entropy per epoch run

    @property
    def n_kept(self) -> int:
        return len(self.rows)

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None


@dataclass
class SelfTraining:
    head: LinearHead
    cycles: list[Cycle]
    stop_reason: str


class FeatureTable:
    """Normalised features of a sorted set of store rows, looked up by store row."""

    def __init__(self, rows: np.ndarray, features: torch.Tensor):
        self.rows, self.features = rows, features

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        where = torch.as_tensor(np.searchsorted(self.rows, rows), device=self.features.device)
        return self.features[where]


def self_train(
    ranked: np.ndarray,
    features: FeatureTable,
    *,
    k: int,
    epochs: int,
    cycle_epochs: int,
    batch_size: int,
    lr: float,
    max_cycles: int,
    loss_floor: float,
    accumulate: bool,
    generator: torch.Generator,
    train_dtype: torch.dtype = torch.float32,
    on_cycle: Callable[[int], None] | None = None,
) -> SelfTraining:
    """Train a linear head on the first k re-ranked candidates per class, then self-train.
    ``on_cycle(index)`` hears of each cycle as it starts (0: the seeds)."""
    on_cycle = on_cycle or (lambda index: None)
    device = features.features.device
    n_classes = len(ranked)
    head = LinearHead(features.features.shape[1], n_classes, lr=lr, generator=generator, device=device,
                      train_dtype=train_dtype)

    def labels_tensor(labels: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(labels, dtype=torch.int64, device=device)

    train_rows, train_labels = positions(ranked, 0, k)
    on_cycle(0)
    losses = head.train_epochs(features[train_rows], labels_tensor(train_labels), epochs=epochs,
                               batch_size=batch_size, generator=generator)
    cycles = [Cycle(0, len(train_rows), train_rows, train_labels, len(train_rows), losses)]
    previous_first = losses[0] if losses else float("inf")
    stop = STOP_MAX_CYCLES
    for t in range(1, max_cycles + 1):
        rows, labels = positions(ranked, t * k, (t + 1) * k)
        if len(rows) == 0:
            stop = STOP_NO_CANDIDATES
            break
        on_cycle(t)
        assigned = head.predict_logits(features[rows]).argmax(dim=1).cpu().numpy()
        agree = assigned == labels
        kept_rows, kept_labels = rows[agree], labels[agree]
        if accumulate:
            train_rows = np.concatenate([train_rows, kept_rows])
            train_labels = np.concatenate([train_labels, kept_labels])
        else:
            train_rows, train_labels = kept_rows, kept_labels
        losses = head.train_epochs(features[train_rows], labels_tensor(train_labels), epochs=cycle_epochs,
                                   batch_size=batch_size, generator=generator, stop_below=loss_floor,
                                   stop_after_first=previous_first)
        cycles.append(Cycle(t, len(rows), kept_rows, kept_labels, len(train_rows), losses))
        if not losses:  # no epoch ran (nothing to train on, or cycle_epochs 0): try the next positions
            continue
        if losses[0] > previous_first:
            stop = STOP_LOSS_ROSE
            break
        if losses[-1] < loss_floor:
            stop = STOP_LOSS_FLOOR
            break
        previous_first = losses[0]
    return SelfTraining(head, cycles, stop)
