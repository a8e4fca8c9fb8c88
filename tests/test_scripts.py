"""Every script under benchmarks/ and pipelines/ keeps working: found here, never listed by hand.

Each file imports; each script (a ``__main__`` block) answers ``--help``; the scripts in ``TINY``
also run end to end at a tiny size. A new script is covered by the first two without any change
here; give it a ``TINY`` entry when it can run in seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The benchmarks import their shared harness by name, as their folder is on the path when they run:
# so it is here, where their pure parts are imported to be checked by hand.
sys.path.insert(0, str(ROOT / "benchmarks"))
FILES = sorted(path for folder in ("benchmarks", "pipelines") for path in (ROOT / folder).glob("*.py")
               if path.name != "__init__.py")

TINY = {
    "benchmarks/bench_extract.py": ["--models", "tiny", "--n-images", "6", "--skip-naive", "--workers", "0"],
    "benchmarks/bench_fit.py": ["--sizes", "500", "--configs", "fast", "--loop", "--work", "{tmp}"],  # bug: --loop failed
    "benchmarks/bench_report.py": ["--rows", "2000", "--classes", "4", "--pool", "8", "--work", "{tmp}"],
    "benchmarks/bench_import.py": ["--rows", "3000", "--work", "{tmp}"],
    "pipelines/report.py": ["{tmp}"],
}
"""Script -> arguments of a run that takes seconds (``{tmp}``: a fresh folder)."""


def command(path: Path) -> list[str]:
    """How the script is meant to be run: pipelines as modules (they import each other), benchmarks as files."""
    relative = path.relative_to(ROOT)
    if (path.parent / "__init__.py").exists():
        return [sys.executable, "-m", ".".join(relative.with_suffix("").parts)]
    return [sys.executable, str(path)]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # Run from a scratch folder: whatever a script writes by default (a store's lock file beside
    # ./photos.h5, say) must not land in the source tree.
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def is_script(path: Path) -> bool:
    return 'if __name__ == "__main__"' in path.read_text()


def test_the_scripts_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in FILES}
    assert {"benchmarks/bench_extract.py", "benchmarks/bench_fit.py", "pipelines/run.py"} <= names
    assert set(TINY) <= names, "a TINY entry names a script that no longer exists"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_file_imports_and_every_script_answers_help(path, tmp_path):
    if is_script(path):
        done = run(command(path) + ["--help"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "usage" in done.stdout.lower(), done.stdout
    else:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        done = run([sys.executable, "-c", f"import {module}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("script", sorted(TINY))
def test_scripts_run_at_a_tiny_size(script, tmp_path):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in TINY[script]]
    done = run(command(ROOT / script) + args, tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert done.stdout.strip(), "a benchmark that prints nothing measured nothing"


def test_bench_quality_reports_the_default_against_the_paper_in_every_absent_draw(tmp_path):
    out = tmp_path / "quality"
    done = run(command(ROOT / "benchmarks/bench_quality.py") + [
        "--synthetic", "2k", "--seeds", "1", "--draws", "1", "--scenarios", "absent", "--out", str(out)], tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert re.search(r"^\[ *\d+ s\] synthetic-2k: absent$", done.stderr, re.M), done.stderr  # progress, off the table
    assert "synthetic-2k: absent" not in done.stdout
    runs = json.loads((out / "quality.json").read_text())["runs"]

    def values(method, metric):
        return [row["value"] for row in runs if row["method"] == method and row["metric"] == metric]

    default, paper = values("default-k16", "accuracy"), values("paper-k16", "accuracy")
    assert len(default) == len(paper) == 4  # one draw of 2, 3, 4 and 5 present classes
    margins = values("default-k16", "minus paper-k16")
    assert margins == pytest.approx([d - p for d, p in zip(default, paper)])
    assert values("default-k16", "draws below paper-k16") == [float(m < 0) for m in margins]
    labelled_absent = values("default-k16", "labelled absent")  # wrong labels of one kind: at most the errors
    assert len(labelled_absent) == 4 and all(0 <= a <= 1 - acc + 1e-9 for a, acc in zip(labelled_absent, default))
    summary = {(row["method"], row["metric"]): row for row in json.loads((out / "quality.json").read_text())["summary"]}
    assert summary["default-k16", "minus paper-k16"]["min"] == pytest.approx(min(margins))


def test_bench_quality_fits_small_samples_of_the_store(tmp_path):
    out, work = tmp_path / "quality", tmp_path / "work"
    done = run(command(ROOT / "benchmarks/bench_quality.py") + [
        "--synthetic", "2k", "--seeds", "1", "--draws", "1", "--scenarios", "small", "--work", str(work),
        "--out", str(out)], tmp_path)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    runs = json.loads((out / "quality.json").read_text())["runs"]

    measured = sorted((row["scenario"], row["method"]) for row in runs if row["metric"] == "accuracy")
    assert measured == sorted((f"small-{size}", method) for size in (200, 500, 1000)
                              for method in ("default-k16", "paper-k16", "zero-shot"))
    assert all(0 < row["value"] <= 1 for row in runs)
    assert sorted(path.name for path in work.iterdir()) == ["synthetic-2k.h5", "synthetic-2k.shards"]  # samples removed


@pytest.mark.shared("bench/fashion-mnist")
def test_make_second_map_gives_the_shared_features_another_vocabulary(tmp_path):
    import numpy as np

    from conftest import SHARED

    out = tmp_path / "fm2"
    done = run(command(ROOT / "benchmarks/make_second_map.py") + ["test", str(SHARED / "bench/fashion-mnist"),
                                                                   str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "clip.npy").resolve() == (SHARED / "bench/fashion-mnist/clip.npy").resolve()
    vocabulary = np.load(out / "vocab-fashion.npz")
    shared = np.load(SHARED / "bench/fashion-mnist/vocab-fashion.npz")
    assert vocabulary["classes"].tolist() == shared["classes"].tolist()
    assert vocabulary["ensemble"].shape == (10, 1000) and not np.array_equal(vocabulary["ensemble"], shared["ensemble"])
    assert np.allclose(np.linalg.norm(vocabulary["ensemble"], axis=1), 1)
    assert (vocabulary["single"].sum(axis=1) == 1).all() and (vocabulary["single"] > 0).sum() == 10  # one synset each
    again = run(command(ROOT / "benchmarks/make_second_map.py") + ["test", str(SHARED / "bench/fashion-mnist"),
                                                                    str(out)], tmp_path)
    assert again.returncode == 2 and "exists; give a new folder" in again.stderr  # was a FileExistsError traceback


def test_make_second_map_checks_its_inputs_before_making_the_folder(tmp_path):
    """Bug: a wrong shared folder gave a folder of links to nothing (exit 0); missing training
    images left an empty folder that the rerun refused."""
    done = run(command(ROOT / "benchmarks/make_second_map.py") + ["test", str(tmp_path / "nowhere"), "fm2"], tmp_path)
    assert done.returncode == 2 and f"not found: {tmp_path / 'nowhere' / 'backbone.npy'}" in done.stderr
    assert not (tmp_path / "fm2").exists()


def test_bench_quality_refuses_what_it_cannot_run(tmp_path):
    """Bug: a typo in --scenarios exited 0 with empty tables; --synthetic 5k and a missing
    --features folder were tracebacks."""
    for args, said in ((["--synthetic", "2k", "--scenarios", "ful"], "--scenarios: unknown ful; choose from full"),
                       (["--synthetic", "5k"], "--synthetic: unknown 5k; choose from 2k, 10k"),
                       (["--features", "nowhere"], "--features: no clip.npy in nowhere")):
        done = run(command(ROOT / "benchmarks/bench_quality.py") + args, tmp_path)
        assert done.returncode == 2 and said in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_quality_refuses_two_datasets_of_one_name_and_an_unwritable_out_before_any_fit(tmp_path):
    """Walkthrough: two --features folders named alike shared one store (the second's figures were the
    first's, n=2 as if two seeds); --out on a file was a traceback after all the fits."""
    for folder in ("a/fm", "b/fm"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "clip.npy").write_bytes(b"")
    (tmp_path / "taken").write_text("")
    for args, said in ((["--features", "a/fm", "--features", "b/fm/"], "several folders are named fm; the table"),
                       (["--synthetic", "2k", "--out", "taken"], "--out taken: a file, not a folder")):
        done = run(command(ROOT / "benchmarks/bench_quality.py") + args, tmp_path)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b", "taken"]


def test_an_output_folder_is_judged_writable_by_itself_not_by_its_parent(tmp_path):
    """Review: --work in a writable folder under a read-only parent ($HOME under /home) was refused,
    and a read-only folder under a writable parent accepted (the check probed the parent)."""
    from zsfs.testing.privileges import run_python_unprivileged

    writable, read_only = tmp_path / "ro" / "w", tmp_path / "r"
    writable.mkdir(parents=True)
    read_only.mkdir()
    (tmp_path / "ro").chmod(0o555)
    read_only.chmod(0o555)
    code = (f"import argparse, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import harness; "
            "from pathlib import Path; harness.check_output(argparse.ArgumentParser(prog='bench'), Path(sys.argv[-1]), "
            "'--work', folder=True); print('accepted')")
    try:
        accepted = run_python_unprivileged(code.replace("sys.argv[-1]", repr(str(writable))))
        refused = run_python_unprivileged(code.replace("sys.argv[-1]", repr(str(read_only))))
    finally:
        (tmp_path / "ro").chmod(0o755)
        read_only.chmod(0o755)
    assert accepted.returncode == 0 and accepted.stdout.strip() == "accepted", accepted.stderr
    assert refused.returncode == 2 and f"--work: cannot write the output {read_only}: {read_only} is not writable" \
        in refused.stderr, refused.stderr


# --- the benchmarks' figures, from their pure parts on hand-made inputs (mutation review) ---

def test_bench_quality_summary_is_mean_population_std_min_and_n_per_metric():
    rows = [{"dataset": "d", "scenario": "absent", "method": "default-k16", "metric": "minus paper-k16", "value": v}
            for v in (0.1, -0.2, 0.4)]
    rows += [{"dataset": "d", "scenario": "absent", "method": "paper-k16", "metric": "minus paper-k16", "value": 9.0},
             {"dataset": "d", "scenario": "full", "method": "default-k16", "metric": "minus paper-k16", "value": 7.0},
             {"dataset": "e", "scenario": "absent", "method": "default-k16", "metric": "minus paper-k16", "value": 5.0},
             {"dataset": "d", "scenario": "absent", "method": "default-k16", "metric": "accuracy", "value": 3.0}]
    from benchmarks import bench_quality

    summary = bench_quality.summarise(rows)
    assert len(summary) == 5  # one row per (dataset, scenario, method, metric)
    row = next(r for r in summary if (r["dataset"], r["scenario"], r["method"], r["metric"])
               == ("d", "absent", "default-k16", "minus paper-k16"))
    assert row["mean"] == pytest.approx(0.1)
    assert row["std"] == pytest.approx((0.18 / 3) ** 0.5)  # ddof 0: (0 + 0.09 + 0.09) / 3
    assert row["min"] == pytest.approx(-0.2) and row["n"] == 3


def test_bench_quality_absent_figures_by_hand(tmp_path, monkeypatch):
    """Every absent-scenario figure against fits whose predictions are made up here: the
    default equals the paper in the 2-class draw (not below it) and is below it in the 3-class one."""
    from types import SimpleNamespace

    import numpy as np

    import zsfs.fit.run
    from zsfs.fit.config import FitConfig
    from zsfs.testing.synthetic import make_synthetic_store

    from benchmarks import bench_quality as bench
    seen = []

    def fake_fit(subset, config, vocabulary):
        labels = np.asarray(subset.labels()).astype(str)
        classes = list(subset.vocabulary(vocabulary).classes)
        present = sorted(set(labels))
        absent = [name for name in classes if name not in present]
        paper = config == FitConfig.paper(k=16, seed=0)
        assert paper or config == FitConfig(k=16, seed=0)
        predicted = labels.copy()
        if not paper:  # the last present class taken for the first one
            predicted[labels == present[-1]] = present[0]
            reported = [absent[0], present[0]] if len(present) == 2 else []
            zero_shot = np.full(len(labels), present[0])
        else:  # 2 classes: the same number wrong, labelled with an absent class; 3 classes: all right
            if len(present) == 2:
                predicted[labels == present[-1]] = absent[0]
            reported = [absent[-1]]  # never read: only the default's are scored
            zero_shot = np.full(len(labels), present[-1])
        if not paper:
            seen.append((labels, present, absent))
        index = {name: i for i, name in enumerate(classes)}
        return SimpleNamespace(classes=classes, predicted=np.array([index[p] for p in predicted]),
                               zero_shot_predicted=np.array([index[p] for p in zero_shot]), absent_classes=reported,
                               cycles=[])

    monkeypatch.setattr(zsfs.fit.run, "fit_store", fake_fit)
    store = make_synthetic_store(tmp_path / "s.h5", 80, 4, clip_dim=8, backbone_dim=8, seed=0)
    rows = []
    bench.run_absent(bench.Source("s", store, "synthetic"), 1, tmp_path,
                     lambda dataset, scenario, method, metric, value, **extra: rows.append((method, metric, value)))

    def values(method, metric):
        return [value for m, k, value in rows if (m, k) == (method, metric)]

    assert [len(present) for _, present, _ in seen] == [2, 3]
    share = [{name: float(np.mean(labels == name)) for name in present} for labels, present, _ in seen]
    default = [1 - s[p[-1]] for s, (_, p, _) in zip(share, seen)]
    paper = [default[0], 1.0]
    assert values("default-k16", "accuracy") == pytest.approx(default)
    assert values("paper-k16", "accuracy") == pytest.approx(paper)
    assert values("zero-shot", "accuracy") == pytest.approx([s[p[0]] for s, (_, p, _) in zip(share, seen)])
    assert values("default-k16", "gain over zero-shot") == pytest.approx(
        [d - s[p[0]] for d, s, (_, p, _) in zip(default, share, seen)])
    # bug: the paper's gain was over its own zero-shot (single prompts), not the table's zero-shot row
    assert values("paper-k16", "gain over zero-shot") == pytest.approx(
        [a - s[p[0]] for a, s, (_, p, _) in zip(paper, share, seen)])
    assert values("default-k16", "labelled absent") == [0.0, 0.0]
    assert values("paper-k16", "labelled absent") == pytest.approx([share[0][seen[0][1][-1]], 0.0])
    assert values("default-k16", "minus paper-k16") == pytest.approx([0.0, default[1] - 1.0])
    assert values("default-k16", "draws below paper-k16") == [0.0, 1.0]  # a tie is not below
    assert values("default-k16", "absent precision") == [0.5]  # a draw reporting none has no precision
    assert values("default-k16", "absent recall") == pytest.approx([1 / 2, 0.0])  # of the 2 and 1 absent classes
    assert values("paper-k16", "absent precision") == values("paper-k16", "absent recall") == []


def test_bench_fit_overall_pseudo_label_precision_weighs_cycles_by_their_size():
    from benchmarks.bench_fit import _overall_precision as overall
    per_cycle = [{"n_kept": 10, "precision": 0.9}, {"n_kept": 30, "precision": 0.5}, {"n_kept": 0, "precision": None}]
    assert overall(per_cycle) == pytest.approx((9 + 15) / 40)  # not (0.9 + 0.5) / 2, nor over the cycles


def test_bench_fit_configs_are_what_their_names_say():
    from zsfs.fit.config import FitConfig

    from benchmarks import bench_fit as bench
    config = {name: bench.make_config(name) for name in bench.CONFIGS}
    default, paper, fast = FitConfig(), FitConfig.paper(), FitConfig.fast()
    assert config["default"] == default and config["paper"] == paper and config["fast"] == fast
    assert config["paper-fast"] == FitConfig.fast(paper=True) != fast
    assert config["paper-fast"].prompts == paper.prompts and config["paper-fast"].precision == fast.precision
    for name, differs in (("no-accumulate", {"method": "cycles", "accumulate": False}), ("single", {"prompts": "single"}),
                          ("duplicates", {"unique_pseudo_labels": False}), ("fast-cycles", {"method": "cycles"}),
                          ("fast-exact", {"ivf_neighbours": False})):
        base = fast if name.startswith("fast-") else default
        assert config[name] == FitConfig(**{**base.__dict__, **differs}), name
        assert {k for k, v in config[name].__dict__.items() if v != base.__dict__[k]} == set(differs), name
    for name in ("fast-no-accumulate", "fast-single", "fast-duplicates"):
        assert config[name] == FitConfig(**{**fast.__dict__, **bench.CONFIGS[name.removeprefix("fast-")][1]}), name
    assert (config["previous-default"].method, config["previous-default"].prompts) == ("cycles", "ensemble")
    assert config["previous-default"].accumulate and config["previous-default"].unique_pseudo_labels


def test_a_benchmarks_peak_memory_is_its_own_not_its_large_parents(tmp_path):
    """Walkthrough: after bench_fit's --loop had grown its process to 700 MB, every fit it started
    reported a 709 MB peak (``ru_maxrss`` carries a parent's peak across fork and exec)."""
    measure = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import harness; print(harness.peak_rss_mb())"
    parent = ("import subprocess, sys\n"
              "ballast = bytearray(400 << 20)\n"
              "ballast[::4096] = b'x' * len(range(0, len(ballast), 4096))  # every page touched: resident\n"
              f"print(subprocess.run([sys.executable, '-c', {measure!r}], capture_output=True, text=True, check=True).stdout)")
    child_mb = float(subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout)
    assert 1 < child_mb < 200  # the bare interpreter's own tens of MB, not the parent's 400


def test_make_second_map_vocabulary_by_hand(tmp_path, monkeypatch):
    import gzip

    import numpy as np

    from benchmarks import make_second_map as bench
    bench.second_map_vocabulary(tmp_path)
    vocabulary = np.load(tmp_path / "vocab-fashion.npz")
    assert vocabulary["classes"].tolist() == bench.CLASSES
    for row, name in enumerate(bench.CLASSES):
        synsets = bench.SECOND_MAP[name]
        assert np.flatnonzero(vocabulary["ensemble"][row]).tolist() == sorted(synsets), name
        assert vocabulary["ensemble"][row, synsets] == pytest.approx(1 / np.sqrt(len(synsets)))
        assert np.flatnonzero(vocabulary["single"][row]).tolist() == [synsets[0]], name  # the first synset
        assert vocabulary["single"][row, synsets[0]] == 1
    # the IDX reader: magic (0, 0, type, dims), big-endian sizes, then the bytes
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    with gzip.open(tmp_path / "x.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in data.shape) + data.tobytes())
    monkeypatch.setattr(bench, "IMAGES", tmp_path)
    assert np.array_equal(bench.idx_file("x.gz"), data)


def test_bench_report_run_is_consistent(tmp_path):
    import numpy as np
    import polars as pl

    from zsfs import runs

    from benchmarks import bench_report as bench
    bench.make_run(tmp_path, tmp_path / "pool", 300, 4, 5)
    frame = pl.read_parquet(tmp_path / runs.PREDICTIONS)
    metrics = json.loads((tmp_path / runs.METRICS).read_text())
    assert metrics["n_images"] == frame.height == 300
    assert metrics["accuracy"] == pytest.approx(float(np.mean(frame["label"].to_numpy() == frame["predicted"].to_numpy())))
    assert 0.7 < metrics["accuracy"] < 0.95  # 80 % kept plus chance hits among 4 classes
    assert frame["is_seed"].sum() == 16 * 4 and (frame["pseudo_cycle"].to_numpy()[frame["is_seed"].to_numpy()] == 0).all()
    assert (frame["ood_flag"].to_numpy() == (frame["ood_score"].to_numpy() >= 2 / 3)).all()
    assert (frame["pseudo_label"].is_null().to_numpy() == (frame["pseudo_cycle"].to_numpy() < 0)).all()
    assert frame["path"].n_unique() == 5


def test_bench_quality_ood_rows_by_hand(tmp_path, monkeypatch):
    """Each split's AUROC and FPR95 under its own detector and config; the paper's MCM and
    continuous score (the default's numbers again) left out; ID accuracy per split."""
    import zsfs.oodbench
    from zsfs.fit.config import FitConfig
    from zsfs.testing.synthetic import make_synthetic_store

    from benchmarks import bench_quality as bench
    asked = []

    def fake_bench(store, id_classes, config, *, n_splits, vocabulary):
        paper = config == FitConfig.paper(seed=0)
        asked.append((id_classes, n_splits, paper))
        base = 0.5 if paper else 0.0
        return {"splits": [{"id_accuracy": base + split / 10,
                            "ood": {detector: {"auroc": base + split / 10 + d / 100, "fpr95": 1 - base - d / 100}
                                    for d, detector in enumerate(("zsfs", "mcm", "zsfs_continuous"))}}
                           for split in range(2)]}

    monkeypatch.setattr(zsfs.oodbench, "ood_bench", fake_bench)
    store = make_synthetic_store(tmp_path / "s.h5", 40, 5, clip_dim=64, backbone_dim=8, seed=0)
    rows = []
    bench.run_ood(bench.Source("s", store, "synthetic"), lambda *row: rows.append(row))
    assert asked == [(3, 5, False), (3, 5, True)]  # 60 % of 5 classes ID, 5 splits; the default, then the paper
    got = {}
    for dataset, scenario, method, metric, value in rows:
        assert (dataset, scenario) == ("s", "ood")
        got.setdefault((method, metric), []).append(value)
    expected = {  # named as the predictions' columns are (walkthrough: ood-bench's "zsfs" is ood_score)
        ("default: ood_score", "auroc"): [0.0, 0.1], ("default: ood_score", "fpr95"): [1.0, 1.0],
        ("default: mcm_score", "auroc"): [0.01, 0.11], ("default: mcm_score", "fpr95"): [0.99, 0.99],
        ("default: ood_continuous", "auroc"): [0.02, 0.12], ("default: ood_continuous", "fpr95"): [0.98, 0.98],
        ("default", "ID accuracy"): [0.0, 0.1],
        ("paper: ood_score", "auroc"): [0.5, 0.6], ("paper: ood_score", "fpr95"): [0.5, 0.5],
        ("paper", "ID accuracy"): [0.5, 0.6],
    }
    assert set(got) == set(expected) and all(got[key] == pytest.approx(expected[key]) for key in expected), got


def test_bench_fit_reports_the_fit_metrics_it_is_given(tmp_path, monkeypatch):
    """fit_once's figures from a made-up fit result and its metrics: accuracy and zero-shot not
    swapped, seed precision of cycle 0, all pseudo-labels weighed, cycles after the seeds, Adam steps."""
    from types import SimpleNamespace

    import zsfs.fit.run
    import zsfs.evaluate
    from zsfs.testing.synthetic import make_synthetic_store

    from benchmarks import bench_fit as bench
    make_synthetic_store(bench.store_path(tmp_path, "500"), 40, 3, clip_dim=8, backbone_dim=8, seed=0)
    cycles = [SimpleNamespace(losses=[1.0] * 3, n_trained=100), SimpleNamespace(losses=[1.0] * 2, n_trained=50)]
    result = SimpleNamespace(timings={"predict": 1.0}, cpu_timings={"predict": 1.0}, cycles=cycles,
                             stop_reason="loss rose", neighbour_search={"source": "x", "search": "y"})
    monkeypatch.setattr(zsfs.fit.run, "fit_store", lambda store, config: result)
    monkeypatch.setattr(zsfs.evaluate, "fit_metrics", lambda fitted, labels: {
        "accuracy": 0.8, "zero_shot_accuracy": 0.6,
        "seed_precision": [{"cycle": 0, "n_kept": 10, "precision": 0.9}, {"cycle": 1, "n_kept": 30, "precision": 0.5}]})
    fitted = bench.fit_once(tmp_path, "500", "fast")
    batch = bench.make_config("fast").batch_size
    assert (fitted["accuracy"], fitted["zero_shot_accuracy"], fitted["seed_precision"]) == (0.8, 0.6, 0.9)
    assert fitted["pseudo_precision_all"] == pytest.approx(0.6) and fitted["cycles"] == 1
    assert fitted["steps"] == 3 * -(-100 // batch) + 2 * -(-50 // batch) and fitted["batch_size"] == batch
    assert fitted["peak_rss_mb"] > 0 and (fitted["size"], fitted["config"]) == ("500", "fast")


@pytest.mark.parametrize("script, args, said", [
    ("bench_extract.py", ["--n-images", "0"], "argument --n-images: must be at least 1, not 0"),
    ("bench_extract.py", ["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    ("bench_extract.py", ["--images", "nowhere"], "--images nowhere: not a folder"),
    ("bench_ray.py", ["--repeat", "0"], "argument --repeat: must be at least 1, not 0"),
    ("bench_quality.py", ["--synthetic", "2k", "--seeds", "0"], "argument --seeds: must be at least 1, not 0"),
    ("failure_sweep.py", ["--cuts", "0"], "argument --cuts: must be at least 1, not 0"),
    ("bench_report.py", ["--pool", "x"], "argument --pool: not a whole number: 'x'"),
    ("bench_memory.py", ["text", "--classes", "0,5"], "--workers / --classes: must be at least 1, not 0"),
    ("bench_extract.py", ["--models", "tiny,bogus"], "argument --models: unknown bogus; choose from"),
    ("bench_ray.py", ["--models", "bogus"], "argument --models: unknown bogus; choose from"),
    ("bench_ray.py", ["--n-images", "1", "--ray-workers", "3"], "--ray-workers 3 is more than --n-images 1"),
    ("bench_tars.py", ["--sizes", "0"], "--sizes: '0' is not a list of counts >= 1"),
])
def test_benchmarks_refuse_bad_sizes_in_one_line_before_any_work(script, args, said, tmp_path):
    """Review: these were tracebacks (a KeyError after the images were written, ZsfsErrors, a child's
    CalledProcessError); walkthrough: 0 seeds, 0 cuts printed an empty table as a result."""
    done = run(command(ROOT / "benchmarks" / script) + args, tmp_path)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_bench_tars_says_which_tars_it_reused(tmp_path):
    """Review: the write time of the tars a second run found in --workdir printed as 'nan'."""
    work = tmp_path / "tars"
    lines = [run(command(ROOT / "benchmarks" / "bench_tars.py") + ["--sizes", "30", "--workdir", str(work)],
                 tmp_path).stdout.splitlines() for _ in range(2)]
    first, second = (next(line.split() for line in output if line.split()[:1] == ["30"]) for output in lines)
    assert float(first[3]) >= 0 and second[3] == "reused" and first[:3] == second[:3] == ["30", "1", "0.00"]
