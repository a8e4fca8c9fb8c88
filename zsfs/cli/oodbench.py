"""``zsfs ood-bench``: the zero-shot OOD protocol on a labelled store (zsfs vs. the MCM baseline)."""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from pathlib import Path

import click
from rich.table import Table

from zsfs.cli.console import console, shown
from zsfs.cli.group import kept_if_interrupted
from zsfs.cli.notes import note_fit_options
from zsfs.cli.options import GivenPath, class_names_hint, noting_made_folders, prints_on_stdout
from zsfs.errors import ParameterError, literal, shown_value
from zsfs.names import counted, home_expanded, near_spellings, some_names


@click.command("ood-bench", short_help="Benchmark the OOD scores with some classes held out.")
@click.option("--store", "store_path", required=True, type=GivenPath(path_type=Path),
              help="A store whose images have labels.")
@click.option("--id-classes", required=True, metavar="N|FILE",
              help="N: random splits of N ID classes among the labels; FILE: the ID class names, one per line "
                   "(one split).")
@click.option("--splits", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of distinct random ID/OOD splits (with N; fewer when fewer exist).")
@click.option("--out", type=GivenPath(path_type=Path),  # an existing file: "already exists", as fit says
              help="Folder to create with metrics.json (must not exist) [default: write nothing].")
@click.option("--vocab", "vocabulary", help="Vocabulary whose names match the labels [default: the store's only one].")
@click.option("--json", "as_json", is_flag=True, callback=prints_on_stdout, help="Also print metrics.json to stdout.")
@noting_made_folders("out")
def ood_bench(store_path: Path, id_classes: str, splits: int, out: Path | None, vocabulary: str | None,
              as_json: bool, paper: bool, fast: bool, **fit_options) -> None:
    """Zero-shot OOD benchmark: only the ID class names go to the fit; OOD = images of other classes.

    Reports AUROC (OOD positive) and FPR95 (OOD images taken as ID at 95% TPR on ID ones, as MCM
    defines it), mean +- std over the splits, for zsfs' ood_score, its paper score, its continuous
    score and the MCM baseline on the same store and prompts.

    \b
    Example:
      zsfs ood-bench --store cifar10.h5 --id-classes 6 --out cifar10-ood
    """
    from zsfs.devices import check_device
    from zsfs.fit.config import FitConfig
    from zsfs.oodbench import METRICS_FILE, ood_bench as run_bench
    from zsfs.outputs import check_new_folder, new_folder, strict_json, write_json
    from zsfs.store import Store
    from zsfs.writable import check_writable

    if out is not None:
        check_new_folder(out)
        check_writable(out, "metrics folder")
    wanted = _parse_id_classes(id_classes)
    config = FitConfig.from_options(paper=paper, fast=fast, **fit_options)
    check_device(config.device)  # before the store is read and any note is printed
    note_fit_options(config, fit_options)
    if not isinstance(wanted, int) and splits != 1 and click.get_current_context().get_parameter_source("splits") \
            is not click.core.ParameterSource.DEFAULT:  # --splits 1 is what a file gives: nothing to say
        console.print("[yellow]Note:[/] --splits is ignored: a file of ID classes is one split.")
    n_splits, fitted = 0, 0  # as the benchmark draws them (on_start), and as they end (on_split)

    with ExitStack() as reserved, Store(store_path) as store, \
            console.status("reading the store", logged=True) as status:
        folder = None

        def start(count: int) -> None:
            nonlocal n_splits, folder
            n_splits = count
            if out is not None:  # taken once the store is checked, for the splits' whole length, as fit's
                folder = reserved.enter_context(new_folder(out))  # (a second run into it is refused at once)
            if isinstance(wanted, int) and count < splits:
                exist = "exists" if count == 1 else "exist"
                console.print(f"[yellow]Note:[/] only {counted(count, 'distinct split')} of {wanted} ID classes "
                              f"{exist}; each is run once.")

        def report_split(number: int, split) -> None:
            nonlocal fitted
            fitted = number + 1
            o = split.ood
            console.print(f"split {number + 1}/{n_splits}: {counted(len(split.id_classes), 'ID class', 'ID classes')}, "
                          f"{split.n_id_images:,} ID / {split.n_ood_images:,} OOD images; AUROC zsfs "
                          f"{o['zsfs']['auroc']:.3f}, continuous {o['zsfs_continuous']['auroc']:.3f}, "
                          f"MCM {o['mcm']['auroc']:.3f}; ID accuracy {split.id_accuracy:.3f}")

        def phase(name: str) -> None:  # the spinner only: a log gets a line per split, not per phase
            status.update(f"fitting split {fitted + 1} of {n_splits}: {name}")

        metrics = run_bench(store, wanted, config, n_splits=splits, vocabulary=vocabulary,
                            on_start=start, on_split=report_split, on_phase=phase)
        # a label that differs from a class name only by case or spacing is almost surely meant as it
        near = near_spellings(metrics["always_ood_classes"], store.vocabulary(metrics["vocabulary"]).classes,
                              "its class")
        if folder is not None:
            write_json(folder / METRICS_FILE, metrics)
    # the metrics are in place once the with block ends: a stop from here on must not say "nothing was left"
    with (kept_if_interrupted(f"The metrics were saved in full in {out / METRICS_FILE} before that") if out is not None
          else nullcontext()):
        if metrics["n_splits"] and all(len(split["id_classes"]) == 1 for split in metrics["splits"]):
            console.print("[yellow]Note:[/] with one ID class, MCM (a softmax over the ID classes) is 1 for every "
                          "image: its AUROC is 0.5 by construction. Use 2 or more ID classes to compare the detectors.")
        if metrics["always_ood_classes"]:
            n_outside = len(metrics["always_ood_classes"])
            spelled = f" ({some_names(near, 3, with_count=False)})" if near else ""
            verb = "is" if n_outside == 1 else "are"
            console.print(shown(f"{counted(n_outside, 'label class', 'label classes')} {verb} not in vocabulary "
                                f"{metrics['vocabulary']!r}: always OOD{spelled}."))
        console.print(_table(metrics))
        if out is not None:
            console.print(f"Written: {shown(out / METRICS_FILE)}", soft_wrap=True)  # one line in a log too
        if as_json:
            click.echo(strict_json(metrics))  # as metrics.json holds them


def _share_fit_options(command: click.Command) -> click.Command:
    """Give ``command`` the fit's own options (--k, --prompts, --paper, --seed, ...), defined once in
    ``zsfs fit``: the benchmark fits exactly as ``zsfs fit`` would with the same options."""
    from zsfs.cli.fit import PARAMETERS, fit_command

    shared = [param for param in fit_command.params if param.name in (*PARAMETERS, "paper", "fast")]
    before_json = next(i for i, param in enumerate(command.params) if param.name == "as_json")
    command.params[before_json:before_json] = shared
    return command


def _parse_id_classes(value: str) -> int | list[str]:
    path = Path(home_expanded(value))
    try:
        count = int(value)  # a count; one above the store's class count gets ood_bench's range error
    except ValueError:
        pass
    else:
        if count < 1:  # out of range whatever the store: click's usage error, as for --splits 0
            raise click.BadParameter(f"{count} ID classes: give 1 or more, or a file of ID class names",
                                     param_hint="'--id-classes'")
        if path.is_file():  # the number wins, as --help says; say so, and how to read the file
            console.print(f"[yellow]Note:[/] --id-classes {shown(value)} is read as a number of ID classes, not the "
                          f"file {shown(value)}; pass {shown('./' + value)} to read the file.")
        return count
    if not path.exists() or path.is_dir():  # a pipe (<(...)) is no regular file, but reads as one
        raise ParameterError(f"{{id_classes}} takes a number of ID classes or a file of ID class names; "
                             f"{shown_value(value)} is {'a folder' if path.is_dir() else 'neither a number nor an existing file'}"
                             + literal(class_names_hint("--id-classes", value)))
    from zsfs.lists import read_class_file

    return read_class_file(path)


def _table(metrics: dict) -> Table:
    from zsfs.evaluate import OOD_DETECTORS

    id_classes = metrics["id_classes"]
    n_id = id_classes if isinstance(id_classes, int) else len(id_classes)
    config = metrics["config"]  # the scores are of this fit's method: a default fit's paper score is not --paper's
    table = Table(title=f"zsfs ood-bench: {counted(n_id, 'ID class', 'ID classes')}, "
                        f"{counted(metrics['n_splits'], 'split')}; fit: {config['method']}, k {config['k']}")
    table.add_column("detector", style="bold")
    table.add_column("AUROC ↑", justify="right")
    table.add_column("FPR@95%TPR ↓", justify="right")
    for detector in OOD_DETECTORS:
        title = detector.title if detector.baseline else f"zsfs ({detector.title})"
        table.add_row(title, _pm(metrics, f"{detector.bench_prefix}auroc"), _pm(metrics, f"{detector.bench_prefix}fpr95"))
    table.add_section()
    table.add_row("ID accuracy: zsfs", _pm(metrics, "id_accuracy"), "")
    table.add_row("ID accuracy: zero-shot", _pm(metrics, "zero_shot_id_accuracy"), "")  # (imported: maybe no CLIP)
    return table


def _pm(metrics: dict, key: str) -> str:
    return f"{metrics[key + '_mean']:.3f} ± {metrics[key + '_std']:.3f}"


ood_bench = _share_fit_options(ood_bench)

COMMANDS = [ood_bench]
