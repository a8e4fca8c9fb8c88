"""How a command stops: SIGTERM raised as Ctrl-C is (:class:`Terminated`), stops that land in a
finaliser sent again, and stops after a command has ended ignored."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def ignore_late_stops() -> None:
    """For a program whose command has ended (its result written, its last line said): Ctrl-C and
    SIGTERM are ignored through Python's shutdown (torch, h5py, Ray: up to a second), where they
    ended the process silently with 130/143 after it said it succeeded."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `docker stop` and Slurm send before SIGKILL), raised as Ctrl-C is:
    the same clean-up (the store's lock and temporary files) and a message, not a silent end."""


@contextmanager
def sigterm_stops_cleanly() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while a command runs, unless a host program handles it;
    what was there before is put back afterwards (a program calling the command line in-process
    keeps its own). Decoding processes (forks) put the default back (``embedding._start_worker``)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        SIGTERM_RECEIVED.clear()  # a later command of this process (a host's) starts unsignalled


SIGTERM_RECEIVED = threading.Event()
"""Set by the SIGTERM handler: Ray's C++ waits (ray.get, ray.wait) turn the handler's Terminated
into a plain KeyboardInterrupt, and the command must still stop as terminated (exit 143)."""


def _raise_terminated(number: int, frame: object) -> None:
    SIGTERM_RECEIVED.set()
    raise Terminated()


@contextmanager
def stops_outlive_finalisers() -> Iterator[None]:
    """Ctrl-C or SIGTERM landing in a finaliser (``__del__``, a weakref callback, a Cython
    object's dealloc: h5py and torch free objects there) raises where Python cannot raise: it was
    printed as "Exception ignored" and dropped, and the command ran on. While a command runs, such
    a stop is sent again to this process a moment later; a command that ends first stops on it
    here, inside the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, resent = sys.unraisablehook, []

    def resend(unraisable: "sys.UnraisableHookArgs") -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        if resent and resent[-1].is_alive():  # one stop is enough (the kernel, too, merges a pending signal)
            return
        number = (signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) or SIGTERM_RECEIVED.is_set()
                  else signal.SIGINT)
        # a moment later: the hook runs inside the finaliser's caller, where a stop is still lost
        timer = threading.Timer(0.01, os.kill, (os.getpid(), number))
        timer.start()
        resent.append(timer)

    sys.unraisablehook = resend
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in resent:
            timer.join()  # its signal is handled here if not before
