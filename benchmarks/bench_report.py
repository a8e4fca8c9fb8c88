"""Render time and page size of ``zsfs report`` on a large synthetic run (target: 1M images,
1000 classes, < 30 s and < 20 MB).

The run folder is synthetic (predictions.parquet, config.json, metrics.json shaped as ``zsfs fit``
writes them, with labels, so that every section is drawn); its image paths point into a pool of
real photo-like JPEGs (400-500 px), so thumbnails cost what they cost on real photos. Both are
made once under ``--work`` and reused.

    python benchmarks/bench_report.py                                  # 1M x 1000
    python benchmarks/bench_report.py --rows 3000 --classes 10 --pool 30
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from zsfs import runs
from zsfs.outputs import write_json
from zsfs.testing.images import write_photos
from zsfs.testing.synthetic import class_names

from harness import at_least_one, check_output, note_machine, peak_rss_mb, run


def make_run(run_dir: Path, pool: Path, n_rows: int, n_classes: int, n_pool: int, seed: int = 0) -> None:
    """Fill the empty folder ``run_dir`` as a run of ``n_rows`` predictions over ``n_classes``
    classes, paths cycling through the pool."""
    import polars as pl

    rng = np.random.default_rng(seed)
    names = np.array(class_names(n_classes))
    label = rng.integers(0, n_classes, n_rows)
    predicted = np.where(rng.random(n_rows) < 0.8, label, rng.integers(0, n_classes, n_rows))
    seeds = rng.choice(n_rows, size=min(n_rows, 16 * n_classes), replace=False)
    cycle = np.full(n_rows, -1, np.int16)
    labelled = rng.random(n_rows) < 0.3
    cycle[labelled] = rng.integers(1, 20, int(labelled.sum()))
    cycle[seeds] = 0
    is_seed = cycle == 0
    ood_score = rng.integers(0, 4, n_rows) / 3
    frame = pl.DataFrame({
        "path": pl.Series([f"img_{i % n_pool:05d}.jpg" for i in range(n_rows)]),
        "predicted": names[predicted],
        "confidence": rng.random(n_rows, dtype=np.float32),
        "ood_score": ood_score,
        "ood_continuous": rng.normal(0, 1, n_rows).astype(np.float32),
        "is_seed": is_seed,
        "pseudo_label": pl.Series(np.where(cycle >= 0, names[predicted], None).tolist(), dtype=pl.String),
        "pseudo_cycle": cycle,
        "zero_shot_predicted": names[label],
        "mcm_score": rng.normal(0, 1, n_rows).astype(np.float32),
        "ood_flag": ood_score >= 2 / 3,
        "label": names[label],
    })
    frame.write_parquet(run_dir / runs.PREDICTIONS)
    write_json(run_dir / runs.CONFIG, {
        "classes": names.tolist(), "absent_classes": names[:3].tolist(), "stop_reason": "loss rose",
        "store": {"path": str(pool / "no-store.h5")},
        "parameters": {"k": 16, "candidates": 100, "neighbours": 5, "seed": seed},
        "cycles": [{"cycle": c, "n_candidates": 16 * n_classes, "n_kept": 15 * n_classes, "n_trained": 15 * n_classes,
                    "epochs": 20, "first_loss": 1.0, "last_loss": 0.5} for c in range(20)],
        "timings_s": {"zero-shot + candidates": 10.0, "self-training": 100.0, "predict": 5.0},
    })
    write_json(run_dir / runs.METRICS, {
        "n_images": n_rows, "accuracy": float(np.mean(label == predicted)),
        "seed_precision": [{"cycle": c, "n_kept": 15 * n_classes, "precision": 0.9} for c in range(20)],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=at_least_one, default=1_000_000, help="images in the run [1,000,000]")
    parser.add_argument("--classes", type=at_least_one, default=1000, help="[1000]")
    parser.add_argument("--pool", type=at_least_one, default=5000,
                        help="distinct JPEG files the paths cycle through [5000]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/zsfs-bench-report"),
                        help="where the run and the page are kept [/tmp/zsfs-bench-report]")
    args = parser.parse_args()
    check_output(parser, args.work, "--work", folder=True)
    note_machine()

    from zsfs.outputs import new_folder
    from zsfs.report import write_report

    pool = args.work / f"photos-{args.pool}"
    if not pool.is_dir():
        start = time.perf_counter()
        write_photos(pool.with_suffix(".tmp"), args.pool)
        pool.with_suffix(".tmp").rename(pool)
        print(f"{args.pool} photos written in {time.perf_counter() - start:.1f} s", flush=True)
    run_dir = args.work / f"run-{args.rows}x{args.classes}-pool{args.pool}"
    if not run_dir.is_dir():
        start = time.perf_counter()
        with new_folder(run_dir) as filled:  # whole or absent: an interrupted run broke every later one
            make_run(filled, pool, args.rows, args.classes, args.pool)
        print(f"run of {args.rows:,} images written in {time.perf_counter() - start:.1f} s", flush=True)

    out = args.work / "report.html"
    start, cpu = time.perf_counter(), time.process_time()
    write_report(run_dir, out, images=pool)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    page = out.read_text()
    print(f"{args.rows:,} images x {args.classes} classes: rendered in {wall:.1f} s ({cpu:.1f} s CPU), "
          f"page {out.stat().st_size / 1e6:.2f} MB, {page.count('<img ')} thumbnails, peak RSS {peak_rss_mb():,.0f} MB, "
          f"{page.count('<figure ')} gallery items; load average {os.getloadavg()[0]:.1f}; "
          f"targets: < 30 s, < 20 MB")
    print(f"written: {out}")


if __name__ == "__main__":
    run(main)
