"""Webdataset-style tar shards as an image source, read in place (never unpacked).

img2dataset and webdataset write collections as ``00000.tar, 00001.tar, ...``, each holding
samples ``KEY.jpg`` (or ``.png`` ...) beside ``KEY.txt`` / ``KEY.json`` (caption, metadata).
Listing reads only the tar headers; the listing keeps each image member's byte range, so a
DataLoader worker reads one image with one seek + read. Listed paths are ``<tar>::<member>``
(``<tar>`` relative to the source's root), which ``locate_members`` turns back into byte ranges.

Captions and metadata stay in the tar, next to the image, under the same key: they are not
labels (classes come from ``--classes``), so listing does not read them.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import re
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsfs.errors import ZsfsError
from zsfs.names import as_argument, counted, home_expanded, some_names
from zsfs.outputs import special_file_kind
from zsfs.store.schema import SHARDS_SUFFIX, holds_store_parts
from zsfs.tar_headers import CompressedTar, DamagedTar, TarListing, scan_headers

MEMBER_SEPARATOR = "::"
TAR_SUFFIX = ".tar"  # in any case: SHARD0.TAR is a tar too
_MEMBER_AFTER_TAR = re.compile(re.escape(TAR_SUFFIX + MEMBER_SEPARATOR), re.IGNORECASE)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4")
"""Compressed tars: their members cannot be read in place (see :func:`compressed_tar_error`)."""
_BRACES = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, eq=False)
class TarMembers:
    """Where the listed images lie inside their tars: one row per listing entry.

    ``tar[i]`` indexes ``tars`` (-1: entry ``i`` is a plain file, not a tar member); the
    member's bytes are ``offset[i] : offset[i] + size[i]`` of that tar.
    """

    tars: tuple[Path, ...]  # absolute paths
    tar: np.ndarray  # (n,) int32
    offset: np.ndarray  # (n,) int64
    size: np.ndarray  # (n,) int64
    _descriptors: OrderedDict = field(default_factory=OrderedDict, repr=False)  # tar index -> open descriptor
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)  # the process the lock belongs to

    def __post_init__(self) -> None:
        # Plain descriptors are not closed by garbage collection: a notebook that reads many
        # sources would keep up to OPEN_TARS of each open.
        weakref.finalize(self, _close_all, self._descriptors)

    def holds(self, i: int) -> bool:
        return bool(self.tar[i] >= 0)

    def open(self, i: int) -> io.BufferedReader:
        """The member as a read-only file, read from its tar as a decoder asks (a large member is
        not read whole, as a file in a folder is not); an ``OSError`` when the tar now ends before
        the member does (truncated after listing). Safe from several threads (the report decodes
        thumbnails in a pool): each read happens under the lock that guards the open descriptors,
        so none is closed or reused under it."""
        tar, offset, size = int(self.tar[i]), int(self.offset[i]), int(self.size[i])
        with self._process_lock():
            end = os.fstat(self._descriptor(tar)).st_size
        if end < offset + size:  # else a member past the new end read as an "empty file", a cut one as corrupt
            raise OSError(f"the tar ends {max(end - offset, 0):,} bytes into this {size:,}-byte member: it was cut "
                          "short since it was listed")
        reader = _MemberReader(self, tar, offset, size)
        return io.BufferedReader(reader, buffer_size=max(1, min(size, MEMBER_BUFFER)))

    def read(self, i: int) -> bytes:
        """The member's bytes (:meth:`open`'s errors)."""
        with self.open(i) as file:
            return file.read()

    def pread(self, tar: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes of tar ``tar`` from ``offset`` (fewer at its end)."""
        with self._process_lock():  # held through the pread too: reads are short next to the decoding that follows
            return os.pread(self._descriptor(tar), size, offset)

    def close(self) -> None:
        """Close the open tars (reading again reopens them)."""
        with self._process_lock():
            _close_all(self._descriptors)

    def _process_lock(self) -> threading.Lock:
        """The lock of this process: a forked child (a DataLoader worker) gets a new one, as another
        thread of its parent may have held the inherited copy at the fork, for good."""
        if self._pid != os.getpid():
            object.__setattr__(self, "_lock", threading.Lock())
            object.__setattr__(self, "_pid", os.getpid())
        return self._lock

    def _descriptor(self, tar: int) -> int:
        # Kept open: DataLoader workers read consecutive members of the same tar. pread has no
        # shared file position, so descriptors inherited across fork are safe to keep using.
        descriptor = self._descriptors.get(tar)
        if descriptor is None:
            if len(self._descriptors) >= OPEN_TARS:  # a long run walks through thousands of tars
                os.close(self._descriptors.popitem(last=False)[1])
            descriptor = self._descriptors[tar] = os.open(self.tars[tar], os.O_RDONLY)
        else:
            self._descriptors.move_to_end(tar)
        return descriptor

    def __getstate__(self) -> dict:  # open files and the lock stay in the process that made them
        return {key: value for key, value in self.__dict__.items() if key not in ("_descriptors", "_lock", "_pid")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _descriptors=OrderedDict(), _lock=threading.Lock(), _pid=os.getpid())
        self.__post_init__()


class TarReadError(Exception):
    """A tar member that cannot be read any more: the tar cut short since it was listed, or an I/O
    error (its ``errno`` kept: a lost mount stops the run, see ``zsfs.decode.machine_read_error``).
    Not an ``OSError``, which decoders turn into "truncated" (or, reading a TIFF's tags, a
    warning): it reaches :meth:`zsfs.sources.ImageSource.decode`, which names the tar."""

    def __init__(self, message: str, number: int | None = None):
        super().__init__(message)
        self.errno, self.strerror = number, message


class _MemberReader(io.RawIOBase):
    """The bytes ``offset : offset + size`` of one tar as a read-only, seekable raw file."""

    def __init__(self, members: TarMembers, tar: int, offset: int, size: int) -> None:
        super().__init__()
        self._members, self._tar, self._offset, self._size, self._position = members, tar, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if start + position < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._position = start + position
        return self._position

    def readinto(self, buffer: memoryview) -> int:
        data = self._read(min(len(buffer), self._size - self._position))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:  # (io's default reads 8 KiB at a time: a pread and the lock each)
        return self._read(self._size - self._position)

    def _read(self, wanted: int) -> bytes:
        """The next ``wanted`` bytes (none past the member's end), in reads of at most
        :data:`MAX_PREAD`; :class:`TarReadError` when the tar no longer holds them."""
        parts = []
        while wanted > 0:
            start = self._offset + self._position
            try:
                data = self._members.pread(self._tar, min(wanted, MAX_PREAD), start)
            except OSError as error:
                raise TarReadError(error.strerror or str(error), error.errno) from None
            if not data:  # TarMembers.open checked the tar's size: it was cut since
                raise TarReadError(f"the tar ends {self._position:,} bytes into this {self._size:,}-byte member: "
                                   "it was cut short since it was listed")
            parts.append(data)
            self._position += len(data)
            wanted -= len(data)
        return b"".join(parts) if len(parts) != 1 else parts[0]


MEMBER_BUFFER = 1 << 20
"""Bytes read from a tar at once for one member: a typical image in one read."""
MAX_PREAD = 1 << 30
"""Bytes asked of one pread (Linux returns at most 2 GiB - 4 KiB per call)."""
OPEN_TARS = 8
"""Tars a source keeps open at once, the least recently read closed first."""


def _close_all(descriptors: dict) -> None:
    while descriptors:
        os.close(descriptors.popitem()[1])


def is_compressed_tar(name: str) -> bool:
    return name.lower().endswith(COMPRESSED_TAR_SUFFIXES)


READ_IN_PLACE = "zsfs reads uncompressed .tar shards (as img2dataset writes them) in place"
TAR_FOLDER = ("a folder is read as tar shards only when it holds no subfolder and no loose image; name the tars "
              "instead, one .tar or a pattern such as 'shards/{00000..00099}.tar'")


_MEND = "; repair or remove it and rerun"


def compressed_tar_error(path: Path | str) -> ZsfsError:
    return ZsfsError(f"{path} is compressed; {READ_IN_PLACE}: decompress it first")


def is_tar_pattern(text: str) -> bool:
    """``data/{00000..00009}.tar`` or ``data/00000.tar``: tar shards named directly."""
    return text.lower().endswith(TAR_SUFFIX) and (_BRACES.search(text) is not None or not Path(text).is_dir())


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``{00000..00003}`` (zero padding kept) and ``{a,b}``."""
    parts = _BRACES.split(pattern)  # literal, group, literal, group, ...
    choices = [[literal] if i % 2 == 0 else _brace_choices(literal, pattern) for i, literal in enumerate(parts)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def _brace_choices(group: str, pattern: str) -> list[str]:
    span = re.fullmatch(r"(\d+)\.\.(\d+)", group)
    if span:
        first, last = span.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        return [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    if "," in group:
        return group.split(",")
    raise ZsfsError(f"cannot expand {{{group}}} in {pattern}; use {{00000..00009}} or {{a,b,c}}")


def tar_shards_in(folder: Path, image_suffixes: Iterable[str]) -> list[Path]:
    """The ``*.tar`` files of a folder laid out as img2dataset writes it (tars, parquet and
    stats files, no subfolders, no loose images); empty when the folder is an image folder. A
    store's shards folder (``*.shards``) does not count as a subfolder: ``cd tars/ && zsfs
    extract .`` writes its store there, and its rerun must read the same tars."""
    suffixes = frozenset(image_suffixes)
    tars = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # the folder scan reports an unreadable folder with its own clear error
        return []
    for entry in entries:  # DirEntry: is_dir() without a stat per entry on most file systems
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if entry.name.endswith(SHARDS_SUFFIX) and _store_shards_folder(entry.path):
                continue
            return []
        suffix = os.path.splitext(entry.name)[1].lower()
        if suffix in suffixes:  # loose images: an image folder
            return []
        if suffix == TAR_SUFFIX:
            tars.append(Path(entry.path))
    return sorted(tars)


def _store_shards_folder(path: str) -> bool:
    """A ``*.shards`` folder holding a store's files, or nothing yet (a first run stopped early)."""
    try:
        empty = not any(name for name in os.listdir(path) if not name.startswith("."))
    except OSError:
        return False
    return empty or holds_store_parts(Path(path))


def named_tars(given: str) -> list[Path]:
    """The tar files of a brace pattern or a single tar, as the pattern names them; an error naming
    the missing ones. A tar file whose name holds braces (``x{1}.tar``) is that file, not a pattern."""
    path = Path(home_expanded(given))
    tars = [path] if path.is_file() else [Path(name) for name in expand_braces(str(path))]
    missing = [tar for tar in tars if not tar.is_file()]
    if missing and len(tars) == 1 and any(character in given for character in "*?["):  # 'shards/*.tar'
        raise ZsfsError(f"{given}: zsfs expands brace patterns ('shards/{{000..099}}.tar', 'shards/{{a,b}}.tar'), "
                        f"not * ? or [ ]; pass a brace pattern, or the folder of the tars ({as_argument(path.parent)})")
    if missing:
        raise ZsfsError(f"{given}: {len(missing)} of {counted(len(tars), 'tar file')} "
                        f"{'does' if len(missing) == 1 else 'do'} not exist (first: {missing[0]})")
    return tars


def resolve_tars(given: str) -> tuple[Path, list[Path]]:
    """(root, tar files) of a brace pattern or a single tar (``tar_shards_in`` reads folders)."""
    tars = [tar.resolve() for tar in named_tars(given)]
    return Path(os.path.commonpath([tar.parent for tar in tars])), tars


class UnlistableTar(ZsfsError):
    """A tar whose headers cannot be read to its end: damaged, cut short, or still being written;
    ``reason``: why, said of it without its name."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path} is {reason}{_MEND}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def list_tar(path: Path, image_suffixes: Iterable[str] | None) -> TarListing:
    """The members of one tar whose suffix is one of ``image_suffixes`` (None: every one), in tar
    order: files in ``names`` (with their byte ranges), links in ``links``.

    Only the 512-byte headers are read, through a small window that jumps over large members
    (:func:`zsfs.tar_headers.scan_headers`; tarfile's parser costs ~5x more per member, and
    buffered reads would pull every image's bytes in too); checksums are verified
    and no member may end past the file's end, so a damaged header or a cut file is an error
    rather than a silently shorter listing.
    """
    suffixes = None if image_suffixes is None else frozenset(image_suffixes)
    listing = TarListing([], [], [], [])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe's open would wait for a writer, forever
    except OSError as error:
        raise ZsfsError(f"cannot read {path} ({error.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ZsfsError(f"{path} is {special_file_kind(path) or 'not a regular file'}, not a tar file; remove "
                            "it, or name it without .tar, and rerun")
        scan_headers(fd, suffixes, listing)
    except CompressedTar:
        raise compressed_tar_error(path) from None
    except (DamagedTar, OSError, ValueError) as error:
        raise UnlistableTar(path, f"not a readable tar, or damaged after {counted(len(listing.names), 'image')} "
                                  f"({error})") from None
    finally:
        os.close(fd)
    return listing


def list_tars(root: Path, tars: Sequence[Path], image_suffixes: Iterable[str], *,
              keep_hidden: bool = False) -> tuple[list[str], TarMembers, list[str]]:
    """Listing paths ``<tar relative to root>::<member>`` and their byte ranges, tars in the given
    order, hidden members left out as a folder scan leaves out hidden files (``keep_hidden``: as
    zsfs listed them before December 2026); and the paths of the image names that are links
    (not listed)."""
    suffixes = frozenset(image_suffixes)
    paths: list[str] = []
    links: list[str] = []
    tar_ids, offsets, sizes = [], [], []
    failed: list[ZsfsError] = []
    for number, tar in enumerate(tars):
        try:
            listing = list_tar(tar, suffixes)
        except ZsfsError as error:  # the others are listed still, so that one error names every tar to mend
            failed.append(error)
            continue
        shown = [i for i, name in enumerate(listing.names) if keep_hidden or not _is_hidden(name)]
        prefix = tar.relative_to(root).as_posix() + MEMBER_SEPARATOR
        paths.extend(prefix + listing.names[i] for i in shown)
        links.extend(prefix + name for name in listing.links if keep_hidden or not _is_hidden(name))
        tar_ids.append(np.full(len(shown), number, dtype=np.int32))
        offsets.append(np.asarray(listing.offsets, dtype=np.int64)[shown])
        sizes.append(np.asarray(listing.sizes, dtype=np.int64)[shown])
    if len(failed) == 1:
        raise failed[0]
    if failed:
        each = [str(error).removesuffix(_MEND) for error in failed]  # " | ": a message may hold "; "
        raise ZsfsError(f"{len(failed):,} of {counted(len(tars), 'tar file')} cannot be listed; mend or remove each "
                        f"and rerun: {some_names(each, 10, with_count=False, separator=' | ')}")
    members = TarMembers(tuple(tars), _concat(tar_ids, np.int32), _concat(offsets, np.int64), _concat(sizes, np.int64))
    return paths, members, links


def _is_hidden(member: str) -> bool:
    """Whether a member is hidden as a folder scan sees it: its name or a folder's starts with a dot
    (macOS tar writes ``._photo.jpg`` resource forks beside the images; ``./`` is not hidden)."""
    return "/." in "/" + member and any(part.startswith(".") and part not in (".", "..")
                                        for part in member.split("/"))


def split_member_path(path: str, root: Path | None = None) -> tuple[str, str] | None:
    """``a/00001.tar::x/1.jpg`` -> (``a/00001.tar``, ``x/1.jpg``); None for a plain path. A tar whose
    own name holds ``.tar::`` (``a.tar::b.tar::1.jpg``): the first split whose tar is a file under
    ``root``, given one, else the first split."""
    splits = [(path[:found.start() + len(TAR_SUFFIX)], path[found.end():])  # any case, as a folder's tars are
              for found in _MEMBER_AFTER_TAR.finditer(path) if found.end() < len(path)]  # found (SHARD0.TAR::0.jpg)
    if len(splits) > 1 and root is not None:
        return next((split for split in splits if os.path.isfile(root / split[0])), splits[0])
    return splits[0] if splits else None


def locate_members(paths: Sequence[str], root: Path, reasons: dict[int, str] | None = None) -> TarMembers | None:
    """Byte ranges of the ``<tar>::<member>`` entries of ``paths`` (relative to ``root``),
    each tar listed once; None when no entry is a tar member. Other entries get tar -1, also a file
    so named (``x.tar::1.jpg`` in a folder is that file). A member the tar does not hold as a file is
    an error, or, given ``reasons``, its row's reason there (entry number -> why; its tar stays -1); so
    is a tar that does not exist, or, given ``reasons``, its entries stay -1 (a file so named: not
    found, as a moved image is), and the other tars' members are still found; a tar that cannot be
    listed (damaged since) is an error too, or, given ``reasons``, the reason of each of its rows."""
    split = [None if entry is None or os.path.isfile(root / path) else entry  # (False for a name over NAME_MAX)
             for path, entry in zip(paths, (split_member_path(path, root) for path in paths))]
    tar_names = sorted({entry[0] for entry in split if entry is not None})
    if not tar_names:
        return None
    tars = tuple((root / name).resolve() for name in tar_names)
    number = {name: i for i, name in enumerate(tar_names)}
    where: dict[tuple[int, str], tuple[int, int]] = {}
    links: set[tuple[int, str]] = set()
    gone: set[int] = set()
    unlisted: dict[int, str] = {}  # tar -> why it cannot be listed (a report shows the other tars' images)
    for i, tar in enumerate(tars):
        if not tar.is_file():
            if reasons is not None:
                gone.add(i)
                continue
            named_by = next(path for path, entry in zip(paths, split) if entry is not None and entry[0] == tar_names[i])
            raise ZsfsError(f"{tar} does not exist (named by {named_by})")
        try:
            listing = list_tar(tar, None)
        except ZsfsError as error:
            if reasons is None:
                raise
            unlisted[i] = str(error)
            continue
        links.update((i, name) for name in listing.links)
        where.update(((i, name), (offset, size)) for name, offset, size in zip(listing.names, listing.offsets,
                                                                                  listing.sizes))
    tar_ids = np.full(len(paths), -1, dtype=np.int32)
    offset = np.zeros(len(paths), dtype=np.int64)
    size = np.zeros(len(paths), dtype=np.int64)
    for row, entry in enumerate(split):
        if entry is None:
            continue
        key = (number[entry[0]], entry[1])
        if key[0] in gone:
            continue
        if key[0] in unlisted:
            why = unlisted[key[0]]
        elif key in links:
            why = (f"{entry[1]!r} is a link or sparse file inside {entry[0]}, not a plain file; zsfs reads only the "
                   "plain files of a tar")
        else:
            why = f"{entry[0]} holds no file named {entry[1]!r}" if key not in where else None
        if why is not None:
            if reasons is None:
                raise ZsfsError(f"{paths[row]}: {why}")
            reasons[row] = why
            continue
        tar_ids[row] = key[0]
        offset[row], size[row] = where[key]
    return TarMembers(tars, tar_ids, offset, size)


def merged_members(n_rows: int, parts: Sequence[tuple[np.ndarray, TarMembers]]) -> TarMembers | None:
    """One ``TarMembers`` for ``n_rows`` entries listed in parts: each part gives its entries'
    rows in the whole and their members (already listed: no tar is read again); other rows are
    plain files. None without parts."""
    if not parts:
        return None
    tar = np.full(n_rows, -1, dtype=np.int32)
    offset = np.zeros(n_rows, dtype=np.int64)
    size = np.zeros(n_rows, dtype=np.int64)
    tars: list[Path] = []
    for rows, members in parts:
        held = members.tar >= 0
        tar[rows[held]] = members.tar[held] + len(tars)
        offset[rows], size[rows] = members.offset, members.size
        tars.extend(members.tars)
    return TarMembers(tuple(tars), tar, offset, size)


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
