"""Slowed-down decoding, so that a test can kill a worker in the middle of a shard."""

from __future__ import annotations

import os
import time

DELAY_VARIABLE = "ZSFS_TEST_DECODE_DELAY"


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
