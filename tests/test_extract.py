"""zsfs extract: images -> store, with tiny random models on generated folders (CPU, no downloads)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
import torch

from zsfs.errors import ParameterError, StoreError, ZsfsError
from zsfs.extract import extract
from zsfs.models import load_backbone, load_clip
from zsfs.decode import ImageDecodeError, decode_image
from zsfs.sources import open_source
from zsfs.store import schema
from zsfs.store.reader import Store
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.failures import run_zsfs
from zsfs.testing.hooks import CRASH_AT_VARIABLE, CRASH_VARIABLE, HANG_VARIABLE, HUNG_SECONDS_VARIABLE
from zsfs.testing.images import write_image_folder
from zsfs.testing.models import TINY_BACKBONE, TINY_CLIP_CONFIG, TINY_MODEL_ARGS, TINY_MODELS
from zsfs.testing.processes import STOPPED_BY, children, held_in, read_until, started, stop, wait_for

ROW_DATASETS = ("clip", "backbone", "width", "height")




def read_store(path: Path) -> dict:
    """Every row dataset and string list of a store, read with plain h5py."""
    with h5py.File(path, "r") as file:
        data = {name: file[name][:] for name in ROW_DATASETS}
        data["path"] = file["path"].asstr()[:].tolist()
        data["label"] = file["label"].asstr()[:].tolist() if "label" in file else None
        data["skipped"] = dict(zip(file["skipped/path"].asstr()[:], file["skipped/reason"].asstr()[:]))
    return data


def assert_same_store(path: Path, expected: dict) -> None:
    """The store at ``path`` holds ``expected`` (a :func:`read_store` result), see :func:`assert_same_rows`."""
    assert_same_rows(read_store(path), expected)


def assert_same_rows(found: dict, expected: dict) -> None:
    """Two :func:`read_store` results of the same images: the same files, sizes, labels and skips,
    and embeddings within one float16 step, as the models round differently with another thread
    count or batch split (decoding processes take a core from torch; a CPU's kernels differ)."""
    assert found.keys() == expected.keys()
    for name in found:
        if name in ("clip", "backbone"):
            assert found[name].shape == expected[name].shape, name
            np.testing.assert_allclose(found[name], expected[name], rtol=0, atol=1e-3, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(found[name], dtype=object),
                                          np.asarray(expected[name], dtype=object), err_msg=name)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    return write_image_folder(tmp_path_factory.mktemp("src") / "photos", n_per_class=5)


def test_the_batches_of_a_huge_listing_cost_little_memory():
    """Review: every listing position was a Python int in a list (482 MB for 10 million images)."""
    import tracemalloc

    from zsfs.shard_embedder import position_batches

    assert [list(batch) for batch in position_batches(3, 12, 4)] == [[3, 4, 5, 6], [7, 8, 9, 10], [11]]
    tracemalloc.start()
    try:
        batches = position_batches(0, 10_000_000, 256)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(batches) == 39_063 and batches[-1][-1] == 9_999_999
    assert held < 20_000_000, held


def test_extract_mixed_folder(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output lands in the current folder
    result = run_cli("extract", photos["root"], *TINY_MODEL_ARGS, "--workers", "1", "--shard-size", "4", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    store_path = tmp_path / "photos.h5"
    assert store_path.is_file()

    data = read_store(store_path)
    good = photos["good"]
    assert data["path"] == good  # relative to SOURCE, listing order
    assert data["label"] == [photos["labels"][p] for p in good]
    assert data["clip"].shape == (len(good), 32) and data["clip"].dtype == np.float16
    assert data["backbone"].shape == (len(good), 64) and data["backbone"].dtype == np.float16
    for name in ("clip", "backbone"):
        norms = np.linalg.norm(data[name].astype(np.float32), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert [tuple(wh) for wh in zip(data["width"], data["height"])] == [photos["sizes"][p] for p in good]
    assert set(data["skipped"]) == set(photos["bad"])
    for path, word in photos["bad"].items():
        assert word in data["skipped"][path].lower()

    with Store(store_path) as store:
        summary = store.summary()
        vocabulary = store.vocabulary("default")
        n_shards = store.n_shards
    assert summary["n_images"] == len(good) and summary["n_skipped"] == len(photos["bad"])
    assert summary["clip"]["dim"] == 32 and summary["backbone"]["dim"] == 64
    assert vocabulary.classes == ["blue", "green", "red"]
    assert vocabulary.single.shape == vocabulary.ensemble.shape == (3, 32)
    assert n_shards == -(-(len(good) + len(photos["bad"])) // 4)
    assert "images in the store" in result.output and str(len(good)) in result.output


def test_library_summary_counts_reasons(photos, tmp_path):
    ticks = []
    summary = extract(photos["root"], tmp_path / "s.h5", workers=0, shard_size=8, batch_size=4,
                      on_start=lambda n: ticks.append(("start", n)), on_batch=lambda n: ticks.append(n), **TINY_MODELS)
    n_listed = len(photos["good"]) + len(photos["bad"])
    assert summary.n_images == len(photos["good"]) and summary.n_skipped == len(photos["bad"])
    assert sum(summary.skipped_reasons.values()) == len(photos["bad"]) and len(summary.skipped_reasons) >= 3
    assert (summary.shards_written, summary.shards_reused) == (-(-n_listed // 8), 0)
    assert ticks[0] == ("start", n_listed) and sum(ticks[1:]) == n_listed
    assert summary.images_processed == n_listed  # the skipped files were processed too
    assert summary.vocabulary == "default" and summary.classes == ["blue", "green", "red"]

    again = extract(photos["root"], tmp_path / "s.h5", workers=0, shard_size=8, batch_size=4, **TINY_MODELS)
    assert (again.shards_written, again.shards_reused, again.images_processed) == (0, summary.shards_written, 0)


def test_a_library_extract_stopped_among_its_shards_tells_its_caller_what_a_rerun_keeps(photos, tmp_path):
    """Review: the command line said how many files the finished shards hold; zsfs.extract()'s
    caller got a bare KeyboardInterrupt (the sentence sat in an attribute no traceback shows)."""
    batches = []

    def stopped_in_the_second_shard(n: int) -> None:
        batches.append(n)
        if sum(batches) > 8:
            raise KeyboardInterrupt  # as Ctrl-C lands in a notebook

    with pytest.raises(KeyboardInterrupt) as stop:
        extract(photos["root"], tmp_path / "s.h5", workers=0, shard_size=8, batch_size=4,
                on_batch=stopped_in_the_second_shard, **TINY_MODELS)
    n_listed = len(photos["good"]) + len(photos["bad"])
    said = f"the finished shards hold 8 of the {n_listed} files (--shard-size 8): a rerun keeps them and embeds " \
           f"the other {n_listed - 8}"
    assert stop.value.resume == said  # the command line's sentence
    if sys.version_info >= (3, 11):  # (Python 3.10 has no exception notes)
        assert stop.value.__notes__ == [said[0].upper() + said[1:] + "."]
        assert said[1:] in "".join(traceback.format_exception(stop.value))


def test_classes_file_gives_the_vocabulary(photos, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n\n  dog  \nred fox\n\n")
    result = run_cli("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                     "--classes", classes, "--vocab", "pets")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.h5") as store:
        assert store.vocabulary_names() == ["pets"]
        assert store.vocabulary("pets").classes == ["cat", "dog", "red fox"]


def test_loose_images_beside_class_folders_are_explained_with_and_without_classes(tmp_path):
    """Bug: with --classes, a loose image beside the class folders turned the labels off without
    a word (evaluation then had no true labels); without --classes the advice is the same."""
    root = tmp_path / "photos"
    for name in ["cat/1.png", "dog/2.png", "loose.png"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (len(name) * 20, 0, 0)).save(root / name)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    said = {}
    for given in ([], ["--classes", classes]):
        result = run_cli("extract", root, "--out", tmp_path / f"s{len(given)}.h5", *TINY_MODEL_ARGS, "--workers", "0",
                         *given)
        assert result.exit_code == 0, result.output
        said[bool(given)] = " ".join(output_text(result).split())
        with Store(tmp_path / f"s{len(given)}.h5") as store:
            assert store.labels() is None and store.vocabulary_names() == (["default"] if given else [])
    loose = "1 image lies directly in photos/, not in a class subfolder (first: loose.png), so the subfolders are " \
            "not read as labels"
    assert f"No class names known ({loose}; move the loose images into class subfolders or pass --classes)" in \
        said[False]
    assert f"Note: the store holds no labels ({loose}); to evaluate against the folders, move the loose images " \
           "into class subfolders and extract again with --overwrite." in said[True]


def test_a_rerun_with_another_pixel_budget_is_refused_not_mixed(tmp_path):
    """Bug: the pixel budget was not part of the store's identity: a rerun with another
    --max-pixels (the skip reason's advice) reused every shard and kept the skips, and a run
    resumed with another budget mixed two budgets in one store."""
    source = write_image_folder(tmp_path / "photos", n_per_class=2)["root"]
    out = tmp_path / "s.h5"
    small = ("--max-pixels", "100")  # below the generated images' sizes: skipped with the budget's reason
    first = run_cli("extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "0", *small)
    with Store(out) as store:
        budget_skips = [reason for reason in store.skipped()[1] if "--max-pixels" in reason]
        assert budget_skips and store.identity["max_pixels"] == 100, first.output
    # the JPEGs kept were decoded at 1/8 scale; the store holds their size in the file (review: a mutation storing
    # the decoded size passed every test)
    data = read_store(out)
    assert any(path.endswith(".jpg") for path in data["path"])
    for path, width, height in zip(data["path"], data["width"], data["height"]):
        with Image.open(source / path) as image:
            assert (width, height) == image.size, path
    again = run_cli("extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "0", *small)
    assert again.exit_code == 0 and "0 / 1" in again.output, again.output  # shards written / reused
    unloadable = [arg for arg in TINY_MODEL_ARGS if not arg.startswith("--backbone-weights")]
    refused = run_cli("extract", source, "--out", out, *unloadable, "--backbone-weights", tmp_path / "absent.pt",
                      "--workers", "0")  # refused before the models load: the missing weights are not reached
    said = " ".join(output_text(refused).split())
    assert refused.exit_code == 1 and "(differs in max_pixels; it was built with --max-pixels 100, this run uses " \
        "the default); keep it and choose another output, or pass --overwrite to replace it" in said, said
    replaced = run_cli("extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "0", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    with Store(out) as store:
        assert not [reason for reason in store.skipped()[1] if "--max-pixels" in reason]
        assert "max_pixels" not in store.identity  # the default budget is not recorded: older stores match


def test_classes_clip_reads_as_one_are_refused_before_any_image(photos, tmp_path):
    """'Cat' and 'cat' (or a name in two Unicode forms) got one embedding and split their images by chance."""
    classes = tmp_path / "classes.txt"
    classes.write_text("Cat\ndog\ncat\n")
    result = run_cli("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                     "--classes", classes)
    said = output_text(result)
    assert result.exit_code == 1 and "CLIP reads 1 pair of class names as the same tokens" in said, said
    assert ": 'Cat' = 'cat'. It gives each pair" in said and "list each class once" in said, said
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.shards").exists()
    # Class folders (nothing listed by the user, a store perhaps built before): embedded, and said.
    folders = write_image_folder(tmp_path / "folders", n_per_class=1, classes=("Cat", "cat", "dog"), broken=False)
    embedded = run_cli("extract", folders["root"], "--out", tmp_path / "f.h5", *TINY_MODEL_ARGS, "--workers", "0")
    said = output_text(embedded)
    assert embedded.exit_code == 0 and "class names CLIP reads as one" in said and "1: 'Cat' = 'cat'" in said, said
    with Store(tmp_path / "f.h5") as store:
        assert store.n_images == 3 and store.vocabulary("default").classes == ["Cat", "cat", "dog"]


def test_an_image_a_model_transform_cannot_take_is_skipped_not_fatal(tmp_path):
    """open_clip's 'longest' transform raises on a 1-pixel-wide strip: that ended the whole extract."""
    from zsfs.embedding import DecodedImages

    Image.new("RGB", (20, 20)).save(tmp_path / "square.png")
    Image.new("RGB", (1, 2000)).save(tmp_path / "strip.png")

    def fussy(image):
        if image.width < 2:
            raise ValueError("height and width must be > 0")
        return torch.zeros(3, 4, 4, dtype=torch.uint8)

    images = DecodedImages(open_source(tmp_path), fussy)  # square.png, strip.png
    assert images[0][0] == 0 and images[0][1][0].shape == (3, 4, 4)
    assert images[1] == (1, "the model's preprocessing failed (height and width must be > 0)")


def test_a_file_unread_for_lack_of_file_descriptors_stops_the_run_instead_of_being_skipped(tmp_path):
    """Review: "Too many open files" (as ENOMEM, a stale or lost mount) was recorded as the file's
    skip, "unreadable file (...)", in a finished shard that no rerun retries. Here every descriptor
    of a real process is taken, so the kernel refuses the image's open() with EMFILE."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    script = textwrap.dedent("""
        import os, sys, torch
        from zsfs.decode import MachineReadError
        from zsfs.embedding import DecodedImages, collate, embed_batches
        from zsfs.sources import open_source
        from zsfs.testing.failures import take_every_descriptor
        images = DecodedImages(open_source(sys.argv[1]), lambda image: torch.zeros(3, 2, 2))
        held = take_every_descriptor()
        batch = collate([images[0], images[1]])
        for descriptor in held:
            os.close(descriptor)
        print(type(batch.failures[0][1]).__name__, len(batch.indices))
        try:
            list(embed_batches([batch], [0], [lambda pixels: pixels], torch.device("cpu"), "fp32"))
        except MachineReadError as error:
            print(error)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == "MachineReadError 0", done.stdout + done.stderr
    assert lines[1] == (f"cannot read {tmp_path / 'a.png'}: Too many open files, a failure of this machine or its file "
                        "system, not of the file: raise the open-file limit (ulimit -n) or decode with fewer "
                        "--workers, then rerun")


@pytest.mark.parametrize("workers", [16, 32])
def test_decoding_workers_past_the_open_files_limit_are_one_line_with_the_fix(tmp_path, workers):
    """Bug: under `ulimit -n 80` (a job's limit), 16 decoding workers ended extract with torch's
    traceback ("Too many open files. Communication with the workers is no longer possible ... change
    the sharing strategy"), and 32 with "Error: Too many open files." and no word of what to do."""
    photos = write_image_folder(tmp_path / "photos", n_per_class=4, broken=False)
    outcome = run_zsfs("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", workers,
                       "--batch-size", "2", launcher=("bash", "-c", 'ulimit -n 80 || exit 99; exec "$@"', "bash"))
    assert outcome.returncode == 1, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: too many open files: this process may open 80 (`ulimit -n`); raise the limit or use "
                      "fewer --workers, then rerun. No shard was finished (the 12 files here are one shard: "
                      "--shard-size 50,000): a rerun embeds the 12 files from the start."], outcome.output
    assert "Communication with the workers" not in outcome.output


def test_a_rerun_over_files_of_the_suffixes_added_says_so(tmp_path):
    """A store built before zsfs read .pgm (and other) files: its folder now lists more files."""
    folder = write_image_folder(tmp_path / "photos", n_per_class=1, classes=("cat", "dog"), broken=False)["root"]
    store = tmp_path / "s.h5"
    assert run_cli("extract", folder, "--out", store, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    Image.new("L", (8, 8), 90).save(folder / "dog" / "scan.pgm")  # as a scan before the suffix was added
    refused = run_cli("extract", folder, "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    said = output_text(refused)
    assert refused.exit_code == 1 and "was built without the 1 file of .avif, .j2k" in said, said
    assert "reads these suffixes since December 2026" in said and "--overwrite" in said
    (tmp_path / "aside").mkdir()
    store.rename(tmp_path / "aside" / "s.h5")  # shards without a master, as a first run killed before its end leaves
    refused = run_cli("extract", folder, "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    said = " ".join(output_text(refused).split())  # bug: it named the master that is not there
    assert refused.exit_code == 1 and f"{tmp_path / 's.shards'} was built without the 1 file of .avif" in said, said
    (tmp_path / "aside" / "s.h5").rename(store)
    Image.new("RGB", (8, 8)).save(folder / "dog" / "new.png")  # and a file of an old suffix: the plain refusal
    refused = run_cli("extract", folder, "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    assert refused.exit_code == 1 and "the source lists" in output_text(refused)


def test_a_rerun_does_not_replace_a_vocabulary_by_other_classes(photos, tmp_path):
    """Bug: rerunning extract with --classes silently turned the store's vocabulary into other classes."""
    store = tmp_path / "s.h5"
    assert run_cli("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    again = run_cli("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0", "--classes", classes)
    said = output_text(again)
    assert again.exit_code == 1 and "already has a vocabulary 'default' with other classes (3: blue; green; red)" in said
    renamed = run_cli("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0",
                      "--classes", classes, "--vocab-name", "pets")
    assert renamed.exit_code == 0, renamed.output
    with Store(store) as opened:
        assert opened.vocabulary("default").classes == ["blue", "green", "red"]
        assert opened.vocabulary("pets").classes == ["cat", "dog"]


def test_a_store_whose_extract_stopped_before_its_vocabulary_says_to_rerun_it(photos, tmp_path):
    """Review: an extract killed after its master, before its class-folder vocabulary (the file this
    test removes), left a store that fit and info said to give a vocabulary with `zsfs text`."""
    store = tmp_path / "s.h5"
    extract = ("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    assert run_cli(*extract).exit_code == 0
    schema.vocabulary_file(schema.shard_dir(store), "default").unlink()  # what the kill left
    unwritten = "vocabulary 'default' was not written: the zsfs extract that made the store was stopped before it " \
                "wrote it (after the store's images); rerun that command, which reuses the finished shards"
    fit = run_cli("fit", "--store", store, "--k", "2", "--out", tmp_path / "run")
    assert fit.exit_code == 1 and f"{store}: {unwritten}" in " ".join(output_text(fit).split()), fit.output
    info = " ".join(output_text(run_cli("info", store)).split())
    assert unwritten in info and "zsfs text" not in info
    again = run_cli(*extract)
    assert again.exit_code == 0, again.output
    with Store(store) as opened:
        assert opened.vocabulary("default").classes == ["blue", "green", "red"] and not opened.unwritten_vocabularies


def test_a_resume_with_other_model_names_is_refused_before_any_model_loads(photos, tmp_path, offline):
    """Review: resuming a killed extract without its model options loaded (downloaded, on a user's machine)
    the default models, only to be refused once they were loaded; here, offline, it failed on the download."""
    store = tmp_path / "s.h5"
    assert run_cli("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0",
                   "--shard-size", "4").exit_code == 0
    store.unlink()  # a first run killed before its master: its shards are what a rerun resumes
    for path, models, said in ((store.with_suffix(".shards"), [], "CLIP zsfs-tiny-clip and backbone test_vit, this "
                                "run asks for ViT-B-32 and vit_giant_patch14_clip_224.laion2b"),
                               (store.with_suffix(".shards"), TINY_MODEL_ARGS[:2], "backbone test_vit, this run asks "
                                "for vit_giant_patch14_clip_224.laion2b")):
        outcome = run_cli("extract", photos["root"], "--out", store, *models, "--workers", "0", "--shard-size", "4")
        text = " ".join(output_text(outcome).split())
        assert outcome.exit_code == 1 and f"{path} was built with {said}; pass the models it was built with to " \
            "resume or update it" in text, text
        assert "download" not in text
    # review: other layout options and other models were said one after the other, each after the other was fixed
    outcome = run_cli("extract", photos["root"], "--out", store, "--workers", "0", "--shard-size", "5")
    text = " ".join(output_text(outcome).split())
    assert outcome.exit_code == 1 and "it was built with --shard-size 4 (pass the same to resume it)" in text \
        and "; and it was built with CLIP zsfs-tiny-clip and backbone test_vit, this run asks for ViT-B-32" in text, text
    assert run_cli("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0",
                   "--shard-size", "4").exit_code == 0  # with them, it resumes


def test_a_first_extract_offline_names_both_missing_weights(photos, tmp_path, offline):
    """Air-gapped admin: with an empty cache, extract with the default models said CLIP's weights were
    missing; with them fetched, the rerun said the backbone's (a second file transfer to ask for)."""
    outcome = run_cli("extract", photos["root"], "--out", tmp_path / "s.h5", "--backbone", TINY_BACKBONE,
                      "--workers", "0")
    text = " ".join(output_text(outcome).split())
    assert outcome.exit_code == 1 and "could not download the CLIP weights ViT-B-32 / openai nor the backbone " \
        "weights of test_vit" in text and "Or pass local files: --backbone-weights" in text, text
    assert "Traceback" not in text and not (tmp_path / "s.h5").exists()


def test_a_rerun_repairs_a_removed_shard_and_rebuilds_a_master_older_than_its_shards(photos, tmp_path):
    store = tmp_path / "s.h5"
    args = ("extract", photos["root"], "--out", store, *TINY_MODEL_ARGS, "--workers", "0", "--shard-size", "4")
    assert run_cli(*args).exit_code == 0
    expected = read_store(store)
    shards = sorted((tmp_path / "s.shards").glob("shard-*.h5"))
    shards[1].unlink()
    with pytest.raises(StoreError, match="rerun the command that made the store"):
        Store(store)
    result = run_cli(*args)
    assert result.exit_code == 0 and "1 / " in result.output  # shards written / reused
    said = output_text(result)  # bug: "images/s" beside the whole time read as its rate
    assert re.search(r"time │ [0-9.]+ s \([0-9.]+ s embedding\)", said), said
    assert re.search(r"images/s \(embedding\) │ [0-9.]*[1-9]", said), said
    assert_same_store(store, expected)
    with Store(store) as opened:
        build = opened.build
    assert run_cli(*args).exit_code == 0  # nothing to do: the master stays
    with Store(store) as opened:
        assert opened.build == build
    # copied with `cp -r` (every shard newer than the master, not a byte changed): the master stays
    later = store.stat().st_mtime_ns + 10**9
    for shard in shards:
        os.utime(shard, ns=(later, later))
    assert run_cli(*args).exit_code == 0
    with Store(store) as opened:
        assert opened.build == build
    # a repair stopped after its shard and before the master: a newer shard whose bytes the
    # master did not record (here: one row changed in place)
    with h5py.File(shards[2], "r+") as file:
        file["clip"][0] = -file["clip"][0]
    os.utime(shards[2], ns=(later, later))
    assert run_cli(*args).exit_code == 0
    with Store(store) as opened:
        assert opened.build != build
        opened.verify()  # the rebuilt master records the shard as it is now
        clip = opened.read("clip")
    changed = np.flatnonzero((clip != expected["clip"]).any(axis=1))
    assert len(changed) == 1 and np.array_equal(clip[changed], -expected["clip"][changed])


def test_decoding_workers_that_cannot_share_a_batch_fail_cleanly(photos, tmp_path):
    """Bugs: a batch a worker could not put in shared memory (a file-size limit here; a full
    /dev/shm elsewhere) was dropped by its queue's feeder thread, and extract waited forever; then
    it was reported as "the disk is full", with no path, while the disk had room (Docker's 64 MB
    /dev/shm)."""
    outcome = run_zsfs("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "1",
                       file_size_limit=100_000, timeout=120)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "shared memory (/dev/shm) is full, or over a file-size limit" in outcome.output
    assert "rerun with --workers 0" in outcome.output and "disk is full" not in outcome.output


def _kill_script(source: Path, out: Path, delay: float, workers: int = 0) -> str:
    # Decoding is slowed down so that the kill reliably lands in the middle of a shard.
    args = ["extract", str(source), "--out", str(out), *TINY_MODEL_ARGS, "--workers", str(workers), "--shard-size", "6",
            "--batch-size", "2"]
    return (
        "import os\n"
        "from zsfs.testing.hooks import DELAY_VARIABLE, slow_decoding\n"
        f"os.environ[DELAY_VARIABLE] = {str(delay)!r}\n"
        "slow_decoding()\n"
        "from zsfs.cli import main\n"
        f"main({args!r})\n"
    )


def test_extract_holds_the_store_while_its_vocabulary_is_embedded(tmp_path):
    """Bug: extract released the store's lock when the master was written, then embedded the class
    names: a rebuild with other models (--overwrite) in that time got the first run's text
    embeddings (later refused by the store's identity), and a `zsfs text --vocab default` run had
    its vocabulary overwritten by extract's (review). The lock is now held to the end: real
    second processes, while the first run waits inside its vocabulary embedding, are refused."""
    source = write_image_folder(tmp_path / "photos", n_per_class=2)["root"]
    out = tmp_path / "s.h5"
    (tmp_path / "mine.txt").write_text("cat\ndog\n")
    args = ["extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "0"]
    with held_in("zsfs.shard_embedder:ShardEmbedder.encode_vocabulary", args, tmp_path) as (first, go):
        other_backbone = [arg.replace(TINY_BACKBONE, "test_vit2") for arg in TINY_MODEL_ARGS]
        rebuilt = run_zsfs("extract", source, "--out", out, *other_backbone, "--workers", "0", "--overwrite")
        text = run_zsfs("text", out, "--classes", tmp_path / "mine.txt", "--vocab", "default")
        go.touch()
        output, _ = first.communicate(timeout=120)
    for refused in (rebuilt, text):
        assert refused.returncode == 1 and f"another zsfs process (pid {first.pid} on " in refused.output, \
            refused.output
    assert first.returncode == 0, output
    with Store(out) as store:
        assert store.identity["backbone"]["name"] == TINY_BACKBONE
        assert store.vocabulary("default").classes == sorted(path.name for path in source.iterdir())


@pytest.mark.parametrize("slow", ["decoding", "embedding"])
def test_a_killed_decoding_process_is_one_clear_line_and_the_rerun_resumes(tmp_path, slow):
    """Bug: kill -9 of a decoding process (what the out-of-memory killer does) ended the run with
    torch's traceback, or, with torch's SIGCHLD handler raising wherever the main thread was, "Aborted!"
    or "Connection reset by peer". Either way here: the main thread waits for a batch (slow decoding)
    or is busy with the last one (slow embedding)."""
    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    out, shards = tmp_path / "s.h5", tmp_path / "s.shards"
    script = _kill_script(source, out, 0.05 if slow == "decoding" else 0.0, workers=1)
    if slow == "embedding":  # every batch's results are held up in the main thread
        script = ("import time, zsfs.embedding as e\nhand_over = e._to_host\n"
                  "e._to_host = lambda *a: time.sleep(0.1) or hand_over(*a)\n") + script
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not (shards / "shard-00000.h5").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    decoding = children(process.pid)  # forked: the DataLoader worker (no other child lives that long)
    assert len(decoding) == 1, decoding
    os.kill(decoding[0], signal.SIGKILL)
    stderr = process.communicate(timeout=120)[1]
    said = " ".join(stderr.split())
    assert process.returncode == 1 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert re.search(r"Error: a decoding process \(pid \d+\) died \(killed by SIGKILL\), perhaps by the "
                     "out-of-memory killer", said), stderr
    finished = sorted(path.name for path in shards.glob("shard-*.h5"))
    assert 1 <= len(finished) < 5 and not out.exists()
    kept = re.search(r"The finished shards hold ([\d,]+) of the ([\d,]+) files \(--shard-size (\d+)\): a rerun keeps "
                     r"them and embeds the other ([\d,]+)\.", said)  # (it said "Rerun: ... resumes" alone)
    assert kept and int(kept[1]) == len(finished) * int(kept[3]) and int(kept[1]) + int(kept[4]) == int(kept[2]), said

    result = run_cli("extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "1", "--shard-size", "6",
                     "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert f"{5 - len(finished)} / {len(finished)}" in result.output  # shards written / reused


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_an_extract_cleanly_and_the_rerun_resumes(tmp_path, group, number):
    """Bug: SIGTERM (what `timeout`, `docker stop` and Slurm send) ended extract at once with no
    word, leaving its lock file. Now it stops as Ctrl-C does: one line, exit 143, no lock left, its
    decoding process gone. Bug: sent to the whole process group (`timeout`, `scancel`, `kill --
    -PGID`), it also ended the decoding processes, and torch's shutdown printed a traceback ("Exception
    ignored in ... DataLoader worker ... is killed by signal: Terminated") after that one line.
    SIGINT to the group is a terminal's Ctrl-C (the decoding processes get it too): exit 130. Failure
    test: SIGHUP (a closed SSH session) ended it with no word in its log; now as SIGTERM, exit 129."""
    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    out, shards = tmp_path / "s.h5", tmp_path / "s.shards"
    with started(["-c", _kill_script(source, out, 0.05, workers=2)]) as process:
        wait_for(shards / "shard-00000.h5", process)
        decoding = children(process.pid)
        said = stop(process, number, group=group)
    assert process.returncode == 128 + number and "Traceback" not in said, said
    assert "Exception ignored" not in said, said
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # the lock, temporary files
    assert decoding and not [pid for pid in decoding if Path(f"/proc/{pid}").exists() and
                             "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    finished = len(list(shards.glob("shard-*.h5")))
    n = len(open_source(source).paths)
    kept = sum(min(6 * (int(path.stem[6:]) + 1), n) - 6 * int(path.stem[6:]) for path in shards.glob("shard-*.h5"))
    # review: "a rerun resumes where this one stopped" said nothing of the shard's files embedded again
    assert said.endswith(f"{STOPPED_BY[number]} Nothing half-written was left; the finished shards hold {kept} of the "
                         f"{n} files (--shard-size 6): a rerun keeps them and embeds the other {n - kept}."), said
    result = run_cli("extract", source, "--out", out, *TINY_MODEL_ARGS, "--workers", "1", "--shard-size", "6",
                     "--batch-size", "2")
    assert result.exit_code == 0 and f"{5 - finished} / {finished}" in result.output, result.output


def test_ctrl_c_before_a_shard_is_finished_says_the_rerun_starts_over(tmp_path):
    """Review: with every file in one shard, Ctrl-C half-way said "a rerun resumes where this one
    stopped", and the rerun embedded everything again."""
    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    script = _kill_script(source, tmp_path / "s.h5", 0.1).replace("'--shard-size', '6'", "'--shard-size', '1000'")
    with started(["-c", script]) as process:
        read_until(process, "embedding:")  # the models are loaded (a log's first progress line)
        time.sleep(0.5)  # images flow: 2.8 s of decoding in all
        said = stop(process, signal.SIGINT)
    assert process.returncode == 130 and "Traceback" not in said, said
    assert not re.search(r"embedding: [\d,]+ of [\d,]+ img \(\d+ %\) in ", said), said  # no "done" line (review)
    n = len(open_source(source).paths)
    assert said.endswith(f"Interrupted. Nothing half-written was left; no shard was finished (the {n} files here "
                         f"are one shard: --shard-size 1,000): a rerun embeds the {n} files from the start."), said


def test_ctrl_c_under_overwrite_while_the_models_load_leaves_the_old_store_and_says_so(tmp_path):
    """Bug: Ctrl-C while the models loaded, under --overwrite, said "a rerun without --overwrite
    resumes from the shards this run finished": no shard was, and --overwrite had not removed the
    old store yet (it does once the models are loaded). Now it says a rerun resumes where it stopped;
    stopped after a shard, it still says to drop the flag (the old store is gone by then)."""
    from zsfs.testing.failures import store_content
    from zsfs.testing.hooks import DELAY_VARIABLE, LOAD_DELAY_VARIABLE, LOAD_STARTED_VARIABLE

    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    out, loading = tmp_path / "s.h5", tmp_path / "loading"

    def extract_args(store: Path) -> list[str]:
        return ["extract", str(source), "--out", str(store), *TINY_MODEL_ARGS, "--workers", "0", "--shard-size", "6",
                "--batch-size", "2"]

    assert run_cli(*extract_args(out)).exit_code == 0
    before = store_content(out)

    def ctrl_c_overwriting(store: Path, when: Path, **hooks: str) -> str:
        script = ("from zsfs.testing.hooks import hooked_workers\nhooked_workers()\nfrom zsfs.cli import main\n"
                  f"main({[*extract_args(store), '--overwrite']!r})\n")
        with started(["-c", script], hooks) as process:
            wait_for(when, process)
            said = stop(process, signal.SIGINT)  # a terminal's Ctrl-C
        assert process.returncode == 130 and "Traceback" not in said, said
        return said

    said = ctrl_c_overwriting(out, loading, **{LOAD_DELAY_VARIABLE: "120", LOAD_STARTED_VARIABLE: str(loading)})
    assert said.endswith("Interrupted. Nothing half-written was left; a rerun resumes where this one stopped."), said
    assert store_content(out) == before
    assert run_cli(*extract_args(out)).exit_code == 0  # the old store, as it was: complete

    other = tmp_path / "t.h5"  # a new store: its first shard is this run's
    said = ctrl_c_overwriting(other, tmp_path / "t.shards" / "shard-00000.h5", **{DELAY_VARIABLE: "0.1"})
    assert said.endswith("Interrupted. Nothing half-written was left; a rerun without --overwrite resumes from the "
                         "shards this run finished (with it, the store is built again from the start: --overwrite removes the "
                         "earlier store before it writes)."), said
    assert not other.exists()


FORKSERVER_MAIN = """
import multiprocessing, sys
from zsfs.testing.hooks import hooked_workers
hooked_workers()  # the fork server runs it too: a file named by $ZSFS_TEST_CRASH_ON crashes its decoding process
from zsfs.cli import run  # as the installed `zsfs` script: the fork server imports zsfs too
if __name__ == "__main__":  # the fork server runs this file again, as __mp_main__
    multiprocessing.set_start_method("forkserver")  # Python 3.14's default on Linux
    multiprocessing.set_forkserver_preload(["forkserver_marker"])
    sys.argv[0] = "zsfs"
    sys.exit(run())
"""
FORKSERVER_MARKER = "import os\nopen(os.environ['ZSFS_TEST_FORK_SERVER'], 'a').write('started\\n')\n"


def test_decoding_processes_started_by_a_fork_server_give_what_forked_ones_give(tmp_path):
    """Python 3.14 starts multiprocessing's processes (the loader's decoding processes) from a fork
    server on Linux, where 3.10-3.13 fork: extract and predict give the same store and predictions,
    and a file that crashes its decoding process is set aside as with fork."""
    import polars as pl

    from tests.test_predict import assert_same_predictions

    source = write_image_folder(tmp_path / "photos", n_per_class=4)["root"]
    script, started = tmp_path / "forkserver_zsfs.py", tmp_path / "fork-server-started"
    script.write_text(FORKSERVER_MAIN)
    (tmp_path / "forkserver_marker.py").write_text(FORKSERVER_MARKER)  # the fork server imports it when it starts

    def by_the_fork_server(*args, **env: str) -> None:
        started.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "ZSFS_TEST_FORK_SERVER": str(started),
                                                "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), **env})
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
        assert started.read_text() == "started\n"  # the decoding processes came from one fork server

    settings = [*TINY_MODEL_ARGS, "--workers", "2", "--shard-size", "6", "--batch-size", "2"]
    by_the_fork_server("extract", source, "--out", tmp_path / "server.h5", *settings)
    assert run_cli("extract", source, "--out", tmp_path / "fork.h5", *settings).exit_code == 0
    assert_same_store(tmp_path / "server.h5", read_store(tmp_path / "fork.h5"))

    assert run_cli("fit", "--store", tmp_path / "fork.h5", "--k", "2", "--out", tmp_path / "run").exit_code == 0
    by_the_fork_server("predict", "--run", tmp_path / "run", source, "--workers", "2",
                       "--out", tmp_path / "server.parquet")
    forked = run_cli("predict", "--run", tmp_path / "run", source, "--workers", "2", "--out", tmp_path / "fork.parquet")
    assert forked.exit_code == 0, forked.output
    assert_same_predictions(pl.read_parquet(tmp_path / "server.parquet"), pl.read_parquet(tmp_path / "fork.parquet"))

    crashing = open_source(source).paths[6]  # the first of the second shard
    by_the_fork_server("extract", source, "--out", tmp_path / "crashed.h5", *settings, **{CRASH_VARIABLE: crashing})
    with Store(tmp_path / "crashed.h5") as store:
        assert dict(zip(*store.skipped()))[crashing] == "crashes the image decoder (killed by SIGSEGV)"
        assert store.n_images == len(read_store(tmp_path / "fork.h5")["path"]) - 1


def _crashing_extract(source: Path, out: Path, workers: int, **crash: str) -> subprocess.CompletedProcess:
    """``zsfs extract`` in a child process whose decoding processes crash for real (SIGSEGV, as a
    codec library's bug does) where ``crash`` says (``zsfs.testing.hooks.hooked_workers``)."""
    args = ["extract", str(source), "--out", str(out), *TINY_MODEL_ARGS, "--workers", str(workers), "--shard-size",
            "6", "--batch-size", "2"]
    script = f"from zsfs.testing.hooks import hooked_workers\nhooked_workers()\nfrom zsfs.cli import main\nmain({args!r})\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **crash})


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_that_crashes_its_decoding_process_is_skipped_and_the_run_goes_on(tmp_path, workers):
    """Bug: a file that crashes the decoder (SIGSEGV) stopped every run at the same place, the
    rerun advice could not help, and removing the file threw away every finished shard. Now it
    is skipped with the reason, and the store is the one of a run where it was unreadable. The
    file is the first of the second shard: batch 3, which the second of 2 decoding processes
    decodes (its slot in the shared note)."""
    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    relative = open_source(source).paths[6]
    crashed = _crashing_extract(source, tmp_path / "s.h5", workers, **{CRASH_VARIABLE: relative})
    assert crashed.returncode == 0 and "Traceback" not in crashed.stderr, crashed.stderr
    said = " ".join(crashed.stderr.split())
    assert f"Note: 1 file crashed the image decoder and was set aside (skipped): {relative}." in said, said
    with Store(tmp_path / "s.h5") as store:
        skipped = dict(zip(*store.skipped()))
    assert skipped[relative] == "crashes the image decoder (killed by SIGSEGV)", said
    rerun = run_cli("extract", source, "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", str(workers),
                    "--shard-size", "6", "--batch-size", "2")  # bug: the note was said again, of the whole store
    assert rerun.exit_code == 0 and "crashed the image decoder" not in output_text(rerun), rerun.output

    (source / relative).write_bytes(b"")  # the same file, unreadable: the reference store
    extract(source, tmp_path / "ref.h5", workers=1, shard_size=6, batch_size=2, **TINY_MODELS)
    mine, theirs = read_store(tmp_path / "s.h5"), read_store(tmp_path / "ref.h5")
    assert theirs["skipped"].pop(relative) == "empty file" and mine["skipped"].pop(relative)
    assert_same_rows(mine, theirs)


def test_a_file_whose_decoding_hangs_is_set_aside_and_the_run_goes_on(tmp_path):
    """A read that never returns (a lost network mount) held the run forever with its progress bar
    still. The decoding process is stopped after ``HUNG_DECODE_SECONDS`` (here 4), the file skipped
    with the reason, and every other image embedded."""
    folder = write_image_folder(tmp_path / "photos", n_per_class=4)
    source, relative = folder["root"], folder["good"][3]
    hung = _crashing_extract(source, tmp_path / "s.h5", 2, **{HANG_VARIABLE: relative, HUNG_SECONDS_VARIABLE: "4"})
    assert hung.returncode == 0 and "Traceback" not in hung.stderr, hung.stderr
    said = " ".join(hung.stderr.split())
    assert f"Note: 1 file hung the image decoder and was set aside (skipped): {relative}." in said, said
    assert "crashed" not in said, said
    with Store(tmp_path / "s.h5") as store:
        skipped = dict(zip(*store.skipped()))
        assert skipped[relative] == "still decoding after 4 s (a hung read or decoder)"
        assert store.n_images == len(folder["good"]) - 1


class _WatchClock:
    """The hang watch's clock, moved by the test alone: its ticks (real waits) between two moves
    count nothing, so a late wake-up of a busy machine changes no count."""

    def __init__(self) -> None:
        self.now = 1e6

    def monotonic(self) -> float:
        return self.now


def _advance_until_hung(clock: _WatchClock, watch, tick: float, most: float) -> float:
    """Move ``clock`` one tick at a time, a real tick apart, until ``watch`` stops a process; the
    clock time that took (``most`` and more: not stopped)."""
    moved = 0.0
    while not watch.hung and moved <= most:
        clock.now += tick
        moved += tick
        time.sleep(tick * 1.5)
    deadline = time.monotonic() + 10
    while not watch.hung and time.monotonic() < deadline:  # the watch's last tick may come late
        time.sleep(0.1)
    return moved


def test_a_paused_run_is_not_taken_for_a_hang(monkeypatch):
    """Bug: the watch compared the clock with when each file began; a run stopped (Ctrl-Z, a
    suspended job) for longer than the limit and continued found every decoding process past it,
    killed them, and set a good file aside for good. Only the time the watch is awake counts."""
    import multiprocessing
    import subprocess

    import zsfs.crashes as crashes

    clock = _WatchClock()
    monkeypatch.setattr(crashes, "time", clock)
    monkeypatch.setattr(crashes, "HUNG_DECODE_SECONDS", 1.0)  # a tick every 0.25 s
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    loader = type("Loader", (), {"_workers": [sleeper]})()
    decoding = multiprocessing.RawArray("q", [3])
    since = multiprocessing.RawArray("d", [clock.now - 1000])  # began long ago, then the run was paused
    try:
        with crashes.HangWatch(loader, decoding, since) as watch:
            time.sleep(1.0)  # ticks while the clock stands still: no time awake
            assert sleeper.poll() is None and watch.hung == {}
            _advance_until_hung(clock, watch, 0.25, 3.0)  # (the guard is the hung == {} above: time asleep)
            sleeper.wait(timeout=10)  # on the same file for 1 s of the watch's own time: stopped
            assert watch.hung == {0: 3} and sleeper.returncode == -signal.SIGKILL
    finally:
        sleeper.kill()


def test_a_pause_while_a_file_decodes_does_not_count_as_decoding_time(monkeypatch):
    """The other half of a pause: the watch itself wakes up long after it went to sleep (the clock
    jumps 1000 s here, as across a SIGSTOP and SIGCONT); at most two of its ticks count."""
    import multiprocessing
    import subprocess

    import zsfs.crashes as crashes

    clock = _WatchClock()
    monkeypatch.setattr(crashes, "time", clock)
    monkeypatch.setattr(crashes, "HUNG_DECODE_SECONDS", 2.0)  # a tick every 0.5 s; at most 1 s counted per wake-up
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    loader = type("Loader", (), {"_workers": [sleeper]})()
    decoding = multiprocessing.RawArray("q", [5])
    since = multiprocessing.RawArray("d", [clock.now])
    try:
        with crashes.HangWatch(loader, decoding, since) as watch:
            clock.now += 0.5  # one tick awake
            time.sleep(1.0)
            clock.now += 1000.0  # the pause: counted as two ticks at most, 1.5 s in all
            time.sleep(1.0)
            assert sleeper.poll() is None and watch.hung == {}
            moved = _advance_until_hung(clock, watch, 0.5, 2.0)  # 2 s on the same file
            sleeper.wait(timeout=10)
            assert watch.hung == {0: 5} and 0.5 <= moved <= 1.0
    finally:
        sleeper.kill()


def test_the_check_that_a_file_crashes_alone_runs_torch_after_the_models_did(tmp_path):
    """Bug: the check forks this process; after the models had run, the child's first parallel
    torch operation (a model's preprocessing) deadlocked, and the check timed out: a file that
    crashes there was not blamed, and every other check cost its whole timeout."""
    import faulthandler
    import os
    import signal

    from zsfs.embedding import DecodedImages, _crashes_alone

    Image.new("RGB", (224, 224)).save(tmp_path / "a.png")

    def crashing_preprocess(image):
        pixels = torch.ones(3, 224, 224).sub_(0.5).div_(0.25)  # what a Normalize does
        faulthandler.disable()  # pytest's, inherited by the fork: no stack dump in a passing run's output
        os.kill(os.getpid(), signal.SIGSEGV)
        return pixels

    torch.ones(512, 512) @ torch.ones(512, 512)  # this process's OpenMP pool has run, as after the models
    images = DecodedImages(open_source(tmp_path), crashing_preprocess)
    assert _crashes_alone(images, 0, timeout=30)


def test_of_two_tar_members_of_one_name_only_the_crashing_one_is_set_aside(tmp_path):
    """Bug: the crashing file was set aside by its path, which a tar's two members of one name
    share: the good one was skipped with it."""
    import io
    import tarfile

    pixels = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(pixels, format="PNG")
    members = [("a.png", pixels.getvalue()), ("a.png", pixels.getvalue() + b"crash-me"), ("b.png", pixels.getvalue())]
    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "00000.tar", "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    crashed = _crashing_extract(tmp_path / "tars", tmp_path / "s.h5", 1, **{CRASH_VARIABLE: "crash-me"})
    assert crashed.returncode == 0, crashed.stderr
    with Store(tmp_path / "s.h5") as store:
        assert list(store.paths()) == ["00000.tar::a.png", "00000.tar::b.png"]
        assert [str(reason) for reason in store.skipped()[1]] == ["crashes the image decoder (killed by SIGSEGV)"]


def test_a_crash_that_no_one_file_causes_stops_the_run_and_blames_no_file(tmp_path):
    """A process that crashes at its third decode, whatever the file (as a heap corrupted
    earlier does): the file it was decoding decodes alone, so it is not set aside; the run stops
    with one line (bug: a crash was put down to the out-of-memory killer)."""
    source = write_image_folder(tmp_path / "photos", n_per_class=2)["root"]
    crashed = _crashing_extract(source, tmp_path / "s.h5", 1, **{CRASH_AT_VARIABLE: "3"})
    said = " ".join(crashed.stderr.split())
    assert crashed.returncode == 1 and "Traceback" not in crashed.stderr, crashed.stderr
    assert re.search(r"Error: a decoding process \(pid \d+\) crashed \(killed by SIGSEGV\), and no file it was "
                     r"decoding crashes a process of its own\. No shard was finished \(each holds 6 files: "
                     r"--shard-size 6\): a rerun embeds the 10 files from the start\.$", said) and "memory" not in said, said


def test_at_most_ten_files_are_set_aside_for_crashing_the_decoder_and_each_once():
    from zsfs.crashes import (CRASHING_FILE, MAX_CRASHING_FILES, DecodingProcessDied, crash_advice,
                              set_aside_crashing_file)

    def crash(index):
        return DecodingProcessDied("crashed", crashed=True, how="killed by SIGSEGV", crashing_index=index)

    set_aside: dict[int, str] = {}
    assert not set_aside_crashing_file(set_aside, crash(None))  # between files: nobody to blame
    for index in range(MAX_CRASHING_FILES):
        assert crash_advice(set_aside) == "" and set_aside_crashing_file(set_aside, crash(index))
        assert not set_aside_crashing_file(set_aside, crash(index))  # crashed again without it: not its fault alone
    assert set_aside[3] == f"{CRASHING_FILE} (killed by SIGSEGV)"
    assert not set_aside_crashing_file(set_aside, crash(MAX_CRASHING_FILES))  # the eleventh: the run stops
    assert len(set_aside) == MAX_CRASHING_FILES == 10 and "10 files crashed or hung" in crash_advice(set_aside)


def test_a_writer_killed_with_kill_9_leaves_its_store_unlocked_whatever_its_decoding_processes_do(tmp_path):
    """Bug: decoding processes, forked after the writer took the store's lock, held it too: kill -9
    of the writer (the out-of-memory killer picks the big process) left the store locked while one
    lived, for ever when one was stuck on a read from a lost mount; every rerun was refused."""
    from zsfs.store.locks import acquire_lock, lock_path, release_lock

    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    out = tmp_path / "s.h5"
    process = subprocess.Popen([sys.executable, "-c", _kill_script(source, out, 600, workers=2)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    decoding: list[int] = []
    try:
        deadline = time.monotonic() + 120  # until both decoding processes sit in a (600 s) read
        while len(decoding) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            decoding = children(process.pid) if lock_path(out).exists() else []
        assert len(decoding) == 2, decoding
        time.sleep(1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert all(Path(f"/proc/{pid}").exists() for pid in decoding)  # still reading, orphaned
        release_lock(acquire_lock(out))  # free at once: bug, "another zsfs process is writing"
    finally:
        for pid in decoding:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    source = write_image_folder(tmp_path / "photos", n_per_class=8)["root"]
    killed = tmp_path / "killed.h5"
    shards = tmp_path / "killed.shards"
    process = subprocess.Popen([sys.executable, "-c", _kill_script(source, killed, 0.05)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (shards / "shard-00001.h5").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # a few images into the next shard
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in shards.glob("shard-*.h5")}
    assert 2 <= len(finished) < 5 and not killed.exists()  # 28 files / 6 per shard = 5 shards

    # Bug: a changed folder was refused only once both models had loaded (minutes with ViT-G):
    # with no master yet, the early check read nothing. The missing weights are not reached now.
    added = source / "red" / "added.png"
    Image.new("RGB", (16, 16)).save(added)
    unloadable = [arg for arg in TINY_MODEL_ARGS if not arg.startswith("--backbone-weights")]
    refused = run_cli("extract", source, "--out", killed, *unloadable, "--backbone-weights", tmp_path / "absent.pt",
                      "--workers", "1", "--shard-size", "6", "--batch-size", "2")
    said = " ".join(output_text(refused).split())
    assert refused.exit_code == 1 and f"{shards} was built from another source, other models or other settings " \
        "(differs in listing_sha256, n_items; the source lists 29 files now, 28 when the store was built; files " \
        "cannot be added to a store: --overwrite embeds every file again, and zsfs predict labels new images with a " \
        "fitted run)" in said, said
    added.unlink()

    result = run_cli("extract", source, "--out", killed, *TINY_MODEL_ARGS, "--workers", "1", "--shard-size", "6",
                     "--batch-size", "2")
    assert result.exit_code == 0, result.output
    for name, stamp in finished.items():  # kept, not recomputed
        path = shards / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    assert f"{5 - len(finished)} / {len(finished)}" in result.output  # shards written / reused

    uninterrupted = extract(source, tmp_path / "clean.h5", workers=0, shard_size=6, batch_size=2, **TINY_MODELS)
    assert uninterrupted.shards_written == 5
    assert_same_store(killed, read_store(tmp_path / "clean.h5"))


def test_refuses_other_models_or_source_unless_overwrite(photos, tmp_path):
    out = tmp_path / "s.h5"
    assert run_cli("extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    other_clip = tmp_path / "other-clip.json"
    config = json.loads(Path(TINY_CLIP_CONFIG).read_text())
    config["embed_dim"] = 16
    other_clip.write_text(json.dumps(config))
    other = [*TINY_MODEL_ARGS, f"--clip-model={other_clip}"]  # the last occurrence wins

    refused = run_cli("extract", photos["root"], "--out", out, *other, "--workers", "0")
    assert refused.exit_code == 1
    assert "--overwrite" in refused.output and "clip" in refused.output
    assert read_store(out)["clip"].shape[1] == 32  # untouched

    other_source = write_image_folder(tmp_path / "other", n_per_class=2, broken=False)["root"]
    refused = run_cli("extract", other_source, "--out", out, *TINY_MODEL_ARGS, "--workers", "0")
    assert refused.exit_code == 1 and "source" in refused.output
    # the default output is named after the source, so photos.txt and photos.csv meet at photos.h5
    assert f"it was built from {photos['root']}, this run reads {other_source}" in output_text(refused)
    # Bug: with other class subfolders it was refused for its classes, with a hint (zsfs text ...
    # --overwrite) that would have replaced the unrelated store's vocabulary.
    other_classes = write_image_folder(tmp_path / "pets", n_per_class=2, classes=("cat", "dog"), broken=False)["root"]
    refused = run_cli("extract", other_classes, "--out", out, *TINY_MODEL_ARGS, "--workers", "0")
    assert refused.exit_code == 1 and "zsfs text" not in refused.output
    assert f"it was built from {photos['root']}, this run reads {other_classes}" in output_text(refused)

    # The same folder with a class renamed: refused for its listing, before any model loads (the
    # unknown model would be the error otherwise), not for its classes with a hint to replace them.
    renamed = tmp_path / "renamed"
    shutil.copytree(photos["root"], renamed)
    out_renamed = tmp_path / "renamed.h5"
    assert run_cli("extract", renamed, "--out", out_renamed, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    first_class = sorted(p for p in renamed.iterdir() if p.is_dir())[0]
    first_class.rename(renamed / "zebra")
    refused = run_cli("extract", renamed, "--out", out_renamed, "--clip-model", "no-such-clip", "--workers", "0")
    said = output_text(refused)
    assert refused.exit_code == 1 and "the source's file names or labels changed" in said, said
    assert "zsfs text" not in said and "no-such-clip" not in said

    replaced = run_cli("extract", photos["root"], "--out", out, *other, "--workers", "0", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert read_store(out)["clip"].shape[1] == 16


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: [tmp / "missing"], "does not exist"),
        (lambda tmp: [(tmp / "empty").mkdir() or tmp / "empty"], "no images found"),
        (lambda tmp: ["SRC", "--clip-model", "no-such-clip", "--clip-weights", "random"], "no-such-clip"),
        (lambda tmp: ["SRC", *TINY_MODEL_ARGS[:2], "--backbone", "no_such_backbone", "--backbone-weights", "random"],
         "no_such_backbone"),
        (lambda tmp: ["SRC", *TINY_MODEL_ARGS[:1], "--clip-weights", tmp / "gone.pt", *TINY_MODEL_ARGS[2:]], "gone.pt"),
        (lambda tmp: ["SRC", *TINY_MODEL_ARGS[:3], "--backbone-weights", tmp / "gone.safetensors"], "gone.safetensors"),
        (lambda tmp: ["SRC", *TINY_MODEL_ARGS, "--device", "cuda"], "cuda"),
    ],
    ids=["missing-source", "no-images", "unknown-clip", "unknown-backbone", "missing-clip-file",
         "missing-backbone-file", "cuda-absent"],
)
def test_clear_errors(photos, tmp_path, make_args, message):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the error only exists where CUDA is absent
    args = [photos["root"] if arg == "SRC" else arg for arg in make_args(tmp_path)]
    result = run_cli("extract", *args, "--out", tmp_path / "s.h5", "--workers", "0")
    assert result.exit_code == (2 if message == "cuda" else 1)  # an option the machine cannot serve: a usage error
    assert "Error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s.h5").exists()
    assert not (tmp_path / ".s.h5.lock").exists()  # bug: a model that failed to load left the lock file


def test_weights_files_give_the_in_memory_models_embeddings(photos, tmp_path):
    clip = load_clip(str(TINY_CLIP_CONFIG), "random")
    backbone = load_backbone(TINY_BACKBONE, "random")
    with torch.no_grad():  # make sure the files hold other weights than the default random init
        for parameter in [*clip.model.parameters(), *backbone.model.parameters()]:
            parameter.add_(0.01 * torch.randn_like(parameter))
    clip_file, backbone_file = tmp_path / "clip.pt", tmp_path / "backbone.pth"
    torch.save(clip.model.state_dict(), clip_file)
    torch.save(backbone.model.state_dict(), backbone_file)

    out = tmp_path / "s.h5"
    result = run_cli("extract", photos["root"], "--out", out, "--clip-model", TINY_CLIP_CONFIG,
                     "--clip-weights", clip_file, "--backbone", TINY_BACKBONE, "--backbone-weights", backbone_file,
                     "--workers", "0", "--dtype", "float32")
    assert result.exit_code == 0, result.output

    first = photos["good"][:4]
    images = [decode_image(photos["root"] / path) for path in first]
    with torch.inference_mode():
        expected_clip = clip.encode_images(torch.stack([clip.preprocess(im) for im in images])).numpy()
        expected_backbone = backbone.encode_images(torch.stack([backbone.preprocess(im) for im in images])).numpy()
    stored = read_store(out)
    np.testing.assert_allclose(stored["clip"][:4], expected_clip, atol=1e-5)
    np.testing.assert_allclose(stored["backbone"][:4], expected_backbone, atol=1e-5)
    with Store(out) as store:
        for info, file in ((store.clip_info, clip_file), (store.backbone_info, backbone_file)):
            assert info["file"] == os.path.abspath(file)  # as given: a linked folder on its way is kept
            assert info["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


def test_progress_in_a_log_is_lines_while_the_work_runs_and_the_rate_of_the_images(photos, tmp_path, monkeypatch):
    """Review: with stderr in a file (nohup, Slurm), extract printed nothing while it ran, then one
    bar at the end with the last batch's rate ("100/100 27,804.6 img/s")."""
    import zsfs.cli.console as console

    monkeypatch.setattr(console, "LOG_SECONDS", 0.0)  # a line after every batch
    result = run_cli("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                     "--batch-size", "4")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("embedding:")]
    n = len(photos["good"]) + len(photos["bad"])  # every listed file is decoded, or found not to decode
    assert lines[0] == f"embedding: {n} img to do" and "━" not in result.output  # no bar drawn into the log
    # new user: the scan and the models' loading (half a minute for ViT-G) left the log empty
    said = result.output.splitlines()
    assert said.index("Scanning the source and loading the models...") < said.index(lines[0])
    done = [int(re.match(r"embedding: (\d+) of ", line).group(1)) for line in lines[1:]]
    assert done == sorted(done) and len(done) >= 3 and done[-1] == n and all(d < n for d in done[:-1])
    assert re.fullmatch(rf"embedding: {n} of {n} img \(100 %\) in \d+:\d\d:\d\d, [\d,.]+ img/s", lines[-1])
    assert all(re.search(r", \d+:\d\d:\d\d left$", line) for line in lines[1:-1])


def test_a_precision_no_cpu_model_uses_is_named_so(photos, tmp_path):
    """Review: `--precision bf16` on CPU was ignored without a word (the help says so, the run did not)."""
    args = ("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0")
    said = output_text(run_cli(*args, "--precision", "bf16"))
    assert "Note: --precision bf16 is an autocast on CUDA; on cpu the models compute in fp32." in said, said
    assert "--precision" not in output_text(run_cli(*args))  # fp32: nothing to say (and nothing to redo)


def test_disk_full_is_a_clear_error_and_resumable(photos, tmp_path):
    """A real write failure in this process (a file-size limit below a shard's size, as a full disk
    fails it): one line, no half-written file, and a rerun writes the store."""
    from zsfs.testing.failures import file_size_limit_here

    out = tmp_path / "s.h5"
    extract = ("extract", photos["root"], "--out", out, *TINY_MODEL_ARGS, "--workers", "0", "--shard-size", "8")
    # In this process, for the autograd check below (a child's limit is run_zsfs', test_store_safety):
    # the limit holds for every file written meanwhile, the CLI runner's output being held in memory.
    with file_size_limit_here(2_000):
        full = run_cli(*extract)
    assert full.exit_code == 1 and "disk is full (or a file-size limit was reached)" in full.output
    assert "Traceback" not in full.output
    assert list((tmp_path / "s.shards").iterdir()) == []  # no half-written files
    # Regression: the embedding generator once held inference mode across its yields, so a run
    # that stopped early left autograd off for the rest of the process (fit training then failed).
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()

    resumed = run_cli(*extract)
    assert resumed.exit_code == 0 and "3 / 0" in resumed.output  # 19 files / 8 = 3 shards: written / reused


def test_class_folders_that_print_alike_are_refused_before_the_models_load(tmp_path, monkeypatch):
    """Bug: folders 'cat' and 'cat' + U+200B were embedded in full, then the vocabulary was refused."""
    from zsfs import extract as extract_module

    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("cat", "cat\u200b", "dog"))
    monkeypatch.setattr(extract_module, "_embedder", None)  # reaching the models would fail with a TypeError
    result = run_cli("extract", folder["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert result.exit_code == 1 and output_text(result).startswith(
        f"Error: the class folders of {folder['root']} lists 1 name more than once: 'cat' = 'cat\\u200b'")
    assert "rename the folders, or name the classes with --classes FILE" in output_text(result)
    assert not (tmp_path / "s.h5").exists()


def test_given_classes_with_an_invisible_character_are_refused_before_the_models_load(tmp_path, monkeypatch):
    """Bug: a classes list holding 'hot' + tab + 'dog' was embedded as written, text that differs
    unseen from what is shown; a class file refused it. (Class folders keep their names as given.)"""
    from zsfs import extract as extract_module

    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("cat", "dog"))
    monkeypatch.setattr(extract_module, "_embedder", None)  # reaching the models would fail with a TypeError
    with pytest.raises(ParameterError, match=r"^the classes given has an invisible or control character in the name "
                                        r"'hot\\x09dog' \(and 1 other name\)"):
        extract_module.extract(folder["root"], tmp_path / "s.h5", classes=["cat", "hot\tdog", "a\x1b[31m"],
                               **TINY_MODELS)
    assert not (tmp_path / "s.h5").exists()


def test_images_in_formats_zsfs_cannot_read_are_counted_not_left_out_unsaid(tmp_path):
    """Bug: a phone's .heic photos (or camera raw files) beside JPEGs were left out of the store
    with nothing said ("skipped 0"); a folder of only such files said only "no images found"."""
    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("cat", "dog"), broken=False)
    for name in ("cat/IMG_0001.HEIC", "cat/IMG_0002.heic", "dog/raw.dng", "dog/.hidden.heic", "dog/notes.txt"):
        (folder["root"] / name).write_bytes(b"not decoded")
    (folder["root"] / "dog" / "slide.svs").write_bytes(b"II*\0")  # walkthrough: a whole-slide image, unsaid
    # and medical volumes; and FITS, which Pillow reads wrongly (a negative 16-bit value wraps to a bright one)
    for name in ("dog/brain.nii", "dog/BRAIN.NII.GZ", "dog/scan.nhdr", "dog/m31.fits"):
        (folder["root"] / name).write_bytes(b"not decoded")
    assert open_source(folder["root"]).unread_formats == {".dng": 1, ".fits": 1, ".heic": 2, ".nhdr": 1, ".nii": 1,
                                                          ".nii.gz": 1, ".svs": 1}
    for name in ("dog/slide.svs", "dog/brain.nii", "dog/BRAIN.NII.GZ", "dog/scan.nhdr", "dog/m31.fits"):
        (folder["root"] / name).unlink()
    result = run_cli("extract", folder["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "images not read 1 .dng and 2 .heic files, formats zsfs cannot read: convert them (to JPEG or PNG) " \
        "to include them" in " ".join(output_text(result).replace("│", " ").split()), result.output
    only = tmp_path / "phone"
    only.mkdir()
    (only / "IMG_0001.heic").write_bytes(b"not decoded")
    with pytest.raises(ZsfsError, match=r"no images found in .*phone \(looked recursively for .*\); it holds 1 "
                                        r"\.heic file, a format zsfs cannot read: convert it \(to JPEG or PNG\) to include it"):
        open_source(only)
    # walkthrough: a folder of DICOM slices said "no images found" and nothing of them; one named alone
    # (predict, a list) was "not an image (unidentified format)"
    scans = tmp_path / "scans"
    scans.mkdir()
    dicom = scans / "slice.dcm"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(ZsfsError, match=r"it holds 1 \.dcm file, a format zsfs cannot read"):
        open_source(scans)
    with pytest.raises(ImageDecodeError, match=r"a \.dcm file, a format zsfs cannot read: convert it \(to JPEG or "
                                               r"PNG\)$"):
        decode_image(dicom)


def test_a_source_of_only_broken_files_is_an_error(tmp_path):
    """Bug: every file skipped gave an empty store that made `zsfs fit` crash later."""
    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("only",))
    for relative in folder["good"]:
        (folder["root"] / relative).write_bytes(b"")  # every image now an empty file
    result = run_cli("extract", folder["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert result.exit_code == 1
    assert "none of the" in result.output and "could be decoded" in result.output and "empty file" in result.output
    # Bug: fit advised adding a vocabulary first, then pointed at `zsfs info`, which lists no skipped file
    for command, needs in ((("fit", "--store"), "a fit"), (("neighbours",), "a neighbour graph"),
                           (("ood-bench", "--id-classes", "1", "--store"), "the OOD benchmark")):
        refused = run_cli(*command, tmp_path / "s.h5")
        assert refused.exit_code == 1 and (f"holds 0 embedded images; {needs} needs at least 2 (5 files skipped: "
                                           f"`zsfs info --skipped {tmp_path / 's.h5'}` lists them and why)") in \
            output_text(refused)


def test_an_image_the_models_give_non_finite_features_is_skipped_with_the_reason(tmp_path):
    """A NaN row (an fp16 overflow on a GPU) was written as it came, and every fit of the store
    then failed or scored every image NaN: it is recorded as skipped, and a shard written
    through the store's own writer refuses one."""
    from types import SimpleNamespace

    from zsfs.embedding import Batch
    from zsfs.shard_embedder import NO_FEATURES, _ShardRows
    from zsfs.store.writer import ShardData, StoreWriter

    rows = _ShardRows(5, 4, 3, np.float16)
    clip, backbone = np.eye(4, dtype=np.float32)[:4], np.ones((4, 3), np.float32) / np.sqrt(3)
    backbone[1, 2], clip[2] = np.nan, 0.0  # row 1 NaN, row 2 all zero
    clip[3, 0] = np.inf
    rows.add(Batch(np.array([0, 1, 2, 3]), (), np.full(4, 8), np.full(4, 9), [(4, "not an image")]), (clip, backbone))
    data = rows.shard_data(SimpleNamespace(paths=["a.png", "b.png", "c.png", "d.png", "e.txt"], labels=None))
    assert list(data.paths) == ["a.png"] and data.clip.tolist() == [[1, 0, 0, 0]]
    assert data.width.tolist() == [8] and data.height.tolist() == [9]
    assert list(data.skipped_paths) == ["b.png", "c.png", "d.png", "e.txt"]
    assert list(data.skipped_reasons) == [NO_FEATURES] * 3 + ["not an image"]
    # the store's writer refuses such rows as it would store them: float16 overflows above 65504
    writer = StoreWriter(tmp_path / "s.h5", identity={"source": "test"}, n_items=2, shard_size=2, dtype="float16")
    try:
        for bad, message in ((backbone[:2], r"backbone row 1 \('b.png'\) is NaN, infinite or all zero as float16"),
                             (np.array([[1e5, 0, 0], [0, 1, 0]], np.float32), r"backbone row 0 \('a.png'\)")):
            with pytest.raises(ValueError, match=message):
                writer.write_shard(0, ShardData(clip=np.eye(4, dtype=np.float32)[:2], backbone=bad,
                                                paths=["a.png", "b.png"], width=np.ones(2), height=np.ones(2)))
        assert not writer.shard_path(0).exists()
    finally:
        writer.close()


def test_decoding_workers_and_model_threads_share_the_cores_as_the_help_says():
    """--workers' default: every core with a GPU; on CPU a quarter of the cores (at least 1), at a
    lower priority, and the models get every core (measured: the one core the worker used to
    leave them halved ViT-B/32's rate on an idle 2-core machine); the caller's thread count comes
    back afterwards."""
    from zsfs.embedding import available_cores, default_worker_niceness, default_workers, model_threads

    assert [default_workers("cpu", cores) for cores in (1, 3, 4, 9, 64)] == [1, 1, 1, 2, 16]
    assert default_workers("cuda", 12) == default_workers("mps", 12) == 12
    assert default_worker_niceness("cpu") > 0 and default_worker_niceness("cuda") == 0
    before = torch.get_num_threads()
    with model_threads(torch.device("cpu"), cores=before + 3):  # a Ray worker's share of the cores
        assert torch.get_num_threads() == before + 3
    assert torch.get_num_threads() == before
    with model_threads(torch.device("cpu")):
        assert torch.get_num_threads() == available_cores()
    assert torch.get_num_threads() == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to tell one thread from every core")
def test_omp_num_threads_sets_the_model_threads_of_extract_and_predict(tmp_path):
    """Bug: extract and predict gave the models every core whatever OMP_NUM_THREADS said, where fit
    and torch take it: a shared machine was oversubscribed (bench_memory.py --threads 1 measured
    extract at every core), and a run could not be held to one thread to repeat the bytes of
    another (a stored value moves by a float16 step with the thread count, docs/scale.md)."""
    photos = write_image_folder(tmp_path / "photos", n_per_class=2, broken=False)["root"]
    script = textwrap.dedent("""
        import sys, torch, zsfs
        from zsfs.testing.models import TINY_MODELS
        seen = []
        record = lambda n: seen.append(torch.get_num_threads())
        zsfs.extract(sys.argv[1], sys.argv[2] + "/s.h5", workers=0, on_batch=record, **TINY_MODELS)
        run = zsfs.fit(sys.argv[2] + "/s.h5", k=1, candidates=2)
        run.predict_images([sys.argv[1]], workers=0, on_batch=record)
        print(sorted(set(seen)))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(photos), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[1]"]


def test_overwrite_replaces_a_store_of_another_source_or_other_classes(tmp_path):
    """--overwrite is the way out that both refusals name (another listing, other classes): it must
    rebuild the store, not refuse in its turn; and it recomputes every shard."""
    first = write_image_folder(tmp_path / "a", n_per_class=2, broken=False)["root"]
    second = write_image_folder(tmp_path / "b", n_per_class=3, classes=("cat", "dog"), broken=False)
    out = tmp_path / "s.h5"
    extract(first, out, workers=0, shard_size=4, **TINY_MODELS)
    replaced = extract(second["root"], out, workers=0, shard_size=4, overwrite=True, **TINY_MODELS)
    assert (replaced.shards_written, replaced.shards_reused) == (2, 0)
    stored = read_store(out)
    assert stored["path"] == second["good"] and stored["label"] == [second["labels"][path] for path in second["good"]]
    with Store(out) as store:
        assert store.vocabulary("default").classes == ["cat", "dog"]
    renamed = extract(second["root"], out, workers=0, shard_size=4, classes=[" kitten ", "puppy\n"], overwrite=True,
                      **TINY_MODELS)
    assert renamed.vocabulary == "default" and renamed.classes == ["kitten", "puppy"]
    with Store(out) as store:
        assert store.vocabulary("default").classes == ["kitten", "puppy"]


def test_a_resume_reports_and_counts_only_the_shards_it_computes(tmp_path):
    """images_processed covers every listing entry decoded (embedded or skipped), as images/s reads
    it; a resume's progress bar (on_start) and counts cover only the shards still to compute."""
    made = write_image_folder(tmp_path / "photos", n_per_class=2)
    n_listed = len(made["good"]) + len(made["bad"])
    out = tmp_path / "s.h5"
    summary = extract(made["root"], out, workers=0, shard_size=4, **TINY_MODELS)
    assert summary.images_processed == n_listed == summary.n_images + summary.n_skipped
    expected = read_store(out)
    (tmp_path / "s.shards" / "shard-00001.h5").unlink()
    ticks = []
    again = extract(made["root"], out, workers=0, shard_size=4, on_start=lambda n: ticks.append(("start", n)),
                    on_batch=ticks.append, on_resume=lambda *kept: ticks.append(("resume", *kept)), **TINY_MODELS)
    n_shards = -(-n_listed // 4)
    assert ticks[:2] == [("resume", n_shards - 1, n_shards), ("start", 4)] and sum(ticks[2:]) == 4
    assert (again.shards_written, again.shards_reused, again.images_processed) == (1, n_shards - 1, 4)
    assert_same_store(out, expected)  # the shard recomputed is the one removed
    (tmp_path / "s.shards" / "shard-00002.h5").unlink()
    said = output_text(run_cli("extract", made["root"], "--out", out, *TINY_MODEL_ARGS, "--workers", "0",
                               "--shard-size", "4"))
    # new user: a resume said nothing of it until the summary's "shards written / reused"
    assert f"Resuming: {n_shards - 1} of the {n_shards} shards were finished by an earlier run and are kept; 1 " \
           "shard is embedded now." in said, said
    for shard in sorted((tmp_path / "s.shards").glob("shard-*.h5"))[1:]:
        shard.unlink()
    said = output_text(run_cli("extract", made["root"], "--out", out, *TINY_MODEL_ARGS, "--workers", "0",
                               "--shard-size", "4"))
    assert f"Resuming: 1 of the {n_shards} shards was finished by an earlier run and is kept; {n_shards - 1} shards " \
           "are embedded now." in said, said  # review: "1 of the 3 shards were ... are kept"
    ticks.clear()
    extract(made["root"], out, workers=0, shard_size=4, on_resume=ticks.append, **TINY_MODELS)  # a finished store
    extract(made["root"], tmp_path / "t.h5", workers=0, shard_size=4, on_resume=ticks.append, **TINY_MODELS)  # a first run
    assert ticks == []


def test_skipped_files_are_recorded_in_listing_order_whatever_made_them_skipped():
    """A file the models gave NaN features and one that could not be decoded, in one batch: the
    shard's skipped record follows the listing (what `zsfs info --skipped` prints), not the order
    the two kinds of failure were found in."""
    from types import SimpleNamespace

    from zsfs.embedding import Batch
    from zsfs.shard_embedder import NO_FEATURES, _ShardRows

    rows = _ShardRows(4, 2, 2, np.float32)
    clip = np.array([[1, 0], [np.nan, 0], [0, 1]], np.float32)
    rows.add(Batch(np.array([1, 2, 3]), (), np.full(3, 8), np.full(3, 9), [(0, "not an image")]), (clip, clip.copy()))
    data = rows.shard_data(SimpleNamespace(paths=["a.txt", "b.png", "c.png", "d.png"], labels=["x", "y", "z", "w"]))
    assert list(data.paths) == ["b.png", "d.png"] and list(data.labels) == ["y", "w"]
    assert list(data.skipped_paths) == ["a.txt", "c.png"]
    assert list(data.skipped_reasons) == ["not an image", NO_FEATURES]


def test_a_store_named_by_another_path_of_an_input_is_refused(tmp_path, monkeypatch):
    """The store may not be an input file by any name: the check compares files, not the strings
    given (a link to the list file, or the list file named relative to the current folder)."""
    from zsfs.errors import ZsfsError

    made = write_image_folder(tmp_path / "photos", n_per_class=1, broken=False)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{made['root'] / path}\n" for path in made["good"]))
    text = listing.read_text()
    (tmp_path / "link.h5").symlink_to(listing)
    monkeypatch.chdir(tmp_path)
    for source, out in ((listing, tmp_path / "link.h5"), ("list.txt", listing)):
        with pytest.raises(ZsfsError, match="is the image source this command reads, not a place for the store"):
            extract(source, out, workers=0, **TINY_MODELS)
    assert listing.read_text() == text


def test_the_default_store_is_named_after_the_source_without_its_suffix(tmp_path, monkeypatch):
    """photos/ -> ./photos.h5, list.csv -> ./list.h5, 00001.tar -> ./00001.h5 (as default_output says)."""
    from zsfs.extract import default_output

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for name in ("list.csv", "00001.tar"):
        (tmp_path / "in" / name).write_text("")
    (tmp_path / "in" / "photos.v2").mkdir()
    assert [default_output(tmp_path / "in" / name) for name in ("list.csv", "00001.tar", "photos.v2")] == \
        [tmp_path / "list.h5", tmp_path / "00001.h5", tmp_path / "photos.v2.h5"]


def test_a_store_of_pretrained_weights_resumes_when_older_and_refuses_other_values_under_the_name(
        tmp_path, monkeypatch, offline):
    """Pretrained weights are fingerprinted since 2026-12-03. A store built before (its records
    have no fingerprint) still resumes; a newer one refuses a cache that holds other weights."""
    import huggingface_hub.constants as hub
    import timm

    from zsfs.store.hdf5 import canonical_json
    from zsfs.store.schema import ATTR_BACKBONE, ATTR_IDENTITY
    from zsfs.testing.models import cache_default_backbone_weights

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with torch.random.fork_rng():
        torch.manual_seed(5)
        state = timm.create_model(TINY_BACKBONE).state_dict()
    cache_default_backbone_weights(tmp_path / "cache", state)
    source = write_image_folder(tmp_path / "photos", n_per_class=2)["root"]
    out = tmp_path / "s.h5"
    args = ("extract", source, "--out", out, f"--clip-model={TINY_CLIP_CONFIG}", "--clip-weights=random",
            f"--backbone={TINY_BACKBONE}", "--backbone-weights=default", "--workers", "0", "--shard-size", "4")
    assert run_cli(*args).exit_code == 0
    for path in [out, *sorted((tmp_path / "s.shards").glob("*.h5"))]:  # as an earlier zsfs wrote them
        with h5py.File(path, "r+") as file:
            identity = json.loads(file.attrs[ATTR_IDENTITY])
            del identity["backbone"]["weights_fingerprint"]
            file.attrs[ATTR_IDENTITY] = canonical_json(identity)
            if ATTR_BACKBONE in file.attrs:  # the master's model record
                record = json.loads(file.attrs[ATTR_BACKBONE])
                del record["weights_fingerprint"]
                file.attrs[ATTR_BACKBONE] = json.dumps(record)
    (tmp_path / "s.shards" / "shard-00001.h5").unlink()  # a shard to embed again on the rerun
    older = run_cli(*args)
    assert older.exit_code == 0, older.output  # bug: "differs in backbone" (every old tag-built store)
    with Store(out) as store:  # no claim on the values its first shards were embedded with
        assert "weights_fingerprint" not in store.backbone_info
    assert run_cli(*args, "--overwrite").exit_code == 0  # a store of this zsfs: fingerprinted
    cache_default_backbone_weights(tmp_path / "cache", {key: value + 0.01 for key, value in state.items()})
    assert run_cli(*args).exit_code == 0  # a finished store: nothing to embed, no model loaded
    (tmp_path / "s.shards" / "shard-00001.h5").unlink()  # a shard to embed again: with other values, refused
    refused = run_cli(*args)
    assert refused.exit_code == 1 and "its backbone weights test_vit / default had other values (the cache holds " \
        "other weights under that name now)" in " ".join(output_text(refused).split()), refused.output


def test_a_rerun_on_a_finished_store_needs_no_model(tmp_path, monkeypatch, offline):
    """Bug: a rerun on a finished store loaded both models (minutes for ViT-G, a download the
    machine may not reach) to find nothing to do. Here the pretrained weights are gone from the
    cache, as on an air-gapped machine the store was copied to: only work to do needs them."""
    import huggingface_hub.constants as hub
    import timm

    from zsfs.testing.models import cache_default_backbone_weights

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    cache_default_backbone_weights(tmp_path / "cache", timm.create_model(TINY_BACKBONE).state_dict())
    source = write_image_folder(tmp_path / "photos", n_per_class=2)["root"]
    out = tmp_path / "s.h5"
    args = ("extract", source, "--out", out, f"--clip-model={TINY_CLIP_CONFIG}", "--clip-weights=random",
            f"--backbone={TINY_BACKBONE}", "--backbone-weights=default", "--workers", "0", "--shard-size", "4")
    assert run_cli(*args).exit_code == 0
    built = out.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "cache")
    again = run_cli(*args)
    said = output_text(again)
    assert again.exit_code == 0 and "0 / 3" in said and "default" in said, said  # shards written / reused; the vocabulary
    assert out.stat().st_mtime_ns == built  # the master was kept as it was
    named = run_cli(*args, "--vocab-name", "again")  # a vocabulary to embed: CLIP (random, no download) loads
    assert named.exit_code == 0, output_text(named)
    with Store(out) as store:
        assert store.vocabulary_names() == ["again", "default"]
    other = run_cli(*args[:-4], "--backbone-weights=random", "--workers", "0", "--shard-size", "4")
    assert other.exit_code == 1 and "--overwrite" in output_text(other)  # other models: still refused
    (tmp_path / "s.shards" / "shard-00001.h5").unlink()
    repair = run_cli(*args)  # images to embed: the backbone's weights are needed, and said to be missing
    said = " ".join(output_text(repair).split())
    assert repair.exit_code == 1 and "could not download the backbone weights of test_vit" in said
    # bug (new user): it said "Or pass a local file", which the rerun then refused after loading both models
    assert f"{out} was started with them by name, so zsfs loads them by that name only" in said, said
    assert "--backbone-weights" not in said
    from safetensors.torch import save_file

    file = tmp_path / "test_vit.safetensors"
    save_file(timm.create_model(TINY_BACKBONE).state_dict(), str(file))
    with_file = run_cli(*args[:-4], f"--backbone-weights={file}", "--workers", "0", "--shard-size", "4")
    said = " ".join(output_text(with_file).split())
    assert with_file.exit_code == 1 and (
        "s.h5 was built with the backbone weights test_vit / default, loaded by that name, and this run passes a file "
        "(--backbone-weights): a store built so reloads them by name only, even where a file holds the same values; "
        "drop --backbone-weights, or pass --overwrite to replace the store.") in said, said
    assert not (tmp_path / "s.shards" / "shard-00001.h5").exists()


def test_a_rerun_on_a_finished_store_refuses_what_a_first_run_refuses(tmp_path, monkeypatch):
    """The rerun that loads no model still refuses class names CLIP reads as one when they are given
    (bug in review: the folder names Cat/ and cat/, only reported, then given with --classes, passed),
    and random weights that this installation initialises otherwise (as another torch would)."""
    for name in ("Cat", "cat"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        Image.new("RGB", (16, 16), (200, 30, 30) if name == "Cat" else (30, 30, 200)).save(
            tmp_path / "photos" / name / "a.png")
    out = tmp_path / "s.h5"
    args = ("extract", tmp_path / "photos", "--out", out, *TINY_MODEL_ARGS, "--workers", "0")
    first = run_cli(*args)
    assert first.exit_code == 0 and "'Cat' = 'cat'" in output_text(first), output_text(first)
    assert run_cli(*args).exit_code == 0  # the folder names: reported again, as the first run did
    classes = tmp_path / "classes.txt"
    classes.write_text("Cat\ncat\n")
    given = run_cli(*args, "--classes", classes)
    assert given.exit_code == 1 and "CLIP reads 1 pair of class names as the same tokens" in output_text(given)
    import zsfs.models.backbone
    import zsfs.models.clip

    for loader in (zsfs.models.clip, zsfs.models.backbone):
        monkeypatch.setattr(loader, "init_fingerprint", lambda model: "initialised otherwise")
    other = run_cli(*args)
    assert other.exit_code == 1 and "--overwrite" in output_text(other), output_text(other)


def test_a_decoding_process_whose_reader_left_mid_hand_over_prints_no_traceback():
    """Bug (seen on a busy machine): SIGTERM to extract during a batch's hand-over printed
    multiprocessing's resource-sharer traceback (BrokenPipeError, ConnectionResetError) from the
    decoding process under the "Terminated" line. Here a real sharer thread, in a process set up
    as a decoding process is, meets a peer that connects and resets the connection. (The event is set
    after the hook returns: set first, the main thread could exit mid-traceback, as it once did in CI.)"""
    script = textwrap.dedent("""
        import os, socket, struct, sys, threading
        from multiprocessing import resource_sharer
        from zsfs.embedding import _start_worker
        if sys.argv[1] == "worker":
            _start_worker(0, 0)
        reported, hook = threading.Event(), sys.excepthook  # the sharer thread reports through sys.excepthook
        sys.excepthook = lambda *error: (hook(*error), reported.set())  # set once printed in full
        resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))  # starts the sharer's thread
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(resource_sharer._resource_sharer._address)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset, as a process killed mid-handshake leaves it
        assert reported.wait(60), "the sharer reported nothing"
        hook(ValueError, ValueError("other errors are still reported"), None)
    """)
    plain = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True, timeout=60)
    assert "resource_sharer.py" in plain.stderr  # what a decoding process printed before
    quiet = subprocess.run([sys.executable, "-c", script, "worker"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and "resource_sharer" not in quiet.stderr, quiet.stderr
    assert "ValueError: other errors are still reported" in quiet.stderr


def test_the_summary_names_the_store_by_its_absolute_path_on_a_rerun_too(tmp_path, monkeypatch):
    """Bug: `output` was absolute after a run that embedded images, and the path as given (relative)
    after a rerun on the finished store."""
    write_image_folder(tmp_path / "photos", n_per_class=2)
    monkeypatch.chdir(tmp_path)
    first = extract("photos", "s.h5", workers=0, **TINY_MODELS)
    again = extract("photos", "s.h5", workers=0, **TINY_MODELS)
    assert first.output == again.output == tmp_path / "s.h5" and again.shards_written == 0


def test_classes_that_leave_out_some_label_folders_are_named_by_extract(photos, tmp_path):
    """Review: `--classes` without two of the folders said nothing; only a fit's metrics later
    counted their images as out of distribution."""
    classes = tmp_path / "classes.txt"
    classes.write_text("red\n")
    result = run_cli("extract", photos["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                     "--classes", classes)
    assert result.exit_code == 0, result.output
    labels = open_source(photos["root"]).labels
    counts = {name: labels.count(name) for name in ("blue", "green")}
    assert f"Note: {sum(counts.values())} images have a label that is no class of vocabulary 'default': 'blue' " \
           f"{counts['blue']}; 'green' {counts['green']}; a fit gives each of them one of the listed classes and " \
           "counts them as out of distribution." in output_text(result), result.output
    every = run_cli("extract", photos["root"], "--out", tmp_path / "t.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert every.exit_code == 0 and "no class of vocabulary" not in every.output  # the folders are the classes


def test_a_class_folder_spelled_otherwise_than_its_class_is_said_so_by_extract(tmp_path):
    """Review: a "Cat" folder for the class "cat" was only "a label that is no class" at extract; the fit
    said "(spelled like class 'cat')", by which time the store was built."""
    images = write_image_folder(tmp_path / "photos", n_per_class=1, classes=("Cat", "dog"), broken=False)["root"]
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    result = run_cli("extract", images, "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                     "--classes", classes)
    said = " ".join(output_text(result).split())
    assert result.exit_code == 0 and ": 'Cat' 1 (spelled like class 'cat'); a fit gives" in said, said


def test_a_class_folder_whose_every_file_was_skipped_is_named_not_counted_as_images(tmp_path):
    """New user: a folder of an empty .jpg and a junk .png, left out of --classes, was "2 images have a
    label that is no class" (no image of the store has it); without --classes it became a class of the
    default vocabulary without a word."""
    made = write_image_folder(tmp_path / "photos", n_per_class=2)
    (tmp_path / "photos" / "broken").mkdir()
    (tmp_path / "photos" / "broken" / "empty.jpg").write_bytes(b"")
    (tmp_path / "photos" / "broken" / "junk.png").write_text("not an image")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(sorted(set(made["labels"].values()))) + "\n")
    given = run_cli("extract", made["root"], "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                    "--classes", classes)
    assert given.exit_code == 0 and "Note" not in output_text(given), output_text(given)
    folders = run_cli("extract", made["root"], "--out", tmp_path / "t.h5", *TINY_MODEL_ARGS, "--workers", "0")
    said = " ".join(output_text(folders).split())
    assert folders.exit_code == 0 and "Note: 1 class of vocabulary 'default' has no image in the store: every file " \
        "labelled with it was skipped ('broken'); a fit still gives it images unless it reports it absent" in said, said
    # review (mutation): a listed class that no folder is named is no folder whose files were all skipped
    classes.write_text(classes.read_text() + "purple\n")
    more = run_cli("extract", made["root"], "--out", tmp_path / "u.h5", *TINY_MODEL_ARGS, "--workers", "0",
                   "--classes", classes)
    assert more.exit_code == 0 and "was skipped" not in output_text(more), output_text(more)


def _four_pixels(image) -> torch.Tensor:
    return torch.zeros((3, 2, 2), dtype=torch.uint8)


def test_a_decoding_process_notes_no_file_once_it_has_decoded_one(tmp_path):
    """Between files a decoding process's slot says -1: a process idle after its last file (its
    prefetch full while the models run) would otherwise be taken for one hung on that file, and a
    crash between files would be blamed on the file before."""
    import multiprocessing

    from zsfs.embedding import DecodedImages, make_loader
    from zsfs.shard_embedder import position_batches

    source = open_source(write_image_folder(tmp_path / "photos", n_per_class=1)["root"])
    decoding, since = multiprocessing.RawArray("q", [-1]), multiprocessing.RawArray("d", 1)
    images = DecodedImages(source, _four_pixels, decoding=decoding, decoding_since=since)
    before = time.monotonic()
    loaded = list(make_loader(images, position_batches(0, len(source.paths), 2), workers=1, pin_memory=False))
    done = [int(i) for batch in loaded for i in batch.indices] + [i for batch in loaded for i, _ in batch.failures]
    assert sorted(done) == list(range(len(source.paths)))
    assert decoding[0] == -1 and since[0] >= before


def test_ray_workers_without_ray_is_refused_before_anything_is_written(photos, tmp_path):
    with pytest.raises(ZsfsError, match=r"^ray_workers needs ray$"):
        extract(photos["root"], tmp_path / "s.h5", ray_workers=2, **TINY_MODELS)
    assert not list(tmp_path.iterdir())


def test_a_store_built_by_name_is_judged_by_the_weights_asked_for_not_by_files_named_like_them(tmp_path, monkeypatch):
    """Review: a file named `default` (or like a tag) in the working folder made a rerun of a store built
    by name be refused as passing a file, though the loaders take those names as names; and a rerun
    asking for another CLIP tag was told, when it could not download it, that the store "was started
    with them by name"."""
    from dataclasses import replace

    from zsfs.shard_embedder import EmbedSettings
    from zsfs.resume import other_weights_by_name, recorded_by_name
    from zsfs.store.arrays import write_store

    rows = np.eye(4, dtype=np.float32)
    master = write_store(tmp_path / "s.h5", clip=rows, backbone=rows, paths=[f"{i}.png" for i in range(4)],
                         clip_info={"name": "ViT-B-32", "weights": "openai"},
                         backbone_info={"name": TINY_BACKBONE, "weights": "default", "output": "pre_logits"},
                         source="/data/images")
    monkeypatch.chdir(tmp_path)
    for name in ("default", "openai", "laion2b_s34b_b79k"):
        Path(name).write_bytes(b"not weights")
    same = EmbedSettings("ViT-B-32", "openai", TINY_BACKBONE, "default", "cpu", "fp32", 8, 0, 10**6)
    assert other_weights_by_name(master, same) == "" and recorded_by_name(master, same) == ("clip", "backbone")
    other_tag = replace(same, clip_weights="laion2b_s34b_b79k")
    assert other_weights_by_name(master, other_tag) == (
        "built with the CLIP weights ViT-B-32 / openai, this run asks for ViT-B-32 / laion2b_s34b_b79k; pass "
        "--clip-weights openai to resume or update it, or --overwrite to replace it")
    assert recorded_by_name(master, other_tag) == ("backbone",)  # its download failing is no by-name case
    a_file = replace(same, backbone_weights=str(tmp_path / "default"))
    assert other_weights_by_name(master, a_file).startswith(
        "built with the backbone weights test_vit / default, loaded by that name, and this run passes a file "
        "(--backbone-weights)") and "point HF_HOME at" in other_weights_by_name(master, a_file)
    # review: weights timm downloads from a URL are cached by torch; HF_HOME does not hold them
    url_only = write_store(tmp_path / "u.h5", clip=rows, backbone=rows, paths=[f"{i}.png" for i in range(4)],
                           clip_info={"name": "ViT-B-32", "weights": "openai"},
                           backbone_info={"name": "gcvit_base.in1k", "weights": "default", "output": "pre_logits"},
                           source="/data/images")
    said = other_weights_by_name(url_only, replace(a_file, backbone="gcvit_base.in1k"))
    assert "drop --backbone-weights, or pass --overwrite to replace the store. Without a network, copy gcvit_base" in \
        said and "timm's cache folder" in said and "HF_HOME" not in said, said


def test_model_files_are_made_absolute_and_tags_stay_tags(tmp_path, monkeypatch):
    """What a Ray worker and a pipeline's record get: files by absolute path ("~" expanded), and a
    pretrained tag left a tag even where a file of its name lies in the working folder."""
    from zsfs.shard_embedder import absolute_model_files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    shutil.copy(TINY_CLIP_CONFIG, tmp_path / "home" / "clip.json")
    for name in ("openai", "backbone.pth", "clip.pt"):
        (tmp_path / name).write_bytes(b"weights")
    assert absolute_model_files({"clip_model": "~/clip.json", "clip_weights": "clip.pt", "backbone": TINY_BACKBONE,
                                 "backbone_weights": "backbone.pth"}) == {
        "clip_model": str(tmp_path / "home" / "clip.json"), "clip_weights": str(tmp_path / "clip.pt"),
        "backbone": TINY_BACKBONE, "backbone_weights": str(tmp_path / "backbone.pth")}
    by_name = {"clip_model": "ViT-B-32", "clip_weights": "openai", "backbone": "vit_base_patch16_224",
               "backbone_weights": "default"}
    assert absolute_model_files(by_name) == by_name  # ./openai is a file, but "openai" is ViT-B-32's tag
    no_such_tag = absolute_model_files({**by_name, "clip_model": str(TINY_CLIP_CONFIG), "backbone_weights": "random"})
    assert no_such_tag["clip_weights"] == str(tmp_path / "openai") and no_such_tag["backbone_weights"] == "random"


@pytest.mark.parametrize("moved", ["the store's folder", "the shards folder"])
def test_a_store_moved_while_extract_writes_it_stops_the_run_and_is_not_split(photos, tmp_path, moved):
    """Review: `mv` of the store's folder (or of its shards folder) during an extract made the folders
    again at the old path, wrote the other shards there, beside no lock, and ended in "4 of 15 shards
    are not written yet": the store split in two, neither part usable."""
    folder = tmp_path / "d"
    out = folder / "s.h5"
    done = []

    def move_after_the_first_shard(n: int) -> None:
        done.append(n)
        if sum(done) == 8 and not (tmp_path / "moved").exists():  # shard 0 is written, shard 1 is not yet
            (folder if moved == "the store's folder" else folder / "s.shards").rename(tmp_path / "moved")

    with pytest.raises(StoreError, match=r"s\.shards was moved, renamed or removed while this process wrote it; "
                                         r"nothing more was written: put it back"):
        extract(photos["root"], out, workers=0, shard_size=4, batch_size=4, on_batch=move_after_the_first_shard,
                **TINY_MODELS)
    if moved == "the store's folder":
        assert not folder.exists()  # nothing made again at the old path
        (tmp_path / "moved").rename(folder)  # put back, as said
    else:
        assert not (folder / "s.shards").exists() and not out.exists()
        (tmp_path / "moved").rename(folder / "s.shards")
    resumed = extract(photos["root"], out, workers=0, shard_size=4, batch_size=4, **TINY_MODELS)
    assert resumed.shards_reused == 1  # the shard written before the move
    with Store(out) as store:
        store.verify()  # raises on a damaged or missing file
        assert store.n_images + store.n_skipped == len(photos["good"]) + len(photos["bad"])
