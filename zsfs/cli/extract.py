"""``zsfs extract`` (images -> store) and ``zsfs text`` (class names -> a store vocabulary)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from zsfs.cli.console import console, image_progress, resuming_line, shown
from zsfs.cli.group import OVERWRITING
from zsfs.cli.notes import note_a_borrowed_shards_folder, note_classes_cut_by_clip, note_precision_off_cuda
from zsfs.cli.options import (MAX_PIXELS_OPTION, GivenPath, class_file_check, model_precision_option,
                              noting_made_folders, usage_check)
from zsfs.devices import DEVICES
from zsfs.names import as_argument, counted, pairs_text, some_names, spelled_like
from zsfs.store.schema import DEFAULT_SHARD_SIZE, EMBEDDING_DTYPES  # a constants module: cheap to import


@click.command(short_help="Embed every image of SOURCE into a feature store (stage 1).")
@click.argument("source", type=GivenPath(path_type=Path))
@click.option("--out", type=GivenPath(dir_okay=False, path_type=Path, file_in_folder="STORE.h5"),
              help="Store to write [default: SOURCE's name + .h5 in the current folder].")
@click.option("--clip-model", default="ViT-B-32", show_default=True,
              help="open_clip architecture, or a path to an open_clip model-config JSON (also a hub "
                   "repository's open_clip_config.json).")
@click.option("--clip-weights", default="openai", show_default=True,
              help="open_clip pretrained tag, a local checkpoint file, or 'random'.")
@click.option("--backbone", default="vit_giant_patch14_clip_224.laion2b", show_default=True,
              help="timm model giving the features the classifier trains on.")
@click.option("--backbone-weights", default="default", show_default=True,
              help="'default' (the weights the timm name implies), a local file, or 'random'.")
@click.option("--classes", "classes_file", type=GivenPath(dir_okay=False, path_type=Path),
              callback=class_file_check,
              help="File of class names, one per line ('#' lines are comments; from a shell, <(printf '%s\\n' cat "
                   "dog) passes names without a file) [default: the source's labels: its subfolder names, or a .csv "
                   "list's label column].")
@click.option("--vocab", "--vocab-name", "vocab_name", default="default", show_default=True,
              callback=usage_check("zsfs.store.extras", "check_vocabulary_name"),
              help="Name of the vocabulary written (zsfs fit --vocab NAME).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the models run (a clear error when torch sees no such device).")
@model_precision_option("the models")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per forward pass of the models: larger keeps a GPU busier and takes more memory.")
@click.option("--workers", type=click.IntRange(min=0),
              help="Decoding processes [default: every core with a GPU; on CPU a quarter of the cores, "
                   "at least 1, at a lower priority than the models, which get every core, or "
                   "OMP_NUM_THREADS threads where it is set].")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Images per shard file (the unit of resuming).")
@click.option("--dtype", type=click.Choice(EMBEDDING_DTYPES), default="float16", show_default=True,
              help="Stored dtype of the embeddings.")
@MAX_PIXELS_OPTION
@click.option("--overwrite", is_flag=True, help="Build the store at OUT anew from the start, whatever it holds (its "
                                                "files are removed first: a failed rebuild does not bring it back). "
                                                "Not needed to resume or repair: a rerun without it does that, and "
                                                "refuses a store built from other models or data.")
@click.option("--ray", "ray", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Compute the shards on a Ray cluster: ADDRESS, or RAY_ADDRESS, or the cluster this machine "
                   "joined; 'local' starts Ray here. Needs Ray: pip install -e \".[ray]\" in the zsfs checkout "
                   "(docs/scale.md).")
@click.option("--ray-workers", type=click.IntRange(min=1),
              help="Ray workers, each holding both models [default: one per GPU with --device cuda, "
                   "else one per node].")
@noting_made_folders("out")
def extract(source: Path, out: Path | None, classes_file: Path | None, **options) -> None:
    """Embed every image of SOURCE into a feature store. SOURCE: an image folder (class subfolders
    give labels), a .txt list (one path per line; lines starting with '#' are comments) or .csv list
    (a header with a 'path' column and optionally 'label'; .tsv: the same, tab-separated), their relative paths
    relative to the
    list's folder, or webdataset tar shards (a folder of .tar files, or a pattern
    'laion/{00000..00099}.tar'), read in place; their images are recorded as <tar>::<member>.

    Each image is decoded once and fed to CLIP and to the backbone. Bad files are skipped and
    recorded. An interrupted run resumes when the same command is run again; run again on a
    finished store, it loads no model (a new --vocab-name loads CLIP alone, or with --ray
    goes to a worker).

    \b
    Example:
      zsfs extract imagenet/ --device cuda --precision bf16      # -> imagenet.h5
      zsfs extract photos.csv --out photos.h5 --classes classes.txt
      zsfs extract 'laion/{00000..00099}.tar' --device cuda --ray   # on the Ray cluster
      zsfs extract photos/ --ray local --ray-workers 2             # Ray on this machine
    """
    from zsfs.crashes import CRASHING_FILE
    from zsfs.extract import extract as run_extract

    context = click.get_current_context()
    device = options["device"]
    if options["ray"] is None:  # (Ray's workers may have GPUs)
        note_precision_off_cuda(options["precision"], device, "the models compute")
    else:
        from zsfs.ray_cluster import ray_messages_to_stderr

        ray_messages_to_stderr()
    loading = console.status("Scanning the source and loading the models..." if options["ray"] is None else
                             "Scanning the source and loading the models on the Ray workers (a worker starts when "
                             "the cluster has its CPUs or GPU free: other jobs may hold them)...", logged=True)
    with image_progress("embedding") as (start_bar, on_batch):

        def on_start(total: int) -> None:  # models are loaded: from here on, images flow
            # --overwrite has removed the old store by now (not while the models load): a stop from
            # here on loses what this run writes unless its rerun drops the flag
            context.meta[OVERWRITING] = options["overwrite"]
            loading.stop()
            start_bar(total)

        def on_resume(kept: int, n_shards: int) -> None:  # said before the work: the summary alone came last
            loading.stop()
            console.print(resuming_line(kept, n_shards, "embedded"))

        loading.start()
        try:
            summary = run_extract(source, out, classes=classes_file, on_start=on_start, on_batch=on_batch,
                                  on_resume=on_resume, **options)
        finally:
            loading.stop()
    console.print(_summary_table(summary))
    note_classes_cut_by_clip(summary.classes_cut_by_clip)
    crashing = [path for path, reason in summary.set_aside.items() if reason.startswith(CRASHING_FILE)]
    hanging = [path for path, reason in summary.set_aside.items() if not reason.startswith(CRASHING_FILE)]
    for paths, what in ((crashing, "crashed the image decoder"), (hanging, "hung the image decoder")):
        if paths:  # the decoding process's own crash report is on the terminal above: say it was handled
            console.print(f"Note: {counted(len(paths), 'file')} {what} and {'was' if len(paths) == 1 else 'were'} "
                          f"set aside (skipped): {some_names([shown(path) for path in paths], 5, with_count=False)}.")
    outside = summary.labels_not_classes
    if outside:  # --classes left some folders (labels) out: said now, not first by a fit's metrics
        images = sum(outside.values())
        hint = spelled_like(summary.classes, "class")  # a 'Cat' folder for the class 'cat': said as the fit says it
        listed = some_names([f"{label!r} {count:,}{hint(label)}" for label, count in outside.items()], 5,
                            with_count=False)
        one = images == 1
        console.print(f"Note: {counted(images, 'image')} {'has' if one else 'have'} a label that is no class of "
                      f"vocabulary {shown(repr(summary.vocabulary))}: {shown(listed)}; a fit gives "
                      f"{'it' if one else 'each of them'} one of the listed classes and counts {'it' if one else 'them'} "
                      "as out of distribution.", soft_wrap=True)
    emptied = summary.classes_without_images
    if emptied:  # its folder's files were all skipped: the class is listed, and no image of the store is of it
        one = len(emptied) == 1
        console.print(f"Note: {counted(len(emptied), 'class', 'classes')} of vocabulary "
                      f"{shown(repr(summary.vocabulary))} {'has' if one else 'have'} no image in the store: every file "
                      f"labelled with {'it' if one else 'them'} was skipped "
                      f"({shown(some_names([repr(name) for name in emptied], 5, with_count=False))}); a fit still gives "
                      f"{'it' if one else 'them'} images unless it reports {'it' if one else 'them'} absent "
                      "(`zsfs info --skipped` says why; --classes chooses the list).", soft_wrap=True)
    if summary.nested_classes:  # train/cat, val/cat, ...: the classes read are train and val
        folders, inside = (some_names(names, 4, with_count=False, separator=", ") for names in summary.nested_classes)
        console.print(f"Note: the labels are the first-level folders ({shown(folders)}), and each of them holds the "
                      f"same subfolders ({shown(inside)}); if those are the classes, extract each folder on its own "
                      f"(zsfs extract {shown(as_argument(source / summary.nested_classes[0][0]))}), or list the "
                      "images in a .csv with a label column (path,label).", soft_wrap=True)
    move = "move the loose images into class subfolders" if summary.no_labels_reason else ""
    if summary.vocabulary is None:
        why = f"{summary.no_labels_reason}; {move} or pass --classes" if move else "no class subfolders, no --classes"
        console.print(f"No class names known ({shown(why)}): no vocabulary written. "
                      f"Add one with: zsfs text {shown(summary.output)} --classes FILE --vocab NAME")
    elif move:  # --classes named the classes, but evaluation (metrics.json, ood-bench) has no true labels
        console.print(f"Note: the store holds no labels ({shown(summary.no_labels_reason)}); to evaluate against "
                      f"the folders, {move} and extract again with --overwrite.")


@click.command(short_help="Add a class vocabulary to a store.")
@click.argument("store", type=GivenPath(path_type=Path))
@click.option("--classes", "classes_file", required=True, type=GivenPath(dir_okay=False, path_type=Path),
              callback=class_file_check,
              help="File of class names, one per line ('#' lines are comments; from a shell, <(printf '%s\\n' cat "
                   "dog) passes names without a file).")
@click.option("--vocab", "--name", "name", default="default", show_default=True,
              callback=usage_check("zsfs.store.extras", "check_vocabulary_name"),
              help="Name of the vocabulary (zsfs fit --vocab NAME); 'default' is the name extract gives its own.")
@click.option("--clip-weights", type=GivenPath(dir_okay=False, path_type=Path),
              help="The store's CLIP weights file at a new location (its sha256 must match the record).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the text encoder runs.")
@click.option("--overwrite", is_flag=True, help="Replace a vocabulary of the same name.")
def text(store: Path, classes_file: Path, name: str, clip_weights: Path | None, device: str, overwrite: bool) -> None:
    """Add a class vocabulary to STORE, embedded with the CLIP model the store was built with.

    Only the CLIP model is loaded; image embeddings are not touched.

    \b
    Example:
      zsfs text imagenet.h5 --classes animals.txt --vocab animals
    """
    from zsfs.vocabulary import add_vocabulary

    loading = console.status("Loading the CLIP model...", logged=True)
    with image_progress("class names", unit="classes", one="class") as (start_bar, on_classes):

        embedded, cut = [], []

        def on_start(total: int) -> None:
            embedded.append(total)
            loading.stop()
            if total:
                start_bar(total)

        loading.start()
        try:
            classes = add_vocabulary(store, classes_file, name, clip_weights=clip_weights, device=device,
                                     overwrite=overwrite, on_start=on_start, on_classes=on_classes,
                                     on_cut=cut.extend)
        finally:
            loading.stop()
    note_classes_cut_by_clip(cut)  # after the bar, which a note printed under it would break
    said = "is already in" if embedded == [0] else "written to"  # a rerun: nothing to write
    console.print(f"Vocabulary [bold]{shown(name)}[/] ({counted(len(classes), 'class', 'classes')}) {said} "
                  f"{shown(store)}", soft_wrap=True)  # one line in a log too (80 columns put the store on the next)
    note_a_borrowed_shards_folder(store)


def _summary_table(summary) -> Table:
    table = Table(title="zsfs extract", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths are shown whole
    table.add_row("images in the store", f"{summary.n_images:,}")  # a rerun's too, not only this run's
    table.add_row("skipped", f"{summary.n_skipped:,}" + (" (`zsfs info --skipped` lists them)" if summary.n_skipped else ""))
    for reason, count in sorted(summary.skipped_reasons.items(), key=lambda item: -item[1]):
        table.add_row(shown(f"  {reason}"), f"{count:,}")
    if summary.repeated_paths:
        table.add_row("paths listed twice or more", shown(some_names(summary.repeated_paths, 10)))  # each embedded
    if summary.classes_read_as_one:
        table.add_row("class names CLIP reads as one (one text embedding: `zsfs text STORE --classes FILE "
                      "--vocab NAME` adds a list with each class once)",
                      shown(pairs_text(summary.classes_read_as_one, 10)))
    if summary.empty_tars:
        table.add_row("tars with no image", shown(some_names(summary.empty_tars, 10)))
    if summary.compressed_tars:
        table.add_row("compressed tars (not read: decompress them)", shown(some_names(summary.compressed_tars, 10)))
    if summary.unread_tars:  # beside loose images or subfolders: see zsfs.tars.TAR_FOLDER
        table.add_row("tar files not read (the folder holds images: name the tars to read them)",
                      shown(some_names(summary.unread_tars, 10)))
    if summary.tar_links:
        table.add_row("tar links, sparse files (not read)", shown(some_names(summary.tar_links, 10)))
    if summary.unread_formats:
        from zsfs.folders import unread_formats_text

        table.add_row("images not read", unread_formats_text(summary.unread_formats))
    table.add_row("shards written / reused", f"{summary.shards_written} / {summary.shards_reused}")
    if summary.shards_repaired:  # checked against the master's checksums or unreadable: a user may want to know why
        table.add_row("shards rewritten (damaged or cut short)", shown(some_names(summary.shards_repaired, 10)))
    if summary.shards_redone:
        table.add_row("shards redone (worker lost)", f"{summary.shards_redone}")
    if summary.images_processed:  # a rerun over finished shards embeds nothing: no rate to give
        table.add_row("time", f"{summary.seconds:,.1f} s ({summary.embedding_seconds:,.1f} s embedding)")
        table.add_row("images/s (embedding)", f"{summary.images_per_second:,.1f}")
    else:
        table.add_row("time", f"{summary.seconds:,.1f} s")
    table.add_row("vocabulary",
                  shown(f"{summary.vocabulary} ({counted(len(summary.classes), 'class', 'classes')})")
                  if summary.vocabulary else "none")
    table.add_row("output", shown(summary.output))
    return table


COMMANDS = [extract, text]
