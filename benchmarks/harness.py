"""What the benchmark scripts share: the machine a figure was measured on, peak memory, argument
checks made before any work, and one line (not a traceback) when a run cannot go on.

Imported by the scripts of this folder (``python benchmarks/bench_fit.py`` puts it on the path).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from zsfs.errors import ZsfsError
from zsfs.writable import check_writable


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a run measures: figures move with the CPU and with whatever else runs on it."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}


def note_machine() -> dict:
    """Say on stderr which machine this is, and when other work loads it (timings then vary several
    times over: a loaded 2-core machine slowed one extract benchmark 20-fold); returns :func:`machine`."""
    described = machine()
    load, cores = described["load_average"][0], described["cores"] or 1
    print(f"machine: {described['cpu']}, {cores} cores, load average {load:.1f}", file=sys.stderr, flush=True)
    if load > 0.5 * cores:
        print(f"note: the machine is busy (load average {load:.1f} on {cores} cores): timings can be several times "
              "slower than on an idle one; rerun when it is idle to compare with benchmarks/README.md",
              file=sys.stderr, flush=True)
    return described


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM, which starts afresh with each program.
    (``ru_maxrss`` does not: a child of a large process started with its parent's peak.)"""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (0 runs and a negative count ran nothing,
    and printed an empty table as if it were a result)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return whole_number


at_least_one = at_least(1)


def check_output(parser: argparse.ArgumentParser, path: Path, option: str, *, folder: bool) -> None:
    """Refuse an output (a folder, or a file) that cannot be written, before any work: it was found
    only after minutes of fits, with a traceback."""
    if folder and path.exists() and not path.is_dir():
        parser.error(f"{option} {path}: a file, not a folder")
    if not folder and path.is_dir():
        parser.error(f"{option} {path}: a folder, not a file")
    try:  # an existing folder is probed itself (check_writable probes where a new path would go: its parent)
        check_writable(path / "probe" if path.is_dir() else path, "output")
    except ZsfsError as error:
        parser.error(f"{option}: {error}".replace(f"{path / 'probe'}", str(path)))


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's ``main``: Ctrl-C and zsfs' own errors end it with one line (exit 130, 1)."""
    name = Path(sys.argv[0]).name
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{name}: stopped (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except ZsfsError as error:
        sys.exit(f"{name}: {error}")
    sys.exit(status or 0)
