"""What a run's summary says, as plain text: the rows of the fit command's tables and of the
report's summary, from the run's config.json, metrics.json and predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zsfs.evaluate import OOD_DETECTORS, paper_score_counts
from zsfs.names import as_argument, pairs_text, percent, some_names, spelled_like

if TYPE_CHECKING:
    import polars as pl


def seed_precision(metrics: dict | None) -> dict[int, float]:
    """Each cycle's precision of its pseudo-labels (metrics.json; empty without labels)."""
    return {p["cycle"]: p["precision"] for p in (metrics or {}).get("seed_precision", [])}


def classes_not_predicted(classes: list[str], predicted: list[str], absent: list[str] | None) -> list[str]:
    """The ``classes``, ``absent`` ones aside, that none of the ``predicted`` names is."""
    left_out = set(predicted) | set(absent or [])
    return [name for name in classes if name not in left_out]


def cycle_rows(config: dict, metrics: dict | None) -> tuple[list[str], list[list[str]]]:
    """The run's self-training cycles as (header, rows of plain text), for the fit command's table
    and the report's: the precision of each cycle's pseudo-labels (cycle 0: the seeds; metrics.json's
    ``seed_precision``) only where the store has labels, "-" where a cycle has no such figure."""
    precision = seed_precision(metrics)
    header = ["cycle", "candidates", "kept", "trained on", "epochs", "first loss"] + (
        ["pseudo-label precision"] if precision else [])  # (walkthrough: "seed precision" for every cycle)
    # a diverging loss (--lr 1e30: 3.9e+29) in 4 decimals is 34 digits, cut by the table's column
    figure = lambda value: "-" if value is None else f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"  # noqa: E731
    rows = [[str(c["cycle"]), f"{c['n_candidates']:,}", f"{c['n_kept']:,}", f"{c['n_trained']:,}", str(c["epochs"]),
             figure(c.get("first_loss"))] + ([figure(precision.get(c["cycle"]))] if precision else [])
            for c in config.get("cycles") or []]
    return header, rows


def summary_rows(config: dict, metrics: dict | None, frame: "pl.DataFrame", names_shown: int,
                 absent_listed_in: str = "config.json") -> list[tuple[str, str]]:
    """What a run's summary says, as (label, plain text) rows: the fit command's table and the
    report's, from the run's config.json, metrics.json and predictions (``frame``: at least its
    is_seed, pseudo_label, ood_flag and ood_paper columns); runs of older versions lack some
    figures, whose rows are left out. ``names_shown``: class names listed in one row;
    ``absent_listed_in``: where the absent classes left out of it are all listed."""
    listed = lambda names: some_names(names, names_shown, "config.json")  # noqa: E731
    rows = []
    if metrics is not None and "accuracy" not in metrics:
        rows.append(("accuracy", "- (no image's label is a class of this vocabulary)"))
    for key, label in {"accuracy": "accuracy", "zero_shot_accuracy": "zero-shot accuracy",
                       **{detector.fit_metric: f"OOD AUROC ({detector.title})" for detector in OOD_DETECTORS}}.items():
        if (metrics or {}).get(key) is not None:
            rows.append((label, f"{metrics[key]:.4f}"))
    classes = config.get("classes") or []
    outside = (metrics or {}).get("labels_not_classes")
    if outside:  # a near-miss of a class name ('bird ' for 'bird') is said so
        hint = spelled_like(classes, "class")
        rows.append(("labels that are no class (images counted as OOD)", some_names(
            [f"{label!r} {count:,}{hint(label)}" for label, count in outside.items()], names_shown, "metrics.json")))
    rows += [("images", f"{frame.height:,}"), ("classes", f"{len(classes):,}")]
    store = config.get("store") or {}
    if store.get("n_skipped"):  # files no label is given for (edge user: said nowhere after extract)
        rows.append(("skipped by the store", f"{store['n_skipped']:,} (files not embedded, other names of listed ones: "
                                             f"`zsfs info {as_argument(store['path'])} --skipped` lists them)"))
    parameters = config.get("parameters") or {}
    looked_for_absent = parameters.get("method") == "balanced" and not parameters.get("keep_all_classes")
    if config.get("absent_classes") or (looked_for_absent and config.get("absent_classes") is not None):
        rows.append(("absent classes", some_names(config["absent_classes"], names_shown, absent_listed_in)
                     if config["absent_classes"] else "none"))
    if config.get("classes_without_seeds"):
        rows.append(("classes without seeds", listed(config["classes_without_seeds"])))
    neighbours = parameters.get("neighbours")
    # (with every class kept, absent ones hold crumbs of share: not classes of few images)
    shares = {} if parameters.get("keep_all_classes") else config.get("class_shares") or {}
    small = [name for name, share in shares.items() if neighbours and 0 < share * frame.height < neighbours]
    if small:  # their images' neighbours are mostly of other classes: the re-ranking outvotes them (docs/fit.md)
        rows.append((f"classes of fewer images than --neighbours ({neighbours}; estimated)",
                     some_names(small, names_shown)))  # (config.json's class_shares, not a list of them)
    unused = config.get("classes_not_predicted")  # a present class the head never picks
    in_config = unused is not None
    if not in_config and "predicted" in frame.columns:  # a run written before config.json listed them
        unused = classes_not_predicted(classes, frame["predicted"].unique().to_list(), config.get("absent_classes"))
    if unused:  # an older run's are not in config.json (walkthrough: "(88 more in config.json)" listed none)
        rows.append(("classes no image is predicted as (absent ones aside)",
                     listed(unused) if in_config else some_names(unused, names_shown)))
    if config.get("classes_read_as_one"):  # the later of each pair is never zero-shot's pick
        rows.append(("classes with one text embedding (CLIP reads them as one)",
                     pairs_text([tuple(pair) for pair in config["classes_read_as_one"]], names_shown, "config.json")))
    cycles = config.get("cycles") or []
    if "is_seed" in frame.columns:  # with the paper's rule an image can seed two classes: seed places
        seeds, places = int(frame["is_seed"].sum()), cycles[0]["n_kept"] if cycles else None
        rows.append(("seed images", f"{seeds:,}" + (f" ({places:,} seed places: an image can seed two classes)"
                                                   if places is not None and places > seeds else "")))
    if "pseudo_label" in frame.columns:
        rows.append(("pseudo-labelled images (seeds included)", f"{frame['pseudo_label'].is_not_null().sum():,}"))
    if cycles:
        rows.append(("self-training cycles", f"{len(cycles) - 1}" + (f" ({config['stop_reason']})"
                                                                     if config.get("stop_reason") else "")))
    search = config.get("neighbour_search")
    if search:
        rows.append(("neighbours", f"{search['source']}: {search['search']}, {search['precision']}"
                                   + (f" ({search['graph_unused']})" if search.get("graph_unused") else "")))
    if config.get("precision"):
        rows.append(("training products", str(config["precision"])))
    if "ood_flag" in frame.columns:
        cut = config.get("ood_flag_threshold")
        flagged = int(frame["ood_flag"].sum())
        # the share said: an in-distribution collection has many images less typical than its seeds
        rows.append(("flagged OOD", f"{flagged:,} ({percent(flagged / max(frame.height, 1))} of the images" + (
            f"; ood_score above {cut:.4f}: less typical than 95 % of the seeds, not all out of distribution)"
            if cut is not None else ")")))
    if "ood_paper" in frame.columns:  # the paper's score: 0, 1/3, 2/3 or 1
        counts = paper_score_counts(frame["ood_paper"].to_numpy())
        rows.append(("paper OOD score 0 / 1/3 / 2/3 / 1", " / ".join(f"{count:,}" for count in counts)))
    timings = config.get("timings_s") or {}
    rows += [(f"time: {phase}", f"{seconds:.2f} s") for phase, seconds in timings.items()]
    if timings:
        rows.append(("time: total", f"{sum(timings.values()):.2f} s"))
    return rows
