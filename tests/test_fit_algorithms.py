"""Pure fit algorithms against brute-force references on tiny arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from zsfs.errors import ParameterError
from zsfs.fit import neighbours, ood, seeds
from zsfs.fit.classifier import LinearHead
from zsfs.fit.selftrain import STOP_LOSS_FLOOR, STOP_LOSS_ROSE, STOP_NO_CANDIDATES, FeatureTable, self_train
from zsfs.testing.synthetic import unit


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    return unit(rng.standard_normal((57, 8))), unit(rng.standard_normal((6, 8)))


def test_zero_shot_scores_match_full_softmax(tiny):
    images, texts = tiny
    scores = seeds.zero_shot_scan(images, texts, 9, chunk_rows=10)[0]
    logits = 100.0 * images.astype(np.float64) @ texts.T
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_array_equal(scores.predicted, logits.argmax(1))
    np.testing.assert_allclose(scores.confidence, probabilities.max(1), rtol=1e-4)
    lse = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
    np.testing.assert_allclose(scores.logsumexp, lse, rtol=1e-5)
    np.testing.assert_array_equal(scores.top_classes, np.argsort(-logits, axis=1)[:, :5])
    cos = images @ texts.T
    mcm = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    np.testing.assert_allclose(scores.mcm, mcm.max(1), rtol=1e-5)


def test_of_classes_with_one_text_embedding_zero_shot_picks_the_first():
    """Bug: torch.topk orders equal logits as it likes, so zero-shot voted for the later of two
    classes CLIP reads as one ('Bag', 'bag'), whose label then never matched: accuracy 0."""
    rng = np.random.default_rng(1)
    images, texts = unit(rng.standard_normal((300, 8))), unit(rng.standard_normal((2, 8)))
    texts = texts[[0, 0, 0, 1, 1]]  # three of one embedding, two of another
    scores = seeds.zero_shot_scan(images, texts, 9, chunk_rows=64)[0]
    assert set(scores.predicted.tolist()) == {0, 3}
    np.testing.assert_array_equal(scores.predicted, (100.0 * images @ texts.T).argmax(1))


def test_top_candidates_match_full_argsort(tiny):
    images, texts = tiny
    _, rows, values = seeds.zero_shot_scan(images, texts, 9, chunk_rows=7)
    logits = 100.0 * images @ texts.T
    expected = np.argsort(-logits, axis=0, kind="stable")[:9].T
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(values, np.take_along_axis(logits.T, expected, 1), rtol=1e-5)


def test_top_candidates_with_fewer_images_than_r(tiny):
    images, texts = tiny
    _, rows, _ = seeds.zero_shot_scan(images[:4], texts, 100, chunk_rows=3)
    assert rows.shape == (6, 4)
    assert all(sorted(r) == [0, 1, 2, 3] for r in rows.tolist())


def test_one_class_per_image_keeps_the_highest_score():
    rows = np.array([[5, 1, 2], [1, 5, 3], [2, 4, -1]])
    scores = np.array([[9.0, 3.0, 2.0], [4.0, 8.0, 7.0], [2.0, 1.0, -np.inf]])
    keep = seeds.one_class_per_image(rows, scores)
    # 5: 9 (class 0) > 8 (class 1); 1: 4 (class 1) > 3; 2: 2.0 in classes 0 and 2 -> lower class wins.
    np.testing.assert_array_equal(keep, [[True, False, True], [True, False, True], [False, True, False]])
    ranked = seeds.rerank(rows, scores, keep)
    np.testing.assert_array_equal(ranked, [[5, 2, -1], [3, 1, -1], [4, -1, -1]])
    flat = ranked[ranked >= 0]
    assert len(flat) == len(np.unique(flat)) == len(np.unique(rows[rows >= 0]))


def naive_support(candidates, neighbours, images, texts):
    """The paper's re-ranking score with plain loops (reference only)."""
    logits = 100.0 * images.astype(np.float64) @ texts.T
    support = np.full(candidates.shape, -np.inf)
    for c in range(candidates.shape[0]):
        for r in range(candidates.shape[1]):
            if candidates[c, r] < 0:
                continue
            total = 0.0
            for j in neighbours[c, r]:
                if j < 0:
                    continue
                p = np.exp(logits[j] - logits[j].max())
                p /= p.sum()
                if c in np.argsort(-logits[j])[:5]:
                    total += p[c]
            support[c, r] = total
    return support


def test_neighbour_support_and_rerank_match_naive_loop(tiny):
    images, texts = tiny
    rng = np.random.default_rng(1)
    scores = seeds.zero_shot_scan(images, texts, 8)[0]
    candidates = np.stack([rng.choice(len(images), 8, replace=False) for _ in range(len(texts))])
    candidates[2, 5:] = seeds.MISSING
    neighbours = rng.integers(0, len(images), (*candidates.shape, 3))
    neighbours[0, 0, 2] = seeds.MISSING
    support = seeds.neighbour_support(candidates, neighbours, images, texts, scores)
    expected = naive_support(candidates, neighbours, images, texts)
    np.testing.assert_allclose(support, expected, rtol=1e-4, atol=1e-6)
    ranked = seeds.rerank(candidates, support)
    for c in range(len(texts)):
        order = sorted(range(8), key=lambda r: (-support[c, r], r))  # float64 may order near-ties otherwise
        np.testing.assert_array_equal(ranked[c], candidates[c, order])
    assert (ranked[2, 5:] == seeds.MISSING).all()


def test_neighbour_support_counts_a_neighbour_only_for_its_top_five_classes(monkeypatch):
    """With CLIP's scale of 100, a random image's 6th class has a negligible probability, so the
    rule matters only where zero-shot is unsure: images almost equally close to 7 class texts."""
    rng = np.random.default_rng(3)
    texts = unit(np.eye(7, 8))
    images = unit(np.ones((20, 8)) + 0.005 * rng.standard_normal((20, 8)))
    scores = seeds.zero_shot_scan(images, texts, 4)[0]
    assert scores.confidence.max() < 0.5  # unsure: every class keeps a sizeable probability
    candidates = np.stack([rng.choice(20, 4, replace=False) for _ in range(7)])
    neighbours = rng.integers(0, 20, (*candidates.shape, 3))
    support = seeds.neighbour_support(candidates, neighbours, images, texts, scores)
    np.testing.assert_allclose(support, naive_support(candidates, neighbours, images, texts), rtol=1e-4, atol=1e-6)
    # review: a product for every pair took minutes with 50,000 classes; only top-5 pairs get one
    products, pair_logits = [], seeds.pair_logits
    monkeypatch.setattr(seeds, "pair_logits", lambda *args, **kw: products.append(len(args[1])) or pair_logits(*args, **kw))
    np.testing.assert_array_equal(seeds.neighbour_support(candidates, neighbours, images, texts, scores), support)
    in_top = (scores.top_classes[neighbours] == np.arange(7)[:, None, None, None]).any(axis=3)
    assert products == [int(in_top.sum())] and 0 < products[0] < neighbours.size


def test_positions_drop_padding():
    ranked = np.array([[3, 4, 5, -1], [7, -1, -1, -1]])
    rows, classes = seeds.positions(ranked, 1, 3)
    np.testing.assert_array_equal(rows, [4, 5])
    np.testing.assert_array_equal(classes, [0, 0])


def test_pair_logits_match_a_float64_product_across_chunks():
    from zsfs.fit.zeroshot import LOGIT_SCALE, pair_logits

    rng = np.random.default_rng(5)
    images, texts = unit(rng.standard_normal((30, 8))), unit(rng.standard_normal((4, 8)))
    rows, classes = rng.integers(0, 30, (5, 10)), rng.integers(0, 4, (5, 10))
    logits = pair_logits(images, torch.as_tensor(rows), torch.as_tensor(texts), torch.as_tensor(classes), chunk_pairs=7)
    expected = LOGIT_SCALE * (images[rows].astype(np.float64) * texts[classes]).sum(-1)
    assert logits.shape == (5, 10)
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)


def test_logit_statistics_and_scores():
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    stats = ood.logit_statistics(logits).numpy()
    np.testing.assert_allclose(stats[0], [3.0, 2.0, np.std([3.0, 1.0, 0.0])], rtol=1e-6)
    np.testing.assert_allclose(stats[1], [1.0, 0.0, 0.0], atol=1e-7)
    one_class = ood.logit_statistics(torch.tensor([[3.0], [1.0]])).numpy()  # no second logit: a gap of 0
    np.testing.assert_array_equal(one_class, [[3.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    seed_stats = np.array([[3.0, 2.0, 1.0], [5.0, 4.0, 3.0]])  # mean 4,3,2; std 1,1,1
    thresholds = ood.fit_thresholds(seed_stats, multiplier=1.0)
    np.testing.assert_allclose(thresholds.thresholds, [3.0, 2.0, 1.0])
    values = np.array([[4.0, 3.0, 2.0], [2.9, 3.0, 2.0], [2.9, 1.9, 2.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(ood.paper_score(values, thresholds), [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
    continuous = ood.continuous_score(values, thresholds)
    np.testing.assert_allclose(continuous, [0.0, 1.1 / 3, 2.2 / 3, 3.0], rtol=1e-5)
    restored = ood.OodThresholds.from_dict(thresholds.to_dict())
    np.testing.assert_array_equal(restored.thresholds, thresholds.thresholds)
    wider = ood.fit_thresholds(seed_stats, multiplier=2.5)  # review (mutation): a multiplier of 1 was all that was read back
    np.testing.assert_allclose(wider.thresholds, [1.5, 0.5, -0.5])
    np.testing.assert_array_equal(ood.OodThresholds.from_dict(wider.to_dict()).thresholds, wider.thresholds)


def test_training_is_deterministic_and_learns():
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((4, 16)))
    labels = rng.integers(0, 4, 200)
    features = torch.as_tensor(unit(centres[labels] + 0.2 * rng.standard_normal((200, 16))))
    target = torch.as_tensor(labels)

    def train():
        generator = torch.Generator().manual_seed(3)
        head = LinearHead(16, 4, lr=1e-2, generator=generator)
        losses = head.train_epochs(features, target, epochs=15, batch_size=16, generator=generator)
        return head, losses

    (a, losses_a), (b, losses_b) = train(), train()
    assert losses_a == losses_b and torch.equal(a.weight, b.weight)
    assert losses_a[-1] < losses_a[0] / 4
    assert (a.predict_logits(features).argmax(1) == target).float().mean() > 0.95


@pytest.mark.parametrize("train_dtype", [torch.float32, torch.bfloat16])
def test_training_matches_torch_adam_across_cycles(train_dtype):
    """The head's functional Adam against the reference, torch.optim.Adam (fused on the CPU, as
    zsfs had it), over two cycles of training that share the optimiser state: equal to the bit."""
    rng = np.random.default_rng(2)
    features = torch.as_tensor(unit(rng.standard_normal((120, 16))))
    labels = torch.as_tensor(rng.integers(0, 4, 120))
    generator = torch.Generator().manual_seed(5)
    head = LinearHead(16, 4, lr=1e-2, generator=generator, train_dtype=train_dtype)
    reference_generator = torch.Generator().manual_seed(5)
    reference = LinearHead(16, 4, lr=1e-2, generator=reference_generator, train_dtype=train_dtype)
    optimiser = torch.optim.Adam([reference.weight, reference.bias], lr=1e-2, fused=True)
    reference_losses = []
    for cycle_rows in (60, 120):  # a second cycle on more rows, as self-training does
        x, y = features[:cycle_rows].to(train_dtype), labels[:cycle_rows]
        for _ in range(3):
            order = torch.randperm(cycle_rows, generator=reference_generator)
            total = 0.0
            for start in range(0, cycle_rows, 16):
                batch = order[start : start + 16]
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(reference.logits(x[batch]), y[batch])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            reference_losses.append(total / cycle_rows)
    losses = [loss for cycle_rows in (60, 120) for loss in
              head.train_epochs(features[:cycle_rows], labels[:cycle_rows], epochs=3, batch_size=16,
                                generator=generator)]
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)
    assert losses == pytest.approx(reference_losses, rel=1e-6)


def test_training_a_head_does_not_import_torch_dynamo():
    """torch.optim's Optimizer imports torch._dynamo on first use: about 2 s of every fit process."""
    script = ("import sys, torch; from zsfs.fit.classifier import LinearHead; g = torch.Generator().manual_seed(0); "
              "head = LinearHead(4, 2, lr=0.1, generator=g); "
              "losses = head.train_epochs(torch.eye(4), torch.tensor([0, 1, 0, 1]), epochs=2, batch_size=2, generator=g); "
              "print(len(losses), 'torch._dynamo' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.split() == ["2", "False"], ran.stderr


def test_bf16_training_learns_and_keeps_float32_weights():
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((4, 16)))
    labels = rng.integers(0, 4, 200)
    features = torch.as_tensor(unit(centres[labels] + 0.2 * rng.standard_normal((200, 16))))
    generator = torch.Generator().manual_seed(3)
    head = LinearHead(16, 4, lr=1e-2, generator=generator, train_dtype=torch.bfloat16)
    losses = head.train_epochs(features, torch.as_tensor(labels), epochs=15, batch_size=16, generator=generator)
    assert head.weight.dtype == head.bias.dtype == torch.float32
    assert losses[-1] < losses[0] / 4
    assert (head.predict_logits(features).argmax(1).numpy() == labels).mean() > 0.95


def test_train_epochs_stop_rules():
    generator = torch.Generator().manual_seed(0)
    head = LinearHead(4, 2, lr=1e-1, generator=generator)
    features = torch.eye(4)[:2].repeat(8, 1)
    labels = torch.tensor([0, 1]).repeat(8)
    losses = head.train_epochs(features, labels, epochs=50, batch_size=4, generator=generator, stop_below=0.1)
    assert losses[-1] < 0.1 and len(losses) < 50
    losses = head.train_epochs(features, labels, epochs=50, batch_size=4, generator=generator, stop_after_first=0.0)
    assert len(losses) == 1


def test_train_epochs_compares_only_the_first_epoch_with_stop_after_first(monkeypatch):
    """A later epoch above ``stop_after_first`` does not stop the training (scripted losses: the
    rule reads only them)."""
    from zsfs.fit import classifier

    scripted = iter([0.5, 2.0, 0.4])
    monkeypatch.setattr(classifier.F, "cross_entropy",
                        lambda logits, labels: logits.sum() * 0 + next(scripted))  # one batch per epoch
    head = LinearHead(4, 2, lr=1e-2, generator=torch.Generator().manual_seed(0))
    losses = head.train_epochs(torch.eye(4)[:2], torch.tensor([0, 1]), epochs=3, batch_size=4,
                               generator=torch.Generator().manual_seed(0), stop_after_first=1.0)
    assert losses == pytest.approx([0.5, 2.0, 0.4])


def test_self_training_uses_candidates_in_order_until_they_run_out():
    rng = np.random.default_rng(0)
    n_classes, k = 3, 2
    labels = np.repeat(np.arange(n_classes), 5)
    features = torch.as_tensor(unit(np.eye(n_classes, 6)[labels] + 0.05 * rng.standard_normal((15, 6))))
    ranked = np.stack([np.flatnonzero(labels == c) for c in range(n_classes)])  # 5 candidates each
    result = self_train(ranked, FeatureTable(np.arange(15), features), k=k, epochs=20, cycle_epochs=3,
                        batch_size=4, lr=5e-2, max_cycles=10, loss_floor=0.0, accumulate=True,
                        generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(np.sort(result.cycles[0].rows), np.sort(ranked[:, :2].ravel()))
    assert [c.n_candidates for c in result.cycles] == [6, 6, 3]
    assert result.stop_reason == STOP_NO_CANDIDATES
    assert result.cycles[-1].n_trained == sum(c.n_kept for c in result.cycles)


def test_self_training_stops_when_a_cycles_first_epoch_loss_rises(monkeypatch):
    """The paper's stop: a cycle whose first epoch ends above the previous cycle's first epoch.
    Scripted losses (the rule reads only them): seeds 1.0, cycle 1 0.5, cycle 2 0.6 -> stop,
    although 0.6 is below the seeds' 1.0 (the comparison is with the cycle before)."""
    scripted = iter([[1.0, 0.9], [0.5, 0.4], [0.6], [0.3]])
    monkeypatch.setattr(LinearHead, "train_epochs", lambda self, *args, **kwargs: next(scripted))
    labels = np.repeat(np.arange(2), 10)
    features = torch.as_tensor(unit(np.eye(2, 4)[labels] + 0.01 * np.random.default_rng(0).standard_normal((20, 4))))
    ranked = np.stack([np.flatnonzero(labels == c) for c in range(2)])
    result = self_train(ranked, FeatureTable(np.arange(20), features), k=2, epochs=2, cycle_epochs=2, batch_size=4,
                        lr=1e-2, max_cycles=4, loss_floor=0.0, accumulate=True, generator=torch.Generator().manual_seed(0))
    assert result.stop_reason == STOP_LOSS_ROSE
    assert [c.index for c in result.cycles] == [0, 1, 2] and result.cycles[-1].losses == [0.6]


@pytest.mark.parametrize("scripted, floor, cycles", [
    ([[1.0], [1.0], [0.9], [0.8]], 0.0, 4),  # a first-epoch loss equal to the last cycle's has not risen
    ([[1.0], [0.5, 0.1], [0.4], [0.3]], 0.1, 4),  # a last epoch at the floor is not below it
    ([[1.0], [0.5, 0.09], [0.4], [0.3]], 0.1, 2),  # ... below it stops
])
def test_self_training_stop_rules_are_strict(monkeypatch, scripted, floor, cycles):
    scripted = iter(scripted)
    monkeypatch.setattr(LinearHead, "train_epochs", lambda self, *args, **kwargs: next(scripted))
    labels = np.repeat(np.arange(2), 10)
    features = torch.as_tensor(unit(np.eye(2, 4)[labels] + 0.01 * np.random.default_rng(0).standard_normal((20, 4))))
    ranked = np.stack([np.flatnonzero(labels == c) for c in range(2)])
    result = self_train(ranked, FeatureTable(np.arange(20), features), k=2, epochs=2, cycle_epochs=2, batch_size=4,
                        lr=1e-2, max_cycles=3, loss_floor=floor, accumulate=True, generator=torch.Generator().manual_seed(0))
    assert len(result.cycles) == cycles
    assert result.stop_reason != STOP_LOSS_ROSE and (result.stop_reason == STOP_LOSS_FLOOR) == (cycles == 2)


@pytest.mark.parametrize("scan_dtype", [torch.float32, torch.bfloat16])
def test_exact_neighbours_match_the_flat_index(monkeypatch, scan_dtype):
    from zsfs.store.index import build_index, nearest_neighbours

    rng = np.random.default_rng(4)
    rows = unit(rng.standard_normal((300, 32)))
    index, info = build_index(rows)
    assert info["type"] == "flat"
    query_rows = np.array([5, 0, 299, 17, 5, 123])
    monkeypatch.setitem(neighbours.SCORE_BLOCK, "cpu", 2 * 300)  # two queries per block: several blocks
    found = neighbours.exact_neighbours(torch.as_tensor(rows), query_rows, 4, scan_dtype=scan_dtype)
    assert found.shape == (6, 4) and found.dtype == np.int64
    np.testing.assert_array_equal(found, nearest_neighbours(index, rows[query_rows], query_rows, 4))
    assert not (found == query_rows[:, None]).any()


def test_exact_neighbours_check_k():
    embeddings = torch.as_tensor(unit(np.random.default_rng(0).standard_normal((5, 4))))
    for k in (0, 5):
        with pytest.raises(ValueError, match="k must be"):
            neighbours.exact_neighbours(embeddings, np.arange(5), k)
    assert neighbours.exact_neighbours(embeddings, np.arange(5), 4, scan_dtype=torch.bfloat16).shape == (5, 4)


def test_neighbour_search_choice(tmp_path, monkeypatch):
    from zsfs.testing.synthetic import make_synthetic_store
    from zsfs.store import Store

    flat = make_synthetic_store(tmp_path / "flat.h5", 200, 4, clip_dim=64, backbone_dim=8, seed=0)
    ivf = make_synthetic_store(tmp_path / "ivf.h5", 2000, 4, clip_dim=64, backbone_dim=8, seed=0, exact_max=1000)
    cpu, cuda, bf16 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16
    with Store(flat) as a, Store(ivf) as b:
        assert [neighbours.choose_search(a, cpu), neighbours.choose_search(a, cpu, bf16)] == ["faiss", "exact"]
        assert [neighbours.choose_search(b, cpu), neighbours.choose_search(b, cpu, bf16)] == ["ivf", "ivf"]
        assert neighbours.choose_search(a, cuda) == neighbours.choose_search(b, cuda, bf16) == "exact"
        assert neighbours.choose_search(a, cpu, ivf=True) == "faiss"  # 200 images: too few for lists
        assert neighbours.choose_search(a, cuda, ivf=True) == "exact"
    monkeypatch.setattr(neighbours, "IVF_MIN_ROWS", 100)
    with Store(flat) as a:
        assert neighbours.choose_search(a, cpu, ivf=True) == neighbours.choose_search(a, cpu, bf16, ivf=True) == "ivf"
    for minimum, expected in [(200, "ivf"), (201, "faiss")]:  # "at least IVF_MIN_ROWS images": 200 is enough
        monkeypatch.setattr(neighbours, "IVF_MIN_ROWS", minimum)
        with Store(flat) as a:
            assert neighbours.choose_search(a, cpu, ivf=True) == expected, minimum


@pytest.mark.parametrize("scan_dtype", [torch.float32, torch.bfloat16])
def test_ivf_search_scans_the_lists_faiss_scans(monkeypatch, scan_dtype):
    from zsfs.store.index import build_index, nearest_neighbours

    rng = np.random.default_rng(5)
    rows = unit(rng.standard_normal((3000, 16))).astype(np.float16)  # as stored
    index, info = build_index(rows, exact_max=1000)
    assert info["type"] == "ivf_flat" and index.nprobe < index.nlist
    query_rows = rng.choice(3000, 400, replace=False)
    monkeypatch.setitem(neighbours.SCORE_BLOCK, "cpu", 64 * 200)  # several query blocks per list
    search = neighbours.NeighbourSearch(rows, method="ivf", index=index,
                                        device=torch.device("cpu"), scan_dtype=scan_dtype)
    found = search(query_rows, 5)
    np.testing.assert_array_equal(found, nearest_neighbours(index, rows[query_rows], query_rows, 5))
    assert not (found == query_rows[:, None]).any()
    assert search.describe()["search"] == f"ivf ({index.nlist} lists, nprobe {index.nprobe})"


@pytest.mark.parametrize("scan_dtype", [torch.float32, torch.bfloat16])
def test_probed_search_pads_with_missing_when_lists_are_short(scan_dtype):
    embeddings = torch.as_tensor(unit(np.random.default_rng(0).standard_normal((6, 4))))
    lists = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    probes = np.array([[0], [1]])
    found = neighbours.probed_neighbours(embeddings, np.array([0, 3]), 4, lists, probes, scan_dtype=scan_dtype)
    assert set(found[0, :2]) == {1, 2} and set(found[1, :2]) == {4, 5}
    assert (found[:, 2:] == -1).all()
    empty = neighbours.NeighbourSearch(np.asarray(embeddings), method="exact", device=torch.device("cpu"))
    assert empty(np.empty(0, dtype=np.int64), 2).shape == (0, 2)
    assert neighbours.nearest_lists(torch.empty(0, 4), torch.ones(3, 4), 2).shape == (0, 2)


def test_paper_cycles_keep_only_agreeing_candidates_and_train_on_them_alone():
    """The paper's cycle (accumulate=False): the next k candidates of each class, kept where the head
    agrees, trained on alone; a cycle that keeps none trains nothing and the next positions follow.
    Class 0's positions 2-3 are class 1's images and the other way round, so cycle 1 keeps none."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 6)  # rows 0-5 class 0, rows 6-11 class 1
    features = torch.as_tensor(unit(np.eye(2, 6)[labels] + 0.05 * rng.standard_normal((12, 6))))
    ranked = np.array([[0, 1, 6, 7, 2, 3], [8, 9, 4, 5, 10, 11]])
    result = self_train(ranked, FeatureTable(np.arange(12), features), k=2, epochs=20, cycle_epochs=3,
                        batch_size=4, lr=5e-2, max_cycles=10, loss_floor=0.0, accumulate=False,
                        generator=torch.Generator().manual_seed(0))
    seeds, wrong, right = result.cycles
    assert len(seeds.losses) == 20 and len(right.losses) <= 3  # epochs on the seeds, cycle_epochs after
    assert (wrong.n_candidates, wrong.n_kept, wrong.n_trained, wrong.losses) == (4, 0, 0, [])
    assert sorted(right.rows.tolist()) == [2, 3, 10, 11] and right.labels.tolist() == labels[right.rows].tolist()
    assert right.n_trained == right.n_kept == 4  # the paper: this cycle's kept candidates only, no seeds
    assert result.stop_reason == STOP_NO_CANDIDATES


def test_self_training_passes_the_stop_rules_to_training_and_stops_below_the_loss_floor(monkeypatch):
    """Scripted losses (seeds 1.0, cycle 1 0.5 then 0.05 < floor 0.1): the cycles stop on the floor;
    each cycle's training is told the previous first-epoch loss and the floor."""
    scripted = iter([[1.0, 0.9], [0.5, 0.05], [0.4], [0.3], [0.2]])
    given = []

    def train_epochs(self, features, labels, **kwargs):
        given.append(kwargs)
        return next(scripted)

    monkeypatch.setattr(LinearHead, "train_epochs", train_epochs)
    labels = np.repeat(np.arange(2), 10)
    features = torch.as_tensor(unit(np.eye(2, 4)[labels] + 0.01 * np.random.default_rng(0).standard_normal((20, 4))))
    ranked = np.stack([np.flatnonzero(labels == c) for c in range(2)])
    result = self_train(ranked, FeatureTable(np.arange(20), features), k=2, epochs=7, cycle_epochs=3, batch_size=4,
                        lr=1e-2, max_cycles=4, loss_floor=0.1, accumulate=True, generator=torch.Generator().manual_seed(0))
    assert result.stop_reason == STOP_LOSS_FLOOR and [c.index for c in result.cycles] == [0, 1]
    assert given[0]["epochs"] == 7 and given[0].get("stop_after_first") is None
    assert (given[1]["epochs"], given[1]["stop_below"], given[1]["stop_after_first"]) == (3, 0.1, 1.0)


def test_seeds_that_agree_exactly_are_not_flagged_and_get_finite_continuous_scores():
    """A statistic is flagged only *below* mean - m x std; with identical seed statistics (std 0) the
    deficits stay finite (an epsilon, not a division by zero)."""
    seed_stats = np.tile([4.0, 2.0, 1.0], (5, 1))
    thresholds = ood.fit_thresholds(seed_stats, multiplier=0.0)
    np.testing.assert_array_equal(thresholds.thresholds, [4.0, 2.0, 1.0])
    assert ood.paper_score(seed_stats, thresholds).tolist() == [0.0] * 5  # at the threshold: not below it
    continuous = ood.continuous_score(np.array([[4.0, 2.0, 1.0], [3.0, 2.0, 1.0], [5.0, 3.0, 2.0]]), thresholds)
    assert np.isfinite(continuous).all() and continuous[0] == 0 and continuous[1] > 1e5 and continuous[2] < -1e5


def test_rerank_keeps_the_zero_shot_order_among_equal_support():
    """Candidates whose neighbours never name the class all have support 0, so ties are common;
    an unstable sort reorders rows longer than 16 on CPU, and R is 100: the seeds would be arbitrary."""
    candidates = np.arange(100)[None].repeat(2, 0)
    assert np.array_equal(seeds.rerank(candidates, np.zeros((2, 100), np.float32)), candidates)


def _small_classifier(seed: int = 0):
    from zsfs.fit.classifier import Classifier

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(3, 8)).astype(np.float32)
    thresholds = ood.fit_thresholds(rng.normal(size=(5, 3)), 1.0)
    return Classifier(["a", "b", "c"], weights, np.zeros(3, np.float32), thresholds), rng


def test_classify_in_chunks_gives_each_row_its_own_result_and_normalises_raw_features():
    """Rows past the first chunk (65,536 images) must get their own labels; a library caller's raw
    (unnormalised) features must give the same confidences as normalised ones."""
    classifier, rng = _small_classifier()
    features = rng.normal(size=(10, 8)).astype(np.float32)
    whole, chunked = classifier.classify(features), classifier.classify(features, chunk_rows=3)
    for chunk_rows, said in ((0, "at least 1, not 0"), (2.5, "a whole number, not 2.5"), (None, "a whole number")):
        with pytest.raises(ParameterError, match=f"^chunk_rows must be {said}"):  # walkthrough: raw errors
            classifier.classify(features, chunk_rows=chunk_rows)
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
    assert np.allclose(classifier.classify(7.5 * features)[1], whole[1])


def test_a_classifier_saved_by_an_older_zsfs_reads_its_ood_fields(tmp_path):
    """Runs written before ood_nearest was saved used the 5th nearest; their quantiles were named
    seed_distance. No test loaded such a file."""
    from zsfs.fit.classifier import Classifier, load_classifier

    rng = np.random.default_rng(0)
    thresholds = ood.fit_thresholds(rng.normal(size=(5, 3)), 1.0)
    classifier = Classifier(["a", "b"], rng.normal(size=(2, 4)).astype(np.float32), np.zeros(2, np.float32),
                            thresholds, ood_reference=np.eye(4, dtype=np.float16),
                            ood_quantiles={"reference_distance": np.linspace(0, 1, 11)})
    classifier.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    del state["ood_nearest"]
    state["ood_quantiles"] = {"seed_distance": state["ood_quantiles"]["reference_distance"]}
    torch.save(state, tmp_path / "c.pt")
    old = load_classifier(tmp_path / "c.pt")
    assert old.ood_nearest == 5 and np.array_equal(old.ood_quantiles["reference_distance"], np.linspace(0, 1, 11))


def test_one_class_per_image_matches_a_loop_over_images_with_tied_scores():
    """Review: only a 3 x 3 hand example checked it; here heavy ties (the lower class wins) and padding."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n_classes, width, n_rows = rng.integers(1, 6), rng.integers(1, 8), rng.integers(1, 12)
        rows = np.stack([rng.choice(n_rows, min(width, n_rows), replace=False) for _ in range(n_classes)])
        rows = np.where(rng.random(rows.shape) < 0.2, seeds.MISSING, rows)
        scores = rng.integers(0, 3, rows.shape).astype(np.float32)
        expected = np.zeros(rows.shape, bool)
        for row in np.unique(rows[rows != seeds.MISSING]):
            places = sorted(zip(*np.nonzero(rows == row)), key=lambda place: (-scores[place], place[0]))
            expected[places[0]] = True
        assert np.array_equal(seeds.one_class_per_image(rows, scores), expected)


def test_the_flag_threshold_matches_a_search_over_seed_scores_with_ties():
    rng = np.random.default_rng(4)
    for _ in range(300):
        scores = rng.integers(0, 6, rng.integers(1, 200)) / 5.0
        rate = float(rng.choice([0.0, 0.05, 0.1, 0.5, 0.99]))
        allowed = int(np.floor(rate * len(scores) + 1e-9))
        expected = min(cut for cut in np.unique(scores) if (scores > cut).sum() <= allowed)
        assert ood.flag_threshold(scores, rate) == expected
    # review (mutation): no rate above made rate x n fall just below a whole number (0.29 x 100 is 28.999999999999996)
    for rate, n in ((0.29, 100), (0.58, 50)):
        scores = np.arange(n, dtype=np.float64)
        assert (scores > ood.flag_threshold(scores, rate)).sum() == round(rate * n)
