"""Time and peak memory of ``zsfs import`` (``zsfs.importer.import_store``) on generated .npy inputs.

Inputs (made once under ``--work``, reused): ``--rows`` float16 unit rows of 512-d CLIP embeddings and
1024-d backbone features, and a parquet table of paths and labels (1,000 classes). Each import runs
in its own process into a new store (``--overwrite``): wall and CPU seconds, peak RSS (``VmHWM``).

    python benchmarks/bench_import.py --rows 200000
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_import.py --rows 200000   # another version
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness import at_least_one, check_output, note_machine, peak_rss_mb, run


def make_inputs(work: Path, rows: int) -> Path:
    """``work/rows-N/`` holding clip.npy, backbone.npy and paths.parquet (written once)."""
    import polars as pl

    from zsfs.testing.synthetic import class_names, unit

    folder = work / f"rows-{rows}"
    if (folder / "paths.parquet").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, dim in (("clip", 512), ("backbone", 1024)):
        out = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float16, (rows, dim))
        for start in range(0, rows, 65536):
            stop = min(rows, start + 65536)
            out[start:stop] = unit(rng.standard_normal((stop - start, dim), dtype=np.float32))
        out.flush()
    names = np.array(class_names(1000))
    labels = names[rng.integers(0, len(names), rows)]
    pl.DataFrame({"path": [f"{label}/{i:08d}.jpg" for i, label in enumerate(labels)], "label": labels}) \
        .write_parquet(folder / "paths.parquet")
    return folder


def import_once(folder: Path) -> dict:
    from zsfs.importer import import_store

    start, cpu = time.perf_counter(), time.process_time()
    import_store(folder / "store.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.parquet", path_column="path", label_column="label", overwrite=True)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=at_least_one, default=200_000, help="images [200,000]")
    parser.add_argument("--repeat", type=at_least_one, default=1, help="imports, each in its own process [1]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/zsfs-bench-import"),
                        help="where the inputs and the store are kept [/tmp/zsfs-bench-import]")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(import_once(args.child)))
        return
    check_output(parser, args.work, "--work", folder=True)
    note_machine()
    folder = make_inputs(args.work, args.rows)
    for _ in range(args.repeat):
        done = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the import failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"import of {args.rows:,} rows: {result['wall_s']:.1f} s ({result['cpu_s']:.1f} s CPU), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    run(main)
