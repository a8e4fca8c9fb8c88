"""``zsfs report``: one self-contained HTML page about a fit run, to look at a labelled collection.

The page opens offline and alone (no CDN, no files beside it): figures are inline SVG drawn by
matplotlib (:mod:`zsfs.figures`), thumbnails are JPEG ``data:`` URIs made from the source images
(:mod:`zsfs.thumbnails`). What it shows grows with the number of classes, never with the number of
images: per class a few seeds and a random sample of its predictions, the images most likely OOD,
and figures over all rows. Reads only the run folder (and the store's record of where its images
are); every column beyond the basic ones is optional, so older and newer runs render alike.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from zsfs import __version__, figures
from zsfs.devices import check_polars_usable
from zsfs.digests import evenly_spaced_rows
from zsfs.decode import FILE_NOT_FOUND
from zsfs.errors import (ParameterError, ZsfsError, check_at_least, check_callbacks, check_path, check_seed,
                         literal, shown_value)
from zsfs.evaluate import LabelCodes, confusion_matrix, most_confused, per_class_accuracy
from zsfs.methods import ABSENT_SHARE, UNREAD_BY
from zsfs.names import as_argument, check_utf8_file_names, counted, percent, reasons_text, visible
from zsfs.outputs import check_output_names, refuse_read_only_file, suffix_rule, write_text_atomically, written_file
from zsfs.run_summary import cycle_rows, seed_precision, summary_rows
from zsfs.runs import REPORT, FittedRun, load_run
from zsfs.sources import ImageSource
from zsfs.store.schema import IMPORTED_WEIGHTS
from zsfs.tars import locate_members
from zsfs.thumbnails import thumbnails
from zsfs.writable import check_writable

COLUMNS = ["path", "predicted", "confidence", "ood_score", "ood_continuous", "ood_paper", "ood_flag", "is_seed",
           "pseudo_label", "label"]
"""predictions.parquet columns the page uses (those the run lacks are left out)."""
THUMBNAIL_BUDGET = 4000  # thumbnails in the class galleries: ~3 KB each keeps a 1000-class page < 20 MB
MAX_PER_CLASS = 8
OOD_IMAGES = 48
MATRIX_CLASSES = 1000  # classes the confusion matrix draws at most (evenly spaced past it): ~200 MB while drawn
ROW = "row"  # the store row of a prediction (a column the report adds)
NO_FOLDER = "no image folder known"
MAX_LISTED = 10  # absent classes named in the summary (the Classes section lists them all)


def write_report(run_dir: "str | Path | FittedRun", out: str | Path | None = None, *, images: str | Path | None = None,
                 per_class: int | None = None, ood_images: int = OOD_IMAGES, seed: int = 0,
                 max_pixels: int | None = None, on_missing_images: Callable[[str], None] | None = None) -> Path:
    """Render the report of ``run_dir`` to ``out`` [RUN_DIR/report.html]; the options as
    :func:`render_report`'s. ``on_missing_images`` hears the page's note when some images could
    not be shown (an empty gallery should be no surprise)."""
    images = _check_options(images, per_class, ood_images, seed, max_pixels)
    check_callbacks(on_missing_images=on_missing_images)
    if isinstance(run_dir, FittedRun):  # what zsfs.fit returns: its saved folder
        if run_dir.path is None:
            raise ParameterError("{run_dir} is a run not saved yet: save it first (run.save(folder)), or render its "
                                 "page with zsfs.report.render_report(run)")
        run_dir = run_dir.path
    if out is not None:
        out = check_path("out", out)
    # what is not a run is said before where the page would go (`zsfs report` checks the page's name first)
    run = load_run(run_dir)
    default = run.path / REPORT  # ("~" read as the home folder, as load_run reads it)
    out = default if out is None else Path(out)
    check_report_path(out)
    # before the rendering, with the message every command gives, and the way around a read-only run folder
    check_writable(written_file(out), "report", "choose another location with --out FILE.html")
    refuse_read_only_file(out, "report")
    page, missing = _render(run, images=images, per_class=per_class, ood_images=ood_images, seed=seed,
                            max_pixels=max_pixels, out=None if out == default else out)
    written = write_text_atomically(out, page)
    if missing and on_missing_images is not None:
        on_missing_images(missing)
    return written


def check_report_path(out: Path) -> None:
    """Refuse a page name that does not end in .html or .htm: a typo would replace a store, a
    run's file, an image (by its name, and by the name of the file a link names)."""
    check_output_names(out, _check_report_name)


def _check_report_name(out: Path) -> None:
    if out.suffix.lower() not in (".html", ".htm"):
        raise ParameterError(f"cannot write the report to {literal(repr(out.name))}: "
                             f"{suffix_rule(out, ('.html', '.htm'))}")


def render_report(run_dir: "str | Path | FittedRun", *, images: str | Path | None = None, per_class: int | None = None,
                  ood_images: int = OOD_IMAGES, seed: int = 0, max_pixels: int | None = None) -> str:
    """The report's HTML.

    ``images``: the folder the store's image paths are relative to [the store's source folder].
    ``per_class``: seeds and sampled predictions shown per class [as many as the thumbnail budget
    allows, at most 8]. ``ood_images``: images in the "most likely OOD" gallery. ``seed``: draws
    the sampled predictions. ``max_pixels``: the pixel budget of one image, as ``zsfs extract``'s
    [the store's extract's, 89,478,485 by default]; a larger JPEG is decoded smaller, a larger
    image of another format not shown.
    """
    images = _check_options(images, per_class, ood_images, seed, max_pixels)
    run = run_dir if isinstance(run_dir, FittedRun) else load_run(run_dir)
    return _render(run, images=images, per_class=per_class, ood_images=ood_images, seed=seed,
                   max_pixels=max_pixels)[0]


def _render(run: FittedRun, *, images: str | Path | None, per_class: int | None, ood_images: int,
            seed: int, max_pixels: int | None = None, out: Path | None = None) -> tuple[str, str | None]:
    """The page, and its note on the images it could not show (None when all show; its command
    writes to ``out``, None: the run folder's page)."""
    import polars as pl

    check_polars_usable("render a report")  # a page is sorted and grouped on polars' pool
    frame = run.read_predictions(COLUMNS).with_row_index(ROW)  # predictions are in store order
    classes = run.classes
    shown_classes = len(classes) - len(run.config.get("absent_classes") or [])  # absent ones have no gallery
    per_class = per_class or int(np.clip(THUMBNAIL_BUDGET // (2 * max(shown_classes, 1)), 1, MAX_PER_CLASS))
    ood_by = [c for c in ("ood_score", "ood_continuous") if c in frame.columns]

    seeds = (frame.filter(pl.col("is_seed")).group_by("pseudo_label", maintain_order=True).head(per_class)
             if "is_seed" in frame.columns else frame.clear())
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    not_seed = ~pl.col("is_seed") if "is_seed" in frame.columns else pl.lit(True)
    sample = shuffled.filter(not_seed).group_by("predicted", maintain_order=True).head(per_class)
    most_ood = frame.sort(ood_by, descending=True, maintain_order=True).head(ood_images) if ood_by else frame.clear()

    shown = pl.concat([part.select(ROW, "path") for part in (seeds, sample, most_ood)]).unique(
        subset=ROW, keep="first", maintain_order=True)
    rows = shown[ROW].to_list()
    root, where, exact, budget = image_locations(run, images, np.asarray(rows, dtype=np.int64))
    files = dict(zip(rows, exact if exact is not None else shown["path"].to_list()))  # row -> the name to open
    made = {row: (None, NO_FOLDER) for row in rows}  # keyed by row: two names can read alike
    openable = [row for row in rows if root is not None or Path(files[row]).is_absolute()]
    made.update(zip(openable, _thumbnails_of([files[row] for row in openable], root, max_pixels or budget)))
    labels = _label_codes(frame)  # once: the OOD figures and the accuracy section both compare them
    sections = {
        "summary": _summary(run, frame),
        "figures": _figures(run, frame, labels),
        "accuracy": _accuracy(frame, classes, labels) if labels is not None else "",
        "classes": _classes(run, frame, classes, seeds, sample, made),
        "ood": _ood(most_ood, made, ood_by, ood_images),
        "parameters": _parameters(run.config),
    }
    absolute = bool(rows) and all(Path(files[row]).is_absolute() for row in rows)  # a list of absolute paths
    imported = (run.config.get("clip") or {}).get("weights") == IMPORTED_WEIGHTS
    missing = _missing_images(made, where, run.path, images, out, absolute, imported)
    note = f'<p class="note">{_e(missing)}</p>' if missing else ""
    return _page(run, note + "".join(sections.values()), [anchor for anchor, part in sections.items() if part]), missing


def _check_options(images: str | Path | None, per_class: int | None, ood_images: int, seed: int,
                   max_pixels: int | None) -> str | None:
    """Refuse bad options before the run is read; ``images`` as the page reads it (``~`` expanded)."""
    if images is not None:
        images = check_path("images", images)
        if not Path(images).is_dir():  # as `--images` says: every image would show as not found
            raise ParameterError(f"{{images}} {shown_value(str(images))} is not a folder" if Path(images).exists()
                                 else f"{{images}} {shown_value(str(images))} does not exist")
    check_at_least("per_class", per_class, 1)
    check_at_least("max_pixels", max_pixels, 1)
    check_at_least("ood_images", ood_images, 0)
    check_seed(seed)
    return images


def image_locations(run: FittedRun, images: str | Path | None,
                    rows: np.ndarray) -> tuple[Path | None, str, list[str] | None, int | None]:
    """The folder the run's image paths are relative to, where that came from (for the note), the
    store's exact paths of ``rows`` (None without the store the run was fitted on: the
    predictions' path column is text, where bytes that are not UTF-8 read as ``\\xNN``, which
    names no file; a store rebuilt since the fit would name other images), and the pixel budget
    its extract was given, when not the default (None)."""
    recorded = run.config.get("store") or {}  # null: no store, as every other reader of a run takes it
    store_path = recorded.get("path")
    if not store_path:
        return (Path(images), f"image paths were looked up from --images {images}", None, None) if images is not None \
            else (None, "the run records no store, so the image paths could not be located", None, None)
    from zsfs.store import Store

    try:
        with Store(store_path) as store:
            source = Path(store.source)
            # the same content: a repair (a rerun of extract) rewrites the master, and its `created`, only
            fingerprint = store.fingerprint()
            fitted_on = all(fingerprint[key] == recorded.get(key) for key in ("identity_sha256", "n_images"))
            exact = store.paths(rows).tolist() if fitted_on else None
            budget = store.identity.get("max_pixels")  # `extract --max-pixels`: its images are shown as embedded
    except (ZsfsError, OSError):
        source, exact, budget = None, None, None
    budget = budget if isinstance(budget, int) and budget > 0 else None
    if images is not None:
        return Path(images), f"image paths were looked up from --images {images}", exact, budget
    if source is None:
        return None, f"the store {store_path} cannot be opened, so the image paths could not be located", None, None
    if not fitted_on:  # its source may be another folder, whose files of the same names are other images
        return None, (f"the store {store_path} was rebuilt since the fit (its content differs), so its images may "
                      "not be the ones fitted and are not shown"), None, None
    return ((source if source.is_dir() else source.parent), f"image paths were looked up from the store's source {source}",
            exact, budget)


def _thumbnails_of(paths: list[str], root: Path | None,
                   max_pixels: int | None = None) -> list[tuple[str | None, str | None]]:
    """The thumbnails of ``paths``, the store's (files or ``shard.tar::member``) relative to
    ``root``, or absolute."""
    check_utf8_file_names(paths)  # (walkthrough: under LC_ALL=C, UTF-8 names showed as "corrupt image data")
    base = root or Path("/")
    # a member a tar no longer holds shows why, a damaged tar's members why it cannot be listed, a gone
    # tar's as not found; the other tars' images still show (reviews: one rewritten, or one damaged, tar
    # made every tar's images "file not found")
    missing: dict[int, str] = {}
    members = locate_members(paths, base, reasons=missing)
    shown = thumbnails(ImageSource(location=base, root=base, paths=paths, labels=None, members=members),
                       max_pixels=max_pixels)
    for row, why in missing.items():
        shown[row] = (None, why)
    return shown


# --- sections ------------------------------------------------------------------------------------

def _summary(run: FittedRun, frame) -> str:
    return _section("summary", "Summary", _table(summary_rows(run.config, run.metrics, frame, MAX_LISTED,
                                                                  absent_listed_in="Classes below")))


TRUTH_GROUPS = ("true label is a class", "true label is no class", "no true label")


def _label_codes(frame) -> LabelCodes | None:
    """The true labels of ``frame`` (no label: "", never a class name), None without a label column."""
    if "label" not in frame.columns:
        return None
    return LabelCodes.of(frame["label"].fill_null("").to_numpy())


def _truth_groups(labels: LabelCodes | None, classes: list[str]) -> np.ndarray | None:
    """Each image's index into :data:`TRUTH_GROUPS`, for the OOD histograms; None where the true
    labels cannot tell in- from out-of-distribution (no labels, or all on one side)."""
    if labels is None:
        return None
    among = labels.is_any_of(classes)  # compared in NFC, as metrics.json does
    groups = np.where(among, 0, np.where(labels.codes == labels.code([""])[0], 2, 1))  # code -1: no "" label
    return groups if among.any() and (groups == 1).any() else None


def _figures(run: FittedRun, frame, labels: LabelCodes | None) -> str:
    parts = []
    groups = _truth_groups(labels, run.classes)
    split = {"groups": groups, "group_names": TRUTH_GROUPS} if groups is not None else {}
    if "ood_score" in frame.columns:
        scores = frame["ood_score"].to_numpy()
        flagged = run.config.get("ood_flag_threshold")  # older runs did not record it: their lowest flagged score
        if flagged is None and "ood_flag" in frame.columns and frame["ood_flag"].any():
            flagged = float(frame.filter(frame["ood_flag"])["ood_score"].min())
        parts.append(figures.histogram(scores, title="OOD score (higher = more likely none of the classes)",
                                       xlabel="ood_score", flagged_from=flagged, **split))
    if "ood_continuous" in frame.columns:
        parts.append(figures.histogram(frame["ood_continuous"].to_numpy(), title="Continuous OOD score",
                                       xlabel="ood_continuous", **split))
    cycles = run.config.get("cycles") or []
    if cycles:
        precision = seed_precision(run.metrics)
        kept = [c["n_kept"] for c in cycles]
        parts.append(figures.cycles(kept, [precision.get(c["cycle"]) for c in cycles] if precision else None))
        header, rows = cycle_rows(run.config, run.metrics)
        parts.append(_table(rows, header))
    return _section("figures", "OOD scores and self-training", "".join(f'<div class="figure">{p}</div>'
                                                                     if p.startswith("<svg") else p for p in parts))


def _accuracy(frame, classes: list[str], labels: LabelCodes) -> str:
    import polars as pl

    codes = {name: i for i, name in enumerate(classes)}
    # compared in NFC, as metrics.json compares them; no label ("", never a class name) is no class
    truth = labels.index_in(classes)
    predicted = frame["predicted"].replace_strict(codes, default=-1, return_dtype=pl.Int64).to_numpy()
    known = (truth >= 0) & (predicted >= 0)
    n = len(classes)
    if not known.any():
        return _section("accuracy", "Accuracy", "<p>No image's true label is one of the classes.</p>")
    truth, predicted = truth[known], predicted[known]
    accuracy = per_class_accuracy(truth, predicted, n)
    confused = [(classes[t], classes[p], f"{c:,}") for t, p, c in zip(*most_confused(truth, predicted, n, 10))]
    # the figures show the classes some image is, or is taken for: a vocabulary of 2,000 names over
    # 3 labelled classes drew an empty line and a white 2,000 x 2,000 matrix (walkthrough)
    shown = np.union1d(truth, predicted)
    names = [visible(classes[i]) for i in shown]  # SVG text: control characters shown, as in the tables
    among = (f" The figures show the {len(shown):,} classes that are some image's true label or its prediction, "
             f"of the {n:,} listed." if len(shown) < n else "")
    # evenly spaced classes past MATRIX_CLASSES: the image has fewer pixels than that anyway, and a
    # 10,000-class matrix held 11 GB while drawn
    drawn = shown[evenly_spaced_rows(len(shown), MATRIX_CLASSES)]
    if len(drawn) < len(shown):
        among += f" The confusion matrix draws {len(drawn):,} of them, evenly spaced in the list."
    in_drawn = np.isin(truth, drawn) & np.isin(predicted, drawn)
    matrix = confusion_matrix(np.searchsorted(drawn, truth[in_drawn]), np.searchsorted(drawn, predicted[in_drawn]),
                              len(drawn))
    images_of = np.bincount(truth, minlength=n)[drawn]  # rows are fractions of all of a true class's images
    parts = [f"<p>{len(truth):,} images have a true label among the classes "
             f"({frame.height - len(truth):,} others: out-of-distribution or unlabelled).{among}</p>",
             f'<div class="figure">{figures.per_class_accuracy(names, accuracy[shown])}</div>',
             f'<div class="figure">{figures.confusion([visible(classes[i]) for i in drawn], matrix, images_of)}</div>']
    if confused:
        parts.append("<h3>Most frequent confusions</h3>" + _table(confused, ["true label", "predicted", "images"]))
    return _section("accuracy", "Accuracy (true labels)", "".join(parts))


def _classes(run: FittedRun, frame, classes: list[str], seeds, sample, made: dict) -> str:
    """A block per class that has images (predicted, seeds or pseudo-labels), in vocabulary order;
    the absent classes and those left with no image are listed after them, not as empty blocks."""
    import polars as pl

    predicted = dict(frame.group_by("predicted").len().iter_rows())
    pseudo = dict(frame.group_by("pseudo_label").len().iter_rows()) if "pseudo_label" in frame.columns else {}
    seeds_of = seeds.partition_by("pseudo_label", as_dict=True) if seeds.height else {}
    sample_of = sample.partition_by("predicted", as_dict=True) if sample.height else {}
    seeds_here = (dict(frame.filter(pl.col("is_seed")).group_by("pseudo_label").len().iter_rows())
                  if "is_seed" in frame.columns else {})  # by pseudo-label: a seed shared by classes is under one
    n_seeds = run.config.get("seeds_per_class") or seeds_here  # runs before it: a shared image counts once
    absent = set(run.config.get("absent_classes") or [])
    shares = run.config.get("class_shares") or {}
    blocks, empty = [], []
    for name in classes:
        if name in absent or not (predicted.get(name) or n_seeds.get(name) or pseudo.get(name)):
            empty.append(name)
            continue
        shared = n_seeds.get(name, 0) - seeds_here.get(name, 0)  # --duplicate-labels: shown under another class
        stats = (f"{counted(predicted.get(name, 0), 'image')} predicted · {counted(n_seeds.get(name, 0), 'seed')}"
                 + (f" ({shared:,} shared with another class, shown there)" if shared > 0 else "") + " · "
                 f"{pseudo.get(name, 0):,} pseudo-labelled" + (f" · estimated share {percent(shares[name])}"
                                                               if shares.get(name) is not None else ""))
        block = [f'<h3 class="class-name">{_e(name)}</h3><p class="stats">{_e(stats)}</p>',
                 "<h4>Seeds</h4>" + _gallery(seeds_of.get((name,)), made, of_class=name),
                 "<h4>A sample of the images predicted as this class</h4>"
                 + _gallery(sample_of.get((name,)), made,
                            "none: no image besides its seeds is predicted as this class" if predicted.get(name)
                            else "none: no image is predicted as this class, its seeds neither", of_class=name)]
        blocks.append(f'<div class="class">{"".join(block)}</div>')
    reported = [name for name in classes if name in absent]
    if reported:
        cut = percent(ABSENT_SHARE / len(classes))
        blocks.append(f'<div class="class"><h3>Absent ({len(reported):,})</h3><p>Each estimated to take under {cut} '
                      f"of the collection ({percent(ABSENT_SHARE)} of an even share), so given no seeds and never predicted "
                      f"(<code>--keep-all-classes</code> keeps them): {'; '.join(map(_name, reported))}</p></div>")
    unused = [name for name in empty if name not in absent]
    if unused:
        blocks.append(f'<div class="class"><h3>No image ({len(unused):,})</h3><p>No image is predicted as, seeded '
                      f"or pseudo-labelled with these classes: {'; '.join(map(_name, unused))}</p></div>")
    return _section("classes", "Classes", "".join(blocks))


def _ood(most_ood, made: dict, ood_by: list[str], ood_images: int) -> str:
    if not ood_by:
        return _section("ood", "Most likely out of distribution", "<p>This run has no OOD scores.</p>")
    if not most_ood.height:  # --ood-images 0, or no rows
        return _section("ood", "Most likely out of distribution", "<p>None shown: the page was asked for 0 of them.</p>"
                        if ood_images == 0 else "<p>The run has no images.</p>")
    flagged = int(most_ood["ood_flag"].sum()) if "ood_flag" in most_ood.columns else None
    marked = ("" if flagged is None else
              " None of them is flagged OOD (ood_flag): they are only the least typical images." if flagged == 0 else
              f" {flagged:,} of them {'is' if flagged == 1 else 'are'} flagged OOD (ood_flag), marked “flagged”.")
    note = f"<p>The {counted(most_ood.height, 'image')} with the highest {' then '.join(ood_by)}.{_e(marked)}</p>"
    return _section("ood", "Most likely out of distribution", note + _gallery(most_ood, made))


def _parameters(config: dict) -> str:
    parameters = config.get("parameters") or {}
    unread = UNREAD_BY.get(parameters.get("method"), ())
    rows = [(name, str(value) + (f" (not read by the {parameters['method']} method)" if name in unread else ""))
            for name, value in parameters.items()]
    for key in ("prompts_used", "vocabulary", "zsfs_version", "torch_version"):
        if key in config:
            rows.append((key, str(config[key])))
    for key in ("store", "clip", "backbone", "neighbour_search"):
        if isinstance(config.get(key), dict):
            rows.append((key, ", ".join(f"{k}: {v}" for k, v in config[key].items())))
    return _section("parameters", "Parameters", _table(rows, identifiers=True))


def _missing_images(made: dict, where: str, run_dir: Path | None, images: str | Path | None,
                    out: Path | None = None, absolute: bool = False, imported: bool = False) -> str | None:
    """Why some images could not be shown, and what to do (None when every one shows): with
    ``images`` given, to check that folder, not to give one; the command suggested writes to
    ``out`` (None: the run folder's page). ``absolute``: the store's paths are (a list file's);
    ``imported``: the store was made by ``zsfs import`` (its paths may be stand-ins)."""
    failed = Counter(reason for uri, reason in made.values() if uri is None)
    if not failed:
        return None
    reasons = reasons_text(failed.most_common())
    relocate = (f"if the images moved, run `zsfs report {as_argument(run_dir) if run_dir else 'RUN_DIR'}"
                f"{f' --out {as_argument(out)}' if out is not None else ''} --images FOLDER`.")
    advice = "" if not failed.keys() & {FILE_NOT_FOUND, NO_FOLDER} else (  # others say what to do, or it is the file
        " The store's image paths are absolute (from an imported table), which --images does not move: put the "
        "images back where they were, or import a table of their new paths." if absolute and imported else
        " The store's image paths are absolute (from a list of absolute paths), which --images does not move: "
        "put the images back where they were, or extract a store from their new place." if absolute else
        f" Check that {images} is the folder the store's image paths are relative to." if images is not None
        else f" This store was made by `zsfs import`, whose paths may be stand-ins; {relocate}" if imported
        else f" {relocate[0].upper()}{relocate[1:]}")
    return f"{sum(failed.values()):,} of {len(made):,} images could not be shown ({reasons}); {where}.{advice}"


# --- HTML ----------------------------------------------------------------------------------------

def _gallery(rows, made: dict, empty: str = "none", of_class: str | None = None) -> str:
    """Thumbnails with their scores; the predicted class where it is not ``of_class`` (the class
    the gallery shows), the true label where it differs from that class (a seed's, in a seeds
    gallery: a wrong seed is one of another class, whatever the head predicts), or from the
    predicted one without ``of_class``, and "flagged" for ood_flag: shown, not only in the hover
    text a phone never shows."""
    if rows is None or rows.height == 0:
        return f'<p class="empty">{_e(empty)}</p>'
    items = []
    for row in rows.iter_rows(named=True):
        uri, reason = made[row[ROW]]
        facts = [f"{key} {row[key]:.2f}" for key in ("confidence", "ood_score") if row.get(key) is not None]
        if row["predicted"] != of_class:
            facts.append(f"predicted {_name(row['predicted'])}" if row["predicted"] is not None else "no class")
        said = of_class if of_class is not None else row["predicted"]
        if row.get("label") is not None and (unicodedata.normalize("NFC", row["label"])  # compared as metrics are
                                             != unicodedata.normalize("NFC", said or "")):
            facts.append(f"✗ true label {_name(row['label'])}")
        if row.get("ood_flag"):
            facts.append("flagged")
        caption = " · ".join(facts)
        title = row["path"] + (f" | true label: {row['label']}" if row.get("label") is not None else "") + \
            f" | predicted: {row['predicted']}"
        picture = (f'<img class="thumb" src="{uri}" alt="{_e(row["path"])}">' if uri is not None
                   else f'<div class="thumb missing">{_e(reason)}</div>')
        items.append(f'<figure title="{_e(title)}">{picture}<figcaption>{caption}</figcaption></figure>')
    return f'<div class="gallery">{"".join(items)}</div>'


_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?\s*%?")


def _table(rows, header: list[str] | None = None, *, identifiers: bool = False) -> str:
    """A table whose first cell of each row heads it: a screen reader names "accuracy" or "k" with the
    value it reads (the bold first column was a look only: the summary and parameters had no header cell).
    ``identifiers``: the row labels are names in code (parameters, config keys), kept whole where
    there is room and broken only after an underscore where there is not."""
    head = "<tr>" + "".join(f'<th scope="col">{_e(h)}</th>' for h in header) + "</tr>" if header else ""
    body = "".join(f"<tr>{_row_header(row[0], identifiers)}" + "".join(_cell(cell) for cell in row[1:]) + "</tr>"
                   for row in rows)
    return f"<table>{head}{body}</table>"


def _row_header(label, identifier: bool) -> str:
    """A row's label; an identifier's breaks only at its underscores (a laptop showed "unique_pseud"
    over "o_labels", "ivf_neighbour" over "s", with room to spare on the page)."""
    if not identifier:
        return f'<th scope="row">{_e(label)}</th>'
    return f'<th scope="row" class="identifier">{_e(label).replace("_", "_<wbr>")}</th>'


def _cell(value) -> str:
    """A table cell; a number's is kept on one line (a phone broke "3,218" into "3,21" over "8"), and
    a command the text quotes in backticks, as the terminal shows it, is set as code."""
    if _NUMBER.fullmatch(str(value)):
        return f'<td class="n">{_e(value)}</td>'
    return "<td>" + _QUOTED_COMMAND.sub(r"<code>\1</code>", _e(value)) + "</td>"


_QUOTED_COMMAND = re.compile(r"`([^`]+)`")


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{content}</section>'


NAVIGATION = {"summary": "Summary", "figures": "OOD and cycles", "accuracy": "Accuracy", "classes": "Classes",
              "ood": "Most likely OOD", "parameters": "Parameters"}


def _page(run: FittedRun, content: str, anchors: list[str]) -> str:
    name = run.path.resolve().name if run.path is not None else "a run not saved"  # zsfs.fit() in Python
    # absolute: the page is read later, from elsewhere, where "run folder runs/k16" names nothing
    folder = f"Run folder {run.path.resolve()}" if run.path is not None else "Not saved (.save(dir) writes it)"
    folder += _made_by(run.config)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    links = " ".join(f'<a href="#{anchor}">{NAVIGATION[anchor]}</a>' for anchor in anchors)  # only those it has
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>zsfs report: {_e(name)}</title>
<style>{STYLE}</style></head><body>
<h1>zsfs report: {_e(name)}</h1>
<p class="meta">{_e(folder)} · rendered {stamp} by zsfs {_e(__version__)}</p>
<nav>{links}</nav>
{content}
</body></html>
"""


def _made_by(config: dict) -> str:
    """The store and models a run was fitted with, as the header says them (they were in the
    Parameters table alone, at the page's end, among a model's image means and configuration)."""
    store = config.get("store") or {}
    models = [f"{info['name']} ({info.get('weights')})" for info in (config.get(key) for key in ("clip", "backbone"))
              if isinstance(info, dict) and info.get("name")]
    said = f" · fitted on the store {store['path']}" if store.get("path") else ""
    if store.get("n_images") is not None:
        said += f" ({counted(store['n_images'], 'image')})"
    return said + (f" with {' and '.join(models)}" if models else "")


def _name(value) -> str:
    """A class name amid other text, as HTML: isolated, so that a right-to-left name (Arabic, Hebrew)
    does not carry the numbers and separators beside it into its own direction ("confidence 0.91 ·
    predicted שמש" was shown with the score after the name)."""
    return f"<bdi>{_e(value)}</bdi>"


def _e(value) -> str:
    """HTML text of a value from files or users; control characters shown visibly, as in the terminal."""
    return html.escape(visible(str(value)), quote=True)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em; margin-top: 1.6em; }
nav a { margin-right: 1em; } .meta, .stats, .empty { color: #666; } p { overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: .5em 0; display: block; max-width: 100%; overflow-x: auto; }
td, th { border: 1px solid #ddd; padding: .2em .6em; overflow-wrap: anywhere; }
th[scope=col] { overflow-wrap: break-word; }
td.n { white-space: nowrap; }  /* numbers whole: the table scrolls instead */
th[scope=row] { font-weight: 600; min-width: 7em; text-align: left; }  /* breaks: a long name widened the page */
th.identifier { overflow-wrap: normal; }  /* breaks at its <wbr>s only */
@media (min-width: 700px) { th.identifier wbr { display: none; } }  /* room: whole (nowrap breaks at <wbr>) */
.figure { overflow-x: auto; }
.figure svg { max-width: 100%; min-width: 560px; height: auto; }  /* on a phone: scrolls, its text stays legible */
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: .6em; }
.class { border-top: 1px solid #eee; padding-top: .3em; } .class h3 { margin-bottom: 0; overflow-wrap: anywhere; }
h4 { margin: .4em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; }
figure { margin: 0; width: 100px; font-size: 11px; text-align: center; overflow-wrap: anywhere; }
.thumb { width: 96px; height: 96px; object-fit: cover; border-radius: 4px; display: block; }
/* the reason an image is not shown, in small print: at least 4.5:1 contrast (#888 on #eee was 3:1) */
div.thumb.missing { background: #eee; color: #555; font-size: 10px; display: flex; align-items: center;
                    justify-content: center; text-align: center; }
"""


from zsfs.api import callable_module  # noqa: E402 (after `write_report` exists)

callable_module(__name__, write_report)  # zsfs.report(run_dir): the front door (zsfs/api.py)
