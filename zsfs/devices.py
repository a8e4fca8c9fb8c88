"""Where the numeric work runs: one check, shared by every stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsfs.errors import ZsfsError

if TYPE_CHECKING:  # torch is imported lazily: the CLI lists DEVICES before any work starts
    import torch

DEVICES = ("cpu", "cuda", "mps")


def check_device(device: str) -> "torch.device":
    """The torch device for ``device``; ZsfsError when it is unknown or absent on this machine."""
    import torch

    if device not in DEVICES:
        raise ZsfsError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ZsfsError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ZsfsError("--device mps was asked for, but torch sees no Apple GPU here; use --device cpu")
    return torch.device(device)
