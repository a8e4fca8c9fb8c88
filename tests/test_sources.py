"""Finding images in folders and lists, and decoding every format, mode and broken file."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsfs.errors import ZsfsError
from zsfs.sources import IMAGE_EXTENSIONS, ImageDecodeError, ImageSource, decode_image, image_size, open_source
from zsfs.testing.images import BROKEN_FILES, GOOD_KINDS, write_image_folder

EXIF_ORIENTATION = 0x0112


def decode_strict(path: Path) -> Image.Image:
    """decode_image with every warning turned into an error: decoding must be quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode_image(path)


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


# --- open_source -------------------------------------------------------------------------------


def test_image_extensions_are_lower_case_suffixes():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS


def test_folder_lists_images_sorted_with_subfolder_labels(image_folder):
    source = open_source(image_folder["root"])
    expected = sorted(image_folder["good"] + list(image_folder["bad"]))
    assert source.paths == expected
    assert source.location == source.root == Path(image_folder["root"]).resolve()
    assert source.labels == [path.split("/")[0] for path in expected]
    assert source.classes == ["blue", "green", "red"]
    assert not set(image_folder["ignored"]) & set(source.paths)  # hidden, non-image suffix
    assert source.absolute(0) == source.root / expected[0]
    assert len(source) == len(expected)


def test_folder_with_loose_images_has_no_labels(tmp_path):
    write_image_folder(tmp_path, n_per_class=1, classes=("a",), broken=False)
    save(Image.new("RGB", (8, 8)), tmp_path / "loose.PNG")  # upper-case suffix counts
    source = open_source(tmp_path)
    assert source.labels is None and source.classes is None
    assert "loose.PNG" in source.paths and len(source.paths) == 2
    # said, not silent: the extract summary used to claim there were no class subfolders
    assert "1 image(s) lie directly in" in source.no_labels_reason and "loose.PNG" in source.no_labels_reason
    assert open_source(tmp_path / "a").no_labels_reason is None  # loose images only: nothing to explain


def test_label_is_the_first_level_folder_of_nested_images(tmp_path):
    (tmp_path / "cat" / "indoor").mkdir(parents=True)
    save(Image.new("RGB", (8, 8)), tmp_path / "cat" / "indoor" / "1.png")
    save(Image.new("RGB", (8, 8)), tmp_path / "cat" / "2.png")
    assert open_source(tmp_path).labels == ["cat", "cat"]


def test_txt_list_resolves_relative_to_its_folder(tmp_path):
    write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("a",), broken=False)
    outside = save(Image.new("RGB", (8, 8)), tmp_path.parent / f"{tmp_path.name}-outside.png")
    inside_absolute = tmp_path / "imgs" / "a" / "a_001_png.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\nimgs/a/a_000_jpeg.jpg\n\n{inside_absolute}\n{outside}\n")
    source = open_source(listing)
    assert source.root == tmp_path.resolve() and source.location == listing.resolve()
    assert source.paths == ["imgs/a/a_000_jpeg.jpg", "imgs/a/a_001_png.png", str(outside)]
    assert source.labels is None
    assert source.absolute(2) == outside and source.absolute(0).is_file()


def test_list_lines_are_normalised_as_paths_and_a_tilde_of_no_user_is_a_plain_name(tmp_path):
    """Bug: a line "~nosuchuser/x.jpg" stopped the listing with pathlib's RuntimeError
    ("Could not determine home directory"); it is now a relative name like any other (and its
    file, absent, is skipped with the reason)."""
    listing = tmp_path / "list.txt"
    lines = ["a/b.jpg", "./a/c.jpg", "a//d.jpg", "a/./e.jpg", "a/f/", "~zsfs-no-such-user/g.jpg", f"{tmp_path}/h.jpg"]
    listing.write_text("\n".join(lines) + "\n")
    assert open_source(listing).paths == ["a/b.jpg", "a/c.jpg", "a/d.jpg", "a/e.jpg", "a/f",
                                          "~zsfs-no-such-user/g.jpg", "h.jpg"]


def test_a_path_listed_twice_is_kept_and_named_in_the_extract_summary(tmp_path):
    from zsfs.testing.cli import run_cli
    from zsfs.testing.models import TINY_MODEL_ARGS

    write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("a",), broken=False)
    twice = tmp_path / "imgs" / "a" / "a_000_jpeg.jpg"
    listing = tmp_path / "list.txt"
    listing.write_text(f"imgs/a/a_000_jpeg.jpg\nimgs/a/a_001_png.png\n{twice}\n")  # once relative, once absolute
    source = open_source(listing)
    assert len(source.paths) == 3 and source.repeated_paths == ["imgs/a/a_000_jpeg.jpg"]
    result = run_cli("extract", listing, "--out", tmp_path / "list.h5", "--workers", "0", *TINY_MODEL_ARGS)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "paths listed twice or more │ 1: imgs/a/a_000_jpeg.jpg" in said
    assert open_source(tmp_path / "imgs").repeated_paths == []


def test_list_files_keep_names_verbatim(tmp_path):
    """Bug: lists were split with str.splitlines (which also breaks at U+2028, U+0085, \\x0c...) and
    stripped, so " lead.jpg" was read as "lead.jpg": with both files there, the wrong image twice."""
    names = [" lead.jpg", "lead.jpg", "a\u2028b.jpg", "form\x0cfeed.jpg", "trail .jpg", "new\nline.jpg"]
    for name in names:
        save(Image.new("RGB", (8, 8)), tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_bytes("\r\n".join(names[:5]).encode() + b"\r\n\r\n# a comment\n")
    assert open_source(listing).paths == names[:5]
    table = tmp_path / "list.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["path", "label"], *[[name, f" class {i} "] for i, name in enumerate(names)]])
    source = open_source(table)
    assert source.paths == names and source.labels == [f"class {i}" for i in range(len(names))]
    assert all(source.absolute(i).is_file() for i in range(len(names)))


def test_csv_list_with_and_without_labels(tmp_path):
    (tmp_path / "with.csv").write_text("path,label\nx/1.jpg,cat\nx/2.jpg,dog\n")
    (tmp_path / "without.csv").write_text("id,path\n1,x/1.jpg\n")
    labelled = open_source(tmp_path / "with.csv")
    assert labelled.paths == ["x/1.jpg", "x/2.jpg"] and labelled.labels == ["cat", "dog"]
    assert labelled.classes == ["cat", "dog"]
    assert open_source(tmp_path / "without.csv").labels is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nopath.csv", "file,label\na.jpg,x\n", "no 'path' column"),
        ("blank.csv", "path,label\na.jpg,x\nb.jpg,\n", "empty label"),
        ("empty.txt", "# nothing\n\n", "lists no images"),
        ("list.json", "[]", "neither a folder nor a list file"),
    ],
)
def test_bad_list_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ZsfsError, match=message):
        open_source(tmp_path / name)


def test_missing_or_imageless_source_is_a_clear_error(tmp_path):
    with pytest.raises(ZsfsError, match="does not exist"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "notes.txt.d").mkdir()
    (tmp_path / "notes.txt.d" / "readme.md").write_text("hi")
    with pytest.raises(ZsfsError, match="no images found"):
        open_source(tmp_path / "notes.txt.d")


def test_digest_follows_the_listing(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\n1.jpg,x\n2.jpg,y\n")
    (tmp_path / "b.csv").write_text("path,label\n1.jpg,x\n2.jpg,z\n")
    (tmp_path / "c.csv").write_text("path,label\n1.jpg,x\n2.jpg,y\n")
    a, b, c = (open_source(tmp_path / f"{n}.csv").digest() for n in "abc")
    assert a == c != b and len(a) == 64


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
        (lambda p: (p.mkdir(), p)[1], "not a regular file"),
        (lambda p: (os.mkfifo(p), p)[1], "not a regular file"),  # reading a pipe would block
        (lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n"), p)[1], "truncated"),
        (lambda p: (p.write_bytes(b"GIF89a" + bytes(40)), p)[1], "corrupt"),
    ],
)
def test_other_unreadable_files(tmp_path, make, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(make(tmp_path / "x.png"))


def test_permission_denied_is_a_skip_reason(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (8, 8)), tmp_path / "p.png")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("zsfs.sources.Image.open", refuse)
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


def test_the_pixel_budget_replaces_pillows_bomb_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for size in ((12, 12), (64, 64)):  # above Pillow's limit (it warns), above twice it (it raises)
        assert decode_strict(save(Image.new("RGB", size), tmp_path / f"{size[0]}.png")).size == size
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_images_over_the_working_size_are_reduced_before_conversion(tmp_path, monkeypatch):
    monkeypatch.setattr("zsfs.sources.WORKING_PIXELS", 16 * 16)
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
    palette = save(Image.new("P", (64, 40), 3), tmp_path / "p.png")
    assert decode_strict(palette).size == (16, 10)


def test_digest_is_listing_sha256_of_paths_and_labels():
    from zsfs.digests import listing_sha256

    paths, labels = ["a/1.jpg", "b/\u00e9.png"], ["a", "b"]
    labelled = ImageSource(Path("/x"), Path("/x"), paths, labels)
    unlabelled = ImageSource(Path("/x"), Path("/x"), paths, None)
    # The values digest() always gave: existing stores keep their identity.
    assert labelled.digest() == "b7d1f9c6b64e5b160e6a99086b9644933164353511934798ade16291c69699d5"
    assert unlabelled.digest() == "a63b2d56f0bc46dcb9f4961f699106e28d67d5c37d2f48486eab5fbe7ad041c3"
    assert labelled.digest() == listing_sha256(paths, labels)
    assert unlabelled.digest() == listing_sha256(paths)
    assert listing_sha256(paths, ["a", "c"]) != listing_sha256(paths, labels)
    assert listing_sha256(np.array(paths), np.array(labels, dtype=object)) == labelled.digest()


def test_read_class_file(tmp_path):
    from zsfs.sources import read_class_file

    good = tmp_path / "classes.txt"
    good.write_text("# my classes\ncat\n\n  dog  \n  # birds too\nbird\n", encoding="utf-8")  # comments as in lists
    assert read_class_file(good) == ["cat", "dog", "bird"]
    with pytest.raises(ZsfsError, match="does not exist; pass a text file with one class name per line"):
        read_class_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ZsfsError, match="lists no class names"):
        read_class_file(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("dog\ncat\ndog\ncat\nowl\n", encoding="utf-8")
    with pytest.raises(ZsfsError, match="more than once: 2: dog; cat$"):
        read_class_file(tmp_path / "twice.txt")


def test_every_class_list_is_checked_by_one_rule():
    """Class files, the Python API's lists, vocabularies and subsets share `check_class_names`
    (before, four checks with four rules: extract's named no class, a vocabulary took a blank one)."""
    from zsfs.extract import extract
    from zsfs.names import check_class_names

    assert check_class_names(np.array(["cat", "dog"]), "x") == ["cat", "dog"]
    with pytest.raises(ZsfsError, match="^the classes given lists no class names$"):
        check_class_names([], "the classes given")
    with pytest.raises(ZsfsError, match=r"lists 2 empty class name\(s\) \(first: position 2\)"):
        check_class_names(["cat", " ", "dog", ""], "x")
    with pytest.raises(ZsfsError, match="more than once: 2: dog; cat$"):
        check_class_names(["dog", "cat", "dog", "cat", "owl", "dog"], "x")
    with pytest.raises(ZsfsError, match="the classes given lists these names more than once: 1: cat$"):
        extract("unused-folder", classes=["cat", " cat "])  # checked before the folder is listed


def test_ood_bench_reads_class_files_without_torch(tmp_path):
    """`zsfs ood-bench --id-classes FILE` only reads names: it must not load torch/open_clip."""
    import subprocess
    import sys

    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n", encoding="utf-8")
    code = ("import sys; from zsfs.cli.oodbench import _parse_id_classes; "
            f"assert _parse_id_classes({str(classes)!r}) == ['cat', 'dog']; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
