"""Image sources: find the images of a folder, list file (read by ``zsfs.lists``) or tar shards, and
read their labels.

``open_source`` turns what the user points at into an ``ImageSource`` (paths + optional labels),
which decodes its images through ``zsfs.decode``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from zsfs.decode import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SUFFIXES_ADDED, ImageDecodeError, decode_image,
                         machine_read_error)
from zsfs.digests import listing_sha256
from zsfs.errors import ZsfsError, check_path
from zsfs.folders import nested_class_folders, scan_folder, suffix_counts, unread_formats_text
from zsfs.lists import TABLE_SEPARATORS, read_list_file
from zsfs.names import check_utf8_file_names, counted, repeated, some_names, utf8_text, utf8_texts
from zsfs.tars import (READ_IN_PLACE, TAR_FOLDER, TarMembers, TarReadError, compressed_tar_error,
                       is_compressed_tar, is_tar_pattern, list_tars, resolve_tars, split_member_path, tar_shards_in)


LIST_SUFFIXES = (".txt", *TABLE_SEPARATORS)


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
    unread_images: list[str] = field(default_factory=list)  # a folder's images of UNREAD_IMAGE_SUFFIXES (not read)
    merged_labels: list[str] = field(default_factory=list)  # labels of two class folders (see _folder_source)
    labels_not_text: str | None = None  # a list's labels in another encoding: why extract refuses them (a store
    # built from such a list before 2026-12-06 is resumed: see zsfs.extract)
    nested_classes: tuple[list[str], list[str]] | None = None  # class folders that hold the same subfolders:
    # (the class folders, their shared subfolders), a layout split in train/, val/, ... (see nested_class_folders)

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> Path:
        """Absolute path of the ``i``-th image (listed absolute paths are kept as they are)."""
        return self.root / self.paths[i]

    def decode(self, i: int, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None,
               admit: Callable[[int], AbstractContextManager] | None = None) -> Image.Image:
        """The ``i``-th image, from its file or its tar member (``decode_image``'s arguments and errors)."""
        if self.members is None or not self.members.holds(i):
            return decode_image(self.absolute(i), max_pixels, draft, admit=admit)
        try:
            with self.members.open(i) as member:
                return decode_image(self.paths[i], max_pixels, draft, data=member, admit=admit)
        except (OSError, TarReadError) as error:  # (decode_image turns the decoders' OSErrors into its own)
            machine = machine_read_error(error, self.paths[i])
            if machine is not None:
                raise machine from None
            raise ImageDecodeError(f"unreadable tar ({getattr(error, 'strerror', None) or error})", self.paths[i]) \
                from None

    @property
    def unread_formats(self) -> dict[str, int]:
        """:attr:`unread_images` counted by suffix (the extract summary's "images not read")."""
        return suffix_counts(self.unread_images)

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


def open_source(source: str | Path, *, labels: bool = True, keep_absolute: bool = False) -> ImageSource:
    """Read a folder (scanned recursively), a ``.txt`` / ``.csv`` / ``.tsv`` list of image paths, or
    webdataset tar shards (a folder of ``.tar`` files, one ``.tar``, or ``data/{00000..00009}.tar``).

    Folder: labels are the first-level subfolder names when every image sits in one.
    List: ``.txt`` has one path per line; ``.csv`` (``.tsv``: tab-separated) has a header with ``path``
    and optionally ``label``. Relative paths are relative to the list file's folder.
    Tars: paths are ``<tar>::<member>``, read in place (see ``zsfs.tars``); no labels.
    ``labels=False``: a list's label column is not read (``zsfs predict`` names no class).
    ``keep_absolute``: a list's absolute paths stay as written (``zsfs predict`` names each image as
    asked), where a store keeps those under the list's folder relative to it (to move with it).
    """
    listing = _listing(source, labels, keep_absolute)
    check_utf8_file_names(listing.paths)
    return listing


def _listing(source: str | Path, labels: bool, keep_absolute: bool) -> ImageSource:
    source = check_path("source", source)
    if is_tar_pattern(source):
        root, tars = resolve_tars(source)
        # normalised as a folder's location is ("a/../t.tar" is "t.tar"), so a rerun from another folder matches
        return _tar_source(Path(os.path.abspath(source)), root, tars)
    location = Path(source)
    if not location.exists():
        raise ZsfsError(f"{source} does not exist; pass an image folder, a .txt/.csv/.tsv list of images, or tar "
                        "shards (a .tar, a folder of them, or a pattern 'shards/{00000..00099}.tar').")
    location = location.resolve()
    if location.is_dir():
        tars = tar_shards_in(location, IMAGE_EXTENSIONS)
        return _tar_source(location, location, tars, _compressed_tars_in(location)) if tars else \
            _folder_source(location)
    if is_compressed_tar(location.name):
        raise compressed_tar_error(location)
    if location.suffix.lower() in IMAGE_EXTENSIONS:  # `zsfs extract photo.jpg`, or photos/*.jpg's first
        raise ZsfsError(f"{location} is an image; the source is one folder, list file or set of tar shards: put the "
                        "images in a folder, or list their paths in a .txt file (one per line)")
    if location.suffix.lower() not in LIST_SUFFIXES:
        raise ZsfsError(
            f"{location} is neither a folder nor a list file; a list must end in .txt (one path "
            "per line), .csv or .tsv (header with 'path' and optional 'label' columns)."
        )
    return _read_list(location, labels, keep_absolute)


def _folder_source(folder: Path) -> ImageSource:
    """The images of ``folder`` (resolved), labelled by their first-level subfolder when every
    image lies in one (:func:`zsfs.folders.scan_folder` lists them)."""
    scan = scan_folder(folder)
    if not scan.images and not scan.unreadable:
        compressed = _compressed_tars_in(folder)
        if compressed:
            raise ZsfsError(f"no images found in {folder}, but compressed tars ({some_names(compressed, 3)}); "
                            f"{READ_IN_PLACE}: decompress them first")
        if scan.tars:
            raise ZsfsError(f"no images found in {folder}, but {counted(len(scan.tars), 'tar file')} "
                            f"({some_names(sorted(scan.tars), 3)}): {TAR_FOLDER}")
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        holds = f"; it holds {unread_formats_text(scan.unread_formats)}" if scan.unread_formats else ""
        raise ZsfsError(f"no images found in {folder} (looked recursively for {extensions}){holds}.")
    paths = sorted(scan.images + list(scan.unreadable))
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
    return ImageSource(location=folder, root=folder, paths=paths, labels=labels, unreadable=scan.unreadable,
                       no_labels_reason=reason, aliases=scan.aliases, unread_tars=sorted(scan.tars),
                       unread_images=scan.unread_images, merged_labels=merged,
                       nested_classes=None if labels is None else nested_class_folders(paths))


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


TAR_MEMBER_IN_LIST = "a tar member (a list names files: give the tars themselves as the source)"
"""Skip reason of a list entry ``shard.tar::member`` (predict reads those; extract reads whole tars)."""


def _read_list(list_file: Path, with_labels: bool, keep_absolute: bool) -> ImageSource:
    paths, labels, labels_not_text = read_list_file(list_file, labels=with_labels, keep_absolute=keep_absolute)
    members = [path for path in paths if (parts := split_member_path(path, list_file.parent)) is not None
               and (list_file.parent / parts[0]).is_file() and not (list_file.parent / path).exists()]
    # Kept: a list is taken as written.
    return ImageSource(location=list_file, root=list_file.parent, paths=paths, labels=labels,
                       unreadable=dict.fromkeys(members, TAR_MEMBER_IN_LIST), repeated_paths=repeated(paths),
                       labels_not_text=labels_not_text)
