"""Run the paper's experiment for one or more datasets: prepare -> extract -> fit -> ood-bench -> report.

Every step writes one output (a folder, a store, a run folder) that appears only when the step
is complete, so a rerun skips finished steps and resumes an interrupted one (``zsfs extract``
resumes shard by shard). The zsfs steps run the ``zsfs`` command line in this process, with
the exact arguments ``--dry-run`` prints, so each step can also be rerun by hand.

    python -m pipelines.run cifar10 --data-root data --work work --device cuda
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from pipelines import prepare, report
from pipelines.datasets import BACKBONE, CLIP_MODEL, CLIP_WEIGHTS, DATASETS, OOD_SPLITS, Dataset, get_dataset
from zsfs.devices import DEVICES
from zsfs.errors import ZsfsError


@dataclass(frozen=True)
class Step:
    """One pipeline step: done when ``output`` exists (or ``done()`` says so); ``argv`` is its
    zsfs command line, if it is one."""

    name: str
    output: Path
    run: Callable[[], object]
    argv: tuple[str, ...] | None = None
    done: Callable[[], bool] | None = None

    def is_done(self) -> bool:
        return self.done() if self.done is not None else self.output.exists()

    def describe(self) -> str:
        return "zsfs " + shlex.join(self.argv) if self.argv else f"{self.name} -> {self.output}"


@dataclass(frozen=True)
class Layout:
    """Where a dataset's outputs live under the work folder."""

    work: Path
    dataset: str

    @property
    def folder(self) -> Path:
        return self.work / self.dataset

    @property
    def store(self) -> Path:
        return self.folder / f"{self.dataset}.h5"

    @property
    def fit_run(self) -> Path:
        return self.folder / report.FIT_DIR

    @property
    def ood_run(self) -> Path:
        return self.folder / report.OOD_DIR


def plan(
    dataset: Dataset,
    data_root: Path,
    work: Path,
    *,
    device: str = "cpu",
    images: Path | None = None,
    extract_args: Sequence[str] = (),
    fit_args: Sequence[str] = (),
    splits: int = OOD_SPLITS,
) -> list[Step]:
    """The steps of one dataset's pipeline, in order (nothing is run here)."""
    layout = Layout(Path(work), dataset.name)
    steps = []
    if images is None:
        images = prepare.images_folder(data_root, dataset.name)
        # done once prepared, or once its store is (extract reads the images only to build it)
        steps.append(Step("prepare", images, lambda: dataset.prepare(Path(data_root)),
                          done=lambda: prepare.is_prepared(images) or layout.store.is_file()))
    extract = ("extract", str(images), "--out", str(layout.store), "--clip-model", CLIP_MODEL,
               "--clip-weights", CLIP_WEIGHTS, "--backbone", BACKBONE, "--device", device, *extract_args)
    steps.append(_zsfs_step("extract", layout.store, extract))
    fit = ("fit", "--store", str(layout.store), "--out", str(layout.fit_run), "--device", device, *fit_args)
    steps.append(_zsfs_step("fit", layout.fit_run, fit))
    if dataset.id_classes is not None:
        bench = ("ood-bench", "--store", str(layout.store), "--id-classes", str(dataset.id_classes),
                 "--splits", str(splits), "--out", str(layout.ood_run), "--device", device, *fit_args)
        steps.append(_zsfs_step("ood-bench", layout.ood_run, bench))
    return steps


def run_steps(steps: Sequence[Step], *, dry_run: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Run the unfinished steps in order; returns the names of the steps run (or due, when dry)."""
    ran = []
    for step in steps:
        if step.is_done():
            echo(f"done  {step.name}: {step.output}")
            continue
        echo(f"{'todo' if dry_run else 'run '}  {step.describe()}")
        if not dry_run:
            step.run()
        ran.append(step.name)
    return ran


def run_zsfs(argv: Sequence[str]) -> None:
    """Run one ``zsfs`` command in this process; a failure raises ``ZsfsError``."""
    from zsfs.cli import main as zsfs_main

    try:
        zsfs_main.main(args=list(argv), prog_name="zsfs", standalone_mode=False)
    except click.ClickException as error:
        raise ZsfsError(f"zsfs {argv[0]}: {error.format_message()}") from None
    except SystemExit as exit_:  # zsfs printed the reason already
        if exit_.code in (130, 143):  # Ctrl-C or SIGTERM: the whole pipeline stops, as the step did
            raise
        if exit_.code not in (0, None):
            raise ZsfsError(f"step `zsfs {shlex.join(argv)}` failed (exit {exit_.code}); fix the cause above "
                            f"and rerun: finished steps are kept") from None


def _zsfs_step(name: str, output: Path, argv: tuple[str, ...]) -> Step:
    return Step(name, output, lambda: run_zsfs(argv), argv)


def extra_arguments(option: str, text: str, commands: dict[str, list[str]]) -> list[str]:
    """``text`` split as a shell would, and checked against each zsfs command it goes to (``commands``:
    name -> the arguments the pipeline gives it): a typo is reported now, not after hours of extract."""
    from zsfs.cli import main as zsfs_main
    from zsfs.cli.common import option_flags
    from zsfs.cli.fit import PARAMETERS
    from zsfs.errors import ParameterError
    from zsfs.fit.config import FitConfig

    try:
        words = shlex.split(text)
    except ValueError as error:  # "No closing quotation"
        raise ZsfsError(f"{option} {text!r}: {error}") from None
    for name, given in commands.items():
        command = zsfs_main.get_command(click.Context(zsfs_main), name)
        try:
            params = command.make_context(name, [*given, *words]).params
            if "paper" in params and all(parameter in params for parameter in PARAMETERS):  # fit, ood-bench
                # the options' agreement (--k above --candidates), which fit checks before the store
                FitConfig.from_options(paper=params["paper"], fast=params["fast"],
                                       **{parameter: params[parameter] for parameter in PARAMETERS})
        except click.ClickException as error:
            raise ZsfsError(f"{option} {text!r}: `zsfs {name}` says: {error.format_message()}") from None
        except ParameterError as error:
            raise ZsfsError(f"{option} {text!r}: `zsfs {name}` says: {error.render(option_flags(command))}") from None
    return words


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Example: python -m pipelines.run cifar10 cifar100 --data-root data --work work --device cuda")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Where datasets are downloaded and prepared.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("work"), show_default=True,
              help="Stores, runs and results.md / results.csv.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Device for extract, fit and ood-bench.")
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="An already prepared class-subfolder folder (one dataset only): skips preparation.")
@click.option("--extract-args", default="", help='Extra `zsfs extract` options, e.g. "--precision bf16".')
@click.option("--fit-args", default="", help='Extra options for `zsfs fit` and `zsfs ood-bench`, e.g. "--k 5".')
@click.option("--splits", type=click.IntRange(min=1), default=OOD_SPLITS, show_default=True,
              help="ID/OOD splits of the OOD protocol.")
@click.option("--dry-run", is_flag=True, help="Print what would run (as zsfs command lines) and stop.")
def main(datasets: tuple[str, ...], data_root: Path, work: Path, device: str, images: Path | None,
         extract_args: str, fit_args: str, splits: int, dry_run: bool) -> None:
    """Run the paper's experiment for DATASETS (cifar10 cifar100 caltech101 caltech256 cars imagenet, or all)."""
    from zsfs.cli.common import console, say_stopped, sigterm_stops_cleanly

    with sigterm_stops_cleanly():
        try:
            _run_datasets(datasets, data_root, work, device, images, extract_args, fit_args, splits, dry_run)
        except KeyboardInterrupt as stop:  # in a step of its own (a download, the report): zsfs steps say their own
            say_stopped(stop, "Finished steps are kept and nothing half-written was left; a rerun resumes.")
        except ZsfsError as error:
            console.print(f"[bold red]Error:[/] {error}")
            raise SystemExit(1) from None


def _run_datasets(datasets: tuple[str, ...], data_root: Path, work: Path, device: str, images: Path | None,
                  extract_args: str, fit_args: str, splits: int, dry_run: bool) -> None:
    from zsfs.cli.common import console

    failed = []
    if "all" in datasets and len(datasets) > 1:
        raise ZsfsError("'all' runs every dataset: give it alone, or name the datasets")
    names = [name for name, entry in DATASETS.items() if entry.runnable] if datasets == ("all",) else datasets
    chosen = [get_dataset(name) for name in names]
    if images is not None and len(chosen) != 1:
        raise ZsfsError("--images names one prepared folder: give exactly one dataset with it")
    extract_words = extra_arguments("--extract-args", extract_args, {"extract": ["."]})
    takers = {"fit": ["--store", "s.h5"]}
    if any(dataset.id_classes is not None for dataset in chosen):  # ImageNet alone runs no ood-bench
        takers["ood-bench"] = ["--store", "s.h5", "--id-classes", "2"]
    fit_words = extra_arguments("--fit-args", fit_args, takers)
    for dataset in chosen:
        console.rule(dataset.title)
        steps = plan(dataset, data_root, work, device=device, images=images, splits=splits,
                     extract_args=extract_words, fit_args=fit_words)
        try:
            run_steps(steps, dry_run=dry_run, echo=lambda line: console.print(line, markup=False, soft_wrap=True))
        except ZsfsError as error:  # the other datasets still run (ImageNet, first of all, is downloaded by hand)
            console.print(f"[bold red]Error:[/] {dataset.name}: {error}")
            failed.append(dataset.name)
    if not dry_run:
        md_path, csv_path = report.write_results(work)
        console.print(f"Results: {md_path} and {csv_path}")
    if failed:
        raise ZsfsError(f"{len(failed)} of {len(chosen)} datasets did not finish: {', '.join(failed)} (the errors "
                        "above say why); rerun to resume them")


if __name__ == "__main__":
    from zsfs.cli.common import ignore_late_stops

    try:
        main()
    finally:
        ignore_late_stops()
