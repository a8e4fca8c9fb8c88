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

import itertools
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsfs.errors import ZsfsError

MEMBER_SEPARATOR = "::"
TAR_SUFFIX = ".tar"
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
    _handles: dict = field(default_factory=dict, repr=False)  # per process: tar index -> open file

    def holds(self, i: int) -> bool:
        return bool(self.tar[i] >= 0)

    def read(self, i: int) -> bytes:
        """The member's bytes (fewer when the tar was truncated after listing)."""
        handle = self._open(int(self.tar[i]))
        handle.seek(int(self.offset[i]))
        return handle.read(int(self.size[i]))

    def _open(self, tar: int):
        # One open file per tar and process: DataLoader workers read consecutive members of
        # the same tar, so reopening it per image would cost a syscall round trip each.
        handle = self._handles.get(tar)
        if handle is None:
            if len(self._handles) >= 8:  # a long run walks through thousands of tars
                for old in self._handles.values():
                    old.close()
                self._handles.clear()
            handle = self._handles[tar] = open(self.tars[tar], "rb")  # noqa: SIM115 (kept open)
        return handle

    def __getstate__(self) -> dict:  # open files stay in the process that opened them
        return {**self.__dict__, "_handles": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def is_tar_pattern(text: str) -> bool:
    """``data/{00000..00009}.tar`` or ``data/00000.tar``: tar shards named directly."""
    return text.endswith(TAR_SUFFIX) and (_BRACES.search(text) is not None or not Path(text).is_dir())


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
    stats files, no subfolders, no loose images); empty when the folder is an image folder."""
    suffixes = frozenset(image_suffixes)
    tars, images = [], False
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            return []
        if entry.suffix.lower() == TAR_SUFFIX:
            tars.append(entry)
        images = images or _suffix(entry.name) in suffixes
    return [] if images else sorted(tars)


def resolve_tars(given: str) -> tuple[Path, list[Path]]:
    """(root, tar files) of a brace pattern or a single tar (``tar_shards_in`` reads folders)."""
    path = Path(given).expanduser()
    names = expand_braces(str(path))
    tars = [Path(name).resolve() for name in names]
    missing = [tar for tar in tars if not tar.is_file()]
    if missing:
        raise ZsfsError(f"{given}: {len(missing)} of {len(tars)} tar files do not exist (first: {missing[0]})")
    roots = {tar.parent for tar in tars}
    root = roots.pop() if len(roots) == 1 else Path(*_common_parts([tar.parent for tar in tars]))
    return root, tars


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    common = folders[0].parts
    for folder in folders[1:]:
        common = tuple(a for a, b in zip(common, folder.parts) if a == b)[:len(common)]
    return common


def list_tar(path: Path, image_suffixes: Iterable[str] | None) -> tuple[list[str], list[int], list[int]]:
    """(member names, data offsets, sizes) of the members of one tar whose suffix is one of
    ``image_suffixes`` (None: every regular file), in tar order.

    Only headers are read: tarfile seeks over each member's data in an uncompressed tar.
    """
    suffixes = None if image_suffixes is None else frozenset(image_suffixes)
    names, offsets, sizes = [], [], []
    try:
        with tarfile.open(path, "r:") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # tarfile keeps every header otherwise: 1M entries = GBs
                if member.isfile() and (suffixes is None or _suffix(member.name) in suffixes):
                    names.append(member.name)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
            end = archive.offset
        if _has_data_after(path, end):  # tarfile ends quietly at a damaged or cut header
            raise tarfile.ReadError(f"no valid tar header at byte {end}")
    except tarfile.CompressionError:
        raise ZsfsError(f"{path} is compressed; zsfs reads uncompressed .tar shards (as img2dataset writes "
                        "them) in place: decompress it first") from None
    except (tarfile.TarError, OSError) as error:
        raise ZsfsError(f"{path} is not a readable tar, or is damaged after {len(names)} images ({error}); "
                        "repair or remove it and rerun") from None
    return names, offsets, sizes


def list_tars(root: Path, tars: Sequence[Path], image_suffixes: Iterable[str]) -> tuple[list[str], TarMembers]:
    """Listing paths ``<tar relative to root>::<member>`` and their byte ranges, tars in the given order."""
    suffixes = frozenset(image_suffixes)
    paths: list[str] = []
    tar_ids, offsets, sizes = [], [], []
    for number, tar in enumerate(tars):
        names, tar_offsets, tar_sizes = list_tar(tar, suffixes)
        prefix = tar.relative_to(root).as_posix() + MEMBER_SEPARATOR
        paths.extend(prefix + name for name in names)
        tar_ids.append(np.full(len(names), number, dtype=np.int32))
        offsets.append(np.asarray(tar_offsets, dtype=np.int64))
        sizes.append(np.asarray(tar_sizes, dtype=np.int64))
    members = TarMembers(tuple(tars), _concat(tar_ids, np.int32), _concat(offsets, np.int64), _concat(sizes, np.int64))
    return paths, members


def _has_data_after(path: Path, end: int) -> bool:
    """Whether anything but the zero blocks that close a tar follows byte ``end``."""
    with open(path, "rb") as handle:
        handle.seek(end)
        return any(handle.read(20 * 512))


def split_member_path(path: str) -> tuple[str, str] | None:
    """``a/00001.tar::x/1.jpg`` -> (``a/00001.tar``, ``x/1.jpg``); None for a plain path."""
    tar, separator, member = path.partition(TAR_SUFFIX + MEMBER_SEPARATOR)
    return (tar + TAR_SUFFIX, member) if separator and member else None


def locate_members(paths: Sequence[str], root: Path) -> TarMembers | None:
    """Byte ranges of the ``<tar>::<member>`` entries of ``paths`` (relative to ``root``),
    each tar listed once; None when no entry is a tar member. Other entries get tar -1."""
    split = [split_member_path(path) for path in paths]
    tar_names = sorted({entry[0] for entry in split if entry is not None})
    if not tar_names:
        return None
    tars = tuple((root / name).resolve() for name in tar_names)
    number = {name: i for i, name in enumerate(tar_names)}
    where: dict[tuple[int, str], tuple[int, int]] = {}
    for i, tar in enumerate(tars):
        if not tar.is_file():
            raise ZsfsError(f"{tar} does not exist (named by {next(p for p in paths if p.startswith(tar_names[i]))})")
        names, offsets, sizes = list_tar(tar, None)
        where.update(((i, name), (offset, size)) for name, offset, size in zip(names, offsets, sizes))
    tar_ids = np.full(len(paths), -1, dtype=np.int32)
    offset = np.zeros(len(paths), dtype=np.int64)
    size = np.zeros(len(paths), dtype=np.int64)
    for row, entry in enumerate(split):
        if entry is None:
            continue
        key = (number[entry[0]], entry[1])
        if key not in where:
            raise ZsfsError(f"{paths[row]}: {entry[0]} holds no file named {entry[1]!r}")
        tar_ids[row] = key[0]
        offset[row], size[row] = where[key]
    return TarMembers(tars, tar_ids, offset, size)


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > name.rfind("/") else ""


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
