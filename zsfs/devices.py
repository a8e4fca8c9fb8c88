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


def has_fast_bf16(device: "torch.device") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (CUDA with bf16; CPUs with AVX512-BF16, AMX or
    Arm's BF16 instructions).

    Elsewhere torch emulates bf16 products: on an AVX2-only CPU a 512 x 1024 x 1000 product takes
    ~70x longer in bf16 than in float32, so "auto" precision falls back to float32 there.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16"))
    return False
