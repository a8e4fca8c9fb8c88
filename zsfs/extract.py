"""Stage 1: an image source -> both models -> a sharded store (resumable).

This module checks the request, plans the work per shard (only shards the writer reports as
pending are computed), writes the store and its vocabulary (``zsfs.vocabulary``), and reports
what it did. Whole shards are computed by a ``ShardEmbedder`` (``zsfs.shard_embedder``: both
models, loaded once) in this process, or one per Ray worker (``zsfs.distributed``, ``ray=...``);
the decode/embed pipeline beneath it is ``zsfs.embedding``. Whether an existing store is the one
this run would write is ``zsfs.resume``'s question.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsfs.decode import DEFAULT_MAX_PIXELS
from zsfs.devices import MODEL_PRECISIONS, check_device
from zsfs.evaluate import LabelCodes
from zsfs.errors import (ParameterError, StoreMismatchError, ZsfsError, check_at_least, check_callbacks, check_choice,
                         check_parameter_type, check_path)
from zsfs.models import by_name_only, clip_tokenizer, cut_by_clip, encode_vocabulary, load_clip, same_text_to_clip
from zsfs.names import as_argument, check_class_names, reasons_text, some_names, visible
from zsfs.resume import (budget_identity, finished_as_requested, master_model_record, new_suffixes_explain,
                         other_model_names, other_weights_by_name, recorded_by_name, store_identity)
from zsfs.shard_embedder import DEFAULT_BATCH_SIZE, EmbedSettings, ShardEmbedder
from zsfs.sources import ImageSource, open_source
from zsfs.store.extras import check_vocabulary_name, refuse_other_classes, write_planned_vocabularies
from zsfs.store.files import UPDATE_FIX, check_store_writable, names_beside
from zsfs.store.identity import recorded_identity, refuse_another_listing
from zsfs.store.locks import check_store_lock, store_lock, written_elsewhere
from zsfs.store.reader import Store
from zsfs.store.schema import DEFAULT_SHARD_SIZE, EMBEDDING_DTYPES, SHARD_GLOB, shard_dir, vocabulary_file
from zsfs.store.placement import check_own_shards_folder, refuse_replacing_another_file
from zsfs.store.writer import StoreWriter
from zsfs.vocabulary import checked_classes, refuse_same_text_to_clip, save_vocabulary
from zsfs.weights import check_same_weights
from zsfs.writable import check_writable, refuse_input_as_output


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
    classes_cut_by_clip: list[str] = field(default_factory=list)  # names whose end CLIP does not read (cut_by_clip)
    labels_not_classes: dict[str, int] = field(default_factory=dict)  # the stored labels no class names -> images
    classes_without_images: list[str] = field(default_factory=list)  # class folders whose every file was skipped
    nested_classes: tuple[list[str], list[str]] | None = None  # the source's (ImageSource.nested_classes)

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.embedding_seconds if self.embedding_seconds > 0 else 0.0


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
    source = check_path("source", source)
    if out is not None:
        out = check_path("out", out)
    _check_options(precision=precision, batch_size=batch_size, workers=workers, shard_size=shard_size, dtype=dtype,
                   max_pixels=max_pixels, ray=ray, ray_workers=ray_workers, vocab_name=vocab_name, overwrite=overwrite)
    vocab_name = check_vocabulary_name(vocab_name)  # (checked just above) in the form the store keeps
    if ray is None:
        check_device(device)  # before the listing; Ray workers check their own device (the driver may have none)
    else:
        from zsfs.ray_cluster import check_ray_plan  # Ray is an optional dependency

        check_ray_plan(ray, device, ray_workers)
    settings = EmbedSettings(clip_model, clip_weights, backbone, backbone_weights, device, precision, batch_size,
                             workers, max_pixels)
    given_classes = checked_classes(classes)  # a bad class file fails before a long listing
    image_source = open_source(source)
    fix = "choose another location" if out is not None else \
        "the store goes to the working folder unless given one: choose another location with --out PATH"
    out = Path(out) if out is not None else default_output(image_source.location)
    rerun = out.is_file()
    if not overwrite and (rerun or any(shard_dir(out).glob(SHARD_GLOB))):  # a rerun, or a stopped run's shards:
        fix = UPDATE_FIX  # updated in place, where another location embeds everything again (failure test)
    class_names = image_source.classes if given_classes is None else given_classes

    def refuse_another_run() -> None:
        """StoreMismatchError when the store (or a stopped run's shards) at ``out`` is of another
        listing, layout or models: what to pass to resume it."""
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

    try:
        check_writable(out, "store", fix, beside=names_beside(out))
        if rerun:  # it writes into the shards folder too (its vocabulary when missing)
            check_store_writable(out, shard_dir(out), vocabulary_file(shard_dir(out), vocab_name))
    except ZsfsError:
        # a finished store on a read-only disk: a rerun of the same command has nothing to write
        done = _already_done(out, settings, image_source, shard_size=shard_size, dtype=dtype, vocab_name=vocab_name,
                             classes=class_names, started=started) if rerun and not overwrite else None
        if done is None:
            if rerun and not overwrite:  # a read-only store rerun with other options: which (crash review: once
                refuse_another_run()     # made writable, the user was told the mismatch only then)
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
    # a list's labels in another encoding (a class 'd\xe9faut' for CLIP): refused, unless resuming a store an
    # earlier zsfs built from them (its finished shards hold those labels; upgrade test)
    if image_source.labels_not_text and (overwrite or recorded_identity(out).get("listing_sha256") != image_source.digest()):
        raise ZsfsError(image_source.labels_not_text)
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
    replace_vocabulary = f"`zsfs text {as_argument(out)} --classes FILE --vocab {as_argument(vocab_name, path=False)} --overwrite`"
    if not overwrite and (rerun or shard_dir(out).is_dir()):  # (the digest costs a pass over the listing)
        refuse_another_run()
    if class_names and not overwrite:
        refuse_other_classes(out, vocab_name, class_names, replace_vocabulary)

    recorded = finished_as_requested(out, settings, image_source, shard_size=shard_size, dtype=dtype) \
        if rerun and not overwrite else None
    vocabulary = None if recorded is None else _missing_vocabulary(out, image_source, vocab_name, class_names)
    if recorded is not None and not (vocabulary and ray is not None):  # (Ray: a worker's GPU embeds the vocabulary)
        # no image to embed: no backbone to load, no Ray cluster to start
        read_as_one, cut = _read_by_clip(clip_model, class_names)
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
                        classes=class_names, read_as_one=read_as_one, cut=cut)

    by_name = () if overwrite else recorded_by_name(out, settings)
    with by_name_only(f"{out} was started with them by name", by_name), \
            _embedder(settings, image_source, ray, ray_workers) as embedder:
        read_as_one = embedder.same_text_to_clip(class_names) if class_names else []
        if given_classes is not None:  # before the images: a list given is fixed in seconds
            refuse_same_text_to_clip(read_as_one)
        cut = cut_by_clip(clip_tokenizer(clip_model), class_names) if class_names else []  # (Ray: said here)
        clip_record, backbone_record = embedder.records
        earlier = None if overwrite else recorded_identity(out)
        # the lock held from the images to the vocabulary, as import holds it (review: the writer's ended
        # with the master, and a `zsfs text` run meanwhile had its vocabulary overwritten)
        with store_lock(out), StoreWriter(out, store_identity(image_source, clip_record, backbone_record, dtype=dtype,
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
            except (KeyboardInterrupt, Exception) as stop:  # Ctrl-C, SIGTERM, a full disk, a decoding process
                writer.tell_what_a_rerun_keeps(stop, pending)  # killed: the caller hears what a rerun redoes
                raise
            embedding_seconds = time.perf_counter() - embedding_started
            writer.remove_tmp_files()  # what killed workers left behind; every writer has stopped

            records = {"clip": master_model_record(clip_record, writer.identity["clip"]),
                       "backbone": master_model_record(backbone_record, writer.identity["backbone"])}
            # written below, after the master: a stop between is then named, not silent
            write_planned_vocabularies(writer.shards_dir, writer.identity, [vocab_name] if class_names else [],
                                       "zsfs extract")
            writer.finalize_if_changed({"source": str(image_source.location), **records}, shards_written=bool(pending))
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
                    classes=class_names, read_as_one=read_as_one, cut=cut, shards_written=len(pending),
                    images_processed=processed, embedding_seconds=embedding_seconds, shards_redone=shards_redone,
                    shards_repaired=repaired, set_aside=set_aside)


def _summary(master: Path, source: ImageSource, started: float, *, vocabulary: str | None,
             classes: list[str] | None, read_as_one: list[tuple[str, str]], cut: list[str], shards_written: int = 0,
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
        nested_classes=source.nested_classes,
        empty_tars=source.empty_tars,
        compressed_tars=source.compressed_tars,
        unread_tars=source.unread_tars,
        tar_links=source.tar_links,
        unread_formats=source.unread_formats,
        repeated_paths=source.repeated_paths,
        classes_read_as_one=read_as_one,  # class folders: the images are embedded, the summary says it
        classes_cut_by_clip=cut,
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
    read_as_one, cut = _read_by_clip(settings.clip_model, classes)
    return _summary(master, source, started, vocabulary=vocab_name if classes else None, classes=classes,
                    read_as_one=read_as_one, cut=cut)


def _read_by_clip(clip_model: str, classes: list[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """The class names CLIP's tokenizer reads as one (``same_text_to_clip``) and those it cuts
    (``cut_by_clip``), by the tokenizer alone (no weights)."""
    if not classes:
        return [], []
    tokenizer = clip_tokenizer(clip_model)
    return same_text_to_clip(tokenizer, classes), cut_by_clip(tokenizer, classes)


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
