"""Zero-shot CLIP scores, computed chunk by chunk so that no N x C matrix is ever held.

The logits are ``LOGIT_SCALE * cosine(image, class text)`` as in CLIP; both sides are
L2-normalised in the store. One pass over the images yields everything later steps need per
image: the zero-shot prediction and its confidence, the log-sum-exp of the logits and the
indices of the top classes (for neighbourhood re-ranking) and the MCM score (OOD baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

LOGIT_SCALE = 100.0
"""CLIP's logit scale: zero-shot logits are 100 x cosine similarity."""

TOP_CLASSES = 5
"""A neighbour supports a class only if the class is among its top-5 zero-shot classes."""

MCM_TEMPERATURE = 1.0
"""MCM: max softmax of cosine / temperature over the ID classes (temperature 1, as MCM's zero-shot setting)."""


CHUNK_ROWS = 32768
"""Rows per block of the fit's passes over a store (zero-shot logits, backbone features): bounded
memory at any size."""


def as_tensor(array: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 tensor on ``device`` (stores keep float16; all arithmetic is float32)."""
    tensor = torch.as_tensor(array)
    return tensor.to(device=device, dtype=torch.float32)


def zero_shot_logits(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(n, C) logits ``100 * images @ texts.T`` for one chunk of normalised embeddings."""
    return LOGIT_SCALE * (images @ texts.T)


def iter_logit_chunks(
    images: np.ndarray | torch.Tensor,
    texts: np.ndarray | torch.Tensor,
    *,
    chunk_rows: int = CHUNK_ROWS,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row, logits)`` for consecutive row chunks of ``images``."""
    text = as_tensor(texts, device)
    for start in range(0, len(images), chunk_rows):
        chunk = as_tensor(images[start : start + chunk_rows], device)
        yield start, zero_shot_logits(chunk, text)


@dataclass
class ZeroShotScores:
    """Per-image results of one zero-shot pass (all arrays have length N)."""

    predicted: np.ndarray  # int64 argmax class
    confidence: np.ndarray  # float32 max softmax probability of the logits
    logsumexp: np.ndarray  # float32 log-sum-exp of the logits (softmax normaliser)
    top_classes: np.ndarray  # (N, min(TOP_CLASSES, C)) int32 indices of the highest logits
    mcm: np.ndarray  # float32 MCM score (higher = more in-distribution)


class ZeroShotAccumulator:
    """Collects :class:`ZeroShotScores` from logit chunks, in row order."""

    def __init__(self, n_rows: int, n_classes: int):
        self.top = min(TOP_CLASSES, n_classes)
        self.predicted = np.empty(n_rows, np.int64)
        self.confidence = np.empty(n_rows, np.float32)
        self.logsumexp = np.empty(n_rows, np.float32)
        self.top_classes = np.empty((n_rows, self.top), np.int32)
        self.mcm = np.empty(n_rows, np.float32)

    def update(self, start: int, logits: torch.Tensor) -> None:
        rows = slice(start, start + len(logits))
        lse = torch.logsumexp(logits, dim=1)
        best, predicted = torch.max(logits, dim=1)  # of equal logits the first: topk orders ties as it likes
        top_indices = torch.topk(logits, self.top, dim=1).indices
        cosines = logits / (LOGIT_SCALE * MCM_TEMPERATURE)
        self.predicted[rows] = predicted.cpu().numpy()
        self.confidence[rows] = torch.exp(best - lse).cpu().numpy()
        self.logsumexp[rows] = lse.cpu().numpy()
        self.top_classes[rows] = top_indices.to(torch.int32).cpu().numpy()
        self.mcm[rows] = torch.softmax(cosines, dim=1).amax(dim=1).cpu().numpy()

    def result(self) -> ZeroShotScores:
        return ZeroShotScores(self.predicted, self.confidence, self.logsumexp, self.top_classes, self.mcm)


def pair_logits(
    images: np.ndarray | torch.Tensor,
    rows: torch.Tensor,
    texts: torch.Tensor,
    classes: torch.Tensor,
    *,
    chunk_pairs: int = 1 << 16,
) -> torch.Tensor:
    """Logit of image ``rows[i]`` for class ``classes[i]``, one dot product per pair.

    ``rows`` and ``classes`` have the same shape; the result has that shape too.
    """
    flat_rows, flat_classes = rows.reshape(-1), classes.reshape(-1)
    source = torch.as_tensor(images)  # a view of a numpy array: rows are gathered by torch, in parallel
    out = torch.empty(flat_rows.shape, dtype=torch.float32, device=texts.device)
    for start in range(0, len(flat_rows), chunk_pairs):
        part = slice(start, start + chunk_pairs)
        image = as_tensor(source.index_select(0, flat_rows[part].to(source.device)), texts.device)
        out[part] = LOGIT_SCALE * torch.linalg.vecdot(image, texts.index_select(0, flat_classes[part]))
    return out.reshape(rows.shape)
