"""Image sources: find the images of a folder or list file, read their labels, decode them.

``open_source`` turns what the user points at into an ``ImageSource`` (paths + optional labels);
``decode_image`` turns one file into an RGB ``PIL.Image`` or raises ``ImageDecodeError`` with a
short reason, so that callers can skip and record the file instead of crashing or inventing pixels.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from zsfs.errors import ZsfsError
from zsfs.names import check_class_names, repeated, utf8_text
from zsfs.digests import listing_sha256
from zsfs.tars import TarMembers, is_tar_pattern, list_tars, resolve_tars, tar_shards_in

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File suffixes (compared lower-case) that a folder scan picks up."""

LIST_SUFFIXES = (".txt", ".csv")

TRANSPARENT_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white: their stored colour is arbitrary."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Pixel budget of one image (``--max-pixels``): Pillow's own decompression-bomb limit, a 9459 x 9459
image. Larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale to fit it; larger files of other formats
are skipped with a reason (their decoders cannot decode smaller). Decoding a PNG at the budget
costs up to 4 bytes per pixel (~360 MB) in the decoding process."""

WORKING_PIXELS = 4096 * 4096
"""Larger images are made smaller before any copy or colour conversion (JPEG: by DCT scaling while
decoding; others: by box reduction right after): the models see a few hundred pixels per side,
and a 16-bit image this large would otherwise cost ~30 bytes per pixel on its way to 8-bit RGB."""

UNREADABLE_FOLDER = "unreadable folder"
"""Reason prefix of a listing entry ``folder/`` that a scan could not read."""


class ImageDecodeError(Exception):
    """A file that cannot be turned into an image; ``reason`` is short and human-readable."""

    def __init__(self, reason: str, path: Path | str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path is not None else reason)


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
    repeated_paths: list[str] = field(default_factory=list)  # listed more than once (each row is embedded)

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
        """Sorted unique labels, or None when the source has no labels."""
        return None if self.labels is None else sorted(set(self.labels))

    def digest(self) -> str:
        """sha256 of the listing (paths and labels): changes whenever the listing does."""
        return listing_sha256(self.paths, self.labels)


def read_class_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line; blank lines and ``#`` comment lines ignored (as in
    list files), duplicates refused."""
    path = Path(path)
    if not path.is_file():
        raise ZsfsError(f"class file {path} does not exist; pass a text file with one class name per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ZsfsError(f"class file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                        f"{error.start}); save it as UTF-8") from None
    except OSError as error:
        raise ZsfsError(f"cannot read the class file {path}: {error.strerror}") from None
    classes = [name for name in (line.strip() for line in text.splitlines()) if name and not name.startswith("#")]
    if not classes:
        raise ZsfsError(f"class file {path} lists no class names; put one class name per line")
    return check_class_names(classes, f"class file {path}")


def open_source(source: str | Path) -> ImageSource:
    """Read a folder (scanned recursively), a ``.txt`` / ``.csv`` list of image paths, or
    webdataset tar shards (a folder of ``.tar`` files, one ``.tar``, or ``data/{00000..00009}.tar``).

    Folder: labels are the first-level subfolder names when every image sits in one.
    List: ``.txt`` has one path per line; ``.csv`` has a header with ``path`` and optionally
    ``label``. Relative paths are relative to the list file's folder.
    Tars: paths are ``<tar>::<member>``, read in place (see ``zsfs.tars``); no labels.
    """
    if is_tar_pattern(str(source)):
        root, tars = resolve_tars(str(source))
        return _tar_source(Path(source).expanduser().absolute(), root, tars)
    location = Path(source).expanduser()
    if not location.exists():
        raise ZsfsError(f"{source} does not exist; pass an image folder, a .txt/.csv list of images, or tar "
                        "shards (a .tar, a folder of them, or a pattern 'shards/{00000..00099}.tar').")
    location = location.resolve()
    if location.is_dir():
        tars = tar_shards_in(location, IMAGE_EXTENSIONS)
        return _tar_source(location, location, tars) if tars else _scan_folder(location)
    if location.suffix.lower() not in LIST_SUFFIXES:
        raise ZsfsError(
            f"{location} is neither a folder nor a list file; a list must end in .txt (one path "
            "per line) or .csv (header with 'path' and optional 'label' columns)."
        )
    return _read_list(location)


def _scan_folder(folder: Path) -> ImageSource:
    """Names come as the OS gives them (undecodable bytes as surrogates, see ``zsfs.names``), so
    every listed path reopens its file; a sub-folder that cannot be read is listed as ``name/``
    and recorded as skipped with the reason, never dropped silently."""
    found: list[str] = []
    unreadable: dict[str, str] = {}

    def record(error: OSError) -> None:
        if Path(error.filename) == folder:
            raise ZsfsError(f"cannot read the folder {folder}: {error.strerror}")
        relative = Path(error.filename).relative_to(folder).as_posix() + "/"
        unreadable[relative] = f"{UNREADABLE_FOLDER} ({(error.strerror or str(error)).lower()})"

    for directory, subdirs, files in os.walk(folder, onerror=record):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]  # prunes hidden folders
        relative = Path(directory).relative_to(folder).as_posix()
        prefix = "" if relative == "." else relative + "/"  # a string join: a Path per file costs 3.5x more
        found.extend(
            prefix + name
            for name in files
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    if not found and not unreadable:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ZsfsError(f"no images found in {folder} (looked recursively for {extensions}).")
    paths = sorted(found + list(unreadable))
    first_parts = [path.split("/", 1) for path in paths]
    # Labels become class names (prompts, vocabularies, outputs): valid UTF-8 text.
    loose = [parts[0] for parts in first_parts if len(parts) == 1]
    labels = None if loose else [utf8_text(parts[0]) for parts in first_parts]
    reason = (f"{len(loose)} image(s) lie directly in {utf8_text(folder.name)}/, not in a class subfolder (first: "
              f"{utf8_text(loose[0])}), so the subfolders are not read as classes; move them into one, or pass "
              "--classes" if loose and len(loose) < len(paths) else None)
    return ImageSource(location=folder, root=folder, paths=paths, labels=labels, unreadable=unreadable,
                       no_labels_reason=reason)


def _tar_source(location: Path, root: Path, tars: list[Path]) -> ImageSource:
    paths, members = list_tars(root, tars, IMAGE_EXTENSIONS)
    if not paths:
        raise ZsfsError(f"the {len(tars)} tar files of {location} hold no images "
                        f"({' '.join(sorted(IMAGE_EXTENSIONS))}).")
    # A shard with no image member is valid (tar lists nothing) but often a failed download: say so.
    images_per_tar = np.bincount(members.tar, minlength=len(tars))
    empty = [tars[number].relative_to(root).as_posix() for number in np.flatnonzero(images_per_tar == 0)]
    return ImageSource(location=location, root=root, paths=paths, labels=None, members=members, empty_tars=empty)


def _read_list(list_file: Path) -> ImageSource:
    root = list_file.parent
    try:
        # Names that are not UTF-8 are kept as bytes (surrogates), like the names of a folder scan;
        # decoded from bytes, so no newline translation: a name may hold "\r" or U+2028.
        text = list_file.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as error:
        raise ZsfsError(f"cannot read the list file {list_file}: {error}") from None
    if list_file.suffix.lower() == ".csv":
        raw_paths, labels = _parse_csv(text, list_file)
    else:  # a path per "\n" or "\r\n" line, verbatim (spaces are part of names); blank and "#" lines skipped
        lines = [line.removesuffix("\r") for line in text.split("\n")]
        raw_paths = [line for line in lines if line.strip() and not line.startswith("#")]
        labels = None
    if not raw_paths:
        raise ZsfsError(f"the list file {list_file} lists no images.")
    paths = [_relative_when_possible(p, root) for p in raw_paths]
    # Kept: a list is taken as written.
    return ImageSource(location=list_file, root=root, paths=paths, labels=labels, repeated_paths=repeated(paths))


def _parse_csv(text: str, list_file: Path) -> tuple[list[str], list[str] | None]:
    """Paths verbatim (a quoted field may hold commas, newlines, spaces), labels stripped."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "path" not in columns:
        raise ZsfsError(
            f"{list_file} has no 'path' column (found: {', '.join(columns) or 'nothing'}); "
            "the first line must be a header such as 'path,label'."
        )
    reader.fieldnames = columns
    rows = [row for row in reader if (row.get("path") or "").strip()]
    paths = [row["path"] for row in rows]
    if "label" not in columns:
        return paths, None
    labels = [utf8_text((row.get("label") or "").strip()) for row in rows]
    missing = [i for i, label in enumerate(labels) if not label]
    if missing:
        raise ZsfsError(
            f"{list_file}: {len(missing)} row(s) have an empty label (first: {paths[missing[0]]}); "
            "give every row a label or drop the label column."
        )
    return paths, labels


def _relative_when_possible(path: str, root: Path) -> str:
    if not path.startswith(("/", "~", "./")) and not path.endswith(("/", "/.")) and "//" not in path \
            and "/./" not in path and path != ".":
        return path  # already what Path(path).as_posix() gives: skips a Path per line (17 s at 1.28M)
    try:
        candidate = Path(path).expanduser()
    except RuntimeError:  # "~name/..." of no such user (or no home): a relative name, as written
        candidate = Path(path)
    if not candidate.is_absolute():
        return candidate.as_posix()
    try:
        return candidate.relative_to(root).as_posix()
    except ValueError:
        return candidate.as_posix()


def decode_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: tuple[int, int] | None = None, *, data: bytes | None = None) -> Image.Image:
    """Decode one file into an RGB image: EXIF orientation applied, first frame of animations.

    Images above ``WORKING_PIXELS`` come out smaller (the original size is in
    ``image_size(image)``); above ``max_pixels`` a JPEG is decoded at a reduced scale and
    other formats are refused. Raises ``ImageDecodeError`` with a short ``reason`` for empty,
    missing, unreadable, non-image, truncated, corrupt or too large files. The whole file is
    decoded here, so a broken file never gets past this function. ``draft``: a JPEG may be decoded
    at 1/2 to 1/8 scale as long as it stays at least this size (thumbnails: much faster).
    ``data``: the file's bytes, read elsewhere (a tar member named ``path``); the file system is
    then not touched.
    """
    path = Path(path)
    try:
        if data is None:
            status = path.stat()
            if not stat.S_ISREG(status.st_mode):  # directories, pipes (which would block), devices
                raise ImageDecodeError("not a regular file", path)
        if (status.st_size if data is None else len(data)) == 0:
            raise ImageDecodeError("empty file", path)
        with _pixel_budget_replaces_pillows(), Image.open(path if data is None else io.BytesIO(data)) as image:
            width, height = image.size
            _decode_smaller(image, max_pixels)
            if draft is not None:  # no effect when _decode_smaller reduced it already
                image.draft("RGB", draft)
            image.load()  # force the full decode (Image.open only reads the header)
            oriented, swapped = _apply_exif_orientation(_reduced(image))
        decoded = _to_rgb(oriented)
        decoded.info[ORIGINAL_SIZE] = (height, width) if swapped else (width, height)
        return decoded
    except ImageDecodeError as error:
        raise ImageDecodeError(error.reason, path) from None
    except UnidentifiedImageError:
        if _starts_like_an_image(_file_head(path) if data is None else data[:16]):
            raise ImageDecodeError("corrupt or truncated image header", path) from None
        raise ImageDecodeError("not an image (unidentified format)", path) from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found", path) from None
    except PermissionError:
        raise ImageDecodeError("unreadable file (permission denied)", path) from None
    except OSError as error:
        if "truncated" in str(error).lower():
            raise ImageDecodeError("truncated file", path) from None
        if error.errno is not None:  # a real I/O failure, not a decoder complaint
            raise ImageDecodeError(f"unreadable file ({error.strerror})", path) from None
        raise ImageDecodeError("corrupt image data", path) from None
    except (SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError):
        raise ImageDecodeError("corrupt image data", path) from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode (out of memory)", path) from None


ORIGINAL_SIZE = "zsfs.original_size"
"""``Image.info`` key of a decoded image's size (width, height) in the file, after orientation."""


def image_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image in its file, also when it was decoded smaller."""
    return image.info.get(ORIGINAL_SIZE, image.size)


_pillow_limit_lock = threading.Lock()
_decoding = 0  # zsfs decodes in progress in this process (threads: report thumbnails)
_pillow_limit = Image.MAX_IMAGE_PIXELS  # Pillow's own limit, restored when the last one ends


@contextmanager
def _pixel_budget_replaces_pillows() -> Iterator[None]:
    """Pillow refuses images above twice its MAX_IMAGE_PIXELS inside ``Image.open``; zsfs applies
    its own (configurable) budget instead. Pillow's limit is module state: it is lifted while any
    zsfs decode runs and restored by the last to finish (each saving and restoring it alone let
    overlapping threads leave it lifted for good)."""
    global _decoding, _pillow_limit
    with _pillow_limit_lock:
        if _decoding == 0:
            _pillow_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _decoding += 1
    try:
        yield
    finally:
        with _pillow_limit_lock:
            _decoding -= 1
            if _decoding == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


def _decode_smaller(image: Image.Image, max_pixels: int) -> None:
    """Within the budget; JPEGs larger than the working size are decoded at 1/2, 1/4 or 1/8 scale."""
    width, height = image.size
    if width * height <= WORKING_PIXELS and width * height <= max_pixels:
        return
    if image.format == "JPEG":
        # The largest scale that keeps the working size, or a smaller one when the budget needs it.
        scales = [s for s in (1, 2, 4, 8) if s == 1 or (width // s) * (height // s) >= WORKING_PIXELS]
        fitting = [s for s in (1, 2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= max_pixels]
        if not fitting:
            raise ImageDecodeError(_too_large(max_pixels))
        scale = max(scales[-1], fitting[0])
        if scale > 1:
            image.draft(image.mode, (width // scale, height // scale))
    elif width * height > max_pixels:
        raise ImageDecodeError(_too_large(max_pixels))


def _too_large(max_pixels: int) -> str:
    return f"image too large (over the budget of {max_pixels:,} pixels, see --max-pixels)"


_REDUCIBLE = {"1": "L", "P": "RGBA"}
"""Modes that neither ``Image.reduce`` nor a box resize take -> the mode to reduce in instead."""


def _reduced(image: Image.Image) -> Image.Image:
    """A loaded image above the working size, box-reduced by an integer factor (other images as they are)."""
    factor = math.ceil(math.sqrt(image.width * image.height / WORKING_PIXELS))
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):  # reduce() refuses 16-bit modes; a box resize is the same mean
        size = (math.ceil(image.width / factor), math.ceil(image.height / factor))
        return image.resize(size, Image.Resampling.BOX)
    if image.mode in _REDUCIBLE:
        image = image.convert(_REDUCIBLE[image.mode])
    return image.reduce(factor)


_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _file_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""


def _starts_like_an_image(head: bytes) -> bool:
    """Whether a file's first bytes are a known image signature (so it is damaged, not foreign)."""
    return head.startswith(_IMAGE_SIGNATURES) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP")


def _apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, bool]:
    """A rotated copy, or a plain copy (the result must outlive the closed file); and whether
    the rotation swapped width and height."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        return ImageOps.exif_transpose(image), orientation in (5, 6, 7, 8)
    except Exception:  # a damaged EXIF block should not cost the pixels, which decoded fine
        return image.copy(), False


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(np.asarray(image), integer=mode != "F")
    if mode == "P":
        mode_with_alpha = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode_with_alpha)
        mode = image.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return image.convert("RGB")
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode}") from None


def _scale_to_8bit(pixels: np.ndarray, *, integer: bool) -> Image.Image:
    """Map 16/32-bit integer or float pixels to 8 bit without clipping highlights to white.

    Non-negative integers are scaled by the smallest bit depth (>= 8) that holds their maximum:
    a 16-bit photo by 1/257, 12-bit medical data in a 16-bit container by 255/4095 (instead of
    turning almost black). Floats and negative integers are min-max scaled.
    """
    scaled = np.array(pixels, dtype=np.float64)  # the one working copy: every step below is in place
    low, high = float(scaled.min()), float(scaled.max())
    if integer and low >= 0:
        bits = max(8, int(np.ceil(np.log2(high + 1))))
        scaled *= 255.0 / (2.0**bits - 1)
    elif high > low:
        scaled -= low
        scaled *= 255.0 / (high - low)
    else:
        scaled[...] = 0  # a constant float image has no contrast to keep
    np.rint(scaled, out=scaled)
    gray = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    if gray.ndim == 3:  # multi-channel wide modes are rare; keep the first three channels
        return Image.fromarray(np.ascontiguousarray(gray[..., :3])).convert("RGB")
    return Image.fromarray(gray).convert("RGB")
