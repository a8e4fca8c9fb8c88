"""Full-disk sweep: every store-writing command cut at many points by a real write failure.

Each run is the real ``zsfs`` command line in a child process whose file-size limit
(``RLIMIT_FSIZE``, SIGXFSZ ignored) makes a write fail with EFBIG wherever it happens, HDF5's C
code included, as a full disk does with ENOSPC. For each command the limits are spread over the
size of the biggest file it writes. After each cut run the sweep checks that the command
failed cleanly (exit 1, one error line, no traceback, no crash), that the store still opens
with its previous content (text, neighbours) or is absent/unfinished (import, extract into a
new output), and that rerunning without a limit succeeds and gives the uninterrupted result.

    python benchmarks/failure_sweep.py --cuts 20          # ~10 min on 2 busy cores
    python benchmarks/failure_sweep.py --cuts 4 --commands text neighbours
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from zsfs.testing.failures import cut_points, run_zsfs, store_content

from harness import at_least_one, check_output, note_machine, run

COMMANDS = ("text", "neighbours", "import", "extract")


def build_base(root: Path) -> dict:
    """A finished store (with vocabulary and graph) and the inputs of an import."""
    import torch

    from zsfs.extract import extract
    from zsfs.models import load_clip
    from zsfs.testing.cli import run_cli
    from zsfs.testing.images import write_image_folder
    from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG

    images = write_image_folder(root / "photos", n_per_class=4, broken=False)
    torch.save(load_clip(str(TINY_CLIP_CONFIG), "random").model.state_dict(), root / "clip.pt")
    extract(images["root"], root / "s.h5", clip_model=str(TINY_CLIP_CONFIG), clip_weights=str(root / "clip.pt"),
            backbone=TINY_BACKBONE, backbone_weights="random", workers=0, shard_size=4)
    assert run_cli("neighbours", root / "s.h5", "--k", "3").exit_code == 0
    (root / "classes.txt").write_text("".join(f"class number {i}\n" for i in range(20)))
    rows = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
    np.save(root / "clip.npy", rows)
    np.save(root / "backbone.npy", rows[:, :48])
    (root / "paths.csv").write_text("path\n" + "".join(f"{i}.jpg\n" for i in range(len(rows))))
    np.savez(root / "v.npz", classes=np.array([f"c{i}" for i in range(100)]), single=rows[:100])
    extract_args = ("extract", images["root"], "--clip-model", TINY_CLIP_CONFIG, "--clip-weights", root / "clip.pt",
                    "--backbone", TINY_BACKBONE, "--backbone-weights", "random", "--workers", "0", "--shard-size", "4")
    return {"extract": extract_args}


def command_args(command: str, work: Path, base: dict) -> tuple[tuple, Path, bool]:
    """(arguments, store, whether the store exists before the command)."""
    if command == "text":
        return ("text", work / "s.h5", "--classes", work / "classes.txt", "--vocab", "default", "--overwrite"), \
            work / "s.h5", True
    if command == "neighbours":
        return ("neighbours", work / "s.h5", "--k", "7"), work / "s.h5", True
    if command == "import":
        out = work / "i.h5"
        return ("import", out, "--clip-embeddings", work / "clip.npy", "--backbone-features", work / "backbone.npy",
                "--paths", work / "paths.csv", "--vocab", f"v={work / 'v.npz'}", "--shard-size", "1000"), out, False
    out = work / "e.h5"
    return (*base["extract"], "--out", out), out, False


def written_sizes(folder: Path, before: dict[Path, float]) -> int:
    """Size of the biggest file created or changed since ``before`` (path -> mtime)."""
    sizes = [path.stat().st_size for path in folder.rglob("*")
             if path.is_file() and before.get(path) != path.stat().st_mtime_ns]
    return max(sizes, default=0)


def content(store: Path, work: Path) -> dict:
    """``store_content`` with the work folder's name taken out (sources are absolute paths)."""
    return json.loads(json.dumps(store_content(store), default=str).replace(str(work), "<work>"))


def snapshot(folder: Path) -> dict[Path, float]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def sweep(command: str, base_dir: Path, base: dict, cuts: int, scratch: Path) -> dict:
    from zsfs.errors import ZsfsError
    from zsfs.testing.cli import run_cli

    reference_dir = scratch / f"{command}-reference"
    shutil.copytree(base_dir, reference_dir)
    args, store, existed = command_args(command, reference_dir, base)
    before = snapshot(reference_dir)
    reference = run_zsfs(*args)
    assert reference.returncode == 0, reference.output
    largest = written_sizes(reference_dir, before)
    expected = content(store, reference_dir)
    shutil.rmtree(reference_dir)

    tally: Counter = Counter()
    details = []
    for limit in cut_points(largest, cuts):
        work = scratch / f"{command}-{limit}"
        shutil.copytree(base_dir, work)
        args, store, existed = command_args(command, work, base)
        old = content(store, work) if existed else None
        outcome = run_zsfs(*args, file_size_limit=limit)
        problems = list(outcome.problems)
        if outcome.returncode == 0:
            tally["completed within the limit"] += 1
        damaged = False
        try:
            if existed and outcome.returncode != 0 and content(store, work) != old:
                damaged = True  # the failed command changed the store
        except ZsfsError:
            damaged = True  # the store no longer opens
        rerun = run_cli(*args)
        if rerun.exit_code != 0 or content(store, work) != expected:
            damaged = True
        if list(work.rglob("*.tmp")):
            problems.append("temporary files left")
        tally["damaged stores"] += damaged
        tally["segfaults/signals"] += any("signal" in problem for problem in problems)
        tally["tracebacks"] += "traceback" in problems
        tally["other problems"] += len([p for p in problems if "signal" not in p and p != "traceback"])
        tally["runs"] += 1
        details.append({"limit": limit, "exit": outcome.returncode, "problems": problems, "damaged": damaged,
                        "message": outcome.output.strip().splitlines()[-1][:160] if outcome.output.strip() else ""})
        shutil.rmtree(work)
    return {"largest_file": largest, **{key: tally[key] for key in
            ("runs", "completed within the limit", "damaged stores", "segfaults/signals", "tracebacks",
             "other problems")}, "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=at_least_one, default=20, help="cut points per command [20]")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS), help="[all]")
    parser.add_argument("--json", type=Path, help="write the full results here")
    options = parser.parse_args()
    if options.json is not None:  # checked now, not after the sweep
        check_output(parser, options.json, "--json", folder=False)
    note_machine()
    with tempfile.TemporaryDirectory(prefix="zsfs-sweep-") as folder:
        scratch = Path(folder)
        base_dir = scratch / "base"
        base_dir.mkdir()
        base = build_base(base_dir)
        results = {}
        for command in options.commands:
            started = time.perf_counter()
            results[command] = sweep(command, base_dir, base, options.cuts, scratch)
            summary = {k: v for k, v in results[command].items() if k != "details"}
            print(f"{command}: {json.dumps(summary)} ({time.perf_counter() - started:.0f} s)", flush=True)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"written: {options.json}")


if __name__ == "__main__":
    run(main)
