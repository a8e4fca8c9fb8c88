"""Decoding processes that die: telling how (killed, crashed by a file, stopped for hanging on one),
setting the file to blame aside so that the work can go on without it, and the watch that stops
a process hung on one file (a read from a lost network mount never returns)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from zsfs.errors import ZsfsError, shared_memory_full

if TYPE_CHECKING:
    from zsfs.embedding import Batch


DYING_SECONDS = 10.0
"""How long a decoding process whose pipe broke may take to end (a large one, on a busy machine)."""
CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)
"""A process dead by one of these crashed (a codec library's bug, say); SIGKILL is the out-of-memory killer's."""


class DecodingProcessDied(ZsfsError):
    """A decoding process (a DataLoader worker) died mid-run: killed (the out-of-memory killer's
    way), ``crashed`` (a signal such as SIGSEGV: a file may crash the decoder), or stopped by zsfs
    because it was ``hung`` on one file. ``crashing_index``: the listing position it was decoding
    when it crashed or hung, when known."""

    def __init__(self, message: str, *, crashed: bool = False, hung: bool = False, how: str = "",
                 crashing_index: int | None = None):
        super().__init__(message)
        self.crashed, self.hung, self.how, self.crashing_index = crashed, hung, how, crashing_index

    @property
    def file_reason(self) -> str:
        """The skip reason of the file at ``crashing_index``."""
        return HUNG_FILE.format(seconds=round(HUNG_DECODE_SECONDS)) if self.hung else f"{CRASHING_FILE} ({self.how})"


def decoding_process_died(batches: Iterator[Batch], error: BaseException, decoding: Sequence[int] | None = None,
                          hung: Mapping[int, int] | None = None) -> DecodingProcessDied | None:
    """:class:`DecodingProcessDied` when one of the decoding processes of ``batches`` (a
    DataLoader's iterator) has died, whatever ``error`` that made torch raise: its own
    RuntimeError, an EOFError or a reset connection from the dead process's pipe. Its processes
    are then stopped. None while they all live, and for a full /dev/shm (its message says more).
    ``decoding``: per decoding process, the listing position it is decoding (-1: none), which a
    crash leaves set (:class:`zsfs.embedding.DecodedImages`). ``hung``: decoding process -> the
    position it was stopped on for hanging (:class:`HangWatch`)."""
    workers = getattr(batches, "_workers", [])  # none without decoding processes (workers=0)
    if workers and (isinstance(error, (EOFError, ConnectionError)) or "DataLoader worker (pid" in str(error)):
        # What a dying process's pipe says can come before the process has ended: wait for it a little.
        ended = multiprocessing.connection.wait([worker.sentinel for worker in workers], timeout=DYING_SECONDS)
        for worker in workers:
            if worker.sentinel in ended:  # its files are closed, but it may not be reapable yet: join()
                worker.join(timeout=DYING_SECONDS)  # waits for that (a non-blocking check found it alive)
    dead = [worker_id for worker_id, worker in enumerate(workers) if worker.exitcode not in (None, 0)]
    if not dead or shared_memory_full(error):
        return None
    batches._shutdown_workers()  # now, as torch's clean-up would later (see without_torch_sigchld_handler)
    stopped = [worker_id for worker_id in dead if worker_id in (hung or {})]
    if stopped:
        worker = workers[stopped[0]]
        return DecodingProcessDied(f"a decoding process (pid {worker.pid}) was still decoding one file after "
                                   f"{HUNG_DECODE_SECONDS:g} s and was stopped", hung=True, how="hung",
                                   crashing_index=hung[stopped[0]])
    worker = workers[dead[0]]  # torch starts them in order of their worker id
    code = worker.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    if code in [-number for number in CRASH_SIGNALS]:
        index = -1 if decoding is None else int(decoding[dead[0]])
        return DecodingProcessDied(f"a decoding process (pid {worker.pid}) crashed ({how})", crashed=True, how=how,
                                   crashing_index=index if index >= 0 else None)
    return DecodingProcessDied(f"a decoding process (pid {worker.pid}) died ({how}), perhaps by the out-of-memory "
                               "killer; if memory is short, use fewer decoding workers or smaller batches", how=how)


CRASHING_FILE = "crashes the image decoder"
"""The skip reason of a file that crashed a decoding process (followed by how it died)."""
HUNG_FILE = "still decoding after {seconds} s (a hung read or decoder)"
"""The skip reason of a file a decoding process was stopped on (:class:`HangWatch`)."""
HUNG_DECODE_SECONDS = 600.0
"""How long one file may take to decode before its process is stopped and the file set aside: a
read from a hung network mount never returns. Decoding the largest image the pixel budget allows
takes seconds; a large file on a slow share can take minutes."""
MAX_CRASHING_FILES = 10
"""Files one run sets aside for crashing or hanging a decoding process before it stops: beyond a
few, something else is likely wrong (a broken image library, a lost mount), and each costs a
restart of the decoding."""


def set_aside_crashing_file(set_aside: dict[int, str], died: DecodingProcessDied) -> bool:
    """Add the file whose decoding crashed or hung a process (``died``) to ``set_aside``
    (position -> reason), so that the work left can run without it: a rerun would crash on it in
    the same place. False when no one file is to blame (the crash came between files, or the
    file decodes alone without crashing), or ``MAX_CRASHING_FILES`` are set aside already."""
    if died.crashing_index is None or died.crashing_index in set_aside or len(set_aside) >= MAX_CRASHING_FILES:
        return False
    set_aside[died.crashing_index] = died.file_reason
    return True


def crash_advice(set_aside: dict[int, str]) -> str:
    """What to say after a crash that :func:`set_aside_crashing_file` could not set aside."""
    if len(set_aside) >= MAX_CRASHING_FILES:
        return (f" {MAX_CRASHING_FILES} files crashed or hung the image decoder in this run: something else may "
                "be wrong (a broken image library, a lost mount?)")
    return ""


class HangWatch:
    """A thread that stops (SIGKILL) a decoding process still decoding one file after
    ``HUNG_DECODE_SECONDS``, and notes which file (``hung``: decoding process -> listing
    position). The loader then finds the process dead, and :func:`decoding_process_died` says
    it hung. Only the decoding processes' own files: the models run in this process."""

    def __init__(self, batches: Iterator[Batch], decoding: Sequence[int], decoding_since: Sequence[float]):
        self.workers = getattr(batches, "_workers", [])
        self.decoding, self.decoding_since = decoding, decoding_since
        self.hung: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="zsfs-hang-watch", daemon=True)

    def __enter__(self) -> "HangWatch":
        if self.workers:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        limit = HUNG_DECODE_SECONDS
        tick = min(5.0, limit / 4)
        awake: dict[int, tuple[int, float, float]] = {}  # decoding process -> (position, its start, seconds)
        last = time.monotonic()
        while not self._stop.wait(tick):
            now = time.monotonic()
            # Only time the watch was awake counts: a run paused (Ctrl-Z, a suspended job) and continued
            # finds every process mid-file, long "since" it began, and none of them hung.
            step, last = min(now - last, 2 * tick), now
            for worker_id, worker in enumerate(self.workers):
                index, since = self.decoding[worker_id], self.decoding_since[worker_id]
                if index < 0 or worker_id in self.hung:
                    awake.pop(worker_id, None)
                    continue
                seen = awake.get(worker_id)
                spent = seen[2] + step if seen is not None and seen[:2] == (index, since) else min(now - since, step)
                awake[worker_id] = (index, since, spent)
                if spent < limit or self.decoding[worker_id] != index or worker.pid is None:
                    continue
                self.hung[worker_id] = int(index)
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended meanwhile
                    pass


@contextmanager
def without_torch_sigchld_handler() -> Iterator[None]:
    """Hold off the SIGCHLD handler torch installs in the main thread for the block. When a
    decoding process dies, it raises wherever that thread happens to be: mid-way through writing
    a shard, while an error is being handled, or from the garbage collector ("Exception ignored
    in ..."). Without it, the loader itself finds a dead process (within 5 s, as it does in
    other threads, where torch installs no handler) and :func:`decoding_process_died` names it."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)
