"""The paper's datasets: how to prepare each, its ID class count, and the paper's numbers.

Numbers are percentages from the paper's Table 1 (top-1 accuracy) and Table 2 (OOD AUROC,
mean over 5 splits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import prepare

CLIP_MODEL = "ViT-B-32"
CLIP_WEIGHTS = "openai"
BACKBONE = "vit_giant_patch14_clip_224.laion2b"
"""The paper's reference models (ViT-B/32 OpenAI CLIP; ViT-G/14 LAION-2B image tower, 1024-d)."""

OOD_SPLITS = 5

ACCURACY_BASELINES = ("clip_zero_shot", "adaptclipzs", "method")
AUROC_BASELINES = ("mcm", "glmcm", "zoc", "method")
BASELINE_TITLES = {
    "clip_zero_shot": "CLIP zero-shot",
    "adaptclipzs": "AdaptCLIPZS",
    "method": "paper's method",
    "mcm": "MCM",
    "glmcm": "GL-MCM",
    "zoc": "ZOC",
}


@dataclass(frozen=True)
class Dataset:
    """One of the paper's datasets.

    ``prepare(data_root)`` returns a folder of class subfolders (folder name = class name =
    prompt word), downloading where a public downloader exists; ``None`` for data that is not
    public. ``id_classes`` is the ID class count of the OOD protocol (None: classification only);
    ``n_images`` the images the paper's numbers are measured on, where fixed (None: unknown here).
    """

    name: str
    title: str
    n_classes: int | None
    id_classes: int | None
    prepare: Callable[[Path], Path] | None
    paper_accuracy: dict[str, float] = field(default_factory=dict)
    paper_auroc: dict[str, float] = field(default_factory=dict)
    note: str = ""
    n_images: int | None = None

    @property
    def runnable(self) -> bool:
        return self.prepare is not None


def _numbers(keys: tuple[str, ...], values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(keys, values, strict=True))


DATASETS: dict[str, Dataset] = {
    dataset.name: dataset
    for dataset in (
        Dataset(
            "imagenet", "ImageNet", 1000, None, prepare.imagenet,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (61.15, 63.11, 68.29)),
            note="validation set (50,000 images); classification only, as in the paper", n_images=50_000,
        ),
        Dataset(
            "cars", "Stanford Cars", 196, 120, prepare.stanford_cars,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (57.62, 57.73, 79.63)),
            paper_auroc=_numbers(AUROC_BASELINES, (63.93, 63.16, 72.50, 73.19)),
            note="test set (8,041 images); manual download", n_images=8_041,
        ),
        Dataset(
            "geo", "Geo", None, 30, None,
            paper_auroc=_numbers(AUROC_BASELINES, (47.10, 45.36, 46.41, 58.17)),
            note="the paper's geological dataset is not public: n/a",
        ),
        Dataset(
            "cifar10", "CIFAR-10", 10, 6, prepare.cifar10,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (87.65, 87.40, 95.07)),
            paper_auroc=_numbers(AUROC_BASELINES, (89.26, 88.34, 93.00, 89.26)),
            note="test set (10,000 images)", n_images=10_000,
        ),
        Dataset(
            "cifar100", "CIFAR-100", 100, 20, prepare.cifar100,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (59.54, 61.52, 80.14)),
            paper_auroc=_numbers(AUROC_BASELINES, (78.10, 78.94, 82.10, 85.60)),
            note="test set (10,000 images)", n_images=10_000,
        ),
        Dataset(
            "caltech101", "Caltech-101", 101, 21, prepare.caltech101,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (81.45, 85.68, 87.12)),
            paper_auroc=_numbers(AUROC_BASELINES, (89.96, 91.53, 90.06, 92.80)),
            note="all images of the 101 categories (BACKGROUND_Google left out)",
        ),
        Dataset(
            "caltech256", "Caltech-256", 256, 52, prepare.caltech256,
            paper_accuracy=_numbers(ACCURACY_BASELINES, (84.04, 85.50, 89.75)),
            paper_auroc=_numbers(AUROC_BASELINES, (91.15, 91.24, 91.50, 93.86)),
            note="all images of the 256 categories (257.clutter left out)",
        ),
    )
}
"""In the paper's table order."""


def get_dataset(name: str) -> Dataset:
    """The registry entry, or a ``ZsfsError`` listing the runnable names."""
    from zsfs.errors import ZsfsError

    dataset = DATASETS.get(name)
    if dataset is None or not dataset.runnable:
        runnable = ", ".join(key for key, value in DATASETS.items() if value.runnable)
        why = f" ({dataset.note})" if dataset is not None else ""
        raise ZsfsError(f"no pipeline for dataset {name!r}{why}; choose one of: {runnable}")
    return dataset
