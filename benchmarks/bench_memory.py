"""Peak memory (RSS) of decoding huge images and of embedding large vocabularies.

Each measurement runs the real command (``zsfs extract`` / ``zsfs text``) in a child process; the
figure is the peak RSS of the largest process of that command (the command itself or one of its
decoding workers: ``RUSAGE_CHILDREN``'s ``ru_maxrss``, one fresh measuring process per figure).

    (a) decode: ``zsfs extract`` of a folder of 16-bit grayscale PNGs just under Pillow's size
        limit (9400 x 9400 = 88.4 MP; 2.1 MB and 0.28 MB files), of 8-bit RGB PNGs of the same size,
        and of an over-budget JPEG (decoded at a reduced scale); with 0 and with 2 workers.
    (b) text: ``zsfs text`` with N classes on a tiny-CLIP store (N = 100 and 5,000 by default).

Example::

    python benchmarks/bench_memory.py decode
    python benchmarks/bench_memory.py text --classes 100,5000
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_memory.py text   # compare versions
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

import numpy as np

from harness import at_least, at_least_one, note_machine, run

SIDE = 9400  # 88.4 MP: just under Pillow's MAX_IMAGE_PIXELS (89,478,485)


def measure(command: list[str], cwd: Path) -> dict:
    """Run ``command`` in a fresh measuring process; its peak RSS (largest process) and wall time."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': done.returncode, 'seconds': time.perf_counter() - started,\n"
        "                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,\n"
        "                  'tail': done.stderr[-600:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=cwd)
    return json.loads(out.stdout)


def zsfs(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from zsfs.cli import main; main(sys.argv[1:])", *args]


def tiny_model_args() -> list[str]:
    from zsfs.testing.models import TINY_MODEL_ARGS

    return list(TINY_MODEL_ARGS)


def write_huge_images(folder: Path, n: int) -> None:
    """n 16-bit gray PNGs, n 8-bit RGB PNGs (smooth gradients: small files) and one 12000 x 9000 JPEG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 65535, SIDE, dtype=np.float64)
    for i in range(n):
        gray16 = np.add.outer(ramp, ramp[::-1] * (i + 1) / (n + 1)).astype(np.uint32) % 65536
        Image.fromarray(gray16.astype(np.uint16)).save(folder / f"gray16-{i}.png", compress_level=9)
        del gray16
        rgb = np.zeros((SIDE, SIDE, 3), np.uint8)
        rgb[..., i % 3] = (ramp[:, None] / 257).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"rgb8-{i}.png", compress_level=9)
        del rgb
    jpeg = np.zeros((9000, 12000, 3), np.uint8)
    jpeg[..., 1] = 128
    Image.fromarray(jpeg).save(folder / "over-budget.jpg", quality=80)


def bench_decode(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_huge_images(work / "huge", args.n_images)
        sizes = {p.name: p.stat().st_size for p in (work / "huge").iterdir()}
        print(f"{len(sizes)} files, {sum(sizes.values()) / 1e6:.1f} MB on disk "
              f"(largest {max(sizes.values()) / 1e3:.0f} KB)", flush=True)
        rows = []
        for workers in args.workers:
            result = measure(zsfs("extract", str(work / "huge"), "--out", str(work / f"w{workers}.h5"),
                                  *tiny_model_args(), "--workers", str(workers), "--batch-size", "2"), work)
            rows.append({"figure": "decode", "workers": workers, **result})
            print(json.dumps(rows[-1]), flush=True)
        return rows


def bench_text(args: argparse.Namespace) -> list[dict]:
    from zsfs.testing.images import write_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = write_image_folder(work / "photos", n_per_class=2, broken=False)["root"]
        store = work / "s.h5"
        done = subprocess.run(zsfs("extract", str(photos), "--out", str(store), *tiny_model_args(),
                                   "--workers", "0"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        rows = []
        for n in args.classes:
            classes = work / f"classes-{n}.txt"
            classes.write_text("".join(f"class number {i}\n" for i in range(n)))
            result = measure(zsfs("text", str(store), "--classes", str(classes), "--vocab", f"v{n}"), work)
            rows.append({"figure": "text", "classes": n, **result})
            print(json.dumps(rows[-1]), flush=True)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["decode", "text"])
    parser.add_argument("--n-images", type=at_least_one, default=2, help="decode: images of each kind [2]")
    parser.add_argument("--workers", default="0,2", help="decode: worker counts to measure [0,2]")
    parser.add_argument("--classes", default="100,5000", help="text: class counts to measure [100,5000]")
    parser.add_argument("--threads", type=at_least_one, default=None,
                        help="torch threads of the measured commands (OMP_NUM_THREADS) [default: torch's own]; "
                             "1 keeps a shared machine from oversubscribing")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the measured commands
    try:
        args.workers = [at_least(0)(w) for w in args.workers.split(",")]
        args.classes = [at_least_one(c) for c in args.classes.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--workers / --classes: {error}")
    note_machine()
    import zsfs

    print(f"zsfs from {Path(zsfs.__file__).parent}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    rows = bench_decode(args) if args.what == "decode" else bench_text(args)
    for row in rows:
        key = f"workers={row['workers']}" if row["figure"] == "decode" else f"{row['classes']} classes"
        print(f"{row['figure']:6} {key:14} peak RSS {row['peak_rss_mb']:8.0f} MB  {row['seconds']:7.1f} s  "
              f"exit {row['rc']}")
    failed = [row for row in rows if row["rc"] != 0]
    if failed:  # its figure measures an error, not the work: said, and kept out of the ratio
        print(f"{len(failed)} of {len(rows)} measured commands failed (exit status above): their figures are "
              "not measurements of the work", file=sys.stderr)
    if rows[0]["figure"] == "text" and len(rows) > 1 and not failed:
        print(f"peak RSS ratio {rows[-1]['classes']} / {rows[0]['classes']} classes: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")
    print(f"({time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    run(main)
