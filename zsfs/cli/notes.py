"""Notes a command prints: before its work, fit options that change nothing, a store whose shards
folder another master uses, bf16 emulated on this CPU, a precision that only a GPU uses, class names
too long for CLIP; after it, the paths given twice."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from zsfs.cli.console import console, shown
from zsfs.cli.options import option_flags
from zsfs.names import abbreviated, counted, some_names

if TYPE_CHECKING:
    from zsfs.fit.config import FitConfig


def note_fit_options(config: "FitConfig", given: dict) -> None:
    """Say which of the options the user gave the fit's method will not read (they are not errors:
    one set of options can serve runs of both methods), and when bf16 will be emulated."""
    note_emulated_bf16(config.precision, config.device)
    unread = config.unread(given)
    if unread:
        flags = option_flags(click.get_current_context().command, given)
        typed = [flags.get(name, name) for name in unread]
        readers = "cycles method (--method cycles, --paper)" if config.method == "balanced" else None
        note = config.unread_note(typed, readers)
        console.print(f"[yellow]Note:[/] {note}.", soft_wrap=True)


def note_a_borrowed_shards_folder(master: "os.PathLike", folder: str | None = None) -> None:
    """A note when ``master`` reads its shards (vocabularies, graph) from ``folder`` (default: the
    one its shard table names), another name's: it was renamed or copied under a new name, and
    what `text` and `neighbours` write there a copy shares with its original."""
    from zsfs.store import schema
    from zsfs.store.placement import shard_folders_named

    master = Path(master)
    folder = folder or min(shard_folders_named(master), default=None)
    own = schema.shard_dir(master).name
    if folder and folder != own:
        console.print(f"[yellow]Note:[/] {shown(master.name)} reads its shards from {shown(folder)}/, not {shown(own)}/: "
                      "it was renamed or copied under a new name since it was built. `zsfs text` and `zsfs neighbours` "
                      "write into that folder, which a copy shares with the original (for an independent store, copy "
                      "the store and its shards folder, both under their first names, into another folder); "
                      "`zsfs extract` and `zsfs import` update the store only under its first name.", soft_wrap=True)


def note_emulated_bf16(precision: str, device: str) -> None:
    """Say so when bf16 products are asked for on a CPU that has none in hardware: torch then
    emulates them, many times slower than fp32 (``zsfs.devices.has_fast_bf16``). Torch before
    2.10 cannot tell: nothing is said there."""
    if precision == "bf16" and device == "cpu":
        import torch

        from zsfs.devices import has_fast_bf16

        if hasattr(torch.cpu, "get_capabilities") and not has_fast_bf16(torch.device("cpu")):
            console.print("[yellow]Note:[/] this CPU has no bf16 products in hardware (AVX512-BF16, AMX, Arm BF16): "
                          "torch emulates them, many times slower than fp32 (--precision fp32; fit's auto chooses it).",
                          soft_wrap=True)


def note_precision_off_cuda(precision: str, device: str, computing: str) -> None:
    """Say that ``--precision`` changes nothing off CUDA (it was ignored without a word);
    ``computing``: "the models compute", "the backbone computes"."""
    if precision != "fp32" and not device.startswith("cuda"):
        console.print(f"[yellow]Note:[/] --precision {precision} is an autocast on CUDA; on {device} {computing} "
                      "in fp32.", soft_wrap=True, highlight=False)


def note_repeated_paths(paths: Sequence[str]) -> None:
    """Name the paths given more than once (each kept a row of its own), if any."""
    if paths:
        console.print(f"{counted(len(paths), 'path')} given twice or more (each row kept): "
                      f"{shown(some_names(paths, 10, with_count=False))}")


def note_classes_cut_by_clip(names: Sequence[str]) -> None:
    """Say which class names CLIP's tokenizer cuts (``zsfs.models.cut_by_clip``): the end of a long
    description is not embedded, and nothing else would tell its writer."""
    if not names:
        return
    one = len(names) == 1
    listed = some_names([repr(abbreviated(name, 60)) for name in names], 5, with_count=False)
    console.print(f"[yellow]Note:[/] {counted(len(names), 'class name')} {'is' if one else 'are'} longer than CLIP "
                  f"reads (a prompt's first 77 tokens for most models, the template included: about 300 characters "
                  f"of English): {'its' if one else 'their'} end is not embedded ({shown(listed)}); put what tells "
                  "the classes apart first, or shorten them.", soft_wrap=True)
