"""The Python front door: ``import zsfs`` stays light, the documented example runs, errors name parameters."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

import zsfs
from zsfs.store import write_vocabulary
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.forks import run_forked_child
from zsfs.testing.synthetic import make_synthetic_store

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


@pytest.mark.parametrize("module", ["zsfs", "zsfs.cli"])
def test_import_zsfs_loads_no_heavy_library(module):
    """The command line too: every command's --help would pay for them (a review found h5py, 140 ms,
    loaded by `zsfs --help` once a command module imported Store at its top)."""
    code = (f"import sys, {module}; print(sorted(m for m in ('torch', 'open_clip', 'timm', 'polars', 'h5py', 'faiss') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_front_door_names_survive_their_modules_being_imported():
    """Bug: importing zsfs.report (a module) replaced the function zsfs.report; the names are now
    callable modules, whatever was imported first."""
    code = ("import zsfs.report, zsfs.fit, zsfs.extract, zsfs; "
            "print(all(callable(f) for f in (zsfs.report, zsfs.fit, zsfs.extract, zsfs.load_run, zsfs.Store)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its folder goes with the test's (17 were left in /tmp)
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "__doc_example__"})
    printed = capsys.readouterr().out
    assert "images embedded" in printed and "accuracy against the folder labels" in printed
    example = next(tmp_path.glob("zsfs-example-*"))
    assert f"open {example / 'run' / 'report.html'}" in printed
    # Random tiny models give near-ties; the exact match is tested on clear data (below).
    assert float(re.search(r"same class as the fit: ([0-9.]+)", printed).group(1)) >= 0.8


def test_fit_returns_a_run_that_saves_and_reloads(tmp_path):
    store_path = make_synthetic_store(tmp_path / "s.h5", 150, 3, seed=3, clip_dim=32, backbone_dim=64)
    run = zsfs.fit(store_path, k=3, candidates=10, cycle_epochs=1)
    assert run.path is None and run.predictions.height == 150 and run.metrics["n_images"] == 150
    saved = run.save(tmp_path / "run")
    reloaded = zsfs.load_run(saved.path)
    assert reloaded.predictions.equals(run.predictions) and reloaded.config == run.config
    with zsfs.Store(store_path) as store:
        predicted = reloaded.predict(store.read("backbone"))
    assert predicted["predicted"].to_list() == run.predictions["predicted"].to_list()
    # review: a run without an OOD reference (written before zsfs stored one) gave NaN here, null in `zsfs predict`
    reloaded.classifier.ood_reference = None
    assert predicted.columns == ["predicted", "confidence", "ood_distance", "ood_paper", "ood_continuous",
                                 "ood_distance_flag"]
    assert reloaded.predict(np.ones((2, 64)))["ood_distance"].null_count() == 2
    with pytest.raises(zsfs.ZsfsError, match="already exists"):
        run.save(tmp_path / "run")
    # review: these were TypeErrors from deep inside (the bytes were read as numbers: "47 does not exist")
    for call, message in ((lambda: zsfs.Store(3), "path must be a path (a str or pathlib.Path), not 3"),
                          (lambda: zsfs.load_run(3), "run_dir must be a path (a str or pathlib.Path), not 3"),
                          (lambda: zsfs.report(3), "run_dir must be a path (a str or pathlib.Path), not 3"),
                          (lambda: zsfs.report(run), "run_dir is a run not saved yet: save it first"),
                          (lambda: zsfs.extract(tmp_path, 3), "out must be a path (a str or pathlib.Path), not 3"),
                          (lambda: zsfs.extract(tmp_path, tmp_path / "x.h5", classes=3),
                           "classes must be a list of class names or a class file's path, not 3"),
                          (lambda: reloaded.predict_images(5), "images must be a path or a list of paths, not 5"),
                          (lambda: reloaded.predict_images(b"/tmp"), "images must be a path or a list of paths, not "
                                                                     "b'/tmp'"),
                          (lambda: reloaded.predict_images([b"/tmp"]), "images must be a path (a str or pathlib.Path)"),
                          (lambda: reloaded.predict_images([tmp_path], bogus=1), "unknown parameter 'bogus'; "
                                                                                 "predict_images takes images, lists")):
        with pytest.raises(zsfs.ParameterError) as raised:
            call()
        assert str(raised.value).startswith(message), str(raised.value)
    assert zsfs.report(saved) == saved.path / "report.html"  # the run zsfs.fit returned, once saved
    # an open Store and its path take the same vocabulary (review: a mutation dropping it for a Store passed)
    with zsfs.Store(store_path) as store:
        vocab = store.vocabulary("synthetic")
    write_vocabulary(store_path, "reversed", vocab.classes[::-1], vocab.single[::-1], vocab.ensemble[::-1],
                          prompt="a photo of a {}", n_templates=80)
    with zsfs.Store(store_path) as store:
        by_store = zsfs.fit(store, vocabulary="reversed", k=3, candidates=10, cycle_epochs=1)
    by_path = zsfs.fit(store_path, vocabulary="reversed", k=3, candidates=10, cycle_epochs=1)
    assert by_store.config["vocabulary"] == by_path.config["vocabulary"] == "reversed"
    assert by_store.predictions.equals(by_path.predictions)


def test_fit_takes_some_of_the_vocabulary_s_classes(tmp_path):
    """Walkthrough: only fit_store took a class subset, and saving its result meant FittedRun.from_fit,
    which then paired any store and config with it."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 150, 3, seed=3, clip_dim=32, backbone_dim=64)
    run = zsfs.fit(store_path, classes=["class_0002", "class_0000"], k=3, candidates=10, cycle_epochs=1)
    assert run.classes == ["class_0002", "class_0000"] and run.config["classes"] == ["class_0002", "class_0000"]
    assert set(run.predictions["predicted"].to_list()) <= {"class_0002", "class_0000"}
    for classes in ("class_0000", [3], {"class_0000"}):
        with pytest.raises(zsfs.ParameterError, match="classes must be a list of the vocabulary's class names"):
            zsfs.fit(store_path, classes=classes)
    # walkthrough: a StoreError, and a name given twice a plain ZsfsError, where python.md promises ParameterError
    with pytest.raises(zsfs.ParameterError, match="^classes: vocabulary 'synthetic' has no class 'class_9'"):
        zsfs.fit(store_path, classes=["class_9"])
    with pytest.raises(zsfs.ParameterError, match="^classes: .*class_0000"):
        zsfs.fit(store_path, classes=["class_0000", "class_0000"])


def test_library_errors_name_parameters_and_the_cli_its_flags(tmp_path):
    store_path = make_synthetic_store(tmp_path / "s.h5", 50, 2, seed=4, clip_dim=32, backbone_dim=64)
    with pytest.raises(zsfs.ParameterError, match=r"^k must be at least 1, not 0$"):
        zsfs.fit(store_path, k=0)
    with pytest.raises(zsfs.ParameterError, match=r"^k 20 is larger than candidates 10"):
        zsfs.fit(store_path, k=20, candidates=10)
    with pytest.raises(zsfs.ParameterError, match=r"^max_cycles must be at least 0"):
        zsfs.fit(store_path, max_cycles=-1)
    with pytest.raises(zsfs.ParameterError, match=r"unexpected keyword argument 'kk'; fit takes store, vocabulary, "
                                                  r"classes, preset, method, k,"):
        zsfs.fit(store_path, kk=3)
    with pytest.raises(zsfs.ParameterError, match=r"^preset must be one of"):
        zsfs.fit(store_path, preset="quick")
    # walkthrough: None was read as "not given", as the command line's options are: seed=None fitted seed 0
    for name in ("seed", "k", "device", "keep_all_classes"):
        with pytest.raises(zsfs.ParameterError, match=rf"^{name} must be .*, not None$"):
            zsfs.fit(store_path, **{name: None})
    with pytest.warns(UserWarning, match=r"^epochs, max_cycles are only read by the cycles method; this balanced "
                                         r"fit ignores them$") as warned:  # bug: ignored without a word from Python
        zsfs.fit(store_path, k=2, candidates=6, cycle_epochs=1, epochs=3, max_cycles=2)
    assert warned[0].filename == __file__  # the caller's line, not zsfs's
    first = zsfs.fit(store_path, k=2, candidates=6, cycle_epochs=1)
    with warnings.catch_warnings():  # bug: redoing a run from its recorded parameters always warned
        warnings.simplefilter("error")
        again = zsfs.fit(store_path, vocabulary=first.config["vocabulary"], **first.config["parameters"])
    assert again.predictions.equals(first.predictions)
    result = run_cli("fit", "--store", store_path, "--k", "20", "--candidates", "10", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "Error: --k 20 is larger than --candidates 10: the seeds are taken from the candidates, so use --k <= " \
           "--candidates (or raise --candidates)" in output_text(result)


def test_front_doors_document_and_check_their_own_arguments(tmp_path):
    """Bugs: help(zsfs.fit) showed only the package's text and inspect.signature(zsfs.fit) was
    (*args, **kwargs); zsfs.extract(..., vocab=...) raised a bare TypeError, not a ParameterError."""
    import pydoc

    fit_keywords = inspect.signature(zsfs.fit).parameters  # bug: **parameters, not each FitConfig field
    assert list(fit_keywords)[:6] == ["store", "vocabulary", "classes", "preset", "method", "k"]
    assert set(fit_keywords) == {"store", "vocabulary", "classes", "preset", *zsfs.FitConfig.__dataclass_fields__}
    assert fit_keywords["k"].default == zsfs.FitConfig().k and fit_keywords["k"].annotation is int
    assert "vocab_name" in inspect.signature(zsfs.extract).parameters
    assert "Called as zsfs.fit(store, *, vocabulary=None, classes=None, preset=None, method='balanced', k=16," \
        in pydoc.render_doc(zsfs.fit, renderer=pydoc.plaintext)
    assert "Called as zsfs.report(run_dir, out=None, *, images=None" in pydoc.render_doc(
        zsfs.report, renderer=pydoc.plaintext)
    with pytest.raises(zsfs.ParameterError, match=r"unexpected keyword argument 'vocab'; extract takes source, out, "
                                                  r".*vocab_name"):
        zsfs.extract(tmp_path, vocab="v")
    with pytest.raises(zsfs.ParameterError, match=r"unexpected keyword argument 'img'; report takes run_dir"):
        zsfs.report(tmp_path, img=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_other_functions_refuse_unknown_and_missing_arguments_as_parameter_errors(tmp_path):
    """Review: docs/python.md says unknown or missing arguments raise ParameterError; outside the front
    doors they raised Python's TypeError, which `except zsfs.ZsfsError` misses."""
    from zsfs.vocabulary import add_vocabulary
    from zsfs.importer import import_store
    from zsfs.oodbench import ood_bench
    from zsfs.runs import FittedRun

    calls = [(lambda: zsfs.load_run(tmp_path, bogus=1), "unexpected keyword argument 'bogus'; load_run takes run_dir$"),
             (lambda: zsfs.Store(), "missing a required argument: 'path'; Store takes path$"),
             (lambda: zsfs.FitConfig(kk=3), "unexpected keyword argument 'kk'; FitConfig takes method, k, "),
             (lambda: import_store(tmp_path / "x.h5"),  # Python 3.13 says "keyword-only", as it is
              "missing a required (keyword-only )?argument: 'clip_embeddings'; import_store takes out, "
              "clip_embeddings, "),
             (lambda: add_vocabulary(tmp_path / "s.h5"), "missing a required argument: 'classes'; add_vocabulary"),
             (lambda: ood_bench(), "missing a required argument: 'store'; ood_bench takes store, id_classes, "),
             (lambda: FittedRun.predict(None), "missing a required argument: 'features'; FittedRun.predict takes "
                                               "features$")]
    for call, said in calls:
        with pytest.raises(zsfs.ParameterError, match=said):
            call()
    assert list(tmp_path.iterdir()) == []
    assert list(inspect.signature(zsfs.Store).parameters) == ["path"]  # the signature shown is the function's


def test_arguments_of_the_wrong_type_are_parameter_errors(tmp_path):
    """Bug: k="2", k=2.5, lr="0.1", seed=1.5 and batch_size="8" failed deep in the fit or the
    loader (TypeError, torch RuntimeError); k=True was taken as 1."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 50, 2, seed=4, clip_dim=32, backbone_dim=64)
    for wrong, message in ((dict(k="2"), "k must be a whole number, not '2'"),
                           (dict(k=2.5, candidates=6), "k must be a whole number, not 2.5"),
                           (dict(k=True), "k must be a whole number, not True"),
                           (dict(lr="0.1"), "lr must be a number, not '0.1'"),
                           (dict(seed=1.5), "seed must be a whole number, not 1.5"),
                           (dict(accumulate="no"), "accumulate must be True or False, not 'no'"),
                           (dict(k="{0}"), "k must be a whole number, not '{0}'"),  # braces: not fields
                           (dict(prompts="{x}"), "prompts must be one of ensemble, single, not '{x}'"),
                           (dict(device="gpu"), "device must be one of cpu, cuda, mps, not 'gpu'"),  # was a ZsfsError
                           (dict(loss_floor=-1), "loss_floor must be at least 0, not -1"),  # review: the CLI refused it
                           (dict(ood_multiplier=1e308), "ood_multiplier must be at most 100, not 1e+308"),
                           (dict(vocabulary=1), "vocabulary must be a string, not 1")):
        with pytest.raises(zsfs.ParameterError) as raised:
            zsfs.fit(store_path, **wrong)
        assert str(raised.value) == message
        if "vocabulary" not in wrong:  # review: FitConfig(device="tpu") was taken until a fit started
            with pytest.raises(zsfs.ParameterError, match=re.escape(message)):
                zsfs.FitConfig(**wrong)
    zsfs.fit(store_path, k=np.int64(3), candidates=10, lr=1, cycle_epochs=np.int64(1))  # numpy integers and whole floats pass
    # walkthrough: seed=np.int64 passed the check, then torch's generator raised "an integer is required"
    run = zsfs.fit(store_path, k=3, candidates=10, seed=np.int64(7), lr=np.float32(0.5))
    assert type(run.config["parameters"]["seed"]) is int and run.config["parameters"]["lr"] == 0.5

    photos = tmp_path / "photos"
    with pytest.raises(zsfs.ParameterError, match=r"^batch_size must be a whole number, not '8'$"):
        zsfs.extract(photos, batch_size="8")
    with pytest.raises(zsfs.ParameterError, match=r"^workers must be at least 0, not -1$"):
        zsfs.extract(photos, workers=-1)
    for wrong, message in ((dict(precision="fp8"), "precision must be one of fp32, bf16, fp16, not 'fp8'"),
                           (dict(dtype="int8"), "dtype must be one of float16, float32, not 'int8'"),
                           (dict(device="CPU"), "device must be one of cpu, cuda, mps, not 'CPU'"),
                           (dict(vocab_name=None), "vocab_name must be a string, not None"),
                           (dict(overwrite="no"), "overwrite must be True or False, not 'no'")):
        with pytest.raises(zsfs.ParameterError) as raised:  # bug: ZsfsError, or a traceback for None
            zsfs.extract(photos, tmp_path / "x.h5", **wrong)
        assert str(raised.value) == message
    for classes, shown in ((["red", None], "None"), ([b"red", "blue"], "b'red'"), (["red", 3], "3")):
        with pytest.raises(zsfs.ParameterError) as raised:  # bug: became the classes "None", "b'red'", "3"
            zsfs.extract(photos, tmp_path / "x.h5", classes=classes)
        assert str(raised.value) == f"classes must hold class names (str), not {shown}"
    for call, name in ((lambda: zsfs.extract(photos, tmp_path / "x.h5", on_batch=5), "on_batch"),  # bug: a
                       (lambda: zsfs.report(tmp_path, on_missing_images=3), "on_missing_images")):  # TypeError inside
        with pytest.raises(zsfs.ParameterError) as raised:
            call()
        assert str(raised.value) == f"{name} must be a function (or None), not {5 if name == 'on_batch' else 3}"
    run = zsfs.fit(store_path, k=2, candidates=6, cycle_epochs=1)
    (tmp_path / "a-file").write_text("x")
    for folder, message in ((None, "run_dir must be a path (a str or pathlib.Path), not None"),  # bugs: pathlib's
                            (5, "run_dir must be a path (a str or pathlib.Path), not 5"),  # TypeError, and
                            (b"dir", "run_dir must be a path (a str or pathlib.Path), not b'dir'"),  # FileExistsError
                            (tmp_path / "a-file" / "run", f"cannot write the run folder {tmp_path / 'a-file' / 'run'}: "
                             f"{tmp_path / 'a-file'} is a file, not a folder")):
        with pytest.raises(zsfs.ZsfsError) as raised:
            run.save(folder)
        assert str(raised.value) == message
    for store in (None, 123):  # bug: TypeError from deep in pathlib
        with pytest.raises(zsfs.ParameterError, match=rf"^store must be a zsfs.Store or its path, not {store}$"):
            zsfs.fit(store)
    assert not photos.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "s.h5", "s.shards"]


def test_the_writers_and_the_benchmark_check_their_arguments_before_any_work(tmp_path):
    """Review: import_store(overwrite="no") rebuilt a 10,000-image store from other files and
    add_vocabulary(overwrite="no") replaced a vocabulary ("no" is true); shard_size=0, a list of
    vocabularies, ood_bench(store, 2.0, ...) or a dict config, report(images=missing folder)
    ended in a ValueError, AttributeError or TypeError from deep inside, or a page of 'not found'."""
    from zsfs.vocabulary import add_vocabulary
    from zsfs.importer import import_store
    from zsfs.oodbench import ood_bench

    store_path = make_synthetic_store(tmp_path / "s.h5", 60, 3, clip_dim=8, backbone_dim=8)
    with zsfs.Store(store_path) as store:
        vocabulary = store.vocabulary_names()[0]
        classes = store.vocabulary(vocabulary).classes
    files = dict(clip_embeddings=tmp_path / "c.npy", backbone_features=tmp_path / "b.npy", paths=tmp_path / "p.csv")
    for name in ("c.npy", "b.npy"):  # there: a missing one is named before a missing paths table
        np.save(tmp_path / name, np.ones((3, 8), np.float32))
    for wrong, message in ((dict(overwrite="no"), "overwrite must be True or False, not 'no'"),
                           (dict(shard_size=0), "shard_size must be at least 1, not 0"),
                           (dict(vocabularies=["a.npz"]), "vocabularies must be a dict of vocabulary name: .npz file, "
                                                          "not ['a.npz']"),
                           (dict(clip_embeddings=5), "clip_embeddings must be a path (a str or pathlib.Path), not 5"),
                           (dict(dtype="int8"), "dtype must be one of float16, float32, not 'int8'"),
                           (dict(clip_name=" "), "clip_name is empty; give the model's name (it is shown and recorded)"),
                           # review: a 7-line, 333-character dump of the array; and a missing table named CLI flags
                           (dict(clip_embeddings=np.zeros((50, 1000))), "clip_embeddings must be a path (a str or "
                                                                        "pathlib.Path), not an array of float64 of shape (50, 1000)"),
                           (dict(paths=None), "no paths table: pass paths (a parquet, CSV or TSV file), or a "
                                              "clip-retrieval output folder (with metadata/) as clip_embeddings")):
        with pytest.raises(zsfs.ParameterError) as raised:
            import_store(store_path, **{**files, **wrong})
        assert str(raised.value) == message
    with pytest.raises(zsfs.ParameterError, match=r"^overwrite must be True or False, not 'no'$"):
        add_vocabulary(store_path, ["cat", "dog"], vocabulary, overwrite="no")
    with zsfs.Store(store_path) as store:
        assert store.n_images == 60 and store.vocabulary(vocabulary).classes == classes  # both untouched
        for id_classes, config, message in (
                (2.0, zsfs.FitConfig(), "id_classes must be a number of ID classes or a list of class names, not 2.0"),
                (True, zsfs.FitConfig(), "id_classes must be a number of ID classes or a list of class names, not True"),
                (2, {"k": 2}, "config must be a zsfs.FitConfig, not {'k': 2}")):
            with pytest.raises(zsfs.ParameterError) as raised:
                ood_bench(store, id_classes, config)
            assert str(raised.value) == message
    run = zsfs.fit(store_path, k=2, candidates=6, cycle_epochs=1)
    with pytest.raises(zsfs.ParameterError, match=r"^images '.*nope' does not exist$"):
        zsfs.report(run, images=tmp_path / "nope")
    # review: a path, or None for a config, ended in AttributeError ('str' object has no attribute ...)
    from zsfs.fit import fit_store

    for call in (lambda: ood_bench(str(store_path), 2, zsfs.FitConfig()), lambda: fit_store(str(store_path),
                                                                                            zsfs.FitConfig())):
        with pytest.raises(zsfs.ParameterError, match=r"^store must be an open zsfs.Store \(zsfs.Store\(path\)\), "
                                                      r"not '.*s.h5'$"):
            call()
    with zsfs.Store(store_path) as store:
        with pytest.raises(zsfs.ParameterError, match=r"^config must be a zsfs.FitConfig, not None$"):
            fit_store(store, None)
        # review: one string was taken as its letters ("no class 'c'"); a near miss got no hint
        with pytest.raises(zsfs.ZsfsError, match=rf"must be a list of class names, not the one string {classes[0]!r}$"):
            fit_store(store, zsfs.FitConfig(), classes=classes[0])
        with pytest.raises(zsfs.ParameterError, match=rf"has no class {classes[0].upper()!r} \(spelled like its class "
                                                  rf"{classes[0]!r}\)$"):
            fit_store(store, zsfs.FitConfig(), classes=[classes[0].upper(), classes[1]])
    # review: from Python, an existing folder as the output with overwrite=True failed in unlink (IsADirectoryError)
    from PIL import Image

    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("x")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    for overwrite in (False, True):
        for call in (lambda: import_store(tmp_path / "folder", **files, overwrite=overwrite),
                     lambda: zsfs.extract(tmp_path / "photos", tmp_path / "folder", overwrite=overwrite)):
            with pytest.raises(zsfs.StoreError, match=r"folder is a folder; give a file in it as the store, such as "
                                                      r".*folder/STORE.h5$"):
                call()
    assert (tmp_path / "folder" / "keep.txt").read_text() == "x"


def test_a_runs_config_and_metrics_are_copies_a_caller_may_edit(tmp_path):
    """Walkthrough: they were the run's own dicts; editing them (sorting the classes for a plot)
    edited what `save` writes."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 150, 3, seed=0, clip_dim=16, backbone_dim=16)
    run = zsfs.fit(store_path, k=3, candidates=10)
    run.config["parameters"]["k"] = 999
    run.config["classes"].sort(reverse=True)
    run.metrics["accuracy"] = -1
    saved = run.save(tmp_path / "run")
    assert saved.config["parameters"]["k"] == 3 and saved.config["classes"] == sorted(saved.config["classes"])
    assert saved.metrics["accuracy"] >= 0 and zsfs.load_run(saved.path).metrics["accuracy"] >= 0


@pytest.mark.parametrize("wrong, message", [
    *((dict(**{name: 0}), f"{name} must be at least 1, not 0") for name in ("k", "neighbours", "epochs", "batch_size")),
    (dict(k=1, candidates=0), "candidates must be at least 1, not 0"),
    (dict(lr=0.0), "lr must be > 0, not 0.0"),  # a head that never moves
    (dict(ood_multiplier=100.01), "ood_multiplier must be at most 100, not 100.01"),
])
def test_a_config_refuses_each_value_no_fit_takes(wrong, message):
    """Review (mutations: neighbours=0 reached the fit as a raw ValueError, lr=0 trained a head that
    never moved; the CLI's ranges hid both from the command line, not from Python)."""
    with pytest.raises(zsfs.ParameterError) as raised:
        zsfs.FitConfig(**wrong)
    assert str(raised.value) == message
    assert zsfs.FitConfig(ood_multiplier=100).ood_multiplier == 100  # the CLI's top takes


FORKED_FIT = """
import os, sys, numpy as np, zsfs
store, runs = sys.argv[1], sys.argv[2]
features = np.eye(16, dtype=np.float32)
run = zsfs.fit(store, k=4, candidates=20)  # the parent's thread pools run: torch's, polars'
run.save(runs + "/parent")
run.predict(features)
def child(queue):
    run = zsfs.fit(store, k=4, candidates=20)
    predicted = len(run.predictions) + len(run.predict(features))
    try:
        run.save(runs + "/child")
    except zsfs.ZsfsError as error:
        queue.put([predicted, str(error), os.path.exists(runs + "/child")])
"""


def test_a_fit_in_a_child_forked_after_a_fit_finishes_and_a_save_there_says_why_it_cannot(tmp_path):
    """Walkthrough: zsfs.fit in a multiprocessing child (fork, Linux's default) hung for ever once
    the parent had fitted: torch's OpenMP pool does not survive a fork. Docs audit: so did
    FittedRun.predict once the parent had predicted (polars' fill_nan, on polars' pool), and
    run.save there still does (polars writes on that pool): it is refused, before any file."""
    store_path = make_synthetic_store(tmp_path / "s.h5", 300, 3, seed=0, clip_dim=16, backbone_dim=16)
    exitcode, said, stderr = run_forked_child(FORKED_FIT, str(store_path), str(tmp_path))
    assert exitcode == 0, stderr[-2000:]
    predicted, message, saved = said
    assert predicted == 316 and not saved
    assert message.startswith(f"cannot write {tmp_path}/") and "after polars started its threads" in message
    assert 'multiprocessing.get_context("spawn")' in message
    assert zsfs.load_run(tmp_path / "parent").predictions.height == 300


FORKED_WRITE = """
import sys, polars as pl, zsfs
frame = pl.DataFrame({"a": range(1000)}).sort("a", descending=True)  # the caller's own polars work: its pool runs
def child(queue):
    from zsfs.outputs import write_table  # zsfs' modules first imported here, after the fork
    try:
        write_table(frame, sys.argv[1])
    except zsfs.ZsfsError as error:
        queue.put(str(error))
"""


def test_a_child_forked_after_the_callers_own_polars_work_is_refused_a_table_write_not_left_waiting(tmp_path):
    """Review: the fork hook was registered only when a zsfs stage first ran, so a parent that had
    used polars itself and imported zsfs forked a child whose table write hung; `import zsfs` sets it."""
    exitcode, said, stderr = run_forked_child(FORKED_WRITE, str(tmp_path / "t.parquet"), timeout=30)
    assert exitcode == 0 and said.startswith(f"cannot write {tmp_path / 't.parquet'} in this process: it was forked"), \
        stderr[-2000:]
    assert not (tmp_path / "t.parquet").exists()


def test_a_child_forked_before_polars_threads_name_themselves_is_refused_a_table_write(tmp_path):
    """Bug (a CI run with two test processes on two cores): a fork right after the caller's first
    polars sort, before the scheduler had run the pool's new threads, found none named polars-N
    (a thread names itself when it first runs), and the child's table write hung. Here the parent
    shares one core with four polars threads, so that their names are late almost every time."""
    pinned = ("import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
              "os.environ['POLARS_MAX_THREADS'] = '4'\n" + FORKED_WRITE)
    for attempt in range(3):
        exitcode, said, stderr = run_forked_child(pinned, str(tmp_path / "t.parquet"), timeout=30)
        assert exitcode == 0 and said.startswith(f"cannot write {tmp_path / 't.parquet'} in this process: it was "
                                                 "forked"), (attempt, stderr[-2000:])
    assert not (tmp_path / "t.parquet").exists()


def test_an_idle_torch_thread_is_not_taken_for_a_newborn_polars_one():
    """Review: torch's idle thread keeps its starter's name and was run once, so a fork waited
    0.2 s for it to name itself, every decoding process of a CPU predict (polars imported, its pool
    not started). A thread is newborn only while runnable; this one sleeps."""
    code = ("import time, polars, torch\nfrom zsfs.devices import _other_threads\n"
            "torch.set_num_threads(2)\ntorch.ones(64, 64) @ torch.ones(64, 64)\ntime.sleep(0.5)\n"
            "print([name for name, newborn in _other_threads() if newborn])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_each_preset_gives_the_config_it_names(tmp_path):
    """zsfs.fit(preset=...) is the CLI's --paper / --fast: each name must give its own FitConfig."""
    from dataclasses import asdict

    from zsfs.fit.config import FitConfig

    store_path = make_synthetic_store(tmp_path / "s.h5", 50, 2, seed=4, clip_dim=32, backbone_dim=64)
    given = dict(k=2, candidates=6, cycle_epochs=1)
    for preset, expected in ((None, FitConfig(**given)), ("paper", FitConfig.paper(**given)),
                             ("fast", FitConfig.fast(**given)), ("paper-fast", FitConfig.fast(paper=True, **given))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the paper preset's cycles options
            run = zsfs.fit(store_path, preset=preset, **given)
        assert run.config["parameters"] == asdict(expected), preset
    assert FitConfig.fast(**given).ivf_neighbours and not FitConfig(**given).ivf_neighbours  # the presets differ


def test_a_wrong_argument_is_shown_on_one_line_and_whole_where_it_matters():
    """Review: an array's repr spanned lines (333 characters for a (50, 1000) array); a numpy scalar
    is no array, and a path or string is shown whole (what is wrong may be at its end)."""
    from pathlib import Path

    from zsfs.errors import shown_value

    assert shown_value(np.zeros((50, 1000))) == "an array of float64 of shape (50, 1000)"
    assert shown_value(np.float64(3.5)) == repr(np.float64(3.5))
    long_path = Path("/data/" + "sub/" * 60 + "photos_v2")
    assert shown_value(long_path) == repr(long_path) and shown_value("a  b") == "'a  b'"
    many = shown_value(list(range(1000)))
    assert len(many) == 200 and many.endswith("…") and "\n" not in many
    assert shown_value({"k": 2}) == "{{'k': 2}}"  # literal: braces are no ParameterError fields
