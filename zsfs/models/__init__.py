"""The two image models (open_clip CLIP and a timm backbone): loading, preprocessing, encoding.

Weights come from a pretrained tag (downloaded), a local file (air-gapped machines), or
``"random"`` (tests, throughput benchmarks). Every model carries a ``record``: a JSON-able dict
that says exactly what was loaded, so that a store can later reload the same model
(``load_clip_from_record`` / ``load_backbone_from_record``).

Random weights are reproducible too (fixed seed + fingerprint, see ``zsfs.weights``), so tests
and benchmarks with random models can reload them; a library version that initialises them
differently fails loudly instead of silently producing other features.

``clip`` loads CLIP and encodes class names, ``backbone`` loads timm models, ``encoders`` holds
the loaded models and their transforms, ``common`` what loading both shares; this module gives
their public names and the two questions asked of either role.
"""

from __future__ import annotations

from zsfs.models.backbone import (backbone_as_recorded, backbone_offline_advice, backbone_weights_kind, keeps_clip_head,
                                  load_backbone, load_backbone_from_record, missing_backbone_weights)
from zsfs.models.clip import (clip_architecture, clip_as_recorded, clip_tokenizer, clip_weights_kind, cut_by_clip,
                              encode_vocabulary, load_clip, load_clip_from_record, same_text_to_clip)
from zsfs.models.common import by_name_only, hub_cache_advice
from zsfs.models.encoders import Backbone, ClipModel, ImageModel, PixelScaling, within_aspect_ratio, worker_transform
from zsfs.weights import BothWeightsMissingError, WeightsDownloadError

__all__ = [
    "Backbone", "ClipModel", "ImageModel", "PixelScaling", "backbone_as_recorded", "by_name_only", "clip_architecture",
    "clip_as_recorded", "clip_tokenizer", "cut_by_clip", "encode_vocabulary", "keeps_clip_head", "load_backbone",
    "load_backbone_from_record", "load_clip", "load_clip_from_record", "load_models", "offline_advice",
    "same_text_to_clip", "weights_kind", "within_aspect_ratio", "worker_transform",
]


def load_models(clip_model: str, clip_weights: str, backbone: str, backbone_weights: str,
                device: str = "cpu") -> tuple[ClipModel, Backbone]:
    """Both models of a store (:func:`load_clip`, :func:`load_backbone`). Where CLIP's pretrained
    weights cannot be had and the backbone's are not there either (an air-gapped machine), the error
    names both (:class:`zsfs.weights.BothWeightsMissingError`)."""
    try:
        clip = load_clip(clip_model, clip_weights, device=device)
    except WeightsDownloadError as clip_missing:
        backbone_missing = missing_backbone_weights(backbone, backbone_weights)
        if backbone_missing is None:
            raise
        raise BothWeightsMissingError(clip_missing, backbone_missing) from None
    return clip, load_backbone(backbone, backbone_weights, device=device)


def weights_kind(role: str, name: str, weights: str) -> str | None:
    """How the loader of ``role`` (``"clip"``: :func:`load_clip`, ``"backbone"``: :func:`load_backbone`)
    takes ``weights`` for the model ``name``: ``"tag"`` (pretrained, by name: a CLIP tag before a file
    of that name, a backbone's ``"default"``), ``"file"`` or ``"random"``; None where it cannot tell
    (an unknown name or weights: loading says why)."""
    return backbone_weights_kind(weights) if role == "backbone" else clip_weights_kind(name, weights)


def offline_advice(role: str, name: str) -> str:
    """How to have the pretrained weights of the model ``name`` (``role``: "clip" or "backbone")
    without a network: every open_clip tag comes from the Hugging Face hub, some timm ones from a URL."""
    return backbone_offline_advice(name) if role == "backbone" else hub_cache_advice()
