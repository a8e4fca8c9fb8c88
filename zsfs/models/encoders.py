"""The loaded image models and the pixels they take: each model's own eval transform, split into the
part decoding workers run (uint8 pixels out) and the scaling the model's side does for a whole batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image


class PixelScaling:
    """The last two steps of a model's eval transform, [0, 255] -> [0, 1] -> ``(x - mean) / std``,
    done for a whole batch where the model runs: decoding workers then hand over uint8 pixels, a
    quarter of float32's bytes through shared memory and to the GPU, and skip two passes each.
    The same operations as torchvision's ``ToTensor`` and ``Normalize``, so the same numbers.
    ``mean`` and ``std`` live on the model's device from the start: a copy per batch would make
    the host wait for the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu"):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W), as the model's ``preprocess`` gives them -> float32, scaled."""
        if pixels.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixels from the model's preprocess, got {pixels.dtype}")
        scaled = pixels.float().div_(255)
        return scaled.sub_(self.mean.to(scaled.device)).div_(self.std.to(scaled.device))


MAX_ASPECT_RATIO = 16
"""Longest side / shortest side that a model's resize receives. A transform that scales the
shortest side to the model's input and keeps the central square would first turn a 1 x 20,000
strip into 224 x 4,480,000 pixels (gigabytes per decoding worker); the central 1 x 16 is all it
keeps of it anyway."""


def within_aspect_ratio(image: Image.Image) -> Image.Image:
    """The image's central part of at most ``MAX_ASPECT_RATIO`` (the image itself when within)."""
    width, height = image.size
    short = max(min(width, height), 1)
    if max(width, height) <= MAX_ASPECT_RATIO * short:
        return image
    kept = MAX_ASPECT_RATIO * short
    kept += (max(width, height) - kept) % 2  # an even margin each side: the centre stays where it was
    if width > height:
        left = (width - kept) // 2
        return image.crop((left, 0, left + kept, height))
    top = (height - kept) // 2
    return image.crop((0, top, width, top + kept))


def worker_transform(preprocess: Callable, device: str | torch.device = "cpu") -> tuple[Callable, PixelScaling | None]:
    """The part of a model's eval transform that decoding workers run, and the scaling it leaves
    to the model's side (:class:`PixelScaling`).

    A transform that ends in (Maybe)ToTensor and Normalize ends in uint8 pixels instead. One that
    resizes the shortest side and crops the centre (open_clip's default, timm's, also for
    non-square inputs) starts with :func:`within_aspect_ratio`, which keeps all that the crop
    keeps; others (open_clip's ``squash``, ``longest``: their resize is bounded) keep their resize
    as it is. A transform of another shape is kept whole: ``(preprocess, None)``.
    """
    from torchvision import transforms

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 3 or not isinstance(steps[-1], transforms.Normalize) or steps[-1].inplace or \
            type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return preprocess, None
    normalize = steps[-1]
    scaling = PixelScaling(torch.as_tensor(normalize.mean).reshape(-1).tolist(),
                           torch.as_tensor(normalize.std).reshape(-1).tolist(), device)
    resize, crop = steps[0], steps[1]
    shortest_side = isinstance(crop, transforms.CenterCrop) and (
        (isinstance(resize, transforms.Resize) and (isinstance(resize.size, int) or len(resize.size) == 1))
        or (type(resize).__name__ == "ResizeKeepRatio" and getattr(resize, "longest", None) == 0))  # non-square input
    return transforms.Compose([*([within_aspect_ratio] if shortest_side else []), *steps[:-2],
                               transforms.PILToTensor()]), scaling


@dataclass(kw_only=True)
class ImageModel:
    """A model with its own eval transform: ``preprocess`` gives uint8 pixels where ``scaling`` is
    set (see :class:`PixelScaling`), which the model's first step then scales."""

    model: torch.nn.Module
    preprocess: Callable
    record: dict
    device: torch.device
    scaling: PixelScaling | None = None

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels from ``preprocess`` -> (B, D) float32, L2-normalised."""
        pixels = pixels.to(self.device, non_blocking=True)
        features = self._image_features(pixels if self.scaling is None else self.scaling(pixels))
        return F.normalize(features.float(), dim=-1)


@dataclass(kw_only=True)
class ClipModel(ImageModel):
    """An open_clip model with its own eval transform and tokenizer."""

    tokenizer: Callable

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> (N, D) float32, L2-normalised, encoded ``batch_size`` at a time."""
        chunks = [
            self.model.encode_text(self.tokenizer(list(texts[i : i + batch_size])).to(self.device)).float()
            for i in range(0, len(texts), batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.record["dim"], device=self.device)
        return F.normalize(torch.cat(chunks), dim=-1)


@dataclass(kw_only=True)
class Backbone(ImageModel):
    """A timm feature extractor with its own eval transform (its pre-logits features)."""
