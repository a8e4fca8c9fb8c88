"""Live processes, read from /proc (Linux), so that a test can kill -9 the very one it means; a
command in a child process of its own session, stopped by a real signal where a test chooses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

STOPPED_BY = {signal.SIGINT: "Interrupted.", signal.SIGTERM: "Terminated (SIGTERM).",
              signal.SIGHUP: "Hung up (SIGHUP)."}
"""The words that start the one line a command stopped by that signal prints."""


@contextmanager
def started(arguments: Sequence[str], env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``python ARGUMENTS`` (``-c SCRIPT ARGS...``) in a session of its own, so that its process
    group is its own (as a terminal's or `timeout`'s is), its output collected one line per
    message (wide, no terminal, unbuffered); the group is killed if it is still there afterwards."""
    process = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True,
                               env={**os.environ, "COLUMNS": "400", "TERM": "dumb", "PYTHONUNBUFFERED": "1",
                                    **(env or {})})
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


@contextmanager
def held_in(target: str, argv: Sequence[str], folder: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``zsfs ARGV`` in a process of its own (:func:`started`), held on entering ``target``
    (``"module:attribute.path"``, e.g. ``"zsfs.fit.run:fit_store"``) until the yielded file exists: a
    race between real processes, forced at one place. Yields once the process waits there."""
    waiting, go = folder / "held-waiting", folder / "held-go"
    module, _, attributes = target.partition(":")
    *owner, name = attributes.split(".")
    script = (f"import functools, importlib, os, time\nowner = importlib.import_module({module!r})\n"
              f"owner = functools.reduce(getattr, {owner!r}, owner)\noriginal = getattr(owner, {name!r})\n"
              "def held_up(*args, **kwargs):\n"
              f"    open({str(waiting)!r}, 'w').close()\n"
              f"    while not os.path.exists({str(go)!r}):\n        time.sleep(0.05)\n"
              "    return original(*args, **kwargs)\n"
              f"setattr(owner, {name!r}, held_up)\nfrom zsfs.cli import main\nmain({[str(arg) for arg in argv]!r})\n")
    with started(["-c", script]) as process:
        wait_for(waiting, process)
        yield process, go


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    """Return once ``path`` exists; fail, saying so, if ``process`` ends or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path.name} did not appear (the process {'ended' if process.poll() is not None else 'ran on'})"


def read_until(process: subprocess.Popen, prefix: str, seconds: float = 120) -> list[str]:
    """The lines ``process`` prints up to the first that starts with ``prefix``; fails, saying so,
    if it ends or ``seconds`` pass first (its group is then killed)."""
    watchdog = threading.Timer(seconds, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"no line starting {prefix!r} came; the process said: {''.join(lines)[-2000:]}")


def stop(process: subprocess.Popen, number: int, *, group: bool = True, seconds: float = 120) -> str:
    """Send signal ``number`` to ``process``' group (a terminal's Ctrl-C, `timeout`, `scancel`), or
    to it alone; its output from then to its end, whitespace collapsed to single spaces."""
    if group:
        os.killpg(process.pid, number)
    else:
        process.send_signal(number)
    return " ".join(process.communicate(timeout=seconds)[0].split())


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, or None when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "(name)", which may hold spaces: state, ppid


def titled(prefix: bytes) -> list[int]:
    """This process's descendants whose command line starts with ``prefix`` (Ray titles its workers
    ``ray::CLASS.METHOD``; a local Ray instance's workers descend from the process that started it).
    Another test session's processes on the same machine are never named: a test kills what it finds."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(prefix):
                pids.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in pids if os.getpid() in ancestors(pid)]


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of ``pid`` (empty when it has gone)."""
    found = []
    while (pid := parent_pid(pid)) not in (None, 0):
        found.append(pid)
    return found


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_pid(int(entry.name)) == pid]


@contextmanager
def lock_held_by_another_process(master: Path) -> Iterator[str]:
    """Another (real) process holds the store's writer lock for the block (which gets how the
    refusal names it: ``" (pid N on HOST)"``); killed after it."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from zsfs.store.locks import store_lock\n"
        f"with store_lock({str(master)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield f" (pid {holder.pid} on {socket.gethostname()})"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
