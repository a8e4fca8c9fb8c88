"""Image sources: find the images of a folder, list file (read by ``zsfs.lists``) or tar shards, and
read their labels.

``open_source`` turns what the user points at into an ``ImageSource`` (paths + optional labels),
which decodes its images through ``zsfs.decode``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from zsfs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from zsfs.digests import listing_sha256
from zsfs.errors import ZsfsError, check_path
from zsfs.lists import read_list_file, refuse_nul_bytes
from zsfs.names import (check_class_names, check_utf8_file_names, counted, refuse_unseen_characters,
                        repeated, some_names, utf8_text, utf8_texts)
from zsfs.tars import (READ_IN_PLACE, TAR_FOLDER, TAR_SUFFIX, TarMembers, compressed_tar_error, is_compressed_tar,
                       is_tar_pattern, list_tars, resolve_tars, tar_shards_in)

SUFFIXES_ADDED = frozenset({".jpe", ".jfif", ".jp2", ".j2k", ".avif", ".tga", ".pbm", ".pgm", ".ppm", ".pnm"})
"""Suffixes a scan takes since December 2026: a store built earlier over the same folder lists
fewer files (see :meth:`ImageSource.digest_without_added_suffixes`)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}) | SUFFIXES_ADDED
"""File suffixes (compared lower-case) that a folder scan picks up: the photo, scan and raster
formats Pillow decodes (JPEG 2000 and AVIF where its build has them; a file it cannot decode is
skipped with the reason)."""

UNREAD_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw", ".svg"})
"""Image formats a scan does not take, since Pillow cannot decode them (phone, camera raw and
vector images): counted by suffix, so that the extract summary says they were left out."""

LIST_SUFFIXES = (".txt", ".csv")

UNREADABLE_FOLDER = "unreadable folder"
"""Reason prefix of a listing entry ``folder/`` that a scan could not read."""
LINKED_FOLDER = "linked folder not followed"
"""Reason prefix of a linked folder not read because the scan lists it under another name (nothing is lost)."""
LINKED_IMAGE = "linked image not read"
"""Reason prefix of a link to an image the scan lists under another name (nothing is lost)."""


class NoImagesError(ZsfsError):
    """Tar shards that hold no image member."""


@dataclass(frozen=True)
class ImageSource:
    """The images of a folder, list file or tar shards, in a fixed order, with their labels when known."""

    location: Path
    root: Path
    paths: list[str]
    labels: list[str] | None
    unreadable: dict[str, str] = field(default_factory=dict)
    """Listed entries known to fail before decoding (folders a scan could not read): path -> reason."""
    members: TarMembers | None = None  # byte ranges of the entries that are tar members
    no_labels_reason: str | None = None  # why a folder with class subfolders gives no labels
    empty_tars: list[str] = field(default_factory=list)  # tar shards (relative to root) holding no image
    compressed_tars: list[str] = field(default_factory=list)  # beside the tar shards, not read (see zsfs.tars)
    unread_tars: list[str] = field(default_factory=list)  # .tar files in an image folder: not read
    tar_links: list[str] = field(default_factory=list)  # image names that are links inside a tar: not read
    aliases: list[str] = field(default_factory=list)  # linked folders not read: other names of listed ones
    repeated_paths: list[str] = field(default_factory=list)  # listed more than once (each row is embedded)
    # (a list file's line, or a member name a tar holds twice)
    unread_formats: dict[str, int] = field(default_factory=dict)  # a folder's images of UNREAD_IMAGE_SUFFIXES:
    # suffix -> count
    merged_labels: list[str] = field(default_factory=list)  # labels of two class folders (see _scan_folder)
    nested_classes: tuple[list[str], list[str]] | None = None  # class folders that hold the same subfolders:
    # (the class folders, their shared subfolders), a layout split in train/, val/, ... (see nested_class_folders)

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> Path:
        """Absolute path of the ``i``-th image (listed absolute paths are kept as they are)."""
        return self.root / self.paths[i]

    def decode(self, i: int, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft: tuple[int, int] | None = None) -> Image.Image:
        """The ``i``-th image, from its file or its tar member (``decode_image``'s arguments and errors)."""
        if self.members is None or not self.members.holds(i):
            return decode_image(self.absolute(i), max_pixels, draft)
        try:
            data = self.members.read(i)
        except OSError as error:
            raise ImageDecodeError(f"unreadable tar ({error.strerror or error})", self.paths[i]) from None
        return decode_image(self.paths[i], max_pixels, draft, data=data)

    @property
    def classes(self) -> list[str] | None:
        """Sorted unique labels, or None when the source has no labels. A label only other names of
        listed folders carry (``kitty -> cat``) is not a class: it would be one with no images."""
        if self.labels is None:
            return None
        aliases = set(self.aliases)
        return sorted({label for path, label in zip(self.paths, self.labels) if path not in aliases})

    def digest(self) -> str:
        """sha256 of the listing (paths and labels): changes whenever the listing does."""
        return self._digest

    @cached_property
    def _digest(self) -> str:  # asked for by several checks of a rerun: a pass over a listing of millions each
        return listing_sha256(self.paths, self.labels)

    def digest_without_added_suffixes(self) -> tuple[str, int] | None:
        """(digest, length) of the listing as a scan before ``SUFFIXES_ADDED`` made it; None when
        the listing holds no such file (folder entries, ``folder/``, stay)."""
        kept = [i for i, path in enumerate(self.paths)
                if path.endswith("/") or os.path.splitext(path)[1].lower() not in SUFFIXES_ADDED]
        if len(kept) == len(self.paths):
            return None
        labels = None if self.labels is None else [self.labels[i] for i in kept]
        return listing_sha256([self.paths[i] for i in kept], labels), len(kept)

    def digest_with_hidden_members(self) -> tuple[str, int] | None:
        """(digest, number of hidden members) of the listing of tar shards as zsfs made it before it
        left out hidden members (``._photo.jpg``, December 2026): the tars are listed again (only
        a store that does not match asks); None for other sources and tars with no such member."""
        if self.members is None:
            return None
        with_hidden = list_tars(self.root, self.members.tars, IMAGE_EXTENSIONS, keep_hidden=True)[0]
        hidden = len(with_hidden) - len(self.paths)
        return (listing_sha256(with_hidden, None), hidden) if hidden else None


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
        raise ZsfsError(f"class file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                        f"{error.start}); save it as UTF-8") from None
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
        raise ZsfsError(f"class file {path} lists no class names; put one class name per line")
    return check_class_names([name for _, name in named], f"class file {path}", lines=[number for number, _ in named])


def open_source(source: str | Path) -> ImageSource:
    """Read a folder (scanned recursively), a ``.txt`` / ``.csv`` list of image paths, or
    webdataset tar shards (a folder of ``.tar`` files, one ``.tar``, or ``data/{00000..00009}.tar``).

    Folder: labels are the first-level subfolder names when every image sits in one.
    List: ``.txt`` has one path per line; ``.csv`` has a header with ``path`` and optionally
    ``label``. Relative paths are relative to the list file's folder.
    Tars: paths are ``<tar>::<member>``, read in place (see ``zsfs.tars``); no labels.
    """
    listing = _listing(source)
    check_utf8_file_names(listing.paths)
    return listing


def _listing(source: str | Path) -> ImageSource:
    source = check_path("source", source)
    if is_tar_pattern(source):
        root, tars = resolve_tars(source)
        # normalised as a folder's location is ("a/../t.tar" is "t.tar"), so a rerun from another folder matches
        return _tar_source(Path(os.path.abspath(source)), root, tars)
    location = Path(source)
    if not location.exists():
        raise ZsfsError(f"{source} does not exist; pass an image folder, a .txt/.csv list of images, or tar "
                        "shards (a .tar, a folder of them, or a pattern 'shards/{00000..00099}.tar').")
    location = location.resolve()
    if location.is_dir():
        tars = tar_shards_in(location, IMAGE_EXTENSIONS)
        return _tar_source(location, location, tars, _compressed_tars_in(location)) if tars else \
            _scan_folder(location)
    if is_compressed_tar(location.name):
        raise compressed_tar_error(location)
    if location.suffix.lower() in IMAGE_EXTENSIONS:  # `zsfs extract photo.jpg`, or photos/*.jpg's first
        raise ZsfsError(f"{location} is an image; the source is one folder, list file or set of tar shards: put the "
                        "images in a folder, or list their paths in a .txt file (one per line)")
    if location.suffix.lower() not in LIST_SUFFIXES:
        raise ZsfsError(
            f"{location} is neither a folder nor a list file; a list must end in .txt (one path "
            "per line) or .csv (header with 'path' and optional 'label' columns)."
        )
    return _read_list(location)


def _scan_folder(folder: Path) -> ImageSource:
    """Names come as the OS gives them (undecodable bytes as surrogates, see ``zsfs.names``), so
    every listed path reopens its file; a sub-folder that cannot be read is listed as ``name/``
    and recorded as skipped with the reason, never dropped silently. Linked folders are followed
    (class folders are often links to another disk), each folder once: a link to a folder of the
    scanned tree, or to one listed already, is a skipped entry with that reason (so no image is
    listed twice, under two labels, and no link loops); so is a link to an image of the tree, or a
    second link to one image."""
    found: list[str] = []
    unreadable: dict[str, str] = {}
    seen = {_folder_identity(folder)}  # (device, inode) of every folder listed
    listed_at = {str(folder): ""}  # real path of the tree and of each linked folder listed -> its place in the tree
    aliases: list[str] = []  # linked folders not read: other names of folders listed
    tars: list[str] = []  # .tar files, which an image folder does not read
    unread_formats: Counter[str] = Counter()
    tree = str(folder) + os.sep  # ``folder`` is resolved (open_source)

    def record(error: OSError) -> None:
        if Path(error.filename) == folder:
            raise ZsfsError(f"cannot read the folder {folder}: {error.strerror}")
        relative = Path(error.filename).relative_to(folder).as_posix() + "/"
        unreadable[relative] = f"{UNREADABLE_FOLDER} ({(error.strerror or str(error)).lower()})"

    def not_read(entry: str, why: str) -> None:  # another name of a folder the scan lists
        unreadable[entry] = f"{LINKED_FOLDER} ({why})"
        aliases.append(entry)

    linked: list[str] = []  # image files that are links: checked once the whole tree is listed
    for directory, subdirs, files, file_links in _walk(str(folder), record):
        relative = Path(directory).relative_to(folder).as_posix()
        prefix = "" if relative == "." else relative + "/"  # a string join: a Path per file costs 3.5x more
        kept = []
        for name in sorted(subdirs):  # sorted: which name of a twice-linked folder lists it is stable
            if name.startswith("."):  # hidden folders are not read
                continue
            path = os.path.join(directory, name)
            target = os.path.realpath(path) if os.path.islink(path) else None
            if target is not None and (target + os.sep).startswith(tree):
                not_read(prefix + name + "/", f"a link into {folder.name}/, listed there")
                continue
            try:
                identity = _folder_identity(path)
            except OSError:  # os.walk reports it through `record`
                kept.append(name)
                continue
            if identity in seen:
                not_read(prefix + name + "/", "a link to a folder listed already")
                continue
            seen.add(identity)
            kept.append(name)
            if target is not None:
                listed_at.setdefault(target, prefix + name + "/")
        subdirs[:] = kept
        suffixes = [(name, os.path.splitext(name)[1].lower()) for name in files if not name.startswith(".")]
        images = [name for name, suffix in suffixes if suffix in IMAGE_EXTENSIONS]
        found.extend(prefix + name for name in images)
        if file_links:
            linked.extend(prefix + name for name in images if name in file_links)
        tars.extend(prefix + name for name, suffix in suffixes if suffix == TAR_SUFFIX)
        unread_formats.update(suffix for _, suffix in suffixes if suffix in UNREAD_IMAGE_SUFFIXES)
    other_names = _other_names(folder, found, linked, listed_at)
    if other_names:
        found = [path for path in found if path not in other_names]
        unreadable.update((path, f"{LINKED_IMAGE} ({why})") for path, why in other_names.items())
        aliases.extend(other_names)
    if not found and not unreadable:
        compressed = _compressed_tars_in(folder)
        if compressed:
            raise ZsfsError(f"no images found in {folder}, but compressed tars ({some_names(compressed, 3)}); "
                            f"{READ_IN_PLACE}: decompress them first")
        if tars:
            raise ZsfsError(f"no images found in {folder}, but {counted(len(tars), 'tar file')} "
                            f"({some_names(sorted(tars), 3)}): {TAR_FOLDER}")
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ZsfsError(f"no images found in {folder} (looked recursively for {extensions})"
                        + (f"; it holds {unread_formats_text(unread_formats)}" if unread_formats else "") + ".")
    paths = sorted(found + list(unreadable))
    first_parts = [path.partition("/") for path in paths]
    # Labels become class names (prompts, vocabularies, outputs): valid UTF-8 text.
    loose = [first for first, slash, _ in first_parts if not slash]
    labels = None if loose else utf8_texts(first for first, _, _ in first_parts)
    # a label is a class folder's name as UTF-8 text, an undecodable byte written \xNN: two folders can give one
    merged = [] if labels is None else repeated(dict(zip((first for first, _, _ in first_parts), labels)).values())
    lie = "lies" if len(loose) == 1 else "lie"
    reason = (f"{counted(len(loose), 'image')} {lie} directly in {utf8_text(folder.name)}/, not in a class subfolder "
              f"(first: {utf8_text(loose[0])}), so the subfolders are not read as labels"
              if loose and len(loose) < len(paths) else None)
    return ImageSource(location=folder, root=folder, paths=paths, labels=labels, unreadable=unreadable,
                       no_labels_reason=reason, aliases=aliases, unread_tars=sorted(tars),
                       unread_formats=dict(sorted(unread_formats.items())), merged_labels=merged,
                       nested_classes=None if labels is None else nested_class_folders(paths))


def nested_class_folders(paths: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(class folders, their shared subfolders) when every image lies in a subfolder of a class
    folder and most of these subfolders are in every class folder, two at least: ``train/cat``,
    ``train/dog``, ``val/cat``, ``val/dog`` make the classes train and val, where cat and dog were
    meant. None otherwise. Names as UTF-8 text, as labels are."""
    inside: dict[str, set[str]] = {}
    for path in paths:
        first, _, rest = path.partition("/")
        second, slash, _ = rest.partition("/")
        if not slash:  # an image right in a class folder: the first level is the classes
            return None
        inside.setdefault(first, set()).add(second)
    shared = set.intersection(*inside.values())
    if len(shared) < 2 or 2 * len(shared) < len(set.union(*inside.values())):
        return None
    return utf8_texts(sorted(inside)), utf8_texts(sorted(shared))


def _walk(top: str, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str], set[str]]]:
    """``os.walk(top, onerror=onerror, followlinks=True)`` (top-down: the caller prunes the
    subfolders), each folder's files that are links given too: its directory entries say so
    without a stat per file."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as error:
            onerror(error)
            continue
        subdirs, files, links = [], [], set()
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # a link to a folder is one (followed, as os.walk's followlinks)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(entry.name)
                continue
            files.append(entry.name)
            if entry.is_symlink():
                links.add(entry.name)
        yield directory, subdirs, files, links
        pending.extend(os.path.join(directory, name) for name in reversed(subdirs))  # os.walk's order


def _other_names(folder: Path, found: list[str], linked: list[str], listed_at: dict[str, str]) -> dict[str, str]:
    """The image links of ``linked`` that name an image listed already (the target under its own
    name, in the tree or in a linked folder listed, or an earlier link to it), each with why: listed
    twice, it would be embedded twice, under two labels maybe. Links to images the scan lists
    nowhere else are kept. ``listed_at``: real folder -> its place in the tree ("" for the tree)."""
    if not linked:
        return {}
    listed = set(found) - set(linked)
    first_link_to: dict[str, str] = {}  # target -> the link that lists it
    others = {}
    for path in sorted(linked):
        target = os.path.realpath(os.path.join(folder, path))
        listed_there = _place_in_tree(target, listed_at) in listed
        if listed_there and target.startswith(str(folder) + os.sep):
            others[path] = f"a link into {folder.name}/, listed there"  # as a linked folder's reasons: one
        elif listed_there or target in first_link_to:  # per kind, so that a summary counts them in one line
            others[path] = "a link to an image listed already"
        else:
            first_link_to[target] = path
    return others


def _place_in_tree(target: str, listed_at: dict[str, str]) -> str | None:
    """Where the file at real path ``target`` is listed in the tree: under its nearest folder
    that ``listed_at`` names (the tree, or a linked folder the scan read), or None."""
    parent, name = os.path.split(target)
    parts = [name]
    while parent not in listed_at:
        parent, part = os.path.split(parent)
        if not part:  # the file system's root: in no listed folder
            return None
        parts.append(part)
    return listed_at[parent] + "/".join(reversed(parts))


def unread_formats_text(counts: dict[str, int]) -> str:
    """``"1 .dng and 2 .heic files, formats zsfs cannot read: convert them (to JPEG or PNG) ..."``."""
    listed = [f"{count:,} {suffix}" for suffix, count in counts.items()]
    named = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    one = sum(counts.values()) == 1
    return (f"{named} {'file' if one else 'files'}, {'a format' if len(counts) == 1 else 'formats'} zsfs cannot "
            f"read: convert {'it' if one else 'them'} (to JPEG or PNG) to include {'it' if one else 'them'}")


def _folder_identity(path: str | Path) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _compressed_tars_in(folder: Path) -> list[str]:
    """The compressed tars of a folder (which zsfs cannot read in place), sorted."""
    return sorted(name for name in os.listdir(folder) if is_compressed_tar(name))


def _tar_source(location: Path, root: Path, tars: list[Path], compressed: list[str] | None = None) -> ImageSource:
    paths, members, links = list_tars(root, tars, IMAGE_EXTENSIONS)
    if not paths:
        linked = f", only {counted(len(links), 'link')} (not read: zsfs reads the files of a tar)" if links else ""
        raise NoImagesError(f"{f'the {len(tars):,} tar files of ' if len(tars) > 1 else ''}{location} "
                            f"{'hold' if len(tars) > 1 else 'holds'} no images "
                        f"({' '.join(sorted(IMAGE_EXTENSIONS))}){linked}.")
    # A shard with no image member is valid (tar lists nothing) but often a failed download: say so.
    images_per_tar = np.bincount(members.tar, minlength=len(tars))
    empty = [tars[number].relative_to(root).as_posix() for number in np.flatnonzero(images_per_tar == 0)]
    return ImageSource(location=location, root=root, paths=paths, labels=None, members=members, empty_tars=empty,
                       compressed_tars=compressed or [], repeated_paths=repeated(paths),  # a member name twice
                       tar_links=links)


def _read_list(list_file: Path) -> ImageSource:
    paths, labels = read_list_file(list_file)
    # Kept: a list is taken as written.
    return ImageSource(location=list_file, root=list_file.parent, paths=paths, labels=labels,
                       repeated_paths=repeated(paths))
