"""Synthetic stores for tests and benchmarks: clean backbone clusters, mediocre CLIP.

The generative model (all vectors L2-normalised at the end):

- every class c (ID or held-out OOD) has a text direction ``t_c`` and a visual direction
  ``u_c`` in CLIP space, and a centre ``m_c`` in backbone space;
- an image of class y has CLIP embedding ``t_y + 4 u_y + s g`` and backbone feature
  ``m_y + b h`` (g, h standard normal). The shared ``u_y`` makes same-class images CLIP
  neighbours; the noise scale ``s`` is calibrated so that zero-shot accuracy (ensemble prompts)
  is about ``clip_accuracy``; ``b`` is small enough for the backbone clusters to be clean.
- the vocabulary holds the ID classes only; its "ensemble" embeddings are the exact ``t_c``,
  its "single" ones are perturbed copies (a single prompt is a noisier class description);
- ``present_classes`` N: only the first N ID classes hold images, the others are listed only
  (a large vocabulary over a collection that holds few of its classes).

Rows are generated in fixed blocks from per-block seeds, so any row range can be produced
on its own (1.28M x 1000 stores are written shard by shard in float16).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from zsfs.store import Store

BLOCK_ROWS = 16384
VISUAL_WEIGHT = 4.0
SINGLE_PROMPT_NOISE = 0.6
CALIBRATION_ROWS = 4096
CLIP_INFO = {"name": "synthetic-clip", "weights": "random", "file": None, "sha256": None}
BACKBONE_INFO = {"name": "synthetic-backbone", "weights": "random", "file": None, "sha256": None,
                 "output": "pre_logits"}


def unit(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows in seeded random directions."""
    return unit(np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32))


def class_names(n: int, prefix: str = "class") -> list[str]:
    return [f"{prefix}_{i:04d}" for i in range(n)]


class SyntheticGenerator:
    """Draws the class geometry once; :meth:`rows` then produces any block of images."""

    def __init__(self, n_images: int, n_classes: int, *, n_ood_classes: int = 0, clip_dim: int = 512,
                 backbone_dim: int = 1024, clip_accuracy: float = 0.6, backbone_noise: float = 5.0,
                 present_classes: int | None = None, seed: int = 0):
        self.n_images, self.n_classes, self.n_ood = n_images, n_classes, n_ood_classes
        self.clip_dim, self.backbone_dim, self.seed = clip_dim, backbone_dim, seed
        rng = np.random.default_rng([seed, 0])
        total = n_classes + n_ood_classes
        self.text = unit(rng.standard_normal((total, clip_dim), dtype=np.float32))
        self.visual = unit(rng.standard_normal((total, clip_dim), dtype=np.float32))
        self.centres = unit(rng.standard_normal((total, backbone_dim), dtype=np.float32))
        noise = unit(rng.standard_normal((n_classes, clip_dim), dtype=np.float32))
        self.single = unit(self.text[:n_classes] + SINGLE_PROMPT_NOISE * noise)
        present = n_classes if present_classes is None else present_classes
        if not 1 <= present <= n_classes:
            raise ValueError(f"present_classes must be 1 to n_classes ({n_classes}), not {present}")
        self.label_ids = rng.integers(0, present + n_ood_classes, n_images)
        self.label_ids[self.label_ids >= present] += n_classes - present  # (held-out OOD classes)
        self.backbone_scale = backbone_noise / np.sqrt(backbone_dim)
        self.clip_scale = self._calibrate(clip_accuracy)
        self._last_block: tuple[int, np.ndarray, np.ndarray] | None = None

    @cached_property
    def names(self) -> np.ndarray:
        return np.array(class_names(self.n_classes) + class_names(self.n_ood, "ood"), dtype=object)

    def _clip_rows(self, labels: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
        signal = self.text[labels] + VISUAL_WEIGHT * self.visual[labels]
        return signal + scale * rng.standard_normal((len(labels), self.clip_dim), dtype=np.float32)

    def _calibrate(self, target: float) -> float:
        """Noise scale giving ``target`` zero-shot accuracy on ID images (bisection, fixed sample)."""
        rng = np.random.default_rng([self.seed, 1])
        labels = rng.integers(0, self.n_classes, CALIBRATION_ROWS)
        base = self.text[labels] + VISUAL_WEIGHT * self.visual[labels]
        noise = rng.standard_normal((CALIBRATION_ROWS, self.clip_dim), dtype=np.float32)
        text_part, noise_part = base @ self.text[: self.n_classes].T, noise @ self.text[: self.n_classes].T
        best = np.mean(np.argmax(text_part, axis=1) == labels)
        if best < target:  # the search would end at no noise: every image of a class the same CLIP row
            raise ValueError(f"clip_accuracy {target} is out of reach with clip_dim {self.clip_dim} and "
                             f"{self.n_classes} classes (noise-free zero-shot accuracy {best:.2f}); "
                             "use a larger clip_dim or a lower clip_accuracy")
        low, high = 0.0, 10.0
        for _ in range(30):
            scale = (low + high) / 2
            accuracy = np.mean(np.argmax(text_part + scale * noise_part, axis=1) == labels)
            low, high = (scale, high) if accuracy > target else (low, scale)
        if high < 1e-6:  # e.g. clip_accuracy 1.0: no noise at all, one CLIP row per class
            raise ValueError(f"clip_accuracy {target} needs a noise-free store; choose a lower one")
        return (low + high) / 2

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(clip, backbone)`` float16 for rows ``[start, stop)``."""
        clip = np.empty((stop - start, self.clip_dim), np.float16)
        backbone = np.empty((stop - start, self.backbone_dim), np.float16)
        for block in range(start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS + 1):
            lo, hi = block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, self.n_images)
            c, b = self._block(block)
            keep = slice(max(lo, start) - lo, min(hi, stop) - lo)
            out = slice(max(lo, start) - start, min(hi, stop) - start)
            clip[out], backbone[out] = c[keep], b[keep]
        return clip, backbone

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of one block, the last one kept: reading a block row by row (a store's
        sampled-rows hash) generates it once, not once per row."""
        if self._last_block is None or self._last_block[0] != block:
            lo, hi = block * BLOCK_ROWS, min((block + 1) * BLOCK_ROWS, self.n_images)
            rng = np.random.default_rng([self.seed, 2, block])
            labels = self.label_ids[lo:hi]
            clip = unit(self._clip_rows(labels, self.clip_scale, rng))
            backbone = unit(self.centres[labels] + self.backbone_scale
                             * rng.standard_normal((len(labels), self.backbone_dim), dtype=np.float32))
            self._last_block = (block, clip, backbone)
        return self._last_block[1], self._last_block[2]

    def labels(self) -> np.ndarray:
        return self.names[self.label_ids]

    def paths(self) -> list[str]:
        names = self.labels()
        return [f"{name}/{i:07d}.jpg" for i, name in enumerate(names)]


class _LazyRows:
    """Array-like over generated rows (``len`` and slicing), so a store is written shard by shard."""

    def __init__(self, generator: SyntheticGenerator, which: int, dim: int):
        self.generator, self.which, self.dim = generator, which, dim

    def __len__(self) -> int:
        return self.generator.n_images

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        return self.generator.rows(start, stop)[self.which]


def make_synthetic_store(path: str | Path, n_images: int, n_classes: int, *, n_ood_classes: int = 0,
                         clip_dim: int = 512, backbone_dim: int = 1024, clip_accuracy: float = 0.6,
                         backbone_noise: float = 5.0, present_classes: int | None = None, seed: int = 0,
                         vocabulary: str = "synthetic",
                         labels: bool = True, shard_size: int | None = None, **store_options) -> Path:
    """Write a synthetic store (one vocabulary of the ID classes) and return its path."""
    from zsfs.store import schema
    from zsfs.store.arrays import write_store

    generator = SyntheticGenerator(n_images, n_classes, n_ood_classes=n_ood_classes, clip_dim=clip_dim,
                                   backbone_dim=backbone_dim, clip_accuracy=clip_accuracy,
                                   backbone_noise=backbone_noise, present_classes=present_classes, seed=seed)
    names = class_names(n_classes)
    return write_store(
        Path(path),
        clip=_LazyRows(generator, 0, clip_dim),
        backbone=_LazyRows(generator, 1, backbone_dim),
        paths=generator.paths(),
        labels=generator.labels() if labels else None,
        clip_info={**CLIP_INFO, "dim": clip_dim},
        backbone_info={**BACKBONE_INFO, "dim": backbone_dim},
        source=f"synthetic:{n_images}x{n_classes}+{n_ood_classes}:seed{seed}"
               + ("" if present_classes is None else f":present{present_classes}"),
        vocabularies={vocabulary: (names, generator.single, generator.text[:n_classes].copy())},
        shard_size=shard_size or schema.DEFAULT_SHARD_SIZE,
        **store_options,
    )


def subset_store(store: "Store", vocabulary: str, present: list[str], path: str | Path) -> Path:
    """A store of the images of ``store`` labelled with one of the ``present`` classes, with the
    full ``vocabulary`` (the absent-class scenario: listed classes the collection does not hold)."""
    labels = np.asarray(store.labels()).astype(str)
    return rows_store(store, vocabulary, np.flatnonzero(np.isin(labels, present)), path,
                      f"subset of {store.path.name}: {len(present)} classes")


def rows_store(store: "Store", vocabulary: str, rows: np.ndarray, path: str | Path, source: str) -> Path:
    """A store of ``store``'s sorted ``rows`` (features, paths, labels) with its ``vocabulary``."""
    from zsfs.store.arrays import write_store

    vocab = store.vocabulary(vocabulary)
    return write_store(Path(path), clip=store.read("clip", rows), backbone=store.read("backbone", rows),
                       paths=[str(p) for p in store.paths(rows)],
                       labels=np.asarray(store.labels()).astype(str)[rows].tolist(),
                       clip_info=dict(store.clip_info), backbone_info=dict(store.backbone_info), source=source,
                       vocabularies={vocabulary: (vocab.classes, vocab.single, vocab.ensemble)})


ACCENTED_CLASSES = ["café", "crème brûlée", "pão", "smørrebrød"]


def make_accented_store(path: str | Path, *, labels_form: str = "NFD", classes_form: str = "NFC",
                        n_images: int = 80) -> Path:
    """A small, perfectly separable store whose class names carry accents, its labels and its
    vocabulary ("food") written in the given Unicode forms (macOS folder names are NFD)."""
    import unicodedata

    from zsfs.store.arrays import write_store

    centres = random_unit_rows(len(ACCENTED_CLASSES), 16, 0)
    truth = np.arange(n_images) % len(ACCENTED_CLASSES)
    features = unit(centres[truth] + 0.05 * random_unit_rows(n_images, 16, 1))
    classes = [unicodedata.normalize(classes_form, name) for name in ACCENTED_CLASSES]
    return write_store(
        Path(path), clip=features, backbone=features, paths=[f"{i}.jpg" for i in range(n_images)],
        labels=[unicodedata.normalize(labels_form, ACCENTED_CLASSES[c]) for c in truth],
        clip_info={**CLIP_INFO, "dim": 16}, backbone_info={**BACKBONE_INFO, "dim": 16}, source="accented",
        vocabularies={"food": (classes, centres, centres)})
