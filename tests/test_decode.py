"""Decoding one image file: every format, mode and broken file, within a memory budget."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsfs.decode import MOST_BYTES_PER_PIXEL, ImageDecodeError, _low_byte_tiles, decode_image, image_size
from zsfs.testing.images import BROKEN_FILES, GOOD_KINDS, encode_png16, encode_tiff

EXIF_ORIENTATION = 0x0112


def decode_strict(path: Path) -> Image.Image:
    """decode_image with every warning turned into an error: decoding must be quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode_image(path)


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


# --- decode_image: the generated folder ----------------------------------------------------------


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_every_kind_decodes_to_rgb_of_the_right_size_and_colour(image_folder, kind):
    paths = [p for p, k in image_folder["kinds"].items() if k == kind]
    assert paths, f"the generated folder lacks kind {kind}"
    for relative in paths:
        image = decode_strict(image_folder["root"] / relative)
        assert image.mode == "RGB"
        assert image.size == image_folder["sizes"][relative]
        pixels = np.asarray(image, dtype=np.float64)
        means = pixels[pixels.shape[0] // 2 :].mean(axis=(0, 1))  # below any transparent band
        if kind in ("gray", "png16"):
            assert np.ptp(means) < 1 and 40 < means[0] < 215  # gray, and not clipped to white
        else:
            channel = ["red", "green", "blue"].index(image_folder["labels"][relative])
            assert means.argmax() == channel and means[channel] > means.min() + 60


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_every_broken_kind_gets_its_reason(image_folder, name):
    relative = next(p for p in image_folder["bad"] if p.endswith("/" + name))
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(image_folder["root"] / relative)
    assert image_folder["bad"][relative] in caught.value.reason
    assert caught.value.path == image_folder["root"] / relative


# --- decode_image: one property at a time ---------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    original = np.zeros((20, 30, 3), np.uint8)
    original[:, :10] = (250, 0, 0)  # red left band: its position shows the rotation
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "turn 90 degrees clockwise to display"
    sideways = Image.fromarray(original).transpose(Image.Transpose.ROTATE_90)
    path = save(sideways, tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    assert Image.open(path).size == (20, 30)  # stored height x width
    decoded = decode_strict(path)
    assert decoded.size == (30, 20)
    assert np.abs(np.asarray(decoded, np.int16) - original).mean() < 6


# The transpose that shows an image stored with each EXIF orientation upright (each undoes itself, but 6 and 8).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
STORED = {**UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_is_applied_and_the_upright_size_recorded(tmp_path, orientation):
    original = np.zeros((20, 30, 3), np.uint8)
    original[:10, :10] = (250, 0, 0)  # a red top-left corner: its position shows any turn or flip
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored = Image.fromarray(original).transpose(STORED[orientation])
    path = save(stored, tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    decoded = decode_strict(path)
    assert decoded.size == image_size(decoded) == (30, 20)  # width x height as shown, whatever was stored
    assert np.abs(np.asarray(decoded, np.int16) - original).mean() < 6


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_tiff_orientation_tag_is_applied_to_grayscale_tiffs_too(tmp_path, orientation, mode):
    """Walkthrough: an 8- or 16-bit grayscale TIFF tagged 5 to 8 came out garbled (neither turned nor
    as stored): Pillow maps such a file from its name into memory at the turned size."""
    original = np.zeros((20, 30), np.uint8)
    original[:10, :10] = 250  # a bright top-left corner: its position shows any turn or flip
    stored = Image.fromarray(original).transpose(STORED[orientation])
    if mode == "I;16":
        stored = Image.fromarray(np.asarray(stored).astype(np.uint16) * 257)
    elif mode == "RGB":
        stored = stored.convert("RGB")
    path = save(stored, tmp_path / "r.tif", tiffinfo={EXIF_ORIENTATION: orientation})
    decoded = decode_strict(path)
    assert decoded.size == image_size(decoded) == (30, 20)
    assert np.array_equal(np.asarray(decoded)[..., 0], original)


@pytest.mark.parametrize("dtype", [np.uint32, np.int8])
def test_tiff_samples_keep_their_sign(dtype):
    """Walkthrough: Pillow reads unsigned 32-bit TIFF samples as signed (a ramp to 4e9 came out
    brightening, then dark from 2**31) and signed 8-bit ones as unsigned (-100 came out bright)."""
    low, high = (0, 4e9) if dtype == np.uint32 else (-100, 100)
    ramp = np.linspace(low, high, 64).astype(dtype)[None, :, None].repeat(4, axis=0)
    row = np.asarray(decode_image("ramp.tif", data=encode_tiff(ramp)))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == (255 if dtype == np.int8 else 237) and (np.diff(row) >= 0).all(), row
    if dtype == np.uint32:  # review: 2**32 - 1 (GeoTIFF's no-data) became 2**32 in float32: 33 bits, all halved
        ramp[..., -1, 0] = 2**32 - 1
        row = np.asarray(decode_image("ramp.tif", data=encode_tiff(ramp)))[0, :, 0].astype(int)
        assert row[-1] == 255 and row[-2] == 234, row  # (233.9: the ramp, not halved)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour).quantize(4) for colour in ((255, 0, 0), (0, 0, 255))]
    path = save(frames[0], tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=40)
    assert tuple(np.asarray(decode_strict(path))[8, 8]) == (255, 0, 0)


def test_sixteen_bit_images_scale_to_eight_bit(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
    for suffix in (".png", ".tif"):
        decoded = np.asarray(decode_strict(save(Image.fromarray(ramp), tmp_path / f"g{suffix}")))
        assert np.abs(decoded[..., 0].astype(int) - np.rint(ramp / 257)).max() <= 1
        assert decoded[..., 0].min() == 0 and decoded[..., 0].max() == 255
    eight_bit = np.tile(np.arange(0, 101, dtype=np.uint16), (2, 1))  # 8-bit data (0..100) in a 16-bit container
    decoded = np.asarray(decode_strict(save(Image.fromarray(eight_bit), tmp_path / "g8.png")))
    assert (decoded[..., 0] == eight_bit).all()  # kept as it is: 100 is no highlight to stretch to white
    twelve_bit = (ramp >> 4).astype(np.uint16)  # e.g. medical images: 0..4095 in 16-bit files
    decoded = np.asarray(decode_strict(save(Image.fromarray(twelve_bit), tmp_path / "g12.png")))
    assert np.abs(decoded[..., 0].astype(int) - np.rint(twelve_bit.astype(float) * 255 / 4095)).max() <= 1


def test_32_bit_integer_and_float_images(tmp_path):
    ramp = np.linspace(0, 65535, 256).reshape(16, 16)
    as_int = save(Image.fromarray(ramp.astype(np.int32)), tmp_path / "i.tif")
    assert Image.open(as_int).mode == "I"
    assert np.abs(np.asarray(decode_strict(as_int))[..., 1] - ramp / 257).max() <= 1
    small = save(Image.fromarray((ramp / 257).astype(np.int32)), tmp_path / "i8.tif")
    assert np.asarray(decode_strict(small))[..., 2].max() == 255  # 8-bit data in an I container
    floats = save(Image.fromarray((ramp / 65535 * 2 - 1).astype(np.float32)), tmp_path / "f.tif")
    decoded = np.asarray(decode_strict(floats))[..., 0]
    assert decoded.min() == 0 and decoded.max() == 255  # min-max scaled, not clipped to 0/1


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[4:, :, 3] = 255  # top half transparent (its stored colour is meaningless)
    decoded = np.asarray(decode_strict(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
    assert (decoded[:4] == 255).all() and (decoded[4:] == (0, 200, 0)).all()
    la = Image.fromarray(rgba[..., [1, 3]], "LA")
    assert (np.asarray(decode_strict(save(la, tmp_path / "la.png")))[:4] == 255).all()
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    decoded = np.asarray(decode_strict(save(palette, tmp_path / "p.png", transparency=1)))
    assert (decoded == 255).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK")
    decoded = decode_strict(save(cmyk, tmp_path / "c.jpg", quality=95))
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, int)[8, 8] - (200, 30, 30)).max() < 12


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.mkdir(), p)[1], "a folder, not an image file"),  # a list may name one (walkthrough)
        (lambda p: (p.symlink_to(p.parent / "gone.png"), p)[1], "broken link (to "),  # was "file not found"
        (lambda p: (os.mkfifo(p), p)[1], "not a regular file"),  # reading a pipe would block
        # review: these two were labelled "truncated" and "corrupt" and both give the header's reason
        (lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n"), p)[1], "corrupt or truncated image header"),
        (lambda p: (p.write_bytes(b"GIF89a" + bytes(40)), p)[1], "corrupt or truncated image header"),
        (lambda p: (p.write_bytes(_noise_png()[:600]), p)[1], "truncated file"),  # cut inside its pixel data
    ],
)
def test_other_unreadable_files(tmp_path, make, reason):
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(make(tmp_path / "x.png"))
    assert raised.value.reason.startswith(reason)


def test_a_name_written_in_the_other_unicode_form_is_said_to_exist_so(tmp_path):
    """Walkthrough: a list naming café.png (é, NFC, as typed) of a folder copied from macOS
    (e + U+0301, NFD) said only "file not found"."""
    import unicodedata

    save(Image.new("RGB", (8, 8)), tmp_path / unicodedata.normalize("NFD", "café.png"))
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(tmp_path / "café.png")  # NFC, as typed here
    assert raised.value.reason == "file not found (it exists with its accents in Unicode's NFD form, not as given)"
    (tmp_path / "ok").mkdir()
    save(Image.new("RGB", (8, 8)), tmp_path / "ok" / "café.png")  # NFC
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(tmp_path / "ok" / unicodedata.normalize("NFD", "café.png"))
    assert raised.value.reason == "file not found (it exists with its accents in Unicode's NFC form, not as given)"
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(tmp_path / "ok" / "caf.png")
    assert raised.value.reason == "file not found"


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_store_given_as_an_image_is_named_as_one(tmp_path):
    """Bug: `zsfs predict --run RUN photos.h5` (the store by mistake) said "corrupt image data":
    Pillow names HDF5 files and has no decoder for them."""
    from zsfs.testing.synthetic import make_synthetic_store

    store = make_synthetic_store(tmp_path / "photos.h5", 20, 2, seed=0)
    with pytest.raises(ImageDecodeError, match=r"photos\.h5: not an image: HDF5 data \(a zsfs store\?\)$"):
        decode_image(store)


def test_permission_denied_is_a_skip_reason(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (8, 8)), tmp_path / "p.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("PIL.Image.open", refuse)
    with pytest.raises(ImageDecodeError, match="permission denied"):
        decode_image(path)


def test_images_over_the_pixel_budget_are_refused_or_decoded_smaller(tmp_path):
    png = save(Image.new("RGB", (64, 64), (255, 0, 0)), tmp_path / "big.png")
    jpeg = save(Image.new("RGB", (64, 64), (255, 0, 0)), tmp_path / "big.jpg")
    with pytest.raises(ImageDecodeError, match="too large.*budget of 1,000 pixels.*--max-pixels"):
        decode_image(png, max_pixels=1000)  # PNG decoders cannot decode smaller: refused
    assert decode_image(png, max_pixels=4096).size == (64, 64)
    half = decode_image(jpeg, max_pixels=1100)  # 1/2 scale (32 x 32) is the largest that fits
    assert half.size == (32, 32) and image_size(half) == (64, 64)
    assert np.abs(np.asarray(half, dtype=int) - [255, 0, 0]).max() < 8
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(jpeg, max_pixels=50)  # even 1/8 scale (8 x 8) is over
    # review (mutation): an odd size decodes at the DCT's rounded-up size (1/2 of 65 is 33), within the budget
    odd = save(Image.new("RGB", (65, 65), (255, 0, 0)), tmp_path / "odd.jpg")
    smaller = decode_image(odd, max_pixels=1050)
    assert smaller.size == (17, 17) and smaller.size[0] * smaller.size[1] <= 1050  # 33 x 33 is 1,089
    # walkthrough: a progressive JPEG takes its whole size in memory at any scale (1 gigapixel: 3.2 GB at 1/8)
    progressive = save(Image.new("RGB", (64, 64), (255, 0, 0)), tmp_path / "progressive.jpg", progressive=True)
    with pytest.raises(ImageDecodeError, match=r"budget of 1,100 pixels.*\): a progressive JPEG takes the memory"):
        decode_image(progressive, max_pixels=1100)
    assert decode_image(progressive, max_pixels=4096).size == (64, 64)


def test_the_pixel_budget_replaces_pillows_bomb_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for size in ((12, 12), (64, 64)):  # above Pillow's limit (it warns), above twice it (it raises)
        assert decode_strict(save(Image.new("RGB", size), tmp_path / f"{size[0]}.png")).size == size
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_images_over_the_working_size_are_reduced_before_conversion(tmp_path, monkeypatch):
    monkeypatch.setattr("zsfs.decode.WORKING_PIXELS", 16 * 16)
    wide = np.full((40, 64), 65535, np.uint16)
    wide[:, :32] = 0  # left half black, right half white (16-bit)
    png = save(Image.fromarray(wide), tmp_path / "w16.png")
    decoded = decode_strict(png)
    assert decoded.mode == "RGB" and decoded.size == (16, 10) and image_size(decoded) == (64, 40)
    pixels = np.asarray(decoded)[:, :, 0]
    assert (pixels[:, :8] == 0).all() and (pixels[:, 8:] == 255).all()
    jpeg = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown portrait
    Image.new("RGB", (64, 40), (0, 0, 255)).save(jpeg, exif=exif)
    rotated = decode_strict(jpeg)
    assert rotated.size == (10, 16) and image_size(rotated) == (40, 64)  # 1/2 scale, then halved again
    palette = Image.new("P", (64, 40), 3)
    palette.putpalette([0, 0, 0] * 3 + [200, 30, 10])
    decoded = decode_strict(save(palette, tmp_path / "p.png"))
    assert decoded.size == (16, 10) and (np.asarray(decoded) == (200, 30, 10)).all()  # reduced in colour, not grey


# --- high bit depths as satellite, microscopy and scientific tools write them --------------------

def twelve_bit_colour(height: int = 12, width: int = 20, bands: int = 3) -> np.ndarray:
    """(height, width, bands) uint16 samples below 4096, as 12-bit sensors store them."""
    return np.random.default_rng(0).integers(0, 4096, (height, width, bands)).astype(np.uint16)


def as_twelve_bit(samples: np.ndarray) -> np.ndarray:
    """The 8-bit values a 12-bit single band gets (255 / 4095)."""
    return np.rint(samples.astype(float) * 255 / 4095)


@pytest.mark.parametrize("container", ["png", "tiff", "tiff-deflate", "tiff-with-near-infrared"])
def test_sixteen_bit_colour_keeps_every_bit(container):
    """Bug: Pillow keeps only the high byte of 16-bit colour samples; 12-bit data came out almost black."""
    samples = twelve_bit_colour(bands=4 if container == "tiff-with-near-infrared" else 3)
    data = encode_png16(samples) if container == "png" else encode_tiff(samples, deflate=container == "tiff-deflate")
    decoded = np.asarray(decode_image(f"x.{container[:4]}", data=data), dtype=float)
    assert np.abs(decoded - as_twelve_bit(samples[..., :3])).max() == 0  # as a 12-bit single band is scaled
    full_range = samples.astype(np.uint32) * 16  # 16-bit data: the high byte alone was right, and still is
    redone = encode_png16(full_range) if container == "png" else encode_tiff(full_range.astype(np.uint16))
    decoded = np.asarray(decode_image(f"y.{container[:4]}", data=redone), dtype=float)
    assert np.abs(decoded - np.rint(full_range[..., :3].astype(float) / 257)).max() == 0


def test_sixteen_bit_colour_with_alpha_orientation_and_reduction(monkeypatch):
    samples = twelve_bit_colour(height=40, width=64)
    alpha = np.full((40, 64), 65535, np.uint16)
    alpha[:20] = 0  # top half transparent
    decoded = np.asarray(decode_image("a.png", data=encode_png16(np.dstack([samples, alpha]))))
    assert (decoded[:20] == 255).all()
    assert (decoded[20:] == as_twelve_bit(samples[20:])).all()
    encoded = encode_png16(np.dstack([samples, alpha]))  # as bytes, a memoryview (review) or a file: the same
    for data in (memoryview(encoded), io.BytesIO(encoded)):
        assert (np.asarray(decode_image("a.png", data=data)) == decoded).all()

    turned = decode_image("t.tif", data=encode_tiff(samples, orientation=6))  # "turn 90 degrees clockwise"
    assert (np.asarray(turned) == np.rot90(as_twelve_bit(samples), k=-1)).all()
    assert image_size(turned) == (40, 64)

    monkeypatch.setattr("zsfs.decode.WORKING_PIXELS", 16 * 16)  # factor 4: 64 x 40 -> 16 x 10
    reduced = decode_image("r.tif", data=encode_tiff(samples))
    block_means = samples.reshape(10, 4, 16, 4, 3).mean(axis=(1, 3))
    assert reduced.size == (16, 10) and image_size(reduced) == (64, 40)
    # block means rounded to whole 16-bit values, then to 8 bits
    assert np.abs(np.asarray(reduced, dtype=float) - block_means * 255 / 4095).max() <= 0.5 + 0.5 * 255 / 4095


def test_twelve_bit_colour_with_twelve_bit_alpha_is_as_opaque_as_written():
    """Bug: alpha was always read as 16-bit, so a 12-bit file's opaque 4095 was 6 % opaque and the
    picture washed out to the background."""
    samples = twelve_bit_colour(height=4, width=20)
    alpha = np.full((4, 20), 4095, np.uint16)
    alpha[:1], alpha[1:2] = 0, 2048  # transparent, half opaque, then opaque
    for data in (encode_png16(np.dstack([samples, alpha])), encode_tiff(np.dstack([samples, alpha]), extra_samples=2)):
        decoded = np.asarray(decode_image("a.png", data=data), dtype=float)
        assert (decoded[0] == 255).all() and (decoded[2:] == as_twelve_bit(samples[2:])).all()
        half = as_twelve_bit(samples[1]) * 2048 / 4095 + 255 * (1 - 2048 / 4095)
        assert np.abs(decoded[1] - half).max() <= 1.5


def test_sixteen_bit_colour_alpha_straight_premultiplied_and_planes():
    samples = twelve_bit_colour(bands=3)
    alpha = np.random.default_rng(1).integers(0, 65536, samples.shape[:2]).astype(np.uint16)
    straight = np.asarray(decode_image("a.tif", data=encode_tiff(np.dstack([samples, alpha]), extra_samples=2)), float)
    weight = alpha[..., None] / 65535
    assert np.abs(straight - (as_twelve_bit(samples) * weight + 255 * (1 - weight))).max() <= 1.5
    # Premultiplied alpha: each byte half would be divided by its own half of alpha, so the low
    # bytes are not read (Pillow's high bytes, as before).
    premultiplied = encode_tiff(np.dstack([samples, alpha]), extra_samples=1)
    with Image.open(io.BytesIO(premultiplied)) as image:
        assert image.tile[0][3][0].startswith("RGBa") and _low_byte_tiles(image) is None
    assert decode_image("p.tif", data=premultiplied).size == (20, 12)
    with pytest.raises(ImageDecodeError, match="16-bit TIFF with separate planes"):
        decode_image("planes.tif", data=encode_tiff(samples, planar=True))  # Pillow gives garbage: refused
    eight_bit_planes = np.asarray(decode_image("p8.tif", data=encode_tiff((samples >> 4).astype(np.uint8), planar=True)))
    assert (eight_bit_planes == samples >> 4).all()


def test_tiles_as_plain_tuples_as_pillow_before_11_gives_them():
    """Bug: reading tile.args broke every RGB image on Pillow 10, whose tiles are plain tuples."""
    with Image.open(io.BytesIO(encode_png16(twelve_bit_colour()))) as image:
        image.tile = [tuple(tile) for tile in image.tile]
        swapped = _low_byte_tiles(image)
    assert type(swapped[0]) is tuple and swapped[0][3] == "RGB;16L"
    with Image.open(io.BytesIO(encode_tiff(twelve_bit_colour()))) as image:
        image.tile = [tuple(tile) for tile in image.tile]
        assert _low_byte_tiles(image)[0][3] == ("RGB;16B", 0, 1)


def test_float_pixels_without_a_value_are_white_and_left_out_of_the_scaling(tmp_path):
    """Bug: one NaN or infinite pixel (a GeoTIFF's 'no data') turned the whole image black."""
    reflectance = np.linspace(0, 0.3, 16 * 16, dtype=np.float32).reshape(16, 16)
    for no_value in (np.nan, np.inf, -np.inf):
        pixels = reflectance.copy()
        pixels[:4, :4] = no_value
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's "invalid value" warnings reached the terminal
            decoded = np.asarray(decode_image("f.tif", data=encode_tiff(pixels[..., None])))[..., 0]
        assert (decoded[:4, :4] == 255).all()
        rest = np.ones((16, 16), bool)
        rest[:4, :4] = False
        expected = (reflectance - reflectance[rest].min()) / (reflectance[rest].max() - reflectance[rest].min())
        assert np.abs(decoded[rest] - np.rint(expected[rest] * 255)).max() <= 1
    with pytest.raises(ImageDecodeError, match="no pixel has a value"):
        decode_image("n.tif", data=encode_tiff(np.full((4, 4, 1), np.nan, np.float32)))


def test_a_file_of_a_format_this_pillow_lacks_is_not_called_foreign():
    heic = b"\x00\x00\x00\x1cftypheic" + bytes(40)  # HEIF, as AVIF where Pillow is built without it
    with pytest.raises(ImageDecodeError, match="corrupt or truncated image header, or a format variant"):
        decode_image("x.img", data=heic)
    with pytest.raises(ImageDecodeError, match=r"x.heic: a \.heic file, a format zsfs cannot read: convert it"):
        decode_image("x.heic", data=heic)  # named on its own, as a scan counts it


@pytest.mark.parametrize("head", [b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"II+\x00",
                                  b"RIFF\0\0\0\0WEBP",
                                  b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51" + b"\xff" * 8])
def test_a_damaged_image_is_told_from_a_file_that_is_no_image(head):
    """The skip reason says which: a file that starts with an image format's signature is damaged
    (or a variant this Pillow lacks); other RIFF files (WAV, AVI) and text are not images at all."""
    damaged = "a TIFF layout Pillow cannot read .*, or a damaged TIFF$" if head.startswith((b"II", b"MM")) else \
        "corrupt or truncated image header, or a format variant"
    with pytest.raises(ImageDecodeError, match=f"x.img: {damaged}"):
        decode_image("x.img", data=head + bytes(40))
    for foreign in (b"RIFF\0\0\0\0WAVE" + bytes(40), b"hello, world" + bytes(40)):
        with pytest.raises(ImageDecodeError, match="x.img: not an image \\(unidentified format\\)$"):
            decode_image("x.img", data=foreign)


def test_a_valid_file_pillow_cannot_read_says_so():
    float_colour = encode_tiff(np.zeros((4, 4, 3), np.float32))  # valid TIFF; Pillow has no mode for it
    with pytest.raises(ImageDecodeError, match="a TIFF layout Pillow cannot read"):
        decode_image("rgb-float.tif", data=float_colour)
    # walkthrough: two 16-bit bands (photometric MinIsBlack, an extra sample: as GDAL writes them) were
    # "corrupt or truncated", which sent users looking for damage
    with pytest.raises(ImageDecodeError, match="a TIFF layout Pillow cannot read: 2 bands of 16-bit integers \\(it "
                       "reads 1 band of integers or of 32-bit floats, or RGB of 8-bit integers with up to 3 more bands, "
                       "or of 16-bit unsigned ones with up to 1 more\\): save it in such a layout, e.g. as 8- or "
                       "16-bit RGB, or a band a file$"):
        decode_image("two-bands.tif", data=encode_tiff(np.zeros((4, 4, 2), np.uint16)))
    # walkthrough: a one-band 64-bit float elevation model, and 16-bit RGB with two near-infrared bands,
    # were "such as 2 bands, or 3 or more not tagged as RGB": the reason says what the file holds
    for samples, holds in ((np.zeros((4, 4, 1), np.float64), "1 band of 64-bit floats"),
                           (np.zeros((4, 4, 5), np.uint16), "5 bands of 16-bit integers tagged RGB"),
                           (np.zeros((4, 4, 7), np.uint8), "7 bands of 8-bit integers tagged RGB"),
                           (np.zeros((4, 4, 2), np.int8), "2 bands of 8-bit signed integers"),
                           # diff review: what the rule reads, and the same layouts as Pillow refuses them
                           (np.zeros((4, 4, 3), np.float32), "3 bands of 32-bit floats tagged RGB"),
                           (np.zeros((4, 4, 3), np.int16), "3 bands of 16-bit signed integers tagged RGB"),
                           (np.zeros((4, 4, 1), np.float16), "1 band of 16-bit floats")):
        with pytest.raises(ImageDecodeError, match=f"a TIFF layout Pillow cannot read: {holds} \\(it reads"):
            decode_image("x.tif", data=encode_tiff(samples))
    for readable in (np.zeros((4, 4, 6), np.uint8), np.zeros((4, 4, 4), np.uint16)):  # as the reason says
        assert decode_image("x.tif", data=encode_tiff(readable)).size == (4, 4)
    cut = encode_tiff(np.zeros((4, 4, 1), np.float64))[:60]  # its first image is past the end: damaged
    with warnings.catch_warnings(), pytest.raises(ImageDecodeError, match="a TIFF layout Pillow cannot read "
                                                                         "\\(such as .*, or a damaged TIFF$"):
        warnings.simplefilter("ignore")  # (Pillow's "Corrupt EXIF data", as it opens the cut header)
        decode_image("cut.tif", data=cut)


@pytest.mark.parametrize("quiet", [True, False])
def test_the_command_lines_decoders_keep_pillows_log_records_off_the_terminal(tmp_path, quiet):
    """Walkthrough: an 8-band TIFF printed Pillow's "More samples per pixel than can be decoded: 8",
    naming no file, between extract's progress lines (the skip reason says it all)."""
    (tmp_path / "eight.tif").write_bytes(encode_tiff(np.zeros((4, 4, 8), np.uint8)))
    script = ("import sys; from zsfs.decode import ImageDecodeError, decode_image, quiet_decoder_warnings\n"
              f"{'quiet_decoder_warnings()' if quiet else ''}\n"
              "try:\n    decode_image(sys.argv[1])\nexcept ImageDecodeError as error:\n    print(error.reason)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "eight.tif")], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.startswith("a TIFF layout Pillow cannot read"), done
    assert ("More samples per pixel" in done.stderr) is not quiet, done.stderr  # (not quiet: the test can fail)


def test_the_pixel_budget_is_inclusive_and_a_draft_decodes_a_jpeg_smaller(tmp_path, monkeypatch):
    """An image of exactly ``max_pixels`` pixels is within the budget (one more is over), also
    above the working size; a JPEG decoded with ``draft`` (thumbnails) comes out at the smallest
    DCT scale still at least that size, its size in the file kept."""
    Image.new("RGB", (100, 50), (10, 20, 30)).save(tmp_path / "exact.png")
    assert decode_image(tmp_path / "exact.png", max_pixels=5000).size == (100, 50)
    monkeypatch.setattr("zsfs.decode.WORKING_PIXELS", 1000)  # the budget is then checked on its own
    assert image_size(decode_image(tmp_path / "exact.png", max_pixels=5000)) == (100, 50)
    with pytest.raises(ImageDecodeError, match="over the budget of 4,999 pixels"):
        decode_image(tmp_path / "exact.png", max_pixels=4999)
    monkeypatch.undo()
    Image.new("RGB", (800, 600), (200, 100, 50)).save(tmp_path / "big.jpg", quality=90)
    thumbnail = decode_image(tmp_path / "big.jpg", draft=(100, 100))
    assert thumbnail.size == (200, 150) and image_size(thumbnail) == (800, 600)
    assert decode_image(tmp_path / "big.jpg").size == (800, 600)


def test_a_maximum_that_is_a_power_of_two_needs_one_bit_more(tmp_path):
    """16-bit samples whose maximum is 2**k need k + 1 bits: 256 is a 9-bit value (-> 128), not a
    highlight clipped to white."""
    pixels = np.array([[0, 64], [128, 256]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "nine_bits.png")
    decoded = np.asarray(decode_image(tmp_path / "nine_bits.png"))[..., 0]
    np.testing.assert_array_equal(decoded, np.rint(pixels * 255 / 511).astype(np.uint8))


def test_overlapping_decodes_restore_pillows_own_limit():
    """Pillow's bomb limit is lifted while any decode runs and restored by the last one to end,
    not left lifted by one that began while another ran."""
    from zsfs.decode import _pixel_budget_replaces_pillows

    before = Image.MAX_IMAGE_PIXELS
    with _pixel_budget_replaces_pillows():
        with _pixel_budget_replaces_pillows():
            assert Image.MAX_IMAGE_PIXELS is None
        assert Image.MAX_IMAGE_PIXELS is None
    assert Image.MAX_IMAGE_PIXELS == before is not None


def test_narrow_jpeg_multi_picture_jpeg_and_colour_keys_under_the_budget():
    """Review: a 7-pixel-wide JPEG over --max-pixels asked Pillow for width 0 at 1/8 scale
    (ZeroDivisionError: the whole extract stopped); a camera's multi-picture JPEG (MPO) was not
    decoded smaller (refused as too large); an L or RGB PNG's colour key (tRNS) came out black
    where a palette image's came out white."""
    strip = io.BytesIO()
    Image.fromarray(np.full((60_000, 7, 3), 90, np.uint8)).save(strip, "JPEG")
    with pytest.raises(ImageDecodeError, match="image too large"):  # Pillow's draft takes 1/4 here: over budget
        decode_image("strip.jpg", max_pixels=20_000, data=strip.getvalue())
    assert decode_image("strip.jpg", max_pixels=40_000, data=strip.getvalue()).size == (2, 15_000)

    frames = [Image.new("RGB", (64, 64), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    mpo = io.BytesIO()
    frames[0].save(mpo, "MPO", save_all=True, append_images=frames[1:])
    with Image.open(io.BytesIO(mpo.getvalue())) as opened:
        assert opened.format == "MPO"
    decoded = decode_image("camera.jpg", max_pixels=1_100, data=mpo.getvalue())
    assert decoded.size == (32, 32) and image_size(decoded) == (64, 64)

    for mode, key in (("L", 0), ("RGB", (0, 0, 0)), ("P", 0)):
        pixels = np.zeros((4, 4), np.uint8)
        pixels[2:] = 200
        keyed = io.BytesIO()
        Image.fromarray(pixels, "L").convert(mode).save(keyed, "PNG", transparency=key)
        decoded = np.asarray(decode_image("keyed.png", data=keyed.getvalue()))
        assert (decoded[:2] == 255).all() and (decoded[2:] == 200).all(), mode  # keyed black: transparent, white
    # walkthrough: 16-bit keyed PNGs came out black (gray, Pillow's I;16) or black (RGB, read by both bytes)
    pixels = np.zeros((4, 4), np.uint16)
    pixels[2:] = 3000  # 12-bit data: scaled by 255 / 4095
    keyed = io.BytesIO()
    Image.fromarray(pixels).save(keyed, "PNG", transparency=0)
    decoded = np.asarray(decode_image("keyed16.png", data=keyed.getvalue()))
    assert (decoded[:2] == 255).all() and (decoded[2:] == 187).all()
    rgb = np.repeat(pixels[..., None], 3, axis=2)
    for key, white_rows in (((0, 0, 0), slice(0, 2)), ((3000, 3000, 3000), slice(2, 4))):
        decoded = np.asarray(decode_image("keyed16.png", data=encode_png16(rgb, transparency=key)))
        assert (decoded[white_rows] == 255).all(), key
    assert (decoded[:2] == 0).all()  # the other rows as they are
    # review: the key's own value set the bit depth (a no-data 65535 made 12-bit data 1/16 as bright)
    nodata = pixels.copy()
    nodata[:2] = 65535
    keyed = io.BytesIO()
    Image.fromarray(nodata).save(keyed, "PNG", transparency=65535)
    decoded = np.asarray(decode_image("keyed16.png", data=keyed.getvalue()))
    assert (decoded[:2] == 255).all() and (decoded[2:] == 187).all()
    rgb_nodata = np.repeat(nodata[..., None], 3, axis=2)
    decoded = np.asarray(decode_image("keyed16.png", data=encode_png16(rgb_nodata, transparency=(65535,) * 3)))
    assert (decoded[:2] == 255).all() and (decoded[2:] == 187).all()
    every = encode_png16(np.full((4, 4, 3), 7, np.uint16), transparency=(7, 7, 7))  # all transparent: white
    assert (np.asarray(decode_image("keyed16.png", data=every)) == 255).all()


def test_decode_image_admits_each_image_at_its_decoded_size_and_lets_go_once_decoded(tmp_path):
    """Walkthrough: a report's thumbnail threads each decoded a 9000 x 9000 16-bit tile at once (6.4 GB
    where extract's one worker took 1.6): ``admit`` is how they share a memory budget, asked with the
    size the decoder will really produce (a JPEG at its reduced scale), before the pixels are decoded."""
    Image.new("RGB", (2000, 1000), (200, 10, 10)).save(tmp_path / "big.jpg")
    Image.new("RGB", (300, 200), (10, 200, 10)).save(tmp_path / "small.png")
    asked, held = [], []

    @contextmanager
    def admit(cost):
        asked.append(cost)
        held.append(True)
        try:
            yield
        finally:
            held.pop()

    for name, draft, expected in (("big.jpg", (96, 96), (250, 125)), ("big.jpg", None, (2000, 1000)),
                                  ("small.png", (96, 96), (300, 200))):
        image = decode_image(tmp_path / name, draft=draft, admit=admit)
        assert asked[-1] == expected[0] * expected[1] * MOST_BYTES_PER_PIXEL // 2  # 8-bit: half a 16-bit colour one's
        assert image.size == expected and not held
    with pytest.raises(ImageDecodeError):  # a file that fails after its header lets go too
        (tmp_path / "cut.png").write_bytes((tmp_path / "small.png").read_bytes()[:200])
        decode_image(tmp_path / "cut.png", admit=admit)
    assert asked[-1] == 300 * 200 * MOST_BYTES_PER_PIXEL // 2 and not held
