"""Slowed-down decoding and model loading, so that a test can kill a worker in the middle of a
shard, or while it loads its models; and a decoder that crashes on one file name."""

from __future__ import annotations

import os
import signal
import time

DELAY_VARIABLE = "ZSFS_TEST_DECODE_DELAY"
LOAD_DELAY_VARIABLE = "ZSFS_TEST_LOAD_DELAY"
CRASH_VARIABLE = "ZSFS_TEST_CRASH_ON"


def slow_decoding() -> None:
    """Make every image decode of this process sleep ``$ZSFS_TEST_DECODE_DELAY`` seconds first.

    A Ray worker set-up hook: ``ray.init(runtime_env={"worker_process_setup_hook":
    "zsfs.testing.slowdown.slow_decoding", "env_vars": {DELAY_VARIABLE: "0.05"}})``.
    """
    import zsfs.sources as sources

    delay = float(os.environ.get(DELAY_VARIABLE, "0"))
    decode = sources.decode_image

    def slow(*args, **kwargs):
        time.sleep(delay)
        return decode(*args, **kwargs)

    sources.decode_image = slow  # the name ImageSource.decode calls


def slow_workers() -> None:
    """:func:`slow_decoding`, every ``ShardEmbedder`` (its models) of this process built
    ``$ZSFS_TEST_LOAD_DELAY`` seconds late, and a decoding process that decodes a file whose name
    ends with ``$ZSFS_TEST_CRASH_ON`` killed by SIGSEGV, as a codec library's bug does: a Ray
    worker set-up hook, as ``slow_decoding``."""
    import zsfs.extract as extract
    import zsfs.sources as sources

    slow_decoding()
    crash_on, decode = os.environ.get(CRASH_VARIABLE), sources.decode_image
    if crash_on:
        def crashing(path, *args, **kwargs):
            if str(path).endswith(crash_on):
                os.kill(os.getpid(), signal.SIGSEGV)
            return decode(path, *args, **kwargs)

        sources.decode_image = crashing
    delay = float(os.environ.get(LOAD_DELAY_VARIABLE, "0"))
    build = extract.ShardEmbedder.__init__

    def slow(self, *args, **kwargs):
        time.sleep(delay)
        build(self, *args, **kwargs)

    extract.ShardEmbedder.__init__ = slow
