"""A fitted run + new images -> class, confidence and OOD score: the deployable end.

Only the backbone is needed: the classifier reads backbone features; the OOD scores are the
fit's ``ood_distance`` (the backbone half of its ``ood_score``: MCM needs CLIP, which predict does
not run) and the paper's logit scores (thresholds calibrated on the run's seeds).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsfs.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, unread_format_reason
from zsfs.errors import (ParameterError, ZsfsError, check_at_least, check_callbacks, check_choice, check_path,
                         shown_value)
from zsfs.devices import MODEL_PRECISIONS, check_device
from zsfs.embedding import embedded_images
from zsfs.shard_embedder import DEFAULT_BATCH_SIZE, NO_FEATURES, position_batches
from zsfs.models import load_backbone_from_record
from zsfs.names import check_utf8_file_names, repeated, utf8_texts
from zsfs.outputs import TABLE_FORMATS, check_output_names, replacing_file, suffix_rule, write_table
from zsfs.runs import FittedRun, load_run, new_image_predictions, refuse_run_file
from zsfs.sources import LIST_SUFFIXES, TAR_MEMBER_IN_LIST, ImageSource, NoImagesError, open_source
from zsfs.store.rows import usable_rows
from zsfs.tars import (TAR_SUFFIX, TarMembers, UnlistableTar, compressed_tar_error, expand_braces, is_compressed_tar,
                       locate_members, merged_members, named_tars, split_member_path, tar_shards_in)
from zsfs.weights import refuse_imported, relocated

if TYPE_CHECKING:
    import polars as pl


TAR_LINK = "a link or sparse file inside the tar (not read: zsfs reads the plain files of a tar)"
TAR_BESIDE_IMAGES = "a tar in a folder of images (not read: pass the tar itself to read its images)"
LIST_AS_IMAGE = "a list file, not an image (to classify the images it lists: zsfs predict --list FILE; lists=[FILE])"


def image_inputs(inputs: Sequence[str | Path] | str | Path, lists: Sequence[str | Path] = ()) -> ImageSource:
    """One listing of image files, folders, tar shards and tar members (``shard.tar::key.jpg``, as
    a store records them), then of the images the ``.txt`` / ``.csv`` ``lists`` name; folders,
    tars and lists are read as by ``zsfs extract``, except that a list's tar members are read
    (extract skips them). One path may be given alone. A ``.txt`` or
    ``.csv`` among ``inputs`` gets a row saying it is a list (``photos/*`` may hold a
    ``labels.csv``: read as a list, it would stop the command). ``repeated_paths``: the files
    given more than once, by any spelling (each keeps its row).

    Paths are kept as the user wrote them (relative to the working directory), so the
    output names each image the way it was asked for.
    """
    if isinstance(inputs, (str, os.PathLike)):  # one path, not its characters
        inputs = [inputs]
    if isinstance(inputs, (bytes, bytearray)) or not isinstance(inputs, Iterable):  # bytes: read as numbers
        raise ParameterError(f"{{images}} must be a path or a list of paths, not {shown_value(inputs)}")
    inputs = [check_path("images", item) for item in inputs]
    if isinstance(lists, (str, os.PathLike)):
        lists = [lists]
    lists = [check_path("lists", item) for item in lists]
    if not inputs and not lists:
        raise ZsfsError("no images given; pass image files and/or folders (or lists of them)")
    paths: list[str] = []
    unreadable: dict[str, str] = {}
    listed: list[tuple[np.ndarray, TarMembers]] = []  # rows of listings with tars, and their byte ranges
    named_members: list[int] = []  # rows given as ``shard.tar::member``
    listed_members: list[int] = []  # rows a list names so
    empty_of_pattern: dict[str, set[Path]] = {}  # a pattern's tars that hold no image (a pattern given twice: once)
    for given, pattern in _tar_patterns_expanded(inputs):
        if isinstance(given, str):  # a tar member
            named_members.append(len(paths))
            paths.append(given)
        elif given.is_dir() or (given.is_file() and given.suffix.lower() == TAR_SUFFIX):
            try:
                listing = open_source(given)
            except NoImagesError:
                if pattern is None:
                    raise
                empty_of_pattern.setdefault(pattern, set()).add(given)  # as extract lists a pattern: no row
                continue
            except UnlistableTar as error:  # one still being copied in: its row says so, the other images go on
                paths.append(str(given))
                unreadable[str(given)] = error.reason
                continue
            base = given if given.is_dir() else given.parent
            base = "" if str(base) == "." else base  # "a.tar" lists "a.tar::x.jpg", not "./a.tar::x.jpg"
            if listing.members is not None:
                listed.append((np.arange(len(paths), len(paths) + len(listing.paths)), listing.members))
            paths += [os.path.join(base, path) for path in listing.paths]  # keeps an unreadable folder's '/'
            unreadable.update({os.path.join(base, path): reason for path, reason in listing.unreadable.items()})
            links = [os.path.join(base, path) for path in listing.tar_links]  # a row each, to say why no class
            tars = [os.path.join(base, path) for path in listing.unread_tars]  # see zsfs.tars.TAR_FOLDER
            formats = [os.path.join(base, path) for path in listing.unread_images]  # .dcm, .heic: as named alone
            paths += links + tars + formats
            unreadable.update(dict.fromkeys(links, TAR_LINK))
            unreadable.update(dict.fromkeys(tars, TAR_BESIDE_IMAGES))
            unreadable.update((path, unread_format_reason(path)) for path in formats)
        elif given.is_file() and is_compressed_tar(given.name):
            raise compressed_tar_error(given)
        elif given.is_file() and given.suffix.lower() in LIST_SUFFIXES:
            paths.append(str(given))
            unreadable[str(given)] = LIST_AS_IMAGE
        elif given.exists():  # a file, or a pipe or device: its row says it is not a regular file
            paths.append(str(given))
        else:
            raise ZsfsError(f"{given} does not exist; pass image files and/or folders")
    for pattern, empty in empty_of_pattern.items():
        if empty == set(_tars_of(pattern)):
            open_source(pattern)  # its error, as extract's
    for list_file in lists:
        listed_paths, reasons = _listed_images(Path(list_file))
        # A list's ``shard.tar::member`` line, which extract skips (a store lists files), is read here
        # as given on the command line (predict's own rows are so named): a reason kept by the name
        # would also be the row of that member given through its tar.
        members = {path for path, why in reasons.items() if why == TAR_MEMBER_IN_LIST}
        listed_members += [len(paths) + row for row, path in enumerate(listed_paths) if path in members]
        paths += listed_paths
        unreadable.update((path, why) for path, why in reasons.items() if path not in members)
    if named_members:
        rows = np.asarray(named_members)
        listed.append((rows, locate_members([paths[row] for row in rows], Path.cwd())))
    if listed_members:  # a stale line of a list is its row's reason, as a missing file there is, not the command's end
        rows, missing = np.asarray(listed_members), {}
        listed.append((rows, locate_members([paths[row] for row in rows], Path.cwd(), reasons=missing)))
        unreadable.update((paths[rows[entry]], why) for entry, why in missing.items())
    check_utf8_file_names(paths)
    return ImageSource(location=Path.cwd(), root=Path.cwd(), paths=paths, labels=None, unreadable=unreadable,
                       members=merged_members(len(paths), listed), repeated_paths=_repeated_files(paths, unreadable))


def _repeated_files(paths: list[str], unreadable: dict[str, str]) -> list[str]:
    """The files that more than one of ``paths`` name, by the first name given, each once: by the
    file, not the spelling (``photos/a.jpg`` and ``$PWD/photos/a.jpg``, or a link given by name, are
    one file; two hard links are two names, as a folder lists them); a tar member by its tar's
    absolute path and its name. Rows already ``unreadable`` (a link inside a folder, listed as
    such) are not counted. A folder's real path is found once (realpath per file: 8x the time)."""
    root, folders = Path.cwd(), {}

    def identity(path: str) -> tuple[str, str] | str:
        member = split_member_path(path, root)
        if member is not None and not os.path.exists(path):
            return os.path.abspath(member[0]), member[1]
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or ".")
        whole = os.path.join(folders[folder], name)
        return os.path.realpath(whole) if os.path.islink(whole) else whole

    first: dict[tuple[str, str] | str, str] = {}
    counted_paths = [path for path in paths if path not in unreadable]
    identities = [identity(path) for path in counted_paths]
    for key, path in zip(identities, counted_paths):
        first.setdefault(key, path)
    return [first[key] for key in repeated(identities)]


def _listed_images(list_file: Path) -> tuple[list[str], dict[str, str]]:
    """The paths ``list_file`` names, as ``zsfs extract`` reads them (relative to the list's
    folder: a linked list's own), written from the working folder as the list was given, and
    why those it knows fail will fail (extract's reasons: a tar member's is the caller's to read)."""
    if list_file.suffix.lower() not in LIST_SUFFIXES:
        raise ZsfsError(f"{list_file}: a list of images must end in .txt (one path per line), .csv or .tsv "
                        "(a 'path' column)")
    if not list_file.exists():  # (open_source's message offers folders and tars, which a list cannot be)
        raise ZsfsError(f"the list of images {list_file} does not exist")
    # (a label column in another encoding is no concern here; absolute paths are named as the list names them)
    listing = open_source(list_file, labels=False, keep_absolute=True)
    base = listing.root if list_file.is_symlink() else list_file.parent
    written = [path if str(base) == "." else os.path.join(base, path) for path in listing.paths]
    as_written = dict(zip(listing.paths, written))
    return written, {as_written[path]: why for path, why in listing.unreadable.items()}


def _tar_patterns_expanded(inputs: Iterable[str | Path]) -> Iterator[tuple[Path | str, str | None]]:
    """``(Path(input), None)`` for each of ``inputs``, each brace pattern of tars
    (``shards/{00000..00009}.tar``, as extract reads them) and each folder of tars replaced by
    ``(tar, pattern or folder)`` for the tars it names, each named as the user wrote it (the paths of
    their images are under that name, as a single tar's are; and one tar that cannot be listed is a row,
    not the end of the command); a tar member (``shard.tar::x.jpg``, not a file or folder so named) as
    ``(text, None)``, the text as given: a Path would make a stored member ``a//b.jpg`` into ``a/b.jpg``."""
    for item in inputs:
        if split_member_path(os.fspath(item), Path.cwd()) is not None and not os.path.exists(item):
            yield os.fspath(item), None
            continue
        given = Path(item)
        if given.suffix.lower() == TAR_SUFFIX and not given.exists() and expand_braces(str(given)) != [str(given)]:
            yield from ((tar, str(given)) for tar in named_tars(str(given)))
        elif given.is_dir() and (tars := _tars_of(str(given))):
            yield from ((tar, str(given)) for tar in tars)
        else:  # not a pattern (a missing tar is said as any missing input is)
            yield given, None


def _tars_of(pattern: str) -> list[Path]:
    """The tars of a brace pattern, or of a folder of tars (none: an image folder)."""
    return tar_shards_in(Path(pattern), IMAGE_EXTENSIONS) if os.path.isdir(pattern) else named_tars(pattern)


def predict_images(
    run_dir: "str | Path | FittedRun",
    inputs: Sequence[str | Path] | str | Path = (),
    *,
    lists: Sequence[str | Path] = (),
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    backbone_weights: str | Path | None = None,
    max_pixels: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_repeated: Callable[[list[str]], None] | None = None,
) -> "pl.DataFrame":
    """Classify ``inputs`` with the run's classifier; a polars DataFrame, one row per file.

    Columns: path, predicted, confidence, ood_distance (as the fit's column: the rank of the
    distance to the fit's OOD reference images in the fitted collection, in [0, 1]), ood_paper
    (0, 1/3, 2/3, 1), ood_continuous, error
    (the reason a file could not be read; its other columns are then null).
    ``backbone_weights``: the weights file the store recorded, at a new location (its sha256
    must still match). ``max_pixels``: the decoding budget of one image (as ``zsfs extract``).
    Paths in the frame are UTF-8 text: a name's undecodable bytes appear as ``\\xNN``.
    ``lists``: ``.txt`` / ``.csv`` lists of image paths, read as ``zsfs extract`` reads one.
    ``on_repeated`` hears the files given more than once (by any spelling, or through a link), by
    the name first given (not the frame's text, which can make two names one).
    """
    import polars as pl

    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0), ("max_pixels", max_pixels, 1)):
        check_at_least(name, value, least)
    check_callbacks(on_start=on_start, on_batch=on_batch, on_repeated=on_repeated)
    check_choice("precision", precision, MODEL_PRECISIONS)
    run = run_dir if isinstance(run_dir, FittedRun) else load_run(run_dir)
    if not (np.isfinite(run.classifier.weight).all() and np.isfinite(run.classifier.bias).all()):
        raise ZsfsError(f"the classifier of {run_dir} has non-finite weights (its training diverged); "
                        "refit with a smaller --lr")
    check_device(device)  # before the model loads: an absent GPU is a clear error
    record = relocated(run.classifier.backbone, backbone_weights, "backbone")  # before a long listing, as:
    refuse_imported(record, "backbone")
    source = image_inputs(inputs, lists)  # a missing input (the model takes seconds to load)
    if source.repeated_paths and on_repeated is not None:
        on_repeated(source.repeated_paths)
    backbone = load_backbone_from_record(record, device=device, store=(run.config.get("store") or {}).get("path"))
    if on_start is not None:
        on_start(len(source))

    batches = position_batches(0, len(source), batch_size)
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    n = len(source)
    predicted = np.full(n, None, dtype=object)
    confidence, ood_distance, ood_paper, ood_continuous = (np.full(n, np.nan, np.float32) for _ in range(4))
    errors: dict[int, str] = {}
    # features rounded as the store holds them (float16 by default), as the classifier was fitted on them:
    # an image of the fit then gets the fit's scores, not ones ~1e-3 off (a seed at the flag cut flipped);
    # runs before 2026-12-07 record no dtype
    stored_as = np.dtype((run.config.get("store") or {}).get("dtype") or np.float32)
    with closing(embedded_images(source, (backbone,), batches, range(len(batches)), set_aside={}, device=device,
                                 precision=precision, workers=workers, max_pixels=max_pixels,
                                 on_batch=on_batch)) as embedded:
        for _, batch, outputs in embedded:
            if outputs is not None:  # as extract: NaN or all-zero features (an fp16 overflow) label nothing
                usable = usable_rows(outputs[0])
                good = batch.indices[usable]
                if len(good):  # classified batch by batch: memory stays one batch, however many images
                    predicted[good], confidence[good], ood_distance[good], ood_paper[good], ood_continuous[good] = \
                        run.classifier.classify(outputs[0][usable].astype(stored_as))
                errors.update((int(index), NO_FEATURES) for index in batch.indices[~usable])
            errors.update(batch.failures)

    error = np.full(n, None, dtype=object)
    error[list(errors)] = list(errors.values())
    predictions = new_image_predictions(predicted, confidence, ood_distance, ood_paper, ood_continuous,
                                        distance_threshold=run.classifier.ood_distance_threshold)
    # one constructor, no with_columns/select: those run on polars' pool, lost in a forked child
    return pl.DataFrame([pl.Series("path", utf8_texts(source.paths), dtype=pl.String), *predictions.get_columns(),
                         pl.Series("error", error.tolist(), dtype=pl.String)])


OUTPUT_SUFFIXES = tuple(f".{table_format}" for table_format in TABLE_FORMATS)
"""What :func:`write_predictions` can write, by file suffix."""


def check_predictions_path(path: Path) -> None:
    """Refuse a file :func:`write_predictions` cannot or should not write: another suffix, or a
    fit run's own predictions or config (by its name, and by the name of the file a link names)."""
    target = check_output_names(path, _check_predictions_name)
    if target.suffix.lower() != path.suffix.lower():  # the format goes by the name given
        raise ZsfsError(f"{path} links to {target}; cannot write predictions there: the format goes by the name, "
                        "and that file's name ends in another; give that file's own name")


def _check_predictions_name(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:  # p.CSV is a CSV file too
        raise ZsfsError(f"cannot write predictions to {path.name!r}: {suffix_rule(path, OUTPUT_SUFFIXES)}")
    refuse_run_file(path)


def write_predictions(frame: "pl.DataFrame", path: str | Path) -> Path:
    """Write predictions as .csv, .parquet or .json (chosen by the suffix), whole or not at all."""
    path = Path(path)
    check_predictions_path(path)
    with replacing_file(path) as tmp:
        write_table(frame, tmp, path.suffix.lower().removeprefix("."))
    return path
