"""``zsfs fit`` as a library call: a store in, labels and OOD scores out (it reads the store; the steps it chains do no I/O).

:func:`fit_store` chains the pure steps (zero-shot scan, candidates, re-ranking,
self-training, prediction, OOD calibration) and times each phase. Writing the result to a
run folder is ``zsfs.runs.FittedRun.from_fit(result, store).save(run_dir)``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from zsfs.devices import check_device, has_fast_bf16
from zsfs.errors import ParameterError, ZsfsError, check_parameter_type, literal
from zsfs.fit import ood, seeds, transductive
from zsfs.fit.classifier import Classifier, normalise, score_images
from zsfs.fit.config import FitConfig, check_fit_config
from zsfs.fit.neighbours import SEARCH_DTYPES, choose_search, graph_unused, open_search
from zsfs.fit.selftrain import Cycle, FeatureTable, SelfTraining, self_train
from zsfs.fit.zeroshot import CHUNK_ROWS, as_tensor, zero_shot_logits
from zsfs.names import counted, repeated_rows, spelled_like, visible
from zsfs.store.reader import check_open_store

if TYPE_CHECKING:
    from zsfs.store import Store

TRANSDUCTIVE_ROWS = 20_000
"""The balanced method estimates class shares and self-trains on at most this many rows (+ the seeds)."""


@dataclass
class FitResult:
    """Everything a fit produces, per image (length N arrays) and for the run."""

    vocabulary: str
    classes: list[str]
    prompts_used: str  # the text embeddings read: "single" where the vocabulary has no ensemble
    predicted: np.ndarray  # int64 class index
    confidence: np.ndarray  # max softmax probability of the classifier
    ood_score: np.ndarray  # mean of the collection ranks of MCM and ood_distance, in [0, 1]; higher = more OOD
    ood_distance: np.ndarray  # collection rank of the backbone distance to the OOD reference, in [0, 1]
    ood_flag: np.ndarray  # bool: ood_score above ood_flag_threshold
    ood_paper: np.ndarray  # paper score in {0, 1/3, 2/3, 1}
    ood_continuous: np.ndarray  # mean standardised deficit of the paper's statistics; higher = more OOD
    is_seed: np.ndarray  # bool: one of the initial seeds
    pseudo_label: np.ndarray  # int64 class given by seeds/cycles, -1 if none (first one wins)
    pseudo_cycle: np.ndarray  # int32 cycle that gave it (0 = seed), -1 if none
    zero_shot_predicted: np.ndarray
    zero_shot_confidence: np.ndarray
    mcm_score: np.ndarray  # MCM OOD score (negated max softmax of cosines); higher = more OOD
    cycles: list[Cycle]
    stop_reason: str
    classifier: Classifier
    neighbour_search: dict  # where the re-ranking neighbours came from: {"source", "search", "precision", ...}
    precision: str = "fp32"  # of the training products: config.precision with "auto" resolved
    absent_classes: list[str] = field(default_factory=list)  # listed classes the collection does not hold
    class_shares: dict[str, float] | None = None  # balanced method: estimated fraction of images per class
    estimated_shares: dict[str, float] | None = None  # the class model's mean posterior (before its sparse shares)
    ood_flag_threshold: float | None = None  # flagged above it: at most 5 % of the seeds are (ood.flag_threshold)
    classes_read_as_one: list[tuple[str, str]] = field(default_factory=list)  # (first, later): one text embedding
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds (all threads) per phase
    config: FitConfig | None = None  # a copy of the configuration the fit ran with
    store_build: tuple | None = None  # the build of the store it read (Store.build_key), which from_fit checks

    @property
    def seeds_per_class(self) -> dict[str, int]:
        """Seeds of each listed class. From cycle 0, not pseudo_label: with the paper's rule one
        image can seed several classes, and pseudo_label keeps its first."""
        return dict(zip(self.classes, np.bincount(self.cycles[0].labels, minlength=len(self.classes)).tolist()))

    @property
    def unseeded_classes(self) -> list[str]:
        """Listed classes, not reported absent, that got no seed: no zero-shot candidate of theirs
        survived, so they were trained on pseudo-labels alone, or are never predicted."""
        return [name for name, n in self.seeds_per_class.items() if not n and name not in self.absent_classes]


class _Timer:
    """Wall and CPU seconds per phase (CPU time shows the cost on a machine shared with others);
    ``on_phase(name)`` hears of each phase as it starts, and of each step within one (``step``) as
    ``"{phase}: {step}"``."""

    def __init__(self, on_phase: Callable[[str], None] | None = None):
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self.on_phase = on_phase
        self.current = ""

    @contextmanager
    def phase(self, name: str):
        self.current = name
        if self.on_phase is not None:
            self.on_phase(name)
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - wall
        self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + time.process_time() - cpu
        self.current = ""

    def step(self, step: str) -> None:
        """Tell ``on_phase`` of a step within the current phase."""
        if self.on_phase is not None:
            self.on_phase(f"{self.current}: {step}")

    def cycle_steps(self, n_cycles: int, at_most: bool) -> Callable[[int], None]:
        """``on_cycle`` for self-training: cycle 0 is the seeds' own training."""
        of = f"of at most {n_cycles}" if at_most else f"of {n_cycles}"
        return lambda index: self.step(f"cycle {index} {of}" if index else "training on the seeds")


def resolved_precision(precision: str, device: torch.device) -> str:
    """``precision`` with "auto" replaced by bf16 where ``device`` has fast bf16 products, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if has_fast_bf16(device) else "fp32"


def resolve_vocabulary(store: "Store", name: str | None) -> str:
    """``name``, or the store's only vocabulary. A vocabulary file that cannot be read may hold
    the one meant (its file name is a digest): then none is taken for the user, and it is named."""
    if name is not None:
        check_parameter_type("vocabulary", name, str)
        name = store.stored_vocabulary_name(name)
    names = store.vocabulary_names()
    missing = store.unwritten_vocabularies  # the command that made the store was stopped before it wrote them
    if missing and (name is None or name in missing):  # none taken for the user
        unwritten = store.unwritten_note()
        if name is None and names:
            raise ParameterError(f"{literal(store.path)}: {literal(unwritten)}; or choose one of "
                                 f"{literal(', '.join(names))} with {{vocabulary}}")
        raise ZsfsError(f"{store.path}: {unwritten}")
    unreadable = list(store.unreadable_vocabularies.values())
    damaged = (f"{counted(len(unreadable), 'vocabulary file')} cannot be read ({unreadable[0]})" if unreadable
               else "")
    if name is None:
        if len(names) == 1 and not unreadable:
            return names[0]
        if not names:
            if unreadable:
                raise ZsfsError(f"{store.path} has no readable vocabulary: {damaged}")
            raise ZsfsError(f"{store.path} has no class vocabulary yet; add one with {store.how_to_add_a_vocabulary()}")
        has = f"several vocabularies ({', '.join(names)})" if not unreadable else \
            f"{counted(len(names), 'readable vocabulary', 'readable vocabularies')} ({', '.join(names)}), and {damaged}"
        raise ParameterError(f"{literal(store.path)} has {literal(has)}; choose one with {{vocabulary}}")
    if name not in names:
        hint = spelled_like(names, "the vocabulary")(name)  # --vocab Fashion for fashion
        raise ParameterError(literal(f"{store.path} has no vocabulary {name!r}{hint}; it has: {', '.join(names) or 'none'}"
                                     + (f"; {damaged}, maybe that one" if unreadable else "")))
    return name


def fit_store(store: "Store", config: FitConfig, vocabulary: str | None = None,
              classes: list[str] | None = None, *, on_phase: Callable[[str], None] | None = None) -> FitResult:
    """Label and OOD-score every image of ``store`` from a vocabulary's class names.

    ``classes`` restricts the vocabulary to these in-distribution classes (``zsfs ood-bench``).
    ``on_phase(name)`` hears of each phase (the keys of ``FitResult.timings``) as it starts, and
    of each self-training cycle as ``"{phase}: cycle 2 of 3"``.
    """
    check_open_store("store", store)
    check_fit_config("config", config)
    config.validate()
    device = check_device(config.device)
    try:
        return _fit_checked(store, config, device, vocabulary, classes, _Timer(on_phase))
    except ZsfsError:  # a store rebuilt under the fit: that is the cause, whatever the error says (no vocabulary, ...)
        store.check_unchanged()
        raise


def _fit_checked(store: "Store", config: FitConfig, device: torch.device, vocabulary: str | None,
                 classes: list[str] | None, timer: _Timer) -> FitResult:
    store.check_enough_images(2, "a fit")
    name = resolve_vocabulary(store, vocabulary)
    vocab = store.vocabulary(name)
    if classes is not None:
        try:
            vocab = vocab.subset(classes)
        except ZsfsError as error:  # a bad argument, as docs/python.md says of them (walkthrough: StoreError)
            raise ParameterError("{classes}: " + literal(error)) from None
    texts = vocab.embeddings(config.prompts)
    n_classes, n_images = len(vocab.classes), store.n_images
    generator = torch.Generator().manual_seed(config.seed)
    precision = resolved_precision(config.precision, device)
    dtype = SEARCH_DTYPES[precision]
    clip, scores, ranked, neighbour_search = _zero_shot_ranking(store, texts, config, device, dtype, timer)
    if config.method == "balanced":
        with timer.phase("zero-shot prior"):
            seed_rows, seed_labels = seeds.positions(ranked, 0, config.k)
            sample, drawn = transductive_sample(n_images, seed_rows, config.seed)
            log_prior = torch.log_softmax(zero_shot_logits(as_tensor(clip[sample], device), as_tensor(texts, device)),
                                          dim=1)
    del clip
    if config.method == "balanced":
        with timer.phase("read features"):
            features = normalise(store.read("backbone", sample), device)
            _refuse_non_finite(store, sample, features.sum(dim=1))
            candidate_rows, candidate_labels = seeds.positions(ranked, 0, config.candidates)
            candidate_features = normalise(store.read("backbone", candidate_rows), device)
            _refuse_non_finite(store, candidate_rows, candidate_features.sum(dim=1))
            prototypes = transductive.class_prototypes(candidate_features, torch.as_tensor(candidate_labels,
                                                                                           device=device), n_classes)
            del candidate_features
        with timer.phase("class shares + self-training"):
            trained, head_classes, shares, estimated = _balanced_training(
                features, sample, drawn, seed_rows, seed_labels, log_prior, prototypes, config, generator, dtype,
                timer.cycle_steps(len(transductive.CYCLE_FRACTIONS), at_most=False))
    else:
        unique = np.unique(ranked[ranked != seeds.MISSING])
        with timer.phase("read features"):
            features = FeatureTable(unique, normalise(store.read("backbone", unique), device))
            _refuse_non_finite(store, unique, features.features.sum(dim=1))
        with timer.phase("self-training"):
            trained = self_train(ranked, features, k=config.k, epochs=config.epochs,
                                 cycle_epochs=config.cycle_epochs, batch_size=config.batch_size, lr=config.lr,
                                 max_cycles=config.max_cycles, loss_floor=config.loss_floor,
                                 accumulate=config.accumulate, generator=generator, train_dtype=dtype,
                                 on_cycle=timer.cycle_steps(config.max_cycles, at_most=True))
        head_classes, shares, estimated = np.arange(n_classes), None, None
    if not (torch.isfinite(trained.head.weight).all() and torch.isfinite(trained.head.bias).all()):
        raise ZsfsError(f"training diverged (the classifier's weights are not finite) with --lr {config.lr}; "
                        "use a smaller --lr")
    del features
    seed_cycle = trained.cycles[0]
    if seed_cycle.n_kept == 0:  # every class lost its candidates: nothing to calibrate OOD on
        raise ZsfsError("no seed image was selected for any class; check the vocabulary against the images")
    collection = _scored_collection(store, trained, head_classes, ranked[head_classes], config.seed, device, timer)
    # over seed places, as the paper's seed sets are (an image seeding 2 classes under --paper counts twice)
    thresholds = ood.fit_thresholds(collection.statistics[seed_cycle.rows], config.ood_multiplier)
    components = {"mcm": -scores.mcm, "reference_distance": collection.distance}
    stored_quantiles = {name: ood.quantiles(values) for name, values in components.items()}
    ood_distance = ood.distance_rank(collection.distance, stored_quantiles["reference_distance"])
    ood_score = ood.combined_score([ood.cdf(components["mcm"], stored_quantiles["mcm"]), ood_distance])
    seed_rows = np.unique(seed_cycle.rows)  # an image seeding 2 classes: once
    flag_threshold = ood.flag_threshold(ood_score[seed_rows])
    pseudo_label, pseudo_cycle = _pseudo_labels(n_images, trained.cycles)
    classifier = Classifier(
        classes=[vocab.classes[i] for i in head_classes],
        weight=trained.head.weight.detach().cpu().numpy(),
        bias=trained.head.bias.detach().cpu().numpy(),
        ood=thresholds,
        backbone=dict(store.backbone_info),
        ood_reference=collection.reference.cpu().to(torch.float16).numpy(),
        ood_nearest=collection.nearest,
        ood_quantiles={"reference_distance": stored_quantiles["reference_distance"]},
        # new images have no CLIP embedding: predict flags them on the backbone half alone, cut as ood_score's
        ood_distance_threshold=ood.flag_threshold(ood_distance[seed_rows]),
    )
    store.check_unchanged()  # every row came from the build the fit opened
    return FitResult(
        vocabulary=name,
        classes=list(vocab.classes),
        prompts_used=vocab.prompts_used(config.prompts),
        predicted=collection.predicted,
        confidence=collection.confidence,
        ood_score=ood_score,
        ood_distance=ood_distance,
        ood_flag=ood_score > flag_threshold,
        ood_flag_threshold=float(flag_threshold),
        ood_paper=ood.paper_score(collection.statistics, thresholds),
        ood_continuous=ood.continuous_score(collection.statistics, thresholds),
        is_seed=pseudo_cycle == 0,
        pseudo_label=pseudo_label,
        pseudo_cycle=pseudo_cycle,
        zero_shot_predicted=scores.predicted,
        zero_shot_confidence=scores.confidence,
        mcm_score=-scores.mcm,
        cycles=trained.cycles,
        stop_reason=trained.stop_reason,
        classifier=classifier,
        neighbour_search=neighbour_search,
        precision=precision,
        absent_classes=[vocab.classes[i] for i in np.setdiff1d(np.arange(n_classes), head_classes)],
        class_shares=None if shares is None else dict(zip(vocab.classes, shares.tolist())),
        estimated_shares=None if estimated is None else dict(zip(vocab.classes, estimated.tolist())),
        classes_read_as_one=[(vocab.classes[first], vocab.classes[later]) for first, later in repeated_rows(texts)],
        timings=timer.timings,
        cpu_timings=timer.cpu_timings,
        config=copy.deepcopy(config),
        store_build=store.build_key(),
    )


def _zero_shot_ranking(store: "Store", texts: np.ndarray, config: FitConfig, device: torch.device,
                       dtype: torch.dtype, timer: _Timer
                       ) -> tuple[np.ndarray, "seeds.ZeroShotScores", np.ndarray, dict]:
    """The seed-ranking phases: the store's CLIP rows, their zero-shot scores, every class's
    re-ranked candidates (``seeds.rerank``: rows, ``seeds.MISSING`` where a class has fewer) and
    where the re-ranking neighbours came from (the store's graph, or a search the fit ran)."""
    n_neighbours = min(config.neighbours, store.n_images - 1)
    graph = store.graph_info
    method = choose_search(store, device, dtype, ivf=config.ivf_neighbours)
    unused = graph_unused(graph, n_neighbours, method)
    with timer.phase("read clip + index"):
        if graph is not None and unused is None:
            search, clip = None, store.read("clip")
        else:
            search, clip = open_search(store, method, device=device, scan_dtype=dtype, seed=config.seed)
    with timer.phase("zero-shot + candidates"):
        scores, candidates, _ = seeds.zero_shot_scan(clip, texts, config.candidates, chunk_rows=CHUNK_ROWS,
                                                     device=device)
        _refuse_non_finite(store, slice(None), scores.mcm, "CLIP embeddings")
    with timer.phase("neighbours + re-rank"):
        valid = candidates != seeds.MISSING
        unique = np.unique(candidates[valid])
        if search is None:  # precomputed by `zsfs neighbours`: no search at all
            found = store.neighbour_graph(unique)[:, :n_neighbours]
            neighbour_search = {"source": "store graph", **graph}
        else:
            found = search(unique, n_neighbours)
            neighbour_search = {"source": "fit", **search.describe(), **({"graph_unused": unused} if unused else {})}
        neighbours = np.full((*candidates.shape, n_neighbours), seeds.MISSING, np.int64)
        neighbours[valid] = found[np.searchsorted(unique, candidates[valid])]
        support = seeds.neighbour_support(candidates, neighbours, clip, texts, scores, device=device)
        keep = seeds.one_class_per_image(candidates, support) if config.unique_pseudo_labels else None
        ranked = seeds.rerank(candidates, support, keep)
    return clip, scores, ranked, neighbour_search


@dataclass
class _ScoredCollection:
    """What the fitted head says of every image of the store, and the OOD reference it measured against."""

    predicted: np.ndarray  # int64 vocabulary index
    confidence: np.ndarray  # float32
    statistics: np.ndarray  # float32 (N, len(ood.STATISTICS)): the paper's logit statistics
    distance: np.ndarray  # float32 distance to the nearest-th reference row
    reference: torch.Tensor  # unit reference features, float16 values
    nearest: int


def _scored_collection(store: "Store", trained: SelfTraining, head_classes: np.ndarray, candidates: np.ndarray,
                       seed: int, device: torch.device, timer: _Timer) -> _ScoredCollection:
    """Every image scored by the trained head (``head_classes``: the vocabulary index of each of
    its classes), and its distance to the OOD reference drawn from the present classes' ``candidates``."""
    with timer.phase("read OOD reference"):
        candidate_rows = np.unique(candidates[candidates != seeds.MISSING])
        reference_rows = ood.reference_rows(candidate_rows, seed)
        nearest = ood.nearest_rank(candidates, len(reference_rows))
        # float32 products even with bf16 (bf16 cosines step by 0.004 near 1: the distances fell on
        # a few dozen values), over the float16 copy classifier.pt keeps, so that predict gives
        # the collection's own rows the fit's ood_distance
        reference = normalise(store.read("backbone", reference_rows), device).half().float()
    with timer.phase("predict"):
        n_images = store.n_images
        scored = _ScoredCollection(predicted=np.empty(n_images, np.int64), confidence=np.empty(n_images, np.float32),
                                   statistics=np.empty((n_images, len(ood.STATISTICS)), np.float32),
                                   distance=np.empty(n_images, np.float32), reference=reference, nearest=nearest)
        weight, bias = trained.head.weight.detach(), trained.head.bias.detach()
        for start, chunk in store.iter_chunks("backbone", CHUNK_ROWS):
            rows = slice(start, start + len(chunk))
            best, confidence, statistics, distance = score_images(normalise(chunk, device), weight, bias, reference,
                                                                  nearest)
            scored.predicted[rows], scored.confidence[rows] = head_classes[best.cpu().numpy()], confidence.cpu().numpy()
            scored.statistics[rows], scored.distance[rows] = statistics.cpu().numpy(), distance.cpu().numpy()
            _refuse_non_finite(store, rows, scored.distance[rows])  # the rows no earlier phase read
    return scored


def transductive_sample(n_images: int, seed_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted store rows the balanced method works on, and which of them were drawn at random.

    All rows, or a seeded random sample of ``TRANSDUCTIVE_ROWS`` plus the seeds (class shares
    need a sample, not every image; they are estimated on the random rows alone, as the seeds are
    k per class whatever the collection holds).
    """
    if n_images <= TRANSDUCTIVE_ROWS:
        return np.arange(n_images), np.ones(n_images, bool)
    drawn = np.random.default_rng(seed).choice(n_images, TRANSDUCTIVE_ROWS, replace=False)
    rows = np.union1d(drawn, seed_rows)
    return rows, np.isin(rows, drawn)


def _balanced_training(features: torch.Tensor, rows: np.ndarray, drawn: np.ndarray, seed_rows: np.ndarray,
                       seed_labels: np.ndarray, log_prior: torch.Tensor, prototypes: torch.Tensor, config: FitConfig,
                       generator: torch.Generator, dtype: torch.dtype, on_cycle: Callable[[int], None]
                       ) -> tuple[SelfTraining, np.ndarray, np.ndarray, np.ndarray]:
    """Class model (started from ``prototypes``), absent classes, balanced self-training on the present classes.

    Returns the training (cycle labels as vocabulary indices), the vocabulary index of each head
    class, the share of every vocabulary class (0 for absent ones) and the class model's mean
    posterior of each class (before its sparse prior and the cut: how far from them a class was).
    """
    n_classes = log_prior.shape[1]
    seed_positions = torch.as_tensor(np.searchsorted(rows, seed_rows), device=features.device)
    on_drawn = torch.as_tensor(drawn, device=features.device)
    mixture = transductive.class_mixture(features[on_drawn], log_prior[on_drawn], prototypes,
                                         sparse=not config.keep_all_classes)  # (no class left without a share)
    absent = (np.zeros(n_classes, bool) if config.keep_all_classes
              else transductive.absent_classes(mixture.shares))
    present = np.flatnonzero(~absent)
    shares = np.where(absent, 0.0, mixture.shares)
    shares /= shares.sum()
    head_index = np.full(n_classes, -1)
    head_index[present] = np.arange(len(present))
    keep = torch.as_tensor(~absent[seed_labels], device=features.device)
    trained = transductive.balanced_self_training(
        features, rows, seed_positions[keep], torch.as_tensor(head_index[seed_labels], device=features.device)[keep],
        transductive.mixture_log_posterior(features, log_prior, mixture, present),
        transductive.tempered(shares[present]), cycle_epochs=config.cycle_epochs, batch_size=config.batch_size,
        lr=config.lr, generator=generator, train_dtype=dtype, on_cycle=on_cycle)
    for cycle in trained.cycles:
        cycle.labels = present[cycle.labels]
    return trained, present, shares, mixture.expected


def _refuse_non_finite(store: "Store", rows: slice | np.ndarray, per_row: np.ndarray | torch.Tensor,
                      what: str = "backbone features") -> None:
    """A clear error when a value computed from each of ``rows`` is NaN or infinite: a store row
    holding non-finite features (extract and import never write one) makes every score it
    touches NaN, and the fit would fail far from the cause or write NaN scores for every image."""
    bad = ~np.isfinite(per_row.cpu().numpy() if isinstance(per_row, torch.Tensor) else per_row)
    if bad.any():  # (a rebuild under way reads as missing rows, NaN: fit_store names the rebuild instead)
        row = int(np.arange(store.n_images)[rows][np.flatnonzero(bad)[0]])
        raise ZsfsError(f"{store.path} holds non-finite {what} (NaN or infinity) at row {row} "
                        f"({visible(store.paths(np.array([row]))[0])}){' and others' if bad.sum() > 1 else ''}; "
                        "zsfs never writes such rows: the store was changed outside zsfs or damaged "
                        "(`zsfs info --verify` checks it); rebuild it (`zsfs extract` or `zsfs import`, with --overwrite)")


def _pseudo_labels(n_images: int, cycles: list[Cycle]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: first pseudo-label and the cycle that gave it (-1 where none)."""
    label = np.full(n_images, -1, np.int64)
    cycle = np.full(n_images, -1, np.int32)  # (review: int16 overflowed at a 32,768th cycle, after the training)
    for c in reversed(cycles):  # earlier cycles overwrite later ones: the first one wins
        # within a cycle too (an image seeding two classes under --paper): its first place only
        rows, first = np.unique(c.rows, return_index=True)
        label[rows], cycle[rows] = c.labels[first], c.index
    return label, cycle
