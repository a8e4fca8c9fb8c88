"""Decoding one image file: ``decode_image`` turns it into an RGB ``PIL.Image`` or raises
``ImageDecodeError`` with a short reason, so that callers can skip and record the file instead of
crashing or inventing pixels. Memory stays bounded whatever the file holds (``DEFAULT_MAX_PIXELS``,
``WORKING_PIXELS``). Which file suffixes are images: ``IMAGE_EXTENSIONS``.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import re
import stat
import struct
import sys
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from zsfs.errors import ZsfsError
from zsfs.names import utf8_text

SUFFIXES_ADDED = frozenset({".jpe", ".jfif", ".jp2", ".j2k", ".avif", ".tga", ".pbm", ".pgm", ".ppm", ".pnm"})
"""Suffixes a scan takes since December 2026: a store built earlier over the same folder lists
fewer files (see :meth:`ImageSource.digest_without_added_suffixes`)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}) | SUFFIXES_ADDED
"""File suffixes (compared lower-case) that a folder scan picks up: the photo, scan and raster
formats Pillow decodes (JPEG 2000 and AVIF where its build has them; a file it cannot decode is
skipped with the reason)."""

UNREAD_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw", ".svg",
     ".dcm", ".dicom", ".exr", ".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".bif", ".czi", ".lif", ".nd2",
     ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".fits", ".fit", ".fts"})
"""Image formats a scan does not take, since Pillow cannot decode them (phone, camera raw, vector,
DICOM, OpenEXR, whole-slide and microscope images, medical volumes), or not faithfully (astronomy's
FITS: Pillow 13 wraps signed 16-bit values and ignores BZERO and BSCALE): counted by suffix
(:func:`image_suffix`), so that the extract summary says they were left out (walkthrough: a
pathology folder's .svs slides, then a folder's NIfTI volumes, went unmentioned)."""


def image_suffix(name: str) -> str:
    """The suffix, in lower case, that tells ``name``'s format: ``.nii.gz`` whole (a compressed
    volume, not a .gz file), else the last one."""
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]

TRANSPARENT_BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white: their stored colour is arbitrary."""

DEFAULT_MAX_PIXELS = 89_478_485
"""Pixel budget of one image (``--max-pixels``): Pillow's own decompression-bomb limit, a 9459 x 9459
image. Larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale to fit it; larger files of other formats
are skipped with a reason (their decoders cannot decode smaller). Decoding a PNG at the budget
costs up to 4 bytes per pixel (~360 MB) in the decoding process; a 16-bit colour PNG or TIFF
(decoded twice, see ``_low_byte_tiles``) about 20 (~1.8 GB; measured: 800 MB and 2.5 s for a
36 MP one, where its high bytes alone took 240 MB and 0.4 s)."""

MOST_BYTES_PER_PIXEL = 20
"""What decoding costs per pixel at its peak (as decoded: a JPEG's reduced scale) for a 16-bit
colour PNG or TIFF, decoded twice (22 measured at 36 MP); other images cost at most half as much
(3 to 9.4 measured: 8-bit gray to 32-bit float)."""

FILE_NOT_FOUND = "file not found"
"""The reason of an image whose file is not there (``zsfs report`` then suggests --images)."""

WORKING_PIXELS = 4096 * 4096
"""Larger images are made smaller before any copy or colour conversion (JPEG: by DCT scaling while
decoding; others: by box reduction right after): the models see a few hundred pixels per side,
and a 16-bit image this large would otherwise cost ~30 bytes per pixel on its way to 8-bit RGB."""


def quiet_decoder_warnings() -> None:
    """Keep Pillow's warnings ("Corrupt EXIF data", "Truncated File Read", ...) off the terminal:
    they name no file, and the image decodes, or its failure is recorded with a reason. Called
    by the command line and by its worker processes (Ray actors), not on import: a library that
    silenced its caller's warnings would surprise. Pillow's log records too ("More samples per pixel
    than can be decoded: 8", between the progress lines)."""
    warnings.filterwarnings("ignore", module=r"PIL\.")
    logging.getLogger("PIL").setLevel(logging.CRITICAL)


class ImageDecodeError(Exception):
    """A file that cannot be turned into an image; ``reason`` is short and human-readable."""

    def __init__(self, reason: str, path: Path | str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path is not None else reason)


_MACHINE_ERRNOS = {errno.EMFILE: "raise the open-file limit (ulimit -n) or decode with fewer --workers",
                   errno.ENFILE: "raise the system's open-file limit or decode with fewer --workers",
                   errno.ENOMEM: "free some memory or decode with fewer --workers",
                   errno.ESTALE: "check the network mount the images are on",
                   errno.ENOTCONN: "check the mount the images are on (a FUSE mount whose process ended?)",
                   errno.ETIMEDOUT: "check the network mount the images are on"}
"""Read errors of the machine or its mounts, not of one file, and what to do about each."""


class MachineReadError(ZsfsError):
    """A file not read for a reason of the machine or its mounts (too many open files, no memory,
    a stale or lost mount): the run stops, since a skip recorded in a finished shard is never
    retried (review: one short outage turned every file it met into a permanent skip)."""


def machine_read_error(error: BaseException, path: Path | str) -> MachineReadError | None:
    """``error`` as a :class:`MachineReadError` when it is one of :data:`_MACHINE_ERRNOS`, else None."""
    advice = _MACHINE_ERRNOS.get(getattr(error, "errno", None))
    if advice is None:
        return None
    return MachineReadError(f"cannot read {utf8_text(os.fsdecode(path))}: {error.strerror}, a failure of this machine "
                            f"or its file system, not of the file: {advice}, then rerun")


def decode_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None, *,
                 data: bytes | memoryview | BinaryIO | None = None,
                 admit: Callable[[int], AbstractContextManager] | None = None) -> Image.Image:
    """Decode one file into an RGB image: EXIF orientation applied, first frame of animations.

    Images above ``WORKING_PIXELS`` come out smaller (the original size is in
    ``image_size(image)``); above ``max_pixels`` a baseline JPEG is decoded at a reduced scale and
    other formats (progressive JPEGs too) are refused. Raises ``ImageDecodeError`` with a short ``reason`` for empty,
    missing, unreadable, non-image, truncated, corrupt or too large files. The whole file is
    decoded here, so a broken file never gets past this function; a failure of the machine rather
    than of the file raises :class:`MachineReadError` instead. ``draft``: a JPEG may be decoded
    at 1/2 to 1/8 scale as long as it stays at least this size (thumbnails: much faster).
    ``data``: the file's content, got elsewhere (a tar member named ``path``), as bytes or a
    seekable binary file (read as the decoder needs it: a large member is not read whole); the
    file system is then not touched. ``admit(bytes)``: a context held while the image is decoded,
    given what decoding it may cost (:data:`MOST_BYTES_PER_PIXEL`, at its size as decoded: after any
    reduced JPEG scale), for threads that share a memory budget.
    """
    path = Path(path)
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        if source is None:
            status = path.stat()
            if stat.S_ISDIR(status.st_mode):  # a list may name one
                raise ImageDecodeError("a folder, not an image file", path)
            if not stat.S_ISREG(status.st_mode):  # pipes (which would block), devices
                raise ImageDecodeError("not a regular file", path)
        if (status.st_size if source is None else source.seek(0, os.SEEK_END)) == 0:
            raise ImageDecodeError("empty file", path)
        with ExitStack() as admitted, _pixel_budget_replaces_pillows(), _opened(path, source) as file, \
                Image.open(file) as image:
            if image.format in DATA_FORMATS:  # Pillow names them (stub plugins) but they hold no picture
                store = " (a zsfs store?)" if image.format == "HDF5" else ""
                raise ImageDecodeError(f"not an image: {image.format} data{store}", path)
            width, height = image.size
            _decode_smaller(image, max_pixels)
            if draft is not None:  # no effect when _decode_smaller reduced it already
                image.draft("RGB", draft)
            _refuse_planar_sixteen_bit(image)
            true_type = _sample_type_pillow_misreads(image)
            low_byte_tiles = _low_byte_tiles(image)  # read before load(), which consumes the tiles
            if admit is not None:  # (held until the file and its decoded copies are let go)
                per_pixel = MOST_BYTES_PER_PIXEL if low_byte_tiles is not None else MOST_BYTES_PER_PIXEL // 2
                admitted.enter_context(admit(image.width * image.height * per_pixel))
            image.load()  # force the full decode (Image.open only reads the header)
            if isinstance(image, JpegImageFile) and _zero_filled_jpeg(file):
                raise ImageDecodeError(ZERO_FILLED_JPEG, path)
            low_bytes = _decoded_with(low_byte_tiles, _rewound(file))
            if low_bytes is not None:
                key = image.info.get("transparency")
                decoded, swapped = _sixteen_bit_colour(np.asarray(image), low_bytes, image.mode, image.getexif(),
                                                       key if isinstance(key, tuple) else None)
            else:
                if true_type is not None:  # the samples as the file means them, as floats ("I" holds no uint32)
                    image = Image.fromarray(np.asarray(image).view(true_type).astype(np.float32), "F")
                oriented, swapped = _apply_exif_orientation(_reduced(image))
                decoded = _to_rgb(oriented, integer=true_type is not None)
        decoded.info[ORIGINAL_SIZE] = (height, width) if swapped else (width, height)
        return decoded
    except ImageDecodeError as error:
        raise ImageDecodeError(error.reason, path) from None
    except UnidentifiedImageError:
        if image_suffix(path.name) in UNREAD_IMAGE_SUFFIXES:  # named on its own (a list, predict): as a scan says it
            raise ImageDecodeError(unread_format_reason(path), path) from None
        head = _file_head(path) if source is None else _rewound(source).read(16)
        if head.startswith(_TIFF_SIGNATURES):  # most often a valid TIFF Pillow has no mode for
            layout = _tiff_layout(path, source)
            raise ImageDecodeError(f"{_TIFF_PILLOW_CANNOT_READ}, or a damaged TIFF" if layout is None else
                                   f"a TIFF layout Pillow cannot read: {layout} ({_PILLOWS_TIFF_LAYOUTS}): save it in "
                                   "such a layout, e.g. as 8- or 16-bit RGB, or a band a file", path) from None
        if _starts_like_an_image(head):  # also valid files of a variant Pillow has no decoder for
            raise ImageDecodeError("corrupt or truncated image header, or a format variant Pillow cannot read",
                                   path) from None
        raise ImageDecodeError("not an image (unidentified format)", path) from None
    except FileNotFoundError:
        raise ImageDecodeError(_not_found(path) if source is None else FILE_NOT_FOUND, path) from None
    except PermissionError:
        raise ImageDecodeError("unreadable file (permission denied)", path) from None
    except OSError as error:
        machine = machine_read_error(error, path)
        if machine is not None:
            raise machine from None
        if "truncated" in str(error).lower():
            raise ImageDecodeError("truncated file", path) from None
        if error.errno is not None:  # a real I/O failure, not a decoder complaint
            raise ImageDecodeError(f"unreadable file ({error.strerror})", path) from None
        raise ImageDecodeError("corrupt image data", path) from None
    except (SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, NotImplementedError,
            ArithmeticError):
        raise ImageDecodeError("corrupt image data", path) from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode (out of memory)", path) from None


def unread_format_reason(path: str | Path) -> str:
    """The skip reason of an image of ``UNREAD_IMAGE_SUFFIXES``."""
    return f"a {image_suffix(os.path.basename(path))} file, a format zsfs cannot read: convert it (to JPEG or PNG)"


@contextmanager
def _opened(path: Path, source: BinaryIO | None) -> Iterator[BinaryIO]:
    """``source`` rewound, or the file at ``path`` open for the block. Pillow is given a file, never
    a name: from a name it maps an uncompressed single-band image (TIFF, BMP, PPM) into memory at its
    oriented size, so an 8- or 16-bit grayscale TIFF turned by its orientation tag (5 to 8) came out
    garbled (Pillow 13: rows of the stored width read as rows of the turned one)."""
    if source is not None:
        yield _rewound(source)
        return
    with open(path, "rb") as file:
        yield file


_TIFF_PILLOW_CANNOT_READ = ("a TIFF layout Pillow cannot read (such as 2 bands, or 3 or more not tagged as RGB: GDAL's "
                            "usual multi-band GeoTIFF; or 3 float bands): save its bands as RGB or one file each")
_PILLOWS_TIFF_LAYOUTS = ("it reads 1 band of integers or of 32-bit floats, or RGB of 8-bit integers with up to 3 more "
                         "bands, or of 16-bit unsigned ones with up to 1 more")
_SAMPLE_KINDS = {1: "integers", 2: "signed integers", 3: "floats"}
_PHOTOMETRIC = {2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "CIELab", 32844: "LogL", 32845: "LogLuv"}
_LAYOUT_REFUSALS = ("unknown pixel mode", "Invalid value for samples per pixel", "unknown data organization")
"""Pillow's words when it has no mode for a TIFF's layout (other refusals: a damaged file)."""


def _tiff_layout(path: Path, source: BinaryIO | None) -> str | None:
    """What the first image of a TIFF holds ("5 bands of 16-bit integers tagged RGB", "1 band of
    64-bit floats"), when Pillow refuses it for that layout; None when Pillow refuses it for another
    reason (a damaged file) or its header cannot be read. Walkthrough: a one-band 64-bit float
    elevation model was skipped as "such as 2 bands, or 3 or more not tagged as RGB"."""
    from PIL.TiffImagePlugin import ImageFileDirectory_v2, TiffImageFile

    try:
        with _opened(path, source) as opened:
            try:
                TiffImageFile(opened).close()
                return None  # opened here: the failure was elsewhere
            except SyntaxError as refusal:
                if str(refusal) not in _LAYOUT_REFUSALS:
                    return None
            opened.seek(0)
            header = opened.read(8)
            tags = ImageFileDirectory_v2(header + opened.read(8) if header[2] == 43 else header)  # BigTIFF: 16 bytes
            opened.seek(tags.next)
            tags.load(opened)
            bands, bits = int(tags.get(277, 1)), tuple(tags.get(258, (1,)))
            kind = _SAMPLE_KINDS.get(tuple(tags.get(339, (1,)))[0], "samples of an unknown kind")
            photometric = tags.get(262)
    except Exception:  # any damage: the caller's reason allows for it
        return None
    width = f"{bits[0]}-bit" if len(set(bits)) == 1 else "-, ".join(map(str, bits)) + "-bit"
    tagged = "" if photometric in (0, 1, None) else f" tagged {_PHOTOMETRIC.get(photometric, f'photometric {photometric}')}"
    return f"{bands} band{'' if bands == 1 else 's'} of {width} {kind}{tagged}"


ZERO_FILLED_JPEG = "truncated file (its end is zeros: still being written?)"


def _zero_filled_jpeg(file: BinaryIO) -> bool:
    """Whether a JPEG ends in zeros with no end-of-image marker after its first scan: a file still
    being written into room reserved at its full size (a Windows or SMB copy, a download manager),
    whose unwritten part libjpeg decodes as flat grey without a word (a file cut short is already a
    truncated one). Only a file whose last byte is 0 is searched, and only up to that marker: zeros
    after a whole JPEG's end (padding, a sparse 2.5 GB tar member) are not read."""
    size = file.seek(0, os.SEEK_END)
    file.seek(size - 1)
    if file.read(1) != b"\0":
        return False
    scan = _first_scan_start(_rewound(file))
    if scan is None:  # a header the decoder took but this walk does not: its verdict stands
        return False
    file.seek(scan)
    carry = b""
    while chunk := file.read(1 << 20):
        data = carry + chunk
        if b"\xff\xd9" in data:  # EOI (inside a scan a 0xff byte is followed by 0 or a restart marker)
            return False
        carry = data[-1:]
    return True


def _first_scan_start(file: BinaryIO) -> int | None:
    """The offset of the first scan's data, found by walking the segments after SOI by their
    lengths (an EXIF thumbnail holds a scan and an end marker of its own), or None."""
    if file.read(2) != b"\xff\xd8":
        return None
    while len(head := file.read(4)) == 4 and head[0] == 0xFF:
        if head[1] == 0xFF:  # a fill byte before the marker
            file.seek(-3, os.SEEK_CUR)
            continue
        after = file.tell() + int.from_bytes(head[2:], "big") - 2
        if head[1] == 0xDA:  # SOS
            return after
        file.seek(after)
    return None


def _rewound(file: BinaryIO) -> BinaryIO:
    """``file`` at its start (each decode of it reads from there)."""
    file.seek(0)
    return file


def _not_found(path: Path) -> str:
    """Why ``path`` is not found: a link whose target is missing says which target to mend; a path
    that exists in Unicode's other form says so (macOS writes 'café' as e + U+0301, NFD; a typed
    list holds é, NFC; Linux file systems take the two as different names)."""
    try:
        target = os.readlink(path)
    except OSError:  # no link (or gone since): the file is missing
        text = os.fsdecode(path)
        for form in ("NFC", "NFD"):
            other = unicodedata.normalize(form, text)
            if other != text and os.path.exists(other):
                return f"{FILE_NOT_FOUND} (it exists with its accents in Unicode's {form} form, not as given)"
        return FILE_NOT_FOUND
    return f"broken link (to {utf8_text(os.fsdecode(target))})"


DATA_FORMATS = ("HDF5", "BUFR", "GRIB")
"""Scientific data formats Pillow identifies and cannot decode (WMF, its other stub, is a picture)."""

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
    is_jpeg = isinstance(image, JpegImageFile)  # also a camera's multi-picture JPEG (MPO), which "JPEG" missed
    if is_jpeg and image.info.get("progressive") and width * height > max_pixels:
        # libjpeg keeps every coefficient of a progressive JPEG (about 3 bytes a pixel) at any scale:
        # a 1-gigapixel one took 3.2 GB decoded at 1/8, the baseline one 0.4 GB
        raise ImageDecodeError(f"{_too_large(max_pixels)}: a progressive JPEG takes the memory of all its pixels "
                               "at any decoding scale")
    if is_jpeg:
        # The largest scale that keeps the working size, or a smaller one when the budget needs it.
        scales = [s for s in (1, 2, 4, 8) if s == 1 or (width // s) * (height // s) >= WORKING_PIXELS]
        fitting = [s for s in (1, 2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= max_pixels]
        if not fitting:
            raise ImageDecodeError(_too_large(max_pixels))
        scale = max(scales[-1], fitting[0])
        if scale > 1:  # at least 1 pixel: a 7-pixel-wide strip at 1/8 asked for width 0 (a ZeroDivisionError)
            image.draft(image.mode, (max(1, width // scale), max(1, height // scale)))
            if image.width * image.height > max_pixels:  # Pillow took a smaller scale (7 // 1 wide: 1/4)
                raise ImageDecodeError(_too_large(max_pixels))
    elif width * height > max_pixels:
        raise ImageDecodeError(_too_large(max_pixels))


def _too_large(max_pixels: int) -> str:
    return f"image too large (over the budget of {max_pixels:,} pixels, see --max-pixels)"


_REDUCIBLE = {"1": "L", "P": "RGBA"}
"""Modes that neither ``Image.reduce`` nor a box resize take -> the mode to reduce in instead."""


def _reduced(image: Image.Image) -> Image.Image:
    """A loaded image above the working size, box-reduced by an integer factor (other images as they are)."""
    factor = _reduction_factor(image.width, image.height)
    if factor <= 1:
        return image
    if image.mode.startswith("I;16"):  # reduce() refuses 16-bit modes; a box resize is the same mean
        size = (math.ceil(image.width / factor), math.ceil(image.height / factor))
        return image.resize(size, Image.Resampling.BOX)
    if image.mode in _REDUCIBLE:
        image = image.convert(_REDUCIBLE[image.mode])
    return image.reduce(factor)


def _reduction_factor(width: int, height: int) -> int:
    """The integer box factor that brings an image within ``WORKING_PIXELS`` (1: as it is)."""
    return max(1, math.ceil(math.sqrt(width * height / WORKING_PIXELS)))


_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, each byte order
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", *_TIFF_SIGNATURES, b"RIFF",
                     b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")  # the last two: JPEG 2000 (.jp2, .j2k)


def _file_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(16)
    except OSError:
        return b""


def _starts_like_an_image(head: bytes) -> bool:
    """Whether a file's first bytes are a known image signature (so it is damaged, not foreign)."""
    if head[4:8] == b"ftyp":  # ISO media (AVIF, HEIF): readable only by a Pillow built with AVIF
        return head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1")
    return head.startswith(_IMAGE_SIGNATURES) and (not head.startswith(b"RIFF") or head[8:12] == b"WEBP")


def _apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, bool]:
    """A rotated copy, or a plain copy (the result must outlive the closed file); and whether
    the rotation swapped width and height."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        return ImageOps.exif_transpose(image), orientation in (5, 6, 7, 8)
    except Exception:  # a damaged EXIF block should not cost the pixels, which decoded fine
        return image.copy(), False


_SIXTEEN_BIT_RAWMODE = re.compile(r"^(RGB|RGBA|RGBX);16([BLN])$")
"""16-bit colour rawmodes whose low bytes the other byte order gives. Premultiplied alpha ("RGBa")
is not among them: each half would be un-premultiplied by its own half of alpha."""
_OTHER_BYTE_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}


def _low_byte_tiles(image: Image.Image) -> list | None:
    """For a colour image with 16 bits per sample, the same tiles with the other byte order.

    Pillow has no 16-bit colour mode: it decodes such files (PNG, TIFF) to 8 bits per sample by
    keeping each sample's high byte, so 12-bit data (0..4095: satellite, microscopy and camera
    exports) would come out almost black. Decoded with the other byte order, the same tiles give
    the low bytes. None for any other image (single-band 16-bit images have modes of their own).
    """
    if image.mode not in ("RGB", "RGBA"):
        return None
    swapped = []
    for tile in image.tile:  # (codec, extents, offset, args): a tuple before Pillow 11, a NamedTuple since
        codec, extents, offset, args = tile
        rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else None
        match = _SIXTEEN_BIT_RAWMODE.match(rawmode) if isinstance(rawmode, str) else None
        if match is None:
            return None
        other = f"{match.group(1)};16{_OTHER_BYTE_ORDER[match.group(2)]}"
        parts = (codec, extents, offset, other if isinstance(args, str) else (other, *args[1:]))
        swapped.append(type(tile)(*parts) if hasattr(tile, "_fields") else parts)
    return swapped or None


def _refuse_planar_sixteen_bit(image: Image.Image) -> None:
    """Pillow reads 16-bit TIFFs whose bands are stored as separate planes (planar configuration
    2) as 8-bit planes of the wrong bytes: garbage, not even the high bytes."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None and tags.get(284) == 2 and 16 in tuple(tags.get(258) or ()):
        raise ImageDecodeError("a 16-bit TIFF with separate planes, which Pillow cannot read "
                               "(save it with the samples interleaved)")


def _sample_type_pillow_misreads(image: Image.Image) -> type[np.integer] | None:
    """The sample type of a single-band TIFF that Pillow reads with the wrong sign, or None:
    unsigned 32-bit samples come as signed ("I": values from 2**31 on turned negative, the brightest
    pixels dark), signed 8-bit ones as unsigned ("L": negative values turned bright)."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    sample_format, bits = set(tags.get(339) or (1,)), set(tags.get(258) or ())  # SampleFormat, BitsPerSample
    if image.mode == "I" and sample_format == {1} and bits == {32}:
        return np.uint32
    if image.mode == "L" and sample_format == {2} and bits == {8}:
        return np.int8
    return None


def _decoded_with(tiles: list | None, source: Path | BinaryIO) -> np.ndarray | None:
    """The file's pixels decoded with other tiles; None without tiles, or where that decode fails
    (the caller then keeps the high bytes, as Pillow gives them)."""
    if not tiles:
        return None
    with Image.open(source) as image:
        image.tile = tiles
        try:
            image.load()
            return np.asarray(image)
        except Exception:  # an unpacker this Pillow lacks, or a decoder's complaint: no low bytes
            return None


def _sixteen_bit_colour(high: np.ndarray, low: np.ndarray, mode: str, exif: Image.Exif,
                        key: tuple[int, int, int] | None = None) -> tuple[Image.Image, bool]:
    """RGB from the two 8-bit decodes of a 16-bit colour image (``mode`` RGB or RGBA, straight
    alpha; ``key``: an RGB image's 16-bit colour key, PNG tRNS), oriented by ``exif``; and whether
    it turned.

    The 16-bit samples take the single-band route (``_scale_to_8bit``), box-reduced first as
    ``_reduced`` reduces. About 20 bytes per pixel at the peak (the two decodes, as Pillow
    images and as arrays, and a 32-bit channel at a time), where the 8-bit route takes 4 to 8.
    """
    samples = _combined_and_reduced(high, low)
    rgb = _scale_to_8bit(samples[..., :3], integer=True, transparent=None if key is None else _keyed(samples, key))
    if mode == "RGBA":
        # Alpha by its own depth, never below the colour's: a 12-bit file's opaque 4095 stays opaque
        # (it read as 6 % opaque at 16 bits: the picture washed out), a 16-bit alpha's 65535 too.
        alpha = samples[..., 3]
        bits = max(_bit_depth(int(samples[..., :3].max())), _bit_depth(int(alpha.max())))
        opacity = np.rint(alpha * (255.0 / (2.0**bits - 1))).astype(np.uint8)
        rgb = _on_background(rgb, Image.fromarray(opacity))
    rgb.getexif()[ExifTags.Base.Orientation] = exif.get(ExifTags.Base.Orientation, 1)  # also a TIFF's own tag
    return _apply_exif_orientation(rgb)


def _combined_and_reduced(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """(height, width, channels) 16-bit samples from their high and low bytes; above the working
    size, box-reduced channel by channel in Pillow's 32-bit mode (``reduce`` takes no 16-bit mode)."""
    height, width, channels = high.shape
    factor = _reduction_factor(width, height)
    if factor <= 1:
        samples = np.left_shift(high, 8, dtype=np.uint16)
        samples |= low
        return samples
    reduced = []
    for channel in range(channels):
        wide = np.left_shift(high[..., channel], 8, dtype=np.int32)
        wide |= low[..., channel]
        reduced.append(np.asarray(Image.fromarray(wide, "I").reduce(factor)))
    return np.stack(reduced, axis=-1)


def _to_rgb(image: Image.Image, integer: bool = False) -> Image.Image:
    """``image`` as 8-bit RGB; ``integer``: its float samples stand for integers (scaled as those are)."""
    mode = image.mode
    keyed = "transparency" in image.info  # a colour key (PNG tRNS, GIF): transparent as an alpha band is
    if mode == "RGB" and not keyed:
        return image
    if mode.startswith("I") or mode == "F":
        pixels = np.asarray(image)
        key = image.info.get("transparency")  # (walkthrough: a 16-bit gray PNG's key came out black)
        return _scale_to_8bit(pixels, integer=integer or mode != "F",
                              transparent=_keyed(pixels, key) if isinstance(key, (int, tuple)) else None)
    if mode in ("P", "L", "RGB"):  # (review: an L or RGB image's key was ignored: black where P gave white)
        image = image.convert("RGBA" if keyed else "RGB")
        mode = image.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        return _on_background(rgba, rgba.getchannel("A"))
    try:
        return image.convert("RGB")
    except ValueError:
        raise ImageDecodeError(f"unsupported colour mode {mode}") from None


def _keyed(samples: np.ndarray, key: int | tuple[int, ...]) -> np.ndarray:
    """(height, width) bool: the pixels whose ``samples`` (height, width[, channels]) equal the
    colour ``key`` (a PNG tRNS value: a gray level or an RGB triple, at the samples' own depth),
    transparent. (Samples reduced from a large image match it only where a whole block had it.)"""
    key = np.asarray(key).reshape(-1)
    return np.all(samples.reshape(*samples.shape[:2], -1)[..., :key.size] == key, axis=-1)


def _on_background(image: Image.Image, opacity: Image.Image) -> Image.Image:
    """``image`` composited by its 8-bit ``opacity`` onto :data:`TRANSPARENT_BACKGROUND`, as RGB."""
    background = Image.new("RGB", image.size, TRANSPARENT_BACKGROUND)
    background.paste(image, mask=opacity)
    return background


def _scale_to_8bit(pixels: np.ndarray, *, integer: bool, transparent: np.ndarray | None = None) -> Image.Image:
    """Map 16/32-bit integer or float pixels to 8 bit without clipping highlights to white.

    Non-negative integers are scaled by the smallest bit depth (>= 8) that holds their maximum:
    a 16-bit photo by 1/257, 12-bit medical data in a 16-bit container by 255/4095 (instead of
    turning almost black). Floats and negative integers are min-max scaled. Float pixels with no
    value (NaN, infinite: a GeoTIFF's usual "no data") are left out of the scaling and drawn
    white, as ``transparent`` pixels ((height, width) bool: a colour key's) are; an image with no
    finite pixel is refused, one all transparent is white.
    """
    scaled = np.array(pixels, dtype=np.float64)  # the one working copy: every step below is in place
    no_value = None if integer else ~np.isfinite(scaled)
    if transparent is not None and transparent.any():  # (review: a key of 65535 made 12-bit data 1/16 as bright)
        if transparent.all():
            return Image.new("RGB", (scaled.shape[1], scaled.shape[0]), TRANSPARENT_BACKGROUND)
        keyed = transparent if scaled.ndim == 2 else np.broadcast_to(transparent[..., None], scaled.shape)
        no_value = keyed if no_value is None else no_value | keyed
    if no_value is not None and not no_value.any():
        no_value = None  # every pixel has a value
    if no_value is not None:
        if no_value.all():
            raise ImageDecodeError("no pixel has a value (all NaN or infinite)")
        scaled[no_value] = np.nan  # left out of the minimum and maximum below
    low, high = float(np.nanmin(scaled)), float(np.nanmax(scaled))
    if integer and low >= 0:
        scaled *= 255.0 / (2.0 ** _bit_depth(high) - 1)
    elif high > low:
        scaled -= low
        scaled *= 255.0 / (high - low)
    else:
        scaled[...] = 0  # a constant float image has no contrast to keep
    if no_value is not None:
        scaled[no_value] = 255
    np.rint(scaled, out=scaled)
    gray = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    if gray.ndim == 3:  # multi-channel wide modes are rare; keep the first three channels
        return Image.fromarray(np.ascontiguousarray(gray[..., :3])).convert("RGB")
    return Image.fromarray(gray).convert("RGB")


def _bit_depth(high: float) -> int:
    """The smallest bit depth (8 to 32) whose samples reach ``high``: 12 for 4095, 16 for 65535.
    At most 32: a uint32 sample near 2**32 - 1 (GeoTIFF's usual no-data) reaches 2**32 as float32."""
    return min(32, max(8, int(np.ceil(np.log2(high + 1)))))
