"""``zsfs extract --ray``: the pending shards computed by a pool of Ray workers.

Each worker is a Ray actor holding one ``ShardEmbedder`` (both models, loaded once, its own
DataLoader decoding processes) and writes whole shards with the very function a local run uses
(write under a temporary name, then rename). The driver only plans: it hands one shard at a time
to each idle worker, advances one progress bar as shards finish, and builds the master, the FAISS
index and the vocabulary once. A worker that dies (killed, out of memory, node lost) costs the
shard it held: a new worker takes its place and the shard is computed again; so does a shard
whose worker lost one of its decoding processes to a kill (out of memory). A file that crashes a
decoding process is set aside by the worker, as in a local run (``ShardEmbedder.write_shards``).

Every node must see the source, the models' weights and the store's folder at the same paths
(a shared filesystem); see docs/scale.md. Starting or joining the cluster, and how many workers
it holds: ``zsfs.ray_cluster``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np

from zsfs.crashes import DecodingProcessDied
from zsfs.errors import ZsfsError
from zsfs.ray_cluster import connect, plan_workers
from zsfs.shard_embedder import EmbedSettings, ShardEmbedder
from zsfs.sources import ImageSource
from zsfs.store.writer import StoreWriter

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError:  # the core install does not need Ray
    ray = None

PROGRESS_SECONDS = 0.5  # how often the driver asks the workers how far they are
MAX_ATTEMPTS = 3
"""Times one shard (or one other call) may take its worker down before the run stops (an image
that exhausts memory would otherwise kill every worker in turn; one that crashes its decoding
process is set aside by the worker itself)."""
RAY_LOGS = ("the workers' logs (logs/ of the Ray session folder on the worker's node: "
            "/tmp/ray/session_latest/logs unless RAY_TMPDIR or ray start --temp-dir says otherwise).")


class _ShardWorker:
    """A Ray actor: one ShardEmbedder; computes the shards it is handed, one call per shard.

    Started with two threads (``max_concurrency=2``), so that ``progress`` answers while a
    shard is being computed.
    """

    def __init__(self, settings: EmbedSettings, source: ImageSource, cores: int):
        from zsfs.decode import quiet_decoder_warnings

        quiet_decoder_warnings()  # a process of zsfs' own, as the command line's
        self.shard, self.entries_done = None, 0
        try:
            self.embedder, self.failure = ShardEmbedder(settings, source, cores=cores), None
        except Exception as error:  # raised by records(): Ray hands a method's error over whole, not __init__'s
            self.embedder, self.failure = None, error

    def records(self) -> tuple[dict, dict]:
        if self.failure is not None:
            raise self.failure
        return self.embedder.records

    def write_shard(self, writer: StoreWriter, shard: int) -> tuple[int, dict[int, str]]:
        """(listing entries processed, every file this worker has set aside so far -> reason)."""
        self.shard, self.entries_done = shard, 0
        return self.embedder.write_shards(writer, [shard], on_batch=self._count), self.embedder.set_aside

    def _count(self, entries: int) -> None:
        self.entries_done += entries

    def progress(self) -> tuple[int | None, int]:
        """(shard in progress, listing entries of it embedded so far)."""
        return self.shard, self.entries_done

    def encode_vocabulary(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.embedder.encode_vocabulary(classes)

    def same_text_to_clip(self, classes: list[str]) -> list[tuple[str, str]]:
        return self.embedder.same_text_to_clip(classes)


class RayEmbedders(AbstractContextManager):
    """``ShardEmbedder``'s methods over ``n_workers`` Ray actors (the driver loads no model).

    ``address``: ``"local"`` starts a Ray instance on this machine; ``"auto"``, ``""`` or None
    use ``RAY_ADDRESS`` or else the cluster this machine joined (``ray start``); anything else
    is a cluster address. When this process is already connected to Ray, that connection is used.
    ``n_workers``: default one per GPU of the cluster with ``device="cuda"``, else one per node.
    """

    def __init__(self, settings: EmbedSettings, source: ImageSource, *, address: str | None = None,
                 n_workers: int | None = None):
        self.settings = settings.with_absolute_files()  # options checked by zsfs.extract.extract, before any work
        self.started_ray = connect(address)
        try:
            self.n_workers, self.cores = plan_workers(settings.device, n_workers)
            self.source_ref = ray.put(source)  # shipped once to the object store, shared by every worker
            self.actors = [self._start_worker() for _ in range(self.n_workers)]  # they load the models at once
            records = [self._ask(worker, "records", doing="loading the models") for worker in range(self.n_workers)]
        except BaseException:
            self.close()
            raise
        if any(record != records[0] for record in records):
            self.close()
            raise ZsfsError("the Ray workers loaded different model weights; every node must see the same "
                            "weight files (see docs/scale.md)")
        self.records = records[0]
        self.shards_redone = 0
        self.set_aside: dict[int, str] = {}  # what the workers set aside (crashing or hanging files), as they report it

    def _start_worker(self):
        options = dict(num_cpus=self.cores, num_gpus=1 if self.settings.device == "cuda" else 0, max_restarts=0,
                       max_concurrency=2)
        return ray.remote(_ShardWorker).options(**options).remote(self.settings, self.source_ref, self.cores)

    def _replace(self, worker: int) -> None:
        """A new worker in place of one that died (or only seems to: if it is merely unreachable,
        it must not hold on to its GPU)."""
        ray.kill(self.actors[worker])
        self.actors[worker] = self._start_worker()

    def write_shards(self, writer: StoreWriter, shards: Sequence[int],
                     on_batch: Callable[[int], None] | None = None) -> int:
        """Compute ``shards`` on the workers, one shard per call, redoing those whose worker died.
        ``on_batch`` hears of the workers' progress every ``PROGRESS_SECONDS``."""
        queue, running = deque(shards), {}
        idle = list(range(self.n_workers))
        attempts: Counter[int] = Counter()
        reported: Counter[int] = Counter()  # entries of each shard already passed to on_batch
        processed = 0

        def report(shard: int, entries: int) -> None:  # a redone shard is not counted twice
            if on_batch is not None and entries > reported[shard]:
                on_batch(entries - reported[shard])
                reported[shard] = entries

        while queue or running:
            while queue and idle:
                worker, shard = idle.pop(), queue.popleft()
                running[self.actors[worker].write_shard.remote(writer, shard)] = (worker, shard)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=PROGRESS_SECONDS)
            if not ready:
                for shard, entries in self._progress(worker for worker, _ in running.values()):
                    report(shard, entries)
                continue
            done = ready[0]
            worker, shard = running.pop(done)
            try:
                entries, set_aside = ray.get(done)
            except (RayActorError, RayTaskError) as error:
                worker_died = isinstance(error, RayActorError)
                cause = getattr(error, "cause", None)
                # a crash or hang the worker could not set aside: a retry would meet it again
                crashed = isinstance(cause, DecodingProcessDied) and (cause.crashed or cause.hung)
                if crashed or not (worker_died or isinstance(cause, DecodingProcessDied)):
                    raise cause if isinstance(cause, ZsfsError) else error from None
                # the worker, or one of its decoding processes, died mid-shard: the shard is computed again
                attempts[shard] += 1
                if attempts[shard] >= MAX_ATTEMPTS:
                    raise ZsfsError(f"shard {shard} took down {MAX_ATTEMPTS} Ray workers or their decoding processes "
                                    f"(out of memory?); see {RAY_LOGS}") from None
                if worker_died:
                    self._replace(worker)
                self.shards_redone += 1
                queue.appendleft(shard)
            else:
                self.set_aside.update(set_aside)
                processed += entries
                report(shard, entries)
            idle.append(worker)
        return processed

    def _progress(self, workers) -> list[tuple[int, int]]:
        """(shard, entries done) of the given workers; a worker that does not answer is left out
        (it may be dead: ``ray.wait`` will say so)."""
        answers = [self.actors[worker].progress.remote() for worker in workers]
        ready, _ = ray.wait(answers, num_returns=len(answers), timeout=PROGRESS_SECONDS)
        progress = []
        for answer in ready:
            try:
                shard, entries = ray.get(answer)
            except RayActorError:
                continue
            if shard is not None:
                progress.append((shard, entries))
        return progress

    def encode_vocabulary(self, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._ask(0, "encode_vocabulary", classes, doing="embedding the class names")

    def same_text_to_clip(self, classes: list[str]) -> list[tuple[str, str]]:
        return self._ask(0, "same_text_to_clip", classes, doing="reading the class names")

    def _ask(self, worker: int, method: str, *args, doing: str):
        """``method(*args)`` on a worker; one that dies meanwhile (kill -9, out of memory) is
        replaced and asked again, as a shard's is, until ``MAX_ATTEMPTS`` have died; its zsfs
        errors are raised here as they are."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return ray.get(getattr(self.actors[worker], method).remote(*args))
            except RayTaskError as error:
                raise error.cause if isinstance(error.cause, ZsfsError) else error from None
            except RayActorError:
                if attempt == MAX_ATTEMPTS:
                    raise ZsfsError(f"{MAX_ATTEMPTS} Ray workers died while {doing} (out of memory?); see "
                                    f"{RAY_LOGS}") from None
                self._replace(worker)

    def close(self) -> None:
        """Stop the workers (and the Ray instance this object started)."""
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    def __exit__(self, *exc) -> None:
        self.close()
