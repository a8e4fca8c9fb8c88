"""Transductive labelling over the whole collection (the default fit; ``--paper`` keeps the cycles).

The paper trains on a few candidates per class and never looks at the rest of the collection.
Three published ideas use all of it, on the stored embeddings alone:

1. **Class model** (:func:`class_mixture`): a von Mises-Fisher mixture over the L2-normalised
   backbone features, one component per class, started from the mean of each class's re-ranked
   zero-shot candidates (its whole shortlist, not only the first k: see docs/fit.md), with each
   image's zero-shot log-probabilities as a prior (the generative model of TransCLIP, Zanella et
   al. 2024, without its Laplacian term). EM estimates the share of the collection each listed
   class takes (what keeps balanced pseudo-labelling from collapsing when the folder holds only
   some of the listed classes; :func:`sparse_shares`: a class no image is more than one image's
   worth of loses its share) and its posterior (:func:`mixture_log_posterior`) labels every
   image for the first cycle.
2. **Absent classes** (:func:`absent_classes`): a class whose estimated share is below a fiftieth of
   an even share holds (almost) no images; it gets no seeds, no pseudo-labels and no predictions.
3. **Balanced self-training** (:func:`balanced_self_training`): each cycle labels every image by
   optimal transport (Sinkhorn-Knopp over the mixture posterior, then over the last head's, with
   the estimated shares, tempered towards an even split, as class marginals, as in Asano et al.
   2020 and SwAV), keeps the most confident third, two thirds, all of each class and trains a
   fresh linear head on them and the seeds. Without the marginals, self-training drifts towards
   the classes the head already favours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zsfs.fit.classifier import LinearHead
from zsfs.fit.selftrain import Cycle, SelfTraining
from zsfs.methods import ABSENT_SHARE

CONCENTRATION = 50.0
"""vMF concentration on unit backbone features: the same order as CLIP's logit scale (100) for
cosines that spread about twice as wide; measured on the real-data benchmark (docs/fit.md)."""

PRIOR_WEIGHT = 0.5
"""Weight of the zero-shot log-probabilities in the mixture (TransCLIP's text term)."""

MIXTURE_ITERATIONS = 5
"""EM steps: ten measured within 0.3 points of five on the real-data benchmark and made the 50k
x 1000 ``--fast`` fit about 15 % slower (docs/fit.md)."""
SINKHORN_ITERATIONS = 30


CYCLE_FRACTIONS = (1 / 3, 2 / 3, 1.0)
"""Fraction of each class's Sinkhorn assignment, most confident first, trained on per cycle
(five cycles of a fifth each measured 0-1.8 points above three on the real-data benchmark, at
1.5x the training time; docs/fit.md)."""

MIN_CYCLE_UPDATES = 20
"""Adam updates each cycle's fresh head makes at least: on a small collection its epochs repeat
until then. ``cycle_epochs`` 5 at batch 512 gave a 500-image collection (one batch) 5 updates,
and its head scored below zero-shot (28 % against 43 % on 500-image samples of Fashion-MNIST;
65 % with 20). Of the minimums measured (10, 20, 100), 20 is the smallest that fixed it; it costs
the benchmark's absent-class draws 2.5 points on average, 100 cost them 11 (docs/fit.md)."""

STOP_SCHEDULE = "balanced schedule done"


@dataclass
class ClassMixture:
    """EM estimate of the classes in the collection."""

    shares: np.ndarray  # (C,) float64, sums to 1: fraction of the images of each class (0: none left to it)
    prototypes: torch.Tensor  # (C, D) unit mean directions (zero for a class nothing was assigned to)
    expected: np.ndarray  # (C,) float64: the mean posterior of each class, before the sparse prior takes
    #                       a class's last image (how far from nothing a class was)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, D) unit mean of the ``features`` rows of each label (zero rows for labels with none), on
    ``features``' device. Summed on the CPU: CUDA's index_add_ adds in no fixed order, and a fit must repeat."""
    sums = torch.zeros(n_classes, features.shape[1]).index_add_(0, labels.cpu(), features.cpu().float())
    return F.normalize(sums, dim=1).to(features.device)


def class_mixture(
    features: torch.Tensor,
    log_prior: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    concentration: float = CONCENTRATION,
    prior_weight: float = PRIOR_WEIGHT,
    iterations: int = MIXTURE_ITERATIONS,
    sparse: bool = True,
) -> ClassMixture:
    """EM for a vMF mixture with a per-image prior, started from ``prototypes``.

    ``features``: (n, D) unit rows. ``log_prior``: (n, C) zero-shot log-probabilities of the same
    rows. E-step: ``log q_ic = kappa <x_i, mu_c> + log pi_c + lambda log p0_ic`` normalised over c;
    M-step: ``mu_c`` = normalised q-weighted mean, ``pi_c`` = :func:`sparse_shares` of the summed
    q (``sparse`` False: the mean of q, every class kept).
    """
    to_shares = sparse_shares if sparse else (lambda counts: counts / counts.sum())
    responsibilities = torch.softmax(concentration * features @ prototypes.T, dim=1)
    for _ in range(iterations):
        shares = to_shares(responsibilities.sum(dim=0))
        prototypes = F.normalize(responsibilities.T @ features, dim=1)
        responsibilities = torch.softmax(
            _posterior_logits(features, prototypes, shares, log_prior, concentration, prior_weight), dim=1)
    counts = responsibilities.sum(dim=0).cpu().double()  # float64 on the CPU: MPS has none
    return ClassMixture(to_shares(counts).numpy(), prototypes, (counts / counts.sum()).numpy())


def sparse_shares(counts: torch.Tensor) -> torch.Tensor:
    """The mixture's class shares from each class's expected number of images (``counts``, (C,)):
    the MAP estimate under a sparse Dirichlet prior (concentration -> 0), each count less one
    image, floored at 0, normalised. A class that no image is more than one image's worth of
    loses its share, and in practice keeps it lost (a log share of -69): the EM step's component
    annihilation of Figueiredo and Jain (2002), with one image in place of half a component's
    parameters. Plain means leave every
    listed class a crumb of every image; with far more classes than the collection holds (100 of
    21,841 listed) the crumbs summed to 44 % of it (docs/fit.md). It costs classes of one or two
    images, reported absent. Where no class holds more than one image's worth, the plain shares
    (nothing to choose between; a step from the sparse ones, as the boundary is crossed)."""
    kept = (counts - 1).clamp_min(0)
    if not bool(kept.sum() > 0):
        kept = counts
    return kept / kept.sum()


def mixture_log_posterior(features: torch.Tensor, log_prior: torch.Tensor, mixture: ClassMixture,
                          classes: np.ndarray, *, concentration: float = CONCENTRATION,
                          prior_weight: float = PRIOR_WEIGHT) -> torch.Tensor:
    """(n, len(classes)) log-probabilities of ``classes`` under the mixture (its E-step restricted
    to those classes), for any unit ``features`` with their zero-shot ``log_prior`` (n, C)."""
    index = torch.as_tensor(classes, device=features.device)
    shares = torch.as_tensor(mixture.shares[classes], dtype=torch.float32, device=features.device)
    return torch.log_softmax(_posterior_logits(features, mixture.prototypes[index], shares, log_prior[:, index],
                                               concentration, prior_weight), dim=1)


def _posterior_logits(features: torch.Tensor, prototypes: torch.Tensor, shares: torch.Tensor,
                      log_prior: torch.Tensor, concentration: float, prior_weight: float) -> torch.Tensor:
    """The E-step's unnormalised log-posterior: ``kappa <x_i, mu_c> + log pi_c + lambda log p0_ic``."""
    return concentration * features @ prototypes.T + torch.log(shares.clamp_min(1e-30)) + prior_weight * log_prior


def absent_classes(shares: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(C,) bool: classes whose share is below ``threshold`` (default ``ABSENT_SHARE``, read when
    called) times an even share."""
    threshold = ABSENT_SHARE if threshold is None else threshold
    return np.asarray(shares) < threshold / len(shares)


def tempered(shares: np.ndarray) -> np.ndarray:
    """Class marginals for the pseudo-labels: the geometric mean of the estimated shares and an even
    split (``sqrt(share)``, normalised). The mixture's shares are noisy where the zero-shot prior is
    weak; on the real-data benchmark the raw shares lost 2-6 accuracy points to an even split on
    balanced collections, and an even split collapses when listed classes are missing: halfway (in
    log space) kept most of both (docs/fit.md)."""
    root = np.sqrt(np.asarray(shares, np.float64))
    return root / root.sum()


def sinkhorn(log_scores: torch.Tensor, marginals: torch.Tensor, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Soft assignment (n, C) with rows summing to 1 and column sums ``n * marginals``.

    Entropic optimal transport between the images (uniform) and the classes (``marginals``):
    Sinkhorn-Knopp's alternate row and column scalings of ``exp(log_scores)``, two matrix-vector
    products per iteration. Classes with a zero marginal get zero everywhere.
    """
    active = marginals > 0
    every_class = bool(active.all())
    # One (n, C) working matrix, changed in place (n x C is the largest array of a fit): no column
    # gather and scatter when every class takes part, as usual.
    scores = (log_scores if every_class else log_scores.index_select(1, torch.nonzero(active).squeeze(1))).float()
    kernel = scores - scores.amax(dim=1, keepdim=True)  # a new matrix: log_scores stays as it was
    # Each column shifted to a largest entry of 1 as well: a class far below every image's best one
    # (by 90: exp underflows in float32) would else get no image whatever its marginal. The shift is
    # absorbed by the column scaling, and it is 0 for a class that is some image's best, as usual.
    kernel -= kernel.amax(dim=0, keepdim=True).nan_to_num(neginf=0.0)  # (a class at -inf everywhere stays at 0)
    kernel.exp_()
    target = marginals[active].float() / marginals[active].sum() * len(kernel)
    column = torch.ones(kernel.shape[1], device=kernel.device)
    for _ in range(iterations):
        row = 1.0 / (kernel @ column).clamp_min(1e-30)
        column = target / (kernel.T @ row).clamp_min(1e-30)
    assignment = kernel.mul_(column)
    assignment /= assignment.sum(dim=1, keepdim=True).clamp_min(1e-30)
    if every_class:
        return assignment
    out = torch.zeros(log_scores.shape, dtype=torch.float32, device=log_scores.device)
    out[:, active] = assignment
    return out


def most_confident(labels: torch.Tensor, confidence: torch.Tensor, fraction: float, n_classes: int) -> torch.Tensor:
    """(n,) bool: the ``ceil(fraction * size)`` most confident rows of each label (ties: lower row)."""
    by_confidence = torch.sort(-confidence, stable=True).indices
    order = by_confidence[torch.sort(labels[by_confidence], stable=True).indices]  # by label, then confidence
    sizes = torch.bincount(labels, minlength=n_classes)
    first_of_label = torch.cumsum(sizes, dim=0) - sizes
    sorted_labels = labels[order]
    rank_in_label = torch.arange(len(labels), device=labels.device) - first_of_label[sorted_labels]
    keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    limit = torch.ceil(fraction * sizes.cpu().double()).long().to(labels.device)  # float64 on the CPU: MPS has none
    keep[order] = rank_in_label < limit[sorted_labels]
    return keep


def cycle_epochs_for(n_rows: int, cycle_epochs: int, batch_size: int) -> int:
    """Epochs of a cycle on ``n_rows``: ``cycle_epochs``, or more until the head has made
    ``MIN_CYCLE_UPDATES`` updates (one per batch)."""
    batches = -(-n_rows // batch_size)
    return max(cycle_epochs, -(-MIN_CYCLE_UPDATES // max(batches, 1)))


def balanced_self_training(
    features: torch.Tensor,
    rows: np.ndarray,
    seed_positions: torch.Tensor,
    seed_labels: torch.Tensor,
    initial_log_probs: torch.Tensor,
    marginals: np.ndarray,
    *,
    cycle_epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    train_dtype: torch.dtype = torch.float32,
    fractions: tuple[float, ...] = CYCLE_FRACTIONS,
    on_cycle: Callable[[int], None] | None = None,
) -> SelfTraining:
    """One cycle per fraction: Sinkhorn pseudo-labels over all ``features``, train a fresh head.

    ``features``: (n, D) unit rows of store ``rows`` (sorted). ``seed_positions`` index into them.
    ``initial_log_probs``: (n, C) class log-probabilities that label the first cycle (the mixture
    posterior); later cycles use the previous head's. ``marginals``: each class's share of the
    pseudo-labels (summing to 1: the tempered estimated shares, absent classes dropped before; a
    share that rounded to 0, possible under ``--keep-all-classes``, leaves its class its seeds alone). Cycle 0 records the seeds (no
    training of its own: they are part of every cycle's training set). ``on_cycle(index)`` hears
    of each cycle as it starts.
    """
    on_cycle = on_cycle or (lambda index: None)
    device = features.device
    n_classes = len(marginals)
    marginals = torch.as_tensor(marginals, dtype=torch.float32, device=device)
    seed_rows = rows[seed_positions.cpu().numpy()]
    cycles = [Cycle(0, len(seed_rows), seed_rows, seed_labels.cpu().numpy(), 0, [])]
    is_seed = torch.zeros(len(features), dtype=torch.bool, device=device)
    is_seed[seed_positions] = True
    head = None
    for index, fraction in enumerate(fractions, start=1):
        on_cycle(index)
        log_probs = initial_log_probs if head is None else torch.log_softmax(head.predict_logits(features), dim=1)
        confidence, labels = sinkhorn(log_probs, marginals).max(dim=1)
        kept = (most_confident(labels, confidence, fraction, n_classes) & ~is_seed).nonzero().squeeze(1)
        positions = torch.cat([seed_positions, kept])
        head = LinearHead(features.shape[1], n_classes, lr=lr, generator=generator, device=device,
                          train_dtype=train_dtype)
        losses = head.train_epochs(features[positions], torch.cat([seed_labels, labels[kept]]),
                                   epochs=cycle_epochs_for(len(positions), cycle_epochs, batch_size),
                                   batch_size=batch_size, generator=generator)
        cycles.append(Cycle(index, len(features), rows[kept.cpu().numpy()], labels[kept].cpu().numpy(),
                            len(positions), losses))
    return SelfTraining(head, cycles, STOP_SCHEDULE)
