"""`zsfs import` from numpy + CSV/parquet and from clip-retrieval output; `zsfs info`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from zsfs.errors import ParameterError, StoreError, StoreMismatchError, ZsfsError
from zsfs.import_inputs import RowParts, numbered_parts
from zsfs import importer
from zsfs.importer import import_store
from zsfs.store import Store, schema
from zsfs.store.master import strings_sha256
from zsfs.digests import rows_sha256
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.failures import run_zsfs
from zsfs.testing.privileges import run_python_unprivileged
from zsfs.testing.synthetic import BLOCK_ROWS, SyntheticGenerator, _LazyRows
from zsfs.testing.synthetic import random_unit_rows as unit_rows
from tests.test_store_safety import lock_held_by_another_process

N, D_CLIP, D_BACKBONE = 60, 8, 12


@pytest.fixture
def inputs(tmp_path):
    clip, backbone = unit_rows(N, D_CLIP, 0), unit_rows(N, D_BACKBONE, 1)
    np.save(tmp_path / "clip.npy", clip)
    np.save(tmp_path / "backbone.npy", backbone.astype(np.float16))
    paths = [f"photos/{i:03d}.jpg" for i in range(N)]
    labels = [["cat", "dog"][i % 2] for i in range(N)]
    pl.DataFrame({"image_path": paths, "label": labels}).write_parquet(tmp_path / "paths.parquet")
    pl.DataFrame({"path": paths, "label": labels}).write_csv(tmp_path / "paths.csv")
    text = unit_rows(2, D_CLIP, 2)
    np.savez(tmp_path / "pets.npz", classes=np.array(["cat", "dog"]), single=text)
    np.savez(tmp_path / "pets_ensemble.npz", classes=np.array(["cat", "dog"]), single=text,
             ensemble=unit_rows(2, D_CLIP, 3), n_templates=np.array(80))
    return {"clip": clip, "backbone": backbone, "paths": paths, "labels": labels, "text": text, "dir": tmp_path}


@pytest.mark.parametrize("table", ["paths.parquet", "paths.csv"])
def test_import_numpy_and_table(inputs, table):
    folder = inputs["dir"]
    master = import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=folder / table, label_column="label",
                          vocabularies={"pets": folder / "pets.npz", "pets80": folder / "pets_ensemble.npz"},
                          clip_name="ViT-B-32", backbone_name="vit_giant", shard_size=25).master
    with Store(master) as store:
        assert store.n_images == N and store.n_shards == 3
        np.testing.assert_allclose(store.read("clip"), inputs["clip"], atol=1e-3)
        np.testing.assert_allclose(store.read("backbone"), inputs["backbone"], atol=1e-3)
        assert store.paths().tolist() == inputs["paths"]
        assert store.labels().tolist() == inputs["labels"]
        assert store.read("width").tolist() == [-1] * N
        assert store.clip_info["name"] == "ViT-B-32" and store.clip_info["weights"] == "imported"
        assert store.backbone_info["dim"] == D_BACKBONE
        pets = store.vocabulary("pets")
        np.testing.assert_allclose(pets.ensemble, inputs["text"], atol=1e-6)  # no ensemble: single stands in
        assert pets.n_templates == 1 and pets.prompt == "imported"
        assert store.vocabulary("pets80").n_templates == 80


def test_import_clip_retrieval_folder(inputs, tmp_path):
    """clip-retrieval writes img_emb/img_emb_{i}.npy with metadata/metadata_{i}.parquet."""
    out = tmp_path / "clip_retrieval"
    (out / "img_emb").mkdir(parents=True)
    (out / "metadata").mkdir()
    bounds = [0, 7, 19, 30, 41, 52, 60, 60, 60, 60, 60, N]  # 11 parts: "10" must sort after "2"
    for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(out / "img_emb" / f"img_emb_{part}.npy", inputs["clip"][start:stop])
        pl.DataFrame({"image_path": inputs["paths"][start:stop], "caption": ["x"] * (stop - start)},
                     schema={"image_path": pl.String, "caption": pl.String}).write_parquet(
            out / "metadata" / f"metadata_{part}.parquet")
    master = import_store(tmp_path / "cr.h5", clip_embeddings=out, backbone_features=tmp_path / "backbone.npy").master
    with Store(master) as store:
        assert store.paths().tolist() == inputs["paths"]
        np.testing.assert_allclose(store.read("clip"), inputs["clip"], atol=1e-3)
        assert not store.has_labels
    # walkthrough: a second clip-retrieval run (the backbone's) that wrote its images in another order,
    # or a --paths table in another order than the folder's metadata, was stored against the wrong paths
    order = np.random.default_rng(0).permutation(N)
    second = tmp_path / "second_run"
    (second / "img_emb").mkdir(parents=True)
    (second / "metadata").mkdir()
    np.save(second / "img_emb" / "img_emb_0.npy", inputs["backbone"][order])
    pl.DataFrame({"image_path": [inputs["paths"][i] for i in order]}).write_parquet(
        second / "metadata" / "metadata_0.parquet")
    shuffled = tmp_path / "shuffled.csv"
    pl.DataFrame({"path": [inputs["paths"][i] for i in order]}).write_csv(shuffled)
    for backbone, table in ((second, None), (tmp_path / "backbone.npy", shuffled)):
        with pytest.raises(ZsfsError, match=r"the metadata of .* lists other images than .*, or the same ones in "
                                            r"another order \(row 0 \(counted from 0\) is 'photos/\d+.jpg' there, "
                                            r"'photos/\d+.jpg' in .*\); all inputs must list the same images"):
            import_store(tmp_path / "other.h5", clip_embeddings=out, backbone_features=backbone, paths=table)
    assert not (tmp_path / "other.h5").exists()
    # review: a table relocating the folder's paths (/node/data/photos/0.jpg -> photos/0.jpg) is the same listing
    relocated = tmp_path / "relocated"
    shutil.copytree(out, relocated)
    for part in sorted((relocated / "metadata").glob("*.parquet")):
        table = pl.read_parquet(part)
        table.with_columns((pl.lit("/gpu-node/data/") + pl.col("image_path")).alias("image_path")).write_parquet(part)
    import_store(tmp_path / "relocated.h5", clip_embeddings=relocated, backbone_features=tmp_path / "backbone.npy",
                 paths=tmp_path / "paths.csv")


def test_parts_are_joined_in_natural_order_and_tied_numbers_are_refused(tmp_path):
    """Bug: parts were ordered by the last number in their names, so emb_{i}.fp16.npy (every part
    "16") were joined as emb_0, emb_1, emb_10, emb_11, emb_2: rows silently matched to other paths."""
    names = [f"emb_{i}.fp16.npy" for i in range(12)] + [f"part-{i}-of-12.npy" for i in range(12)]
    for name in reversed(names):
        (tmp_path / name).touch()
    assert [path.name for path in numbered_parts(tmp_path, "*.npy")] == names
    (tmp_path / "emb_01.fp16.npy").touch()
    with pytest.raises(ZsfsError, match=r"parts 'emb_01.fp16.npy' and 'emb_1.fp16.npy' have the same number"):
        numbered_parts(tmp_path, "*.npy")


def test_float64_rows_beyond_float32s_range_import_as_their_directions(inputs):
    """Bug: rows of 1e300 (finite) read as infinite in float32: numpy's overflow warning, then
    "rows are zero or not finite", which they are not; 1e-300 read as zero rows."""
    folder = inputs["dir"]
    wide = inputs["clip"].astype(np.float64)
    wide[0] *= 1e300
    wide[1] *= 1e-300
    np.save(folder / "wide.npy", wide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the cast
        master = import_store(folder / "out.h5", clip_embeddings=folder / "wide.npy",
                              backbone_features=folder / "backbone.npy", paths=folder / "paths.csv").master
    with Store(master) as store:
        np.testing.assert_allclose(store.read("clip"), inputs["clip"], atol=1e-3)
    assert RowParts([inputs["clip"].astype(np.float64)], ["a"])[0:N].tobytes() == \
        inputs["clip"].astype(np.float32).tobytes()  # rows within the range: cast as they are


def test_row_parts_slices_across_parts():
    parts = [np.arange(6).reshape(3, 2), np.arange(6, 8).reshape(1, 2), np.arange(8, 16).reshape(4, 2)]
    rows = RowParts(parts, ["a", "b", "c"])
    whole = np.concatenate(parts)
    assert rows.shape == (8, 2)
    for start, stop in [(0, 8), (2, 5), (3, 4), (5, 5), (7, 20)]:
        np.testing.assert_array_equal(rows[start:stop], whole[start:stop])
    with_empty = RowParts([np.zeros((0, 2), int), *parts[:2], np.zeros((0, 2), int), parts[2]], list("vabwc"))
    for start in range(-9, 11):  # every slice, empty parts included (only the overlapped parts are read)
        for stop in range(-9, 11):
            np.testing.assert_array_equal(with_empty[start:stop], whole[start:stop])
    # review (mutation: every part before the slice read again, 7 s per array at thousands of parts passed)
    watched = [part.view(_Watched) for part in parts]
    for name, part in zip("abc", watched):
        part.name = name
    rows = RowParts(watched, list("abc"))
    for (start, stop), read in (((3, 4), ["b"]), ((4, 6), ["c"]), ((2, 5), ["a", "b", "c"])):
        _Watched.read.clear()
        np.testing.assert_array_equal(rows[start:stop], whole[start:stop])
        assert _Watched.read == read


class _Watched(np.ndarray):
    """An array part that records each slice taken of it by its name."""

    read: list[str] = []

    def __getitem__(self, key):
        _Watched.read.append(self.name)
        return np.asarray(self)[key]


def test_row_count_mismatch_is_a_clear_error(inputs):
    folder = inputs["dir"]
    np.save(folder / "short.npy", inputs["backbone"][:-2])
    with pytest.raises(ZsfsError, match=r"row counts disagree.*backbone features .*short.npy\): 58 rows"):
        import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "short.npy",
                     paths=folder / "paths.csv")
    assert not (folder / "out.h5").exists()


def test_import_input_errors(inputs):
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy")
    with pytest.raises(ZsfsError, match="no path column 'file'.*columns: 'path', 'label'\\); name it"):
        import_store(folder / "o.h5", **common, paths=folder / "paths.csv", path_column="file")
    semicolons = folder / "semicolons.csv"  # a spreadsheet's export in many locales
    semicolons.write_text(folder.joinpath("paths.csv").read_text().replace(",", ";"))
    with pytest.raises(ZsfsError, match=r"no path column 'image_path' or 'path' \(columns: 'path;label'\) "
                                        r"\(a \.csv is read with commas between the columns"):
        import_store(folder / "o.h5", **common, paths=semicolons)
    with pytest.raises(ZsfsError, match="no paths table"):
        import_store(folder / "o.h5", **common)
    for missing in ("clip_embeddings", "backbone_features"):  # walkthrough: "no paths table" was said for these
        what = "CLIP embeddings" if missing == "clip_embeddings" else "backbone features"
        with pytest.raises(ZsfsError, match=rf"^{what}: \S+nope\.npy does not exist$"):
            import_store(folder / "o.h5", **{**common, missing: folder / "nope.npy"})
    np.savez(folder / "bad.npz", classes=np.array(["a"]), single=unit_rows(1, 5, 0))
    with pytest.raises(ZsfsError, match=r"bad.npz: single has shape \(1, 5\), expected \(1 classes, 8 = the CLIP "):
        import_store(folder / "o.h5", **common, paths=folder / "paths.csv", vocabularies={"bad": folder / "bad.npz"})
    # bug: a width cut off where the rows are zero was "2 rows are zero or not finite", not the width
    np.savez(folder / "cut.npz", classes=np.array(["a", "b"]), single=np.eye(2, 20)[:, 10:])
    with pytest.raises(ZsfsError, match=r"cut.npz: single has shape \(2, 10\), expected \(2 classes, 8 = the CLIP "):
        import_store(folder / "o.h5", **common, paths=folder / "paths.csv", vocabularies={"cut": folder / "cut.npz"})
    (folder / "notes.npy").write_text("not an array\n")  # before: np.load's advice about allow_pickle
    with pytest.raises(ZsfsError, match=r"CLIP embeddings: .*notes.npy is not a .npy file \(saved by numpy.save\)"):
        import_store(folder / "o.h5", clip_embeddings=folder / "notes.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv")
    np.save(folder / "ints.npy", np.zeros((N, 3), dtype=np.int64))
    with pytest.raises(ZsfsError, match="expected floating-point rows"):
        import_store(folder / "o.h5", clip_embeddings=folder / "ints.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv")
    (folder / "widths").mkdir()  # walkthrough: which input's parts differ was not said
    np.save(folder / "widths" / "p_0.npy", inputs["backbone"][:30])
    np.save(folder / "widths" / "p_1.npy", inputs["backbone"][30:, :-1])
    with pytest.raises(ZsfsError, match=r"^backbone features: array parts have different widths \[11, 12\]"):
        import_store(folder / "o.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "widths",
                     paths=folder / "paths.csv")
    (folder / "parts").mkdir()  # bug: a damaged part of a folder of parquet parts was a polars traceback
    (folder / "parts" / "part-0.parquet").write_text("not parquet")
    with pytest.raises(ZsfsError, match="cannot read paths table .*parts"):
        import_store(folder / "o.h5", **common, paths=folder / "parts")
    # new user: a column named twice was read as its first (extract's lists refuse it); polars' own
    # advice (infer_schema_length, ignore_errors) and error names came through; no line for bad bytes
    rows = "".join(f"photos/{i:03d}.jpg,{label}\n" for i, label in enumerate(inputs["labels"]))
    for name, text, said in (
            ("twice.csv", "path,path,label\n" + rows.replace(",", ",x,"), "the header names the column 'path' twice; "
             "name each column once"),
            ("spaced.csv", "path , path,label\n" + rows, "the header names the column 'path' twice"),
            ("empty.csv", "", "it is empty; it needs a header line (such as path,label) and a line per image"),
            ("quote.csv", 'path,label\n"photos/000.jpg,cat\n', "line 2: a quote is not closed"),
            # walkthrough: no line was named (extract's lists name it), and a tab after a closing quote was
            # said as "a quote stands inside an unquoted field", which such tables may hold
            ("ragged.csv", "path,label\n" + rows + "photos/x.jpg,cat,3\n", f"line {len(inputs['labels']) + 2} has 3 fields, the header "
             "2; quote a path or label holding a comma"),
            ("closed.tsv", 'path\tlabel\nphotos/000.jpg\tcat\n"q4".png\tBag\n', "line 3: '\\x09' expected after '\"' "
             "(nothing may stand between a closing quote and the next separator)"),
            ("latin1.csv", "path,label\n" + "".join(rows.splitlines(keepends=True)[:2]), None)):
        data = text.encode() if said else (text + "caf\xe9.jpg,cat\n").encode("latin-1")
        (folder / name).write_bytes(data)
        with pytest.raises(ZsfsError) as raised:
            import_store(folder / "o.h5", **common, paths=folder / name)
        expected = said or f"it is not UTF-8 text (first at line {text.count(chr(10)) + 1}); save it as UTF-8"
        assert expected in str(raised.value) and "infer_schema" not in str(raised.value), raised.value
    assert not (folder / "o.h5").exists()
    # review: a spreadsheet's empty columns (polars: '' and '_duplicated_0') and a real column named like
    # polars' second of a name were refused as a column named twice
    for name, text in (("empty-columns.csv", "path,label,, \n" + rows.replace("\n", ",,\n")),
                       ("polars-like.csv", "path,path_duplicated_0,label\n" + rows.replace(",", ",x,"))):
        (folder / name).write_text(text)
        import_store(folder / f"{name}.h5", **common, paths=folder / name, label_column="label")
        with Store(folder / f"{name}.h5") as store:
            assert store.labels().tolist() == inputs["labels"]


def test_parquet_parts_with_other_extra_columns_are_read_as_one_table(inputs):
    """Bug (new-user review): parts whose columns differ beside the path (a later export added one)
    were refused with polars' "schema lengths differ", naming no file."""
    folder = inputs["dir"]
    (folder / "mixed").mkdir()
    half = N // 2
    pl.DataFrame({"path": inputs["paths"][:half]}).write_parquet(folder / "mixed" / "part-0.parquet")
    pl.DataFrame({"extra": list(range(N - half)), "path": inputs["paths"][half:]}).write_parquet(
        folder / "mixed" / "part-1.parquet")
    master = import_store(folder / "mixed.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=folder / "mixed").master
    with Store(master) as store:
        assert list(store.paths()) == list(inputs["paths"])
    pl.DataFrame({"file": ["x.jpg"] * (N - half)}).write_parquet(folder / "mixed" / "part-1.parquet")
    with pytest.raises(ZsfsError, match=rf"path column 'path' has {N - half} empty values \(first: row {half},"):
        import_store(folder / "other.h5", clip_embeddings=folder / "clip.npy",
                     backbone_features=folder / "backbone.npy", paths=folder / "mixed")


@pytest.mark.parametrize("table", ["paths.parquet", "paths.csv"])
def test_a_paths_table_named_with_bytes_that_are_not_utf8(inputs, table):
    """polars takes only UTF-8 paths: the table is read through a Python file."""
    folder = inputs["dir"]
    renamed = os.fsdecode(os.fsencode(folder) + b"/t\xf6" + table.encode())
    os.rename(folder / table, renamed)
    master = import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=renamed, label_column="label").master
    with Store(master) as store:
        assert store.paths().tolist() == inputs["paths"] and store.labels().tolist() == inputs["labels"]


def test_rerunning_the_same_import_keeps_the_store_and_its_neighbour_graph(inputs):
    """Bug: a rerun rebuilt the finished master, which drops the neighbour graph (a build of its own)."""
    folder = inputs["dir"]
    args = ("import", folder / "s.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
            folder / "backbone.npy", "--paths", folder / "paths.csv", "--vocab", f"pets={folder / 'pets.npz'}",
            "--shard-size", "25")
    first = run_cli(*args)
    assert first.exit_code == 0 and "No row written" not in first.output and "Note:" not in first.output
    same = run_cli("import", folder / "same.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
                   folder / "." / "clip.npy", "--paths", folder / "paths.csv")  # walkthrough: accepted in silence
    assert same.exit_code == 0 and "Note: --clip-embeddings and --backbone-features name the same file" in \
        output_text(same)
    assert run_cli("neighbours", folder / "s.h5", "--k", "3").exit_code == 0
    with Store(folder / "s.h5") as store:
        before = store.summary()
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    assert f"No row written: {folder / 's.h5'} held these 60 rows already." in output_text(again)  # walkthrough
    with Store(folder / "s.h5") as store:
        assert store.summary() == before and store.graph_info["k"] == 3
        assert store.vocabulary("pets").classes == ["cat", "dog"]


def test_the_same_files_spelled_otherwise_are_the_same_import(inputs, monkeypatch):
    """Bug: the paths table given as `../x/paths.csv` after `/abs/x/paths.csv` was "another source"
    (extract records its source resolved; import recorded it as typed, made absolute)."""
    folder = inputs["dir"]
    (folder / "sub").mkdir()
    (folder / "linked").symlink_to(folder)
    monkeypatch.chdir(folder / "sub")
    written = []
    for spelled in (folder, Path(".."), folder / "linked"):
        import_store(folder / "s.h5", clip_embeddings=spelled / "clip.npy", backbone_features=spelled / "backbone.npy",
                     paths=spelled / "paths.csv", shard_size=25)
        written.append({path.name: path.stat().st_mtime_ns for path in folder.glob("s.*")})
        with Store(folder / "s.h5") as store:
            assert store.source == str((folder / "paths.csv").resolve())
            assert store.clip_info["imported_from"] == str((folder / "clip.npy").resolve())
    assert written[0] == written[1] == written[2]  # the reruns found the store written


def test_a_linked_table_keeps_its_name_and_an_earlier_spelling_stands(inputs):
    """A table linked into another folder is recorded there (the report looks beside it, where
    its relative paths point), not at the link's target; and a store whose source an earlier zsfs
    recorded as typed (`sub/../paths.csv`) takes the same import again, keeping that record."""
    from zsfs.import_inputs import load_rows
    from zsfs.store import write_store

    folder = inputs["dir"]
    (folder / "elsewhere").mkdir()
    (folder / "elsewhere" / "paths.csv").symlink_to(folder / "paths.csv")
    arrays = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy", shard_size=25)
    import_store(folder / "linked.h5", paths=folder / "elsewhere" / "paths.csv", **arrays)
    with Store(folder / "linked.h5") as store:
        assert store.source == str((folder / "elsewhere").resolve() / "paths.csv")

    typed = str(folder / "sub" / ".." / "paths.csv")
    (folder / "sub").mkdir()
    import_store(folder / "old.h5", paths=folder / "paths.csv", **arrays)
    with Store(folder / "old.h5") as store:
        clip_info, backbone_info = store.clip_info, store.backbone_info
    rows = {name: load_rows(folder / f"{name}.npy", name) for name in ("clip", "backbone")}
    write_store(folder / "old.h5", **rows, paths=np.asarray(inputs["paths"], dtype=object), labels=None,
                clip_info={**clip_info, "imported_from": str(folder / "sub" / ".." / "clip.npy")},
                backbone_info=backbone_info, source=typed, shard_size=25, overwrite=True)
    import_store(folder / "old.h5", paths=folder / "paths.csv", vocabularies={"pets": folder / "pets.npz"}, **arrays)
    with Store(folder / "old.h5") as store:
        assert store.source == typed and store.clip_info["imported_from"] == str(folder / "sub" / ".." / "clip.npy")
        assert store.vocabulary_names() == ["pets"]


def test_the_same_import_again_writes_nothing_and_succeeds_on_a_read_only_copy(inputs):
    """Review: an identical rerun rewrote the vocabulary files and the plan of vocabularies, so it
    failed on a read-only copy of the store, where the same extract again succeeds (docs/store.md)."""
    folder = inputs["dir"]
    store = folder / "store"
    args = ["import", str(store / "s.h5"), "--clip-embeddings", str(folder / "clip.npy"), "--backbone-features",
            str(folder / "backbone.npy"), "--paths", str(folder / "paths.csv"), "--vocab",
            f"pets={folder / 'pets_ensemble.npz'}", "--shard-size", "25"]
    assert run_cli(*args).exit_code == 0
    written = lambda: {path: path.stat().st_mtime_ns for path in store.rglob("*")}  # noqa: E731
    before = written()
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    assert written() == before
    for path in [store, *store.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        child = run_python_unprivileged("import sys; from zsfs.testing.cli import output_text, run_cli\n"
                                        f"result = run_cli(*{args!r}); print(output_text(result)); "
                                        "sys.exit(result.exit_code)")
        assert child.returncode == 0, child.stdout + child.stderr
        with Store(store / "s.h5") as imported:  # and a rerun with something to write says why it cannot
            assert imported.vocabulary("pets").n_templates == 80
        other = [*args[:-3], f"cats={folder / 'pets.npz'}", *args[-2:]]
        child = run_python_unprivileged("from zsfs.testing.cli import output_text, run_cli\n"
                                        f"print(output_text(run_cli(*{other!r})))")
        # review (mutation: the lock's "Permission denied" passed for the store's own message)
        assert f"cannot write the store {store / 's.h5'}: {store} is not writable (Permission denied); choose another " \
            "location" in child.stdout, child.stdout + child.stderr
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_info_counts_a_label_spelled_in_two_unicode_forms_once_as_fits_do(inputs):
    """Walkthrough: a label column mixing café composed and decomposed (macOS and Linux sources) showed
    two labels 'café' in `zsfs info`, where fits and ood-bench count one class."""
    folder, composed = inputs["dir"], "caf\u00e9"
    spelled = [composed if i % 3 else "cafe\u0301" for i in range(N)]
    pl.DataFrame({"path": inputs["paths"], "label": spelled}).write_csv(folder / "forms.csv")
    import_store(folder / "forms.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "forms.csv", label_column="label")
    assert json.loads(run_cli("info", "--json", folder / "forms.h5").stdout)["labels"] == {composed: N}


def test_cli_import_then_info_json(inputs):
    folder = inputs["dir"]
    result = run_cli("import", folder / "cli.h5", "--clip-embeddings", folder / "clip.npy",
                     "--backbone-features", folder / "backbone.npy", "--paths", folder / "paths.parquet",
                     "--label-column", "label", "--vocab", f"pets={folder / 'pets.npz'}", "--clip-name", "ViT-B-32",
                     "--backbone-name", "vit-g", "--shard-size", "40", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    result = run_cli("info", "--json", folder / "cli.h5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == N and summary["n_skipped"] == 0 and summary["n_shards"] == 2
    assert summary["clip"] == {**summary["clip"], "name": "ViT-B-32", "weights": "imported", "dim": D_CLIP}
    assert summary["backbone"]["dim"] == D_BACKBONE and summary["backbone"]["name"] == "vit-g"
    assert summary["dtype"] == "float32"  # --dtype, not the float16 default
    assert summary["vocabularies"] == {"pets": ["cat", "dog"]}
    assert summary["labels"] == {"cat": (N + 1) // 2, "dog": N // 2}  # ood-bench's errors send users here
    assert summary["index"]["type"] == "flat"
    assert {"created", "zsfs_version", "source", "dtype", "path"} <= set(summary)

    result = run_cli("info", folder / "cli.h5")
    assert result.exit_code == 0 and "ViT-B-32" in result.output and "pets" in result.output
    assert f"2 labels: cat ({(N + 1) // 2}); dog ({N // 2})" in output_text(result)


def test_cli_import_in_a_log_says_how_far_it_got(inputs, monkeypatch):
    """Bug (new-user review): without a terminal (a job's log) import printed nothing until its
    summary: a long import looked hung."""
    import zsfs.cli.store

    monkeypatch.setattr(zsfs.cli.store, "LOG_SECONDS", 0.0)  # a line per shard here
    folder = inputs["dir"]
    result = run_cli("import", folder / "log.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
                     folder / "backbone.npy", "--paths", folder / "paths.csv", "--shard-size", "25")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("import:")]
    # new user: no total, and nothing during the index and master (minutes at scale), nor of a resume
    assert lines == [f"import: 25 of {N} rows written...", f"import: 50 of {N} rows written...",
                     f"import: {N} of {N} rows written; building the index and the master..."], result.output
    (folder / "log.h5").unlink()
    for shard in (0, 1):  # two shards to write again (review: with one, its first line was also its last)
        (folder / "log.shards" / f"shard-0000{shard}.h5").unlink()
    monkeypatch.setattr(zsfs.cli.store, "LOG_SECONDS", 1000.0)  # the first line and the last
    result = run_cli("import", folder / "log.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
                     folder / "backbone.npy", "--paths", folder / "paths.csv", "--shard-size", "25")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("import:", "Resuming"))]
    assert lines == ["Resuming: 1 of the 3 shards was finished by an earlier run and is kept; 2 shards are written "
                     "now.", "import: 25 of 50 rows written...",
                     "import: 50 of 50 rows written; building the index and the master..."], result.output


def test_cli_import_names_paths_given_twice(inputs):
    """Rows that repeat a path are kept (the table is taken as written) and named, as extract
    names a list file's repeats; an import without repeats says nothing of them."""
    folder = inputs["dir"]
    paths = inputs["paths"][:]
    paths[7] = paths[3] = paths[50] = "photos/a b.jpg"
    paths[9] = paths[2]
    pl.DataFrame({"path": paths}).write_csv(folder / "twice.csv")
    common = ["--clip-embeddings", str(folder / "clip.npy"), "--backbone-features", str(folder / "backbone.npy")]
    result = run_cli("import", folder / "twice.h5", *common, "--paths", folder / "twice.csv")
    assert result.exit_code == 0, result.output
    assert "2 paths given twice or more (each row kept): photos/002.jpg; photos/a b.jpg" in " ".join(
        result.output.split())
    with Store(folder / "twice.h5") as store:
        assert store.n_images == N and store.paths().tolist() == paths
    summary = import_store(folder / "lib.h5", clip_embeddings=folder / "clip.npy",
                           backbone_features=folder / "backbone.npy", paths=folder / "twice.csv")
    assert summary.repeated_paths == ["photos/002.jpg", "photos/a b.jpg"] and summary.n_images == N
    result = run_cli("import", folder / "once.h5", *common, "--paths", folder / "paths.csv")
    assert result.exit_code == 0 and "twice" not in result.output


def test_cli_errors_exit_1_without_traceback(inputs):
    folder = inputs["dir"]
    result = run_cli("info", folder / "nothing.h5")  # (review: click's own runner turned any exception into exit 1)
    message = output_text(result)  # rich wraps long lines
    assert result.exit_code == 1 and "nothing.h5 does not exist" in message and "Traceback" not in message


def test_cli_reimport_with_labels_asks_for_overwrite_then_has_them(inputs):
    """A second `zsfs import` that adds labels changes the listing (paths + labels), so the old
    shards are not reused: it stops with the usual identity-mismatch error, and --overwrite
    rebuilds the store with the labels."""
    folder = inputs["dir"]
    command = ["import", str(folder / "re.h5"), "--clip-embeddings", str(folder / "clip.npy"),
               "--backbone-features", str(folder / "backbone.npy"), "--paths", str(folder / "paths.csv"),
               "--shard-size", "40"]
    result = run_cli(*command)
    assert result.exit_code == 0, result.output
    with Store(folder / "re.h5") as store:
        assert not store.has_labels
    result = run_cli(*command, "--label-column", "label")
    assert result.exit_code == 1 and "--overwrite" in output_text(result), result.output
    said = output_text(result)  # review: "the source's file names or labels changed"; nothing had but the option
    assert f"Error: {folder / 're.h5'} was imported without --label-column: leave it out to add to that store (labels " \
           "are part of what identifies the images), and its finished shards are reused only so; --overwrite imports " \
           "it again with this run's labels" in said and "changed" not in said, said
    result = run_cli(*command, "--label-column", "label", "--overwrite")
    assert result.exit_code == 0, result.output
    with Store(folder / "re.h5") as store:
        assert store.labels().tolist() == inputs["labels"]
    # review: a rerun that left the option out said "the source's file names or labels changed"
    said = output_text(run_cli(*command))
    assert f"Error: {folder / 're.h5'} was imported with --label-column label: pass it again (labels are part" in said
    assert "changed" not in said, said


def test_an_imported_store_without_vocabulary_points_to_import_not_to_zsfs_text(inputs):
    """Bug: fit and info told users of imported stores to run `zsfs text`, which cannot embed class
    names in another tool's space."""
    folder = inputs["dir"]
    master = import_store(folder / "bare store.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=folder / "paths.csv", label_column="label").master
    outcome = run_cli("fit", "--store", master, "--out", folder / "run")
    said = output_text(outcome)
    # the store's whole path, quoted (review: its name alone named a file in the current folder)
    hint = f"`zsfs import '{folder / 'bare store.h5'}' ... --vocab NAME=FILE.npz` (rerun it"
    assert outcome.exit_code == 1 and f"add one with {hint}" in said, said
    assert "zsfs text" not in said and not (folder / "run").exists()
    said = output_text(run_cli("info", master))
    assert f"No vocabularies yet: add one with {hint}" in said, said
    (folder / "twice.txt").write_text("cat\ncat\n")  # bug: the class file's fault came first, then this
    said = output_text(run_cli("text", master, "--classes", folder / "twice.txt", "--vocab", "pets"))
    assert "the store's CLIP embeddings were imported (`zsfs import`) from another tool, so zsfs does not have the " \
           "model that made them ('imported-clip') to embed with; embed the class names with that tool" in said, said


def test_a_fit_on_a_vocabulary_without_an_ensemble_records_the_single_prompts_it_read(inputs):
    """Bug: config.json said prompts 'ensemble' for a vocabulary imported with single rows only
    (they are what the fit read), and `--prompts ensemble` said nothing of it."""
    folder = inputs["dir"]
    master = import_store(folder / "v.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                          paths=folder / "paths.csv", vocabularies={"pets": folder / "pets.npz",
                                                                     "pets80": folder / "pets_ensemble.npz"}).master
    quick = ["--k", "2", "--candidates", "6", "--cycle-epochs", "1"]
    note = "vocabulary 'pets' holds no prompt ensemble of its own (its ensemble rows are its single-prompt rows, as " \
           "when imported without one): --prompts ensemble reads those"
    for vocabulary, prompts, used in (("pets", [], "single"), ("pets", ["--prompts", "ensemble"], "single"),
                                      ("pets80", ["--prompts", "ensemble"], "ensemble"),
                                      ("pets80", ["--prompts", "single"], "single")):
        run = folder / f"run-{vocabulary}-{len(prompts)}-{used}"
        outcome = run_cli("fit", "--store", master, "--vocab", vocabulary, *prompts, *quick, "--out", run)
        assert outcome.exit_code == 0, outcome.output
        config = json.loads((run / "config.json").read_text())
        assert config["parameters"]["prompts"] == (prompts[1] if prompts else "ensemble")
        assert config["prompts_used"] == used
        assert (note in " ".join(output_text(outcome).split())) == (vocabulary == "pets" and bool(prompts))
    # review: judged by n_templates, a real ensemble given n_templates 1 read as "single", and a file
    # without one claiming 5 templates as "ensemble"
    np.savez(folder / "one.npz", classes=np.array(["cat", "dog"]), single=inputs["text"],
             ensemble=unit_rows(2, D_CLIP, 6), n_templates=np.array(1))
    np.savez(folder / "claims.npz", classes=np.array(["cat", "dog"]), single=inputs["text"], n_templates=np.array(5))
    with pytest.raises(ZsfsError, match="claims.npz: n_templates is 5 but it holds no ensemble"):
        import_store(master, clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv", vocabularies={"claims": folder / "claims.npz"})
    import_store(master, clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.csv", vocabularies={"one": folder / "one.npz"})
    with Store(master) as store:
        assert store.vocabulary("one").prompts_used("ensemble") == "ensemble"
        assert store.vocabulary("pets").prompts_used("ensemble") == "single"


def test_an_unfinished_import_names_its_labels_and_vocabularies_and_its_rerun_without_them_is_told(inputs):
    """New user: a store whose import stopped among its shards said "started ... with --shard-size 40 and
    --dtype float16", not that it had labels from --label-column or its --vocab; and the rerun that left
    --label-column out got extract's "the source's file names or labels changed ... --overwrite"."""
    folder = inputs["dir"]
    command = ["import", folder / "u.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
               folder / "backbone.npy", "--paths", folder / "paths.csv", "--shard-size", "20"]
    vocab = ["--vocab", f"pets={folder / 'pets.npz'}"]

    def stop(rows: int) -> None:  # Ctrl-C after the first shard (review: the plan was written after the last)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_store(folder / "u.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv", shard_size=20, label_column="label",
                     vocabularies={"pets": folder / "pets.npz"}, progress=stop)
    said = " ".join(output_text(run_cli("info", folder / "u.h5")).split())
    assert ("--shard-size 20, --dtype float16, labels from a --label-column and --vocab pets, and 1 of its 3 shard "
            "files are there; rerun the command that builds it to finish") in said, said
    rerun = run_cli(*command, *vocab)
    said = " ".join(output_text(rerun).split())
    assert rerun.exit_code == 1 and "u.h5 was imported with --label-column label: pass it again" in said, said
    assert "changed" not in said and not (folder / "u.h5").exists()
    assert run_cli(*command, "--label-column", "label", *vocab).exit_code == 0  # as the messages say
    with Store(folder / "u.h5") as store:
        assert store.labels().tolist() == inputs["labels"] and store.vocabulary_names() == ["pets"]


def test_an_import_stopped_between_its_vocabularies_is_named_not_fitted_on_the_other(inputs):
    """Review: an import stopped after its master and first vocabulary (killed, a full disk) left a store
    that looked finished with one vocabulary: `zsfs fit` took it as "the store's only one" and fitted on
    the wrong class list. The store now records the vocabularies its command writes after the master."""
    folder = inputs["dir"]
    many = [f"class {i}" for i in range(4000)]  # a vocabulary file larger than the store's other files
    np.savez(folder / "many.npz", classes=np.array(many), single=unit_rows(len(many), D_CLIP, 5))
    common = ["import", folder / "v.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
              folder / "backbone.npy", "--paths", folder / "paths.csv", "--label-column", "label",
              "--vocab", f"pets={folder / 'pets.npz'}", "--vocab", f"many={folder / 'many.npz'}"]
    stopped = run_zsfs(*common, file_size_limit=150_000)  # the OS stops the write of the second vocabulary
    assert stopped.returncode == 1 and "file-size limit" in stopped.output, stopped.output
    unwritten = ("vocabulary 'many' was not written: the zsfs import that made the store was stopped before it "
                 "wrote it (after the store's images); rerun that command, which reuses the finished shards")
    with Store(folder / "v.h5") as store:
        assert store.vocabulary_names() == ["pets"] and store.unwritten_vocabularies == ["many"]
        with pytest.raises(StoreError, match="has no vocabulary 'many': vocabulary 'many' was not written"):
            store.vocabulary("many")
        with pytest.raises(StoreError, match=re.escape(unwritten)):
            store.verify()
    info = run_cli("info", folder / "v.h5")
    assert info.exit_code == 0 and f"Note: {unwritten}." in " ".join(output_text(info).split())
    assert "No vocabularies yet" not in output_text(info)
    # failure test: a fit that opened the store while its import ran was told the import "was stopped"
    with lock_held_by_another_process(folder / "v.h5"), Store(folder / "v.h5") as store:
        assert store.unwritten_note() == ("vocabulary 'many' is not written: the zsfs import that made the store "
                                          "writes it after its images, and another zsfs process is writing the store "
                                          "now; once that is done, rerun the command if it is still missing")
    assert json.loads(run_cli("info", "--json", folder / "v.h5").output)["unwritten_vocabularies"] == ["many"]
    quick = ["--k", "2", "--candidates", "6", "--cycle-epochs", "1"]
    for chosen, code, said in (([], 2, f"{unwritten}; or choose one of pets with --vocab"),  # bug: it fitted
                               (["--vocab", "many"], 1, unwritten)):                   # on 'pets', its only one
        outcome = run_cli("fit", "--store", folder / "v.h5", *chosen, *quick, "--out", folder / "run")
        assert outcome.exit_code == code and said in " ".join(output_text(outcome).split()), outcome.output
        assert not (folder / "run").exists()
    assert run_cli("fit", "--store", folder / "v.h5", "--vocab", "pets", *quick, "--out", folder / "run").exit_code == 0
    assert common[-2:] == ["--vocab", f"many={folder / 'many.npz'}"]
    assert run_zsfs(*common[:-2]).returncode == 0  # a rerun without that vocabulary
    with Store(folder / "v.h5") as store:  # review: the plan of the stopped run was kept for good
        assert store.vocabulary_names() == ["pets"] and store.unwritten_vocabularies == []
        store.verify()
    assert run_zsfs(*common, file_size_limit=150_000).returncode == 1  # stopped again
    assert run_zsfs(*common).returncode == 0  # the rerun writes it
    with Store(folder / "v.h5") as store:
        assert store.vocabulary_names() == ["many", "pets"] and store.unwritten_vocabularies == []
        assert store.vocabulary("many").classes == many
        store.verify()


def test_an_import_holds_the_store_lock_from_its_images_to_its_vocabularies(inputs, monkeypatch):
    """Failure test: readers that opened the store between its master and its vocabularies, while
    `zsfs import --overwrite` ran, were told the import "was stopped" and to rerun it: the import
    let go of the store's lock between the two."""
    from zsfs.store import locks

    folder = inputs["dir"]
    master = folder / "held.h5"
    held, write = [], importer.write_vocabulary

    def noting_the_lock(path, *args, **kwargs):
        held.append(locks.lock_path(Path(path).absolute()) in locks._held)
        return write(path, *args, **kwargs)

    monkeypatch.setattr(importer, "write_vocabulary", noting_the_lock)
    import_store(master, clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.csv", vocabularies={"pets": folder / "pets.npz"})
    assert held == [True] and locks.lock_path(master.absolute()) not in locks._held


def test_a_reimport_does_not_replace_a_vocabulary_by_other_classes(inputs):
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv")
    master = import_store(folder / "v.h5", vocabularies={"pets": folder / "pets.npz"}, **common).master
    other = folder / "other.npz"
    np.savez(other, classes=np.array(["emu", "yak"]), single=unit_rows(2, D_CLIP, 4))
    with pytest.raises(ZsfsError, match="already has a vocabulary 'pets' with other classes \\(2: cat; dog\\)"):
        import_store(folder / "v.h5", vocabularies={"pets": other}, **common)
    import_store(folder / "v.h5", vocabularies={"pets": folder / "pets_ensemble.npz"}, **common)  # adds an ensemble
    with Store(master) as store:
        assert store.vocabulary("pets").classes == ["cat", "dog"] and store.vocabulary("pets").n_templates == 80
    # Bug: the same classes with other text embeddings replaced them without a word (earlier fits used them)
    for kind in ("single", "ensemble"):
        arrays = dict(np.load(folder / "pets_ensemble.npz"))
        arrays[kind] = -arrays[kind]
        np.savez(folder / "changed.npz", **arrays)
        with pytest.raises(ZsfsError, match=f"already has a vocabulary 'pets' of these classes with other text "
                                            f"embeddings \\({kind}; .*\\), which earlier fits used"):
            import_store(folder / "v.h5", vocabularies={"pets": folder / "changed.npz"}, **common)
    import_store(folder / "v.h5", vocabularies={"pets": folder / "pets_ensemble.npz"}, **common)  # the same: a rerun
    import_store(folder / "v.h5", vocabularies={"pets": other}, overwrite=True, **common)  # a new store
    with Store(master) as store:
        assert store.vocabulary("pets").classes == ["emu", "yak"]


def test_a_rerun_that_repairs_a_shard_does_not_replace_a_vocabulary_by_other_classes(inputs):
    """With a shard missing the store cannot be opened, so the vocabulary check before the write
    passes; the rerun repairs the shard and must then refuse the other classes."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", shard_size=25)
    master = import_store(folder / "v.h5", vocabularies={"pets": folder / "pets.npz"}, **common).master
    (folder / "v.shards" / "shard-00001.h5").unlink()
    other = folder / "other.npz"
    np.savez(other, classes=np.array(["emu", "yak"]), single=unit_rows(2, D_CLIP, 4))
    with pytest.raises(ZsfsError, match="already has a vocabulary 'pets' with other classes \\(2: cat; dog\\)"):
        import_store(folder / "v.h5", vocabularies={"pets": other}, **common)
    with Store(master) as store:
        assert store.vocabulary("pets").classes == ["cat", "dog"] and store.verify()["shards"] == 3


def test_a_rerun_with_other_embeddings_does_not_reuse_the_old_shards(inputs):
    """Bug: the import's identity held the paths and model names only, so a rerun after the
    embeddings were exported again kept the old rows (or, after an interruption, mixed them)."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", shard_size=25)
    master = import_store(folder / "r.h5", **common).master
    import_store(folder / "r.h5", **common)  # the same inputs: a rerun reuses everything
    np.save(folder / "clip.npy", unit_rows(N, D_CLIP, 9))  # exported again, same shape
    with pytest.raises(ZsfsError, match="--overwrite"):
        import_store(folder / "r.h5", **common)
    np.save(folder / "clip.npy", unit_rows(N, D_CLIP, 9).astype(np.float16))  # and at another size
    with pytest.raises(ZsfsError, match=rf"its clip embeddings changed since the store was built \(clip.npy: "
                                        rf"{N * D_CLIP * 4 + 128:,} bytes then, {N * D_CLIP * 2 + 128:,} now\)"):
        import_store(folder / "r.h5", **common)
    import_store(folder / "r.h5", **common, overwrite=True)
    with Store(master) as store:
        np.testing.assert_allclose(store.read("clip"), unit_rows(N, D_CLIP, 9), atol=1e-3)


def test_a_rerun_after_rows_changed_in_place_outside_the_sample_is_refused(tmp_path):
    """Bug (new-user review): the identity samples 4,096 rows, so embeddings exported again in place
    with a few other rows changed reused the old shards: exit 0 and a stale store."""
    n = 5000
    np.save(tmp_path / "clip.npy", unit_rows(n, 4, 0))
    np.save(tmp_path / "backbone.npy", unit_rows(n, 4, 1))
    pl.DataFrame({"path": [f"{i}.jpg" for i in range(n)]}).write_csv(tmp_path / "paths.csv")
    common = dict(clip_embeddings=tmp_path / "clip.npy", backbone_features=tmp_path / "backbone.npy",
                  paths=tmp_path / "paths.csv", shard_size=2000)
    master = import_store(tmp_path / "s.h5", **common).master
    sampled = np.unique(np.linspace(0, n - 1, 4096).round().astype(int))
    row = int(np.setdiff1d(np.arange(n), sampled)[0])
    exported = np.load(tmp_path / "clip.npy", mmap_mode="r+")  # written in place, as an exporter may
    exported[row] *= -1
    exported.flush()
    del exported
    with pytest.raises(ZsfsError, match="--overwrite") as raised:
        import_store(tmp_path / "s.h5", **common)
    # new user: the message held both records' file lists, hashes and times (~1,000 characters)
    assert "differs in clip; its clip embeddings changed since the store was built (clip.npy: other content))" in \
        str(raised.value) and "imported_files" not in str(raised.value), raised.value
    import_store(tmp_path / "s.h5", **common, overwrite=True)
    with Store(master) as store:
        np.testing.assert_allclose(store.read("clip")[row], -unit_rows(n, 4, 0)[row], atol=1e-3)


def test_a_rerun_after_a_file_was_touched_or_copied_without_its_time_resumes(inputs):
    """Bug (new-user review): the store recorded each .npy file's modification time, so a rerun
    after `touch`, a `cp` without -p or a restore from backup (same bytes) was refused as other
    data ("differs in backbone"), and only --overwrite, embedding everything again, went on."""
    from zsfs.importer import file_stamps

    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", shard_size=25)
    master = import_store(folder / "t.h5", **common).master
    shards = {path: path.stat().st_mtime_ns for path in (folder / "t.shards").glob("shard-*.h5")}
    subprocess.run(["touch", "-d", "2030-01-01", str(folder / "backbone.npy")], check=True)
    subprocess.run(["cp", str(folder / "clip.npy"), str(folder / "copy.npy")], check=True)  # a new time
    os.replace(folder / "copy.npy", folder / "clip.npy")
    import_store(folder / "t.h5", **common, vocabularies={"pets": folder / "pets.npz"})
    with Store(master) as store:
        assert store.vocabulary_names() == ["pets"]
        assert [stamp[0] for stamp in store.backbone_info["imported_files"]] == ["backbone.npy"]
    assert {path: path.stat().st_mtime_ns for path in shards} == shards  # every shard reused
    np.save(folder / "backbone.npy", -np.load(folder / "backbone.npy"))  # other bytes: refused as before
    with pytest.raises(ZsfsError, match="--overwrite"):
        import_store(folder / "t.h5", **common)
    stamp = [folder.joinpath("clip.npy").name, *(lambda i: [i.st_size, i.st_mtime_ns])(folder.joinpath("clip.npy").stat())]
    assert file_stamps([folder / "clip.npy"], [stamp]) == [stamp]  # a store of the time-only form keeps it


def test_a_store_imported_before_the_files_were_recorded_still_takes_a_rerun(inputs):
    """A store whose records lack imported_files (imported before 2026-12-03) is resumed and given
    a vocabulary by the same import (docs/store.md), not refused as other data."""
    from zsfs.import_inputs import load_rows
    from zsfs.importer import imported_record
    from zsfs.store import write_store

    folder = inputs["dir"]
    clip, backbone = load_rows(folder / "clip.npy", "clip"), load_rows(folder / "backbone.npy", "backbone")
    old = {name: {key: value for key, value in imported_record(name, rows, folder / file).items()
                  if key != "imported_files"}
           for name, rows, file in (("imported-clip", clip, "clip.npy"), ("imported-backbone", backbone, "backbone.npy"))}
    master = write_store(folder / "old.h5", clip=clip, backbone=backbone, paths=np.asarray(inputs["paths"], dtype=object),
                         labels=None, clip_info=old["imported-clip"], backbone_info=old["imported-backbone"],
                         source=str((folder / "paths.csv").resolve()), shard_size=25)
    before = {path.name: path.stat().st_mtime_ns for path in (folder / "old.shards").glob("shard-*.h5")}
    import_store(master, clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.csv", shard_size=25, vocabularies={"pets": folder / "pets.npz"})
    with Store(master) as store:
        assert store.vocabulary_names() == ["pets"] and "imported_files" not in store.clip_info
    assert {path.name: path.stat().st_mtime_ns for path in (folder / "old.shards").glob("shard-*.h5")} == before


def test_the_sampled_rows_hash_generates_each_synthetic_block_once():
    """Bug: the identity's row sample read a synthetic store one row at a time, each read
    generating the row's whole block again (a 1,500-row test store took a minute to write)."""
    generator = SyntheticGenerator(BLOCK_ROWS + 100, 3, clip_dim=8, backbone_dim=8)
    generated = []
    clip_rows = generator._clip_rows
    generator._clip_rows = lambda *args: generated.append(1) or clip_rows(*args)
    rows_sha256(_LazyRows(generator, 0, 8), _LazyRows(generator, 1, 8))
    assert len(generated) == 4  # two blocks, once for the clip sample and once for the backbone's


def test_the_same_bytes_in_another_shape_or_dtype_are_other_embeddings():
    """Review (mutation: a digest of the sampled bytes alone passed): 60 x 8 rows are not 30 x 16."""
    rows = unit_rows(60, 8, 0)
    digests = {rows_sha256(rows), rows_sha256(rows.reshape(30, 16)), rows_sha256(rows.view(np.int32))}
    assert len(digests) == 3 and rows_sha256(rows.copy()) == rows_sha256(rows)


def test_a_synthetic_store_refuses_a_zero_shot_accuracy_it_cannot_reach():
    """bug: with few CLIP dimensions the noise search ended at no noise, silently: every image of
    a class had one CLIP row (neighbour and candidate rankings all ties) and zero-shot sat near chance."""
    with pytest.raises(ValueError, match=r"clip_accuracy 0.6 is out of reach with clip_dim 32 and 3 classes "
                                         r"\(noise-free zero-shot accuracy 0\.\d\d\)"):
        SyntheticGenerator(100, 3, clip_dim=32, backbone_dim=8, seed=2)
    with pytest.raises(ValueError, match="clip_accuracy 1.0 needs a noise-free store"):
        SyntheticGenerator(100, 3, clip_dim=64, backbone_dim=8, seed=2, clip_accuracy=1.0)
    reached = SyntheticGenerator(100, 3, clip_dim=64, backbone_dim=8, seed=2)
    clip, _ = reached.rows(0, 100)
    assert len(np.unique(clip[reached.labels() == reached.names[0]], axis=0)) > 1


def test_a_rerun_repairs_shards_that_were_cut_short_removed_or_damaged(inputs):
    """Bug: the errors said "rerun the command that made it", but a rerun reused a cut-short shard
    and stopped on a missing one; now it writes those shards again, and only those."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", vocabularies={"pets": folder / "pets.npz"}, shard_size=10)
    master = import_store(folder / "r.h5", **common).master
    shards = sorted((folder / "r.shards").glob("shard-*.h5"))
    untouched = shards[0].stat().st_mtime_ns
    os.truncate(shards[1], 10_000)  # cut short (a full disk, a partial copy)
    shards[2].unlink()
    with pytest.raises(ZsfsError, match="rerun the command that made the store"):
        Store(master)
    import_store(folder / "r.h5", **common)
    with Store(master) as store:
        store.verify()
        np.testing.assert_allclose(store.read("clip"), inputs["clip"], atol=1e-3)
        assert store.vocabulary("pets").classes == ["cat", "dog"]
    assert shards[0].stat().st_mtime_ns == untouched
    with open(shards[3], "r+b") as file:  # damage that keeps the size: only the checksums see it
        file.seek(-500, os.SEEK_END)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    with Store(master) as store, pytest.raises(ZsfsError, match="remove it and rerun the command"):
        store.verify()
    shards[3].unlink()  # as the message says
    import_store(folder / "r.h5", **common)
    with Store(master) as store:
        assert store.verify()["shards"] == 6
    untouched, size = shards[0].stat().st_mtime_ns, shards[4].stat().st_size
    with open(shards[4], "ab") as file:  # grown: HDF5 still opens it, only the recorded size tells
        file.write(b"\0" * 4096)
    with pytest.raises(ZsfsError, match="is damaged or does not belong to this store; remove it and rerun"):
        Store(master)
    import_store(folder / "r.h5", **common)
    with Store(master) as store:
        assert store.verify()["shards"] == 6
    assert shards[4].stat().st_size == size  # written again, not recorded as it was
    assert shards[0].stat().st_mtime_ns == untouched


def test_a_repair_keeps_the_recorded_digest_of_each_shard_it_did_not_write(inputs):
    """Review: a rerun that repaired one shard hashed every shard again for its new master (all of
    a large store's bytes), and would record damage an older shard took since (bit rot, which
    leaves its dates) as its digest. Shards whose inode did not change since the old master keep
    the digest it recorded; a shard changed since (a copy with its dates kept) is hashed."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", shard_size=10)
    master = import_store(folder / "r.h5", **common).master
    shards = sorted((folder / "r.shards").glob("shard-*.h5"))
    with h5py.File(master, "r+") as file:  # a digest shard 0 does not have: kept, it is what the new master says
        recorded = file[schema.SHARDS_SHA256].asstr()[:]
        file[schema.SHARDS_SHA256][0] = "0" * 64
    shards[2].unlink()
    import_store(folder / "r.h5", **common)
    with Store(master) as store, pytest.raises(ZsfsError, match=f"shard file r.shards/{shards[0].name} does not match "
                                                                  "its recorded checksum"):
        store.verify()
    shards[0].unlink()  # as the message says: the rerun writes it again, and hashes it
    import_store(folder / "r.h5", **common)
    with Store(master) as store:
        assert store.verify()["shards"] == 6
    # the review's case: a valid copy of another build's shard 1, dates kept (cp -p, rsync -a), put in
    # place; the master is older than the copy's inode, so it is hashed, not given the old digest
    before = shards[1].stat()
    data = bytearray(shards[1].read_bytes())
    at = data.index(b"photos/011.jpg")
    data[at + len("photos/01")] = ord("9")  # other bytes, same size (a string no HDF5 checksum covers)
    shards[1].write_bytes(bytes(data))
    with h5py.File(shards[1], "r+") as file:  # a valid shard: its text digest its own (the attribute, same size)
        file.attrs[schema.ATTR_STRINGS_SHA256] = strings_sha256(file)
    assert shards[1].stat().st_size == before.st_size
    os.utime(shards[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    shards[3].unlink()
    import_store(folder / "r.h5", **common)
    with Store(master) as store:
        assert store.verify()["shards"] == 6
    with h5py.File(master, "r") as file:
        assert file[schema.SHARDS_SHA256].asstr()[1] != recorded[1]


def test_an_invalid_vocabulary_name_is_refused_before_the_store_is_written(inputs):
    folder = inputs["dir"]
    with pytest.raises(ParameterError, match="invalid vocabulary name 'a/b'"):  # walkthrough: was a ZsfsError
        import_store(folder / "o.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv", vocabularies={"a/b": folder / "pets.npz"})
    assert not (folder / "o.h5").exists() and not (folder / "o.shards").exists()


def test_a_vocabulary_of_byte_strings_has_text_class_names(inputs):
    """Bug: numpy "S" arrays (as h5py exports give) became classes named "b'cat'"."""
    folder = inputs["dir"]
    np.savez(folder / "bytes.npz", classes=np.array([b"cat", b"dog"]), single=inputs["text"])
    master = import_store(folder / "b.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                          paths=folder / "paths.csv", vocabularies={"pets": folder / "bytes.npz"}).master
    with Store(master) as store:
        assert store.vocabulary("pets").classes == ["cat", "dog"]


def test_a_zero_row_is_named_by_its_row_in_the_whole_input_and_nothing_is_written(inputs):
    """Bugs: the row was counted from the start of its shard (a zero row 45 with 20-row shards read
    'row 5'); the shards before it were left behind, and a rerun with the row fixed was refused as
    another input."""
    folder = inputs["dir"]
    backbone = inputs["backbone"].copy()
    backbone[45], backbone[47, 0] = 0, np.nan
    np.save(folder / "zero.npy", backbone)
    with pytest.raises(ZsfsError, match=r"^the backbone features: 2 rows are zero or not finite \(first: row 45, "
                                        r"counted from 0\); fix or drop them .*; nothing was written or removed$"):
        import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "zero.npy",
                     paths=folder / "paths.csv", shard_size=20)
    assert not (folder / "out.h5").exists() and not (folder / "out.shards").exists()
    import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.csv", shard_size=20)


def test_overwrite_with_a_bad_row_keeps_the_store_it_would_replace(inputs):
    """Bug: `import --overwrite` removed the old store, then refused a NaN row of the new input."""
    folder = inputs["dir"]
    clip = inputs["clip"].copy()
    clip[-1, 3] = np.inf
    np.save(folder / "inf.npy", clip)
    master = import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=folder / "paths.csv").master
    with pytest.raises(ZsfsError, match=f"1 row is zero or not finite \\(first: row {len(clip) - 1}, counted from 0"):
        import_store(folder / "out.h5", clip_embeddings=folder / "inf.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv", overwrite=True)
    with Store(master) as store:
        assert store.verify()["shards"] >= 1 and store.n_images == len(clip)


def test_features_of_extreme_but_finite_scale_are_normalised(inputs):
    """Bug: features x 1e20 or x 1e-24 (float32) were refused as 'zero or not finite': their
    float32 squares overflow or vanish."""
    folder = inputs["dir"]
    backbone = inputs["backbone"].astype(np.float32)
    backbone[:30] *= np.float32(1e20)
    backbone[30:] *= np.float32(1e-24)
    np.save(folder / "extreme.npy", backbone)
    import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "extreme.npy",
                 paths=folder / "paths.csv")
    with Store(folder / "out.h5") as store:
        stored = store.read("backbone").astype(np.float32)
    np.testing.assert_allclose(stored, inputs["backbone"], atol=2e-3)


def test_a_vocabulary_file_that_is_no_usable_npz_gets_its_own_reason(inputs):
    """Bugs: an object array read 'cannot read ... (allow_pickle=False); expected an .npz file' of an
    .npz; a CSV passed on numpy's advice to unpickle it; classes of shape (2, 5) blamed `single`."""
    folder = inputs["dir"]
    np.savez(folder / "objects.npz", classes=np.array(["cat", "dog"], dtype=object), single=inputs["text"])
    np.savez(folder / "square.npz", classes=np.array([["cat", "dog"], ["owl", "emu"]]), single=inputs["text"])
    (folder / "fake.npz").write_text("classes,cat,dog\n")
    # new user: a misspelled "ensembel" was ignored without a word (every fit then used the single prompt)
    np.savez(folder / "typo.npz", classes=np.array(["cat", "dog"]), single=inputs["text"], ensembel=inputs["text"])
    np.savez(folder / "extra.npz", classes=np.array(["cat", "dog"]), single=inputs["text"], model=np.array("x"),
             templates=np.array(["a photo of a {}."]), n_templates=np.array(1))  # review: "templates" is no typo here
    refused = {"typo.npz": "has an array 'ensembel'; did you mean 'ensemble'[?] zsfs reads classes, single, ensemble, "
                           "n_templates$",
               "objects.npz": "holds an object array; save its classes as a string array",
               "square.npz": r"classes has shape \(2, 2\); expected one name per class, a 1-d array",
               "paths.csv": r"is not an .npz file \(numpy.savez",
               "fake.npz": r"is not an .npz file \(numpy.savez"}
    for name, reason in refused.items():
        with pytest.raises(ZsfsError, match=reason) as caught:
            import_store(folder / "v.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                         paths=folder / "paths.csv", vocabularies={"pets": folder / name})
        assert "pickle" not in str(caught.value), name
    assert not (folder / "v.h5").exists()
    import_store(folder / "v.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "paths.csv", vocabularies={"pets": folder / "extra.npz"})  # another tool's own array


def test_a_rerun_through_a_link_to_the_store_is_refused(inputs):
    """Bug: `zsfs import current.h5 ... --vocab` with current.h5 a link to real.h5 wrote a whole
    new store (current.shards/) in place of the link, and real.h5 got no vocabulary."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv")
    real = import_store(folder / "real.h5", **common).master
    (folder / "current.h5").symlink_to("real.h5")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match=r"current.h5 is a link to .*real.h5; pass that path"):
            import_store(folder / "current.h5", **common, vocabularies={"pets": folder / "pets.npz"},
                         overwrite=overwrite)
    assert (folder / "current.h5").is_symlink() and not (folder / "current.shards").exists()
    with Store(folder / "current.h5") as store:  # reading through the link is fine
        assert store.n_images == N and store.path.parent / "real.shards" == store.data_dir
    assert real.is_file()


def test_embeddings_read_from_another_place_are_named_as_such(inputs, monkeypatch):
    """Bug: the same embeddings moved to another folder were refused as 'differs in clip', as if
    they had changed. And import_store("s.h5", ...) with a str failed with an AttributeError."""
    folder = inputs["dir"]
    monkeypatch.chdir(folder)
    import_store("s.h5", clip_embeddings="clip.npy", backbone_features="backbone.npy", paths="paths.csv")
    (folder / "moved").mkdir()
    (folder / "clip.npy").rename(folder / "moved" / "clip.npy")
    with pytest.raises(StoreMismatchError, match=rf"differs in clip; its clip embeddings were imported from "
                                                 rf"{folder / 'clip.npy'}, this run reads {folder / 'moved' / 'clip.npy'}\); "
                                                 "keep it and choose another output, or pass --overwrite"):
        import_store("s.h5", clip_embeddings="moved/clip.npy", backbone_features="backbone.npy", paths="paths.csv")


def test_a_header_and_labels_with_spaces_are_read_as_extract_reads_a_list(inputs):
    """New user: "path, label" named the column " label" (the error showed "columns: path,  label"), and
    --label-column " label" stored the classes " cat" and " dog", which no class name matches."""
    folder = inputs["dir"]
    rows = "".join(f"{path}, {label} \n" for path, label in zip(inputs["paths"], inputs["labels"]))
    (folder / "spaced.csv").write_text("path, label\n" + rows)
    import_store(folder / "s.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "spaced.csv", label_column="label")
    with Store(folder / "s.h5") as store:
        assert store.labels().tolist() == inputs["labels"] and store.paths().tolist() == inputs["paths"]


def test_a_store_imported_with_labels_as_written_says_so_on_a_rerun(inputs, monkeypatch):
    """Review: a store imported before labels were stripped (" cat" kept) could no longer be rerun (to add
    a vocabulary, to resume), and the refusal said the labels had changed, of a file that had not."""
    import zsfs.importer

    folder = inputs["dir"]
    rows = "".join(f"{path}, {label}\n" for path, label in zip(inputs["paths"], inputs["labels"]))
    (folder / "spaced.csv").write_text("path,label\n" + rows)
    files = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                 paths=folder / "spaced.csv", label_column="label")
    column = zsfs.importer.column
    with monkeypatch.context() as earlier:  # the zsfs of before 2026-12-05
        earlier.setattr(zsfs.importer, "column", lambda *args, **options: column(*args, **options, as_written=True))
        import_store(folder / "s.h5", **files)
    with Store(folder / "s.h5") as store:
        assert store.labels().tolist()[:2] == [" cat", " dog"]
    with pytest.raises(StoreMismatchError) as raised:
        import_store(folder / "s.h5", **files, vocabularies={"pets": folder / "pets.npz"})
    assert str(raised.value) == (
        f"{folder / 's.h5'} was imported by a zsfs that kept spaces at the ends of labels (before 2026-12-05), which "
        "this one strips (labels are part of what identifies the images), and its finished shards are reused only so; "
        "--overwrite imports it again with this run's labels")


def test_path_and_label_columns_that_are_not_one_text_per_row_are_one_clear_line(inputs):
    """Bugs: a list-typed label column or a binary path column with bytes that are not UTF-8 was a
    polars traceback; struct labels became classes named '{"cat"}'; an empty path or label ("")
    was accepted (a file named "", a class without a name)."""
    folder = inputs["dir"]
    paths, labels = inputs["paths"], inputs["labels"]
    tables = {"list": ({"path": paths, "label": [[label] for label in labels]}, r"label column 'label' holds List"),
              "struct": ({"path": paths, "label": [{"name": label} for label in labels]}, "holds Struct"),
              "binary": ({"path": [path.encode() + b"\xff" for path in paths], "label": labels},
                         r"path column 'path' cannot be read as text \(invalid utf8\)"),
              "empty": ({"path": [*paths[:-1], ""], "label": labels},
                        rf"path column 'path' has 1 empty value \(first: row {N - 1}, counted from 0\)$"),
              "nameless": ({"path": paths, "label": ["", *labels[1:]]}, r"label column 'label' has 1 empty value"),
              "nul": ({"path": [*paths[:5], "photos/a\x00b.jpg", *paths[6:]], "label": labels},
                      r"path column 'path' has 1 value with a NUL byte \(first: row 5, counted from 0\)"),
              # bug: pandas' missing number (NaN) became a class named "NaN"
              "nan": ({"path": paths, "label": [float("nan") if i == 4 else 1.0 for i in range(N)]},
                      r"label column 'label' has 1 empty value \(first: row 4, counted from 0\)$")}
    for name, (table, reason) in tables.items():
        pl.DataFrame(table).write_parquet(folder / f"{name}.parquet")
        with pytest.raises(ZsfsError, match=reason):
            import_store(folder / "t.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                         paths=folder / f"{name}.parquet", label_column="label")
    assert not (folder / "t.h5").exists()


def test_vocabulary_names_read_from_a_crlf_or_bom_file_are_taken_as_class_files_are(inputs):
    """Bug: 'cat\\r', '\\ufeffdog' and 'cat ' were stored as they were, and no label matched them
    (`zsfs text` strips a class file's lines and its BOM)."""
    folder = inputs["dir"]
    np.savez(folder / "crlf.npz", classes=np.array(["\ufeffcat\r", "dog "]), single=inputs["text"])
    master = import_store(folder / "v.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                          paths=folder / "paths.csv", label_column="label", vocabularies={"pets": folder / "crlf.npz"}
                          ).master
    with Store(master) as store:
        assert store.vocabulary("pets").classes == ["cat", "dog"]
    np.savez(folder / "twice.npz", classes=np.array(["cat", "cat\r"]), single=inputs["text"])
    with pytest.raises(ZsfsError, match="lists 1 name more than once"):
        import_store(folder / "w.h5", clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                     paths=folder / "paths.csv", vocabularies={"pets": folder / "twice.npz"})


def test_a_bad_vocabulary_is_refused_before_the_store_is_written_or_replaced(inputs):
    """Bugs: a NaN or zero vocabulary row, or one of strings, was refused (or a ValueError
    traceback) only after the store was written: with --overwrite the old store was gone; a class
    name with an undecodable byte (os.listdir's surrogates) made a store no command could open;
    n_templates of shape (3,) or of text was a traceback; a name with a tab or a zero-width space,
    refused in a class file, was embedded and stored."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv")
    master = import_store(folder / "v.h5", **common, vocabularies={"pets": folder / "pets.npz"}).master
    text = inputs["text"]
    holes = text.copy()
    holes[1] = np.nan
    bad = {"nan.npz": (dict(single=holes), r"single: 1 row is zero or not finite \(first: row 1"),
           "zero.npz": (dict(single=np.zeros_like(text)), r"single: 2 rows are zero or not finite"),
           "text.npz": (dict(single=np.full(text.shape, "x")), r"single must be a \(classes, CLIP dim\) array of "
                                                               r"numbers, not a <U1 array of shape \(2, 8\)"),
           "complex.npz": (dict(single=text + 1j), "single must be .* array of numbers, not a complex64 array"),
           "numbers.npz": (dict(classes=np.array([np.nan, 1.0])), r"classes holds float64 values; expected strings"),
           "byte.npz": (dict(classes=np.array(["caf\udce9", "dog"])), r"has a class name that is not UTF-8 text "
                                                                     r"\(position 1, counted from 1: caf\\xe9\)"),
           "tab.npz": (dict(classes=np.array(["cat", "hot\tdog"])), r"vocabulary file .*tab.npz has an invisible "
                                                                    r"or control character in the name 'hot\\x09dog'"),
           "shape.npz": (dict(n_templates=np.array([80, 80])), r"n_templates must be one whole number >= 0 .*, not "
                                                                r"an int64 array of shape \(2,\)$"),
           "word.npz": (dict(n_templates=np.array("eighty")), r"n_templates must be .* shape \(\) \(eighty\)$")}
    for name, (arrays, reason) in bad.items():
        np.savez(folder / name, **{"classes": np.array(["cat", "dog"]), "single": text, **arrays})
        with pytest.raises(ZsfsError, match=reason):
            import_store(folder / "v.h5", **common, vocabularies={"pets": folder / name}, overwrite=True)
    with Store(master) as store:
        assert store.vocabulary_names() == ["pets"] and store.verify()["shards"] >= 1
    np.savez(folder / "ints.npz", classes=np.array(["cat", "dog"]), single=np.eye(2, text.shape[1], dtype=int))
    master = import_store(folder / "v.h5", **common, vocabularies={"ints": folder / "ints.npz"}).master  # as before
    with Store(master) as store:
        np.testing.assert_array_equal(store.vocabulary("ints").single, np.eye(2, text.shape[1]))


@pytest.mark.parametrize("vocab, message", [
    (("pets=a.npz", "pets=b.npz"), "Invalid value for '--vocab': the name 'pets' is given twice"),
    (("pets",), "Invalid value for '--vocab': expects NAME=FILE.npz, got 'pets'"),
    (("=pets.npz",), "expects NAME=FILE.npz, got '=pets.npz'"),
    ((".pets=a.npz",), "invalid vocabulary name '.pets'"),
])
def test_cli_import_refuses_a_vocabulary_named_twice_or_without_a_file(tmp_path, monkeypatch, vocab, message):
    """Two --vocab of one name kept only the last, in silence. A malformed --vocab is a usage error
    (exit 2), as the README says of option values (it was exit 1)."""
    monkeypatch.chdir(tmp_path)
    for name in ("clip.npy", "backbone.npy"):
        (tmp_path / name).write_bytes(b"")
    result = run_cli("import", "s.h5", "--clip-embeddings", "clip.npy", "--backbone-features", "backbone.npy",
                     *[arg for value in vocab for arg in ("--vocab", value)])
    assert result.exit_code == 2 and message in output_text(result)
    assert not (tmp_path / "s.h5").exists()


def test_a_vocabulary_name_in_another_unicode_form_is_the_same_vocabulary(inputs, monkeypatch):
    """New user: --vocab café and --vocab cafe + U+0301 (a macOS file name's form) made two
    vocabularies that print alike, and `zsfs fit` then asked which 'café' to use."""
    from zsfs.store.extras import write_vocabulary

    composed, decomposed = "caf\u00e9", "cafe\u0301"
    monkeypatch.chdir(inputs["dir"])
    common = ["import", "s.h5", "--clip-embeddings", "clip.npy", "--backbone-features", "backbone.npy", "--paths",
              "paths.csv", "--label-column", "label"]
    twice = run_cli(*common, "--vocab", f"{composed}=pets.npz", "--vocab", f"{decomposed}=pets_ensemble.npz")
    assert twice.exit_code == 2 and f"the name '{composed}' is given twice" in output_text(twice)
    with pytest.raises(ZsfsError, match="differ only in Unicode form"):  # the Python API too
        import_store("s.h5", clip_embeddings="clip.npy", backbone_features="backbone.npy", paths="paths.csv",
                     vocabularies={composed: "pets.npz", decomposed: "pets_ensemble.npz"})
    assert run_cli(*common, "--vocab", f"{decomposed}=pets.npz").exit_code == 0
    with Store("s.h5") as store:
        assert store.vocabulary_names() == [composed]  # kept composed (NFC)
        assert store.vocabulary(decomposed).classes == store.vocabulary(composed).classes == ["cat", "dog"]
    with pytest.raises(StoreError, match="already has a vocabulary named"):  # the one vocabulary, not a second
        write_vocabulary(Path("s.h5"), decomposed, ["cat", "dog"], inputs["text"], inputs["text"], prompt="x",
                         n_templates=1)
    fit = run_cli("fit", "--store", "s.h5", "--vocab", decomposed, "--k", "2", "--out", "run", "--cycle-epochs", "1")
    assert fit.exit_code == 0, fit.output
    assert json.loads((inputs["dir"] / "run" / "config.json").read_text())["vocabulary"] == composed

    # review: a store of an earlier zsfs holds the name decomposed; either spelling names it, a rewrite replaces it
    import h5py

    from zsfs.store import schema

    shards = inputs["dir"] / "s.shards"
    old = schema.vocabulary_file(shards, decomposed)
    schema.vocabulary_file(shards, composed).rename(old)
    with h5py.File(old, "r+") as file:
        file.attrs[schema.ATTR_NAME] = decomposed
    write_vocabulary(Path("s.h5"), composed, ["cat", "dog"], inputs["text"], inputs["text"], prompt="x",
                     n_templates=1, overwrite=True)
    with Store("s.h5") as store:
        assert store.vocabulary_names() == [decomposed] and store.vocabulary(composed).prompt == "x"
    assert run_cli(*common, "--vocab", f"{composed}=pets.npz").exit_code == 0  # the same vocabulary again
    with Store("s.h5") as store:
        assert store.vocabulary_names() == [decomposed]  # not a second 'café' beside it


@pytest.mark.parametrize("block", [1, 2, 3, 1 << 20])
def test_the_first_line_that_is_not_utf8_is_found_a_block_at_a_time(tmp_path, block):
    """Review: the error path read a whole table into memory (a 300 MB one: 1.6 GB) to number the line."""
    from zsfs.import_inputs import _first_line_not_utf8

    for data, line in ((b"a\nb\n\xe9\n", 3), (("a\n" + "é" * 10 + "\n").encode() + b"\xff", 3),
                       (b"ok\n\xc3", 2), ("ok\né\n".encode(), None)):
        (tmp_path / "t.csv").write_bytes(data)
        assert _first_line_not_utf8(tmp_path / "t.csv", block) == line, data


def test_an_import_stopped_among_its_shards_says_what_its_rerun_keeps(inputs):
    """Walkthrough: Ctrl-C after 7 of 12 shards said only "a rerun resumes", after a log line of
    5,000 rows written; extract says how many files its finished shards hold."""
    folder = inputs["dir"]
    common = dict(clip_embeddings=folder / "clip.npy", backbone_features=folder / "backbone.npy",
                  paths=folder / "paths.csv", shard_size=25)  # 60 rows: 3 shards

    def stopped_after_the_first(rows: int) -> None:
        raise KeyboardInterrupt  # as Ctrl-C lands between two shards

    with pytest.raises(KeyboardInterrupt) as stop:
        import_store(folder / "s.h5", **common, progress=stopped_after_the_first)
    assert stop.value.resume == ("the finished shards hold 25 of the 60 rows (--shard-size 25): a rerun keeps them "
                                 "and writes the other 35")
    if sys.version_info >= (3, 11):  # and a Python caller's traceback says it
        assert stop.value.__notes__ == ["The finished shards hold 25 of the 60 rows (--shard-size 25): a rerun keeps "
                                        "them and writes the other 35."]
    resumed: list = []
    import_store(folder / "s.h5", **common, on_resume=lambda kept, n_shards: resumed.append((kept, n_shards)))
    assert resumed == [(1, 3)]  # as said


def test_a_tsv_paths_table_is_read_with_tabs_so_commas_stay_in_the_paths(inputs):
    """Review: no test read a .tsv; read with commas, these paths would split into 3 fields."""
    folder, paths = inputs["dir"], [f"photos/{i:03d}, copy.jpg" for i in range(N)]
    pl.DataFrame({"path": paths, "label": inputs["labels"]}).write_csv(folder / "paths.TSV", separator="\t",
                                                                       quote_style="never")
    master = import_store(folder / "out.h5", clip_embeddings=folder / "clip.npy",
                          backbone_features=folder / "backbone.npy", paths=folder / "paths.TSV",
                          label_column="label").master
    with Store(master) as store:
        assert store.paths().tolist() == paths and store.labels().tolist() == inputs["labels"]


def test_an_array_of_a_vocabulary_file_that_zsfs_does_not_read_is_not_decompressed(inputs):
    """Security review: load_vocabulary read every array of the .npz, its docstring's "others are
    not read" notwithstanding: a vocabulary from elsewhere carrying a 3 GiB array of zeros (3 MB
    deflated) made `zsfs import` decompress it whole, and under a memory limit crash with a traceback."""
    import zipfile

    folder = inputs["dir"]
    with zipfile.ZipFile(folder / "pets.npz", "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("padding.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (3 << 28,)})
        block = bytes(64 << 20)
        for _ in range((3 << 30) // len(block)):
            member.write(block)
    outcome = run_zsfs("import", folder / "s.h5", "--clip-embeddings", folder / "clip.npy", "--backbone-features",
                       folder / "backbone.npy", "--paths", folder / "paths.csv", "--vocab",
                       f"pets={folder / 'pets.npz'}", launcher=["prlimit", f"--data={2 << 30}", "--"], timeout=300)
    assert outcome.returncode == 0 and outcome.problems == [], outcome.output
    assert run_cli("info", "--json", folder / "s.h5").exit_code == 0
