"""List files of images, read as written: ``.txt`` a path per line, ``.csv`` (or tab-separated ``.tsv``)
a ``path`` column (quoted fields may hold commas, tabs and newlines) and optionally a ``label`` column; paths relative
to the list's folder. Text is UTF-8 (names that are not are kept byte for byte); UTF-16 and NUL
bytes are refused with the fix (``refuse_nul_bytes``). Class files (``--classes``), read the same
way: ``read_class_file``."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from zsfs.errors import ZsfsError, check_path
from zsfs.names import (abbreviated, check_class_names, counted, home_expanded, refuse_unseen_characters,
                        repeated, utf8_texts, visible)


def refuse_nul_bytes(data: bytes, what: str) -> None:
    """A ``ZsfsError`` for text holding a NUL byte, which no file name, label or class name can
    hold (nor the store's strings): UTF-16 text above all, which Windows PowerShell writes."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ZsfsError(f"{what} is UTF-16 text (as Windows PowerShell's '>' writes it, or Notepad's 'Unicode' or "
                        "'UTF-16' encoding); save it as UTF-8")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise ZsfsError(f"{what} holds a NUL byte (line {line}), which no file name, label or class name can "
                        "hold; is it UTF-16 text? save it as UTF-8")


def read_list_file(list_file: Path, *, labels: bool = True,
                   keep_absolute: bool = False) -> tuple[list[str], list[str] | None, str | None]:
    """The image paths (relative to the list's folder where they can be, unless ``keep_absolute``:
    absolute ones as written) and labels (None without a label column, or with ``labels=False``: not
    read) a list file names, and the refusal due when labels are not UTF-8 text (None when they
    are: see :func:`_parse_table`)."""
    root = list_file.parent
    try:
        data = list_file.read_bytes()
    except OSError as error:
        raise ZsfsError(f"cannot read the list file {list_file}: {error}") from None
    refuse_nul_bytes(data, f"the list file {list_file}")
    # Names that are not UTF-8 are kept as bytes (surrogates), like the names of a folder scan;
    # decoded from bytes, so no newline translation: a name may hold "\r" or U+2028.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    not_text = None
    if list_file.suffix.lower() in TABLE_SEPARATORS:
        raw_paths, labels, not_text = _parse_table(text, list_file, TABLE_SEPARATORS[list_file.suffix.lower()], labels)
    else:  # a path per "\n" or "\r\n" line, verbatim (spaces are part of names); blank and "#" lines skipped
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        raw_paths = [line for line in lines if line.strip() and not line.startswith("#")]
        labels = None
    if not raw_paths:
        raise ZsfsError(f"the list file {list_file} lists no images.")
    return [_relative_when_possible(p, None if keep_absolute else root) for p in raw_paths], labels, not_text


QUOTE_NOT_CLOSED = "a quote is not closed (a field that starts with \" ends with \"; a quote inside it is written \"\")"

TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t"}
"""The list files with a header line (``path`` and optionally ``label``), and their field separators."""
_QUOTED = {",": '"a,b.jpg"', "\t": '"a<tab>b.jpg"'}  # a quoted field holding the separator, as an error shows it


def csv_error_text(error: csv.Error, separator: str) -> str:
    """What a strict csv reader's error means, and the fix (the record's line is the caller's to say)."""
    unclosed = "end of data" in str(error) or "field larger" in str(error)
    said = QUOTE_NOT_CLOSED if unclosed else \
        f"{visible(str(error))} (nothing may stand between a closing quote and the next separator)"
    return f"{said}; quote a whole field ({_QUOTED[separator]}) or none of it"


def _parse_table(text: str, list_file: Path, separator: str,
                 with_labels: bool) -> tuple[list[str], list[str] | None, str | None]:
    """Paths verbatim (a quoted field may hold separators, newlines, spaces), labels stripped.

    Read strictly: an unclosed quote is an error naming its line, not a field swallowing every line
    after it (review: 199 rows became one path, "file not found"; a large list stopped on csv's field
    size limit), and so is anything between a closing quote and the next separator ('"cat" ,',
    '"my "best" 1.jpg"'), which a lenient read turned into other names without a word (review: a
    lenient re-read of such a table let a later open quote swallow rows again)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator, strict=True)
    complete = 0  # the last line of the last whole record read: a failing record begins after it
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in columns:
            raise ZsfsError(
                f"{list_file} has no 'path' column (found: {', '.join(columns) or 'nothing'}); "
                "the first line must be a header such as 'path,label'."
            )
        named_twice = repeated(column for column in columns if column)
        if named_twice:  # DictReader would keep the last column of a name: the other is read as nothing
            raise ZsfsError(f"{list_file}: the header names the column {named_twice[0]!r} twice; name each column "
                            "once.")
        reader.fieldnames = columns
        rows, pathless, overlong = [], [], []  # line numbers: rows with something but no path, with too many fields
        complete = reader.line_num
        for row in reader:
            extra = row.pop(None, [])  # the fields past the header's, as a list
            if any(text.strip() for text in extra):
                overlong.append((reader.line_num, len(columns) + len(extra)))
            if (row.get("path") or "").strip():
                rows.append(row)
            elif any((value or "").strip() for value in [*row.values(), *extra]):
                pathless.append(reader.line_num)
            complete = reader.line_num
    except csv.Error as error:
        raise ZsfsError(f"{list_file}: line {complete + 1}: {csv_error_text(error, separator)}") from None
    if pathless:  # a spreadsheet's missing file name: dropping the row would lose an image unseen
        raise ZsfsError(
            f"{list_file}: {counted(len(pathless), 'row')} with an empty path (first: line {pathless[0]}); "
            "give every row a path or delete the row."
        )
    if overlong:  # "a,b.jpg,cat" under "path,label": an unquoted comma in a name shifts every field after it
        line, fields = overlong[0]
        holding = "a comma (\"a,b.jpg\")" if separator == "," else "a tab"
        raise ZsfsError(
            f"{list_file}: {counted(len(overlong), 'row')} with more fields than the header's {len(columns)} "
            f"(first: line {line}, {fields} fields); quote a path holding {holding}, as spreadsheets write it."
        )
    paths = [row["path"] for row in rows]
    if "label" not in columns or not with_labels:
        return paths, None, None
    given = [(row.get("label") or "").strip() for row in rows]
    labels = utf8_texts(given)  # undecodable bytes written \xNN, as a legacy folder name's
    not_text = None
    if labels != given:  # a path's bytes may be any, as a file name's; a label is a class name CLIP reads
        wrong = [i for i, (label, text) in enumerate(zip(given, labels)) if label != text]
        not_text = (f"{list_file}: {counted(len(wrong), 'label')} {'is' if len(wrong) == 1 else 'are'} not UTF-8 text "
                    f"(first: '{visible(given[wrong[0]])}', for {visible(paths[wrong[0]])}); the list was saved in "
                    "another encoding (Windows-1252 or Latin-1, as spreadsheets may): save it as UTF-8.")
    missing = [i for i, label in enumerate(labels) if not label]
    if missing:
        raise ZsfsError(
            f"{list_file}: {counted(len(missing), 'row')} with an empty label (first: {paths[missing[0]]}); "
            "give every row a label or drop the label column."
        )
    return paths, labels, not_text


def _relative_when_possible(path: str, root: Path | None) -> str:
    """``path`` as ``Path(path).as_posix()`` gives it, relative to ``root`` when under it; with no
    ``root``, an absolute path exactly as written (predictions are joined back to their list by it)."""
    if root is None and path.startswith("/"):
        return path
    if not path.startswith(("/", "~", "./")) and not path.endswith(("/", "/.")) and "//" not in path \
            and "/./" not in path and path != ".":
        return path  # already what Path(path).as_posix() gives: skips a Path per line (17 s at 1.28M)
    candidate = Path(home_expanded(path))  # "~name/...": a relative name, as written
    if not candidate.is_absolute() or root is None:
        return candidate.as_posix()
    try:
        return candidate.relative_to(root).as_posix()
    except ValueError:
        return candidate.as_posix()


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line; blank lines and ``#`` comment lines ignored (as in
    list files), duplicates refused."""
    path = Path(check_path("classes", path))
    if not path.exists() or path.is_dir():  # a pipe (--classes <(...)) is no regular file, but reads as one
        raise ZsfsError(f"class file {path} {'is a folder' if path.is_dir() else 'does not exist'}; pass a text "
                        "file with one class name per line")
    try:
        data = path.read_bytes()
        refuse_nul_bytes(data, f"class file {path}")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ZsfsError(f"class file {path} is not UTF-8 text ({_first_undecodable_line(data, error.start)}); it was "
                        "saved in another encoding (Windows-1252 or Latin-1, as Notepad or a spreadsheet may): save it "
                        "as UTF-8") from None
    except OSError as error:
        raise ZsfsError(f"cannot read the class file {path}: {error.strerror}") from None
    # Lines end at "\n", "\r\n" or "\r" (universal newlines); splitlines() would also end one at a form
    # feed or U+2028 inside it. A BOM opening a later line is one of a file concatenated with another
    # (cat a.txt b.txt): dropped.
    lines = [(number, line.lstrip("\ufeff").strip())
             for number, line in enumerate(re.split("\r\n|\r|\n", text), start=1)]
    named = [(number, name) for number, name in lines if name and not name.startswith("#")]
    refuse_unseen_characters([name for _, name in named], f"class file {path}", [number for number, _ in named])
    if not named:
        # "#1 grade", "#2 grade": each a comment, and "put one class name per line" said what was done
        why = ": each of its lines that is not blank starts with '#', which marks a comment (a class name cannot " \
              "start with it)" if any(line.startswith("#") for _, line in lines) else ""
        raise ZsfsError(f"class file {path} lists no class names{why}; put one class name per line")
    return check_class_names([name for _, name in named], f"class file {path}", lines=[number for number, _ in named])


def _first_undecodable_line(data: bytes, start: int) -> str:
    """``"line N: 'caf\\xe9'"``: where in a class file the byte at ``start`` that is not UTF-8 is, as a
    person editing it looks for it (a byte offset in a 2,000-line file is not found by hand)."""
    number = len(re.split(rb"\r\n|\r|\n", data[:start]))  # lines end as read_class_file ends them
    line = re.split(r"\r\n|\r|\n", data.decode("utf-8-sig", "surrogateescape"))[number - 1]
    return f"line {number}: '{visible(abbreviated(line.strip(), 60))}'"
