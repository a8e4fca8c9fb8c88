"""Benchmark ``zsfs fit`` on synthetic stores shaped like ImageNet (see benchmarks/README.md).

    python benchmarks/bench_fit.py --loop                   # 50k x 1000: fast and default + loop baseline
    python benchmarks/bench_fit.py --sizes 50k,1.28M        # also the ImageNet-train shape (long)
    python benchmarks/bench_fit.py --sizes 10k --configs default,no-accumulate,single,duplicates,paper
    python benchmarks/bench_fit.py --configs fast --graph bf16 --loop  # fits on a store holding its graph

Every fit runs in its own process so that its peak RSS (Linux's VmHWM) is its own; stores are
generated once under ``--work`` and reused. The per-sample-loop baseline re-implements the
steps the way the paper's scripts do (one image, one query, one sample at a time) and is timed
on a subsample, then extrapolated linearly to the full sizes (stated in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import check_output, note_machine, peak_rss_mb, run

SIZES = {"500": (500, 5), "2k": (2_000, 10),  # 500: the test suite's smoke run
         "10k": (10_000, 100), "50k": (50_000, 1_000), "1.28M": (1_281_167, 1_000),
         "10k-21k": (10_000, 21_841)}  # a large vocabulary (ImageNet-21k's classes) over a small collection
CONFIGS = {
    # name: (preset, overrides)
    "default": ("default", {}),
    "fast": ("fast", {}),
    "paper": ("paper", {}),
    "paper-fast": ("paper-fast", {}),
    "no-accumulate": ("default", {"method": "cycles", "accumulate": False}),  # accumulate: the cycles' option
    "single": ("default", {"prompts": "single"}),
    "duplicates": ("default", {"unique_pseudo_labels": False}),
    "fast-no-accumulate": ("fast", {"method": "cycles", "accumulate": False}),
    "fast-single": ("fast", {"prompts": "single"}),
    "fast-duplicates": ("fast", {"unique_pseudo_labels": False}),
    "fast-exact": ("fast", {"ivf_neighbours": False}),
    # The paper's cycles (zsfs' defaults until the balanced method): --fast and the default of then.
    "fast-cycles": ("fast", {"method": "cycles"}),
    "previous-default": ("paper", {"prompts": "ensemble", "accumulate": True, "unique_pseudo_labels": True}),
    # Training trade-offs of the cycles method (seed epochs + cycle epochs; the balanced method has no seed epochs).
    "b64": ("default", {"method": "cycles", "batch_size": 64, "lr": 2e-3}),
    "b256-e100": ("default", {"method": "cycles", "batch_size": 256, "lr": 1e-2}),
    "b256-e30": ("default", {"method": "cycles", "batch_size": 256, "lr": 1e-2, "epochs": 30, "cycle_epochs": 10}),
    "b256-e10": ("default", {"method": "cycles", "batch_size": 256, "lr": 1e-2, "epochs": 10, "cycle_epochs": 5}),
    "b1024-e30": ("default", {"method": "cycles", "batch_size": 1024, "lr": 3e-2, "epochs": 30, "cycle_epochs": 10}),
}


def store_path(work: Path, size: str) -> Path:
    return work / f"synthetic-{size}.h5"


def make_store(work: Path, size: str) -> dict:
    from zsfs.testing.synthetic import make_synthetic_store

    n, c = SIZES[size]
    start = time.perf_counter()
    make_synthetic_store(store_path(work, size), n, c, n_ood_classes=0, seed=0)
    return {"size": size, "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def make_graph(work: Path, size: str, precision: str) -> dict:
    from zsfs.neighbour_graph import add_neighbour_graph

    start = time.perf_counter()
    record = add_neighbour_graph(store_path(work, size), precision=precision)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), **record}


def copy_store(work: Path, size: str, target: Path) -> None:
    """A copy of a benchmark store (master + shards) in ``target``, same names."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    master = store_path(work, size)
    shutil.copy2(master, target / master.name)
    shutil.copytree(master.with_suffix(".shards"), target / master.with_suffix(".shards").name, dirs_exist_ok=True)


def make_config(name: str):
    from zsfs.fit.config import FitConfig

    preset, overrides = CONFIGS[name]
    return FitConfig.from_options(paper=preset.startswith("paper"), fast=preset.endswith("fast"), **overrides)


def fit_once(work: Path, size: str, config_name: str) -> dict:
    from zsfs.fit.run import fit_store
    from zsfs.evaluate import fit_metrics
    from zsfs.store import Store

    config = make_config(config_name)
    start = time.perf_counter()
    with Store(store_path(work, size)) as store:
        opened = time.perf_counter()
        result = fit_store(store, config)
        total = time.perf_counter() - start
        metrics = fit_metrics(result, store.labels())
    return {
        "size": size, "config": config_name, "total_s": total, "open_s": opened - start,
        "phases_s": result.timings, "cpu_s": result.cpu_timings,
        "load_average": os.getloadavg()[0], "peak_rss_mb": peak_rss_mb(),
        "accuracy": metrics["accuracy"], "zero_shot_accuracy": metrics["zero_shot_accuracy"],
        "seed_precision": metrics["seed_precision"][0]["precision"],
        "pseudo_precision_all": _overall_precision(metrics["seed_precision"]),
        "cycles": len(result.cycles) - 1, "stop": result.stop_reason,
        "batch_size": config.batch_size,
        "steps": sum(len(c.losses) * -(-c.n_trained // config.batch_size) for c in result.cycles),
        "neighbour_search": result.neighbour_search,
    }


def _overall_precision(per_cycle: list[dict]) -> float:
    kept = sum(c["n_kept"] for c in per_cycle)
    right = sum(c["n_kept"] * c["precision"] for c in per_cycle if c["precision"] is not None)
    return right / kept


def loop_baseline(work: Path, size: str, fitted: dict) -> dict:
    """Time the paper-style per-sample loops on subsamples; extrapolate to the full run."""
    import numpy as np
    import torch

    from zsfs.store import Store

    with Store(store_path(work, size)) as store:
        clip = store.read("clip").astype(np.float32)
        vocab = store.vocabulary(store.vocabulary_names()[0])
        texts = torch.from_numpy(vocab.embeddings("ensemble"))
        index = store.index()
        backbone = store.read("backbone", np.arange(min(2000, store.n_images))).astype(np.float32)
    n, n_classes = len(clip), len(texts)
    n_candidates = n_classes * 100
    out = {}

    sample = min(2000, n)  # zero-shot, one image at a time (as the paper encodes and scores per image)
    start = time.perf_counter()
    for i in range(sample):
        logits = 100.0 * torch.from_numpy(clip[i]) @ texts.T
        torch.softmax(logits, 0).argmax()
    out["zero-shot"] = (time.perf_counter() - start) * n / sample

    sample = min(200, n)  # re-ranking: per candidate, one faiss query, then each neighbour's zero-shot alone
    start = time.perf_counter()
    for i in range(sample):
        _, found = index.search(clip[i : i + 1], 6)
        score = 0.0
        for j in found[0][1:]:
            p = torch.softmax(100.0 * torch.from_numpy(clip[j]) @ texts.T, 0)
            top = torch.topk(p, 5).indices
            if 0 in top:
                score += float(p[0])
    out["re-rank"] = (time.perf_counter() - start) * n_candidates / sample

    sample = len(backbone)  # the classifier applied one sample at a time (final predictions + cycle filters)
    head = torch.nn.Linear(backbone.shape[1], n_classes)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(sample):
            head(torch.from_numpy(backbone[i])).argmax()
    per_sample = (time.perf_counter() - start) / sample
    filtered = fitted["cycles"] * n_classes * 16
    out["predict"] = per_sample * (n + filtered)

    steps = 100  # training: DataLoader over a TensorDataset, nn.Linear, Adam (not fused), float32, our batch size
    data = torch.utils.data.TensorDataset(torch.from_numpy(backbone), torch.randint(0, n_classes, (len(backbone),)))
    loader = torch.utils.data.DataLoader(data, batch_size=fitted["batch_size"], shuffle=True)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    done, start = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(x), y).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    out["training (same steps as ours)"] = (time.perf_counter() - start) / steps * fitted["steps"]
    return out


def run_child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50k", help=f"comma list of {', '.join(SIZES)} [50k]")
    parser.add_argument("--configs", default="fast,default", help=f"comma list of {', '.join(CONFIGS)} [fast,default]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/zsfs-bench"),
                        help="where stores are kept [/tmp/zsfs-bench]")
    parser.add_argument("--loop", action="store_true",
                        help="also time the per-sample-loop baseline (on the first size, after its first config)")
    parser.add_argument("--graph", choices=["fp32", "bf16"], default=None,
                        help="fit a copy of each store that holds its neighbour graph (`zsfs neighbours "
                             "--precision P`, timed) instead of the store itself")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for option, given, known in (("--sizes", args.sizes, SIZES), ("--configs", args.configs, CONFIGS)):
        unknown = [name for name in given.split(",") if name not in known]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.child:
        kind, *rest = args.child
        makers = {"make": make_store, "graph": make_graph, "fit": fit_once}
        result = makers[kind](args.work, *rest)
        print(json.dumps(result))
        return

    check_output(parser, args.work, "--work", folder=True)
    note_machine()
    args.work.mkdir(parents=True, exist_ok=True)
    results, looped = [], False
    for size in args.sizes.split(","):
        if not store_path(args.work, size).exists():
            made = run_child("--work", str(args.work), "--child", "make", size)
            print(f"[{size}] store written in {made['seconds']:.1f} s (peak RSS {made['peak_rss_mb']:.0f} MB)",
                  flush=True)
        work = args.work
        if args.graph:
            work = args.work / f"graph-{args.graph}"
            copy_store(args.work, size, work)
            graph = run_child("--work", str(work), "--child", "graph", size, args.graph)
            print(f"[{size}] neighbour graph ({graph['k']} per image, {graph['search']}, {graph['precision']}) "
                  f"stored in {graph['seconds']:.1f} s (peak RSS {graph['peak_rss_mb']:.0f} MB)", flush=True)
        for name in args.configs.split(","):
            fitted = run_child("--work", str(work), "--child", "fit", size, name)
            results.append(fitted)
            phases = ", ".join(f"{k} {v:.2f} ({fitted['cpu_s'][k]:.2f} CPU)" for k, v in fitted["phases_s"].items())
            print(f"[{size} {name}] total {fitted['total_s']:.1f} s, peak RSS {fitted['peak_rss_mb']:.0f} MB, "
                  f"accuracy {fitted['accuracy']:.4f} (zero-shot {fitted['zero_shot_accuracy']:.4f}), "
                  f"seed precision {fitted['seed_precision']:.4f}, all pseudo-labels "
                  f"{fitted['pseudo_precision_all']:.4f}, cycles {fitted['cycles']} ({fitted['stop']}), "
                  f"neighbours from {fitted['neighbour_search']['source']} ({fitted['neighbour_search']['search']}), "
                  f"{fitted['steps']} steps, load average {fitted['load_average']:.1f}\n    phases (s): {phases}", flush=True)
            if args.loop and not looped:
                looped = True
                loop = loop_baseline(args.work, size, fitted)
                total = sum(loop.values())
                training = next(seconds for phase, seconds in fitted["phases_s"].items()  # "class shares + ..."
                                if phase.endswith("self-training"))
                print("    per-sample loop baseline (timed on subsamples, extrapolated linearly): "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in loop.items())
                      + f"; total {total:.0f} s = {total / fitted['total_s']:.1f}x this fit; "
                      f"without training {total - loop['training (same steps as ours)']:.0f} s vs "
                      f"{fitted['total_s'] - training:.1f} s = "
                      f"{(total - loop['training (same steps as ours)']) / (fitted['total_s'] - training):.0f}x",
                      flush=True)


if __name__ == "__main__":
    run(main)
