"""Stage 1: an image source -> both models -> a sharded store (resumable).

The decode/embed pipeline lives in ``zsfs.embedding``; this module plans the work per shard,
writes the store and its vocabulary (``zsfs.vocabulary``), and reports what it did; whether an
existing store is the one this run would write is ``zsfs.resume``'s question. Batches never cross shard
boundaries: a resumed run computes exactly the batches an uninterrupted run would,
so its store has the same content. Only shards the writer reports as pending are computed.

Whole shards are computed by a ``ShardEmbedder`` (both models, loaded once): in this process,
or one per Ray worker (``zsfs.distributed``, ``ray=...``); either way the same function writes
each shard, so shards of a local run and of a Ray run are interchangeable.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, closing, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from zsfs.decode import DEFAULT_MAX_PIXELS
from zsfs.devices import MODEL_PRECISIONS, check_device
from zsfs.embedding import Batch, embedded_images
from zsfs.evaluate import LabelCodes
from zsfs.errors import (ParameterError, StoreMismatchError, ZsfsError, check_at_least, check_callbacks, check_choice,
                         check_parameter_type, check_path_type)
from zsfs.models import (by_name_only, clip_tokenizer, encode_vocabulary, load_backbone, load_clip, same_text_to_clip,
                         weights_kind)
from zsfs.names import as_argument, check_class_names, reasons_text, some_names, visible
from zsfs.resume import (budget_identity, finished_as_requested, master_model_record, new_suffixes_explain,
                         other_model_names, other_weights_by_name, recorded_by_name, store_identity)
from zsfs.sources import ImageSource, open_source
from zsfs.store.extras import check_vocabulary_name, refuse_other_classes, write_planned_vocabularies
from zsfs.store.files import UPDATE_FIX, check_store_writable, names_beside
from zsfs.store.locks import check_store_lock, store_lock, written_elsewhere
from zsfs.store.reader import Store
from zsfs.store.schema import DEFAULT_SHARD_SIZE, EMBEDDING_DTYPES, shard_dir, vocabulary_file
from zsfs.store.rows import usable_rows
from zsfs.store.identity import recorded_identity, refuse_another_listing
from zsfs.store.writer import ShardData, StoreWriter, check_own_shards_folder, refuse_replacing_another_file
from zsfs.vocabulary import checked_classes, refuse_same_text_to_clip, save_vocabulary
from zsfs.weights import FILE, check_same_weights
from zsfs.writable import check_writable, refuse_input_as_output

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
    shards_redone: int = 0  # Ray: shards recomputed because the worker holding them died
    shards_repaired: list[str] = field(default_factory=list)  # shard files there but damaged or cut short: rewritten
    set_aside: dict[str, str] = field(default_factory=dict)  # files this run set aside for crashing or hanging a
    # decoding process -> reason
    no_labels_reason: str | None = None  # the source's, when its class subfolders could not be used
    empty_tars: list[str] = field(default_factory=list)  # the source's tar shards that hold no image
    compressed_tars: list[str] = field(default_factory=list)  # compressed tars beside the shards: not read
    unread_tars: list[str] = field(default_factory=list)  # .tar files in an image folder: not read
    tar_links: list[str] = field(default_factory=list)  # image names that are links inside a tar: not read
    unread_formats: dict[str, int] = field(default_factory=dict)  # images in formats not read: suffix -> count
    repeated_paths: list[str] = field(default_factory=list)  # the list's paths given more than once
    classes_read_as_one: list[tuple[str, str]] = field(default_factory=list)  # class folders CLIP cannot tell apart
    labels_not_classes: dict[str, int] = field(default_factory=dict)  # the stored labels no class names -> images
    classes_without_images: list[str] = field(default_factory=list)  # class folders whose every file was skipped

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.embedding_seconds if self.embedding_seconds > 0 else 0.0


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
    if Path(absolute["clip_model"]).expanduser().is_file():
        absolute["clip_model"] = os.path.abspath(os.path.expanduser(absolute["clip_model"]))
    for role, name in (("clip", "clip_model"), ("backbone", "backbone")):
        weights = f"{role}_weights"
        if weights_kind(role, models[name], models[weights]) == FILE:
            absolute[weights] = os.path.abspath(os.path.expanduser(models[weights]))
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
        self.clip = load_clip(settings.clip_model, settings.clip_weights, device=settings.device)
        self.features = load_backbone(settings.backbone, settings.backbone_weights, device=settings.device)
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
                                     set_aside=self.set_aside,
                                     rerun_advice=" Rerun: an extract resumes from the shards it finished.",
                                     device=settings.device, precision=settings.precision, workers=settings.workers,
                                     max_pixels=settings.max_pixels, cores=self.cores, on_batch=on_batch)) as embedded:
            return _write_shards(writer, self.source, embedded, owners, self.clip.record["dim"],
                                 self.features.record["dim"])

    def encode_vocabulary(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(single-prompt, ensemble) text embeddings of the class names."""
        return encode_vocabulary(self.clip, classes)

    def same_text_to_clip(self, classes: list[str]) -> list[tuple[str, str]]:
        return same_text_to_clip(self.clip.tokenizer, classes)

    def __exit__(self, *exc) -> None:
        return None


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
    ray: str | None = None,
    ray_workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_resume: Callable[[int, int], None] | None = None,
) -> ExtractSummary:
    """Embed every image of ``source`` with CLIP and the backbone into the store ``out``.

    ``classes``: a list of class names or a file with one per line; by default the source's
    folder labels; with neither, no vocabulary is written (``add_vocabulary`` adds one later).
    ``on_start(n)`` is called once with the number of listing entries still to process,
    ``on_batch(n)`` after each batch with the entries it covered (progress reporting);
    ``on_resume(kept, n_shards)`` before ``on_start`` when a rerun keeps shards an earlier run finished.
    ``max_pixels``: the decoding budget of one image (default ``zsfs.decode.DEFAULT_MAX_PIXELS``).
    Rerunning after an interruption resumes: complete shards are kept, not recomputed.
    ``ray``: compute the shards on a Ray cluster at this address (``"local"`` starts one here,
    ``"auto"`` joins the one this machine belongs to) with ``ray_workers`` workers
    (``zsfs.distributed``); the store is the same as a local run's.
    """
    started = time.perf_counter()
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    check_callbacks(on_start=on_start, on_batch=on_batch, on_resume=on_resume)
    check_path_type("source", source)
    if out is not None:
        check_path_type("out", out)
    _check_options(precision=precision, batch_size=batch_size, workers=workers, shard_size=shard_size, dtype=dtype,
                   max_pixels=max_pixels, ray=ray, ray_workers=ray_workers, vocab_name=vocab_name, overwrite=overwrite)
    vocab_name = check_vocabulary_name(vocab_name)  # (checked just above) in the form the store keeps
    if ray is None:
        check_device(device)  # before the listing; Ray workers check their own device (the driver may have none)
    else:
        from zsfs.distributed import check_ray_plan  # Ray is an optional dependency

        check_ray_plan(ray, device, ray_workers)
    settings = EmbedSettings(clip_model, clip_weights, backbone, backbone_weights, device, precision, batch_size,
                             workers, max_pixels)
    given_classes = checked_classes(classes)  # a bad class file fails before a long listing
    image_source = open_source(source)
    fix = "choose another location" if out is not None else \
        "the store goes to the working folder unless given one: choose another location with --out PATH"
    out = Path(out) if out is not None else default_output(image_source.location)
    rerun = out.is_file()
    if rerun:  # a rerun updates the store in place: another location would embed everything again
        fix = UPDATE_FIX
    class_names = image_source.classes if given_classes is None else given_classes
    try:
        check_writable(out, "store", fix, beside=names_beside(out))
        if rerun:  # it writes into the shards folder too (its vocabulary when missing)
            check_store_writable(out, shard_dir(out), vocabulary_file(shard_dir(out), vocab_name))
    except ZsfsError:
        # a finished store on a read-only disk: a rerun of the same command has nothing to write
        done = _already_done(out, settings, image_source, shard_size=shard_size, dtype=dtype, vocab_name=vocab_name,
                             classes=class_names, started=started) if rerun and not overwrite else None
        if done is None:
            raise
        if on_start is not None:
            on_start(0)
        return done
    refuse_input_as_output(out, [("image source", source), ("CLIP weights file", clip_weights),
                                 ("backbone weights file", backbone_weights),
                                 ("class file", classes if isinstance(classes, (str, Path)) else None)])
    check_own_shards_folder(out, overwrite)  # before the models load, as the checks below
    refuse_replacing_another_file(out)
    check_store_lock(out)
    if image_source.merged_labels:  # before the models load
        raise ZsfsError(f"class folders of {visible(str(image_source.location))} read as one label: "
                        f"{some_names([visible(label) for label in image_source.merged_labels], 3, with_count=False)} "
                        "(a name that is not UTF-8 text is read with its bytes written \\xNN, as another folder is "
                        "named); rename one of each, or list the images in a .csv with a label column")
    if given_classes is None and class_names:  # folder names: as strict as a list, and before the models load
        try:
            check_class_names(class_names, f"the class folders of {image_source.location}")
        except ZsfsError as error:
            raise ZsfsError(f"{error}; rename the folders, or name the classes with --classes FILE") from None
    replace_vocabulary = f"`zsfs text {as_argument(out)} --classes FILE --vocab {as_argument(vocab_name)} --overwrite`"
    if not overwrite and (rerun or shard_dir(out).is_dir()):  # (the digest costs a pass over the listing)
        try:
            refuse_another_listing(out, {"source": str(image_source.location), "listing_sha256": image_source.digest(),
                                         "n_items": len(image_source.paths), "shard_size": shard_size, "dtype": dtype,
                                         "max_pixels": budget_identity(max_pixels).get("max_pixels")})
        except StoreMismatchError as error:
            # said together: a resume fixed for one failed on the other
            models = other_model_names(out, settings) or other_weights_by_name(out, settings)
            raise new_suffixes_explain(StoreMismatchError(f"{error}{'; and it was ' + models if models else ''}"),
                                       out, image_source) from None
        models = other_model_names(out, settings) or other_weights_by_name(out, settings)
        if models:
            raise StoreMismatchError(f"{out if out.is_file() else shard_dir(out)} was {models}")
    if class_names and not overwrite:
        refuse_other_classes(out, vocab_name, class_names, replace_vocabulary)

    recorded = finished_as_requested(out, settings, image_source, shard_size=shard_size, dtype=dtype) \
        if rerun and not overwrite else None
    vocabulary = None if recorded is None else _missing_vocabulary(out, image_source, vocab_name, class_names)
    if recorded is not None and not (vocabulary and ray is not None):  # (Ray: a worker's GPU embeds the vocabulary)
        # no image to embed: no backbone to load, no Ray cluster to start
        read_as_one = same_text_to_clip(clip_tokenizer(clip_model), class_names) if class_names else []
        if given_classes is not None:
            refuse_same_text_to_clip(read_as_one)
        if vocabulary:  # CLIP alone
            with store_lock(out):
                with by_name_only(f"{out} was built with them by name"):
                    clip = load_clip(clip_model, clip_weights, device=device)
                check_same_weights(clip.record, recorded["clip"], "CLIP")
                if on_start is not None:
                    on_start(0)
                single, ensemble = encode_vocabulary(clip, vocabulary)
                save_vocabulary(out, vocab_name, vocabulary, single, ensemble, overwrite=True, identity=recorded)
        elif on_start is not None:
            on_start(0)
        return _summary(out, image_source, started, vocabulary=vocab_name if class_names else None,
                        classes=class_names, read_as_one=read_as_one)

    by_name = () if overwrite else recorded_by_name(out, settings)
    with by_name_only(f"{out} was started with them by name", by_name), \
            _embedder(settings, image_source, ray, ray_workers) as embedder:
        read_as_one = embedder.same_text_to_clip(class_names) if class_names else []
        if given_classes is not None:  # before the images: a list given is fixed in seconds
            refuse_same_text_to_clip(read_as_one)
        clip_record, backbone_record = embedder.records
        earlier = None if overwrite else recorded_identity(out)
        with StoreWriter(out, store_identity(image_source, clip_record, backbone_record, dtype=dtype,
                                             max_pixels=max_pixels, earlier=earlier),
                         n_items=len(image_source.paths), shard_size=shard_size, dtype=dtype,
                         overwrite=overwrite) as writer:
            pending = writer.pending_shards()
            # a shard is renamed into place whole: a file there that is still pending is damaged
            repaired = [writer.shard_path(shard).name for shard in pending if writer.shard_path(shard).is_file()]
            writer.announce(pending, on_start, on_resume)
            embedding_started = time.perf_counter()
            try:
                processed = embedder.write_shards(writer, pending, on_batch)
            except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM: the command line says what a rerun redoes
                with suppress(Exception):  # (a file system that fails now: the stop is still said in one line)
                    stop.resume = writer.kept_for_a_rerun(pending)
                raise
            embedding_seconds = time.perf_counter() - embedding_started
            writer.remove_tmp_files()  # what killed workers left behind; every writer has stopped

            records = {"clip": master_model_record(clip_record, writer.identity["clip"]),
                       "backbone": master_model_record(backbone_record, writer.identity["backbone"])}
            # written below, after the master: a stop between is then named, not silent
            write_planned_vocabularies(writer.shards_dir, writer.identity, [vocab_name] if class_names else [],
                                       "zsfs extract")
            writer.finish({"source": str(image_source.location), **records}, shards_written=bool(pending))
            if class_names and not overwrite:  # again: a store whose shards this run repaired could not be read before
                refuse_other_classes(out, vocab_name, class_names, replace_vocabulary)
            vocabulary = _missing_vocabulary(writer.master, image_source, vocab_name, class_names)
            if vocabulary:
                single, ensemble = embedder.encode_vocabulary(vocabulary)
                save_vocabulary(writer.master, vocab_name, vocabulary, single, ensemble, overwrite=True,
                                identity=writer.identity)
            shards_redone = embedder.shards_redone
            set_aside = {image_source.paths[index]: embedder.set_aside[index] for index in sorted(embedder.set_aside)}
    return _summary(writer.master, image_source, started, vocabulary=vocab_name if class_names else None,
                    classes=class_names, read_as_one=read_as_one, shards_written=len(pending),
                    images_processed=processed, embedding_seconds=embedding_seconds, shards_redone=shards_redone,
                    shards_repaired=repaired, set_aside=set_aside)


def _summary(master: Path, source: ImageSource, started: float, *, vocabulary: str | None,
             classes: list[str] | None, read_as_one: list[tuple[str, str]], shards_written: int = 0,
             images_processed: int = 0, embedding_seconds: float = 0.0, shards_redone: int = 0,
             shards_repaired: list[str] | None = None, set_aside: dict[str, str] | None = None) -> ExtractSummary:
    """What the run did, with the finished store's counts (the defaults: a run that had nothing to do)."""
    with Store(master) as store:
        skipped_paths, reasons = store.skipped()
        n_images, n_shards = store.n_images, store.n_shards
    listed = LabelCodes.of(source.labels) if classes and source.labels is not None else None
    stored = listed
    if listed is not None and len(skipped_paths):  # the images embedded: a folder whose every file was skipped has none
        skipped = set(skipped_paths.tolist())  # (few; the store's labels of a 100M-image store would take GBs)
        stored = listed.of_rows(np.fromiter((path not in skipped for path in source.paths), bool, len(source.paths)))
    return ExtractSummary(
        output=Path(master).absolute(),  # a rerun with nothing to do was given the path as typed
        n_images=n_images,
        n_skipped=len(skipped_paths),
        skipped_reasons=dict(Counter(str(reason) for reason in reasons)),
        shards_written=shards_written,
        shards_reused=n_shards - shards_written,
        images_processed=images_processed,
        seconds=time.perf_counter() - started,
        embedding_seconds=embedding_seconds,
        vocabulary=vocabulary,
        classes=list(classes or []),
        shards_redone=shards_redone,
        shards_repaired=shards_repaired or [],
        set_aside=set_aside or {},
        no_labels_reason=source.no_labels_reason,
        empty_tars=source.empty_tars,
        compressed_tars=source.compressed_tars,
        unread_tars=source.unread_tars,
        tar_links=source.tar_links,
        unread_formats=source.unread_formats,
        repeated_paths=source.repeated_paths,
        classes_read_as_one=read_as_one,  # class folders: the images are embedded, the summary says it
        # --classes that leave out some of the folders: a fit evaluates their images as out of distribution
        labels_not_classes=stored.counts_not_among(classes) if stored is not None else {},
        classes_without_images=[] if listed is None else
        [name for name, was, kept in zip(classes, listed.code(classes) >= 0, stored.code(classes) >= 0) if was and not kept],
    )


def _already_done(master: Path, settings: EmbedSettings, source: ImageSource, *, shard_size: int, dtype: str,
                  vocab_name: str, classes: list[str] | None, started: float) -> ExtractSummary | None:
    """The summary of a rerun with nothing to write, judged by reading alone (no lock, no model):
    every image embedded as requested and the vocabulary, if any, holding these classes; None
    otherwise, and while another process writes the store. For a store the run cannot write: a
    rerun of a finished extract then succeeds."""
    if source.merged_labels or written_elsewhere(master):  # (a writer's lock is read, not taken)
        return None
    try:
        recorded = finished_as_requested(master, settings, source, shard_size=shard_size, dtype=dtype, lock=False)
        if recorded is None or _missing_vocabulary(master, source, vocab_name, classes):  # (its classes too)
            return None
    except (ZsfsError, OSError):
        return None  # the error that sent the run here is the one to show
    # (classes --classes gives that CLIP reads as one: their vocabulary was refused, so none is there)
    read_as_one = same_text_to_clip(clip_tokenizer(settings.clip_model), classes) if classes else []
    return _summary(master, source, started, vocabulary=vocab_name if classes else None, classes=classes,
                    read_as_one=read_as_one)


def _embedder(settings: EmbedSettings, source: ImageSource, ray: str | None,
              ray_workers: int | None) -> AbstractContextManager:
    """The models in this process, or a pool of Ray workers each holding them."""
    if ray is None:
        return ShardEmbedder(settings, source)
    from zsfs.distributed import RayEmbedders  # Ray is an optional dependency

    return RayEmbedders(settings, source, address=ray, n_workers=ray_workers)


def _missing_vocabulary(master: Path, source: ImageSource, name: str, classes: list[str] | None) -> list[str] | None:
    """The class names still to embed (None when the store already has them, or none are known).
    A store nothing could be decoded into is an error, raised before any text is embedded."""
    with Store(master) as store:
        name = store.stored_vocabulary_name(name)
        has_vocabulary = name in store.vocabulary_names() and store.vocabulary(name).classes == classes
        skipped_paths, reasons = store.skipped()
        n_images = store.n_images
    if n_images == 0:
        counts = reasons_text(Counter(map(str, reasons)).most_common())
        raise ZsfsError(f"none of the {len(skipped_paths):,} files of {source.location} could be decoded "
                        f"({counts}); {master} records them (`zsfs info --skipped {as_argument(master)}`)")
    return classes if classes and not has_vocabulary else None


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


def default_output(location: Path) -> Path:
    """``photos/`` -> ``./photos.h5``; ``list.csv`` -> ``./list.h5``; ``laion/{00000..00099}.tar``
    -> ``./laion.h5`` (a folder named ``cats{2024}`` -> ``./cats{2024}.h5``)."""
    location = Path(location)
    if "{" in location.name and not location.exists():  # a brace pattern names no file itself
        location = location.parent
    return Path.cwd() / (location.stem + ".h5" if location.is_file() else location.name + ".h5")


def _check_options(*, precision: str, batch_size: int, workers: int | None, shard_size: int, dtype: str,
                   max_pixels: int, ray: str | None, ray_workers: int | None, vocab_name: str, overwrite: bool) -> None:
    """Refuse bad options before anything is listed or written (not even the store's lock file)."""
    check_choice("precision", precision, MODEL_PRECISIONS)
    check_choice("dtype", dtype, EMBEDDING_DTYPES)
    check_parameter_type("vocab_name", vocab_name, str)
    check_parameter_type("overwrite", overwrite, bool)  # "no" is true
    for name, value, least in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1),
                               ("max_pixels", max_pixels, 1), ("workers", workers, 0), ("ray_workers", ray_workers, 1)):
        check_at_least(name, value, least)
    if ray is None and ray_workers is not None:
        raise ParameterError("{ray_workers} needs {ray}")

from zsfs.api import callable_module  # noqa: E402 (after `extract` exists)

callable_module(__name__, extract)  # zsfs.extract(folder, out, ...): the front door (zsfs/api.py)
