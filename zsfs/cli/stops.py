"""How a command stops: SIGTERM raised as Ctrl-C is (:class:`Terminated`), stops that land in a
finaliser sent again, and stops after a command has ended ignored."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from zsfs.signals import STOP_SIGNALS


def ignore_late_stops() -> None:
    """For a program whose command has ended (its result written, its last line said): Ctrl-C,
    SIGTERM and SIGHUP are ignored through Python's shutdown (torch, h5py, Ray: up to a second),
    where they ended the process silently with 130/143/129 after it said it succeeded."""
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(number, signal.SIG_IGN)


class Terminated(KeyboardInterrupt):
    """A stop signal (:data:`STOP_SIGNALS`, ``number``), raised as Ctrl-C is: the same clean-up (the
    store's lock and temporary files) and a message, not a silent end."""

    def __init__(self, number: int = signal.SIGTERM):
        super().__init__()
        self.number = number


@contextmanager
def sigterm_stops_cleanly() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while a command runs, unless a host program handles it;
    what was there before is put back afterwards (a program calling the command line in-process
    keeps its own). Decoding processes (forks) put the default back (``embedding._start_worker``)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    numbers = [number for number in STOP_SIGNALS if signal.getsignal(number) == signal.SIG_DFL]
    for number in numbers:
        signal.signal(number, _raise_terminated)
    try:
        yield
    finally:
        for number in numbers:
            signal.signal(number, signal.SIG_DFL)
        SIGTERM_RECEIVED.clear()  # a later command of this process (a host's) starts unsignalled
        _received.clear()


SIGTERM_RECEIVED = threading.Event()
"""Set by the stop signals' handler: Ray's C++ waits (ray.get, ray.wait) turn the handler's
Terminated into a plain KeyboardInterrupt, and the command must still stop as terminated (exit
143; 129 for SIGHUP: :func:`received_stop`)."""
_received: list[int] = []


def received_stop(stop: BaseException) -> int | None:
    """The stop signal that ``stop`` (a Ctrl-C's KeyboardInterrupt or a Terminated) came from; None
    for Ctrl-C."""
    if isinstance(stop, Terminated):
        return stop.number
    return _received[-1] if SIGTERM_RECEIVED.is_set() and _received else None


def _raise_terminated(number: int, frame: object) -> None:
    _received.append(number)
    SIGTERM_RECEIVED.set()
    raise Terminated(number)


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
        number = received_stop(unraisable.exc_value) or signal.SIGINT
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
