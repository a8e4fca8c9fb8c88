"""Listing webdataset tar shards: time and peak memory of ``open_source`` as the entry count grows.

Synthetic shards as img2dataset writes them (``00000.tar`` ..., 10,000 samples each, every
sample ``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``, so 3 tar members per image); the image bytes
are a few hundred bytes (listing reads headers only, so their size does not matter, except to
the disk). Each size is listed in a fresh process (peak RSS is per process), twice: the first
listing reads the headers from the page cache as written, the second is the steady state.

Example (target: 1M entries < 60 s and < 2 GB)::

    python benchmarks/bench_tars.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zsfs.testing.tars import write_tar_shards

from harness import check_output, note_machine, peak_rss_mb, run

PER_TAR = 10_000
FAKE_JPEG = b"\xff\xd8\xff\xe0" + bytes(300)


def write_shards(folder: Path, n: int) -> None:
    write_tar_shards(folder, ((".jpg", FAKE_JPEG) for _ in range(n)), per_tar=PER_TAR)


def list_once(folder: str) -> None:
    """In a child process: list the folder, print seconds, entries and peak RSS as JSON."""
    from zsfs.sources import open_source

    started = time.perf_counter()
    source = open_source(folder)
    listing = time.perf_counter() - started
    digest_started = time.perf_counter()
    source.digest()  # part of the store identity: computed once per extract
    print(json.dumps({"entries": len(source), "seconds": listing, "digest_seconds": time.perf_counter() - digest_started,
                      "peak_rss_mb": peak_rss_mb()}))


def entry_count(text: str) -> int:
    """``10000``, ``10k`` or ``1M`` as a count (the other benchmarks write sizes with k and M)."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="comma-separated entry counts: 10000 or 10k, 1M [10000,100000,1000000]")
    parser.add_argument("--workdir", type=Path,
                        help="keep the tars here and reuse them on the next run [default: a temporary folder]")
    parser.add_argument("--list", help=argparse.SUPPRESS)  # the child process's entry point
    args = parser.parse_args()
    try:
        sizes = [entry_count(size) for size in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:  # 0 failed in the child process, with a traceback
        parser.error(f"--sizes: {args.sizes!r} is not a list of counts >= 1 such as 10000,100k,1M")
    if args.list:
        list_once(args.list)
        return
    if args.workdir is not None:
        check_output(parser, args.workdir, "--workdir", folder=True)
    note_machine()
    with tempfile.TemporaryDirectory(prefix="zsfs-bench-tars-") as tmp:
        base = args.workdir or Path(tmp)
        print(f"load average {os.getloadavg()[0]:.1f}; {PER_TAR:,} samples per tar, 3 members per sample")
        print(f"{'entries':>10} {'tars':>5} {'GB':>5} {'write s':>8} {'list s (1st)':>12} {'(2nd)':>7} "
              f"{'us/entry':>8} {'digest s':>8} {'peak RSS MB':>11}")
        for n in sizes:
            folder, written = base / f"n{n}", "reused"  # --workdir's tars of an earlier run: not written now
            if not (folder / "complete").exists():
                started = time.perf_counter()
                write_shards(folder, n)
                written = f"{time.perf_counter() - started:.1f}"
                (folder / "complete").touch()  # not a tar: the listing ignores it
            tars = sorted(folder.glob("*.tar"))
            gigabytes = sum(path.stat().st_size for path in tars) / 1e9
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--list", str(folder)], check=True,
                                              capture_output=True, text=True).stdout) for _ in range(2)]
            first, second = runs
            assert second["entries"] == n
            print(f"{n:10,} {len(tars):5} {gigabytes:5.2f} {written:>8} {first['seconds']:12.1f} "
                  f"{second['seconds']:7.1f} {1e6 * second['seconds'] / n:8.1f} {second['digest_seconds']:8.2f} "
                  f"{max(first['peak_rss_mb'], second['peak_rss_mb']):11.0f}")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run(main)
