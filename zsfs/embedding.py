"""Decoding and embedding in a pipeline: DataLoader workers decode, the models embed batches.

Each image is decoded once, in a worker, and both models' own preprocessing is applied there,
so the main process only moves ready batches through the models and never waits on a
single-threaded decode loop. Failures travel with their batch as (position, reason).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from zsfs.crashes import (CRASH_SIGNALS, DecodingProcessDied, HangWatch, crash_advice, decoding_process_died,
                          set_aside_crashing_file, without_torch_sigchld_handler)
from zsfs.devices import MODEL_PRECISIONS, torch_threads_fixed
from zsfs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, MachineReadError, image_size, quiet_decoder_warnings
from zsfs.errors import one_line
from zsfs.sources import ImageSource

AUTOCAST_DTYPES = dict(zip(MODEL_PRECISIONS, (None, torch.bfloat16, torch.float16)))  # None: no autocast


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: str, cores: int | None = None) -> int:
    """DataLoader workers: every core on an accelerator; on CPU a quarter of the cores (at least
    one), since there the models need most of the cores and decoding is the smaller share.
    ``cores``: the cores this process may use [default: all it sees] (a Ray worker's share)."""
    cores = available_cores() if cores is None else cores
    return cores if device != "cpu" else max(1, cores // 4)


def default_worker_niceness(device: str) -> int:
    """On CPU the models and the decoders share cores: decoding yields to the models' threads."""
    return 10 if device == "cpu" else 0


@contextmanager
def model_threads(device: torch.device, cores: int | None = None) -> Iterator[None]:
    """On CPU, give the models every core (of ``cores``, default all) as intra-op threads; the
    decoding workers run at a lower priority (:func:`default_worker_niceness`) and fill the gaps.

    Measured on an idle 2-core Xeon (`bench_extract.py --models tiny,small --n-images 160
    --repeat 2`): ViT-B/32 + EfficientNet-Lite0 at 13.5 img/s with 2 threads against 7.1 with the
    one thread the decoding worker used to leave (the bare forward rate: 15.4), the decode-bound
    tiny models at 199 against 224 img/s. (On a 2-core machine kept busy by other jobs, one
    thread beside the worker had been faster.) The caller's setting is restored afterwards.
    A local run (``cores`` None) started with ``OMP_NUM_THREADS`` keeps the threads torch took from
    it, as fit does: a shared machine asks for fewer, and a run held to one thread repeats the bytes
    of another. A Ray worker keeps its share: Ray sets the variable in its workers itself.
    """
    if device.type != "cpu" or torch_threads_fixed() or (cores is None and "OMP_NUM_THREADS" in os.environ):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, available_cores() if cores is None else cores))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class Batch:
    """A collated batch: the good images as tensors (one per preprocessor), failures as (index, reason)."""

    indices: np.ndarray  # listing positions of the good images
    pixels: tuple[torch.Tensor, ...]  # one (B, 3, H, W) tensor per preprocessor; () when none decoded
    width: np.ndarray
    height: np.ndarray
    failures: list[tuple[int, str | MachineReadError]]  # a MachineReadError stops the run (embed_batches)

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return replace(self, pixels=tuple(pixels.pin_memory() for pixels in self.pixels))


class DecodedImages(Dataset):
    """Listing position -> (position, pixels per preprocessor, width, height), or (position, reason).

    The image is decoded once and handed to every preprocessor (one per model); ``max_pixels``
    is the decoding budget of one image (see ``zsfs.decode.DEFAULT_MAX_PIXELS``). ``decoding``
    (shared memory, one slot per decoding process): the position each process is decoding, -1
    between images; a process that crashes leaves the position of the file that crashed it.
    ``decoding_since`` (shared memory, the same slots): when (``time.monotonic``) each began it.
    ``set_aside``: positions not to decode (files that crashed or hung a decoding process) -> reason.
    """

    def __init__(self, source: ImageSource, *preprocess: Callable, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decoding: Sequence[int] | None = None, decoding_since: Sequence[float] | None = None,
                 set_aside: Mapping[int, str] | None = None):
        self.source = source
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.decoding = decoding
        self.decoding_since = decoding_since
        self.set_aside = set_aside or {}

    def __len__(self) -> int:
        return len(self.source.paths)

    def __getitem__(self, index: int):
        worker = get_worker_info()
        if worker is None or self.decoding is None:
            return self._decoded(index)
        if self.decoding_since is not None:  # before the position: a watcher never pairs it with an old time
            self.decoding_since[worker.id] = time.monotonic()
        self.decoding[worker.id] = index
        try:
            return self._decoded(index)
        finally:
            self.decoding[worker.id] = -1

    def _decoded(self, index: int):
        known_failure = self.set_aside.get(index) or self.source.unreadable.get(self.source.paths[index])
        if known_failure is not None:
            return index, known_failure
        try:
            image = self.source.decode(index, self.max_pixels)
        except ImageDecodeError as error:
            return index, error.reason
        except MachineReadError as error:  # handed over as it is: the main process stops the run with it
            return index, error
        try:
            pixels = tuple(preprocess(image) for preprocess in self.preprocess)
        except Exception as error:  # a model transform's own limit (open_clip's 'longest' on a 1-pixel-wide
            return index, f"the model's preprocessing failed ({one_line(error)})"  # strip): one image, not the run
        return index, pixels, *image_size(image)


def collate(items: list) -> Batch:
    """Stack the decoded images; keep failures aside with their reasons."""
    good = [item for item in items if len(item) == 4]
    failures = [(item[0], item[1]) for item in items if len(item) == 2]
    if not good:
        empty = np.zeros(0, dtype=np.int64)
        return Batch(empty, (), empty.astype(np.int32), empty.astype(np.int32), failures)
    indices, pixels, width, height = zip(*good)
    return Batch(
        np.asarray(indices, dtype=np.int64),
        tuple(_stack(per_model) for per_model in zip(*pixels)),
        np.asarray(width, dtype=np.int32),
        np.asarray(height, dtype=np.int32),
        failures,
    )


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``; inside a loader worker, into shared memory (as torch's default collate
    does): a batch that cannot be shared (a full /dev/shm, a file-size limit) then fails in the
    worker, which the loader reports, not later in its queue's feeder thread, which dropped the
    batch and left the loader waiting for it forever."""
    if get_worker_info() is None:
        return torch.stack(tensors)
    out = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype).share_memory_()
    return torch.stack(tensors, out=out)


def make_loader(dataset: Dataset, batches: list[range], *, workers: int, pin_memory: bool,
                worker_niceness: int = 0) -> DataLoader:
    """One loader over all the work (not one per shard), so workers never idle in between.

    ``worker_niceness`` > 0 lowers the decoding processes' CPU priority: when the models run on
    the same cores, decoding then fills the gaps instead of stalling the model's threads.
    """
    options = dict(num_workers=workers, collate_fn=collate, pin_memory=pin_memory)
    if workers > 0:
        options.update(prefetch_factor=4, worker_init_fn=partial(_start_worker, worker_niceness))
    return DataLoader(dataset, batch_sampler=batches, **options)


def _start_worker(niceness: int, worker_id: int) -> None:
    """A decoding process of ours: Pillow's warnings off the terminal (spawned workers do not
    inherit the command line's filter), SIGTERM's default action back, no traceback when the
    main process stops mid hand-over, and the priority lowered by ``niceness``."""
    quiet_decoder_warnings()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a fork of the command line: torch's shutdown terminates it
    if hasattr(signal, "SIGHUP") and callable(signal.getsignal(signal.SIGHUP)):  # (an ignored one stays ignored)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    sys.excepthook = partial(_quiet_when_the_reader_left, sys.excepthook)
    if niceness > 0 and hasattr(os, "nice"):
        os.nice(niceness)


_RESOURCE_SHARER = os.path.join("multiprocessing", "resource_sharer.py")


def _quiet_when_the_reader_left(report: Callable, kind: type, error: BaseException, trace) -> None:
    """A decoding process hands each batch's shared-memory file to the main process through
    multiprocessing's resource sharer, a thread that reports its errors to ``sys.excepthook`` and
    serves on. When the main process stops (SIGTERM, Ctrl-C) during a hand-over, the connection
    breaks, and that traceback was printed under the command's last line: the reader left,
    there is nothing to report. Anything else goes to ``report``."""
    if issubclass(kind, (ConnectionError, EOFError)) and trace is not None \
            and trace.tb_frame.f_code.co_filename.endswith(_RESOURCE_SHARER):
        return
    report(kind, error, trace)


def embed_batches(batches: Iterable[Batch], tags: Iterable, encoders: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                  device: torch.device, precision: str,
                  on_batch: Callable[[int], None] | None = None) -> Iterator[tuple]:
    """Yield (tag, batch, outputs): ``outputs`` holds one numpy float32 array per encoder (the
    encoder ``i`` reads ``batch.pixels[i]``), or is None for a batch of failures only; in loader
    order; ``tags`` holds one value per batch.

    Results are copied back one batch late, so an accelerator already runs the next batch while
    the previous one travels to the host (the copy is the only point that waits for the device).
    """
    autocast = (torch.autocast("cuda", dtype=AUTOCAST_DTYPES[precision])
                if device.type == "cuda" and AUTOCAST_DTYPES[precision] is not None else nullcontext())
    in_flight = None
    for tag, batch in zip(tags, batches):
        stopping = next((reason for _, reason in batch.failures if isinstance(reason, MachineReadError)), None)
        if stopping is not None:  # raised here, not in a decoding process, whose errors reach us wrapped
            raise stopping
        embedded = None
        if batch.pixels:
            # Scoped to the forward passes: a mode held across ``yield`` would leak into the
            # caller's thread whenever the caller stops early (an exception, a break).
            with torch.inference_mode(), autocast:  # each encoder moves its input non_blocking
                embedded = tuple(encode(pixels) for encode, pixels in zip(encoders, batch.pixels))
        if in_flight is not None:
            yield _to_host(*in_flight, on_batch)
        in_flight = (tag, batch, embedded)
    if in_flight is not None:
        yield _to_host(*in_flight, on_batch)


class ImageModel(Protocol):
    """What the pipeline needs of a loaded model (``zsfs.models.ClipModel``, ``Backbone``)."""

    preprocess: Callable
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor: ...


@contextmanager
def embedded_listing(source: ImageSource, models: Sequence[ImageModel], batches: list[range], tags: Iterable, *,
                     device: str, precision: str, workers: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, cores: int | None = None,
                     on_batch: Callable[[int], None] | None = None,
                     set_aside: Mapping[int, str] | None = None) -> Iterator[Iterator[tuple]]:
    """The whole pipeline over ``batches`` of ``source``: decoding workers apply every model's
    preprocessing, the models embed on ``device``; yields :func:`embed_batches`' results (one
    output per model). ``workers``: None = :func:`default_workers`. On CPU the models get every
    core (:func:`model_threads`) while the results are read. ``set_aside``:
    positions reported as failed with their reason, not decoded (:func:`set_aside_crashing_file`).
    A decoding process that dies raises :class:`DecodingProcessDied`; one that crashed names the
    file it was decoding when that file crashes a process of its own too; one still decoding a
    file after ``zsfs.crashes.HUNG_DECODE_SECONDS`` is stopped, and names it (:class:`HangWatch`).
    """
    torch_device = torch.device(device)
    workers = default_workers(device, cores) if workers is None else workers
    try:  # the workers' state, in a file of /dev/shm (or the temporary folder) shared with them
        decoding = multiprocessing.RawArray("q", [-1] * workers) if workers > 0 else None
        decoding_since = multiprocessing.RawArray("d", workers) if workers > 0 else None
    except OSError as error:  # no file named: say where, as a batch that cannot be shared says
        raise OSError(error.errno, f"{error.strerror}: the decoding workers' shared memory") from None
    images = DecodedImages(source, *(model.preprocess for model in models), max_pixels=max_pixels, decoding=decoding,
                           decoding_since=decoding_since, set_aside=set_aside)
    loader = make_loader(images, batches, workers=workers, pin_memory=torch_device.type == "cuda",
                         worker_niceness=default_worker_niceness(device))
    with model_threads(torch_device, cores):
        loaded = iter(loader)  # kept: a failure looks at its decoding processes. (It installs torch's handler.)
        with without_torch_sigchld_handler(), HangWatch(loaded, decoding, decoding_since) as watch:
            try:
                yield embed_batches(loaded, tags, tuple(model.encode_images for model in models), torch_device,
                                    precision, on_batch)
            except Exception as error:
                died = decoding_process_died(loaded, error, decoding, watch.hung)
                if died is None:
                    raise
                if died.crashed and (died.crashing_index is None or not _crashes_alone(images, died.crashing_index)):
                    # between files, or a file that decodes alone (a heap corrupted earlier?): nobody to blame
                    died = DecodingProcessDied(f"{died}, and no file it was decoding crashes a process of its own",
                                               crashed=True, how=died.how)
                raise died from error
            finally:
                _unwatch_decoding(loaded)  # inside the block: before torch's SIGCHLD handler is back


def _unwatch_decoding(loaded: Iterator) -> None:
    """Take the decoding processes off torch's SIGCHLD watch before its handler is back (what its
    own shutdown does last). Left on it, a process ended by a signal to the whole process group
    (`timeout`, `scancel`) made that handler raise from the loader's garbage collection, after the
    run's last line ("Exception ignored in ... DataLoader worker ... is killed by signal:
    Terminated"). Stopping the processes here instead would wait up to 5 s for each busy one
    before the message and the store's lock. A loader without decoding processes has none; a
    torch whose private names differ keeps its own shutdown (and that message)."""
    from torch.utils.data._utils import signal_handling

    remove = getattr(signal_handling, "_remove_worker_pids", None)
    if getattr(loaded, "_worker_pids_set", False) and remove is not None:
        remove(id(loaded))
        loaded._worker_pids_set = False


def embedded_images(source: ImageSource, models: Sequence[ImageModel], batches: list[range], tags: Sequence, *,
                    set_aside: dict[int, str], **options) -> Iterator[tuple]:
    """:func:`embedded_listing`'s results over all ``batches``, in order; a file that crashes or
    hangs its decoding process goes into ``set_aside`` (:func:`set_aside_crashing_file`; its batch then
    reports it failed) and the decoding starts again at the first batch not yet yielded. A crash
    no one file is to blame for raises :class:`DecodingProcessDied` (an extract's command line adds what
    its rerun keeps). ``options``: :func:`embedded_listing`'s."""
    done = 0
    while done < len(batches):
        try:
            with embedded_listing(source, models, batches[done:], tags[done:], set_aside=set_aside,
                                  **options) as embedded:
                for result in embedded:
                    yield result
                    done += 1
        except DecodingProcessDied as died:
            if not set_aside_crashing_file(set_aside, died):
                raise DecodingProcessDied(f"{died}.{crash_advice(set_aside)}", crashed=died.crashed,
                                          hung=died.hung, how=died.how) from None


def _crashes_alone(images: DecodedImages, index: int, timeout: float = 120.0) -> bool:
    """Whether decoding the ``index``-th file in a process of its own crashes it too (a fork of
    this one, as the decoding processes are). Without fork (macOS, Windows) the note of the
    process that crashed is taken as it is."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return True
    process = multiprocessing.get_context("fork").Process(target=_decode_alone, args=(images, index))
    process.start()
    process.join(timeout)
    if process.exitcode is None:  # it hangs: not what crashed the decoding process
        process.kill()
        process.join()
        return False
    return process.exitcode in [-number for number in CRASH_SIGNALS]


def _decode_alone(images: DecodedImages, index: int) -> None:
    # with one thread, as every forked child (zsfs.devices): a fork of a process whose OpenMP pool
    # has run (the models) deadlocked in its first parallel torch operation (the preprocessing's)
    images._decoded(index)


def _to_host(tag, batch: Batch, embedded, on_batch: Callable[[int], None] | None) -> tuple:
    outputs = None if embedded is None else tuple(output.float().cpu().numpy() for output in embedded)
    if on_batch is not None:
        on_batch(len(batch.indices) + len(batch.failures))
    return tag, batch, outputs
