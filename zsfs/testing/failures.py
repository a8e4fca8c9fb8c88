"""Real failures for tests and the failure sweep (benchmarks/failure_sweep.py): the ``zsfs``
command line in a child process whose writes fail the way a full disk makes them fail, or on a
file system that takes no file locks.

``RLIMIT_FSIZE`` caps the size of every file the child writes; with ``SIGXFSZ`` ignored, a
write past the cap fails with ``EFBIG`` inside whatever code makes it, HDF5's C code included,
exactly where a full disk would make it fail with ``ENOSPC``.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RUN_CLI = "import sys; from zsfs.__main__ import run; sys.argv[0] = 'zsfs'; run()"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str

    @property
    def problems(self) -> list[str]:
        """What a failed command must never show: a crash, a traceback, more than one error line."""
        found = []
        if self.returncode < 0 or self.returncode > 128:
            found.append(f"killed by a signal (exit {self.returncode})")
        if "Traceback" in self.output or "Exception ignored" in self.output:
            found.append("traceback")
        if self.returncode not in (0, 1, 2):  # 2: a usage error (options that cannot be served)
            found.append(f"exit code {self.returncode}")
        if self.returncode in (1, 2) and sum(line.startswith("Error:") for line in self.output.splitlines()) != 1:
            found.append("not exactly one error line")
        return found


def run_zsfs(*args, file_size_limit: int | None = None, cwd: Path | None = None, timeout: float = 600,
             launcher: Sequence[str] = ()) -> Outcome:
    """``zsfs ARGS`` in a child process, every file it writes capped at ``file_size_limit`` bytes;
    started through ``launcher`` (a command that ends by running its arguments) when given."""

    def limit() -> None:
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}  # one message, one line
    result = subprocess.run([*launcher, sys.executable, "-c", RUN_CLI, *map(str, args)], preexec_fn=limit, cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return Outcome(result.returncode, result.stdout + result.stderr)


@contextmanager
def file_size_limit_here(limit: int) -> Iterator[None]:
    """This process's writes capped at ``limit`` bytes a file for the block, as :func:`run_zsfs`
    caps a child's (the soft limit only: it is raised back after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


_FLOCK_FAILS = """#include <errno.h>
int flock(int fd, int operation) { (void)fd; (void)operation; errno = %d; return -1; }
"""


def without_file_locks(folder: Path, error: int) -> tuple[str, ...]:
    """A ``run_zsfs`` launcher whose command finds the file system taking no locks: every ``flock``,
    HDF5's and zsfs' own, fails with ``error`` (ENOLCK on NFS without its lock daemon, 524 on some
    Lustre and GPFS mounts), through a C library loaded first (``LD_PRELOAD``); built with gcc."""
    source, library = folder / f"flock-{error}.c", folder / f"flock-{error}.so"
    source.write_text(_FLOCK_FAILS % error)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return ("env", f"LD_PRELOAD={library}")


def store_content(master: Path) -> dict:
    """What a store holds, for "unchanged" comparisons: its summary (without paths and times),
    the digest of every vocabulary and of the neighbour graph."""
    import numpy as np

    from zsfs.store import Store

    with Store(master) as store:
        summary = store.summary()
        vocabularies = {}
        for name in store.vocabulary_names():
            vocabulary = store.vocabulary(name)
            digest = hashlib.sha256("\0".join(vocabulary.classes).encode())
            digest.update(np.ascontiguousarray(vocabulary.single).tobytes())
            digest.update(np.ascontiguousarray(vocabulary.ensemble).tobytes())
            vocabularies[name] = digest.hexdigest()
        graph = None
        if store.graph_info is not None:
            graph = hashlib.sha256(store.neighbour_graph(np.arange(store.n_images)).tobytes()).hexdigest()
        clip = hashlib.sha256(store.read("clip").tobytes()).hexdigest()
    for key in ("path", "created"):
        summary.pop(key)
    return {"summary": summary, "vocabularies": vocabularies, "graph": graph, "clip": clip}


def take_every_descriptor(limit: int = 64) -> list[int]:
    """Open /dev/null until this process has no file descriptor left (its soft limit lowered to
    ``limit`` first, so that it is quick): the kernel then refuses the next open() with EMFILE, as
    on a machine out of descriptors. Returns them, for the caller to close."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        return held


def cut_points(largest_file: int, count: int) -> list[int]:
    """``count`` file-size limits spread over ``[0, largest_file)``: each stops the command at a
    different point of writing its biggest file (and every smaller one before it)."""
    return sorted({int(largest_file * (i + 0.5) / count) for i in range(count)})
