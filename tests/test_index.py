"""FAISS index: exact vs IVF selection, block-wise serialisation, neighbour search without self."""

from __future__ import annotations

import numpy as np
import pytest

from faiss import serialize_index

from zsfs.store.index import build_index, choose_nlist, choose_nprobe, drop_self, nearest_neighbours
from zsfs.testing.synthetic import random_unit_rows as unit_rows


def brute_force_neighbours(rows: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    similarity = rows[query_rows].astype(np.float32) @ rows.astype(np.float32).T
    similarity[np.arange(len(query_rows)), query_rows] = -np.inf
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def assert_nearest(found: np.ndarray, rows: np.ndarray, query_rows: np.ndarray) -> None:
    """``found`` holds each query row's nearest other rows, nearest first: the brute-force order,
    except between rows whose similarities differ by float32 rounding (another kernel, faiss' or
    a bf16 scan re-scored, may order those the other way)."""
    expected = brute_force_neighbours(rows, query_rows, found.shape[1])
    similarity = rows[query_rows].astype(np.float64) @ rows.astype(np.float64).T
    np.testing.assert_allclose(np.take_along_axis(similarity, found, 1), np.take_along_axis(similarity, expected, 1),
                               rtol=0, atol=1e-5)
    assert not (found == query_rows[:, None]).any() and all(len(set(row)) == len(row) for row in found.tolist())


def test_exact_index_below_threshold():
    rows = unit_rows(300, 16)
    index, info = build_index(rows, exact_max=300)
    assert info == {"type": "flat", "metric": "inner_product", "n": 300, "dim": 16, "exact_max": 300}
    assert index.ntotal == 300


def test_ivf_index_above_threshold_is_recorded_and_reproducible():
    rows = unit_rows(2000, 16, seed=1)
    index, info = build_index(rows, exact_max=1000, seed=3)
    assert info["type"] == "ivf_flat" and info["metric"] == "inner_product"
    assert info["nlist"] == choose_nlist(2000) == 16
    assert index.nlist == info["nlist"] and index.nprobe == info["nprobe"] and index.ntotal == 2000
    again, _ = build_index(rows, exact_max=1000, seed=3)
    assert np.array_equal(serialize_index(index), serialize_index(again))


def test_nlist_grows_with_n_and_is_a_capped_power_of_two():
    nlists = [choose_nlist(n) for n in (10_000, 100_000, 1_281_167, 10**9)]
    assert nlists == sorted(nlists) and nlists[-1] == 8192
    assert all(n & (n - 1) == 0 for n in nlists)


def test_nearest_neighbours_exclude_self_and_match_brute_force():
    rows = unit_rows(500, 12, seed=2)
    index, _ = build_index(rows)
    query_rows = np.array([0, 17, 499, 250, 17])
    found = nearest_neighbours(index, rows[query_rows], query_rows, k=5, batch_size=2)
    assert found.shape == (5, 5) and found.dtype == np.int64
    assert_nearest(found, rows, query_rows)


def test_nearest_neighbours_with_float16_store_rows():
    rows = unit_rows(200, 12, seed=4).astype(np.float16)
    index, _ = build_index(rows)
    found = nearest_neighbours(index, rows, np.arange(200), k=3)
    assert_nearest(found, rows.astype(np.float32), np.arange(200))  # review: it checked only that no row was its own


def test_drop_self_removes_own_row_else_last_column():
    found = np.array([[4, 1, 2, 3], [7, 8, 9, 5], [5, 6, 0, 1]])
    own = np.array([1, 3, 5])
    np.testing.assert_array_equal(drop_self(found, own), [[4, 2, 3], [7, 8, 9], [6, 0, 1]])


def test_nearest_neighbours_checks_arguments():
    rows = unit_rows(10, 4)
    index, _ = build_index(rows)
    for k in (10, 0):  # review (mutation): k 0 gave a (10, 0) array
        with pytest.raises(ValueError, match=r"k must be in \[1, 9\]"):
            nearest_neighbours(index, rows, np.arange(10), k=k)
    assert nearest_neighbours(index, rows, np.arange(10), k=9).shape == (10, 9)
    with pytest.raises(ValueError, match="query rows"):
        nearest_neighbours(index, rows, np.arange(9), k=2)


@pytest.mark.parametrize("exact_max", [10_000, 100])
def test_block_streaming_matches_serialize_index(tmp_path, monkeypatch, exact_max):
    import h5py

    from zsfs.store import index as index_module

    monkeypatch.setattr(index_module, "STREAM_BLOCK", 1000)  # many blocks
    index, info = build_index(unit_rows(3000, 16), exact_max=exact_max)
    with h5py.File(tmp_path / "i.h5", "w") as file:
        dataset = file.create_dataset("i", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(4096,))
        index_module.write_index_blocks(index, dataset)
        np.testing.assert_array_equal(dataset[:], serialize_index(index))
        restored = index_module.read_index_blocks(dataset)
    np.testing.assert_array_equal(serialize_index(restored), serialize_index(index))
    assert getattr(restored, "nprobe", None) == info.get("nprobe")  # an IVF index keeps its stored nprobe


def test_ivf_sizes_follow_their_rules():
    """nlist: the power of two nearest sqrt(N); nprobe never below its floor (16), so recall holds
    on mid-sized stores."""
    assert choose_nlist(3_000_000) == 2048
    assert [choose_nprobe(n) for n in (8, 64, 1024, 8192)] == [8, 16, 16, 128]


def test_ivf_lists_are_trained_on_a_seeded_sample_of_the_whole_store(monkeypatch):
    """Not the first rows: a store listed class by class would train its lists on the first classes."""
    import zsfs.store.index as index

    seen = []
    as_float32 = index.as_float32
    monkeypatch.setattr(index, "as_float32", lambda rows: seen.append(np.array(rows)) or as_float32(rows))
    embeddings = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    _, info = index.build_index(embeddings, exact_max=0, seed=3)
    assert info["n_train"] < 2000
    sample = np.sort(np.random.default_rng(3).choice(2000, info["n_train"], replace=False))
    assert np.array_equal(seen[0], embeddings[sample])
