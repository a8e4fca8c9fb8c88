"""Small generated image folders covering every format, mode and failure the decoder handles."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

DEFAULT_CLASSES = ("red", "green", "blue")

GOOD_KINDS = (
    "jpeg", "png", "webp", "bmp", "tiff", "gif", "exif_rotated", "gray", "palette",
    "palette_transparent", "rgba", "cmyk", "png16",
)
"""One image kind per listing position, cycled; a folder with >= 13 images has them all."""

_SUFFIX = {
    "jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif", "gif": ".gif",
    "exif_rotated": ".jpg", "gray": ".png", "palette": ".png", "palette_transparent": ".png",
    "rgba": ".png", "cmyk": ".JPEG", "png16": ".png",
}

BROKEN_FILES = {
    "corrupt.png": "corrupt",
    "truncated.jpg": "truncated",
    "empty.jpg": "empty",
    "notes.jpg": "not an image",
}
"""Broken files (placed in the first class folder) -> a word their skip reason contains."""

IGNORED_FILES = ("readme.txt", ".hidden.jpg", ".cache/thumb.jpg")
"""Files a folder scan must not list (placed in the first class folder)."""

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation "rotate 90 degrees clockwise to display"


def class_pattern(class_index: int, n_classes: int, width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: a class-specific colour and stripe direction, plus mild noise."""
    rng = np.random.default_rng(seed)
    hue = -2 * np.pi * class_index / max(n_classes, 1)  # 0, 1, 2 of 3 -> red, green, blue
    colour = 127.5 + 110 * np.cos(hue + np.array([0.0, 2.094, 4.189]))
    y, x = np.mgrid[0:height, 0:width]
    angle = np.pi * class_index / max(n_classes, 1)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * (0.4 + 0.1 * class_index))
    pixels = colour * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 8, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photos(folder: Path | str, n: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs of 400-500 px (smooth colour fields plus mild sensor noise): what
    benchmarks decode, at the cost of real photos."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        width, height = (int(v) for v in rng.integers(400, 501, size=2))
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 6, size=smooth.shape), 0, 255).astype(np.uint8)
        written.append(folder / f"img_{i:05d}.jpg")
        Image.fromarray(noisy).save(written[-1], quality=90)
    return written


def write_image_folder(
    root: Path | str,
    n_per_class: int = 5,
    classes: Sequence[str] = DEFAULT_CLASSES,
    broken: bool = True,
    seed: int = 0,
) -> dict:
    """Write ``root/<class>/<name>`` images and return what a reader should find.

    Returns a dict with ``root``; ``good`` (sorted relative paths that decode); ``labels``
    (path -> class); ``kinds`` (path -> kind from ``GOOD_KINDS``); ``sizes`` (path -> (width,
    height) after EXIF rotation); ``bad`` (path -> word in the expected skip reason);
    ``ignored`` (paths a scan must not list).
    """
    root = Path(root)
    good, labels, kinds, sizes = [], {}, {}, {}
    position = 0
    for class_index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            kind = GOOD_KINDS[position % len(GOOD_KINDS)]
            width, height = 40 + 4 * (position % 5), 48 + 2 * (position % 3)
            pixels = class_pattern(class_index, len(classes), width, height, seed * 100_003 + position)
            relative = f"{name}/{name}_{i:03d}_{kind}{_SUFFIX[kind]}"
            _write_kind(root / relative, kind, pixels)
            good.append(relative)
            labels[relative], kinds[relative] = name, kind
            sizes[relative] = (width, height)
            position += 1
    bad, ignored = {}, []
    if broken:
        folder = root / classes[0]
        bad = {f"{classes[0]}/{file}": reason for file, reason in BROKEN_FILES.items()}
        _write_broken(folder, class_pattern(0, len(classes), 48, 40, seed))
        ignored = [f"{classes[0]}/{file}" for file in IGNORED_FILES]
        for relative in ignored:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            _save(Image.fromarray(class_pattern(0, 1, 16, 16, seed)), root / relative, "JPEG")
    return {
        "root": root, "good": sorted(good), "labels": labels, "kinds": kinds, "sizes": sizes,
        "bad": bad, "ignored": ignored,
    }


def _write_kind(path: Path, kind: str, pixels: np.ndarray) -> None:
    rgb = Image.fromarray(pixels)
    if kind == "jpeg":
        _save(rgb, path, "JPEG", quality=90)
    elif kind in ("png", "webp", "bmp", "tiff"):
        _save(rgb, path, {"png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}[kind])
    elif kind == "gif":  # animated: the decoder must take the first frame
        frames = [rgb.quantize(64), Image.fromarray(255 - pixels).quantize(64)]
        _save(frames[0], path, "GIF", save_all=True, append_images=frames[1:], duration=50)
    elif kind == "exif_rotated":
        # Stored turned 90 degrees counter-clockwise (height x width); orientation 6 says "turn
        # 90 degrees clockwise to display", so a correct decoder gives back the original pixels.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_90_CW
        _save(rgb.transpose(Image.Transpose.ROTATE_90), path, "JPEG", quality=90, exif=exif.tobytes())
    elif kind == "gray":
        _save(rgb.convert("L"), path, "PNG")
    elif kind == "palette":
        _save(rgb.quantize(32), path, "PNG")
    elif kind == "palette_transparent":
        _save(rgb.quantize(32), path, "PNG", transparency=0)
    elif kind == "rgba":
        alpha = np.full(pixels.shape[:2], 255, np.uint8)
        alpha[: pixels.shape[0] // 3] = 0  # a fully transparent top band
        _save(Image.fromarray(np.dstack([pixels, alpha]), "RGBA"), path, "PNG")
    elif kind == "cmyk":
        _save(rgb.convert("CMYK"), path, "JPEG", quality=90)
    elif kind == "png16":
        # Full 16-bit range: a decoder that clips to 8 bit would turn this white.
        gray16 = (pixels.mean(axis=2) * 257).astype(np.uint16)
        _save(Image.fromarray(gray16), path, "PNG")
    else:
        raise ValueError(f"unknown image kind {kind!r}")


def _write_broken(folder: Path, pixels: np.ndarray) -> None:
    png = _encode(Image.fromarray(pixels), "PNG")
    start = png.find(b"IDAT") + 14
    damaged = png[:start] + bytes(b ^ 0x5A for b in png[start : start + 200]) + png[start + 200 :]
    (folder / "corrupt.png").write_bytes(damaged)  # valid header, scrambled pixel stream
    jpeg = _encode(Image.fromarray(pixels), "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are notes, not a picture\n")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _save(image: Image.Image, path: Path, fmt: str, **options) -> None:
    path.write_bytes(_encode(image, fmt, **options))


def encode_png16(samples: np.ndarray, transparency: tuple[int, int, int] | None = None) -> bytes:
    """A PNG of 16-bit samples, (height, width, 2 | 3 | 4) for gray+alpha, RGB, RGBA: Pillow
    cannot write 16-bit colour, which satellite and microscopy tools do. ``transparency``: an RGB
    image's colour key (a tRNS chunk: pixels of that colour are transparent)."""
    height, width, channels = samples.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]
    rows = samples.astype(">u2").reshape(height, width * channels)
    scanlines = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    key = [] if transparency is None else [(b"tRNS", struct.pack(">HHH", *transparency))]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _png_chunk(kind, body) for kind, body in ((b"IHDR", header), *key, (b"IDAT", zlib.compress(scanlines)),
                                                  (b"IEND", b""))
    )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_tiff(samples: np.ndarray, *, deflate: bool = False, orientation: int = 1, extra_samples: int = 0,
                planar: bool = False) -> bytes:
    """A little-endian TIFF of (height, width, bands) samples of any integer or float dtype, as
    GDAL writes them: bands past the third are extra samples of kind ``extra_samples`` (0
    unspecified, e.g. near infrared; 1 premultiplied alpha; 2 straight alpha). ``deflate``: Adobe
    deflate compression (Pillow then decodes through libtiff); ``planar``: one strip per band
    (planar configuration 2) instead of one strip of interleaved samples."""
    height, width, bands = samples.shape
    little = np.ascontiguousarray(samples, dtype=samples.dtype.newbyteorder("<"))
    planes = [np.ascontiguousarray(little[..., band]).tobytes() for band in range(bands)] if planar else [little.tobytes()]
    strips = [zlib.compress(plane) if deflate else plane for plane in planes]
    offsets = list(np.cumsum([8] + [len(strip) for strip in strips[:-1]]))
    sample_format = {"u": 1, "i": 2, "f": 3}[samples.dtype.kind]
    colour_bands = 3 if bands >= 3 else 1
    tags = {
        256: (4, [width]), 257: (4, [height]), 258: (3, [samples.dtype.itemsize * 8] * bands),
        259: (3, [8 if deflate else 1]), 262: (3, [2 if colour_bands == 3 else 1]), 273: (4, offsets),
        274: (3, [orientation]), 277: (3, [bands]), 278: (4, [height]), 279: (4, [len(strip) for strip in strips]),
        284: (3, [2 if planar else 1]), 339: (3, [sample_format] * bands),
    }
    if bands > colour_bands:
        tags[338] = (3, [extra_samples] * (bands - colour_bands))
    values_at = 8 + sum(len(strip) for strip in strips)
    out_of_line = b""
    entries = []
    for tag, (kind, values) in sorted(tags.items()):
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *map(int, values))
        if len(packed) > 4:
            entries.append(struct.pack("<HHII", tag, kind, len(values), values_at + len(out_of_line)))
            out_of_line += packed + b"\x00" * (len(packed) % 2)
        else:
            entries.append(struct.pack("<HHI", tag, kind, len(values)) + packed.ljust(4, b"\x00"))
    directory_at = values_at + len(out_of_line)
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", directory_at) + b"".join(strips) + out_of_line + directory
