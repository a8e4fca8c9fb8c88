"""``zsfs fit``: seeds, self-training and OOD scores for every image of a store."""

from __future__ import annotations

import os
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from zsfs.cli.console import console, shown
from zsfs.cli.group import kept_if_interrupted, what_failed
from zsfs.cli.notes import note_fit_options
from zsfs.cli.options import FiniteFloat, GivenPath, noting_made_folders, prints_on_stdout
from zsfs.errors import MAX_SEED, ZsfsError
from zsfs.devices import DEVICES, PRECISION_CHOICES, check_device
from zsfs.methods import MAX_OOD_MULTIPLIER, METHOD_CHOICES, PROMPT_CHOICES
from zsfs.names import as_argument, check_utf8_file_names, counted, reads_utf8_file_names

if TYPE_CHECKING:
    from zsfs.runs import FittedRun

# Parameters a user can set; None means "the preset's value" (FitConfig() or FitConfig.paper()).
PARAMETERS = ("method", "keep_all_classes", "k", "candidates", "neighbours", "prompts", "accumulate", "unique_pseudo_labels", "epochs",
              "cycle_epochs", "batch_size", "lr", "max_cycles", "loss_floor", "ood_multiplier", "seed", "device",
              "precision", "ivf_neighbours")


MAX_RUN_COUNTER = 1000
"""The highest counter of a default run folder's name (fits started in one second)."""
RUN_NAME_BYTES = 200
"""The longest default run folder name before its counter: file systems allow 255 bytes a name."""


def default_run_dir(store: Path, vocabulary: str, k: int) -> Path:
    """``runs/<store>-<vocab>-k<k>-<UTC time>``, with a counter if that is taken already (there, or
    being written by another fit: walkthrough, fits started together in one second failed with
    "another zsfs process is writing"); a store or vocabulary name too long for a folder name is
    cut (a 3,000-character vocabulary name failed with "name too long" for a name the user never
    chose)."""
    from zsfs.outputs import folder_taken

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    tail = f"-k{k}-{stamp}"
    room = (RUN_NAME_BYTES - len(tail) - 1) // 2  # bytes for each of the two names
    base = Path("runs") / f"{_cut(store.stem, room)}-{_cut(vocabulary, room)}{tail}"
    candidate, n = base, 1
    while folder_taken(candidate):
        n += 1
        if n > MAX_RUN_COUNTER:  # a writer whose cut temporary name matches them all (a long host name)
            raise ZsfsError(f"{base} to {candidate} are all taken or being written; choose a folder with --out RUN_DIR")
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _cut(name: str, limit: int) -> str:
    """``name``'s longest start of at most ``limit`` bytes, whole characters only."""
    name = name[:limit]  # a character is at least one byte
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


@click.command("fit", short_help="Label and OOD-score every image of a store (stage 2).")
@click.option("--store", "store_path", required=True, type=GivenPath(path_type=Path), help="Store (.h5) to fit on.")
@click.option("--vocab", "vocabulary", default=None, help="Vocabulary (class list) of the store [default: its only one].")
@click.option("--out", "run_dir", type=GivenPath(path_type=Path), default=None,
              help="Run folder to create (must not exist) [default: runs/<store>-<vocab>-k<k>-<UTC time>].")
@click.option("--method", type=click.Choice(METHOD_CHOICES), default=None,
              help="After the seeds: 'balanced' labels the whole collection by class-balanced self-training with "
                   "estimated class shares (absent classes dropped); 'cycles' grows the pseudo-labels from the "
                   "candidate lists as the paper does [balanced; paper: cycles].")
@click.option("--keep-all-classes", is_flag=True, default=None,
              help="Balanced method: never declare a listed class absent from the collection (every class keeps a "
                   "share of the class model).")
@click.option("--k", type=click.IntRange(min=1), default=None, help="Seeds per class; candidates per class per cycle [16].")
@click.option("--candidates", type=click.IntRange(min=1), default=None, help="Zero-shot candidates per class, R [100].")
@click.option("--neighbours", type=click.IntRange(min=1), default=None, help="CLIP neighbours for re-ranking [5].")
@click.option("--prompts", type=click.Choice(PROMPT_CHOICES), default=None,
              help="Class text embeddings: 80-template ensemble or 'a photo of a {}' [ensemble; paper: single].")
@click.option("--accumulate/--no-accumulate", default=None,
              help="--method cycles: train each cycle on all pseudo-labels so far (seeds included) or only on the "
                   "cycle's new ones [accumulate; paper: no-accumulate].")
@click.option("--unique-labels/--duplicate-labels", "unique_pseudo_labels", default=None,
              help="An image shortlisted by several classes stays a candidate only of the class where its "
                   "neighbourhood support is highest, or of all of them [unique; paper: duplicate].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="--method cycles: epochs on the seeds before the cycles [20; paper: 100].")
@click.option("--cycle-epochs", type=click.IntRange(min=0), default=None,
              help="Epochs per cycle: each of the balanced method's 3 (>= 1; more on a small collection, until "
                   "its head has made 20 updates), at most per cycle of --method cycles [5; paper: 20].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Mini-batch size [512; paper: 16].")
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=None, help="Adam learning rate [2e-2; paper: 1e-3].")
@click.option("--cycles", "max_cycles", type=click.IntRange(min=0), default=None, help="--method cycles: maximum cycles [19].")
@click.option("--loss-floor", type=FiniteFloat(min=0), default=None,
              help="--method cycles: stop once an epoch's training loss is below this [0.1].")
@click.option("--ood-multiplier", type=FiniteFloat(min=0, max=MAX_OOD_MULTIPLIER), default=None,
              help="m in the paper score's threshold = mean - m*std [1].")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Random seed: same seed and store give identical outputs [0].")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Where the numeric work runs [cpu].")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default=None,
              help="Matrix products of the neighbour scan (re-scored in fp32) and of training: bf16 halves their "
                   "cost on GPUs and CPUs with AVX512-BF16/AMX, and is ~70x slower on other CPUs; auto: bf16 where "
                   "the device has it, else fp32 [fp32; --fast: auto].")
@click.option("--ivf-neighbours/--exact-neighbours", "ivf_neighbours", default=None,
              help="How a CPU fit finds the re-ranking neighbours. --ivf-neighbours: through IVF lists (~98% of "
                   "the exact neighbours, 3x faster at 50k images), built by the fit where the store's index is exact "
                   "and it has 20k images or more; on a smaller store it still searches exactly. --exact-neighbours: "
                   "exactly, where the store's index is exact (up to 100k images; bigger stores always search their "
                   "own IVF index) [exact; --fast: ivf].")
@click.option("--paper", is_flag=True, help="Paper-faithful preset: the paper's cycles and training "
                                            "schedule, single prompt, per-cycle sets, duplicates kept (other "
                                            "options still override it); k stays 16: add --k 5 for the reference "
                                            "scripts' value.")
@click.option("--fast", is_flag=True, help="Faster preset: bf16 products where the hardware has them, IVF neighbours (with "
                                           "--paper also batch 512, lr 2e-2, 20 epochs, 5 per cycle; other "
                                           "options still override it).")
@click.option("--report", "with_report", is_flag=True,
              help="Also write report.html in the run folder (as `zsfs report RUN_DIR`).")
@click.option("--json", "as_json", is_flag=True, callback=prints_on_stdout,
              help="Also print the run folder, metrics, phase times and the report's path (null without --report) "
                   "as JSON on stdout (every parameter is in the run's config.json).")
@noting_made_folders("run_dir")
def fit_command(store_path: Path, vocabulary: str | None, run_dir: Path | None, paper: bool, fast: bool, as_json: bool,
                with_report: bool, **options) -> None:
    """Label and OOD-score every image of the store (--store) from its class names (no labels needed).

    Zero-shot candidates per class, neighbourhood re-ranking, the first k as seeds; then (default)
    the share of each class in the collection is estimated, classes the collection does not hold
    are reported and dropped, and a linear classifier on the backbone features labels the whole
    collection by class-balanced self-training. ood_score ranks images by MCM and by their
    distance to the re-ranked candidates (ood_distance). --paper runs the paper's cycles
    instead; its three-statistic OOD score is the ood_paper column of every run.
    Writes predictions.parquet, classifier.pt, config.json (+ metrics.json when the store has
    labels) to a new run folder.

    Rules: k must not exceed --candidates; a class with fewer than k candidates uses what it
    has; the paper's cycles stop when a cycle's first-epoch loss rises, when the loss drops
    below 0.1, or when the candidates run out.

    \b
    Example:
      zsfs fit --store imagenet.h5 --k 16 --out runs/imagenet-k16
      zsfs fit --store imagenet.h5 --paper --k 5
      zsfs fit --store imagenet.h5 --keep-all-classes
      zsfs fit --store imagenet.h5 --report        # + report.html to look at
    """
    from zsfs.fit.config import FitConfig
    from zsfs.fit.run import fit_store, resolve_vocabulary
    from zsfs.outputs import FolderExistsError, check_new_folder, new_folder
    from zsfs.runs import CLASSIFIER, CONFIG, PREDICTIONS, REPORT, FittedRun
    from zsfs.store import Store
    from zsfs.writable import check_writable

    config = FitConfig.from_options(paper=paper, fast=fast, **options)
    check_device(config.device)  # before the store is read and any note is printed
    note_fit_options(config, options)
    if run_dir is not None:
        try:
            check_new_folder(run_dir)
        except FolderExistsError as taken:
            if with_report and all((run_dir / name).is_file() for name in (CONFIG, CLASSIFIER, PREDICTIONS)) \
                    and not (run_dir / REPORT).exists():  # a fit stopped while writing its report (failure test)
                raise FolderExistsError(f"{taken}; it holds a finished run without its report: write that with "
                                        f"`zsfs report {as_argument(run_dir)}`") from None
            raise
    with Store(store_path) as store:
        store.check_enough_images(2, "a fit")  # first: no other advice helps a store without images
        if with_report and not reads_utf8_file_names():  # before the fit, not after it (its report would refuse)
            check_utf8_file_names(store.paths())
        vocabulary = resolve_vocabulary(store, vocabulary)
        if run_dir is not None:
            check_writable(run_dir, "run folder")
        else:  # the default, under ./runs: the user chose no location
            check_writable(default_run_dir(store_path, vocabulary, config.k), "run folder",
                           "choose another location with --out RUN_DIR")
        if store.n_images <= config.neighbours:
            console.print(f"[yellow]Note:[/] --neighbours {config.neighbours} is more than the store's other "
                          f"images: each image's neighbours are the {counted(store.n_images - 1, 'other image')}.")
        if store.n_images <= config.candidates:
            few = (" So few images give the method little to learn from: compare its labels with the "
                   "zero_shot_predicted column." if store.n_images <= FitConfig.candidates else "")
            console.print(f"[yellow]Note:[/] the store holds {counted(store.n_images, 'image')}, no more than "
                          f"--candidates {config.candidates}: every image is a candidate of every class, and the "
                          f"seeds are ranked by their neighbours' zero-shot votes alone.{few}")
        if store.unreadable_graph:  # `zsfs neighbours` was run to spare every fit its search: say it was lost
            console.print(f"[yellow]Note:[/] the store's neighbour graph cannot be read, so this fit searches "
                          f"neighbours itself: {shown(store.unreadable_graph)}", soft_wrap=True)
        chosen = store.vocabulary(vocabulary)
        if options.get("prompts") == "ensemble" and chosen.prompts_used("ensemble") == "single":
            console.print(f"[yellow]Note:[/] vocabulary {shown(repr(vocabulary))} holds no prompt ensemble of its "
                          f"own (its ensemble rows are its single-prompt rows, as when imported without one): "
                          f"--prompts ensemble reads those.", soft_wrap=True)
        if len(chosen.classes) == 1:  # as ood-bench says of one ID class
            console.print("[yellow]Note:[/] with one class every image is labelled it, at confidence 1, so the "
                          "self-training's picks follow the store's order and the paper's scores (ood_paper, "
                          "ood_continuous) say nothing; MCM (a softmax over the classes) is 1 for every image too: "
                          "ood_score ranks the images by ood_distance alone, the distance to the class's zero-shot "
                          "candidates. List other classes to let CLIP tell images apart.", soft_wrap=True)
        fitting = f"Fitting {store.n_images:,} images on vocabulary {shown(repr(vocabulary))}"
        # --out is taken for the fit's whole length: a second fit into it is refused now, not after its own fit
        reserved = new_folder(run_dir) if run_dir is not None else nullcontext()
        with reserved as folder, console.status(f"{fitting}...") as status:
            def on_phase(name: str) -> None:  # a spinner on a terminal; a line each in a log (Slurm, nohup)
                if console.animates:
                    status.update(f"{fitting}: {name}...")
                else:
                    console.print(f"fit: {name}...", markup=False)

            result = fit_store(store, config, vocabulary, on_phase=on_phase)
            run = FittedRun.from_fit(result, store)
            on_phase("saving the run")  # not a timed phase: the fit is done
            if folder is not None:
                run.write_files(folder)
                saved = run.saved_as(run_dir).path
            else:  # named when the run is done: two fits started in the same second get two folders
                saved = _save_under_a_new_name(run, lambda: default_run_dir(store_path, vocabulary, config.k))
        metrics = run.metrics
    kept = f"The run was saved in full in {saved} before that" + (
        f"; write its report with `zsfs report {saved}`" if with_report else "")
    with kept_if_interrupted(kept):  # a rerun of this command would refuse the run's folder
        show_summary(run, saved)
        written = None
        if with_report:
            from zsfs.cli.report import say_written
            from zsfs.report import write_report

            try:
                notes: list[str] = []
                with console.status("Rendering the report...", logged=True):
                    written = write_report(saved, on_missing_images=notes.append)
                say_written(written, notes)
            except (ZsfsError, OSError) as error:  # the run is saved: a rerun of this command would refuse its folder
                reason = what_failed(error) if isinstance(error, OSError) else str(error)
                raise ZsfsError(f"the run is saved in {saved}, but its report was not written ({reason}); once that "
                                f"is mended, write it with `zsfs report {saved}`") from error
        if as_json:
            from zsfs.outputs import strict_json

            click.echo(strict_json({"run": saved, "metrics": metrics, "timings_s": result.timings, "report": written}))


def _save_under_a_new_name(run, new_name, attempts: int = 10) -> Path:
    """Save ``run`` under ``new_name()``, again under a fresh name if another process took it first."""
    from zsfs.outputs import FolderExistsError

    for _ in range(attempts - 1):
        try:
            return run.save(new_name()).path
        except FolderExistsError:
            continue
    return run.save(new_name()).path


SHOWN_CLASSES = 8
"""Class names listed in one row of the fit summary."""


def show_summary(run: "FittedRun", run_dir: Path) -> None:
    """The run's summary (:func:`zsfs.run_summary.summary_rows`) and its cycles, as tables."""
    from rich.table import Table

    from zsfs.run_summary import cycle_rows, summary_rows

    table = Table(title="zsfs fit", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("value", justify="right", overflow="fold")  # paths are shown whole
    for label, value in summary_rows(run.config, run.metrics, run.predictions, SHOWN_CLASSES):
        table.add_row(shown(label), shown(value))
    console.print(table)

    cycles = Table(title="cycles", title_justify="left")
    header, rows = cycle_rows(run.config, run.metrics)
    for name in header:
        cycles.add_column(name, justify="right")
    for row in rows:
        cycles.add_row(*row)
    console.print(cycles)
    # one line, whatever the width (a log's 80 columns put the path on the next: grep finds no folder)
    console.print(f"Run written to [bold]{shown(run_dir)}[/]", soft_wrap=True)


COMMANDS = [fit_command]
