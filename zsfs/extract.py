"""Stage 1: an image source -> both models -> a sharded store (resumable).

Each image is decoded once, in a DataLoader worker, and both models' own preprocessing is
applied there, so the main process only moves ready batches through the models. Batches never
cross shard boundaries: a resumed run computes exactly the batches an uninterrupted run would,
so its store has the same content. Only shards the writer reports as pending are computed.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zsfs.errors import ZsfsError
from zsfs.models import Backbone, ClipModel, encode_vocabulary, load_backbone, load_clip, load_clip_from_record
from zsfs.prompts import ENSEMBLE_TEMPLATES, SINGLE_PROMPT
from zsfs.sources import ImageDecodeError, ImageSource, decode_image, open_source
from zsfs.store.reader import Store
from zsfs.store.schema import DEFAULT_SHARD_SIZE, EMBEDDING_DTYPES
from zsfs.store.writer import ShardData, StoreWriter, disk_error, write_vocabulary

DEVICES = ("cpu", "cuda", "mps")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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
    seconds: float
    vocabulary: str | None  # name of the vocabulary written, None when no class names known
    classes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- loading


def default_workers(device: str) -> int:
    """DataLoader workers: every core on an accelerator; on CPU one core is left to the models."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if device != "cpu" else max(1, cores - 1)


def default_worker_niceness(device: str) -> int:
    """On CPU the models and the decoders share cores: decoding yields to the models' threads."""
    return 10 if device == "cpu" else 0


def check_device(device: str) -> torch.device:
    """The torch device for ``device``; ZsfsError when it is unknown or absent on this machine."""
    if device not in DEVICES:
        raise ZsfsError(f"unknown device {device!r}; use one of: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ZsfsError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ZsfsError("--device mps was asked for, but torch sees no Apple GPU here; use --device cpu")
    return torch.device(device)


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line; blank lines ignored, duplicates refused."""
    path = Path(path)
    if not path.is_file():
        raise ZsfsError(f"class file {path} does not exist; pass a text file with one class name per line")
    classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not classes:
        raise ZsfsError(f"class file {path} lists no class names; put one class name per line")
    repeated = sorted(name for name, count in Counter(classes).items() if count > 1)
    if repeated:
        raise ZsfsError(f"class file {path} lists these names more than once: {', '.join(repeated)}")
    return classes


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


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Batch:
    """A collated batch: the good images as tensors, the failures as (index, reason)."""

    indices: np.ndarray  # listing positions of the good images
    clip_pixels: torch.Tensor | None
    backbone_pixels: torch.Tensor | None
    width: np.ndarray
    height: np.ndarray
    failures: list[tuple[int, str]]

    def pin_memory(self) -> "_Batch":  # called by DataLoader(pin_memory=True)
        if self.clip_pixels is None:
            return self
        return _Batch(self.indices, self.clip_pixels.pin_memory(), self.backbone_pixels.pin_memory(),
                      self.width, self.height, self.failures)


class DecodedImages(Dataset):
    """Listing position -> (position, clip pixels, backbone pixels, width, height) or a failure."""

    def __init__(self, source: ImageSource, clip_preprocess: Callable, backbone_preprocess: Callable):
        self.source = source
        self.clip_preprocess = clip_preprocess
        self.backbone_preprocess = backbone_preprocess

    def __len__(self) -> int:
        return len(self.source.paths)

    def __getitem__(self, index: int):
        try:
            image = decode_image(self.source.absolute(index))
        except ImageDecodeError as error:
            return index, error.reason
        return index, self.clip_preprocess(image), self.backbone_preprocess(image), image.width, image.height


def collate(items: list) -> _Batch:
    """Stack the decoded images; keep failures aside with their reasons."""
    good = [item for item in items if len(item) == 5]
    failures = [(item[0], item[1]) for item in items if len(item) == 2]
    if not good:
        empty = np.zeros(0, dtype=np.int64)
        return _Batch(empty, None, None, empty.astype(np.int32), empty.astype(np.int32), failures)
    indices, clip_pixels, backbone_pixels, width, height = zip(*good)
    return _Batch(
        np.asarray(indices, dtype=np.int64),
        torch.stack(clip_pixels),
        torch.stack(backbone_pixels),
        np.asarray(width, dtype=np.int32),
        np.asarray(height, dtype=np.int32),
        failures,
    )


def shard_batches(writer: StoreWriter, shards: Sequence[int], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Batches of listing positions (never crossing a shard boundary) and each batch's shard."""
    batches, owners = [], []
    for shard in shards:
        start, stop = writer.shard_bounds(shard)
        for first in range(start, stop, batch_size):
            batches.append(list(range(first, min(first + batch_size, stop))))
            owners.append(shard)
    return batches, owners


def make_loader(dataset: Dataset, batches: list[list[int]], *, workers: int, pin_memory: bool,
                worker_niceness: int = 0) -> DataLoader:
    """One loader over all pending work, so workers never idle between shards.

    ``worker_niceness`` > 0 lowers the decoding processes' CPU priority: when the models run on
    the same cores, decoding then fills the gaps instead of stalling the model's threads.
    """
    options = dict(num_workers=workers, collate_fn=collate, pin_memory=pin_memory)
    if workers > 0:
        options.update(prefetch_factor=4, worker_init_fn=partial(_lower_priority, worker_niceness))
    return DataLoader(dataset, batch_sampler=batches, **options)


def _lower_priority(niceness: int, worker_id: int) -> None:
    if niceness > 0 and hasattr(os, "nice"):
        os.nice(niceness)


# --------------------------------------------------------------------------- embedding


class _ShardRows:
    """Embedded rows and failures of one shard, collected batch by batch."""

    def __init__(self, n_batches: int):
        self.batches_left = n_batches
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.failures: list[tuple[int, str]] = []

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


def embed_batches(loader, owners: list[int], clip: ClipModel, backbone: Backbone, device: torch.device,
                  precision: str, on_batch: Callable[[int], None] | None = None):
    """Yield (shard, batch, clip embeddings, backbone features) as numpy float32, in loader order.

    Results are copied back one batch late, so an accelerator already runs the next batch while
    the previous one travels to the host (the copy is the only point that waits for the device).
    """
    autocast = (torch.autocast("cuda", dtype=PRECISIONS[precision])
                if device.type == "cuda" and PRECISIONS[precision] is not None else nullcontext())
    in_flight = None
    with torch.inference_mode():
        for shard, batch in zip(owners, loader):
            embedded = None
            if batch.clip_pixels is not None:
                with autocast:
                    clip_out = clip.encode_images(batch.clip_pixels)  # moved with non_blocking=True
                    backbone_out = backbone.encode_images(batch.backbone_pixels)
                embedded = (clip_out, backbone_out)
            if in_flight is not None:
                yield _to_host(*in_flight, on_batch)
            in_flight = (shard, batch, embedded)
        if in_flight is not None:
            yield _to_host(*in_flight, on_batch)


def _to_host(shard: int, batch: _Batch, embedded, on_batch: Callable[[int], None] | None):
    clip_out = backbone_out = None
    if embedded is not None:
        clip_out, backbone_out = (output.float().cpu().numpy() for output in embedded)
    if on_batch is not None:
        on_batch(len(batch.indices) + len(batch.failures))
    return shard, batch, clip_out, backbone_out


# --------------------------------------------------------------------------- the job


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
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ExtractSummary:
    """Embed every image of ``source`` with CLIP and the backbone into the store ``out``.

    ``classes``: a list of class names or a file with one per line; by default the source's
    folder labels; with neither, no vocabulary is written (``add_vocabulary`` adds one later).
    ``on_start(n)`` is called once with the number of listing entries still to process,
    ``on_batch(n)`` after each batch with the entries it covered (progress reporting).
    Rerunning after an interruption resumes: complete shards are kept, not recomputed.
    """
    started = time.perf_counter()
    _check_options(precision=precision, batch_size=batch_size, workers=workers, shard_size=shard_size, dtype=dtype)
    torch_device = check_device(device)
    image_source = open_source(source)
    out = Path(out) if out is not None else default_output(image_source.location)
    class_names = _resolve_classes(classes, image_source)

    clip = load_clip(clip_model, clip_weights, device=device)
    features = load_backbone(backbone, backbone_weights, device=device)
    identity = store_identity(image_source, clip, features, dtype=dtype)
    writer = StoreWriter(out, identity, n_items=len(image_source.paths), shard_size=shard_size,
                         dtype=dtype, overwrite=overwrite)

    pending = writer.pending_shards()
    batches, owners = shard_batches(writer, pending, batch_size)
    if on_start is not None:
        on_start(sum(len(batch) for batch in batches))
    workers = default_workers(device) if workers is None else workers
    dataset = DecodedImages(image_source, clip.preprocess, features.preprocess)
    loader = make_loader(dataset, batches, workers=workers, pin_memory=torch_device.type == "cuda",
                         worker_niceness=default_worker_niceness(device))

    batches_per_shard = Counter(owners)
    rows = {shard: _ShardRows(batches_per_shard[shard]) for shard in pending}
    processed = 0
    for shard, batch, clip_out, backbone_out in embed_batches(loader, owners, clip, features, torch_device,
                                                               precision, on_batch):
        collected = rows[shard]
        if clip_out is not None:
            collected.parts.append((batch.indices, clip_out, backbone_out, batch.width, batch.height))
        collected.failures.extend(batch.failures)
        collected.batches_left -= 1
        processed += len(batch.indices) + len(batch.failures)
        if collected.batches_left == 0:
            data = rows.pop(shard).shard_data(image_source, clip.record["dim"], features.record["dim"])
            writer.write_shard(shard, data)  # ZsfsError with advice when the disk is full

    master = writer.finalize(_store_attrs(image_source, clip, features))
    vocabulary = None
    if class_names:
        _write_vocabulary(master, clip, vocab_name, class_names, overwrite=True)
        vocabulary = vocab_name

    with Store(master) as store:
        skipped_paths, reasons = store.skipped()
        n_images = store.n_images
    return ExtractSummary(
        output=master,
        n_images=n_images,
        n_skipped=len(skipped_paths),
        skipped_reasons=dict(Counter(str(reason) for reason in reasons)),
        shards_written=len(pending),
        shards_reused=writer.n_shards - len(pending),
        images_processed=processed,
        seconds=time.perf_counter() - started,
        vocabulary=vocabulary,
        classes=list(class_names or []),
    )


def add_vocabulary(
    store_path: str | Path,
    classes: Sequence[str] | str | Path,
    name: str,
    *,
    clip_weights: str | Path | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> list[str]:
    """Embed class names with the CLIP model the store was built with; image data is untouched.

    ``clip_weights``: the recorded weights file at a new location (its sha256 must match).
    Returns the class names written.
    """
    check_device(device)
    class_names = _resolve_classes(classes, None)
    with Store(store_path) as store:
        record = dict(store.clip_info)
        if name in store.vocabulary_names() and not overwrite:
            raise ZsfsError(f"{store_path} already has a vocabulary named {name!r}; "
                            "choose another --name or pass --overwrite to replace it")
    if clip_weights is not None:
        record["file"] = str(Path(clip_weights).resolve())
    clip = load_clip_from_record(record, device=device)
    _write_vocabulary(Path(store_path), clip, name, class_names, overwrite=overwrite)
    return class_names


def default_output(location: Path) -> Path:
    """``photos/`` -> ``./photos.h5``; ``list.csv`` -> ``./list.h5``."""
    return Path.cwd() / (Path(location).stem + ".h5" if Path(location).is_file() else Path(location).name + ".h5")


def _write_vocabulary(master: Path, clip: ClipModel, name: str, classes: list[str], *, overwrite: bool) -> None:
    single, ensemble = encode_vocabulary(clip, classes)
    try:
        write_vocabulary(master, name, classes, single, ensemble, prompt=SINGLE_PROMPT,
                         n_templates=len(ENSEMBLE_TEMPLATES), overwrite=overwrite)
    except OSError as error:
        raise disk_error(error, f"vocabulary {name!r} into {master}") from error


def _store_attrs(source: ImageSource, clip: ClipModel, backbone: Backbone) -> dict:
    return {"source": str(source.location), "clip": clip.record, "backbone": backbone.record}


def _resolve_classes(classes, source: ImageSource | None) -> list[str] | None:
    if classes is None:
        return None if source is None else source.classes
    if isinstance(classes, (str, Path)):
        return read_class_file(classes)
    classes = [str(name).strip() for name in classes]
    if not classes or len(set(classes)) != len(classes) or not all(classes):
        raise ZsfsError("class names must be non-empty and distinct")
    return classes


def _check_options(*, precision: str, batch_size: int, workers: int | None, shard_size: int, dtype: str) -> None:
    if precision not in PRECISIONS:
        raise ZsfsError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if dtype not in EMBEDDING_DTYPES:
        raise ZsfsError(f"unknown dtype {dtype!r}; use one of: {', '.join(EMBEDDING_DTYPES)}")
    if batch_size < 1 or shard_size < 1 or (workers is not None and workers < 0):
        raise ZsfsError("--batch-size and --shard-size must be at least 1, --workers at least 0")
