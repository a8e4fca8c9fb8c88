"""The two image models (open_clip CLIP and a timm backbone): loading, preprocessing, encoding.

Weights come from a pretrained tag (downloaded), a local file (air-gapped machines), or
``"random"`` (tests, throughput benchmarks). Every model carries a ``record``: a JSON-able dict
that says exactly what was loaded, so that a store can later reload the same model
(``load_clip_from_record`` / ``load_backbone_from_record``).

Random weights are reproducible too (fixed seed + fingerprint, see ``zsfs.weights``), so tests
and benchmarks with random models can reload them; a library version that initialises them
differently fails loudly instead of silently producing other features.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Container, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsfs.errors import ModelLoadError, one_line
from zsfs.names import repeated_rows
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.digests import unchanged_file_sha256
from zsfs.weights import (
    DEFAULT,
    FILE,
    HUB_CACHE_ADVICE,
    RANDOM,
    RANDOM_SEED,
    DamagedDownloadError,
    WeightsDownloadError,
    check_same_weights,
    checkpoint_reason,
    checkpoint_shapes,
    existing_file,
    hub_address,
    hub_offline_unless_reachable,
    init_fingerprint,
    not_a_checkpoint,
    seeded_init,
    unreadable_checkpoint,
    weights_from_record,
)

BACKBONE_HEAD_MARKER = "_clip_"  # timm CLIP image towers: the head projects into CLIP space
FINE_TUNED_MARKER = "_ft_"  # "openai_ft_in1k": a CLIP tower fine-tuned into a classifier


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


def same_text_to_clip(tokenizer: Callable, classes: Sequence[str]) -> list[tuple[str, str]]:
    """(earlier, later) class names whose prompts a CLIP tokenizer turns into the same tokens:
    open_clip's tokenizers ignore case, spacing and the Unicode form ('Cat' = 'cat', 'café'
    composed = decomposed) and cut long texts at their context length. Such classes get one and
    the same embedding, so no method can tell their images apart."""
    if len(classes) < 2:
        return []
    tokens = np.asarray(tokenizer([SINGLE_PROMPT.format(name) for name in classes]))
    return [(classes[first], classes[later]) for first, later in repeated_rows(tokens)]


def encode_vocabulary(
    clip: ClipModel, classes: Sequence[str], batch_size: int = 256,
    on_classes: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class names -> (single, ensemble) text embeddings, each (C, D) float32, L2-normalised.

    single: ``SINGLE_PROMPT``; ensemble: the mean of the 80 template embeddings, renormalised.
    A block of classes (about one batch of prompts) at a time, its rows written straight into the
    outputs: memory stays flat in the class count (small per-batch results kept alive until one
    final concatenation fragmented the heap: 9 GB for 5,000 classes). ``on_classes(n)``: progress.
    """
    n_templates = len(ENSEMBLE_TEMPLATES)
    single = np.empty((len(classes), clip.record["dim"]), np.float32)
    ensemble = np.empty_like(single)
    per_block = max(1, batch_size // (n_templates + 1))
    for start in range(0, len(classes), per_block):
        block = list(classes[start : start + per_block])
        prompts = [SINGLE_PROMPT.format(c) for c in block] + [t.format(c) for c in block for t in ENSEMBLE_TEMPLATES]
        embedded = clip.encode_texts(prompts, batch_size)
        rows = slice(start, start + len(block))
        single[rows] = embedded[: len(block)].cpu().numpy()
        per_template = embedded[len(block) :].reshape(len(block), n_templates, -1)
        ensemble[rows] = F.normalize(per_template.mean(dim=1), dim=-1).cpu().numpy()
        if on_classes is not None:
            on_classes(len(block))
    return single, ensemble


# --- CLIP ------------------------------------------------------------------------------------


@contextmanager
def _root_handlers_kept() -> Iterator[None]:
    """open_clip logs through ``logging.info()`` at module level, which gives a root logger without
    handlers one for stderr (``logging.basicConfig``): a caller's own ``basicConfig`` later did
    nothing. Handlers added in the block are taken away again."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        yield
    finally:
        for handler in [handler for handler in root.handlers if handler not in before]:
            root.removeHandler(handler)


@_root_handlers_kept()
def load_clip(name: str, weights: str = "openai", device: str = "cpu") -> ClipModel:
    """Load an open_clip model.

    name: an open_clip architecture (``ViT-B-32``) or a path to a model-config JSON file (its
    stem becomes the architecture name), also a hub repository's ``open_clip_config.json``
    (named after its folder; its ``preprocess_cfg`` applies). weights: a pretrained tag, a
    checkpoint file, or ``"random"``.
    """
    import open_clip

    arch, config, preprocessing = _resolve_clip_name(name)
    kind, file = _clip_weights_source(arch, weights)
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights) if kind == "tag" else {}
    pretrained = None if kind == RANDOM else (str(file) if kind == FILE else weights)
    # OpenAI's weights were trained with QuickGELU; open_clip only warns when the config lacks it.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    tokenizer = _clip_tokenizer(arch)  # before the weights: a missing tokenizer fails in a second, not minutes
    try:
        with seeded_init(), hub_offline_unless_reachable() if kind == "tag" else nullcontext(), \
                _without_random_init_warning() if kind == RANDOM else nullcontext():
            if kind == "tag":
                _download_clip_tag(arch, weights)
            with warnings.catch_warnings():  # a TorchScript file is refused below, in words
                warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=pretrained, force_quick_gelu=quick_gelu, **preprocessing
                )
    except ModelLoadError:
        raise
    except Exception as error:  # open_clip raises many types; all mean "these weights do not load"
        if kind == RANDOM:
            raise
        if kind == "tag":
            raise _pretrained_error("clip", f"CLIP weights {arch} / {weights}", tag_cfg.get("hf_hub"), error,
                                    _clip_file_advice(arch, tag_cfg)) from None
        if unreadable_checkpoint(error):  # told so, not blamed on the architecture
            raise not_a_checkpoint(file, error) from None
        raise ModelLoadError(
            f"weights file {file} does not fit the CLIP architecture {arch}: {one_line(error)}. "
            "Check that --clip-model matches the checkpoint."
        ) from None
    model = model.eval().to(device)
    record = {
        "name": arch,
        "weights": kind if kind != "tag" else weights,
        "file": str(file) if file else None,
        "sha256": unchanged_file_sha256(file) if file else None,
        "dim": int(open_clip.get_model_config(arch)["embed_dim"]),
        **_clip_preprocessing(model.visual.preprocess_cfg),
        "quick_gelu": quick_gelu or bool(open_clip.get_model_config(arch).get("quick_gelu", False)),
    }
    if config is not None:
        record["config"] = config
    if kind == RANDOM:
        record.update(seed=RANDOM_SEED, init_fingerprint=init_fingerprint(model))
    elif kind == "tag":
        record["weights_fingerprint"] = init_fingerprint(model)
    preprocess, scaling = worker_transform(preprocess, device)
    return ClipModel(model=model, preprocess=preprocess, tokenizer=tokenizer, record=record,
                     device=torch.device(device), scaling=scaling)


def clip_as_recorded(name: str, weights: str, recorded: dict) -> bool:
    """Whether ``load_clip(name, weights)`` gives the model ``recorded`` (a store identity's
    ``clip``) describes, judged without loading its weights: architecture, config, weights tag or
    file sha256 (random weights: built, see :func:`_as_identity`). What a library version works out
    at load time (preprocessing, a tag's values) is not compared. False where it cannot tell (an
    unknown name): loading decides, with its own errors."""
    import open_clip

    try:
        arch, config, _ = _resolve_clip_name(name)
        kind, file = _clip_weights_source(arch, weights)
    except ModelLoadError:
        return False
    if kind == RANDOM:
        return _as_identity(load_clip(name, RANDOM).record) == recorded
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights) if kind == "tag" else {}
    expected = {"name": arch, "weights": weights if kind == "tag" else kind, "config": config,
                "sha256": unchanged_file_sha256(file) if file else None,
                "quick_gelu": bool(tag_cfg.get("quick_gelu", False))
                or bool(open_clip.get_model_config(arch).get("quick_gelu", False))}
    return all(recorded.get(key) == value for key, value in expected.items())


def weights_kind(role: str, name: str, weights: str) -> str | None:
    """How the loader of ``role`` (``"clip"``: :func:`load_clip`, ``"backbone"``: :func:`load_backbone`)
    takes ``weights`` for the model ``name``: ``"tag"`` (pretrained, by name: a CLIP tag before a file
    of that name, a backbone's ``"default"``), ``"file"`` or ``"random"``; None where it cannot tell
    (an unknown name or weights: loading says why)."""
    if role == "backbone":
        if weights in (DEFAULT, RANDOM):
            return "tag" if weights == DEFAULT else RANDOM
        return FILE if Path(weights).expanduser().is_file() else None
    try:
        return _clip_weights_source(_resolve_clip_name(name)[0], weights)[0]
    except ModelLoadError:
        return None


def _as_identity(record: dict) -> dict:
    """A model record as a store's identity holds it: JSON values, no file path. Random weights
    are compared so, built: their values are their initialisation, which another torch, open_clip
    or timm may make otherwise (tests and benchmarks use them; nothing is read or downloaded)."""
    return json.loads(json.dumps({key: value for key, value in record.items() if key != "file"}))


def clip_architecture(name: str) -> str:
    """The open_clip architecture ``name`` (an architecture or a config file) stands for: the
    ``name`` of the model record ``load_clip(name)`` makes."""
    return _resolve_clip_name(name)[0]


def clip_tokenizer(name: str) -> Callable:
    """The tokenizer of the CLIP model ``name`` (an architecture or a config file), without its weights."""
    return _clip_tokenizer(clip_architecture(name))


def load_clip_from_record(record: dict, device: str = "cpu", *, store: str | os.PathLike | None = None) -> ClipModel:
    """Reload the CLIP model a store recorded (same tag, same file bytes, or same random init);
    ``store``: its path, for the messages."""
    weights = weights_from_record(record, "CLIP")
    with by_name_only(_built_by_name(store)):
        if "config" in record:  # a custom config travels inside the record
            with tempfile.TemporaryDirectory() as folder:
                config_file = Path(folder) / f"{record['name']}.json"
                config_file.write_text(json.dumps(record["config"]))
                clip = load_clip(str(config_file), weights, device)
        else:
            clip = load_clip(record["name"], weights, device)
    check_same_weights(clip.record, record, "CLIP")
    clip.record = dict(record)
    return clip


@contextmanager
def by_name_only(why: str, roles: Container[str] = ("clip", "backbone")) -> Iterator[None]:
    """Pretrained weights of the ``roles`` (``"clip"``, ``"backbone"``) that a store recorded by name
    and that cannot be downloaded now: their error offers no file, which the store would refuse
    (``why`` says which store); other errors pass as they are."""
    try:
        yield
    except WeightsDownloadError as error:
        if error.role not in roles:
            raise
        raise error.by_name_only(why) from None


@contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that no weights were loaded; random was asked for."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


HUB_CONFIG_NAME = "open_clip_config.json"
"""The config file of an open_clip repository on the Hugging Face hub: ``model_cfg`` (the
architecture) and ``preprocess_cfg`` (the weights' own image preprocessing)."""
_PREPROCESS_OPTIONS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                       "resize_mode": "image_resize_mode"}


def _resolve_clip_name(name: str) -> tuple[str, dict | None, dict[str, Any]]:
    """The open_clip architecture ``name`` stands for, the config it came from (None for a
    registered name), and ``create_model_and_transforms`` options for a config's preprocessing."""
    import open_clip

    if name.lower().endswith(".json") or Path(name).expanduser().is_file():
        config_file = Path(name).expanduser()
        if not config_file.is_file():
            raise ModelLoadError(f"CLIP model config file {config_file} not found.")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot read CLIP model config {config_file}: {error}") from None
        architecture = config.get("model_cfg", config) if isinstance(config, dict) else {}
        if not all(key in architecture for key in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ModelLoadError(
                f"{config_file} is not an open_clip model config (it needs embed_dim, vision_cfg "
                f"and text_cfg, or a model_cfg that has them, as a hub repository's {HUB_CONFIG_NAME})."
            )
        arch = _config_name(config_file)
        if arch in open_clip.list_models() and open_clip.get_model_config(arch) != architecture:
            # open_clip keeps one config per name, and a hub repository may carry one of its names with the
            # config of another release (timm/ViT-B-16-SigLIP): another config gets a name of its own
            arch += "-" + hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()[:8]
        with tempfile.TemporaryDirectory() as folder:  # open_clip registers a config by its file's stem
            registered = Path(folder) / f"{arch}.json"
            registered.write_text(json.dumps(architecture))
            open_clip.add_model_config(registered)
        preprocessing = config.get("preprocess_cfg", {}) if architecture is not config else {}
        return arch, config, {option: preprocessing[key] for key, option in _PREPROCESS_OPTIONS.items()
                              if key in preprocessing}
    arch = name.replace("/", "-")  # open_clip accepts "ViT-B/32" for "ViT-B-32"
    if arch not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown CLIP model {name!r}{_suggestion(arch, open_clip.list_models())}. "
            "open_clip.list_models() lists them all; a path to an open_clip model config .json "
            "also works."
        )
    return arch, None, {}


def _config_name(config_file: Path) -> str:
    """A config file's model name: its stem; a hub repository's is named after the repository,
    its folder or, in a Hugging Face cache (models--ORG--NAME/snapshots/REV/), the NAME."""
    if config_file.name != HUB_CONFIG_NAME:
        return config_file.stem
    folder = config_file.absolute().parent
    in_cache = folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")
    return folder.parent.parent.name.split("--")[-1] if in_cache else folder.name


def _clip_weights_source(arch: str, weights: str) -> tuple[str, Path | None]:
    import open_clip

    if weights == RANDOM:
        return RANDOM, None
    if open_clip.get_pretrained_cfg(arch, weights) and "/" not in weights:
        return "tag", None
    file = existing_file(weights, "CLIP", "--clip-weights")
    if file is not None:
        return FILE, file
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
    raise ModelLoadError(
        f"{weights!r} is neither a pretrained tag of CLIP {arch} nor an existing file. "
        f"Tags: {tags}. Or pass a checkpoint file, or 'random'."
    )


def _download_clip_tag(arch: str, tag: str) -> None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    try:
        open_clip.download_pretrained(cfg)
    except Exception as error:  # HF hub, URL and cache errors come in many types
        raise WeightsDownloadError("clip", f"CLIP weights {arch} / {tag}", one_line(error),
                                   _clip_file_advice(arch, cfg), _hub_cache_advice()) from None


def _pretrained_error(role: str, weights: str, hub_id: str | None, error: Exception,
                      file_advice: str) -> ModelLoadError:
    """Pretrained weights that were downloaded (or found in the cache) and did not load: a file
    that cannot be read is a cut-short or damaged download; anything else is said as it is."""
    import huggingface_hub.constants as hub

    if not unreadable_checkpoint(error):
        return ModelLoadError(f"cannot load the {weights}: {one_line(error)}")
    where = (f"the folder {Path(hub.HF_HUB_CACHE) / ('models--' + hub_id.strip('/').split('@')[0].replace('/', '--'))}"
             " of the Hugging Face cache" if hub_id else "the downloaded file from its cache")
    return DamagedDownloadError(role, weights, checkpoint_reason(error), file_advice,
                                f"if the download was cut short or damaged, delete {where} so that they are downloaded "
                                "again (without a network: replace it with an intact copy from a machine that has them)")


def _clip_file_advice(arch: str, tag_cfg: dict) -> str:
    """How to load a tag's weights from a file: a file loads with the architecture's own settings,
    so a tag trained with QuickGELU needs the architecture's -quickgelu variant, and a tag with its
    own preprocessing cannot be matched by a file at all."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    quick = f"{arch}-quickgelu"
    file_arch = quick if tag_cfg.get("quick_gelu") and quick in open_clip.list_models() else arch
    source = f" (from {hub_address(tag_cfg['hf_hub'])})" if tag_cfg.get("hf_hub") else ""
    advice = f"--clip-model {file_arch} --clip-weights /path/to/open_clip_pytorch_model.bin{source}"
    preprocessing = {**asdict(PreprocessCfg()), **(open_clip.get_model_config(arch).get("preprocess_cfg") or {})}
    differs = [key for key in ("mean", "std", "interpolation", "resize_mode")
               if key in tag_cfg and tuple(np.atleast_1d(tag_cfg[key])) != tuple(np.atleast_1d(preprocessing[key]))]
    if differs:
        advice += (f"; but a file gets {arch}'s own image preprocessing, not these weights' ({', '.join(differs)} "
                   f"{'differs' if len(differs) == 1 else 'differ'}), so its features would be off: prefer the cache")
    return advice + "."


def _clip_tokenizer(arch: str) -> Callable:
    """open_clip's tokenizer for ``arch``; one from the Hugging Face hub needs ``transformers`` and
    the hub or its cache."""
    import open_clip

    hub_name = (open_clip.get_model_config(arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    try:
        with hub_offline_unless_reachable() if hub_name else nullcontext():
            return open_clip.get_tokenizer(arch)
    except Exception as error:  # ImportError, hub and cache errors of many types
        need = ("it needs the transformers package: pip install transformers" if isinstance(error, ImportError)
                else _hub_cache_advice())
        raise ModelLoadError(f"could not load the tokenizer of CLIP {arch} ({hub_name}: {one_line(error)}); "
                             f"{need}") from None


def _clip_preprocessing(cfg: dict) -> dict:
    size = cfg["size"]
    size = [size, size] if isinstance(size, int) else list(size)
    resize_mode = cfg.get("resize_mode")
    crop = {"shortest": "center", "longest": "pad"}.get(resize_mode, resize_mode)
    return {
        "image_size": size,
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": cfg["interpolation"],
        "crop": crop,
        "crop_pct": 1.0,
    }


# --- timm backbone ---------------------------------------------------------------------------


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
        source = (f" from {hub_address(pretrained_cfg.hf_hub_id)}" if pretrained_cfg.hf_hub_id
                  else f" from {pretrained_cfg.url}" if pretrained_cfg.url else "")
        raise WeightsDownloadError("backbone", f"backbone weights of {name}{source}", one_line(error),
                                   "--backbone-weights /path/to/model.safetensors",
                                   _timm_cache_advice(pretrained_cfg)) from None
    except Exception as error:  # state-dict mismatch, unreadable or foreign checkpoint format
        if weights == RANDOM:
            raise
        if file is None:
            raise _pretrained_error("backbone", f"backbone weights of {name}", pretrained_cfg.hf_hub_id, error,
                                    "--backbone-weights /path/to/model.safetensors.") from None
        raise ModelLoadError(
            f"weights file {file} does not fit the backbone {name}: {one_line(error, 600)}. "
            "Check that --backbone matches the checkpoint."
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
        set_offline = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # (huggingface_hub reads both)
                       if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")]
        offline = f"{set_offline[0]} is set" if set_offline else f"{hub_address('')} cannot be reached"
        raise LocalEntryNotFoundError(f"{offline}, and the Hugging Face cache ({hub.HF_HUB_CACHE}) does not hold them")


def _hub_cache_advice() -> str:
    """How to work offline from the Hugging Face cache; where HF_HOME names the cache's hub/ folder
    itself (its models--* folders are there, and the hub looks in HF_HOME/hub), that slip first."""
    import huggingface_hub.constants as hub

    try:  # (a folder on the way that cannot be searched raises, on Python 3.11)
        if Path(hub.HF_HUB_CACHE).is_dir() or not any(Path(hub.HF_HOME).glob("models--*")):
            return HUB_CACHE_ADVICE
    except OSError:
        return HUB_CACHE_ADVICE
    return (f"HF_HOME ({hub.HF_HOME}) holds the models--* folders itself: point HF_HOME at the folder above it, "
            "or HF_HUB_CACHE at it.")


def offline_advice(role: str, name: str) -> str:
    """How to have the pretrained weights of the model ``name`` (``role``: "clip" or "backbone")
    without a network: every open_clip tag comes from the Hugging Face hub, some timm ones from a URL."""
    if role == "backbone":
        with suppress(ModelLoadError):  # a name this timm does not know: its error comes on loading
            return _timm_cache_advice(_resolve_backbone_name(name))
    return _hub_cache_advice()


def _timm_cache_advice(pretrained_cfg) -> str:
    """How to work offline with a timm model's default weights: the Hugging Face cache, or torch's
    hub folder for weights timm downloads from a URL."""
    if pretrained_cfg.hf_hub_id or not pretrained_cfg.url:
        return _hub_cache_advice()
    import torch.hub

    file = Path(urlparse(pretrained_cfg.url).path).name
    return (f"Without a network, copy {file} from a machine that downloaded it into timm's cache folder "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} (TORCH_HOME); zsfs then reads it from there.")


def _built_by_name(store: str | os.PathLike | None) -> str:
    """Why weights reload by name only: the store (named where known) recorded them so."""
    return f"the store{f' {os.fspath(store)}' if store else ''} was built with them by name"


def load_backbone_from_record(record: dict, device: str = "cpu", *, store: str | os.PathLike | None = None) -> Backbone:
    """Reload the backbone a store recorded (same weights; a file must have the same sha256);
    ``store``: its path, for the messages."""
    with by_name_only(_built_by_name(store)):
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
    sha256, the output taken (random weights: built, see :func:`_as_identity`). False where it
    cannot tell: loading decides, with its own errors."""
    try:
        pretrained_cfg = _resolve_backbone_name(name)
        file = None if weights in (DEFAULT, RANDOM) else existing_file(weights, "backbone", "--backbone-weights")
    except ModelLoadError:
        return False
    if weights not in (DEFAULT, RANDOM) and file is None:
        return False
    if weights == RANDOM:
        return _as_identity(load_backbone(name, RANDOM).record) == recorded
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
            f"unknown timm model {name!r}{_suggestion(name, candidates)}. timm.list_models() "
            "lists architectures, timm.list_pretrained() the names with weights."
        )
    try:
        return get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # the architecture exists but not this tag
        tags = ", ".join(timm.list_pretrained(name.split(".", 1)[0] + ".*")) or "none"
        raise ModelLoadError(f"timm model {name!r}: no such pretrained tag (known: {tags}).") from None


def _suggestion(name: str, candidates: Sequence[str]) -> str:
    lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    return f" (close names: {', '.join(lower[c] for c in close)})" if close else ""
