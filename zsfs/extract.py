"""Stage 1: an image source -> both models -> a sharded store (resumable).

The decode/embed pipeline lives in ``zsfs.embedding``; this module plans the work per shard,
writes the store and its vocabulary, and reports what it did. Batches never cross shard
boundaries: a resumed run computes exactly the batches an uninterrupted run would,
so its store has the same content. Only shards the writer reports as pending are computed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsfs.devices import check_device
from zsfs.embedding import (PRECISIONS, Batch, DecodedImages, default_worker_niceness,
                            default_workers, embed_batches, make_loader, model_threads)
from zsfs.errors import ZsfsError
from zsfs.models import Backbone, ClipModel, encode_vocabulary, load_backbone, load_clip, load_clip_from_record
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.sources import DEFAULT_MAX_PIXELS, ImageSource, open_source, read_class_file
from zsfs.store.files import check_writable as check_store_lock
from zsfs.store.reader import Store
from zsfs.store.schema import DEFAULT_SHARD_SIZE, EMBEDDING_DTYPES, INVALID_VOCABULARY_NAME, valid_vocabulary_name
from zsfs.store.writer import ShardData, StoreWriter, disk_error, write_vocabulary
from zsfs.writable import check_writable

DEFAULT_BATCH_SIZE = 64


@dataclass
class ExtractSummary:
    """What one ``extract`` call did."""

    output: Path
    n_images: int  # embedded rows in the store
    n_skipped: int  # files recorded as skipped
    skipped_reasons: dict[str, int]  # reason -> count, over the whole store
    shards_written: int  # computed by this call
    shards_reused: int  # already complete from an earlier (interrupted) run
    images_processed: int  # listing entries decoded by this call (embedded or skipped)
    seconds: float  # the whole call: loading models, embedding, writing, vocabulary
    embedding_seconds: float  # decoding + embedding + writing shards
    vocabulary: str | None  # name of the vocabulary written, None when no class names known
    classes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.embedding_seconds if self.embedding_seconds > 0 else 0.0


def store_identity(source: ImageSource, clip: ClipModel, backbone: Backbone, *, dtype: str) -> dict:
    """What makes shards interchangeable: same listing, same models and weights, same layout."""
    return {
        "source": str(source.location),
        "listing_sha256": source.digest(),
        "clip": _model_identity(clip.record),
        "backbone": _model_identity(backbone.record),
        "dtype": dtype,  # the writer adds n_items and shard_size
    }


def _model_identity(record: dict) -> dict:
    # A weights file may move between runs; its sha256 (kept) is what identifies it.
    return {key: value for key, value in record.items() if key != "file"}


def shard_batches(writer: StoreWriter, shards: Sequence[int], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Batches of listing positions (never crossing a shard boundary) and each batch's shard."""
    batches, owners = [], []
    for shard in shards:
        start, stop = writer.shard_bounds(shard)
        for first in range(start, stop, batch_size):
            batches.append(list(range(first, min(first + batch_size, stop))))
            owners.append(shard)
    return batches, owners


class _ShardRows:
    """Embedded rows and failures of one shard, collected batch by batch."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.failures: list[tuple[int, str]] = []

    def add(self, batch: Batch, outputs: tuple[np.ndarray, np.ndarray] | None) -> None:
        if outputs is not None:
            self.parts.append((batch.indices, *outputs, batch.width, batch.height))
        self.failures.extend(batch.failures)

    def shard_data(self, source: ImageSource, clip_dim: int, backbone_dim: int) -> ShardData:
        if self.parts:
            indices, clip, backbone, width, height = (np.concatenate(column) for column in zip(*self.parts))
        else:
            indices = np.zeros(0, dtype=np.int64)
            clip, backbone = np.zeros((0, clip_dim), np.float32), np.zeros((0, backbone_dim), np.float32)
            width = height = np.zeros(0, dtype=np.int32)
        labels = None if source.labels is None else [source.labels[i] for i in indices]
        failures = sorted(self.failures)
        return ShardData(
            clip=clip,
            backbone=backbone,
            paths=[source.paths[i] for i in indices],
            width=width,
            height=height,
            labels=labels,
            skipped_paths=[source.paths[i] for i, _ in failures],
            skipped_reasons=[reason for _, reason in failures],
        )


def extract(
    source: str | Path,
    out: str | Path | None = None,
    *,
    clip_model: str = "ViT-B-32",
    clip_weights: str = "openai",
    backbone: str = "vit_giant_patch14_clip_224.laion2b",
    backbone_weights: str = "default",
    classes: Sequence[str] | str | Path | None = None,
    vocab_name: str = "default",
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    dtype: str = "float16",
    overwrite: bool = False,
    max_pixels: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ExtractSummary:
    """Embed every image of ``source`` with CLIP and the backbone into the store ``out``.

    ``classes``: a list of class names or a file with one per line; by default the source's
    folder labels; with neither, no vocabulary is written (``add_vocabulary`` adds one later).
    ``on_start(n)`` is called once with the number of listing entries still to process,
    ``on_batch(n)`` after each batch with the entries it covered (progress reporting).
    ``max_pixels``: the decoding budget of one image (default ``zsfs.sources.DEFAULT_MAX_PIXELS``).
    Rerunning after an interruption resumes: complete shards are kept, not recomputed.
    """
    started = time.perf_counter()
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    _check_options(precision=precision, batch_size=batch_size, workers=workers, shard_size=shard_size, dtype=dtype,
                   max_pixels=max_pixels)
    _check_vocabulary_name(vocab_name)
    torch_device = check_device(device)
    image_source = open_source(source)
    out = Path(out) if out is not None else default_output(image_source.location)
    check_writable(out, "store")
    check_store_lock(out)
    class_names = _resolve_classes(classes, image_source)

    clip = load_clip(clip_model, clip_weights, device=device)
    features = load_backbone(backbone, backbone_weights, device=device)
    writer = StoreWriter(out, store_identity(image_source, clip, features, dtype=dtype),
                         n_items=len(image_source.paths), shard_size=shard_size, dtype=dtype, overwrite=overwrite)
    pending = writer.pending_shards()
    batches, owners = shard_batches(writer, pending, batch_size)
    if on_start is not None:
        on_start(sum(len(batch) for batch in batches))
    embedding_started = time.perf_counter()
    workers = default_workers(device) if workers is None else workers
    images = DecodedImages(image_source, clip.preprocess, features.preprocess, max_pixels=max_pixels)
    loader = make_loader(images, batches, workers=workers, pin_memory=torch_device.type == "cuda",
                         worker_niceness=default_worker_niceness(device))
    with model_threads(torch_device, workers):
        embedded = embed_batches(loader, owners, (clip.encode_images, features.encode_images), torch_device,
                                 precision, on_batch)
        processed = _write_shards(writer, image_source, embedded, owners, clip.record["dim"], features.record["dim"])
    embedding_seconds = time.perf_counter() - embedding_started

    if pending or not writer.master.is_file():  # a complete store is not rebuilt by a rerun
        writer.finalize({"source": str(image_source.location), "clip": clip.record, "backbone": features.record})
    with Store(writer.master) as store:
        has_vocabulary = vocab_name in store.vocabulary_names() and store.vocabulary(vocab_name).classes == class_names
        skipped_paths, reasons = store.skipped()
        n_images = store.n_images
    if n_images == 0:
        counts = ", ".join(f"{count} {reason}" for reason, count in Counter(map(str, reasons)).most_common())
        raise ZsfsError(f"none of the {len(skipped_paths)} files of {image_source.location} could be decoded "
                        f"({counts}); {writer.master} records them (`zsfs info {writer.master.name}`)")
    if class_names and not has_vocabulary:
        _write_vocabulary(writer.master, clip, vocab_name, class_names, overwrite=True)
    return ExtractSummary(
        output=writer.master,
        n_images=n_images,
        n_skipped=len(skipped_paths),
        skipped_reasons=dict(Counter(str(reason) for reason in reasons)),
        shards_written=len(pending),
        shards_reused=writer.n_shards - len(pending),
        images_processed=processed,
        seconds=time.perf_counter() - started,
        embedding_seconds=embedding_seconds,
        vocabulary=vocab_name if class_names else None,
        classes=list(class_names or []),
    )


def _write_shards(writer: StoreWriter, source: ImageSource, embedded, owners: list[int], clip_dim: int,
                  backbone_dim: int) -> int:
    """Collect embedded batches per shard; write each shard as soon as its last batch is in."""
    batches_left = Counter(owners)
    rows = {shard: _ShardRows() for shard in batches_left}
    processed = 0
    for shard, batch, outputs in embedded:
        rows[shard].add(batch, outputs)
        processed += len(batch.indices) + len(batch.failures)
        batches_left[shard] -= 1
        if batches_left[shard] == 0:
            writer.write_shard(shard, rows.pop(shard).shard_data(source, clip_dim, backbone_dim))
    return processed


def add_vocabulary(
    store_path: str | Path,
    classes: Sequence[str] | str | Path,
    name: str,
    *,
    clip_weights: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_classes: Callable[[int], None] | None = None,
) -> list[str]:
    """Embed class names with the CLIP model the store was built with; image data is untouched.

    ``clip_weights``: the recorded weights file at a new location (its sha256 must match).
    ``on_start(n)`` is called once the model is loaded with the number of classes,
    ``on_classes(n)`` as classes are embedded (progress). Returns the class names written.
    """
    check_device(device)
    _check_vocabulary_name(name)
    class_names = _resolve_classes(classes, None)
    with Store(store_path) as store:
        record = dict(store.clip_info)
        if name in store.vocabulary_names() and not overwrite:
            raise ZsfsError(f"{store_path} already has a vocabulary named {name!r}; "
                            "choose another --name or pass --overwrite to replace it")
    check_writable(store_path, "store")
    check_store_lock(Path(store_path))
    if clip_weights is not None:
        if record.get("weights") != "file":
            raise ZsfsError(f"{store_path} was built with CLIP weights {record.get('weights')!r}, not a file; "
                            "drop --clip-weights")
        record["file"] = str(Path(clip_weights).resolve())
    clip = load_clip_from_record(record, device=device)
    if on_start is not None:
        on_start(len(class_names))
    _write_vocabulary(Path(store_path), clip, name, class_names, overwrite=overwrite, on_classes=on_classes)
    return class_names


def default_output(location: Path) -> Path:
    """``photos/`` -> ``./photos.h5``; ``list.csv`` -> ``./list.h5``."""
    return Path.cwd() / (Path(location).stem + ".h5" if Path(location).is_file() else Path(location).name + ".h5")


def _write_vocabulary(master: Path, clip: ClipModel, name: str, classes: list[str], *, overwrite: bool,
                      on_classes: Callable[[int], None] | None = None) -> None:
    single, ensemble = encode_vocabulary(clip, classes, on_classes=on_classes)
    try:
        write_vocabulary(master, name, classes, single, ensemble, prompt=SINGLE_PROMPT,
                         n_templates=len(ENSEMBLE_TEMPLATES), overwrite=overwrite)
    except OSError as error:
        raise disk_error(error, f"vocabulary {name!r} into {master}") from error


def _resolve_classes(classes, source: ImageSource | None) -> list[str] | None:
    if classes is None:
        return None if source is None else source.classes
    if isinstance(classes, (str, Path)):
        return read_class_file(classes)
    classes = [str(name).strip() for name in classes]
    if not classes or len(set(classes)) != len(classes) or not all(classes):
        raise ZsfsError("class names must be non-empty and distinct")
    return classes


def _check_vocabulary_name(name: str) -> None:
    if not valid_vocabulary_name(name):
        raise ZsfsError(INVALID_VOCABULARY_NAME.format(name))


def _check_options(*, precision: str, batch_size: int, workers: int | None, shard_size: int, dtype: str,
                   max_pixels: int) -> None:
    if precision not in PRECISIONS:
        raise ZsfsError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if dtype not in EMBEDDING_DTYPES:
        raise ZsfsError(f"unknown dtype {dtype!r}; use one of: {', '.join(EMBEDDING_DTYPES)}")
    if batch_size < 1 or shard_size < 1 or (workers is not None and workers < 0):
        raise ZsfsError("--batch-size and --shard-size must be at least 1, --workers at least 0")
    if max_pixels < 1:
        raise ZsfsError("--max-pixels must be at least 1")


from zsfs.api import callable_module  # noqa: E402 (after `extract` exists)

callable_module(__name__, extract)  # zsfs.extract(folder, out, ...): the front door (zsfs/api.py)
