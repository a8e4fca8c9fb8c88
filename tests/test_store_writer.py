"""StoreWriter: shard files, resume, identity checks, temporary files, disk errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from zsfs.digests import file_sha256
from zsfs.errors import StoreError, StoreMismatchError
from zsfs.store import ShardData, Store, StoreWriter
from zsfs.store import schema

N_ITEMS, SHARD_SIZE, DIM = 25, 10, 8
IDENTITY = {"source": "/images", "listing_sha256": "abc", "clip": {"name": "c"}, "backbone": {"name": "b"}}
ATTRS = {"source": "/images", "clip": {"name": "c", "weights": "random"}, "backbone": {"name": "b", "weights": "random"}}


def shard_data(writer: StoreWriter, shard: int, skip_every: int = 4) -> ShardData:
    """Rows of one shard; every ``skip_every``-th listed item is recorded as skipped."""
    start, stop = writer.shard_bounds(shard)
    items = np.arange(start, stop)
    kept, skipped = items[items % skip_every != 1], items[items % skip_every == 1]
    rng = np.random.default_rng(shard)
    clip = rng.normal(size=(len(kept), DIM)).astype(np.float32)
    return ShardData(
        clip=clip / np.linalg.norm(clip, axis=1, keepdims=True),
        backbone=np.ones((len(kept), DIM + 2), np.float32) / np.sqrt(DIM + 2),
        paths=[f"img{i}.png" for i in kept],
        width=kept.astype(np.int32),
        height=kept.astype(np.int32) + 1,
        labels=[f"l{i % 2}" for i in kept],
        skipped_paths=[f"img{i}.png" for i in skipped],
        skipped_reasons=["truncated file"] * len(skipped),
    )


def new_writer(master, **kwargs) -> StoreWriter:
    options = dict(n_items=N_ITEMS, shard_size=SHARD_SIZE)
    options.update(kwargs)
    return StoreWriter(master, IDENTITY, **options)


def write_all(writer: StoreWriter) -> None:
    for shard in writer.pending_shards():
        writer.write_shard(shard, shard_data(writer, shard))


def test_bounds_and_complete_store(tmp_path):
    writer = new_writer(tmp_path / "s.h5")
    assert writer.n_shards == 3
    assert [writer.shard_bounds(s) for s in range(3)] == [(0, 10), (10, 20), (20, 25)]
    write_all(writer)
    assert writer.pending_shards() == []
    writer.finalize(ATTRS)
    with Store(tmp_path / "s.h5") as store:
        kept = [i for i in range(N_ITEMS) if i % 4 != 1]
        assert store.n_images == len(kept) and store.n_skipped == N_ITEMS - len(kept)
        assert store.paths().tolist() == [f"img{i}.png" for i in kept]
        assert store.read("width").tolist() == kept
        skipped_paths, reasons = store.skipped()
        assert skipped_paths.tolist() == [f"img{i}.png" for i in range(N_ITEMS) if i % 4 == 1]
        assert set(reasons) == {"truncated file"}
        assert store.summary()["skipped_reasons"] == {"truncated file": N_ITEMS - len(kept)}
        assert store.index_info["type"] == "flat"


def test_resume_after_partial_write_gives_identical_store(tmp_path):
    complete = new_writer(tmp_path / "full" / "s.h5")
    write_all(complete)
    complete.finalize(ATTRS)

    first = new_writer(tmp_path / "part" / "s.h5")
    first.write_shard(1, shard_data(first, 1))
    # A run killed while writing shard 2 leaves a temporary file behind.
    stale = first.shards_dir / "shard-00002.h5.dead.tmp"
    stale.write_bytes(b"half a shard")
    stale_master = tmp_path / "part" / "s.h5.tmp"
    stale_master.write_bytes(b"half a master")
    with pytest.raises(StoreError, match="2 of 3 shards are not written yet"):
        first.finalize(ATTRS)

    resumed = new_writer(tmp_path / "part" / "s.h5")
    assert resumed.pending_shards() == [0, 2]
    assert not stale.exists() and not stale_master.exists()
    write_all(resumed)
    resumed.finalize(ATTRS)
    with Store(tmp_path / "full" / "s.h5") as a, Store(tmp_path / "part" / "s.h5") as b:
        for name in schema.VIRTUAL_DATASETS:
            np.testing.assert_array_equal(a.read(name), b.read(name))
        assert a.paths().tolist() == b.paths().tolist()
        assert a.identity == b.identity


def test_incomplete_or_foreign_shard_files_count_as_pending(tmp_path):
    writer = new_writer(tmp_path / "s.h5")
    write_all(writer)
    (writer.shards_dir / "shard-00000.h5").write_bytes(b"garbage")
    with h5py.File(writer.shards_dir / "shard-00001.h5", "a") as file:
        del file.attrs[schema.ATTR_SHARD]  # written last: its absence marks an unfinished shard
    assert new_writer(tmp_path / "s.h5").pending_shards() == [0, 1]


def test_identity_mismatch_refused_then_overwritten(tmp_path):
    master = tmp_path / "s.h5"
    writer = new_writer(master)
    write_all(writer)
    writer.finalize(ATTRS)
    with pytest.raises(StoreMismatchError, match="differs in clip.*--overwrite"):
        StoreWriter(master, {**IDENTITY, "clip": {"name": "other"}}, n_items=N_ITEMS, shard_size=SHARD_SIZE)
    with pytest.raises(StoreMismatchError, match="differs in dtype"):
        new_writer(master, dtype="float32")
    # Shards alone (no master yet) are checked too.
    master.unlink()
    with pytest.raises(StoreMismatchError, match="shard-00000.h5"):
        new_writer(master, shard_size=5)

    fresh = new_writer(master, shard_size=5, overwrite=True)
    assert not any(fresh.shards_dir.glob("*.h5"))
    assert fresh.pending_shards() == list(range(5))


def test_foreign_file_at_master_path_is_refused(tmp_path):
    """A file that is not HDF5 is never replaced (bug: --overwrite replaced it, a typo costing a
    thesis), nor an HDF5 file without the store's mark (bug: the user's own features were); an
    HDF5 file too damaged to show its mark, a store maybe, is with --overwrite."""
    master = tmp_path / "s.h5"
    master.write_text("my thesis")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="s.h5 exists and is not an HDF5 file, so not a zsfs store; zsfs "
                                             "replaces only stores, even with --overwrite"):
            new_writer(master, overwrite=overwrite)
    assert master.read_text() == "my thesis"
    master.unlink()
    with h5py.File(master, "w") as file:
        file["x"] = np.zeros(3)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="s.h5 is an HDF5 file but not a zsfs store .*even with --overwrite"):
            new_writer(master, overwrite=overwrite)
    with h5py.File(master, "r") as file:
        assert file["x"].shape == (3,)
    master.write_bytes(master.read_bytes()[:600])  # truncated: its signature reads, its attributes do not
    assert h5py.is_hdf5(master)
    with pytest.raises(StoreError):
        new_writer(master)
    new_writer(master, overwrite=True)
    assert not master.exists()


def test_finalize_keeps_vocabularies_of_the_same_store(tmp_path):
    from zsfs.store import write_vocabulary

    writer = new_writer(tmp_path / "s.h5")
    write_all(writer)
    writer.finalize(ATTRS)
    write_vocabulary(tmp_path / "s.h5", "v", ["a"], np.ones((1, DIM)), np.ones((1, DIM)), prompt="{}", n_templates=1)
    # A format-1 store kept its vocabularies inside the master: the one place a rebuild must copy them from.
    with h5py.File(tmp_path / "s.h5", "r+") as master, \
            h5py.File(schema.vocabulary_file(writer.shards_dir, "v"), "r") as vocabulary:
        vocabulary.copy(vocabulary["/"], master, name=f"{schema.VOCAB_GROUP}/inside")
    writer.finalize(ATTRS)
    with Store(tmp_path / "s.h5") as store:
        assert store.vocabulary_names() == ["inside", "v"] and store.vocabulary("inside").classes == ["a"]


def test_failed_shard_write_removes_its_temporary_file(tmp_path, monkeypatch):
    writer = new_writer(tmp_path / "s.h5")
    writer.write_shard(0, shard_data(writer, 0))

    def broken(self, file, *args):
        file.create_dataset("partial", data=np.ones(1000))
        raise RuntimeError("a bug")

    monkeypatch.setattr(StoreWriter, "_write_shard_file", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # not reported as a disk problem
        writer.write_shard(1, shard_data(writer, 1))
    assert sorted(p.name for p in writer.shards_dir.iterdir()) == ["shard-00000.h5"]
    assert writer.pending_shards() == [1, 2]


def test_shard_rows_must_cover_the_listing(tmp_path):
    writer = new_writer(tmp_path / "s.h5")
    data = shard_data(writer, 0)
    data.skipped_paths, data.skipped_reasons = [], []
    with pytest.raises(ValueError, match="covers 10 listed items"):
        writer.write_shard(0, data)
    with pytest.raises(ValueError, match="identity disagrees"):
        StoreWriter(tmp_path / "t.h5", {**IDENTITY, "dtype": "float32"}, n_items=3, shard_size=2)


def test_all_skipped_shard(tmp_path):
    writer = new_writer(tmp_path / "s.h5")
    for shard in range(3):
        data = shard_data(writer, shard, skip_every=4)
        if shard == 1:  # every item of shard 1 failed to decode
            start, stop = writer.shard_bounds(1)
            data = ShardData(np.zeros((0, DIM), np.float32), np.zeros((0, DIM + 2), np.float32), [],
                             np.zeros(0, np.int32), np.zeros(0, np.int32), labels=[],
                             skipped_paths=[f"img{i}.png" for i in range(start, stop)],
                             skipped_reasons=["not an image"] * (stop - start))
        writer.write_shard(shard, data)
    writer.finalize(ATTRS)
    with Store(tmp_path / "s.h5") as store:
        assert store.shard_rows.tolist()[1] == 0
        assert not np.isnan(store.read("clip").astype(np.float32)).any()
        assert store.paths().tolist()[:3] == ["img0.png", "img2.png", "img3.png"]


def test_independent_writers_share_the_shards(tmp_path):
    """Two writers (processes or machines) take disjoint shards; either can finalize."""
    first, second = new_writer(tmp_path / "s.h5"), new_writer(tmp_path / "s.h5")
    in_flight = first.shards_dir / "shard-00002.h5.other.tmp"  # the second writer's unfinished file
    first.shards_dir.mkdir()
    in_flight.write_bytes(b"being written")
    for shard in first.pending_shards(remove_tmp=False)[::2]:
        first.write_shard(shard, shard_data(first, shard))
    assert in_flight.exists()
    assert second.pending_shards(remove_tmp=False) == [1]
    second.write_shard(1, shard_data(second, 1))
    in_flight.unlink()
    second.finalize(ATTRS)
    with Store(tmp_path / "s.h5") as store:
        assert store.n_images + store.n_skipped == N_ITEMS


def test_master_closes_opened_shards_when_a_later_shard_fails_to_open(tmp_path, monkeypatch):
    from zsfs.store import master as master_module

    writer = new_writer(tmp_path / "s.h5")
    write_all(writer)
    shard_paths = [writer.shard_path(shard) for shard in range(writer.n_shards)]
    real_file, opened = h5py.File, []

    def failing_file(name, mode="r", *args, **kwargs):
        if "shard-00002" in str(name):
            raise OSError("unable to open file (simulated)")
        file = real_file(name, mode, *args, **kwargs)
        opened.append(file)
        return file

    monkeypatch.setattr(master_module.h5py, "File", failing_file)
    with pytest.raises(OSError, match="simulated"), master_module.opened_shards(shard_paths):
        pass
    assert len(opened) == 2
    assert not any(file.id.valid for file in opened), "shards opened before the failure were left open"


def test_a_store_is_not_written_into_a_renamed_stores_shards_but_reruns_under_another_name(tmp_path):
    """The shards folder is named when a store is made (docs/store.md: renaming the master keeps
    it): x.h5 renamed y.h5 still keeps its shards in x.shards/, and a new x.h5 there, even with
    --overwrite, would delete them. A link to the store itself is not another store."""
    first = new_writer(tmp_path / "x.h5")
    write_all(first)
    first.finalize(ATTRS)
    (tmp_path / "x.h5").rename(tmp_path / "y.h5")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="y.h5 keeps its shards in x.shards/, where x.h5 would"):
            new_writer(tmp_path / "x.h5", n_items=N_ITEMS + 1, overwrite=overwrite)
    with Store(tmp_path / "y.h5") as renamed:
        assert renamed.n_images > 0 and renamed.verify()
    (tmp_path / "y.h5").rename(tmp_path / "x.h5")
    (tmp_path / "x.hdf5").symlink_to(tmp_path / "x.h5")  # the same store under a second name
    shutil.copy(tmp_path / "x.h5", tmp_path / "x-backup.h5")  # bug: a copy of the master blocked its rerun
    again = new_writer(tmp_path / "x.h5")  # its own rerun, and its own --overwrite, are not refused
    assert again.pending_shards() == []
    again.close()
    new_writer(tmp_path / "x.h5", overwrite=True).close()


def test_a_master_older_than_a_changed_shard_is_rebuilt_but_a_copied_store_keeps_its_master(tmp_path, monkeypatch):
    """docs/store.md: a master older than one of its shard files is rebuilt (a repair stopped
    before the master), unless each newer shard still has the sha256 the master recorded (cp -r)."""

    master = tmp_path / "s.h5"
    writer = new_writer(master)
    write_all(writer)
    writer.finalize(ATTRS)
    with Store(master) as store:
        first_build = store.build
    shard = writer.shard_path(1)
    later = master.stat().st_mtime + 10
    os.utime(shard, (later, later))  # what a copy does: newer, same bytes
    from zsfs.store import writer as writer_module

    hashed = []
    monkeypatch.setattr(writer_module, "file_sha256", lambda path: hashed.append(path) or file_sha256(path))
    rerun = new_writer(master)
    assert rerun.pending_shards() == []
    rerun.finalize_if_changed(ATTRS, shards_written=False)
    assert hashed == [shard]  # bug: hashed again by finish (a full pass over a big store per rerun)
    monkeypatch.undo()
    with Store(master) as store:
        assert store.build == first_build
    size = shard.stat().st_size
    with h5py.File(shard, "r+") as file:  # rewritten by a repair whose master was never rebuilt: other bytes
        file[schema.WIDTH][0] = 4321
    assert shard.stat().st_size == size  # so only its recorded sha256 tells
    os.utime(shard, (later + 10, later + 10))
    new_writer(master).finalize_if_changed(ATTRS, shards_written=False)
    with Store(master) as store:
        assert store.build != first_build
        assert store.verify()["shards"] == 3
        assert 4321 in store.read("width")


def test_a_shard_damaged_anywhere_since_its_master_is_rewritten_or_kept_never_a_crash(tmp_path):
    """bug: damage in a shard's HDF5 metadata (not its checksummed chunks) made the check whether a
    changed shard still reads whole raise h5py's RuntimeError or KeyError: a traceback, no repair."""

    master = tmp_path / "s.h5"
    writer = new_writer(master)
    write_all(writer)
    writer.finalize(ATTRS)
    shard = writer.shard_path(1)
    good = shard.read_bytes()
    checksummed = []  # (start, stop) of the checksummed chunks' bytes (review: the check was only "some are found")
    with h5py.File(shard, "r") as file:
        file.visititems(lambda name, item: checksummed.extend(
            (chunk.byte_offset, chunk.byte_offset + chunk.size) for chunk in
            map(item.id.get_chunk_info, range(item.id.get_num_chunks())))
            if isinstance(item, h5py.Dataset) and item.fletcher32 else None)
    assert checksummed
    rng = np.random.default_rng(0)
    later = master.stat().st_mtime + 10
    pending = in_chunks = 0
    inside = {start + (stop - start - 16) * i // 4 for start, stop in checksummed for i in range(5)}
    for offset in sorted(set(range(0, len(good) - 16, max(1, len(good) // 150))) | inside):
        damaged = bytearray(good)
        damaged[offset : offset + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        shard.write_bytes(bytes(damaged))
        os.utime(shard, (later, later))
        rerun = new_writer(master, lock=False)
        found = rerun.pending_shards(remove_tmp=False) == [1]
        rerun.close()
        pending += found
        if any(start <= offset and offset + 16 <= stop for start, stop in checksummed):
            in_chunks += 1
            assert found, f"damage at byte {offset}, inside a checksummed chunk, was not found"
    assert in_chunks >= len(inside) > 10 and pending >= in_chunks


def test_a_row_that_overflows_float16_is_refused_as_stored(tmp_path):
    """Checked after the cast: 1e5 is finite as float32 but infinite as float16, and a stored
    infinite row scores every image NaN in each fit of the store."""
    writer = new_writer(tmp_path / "s.h5", dtype="float16")
    data = shard_data(writer, 0)
    data.clip[2] = 0
    data.clip[2, 0] = 1e5
    with pytest.raises(ValueError, match=r"clip row 2 \('img3.png'\) is NaN, infinite or all zero as float16"):
        writer.write_shard(0, data)


def test_unusable_rows_are_numbered_in_the_whole_array_past_the_first_block(monkeypatch):
    """A bad row past the first block of a span must be named by its own number (the user looks it up)."""
    import zsfs.store.rows as rows

    monkeypatch.setattr(rows, "SCAN_ROWS", 4)
    features = np.ones((20, 3), np.float32)
    features[13] = 0
    assert rows.unusable_row_numbers(features, [(8, 20)]).tolist() == [13]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.dtype(">f4"), np.longdouble])
def test_usable_rows_reads_the_bits_as_the_floats_say(dtype):
    """usable_rows reads native floats' bits (one integer pass): the same rows as isfinite and any,
    with every special value (NaN, infinities, -0, subnormals, the largest finite) and layout."""
    from zsfs.store.rows import usable_rows

    info = np.finfo(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny / 4, -info.tiny, info.max, -info.max, 1.0],
                        dtype=dtype)
    rng = np.random.default_rng(0)
    rows = rng.choice(specials, size=(400, 3))
    rows[::7] = 0  # all zero, of either sign
    rows[1::7] = -0.0
    for features in (rows, np.asfortranarray(rows), rows[:, ::2], rows[:0], rows[:, :0]):
        expected = np.isfinite(features).all(axis=1) & features.any(axis=1)
        assert np.array_equal(usable_rows(features), expected), features.dtype


def test_a_resume_with_other_values_under_a_tags_name_says_so():
    """Shards embedded with a tag's weights must not be resumed with other weights under that name."""
    from zsfs.store.identity import describe_difference

    record = {"name": "test_vit", "weights": "default", "weights_fingerprint": "a" * 64}
    then = {**IDENTITY, "backbone": record}
    changed = {**IDENTITY, "backbone": {**record, "weights_fingerprint": "b" * 64}}
    assert describe_difference(then, changed) == ("differs in backbone; its backbone weights test_vit / default had "
                                                  "other values (the cache holds other weights under that name now)")
    earlier = {**IDENTITY, "backbone": {key: value for key, value in record.items() if key != "weights_fingerprint"}}
    assert describe_difference(earlier, then) == ("differs in backbone; it was built by an earlier zsfs, which did not "
                                                  "record the values of its backbone weights")


@pytest.mark.parametrize("odd_shard", ["wider clip", "no labels"])
def test_shards_that_cannot_make_one_store_are_refused_before_the_index_is_built(tmp_path, monkeypatch, odd_shard):
    """Bug: with the index built before the master is written, shards of two CLIP widths gave
    numpy's "Can't broadcast" (a traceback) instead of the store's message, and labels in some
    shards only were refused after minutes of index building at 1.28M rows."""
    import dataclasses

    from zsfs.store import master as master_module

    writer = new_writer(tmp_path / "s.h5")
    for shard in writer.pending_shards():
        data = shard_data(writer, shard)
        if shard == 1:
            data = (dataclasses.replace(data, clip=np.hstack([data.clip, data.clip[:, :1]]) / np.sqrt(1.5))
                    if odd_shard == "wider clip" else dataclasses.replace(data, labels=None))
        writer.write_shard(shard, data)
    monkeypatch.setattr(master_module, "build_index", lambda *args, **kwargs: pytest.fail("the index was built first"))
    said = "disagree on the shape of 'clip'" if odd_shard == "wider clip" else "have labels and others not"
    with pytest.raises(StoreError, match=said):
        writer.finalize(ATTRS)
    assert not (tmp_path / "s.h5").exists()


def test_a_master_of_no_shards_is_refused_in_words(tmp_path):
    from zsfs.store.master import opened_shards

    with pytest.raises(ValueError, match="zero items"), opened_shards([]):
        pass


def test_a_model_that_differs_is_said_by_the_parts_that_differ():
    """Bug: a store whose backbone record differed only in its random weights' fingerprint or its
    preprocessing was refused as "differs in backbone", naming nothing a user could act on."""
    from zsfs.store.identity import describe_difference

    then = {"name": "test_vit", "weights": "random", "crop_pct": 0.95, "init_fingerprint": "4cc355baf915088f4adc5f24"}
    now = {**then, "crop_pct": 0.875, "init_fingerprint": "0123456789abcdef01234567"}
    assert describe_difference({"backbone": then}, {"backbone": now}) == (
        "differs in backbone; its backbone differs in crop_pct (0.95 then, 0.875 now), "
        "init_fingerprint (4cc355baf915... then, 0123456789ab... now)")


def test_a_stop_says_what_the_rerun_keeps_in_shards_of_that_size(tmp_path):
    """Review: "no shard (of 200 files here: --shard-size 200)" read as 200 files in the collection."""
    writer = new_writer(tmp_path / "s.h5")  # 25 files, shards of 10
    try:
        assert writer.kept_for_a_rerun(writer.pending_shards()) == (
            "no shard was finished (each holds 10 files: --shard-size 10): a rerun embeds the 25 files from the start")
        writer.write_shard(1, shard_data(writer, 1))
        assert writer.kept_for_a_rerun(writer.pending_shards()) == (
            "the finished shards hold 10 of the 25 files (--shard-size 10): a rerun keeps them and embeds the other 15")
        assert writer.kept_for_a_rerun(writer.pending_shards(), "row", "writes") == (  # an import's
            "the finished shards hold 10 of the 25 rows (--shard-size 10): a rerun keeps them and writes the other 15")
    finally:
        writer.close()
    for name, n_items, said in (("t.h5", 25, "the 25 files here are one shard: --shard-size 100): a rerun embeds "
                                             "the 25 files"),
                                ("u.h5", 1, "the 1 file here is one shard: --shard-size 100): a rerun embeds the 1 "
                                            "file")):
        whole = new_writer(tmp_path / name, n_items=n_items, shard_size=100)
        try:
            assert whole.kept_for_a_rerun(whole.pending_shards()) == f"no shard was finished ({said} from the start"
        finally:
            whole.close()


def test_the_summary_lists_the_skip_reasons_most_frequent_first(tmp_path):
    import dataclasses

    writer = new_writer(tmp_path / "s.h5")
    reasons = {0: ["z frequent"] * 3, 1: ["m"] * 2, 2: ["a rare"]}  # the skipped items of each shard: 3, 2, 1
    for shard in writer.pending_shards():
        writer.write_shard(shard, dataclasses.replace(shard_data(writer, shard), skipped_reasons=reasons[shard]))
    writer.finalize(ATTRS)
    with Store(tmp_path / "s.h5") as store:
        assert list(store.summary()["skipped_reasons"].items()) == [("z frequent", 3), ("m", 2), ("a rare", 1)]


def test_a_changed_listing_is_described_even_where_the_identity_lacks_its_counts():
    """Review: an identity without n_items (a foreign or edited store) raised TypeError formatting None."""
    from zsfs.store.identity import describe_difference

    assert describe_difference({"listing_sha256": "a"}, {"listing_sha256": "b", "n_items": 5}).startswith(
        "differs in listing_sha256, n_items; the source's file names or labels changed since the store was built")
    assert "lists 5 files now, 4 when" in describe_difference({"listing_sha256": "a", "n_items": 4},
                                                               {"listing_sha256": "b", "n_items": 5})


def test_an_imports_changed_files_are_named_by_what_changed():
    """Review: a file recorded before its sha256 was (three entries) and only touched since was called
    'other content'."""
    from zsfs.store.identity import _changed_files

    then = [["clip.npy", 100, 5, "a" * 64], ["old.npy", 100, 5], ["gone.npy", 1, 1, "c" * 64]]
    now = [["clip.npy", 100, 6, "b" * 64], ["old.npy", 100, 6, "a" * 64], ["new.npy", 10, 1, "d" * 64]]
    assert _changed_files(then, now) == (
        "changed since the store was built (clip.npy: other content; old.npy: modified since (the store recorded its "
        "time, not its content); new.npy: new; gone.npy: gone)")
    assert _changed_files([["a.npy", 2_000, 1, "a" * 64]], [["a.npy", 1_000, 1, "a" * 64]]) == \
        "changed since the store was built (a.npy: 2,000 bytes then, 1,000 now)"


def test_every_store_file_reaches_the_disk_before_its_rename_publishes_it(tmp_path, monkeypatch):
    """Review (mutation): the shards' and the master's fsync before their rename could be dropped
    with every store test passing; after a power loss a complete-looking store could hold empty
    files. Every fsync is recorded by the path of its file descriptor (Linux: /proc/self/fd)."""
    synced, renamed, fsync, replace = [], [], os.fsync, os.replace

    def recording_fsync(handle):
        synced.append(os.readlink(f"/proc/self/fd/{handle}"))
        return fsync(handle)

    def recording_replace(source, target):
        renamed.append((str(source), str(target), len(synced)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    master = tmp_path / "s.h5"
    writer = new_writer(master)
    write_all(writer)
    writer.finalize(ATTRS)
    published = {Path(target).name for _, target, _ in renamed}
    assert {f"shard-{shard:05d}.h5" for shard in range(3)} | {"s.h5"} <= published, published
    for source, target, synced_before in renamed:
        assert source in synced[:synced_before], f"{target} was renamed into place before it was synced"
        assert synced[synced_before] == str(Path(target).parent)  # then the rename itself


def test_a_repair_hashes_only_the_shards_it_wrote_and_keeps_the_others_recorded_digests(tmp_path, monkeypatch):
    """Review: the rule that keeps a recorded digest (a repair of a few shards of a large store
    hashes only those; an older shard keeps its first digest, so damage since still fails --verify)
    had no test: hashing every shard again passed them all."""
    writer = new_writer(tmp_path / "s.h5")
    write_all(writer)
    writer.finalize(ATTRS)
    with h5py.File(tmp_path / "s.h5", "r") as file:
        first = [str(name) for name in file[schema.SHARDS_SHA256].asstr()[:]]
    writer.shard_path(1).unlink()  # one shard lost: the rerun writes it alone
    hashed = []
    monkeypatch.setattr("zsfs.store.writer.file_sha256",
                        lambda path: hashed.append(Path(path).name) or file_sha256(path))
    rerun = new_writer(tmp_path / "s.h5")
    assert rerun.pending_shards() == [1]
    write_all(rerun)
    rerun.finalize(ATTRS)
    assert hashed == [rerun.shard_path(1).name]
    with h5py.File(tmp_path / "s.h5", "r") as file:
        again = [str(name) for name in file[schema.SHARDS_SHA256].asstr()[:]]
    assert again[0] == first[0] and again[2] == first[2] and again[1] == file_sha256(rerun.shard_path(1))


def test_a_shards_folder_moved_mid_run_stops_every_copy_of_the_writer_and_a_resumed_run(tmp_path):
    """Second review: the check of the folder's identity, taken at a writer's first shard, missed the
    copies Ray's workers get (each took the renamed folder's new one as its own) and a rerun whose
    folder moved before its first shard: both wrote new shards at the old path."""
    import pickle

    from ray import cloudpickle  # as Ray sends a writer to its workers

    from zsfs.store.writer import StoreFolderMoved

    master = tmp_path / "s.h5"
    writer = new_writer(master, lock=False)
    writer.announce(writer.pending_shards(), None, None)  # the driver makes the folder
    writer.write_shard(0, shard_data(writer, 0))
    copy = pickle.loads(cloudpickle.dumps(writer))
    (tmp_path / "s.shards").rename(tmp_path / "aside")
    with pytest.raises(StoreFolderMoved, match=r"s\.shards was moved, renamed or removed while this process wrote "
                                               r"it; nothing more was written: put it back where it was and rerun"):
        copy.write_shard(1, shard_data(copy, 1))
    assert not (tmp_path / "s.shards").exists()
    with pytest.raises(StoreFolderMoved):
        writer.finalize(ATTRS)
    (tmp_path / "aside").rename(tmp_path / "s.shards")

    rerun = new_writer(master, lock=False)  # resumes: shard 0 is kept
    assert rerun.pending_shards() == [1, 2]
    rerun.announce(rerun.pending_shards(), None, None)
    (tmp_path / "s.shards").rename(tmp_path / "aside")  # moved before the rerun's first shard (its on_start)
    with pytest.raises(StoreFolderMoved):
        rerun.write_shard(1, shard_data(rerun, 1))
    assert not (tmp_path / "s.shards").exists()


def test_a_moved_store_is_not_said_to_keep_no_shard(tmp_path):
    """Second review: the moved store's error got "No shard was finished: a rerun writes the rows
    from the start" (its shards counted at the old place), where putting it back keeps them."""
    from zsfs.store.arrays import write_store
    from zsfs.store.writer import StoreFolderMoved

    rows = np.random.default_rng(0).normal(size=(30, 4))
    common = dict(clip=rows, backbone=rows, paths=[f"{i}.jpg" for i in range(30)], clip_info={"name": "c", "weights": "w"},
                  backbone_info={"name": "b", "weights": "w"}, source="arrays", shard_size=10, dtype="float32")

    def moved_after_the_first(n_rows: int) -> None:
        if (tmp_path / "d").exists():
            (tmp_path / "d").rename(tmp_path / "moved")

    with pytest.raises(StoreFolderMoved) as stopped:
        write_store(tmp_path / "d" / "s.h5", progress=moved_after_the_first, **common)
    assert getattr(stopped.value, "resume", None) is None and "put it back where it was and rerun, which keeps the " \
        "shards finished" in str(stopped.value)
    assert not (tmp_path / "d").exists()
    (tmp_path / "moved").rename(tmp_path / "d")
    resumed = []
    write_store(tmp_path / "d" / "s.h5", on_resume=lambda kept, n: resumed.append((kept, n)), **common)
    assert resumed == [(1, 3)]
