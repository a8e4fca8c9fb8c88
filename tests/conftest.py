"""Shared fixtures: tiny random models, a generated image folder, offline mode, ../shared checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CLONE = Path(os.path.abspath(__file__)).parents[1]
SHARED = next((clone.parent / "shared" for clone in (_CLONE, _CLONE.resolve()) if (clone.parent / "shared").is_dir()),
              _CLONE.parent / "shared")
"""Real weights and images that CI keeps beside the clone (see ../shared/README.md): beside the
clone as named, or, where the clone is reached through a link, beside the folder it names."""


def _missing_shared(item: pytest.Item) -> list[Path]:
    """What a ``shared``-marked test needs under ../shared and is absent (usage:
    ``@pytest.mark.shared("models/x.safetensors", "data/y")``)."""
    marker = item.get_closest_marker("shared")
    if marker is None:
        return []
    return [path for path in [SHARED / relative for relative in marker.args] or [SHARED] if not path.exists()]


def _names(paths: list[Path]) -> str:
    return ", ".join(f"../shared/{path.relative_to(SHARED)}" if path != SHARED else "../shared" for path in paths)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside CI, tests whose ../shared files are absent are deselected, and the header says so:
    the core suite never depends on ../shared. In CI (``CI`` set) they run and fail loudly."""
    if os.environ.get("CI"):
        return
    absent = [item for item in items if _missing_shared(item)]
    if absent:
        config.hook.pytest_deselected(items=absent)
        items[:] = [item for item in items if item not in absent]
        config._zsfs_shared_deselected = len(absent)


def pytest_report_header(config: pytest.Config) -> str | None:
    if SHARED.exists() or os.environ.get("CI"):
        return None
    return (f"{SHARED} is absent: tests that need its real weights/images are deselected "
            "(CI runs them; see ../shared/README.md)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``shared`` test that still runs without its files (CI) fails with a clear message."""
    missing = _missing_shared(item)
    if missing:
        pytest.fail(f"needs {_names(missing)} (looked in {SHARED}); run pytest -m 'not shared' to leave "
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
    from zsfs.cli.console import console

    monkeypatch.setattr(console, "soft_wrap", True)


STARTED_IN = Path.cwd()


@pytest.fixture(autouse=True)
def leaves_the_working_folder_alone():
    """A test that writes into the folder pytest runs in (the checkout: a command's default output
    such as ./ds.h5) fails: its file stayed there and failed the next run of the suite."""
    before = set(os.listdir(STARTED_IN))
    yield
    added = sorted(name for name in set(os.listdir(STARTED_IN)) - before
                   if not name.startswith(".") and name != "__pycache__")
    if added:
        pytest.fail(f"{added} appeared in {STARTED_IN} during this test: it, or a test beside it in another "
                    "pytest-xdist process, wrote there; write into tmp_path (monkeypatch.chdir(tmp_path))")
