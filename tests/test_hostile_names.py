"""Hostile file names and folders, made for real on disk: names that are not UTF-8, newlines,
leading dashes, very long names, both unicode normalisations, escape sequences in class names,
and a sub-folder that cannot be read. extract, info, fit and predict must take them all."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from zsfs.report import render_report
from zsfs.sources import open_source
from zsfs.store import Store
from zsfs.testing.cli import run_cli
from zsfs.testing.models import TINY_MODEL_ARGS
from zsfs.testing.privileges import run_python_unprivileged

ESCAPE_CLASS = b"\x1b]52;c;aGk=\x07\x1b[2Jclip"  # OSC 52 (clipboard write), then clear screen
HOSTILE_NAMES = [  # (class folder, file name), as bytes
    (b"cat", b"caf\xe9.png"),  # latin-1: not UTF-8
    (b"cat", b"line\nbreak.png"),
    (b"cat", b"-rf --help.png"),
    (b"cat", b"x" * 251 + b".png"),  # 255 bytes: the longest name Linux allows
    (b"cat", unicodedata.normalize("NFC", "\u00e9t\u00e9.png").encode()),
    (b"cat", unicodedata.normalize("NFD", "\u00e9t\u00e9.png").encode()),  # another file, same look
    (b"bird\xff", b"one.png"),  # a class folder that is not UTF-8
    (b"bird\xff", b"two.png"),
    (ESCAPE_CLASS, b"a.png"),
    (ESCAPE_CLASS, b"b.png"),
]


def _write_png(path: bytes, seed: int) -> None:
    """Create the file through a bytes path (no str decoding on the way), with Pillow's bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(handle, buffer.getvalue())
    finally:
        os.close(handle)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    raw_root = os.fsencode(tmp_path_factory.mktemp("hostile")) + b"/ph\xf6tos"  # the source itself: not UTF-8
    root = Path(os.fsdecode(raw_root))
    for seed, (folder, name) in enumerate(HOSTILE_NAMES):
        os.makedirs(raw_root + b"/" + folder, exist_ok=True)
        _write_png(raw_root + b"/" + folder + b"/" + name, seed)
    store = root.parent / "photos.h5"
    result = run_cli("extract", root, "--out", store, *TINY_MODEL_ARGS, "--workers", "0", "--dtype", "float32")
    return {"root": root, "raw_root": raw_root, "store": store, "extract": result}


def test_extract_embeds_every_hostile_name_and_paths_round_trip(hostile):
    assert hostile["extract"].exit_code == 0, hostile["extract"].output
    with Store(hostile["store"]) as store:
        paths = list(store.paths())
        assert list(store.paths(np.arange(len(paths))[::-1])) == paths[::-1]  # some rows: the same exact names
        assert store.n_skipped == 0
        labels = set(store.labels())
        classes = store.vocabulary("default").classes
    expected = sorted(folder + b"/" + name for folder, name in HOSTILE_NAMES)
    assert sorted(os.fsencode(path) for path in paths) == expected  # the exact bytes of every name
    for path in paths:
        assert (hostile["root"] / path).is_file()  # each stored path reopens its file
    assert labels == {"cat", "bird\\xff", ESCAPE_CLASS.decode()}  # class names are UTF-8 text
    assert sorted(classes) == sorted(labels)


def test_rerun_on_hostile_names_reuses_the_store(hostile):
    again = run_cli("extract", hostile["root"], "--out", hostile["store"], *TINY_MODEL_ARGS, "--workers", "0",
                    "--dtype", "float32")
    assert again.exit_code == 0, again.output
    assert "0 / 1" in again.output  # shards written / reused
    assert "images/s" not in again.output and "embedding)" not in again.output  # bug: "0.0" for a rerun
    assert "0/0" not in again.output and "-:--:--" not in again.output  # bug: an empty progress bar


def test_info_shows_escape_sequences_visibly(hostile):
    result = run_cli("info", hostile["store"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b]52;c;aGk=\\x07\\x1b[2Jclip" in result.output
    assert "bird\\xff" in result.output
    # the source's path whole, however long the folder's path (it was cut: "ph\xf6…" under xdist's longer one)
    folded = "".join(line.split("│")[2].strip() for line in result.output.splitlines()
                     if line.count("│") == 3 and line.split("│")[1].strip() in ("source", ""))
    assert str(hostile["root"]).replace("\udcf6", "\\xf6") in folded, result.output


def test_fit_and_predict_on_hostile_names(hostile, tmp_path):
    run = tmp_path / "run"
    fitted = run_cli("fit", "--store", hostile["store"], "--out", run, "--k", "1", "--candidates", "2",
                     "--cycle-epochs", "1")
    assert fitted.exit_code == 0, fitted.output
    fit_paths = pl.read_parquet(run / "predictions.parquet")["path"].to_list()
    assert "cat/caf\\xe9.png" in fit_paths and "cat/line\nbreak.png" in fit_paths  # UTF-8 text for parquet

    out = tmp_path / "new" / "folder" / "predictions.csv"  # a missing folder is created
    predicted = run_cli("predict", "--run", run, "--workers", "0", "--out", out, "--", hostile["root"],
                        hostile["root"] / "cat" / "-rf --help.png")
    assert predicted.exit_code == 0, predicted.output
    assert "\x1b" not in predicted.output and "Traceback" not in predicted.output
    frame = pl.read_csv(out)
    assert frame.height == len(HOSTILE_NAMES) + 1 and frame["error"].null_count() == frame.height
    assert any(path.endswith("cat/caf\\xe9.png") for path in frame["path"])


def test_report_shows_the_images_of_hostile_names(hostile, tmp_path):
    """Bug: the report opened the predictions' text paths, where ``caf\\xe9.png`` names no file."""
    run = tmp_path / "run"
    fitted = run_cli("fit", "--store", hostile["store"], "--out", run, "--k", "1", "--candidates", "2")
    assert fitted.exit_code == 0, fitted.output
    page = render_report(run, images=hostile["root"])  # the store records its source as UTF-8 text: pass it
    assert page.count('<img class="thumb"') >= len(HOSTILE_NAMES)  # every image is among the most OOD
    assert 'class="thumb missing"' not in page
    assert "\x1b" not in page and "\\x1b]52;c;aGk=\\x07" in page  # control characters shown visibly


def test_run_folders_and_outputs_named_with_bytes_that_are_not_utf8(hostile, tmp_path):
    """Bug: polars and torch were handed such paths and failed after the work was done
    (``TypeError: Object does not have a .write() method``): fit's run folder, predict --out,
    report (reading the predictions)."""
    raw = os.fsencode(tmp_path)
    run = Path(os.fsdecode(raw + b"/run\xf6"))
    fitted = run_cli("fit", "--store", hostile["store"], "--out", run, "--k", "1", "--candidates", "2",
                     "--cycle-epochs", "1")
    assert fitted.exit_code == 0, fitted.output
    assert pl.read_parquet((run / "predictions.parquet").read_bytes()).height == len(HOSTILE_NAMES)
    for suffix in (".csv", ".parquet", ".json"):
        out = Path(os.fsdecode(raw + b"/p\xf6" + suffix.encode()))
        predicted = run_cli("predict", "--run", run, "--workers", "0", "--out", out, hostile["root"] / "cat")
        assert predicted.exit_code == 0, predicted.output
        assert out.stat().st_size > 0
    report = run_cli("report", run)
    assert report.exit_code == 0, report.output
    assert (run / "report.html").stat().st_size > 0


def test_list_files_keep_names_that_are_not_utf8(tmp_path):
    raw = os.fsencode(tmp_path)
    _write_png(raw + b"/caf\xe9.png", 0)
    (tmp_path / "list.txt").write_bytes(b"caf\xe9.png\n")
    source = open_source(tmp_path / "list.txt")
    assert os.fsencode(source.absolute(0)) == raw + b"/caf\xe9.png"


UNREADABLE_EXTRACT = """
import sys
from zsfs.cli import main
from zsfs.testing.models import TINY_MODEL_ARGS
main(["extract", sys.argv[1] if len(sys.argv) > 1 else {source!r}, "--out", {out!r}, *TINY_MODEL_ARGS,
      "--workers", "0"])
"""


def test_an_unreadable_subfolder_is_recorded_as_skipped(tmp_path):
    root = tmp_path / "photos"
    for name in ("cat/a.png", "cat/b.png", "dog/a.png", "dog/locked/c.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _write_png(os.fsencode(root / name), len(name))
    locked = root / "dog" / "locked"
    locked.chmod(0)
    try:
        # Run where the kernel enforces the permission bits (CI runs as root, see zsfs.testing.privileges).
        child = run_python_unprivileged(UNREADABLE_EXTRACT.format(source=str(root), out=str(tmp_path / "s.h5")))
    finally:
        locked.chmod(0o755)
    assert child.returncode == 0, child.stderr[-3000:]
    with Store(tmp_path / "s.h5") as store:
        skipped, reasons = store.skipped()
        assert list(skipped) == ["dog/locked/"]
        assert list(reasons) == ["unreadable folder (permission denied)"]
        assert sorted(store.paths()) == ["cat/a.png", "cat/b.png", "dog/a.png"]
    # The same listing as the unprivileged run saw, now readable: another listing, another store.
    assert "dog/locked/c.png" in open_source(root).paths


def test_an_unreadable_source_folder_is_a_clear_error(tmp_path):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    _write_png(os.fsencode(root / "cat" / "a.png"), 0)
    root.chmod(0)
    try:
        child = run_python_unprivileged(
            "from zsfs.errors import ZsfsError\nfrom zsfs.sources import open_source\n"
            f"try:\n    open_source({str(root)!r})\nexcept ZsfsError as error:\n    print(error)\n")
    finally:
        root.chmod(0o755)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.startswith(f"cannot read the folder {root}: Permission denied")


def test_a_store_name_with_glob_characters_cleans_only_its_own_temporary_files(tmp_path):
    """``run[1].h5`` must not be read as a pattern: ``[1]`` would match ``run1.h5``'s files and
    miss its own leftovers."""
    from zsfs.testing.synthetic import make_synthetic_store

    others = tmp_path / ".run1.h5.abc123.tmp"
    longer = tmp_path / ".run[1].h5.v2.h5.abc123.tmp"  # store run[1].h5.v2.h5's, same prefix
    own = tmp_path / ".run[1].h5.xyz789.tmp"
    others.write_bytes(b"another store's half-written master")
    longer.write_bytes(b"and another's")
    own.write_bytes(b"left by a killed write of run[1].h5")
    make_synthetic_store(tmp_path / "run[1].h5", 50, 3)
    assert others.is_file() and longer.is_file() and not own.exists()
    with Store(tmp_path / "run[1].h5") as store:
        assert store.n_images == 50


def test_a_store_is_written_into_a_folder_that_cannot_be_listed(tmp_path):
    """A drop folder (mode 0333: write, no read): looking for leftovers must not stop the write."""
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o333)
    try:
        result = run_python_unprivileged(
            "from zsfs.testing.synthetic import make_synthetic_store\n"
            f"make_synthetic_store({str(drop / 's.h5')!r}, 40, 2)")
    finally:
        drop.chmod(0o755)
    assert result.returncode == 0, result.stderr
    with Store(drop / "s.h5") as store:
        assert store.n_images == 40


@pytest.mark.parametrize("name", [b"run%1.h5", b"a%%b.h5", b"ph\xf6.h5", b"caf\xc3\xa9 [v2].h5"])
def test_store_file_names_with_percent_signs_or_bytes_that_are_not_utf8(tmp_path, name):
    """Bugs: HDF5 read '%' in the shard names of the master's virtual datasets as a format
    specifier (RuntimeError), and h5py read them back as strict UTF-8 (UnicodeDecodeError)."""
    from zsfs.testing.synthetic import make_synthetic_store

    master = Path(os.fsdecode(os.fsencode(tmp_path) + b"/" + name))
    make_synthetic_store(master, 40, 2)
    with Store(master) as store:
        assert store.verify()["shards"] == 1 and store.read("clip").shape[0] == 40
        shards = store.data_dir
    assert shards.is_dir() and shards.name.endswith(".shards") and os.fsencode(shards.name).decode("utf-8")
    assert run_cli("info", master).exit_code == 0
    described = run_cli("info", "--json", master)  # bug: a lone surrogate ("\udcf6"), refused by strict readers
    summary = json.loads(described.stdout)
    assert summary["path"] == (str(master) if b"\xf6" not in name else str(tmp_path / "ph\\xf6.h5"))
    assert "\\udc" not in described.stdout
    # bug: the escaped path read like a name holding the text \xf6; its pointer now says it was escaped
    assert summary["escaped"] == ([] if b"\xf6" not in name else ["/path"])


def test_json_files_that_name_a_store_or_run_whose_path_is_not_utf8_are_strict_json(tmp_path):
    """Bug: config.json, ood-bench's metrics.json and `fit --json` / `ood-bench --json` held such a
    path as a lone surrogate ("\\udcf6"), which duckdb ("invalid high surrogate"), polars and pyarrow
    refuse; now written as `info --json` writes it, its pointer in ``escaped``, and read back exactly
    (the report reopens the store through config.json)."""
    import io

    from zsfs.report import image_locations
    from zsfs.runs import load_run
    from zsfs.testing.synthetic import make_synthetic_store

    raw = os.fsencode(tmp_path)
    master, run = (Path(os.fsdecode(raw + name)) for name in (b"/ph\xf6.h5", b"/run\xf6"))
    make_synthetic_store(master, 40, 2, clip_dim=16, backbone_dim=16)
    fit_options = ("--k", "1", "--candidates", "2", "--cycle-epochs", "1")
    fitted = run_cli("fit", "--store", master, "--out", run, "--json", *fit_options)
    assert fitted.exit_code == 0, fitted.output
    bench = run_cli("ood-bench", "--store", master, "--id-classes", "1", "--splits", "1", "--out", tmp_path / "bench",
                    "--json", *fit_options)
    assert bench.exit_code == 0, bench.output
    written = {"fit --json": fitted.stdout, "config.json": (run / "config.json").read_text(encoding="utf-8"),
               "ood-bench --json": bench.stdout, "metrics.json": (tmp_path / "bench" / "metrics.json").read_text()}
    for what, text in written.items():
        assert "\\udc" not in text, what
    assert json.loads(fitted.stdout)["run"] == f"{tmp_path}/run\\xf6"
    assert json.loads(fitted.stdout)["escaped"] == ["/run"]
    config = pl.read_json(io.BytesIO(written["config.json"].encode())).row(0, named=True)  # a strict reader
    assert config["store"]["path"] == f"{tmp_path}/ph\\xf6.h5" and config["escaped"] == ["/store/path"]
    assert json.loads(written["metrics.json"])["store"]["path"] == f"{tmp_path}/ph\\xf6.h5"
    assert json.loads(written["ood-bench --json"]) == json.loads(written["metrics.json"])
    read = load_run(run)
    assert read.config["store"]["path"] == str(master) and "escaped" not in read.config
    exact = image_locations(read, None, np.arange(2))[2]  # None where the store could not be opened
    assert exact is not None and len(exact) == 2


def test_every_byte_that_is_not_utf8_in_a_masters_name_is_written_as_percent_hex():
    """Review (mutation: the lowest such byte, 0x80, kept as a lone surrogate passed)."""
    from zsfs.store.schema import shard_dir

    for raw, folder in ((b"/x/\x80.h5", "%80.shards"), (b"/x/\xff\xf6 a.h5", "%FF%F6 a.shards"),
                        (b"/x/caf\xc3\xa9.h5", "caf\u00e9.shards")):
        assert shard_dir(Path(os.fsdecode(raw))).name == folder


def test_info_json_says_which_names_it_escaped(tmp_path):
    """Bug: a path that is not UTF-8 text was written escaped (ph\\xf6tos) with nothing to tell it
    from a path holding the text \\xf6; ``escaped`` now points at each such value."""
    raw_root = os.fsencode(tmp_path) + b"/ph\xf6tos"
    os.makedirs(raw_root + b"/cat")
    _write_png(raw_root + b"/cat/a.png", 0)
    store = Path(os.fsdecode(os.fsencode(tmp_path) + b"/s\xf6.h5"))
    extracted = run_cli("extract", Path(os.fsdecode(raw_root)), "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    assert extracted.exit_code == 0, extracted.output
    summary = json.loads(run_cli("info", store, "--json").stdout)
    assert summary["path"] == f"{tmp_path}/s\\xf6.h5" and summary["source"] == f"{tmp_path}/ph\\xf6tos"
    assert summary["escaped"] == ["/path"]  # the source was stored as UTF-8 text (lossy)
    store.rename(tmp_path / "s.h5")
    assert json.loads(run_cli("info", tmp_path / "s.h5", "--json").stdout)["escaped"] == []


def test_class_folders_read_as_one_label_are_refused_by_extract_not_predict(tmp_path):
    """Bug: folders caf + byte 0xE9 and caf + the text \\xe9 were both read as the label
    'caf\\xe9': their images were one class, and nothing said so. predict reads no labels: it
    takes such a folder."""
    from zsfs.predict import image_inputs

    raw_root = os.fsencode(tmp_path / "photos")
    for i, label in enumerate((b"caf\xe9", b"caf\\xe9", b"dog")):
        os.makedirs(raw_root + b"/" + label)
        _write_png(raw_root + b"/" + label + b"/a.png", i)
    root = Path(os.fsdecode(raw_root))
    assert open_source(root).merged_labels == ["caf\\xe9"]
    result = run_cli("extract", root, "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert result.exit_code == 1 and " ".join(result.output.split()).startswith(
        f"Error: class folders of {tmp_path}/photos read as one label: caf\\xe9 (a name that is not UTF-8 text"), \
        result.output
    assert not (tmp_path / "s.h5").exists()
    assert len(image_inputs([root]).paths) == 3
    os.rename(raw_root + b"/caf\\xe9", raw_root + b"/cafe")
    assert sorted(set(open_source(root).labels)) == ["caf\\xe9", "cafe", "dog"] and not open_source(root).merged_labels


def test_info_lists_skipped_files_one_line_each_whatever_their_names(tmp_path):
    raw_root = os.fsencode(tmp_path / "photos")
    os.makedirs(raw_root + b"/cat")
    _write_png(raw_root + b"/cat/good.png", 0)
    broken = {b"cat/tab\there\nnewline.jpg": b"not a picture", b"cat/caf\xe9.png": b"",
              b"cat/tab\\x09here\\x0anewline.jpg": b"",  # bug: listed as the name above (a backslash kept single)
              b"cat/caf\\xe9.png": b""}  # bug: the same as cat/caf\xe9.png in the JSON listing
    for name, content in broken.items():
        with open(raw_root + b"/" + name, "wb") as handle:
            handle.write(content)
    store = tmp_path / "s.h5"
    extracted = run_cli("extract", Path(os.fsdecode(raw_root)), "--out", store, *TINY_MODEL_ARGS, "--workers", "0")
    assert extracted.exit_code == 0 and "`zsfs info --skipped` lists them" in extracted.output, extracted.output
    listed = run_cli("info", store, "--skipped")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == ["cat/caf\\\\xe9.png\tempty file", "cat/caf\\xe9.png\tempty file",
                                          "cat/tab\\x09here\\x0anewline.jpg\tnot an image (unidentified format)",
                                          "cat/tab\\\\x09here\\\\x0anewline.jpg\tempty file"]
    as_json = json.loads(run_cli("info", store, "--skipped", "--json").stdout)
    assert as_json["skipped"] == [{"path": "cat/caf\\xe9.png", "reason": "empty file"},
                                  {"path": "cat/caf\\xe9.png", "reason": "empty file"},
                                  {"path": "cat/tab\there\nnewline.jpg", "reason": "not an image (unidentified format)"},
                                  {"path": "cat/tab\\x09here\\x0anewline.jpg", "reason": "empty file"}]
    assert as_json["n_images"] == 1 and "/skipped/1/path" in as_json["escaped"]  # as every other name is marked
    assert "/skipped/0/path" not in as_json["escaped"]
    verified = run_cli("info", store, "--skipped", "--verify")  # bug: the verification's result was not said
    assert verified.exit_code == 0 and "no damage found" in verified.stderr and verified.stdout == listed.stdout
    assert "Verified: 1 shard against its recorded checksums, the master's text against its checksum, 1 vocabulary, " \
        "no neighbour graph" in \
        " ".join(verified.stderr.split())  # counted, not "1 shard(s)"


def test_a_locale_that_reads_file_names_as_ascii_or_latin1_is_refused_with_the_fix(tmp_path):
    """Walkthrough: under LC_ALL=C PYTHONUTF8=0 (or a Latin-1 locale) a folder "café" became the label
    "cafÃ©" (Latin-1) and UTF-8 paths from a list "corrupt image data" (ASCII), in silence."""
    import subprocess
    import sys

    (tmp_path / "café").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "café" / "a.png")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}
    (tmp_path / "plain").mkdir()  # review: names all ASCII are read as before, whatever the locale
    Image.new("RGB", (8, 8)).save(tmp_path / "plain" / "b.png")
    code = ("import sys; sys.stdout.reconfigure(errors='backslashreplace')\n"
            "from zsfs.cli import main; from zsfs.predict import image_inputs\n"
            "print(len(image_inputs([sys.argv[1] + '/plain']).paths))\n"
            "try:\n    image_inputs([sys.argv[1]])\nexcept Exception as error:\n    print(type(error).__name__, error)\n"
            "main(['extract', sys.argv[1], '--out', sys.argv[2], *sys.argv[3:]])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "s.h5"), *TINY_MODEL_ARGS],
                          capture_output=True, text=True, env=env, timeout=120)
    said = "this Python reads file names as ascii, not UTF-8"
    assert done.returncode == 1 and done.stdout.startswith(f"1\nZsfsError {said}"), done.stdout + done.stderr
    assert said in done.stderr and "Set PYTHONUTF8=1" in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "s.h5").exists()
    # the report too (walkthrough: its UTF-8 named images showed as "corrupt image data", exit 0)
    assert run_cli("extract", tmp_path, "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS).exit_code == 0
    assert run_cli("fit", "--store", tmp_path / "s.h5", "--k", "1", "--out", tmp_path / "run").exit_code == 0
    done = subprocess.run([sys.executable, "-m", "zsfs", "report", str(tmp_path / "run")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1 and said in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "run" / "report.html").exists()
    # and `fit --report`, before its fit (review: it fitted, saved, then failed on the report)
    done = subprocess.run([sys.executable, "-m", "zsfs", "fit", "--store", str(tmp_path / "s.h5"), "--k", "1",
                           "--report", "--out", str(tmp_path / "run2")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1 and said in done.stderr and "fit:" not in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "run2").exists()
