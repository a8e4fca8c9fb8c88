"""Collect the pipelines' metrics into one results table beside the paper's numbers.

Reads ``WORK/<dataset>/fit/metrics.json`` (``zsfs fit``) and ``WORK/<dataset>/ood-bench/
metrics.json`` (``zsfs ood-bench``) and writes ``results.csv`` (one row per dataset, every
column) and ``results.md`` (the paper's two tables: top-1 accuracy and OOD AUROC). All
numbers are percentages; an empty CSV cell / "–" means not run, "n/a" not available.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from pipelines.datasets import (ACCURACY_BASELINES, AUROC_BASELINES, BACKBONE, BASELINE_TITLES, CLIP_MODEL,
                                CLIP_WEIGHTS, DATASETS, Dataset)
from zsfs.errors import ZsfsError
from zsfs.names import counted, home_expanded
from zsfs.oodbench import FPR95_DEFINITION
from zsfs.outputs import replacing_file
from zsfs.runs import CONFIG as CONFIG_FILE, METRICS as METRICS_FILE  # ood-bench names its file alike

FIT_DIR = "fit"
OOD_DIR = "ood-bench"

OURS_ACCURACY = {"accuracy": "zsfs", "zero_shot_accuracy": "CLIP zero-shot"}
"""fit metrics.json key -> column title (measured here)."""

OURS_OOD = {
    "auroc": "zsfs",
    "continuous_auroc": "zsfs (continuous)",
    "mcm_auroc": "MCM",
}
"""ood-bench metrics.json key prefix -> column title (measured here; mean +- std)."""

OURS_FPR = {"fpr95": "zsfs FPR95", "mcm_fpr95": "MCM FPR95"}

COLUMNS = (
    ["dataset", "title", "available", "n_images", "n_classes", "id_classes", "n_splits", "fit_settings", "models",
     "paper_models"]
    + list(OURS_ACCURACY)
    + [f"paper_{key}_accuracy" for key in ACCURACY_BASELINES]
    + [f"{key}_{stat}" for key in OURS_OOD for stat in ("mean", "std")]
    + [f"{key}_mean" for key in OURS_FPR]
    + [f"paper_{key}_auroc" for key in AUROC_BASELINES]
    + ["note"]
)
"""results.csv columns; measured values as percentages, paper values as printed in the paper."""


def collect(work: Path, datasets: Mapping[str, Dataset] = DATASETS) -> list[dict]:
    """One row per dataset (``COLUMNS`` keys), measured values where the run exists."""
    rows = []
    for name, dataset in datasets.items():
        fit = _read_metrics(Path(work) / name / FIT_DIR)
        ood = _read_metrics(Path(work) / name / OOD_DIR)
        row: dict = {column: None for column in COLUMNS}
        row.update(dataset=name, title=dataset.title, available=dataset.runnable, n_classes=dataset.n_classes,
                   id_classes=dataset.id_classes, note=dataset.note)
        for key, value in dataset.paper_accuracy.items():
            row[f"paper_{key}_accuracy"] = value
        for key, value in dataset.paper_auroc.items():
            row[f"paper_{key}_auroc"] = value
        settings = _read_metrics(Path(work) / name / FIT_DIR, CONFIG_FILE)
        unlike = _unlike_the_papers(dataset, settings, fit, ood)
        if unlike:  # a run on another folder (--images) or protocol: its own counts, not the dataset's
            row["note"] = f"measured on {'; '.join(unlike)}: not comparable"
            row["n_classes"] = len((settings or {}).get("classes") or []) or row["n_classes"]
        if settings:
            row["fit_settings"] = _describe_settings(settings.get("parameters", {}))
            row["models"], row["paper_models"] = _describe_models(settings)
        if fit:
            row["n_images"] = fit.get("n_images")
            for key in OURS_ACCURACY:
                row[key] = _percent(fit.get(key))
        if ood:
            row["n_images"] = row["n_images"] or ood.get("n_images")
            row["n_splits"] = ood.get("n_splits")
            row["id_classes"] = _id_class_count(ood) or row["id_classes"]
            current = FPR95_DEFINITION in str(ood.get("protocol", ""))  # (review: an old run's, as today's)
            for key in list(OURS_OOD) + list(OURS_FPR):
                row[f"{key}_mean"] = _percent(ood.get(f"{key}_mean")) if current or key in OURS_OOD else None
            if not current:
                row["note"] = "; ".join(filter(None, [row["note"], "FPR95 left out: measured by an earlier zsfs's "
                                                                    "definition (rerun the ood-bench step)"]))
            for key in OURS_OOD:
                row[f"{key}_std"] = _percent(ood.get(f"{key}_std"))
        rows.append(row)
    return rows


def _unlike_the_papers(dataset: Dataset, settings: dict | None, fit: dict | None, ood: dict | None) -> list[str]:
    """How the runs differ from the paper's setup: another class count, image count or ID class count."""
    unlike = []
    n_classes = len((settings or {}).get("classes") or [])
    if n_classes not in (0, dataset.n_classes):
        unlike.append(f"another image folder ({n_classes} classes), not the dataset's ({dataset.n_classes} classes)")
    elif dataset.n_images and (fit or {}).get("n_images") not in (None, dataset.n_images):
        # review: a sample of the dataset's classes (--images) was noted "test set (10,000 images)"
        unlike.append(f"{fit['n_images']:,} images of another image folder, not the dataset's {dataset.n_images:,}")
    n_id = _id_class_count(ood)
    if dataset.id_classes is not None and n_id not in (None, dataset.id_classes):
        unlike.append(f"{n_id} ID classes in the OOD protocol, not the paper's {dataset.id_classes}")
    return unlike


def _id_class_count(ood: dict | None) -> int | None:
    """The benchmark's ID class count: ``--id-classes FILE`` records the names (they showed as a list)."""
    n_id = (ood or {}).get("id_classes")
    return len(n_id) if isinstance(n_id, list) else n_id


def write_results(work: Path, datasets: Mapping[str, Dataset] = DATASETS) -> tuple[Path, Path]:
    """(Re)write ``WORK/results.md`` and ``WORK/results.csv`` from every finished run."""
    return write_report(collect(Path(work), datasets), Path(work))


def write_report(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` into ``out_dir`` (each replaced atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    _replace(csv_path, lambda handle: _write_csv(rows, handle))
    _replace(md_path, lambda handle: handle.write(render_markdown(rows)))
    return md_path, csv_path


def render_markdown(rows: list[dict]) -> str:
    """The two tables of the paper, measured columns first, then the paper's."""
    accuracy_rows = [row for row in rows if row["paper_method_accuracy"] is not None or row["accuracy"] is not None]
    ood_rows = [row for row in rows if row["id_classes"] is not None]
    lines = ["# zsfs: the paper's experiments", "",
             "Measured here (zsfs, CLIP zero-shot, MCM) beside the paper's Tables 1 and 2. Percentages; "
             "'–' = not run yet, 'n/a' = dataset not available.", "",
             "## Classification: top-1 accuracy (%)", ""]
    header = ["dataset", "images", *OURS_ACCURACY.values(),
              *(f"paper: {BASELINE_TITLES[key]}" for key in ACCURACY_BASELINES)]
    ours = list(OURS_ACCURACY)
    paper = [f"paper_{key}_accuracy" for key in ACCURACY_BASELINES]
    body = [[row["title"], _count(row["n_images"]), *(_cell(row, row[key]) for key in ours),
             *(_number(row[key]) for key in paper)] for row in accuracy_rows]
    lines += _table(header, body + _mean_row(accuracy_rows, "accuracy", ours, paper, offset=1))
    lines += ["", "## OOD detection: AUROC (%), OOD = positive, mean ± std over splits", ""]
    header = ["dataset", "ID / classes", *OURS_OOD.values(), *OURS_FPR.values(),
              *(f"paper: {BASELINE_TITLES[key]}" for key in AUROC_BASELINES)]
    ours = [f"{key}_mean" for key in [*OURS_OOD, *OURS_FPR]]
    paper = [f"paper_{key}_auroc" for key in AUROC_BASELINES]
    body = [[row["title"], f"{row['id_classes']} / {row['n_classes'] or '?'}",
             *(_cell(row, row[f"{key}_mean"], row[f"{key}_std"]) for key in OURS_OOD),
             *(_cell(row, row[f"{key}_mean"]) for key in OURS_FPR),
             *(_number(row[key]) for key in paper)] for row in ood_rows]
    lines += _table(header, body + _mean_row(ood_rows, "auroc_mean", ours, paper, offset=1))
    notes = []
    for row in rows:
        parts = [row["note"], row["fit_settings"] and f"fit: {row['fit_settings']}",
                 row["models"] and f"models: {row['models']}" + ("" if row["paper_models"] else
                                                                 " (**not the paper's**: not comparable)")]
        if any(parts):
            notes.append(f"- {row['title']}: " + "; ".join(part for part in parts if part))
    lines += ["", "Notes:", *notes, ""]
    return "\n".join(lines)


def _mean_row(rows: list[dict], measured: str, ours: list[str], paper: list[str], offset: int) -> list[list[str]]:
    """Mean over the datasets measured here, for our columns and the paper's alike (a fair mean)."""
    run = [row for row in rows if row[measured] is not None]
    if not run:
        return []
    means = [_number(_mean([row[key] for row in run])) for key in [*ours, *paper]]
    unlike = sum(_not_comparable(row) for row in run)  # (walkthrough: averaged in without a word)
    title = f"**mean over the {counted(len(run), 'dataset')} run here**" + \
        (f" ({unlike} of them not comparable: see the notes)" if unlike else "")
    return [[title, *[""] * offset, *means]]


def _not_comparable(row: dict) -> bool:
    """Whether a dataset's measured figures were made unlike the paper's (another folder or protocol, other models)."""
    return "not comparable" in (row["note"] or "") or bool(row["models"] and not row["paper_models"])


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if len(present) == len(values) else None


def _describe_settings(parameters: dict) -> str:
    """The fit settings that change the comparison with the paper, in a few words."""
    method = parameters.get("method", "cycles")  # runs from before the balanced method: the cycles
    cycles = method == "cycles"
    parts = [f"{method} method" if "method" in parameters else None,
             f"k={parameters['k']}" if "k" in parameters else None,
             f"{parameters['prompts']} prompts" if "prompts" in parameters else None,
             None if "accumulate" not in parameters or not cycles else  # the balanced method does not read it
             ("accumulated cycles" if parameters["accumulate"] else "per-cycle sets (paper)")]
    return ", ".join(part for part in parts if part)


def _describe_models(config: dict) -> tuple[str, bool]:
    """The models a fit's store was made with (its config.json), in a few words, and whether they
    are the paper's (its architectures with its weights: its tags, or local files, taken on
    trust: an air-gapped cluster passes them so); an ``--extract-args`` that replaced a model
    or its weights must not pass for the paper's setup."""
    clip, backbone = config.get("clip") or {}, config.get("backbone") or {}
    words = f"{clip.get('name')} ({clip.get('weights')}) + {backbone.get('name')} ({backbone.get('weights')})"
    # OpenAI's weights as a local file load with the architecture's own "-quickgelu" variant (as zsfs's
    # download error advises); the tag loads them into the plain name
    paper_clip = (clip.get("name") == CLIP_MODEL and clip.get("weights") in (CLIP_WEIGHTS, "file")
                  or clip.get("name") == f"{CLIP_MODEL}-quickgelu" and clip.get("weights") == "file")
    return words, paper_clip and backbone.get("name") == BACKBONE and backbone.get("weights") in ("default", "file")


def _read_metrics(run_dir: Path, file: str = METRICS_FILE) -> dict | None:
    path = run_dir / file
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (ValueError, OSError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        metrics = error
    if not isinstance(metrics, dict):  # (a JSON list or number gave a traceback)
        why = metrics if isinstance(metrics, Exception) else f"a JSON {type(metrics).__name__}, not an object"
        raise ZsfsError(f"{path} is unreadable ({why}); remove {run_dir} and rerun its step (`python -m "
                        "pipelines.run` skips only finished steps)") from None
    return metrics


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * float(fraction), 2)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _cell(row: dict, value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–" if row["available"] else "n/a"
    return f"{value:.2f} ± {std:.2f}" if std is not None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _write_csv(rows: list[dict], handle) -> None:
    writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _replace(path: Path, write) -> None:
    with replacing_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        write(handle)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="(Re)write WORK/results.md and WORK/results.csv from the "
                                                 "pipelines' finished runs.", epilog="Example: python -m pipelines.report work")
    parser.add_argument("work", nargs="?", type=lambda text: Path(home_expanded(text)), default=Path("work"),
                        help="the pipelines' --work folder [work]")
    work = parser.parse_args().work
    if not work.is_dir():  # a typo made a folder with an empty table; a file, a traceback
        parser.error(f"{work} is not a folder: give the --work folder of `python -m pipelines.run`")
    try:
        written = write_results(work)
    except ZsfsError as error:
        parser.exit(1, f"Error: {error}\n")
    for path in written:
        print(path)


if __name__ == "__main__":  # python -m pipelines.report [WORK]
    main()
