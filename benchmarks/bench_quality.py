"""Real-data quality benchmark of ``zsfs fit``: labels, absent classes and OOD (benchmarks/README.md).

    python benchmarks/bench_quality.py --features ../shared/bench/fashion-mnist --vocab fashion
    python benchmarks/bench_quality.py --features DIR --features DIR2 --synthetic 10k --seeds 3 --draws 6
    python benchmarks/bench_quality.py --synthetic 2k --seeds 1 --draws 1 --scenarios full   # a smoke run

Each ``--features`` folder is laid out like ``../shared/bench/fashion-mnist/`` (``clip.npy``,
``backbone.npy``, ``images.csv`` with a ``label`` column, ``vocab-*.npz``) and is imported once
with ``zsfs import``; ``--synthetic`` adds synthetic stores (2k or 10k, made as bench_fit.py makes them).
Four scenarios per store:

- ``full``: every listed class present. Zero-shot, ``--paper`` at k 5 and 16, the default at
  k 5 and 16, ``--fast``, the paper's cycles with zsfs' other defaults (``--method cycles``) and
  ``--keep-all-classes``, each over ``--seeds`` fit seeds.
- ``absent``: the collection holds 2-5 random classes of the listed ones (``--draws`` draws of
  each size), the full vocabulary is given. Accuracy on the present images for zero-shot,
  ``--paper --k 16`` and the default; the default's margin over the paper in each draw (the
  ``min`` column shows the worst draw) and the fraction of draws below it; the fraction of present
  images labelled with an absent class (``labelled absent``); precision and recall of the
  absent classes the fit reports.
- ``small``: random samples of 200, 500 and 1,000 images of the store (``--draws`` each), every
  listed class: zero-shot, ``--paper --k 16`` and the default's accuracy (a user's first, small
  folder: with few images a training cycle is one batch, see docs/fit.md).
- ``ood``: ``zsfs ood-bench``'s protocol (6 ID classes when there are 10, else 60 %; 5 splits)
  for the default and ``--paper``: AUROC and FPR95 of ``ood_score``, the paper score and MCM.

Prints one table (mean ± std and min over seeds/draws/splits) at the end, a line per scenario as
it starts on stderr, and writes ``quality.csv`` and ``quality.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness import at_least_one, check_output, note_machine, run

if TYPE_CHECKING:
    from zsfs.store import Store

SYNTHETIC = {"2k": (2_000, 10), "10k": (10_000, 100)}
FULL_CONFIGS = {
    # name: (preset, overrides)
    "paper-k5": ("paper", {"k": 5}),
    "paper-k16": ("paper", {"k": 16}),
    "default-k5": ("default", {"k": 5}),
    "default-k16": ("default", {"k": 16}),
    "fast": ("fast", {}),
    "cycles": ("default", {"method": "cycles"}),
    "keep-all-classes": ("default", {"keep_all_classes": True}),
}
ABSENT_CONFIGS = {"paper-k16": ("paper", {"k": 16}), "default-k16": ("default", {"k": 16})}
OOD_CONFIGS = {"default": ("default", {}), "paper": ("paper", {})}
SMALL_SIZES = (200, 500, 1_000)


@dataclass
class Source:
    name: str
    store: Path
    vocabulary: str


def make_config(preset: str, overrides: dict, seed: int):
    from zsfs.fit.config import FitConfig

    return FitConfig.from_options(paper=preset == "paper", fast=preset == "fast", seed=seed, **overrides)


def dataset_name(folder: Path) -> str:
    """A feature folder's name in the table and in ``--work`` (``../fm`` and ``fm/`` are ``fm``; a link keeps its own)."""
    return Path(os.path.abspath(folder)).name


def import_features(folder: Path, work: Path, vocabulary: str) -> Path:
    """``zsfs import`` of a benchmark feature folder; a store of ``--work`` is reused only when it
    was imported from these very files (import checks that, and writes no row again)."""
    from zsfs.errors import ZsfsError
    from zsfs.importer import import_store
    from zsfs.store import Store

    store = work / f"{dataset_name(folder)}.h5"
    try:
        import_store(store, clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "images.csv", label_column="label",
                     vocabularies={path.stem.removeprefix("vocab-"): path for path in sorted(folder.glob("vocab-*.npz"))})
        with Store(store) as opened:
            names = opened.vocabulary_names()
    except ZsfsError as error:
        raise SystemExit(f"--features {folder}: {error}") from None
    if vocabulary not in names:
        raise SystemExit(f"--vocab {vocabulary}: {folder} has no vocabulary of that name (its vocab-*.npz: "
                         f"{', '.join(names) or 'none'})")
    return store


def synthetic_store(size: str, work: Path) -> Path:
    from zsfs.testing.synthetic import make_synthetic_store

    store = work / f"synthetic-{size}.h5"
    if not store.exists():
        n_images, n_classes = SYNTHETIC[size]
        make_synthetic_store(store, n_images, n_classes, seed=0)
    return store


def accuracy_on(result, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy of the fit and of zero-shot against ``labels``, as metrics.json has them."""
    from zsfs.evaluate import fit_metrics

    metrics = fit_metrics(result, labels)
    return metrics["accuracy"], metrics["zero_shot_accuracy"]


def run_full(source: Source, seeds: int, record) -> None:
    from zsfs.fit.run import fit_store
    from zsfs.store import Store

    with Store(source.store) as store:
        labels = np.asarray(store.labels()).astype(str)
        for name, (preset, overrides) in FULL_CONFIGS.items():
            for seed in range(seeds):
                start = time.perf_counter()
                result = fit_store(store, make_config(preset, overrides, seed), source.vocabulary)
                accuracy, zero_shot = accuracy_on(result, labels)
                record(source.name, "full", name, "accuracy", accuracy, seconds=time.perf_counter() - start)
                if name == "default-k16":
                    record(source.name, "full", "zero-shot", "accuracy", zero_shot)
                    record(source.name, "full", name, "absent reported (false)", len(result.absent_classes))


def run_absent(source: Source, draws: int, work: Path, record) -> None:
    from zsfs.fit.run import fit_store
    from zsfs.store import Store
    from zsfs.testing.synthetic import subset_store

    rng = np.random.default_rng(0)
    with Store(source.store) as store:
        classes = store.vocabulary(source.vocabulary).classes
        sizes = [size for size in (2, 3, 4, 5) if size < len(classes)]
        for size in sizes:
            for draw in range(draws):
                present = sorted(rng.choice(classes, size, replace=False).tolist())
                path = subset_store(store, source.vocabulary, present, work / f"{source.name}-absent-{size}-{draw}.h5")
                with temporary_store(path) as subset:
                    labels = np.asarray(subset.labels()).astype(str)
                    results = {name: fit_store(subset, make_config(preset, overrides, 0), source.vocabulary)
                               for name, (preset, overrides) in ABSENT_CONFIGS.items()}
                    # every gain is over the table's zero-shot row (the default's prompts), not over
                    # each preset's own zero-shot (the paper's single prompts score otherwise)
                    zero_shot = accuracy_on(results["default-k16"], labels)[1]
                    accuracies = {}
                    for name, result in results.items():
                        accuracy = accuracy_on(result, labels)[0]
                        accuracies[name] = accuracy
                        record(source.name, "absent", name, "accuracy", accuracy)
                        record(source.name, "absent", name, "gain over zero-shot", accuracy - zero_shot)
                        # where the lost images go: present images labelled with a class the collection lacks
                        predicted = np.asarray(result.classes)[result.predicted]
                        record(source.name, "absent", name, "labelled absent", float(np.mean(~np.isin(predicted, present))))
                        if name == "default-k16":
                            record(source.name, "absent", "zero-shot", "accuracy", zero_shot)
                            reported = set(result.absent_classes)
                            truly = set(classes) - set(present)
                            # precision only where a draw reports some: this row says how many did
                            record(source.name, "absent", name, "draws reporting absent", float(bool(reported)))
                            if reported:
                                record(source.name, "absent", name, "absent precision",
                                       len(reported & truly) / len(reported))
                            record(source.name, "absent", name, "absent recall", len(reported & truly) / len(truly))
                    # the target is per draw: the default never below the paper (min of this metric >= 0)
                    margin = accuracies["default-k16"] - accuracies["paper-k16"]
                    record(source.name, "absent", "default-k16", "minus paper-k16", margin)
                    record(source.name, "absent", "default-k16", "draws below paper-k16", float(margin < 0))


def run_small(source: Source, draws: int, work: Path, record) -> None:
    from zsfs.fit.run import fit_store
    from zsfs.store import Store
    from zsfs.testing.synthetic import rows_store

    rng = np.random.default_rng(0)
    with Store(source.store) as store:
        for size in (size for size in SMALL_SIZES if size < store.n_images):
            for draw in range(draws):
                rows = np.sort(rng.choice(store.n_images, size, replace=False))
                path = rows_store(store, source.vocabulary, rows, work / f"{source.name}-small-{size}-{draw}.h5",
                                  f"sample of {store.path.name}: {size} images")
                with temporary_store(path) as sample:
                    labels = np.asarray(sample.labels()).astype(str)
                    for name, (preset, overrides) in ABSENT_CONFIGS.items():
                        accuracy, zero_shot = accuracy_on(fit_store(sample, make_config(preset, overrides, 0),
                                                                    source.vocabulary), labels)
                        record(source.name, f"small-{size}", name, "accuracy", accuracy)
                    record(source.name, f"small-{size}", "zero-shot", "accuracy", zero_shot)


def run_ood(source: Source, record) -> None:
    from zsfs.evaluate import OOD_DETECTORS
    from zsfs.oodbench import ood_bench

    PREDICTION_COLUMN = {detector.bench_name: detector.column for detector in OOD_DETECTORS}
    from zsfs.store import Store

    with Store(source.store) as store:
        n_classes = len(store.vocabulary(source.vocabulary).classes)
        id_classes = 6 if n_classes == 10 else max(2, round(0.6 * n_classes))
        for name, (preset, overrides) in OOD_CONFIGS.items():
            metrics = ood_bench(store, id_classes, make_config(preset, overrides, 0), n_splits=5,
                                vocabulary=source.vocabulary)
            for split in metrics["splits"]:
                for detector, values in split["ood"].items():
                    if name == "paper" and detector in ("mcm", "zsfs_continuous"):
                        continue  # the same numbers as in the default's rows
                    for metric in ("auroc", "fpr95"):  # named as the predictions' columns (ood-bench's keys differ)
                        record(source.name, "ood", f"{name}: {PREDICTION_COLUMN.get(detector, detector)}", metric,
                               values[metric])
                record(source.name, "ood", name, "ID accuracy", split["id_accuracy"])


@contextmanager
def temporary_store(master: Path) -> Iterator["Store"]:
    """The store ``master``, open; its master and shards are removed afterwards."""
    from zsfs.store import Store

    try:
        with Store(master) as store:
            yield store
    finally:
        for stale in master.parent.glob(f"{master.stem}*"):
            _remove(stale)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path) if path.is_dir() else path.unlink()


def summarise(rows: list[dict]) -> list[dict]:
    from zsfs.evaluate import mean_std

    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["scenario"], row["method"], row["metric"]), []).append(row["value"])
    return [{"dataset": d, "scenario": s, "method": m, "metric": k, **dict(zip(("mean", "std"), mean_std(v))),
             "min": min(v), "n": len(v)} for (d, s, m, k), v in groups.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, action="append", default=[],
                        help="feature folder laid out like ../shared/bench/fashion-mnist (repeatable)")
    parser.add_argument("--vocab", default="fashion", help="vocabulary of the feature folders [fashion]")
    parser.add_argument("--synthetic", default="", help=f"comma-separated synthetic sizes: {', '.join(SYNTHETIC)}")
    parser.add_argument("--seeds", type=at_least_one, default=3, help="fit seeds per configuration (full scenario) [3]")
    parser.add_argument("--draws", type=at_least_one, default=4,
                        help="draws per number of present classes, and per sample size [4]")
    parser.add_argument("--scenarios", default="full,absent,small,ood", help="which of full,absent,small,ood [all]")
    parser.add_argument("--work", type=Path, default=None, help="folder for imported stores [a temporary one]")
    parser.add_argument("--out", type=Path, default=Path("bench-quality"),
                        help="folder for quality.csv/json [./bench-quality]")
    args = parser.parse_args(argv)
    scenarios = set(args.scenarios.split(","))
    if not args.features and not args.synthetic:
        parser.error("give at least one --features folder or --synthetic size")
    for option, given, known in (("--scenarios", scenarios, ("full", "absent", "small", "ood")),
                                 ("--synthetic", filter(None, args.synthetic.split(",")), SYNTHETIC)):
        unknown = sorted(set(given) - set(known))
        if unknown:  # a typo ran nothing and wrote empty tables
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    missing = [str(folder) for folder in args.features if not (folder / "clip.npy").is_file()]
    if missing:
        parser.error(f"--features: no clip.npy in {', '.join(missing)} (a folder laid out as "
                     "../shared/bench/fashion-mnist)")
    names = [dataset_name(folder) for folder in args.features]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:  # the table names a dataset by its folder, and its store in --work too: one was taken for both
        parser.error(f"--features: several folders are named {', '.join(shared)}; the table names datasets by "
                     "folder name: give each another name (a link to it)")
    check_output(parser, args.out, "--out", folder=True)
    if args.work is not None:
        check_output(parser, args.work, "--work", folder=True)
    measured_on = note_machine()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        sources = [Source(dataset_name(folder), import_features(folder, work, args.vocab), args.vocab)
                   for folder in args.features]
        sources += [Source(f"synthetic-{size}", synthetic_store(size, work), "synthetic")
                    for size in filter(None, args.synthetic.split(","))]
        rows: list[dict] = []

        def record(dataset, scenario, method, metric, value, **extra) -> None:
            rows.append({"dataset": dataset, "scenario": scenario, "method": method, "metric": metric,
                         "value": float(value), **extra})

        runs = {"full": lambda source: run_full(source, args.seeds, record),
                "absent": lambda source: run_absent(source, args.draws, work, record),
                "small": lambda source: run_small(source, args.draws, work, record),
                "ood": lambda source: run_ood(source, record)}
        for source in sources:
            for scenario in (name for name in runs if name in scenarios):
                # on stderr, so that stdout stays the table: a run takes minutes on 2 cores, longer when loaded
                print(f"[{time.perf_counter() - started:6.0f} s] {source.name}: {scenario}", file=sys.stderr, flush=True)
                runs[scenario](source)

    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    import polars as pl

    pl.DataFrame(summary).write_csv(args.out / "quality.csv")
    (args.out / "quality.json").write_text(json.dumps({"machine": measured_on, "summary": summary, "runs": rows},
                                                      indent=2) + "\n")
    print(f"{'dataset':16} {'scenario':10} {'method':28} {'metric':24} {'mean ± std':>17} {'min':>8}  n")
    for row in summary:
        print(f"{row['dataset']:16} {row['scenario']:10} {row['method']:28} {row['metric']:24} "
              f"{row['mean']:8.4f} ± {row['std']:.4f} {row['min']:8.4f}  {row['n']}")
    print(f"written: {args.out / 'quality.csv'}, {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    run(main)
