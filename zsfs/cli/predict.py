"""``zsfs predict``: classify new images with a fitted run."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from zsfs.cli.console import console, image_progress, shown
from zsfs.cli.notes import note_precision_off_cuda, note_repeated_paths
from zsfs.cli.options import (MAX_PIXELS_OPTION, GivenPath, model_precision_option, noting_made_folders,
                              prints_on_stdout, usage_check)
from zsfs.devices import DEVICES
from zsfs.errors import ZsfsError
from zsfs.names import counted

SHOWN_ROWS = 20  # the table on screen; the file or --json has every row


@click.command(short_help="Classify new image files with a fitted run.")
@click.argument("images", nargs=-1, type=GivenPath())  # text as given: a Path makes member a//b.jpg a/b.jpg
@click.option("--list", "lists", multiple=True, type=GivenPath(dir_okay=False, path_type=Path),
              help="A .txt (one path per line; '#' lines are comments) or .csv / .tsv ('path' column) list of images, "
                   "read as zsfs extract reads one: paths relative to the list's folder. May be repeated; with or "
                   "without IMAGES.")
@click.option("--run", "run_dir", required=True, type=GivenPath(path_type=Path),
              help="Run folder written by `zsfs fit`.")
@click.option("--out", type=GivenPath(dir_okay=False, path_type=Path, file_in_folder="predictions.csv"),
              callback=usage_check("zsfs.predict", "check_predictions_path"),
              help="Write every prediction to a .csv, .parquet or .json file (.json: one array of row objects; "
                   "replaced whole if it exists, unless read-only).")
@click.option("--json", "as_json", is_flag=True, callback=prints_on_stdout,
              help="Print the predictions on stdout as JSON lines, one object per image.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the backbone runs (a clear error when torch sees no such device).")
@model_precision_option("the backbone")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per forward pass of the backbone: larger keeps a GPU busier and takes more memory.")
@click.option("--workers", type=click.IntRange(min=0), help="Decoding processes [default: as zsfs extract].")
@click.option("--backbone-weights", type=GivenPath(dir_okay=False, path_type=Path),
              help="The store's backbone weights file at a new location (its sha256 must match).")
@MAX_PIXELS_OPTION
@noting_made_folders("out")
def predict(images: tuple[str, ...], run_dir: Path, out: Path | None, as_json: bool, **options) -> None:
    """Classify IMAGES (files, folders, tar shards: a .tar, a pattern 'shards/{00000..00009}.tar',
    or one member 'shard.tar::name.jpg') and the images of --list files with the classifier of a
    fitted run.

    Extracts backbone features with the same backbone and weights as the run's store, applies the
    classifier, and reports for every image its class, confidence and OOD scores (higher = more
    likely none of the run's classes): ood_distance, as in the fit's predictions (the backbone
    half of its ood_score, in [0, 1]; the MCM half needs CLIP, which predict does not run), with
    ood_distance_flag above the cut that flags at most 5 % of the fit's seeds, and
    the paper's ood_paper (0, 1/3, 2/3 or 1) and its continuous form ood_continuous. Unreadable
    files get an error, not a row of zeros (and the exit status is 1 when no image could be
    read). The table shows the first rows; --out or --json gives them all.

    \b
    Example:
      zsfs predict --run runs/photos-k16 new/ extra.jpg --out predictions.csv
      zsfs predict --run runs/photos-k16 --list todo.txt --out predictions.parquet
    """
    from zsfs.predict import OUTPUT_SUFFIXES, predict_images, write_predictions
    from zsfs.outputs import refuse_read_only_file, written_file
    from zsfs.writable import check_writable, refuse_input_as_output

    if not images and not options["lists"]:
        raise click.UsageError("give IMAGES (files, folders, tars) and/or --list FILE")
    if out is not None:
        check_writable(written_file(out), "predictions file")  # a missing folder is created at the end
        refuse_read_only_file(out, "predictions file")  # before the images, not after
        refuse_input_as_output(out, [*(("image list", listed) for listed in options["lists"]),
                                     *(("input", image) for image in images)], written="predictions file")
    note_precision_off_cuda(options["precision"], options["device"], "the backbone computes")
    twice: list[str] = []  # a file and the folder holding it, say: as extract, a row each
    with image_progress("classifying") as (on_start, on_batch):
        frame = predict_images(run_dir, images, on_start=on_start, on_batch=on_batch, on_repeated=twice.extend,
                               **options)
    if out is not None:
        write_predictions(frame, out)
    if as_json:  # JSON text is UTF-8 (RFC 8259), whatever encoding the terminal's locale names
        sys.stdout.flush()
        sys.stdout.buffer.write(frame.write_ndjson().encode())
        sys.stdout.buffer.flush()
    console.print(_table(frame))
    failed = frame["error"].is_not_null().sum()
    if out is not None:
        where = f"; all rows written to {shown(out)}"
    elif not as_json and frame.height > SHOWN_ROWS:
        where = (f"; the table shows the first {SHOWN_ROWS}: --out FILE ({', '.join(OUTPUT_SUFFIXES)}) or --json "
                 "gives every row")
    else:
        where = ""
    classified = frame.height - failed
    flags = frame["ood_distance_flag"]
    no_cut = classified and flags.null_count() == frame.height  # a run fitted before the cut was recorded
    flagged = f", {int(flags.sum()):,} flagged OOD" if classified and not no_cut else ""
    # one line, whatever the width (cron mail: a log's 80 columns put the output's path on the next)
    console.print(f"{counted(classified, 'image')} classified{flagged}, {failed:,} skipped{where}", soft_wrap=True)
    if no_cut:  # (its ood_distance_flag column is empty, which reads as nothing flagged)
        console.print("Note: no image is flagged OOD: the run was fitted before zsfs recorded its flag's cut "
                      "(2026-12-06); fit it again to flag new images.", soft_wrap=True)
    note_repeated_paths(twice)
    if failed == frame.height:  # the rows say why; the exit status tells a script nothing was classified
        raise ZsfsError(f"no image could be read ({counted(failed, 'image')} given; the rows say why)")


def _table(frame) -> Table:
    table = Table(title="zsfs predict" + (f" (first {SHOWN_ROWS} of {frame.height})" if frame.height > SHOWN_ROWS else ""))
    # On a narrow terminal the figures give way first: the path and its label are what a row is for
    # (at 50 columns the path was one character wide and the label none).
    table.add_column("path", overflow="fold", min_width=16)  # the path is what identifies the row: never cut it
    table.add_column("predicted", overflow="fold", min_width=10)
    for column in ("confidence", "OOD distance", "OOD (paper)"):
        table.add_column(column, justify="right", overflow="ellipsis")
    for row in frame.head(SHOWN_ROWS).iter_rows(named=True):
        if row["error"] is not None:  # "skipped:": a bare "truncated file" read like a class name
            table.add_row(shown(row["path"]), f"[red]skipped: {shown(row['error'])}[/]", "-", "-", "-")
        else:
            table.add_row(shown(row["path"]), shown(row["predicted"]), _number(row["confidence"], ".3f"),
                          _number(row["ood_distance"], ".2f") + (" flagged" if row["ood_distance_flag"] else ""),
                          _number(row["ood_paper"], ".2f"))
    return table


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COMMANDS = [predict]
