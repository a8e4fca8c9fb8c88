"""Whole shards of a source, embedded: the settings that choose the models and the batching, and
``ShardEmbedder``, both models loaded once in one process (the extract's own, or each Ray worker's,
``zsfs.distributed``) computing shards and writing each one as soon as its last batch is in.

Batches never cross shard boundaries: a resumed run computes exactly the batches an
uninterrupted run would, so its store has the same content, and shards of a local run and of a
Ray run are interchangeable. ``zsfs predict`` batches new images the same way (``position_batches``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from zsfs.devices import check_device
from zsfs.embedding import Batch, embedded_images
from zsfs.models import encode_vocabulary, load_models, same_text_to_clip, weights_kind
from zsfs.names import home_expanded
from zsfs.sources import ImageSource
from zsfs.store.rows import usable_rows
from zsfs.store.writer import ShardData, StoreWriter
from zsfs.weights import FILE


DEFAULT_BATCH_SIZE = 64
"""Images per batch through both models (``--batch-size`` of extract and predict)."""


@dataclass(frozen=True)
class EmbedSettings:
    """How images become embeddings: the models and how they run (``extract``'s options)."""

    clip_model: str
    clip_weights: str
    backbone: str
    backbone_weights: str
    device: str
    precision: str
    batch_size: int
    workers: int | None  # DataLoader decoding processes; None: ``default_workers``
    max_pixels: int  # the decoding budget of one image

    def model(self, role: str) -> tuple[str, str]:
        """The (name, weights) asked for the ``"clip"`` or ``"backbone"`` model."""
        return (self.clip_model, self.clip_weights) if role == "clip" else (self.backbone, self.backbone_weights)

    def with_absolute_files(self) -> EmbedSettings:
        """These settings with the model files they name as absolute paths: a Ray worker resolves a
        relative path in its own working folder, not in the one the command was run from."""
        return replace(self, **absolute_model_files({name: getattr(self, name) for name in MODEL_OPTIONS}))


MODEL_OPTIONS = ("clip_model", "clip_weights", "backbone", "backbone_weights")
"""``extract``'s options (and ``EmbedSettings``' fields) that choose the models."""


def absolute_model_files(models: Mapping[str, str]) -> dict[str, str]:
    """The :data:`MODEL_OPTIONS` of ``models`` with the files they name as absolute paths (``~``
    expanded), a pretrained tag named like a file here left a tag: the file is the setting,
    whichever folder its path was written from."""
    absolute = {name: models[name] for name in MODEL_OPTIONS}
    clip_model = home_expanded(absolute["clip_model"])
    if Path(clip_model).is_file():
        absolute["clip_model"] = os.path.abspath(clip_model)
    for role, name in (("clip", "clip_model"), ("backbone", "backbone")):
        weights = f"{role}_weights"
        if weights_kind(role, models[name], models[weights]) == FILE:
            absolute[weights] = os.path.abspath(home_expanded(models[weights]))
    return absolute


def position_batches(start: int, stop: int, batch_size: int) -> list[range]:
    """Listing positions ``start`` to ``stop - 1`` in batches of ``batch_size`` (the last one shorter);
    ranges, not lists: a listing of 10 million images would hold half a gigabyte of Python ints."""
    return [range(first, min(first + batch_size, stop)) for first in range(start, stop, batch_size)]


def shard_batches(writer: StoreWriter, shards: Sequence[int], batch_size: int) -> tuple[list[range], list[int]]:
    """Batches of listing positions (never crossing a shard boundary) and each batch's shard."""
    batches, owners = [], []
    for shard in shards:
        in_shard = position_batches(*writer.shard_bounds(shard), batch_size)
        batches += in_shard
        owners += [shard] * len(in_shard)
    return batches, owners


NO_FEATURES = ("the models gave NaN, infinite or all-zero features (with --precision fp16 an overflow can: "
               "bf16 or fp32 avoid it)")


class _ShardRows:
    """Embedded rows and failures of one shard, written batch by batch into arrays of the store's
    dtype sized for the whole shard: a 50,000-image shard of the default models holds 200 MB of
    float16 there, where float32 parts, their concatenation and its cast peaked at 780 MB (the
    cast of each batch rounds as the cast of the whole would)."""

    def __init__(self, capacity: int, clip_dim: int, backbone_dim: int, dtype: str | np.dtype):
        self.indices = np.empty(capacity, np.int64)
        self.clip = np.empty((capacity, clip_dim), dtype)
        self.backbone = np.empty((capacity, backbone_dim), dtype)
        self.width, self.height = np.empty(capacity, np.int32), np.empty(capacity, np.int32)
        self.n_rows = 0
        self.failures: list[tuple[int, str]] = []

    def add(self, batch: Batch, outputs: tuple[np.ndarray, np.ndarray] | None) -> None:
        if outputs is not None:
            usable = usable_rows(outputs[0]) & usable_rows(outputs[1])
            if not usable.all():  # a row of NaN would make every score of a fit NaN
                self.failures.extend((int(index), NO_FEATURES) for index in batch.indices[~usable])
                outputs = tuple(output[usable] for output in outputs)
            rows = slice(self.n_rows, self.n_rows + int(usable.sum()))
            self.indices[rows], self.clip[rows], self.backbone[rows] = batch.indices[usable], *outputs
            self.width[rows], self.height[rows] = batch.width[usable], batch.height[usable]
            self.n_rows = rows.stop
        self.failures.extend(batch.failures)

    def shard_data(self, source: ImageSource) -> ShardData:
        filled = slice(0, self.n_rows)
        indices = self.indices[filled]
        failures = sorted(self.failures)
        return ShardData(
            clip=self.clip[filled],
            backbone=self.backbone[filled],
            paths=[source.paths[i] for i in indices],
            width=self.width[filled],
            height=self.height[filled],
            labels=None if source.labels is None else [source.labels[i] for i in indices],
            skipped_paths=[source.paths[i] for i, _ in failures],
            skipped_reasons=[reason for _, reason in failures],
        )


class ShardEmbedder(AbstractContextManager):
    """Both models, loaded once, computing and writing whole shards of one source.

    ``cores``: the CPU cores this process may use (a Ray worker's share) [default: all it sees].
    ``zsfs.distributed.RayEmbedders`` offers the same methods over a pool of these.
    """

    def __init__(self, settings: EmbedSettings, source: ImageSource, *, cores: int | None = None):
        self.settings, self.source, self.cores = settings, source, cores
        check_device(settings.device)  # before the models load: an absent GPU is a clear error
        self.clip, self.features = load_models(settings.clip_model, settings.clip_weights, settings.backbone,
                                               settings.backbone_weights, settings.device)
        self.shards_redone = 0  # a process that dies takes its shards with it: nothing to redo here
        self.set_aside: dict[int, str] = {}  # listing positions of files that crashed or hung a decoding process -> reason

    @property
    def records(self) -> tuple[dict, dict]:
        """The (CLIP, backbone) records: what the store's identity and master record."""
        return self.clip.record, self.features.record

    def write_shards(self, writer: StoreWriter, shards: Sequence[int],
                     on_batch: Callable[[int], None] | None = None) -> int:
        """Compute ``shards`` and write each one as soon as its last batch is embedded; returns
        the listing entries processed. One loader over all of them, so decoding never idles.

        A file that crashes its decoding process (SIGSEGV in a codec library, say), or hangs it,
        is recorded as skipped, with that reason, and the work goes on from the first batch not
        embedded: a rerun would stop on it in the same place
        (``zsfs.crashes.set_aside_crashing_file``)."""
        settings = self.settings
        batches, owners = shard_batches(writer, shards, settings.batch_size)
        # closing(): a failed write stops the decoding processes now, not when the traceback goes
        with closing(embedded_images(self.source, (self.clip, self.features), batches, owners,
                                     set_aside=self.set_aside, device=settings.device, precision=settings.precision,
                                     workers=settings.workers, max_pixels=settings.max_pixels, cores=self.cores, on_batch=on_batch)) as embedded:
            return _write_shards(writer, self.source, embedded, owners, self.clip.record["dim"],
                                 self.features.record["dim"])

    def encode_vocabulary(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(single-prompt, ensemble) text embeddings of the class names."""
        return encode_vocabulary(self.clip, classes)

    def same_text_to_clip(self, classes: list[str]) -> list[tuple[str, str]]:
        return same_text_to_clip(self.clip.tokenizer, classes)

    def __exit__(self, *exc) -> None:
        return None


def _write_shards(writer: StoreWriter, source: ImageSource, embedded, owners: list[int], clip_dim: int,
                  backbone_dim: int) -> int:
    """Collect embedded batches per shard; write each shard as soon as its last batch is in."""
    batches_left = Counter(owners)
    rows: dict[int, _ShardRows] = {}  # the shards in progress only: batches come in listing order
    processed = 0
    for shard, batch, outputs in embedded:
        if shard not in rows:
            start, stop = writer.shard_bounds(shard)
            rows[shard] = _ShardRows(stop - start, clip_dim, backbone_dim, writer.dtype)
        rows[shard].add(batch, outputs)
        processed += len(batch.indices) + len(batch.failures)
        batches_left[shard] -= 1
        if batches_left[shard] == 0:
            writer.write_shard(shard, rows.pop(shard).shard_data(source))
    return processed
