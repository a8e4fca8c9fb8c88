"""Run the paper's experiment for one or more datasets: prepare -> extract -> fit -> ood-bench -> report.

Every step writes one output (a folder, a store, a run folder) that appears only when the step
is complete, so a rerun skips finished steps and resumes an interrupted one (``zsfs extract``
resumes shard by shard). What each zsfs step was made with (its options, and the store it read)
is recorded in the dataset's ``steps.json``: a rerun that asks for other options, or finds the
store rebuilt under a finished fit, says so instead of reporting the earlier results. The zsfs
steps run the ``zsfs`` command line in this process, with the exact arguments ``--dry-run``
prints, so each step can also be rerun by hand.

    python -m pipelines.run cifar10 --data-root data --work work --device cuda
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipelines import prepare, report
from pipelines.datasets import BACKBONE, CLIP_MODEL, CLIP_WEIGHTS, DATASETS, OOD_SPLITS, Dataset, get_dataset
from zsfs.cli.options import GivenPath
from zsfs.devices import DEVICES
from zsfs.errors import ZsfsError
from zsfs.names import counted
from zsfs.outputs import write_text_atomically
from zsfs.oodbench import METRICS_FILE as OOD_METRICS_FILE
from zsfs.runs import CONFIG as RUN_CONFIG_FILE

if TYPE_CHECKING:
    import numpy as np

    from zsfs.fit.config import FitConfig
    from zsfs.store import Store


STEPS_FILE = "steps.json"

SET_BY_THE_PIPELINE = {"source": "the images (prepared, or --images)", "out": "WORK/<dataset>/...",
                       "store_path": "WORK/<dataset>/<dataset>.h5", "run_dir": "WORK/<dataset>/fit",
                       "device": "the pipeline's --device", "id_classes": "the pipeline's --id-classes",
                       "splits": "the pipeline's --splits"}
"""zsfs parameters the pipeline gives each step itself (name -> where they come from): refused in
--extract-args and --fit-args, where the last value would win and send a step elsewhere."""

HOW_NOT_WHAT = {"extract": ("batch_size", "workers", "shard_size", "ray", "ray_workers", "overwrite"),
                "fit": ("as_json", "with_report"), "ood-bench": ("as_json",)}
"""Parameters that change how a step runs or what it prints, not its results: no change of settings
(a rerun with another --batch-size must not ask for the store to be rebuilt)."""


@dataclass(frozen=True)
class Step:
    """One pipeline step: done when ``output`` exists (or ``done()`` says so); ``argv`` is its
    zsfs command line, if it is one. ``settings`` are what its output depends on besides the
    work folder's layout (:func:`command_settings`), and ``store`` the store it reads, if any:
    both are recorded in ``record`` (the dataset's steps.json) before it runs."""

    name: str
    output: Path
    run: Callable[[], object]
    argv: tuple[str, ...] | None = None
    done: Callable[[], bool] | None = None
    settings: dict = field(default_factory=dict)
    store: Path | None = None
    record: Path | None = None
    images: Path | None = None  # the folder the step reads (extract): its listing is recorded too
    finished_file: str | None = None  # the file a finished output holds (a fit's config.json), when it has one

    def is_done(self) -> bool:
        if self.finished_file is not None:
            return (self.output / self.finished_file).is_file()
        return self.done() if self.done is not None else self.output.exists()

    def leftover(self) -> str | None:
        """Why an output that is there but unfinished cannot be made again in place (its command
        refuses an existing folder, and "choose another folder" is no advice for a pipeline)."""
        if self.finished_file is None or self.is_done() or not os.path.lexists(self.output):
            return None
        return (f"{self.output} is there but holds no {self.finished_file} (emptied, or made by hand), so it is no "
                f"finished {self.name}: remove it (rm -r {shlex.quote(str(self.output))}) and rerun")

    def describe(self) -> str:
        return "zsfs " + shlex.join(self.argv) if self.argv else f"{self.name} -> {self.output}"

    def made_with(self) -> dict:
        """What this step's output is made with now: its settings and the content of its store."""
        made: dict = {"settings": self.settings}
        if self.store is not None:
            made["store"] = _store_content(self.store)
        if self.images is not None:
            made["images"] = _listing(self.images)
        return made

    def change(self) -> str | None:
        """How a finished output differs from what this run asks for (None when it does not, or when
        nothing was recorded: an output made by hand or by an earlier version of this script)."""
        if self.record is None:
            return None
        recorded = read_records(self.record).get(self.name)
        if recorded is None:
            return None
        then = _by_meaning(recorded["settings"])  # recorded before files were made absolute, too
        # names on both sides only: a setting a later zsfs adds (or drops) is no change of this output
        changed = sorted(name for name in set(then) & set(self.settings) if then[name] != self.settings[name])
        if changed:
            said = ", ".join(f"{name} {_shown(then[name])} -> {_shown(self.settings[name])}" for name in changed)
            return f"{self.output} was made with other settings ({said})"
        listed = recorded.get("images")
        if self.images is not None and listed and self.images.is_dir():  # (prepared images may be deleted once built)
            now = _listing(self.images)
            if now is not None and now != listed:  # extract's own rule: names and labels, as its rerun would refuse
                return (f"{self.output} was made from {self.images} when it listed {listed['n_files']:,} images; "
                        + (f"it lists {now['n_files']:,} now" if now["n_files"] != listed["n_files"] else
                           "their names or labels changed since"))
        if self.store is None or recorded.get("store") is None:
            return None
        if not self.store.exists():  # a new extract would build another: a check after it would come too late
            return f"{self.output} was made from {self.store}, which is gone"
        store = _store_content(self.store)
        if store is not None and recorded["store"] != store:  # (an unreadable store: its step says why)
            return f"{self.output} was made from an earlier build of {self.store}"
        return None

    def remember(self) -> dict | None:
        """Record what the output about to be made is made with; returns the record it replaced."""
        if self.record is None:
            return None
        records = read_records(self.record)
        replaced = records.get(self.name)
        records[self.name] = self.made_with()
        _write_records(self.record, records)
        return replaced

    def restore(self, replaced: dict | None) -> None:
        """Put back the record :meth:`remember` replaced (none: remove this step's), for a step that
        made no output: a pipeline refused by another one's lock on this --work wrote its settings
        over those of the output the other was making (a review: a float16 store said float32)."""
        if self.record is None:
            return
        with suppress(ZsfsError, OSError):  # (the step's own error is the one to report)
            records = read_records(self.record)
            if replaced is None:
                records.pop(self.name, None)
            else:
                records[self.name] = replaced
            _write_records(self.record, records)


def command_settings(argv: Sequence[str], source: str | None = None) -> dict:
    """What a zsfs command line asks for, by meaning: every parameter with its default filled in,
    fit's and ood-bench's as the fit config they resolve to (``--k=5`` and ``--k 5`` are one setting,
    as are no ``--k`` and the default's), without the paths and the device the pipeline gives
    (``source``, when given, stands for the images), nor :data:`HOW_NOT_WHAT`."""
    from zsfs.cli.fit import PARAMETERS

    params = _parsed(argv).params
    config = _fit_config(params)
    if config is not None:
        params = {name: value for name, value in params.items() if name not in {"paper", "fast", *PARAMETERS}}
        params.update(asdict(config))
    ignored = {"source", "out", "store_path", "run_dir", "device", *HOW_NOT_WHAT.get(argv[0], ())}
    settings = {name: value for name, value in params.items() if name not in ignored}
    if source is not None:
        settings["images"] = source
    # as steps.json holds them (paths as text, lists)
    settings = _by_meaning(json.loads(json.dumps(settings, default=str)))
    if isinstance(settings.get("classes_file"), str) and os.path.isfile(settings["classes_file"]):
        from zsfs.digests import file_sha256

        # its content too: an edited class list under the same name passed for the store's (a walkthrough)
        settings["classes_file_content"] = file_sha256(settings["classes_file"])[:12]  # (shown in a change)
    return settings


def _by_meaning(settings: dict) -> dict:
    """``settings`` with the model and class files they name as absolute paths (a pretrained tag
    named like a file stays a tag): a file is the setting, however its path was written (a
    walkthrough was told to remove its store for `--clip-model` given absolute on a rerun); and
    extract's ``--max-pixels`` as its default's value when not given (given, it was a change)."""
    from zsfs.decode import DEFAULT_MAX_PIXELS
    from zsfs.shard_embedder import MODEL_OPTIONS, absolute_model_files

    settings = dict(settings)
    if "max_pixels" in settings and settings["max_pixels"] is None:  # (the option says its default, sets none)
        settings["max_pixels"] = DEFAULT_MAX_PIXELS
    if all(isinstance(settings.get(name), str) for name in MODEL_OPTIONS):
        settings.update(absolute_model_files(settings))
    if isinstance(settings.get("classes_file"), str) and os.path.isfile(settings["classes_file"]):
        settings["classes_file"] = os.path.abspath(settings["classes_file"])
    return settings


def _fit_config(params: dict) -> "FitConfig | None":
    """The fit config a fit's or ood-bench's parsed options resolve to (None for another command);
    a ParameterError when they disagree (--k above --candidates)."""
    from zsfs.cli.fit import PARAMETERS
    from zsfs.fit.config import FitConfig

    if "paper" not in params or not all(parameter in params for parameter in PARAMETERS):
        return None
    return FitConfig.from_options(paper=params["paper"], fast=params["fast"],
                                  **{parameter: params[parameter] for parameter in PARAMETERS})


def _parsed(argv: Sequence[str]) -> click.Context:
    """``argv``'s zsfs command parsed without running anything (its checks of paths are skipped)."""
    from zsfs.cli import main as zsfs_main

    command = zsfs_main.get_command(click.Context(zsfs_main), argv[0])
    return command.make_context(argv[0], list(argv[1:]), resilient_parsing=True)


def _unless_given(options: Sequence[tuple[str, str]], given: Sequence[str]) -> list[str]:
    """The words of extract's ``options`` (flag, value) that the extract arguments ``given`` do not
    set again (as click reads them: ``--classes --backbone`` gives no --backbone), so that the
    command echoed and recorded names each option once (the last one given wins anyway)."""
    parsed = _parsed(("extract", ".", *given))
    named = {parameter.name for parameter in parsed.command.params
             if parsed.get_parameter_source(parameter.name) is click.core.ParameterSource.COMMANDLINE}
    flags = {flag: parameter.name for parameter in parsed.command.params for flag in parameter.opts}
    return [word for flag, value in options if flags[flag] not in named for word in (flag, value)]


def _shown(value: object) -> str:
    return value if isinstance(value, str) else "none" if value is None else json.dumps(value)


def _write_records(path: Path, records: dict) -> None:
    write_text_atomically(path, json.dumps(records, indent=2) + "\n")


def read_records(path: Path) -> dict:
    """The dataset's steps.json: step name -> what its output was made with ({} when there is none)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ZsfsError(f"cannot read {path} ({error}): remove it, and the pipeline takes every finished "
                        "output as it is") from None
    if not (isinstance(records, dict) and all(isinstance(record, dict) and isinstance(record.get("settings"), dict)
                                              for record in records.values())):
        raise ZsfsError(f"{path} is not what this pipeline writes: remove it, and the pipeline takes every "
                        "finished output as it is")
    return records


def _listing(images: Path) -> dict | None:
    """What ``zsfs extract`` records of an image folder's listing (its files' names and labels);
    None when it lists no image or cannot be read (the extract step says why)."""
    from zsfs.sources import open_source

    try:
        source = open_source(images)
        return {"n_files": len(source.paths), "listing_sha256": source.digest()}
    except (ZsfsError, OSError):
        return None


def _store_labels(path: Path) -> "np.ndarray | None":
    """The labels of the store at ``path``; None when it has none or cannot be read (its step says why)."""
    return _reading_store(path, lambda store: store.labels())


STORE_CONTENT_KEYS = ("created", "n_images", "identity_sha256")
"""The keys of a store's fingerprint that steps.json records (not its path: a work folder may move;
not what a later zsfs adds to the fingerprint, n_skipped say: every earlier record would differ)."""


def _store_content(path: Path) -> dict | None:
    """What identifies a store's content; None when it cannot be read."""
    return _reading_store(path, lambda store: {key: value for key, value in store.fingerprint().items()
                                               if key in STORE_CONTENT_KEYS})


def _reading_store(path: Path, read: "Callable[[Store], Any]") -> Any:
    """``read(store)`` of the store at ``path``, or None when it cannot be opened or read."""
    from zsfs.store import Store

    try:
        with Store(path) as store:
            return read(store)
    except (ZsfsError, OSError):
        return None


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

    @property
    def record(self) -> Path:
        return self.folder / STEPS_FILE


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
    id_classes: int | None = None,
) -> list[Step]:
    """The steps of one dataset's pipeline, in order (nothing is run here); ``id_classes``: the OOD
    protocol's ID class count [the paper's for the dataset]."""
    layout = Layout(Path(work), dataset.name)
    steps = []
    if images is None:
        images = prepare.images_folder(data_root, dataset.name)
        # done once prepared, or once its store is (extract reads the images only to build it)
        steps.append(Step("prepare", images, lambda: dataset.prepare(Path(data_root)),
                          # (an unreadable store: extract says what is wrong with it, no download helps)
                          done=lambda: prepare.is_prepared(images) or _store_state(layout.store) in ("complete",
                                                                                                     "unreadable")))
        source = f"prepared {dataset.name}"  # the same images wherever --data-root puts them
    else:
        source = str(Path(images).resolve())
    models = (("--clip-model", CLIP_MODEL), ("--clip-weights", CLIP_WEIGHTS), ("--backbone", BACKBONE))
    extract = ("extract", str(images), "--out", str(layout.store), *_unless_given(models, extract_args),
               "--device", device, *extract_args)
    steps.append(_zsfs_step("extract", layout, layout.store, extract, source))
    fit = ("fit", "--store", str(layout.store), "--out", str(layout.fit_run), "--device", device, *fit_args)
    steps.append(_zsfs_step("fit", layout, layout.fit_run, fit))
    id_classes = dataset.id_classes if id_classes is None else id_classes
    if dataset.id_classes is not None:
        bench = ("ood-bench", "--store", str(layout.store), "--id-classes", str(id_classes),
                 "--splits", str(splits), "--out", str(layout.ood_run), "--device", device, *fit_args)
        steps.append(_zsfs_step("ood-bench", layout, layout.ood_run, bench))
    return steps


def run_steps(steps: Sequence[Step], *, dry_run: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Run the unfinished steps in order; returns the names of the steps run (or due, when dry).
    A finished output made with other settings than these stops it first, every such output named,
    and so does an unfinished one that is there (:meth:`Step.leftover`: emptied by hand)."""
    _refuse_changed([step for step in steps if step.is_done()])
    leftovers = [leftover for step in steps if (leftover := step.leftover()) is not None]
    if leftovers:  # before any step runs (an emptied fit folder was named only after the extract it waited on)
        raise ZsfsError("; ".join(leftovers))
    ran = []
    for position, step in enumerate(steps):
        if step.is_done():
            if ran and not dry_run:  # a store an earlier step of this run has just rebuilt: every output made
                # from the earlier build is named at once (they were named one per rerun)
                _refuse_changed([later for later in steps[position:] if later.is_done()])
            echo(f"done  {step.name}: {step.output}")
            continue
        echo(f"{'todo' if dry_run else 'run '}  {step.describe()}")
        if not dry_run:
            # recorded first: killed once its output is there, a step must not pass for one of other settings
            replaced = step.remember()
            try:
                step.run()
            except BaseException:
                if not step.is_done():  # (a second pipeline on this --work, refused: the first's record stays)
                    step.restore(replaced)
                raise
        ran.append(step.name)
    return ran


def _refuse_changed(finished: Sequence[Step]) -> None:
    changes = [(step, change) for step in finished if (change := step.change())]
    if not changes:
        return
    said = "; ".join(f"{step.name}: {change}" for step, change in changes)
    rebuilt = next((step for step, _ in changes if step.name == "extract"), None)
    if rebuilt is not None:  # every later output is made from the store: the dataset's folder goes whole
        remove = (f"rm -r {shlex.quote(str(rebuilt.record.parent))}: the store, its shards and every result made "
                  "from it")
    else:
        remove = "rm -r " + " ".join(shlex.quote(str(step.output)) for step, _ in changes)
    raise ZsfsError(f"{said}. Their results would be reported as this run's: remove them to redo the steps with "
                    f"these options ({remove}), or give another --work")


def run_zsfs(argv: Sequence[str]) -> None:
    """Run one ``zsfs`` command in this process; a failure raises ``ZsfsError``."""
    from zsfs.cli import main as zsfs_main

    try:
        zsfs_main.main(args=list(argv), prog_name="zsfs", standalone_mode=False)
    except click.ClickException as error:
        raise ZsfsError(f"zsfs {argv[0]}: {error.format_message()}") from None
    except SystemExit as exit_:  # zsfs printed the reason already
        if exit_.code in (129, 130, 143):  # a hang-up, Ctrl-C or SIGTERM: the whole pipeline stops, as the step did
            raise
        if exit_.code not in (0, None):
            raise ZsfsError(f"step `zsfs {shlex.join(argv)}` failed (exit {exit_.code}); fix the cause above "
                            f"and rerun: finished steps are kept") from None


def _zsfs_step(name: str, layout: Layout, output: Path, argv: tuple[str, ...], source: str | None = None) -> Step:
    """A zsfs command as a step; extract's (``source`` given) records its images' listing, so a
    rerun after images were added or removed says so (walkthrough: it reported the old store's results)."""
    builds_the_store = output == layout.store
    return Step(name, output, lambda: run_zsfs(argv), argv, settings=command_settings(argv, source),
                done=(lambda: _store_state(output) == "complete") if builds_the_store else None,
                store=None if builds_the_store else layout.store, record=layout.record,
                images=Path(argv[1]) if source is not None else None,
                finished_file=None if builds_the_store else _FINISHED_FILES[name])


_FINISHED_FILES = {"fit": RUN_CONFIG_FILE, "ood-bench": OOD_METRICS_FILE}
"""The file each result folder holds once finished (written with the rest, the folder renamed into
place): a fit's config.json, since its metrics.json is written only when the store has labels (a
fit of an unlabeled --images folder was "no finished fit" on every rerun)."""


def _store_state(path: Path) -> str:
    """"complete" (every vocabulary its extract planned is there: one stopped after the master, before
    its class names, was "done" for good, and every fit failed on it), "unfinished" (extract resumes
    it), "unreadable" (extract says what is wrong with it) or "absent"."""
    if not os.path.lexists(path):
        return "absent"
    complete = _reading_store(path, lambda store: not store.unwritten_vocabularies)
    return "unreadable" if complete is None else "complete" if complete else "unfinished"


def extra_arguments(option: str, text: str, commands: dict[str, list[str]]) -> list[str]:
    """``text`` split as a shell would, and checked against each zsfs command it goes to (``commands``:
    name -> the arguments the pipeline gives it): a typo is reported now, not after hours of extract."""
    from zsfs.cli import main as zsfs_main
    from zsfs.cli.options import option_flags
    from zsfs.errors import ParameterError

    try:
        words = shlex.split(text)
    except ValueError as error:  # "No closing quotation"
        raise ZsfsError(f"{option} {text!r}: {error}") from None
    for name in commands:  # first: an option of one command is unknown to the other
        command = zsfs_main.get_command(click.Context(zsfs_main), name)
        alone = _parsed([name, *words])
        for parameter in command.params:
            if parameter.name in SET_BY_THE_PIPELINE and \
                    alone.get_parameter_source(parameter.name) is click.core.ParameterSource.COMMANDLINE:
                given_as = parameter.opts[0] if parameter.opts[0].startswith("-") else "an image folder"
                raise ZsfsError(f"{option} {text!r}: the pipeline gives `zsfs {name}` {given_as} itself "
                                f"({SET_BY_THE_PIPELINE[parameter.name]}): leave it out")
    for name, given in commands.items():
        command = zsfs_main.get_command(click.Context(zsfs_main), name)
        try:
            # and the options' agreement (--k above --candidates), which fit checks before the store
            _fit_config(command.make_context(name, [*given, *words]).params)
        except click.ClickException as error:
            raise ZsfsError(f"{option} {text!r}: `zsfs {name}` says: {error.format_message()}") from None
        except ParameterError as error:
            raise ZsfsError(f"{option} {text!r}: `zsfs {name}` says: {error.render(option_flags(command))}") from None
    return words


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Example: python -m pipelines.run cifar10 cifar100 --data-root data --work work --device cuda")
@click.argument("datasets", nargs=-1, required=True)
@click.option("--data-root", type=GivenPath(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Where datasets are downloaded and prepared.")
@click.option("--work", type=GivenPath(file_okay=False, path_type=Path), default=Path("work"), show_default=True,
              help="Stores, runs and results.md / results.csv.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Device for extract, fit and ood-bench.")
@click.option("--images", type=GivenPath(file_okay=False, path_type=Path),
              help="An already prepared class-subfolder folder (one dataset only): skips preparation.")
@click.option("--extract-args", default="", help='Extra `zsfs extract` options, e.g. "--precision bf16".')
@click.option("--fit-args", default="", help='Extra options for `zsfs fit` and `zsfs ood-bench`, e.g. "--k 5".')
@click.option("--splits", type=click.IntRange(min=1), default=OOD_SPLITS, show_default=True,
              help="ID/OOD splits of the OOD protocol.")
@click.option("--id-classes", type=click.IntRange(min=1), default=None,
              help="ID classes of the OOD protocol (one dataset only; e.g. for an --images folder of fewer "
                   "classes) [the paper's for the dataset].")
@click.option("--dry-run", is_flag=True, help="Print what would run (as zsfs command lines) and stop.")
def main(datasets: tuple[str, ...], data_root: Path, work: Path, device: str, images: Path | None,
         extract_args: str, fit_args: str, splits: int, id_classes: int | None, dry_run: bool) -> None:
    """Run the paper's experiment for DATASETS (cifar10 cifar100 caltech101 caltech256 cars imagenet, or all)."""
    from zsfs.cli.group import say_error, say_stopped
    from zsfs.cli.stops import sigterm_stops_cleanly

    with sigterm_stops_cleanly():
        try:
            _run_datasets(datasets, data_root, work, device, images, extract_args, fit_args, splits, id_classes,
                          dry_run)
        except KeyboardInterrupt as stop:  # in a step of its own (a download, the report): zsfs steps say their own
            say_stopped(stop, "Finished steps are kept and nothing half-written was left; a rerun resumes.")
        except ZsfsError as error:
            say_error(str(error))
            raise SystemExit(1) from None


def _run_datasets(datasets: tuple[str, ...], data_root: Path, work: Path, device: str, images: Path | None,
                  extract_args: str, fit_args: str, splits: int, id_classes: int | None, dry_run: bool) -> None:
    from zsfs.cli.group import say_error
    from zsfs.cli.console import console

    failed = []
    if "all" in datasets and len(datasets) > 1:
        raise ZsfsError("'all' runs every dataset: give it alone, or name the datasets")
    # a dataset named twice runs once (it ran twice, the second time all "done")
    names = [name for name, entry in DATASETS.items() if entry.runnable] if datasets == ("all",) else \
        list(dict.fromkeys(datasets))
    chosen = [get_dataset(name) for name in names]
    if images is not None and len(chosen) != 1:
        raise ZsfsError("--images names one prepared folder: give exactly one dataset with it")
    if images is not None and not images.is_dir():  # (here, not in the option's type: main() says its errors)
        raise ZsfsError(f"--images {images} {'is not a folder' if images.exists() else 'does not exist'}; give the "
                        "prepared class-subfolder folder")
    if id_classes is not None and (len(chosen) != 1 or chosen[0].id_classes is None):
        raise ZsfsError("--id-classes sets the OOD protocol of one dataset: give exactly one dataset that has it "
                        f"({', '.join(name for name, entry in DATASETS.items() if entry.runnable and entry.id_classes)})")
    for dataset in chosen:
        _check_protocol(dataset, Layout(work, dataset.name).store, images, id_classes)
    extract_words = extra_arguments("--extract-args", extract_args, {"extract": ["."]})
    takers = {"fit": ["--store", "s.h5"]}
    if any(dataset.id_classes is not None for dataset in chosen):  # ImageNet alone runs no ood-bench
        takers["ood-bench"] = ["--store", "s.h5", "--id-classes", "2"]
    fit_words = extra_arguments("--fit-args", fit_args, takers)
    for dataset in chosen:
        _check_vocabulary(Layout(work, dataset.name).store, fit_words)
    if not dry_run:  # before any download (a review: --device cuda without a GPU, refused once per dataset)
        from zsfs.devices import check_device
        from zsfs.errors import ParameterError

        try:
            check_device(device)
        except ParameterError as error:  # named as the pipeline's option
            raise ZsfsError(error.render({"device": "--device"})) from None
    for dataset in chosen:
        console.rule(dataset.title)
        steps = plan(dataset, data_root, work, device=device, images=images, splits=splits, id_classes=id_classes,
                     extract_args=extract_words, fit_args=fit_words)
        try:
            run_steps(steps, dry_run=dry_run, echo=lambda line: console.print(line, markup=False, soft_wrap=True))
        except ZsfsError as error:  # the other datasets still run (ImageNet, first of all, is downloaded by hand)
            say_error(f"{dataset.name}: {error}")
            failed.append(dataset.name)
    if not dry_run:
        md_path, csv_path = report.write_results(work)
        console.print(f"Results: {md_path} and {csv_path}", markup=False, soft_wrap=True)
    if failed:
        raise ZsfsError(f"{len(failed)} of {len(chosen)} datasets did not finish: {', '.join(failed)}; do what the "
                        "errors above say, then rerun: finished steps are kept")


def _check_vocabulary(store: Path, fit_words: Sequence[str]) -> None:
    """Refuse, before any work, a ``--vocab`` in --fit-args that the built ``store`` does not have
    (walkthrough: it was taken for a change of settings, and the advice to remove the finished
    results came before the fit's own refusal)."""
    vocabulary = _parsed(("fit", "--store", str(store), *fit_words)).params.get("vocabulary")
    found = None if vocabulary is None else _reading_store(
        store, lambda opened: (opened.vocabulary_names(), opened.stored_vocabulary_name(vocabulary)))
    if found is None:  # none asked for, or no store built yet (or unreadable: the steps say why)
        return
    names, as_stored = found
    if as_stored not in names:
        raise ZsfsError(f"--fit-args --vocab {vocabulary}: {store} has no vocabulary {vocabulary!r}; it has: "
                        f"{', '.join(names) or 'none'}")


def _check_protocol(dataset: Dataset, store: Path, images: Path | None, id_classes: int | None) -> None:
    """Refuse, before any work, an OOD protocol that leaves no OOD class (ood-bench would refuse it
    after the extract and the fit): ID classes below the classes of the store's labels, once it is
    built, else of the --images folder, else of the dataset."""
    if dataset.id_classes is None:
        return
    n_id = dataset.id_classes if id_classes is None else id_classes
    labels = _store_labels(store)
    if labels is not None:
        classes = len(set(labels.tolist()))
        held = f"the labels of {store} name {counted(classes, 'class', 'classes')}"
    elif images is not None:
        from zsfs.sources import open_source

        classes = len(open_source(images).classes or [])  # as extract lists them: a folder with no image is no class
        held = f"--images {images} holds {counted(classes, 'class folder')} with images"
    else:
        classes = dataset.n_classes
        held = f"{dataset.title} has {counted(classes, 'class', 'classes')}"
    if n_id >= classes:
        given = "--id-classes" if id_classes is not None else f"the paper's protocol for {dataset.name}"
        raise ZsfsError(f"{given} takes {n_id} ID classes, and {held}: the OOD protocol needs at least one OOD "
                        + (f"class; pass --id-classes N with N below {classes}" if classes > 1 else "class"))


if __name__ == "__main__":
    from zsfs.cli.stops import ignore_late_stops

    try:
        main()
    finally:
        ignore_late_stops()
