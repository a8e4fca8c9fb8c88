"""``zsfs import`` (a store from precomputed embeddings), ``zsfs info`` (what a store holds) and
``zsfs neighbours`` (store every image's CLIP neighbours for later fits)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import click

from zsfs.cli.console import LOG_SECONDS, console, image_progress, resuming_line, shown
from zsfs.cli.group import OVERWRITING
from zsfs.cli.notes import note_a_borrowed_shards_folder, note_emulated_bf16, note_repeated_paths
from zsfs.cli.options import GivenPath, noting_made_folders, prints_on_stdout
from zsfs.devices import DEVICES, SEARCH_PRECISIONS
from zsfs.errors import ZsfsError
from zsfs.names import abbreviated, counted, escaped_name, json_text, reasons_text, some_names
from zsfs.store import schema


def parse_vocabularies(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Path]:
    """``--vocab NAME=FILE.npz`` options as ``{NAME: FILE}``; a malformed one is a usage error (exit 2)."""
    from zsfs.store.extras import check_vocabulary_name

    vocabularies = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise click.BadParameter(f"expects NAME=FILE.npz, got {value!r}")
        try:
            name = check_vocabulary_name(name)
        except ZsfsError as error:
            raise click.BadParameter(str(error)) from None
        if name in vocabularies:  # also as another Unicode form: the two would print alike
            raise click.BadParameter(f"the name {name!r} is given twice")
        vocabularies[name] = Path(file)
    return vocabularies


@click.command("import", short_help="Build a store from embeddings computed elsewhere.")
@click.argument("out", type=GivenPath(dir_okay=False, path_type=Path, file_in_folder="STORE.h5"))
@click.option("--clip-embeddings", required=True, type=GivenPath(exists=True, path_type=Path),
              help="CLIP image embeddings, an (N, D) float array with finite, non-zero rows: a .npy file, a folder "
                   "of .npy parts, or a clip-retrieval output folder.")
@click.option("--backbone-features", required=True, type=GivenPath(exists=True, path_type=Path),
              help="Backbone features, row-aligned with the CLIP embeddings (same forms, any width).")
@click.option("--paths", type=GivenPath(exists=True, path_type=Path),
              help="Parquet, CSV or TSV (tab-separated) table of image paths, or a folder of Parquet parts, a row "
                   "per embedding row, relative to its folder or absolute (default: the clip-retrieval folder's "
                   "metadata/).")
@click.option("--path-column", default=None, help="Column with the paths [default: image_path, else path].")
@click.option("--label-column", default=None,
              help="Column with ground-truth labels (evaluation only; part of what identifies the store: a rerun "
                   "passes it again).")
@click.option("--vocab", "vocabularies", multiple=True, metavar="NAME=FILE.npz", callback=parse_vocabularies,
              help="Class text embeddings: an .npz with classes (C,) strings, single (C, D) and optionally "
                   "ensemble (C, D) and n_templates; D is the CLIP embeddings' width. Repeatable.")
@click.option("--clip-name", default="imported-clip", show_default=True, help="Name of the CLIP model used.")
@click.option("--backbone-name", default="imported-backbone", show_default=True, help="Name of the backbone used.")
@click.option("--shard-size", default=schema.DEFAULT_SHARD_SIZE, show_default=True, type=click.IntRange(min=1),
              help="Images per shard file.")
@click.option("--dtype", type=click.Choice(schema.EMBEDDING_DTYPES), default="float16", show_default=True,
              help="Stored precision of the embeddings.")
@click.option("--overwrite", is_flag=True, help="Build the store at OUT anew, whatever it holds (its files are removed "
                                                "first). Not needed to resume or repair: a rerun without it does that, "
                                                "and refuses a store built from other inputs.")
@noting_made_folders("out")
def import_command(out: Path, clip_embeddings: Path, backbone_features: Path, paths: Path | None,
                   path_column: str | None, label_column: str | None, vocabularies: dict[str, Path], clip_name: str,
                   backbone_name: str, shard_size: int, dtype: str, overwrite: bool) -> None:
    """Build a store from embeddings computed elsewhere (rows must align across inputs).

    A stopped import is finished by the same command again: its finished shards are kept (it
    must ask for the same --label-column, --shard-size and --dtype). docs/store.md describes
    every input.

    \b
    Example:
      zsfs import imagenet.h5 --clip-embeddings clip.npy --backbone-features vitg.npy \\
          --paths images.parquet --label-column label --vocab imagenet=imagenet_text.npz
      zsfs import laion.h5 --clip-embeddings clip_retrieval_out/ --backbone-features vitg_out/
    """
    from zsfs.importer import import_store

    click.get_current_context().meta[OVERWRITING] = overwrite
    if clip_embeddings.resolve() == backbone_features.resolve():  # most likely a slip in a long command line
        console.print("[yellow]Note:[/] --clip-embeddings and --backbone-features name the same file: the backbone's "
                      "features are then CLIP's own embeddings, and the fit's neighbourhoods and classifier learn "
                      "nothing CLIP did not see (the method expects a separate visual backbone).", soft_wrap=True)
    written, total, logged_at = 0, 0, -math.inf  # in a log: a line at the first shard, then every LOG_SECONDS
    with console.status("Importing embeddings...", logged=True) as status:

        def on_resume(kept: int, n_shards: int) -> None:
            status.stop()
            console.print(resuming_line(kept, n_shards, "written"))
            status.start()

        def on_start(rows: int) -> None:
            nonlocal total
            total = rows

        def progress(rows: int) -> None:
            nonlocal written, logged_at
            written += rows
            last = written >= total
            said = f"{written:,} of {total:,} rows written" + ("; building the index and the master" if last else "")
            if console.animates:  # a spinner; lines in a log (Slurm, nohup), where it looked hung
                status.update(f"Importing embeddings: {said}")
            elif last or time.monotonic() - logged_at >= LOG_SECONDS:  # the index and master take minutes at scale
                status.stop()  # its own lines from here on
                console.print(f"import: {said}...")
                logged_at = time.monotonic()

        summary = import_store(out, clip_embeddings=clip_embeddings, backbone_features=backbone_features,
                              paths=paths, path_column=path_column, label_column=label_column,
                              vocabularies=vocabularies, clip_name=clip_name, backbone_name=backbone_name,
                              shard_size=shard_size, dtype=dtype, overwrite=overwrite, progress=progress,
                              on_start=on_start, on_resume=on_resume)
    from zsfs.store import Store  # not at the top: h5py would load for every command's --help

    with Store(summary.master) as store:
        show_summary(store.summary(), store.how_to_add_a_vocabulary(), store.unwritten_note())
    if not total:  # a rerun of a finished import (walkthrough: only the table said nothing had been done)
        console.print(f"No row written: {shown(summary.master)} held these {summary.n_images:,} rows already.")
    note_repeated_paths(summary.repeated_paths)  # each row an image of its own, as extract keeps a list file's repeats


@click.command("info", short_help="Show what a store holds: images, models, vocabularies.")
@click.argument("store_path", metavar="STORE", type=GivenPath(path_type=Path))
@click.option("--json", "as_json", is_flag=True, callback=prints_on_stdout, help="Print the summary as JSON on stdout.")
@click.option("--verify", is_flag=True,
              help="Also read every byte: shard checksums, every dataset's checksums, vocabularies, graph, index.")
@click.option("--skipped", "list_skipped", is_flag=True, callback=prints_on_stdout,
              help="List the files extract skipped, one 'PATH<tab>REASON' line each on stdout, C0 control "
                   "characters and undecodable bytes as \\xNN, C1 controls and invisible formatting characters as "
                   "\\uNNNN, a backslash as two (with --json: a 'skipped' list, each name as it "
                   "is, or so escaped when it is not UTF-8 text, its JSON pointer in 'escaped').")
def info_command(store_path: Path, as_json: bool, verify: bool, list_skipped: bool) -> None:
    """Show what a store holds: images, models, vocabularies, shards, index.

    Opening a store checks that its shard files are the ones it recorded; --verify checks
    their content too (it reads the whole store).

    \b
    Example:
      zsfs info imagenet.h5
      zsfs info --verify imagenet.h5
      zsfs info --json imagenet.h5 | jq .vocabularies
      zsfs info --skipped imagenet.h5 > skipped.tsv
    """
    from zsfs.store import Store

    with Store(store_path) as store:
        summary, advice, unwritten = store.summary(), store.how_to_add_a_vocabulary(), store.unwritten_note()
        if verify:
            with console.status("verifying every byte of the store", logged=True):
                summary["verified"] = store.verify()
        skipped = store.skipped() if list_skipped else None
    if verify:  # on the console (stderr), before a listing on stdout too
        checked = summary["verified"]
        whose = "its" if checked["shards"] == 1 else "their"
        parts = [counted(checked["shards"], "shard") + (f" against {whose} recorded checksums"
                                                        if checked["shard_checksums"] else "")]
        if checked["master_text_checksum"]:
            parts.append("the master's text against its checksum")
        parts += [counted(checked["vocabularies"], "vocabulary", "vocabularies"),
                  f"{'the' if checked['neighbour_graph'] else 'no'} neighbour graph and the index"]
        console.print(f"Verified: {', '.join(parts)}: {checked['bytes_read']:,} bytes read, no damage found.",
                      markup=False)
    if skipped is not None and not as_json:
        # Names are written visibly (a tab, newline or undecodable byte in a name as \x09, \x0a, \xNN)
        # and a backslash doubled, so that a name holding the text \x0a reads apart from one holding a newline:
        # one line per file, whatever the names hold.
        click.echo("".join(f"{escaped_name(path)}\t{escaped_name(reason)}\n" for path, reason in zip(*skipped)), nl=False)
        return
    if skipped is not None:
        summary["skipped"] = [{"path": path, "reason": reason} for path, reason in zip(*skipped)]
    if as_json:
        escaped: list[str] = []
        written = json_text(summary, escaped=escaped)
        click.echo(json.dumps({**written, "escaped": escaped}, indent=2))
    else:
        show_summary(summary, advice, unwritten)


@click.command("neighbours", short_help="Keep every image's nearest CLIP neighbours in the store.")
@click.argument("store_path", metavar="STORE", type=GivenPath(path_type=Path))
@click.option("--k", type=click.IntRange(min=1, max=100), default=None,  # GRAPH_MAX_K
              help="Neighbours kept per image (fits can then use --neighbours up to k) [default: 16, or every "
                   "other image in a smaller store].")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where to search: on a GPU the search is exact for every store size.")
@click.option("--precision", type=click.Choice(SEARCH_PRECISIONS), default="fp32", show_default=True,
              help="bf16: bf16 scan re-scored in fp32, faster on GPUs and CPUs with AVX512-BF16/AMX, many times "
                   "slower on other CPUs (for stores with an exact index, or on a GPU, the scan is exact; bigger "
                   "stores on CPU use their IVF lists).")
def neighbours_command(store_path: Path, k: int | None, device: str, precision: str) -> None:
    """Find every image's k nearest CLIP neighbours once and keep them in STORE.

    The neighbour search is the only step of `zsfs fit` that depends on the images alone (not
    on the vocabulary, k or the ID/OOD split); with the neighbours stored, every later fit and
    ood-bench split skips it. Searches like fit: exactly on CPU for stores up to 100k images,
    through the store's IVF lists above, exactly on a GPU. A fit uses the graph when it is at
    least as exact as its own search would be. An existing graph is replaced; image data is
    not touched.

    \b
    Example:
      zsfs neighbours imagenet.h5 --device cuda
      zsfs fit --store imagenet.h5 --k 16      # config.json: neighbour_search.source = "store graph"
    """
    import time

    from zsfs.neighbour_graph import add_neighbour_graph

    started = time.perf_counter()
    note_emulated_bf16(precision, device)
    with image_progress("neighbours") as (on_start, on_rows):
        record = add_neighbour_graph(store_path, k=k, device=device, precision=precision, on_start=on_start,
                                     on_rows=on_rows)
    console.print(f"Stored {counted(record['k'], 'neighbour')} per image ({record['search']}, {record['precision']}) "
                  f"in {time.perf_counter() - started:.1f} s.", markup=False)
    note_a_borrowed_shards_folder(store_path)


PREVIEW_CHARACTERS = 60
"""A label or class name in ``zsfs info``'s tables is cut after this many characters (``--json`` has it whole)."""


def _labels_line(counts: dict[str, int]) -> str:
    """``3 labels: cat (10); dog (12); emu (1)``; the first 10 by name, then how many more ("; ":
    names may hold commas)."""
    shown_counts = "; ".join(f"{abbreviated(name, PREVIEW_CHARACTERS)} ({count:,})"
                             for name, count in list(counts.items())[:10])
    more = f"; ... and {len(counts) - 10:,} more (`zsfs info --json` lists all)" if len(counts) > 10 else ""
    return f"{counted(len(counts), 'label')}: {shown_counts}{more}"


def show_summary(summary: dict, vocabulary_advice: str, unwritten_note: str = "") -> None:
    """Readable tables of a store summary, on the console (stderr); ``vocabulary_advice``: how to
    add a vocabulary (:meth:`Store.how_to_add_a_vocabulary`), shown when there is none and none
    is missing for ``unwritten_note`` (:meth:`Store.unwritten_note`)."""
    from rich.table import Table

    # Every value below may hold user text (paths, model names, class names): never read it as markup.
    overview = Table(title=f"zsfs store {shown(summary['path'])}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column(overflow="fold")  # paths are shown whole (a long one was cut to "ph\xf6…")
    index = summary["index"]
    index_text = index["type"] + (f" (nlist {index['nlist']}, nprobe {index['nprobe']})" if "nlist" in index else "")
    reasons = reasons_text(summary["skipped_reasons"].items())
    for key, value in [
        ("images", f"{summary['n_images']:,}"),
        ("skipped", f"{summary['n_skipped']:,}" + (f" ({reasons}; `zsfs info --skipped` lists them)" if reasons else "")),
        ("labels", _labels_line(summary["labels"]) if summary["has_labels"] else "no"),
        ("source", summary["source"]),
        ("stored as", f"{summary['dtype']}, {counted(summary['n_shards'], 'shard')}"),
        ("index", f"{index_text}, {index['metric']}"),
        ("neighbour graph", "cannot be read (see the note below)" if summary.get("unreadable_graph") else
         "none (`zsfs neighbours` adds one)" if summary["neighbour_graph"] is None else
         "{k} per image ({search}, {precision})".format(**summary["neighbour_graph"])),
        ("created", f"{summary['created']} by zsfs {summary['zsfs_version']}"),
    ]:
        overview.add_row(key, shown(value))
    console.print(overview)

    models = Table(title="Models", title_justify="left")
    for name in ("role", "name", "weights", "dim"):
        models.add_column(name, overflow="fold")  # a weights file's path, whole
    for role in ("clip", "backbone"):
        record = summary[role]
        weights = str(record["weights"])
        if weights == "file" and record.get("file"):  # which file: the store needs that one again (text, predict)
            weights = f"file {record['file']}"
        elif record.get("pretrained_tag"):  # timm's "default" names a different tag in another timm version
            weights = f"{weights} ({record['pretrained_tag']})"
        models.add_row(role, shown(str(record["name"])), shown(weights), str(record["dim"]))
    console.print(models)

    if summary["vocabularies"]:
        vocabularies = Table(title="Vocabularies", title_justify="left")
        for name in ("name", "classes", "first classes"):
            vocabularies.add_column(name, overflow="fold")
        for name, classes in summary["vocabularies"].items():
            vocabularies.add_row(shown(name), f"{len(classes):,}",
                                 shown("; ".join(abbreviated(class_name, PREVIEW_CHARACTERS) for class_name in classes[:5])
                                       + ("; ..." if len(classes) > 5 else "")))
        console.print(vocabularies)
    elif not unwritten_note:
        readable = " readable" if summary.get("unreadable_vocabularies") else ""
        console.print(f"No{readable} vocabularies yet: add one with {shown(vocabulary_advice)}.")
    if unwritten_note:
        console.print(f"[yellow]Note:[/] {shown(unwritten_note)}.", soft_wrap=True)
    for why in summary.get("unreadable_vocabularies", {}).values():
        console.print(f"[yellow]Note:[/] a vocabulary file cannot be read: {shown(why)}", soft_wrap=True)
    if summary.get("unreadable_graph"):
        console.print(f"[yellow]Note:[/] the neighbour graph file cannot be read (fits search neighbours "
                      f"themselves): {shown(summary['unreadable_graph'])}", soft_wrap=True)
    leftovers = summary.get("leftover_files", [])
    if leftovers:
        size = sum(os.path.getsize(path) for path in leftovers if os.path.isfile(path))
        console.print(f"[yellow]Note:[/] {counted(len(leftovers), 'temporary file')} ({size / 1e6:,.1f} MB) that a "
                      f"stopped write of this store left, unless a zsfs command on another machine is writing it "
                      f"now: the next command that writes it (a rerun of extract or import, text, neighbours) "
                      f"removes them: {shown(some_names(leftovers, 3))}", soft_wrap=True)
    if summary["n_shards"]:
        note_a_borrowed_shards_folder(Path(summary["path"]), summary["shards_folder"])


COMMANDS = [import_command, info_command, neighbours_command]
