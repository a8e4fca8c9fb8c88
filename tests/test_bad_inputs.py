"""Every bad input is one clear error line before any work: no traceback, no useless run.

One table of command lines; each must exit with its code (1: zsfs' own check, 2: click's usage
error), print one ``Error:`` line that names the problem, and never reach the expensive part
(loading models, fitting, writing a store), which is replaced by a tripwire here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

import zsfs
from zsfs.errors import ParameterError, ZsfsError
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.images import write_image_folder
from zsfs.testing.models import TINY_MODEL_ARGS
from zsfs.store import schema
from zsfs.testing.privileges import run_python_unprivileged


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A tiny labelled store and a run fitted on it, plus the bad files the cases point at."""
    work = tmp_path_factory.mktemp("bad-inputs")
    photos = write_image_folder(work / "photos", n_per_class=3, broken=False)["root"]
    store = work / "photos.h5"
    assert run_cli("extract", photos, "--out", store, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    run = work / "run"
    fitted = run_cli("fit", "--store", store, "--out", run, "--k", "1", "--candidates", "2", "--cycle-epochs", "1")
    assert fitted.exit_code == 0, fitted.output
    (work / "latin1.txt").write_bytes("chat\ncaf\u00e9\n".encode("latin-1"))
    (work / "grades.txt").write_text("#1 grade\n\n#2 grade\n")  # QA grades, each read as a comment
    (work / "classes.txt").write_text("cat\ndog\n")
    (work / "a-file").write_text("not a folder")
    (work / "to-nothing").symlink_to(work / "not-mounted")  # as a link to a share not mounted
    os.mkfifo(work / "pipe.h5")
    (work / "loop-a").symlink_to(work / "loop-b")
    (work / "loop-b").symlink_to(work / "loop-a")
    rows = np.random.default_rng(0).normal(size=(2, 8))  # float64, numpy's default
    np.save(work / "clip.npy", rows)
    np.save(work / "backbone.npy", rows)
    pl.DataFrame({"path": ["a.jpg", "b\x00.jpg"]}).write_parquet(work / "nul.parquet")
    pl.DataFrame({"path": ["a.jpg", "b.jpg"]}).write_parquet(work / "paths.parquet")
    (work / "ragged.csv").write_text("path,label\na.jpg,cat\nb,c.jpg,dog\n")  # a comma in a path, unquoted
    diverged = work / "diverged"
    diverged.mkdir()
    (diverged / "config.json").write_text((run / "config.json").read_text())
    state = torch.load(run / "classifier.pt", weights_only=True)
    state["weight"] = torch.full_like(state["weight"], float("nan"))
    torch.save(state, diverged / "classifier.pt")
    nan_bias = work / "nan-bias"  # mutation audit: a NaN bias alone passed the check
    nan_bias.mkdir()
    (nan_bias / "config.json").write_text((run / "config.json").read_text())
    state = torch.load(run / "classifier.pt", weights_only=True)
    state["bias"][0] = float("nan")
    torch.save(state, nan_bias / "classifier.pt")
    return {"work": work, "photos": photos, "store": store, "run": run}


@pytest.fixture
def tripwires(monkeypatch):
    """The expensive steps: a bad input must be refused before any of them."""
    import zsfs.extract
    import zsfs.fit.run
    import zsfs.importer
    import zsfs.predict
    import zsfs.report
    import zsfs.shard_embedder
    import zsfs.vocabulary

    def tripped(*args, **kwargs):
        raise AssertionError("the work started before the bad input was refused")

    # the models load in the ShardEmbedder, and extract loads CLIP alone for a rerun's vocabulary
    for module, name in ((zsfs.shard_embedder, "load_models"), (zsfs.extract, "load_clip"),
                         (zsfs.vocabulary, "load_clip_from_record"), (zsfs.fit.run, "fit_store"),
                         (zsfs.predict, "load_backbone_from_record"), (zsfs.importer, "write_store"),
                         (zsfs.report, "_render")):
        monkeypatch.setattr(module, name, tripped)


FIT = ("fit", "--store", "{store}")
CASES = [  # (command line, exit code, words of the error line)
    (FIT + ("--lr", "inf"), 2, "'inf' is not a finite number"),
    (FIT + ("--lr", "nan"), 2, "'nan' is not a finite number"),
    (FIT + ("--ood-multiplier", "nan"), 2, "'nan' is not a finite number"),
    (FIT + ("--ood-multiplier", "inf"), 2, "'inf' is not a finite number"),
    # bug: 1e308 overflowed to a numpy warning and a null threshold in config.json
    (FIT + ("--ood-multiplier", "1e308"), 2, "1e+308 is not in the range 0<=x<=100"),
    (FIT + ("--loss-floor", "-inf"), 2, "--loss-floor"),
    (("ood-bench", "--store", "{store}", "--id-classes", "2", "--lr", "inf"), 2, "'inf' is not a finite number"),
    # click's usage error, as the README says of a value out of range (it was a plain error, exit 1)
    (FIT + ("--seed", str(2**64)), 2, "--seed"),
    (FIT + ("--seed", "-1"), 2, "-1 is not in the range 0<=x<=2147483647"),
    (FIT + ("--out", "{work}/a-file/run"), 1, "a-file is a file, not a folder"),
    (("text", "{store}", "--classes", "{work}/latin1.txt", "--name", "x"), 1,
     "is not UTF-8 text (line 2: 'caf\\xe9'); it was saved in another encoding"),  # the line, as an editor finds it
    (("text", "{store}", "--classes", "{work}/grades.txt", "--name", "x"), 1,
     "lists no class names: each of its lines that is not blank starts with '#', which marks a comment"),
    # an invalid vocabulary name is a usage error, as the README says of option values (was exit 1)
    (("text", "{store}", "--classes", "{work}/classes.txt", "--name", "a/b"), 2, "invalid vocabulary name 'a/b'"),
    (("extract", "{photos}", "--out", "{work}/x.h5", "--classes", "{work}/latin1.txt"), 1, "is not UTF-8 text"),
    (("extract", "{photos}", "--out", "{work}/x.h5", "--vocab-name", "a/b"), 2, "invalid vocabulary name 'a/b'"),
    (("extract", "{photos}", "--out", "{work}/x.h5", "--vocab-name", "new\nline"), 2,
     "invalid vocabulary name 'new\\nline'"),  # bug: accepted, then part of a run folder's name
    (("extract", "{photos}", "--out", "{work}/x.h5", "--vocab-name", "ab\u202ecd"), 2, "control or invisible"),
    (("text", "{store}", "--classes", "{work}/classes.txt", "--name", "bad\udcff"), 2,  # failure test: said as
     "invalid vocabulary name 'bad\\xff': it is not UTF-8 text (its other bytes shown as \\xNN)"),  # invisible
    (("text", "{store}", "--classes", "{work}/classes.txt", "--name", " x "), 2,
     "invalid vocabulary name ' x ': use a non-empty name without '/', control or invisible characters, a leading "
     "'.' or spaces at either end"),  # bug: written, and then `--vocab x` did not find it
    (("extract", "{photos}", "--out", "{work}/a-file/x.h5"), 1, "a-file is a file, not a folder"),
    # bug: a file that is no store (a typo for another argument) was replaced by one under --overwrite
    (("extract", "{photos}", "--out", "{work}/a-file", "--overwrite"), 1,
     "a-file exists and is not an HDF5 file, so not a zsfs store; zsfs replaces only stores, even with --overwrite"),
    (("import", "{work}/classes.txt", "--clip-embeddings", "{work}/clip.npy", "--backbone-features",
      "{work}/backbone.npy", "--paths", "{work}/paths.parquet", "--overwrite"), 1,
     "classes.txt exists and is not an HDF5 file, so not a zsfs store"),
    (("extract", "{photos}", "--out", "{work}/x.h5", "--max-pixels", "0"), 2, "--max-pixels"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features", "{work}/backbone.npy",
      "--paths", "{work}/paths.parquet", "--backbone-name", ""), 2, "--backbone-name is empty; give the model's name"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features", "{work}/backbone.npy"), 2,
     "no paths table: pass --paths (a parquet, CSV or TSV file), or a clip-retrieval output folder (with metadata/) as "
     "--clip-embeddings"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features",
      "{work}/backbone.npy", "--paths", "{work}/nul.parquet"), 1, "1 value with a NUL byte (first: row 1, counted from 0)"),
    (("import", "{work}/clip.npy", "--clip-embeddings", "{work}/clip.npy", "--backbone-features",  # bug: with
      "{work}/backbone.npy", "--paths", "{work}/paths.parquet", "--overwrite"), 1,  # --overwrite, clip.npy was replaced
     "clip.npy is the CLIP embeddings file this command reads, not a place for the store it writes; give the store "
     "another name (e.g. clip.h5)"),
    (("extract", "{work}/classes.txt", "--out", "{work}/classes.txt", "--overwrite"), 1, "is the image source this "
     "command reads"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features", "{work}/backbone.npy",
      "--paths", "{work}/ragged.csv"), 1, "fields, the header 2; quote a path or label holding a comma"),  # bug: polars' advice, truncate_ragged_lines=True, and \x0a\x0a
    (("predict", "--run", "{work}/diverged", "{photos}"), 1, "non-finite weights"),
    (("predict", "--run", "{work}/nan-bias", "{photos}"), 1, "non-finite weights"),
    (("predict", "--run", "{run}", "--out", "{work}/a-file/p.csv", "{photos}"), 1, "a-file is a file"),
    # review: --overwrite replaced a named pipe (or a device node: /dev/null as root) by a store; without
    # it, extract and import waited for ever on the pipe
    (("import", "{work}/pipe.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features", "{work}/backbone.npy",
      "--paths", "{work}/paths.parquet", "--overwrite"), 1, "pipe.h5 is a named pipe, not a zsfs store; zsfs "
     "replaces only stores, even with --overwrite"),
    (("import", "{work}/pipe.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features", "{work}/backbone.npy",
      "--paths", "{work}/paths.parquet"), 1, "pipe.h5 is a named pipe, not a zsfs store"),
    (("extract", "{photos}", "--out", "{work}/pipe.h5"), 1, "pipe.h5 is a named pipe, not a zsfs store"),
    (("extract", "{photos}", "--out", "{work}/pipe.h5", "--overwrite"), 1, "pipe.h5 is a named pipe, not a zsfs store"),
    # review: refused once the work was done, as "File exists", "File name too long", "... already exists"
    (FIT + ("--out", "{work}/to-nothing/run"), 1, "to-nothing is a link to nothing ({work}/not-mounted); mount or "
     "make what it names, or choose another location"),
    (("predict", "--run", "{run}", "--out", "{work}/to-nothing/p.csv", "{photos}"), 1, "to-nothing is a link to nothing"),
    (("report", "{run}", "--out", "{work}/to-nothing/r.html"), 1, "to-nothing is a link to nothing"),
    (FIT + ("--out", "{work}/loop-a/run"), 1, "loop-a is a link that cannot be followed (Too many levels of symbolic "
     "links) ({work}/loop-b); mend the link, or choose another location"),
    (FIT + ("--out", "{work}/" + "b" * 256), 1, f"the name {'b' * 256} is too long for the file system, which takes "
     "names of 255 bytes at most; choose a shorter name"),
    (FIT + ("--out", "{work}/" + "b" * 256 + "/run"), 1, "is too long for the file system"),
    (("report", "{run}", "--out", "{work}/" + "c" * 251 + ".html"), 1, "is too long for the file system"),
    (FIT + ("--out", "{work}/dd/sub/.."), 1, "a name ending in '..' names a folder above, not a new one; give the "
     "new one's own name"),
    # review: a missing input was click's usage error (exit 2) in import and report, exit 1 elsewhere
    (("report", "{run}", "--images", "{work}/no-such-folder"), 1, "no-such-folder does not exist (given as --images)"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/no-clip.npy", "--backbone-features",
      "{work}/backbone.npy", "--paths", "{work}/paths.parquet"), 1, "no-clip.npy does not exist (given as "
     "--clip-embeddings)"),
    (("import", "{work}/i.h5", "--clip-embeddings", "{work}/clip.npy", "--backbone-features",
      "{work}/backbone.npy", "--paths", "{work}/no-paths.csv"), 1, "no-paths.csv does not exist (given as --paths)"),
    (("predict", "--run", "{run}", "--list", "{work}/no-list.txt"), 1,  # review: it offered folders and tars
     "Error: the list of images {work}/no-list.txt does not exist"),
    (("text", "{store}", "--classes", "{work}/no-classes.txt", "--name", "x"), 1,
     "class file {work}/no-classes.txt does not exist"),
]


@pytest.mark.parametrize("args, code, words", CASES, ids=[" ".join(case[0][:1] + case[0][3:5]) for case in CASES])
def test_bad_input_is_one_error_line_before_any_work(made, tripwires, args, code, words):
    values = {key: str(value) for key, value in made.items()}
    result = run_cli(*(arg.format(**values) for arg in args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words.format(**values) in errors[0], result.output
    if code == 1:  # bug: extract, text, predict and neighbours printed an empty line first (a bar never shown)
        assert result.output.startswith("Error"), result.output


def test_float64_embeddings_are_imported(made):
    work = made["work"]
    result = run_cli("import", work / "f64.h5", "--clip-embeddings", work / "clip.npy", "--backbone-features",
                     work / "backbone.npy", "--paths", work / "paths.parquet", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    from zsfs.store import Store

    expected = np.load(work / "clip.npy")
    with Store(work / "f64.h5") as store:
        np.testing.assert_allclose(store.read("clip"), expected / np.linalg.norm(expected, axis=1, keepdims=True),
                                   atol=1e-6)


UNWRITABLE_CLI = """
import json
from zsfs.testing.cli import output_text, run_cli
print(json.dumps({{name: [(result := run_cli(*args)).exit_code, result.output] for name, args in {cases!r}.items()}}))
"""


def test_unwritable_output_folders_are_refused_before_any_work(made):
    """A read-only folder; a read-only mount fails the same way (the write probe gets EROFS)."""
    import shutil

    work, photos, store, run = (str(made[key]) for key in ("work", "photos", "store", "run"))
    read_only = made["work"] / "ro"
    read_only.mkdir()
    shutil.copy(store, read_only / "photos.h5")  # a complete store: the rerun has nothing to compute
    shutil.copytree(made["store"].with_suffix(".shards"), read_only / "photos.shards")
    cases = {
        "extract": ["extract", photos, "--out", f"{read_only}/s.h5", *TINY_MODEL_ARGS],
        "extract rerun": ["extract", photos, "--out", f"{read_only}/photos.h5", *TINY_MODEL_ARGS,
                          "--classes", f"{work}/classes.txt", "--vocab", "more"],  # a vocabulary to add
        "text": ["text", f"{read_only}/photos.h5", "--classes", f"{work}/classes.txt", "--name", "more"],
        "neighbours": ["neighbours", f"{read_only}/photos.h5", "--k", "2"],
        "fit": ["fit", "--store", store, "--out", f"{read_only}/run"],
        "predict": ["predict", "--run", run, "--out", f"{read_only}/p.csv", photos],
        "import": ["import", f"{read_only}/i.h5", "--clip-embeddings", f"{work}/clip.npy", "--backbone-features",
                   f"{work}/backbone.npy", "--paths", f"{work}/paths.parquet"],
        "ood-bench": ["ood-bench", "--store", store, "--id-classes", "2", "--out", f"{read_only}/bench"],
    }
    read_only.chmod(0o555)
    try:
        child = run_python_unprivileged(UNWRITABLE_CLI.format(cases=cases), cwd=work)
        # the default run folder (./runs/...) in a read-only working folder: the user chose no location
        defaults = {"fit": ["fit", "--store", store],
                    "extract": ["extract", photos, *TINY_MODEL_ARGS, "--classes", f"{work}/classes.txt",
                                "--vocab", "more"],
                    # the same command as made the store: nothing to write (bug: refused as unwritable)
                    "extract again": ["extract", photos, *TINY_MODEL_ARGS],
                    "extract again, --out": ["extract", photos, "--out", "photos.h5", *TINY_MODEL_ARGS],
                    # new user: click's usage error (exit 2, three lines) where a missing file is one line, exit 1
                    "unreadable input": ["import", f"{work}/u.h5", "--clip-embeddings", f"{work}/unreadable.npy",
                                         "--backbone-features", f"{work}/backbone.npy", "--paths", f"{work}/paths.parquet"],
                    "input in a closed folder": ["import", f"{work}/u.h5", "--clip-embeddings", f"{work}/closed/c.npy",
                                                 "--backbone-features", f"{work}/backbone.npy", "--paths",
                                                 f"{work}/paths.parquet"]}
        (made["work"] / "unreadable.npy").write_bytes((made["work"] / "clip.npy").read_bytes())
        (made["work"] / "unreadable.npy").chmod(0)
        (made["work"] / "closed").mkdir()
        (made["work"] / "closed" / "c.npy").write_bytes(b"")
        (made["work"] / "closed").chmod(0)
        default = run_python_unprivileged(UNWRITABLE_CLI.format(cases=defaults), cwd=read_only)
    finally:
        read_only.chmod(0o755)
        (made["work"] / "unreadable.npy").unlink(missing_ok=True)
        (made["work"] / "closed").chmod(0o755)
    assert default.returncode == 0, default.stderr[-3000:]
    code, output = json.loads(default.stdout.splitlines()[-1])["unreadable input"]
    assert code == 1 and output.count("\n") <= 2 and " ".join(output.split()) == (  # one line, maybe wrapped
        f"Error: {work}/unreadable.npy cannot be read (permission denied) (given as --clip-embeddings)"), output
    code, output = json.loads(default.stdout.splitlines()[-1])["input in a closed folder"]  # review: "does not exist"
    assert code == 1 and " ".join(output.split()) == (f"Error: {work}/closed/c.npy cannot be read (permission denied: "
                                                      "a folder on the way cannot be searched) (given as "
                                                      "--clip-embeddings)"), output
    for name in ("extract again", "extract again, --out"):
        code, output = json.loads(default.stdout.splitlines()[-1])[name]
        assert code == 0 and "shards written / reused │ 0 / 1" in output, (name, output)
    for name, advice in (("fit", "choose another location with --out RUN_DIR"),
                         # ./photos.h5 is there: a rerun, which another location would redo from the start
                         ("extract", "make it writable, or copy the store (the .h5 file and its shards folder) to a "
                                     "place that is")):
        code, output = json.loads(default.stdout.splitlines()[-1])[name]
        said = " ".join(output.split())
        assert code == 1 and f"{read_only} is not writable (Permission denied); {advice}" in said, said  # bug: no --out
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.splitlines()[-1])
    assert sorted(results) == sorted(cases)
    for name, (code, output) in results.items():
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert code == 1 and len(errors) == 1, (name, output)
        assert f"{read_only} is not writable (Permission denied)" in errors[0], (name, output)
        # Bugs: neighbours searched every image first (then failed on the lock file); text, and
        # later extract's rerun, said "choose another location" for the store they add to.
        adds_to_the_store = name in ("text", "neighbours", "extract rerun")
        assert ("copy the store" in errors[0]) == adds_to_the_store, (name, output)
        assert ("choose another location" in errors[0]) != adds_to_the_store, (name, output)
    assert sorted(path.name for path in read_only.iterdir()) == ["photos.h5", "photos.shards"]  # nothing written


def test_output_folders_that_can_be_written_but_not_listed_take_the_results(made):
    """A drop-box folder (mode 733: anyone may add, nobody may list). Bug: every command ran its
    whole job, then failed on "Permission denied" while looking for temporary folders to clean up."""
    work, photos, store, run = (str(made[key]) for key in ("work", "photos", "store", "run"))
    drop = made["work"] / "drop"
    drop.mkdir()
    cases = {
        "fit": ["fit", "--store", store, "--out", f"{drop}/run"],
        "predict": ["predict", "--run", run, "--out", f"{drop}/p.csv", photos],
        "report": ["report", run, "--out", f"{drop}/r.html"],
        "ood-bench": ["ood-bench", "--store", store, "--id-classes", "2", "--out", f"{drop}/bench"],
    }
    drop.chmod(0o333)
    try:
        child = run_python_unprivileged(UNWRITABLE_CLI.format(cases=cases), cwd=work)
    finally:
        drop.chmod(0o755)
    assert child.returncode == 0, child.stderr[-3000:]
    for name, (code, output) in json.loads(child.stdout.splitlines()[-1]).items():
        assert code == 0, (name, output)
    assert sorted(path.name for path in drop.iterdir()) == ["bench", "p.csv", "r.html", "run"]


def test_a_rerun_into_a_store_with_a_read_only_shards_folder_is_refused_before_any_work(made):
    """Bug: extract checked only the master's folder; with a new vocabulary it loaded both models,
    embedded the class names, then failed to write them."""
    import shutil

    folder = made["work"] / "ro-shards"
    folder.mkdir()
    shutil.copy(made["store"], folder / "photos.h5")
    shards = folder / "photos.shards"
    shutil.copytree(made["store"].with_suffix(".shards"), shards)
    cases = {"extract rerun": ["extract", str(made["photos"]), "--out", f"{folder}/photos.h5", *TINY_MODEL_ARGS,
                               "--classes", f"{made['work']}/classes.txt", "--vocab", "more"],
             "neighbours": ["neighbours", f"{folder}/photos.h5", "--k", "2"],
             "text": ["text", f"{folder}/photos.h5", "--classes", f"{made['work']}/classes.txt", "--vocab", "more"]}
    shards.chmod(0o555)
    try:
        child = run_python_unprivileged(UNWRITABLE_CLI.format(cases=cases), cwd=made["work"])
    finally:
        shards.chmod(0o755)
    assert child.returncode == 0, child.stderr[-3000:]
    for name, (code, output) in json.loads(child.stdout.splitlines()[-1]).items():
        assert code == 1 and f"{shards} is not writable (Permission denied); make it writable, or copy the store" \
            in " ".join(output.split()), (name, output)
        # the file the command adds (bug: text and extract named the neighbour graph)
        adds = schema.GRAPH_FILE if name == "neighbours" else schema.vocabulary_file(shards, "more").name
        assert f"cannot write the store {shards / adds}:" in " ".join(output.split()), (name, output)


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    """Bug: click and pathlib read "" as ".", so `zsfs extract "$UNSET"` embedded the working
    folder (and predict classified it); `--classes ""` said "class file . does not exist"."""
    from zsfs.predict import image_inputs
    from zsfs.lists import read_class_file
    from zsfs.sources import open_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    for args in (["extract", ""], ["extract", "a", "--classes", ""], ["predict", "--run", "run", ""],
                 ["fit", "--store", ""], ["info", ""], ["report", ""]):
        result = run_cli(*args)
        assert result.exit_code == 2 and "is empty (an unset shell variable?)" in result.output, args
    assert not list(tmp_path.glob("*.h5"))
    # failure test: `fit --out -` wrote a run folder named "-" (and ood-bench would); "-" is no stream here
    for args in (["fit", "--store", "s.h5", "--out", "-"], ["extract", "-"], ["predict", "--run", "-"],
                 ["ood-bench", "--store", "s.h5", "--id-classes", "2", "--out", "-"]):
        result = run_cli(*args)
        assert result.exit_code == 2 and "'-' is not standard output or input here" in output_text(result), args
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a"]
    # the Python API too (review: zsfs.Store("") said "/tmp/... is a folder", load_run("") read ".")
    for call, what in ((lambda: open_source(""), "source"), (lambda: read_class_file(""), "classes"),
                       (lambda: image_inputs([""]), "images"), (lambda: image_inputs([], lists=[""]), "lists"),
                       (lambda: zsfs.Store(""), "path"), (lambda: zsfs.load_run(""), "run_dir"),
                       (lambda: zsfs.extract("", "o.h5"), "source"), (lambda: zsfs.extract("a", ""), "out"),
                       (lambda: zsfs.fit("", k=2), "store")):
        with pytest.raises(ParameterError, match=f"^{what} is an empty path"):
            call()
    assert not list(tmp_path.glob("*.h5"))


def test_a_quoted_tilde_is_the_home_folder_in_every_path_option(tmp_path, monkeypatch):
    """Walkthrough: `--out '~/t.h5'` (or `--out=~/t.h5`, which no shell expands) made a folder named "~"
    in the current one, while the source's "~" was the home folder; `--store '~/x.h5'` did not exist."""
    from zsfs.testing.synthetic import make_synthetic_store

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_synthetic_store(home / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    fitted = run_cli("fit", "--store", "~/s.h5", "--k", "2", "--candidates", "4", "--out=~/runs/r")
    assert fitted.exit_code == 0, fitted.output
    assert (home / "runs" / "r" / "predictions.parquet").is_file() and list(work.iterdir()) == []
    assert run_cli("info", "~/s.h5").exit_code == 0
    # review: only ~ and ~/ are the home folder: '~root/s.h5' is a folder named ~root here, not /root's
    make_synthetic_store(work / "~root" / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    assert run_cli("info", "~root/s.h5").exit_code == 0
    # review: --id-classes=~/ids.txt was "neither a number nor an existing file"
    (home / "ids.txt").write_text("class_0000\nclass_0001\n")
    benched = run_cli("ood-bench", "--store", "~/s.h5", "--id-classes=~/ids.txt", "--k", "2", "--candidates", "4",
                      "--out", "~/bench")
    assert benched.exit_code == 0 and (home / "bench" / "metrics.json").is_file(), benched.output


def test_a_tilde_is_the_home_folder_in_every_path_of_the_python_api(tmp_path, monkeypatch):
    """Bug: zsfs.fit(...).save("~/runs/r"), import_store("~/s.h5", ...) and zsfs.report(out="~/...")
    made a folder named "~" in the current one, and zsfs.Store("~/s.h5") did not exist, while
    zsfs.extract's source read "~" as the home folder (and the command line reads every path so)."""
    import zsfs
    from zsfs.importer import import_store
    from zsfs.testing.synthetic import make_synthetic_store

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_synthetic_store(home / "s.h5", 30, 3, seed=0, clip_dim=8, backbone_dim=8)
    with zsfs.Store(home / "s.h5") as store:
        np.save(home / "clip.npy", store.read("clip"))
        np.save(home / "backbone.npy", store.read("backbone"))
        pl.DataFrame({"path": store.paths()}).write_csv(home / "paths.csv")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    import_store("~/i.h5", clip_embeddings="~/clip.npy", backbone_features="~/backbone.npy", paths="~/paths.csv")
    with zsfs.Store("~/i.h5") as store:
        assert store.path == home / "i.h5" and store.n_images == 30
    run = zsfs.fit("~/s.h5", k=2, candidates=4).save("~/runs/r")
    assert run.path == home / "runs" / "r" and zsfs.load_run("~/runs/r").path == home / "runs" / "r"
    assert zsfs.report("~/runs/r", out="~/page.html") == home / "page.html"
    assert zsfs.report("~/runs/r") == home / "runs" / "r" / "report.html"  # review: this one went to ./~/runs/r
    written = make_synthetic_store(Path("~/w.h5"), 30, 3, seed=0, clip_dim=8, backbone_dim=8)  # zsfs.store.write_store
    assert written == home / "w.h5" and written.is_file()
    assert list(work.iterdir()) == []


def test_a_file_named_tilde_and_a_name_is_that_file_not_an_error(tmp_path, monkeypatch):
    """Bug: an image folder named "~zzq" (a quoted name; no user zzq) stopped extract and predict
    with pathlib's RuntimeError "Could not determine home directory" and a traceback; a weights
    file so named too. Only "~" and "~/" are the home folder, as for the command line's options."""
    from zsfs.models import load_backbone
    from zsfs.predict import image_inputs
    from zsfs.sources import open_source
    from zsfs.testing.models import TINY_BACKBONE

    monkeypatch.chdir(tmp_path)
    (tmp_path / "~zzq" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "~zzq" / "a" / "x.png")
    assert list(open_source("~zzq").paths) == ["a/x.png"]
    assert list(image_inputs(["~zzq"]).paths) == ["~zzq/a/x.png"]
    with pytest.raises(ZsfsError, match=r"~zzq/w\.safetensors"):
        load_backbone(TINY_BACKBONE, "~zzq/w.safetensors")


def test_pillow_warnings_stay_off_the_terminal(tmp_path):
    """Bug: a JPEG with a broken EXIF block printed Pillow's "UserWarning: Corrupt EXIF data"
    with a site-packages path and no file name, from the decoding workers too."""
    import io
    import struct

    from zsfs.testing.failures import run_zsfs

    (tmp_path / "photos" / "a").mkdir(parents=True)
    jpeg = io.BytesIO()
    Image.new("RGB", (9, 9)).save(jpeg, "JPEG")
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00"  # 5 tags announced, none there
    data = jpeg.getvalue()
    (tmp_path / "photos" / "a" / "e.jpg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2)
                                                    + exif + data[2:])
    for workers in ("0", "1"):
        outcome = run_zsfs("extract", tmp_path / "photos", "--out", tmp_path / f"w{workers}.h5", *TINY_MODEL_ARGS,
                           "--workers", workers)
        assert outcome.returncode == 0 and "Warning" not in outcome.output, outcome.output
        assert "images in the store │ 1" in output_text(outcome)


def test_a_folder_whose_file_system_makes_no_files_is_named_so_not_missing():
    """Review: `--out /proc/x.h5` said "/proc is not writable (No such file or directory)", though
    /proc is there (the kernel answers ENOENT to a new file in it)."""
    import errno
    import os

    from zsfs.writable import check_writable

    try:
        os.close(os.open("/proc/.zsfs-probe", os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as error:
        if error.errno != errno.ENOENT:  # a kernel (or sandbox) that answers otherwise: not this case
            pytest.skip(f"/proc answers {errno.errorcode.get(error.errno)} to a new file here, not ENOENT")
    with pytest.raises(ZsfsError) as caught:
        check_writable("/proc/x.h5", "store")
    assert str(caught.value) == ("cannot write the store /proc/x.h5: /proc is not writable (it takes no new files); "
                                 "choose another location")
