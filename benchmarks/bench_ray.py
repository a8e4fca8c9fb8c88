"""Overhead of ``zsfs extract --ray``: single process vs a local Ray pool, same images, one run.

Both runs are the library call behind ``zsfs extract`` on the same generated photos and models;
images/s count from the first shard dispatched to the last shard written (model loading, Ray
start-up and the master excluded for both), end-to-end seconds are printed beside them. Runs
alternate (local, Ray, local, Ray, ...) and the best of ``--repeat`` is kept for each, so that
a burst of load on a shared machine does not decide the ratio.

Example (2-core CPU, target: Ray >= 85 % of the single process)::

    python benchmarks/bench_ray.py --models tiny --n-images 600 --ray-workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray

from bench_extract import SETTINGS, model_settings
from harness import at_least, at_least_one, note_machine, run
from zsfs.testing.images import write_photos
from zsfs.extract import extract


def one_extract(folder: Path, out: Path, setting: tuple, args, *, on_ray: bool) -> tuple[float, float]:
    """(pipeline images/s, end-to-end seconds) of one extract into a fresh store."""
    shutil.rmtree(out.with_suffix(".shards"), ignore_errors=True)
    out.unlink(missing_ok=True)
    clip_model, clip_weights, backbone, backbone_weights = setting
    started = time.perf_counter()
    summary = extract(folder, out, clip_model=clip_model, clip_weights=clip_weights, backbone=backbone,
                      backbone_weights=backbone_weights, batch_size=args.batch_size, shard_size=args.shard_size,
                      workers=args.workers, ray="local" if on_ray else None,
                      ray_workers=args.ray_workers if on_ray else None)
    return summary.images_per_second, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=model_settings, default="tiny",
                        help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--n-images", type=at_least_one, default=600, help="generated photos [600]")
    parser.add_argument("--images", type=Path, help="a folder of your own images instead of generated ones")
    parser.add_argument("--batch-size", type=at_least_one, default=32, help="[32]")
    parser.add_argument("--shard-size", type=at_least_one, default=100, help="images per shard = per Ray task [100]")
    parser.add_argument("--workers", type=at_least(0), help="DataLoader workers per process [default: zsfs's]")
    parser.add_argument("--ray-workers", type=at_least_one, default=2, help="[2]")
    parser.add_argument("--repeat", type=at_least_one, default=2, help="runs of each, the best kept [2]")
    args = parser.parse_args()
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images}: not a folder")
    note_machine()
    if args.images is None and args.ray_workers > args.n_images:  # zsfs refuses it, after Ray has started
        parser.error(f"--ray-workers {args.ray_workers} is more than --n-images {args.n_images}")

    ray.init(include_dashboard=False, log_to_driver=False)  # once: Ray's start-up is not what is measured
    cpus = int(ray.cluster_resources()["CPU"])
    with tempfile.TemporaryDirectory(prefix="zsfs-bench-ray-") as tmp:
        folder = args.images or Path(tmp) / "photos"
        if args.images is None:
            write_photos(folder, args.n_images)
        n = len(list(folder.rglob("*.*")))
        print(f"{n} images, {os.cpu_count()} cores, Ray with {cpus} CPUs, {args.ray_workers} Ray workers, "
              f"batch {args.batch_size}, shard {args.shard_size}; load average {os.getloadavg()[0]:.1f}")
        print(f"{'models':8} {'single img/s':>12} {'Ray img/s':>10} {'Ray/single':>10} "
              f"{'single s':>9} {'Ray s':>7}  (end to end)")
        for name in args.models:
            best = {False: (0.0, 0.0), True: (0.0, 0.0)}
            for _ in range(args.repeat):
                for on_ray in (False, True):
                    result = one_extract(folder, Path(tmp) / f"{name}-{on_ray}.h5", SETTINGS[name], args, on_ray=on_ray)
                    best[on_ray] = max(best[on_ray], result)
            (single, single_s), (distributed, distributed_s) = best[False], best[True]
            print(f"{name:8} {single:12.1f} {distributed:10.1f} {distributed / single:10.2f} "
                  f"{single_s:9.1f} {distributed_s:7.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    run(main)
