"""Names: file names as the operating system gives them, class names, and the text messages make
of them (counts, lists cut short, long values abbreviated).

File names are bytes, which need not be UTF-8. Python hands undecodable bytes over as lone
surrogates (PEP 383, ``surrogateescape``), so a ``str`` path from ``os.walk`` always reopens its
file. The store keeps each name's exact bytes (:func:`name_bytes`); outputs that must be valid
UTF-8 text (parquet, CSV, JSON, class names derived from folder names) get :func:`utf8_text`,
which writes each undecodable byte as ``\\xNN``.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def name_bytes(name: str | bytes) -> bytes:
    """The exact bytes of a file name (UTF-8 for every name that is valid UTF-8)."""
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def reads_utf8_file_names() -> bool:
    """Whether this Python decodes file names as UTF-8 (a UTF-8 locale, or Python's UTF-8 mode)."""
    return sys.getfilesystemencoding().lower().replace("-", "").replace("_", "") == "utf8"


def check_utf8_file_names(paths: Iterable[str]) -> None:
    """ZsfsError where this Python decodes file names with another encoding than UTF-8 (a Latin-1
    or ASCII locale without Python's UTF-8 mode) and one of ``paths`` is UTF-8 beyond ASCII: a
    folder ``café`` would become the label ``cafÃ©``, and a UTF-8 path read from a list could not
    be opened at all (walkthrough: both went on in silence, the second as "corrupt image data").
    Names in the locale's own encoding (Latin-1 names under a Latin-1 locale) are read as before."""
    from zsfs.errors import ZsfsError

    if reads_utf8_file_names():
        return
    encoding = sys.getfilesystemencoding()
    for path in paths:
        try:
            raw = os.fsencode(path)
        except UnicodeEncodeError:  # read from a list as UTF-8 text, which this encoding cannot write
            raw = path.encode("utf-8", "surrogateescape")
        if raw.isascii():
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:  # the locale's own encoding, or none: read as it is
            continue
        raise ZsfsError(f"this Python reads file names as {encoding}, not UTF-8 (the locale's encoding), and "
                        f"{visible(utf8_text(raw.decode('utf-8')))} is UTF-8: its labels and paths would come out "
                        "wrong. Set PYTHONUTF8=1 (Python's UTF-8 mode) or a UTF-8 locale such as C.UTF-8, and "
                        "rerun; names that are not UTF-8 are kept byte for byte either way")


def utf8_text(name: str) -> str:
    """``name`` as valid UTF-8 text: undecodable bytes written as ``\\xNN`` (lossy, for display)."""
    return name_bytes(name).decode("utf-8", "backslashreplace")


def utf8_texts(names: Iterable[str]) -> list[str]:
    """:func:`utf8_text` of each name; one encode of them all when every name is already UTF-8 text."""
    names = [str(name) for name in names]
    try:
        "".join(names).encode("utf-8")  # fails on a surrogate: only then is a name rewritten
        return names
    except UnicodeEncodeError:
        return [utf8_text(name) for name in names]


_INVISIBLE = ("\x00-\x1f\x7f-\x9f\u00ad\u061c\u115f\u1160\u17b4\u17b5\u200b-\u200f\u2028-\u202e"
              "\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\U0001d173-\U0001d17a")
"""Control characters (C0, DEL, C1: escape sequences, newlines, carriage returns), invisible and
bidirectional formatting characters (a regular expression class's ranges): also the soft hyphen
and the Hangul fillers, which render as nothing (a report review: "cat" and "cat" + U+00AD were two
classes that read alike). Not the variation selectors and tag characters: they belong to emoji
("❤️" is U+2764 U+FE0F, a flag of Scotland holds tags), Japanese and Mongolian names (a diff review)."""
_UNSAFE = re.compile(f"[{_INVISIBLE}\udc80-\udcff]")
"""The invisible characters, and the surrogates that stand for undecodable name bytes."""
_INVISIBLE_ONLY = re.compile(f"[{_INVISIBLE}]")


def looks_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, spaces, or invisible characters only (a zero-width
    space); an undecodable byte of a name (``\\xe9``) shows."""
    return not _INVISIBLE_ONLY.sub("", text).strip()


def visible(text: str) -> str:
    """``text`` with every character of ``_UNSAFE`` written visibly (``\\x1b``, ``\\u202e``, a C1
    control as ``\\u0085``; a name's undecodable byte as ``\\xff``, which no character is written
    as): for terminals and pages that show names from files."""
    return _UNSAFE.sub(_visible, text)


def escaped_name(text: str) -> str:
    """``text`` as a ``--skipped`` line writes it: :func:`visible`, with a backslash doubled, so that
    an escaped ``\\xe9`` reads apart from the text ``\\xe9`` (:func:`unescaped_name` reads it back)."""
    return visible(text.replace("\\", "\\\\"))


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def unescaped_name(text: str) -> str:
    """The name that :func:`escaped_name` wrote as ``text``: ``\\xNN`` of 0x80 and above is the
    undecodable byte (its surrogate), below a control character."""
    def character(match: re.Match) -> str:
        code = match.group(1)
        if code == "\\":
            return code
        value = int(code[1:], 16)
        return chr(0xDC00 + value if code[0] == "x" and value >= 0x80 else value)

    return _ESCAPE.sub(character, text)


def json_text(value: object, pointer: str = "", escaped: list[str] | None = None) -> object:
    """``value`` with every string that is not UTF-8 text (a file name's undecodable byte, held as a
    lone surrogate) escaped as on a ``--skipped`` line (:func:`escaped_name`), since strict JSON
    readers (duckdb, polars, pyarrow) refuse a lone surrogate; the JSON pointer (RFC 6901) of each
    such value, or of the member whose name was escaped, is appended to ``escaped``."""
    if isinstance(value, str):
        if value == utf8_text(value):
            return value
        if escaped is not None:
            escaped.append(pointer)
        return escaped_name(value)
    if isinstance(value, dict):
        written = {}
        for key, item in value.items():
            name = json_text(key)
            at = f"{pointer}/{name.replace('~', '~0').replace('/', '~1')}"
            if escaped is not None and name != key:
                escaped.append(at)
            written[name] = json_text(item, at, escaped)
        return written
    if isinstance(value, list):
        return [json_text(item, f"{pointer}/{i}", escaped) for i, item in enumerate(value)]
    return value


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    # C1 controls as \u0085: \x85 is the undecodable byte 0x85 (walkthrough: two names, one line)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def repeated(values: Iterable[str]) -> list[str]:
    """The values given more than once, each once, in the order first seen."""
    return [value for value, count in Counter(values).items() if count > 1]


def repeated_rows(rows: "np.ndarray") -> list[tuple[int, int]]:
    """(first, later) index pairs of the rows equal to an earlier one, in order (one pass: a sort)."""
    import numpy as np  # here: the command line's light paths import this module

    rows = np.asarray(rows).reshape(len(rows), -1)
    if len(rows) < 2:
        return []
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    earliest = first[inverse.reshape(-1)]
    later = np.flatnonzero(earliest != np.arange(len(rows)))
    return list(zip(earliest[later].tolist(), later.tolist()))


def check_class_names(names: Iterable[object], where: str, lines: Sequence[int] | None = None) -> list[str]:
    """``names`` as a list of ``str``, or a ``ZsfsError`` that says what ``where`` (e.g.
    ``"class file x.txt"``) got wrong: no names, an empty name (blank or only invisible
    characters), a name given twice (also when two differ only in invisible characters, spaces at
    the ends or Unicode form: they look the same wherever they are shown). ``lines``: each name's
    line number in a file, said with a name given twice. The names are returned as given: stores,
    labels and folder names hold them so."""
    from zsfs.errors import ZsfsError

    if isinstance(names, (str, bytes)):  # its letters would be taken as the names: 'B', 'a', 'g'
        raise ZsfsError(f"{where} must be a list of class names, not the one string {names!r}")
    try:  # any sequence, a numpy array too; bytes (numpy "S" arrays) are UTF-8 text, not "b'cat'"
        names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]
    except UnicodeDecodeError as error:
        raise ZsfsError(f"{where} has a class name that is not UTF-8 text ({error.object[:40]!r})") from None
    if not names:
        raise ZsfsError(f"{where} lists no class names")
    with_nul = [i for i, name in enumerate(names) if "\x00" in name]
    if with_nul:  # no store string can hold one
        raise ZsfsError(f"{where} has a class name with a NUL byte (position {with_nul[0] + 1}, counted from 1)")
    not_text = [i for i, name in enumerate(names) if not _is_utf8_text(name)]
    if not_text:  # an undecodable byte of a file name (os.listdir's surrogates): stores hold UTF-8 text
        raise ZsfsError(f"{where} has a class name that is not UTF-8 text (position {not_text[0] + 1}, counted "
                        f"from 1: {visible(names[not_text[0]])})")
    looks = [unicodedata.normalize("NFC", _UNSAFE.sub("", name)).strip() for name in names]  # what a reader sees
    blank = [i for i, seen in enumerate(looks) if not seen]
    if blank:
        raise ZsfsError(f"{where} lists {counted(len(blank), 'empty class name')} (first: position "
                        f"{blank[0] + 1}, counted from 1)")
    twice = repeated(looks)
    if twice:
        spellings = [list(dict.fromkeys(name for name, seen in zip(names, looks) if seen == look)) for look in twice]
        shown = [visible(same[0]) if len(same) == 1 else " = ".join(f"'{visible(name)}'" for name in same)
                 for same in spellings]
        if lines is not None:  # where to edit the file
            shown = [f"{text} (lines {', '.join(str(line) for line, seen in zip(lines, looks) if seen == look)})"
                     for text, look in zip(shown, twice)]
        alike = " (names that differ only in invisible characters or Unicode form look the same wherever " \
                "they are shown)" if any(len(same) > 1 for same in spellings) else ""
        # "N names ...: a; b": some_names' "N: a; b" read as a line number here
        raise ZsfsError(f"{where} lists {counted(len(shown), 'name')} more than once: "
                        f"{some_names(shown, 10, with_count=False)}{alike}")
    return names


def refuse_unseen_characters(names: Sequence[str], where: str, lines: Sequence[int] | None = None) -> None:
    """A ``ZsfsError`` for a new class name holding a control, invisible or formatting character:
    a class name is embedded as written, so a zero-width space or a tab would change its text unseen.
    (Names read back from stores are not held to this: earlier versions wrote some.)"""
    from zsfs.errors import ZsfsError

    unseen = [i for i, name in enumerate(names) if visible(name) != name]
    if unseen:
        first = unseen[0]
        at = f" line {lines[first]}" if lines is not None else ""
        others = f" (and {counted(len(unseen) - 1, 'other line' if lines else 'other name')})" \
            if len(unseen) > 1 else ""
        raise ZsfsError(f"{where}{at} has an invisible or control character in the name "
                        f"'{visible(names[first])}'{others}; remove it: a class name is embedded as written")


def _is_utf8_text(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def spelling_key(name: str) -> str:
    """What two spellings of one name share: the Unicode form, case, spacing and quotes around it
    aside (a CSV written `path, "label"` keeps the quotes: a quoted field starts at its separator)."""
    return " ".join(unicodedata.normalize("NFC", name).casefold().split()).strip("\"'").strip()


def spelled_like(known: Iterable[str], what: str) -> Callable[[str], str]:
    """A function giving, for a name that differs from one of ``known`` only by case, spacing,
    Unicode form or quotes (almost surely meant as that one), ``" (spelled like WHAT 'x')"``; else ``""``."""
    by_key = {spelling_key(name): name for name in known}

    def hint(name: str) -> str:
        match = by_key.get(spelling_key(name))
        return f" (spelled like {what} {match!r})" if match is not None else ""

    return hint


def near_spellings(names: Iterable[str], known: Iterable[str], what: str) -> list[str]:
    """``"'x' (spelled like WHAT 'X')"`` for each of ``names`` that differs from one of ``known``
    only by case, spacing or Unicode form (:func:`spelled_like`); the others are left out."""
    hint = spelled_like(known, what)
    return [f"{name!r}{said}" for name in names if (said := hint(name))]


_FILE_SUFFIX = re.compile(r"\.\w{1,4}$")  # classes,v2.txt is a file's name


def names_listed_in(text: str) -> list[str] | None:
    """The class names that ``text``, given where a class file's path goes and naming no file, lists
    separated by commas (``cat,dog,hot dog``); None when it reads as a path (a folder part, a file
    suffix) or as no such list (one name, a repeat, a ``#`` comment, an unseen character)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if (len(names) < 2 or any("/" in name or os.sep in name or name.startswith("#") or visible(name) != name
                              for name in names)
            or _FILE_SUFFIX.search(names[-1]) or repeated(names)):
        return None
    return names


def home_expanded(path: str | os.PathLike) -> str:
    """``path`` as text, a leading ``~`` or ``~/`` read as the home folder, as a shell reads it: for
    every path alike, whoever gives it (``--out=~/x``, a quoted '~/x', the Python API), not a folder
    named "~" made in the current one. ``~name`` stays as written: a file may be named so (the shell
    has already expanded an unquoted ``~user``), and pathlib raised RuntimeError for no such user."""
    text = os.fspath(path)
    if isinstance(text, str) and (text == "~" or text.startswith("~/")):
        return os.path.expanduser(text)
    return text


def as_argument(value: str | os.PathLike, *, path: bool = True) -> str:
    """``value`` as a command suggested in a message takes it: whole (the store's name alone named
    a file in the reader's current folder, not the store) and quoted for the shell; a ``path`` that
    starts with "-" as ``./-name`` (else an option: `zsfs report -dash` said "No such option");
    one with an invisible character or an undecodable byte in bash's and zsh's ``$'...'`` with
    escapes, which a paste gives back whole (``'new\x0aline'``, as :func:`visible` showed it, named
    no file)."""
    import shlex

    text = os.fspath(value)
    if path and text.startswith("-"):
        text = os.path.join(".", text)
    if not _UNSAFE.search(text):
        return shlex.quote(text)
    return "$'" + _UNSAFE.sub(_visible, text.replace("\\", "\\\\").replace("'", "\\'")) + "'"


def counted(n: int, one: str, many: str | None = None) -> str:
    """``"1 image"``, ``"2 images"``, ``"1 class"``, ``"3 classes"`` (``many``: the plural, when not ``one + "s"``)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def reasons_text(counts: Iterable[tuple[str, int]]) -> str:
    """``"file not found: 2,000; empty file: 3"`` from ``(reason, count)`` pairs, in their order."""
    return "; ".join(f"{reason}: {count:,}" for reason, count in counts)


def pairs_text(pairs: Sequence[tuple[str, str]], limit: int, listed_in: str | None = None, *,
               with_count: bool = True) -> str:
    """:func:`some_names` of ``(first, later)`` name pairs, each as ``'first' = 'later'``."""
    return some_names([f"{first!r} = {later!r}" for first, later in pairs], limit, listed_in, with_count=with_count)


def some_names(names: Sequence[str], limit: int, listed_in: str | None = None, *, with_count: bool = True,
               separator: str = "; ") -> str:
    """``"N: a; b; ...; ... (M more[ in LISTED_IN])"``: the count (unless not ``with_count``) and the
    first ``limit`` names, "; "-separated, as names may hold commas (ImageNet's class names do);
    ``separator`` for texts that hold "; " themselves."""
    more, where = len(names) - limit, f" in {listed_in}" if listed_in else ""
    count = f"{len(names):,}: " if with_count else ""
    return (f"{count}{separator.join(map(str, names[:limit]))}"
            + (f"{separator}... ({more:,} more{where})" if more > 0 else ""))


def abbreviated(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 1`` characters and "…" where it is longer: a long value in a
    one-line preview (a 5,000-character class name filled a screen of ``zsfs info``)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def described_array(array: "np.ndarray") -> str:
    """``"an int64 array of shape (2,)"``: an array a user gave, as messages name it."""
    kind = str(array.dtype)
    return f"{'an' if kind[0] in 'aeio' else 'a'} {kind} array of shape {array.shape}"  # a uint8: "you-int"


def percent(share: float) -> str:
    """``"12.3 %"``; below 1 %, two significant digits (``"0.05 %"``); below 0.001 %, ``"< 0.001 %"``
    (a mixture's share of a class nothing took is a rounding residue, ``7e-13``); none, ``"0 %"``."""
    if share >= 0.01:
        return f"{100 * share:.1f} %"
    return f"{100 * share:.2g} %" if share >= 1e-5 else "< 0.001 %" if share > 0 else "0 %"
