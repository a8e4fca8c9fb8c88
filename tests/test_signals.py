"""Signals held while HDF5 calls back into Python (zsfs.signals); real signals to this process."""

from __future__ import annotations

import signal
import threading

import pytest

from zsfs.signals import held_signals


def test_a_signal_in_the_block_reaches_the_handler_that_was_there_when_the_block_ends():
    heard: list[str] = []

    def handler(number: int, frame: object) -> None:
        heard.append("handler")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with held_signals():
            signal.raise_signal(signal.SIGTERM)
            heard.append("block went on")
            with held_signals():  # nested: the inner block's signal waits for the outer one
                signal.raise_signal(signal.SIGTERM)
            heard.append("outer block went on")
        assert heard == ["block went on", "outer block went on", "handler"]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_in_the_block_is_a_keyboard_interrupt_after_it_and_an_error_of_the_block_stays_its_cause():
    with pytest.raises(KeyboardInterrupt):
        with held_signals():
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as stopped:
        with held_signals():
            signal.raise_signal(signal.SIGINT)
            raise ValueError("the block's own failure")
    assert isinstance(stopped.value.__context__, ValueError)


def test_outside_the_main_thread_nothing_is_changed():
    seen = []

    def run() -> None:
        with held_signals():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
