"""Shared fixtures: tiny random models, a generated image folder, offline mode, ../shared checks."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""Real weights and images that CI keeps beside the clone (see ../shared/README.md)."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``shared`` fail (never skip) when what they need under ../shared is absent.

    Usage: ``@pytest.mark.shared("models/x.safetensors", "data/y")``.
    """
    marker = item.get_closest_marker("shared")
    if marker is None:
        return
    needed = [SHARED / relative for relative in marker.args] or [SHARED]
    missing = [path for path in needed if not path.exists()]
    if missing:
        names = ", ".join(f"../shared/{path.relative_to(SHARED)}" if path != SHARED else "../shared"
                          for path in missing)
        pytest.fail(f"needs {names} (looked in {SHARED}); run pytest -m 'not shared' to leave "
                    "them out", pytrace=False)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder (tests using it carry the ``shared`` marker)."""
    return SHARED


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny randomly initialised open_clip model (32 px images, 32-d embeddings)."""
    from zsfs.models import load_clip
    from zsfs.testing.models import TINY_CLIP_CONFIG

    return load_clip(str(TINY_CLIP_CONFIG), "random")


@pytest.fixture(scope="session")
def tiny_backbone():
    """A tiny randomly initialised timm ViT (160 px images, 64-d features)."""
    from zsfs.models import load_backbone
    from zsfs.testing.models import TINY_BACKBONE

    return load_backbone(TINY_BACKBONE, "random")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> dict:
    """``write_image_folder`` output: 3 classes x 5 images of every kind, plus broken files.

    Shared by the whole session: do not modify the files (write your own folder for that).
    """
    from zsfs.testing.images import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images") / "photos", n_per_class=5)


@pytest.fixture()
def offline(monkeypatch) -> None:
    """Make every Hugging Face download fail at once, as on an air-gapped machine."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import time; the constant is what it checks.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def unwrapped_messages(monkeypatch):
    """Long messages on one line, so that tests can match them whatever the terminal width."""
    from zsfs.cli.common import console

    monkeypatch.setattr(console, "soft_wrap", True)
