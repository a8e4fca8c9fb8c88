"""timm backbones as feature extractors: by model name, with the pretrained weights the name
implies, a local file or ``"random"``; pre-logits features, or a CLIP image tower's projection."""

from __future__ import annotations

import os
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from zsfs.digests import unchanged_file_sha256
from zsfs.errors import ModelLoadError, as_sentence, one_line
from zsfs.models.common import (as_identity, built_by_name, by_name_only, close_names, hub_cache_advice, pretrained_error,
                                unreadable_cache_error)
from zsfs.models.encoders import Backbone, worker_transform
from zsfs.names import home_expanded
from zsfs.weights import (DEFAULT, FILE, RANDOM, RANDOM_SEED, WeightsDownloadError, check_same_weights,
                          checkpoint_shapes, existing_file, hub_address, hub_offline_unless_reachable,
                          init_fingerprint, offline_and_uncached, seeded_init, the_other_models_checkpoint,
                          weights_from_record)

BACKBONE_HEAD_MARKER = "_clip_"  # timm CLIP image towers: the head projects into CLIP space
FINE_TUNED_MARKER = "_ft_"  # "openai_ft_in1k": a CLIP tower fine-tuned into a classifier


def load_backbone(name: str, weights: str = DEFAULT, device: str = "cpu") -> Backbone:
    """Load a timm model as a feature extractor.

    weights: ``"default"`` (the pretrained weights the name implies), a local file, or
    ``"random"``. CLIP image towers keep their head (the projection into CLIP space, see
    ``keeps_clip_head``); other models give pre-logits features.
    """
    import timm

    pretrained_cfg = _resolve_backbone_name(name)
    keep_head = keeps_clip_head(name, pretrained_cfg.tag)
    file = None
    options: dict[str, Any] = {} if keep_head else {"num_classes": 0}
    if weights == DEFAULT and not (pretrained_cfg.hf_hub_id or pretrained_cfg.url or pretrained_cfg.file):
        raise ModelLoadError(
            f"timm model {name!r} has no pretrained weights; pass --backbone-weights "
            "/path/to/model.safetensors or --backbone-weights random."
        )
    if weights not in (DEFAULT, RANDOM):
        file = existing_file(weights, "backbone", "--backbone-weights")
        if file is None:
            raise ModelLoadError(
                f"backbone weights {weights!r} must be 'default', 'random' or an existing file."
            )
        options = _file_options(name, file, pretrained_cfg, keep_head)
    try:
        with seeded_init(), hub_offline_unless_reachable() if weights == DEFAULT else nullcontext():
            if weights == DEFAULT:
                _refuse_uncached_offline(pretrained_cfg)
            model = timm.create_model(name, pretrained=weights != RANDOM, **options)
    except OSError as error:
        if file is not None:
            raise ModelLoadError(f"cannot read backbone weights file {file}: {one_line(error)}") from None
        raise _download_error(name, pretrained_cfg, error) from None
    except Exception as error:  # state-dict mismatch, unreadable or foreign checkpoint format
        if weights == RANDOM:
            raise
        if file is None:
            raise pretrained_error("backbone", f"backbone weights of {name}", pretrained_cfg.hf_hub_id, error,
                                   "--backbone-weights /path/to/model.safetensors.") from None
        raise ModelLoadError(
            f"weights file {file} does not fit the backbone {name}: {as_sentence(one_line(error, 600))} "
            + (the_other_models_checkpoint(file, "backbone") or "Check that --backbone matches the checkpoint.")
        ) from None
    if not keep_head and model.num_classes:
        model.reset_classifier(0)  # the file was loaded with its head (strictly); drop it now
    model = model.eval().to(device)
    data_config = timm.data.resolve_data_config(model=model)
    preprocess = timm.data.create_transform(**data_config, is_training=False)
    record = {
        "name": name,
        "weights": FILE if file else weights,
        "file": str(file) if file else None,
        "sha256": unchanged_file_sha256(file) if file else None,
        "dim": int(model.num_classes if keep_head else getattr(model, "head_hidden_size", model.num_features)),
        "image_size": list(data_config["input_size"][1:]),
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "interpolation": data_config["interpolation"],
        "crop": data_config["crop_mode"],
        "crop_pct": float(data_config["crop_pct"]),
        "output": "head" if keep_head else "pre_logits",
        "pretrained_tag": pretrained_cfg.tag if weights == DEFAULT else None,
    }
    if weights == RANDOM:
        record.update(seed=RANDOM_SEED, init_fingerprint=init_fingerprint(model))
    elif weights == DEFAULT:
        record["weights_fingerprint"] = init_fingerprint(model)
    preprocess, scaling = worker_transform(preprocess, device)
    return Backbone(model=model, preprocess=preprocess, record=record, device=torch.device(device), scaling=scaling)


def _download_error(name: str, pretrained_cfg, error: OSError) -> WeightsDownloadError:
    """The error for the default weights of ``name`` that could not be had (``error``: why)."""
    source = (f" from {hub_address(pretrained_cfg.hf_hub_id)}" if pretrained_cfg.hf_hub_id
              else f" from {pretrained_cfg.url}" if pretrained_cfg.url else "")
    weights, advice = f"backbone weights of {name}{source}", "--backbone-weights /path/to/model.safetensors"
    return unreadable_cache_error("backbone", weights, pretrained_cfg.hf_hub_id, advice) or WeightsDownloadError(
        "backbone", weights, one_line(error), advice, _timm_cache_advice(pretrained_cfg))


def missing_backbone_weights(name: str, weights: str) -> WeightsDownloadError | None:
    """The error :func:`load_backbone` would raise for default weights that an unreachable hub and
    its cache do not give, found without building the model (ViT-G: half a minute, 5 GB); None where
    that is not so, or cannot be told before loading."""
    if weights != DEFAULT:
        return None
    try:
        pretrained_cfg = _resolve_backbone_name(name)
    except ModelLoadError:  # an unknown name: loading says so
        return None
    try:
        with hub_offline_unless_reachable():
            _refuse_uncached_offline(pretrained_cfg)
    except OSError as error:  # (the hub's LocalEntryNotFoundError is one)
        return _download_error(name, pretrained_cfg, error)
    return None


def _refuse_uncached_offline(pretrained_cfg) -> None:
    """Offline, weights from the hub that its cache lacks fail here, before the model is built (ViT-G
    takes half a minute and 5 GB to build), with the error the hub gives. The names looked for are the
    ones timm loads from: the configured file or ``pytorch_model.bin``, and their safetensors forms."""
    import huggingface_hub
    import huggingface_hub.constants as hub
    from huggingface_hub.utils import LocalEntryNotFoundError
    from timm.models import _builder

    # timm's old-cache switch loads a file downloaded from the URL first: the hub's cache is not all
    if not (hub.HF_HUB_OFFLINE and pretrained_cfg.hf_hub_id) or getattr(_builder, "_USE_OLD_CACHE", False):
        return
    repository, _, revision = pretrained_cfg.hf_hub_id.partition("@")
    configured = pretrained_cfg.hf_hub_filename or "pytorch_model.bin"
    names = {configured, f"{Path(configured).stem}.safetensors", "model.safetensors", "open_clip_model.safetensors"}
    if not any(isinstance(huggingface_hub.try_to_load_from_cache(repository, name, revision=revision or None), str)
               for name in sorted(names)):
        raise LocalEntryNotFoundError(offline_and_uncached())


def backbone_weights_kind(weights: str) -> str | None:
    """How :func:`load_backbone` takes ``weights``: ``"tag"`` (``"default"``: the pretrained weights
    the name implies), ``"file"`` or ``"random"``; None for anything else (loading says why)."""
    if weights in (DEFAULT, RANDOM):
        return "tag" if weights == DEFAULT else RANDOM
    return FILE if Path(home_expanded(weights)).is_file() else None


def backbone_offline_advice(name: str) -> str:
    """How to have the default weights of the timm model ``name`` without a network."""
    with suppress(ModelLoadError):  # a name this timm does not know: its error comes on loading
        return _timm_cache_advice(_resolve_backbone_name(name))
    return hub_cache_advice()


def _timm_cache_advice(pretrained_cfg) -> str:
    """How to work offline with a timm model's default weights: the Hugging Face cache, or torch's
    hub folder for weights timm downloads from a URL."""
    if pretrained_cfg.hf_hub_id or not pretrained_cfg.url:
        return hub_cache_advice()
    import torch.hub

    file = Path(urlparse(pretrained_cfg.url).path).name
    return (f"Without a network, copy {file} from a machine that downloaded it into timm's cache folder "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} (TORCH_HOME); zsfs then reads it from there.")


def load_backbone_from_record(record: dict, device: str = "cpu", *, store: str | os.PathLike | None = None) -> Backbone:
    """Reload the backbone a store recorded (same weights; a file must have the same sha256);
    ``store``: its path, for the messages."""
    with by_name_only(built_by_name(store)):
        backbone = load_backbone(record["name"], weights_from_record(record, "backbone"), device)
    check_same_weights(backbone.record, record, "backbone")
    backbone.record = dict(record)
    return backbone


def keeps_clip_head(name: str, tag: str | None) -> bool:
    """Whether a timm model is a CLIP image tower whose head projects into the CLIP space.

    ``vit_giant_patch14_clip_224.laion2b`` does (1024-d, as in the paper);
    ``vit_base_patch16_clip_224.openai_ft_in1k`` does not: its head is an ImageNet classifier.
    """
    return BACKBONE_HEAD_MARKER in name.split(".", 1)[0] and FINE_TUNED_MARKER not in f"_{tag or ''}_"


OPEN_CLIP_PROJECTION = "visual.proj"
"""The image projection's name in an open_clip checkpoint (timm's CLIP towers call it ``head``)."""


def backbone_as_recorded(name: str, weights: str, recorded: dict) -> bool:
    """Whether ``load_backbone(name, weights)`` gives the model ``recorded`` (a store identity's
    ``backbone``) describes, judged without loading its weights: name, pretrained tag or file
    sha256, the output taken (random weights: built, see :func:`as_identity`). False where it
    cannot tell: loading decides, with its own errors."""
    try:
        pretrained_cfg = _resolve_backbone_name(name)
        file = None if weights in (DEFAULT, RANDOM) else existing_file(weights, "backbone", "--backbone-weights")
    except ModelLoadError:
        return False
    if weights not in (DEFAULT, RANDOM) and file is None:
        return False
    if weights == RANDOM:
        return as_identity(load_backbone(name, RANDOM).record) == recorded
    expected = {"name": name, "weights": FILE if file else weights, "sha256": unchanged_file_sha256(file) if file else None,
                "pretrained_tag": pretrained_cfg.tag if weights == DEFAULT else None,
                "output": "head" if keeps_clip_head(name, pretrained_cfg.tag) else "pre_logits"}
    return all(recorded.get(key) == value for key, value in expected.items())


def _file_options(name: str, file: Path, pretrained_cfg, keep_head: bool) -> dict[str, Any]:
    """timm.create_model options that load ``file`` strictly, with or without a classifier.

    timm loads non-strictly whenever the requested head differs from the checkpoint's, which
    would silently leave a mismatched file's layers random. So the head is sized to what the
    file holds (and dropped afterwards for pre-logits features).
    """
    classifiers = pretrained_cfg.classifier or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    shapes = checkpoint_shapes(file)
    heads = [shapes[f"{classifier}.weight"] for classifier in classifiers if f"{classifier}.weight" in shapes]
    if keep_head and (heads or OPEN_CLIP_PROJECTION in shapes):  # timm converts an open_clip checkpoint itself
        return {"pretrained_cfg_overlay": {"file": str(file)}}
    if heads:  # a fine-tuned file's classifier has its own number of classes: load it as it is, then drop it
        n_classes = heads[0][0]
        return {"num_classes": n_classes, "pretrained_cfg_overlay": {"file": str(file), "num_classes": n_classes}}
    if keep_head:
        raise ModelLoadError(  # most often another model's file (walkthrough: lite0's for the default ViT-G)
            f"weights file {file} has no classifier/projection head, which {name} needs "
            "(its head projects into the CLIP space). Check that --backbone matches the checkpoint."
        )
    return {"num_classes": 0, "pretrained_cfg_overlay": {"file": str(file), "num_classes": 0}}


def _resolve_backbone_name(name: str):
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        candidates = timm.list_models() + timm.list_pretrained()
        raise ModelLoadError(
            f"unknown timm model {name!r}{close_names(name, candidates)}. timm.list_models() "
            "lists architectures, timm.list_pretrained() the names with weights."
        )
    try:
        return get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # the architecture exists but not this tag
        tags = ", ".join(timm.list_pretrained(name.split(".", 1)[0] + ".*")) or "none"
        raise ModelLoadError(f"timm model {name!r}: no such pretrained tag (known: {tags}).") from None
