"""Every script under benchmarks/ and pipelines/ keeps working: found here, never listed by hand.

Each file imports; each script (a ``__main__`` block) answers ``--help``; the scripts in ``TINY``
also run end to end at a tiny size. A new script is covered by the first two without any change
here; give it a ``TINY`` entry when it can run in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(path for folder in ("benchmarks", "pipelines") for path in (ROOT / folder).glob("*.py")
               if path.name != "__init__.py")

TINY = {
    "benchmarks/bench_extract.py": ["--models", "tiny", "--n-images", "6", "--skip-naive", "--workers", "0"],
    "benchmarks/bench_fit.py": ["--sizes", "500", "--configs", "fast", "--loop", "--work", "{tmp}"],  # bug: --loop failed
    "benchmarks/bench_report.py": ["--rows", "2000", "--classes", "4", "--pool", "8", "--work", "{tmp}"],
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
