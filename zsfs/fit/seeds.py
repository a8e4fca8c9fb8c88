"""Seed candidates: top-R images per class, one image per class, neighbourhood re-ranking.

Candidate lists are ``(C, R)`` int64 arrays of store rows, best first, padded with ``-1`` where
a class has fewer than R candidates (tiny collections, or images given to another class).
An image shortlisted by several classes can be kept for the one where its neighbourhood
support is highest (:func:`one_class_per_image`), so that it carries one pseudo-label.
"""

from __future__ import annotations

import numpy as np
import torch

from zsfs.fit.neighbours import RunningTop
from zsfs.fit.zeroshot import (CHUNK_ROWS, ZeroShotAccumulator, ZeroShotScores, as_tensor, iter_logit_chunks,
                              pair_logits)
from zsfs.store.index import MISSING  # padding in candidate and neighbour lists


class TopCandidates(RunningTop):
    """Top-R rows per class over logit chunks (``RunningTop`` with the classes as its queries;
    never N x C)."""

    def __init__(self, n_classes: int, r: int, device: torch.device | str = "cpu"):
        super().__init__(n_classes, r, torch.device(device))
        self.classes = torch.arange(n_classes, device=self.scores.device)
        self.seen = 0

    def add_chunk(self, start: int, logits: torch.Tensor) -> None:
        """``logits``: (rows, C) of store rows ``start, start + 1, ...``."""
        rows = torch.arange(start, start + len(logits), device=self.scores.device)
        self.update(self.classes, logits.T.to(self.scores.device), rows)
        self.seen = max(self.seen, start + len(logits))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, logits)``, each ``(C, min(R, N))``, best first per class."""
        width = min(self.width, self.seen)
        return self.rows[:, :width].cpu().numpy(), self.scores[:, :width].cpu().numpy()


def zero_shot_scan(clip: np.ndarray | torch.Tensor, texts: np.ndarray | torch.Tensor, r: int, *,
                   chunk_rows: int = CHUNK_ROWS,
                   device: torch.device | str = "cpu") -> tuple[ZeroShotScores, np.ndarray, np.ndarray]:
    """One pass over the image embeddings: every image's zero-shot scores, and each class's top-R
    candidate rows with their logits (``(C, min(R, N))`` each, best first)."""
    zero_shot = ZeroShotAccumulator(len(clip), len(texts))
    top = TopCandidates(len(texts), min(r, len(clip)), device)  # R past N would only allocate padding
    for start, logits in iter_logit_chunks(clip, texts, chunk_rows=chunk_rows, device=device):
        zero_shot.update(start, logits)
        top.add_chunk(start, logits)
    return zero_shot.result(), *top.result()


def one_class_per_image(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mask keeping each image only in the list of the class where its score is highest.

    ``scores`` is aligned with ``rows`` (e.g. neighbourhood support); on equal scores the lower
    class index wins. Padding is never kept.
    """
    flat_rows, flat_scores = rows.ravel(), scores.ravel()
    n_classes, width = rows.shape
    flat_class = np.repeat(np.arange(n_classes), width)
    order = np.lexsort((flat_class, -flat_scores, flat_rows))
    first = np.ones(len(order), bool)
    first[1:] = flat_rows[order[1:]] != flat_rows[order[:-1]]
    keep = np.zeros(len(order), bool)
    keep[order[first]] = True
    return keep.reshape(rows.shape) & (rows != MISSING)


def neighbour_support(
    candidates: np.ndarray,
    neighbours: np.ndarray,
    clip: np.ndarray,
    texts: np.ndarray | torch.Tensor,
    scores: ZeroShotScores,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Neighbourhood-agreement score of every candidate for its class.

    ``candidates``: (C, R) rows with ``MISSING`` padding. ``neighbours``: (C, R, n) rows of each
    candidate's nearest images (``MISSING`` where the collection has too few). The score of
    candidate i for class c is the sum over its neighbours j of ``p_j(c)`` (zero-shot softmax)
    for those j whose top-5 classes contain c. Padding gets ``-inf``.
    """
    n_classes = candidates.shape[0]
    classes = np.broadcast_to(np.arange(n_classes)[:, None, None], neighbours.shape)
    valid = (neighbours != MISSING) & (candidates != MISSING)[..., None]
    rows, cls = neighbours[valid], classes[valid]
    # only a neighbour's top-5 classes count: a product for those pairs alone (review: every pair's
    # took minutes and GBs with 50,000 classes, where few pairs are among them)
    in_top = (scores.top_classes[rows] == cls[:, None]).any(axis=1)
    rows, cls = rows[in_top], cls[in_top]
    text = as_tensor(texts, device)
    logits = pair_logits(clip, torch.as_tensor(rows, device=device), text, torch.as_tensor(cls, device=device))
    probability = torch.zeros(len(in_top), dtype=torch.float32, device=device)
    probability[torch.as_tensor(in_top, device=device)] = torch.exp(
        logits - torch.as_tensor(scores.logsumexp[rows], device=device))
    support = torch.zeros(neighbours.shape, dtype=torch.float32, device=device)
    support[torch.as_tensor(valid, device=device)] = probability
    total = support.sum(dim=2).cpu().numpy()
    return np.where(candidates != MISSING, total, -np.inf).astype(np.float32)


def rerank(candidates: np.ndarray, support: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Sort each class list by support, descending; ties keep the zero-shot order.

    Entries outside ``keep`` (if given) become ``MISSING`` and move to the end.
    """
    if keep is not None:
        candidates = np.where(keep, candidates, MISSING)
        support = np.where(keep, support, -np.inf)
    order = torch.sort(torch.as_tensor(-support), dim=1, stable=True).indices.numpy()
    return np.take_along_axis(candidates, order, axis=1)


def positions(ranked: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, classes)`` of list positions ``[start, stop)`` of every class, padding dropped."""
    window = ranked[:, start:stop]
    classes = np.broadcast_to(np.arange(len(ranked))[:, None], window.shape)
    valid = window != MISSING
    return window[valid], classes[valid]
