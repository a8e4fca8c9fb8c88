"""``zsfs report``: one self-contained HTML page about a fit run."""

from __future__ import annotations

from pathlib import Path

import click

from zsfs.cli.console import console, shown
from zsfs.cli.options import GivenPath, noting_made_folders, usage_check
from zsfs.errors import MAX_SEED


@click.command("report", short_help="Write one offline HTML page about a fit run.")
@click.argument("run_dir", type=GivenPath(path_type=Path))
@click.option("--out", type=GivenPath(dir_okay=False, path_type=Path, file_in_folder="report.html"), default=None,
              callback=usage_check("zsfs.report", "check_report_path"),
              help="HTML file to write (its name ends in .html or .htm), replaced if it exists, unless read-only "
                   "[RUN_DIR/report.html].")
@click.option("--images", type=GivenPath(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder the store's image paths are relative to, if the images moved [the store's source: its "
                   "folder, or the folder of its list or, for an import, of its paths table].")
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Seeds and sampled predictions shown per class [up to 8, fewer for many classes].")
@click.option("--ood-images", type=click.IntRange(min=0), default=48, show_default=True,
              help="Images shown in the 'most likely OOD' gallery.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Draws the sampled predictions.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Pixel budget of one image: a larger JPEG is decoded smaller, a larger image of another format is "
                   "not shown [the store's extract's: 89,478,485 unless it was given --max-pixels].")
@noting_made_folders("out")
def report_command(run_dir: Path, out: Path | None, **options) -> None:
    """Write one HTML page about the fit run in RUN_DIR that opens offline, alone.

    Summary (images, classes, absent classes, stop reason, time per phase), per class its seeds
    and a sample of its predictions as thumbnails, the images most likely OOD, the OOD score
    histogram, pseudo-labels per cycle, accuracy and confusion matrix when the store has labels,
    and the run's parameters. Its size grows with the number of classes, not of images.

    \b
    Example:
      zsfs report runs/photos-k16 --out photos-k16.html
    """
    from zsfs.report import write_report

    notes: list[str] = []
    with console.status(f"Rendering the report of {shown(run_dir)}...", logged=True):
        written = write_report(run_dir, out, on_missing_images=notes.append, **options)
    say_written(written, notes)


def say_written(report: Path, notes: list[str]) -> None:
    """Where the report went, its size, and its notes (on images it could not show: an empty
    gallery should not be a surprise when the page is opened)."""
    # one line, whatever the width (a log's 80 columns put the path on the next, its size on a third)
    console.print(f"Report written to [bold]{shown(report)}[/] ({report.stat().st_size / 1e6:.1f} MB)", soft_wrap=True)
    for note in notes:
        console.print(f"[yellow]Note:[/] {shown(note)}", soft_wrap=True)


COMMANDS = [report_command]
