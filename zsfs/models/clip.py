"""open_clip CLIP models: by architecture name or model-config file, with weights from a pretrained
tag, a local file or ``"random"``; and the text side, class names to prompt embeddings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zsfs.digests import unchanged_file_sha256
from zsfs.errors import ModelLoadError, as_sentence, one_line
from zsfs.models.common import (as_identity, built_by_name, by_name_only, close_names, hub_cache_advice, pretrained_error,
                                unreadable_cache_error)
from zsfs.models.encoders import ClipModel, worker_transform
from zsfs.names import home_expanded, repeated_rows
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.weights import (CHECKPOINT_SUFFIXES, FILE, RANDOM, RANDOM_SEED, WeightsDownloadError, check_same_weights,
                          existing_file, hub_address, hub_offline_unless_reachable, init_fingerprint, not_a_checkpoint,
                          offline_and_uncached, seeded_init, the_other_models_checkpoint, unreadable_checkpoint,
                          weights_from_record)


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
            raise pretrained_error("clip", f"CLIP weights {arch} / {weights}", tag_cfg.get("hf_hub"), error,
                                   _clip_file_advice(arch, tag_cfg)) from None
        if unreadable_checkpoint(error):  # told so, not blamed on the architecture
            raise not_a_checkpoint(file, error) from None
        raise ModelLoadError(
            f"weights file {file} does not fit the CLIP architecture {arch}: {as_sentence(one_line(error))} "
            + (the_other_models_checkpoint(file, "clip") or "Check that --clip-model matches the checkpoint.")
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
    file sha256 (random weights: built, see :func:`as_identity`). What a library version works out
    at load time (preprocessing, a tag's values) is not compared. False where it cannot tell (an
    unknown name): loading decides, with its own errors."""
    import open_clip

    try:
        arch, config, _ = _resolve_clip_name(name)
        kind, file = _clip_weights_source(arch, weights)
    except ModelLoadError:
        return False
    if kind == RANDOM:
        return as_identity(load_clip(name, RANDOM).record) == recorded
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights) if kind == "tag" else {}
    expected = {"name": arch, "weights": weights if kind == "tag" else kind, "config": config,
                "sha256": unchanged_file_sha256(file) if file else None,
                "quick_gelu": bool(tag_cfg.get("quick_gelu", False))
                or bool(open_clip.get_model_config(arch).get("quick_gelu", False))}
    return all(recorded.get(key) == value for key, value in expected.items())


def clip_weights_kind(name: str, weights: str) -> str | None:
    """How :func:`load_clip` takes ``weights`` for the model ``name``: ``"tag"`` (a tag before a file
    of that name), ``"file"`` or ``"random"``; None where it cannot tell (loading says why)."""
    try:
        return _clip_weights_source(_resolve_clip_name(name)[0], weights)[0]
    except ModelLoadError:
        return None


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
    with by_name_only(built_by_name(store)):
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

    config_file = Path(home_expanded(name))
    if name.lower().endswith(".json") or config_file.is_file():
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
    if arch not in open_clip.list_models() and (config_file.is_dir() or name.startswith(_HUB_PREFIX)):
        raise _hub_repository_given(name, config_file)  # (a folder ./ViT-B-32 leaves the name a name)
    if arch not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown CLIP model {name!r}{close_names(arch, open_clip.list_models())}. "
            "open_clip.list_models() lists them all; a path to an open_clip model config .json "
            "also works."
        )
    return arch, None, {}


_HUB_PREFIX = "hf-hub:"


def _hub_repository_given(name: str, folder: Path) -> ModelLoadError:
    """The error for a hub repository given as the model, as a folder (a download of it) or as
    open_clip's ``hf-hub:ORG/NAME``: zsfs takes its config file and its weights file, which it
    records by sha256 (a repository's files can change under its name)."""
    if name.startswith(_HUB_PREFIX):
        repository = name[len(_HUB_PREFIX):].strip("/")
        return ModelLoadError(
            f"--clip-model takes no {_HUB_PREFIX} names; download {HUB_CONFIG_NAME} and the weights file "
            f"(open_clip_pytorch_model.bin) of the repository {repository} into a folder REPO and pass them: "
            f"--clip-model REPO/{HUB_CONFIG_NAME} --clip-weights REPO/open_clip_pytorch_model.bin")
    config = folder / HUB_CONFIG_NAME
    if not config.is_file():
        return ModelLoadError(f"CLIP model {folder} is a folder without an {HUB_CONFIG_NAME}; pass an open_clip "
                              "architecture name or a model-config .json file")
    held: list[str] = []
    with suppress(OSError):  # safetensors first, as for a folder given as the weights
        held = sorted((file.name for file in folder.iterdir() if file.suffix.lower() in CHECKPOINT_SUFFIXES),
                      key=lambda file: (not file.lower().endswith(".safetensors"), file))
    return ModelLoadError(f"CLIP model {folder} is a folder; pass its config file, and its weights file as "
                          f"--clip-weights: --clip-model {config} --clip-weights "
                          f"{folder / (held[0] if held else 'open_clip_pytorch_model.bin')}")


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
        import huggingface_hub.constants as hub

        weights, advice = f"CLIP weights {arch} / {tag}", _clip_file_advice(arch, cfg)
        # offline, open_clip's reason was its retries' error cut short: "Failed to download file (...) for ..."
        reason = offline_and_uncached() if hub.HF_HUB_OFFLINE and cfg.get("hf_hub") else one_line(error)
        raise unreadable_cache_error("clip", weights, cfg.get("hf_hub"), advice) or WeightsDownloadError(
            "clip", weights, reason, advice, hub_cache_advice()) from None


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
                else hub_cache_advice())
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


def same_text_to_clip(tokenizer: Callable, classes: Sequence[str]) -> list[tuple[str, str]]:
    """(earlier, later) class names whose prompts a CLIP tokenizer turns into the same tokens:
    open_clip's tokenizers ignore case, spacing and the Unicode form ('Cat' = 'cat', 'café'
    composed = decomposed) and cut long texts at their context length. Such classes get one and
    the same embedding, so no method can tell their images apart."""
    if len(classes) < 2:
        return []
    tokens = np.asarray(tokenizer([SINGLE_PROMPT.format(name) for name in classes]))
    return [(classes[first], classes[later]) for first, later in repeated_rows(tokens)]


def cut_by_clip(tokenizer: Callable, classes: Sequence[str]) -> list[str]:
    """The class names too long for CLIP: a tokenizer cuts a prompt at its context length (77
    tokens for most models), so the end of such a name (or of the template after it) is not
    embedded, in the single prompt or in some of the ensemble's templates. A tokenizer that takes
    no ``context_length`` (not open_clip's) is not asked: none are returned."""
    context = getattr(tokenizer, "context_length", None)
    if not isinstance(context, int) or context < 1:
        return []
    # a token covers at least one byte, and a template adds about 10 tokens: only long names can be cut
    long_names = [name for name in classes if len(name.encode("utf-8", "surrogateescape")) >= context // 2]
    templates = (SINGLE_PROMPT, *ENSEMBLE_TEMPLATES)
    cut = []
    for name in long_names:
        prompts = [template.format(name) for template in templates]
        # one token more room: a prompt that was cut reads on past the context where the cut one ended
        whole = np.asarray(tokenizer(prompts, context_length=context + 1))[:, :context]
        if (whole != np.asarray(tokenizer(prompts))).any():
            cut.append(name)
    return cut


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
