"""Listing a folder tree of images: every image file once, whatever links it holds (linked
folders are followed, each folder once; a second name of a folder or an image is an entry
skipped with the reason), and every folder it cannot read an entry with the reason too. What an
image source makes of the listing (labels, errors): ``zsfs.sources``."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from zsfs.decode import IMAGE_EXTENSIONS, UNREAD_IMAGE_SUFFIXES, image_suffix
from zsfs.errors import ZsfsError
from zsfs.names import utf8_texts
from zsfs.tars import TAR_SUFFIX

UNREADABLE_FOLDER = "unreadable folder"
"""Reason prefix of a listing entry ``folder/`` that a scan could not read."""
LINKED_FOLDER = "linked folder not followed"
"""Reason prefix of a linked folder not read because the scan lists it under another name (nothing is lost)."""
LINKED_IMAGE = "linked image not read"
"""Reason prefix of a link to an image the scan lists under another name (nothing is lost)."""


@dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_folder` finds under a folder, paths relative to it (``a/b.jpg``)."""

    images: list[str]  # image files (IMAGE_EXTENSIONS), each file once
    unreadable: dict[str, str]  # entries not read (``sub/`` for a folder): path -> reason
    aliases: list[str]  # linked folders and images not read: other names of ones listed
    tars: list[str]  # .tar files, which an image folder does not read
    unread_images: list[str]  # images of UNREAD_IMAGE_SUFFIXES (formats Pillow cannot decode)

    @property
    def unread_formats(self) -> dict[str, int]:
        """:attr:`unread_images` counted by suffix (lower case), suffixes sorted."""
        return suffix_counts(self.unread_images)


def scan_folder(folder: Path) -> FolderScan:
    """Names come as the OS gives them (undecodable bytes as surrogates, see ``zsfs.names``), so
    every listed path reopens its file; a sub-folder that cannot be read is listed as ``name/``
    and recorded as skipped with the reason, never dropped silently. Linked folders are followed
    (class folders are often links to another disk), each folder once: a link to a folder of the
    scanned tree, to a folder that holds the tree, or to one listed already, is a skipped entry with
    that reason (so no image is listed twice, under two labels, no image from beside the tree is
    listed under a class, and no link loops); so is a link to an image of the tree, or a
    second link to one image. ``folder``: resolved (a real path)."""
    found: list[str] = []
    unreadable: dict[str, str] = {}
    seen = {_folder_identity(folder)}  # (device, inode) of every folder listed
    listed_at = {str(folder): ""}  # real path of the tree and of each linked folder listed -> its place in the tree
    aliases: list[str] = []  # linked folders not read: other names of folders listed
    tars: list[str] = []  # .tar files, which an image folder does not read
    unread_images: list[str] = []
    tree = str(folder) + os.sep

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
            under = None if target is None else target.rstrip(os.sep) + os.sep
            if under is not None and under.startswith(tree):
                not_read(prefix + name + "/", f"a link into {folder.name}/, listed there")
                continue
            # a loop up, to a folder holding the tree or a linked folder listed, would list their neighbours
            # (the whole disk, for /)
            if under is not None and any(root.startswith(under) for root in listed_at):
                holds = f"{folder.name}/" if tree.startswith(under) else "a linked folder listed already"
                not_read(prefix + name + "/", f"a link to a folder that holds {holds}")
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
        suffixes = [(name, image_suffix(name)) for name in files if not name.startswith(".")]
        images = [name for name, suffix in suffixes if suffix in IMAGE_EXTENSIONS]
        found.extend(prefix + name for name in images)
        if file_links:
            linked.extend(prefix + name for name in images if name in file_links)
        tars.extend(prefix + name for name, suffix in suffixes if suffix == TAR_SUFFIX)
        unread_images.extend(prefix + name for name, suffix in suffixes if suffix in UNREAD_IMAGE_SUFFIXES)
    other_names = _other_names(folder, found, linked, listed_at)
    if other_names:
        found = [path for path in found if path not in other_names]
        unreadable.update((path, f"{LINKED_IMAGE} ({why})") for path, why in other_names.items())
        aliases.extend(other_names)
    return FolderScan(found, unreadable, aliases, tars, unread_images)


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


def suffix_counts(paths: Sequence[str]) -> dict[str, int]:
    """How many of ``paths`` end in each suffix (:func:`zsfs.decode.image_suffix`), suffixes sorted."""
    return dict(sorted(Counter(image_suffix(os.path.basename(path)) for path in paths).items()))


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
