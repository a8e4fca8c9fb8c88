"""Tiny randomly initialised models: every model code path, no downloads, milliseconds per batch."""

from __future__ import annotations

from pathlib import Path

TINY_CLIP_CONFIG: Path = Path(__file__).with_name("zsfs-tiny-clip.json")
"""open_clip config of a tiny CLIP (32 px ViT, 1-layer text tower, 32-d embeddings):
``load_clip(str(TINY_CLIP_CONFIG), "random")``."""

TINY_BACKBONE = "test_vit"
"""A tiny timm ViT (160 px input, 64-d pre-logits): ``load_backbone(TINY_BACKBONE, "random")``."""

TINY_MODELS = {"clip_model": str(TINY_CLIP_CONFIG), "clip_weights": "random",
               "backbone": TINY_BACKBONE, "backbone_weights": "random"}
"""Keyword arguments of ``zsfs.extract.extract`` that select both tiny models."""

TINY_MODEL_ARGS = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_MODELS.items()]
"""The same choice as ``zsfs extract`` command-line options."""


def cache_default_backbone_weights(cache: Path, state: dict) -> None:
    """Lay ``state`` out in the Hugging Face cache folder ``cache`` as a download of
    ``TINY_BACKBONE``'s default weights leaves it (point ``HF_HUB_CACHE`` there, offline)."""
    from safetensors.torch import save_file

    repository = cache / "models--timm--test_vit.r160_in1k"
    snapshot = repository / "snapshots" / "a1b2c3"
    snapshot.mkdir(parents=True, exist_ok=True)
    (repository / "refs").mkdir(exist_ok=True)
    (repository / "refs" / "main").write_text("a1b2c3")
    save_file(state, str(snapshot / "model.safetensors"))
