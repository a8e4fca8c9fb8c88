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


def test_ctrl_c_in_the_block_is_a_keyboard_interrupt_after_it_and_an_error_of_the_block_stays_its_context():
    went_on = []
    with pytest.raises(KeyboardInterrupt):
        with held_signals():
            signal.raise_signal(signal.SIGINT)
            went_on.append(True)
    assert went_on and signal.getsignal(signal.SIGINT) is signal.default_int_handler
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


def test_every_signal_held_is_delivered_after_the_block():
    """Bug: only the first signal held was delivered: a host's SIGTERM handler that does not raise
    (Ray's, a program's own) took it, and a Ctrl-C held after it was lost."""
    heard: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: heard.append(number))
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_signals():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)
                heard.append(0)
        assert heard == [0, signal.SIGTERM]  # each signal once, in the order they came
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_command_stopped_by_sigterm_leaves_no_trace_for_the_next_command_of_the_process():
    """Review: the flag that keeps SIGTERM's meaning through Ray's plain KeyboardInterrupt outlived
    its command: in a host program with its own SIGTERM handler, a later command's Ctrl-C was
    reported as "Terminated (SIGTERM)" with exit 143."""
    import click
    from click.testing import CliRunner

    from zsfs.cli.group import ZsfsGroup

    @click.group(cls=ZsfsGroup)
    def host() -> None:
        pass

    @host.command()
    @click.argument("number", type=int)
    def stop(number: int) -> None:
        signal.raise_signal(number)
        raise AssertionError("not stopped")

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process (an earlier ray.init sets its own)
    try:
        terminated = CliRunner().invoke(host, ["stop", str(int(signal.SIGTERM))])
        assert terminated.exit_code == 143 and "Terminated (SIGTERM)." in terminated.output, terminated.output
        signal.signal(signal.SIGTERM, lambda number, frame: None)  # the host's own
        interrupted = CliRunner().invoke(host, ["stop", str(int(signal.SIGINT))])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert interrupted.exit_code == 130 and "Interrupted." in interrupted.output, interrupted.output


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_after_a_command_has_ended_leaves_its_success(tmp_path, number):
    """Bug: Ctrl-C or SIGTERM during Python's shutdown (torch, h5py: up to a second), after "Run
    written", ended the process silently with 130/143: a scheduler redid finished work."""
    from zsfs.testing.processes import started, stop, wait_for
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "s.h5", 60, 3, seed=0, clip_dim=16, backbone_dim=16)
    ending = tmp_path / "ending"
    script = ("import atexit, pathlib, sys, time\n"
              "ending = pathlib.Path(sys.argv[1])\n"
              "def slow_shutdown():\n"  # a shutdown that takes long: the stop lands inside it
              "    ending.touch()\n"
              "    time.sleep(3)\n"
              "atexit.register(slow_shutdown)\n"
              "sys.argv = ['zsfs', *sys.argv[2:]]\n"
              "from zsfs.cli import run\n"
              "run()\n")
    with started(["-c", script, str(ending), "info", str(store)]) as process:
        wait_for(ending, process)
        said = stop(process, number)
    assert process.returncode == 0, said
    assert "Interrupted" not in said and "Terminated" not in said


def test_a_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130():
    """Interrupting user: a Ctrl-C in the first few tenths of a second (while click, numpy and the
    commands load) ended in a traceback of the import; now as a stop during a command ends."""
    import subprocess
    import sys

    script = ("import os, signal, sys\n"
              "class CtrlC:\n"  # the user's key, pressed as the command line's modules load
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'click':\n"
              "            os.kill(os.getpid(), signal.SIGINT)\n"
              "        return None\n"
              "sys.meta_path.insert(0, CtrlC())\n"
              "sys.argv = ['zsfs', '--help']\n"
              "from zsfs.__main__ import run\n"  # the installed script's entry point
              "run()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr == "Interrupted. Nothing half-written was left.\n", done
    assert done.stdout == ""
