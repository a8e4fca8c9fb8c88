"""The linear head: training on pseudo-labelled backbone features, chunked prediction, saving.

Training is a plain loop over pre-shuffled mini-batches: one ``randperm`` per epoch from a
seeded ``torch.Generator``, one gather of the epoch's features, then contiguous slices, so a
step costs one ``addmm``, one cross-entropy and one (fused) Adam update; no DataLoader.
The update is torch's functional Adam (``torch.optim.adam.adam``: the computation of
``torch.optim.Adam`` with its default hyperparameters and ``fused`` as here) with the state held
here: the ``Optimizer`` class imports ``torch._dynamo`` on first use, about 2 s of every fit process.
The products can run in bfloat16 (``train_dtype``; weights, loss and optimiser stay float32):
on CPUs with AVX512-BF16 or AMX, and on GPUs, that halves the cost of a step.
"""

from __future__ import annotations

import errno
import math
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from zsfs.errors import ParameterError, ZsfsError, check_at_least, check_parameter_type, one_line
from zsfs.names import counted, described_array
from zsfs.fit import ood
from zsfs.fit.zeroshot import as_tensor

CLASSIFIER_FORMAT = "zsfs-classifier"
CLASSIFIER_VERSION = 1
INPUT_NORMALISATION = "l2"
"""Features are L2-normalised (float32) before the head, in training and in prediction alike."""


def normalise(features: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32, L2-normalised rows on ``device``."""
    return F.normalize(as_tensor(features, device), dim=1)


class LinearHead:
    """Weights ``(C, D)`` and bias ``(C,)`` with Adam (torch's defaults) whose state lives across cycles."""

    def __init__(self, n_features: int, n_classes: int, *, lr: float, generator: torch.Generator,
                 device: torch.device | str = "cpu", train_dtype: torch.dtype = torch.float32):
        # The initialisation of torch.nn.Linear, drawn from our own generator.
        bound = 1.0 / math.sqrt(n_features)
        weight = (torch.rand(n_classes, n_features, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(n_classes, generator=generator) * 2 - 1) * bound
        self.weight = weight.to(device).requires_grad_()
        self.bias = bias.to(device).requires_grad_()
        self.lr, self.train_dtype = lr, train_dtype
        # Adam's state as torch.optim.Adam keeps it: the fused kernel (CPU, CUDA) counts steps in a
        # float32 tensor on the device; the other kernels in a float32 scalar on the CPU.
        self.fused = torch.device(device).type in ("cpu", "cuda")
        self.parameters = [self.weight, self.bias]
        self.exp_avgs = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.exp_avg_sqs = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.steps = [torch.zeros((), dtype=torch.float32, device=device if self.fused else "cpu")
                      for _ in self.parameters]

    @torch.no_grad()
    def _adam_step(self) -> None:
        from torch.optim.adam import adam

        adam(self.parameters, [parameter.grad for parameter in self.parameters], self.exp_avgs, self.exp_avg_sqs, [],
             self.steps, fused=self.fused, amsgrad=False, beta1=0.9, beta2=0.999, lr=self.lr,
             weight_decay=0.0, eps=1e-8, maximize=False)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """float32 logits; the product runs in the dtype of ``features``."""
        dtype = features.dtype
        return torch.addmm(self.bias.to(dtype), features, self.weight.to(dtype).T).float()

    def train_epochs(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        *,
        epochs: int,
        batch_size: int,
        generator: torch.Generator,
        stop_below: float | None = None,
        stop_after_first: float | None = None,
    ) -> list[float]:
        """Train for up to ``epochs``; return the mean cross-entropy of each epoch run.

        Stops early after an epoch whose loss is below ``stop_below``, or after the first
        epoch when its loss exceeds ``stop_after_first``.
        """
        if len(labels) == 0:
            return []
        features = features.to(self.train_dtype)
        return self._train(features, labels, epochs, batch_size, generator, stop_below, stop_after_first)

    def _train(self, features, labels, epochs, batch_size, generator, stop_below, stop_after_first) -> list[float]:
        n = len(labels)
        losses: list[float] = []
        total = torch.zeros((), device=features.device)
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(features.device)
            epoch_features, epoch_labels = features[order], labels[order]
            total.zero_()
            for start in range(0, n, batch_size):
                x = epoch_features[start : start + batch_size]
                y = epoch_labels[start : start + batch_size]
                self.weight.grad = self.bias.grad = None  # backward then writes the gradient instead of adding to zeros
                loss = F.cross_entropy(self.logits(x), y)
                loss.backward()
                self._adam_step()
                total += loss.detach() * len(y)
            losses.append(float(total) / n)
            if stop_after_first is not None and epoch == 0 and losses[0] > stop_after_first:
                break
            if stop_below is not None and losses[-1] < stop_below:
                break
        return losses

    @torch.no_grad()
    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features)


@torch.no_grad()
def score_images(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reference: torch.Tensor | None,
                 nearest: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a fitted head says of unit backbone ``features``, in fit and in predict alike: each
    row's best class, its softmax probability, the paper's logit statistics
    (:func:`ood.logit_statistics`) and the distance to the ``nearest``-th row of the OOD
    ``reference`` (:func:`ood.reference_distance`; NaN without a reference)."""
    logits = torch.addmm(bias, features, weight.T)
    confidence, best = torch.softmax(logits, dim=1).max(dim=1)
    distance = (torch.full((len(features),), torch.nan, device=features.device) if reference is None
                else ood.reference_distance(features, reference, nearest))
    return best, confidence, ood.logit_statistics(logits), distance


@dataclass
class Classifier:
    """A fitted head, ready for inference on new backbone features (see :func:`load_classifier`)."""

    classes: list[str]
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32
    ood: ood.OodThresholds
    backbone: dict = field(default_factory=dict)  # the store's backbone record
    normalisation: str = INPUT_NORMALISATION
    ood_reference: np.ndarray | None = None  # (S, D) float16 unit reference features of the OOD score (zsfs.fit.ood)
    ood_nearest: int = ood.NEAREST_REFERENCE  # the OOD distance is to the ood_nearest-th nearest reference row
    ood_quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # stored CDF of each OOD component
    ood_distance_threshold: float | None = None  # new images above it are flagged (ood.flag_threshold of the
    #                                              seeds' ood_distance); None for runs written before 2026-12-06

    def classify(self, features: np.ndarray, chunk_rows: int = 65536) -> tuple[np.ndarray, ...]:
        """Per row of raw backbone ``features`` (normalised here), the columns of ``zsfs predict``:
        class name, confidence, ``ood_distance``, paper OOD score (0, 1/3, 2/3, 1), continuous OOD
        score. ``ood_distance`` is the fit's column for new images, the backbone half of its
        ``ood_score``: the rank of their reference distance in the fitted collection, in [0, 1]
        (the MCM half needs CLIP embeddings; NaN for runs written before zsfs stored the reference)."""
        check_parameter_type("chunk_rows", chunk_rows, int)  # None or 2.5: a TypeError deep inside
        check_at_least("chunk_rows", chunk_rows, 1)  # 0: range()'s ValueError
        features = self._checked_features(features)
        weight, bias = torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        has_reference = self.ood_reference is not None and "reference_distance" in self.ood_quantiles
        reference = torch.from_numpy(self.ood_reference).float() if has_reference else None
        parts = [score_images(normalise(features[start : start + chunk_rows]), weight, bias, reference, self.ood_nearest)
                 for start in range(0, max(len(features), 1), chunk_rows)]
        best, confidence, statistics, distance = (torch.cat(column).numpy() for column in zip(*parts))
        if has_reference:
            distance = ood.distance_rank(distance, self.ood_quantiles["reference_distance"])
        return (np.asarray(self.classes, dtype=object)[best], confidence, distance,
                ood.paper_score(statistics, self.ood), ood.continuous_score(statistics, self.ood))

    def _checked_features(self, features) -> np.ndarray:
        """``features`` as an (n, D) float array of the run's backbone width, or ParameterError
        (not a matrix-product error from deep in torch, nor NaN classes for NaN rows)."""
        width = self.weight.shape[1]
        try:
            array = np.asarray(features)
        except ValueError:  # ragged rows
            array = None
        if array is None or array.ndim != 2 or array.shape[1] != width or not (
                np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            described = "ragged rows" if array is None else described_array(array)
            raise ParameterError(f"{{features}} must be an (n, {width}) array of numbers: rows of the store's "
                                 f"backbone features (Store.read(\"backbone\")), not {described}")
        from zsfs.store.rows import normalise_rows, unusable_row_numbers, unusable_rows_text  # a store's rule

        bad = unusable_row_numbers(array)
        if len(bad):
            raise ParameterError(f"{{features}}: {unusable_rows_text(len(bad), int(bad[0]))}")
        return normalise_rows(array, "features")  # as a store's rows: float32 products of 1e300 or 1e-30 overflow

    def save(self, path: Path) -> None:
        state = {
            "format": CLASSIFIER_FORMAT,
            "version": CLASSIFIER_VERSION,
            "classes": list(self.classes),
            "weight": torch.from_numpy(self.weight),
            "bias": torch.from_numpy(self.bias),
            "ood": self.ood.to_dict(),
            "backbone": self.backbone,
            "normalisation": self.normalisation,
            "ood_reference": None if self.ood_reference is None else torch.from_numpy(self.ood_reference),
            "ood_nearest": self.ood_nearest,
            "ood_quantiles": {name: torch.from_numpy(np.asarray(q)) for name, q in self.ood_quantiles.items()},
            "ood_distance_threshold": self.ood_distance_threshold,
        }
        # Through a Python file: its OSError (a full disk) stays in the error's chain, where torch's
        # own writer leaves only "unexpected pos"; and a path that is not UTF-8 works.
        with open(path, "wb") as handle, _crc32_recorded():
            torch.save(state, handle)


@contextmanager
def _crc32_recorded() -> Iterator[None]:
    """torch.save records each member's CRC-32 in the block, whatever the process set (torch's
    ``set_crc32_options(False)`` writes 0s, which the load's check would read as damage)."""
    options = torch.serialization
    if not hasattr(options, "set_crc32_options"):  # torch before 2.6 always records them
        yield
        return
    before = options.get_crc32_options()
    options.set_crc32_options(True)
    try:
        yield
    finally:
        options.set_crc32_options(before)


_POINTS_OUTSIDE = "its zip directory points outside the file"


def _zip_damage(handle: BinaryIO) -> str | None:
    """What is wrong with a ``torch.save`` file (a zip archive), or None: no whole archive (cut short,
    or another kind of file: torch's reader said "Invalid argument" of a copy cut by a full disk), or
    a member whose bytes fail the CRC-32 the archive records (torch.load reads tensors without
    checking it, so a flipped bit became a wrong weight, and predict gave other labels at confidence
    1 with no word of damage). Leaves ``handle`` at its start."""
    try:
        with zipfile.ZipFile(handle) as archive:  # (a file object passed in stays open)
            if not any(member.CRC for member in archive.infolist()):  # saved with torch's CRC-32 off: none to check
                return None
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        return "it is no whole zip archive, as torch writes one: cut short, or another kind of file"
    except (UnicodeDecodeError, EOFError, ValueError, struct.error, zlib.error, NotImplementedError) as error:
        return f"its zip directory is garbled: {one_line(error)}"  # (a flipped byte in a member's name)
    except OSError as error:  # a seek before the file's start: "Invalid argument"
        if error.errno != errno.EINVAL:  # reading the file failed: not the file's fault
            raise
        return _POINTS_OUTSIDE
    finally:
        handle.seek(0)
    return None if damaged is None else f"its part {damaged!r} does not match the checksum it was written with"


LEGACY_OOD_COMPONENTS = {"seed_distance": "reference_distance"}
"""Older names of stored OOD components (runs whose reference was the seeds, with k = 5)."""


def load_classifier(path: str | Path) -> Classifier:
    """Load a classifier saved by ``zsfs fit`` (``RUN_DIR/classifier.pt``)."""
    path = Path(path)
    if path.is_dir():
        from zsfs.runs import CLASSIFIER  # a run folder: zsfs.runs knows its layout (imported only here)

        path = path / CLASSIFIER
    if not path.is_file():
        raise ZsfsError(f"no classifier at {path}; pass a run folder written by `zsfs fit`")
    with open(path, "rb") as handle:  # a Python file: any path, UTF-8 or not (its OSError says what it is)
        damage = _zip_damage(handle)
        if damage is not None:
            raise ZsfsError(f"{path} is damaged ({damage}); rerun `zsfs fit` to write it again")
        try:
            with warnings.catch_warnings():  # a damaged file's: the error below says it (CI saw it beside the test)
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                state = torch.load(handle, map_location="cpu", weights_only=True)
        except OSError as error:
            if error.errno != errno.EINVAL:  # reading the file failed, not decoding it
                raise
            # torch's zip reader says "Invalid argument" of a directory that points past the file
            raise ZsfsError(f"{path} is damaged ({_POINTS_OUTSIDE}); rerun `zsfs fit` to write it again") from None
        except Exception as error:  # torch raises many types for a damaged file
            raise ZsfsError(f"{path} is not a readable zsfs classifier (damaged, cut short or another kind of file: "
                            f"{one_line(error)}); rerun `zsfs fit` to write it again") from None
    if not isinstance(state, dict) or state.get("format") != CLASSIFIER_FORMAT:
        raise ZsfsError(f"{path} is not a zsfs classifier file")
    try:
        if state["version"] > CLASSIFIER_VERSION:
            raise ZsfsError(f"{path} was written by a newer zsfs; upgrade zsfs to read it")
        classifier = Classifier(
            classes=list(state["classes"]),
            weight=state["weight"].numpy(),
            bias=state["bias"].numpy(),
            ood=ood.OodThresholds.from_dict(state["ood"]),
            backbone=state["backbone"],
            normalisation=state["normalisation"],
            ood_reference=None if state.get("ood_reference") is None else state["ood_reference"].numpy(),
            ood_nearest=int(state.get("ood_nearest", 5)),  # 5: the k of runs written before it was stored
            ood_quantiles={LEGACY_OOD_COMPONENTS.get(name, name): q.numpy()
                           for name, q in state.get("ood_quantiles", {}).items()},
            ood_distance_threshold=None if state.get("ood_distance_threshold") is None
            else float(state["ood_distance_threshold"]),
        )
    except (KeyError, TypeError, AttributeError) as error:  # a damaged or hand-edited file
        raise ZsfsError(f"{path} is a damaged zsfs classifier (missing or bad {error}); rerun `zsfs fit`") from None
    mismatch = _shape_mismatch(classifier)
    if mismatch:  # found here, not as a matrix-product error once every image has been decoded
        raise ZsfsError(f"{path} is a damaged zsfs classifier ({mismatch}); rerun `zsfs fit`")
    return classifier


def _shape_mismatch(classifier: Classifier) -> str | None:
    """What in a loaded classifier's arrays does not fit together, or None."""
    weight, bias, reference = classifier.weight, classifier.bias, classifier.ood_reference
    width = classifier.backbone.get("dim")
    if weight.ndim != 2 or weight.shape[0] != len(classifier.classes):
        return f"weight of shape {weight.shape} for {counted(len(classifier.classes), 'class', 'classes')}"
    if width is not None and weight.shape[1] != width:
        return f"weight of shape {weight.shape} for the backbone's {width}-d features"
    if bias.shape != (weight.shape[0],):
        return f"bias of shape {bias.shape} for a weight of shape {weight.shape}"
    if reference is not None and (reference.ndim != 2 or reference.shape[1] != weight.shape[1]
                                  or reference.shape[0] == 0):
        return f"OOD reference of shape {reference.shape} for features of width {weight.shape[1]}"
    statistics = len(ood.STATISTICS)
    if classifier.ood.mean.shape != (statistics,) or classifier.ood.std.shape != (statistics,):
        return f"OOD statistics of shapes {classifier.ood.mean.shape} and {classifier.ood.std.shape}, not ({statistics},)"
    if classifier.ood_nearest < 1:
        return f"OOD distance to the {classifier.ood_nearest}-th nearest reference row"
    empty = [name for name, q in classifier.ood_quantiles.items() if q.size == 0]
    return f"no quantiles of {empty[0]}" if empty else None
