"""Slowed-down decoding and model loading, so that a test can kill a worker in the middle of a
shard, or while it loads its models; a decoder that crashes, or hangs, on one file name; calls
from C into Python (HDF5's, FAISS', a finaliser) slowed down, so that a test's signal lands inside one."""

from __future__ import annotations

import os
import signal
import time
from typing import BinaryIO

DELAY_VARIABLE = "ZSFS_TEST_DECODE_DELAY"
LOAD_DELAY_VARIABLE = "ZSFS_TEST_LOAD_DELAY"
LOAD_STARTED_VARIABLE = "ZSFS_TEST_LOAD_STARTED"
CRASH_VARIABLE = "ZSFS_TEST_CRASH_ON"
CRASH_AT_VARIABLE = "ZSFS_TEST_CRASH_AT_DECODE"
HANG_VARIABLE = "ZSFS_TEST_HANG_ON"
HUNG_SECONDS_VARIABLE = "ZSFS_TEST_HUNG_DECODE_SECONDS"
CALLBACK_DELAY_VARIABLE = "ZSFS_TEST_CALLBACK_DELAY"
CALLBACK_STARTED_VARIABLE = "ZSFS_TEST_CALLBACK_STARTED"
WRITE_PAUSE_VARIABLE = "ZSFS_TEST_PAUSE_SHARD_WRITES_WHILE"


def slow_decoding() -> None:
    """Make every image decode of this process sleep ``$ZSFS_TEST_DECODE_DELAY`` seconds first.

    A Ray worker set-up hook: ``ray.init(runtime_env={"worker_process_setup_hook":
    "zsfs.testing.hooks.slow_decoding", "env_vars": {DELAY_VARIABLE: "0.05"}})``.
    """
    import zsfs.sources as sources

    delay = float(os.environ.get(DELAY_VARIABLE, "0"))
    decode = sources.decode_image

    def slow(*args, **kwargs):
        time.sleep(delay)
        return decode(*args, **kwargs)

    sources.decode_image = slow  # the name ImageSource.decode calls


def hooked_workers() -> None:
    """:func:`slow_decoding`; every ``ShardEmbedder`` (its models) of this process built
    ``$ZSFS_TEST_LOAD_DELAY`` seconds late (the file ``$ZSFS_TEST_LOAD_STARTED`` made as the wait
    begins, so that a test knows the models are loading); a process that decodes a file whose name ends with
    ``$ZSFS_TEST_CRASH_ON`` (or a tar member whose bytes hold it) killed by SIGSEGV, as a codec
    library's bug does, and one that
    starts its ``$ZSFS_TEST_CRASH_AT_DECODE``-th decode too, whatever the file (as a heap
    corrupted earlier makes it); one that decodes a file whose name ends with
    ``$ZSFS_TEST_HANG_ON`` hung (as a read from a lost network mount is), and
    ``zsfs.crashes.HUNG_DECODE_SECONDS`` set to ``$ZSFS_TEST_HUNG_DECODE_SECONDS``; shards written
    while the file ``$ZSFS_TEST_PAUSE_SHARD_WRITES_WHILE`` exists held in their temporary files. For Ray workers (a set-up hook, as ``slow_decoding``) and for
    ``zsfs`` run by a test in a child process; decoding processes are forks, so they inherit it."""
    import zsfs.crashes as crashes
    import zsfs.shard_embedder as shard_embedder
    import zsfs.sources as sources

    slow_decoding()
    if HUNG_SECONDS_VARIABLE in os.environ:
        crashes.HUNG_DECODE_SECONDS = float(os.environ[HUNG_SECONDS_VARIABLE])
    crash_on, crash_at, decode = os.environ.get(CRASH_VARIABLE), os.environ.get(CRASH_AT_VARIABLE), sources.decode_image
    hang_on = os.environ.get(HANG_VARIABLE)
    decodes = {"pid": os.getpid(), "count": 0}

    def crashing(path, *args, **kwargs):
        if decodes["pid"] != os.getpid():  # a new process counts from 0
            decodes.update(pid=os.getpid(), count=0)
        decodes["count"] += 1
        named = crash_on and (str(path).endswith(crash_on) or crash_on.encode() in _content(kwargs.get("data")))
        if named or (crash_at and decodes["count"] == int(crash_at)):
            os.kill(os.getpid(), signal.SIGSEGV)
        if hang_on and str(path).endswith(hang_on):
            time.sleep(3600)
        return decode(path, *args, **kwargs)

    if crash_on or crash_at or hang_on:
        sources.decode_image = crashing
    delay = float(os.environ.get(LOAD_DELAY_VARIABLE, "0"))
    started = os.environ.get(LOAD_STARTED_VARIABLE)
    build = shard_embedder.ShardEmbedder.__init__

    def slow(self, *args, **kwargs):
        if started:
            open(started, "w").close()
        time.sleep(delay)
        build(self, *args, **kwargs)

    shard_embedder.ShardEmbedder.__init__ = slow
    _pausing_shard_writes(os.environ.get(WRITE_PAUSE_VARIABLE))


def _pausing_shard_writes(flag: str | None) -> None:
    """While the file ``flag`` exists, each shard written waits, whole in its temporary file, before
    it is renamed into place: a worker killed then leaves that file behind."""
    if not flag:
        return
    from zsfs.store.writer import StoreWriter

    write = StoreWriter._write_shard_file

    def paused(self, *args, **kwargs):
        write(self, *args, **kwargs)
        deadline = time.monotonic() + 120
        while os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.02)

    StoreWriter._write_shard_file = paused


def slow_callback(kind: str) -> None:
    """Make the first call of one ``kind`` that C code makes into this process' Python sleep
    ``$ZSFS_TEST_CALLBACK_DELAY`` seconds, the file ``$ZSFS_TEST_CALLBACK_STARTED`` made as the
    wait begins. ``kind``: ``"write"`` (HDF5 writing through the store's file object,
    ``WriteSink.write``), ``"visit"`` (a link lookup of HDF5's link visitor, which checks a store
    file as it is opened), ``"index"`` (a read of the stored FAISS index, which FAISS' stream
    reader makes) or ``"finaliser"`` (the ``__del__`` of an object dropped as ``Store.summary``
    starts: Python's finalisers cannot raise)."""
    import h5py

    from zsfs.store import Store, schema
    from zsfs.store.files import WriteSink

    delay, started = float(os.environ[CALLBACK_DELAY_VARIABLE]), os.environ[CALLBACK_STARTED_VARIABLE]

    def wait() -> None:
        open(started, "w").close()
        time.sleep(delay)

    class SlowToFinalise:
        def __del__(self) -> None:
            wait()

    calls = {  # kind: the class, its method, whether a call is the one to slow, what that call does first
        "write": (WriteSink, "write", lambda self, kwargs: True, wait),
        "visit": (h5py.Group, "get", lambda self, kwargs: bool(kwargs.get("getlink")), wait),
        "index": (h5py.Dataset, "__getitem__", lambda self, kwargs: self.name == f"/{schema.INDEX_DATASET}", wait),
        "finaliser": (Store, "summary", lambda self, kwargs: True, SlowToFinalise),  # dropped at once: __del__ waits
    }
    owner, name, is_the_call, first = calls[kind]
    original = getattr(owner, name)

    def slow(self, *args, **kwargs):
        if is_the_call(self, kwargs):
            setattr(owner, name, original)  # the first call only
            first()
        return original(self, *args, **kwargs)

    setattr(owner, name, slow)


def _content(data: "bytes | BinaryIO | None") -> bytes:
    """The bytes of ``decode_image``'s ``data`` (a tar member is a file), its position kept."""
    if data is None or isinstance(data, (bytes, bytearray)):
        return data or b""
    position = data.tell()
    data.seek(0)
    content = data.read()
    data.seek(position)
    return content
