"""Where the numeric work runs: one check, shared by every stage, and the thread pools a fork loses."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING

from zsfs.errors import ParameterError, ZsfsError, check_choice

if TYPE_CHECKING:  # torch is imported lazily: the CLI lists DEVICES before any work starts
    import torch

DEVICES = ("cpu", "cuda", "mps")
MODEL_PRECISIONS = ("fp32", "bf16", "fp16")
"""Autocast precisions of the models in extract and predict (on CUDA; elsewhere fp32)."""
SEARCH_PRECISIONS = ("fp32", "bf16")
"""Precisions of the neighbour scan and training (bf16 products are re-scored in fp32)."""
PRECISION_CHOICES = ("auto", *SEARCH_PRECISIONS)
"""Precision of a fit's matrix products; "auto": bf16 where :func:`has_fast_bf16`, else fp32."""
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")
"""``torch.cpu.get_capabilities()`` keys of hardware bf16 products (x86 AVX512-BF16 and AMX, Arm BF16)."""


# --- thread pools a fork does not copy ----------------------------------------------------------

_polars_pool_forked = False
"""Whether this process was forked while polars' thread pool ran (see :func:`check_polars_usable`)."""
_polars_pool_running = False  # in a parent, as it last forked
_torch_pool_forked = False
"""Whether this process was forked after torch was imported: its thread pool then stays at one thread."""


NAMING_WAIT_SECONDS = 0.2
"""How long a fork waits at most for newborn threads to name themselves (:func:`_note_polars_pool`)."""
_NEWBORN_RUNS = 2  # a thread scheduled fewer times may not have named itself yet (seen: 0 and 1)


def _note_polars_pool() -> None:
    """Before a fork, in the parent: whether polars' thread pool has started (its threads are named
    polars-0, ...). /proc lists them on Linux; elsewhere nothing is noted (macOS and Windows spawn
    by default; on a BSD, fork with care: docs/python.md).

    A thread names itself when it first runs, so the pool's threads, started by polars' first
    parallel operation, carry their starter's name until the scheduler gets to them (review: on a
    busy machine a fork right after the caller's first sort missed them, and the child's table
    write hung). While polars has named no thread and another one is newborn, the fork waits for it
    to run, at most ``NAMING_WAIT_SECONDS``."""
    global _polars_pool_running
    if _polars_pool_forked or "polars" not in sys.modules:  # no polars library loaded: no pool
        _polars_pool_running = _polars_pool_forked  # a forked child's pool lost its threads, not its belief in them
        return
    deadline = time.monotonic() + NAMING_WAIT_SECONDS
    while True:
        threads = _other_threads()
        _polars_pool_running = any(re.fullmatch(r"polars-\d+", name) for name, _ in threads)
        if _polars_pool_running or not any(newborn for _, newborn in threads) or time.monotonic() > deadline:
            return
        time.sleep(0.001)


def _other_threads() -> list[tuple[str, bool]]:
    """The name of each thread of this process but the calling one, and whether it is newborn:
    runnable and scheduled fewer than ``_NEWBORN_RUNS`` times (a sleeping thread, as torch's idle
    ones, is none; nor is any where the kernel counts no runs: it then reads 0 for the caller too).
    none where /proc does not list them."""
    caller = str(threading.get_native_id())
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    counted = (_times_run(caller) or 0) > 0
    threads = []
    for tid in tids:
        if tid == caller:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]  # the field after the name, which may hold ")"
        except (OSError, IndexError):  # a thread that ended meanwhile
            continue
        runs = _times_run(tid)
        threads.append((name, counted and state == "R" and runs is not None and runs < _NEWBORN_RUNS))
    return threads


def _times_run(tid: str) -> int | None:
    """How many times the scheduler has run thread ``tid`` of this process; None where the kernel
    keeps no scheduler statistics."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as schedstat:
            return int(schedstat.read().split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _in_a_forked_child() -> None:
    """A process forked after torch's OpenMP pool ran (a fit, an extract) deadlocks in its first
    parallel torch operation (walkthrough: `zsfs.fit` in a multiprocessing child hung for ever):
    the child computes with one thread, as torch's DataLoader workers do. The "spawn" start
    method gives a child every core. Polars' pool cannot be made smaller: it is noted."""
    global _polars_pool_forked, _torch_pool_forked
    _polars_pool_forked = _polars_pool_running
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
        _torch_pool_forked = True


def torch_threads_fixed() -> bool:
    """Whether torch must keep its one thread here (a process forked after torch was imported):
    more would start the pool a fork does not copy, and wait on it for ever (review:
    ``predict_images`` in a multiprocessing child hung in its first batch)."""
    return _torch_pool_forked


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_note_polars_pool, after_in_child=_in_a_forked_child)


def check_polars_usable(doing: str) -> None:
    """ZsfsError, before ``doing`` (reading or writing a table), in a process forked after polars'
    thread pool ran: polars reads, writes, sorts and joins on that pool, whose threads a fork does
    not copy, and would wait for them for ever (docs audit: ``run.save`` in a multiprocessing child
    hung). Building a table and a fit work there; torch's pool is handled above."""
    if _polars_pool_forked:
        raise ZsfsError(
            f"cannot {doing} in this process: it was forked (multiprocessing's \"fork\" start method, "
            "Linux's default before Python 3.14) after polars started its threads, which a fork does not copy, "
            "so polars would wait for them for ever; start it with multiprocessing.get_context(\"spawn\") "
            "or \"forkserver\""
        )


def check_device(device: str) -> "torch.device":
    """The torch device for ``device``; ParameterError when it is unknown or absent on this machine."""
    import torch

    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("{device} cuda was asked for, but torch sees no CUDA GPU here; use {device} cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ParameterError("{device} mps was asked for, but torch sees no Apple GPU here; use {device} cpu")
    return torch.device(device)


def has_fast_bf16(device: "torch.device") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware (CUDA with bf16; CPUs with AVX512-BF16, AMX or
    Arm's BF16 instructions).

    Elsewhere torch emulates bf16 products: on an AVX2-only CPU a 512 x 1024 x 1000 product takes
    ~70x longer in bf16 than in float32, so "auto" precision falls back to float32 there.
    """
    import torch

    if device.type == "cuda":  # bf16 tensor cores from Ampere (8.x) on; torch also "supports" it by emulation
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.10; before it: assume none
        capabilities = get_capabilities() if get_capabilities is not None else {}
        return any(capabilities.get(name, False) for name in BF16_CPU_FEATURES)
    return False
