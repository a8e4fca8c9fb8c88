"""Live processes, read from /proc (Linux), so that a test can kill -9 the very one it means."""

from __future__ import annotations

from pathlib import Path


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``, or None when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "(name)", which may hold spaces: state, ppid


def titled(prefix: bytes) -> list[int]:
    """Processes whose command line starts with ``prefix`` (Ray titles its workers ``ray::CLASS.METHOD``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(prefix):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_pid(int(entry.name)) == pid]
