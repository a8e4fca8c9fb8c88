"""What ``zsfs import`` reads, checked before anything is written: image embeddings memory-mapped as
row parts (a ``.npy``, a folder of numbered parts, a clip-retrieval output folder), the table of
paths and labels (parquet, CSV, TSV) and the columns taken from it, and text-embedding ``.npz``
vocabularies."""

from __future__ import annotations

import codecs
import csv
import difflib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsfs.devices import check_polars_usable
from zsfs.errors import ZsfsError, one_line
from zsfs.lists import QUOTE_NOT_CLOSED, TABLE_SEPARATORS, csv_error_text
from zsfs.names import check_class_names, counted, described_array, refuse_unseen_characters, repeated
from zsfs.outputs import read_parquet
from zsfs.store.rows import text_embedding_rows

if TYPE_CHECKING:
    import polars as pl


CLIP_RETRIEVAL_EMBEDDINGS = "img_emb"
CLIP_RETRIEVAL_METADATA = "metadata"
PATH_COLUMNS = ("image_path", "path")  # tried in this order when no column is named


class RowParts:
    """Row-wise concatenation of (memory-mapped) 2-d arrays, sliced without copying the rest."""

    def __init__(self, parts: list[np.ndarray], names: list[str], files: list[Path] | None = None) -> None:
        dims = {part.shape[1] for part in parts}
        if len(dims) != 1:
            raise ZsfsError(f"array parts have different widths {sorted(dims)}: {', '.join(names)}")
        self.parts = parts
        self.files = files or []  # each part's file
        self.offsets = np.cumsum([0] + [len(part) for part in parts])
        self.shape = (int(self.offsets[-1]), dims.pop())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise IndexError("RowParts supports contiguous slices only")
        # Only the parts the slice overlaps: a digest takes 4,096 one-row slices, and a clip-retrieval
        # folder can hold thousands of parts (one pass over all of them per slice took 7 s per array).
        first_part = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last_part = int(np.searchsorted(self.offsets, stop, side="left"))
        pieces = [self.parts[i][max(start - self.offsets[i], 0) : min(stop - self.offsets[i], len(self.parts[i]))]
                  for i in range(max(first_part, 0), min(last_part, len(self.parts)))]
        rows = np.concatenate([piece for piece in pieces if len(piece)] or [self.parts[0][:0]])
        # float64 is numpy's default dtype; the store holds float16/32, so wider rows narrow here.
        return _narrowed(rows) if rows.dtype.itemsize > 4 else rows


def _narrowed(rows: np.ndarray) -> np.ndarray:
    """Wide float ``rows`` as float32. A row is a direction (the store normalises it), so a finite,
    non-zero row whose largest value float32 cannot hold (it would read as infinite or zero) is
    divided by that value first; every other row is cast as it is."""
    largest = np.abs(rows).max(axis=1, initial=0.0)
    info = np.finfo(np.float32)
    scale = np.isfinite(largest) & (largest > 0) & ((largest > info.max) | (largest < info.tiny))
    if scale.any():
        rows = rows.copy()
        rows[scale] /= largest[scale, None]
    return rows.astype(np.float32)


def numbered_parts(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` in ``folder`` in natural order: the numbers in their names
    compared as numbers (``emb_2.fp16.npy`` before ``emb_10.fp16.npy``, ``part-3-of-10`` before
    ``part-10-of-10``). Names that differ only in leading zeros (``1`` and ``01``) have no order:
    refused, since the rows of every part would be matched with the wrong paths."""

    def natural(path: Path) -> tuple:
        pieces = re.split(r"(\d+)", path.name)  # text, number, text, ...: odd places hold the numbers
        return tuple(int(piece) if place % 2 else piece for place, piece in enumerate(pieces))

    parts = sorted(folder.glob(pattern), key=lambda path: (natural(path), path.name))
    tied = [(first.name, second.name) for first, second in zip(parts, parts[1:]) if natural(first) == natural(second)]
    if tied:
        raise ZsfsError(f"{folder}: parts {tied[0][0]!r} and {tied[0][1]!r} have the same number, so their order "
                        "is unknown; rename them (one number per part)")
    return parts


def embedding_source(location: Path) -> Path:
    """The folder or file holding the arrays: a clip-retrieval folder points to its ``img_emb/``."""
    if (location / CLIP_RETRIEVAL_EMBEDDINGS).is_dir():
        return location / CLIP_RETRIEVAL_EMBEDDINGS
    return location


NPY_MAGIC = b"\x93NUMPY"
"""The first bytes of every .npy file."""


def check_rows_exist(location: Path, what: str) -> None:
    """A ZsfsError naming ``what`` when its ``.npy`` file or folder is missing."""
    if not Path(location).exists():
        raise ZsfsError(f"{what}: {location} does not exist")


def load_rows(location: Path, what: str) -> RowParts:
    """Memory-map a ``.npy`` file or a folder of ``.npy`` parts as one (N, D) array."""
    location = Path(location)
    check_rows_exist(location, what)
    source = embedding_source(location)
    files = numbered_parts(source, "*.npy") if source.is_dir() else [source]
    if not files:
        raise ZsfsError(f"{what}: no .npy files in {source}")
    parts = []
    for file in files:
        try:
            with open(file, "rb") as handle:
                is_npy = handle.read(len(NPY_MAGIC)) == NPY_MAGIC
            if not is_npy:  # np.load would try it as a pickle and talk about allow_pickle
                raise ZsfsError(f"{what}: {file} is not a .npy file (saved by numpy.save); "
                                "export the embeddings as one, or a folder of numbered ones")
            part = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ZsfsError(f"{what}: cannot read {file} as a numpy array ({error})") from None
        if part.ndim != 2 or not np.issubdtype(part.dtype, np.floating):
            raise ZsfsError(f"{what}: {file} holds {described_array(part)}; "
                            "expected floating-point rows (N, D)")
        parts.append(part)
    try:
        return RowParts(parts, [file.name for file in files], files)
    except ZsfsError as error:  # parts of different widths: which input's (walkthrough)
        raise ZsfsError(f"{what}: {error}") from None


def read_table(location: Path) -> "pl.DataFrame":
    """A polars DataFrame from a parquet/CSV file, a folder of parquet parts or a clip-retrieval folder."""
    import polars as pl

    check_polars_usable(f"read {location}")
    location = Path(location)
    if (location / CLIP_RETRIEVAL_METADATA).is_dir():
        location = location / CLIP_RETRIEVAL_METADATA
    if location.is_dir():
        files = numbered_parts(location, "*.parquet")
        if not files:
            raise ZsfsError(f"no .parquet files in {location}")
    elif location.is_file():
        files = [location]
    else:
        raise ZsfsError(f"paths table {location} does not exist")
    suffix = files[0].suffix.lower()
    separator = TABLE_SEPARATORS.get(suffix)
    try:
        if suffix == ".parquet":
            return pl.concat([read_parquet(file) for file in files], how="diagonal_relaxed")  # parts may add columns
        if separator is not None:
            with open(location, "rb") as handle:  # polars takes only UTF-8 paths; Python files work for any
                table = pl.read_csv(handle, separator=separator, infer_schema=False)
            return _header_checked(table, location, separator)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ZsfsError(f"cannot read paths table {location}: {_table_error(error, location, separator)}") from None
    raise ZsfsError(f"paths table {location}: expected a .parquet, .csv or .tsv (tab-separated) file")


def _header_checked(table: "pl.DataFrame", location: Path, separator: str) -> "pl.DataFrame":
    """``table`` with its column names stripped, as extract's lists take them ("path, label" names
    "label"), refusing a name its header gives twice (polars renames the second "path_duplicated_0":
    read from the header line itself); unnamed columns (a spreadsheet's empty ones) are left alone."""
    with open(location, "rb") as handle:
        first = handle.readline().decode("utf-8-sig", errors="replace")
    header = [name.strip() for name in next(csv.reader([first], delimiter=separator), [])]
    twice = repeated(name for name in header if name)
    if twice:
        raise ZsfsError(f"paths table {location}: the header names the column {twice[0]!r} twice; name each column "
                        "once")
    return table.rename({name: name.strip() for name in table.columns if name.strip() not in ("", name)})


def _table_error(error: Exception, location: Path, separator: str | None) -> str:
    """What is wrong with a CSV polars cannot read, in zsfs' words: its advice names options of its own;
    the line to fix, as extract's lists name it (walkthrough: no line, in a table of a million rows)."""
    text = str(error)
    if separator and ("more fields than defined" in text or "not properly escaped" in text):  # (truncate_ragged_lines)
        found = _first_bad_record(location, separator)
        if found:
            return found
    if "more fields than defined" in text:
        return "a line has more fields than the header (a separator inside a path or label must be quoted: \"a,b.jpg\")"
    if "not properly escaped" in text:
        return f"{QUOTE_NOT_CLOSED}, or a quote stands inside an unquoted field"
    if "empty CSV" in text:
        return "it is empty; it needs a header line (such as path,label) and a line per image"
    if "invalid utf-8" in text:  # the line to fix in a table of a million rows
        line = _first_line_not_utf8(location)
        return f"it is not UTF-8 text{f' (first at line {line})' if line else ''}; save it as UTF-8"
    return one_line(error)


def _first_bad_record(location: Path, separator: str) -> str | None:
    """The first line of a CSV or TSV table with more fields than its header, or that a strict
    reader cannot read, and why; None when there is none. Read a record at a time, only once polars
    has refused the table."""
    with open(location, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter=separator, strict=True)
        complete = 0  # the last line of the last whole record: a failing one begins after it
        try:
            width = len(next(reader, []))
            complete = reader.line_num
            for fields in reader:
                if len(fields) > width:
                    holding = "a comma (\"a,b.jpg\")" if separator == "," else "a tab"
                    return (f"line {reader.line_num} has {len(fields)} fields, the header {width}; quote a path or "
                            f"label holding {holding}, as spreadsheets write it")
                complete = reader.line_num
        except csv.Error as error:
            return f"line {complete + 1}: {csv_error_text(error, separator)}"
    return None


def _first_line_not_utf8(location: Path, block: int = 1 << 20) -> int | None:
    """The number of the first line of ``location`` that is not UTF-8 text, read a block at a time
    (a paths table can be gigabytes); None when every byte decodes."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(location, "rb") as handle:
        while True:
            data = handle.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as bad:  # its start counts from the bytes the decoder still held
                return line + data.count(b"\n", 0, max(bad.start - (len(bad.object) - len(data)), 0))
            if not data:
                return None
            line += data.count(b"\n")


def column(table: "pl.DataFrame", name: str | None, candidates: tuple[str, ...], what: str, *,
           as_written: bool = False) -> list[str]:
    """One string column of ``table``; ``name=None`` takes the first of ``candidates`` present.
    Labels lose spaces at their ends unless ``as_written`` (as zsfs imported them before 2026-12-05)."""
    import polars as pl

    names = [name] if name else [c for c in candidates if c in table.columns][:1]
    if not names or names[0] not in table.columns:
        wanted = repr(name) if name else " or ".join(map(repr, candidates))
        separated = (" (a .csv is read with commas between the columns, a .tsv with tabs)"
                     if len(table.columns) == 1 and any(mark in table.columns[0] for mark in ";\t|") else "")
        raise ZsfsError(f"the paths table has no {what} column {wanted} (columns: {', '.join(map(repr, table.columns))})"
                        f"{separated}; name it with --{what}-column")
    values = table.get_column(names[0])
    if values.dtype.is_nested():  # a list or struct per row: its text would be '["cat"]' or '{"cat"}'
        raise ZsfsError(f"{what} column {names[0]!r} holds {values.dtype} values; it must hold one text value per row")
    missing = values.is_null()
    if values.dtype.is_float():  # pandas writes a missing number as NaN, which would become a class "NaN"
        missing = missing | values.is_nan().fill_null(False)
    try:
        values = values.cast(str)
    except pl.exceptions.PolarsError as error:  # bytes that are not UTF-8 text, ...
        raise ZsfsError(f"{what} column {names[0]!r} cannot be read as text ({one_line(error)}); it must hold "
                        "one UTF-8 text value per row") from None
    if what == "label" and not as_written:  # as extract's lists and class names take them: " cat" is the class "cat"
        values = values.str.strip_chars()
    empty = missing | (values.str.len_bytes() == 0)
    if empty.any():  # no file is named "", and a label "" would be a class without a name
        raise ZsfsError(f"{what} column {names[0]!r} has {counted(int(empty.sum()), 'empty value')} (first: row "
                        f"{int(empty.arg_true()[0])}, counted from 0)")
    with_nul = values.str.contains("\x00", literal=True)
    if with_nul.any():
        raise ZsfsError(f"{what} column {names[0]!r} has {counted(int(with_nul.sum()), 'value')} with a NUL byte "
                        f"(first: row {int(with_nul.arg_true()[0])}, counted from 0), which no file name or label can hold")
    return values.to_list()


@dataclass(frozen=True)
class ImportedVocabulary:
    classes: list[str]
    single: np.ndarray
    ensemble: np.ndarray
    n_templates: int  # 1 when the file had no ensemble (the single prompt stands in); 0 = unknown


VOCABULARY_KEYS = ("classes", "single", "ensemble", "n_templates")
"""The arrays an imported vocabulary's .npz holds (the last two optional); others are not read."""


def load_vocabulary(file: Path, width: int) -> ImportedVocabulary:
    """Text embeddings from an ``.npz`` with ``classes``, ``single`` and optionally ``ensemble``
    (and ``n_templates``), each a row of ``width`` (the CLIP embeddings') per class."""
    if file.is_file() and not zipfile.is_zipfile(file):  # numpy would read it as a pickle
        raise ZsfsError(f"vocabulary file {file} is not an .npz file (numpy.savez(FILE, classes=..., single=...))")
    try:
        with np.load(file, allow_pickle=False) as data:  # only the arrays read: another may be gigabytes of zeros
            names = list(data.files)
            arrays = {key: data[key] for key in VOCABULARY_KEYS if key in names}
    except ValueError as error:
        if "allow_pickle" in str(error):  # never unpickled: a file from elsewhere could run code
            raise ZsfsError(f"vocabulary file {file} holds an object array; save its classes as a string array "
                            "(numpy.array(names, dtype=str)) and its embeddings as float arrays") from None
        raise ZsfsError(f"cannot read vocabulary file {file} ({error})") from None
    except OSError as error:
        raise ZsfsError(f"cannot read vocabulary file {file} ({error})") from None
    absent = [key for key in VOCABULARY_KEYS if key not in arrays]  # "templates" beside "n_templates" is another array
    misspelled = {key: close[0] for key in sorted(set(names) - set(VOCABULARY_KEYS))
                  if (close := difflib.get_close_matches(key.lower(), absent, n=1, cutoff=0.75))}
    if misspelled:  # "ensembel" was ignored: the store then had no ensemble, and every fit used the single prompt
        key, meant = next(iter(misspelled.items()))
        raise ZsfsError(f"vocabulary file {file} has an array {key!r}; did you mean {meant!r}? zsfs reads "
                        f"{', '.join(VOCABULARY_KEYS)}")
    missing = {"classes", "single"} - set(arrays)
    if missing:
        raise ZsfsError(f"vocabulary file {file} lacks {sorted(missing)} (has {sorted(names)})")
    if arrays["classes"].ndim != 1:
        raise ZsfsError(f"vocabulary file {file}: classes has shape {arrays['classes'].shape}; expected one name "
                        "per class, a 1-d array")
    if arrays["classes"].dtype.kind not in "US":  # numbers would become names such as "nan" and "1.0"
        raise ZsfsError(f"vocabulary file {file}: classes holds {arrays['classes'].dtype} values; expected strings "
                        "(numpy.array(names, dtype=str))")
    has_ensemble = "ensemble" in arrays
    n_templates = arrays.get("n_templates", np.int64(0 if has_ensemble else 1))
    if n_templates.ndim != 0 or not np.issubdtype(n_templates.dtype, np.integer) or n_templates < 0:
        raise ZsfsError(f"vocabulary file {file}: n_templates must be one whole number >= 0 (the prompts averaged "
                        f"into ensemble; 0: unknown), not {described_array(n_templates)}"
                        f"{'' if n_templates.ndim else f' ({n_templates})'}")
    if not has_ensemble and n_templates > 1:  # the single rows stand in for it: they are no average
        raise ZsfsError(f"vocabulary file {file}: n_templates is {n_templates} but it holds no ensemble; add the "
                        "ensemble of those prompts, or leave n_templates out")
    # Checked here, before anything is written (with --overwrite the old store stays as it was):
    # numbers, finite and not zero, as the image rows are.
    shape = (len(arrays["classes"]), width)
    single = text_embedding_rows(arrays["single"], f"vocabulary file {file}: single", shape)
    ensemble = text_embedding_rows(arrays["ensemble"], f"vocabulary file {file}: ensemble", shape) if has_ensemble \
        else single
    # as `zsfs text` reads a class file: names read from a CRLF or BOM-marked file keep "\r", "\ufeff"
    # or spaces that no label carries (their fit found no labelled class)
    names = [name.lstrip("\ufeff").strip()
             for name in check_class_names(arrays["classes"].tolist(), f"vocabulary file {file}")]
    refuse_unseen_characters(names, f"vocabulary file {file}")
    return ImportedVocabulary(
        classes=names,
        single=single,
        ensemble=ensemble,
        n_templates=int(n_templates),
    )
