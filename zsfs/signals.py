"""Ctrl-C and the stop signals (SIGTERM, SIGHUP) held while HDF5 calls back into Python.

Python raises a signal's exception (KeyboardInterrupt, the command line's Terminated) in whatever
Python code runs next, and that can be a function HDF5 called from C. There the exception is
lost: HDF5 prints "Exception ignored" and carries on, or is left in a state that crashes the
process when the file is closed; h5py's link visitor turns it into a SystemError traceback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = {signal.SIGTERM: "Terminated (SIGTERM)",
                **({signal.SIGHUP: "Hung up (SIGHUP)"} if hasattr(signal, "SIGHUP") else {})}
"""The signals a command stops on as on Ctrl-C, and how its line names each: SIGTERM (what
`timeout`, `docker stop` and Slurm send before SIGKILL), SIGHUP (a closed terminal or SSH session:
it ended extract with no word in the log; a failure test). A SIGHUP ignored (`nohup`) stays so."""


@contextmanager
def held_signals() -> Iterator[None]:
    """Hold Ctrl-C and the stop signals while HDF5 may call this process' Python (the file object a store
    is written through, a link visitor) and deliver them, to the handlers that were there, when
    the block ends. Keep such blocks short: a user waits for them."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, *STOP_SIGNALS)}
    # only Python handlers run Python; the default action (and C handlers) need no holding
    previous = {number: handler for number, handler in previous.items() if callable(handler)}
    received: list[int] = []
    for number in previous:
        signal.signal(number, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        _restore(previous)
        for number in dict.fromkeys(received):  # each once, in the order they came
            signal.raise_signal(number)


def _restore(handlers: dict) -> None:
    """Put every handler back, even when a signal handled between two of them raises."""
    if handlers:
        (number, handler), *rest = handlers.items()
        try:
            signal.signal(number, handler)
        finally:
            _restore(dict(rest))
