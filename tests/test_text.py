"""zsfs text: add a class vocabulary to an existing store, touching nothing else."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from zsfs.errors import ParameterError
from zsfs.extract import extract
from zsfs.vocabulary import add_vocabulary
from zsfs.models import encode_vocabulary, load_clip
from zsfs.store.reader import Store
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.images import write_image_folder
from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG, TINY_MODEL_ARGS

ANIMALS = ["cat", "dog", "red fox"]




def image_data(store_path: Path) -> dict:
    """Everything but the vocabularies: row datasets, strings, index, and the shard files' bytes."""
    with h5py.File(store_path, "r") as file:
        data = {name: file[name][:] for name in ("clip", "backbone", "width", "height", "index/faiss", "shards/rows")}
        data["path"] = file["path"].asstr()[:]
    shards = store_path.with_name(store_path.stem + ".shards")
    data["shard_bytes"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shards.glob("shard-*"))}
    return data


@pytest.fixture()
def unlabelled_store(tmp_path) -> tuple[Path, Path]:
    """A store of a flat folder (no class subfolders, so no vocabulary) and its CLIP weights file."""
    folder = tmp_path / "flat"
    labelled = write_image_folder(tmp_path / "labelled", n_per_class=3, broken=False)
    folder.mkdir()
    for path in labelled["good"]:
        shutil.copy(labelled["root"] / path, folder / Path(path).name)
    clip = load_clip(str(TINY_CLIP_CONFIG), "random")
    weights = tmp_path / "clip.pt"
    torch.save(clip.model.state_dict(), weights)
    store = tmp_path / "flat.h5"
    summary = extract(folder, store, clip_model=str(TINY_CLIP_CONFIG), clip_weights=str(weights),
                      backbone=TINY_BACKBONE, backbone_weights="random", workers=0, shard_size=4)
    assert summary.vocabulary is None
    return store, weights


def test_text_adds_a_vocabulary_without_touching_images(unlabelled_store, tmp_path):
    store, weights = unlabelled_store
    before = image_data(store)
    classes = tmp_path / "animals.txt"
    classes.write_text("\n".join(ANIMALS) + "\n\n")

    result = run_cli("text", store, "--classes", classes, "--vocab", "animals")
    assert result.exit_code == 0, result.output

    after = image_data(store)
    for name, value in before.items():
        if isinstance(value, dict):
            assert after[name] == value, name
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    expected_single, expected_ensemble = encode_vocabulary(load_clip(str(TINY_CLIP_CONFIG), str(weights)), ANIMALS)
    with Store(store) as opened:
        vocabulary = opened.vocabulary("animals")
    assert vocabulary.classes == ANIMALS
    np.testing.assert_allclose(vocabulary.single, expected_single, atol=1e-5)
    np.testing.assert_allclose(vocabulary.ensemble, expected_ensemble, atol=1e-5)


def test_the_line_naming_the_store_is_one_line_in_a_log(unlabelled_store, tmp_path):
    """Review (a nightly cron job, as predict's summary): in a log, 80 columns wide, "Vocabulary NAME
    (N classes) written to STORE" put the store's path on the next line."""
    store, _ = unlabelled_store
    folder = tmp_path / ("nightly-" + "x" * 60)
    folder.mkdir()
    for name in (store.name, store.with_suffix(".shards").name):  # the master and its shards, names kept
        shutil.move(store.parent / name, folder / name)
    classes = tmp_path / "animals.txt"
    classes.write_text("\n".join(ANIMALS) + "\n")
    env = {name: value for name, value in os.environ.items() if name not in ("COLUMNS", "LINES")}
    logged = subprocess.run([sys.executable, "-m", "zsfs", "text", str(folder / store.name), "--classes", str(classes),
                             "--vocab", "animals"],
                            capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert logged.returncode == 0, logged.stderr
    assert f"Vocabulary animals ({len(ANIMALS)} classes) written to {folder / store.name}" in logged.stderr.splitlines(), \
        logged.stderr


def test_text_names_the_vocabulary_as_extract_does_when_no_name_is_given(unlabelled_store, tmp_path):
    """New user: `zsfs text flat.h5 --classes FILE` on a store with no vocabulary failed with "Missing
    option '--vocab'", where extract names its vocabulary "default"."""
    store, _ = unlabelled_store
    classes = tmp_path / "animals.txt"
    classes.write_text("\n".join(ANIMALS))
    result = run_cli("text", store, "--classes", classes)
    assert result.exit_code == 0, result.output
    with Store(store) as opened:
        assert opened.vocabulary_names() == ["default"] and opened.vocabulary("default").classes == ANIMALS


def test_text_refuses_a_duplicate_name_unless_overwrite(unlabelled_store, tmp_path):
    store, _ = unlabelled_store
    classes = tmp_path / "animals.txt"
    classes.write_text("\n".join(ANIMALS))
    assert run_cli("text", store, "--classes", classes, "--name", "animals").exit_code == 0
    written = {path: path.stat().st_mtime_ns for path in store.with_suffix(".shards").glob("vocab*")}
    assert len(written) == 1
    # failure test: a rerun (after a kill -9 just past the write, or a pipeline's retry) was refused
    again = run_cli("text", store, "--classes", classes, "--name", "animals")
    assert again.exit_code == 0 and f"Vocabulary animals ({len(ANIMALS)} classes) is already in" in again.output
    assert {path: path.stat().st_mtime_ns for path in store.with_suffix(".shards").glob("vocab*")} == written

    classes.write_text("owl\nbat\n")
    refused = run_cli("text", store, "--classes", classes, "--name", "animals")
    assert refused.exit_code == 1 and "already has a vocabulary 'animals' with other classes (" in refused.output \
        and "--overwrite" in refused.output
    with Store(store) as opened:
        assert opened.vocabulary("animals").classes == ANIMALS

    assert run_cli("text", store, "--classes", classes, "--name", "animals", "--overwrite").exit_code == 0
    with Store(store) as opened:
        assert opened.vocabulary("animals").classes == ["owl", "bat"]


def test_text_finds_a_moved_weights_file_only_if_it_matches(unlabelled_store, tmp_path, monkeypatch):
    store, weights = unlabelled_store
    moved = tmp_path / "elsewhere" / "clip.pt"
    moved.parent.mkdir()
    weights.rename(moved)
    classes = tmp_path / "animals.txt"
    classes.write_text("\n".join(ANIMALS))

    missing = run_cli("text", store, "--classes", classes, "--name", "animals")
    assert missing.exit_code == 1 and "clip.pt" in missing.output

    other = tmp_path / "other.pt"
    state = torch.load(moved)
    torch.save({key: value + 1 for key, value in state.items()}, other)
    mismatched = run_cli("text", store, "--classes", classes, "--name", "animals", "--clip-weights", other)
    assert mismatched.exit_code == 1 and "sha256" in mismatched.output
    mistyped = run_cli("text", store, "--classes", classes, "--name", "animals", "--clip-weights", tmp_path / "typo.pt")
    assert mistyped.exit_code == 1 and "typo.pt not found; check the --clip-weights path" in mistyped.output

    assert add_vocabulary(store, classes, "animals", clip_weights=moved) == ANIMALS
    with Store(store) as opened:
        assert opened.vocabulary_names() == ["animals"]
        # review: an open Store (as zsfs.fit takes) was refused as "path must be a path"
        assert add_vocabulary(opened, ["fox", "owl"], "night", clip_weights=moved) == ["fox", "owl"]
    # docs audit: docs/python.md names it `store`, as zsfs.fit does (it was store_path)
    assert add_vocabulary(store=store, classes=["elk"], name="deer", clip_weights=moved) == ["elk"]
    with Store(store) as opened:
        assert opened.vocabulary_names() == ["animals", "deer", "night"]
    with pytest.raises(ParameterError, match=r"^store must be a zsfs.Store or its path, not 5$"):
        add_vocabulary(5, ["fox"], "x")
    # bug: "~/s.h5" opened the home folder's store, then locked and wrote a folder named "~" here
    monkeypatch.setenv("HOME", str(store.parent))
    monkeypatch.chdir(tmp_path)
    assert add_vocabulary(f"~/{store.name}", ["elk"], "home", clip_weights=moved) == ["elk"]
    assert not (tmp_path / "~").exists()
    with Store(store) as opened:
        assert "home" in opened.vocabulary_names()


def test_text_on_a_missing_store_or_class_file(unlabelled_store, tmp_path):
    store, _ = unlabelled_store
    classes = tmp_path / "animals.txt"
    classes.write_text("cat\ncat\n")
    duplicated = run_cli("text", store, "--classes", classes, "--name", "x")
    assert duplicated.exit_code == 1 and "cat" in duplicated.output
    classes.write_text("cat\n")
    missing = run_cli("text", tmp_path / "nope.h5", "--classes", classes, "--name", "x")
    assert missing.exit_code == 1 and "nope.h5" in missing.output
    no_classes = run_cli("text", store, "--classes", tmp_path / "nope.txt", "--name", "x")  # review: never tried
    assert no_classes.exit_code == 1 and f"class file {tmp_path / 'nope.txt'} does not exist" in output_text(no_classes)


def test_class_names_where_a_class_file_goes_get_how_to_pass_them(unlabelled_store, tmp_path, monkeypatch):
    """A new user's `--classes cat,dog` said only that no such file exists: the command line says how
    to pass names from a shell, Python to pass a list; a value that reads as a path gets no such hint."""
    from zsfs.names import names_listed_in

    store, _ = unlabelled_store
    monkeypatch.chdir(tmp_path)
    said = run_cli("text", store, "--classes", "cat, hot dog,it's", "--name", "x")
    assert said.exit_code == 2 and "no file is named cat, hot dog,it's; to give class names on the command line, " \
        "pass them as a file: --classes <(printf '%s\\n' cat 'hot dog' 'it'\"'\"'s') (bash, zsh)" in output_text(said)
    for path in ("lists/a,b", "classes,v2.txt", "cat,cat", "cat,#dog", "cat"):  # paths, or no list of names
        said = run_cli("text", store, "--classes", path, "--name", "x")
        assert said.exit_code == 1 and said.output.count("does not exist; pass a text file") == 1, said.output
        assert "printf" not in said.output
    with pytest.raises(ParameterError, match=re.escape("classes 'cat,dog' names no class file; pass the class "
                                                       "names as a list: ['cat', 'dog']")):
        add_vocabulary(store, "cat,dog", "x")
    (tmp_path / "cat,dog").write_text("cat\ndog\n")  # a file so named is read
    assert names_listed_in("cat,dog") == ["cat", "dog"]
    assert run_cli("text", store, "--classes", "cat,dog", "--name", "x").exit_code == 0


def test_text_refuses_classes_clip_reads_as_one(unlabelled_store, tmp_path):
    store, _ = unlabelled_store
    classes = tmp_path / "animals.txt"
    classes.write_text("Dog\ncat\ndog\n")  # one text to CLIP, which lower-cases
    result = run_cli("text", store, "--classes", classes, "--vocab", "twice")
    said = output_text(result)
    assert result.exit_code == 1 and "CLIP reads 1 pair of class names as the same tokens" in said, said
    assert ": 'Dog' = 'dog'. It gives each pair" in said, said
    classes.write_text("caf\u00e9\ncafe\u0301\ndog\n")  # one name, composed and decomposed: refused before CLIP
    result = run_cli("text", store, "--classes", classes, "--vocab", "twice")
    assert result.exit_code == 1 and "lists 1 name more than once: 'caf\u00e9' = 'cafe\u0301'" in output_text(result)
    with Store(store) as opened:
        assert "twice" not in opened.vocabulary_names()


def test_text_counts_one_class_in_the_singular(unlabelled_store, tmp_path):
    """Review: the log line said "class names: 1 classes to do"."""
    store, _ = unlabelled_store
    classes = tmp_path / "one.txt"
    classes.write_text("cat\n")
    result = run_cli("text", store, "--classes", classes, "--name", "one")
    assert result.exit_code == 0 and "class names: 1 class to do" in result.output, result.output
    classes.write_text("cat\ndog\n")
    result = run_cli("text", store, "--classes", classes, "--name", "two")
    assert result.exit_code == 0 and "class names: 2 classes to do" in result.output, result.output


def test_text_refuses_a_store_rebuilt_with_another_clip_before_it_took_the_lock(unlabelled_store, tmp_path,
                                                                                monkeypatch):
    """Review: text read the store's CLIP record, then took the lock; a rebuild between the two (with
    another CLIP of the same width) was given the old CLIP's embeddings without a word."""
    import json
    import subprocess
    import sys

    import zsfs.vocabulary
    from zsfs.errors import StoreError

    store, weights = unlabelled_store
    config = json.loads(Path(TINY_CLIP_CONFIG).read_text())
    config["text_cfg"]["layers"] = config["vision_cfg"]["layers"] = 2  # another CLIP, the same width
    (tmp_path / "other-clip.json").write_text(json.dumps(config))
    checked = zsfs.vocabulary.checked_classes

    def rebuilt_meanwhile(classes):  # a real rebuild lands after the record was read, before the lock
        subprocess.run([sys.executable, "-m", "zsfs", "extract", str(tmp_path / "flat"), "--out", str(store),
                        "--clip-model", str(tmp_path / "other-clip.json"), "--clip-weights", "random", "--backbone",
                        TINY_BACKBONE, "--backbone-weights", "random", "--workers", "0", "--overwrite"],
                       check=True, capture_output=True)
        return checked(classes)

    monkeypatch.setattr(zsfs.vocabulary, "checked_classes", rebuilt_meanwhile)
    with pytest.raises(StoreError, match="was rebuilt by another process .* vocabulary 'animals' was not written"):
        add_vocabulary(store, ["cat", "dog"], "animals", clip_weights=weights)
    with Store(store) as rebuilt:
        assert rebuilt.vocabulary_names() == [] and rebuilt.clip_info["weights"] == "random"


LONG_FINDING = ("ground-glass opacity with interlobular septal thickening and traction bronchiectasis predominantly in "
                "the subpleural regions of both lower lobes, without honeycombing, consistent with a fibrotic "
                "nonspecific interstitial pneumonia pattern rather than usual interstitial pneumonia; follow up by "
                "high resolution computed tomography in three to six months")  # 356 characters, over 77 tokens


def test_text_and_extract_say_which_class_names_clip_cuts(unlabelled_store, tmp_path):
    """Review: a radiologist's 356-character finding lost its end to CLIP's 77-token context unsaid."""
    store, _ = unlabelled_store
    classes = tmp_path / "findings.txt"
    classes.write_text(f"{LONG_FINDING}\nnormal lung\n")
    result = run_cli("text", store, "--classes", classes, "--vocab", "findings")
    said = " ".join(output_text(result).split())
    assert result.exit_code == 0, said
    assert "Note: 1 class name is longer than CLIP reads" in said and "'ground-glass opacity with" in said, said
    assert "normal lung" not in said.split("Note:")[1].split("Vocabulary")[0], said  # the short one is not named
    cut = []
    add_vocabulary(store, ["normal lung", LONG_FINDING[:200]], "short", on_cut=cut.extend)
    assert cut == []  # (fits: no call)
    add_vocabulary(store, ["normal lung", LONG_FINDING], "long", on_cut=cut.extend)
    assert cut == [LONG_FINDING]
    images = write_image_folder(tmp_path / "images", n_per_class=1, broken=False)["root"]
    result = run_cli("extract", images, "--out", tmp_path / "findings.h5", "--classes", classes, "--workers", "0",
                     *TINY_MODEL_ARGS)
    said = " ".join(output_text(result).split())
    assert result.exit_code == 0 and "Note: 1 class name is longer than CLIP reads" in said, said
