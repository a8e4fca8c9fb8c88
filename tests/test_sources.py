"""Finding images in folders, lists and tar shards; their labels; class files."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsfs.errors import ZsfsError
from zsfs.decode import IMAGE_EXTENSIONS
from zsfs.sources import ImageSource, open_source
from zsfs.testing.images import write_image_folder

def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


# --- open_source -------------------------------------------------------------------------------


def test_image_extensions_are_lower_case_suffixes_pillow_opens():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} < IMAGE_EXTENSIONS
    assert all(suffix == suffix.lower() for suffix in IMAGE_EXTENSIONS)
    assert IMAGE_EXTENSIONS - {".avif"} <= set(Image.registered_extensions())  # AVIF: only newer Pillows


def test_a_folder_scan_takes_the_less_common_suffixes(tmp_path):
    """Bug: .jfif, .jpe, .pgm, .tga, ... files were left out of a scan without a word."""
    names = ["a.jfif", "b.JPE", "c.pgm", "d.ppm", "e.tga", "f.jp2", "g.png"]
    for name in names:
        image = Image.new("L" if name.endswith(".pgm") else "RGB", (8, 8), 90)
        image.save(tmp_path / name, format={"jfif": "JPEG", "jpe": "JPEG", "pgm": "PPM", "ppm": "PPM", "tga": "TGA",
                                            "jp2": "JPEG2000", "png": "PNG"}[name.rsplit(".", 1)[1].lower()])
    source = open_source(tmp_path)
    assert source.paths == names
    for index in range(len(names)):
        assert source.decode(index).size == (8, 8)


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
    assert "1 image lies directly in" in source.no_labels_reason and "loose.PNG" in source.no_labels_reason
    assert open_source(tmp_path / "a").no_labels_reason is None  # loose images only: nothing to explain


def test_label_is_the_first_level_folder_of_nested_images(tmp_path):
    (tmp_path / "cat" / "indoor").mkdir(parents=True)
    save(Image.new("RGB", (8, 8)), tmp_path / "cat" / "indoor" / "1.png")
    save(Image.new("RGB", (8, 8)), tmp_path / "cat" / "2.png")
    assert open_source(tmp_path).labels == ["cat", "cat"]


@pytest.mark.parametrize("paths, nested", [
    (["train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg", "val/dog/4.jpg"], (["train", "val"], ["cat", "dog"])),
    (["train/cat/1.jpg", "train/dog/2.jpg", "train/eel/5.jpg", "test/cat/3.jpg", "test/dog/4.jpg"],
     (["test", "train"], ["cat", "dog"])),  # a split lacking a class
    (["data/cat/1.jpg", "data/dog/2.jpg"], (["data"], ["cat", "dog"])),  # one folder: one class, "data"
    (["train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg", "val/4.jpg"], None),  # an image right in a class folder
    (["cat/indoor/1.jpg", "cat/outdoor/2.jpg", "dog/park/3.jpg"], None),  # subfolders that are no classes
    (["a/x/1.jpg", "a/y/2.jpg", "b/x/3.jpg", "b/z/4.jpg", "c/x/5.jpg"], None),  # one shared subfolder
    (["a/x/1.jpg", "a/y/2.jpg", "b/x/3.jpg", "b/y/4.jpg", "b/v/5.jpg", "b/w/6.jpg", "b/u/7.jpg"], None),  # few shared
])
def test_class_folders_holding_the_same_subfolders_are_found(paths, nested):
    """Walkthrough: train/cat, val/cat, ... silently made the classes train and val."""
    from zsfs.folders import nested_class_folders

    assert nested_class_folders(paths) == nested


def test_extract_notes_a_layout_split_in_folders_of_the_same_classes(tmp_path, monkeypatch):
    from zsfs.testing.cli import output_text, run_cli
    from zsfs.testing.models import TINY_MODEL_ARGS

    monkeypatch.chdir(tmp_path)  # the default outputs, ./ds.h5 and ./train.h5 (bug: they were left in the checkout)

    for split in ("train", "val"):
        write_image_folder(tmp_path / "ds" / split, n_per_class=1, classes=("cat", "dog"), broken=False)
    result = run_cli("extract", tmp_path / "ds", "--workers", "0", *TINY_MODEL_ARGS)
    assert result.exit_code == 0, result.output
    said = " ".join(output_text(result).split())
    assert "Note: the labels are the first-level folders (train, val), and each of them holds the same subfolders " \
           f"(cat, dog); if those are the classes, extract each folder on its own (zsfs extract {tmp_path}/ds/train)" \
           in said, said
    assert "the labels are the first-level" not in output_text(run_cli(
        "extract", tmp_path / "ds" / "train", "--workers", "0", *TINY_MODEL_ARGS))


def test_linked_class_folders_are_read_once_and_a_link_loop_is_a_skipped_entry(tmp_path):
    """Bug: a class folder that is a link (to another disk) was passed over without a word: its
    images, and its class, were missing from the store. Each folder is listed once: a second
    link to it, or a link into the scanned tree (a loop, or another name for a class), would list
    its images again under another label."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "other-disk" / "dogs"
    (photos / "cat").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    save(Image.new("RGB", (8, 8)), photos / "cat" / "1.png")
    save(Image.new("RGB", (8, 8)), elsewhere / "2.png")
    (photos / "dog").symlink_to(elsewhere)
    (photos / "hound").symlink_to(elsewhere)  # a second name for the same outside folder
    (photos / "kitty").symlink_to(photos / "cat")  # another name for a class of the tree
    (photos / "cat" / "again").symlink_to(photos)  # a loop: would list photos/cat/again/cat/... forever
    (elsewhere / "home").symlink_to(photos)  # a loop through the outside folder
    source = open_source(photos)
    assert source.paths == ["cat/1.png", "cat/again/", "dog/2.png", "dog/home/", "hound/", "kitty/"]
    assert source.labels == ["cat", "cat", "dog", "dog", "hound", "kitty"]
    into, listed = "linked folder not followed (a link into photos/, listed there)", \
        "linked folder not followed (a link to a folder listed already)"
    assert source.unreadable == {"cat/again/": into, "dog/home/": into, "hound/": listed, "kitty/": into}
    assert source.classes == ["cat", "dog"]  # kitty and hound are other names of listed folders, not classes
    assert source.decode(2).size == (8, 8)
    # review (mutation): a folder beside the tree whose name starts with the tree's is outside it
    sibling = tmp_path / "photos-more"
    sibling.mkdir()
    save(Image.new("RGB", (8, 8)), sibling / "3.png")
    (photos / "bird").symlink_to(sibling)
    assert "bird/3.png" in open_source(photos).paths
    # edge user: a link up to a folder that holds the tree listed the tree's neighbours (photos-more/3.png,
    # other-disk/...) as images of class cat; one to / would have listed the whole disk
    (photos / "cat" / "up").symlink_to("../..")
    (photos / "cat" / "root").symlink_to("/")
    source = open_source(photos)
    holds = "linked folder not followed (a link to a folder that holds photos/)"
    assert {path: source.unreadable[path] for path in ("cat/up/", "cat/root/")} == {"cat/up/": holds, "cat/root/": holds}
    assert [path for path in source.paths if not path.endswith("/")] == ["bird/3.png", "cat/1.png", "dog/2.png"]
    # diff review: the same loop through a linked folder outside the tree (other-disk/dogs/up -> other-disk)
    save(Image.new("RGB", (8, 8)), elsewhere.parent / "payroll.png")
    (elsewhere / "up").symlink_to("..")
    source = open_source(photos)
    assert source.unreadable["dog/up/"] == "linked folder not followed (a link to a folder that holds a linked folder " \
                                          "listed already)"
    assert [path for path in source.paths if not path.endswith("/")] == ["bird/3.png", "cat/1.png", "dog/2.png"]


def test_linked_images_listed_under_another_name_are_read_once(tmp_path):
    """Bug: a link to an image of the tree (or two links to one image elsewhere) listed the image
    twice, embedded under two labels, while linked folders were read once. A link to an image
    listed nowhere else is read, as a linked folder is."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "other-disk"
    for folder in (photos / "cat", photos / "dog", elsewhere):
        folder.mkdir(parents=True)
    save(Image.new("RGB", (8, 8)), photos / "dog" / "0.png")
    save(Image.new("RGB", (8, 8)), elsewhere / "1.png")
    (photos / "cat" / "dogfile.png").symlink_to(photos / "dog" / "0.png")
    (photos / "cat" / "outside.png").symlink_to(elsewhere / "1.png")
    (photos / "dog" / "outside-again.png").symlink_to(elsewhere / "1.png")  # a second link to it
    (photos / "cat" / "chain.png").symlink_to(photos / "cat" / "dogfile.png")  # a link to a link
    (photos / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")  # dangling: listed, fails to decode
    source = open_source(photos)
    assert source.paths == ["cat/chain.png", "cat/dogfile.png", "cat/gone.png", "cat/outside.png", "dog/0.png",
                            "dog/outside-again.png"]
    assert source.unreadable == {"cat/chain.png": "linked image not read (a link into photos/, listed there)",
                                 "cat/dogfile.png": "linked image not read (a link into photos/, listed there)",
                                 "dog/outside-again.png": "linked image not read (a link to an image listed already)"}
    assert source.classes == ["cat", "dog"] and source.decode(3).size == (8, 8)


def test_a_link_to_an_image_of_a_linked_folder_is_read_once(tmp_path):
    """Bug: photos/dog -> /disk/dogs and photos/cat/x.png -> /disk/dogs/1.png listed 1.png twice
    (as dog/1.png and cat/x.png): links were compared with the tree's own files only."""
    photos, dogs = tmp_path / "photos", tmp_path / "disk" / "dogs"
    for folder in (photos / "cat", dogs / "puppies", tmp_path / "disk" / "loose"):
        folder.mkdir(parents=True)
    for image in (dogs / "1.png", dogs / "puppies" / "2.png", tmp_path / "disk" / "loose" / "3.png"):
        save(Image.new("RGB", (8, 8)), image)
    (photos / "dog").symlink_to(dogs)
    (photos / "cat" / "x.png").symlink_to(dogs / "1.png")
    (photos / "cat" / "y.png").symlink_to(dogs / "puppies" / "2.png")  # deeper in the linked folder
    (photos / "cat" / "z.png").symlink_to(tmp_path / "disk" / "loose" / "3.png")  # listed nowhere else: read
    source = open_source(photos)
    again = "linked image not read (a link to an image listed already)"
    assert source.unreadable == {"cat/x.png": again, "cat/y.png": again}
    assert [path for path in source.paths if path not in source.unreadable] == ["cat/z.png", "dog/1.png",
                                                                                "dog/puppies/2.png"]


def test_a_tar_gone_after_listing_is_a_skip_reason_not_a_crash(tmp_path):
    """A shard moved or deleted after the listing: its members fail with the reason, as a missing
    file does (extract records them as skipped, the report shows the reason), not with an OSError."""
    import io

    from zsfs.decode import ImageDecodeError
    from zsfs.testing.tars import write_tar_shards

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    write_tar_shards(tmp_path / "shards", [(".png", png.getvalue())] * 2, per_tar=1)
    source = open_source(tmp_path / "shards")
    assert source.decode(0).size == (8, 8)
    (tmp_path / "shards" / "00001.tar").unlink()
    with pytest.raises(ImageDecodeError) as caught:
        source.decode(1)
    assert caught.value.reason == "unreadable tar (No such file or directory)"


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
    from zsfs.testing.cli import output_text, run_cli
    from zsfs.testing.models import TINY_MODEL_ARGS

    write_image_folder(tmp_path / "imgs", n_per_class=2, classes=("a",), broken=False)
    twice = tmp_path / "imgs" / "a" / "a_000_jpeg.jpg"
    listing = tmp_path / "list.txt"
    listing.write_text(f"imgs/a/a_000_jpeg.jpg\nimgs/a/a_001_png.png\n{twice}\n")  # once relative, once absolute
    source = open_source(listing)
    assert len(source.paths) == 3 and source.repeated_paths == ["imgs/a/a_000_jpeg.jpg"]
    result = run_cli("extract", listing, "--out", tmp_path / "list.h5", "--workers", "0", *TINY_MODEL_ARGS)
    assert result.exit_code == 0, result.output
    said = output_text(result)
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
    (tmp_path / "UPPER.CSV").write_text("path,label\nx/1.jpg,cat\n,\n \t, \n")  # blank rows list nothing
    upper = open_source(tmp_path / "UPPER.CSV")  # the suffix in any case: read as a table, not one path per line
    assert upper.paths == ["x/1.jpg"] and upper.labels == ["cat"]
    (tmp_path / "LIST.TXT").write_text("x/1.jpg\n")
    assert open_source(tmp_path / "LIST.TXT").paths == ["x/1.jpg"]
    (tmp_path / "trailing.csv").write_text('path,label\n"x/a,b.jpg",cat,,\n')  # empty fields past the header's
    assert open_source(tmp_path / "trailing.csv").paths == ["x/a,b.jpg"]
    (tmp_path / "hash.txt").write_text("# a comment\n./#1.jpg\n")  # a name opening with '#', as documented
    assert open_source(tmp_path / "hash.txt").paths == ["#1.jpg"]


def test_tab_separated_list_is_read_as_a_table(tmp_path):
    """Walkthrough: a .tsv list (as pandas' to_csv(sep="\\t") and many dataset tools write one) was
    refused as no list file."""
    (tmp_path / "list.tsv").write_text('path\tlabel\nx/a,b.jpg\tcat\n"x/tab\there.jpg"\t dog \n')
    listing = open_source(tmp_path / "list.tsv")
    assert listing.paths == ["x/a,b.jpg", "x/tab\there.jpg"] and listing.labels == ["cat", "dog"]
    (tmp_path / "ragged.tsv").write_text("path\tlabel\nx/a.jpg\tcat\tmore\n")
    with pytest.raises(ZsfsError, match=r"1 row with more fields than the header's 2 \(first: line 2, 3 fields\); "
                                        r"quote a path holding a tab"):
        open_source(tmp_path / "ragged.tsv")
    (tmp_path / "quote.tsv").write_text('path\tlabel\n"x/a.jpg\tcat\nx/b.jpg\tdog\n')
    with pytest.raises(ZsfsError, match=r'quote\.tsv: line 2: a quote is not closed .*; quote a whole field '
                                        r'\("a<tab>b\.jpg"\) or none of it$'):
        open_source(tmp_path / "quote.tsv")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nopath.csv", "file,label\na.jpg,x\n", "no 'path' column"),
        ("blank.csv", "path,label\na.jpg,x\nb.jpg,\n", "empty label"),
        # bug: a row with a label and no file name (a spreadsheet's gap) was dropped without a word
        ("gap.csv", "path,label\na.jpg,x\n,y\n\n\"\",z\n", r"gap\.csv: 2 rows with an empty path \(first: line 3\); give"),
        ("extra.csv", "path,label\na.jpg,x\n,,note\n", r"extra\.csv: 1 row with an empty path \(first: line 3\)"),
        # bug: an unquoted comma in a name shifted the row ('a' labelled 'b.jpg'); a second 'path' column hid the first
        ("comma.csv", "path,label\nz.jpg,y\na,b.jpg,cat\n", r"comma\.csv: 1 row with more fields than the header's 2 "
                                                          r"\(first: line 3, 3 fields\); quote a path holding a comma"),
        ("twice.csv", "path,label, path\na.jpg,x,b.jpg\n", r"twice\.csv: the header names the column 'path' twice"),
        # review: an unclosed quote swallowed every later line into one path ("file not found"), or
        # stopped a large list on csv's field size limit (a traceback)
        ("quote.csv", "path\na.jpg\n\"b.jpg\n" + "c.jpg\n" * 200, r"quote\.csv: line 3: a quote is not closed \(a "
                                                                 r"field that starts with \" ends with \"; .*\); quote "
                                                                 r"a whole field"),
        ("huge.csv", "path,label\n\"a.jpg,x\n" + "b.jpg,y\n" * 20_000, r"huge\.csv: line 2: a quote is not closed"),
        # review: a lenient read made '"x/4.jpg" ,dog' the path 'x/4.jpg ' and let an open quote before it swallow rows
        ("after.csv", "path,label\nx/1.jpg,cat\n\"x/2.jpg,dog\nx/3.jpg,cat\n\"x/4.jpg\" ,dog\n",
         r"after\.csv: line 3: ',' expected after '\"' \(nothing may stand between a closing quote and the next "
         r"separator\); quote a whole field"),
        ("empty.txt", "# nothing\n\n", "lists no images"),
        ("list.json", "[]", "neither a folder nor a list file"),
        ("photo.JPG", "", r"photo\.JPG is an image; the source is one folder, list file or set of tar shards: put the "
                          r"images in a folder, or list their paths in a \.txt file"),  # bug: "neither a folder nor ..."
    ],
)
def test_bad_list_files_are_clear_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ZsfsError, match=message):
        open_source(tmp_path / name)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("nul.txt", b"a.jpg\nb\x00c.jpg\n", r"holds a NUL byte \(line 2\), which no file name"),
    ("nul.csv", b"path,label\na.jpg,c\x00t\n", r"holds a NUL byte \(line 2\)"),
    ("u16.txt", "a.jpg\r\nb.jpg\r\n".encode("utf-16"), "is UTF-16 text .* save it as UTF-8"),
])
def test_list_files_with_nul_bytes_are_refused_before_any_work(tmp_path, name, content, message):
    """Bug: a NUL byte (a UTF-16 list, as PowerShell writes it) passed the listing, every image was
    embedded, and the shard's write died with a traceback on every rerun (no store string holds one)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ZsfsError, match=message):
        open_source(tmp_path / name)


def test_a_list_whose_labels_are_not_utf8_text_is_refused_and_its_paths_may_be_any_bytes(tmp_path):
    """Edge user: a list saved by a spreadsheet in Windows-1252 gave the class 'd\\xe9faut', whose
    text CLIP embedded, without a word. Extract refuses it before the models load, but resumes a
    store an earlier zsfs built from it (upgrade test: its finished shards were lost to --overwrite)."""
    from zsfs.lists import read_list_file
    from zsfs.predict import image_inputs
    from zsfs.testing.cli import output_text, run_cli
    from zsfs.testing.models import TINY_MODEL_ARGS

    (tmp_path / "x").mkdir()
    for name in ("a", "b", "c"):
        save(Image.new("RGB", (8, 8), (40, 90, 200)), tmp_path / "x" / f"{name}.png")
    listed = tmp_path / "list.csv"
    cp1252 = b"path,label\r\nx/a.png,ok\r\nx/b.png,d\xe9faut\r\nx/c.png,d\xe9faut\r\n"
    refusal = ("list.csv: 2 labels are not UTF-8 text (first: 'd\\xe9faut', for x/b.png); the list was saved in another "
               "encoding (Windows-1252 or Latin-1, as spreadsheets may): save it as UTF-8.")
    listed.write_bytes(cp1252)
    assert open_source(listed).labels == ["ok", "d\\xe9faut", "d\\xe9faut"]  # as a legacy folder name's bytes
    extract = ("extract", listed, "--out", tmp_path / "s.h5", "--workers", "0", *TINY_MODEL_ARGS)
    result = run_cli(*extract)
    assert result.exit_code == 1 and refusal in " ".join(output_text(result).split()), result.output
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.shards").exists()
    # the store an earlier zsfs built from it: the same labels (here from a UTF-8 list that spells them so)
    listed.write_bytes(cp1252.replace(b"\xe9", b"\\xe9"))
    assert run_cli(*extract).exit_code == 0
    listed.write_bytes(cp1252)
    assert run_cli(*extract).exit_code == 0  # resumed (nothing to write), not refused
    result = run_cli(*extract, "--overwrite")  # a new build is refused
    assert result.exit_code == 1 and refusal in " ".join(output_text(result).split()), result.output
    # diff review: predict, which reads no label, refused such a list too
    assert open_source(listed, labels=False).labels is None
    assert image_inputs([], lists=[listed]).paths == [str(tmp_path / "x" / f"{name}.png") for name in "abc"]
    (tmp_path / "names.csv").write_bytes("path,label\nx/caf\xe9.jpg,défaut\n".encode("latin-1").replace(
        b"d\xe9faut", "défaut".encode()))  # a Latin-1 file name, a UTF-8 label
    assert read_list_file(tmp_path / "names.csv") == (["x/caf\udce9.jpg"], ["défaut"], None)


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
    from zsfs.lists import read_class_file

    good = tmp_path / "classes.txt"
    good.write_text("# my classes\ncat\n\n  dog  \n  # birds too\nbird\n", encoding="utf-8")  # comments as in lists
    assert read_class_file(good) == ["cat", "dog", "bird"]
    with pytest.raises(ZsfsError, match="does not exist; pass a text file with one class name per line$"):
        read_class_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ZsfsError, match="lists no class names"):
        read_class_file(tmp_path / "empty.txt")
    (tmp_path / "twice.txt").write_text("dog\ncat\ndog\ncat\nowl\n", encoding="utf-8")
    with pytest.raises(ZsfsError, match=r"lists 2 names more than once: dog \(lines 1, 3\); cat \(lines 2, 4\)$"):
        read_class_file(tmp_path / "twice.txt")
    with pytest.raises(ZsfsError, match="is a folder; pass a text file"):
        read_class_file(tmp_path)
    (tmp_path / "u16.txt").write_bytes("cat\ndog\n".encode("utf-16"))  # bug: a traceback after the embedding
    with pytest.raises(ZsfsError, match="u16.txt is UTF-16 text .*or Notepad's 'Unicode' or 'UTF-16' encoding"):
        read_class_file(tmp_path / "u16.txt")
    (tmp_path / "nul.txt").write_bytes(b"cat\nd\x00g\n")
    with pytest.raises(ZsfsError, match=r"nul.txt holds a NUL byte \(line 2\)"):
        read_class_file(tmp_path / "nul.txt")


def test_a_class_file_line_keeps_no_invisible_character(tmp_path):
    """Bug: a zero-width space pasted inside a name, or the BOM of a second file concatenated onto the
    first (cat a.txt b.txt), stayed in the class name: embedded, and shown, unseen."""
    from zsfs.lists import read_class_file

    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffcat\n\ufeffdog\n".encode())  # a second BOM opens line 2
    assert read_class_file(classes) == ["cat", "dog"]
    classes.write_bytes(b"cat\rdog\r")  # classic Mac line ends
    assert read_class_file(classes) == ["cat", "dog"]
    classes.write_text("cat\nd\u200bog\nsea\tlion\n", encoding="utf-8")
    with pytest.raises(ZsfsError, match=r"line 2 has an invisible or control character in the name 'd\\u200bog' "
                                        r"\(and 1 other line\); remove it"):
        read_class_file(classes)


@pytest.mark.parametrize("unseen", ["\u2060", "\u2066", "\u2069", "\u061c", "\u200e", "\u2028", "\x85"])
def test_every_invisible_or_reordering_character_is_shown_and_refused(unseen):
    """Review: only U+200B, U+202E, U+FEFF and U+2028 were tried; the word joiner and the bidi
    isolates (a Trojan-source name) could slip from the set unnoticed."""
    from zsfs.names import check_class_names, refuse_unseen_characters, visible

    assert visible(f"a{unseen}b") == f"a\\u{ord(unseen):04x}b"  # a\u2066b, a\u0085b: shown, not acted on
    # walkthrough: U+0085 and the undecodable byte 0x85 were both written \x85: two files, one line
    assert visible(os.fsdecode(b"a\x85b")) == "a\\x85b" != visible("a\x85b")
    with pytest.raises(ZsfsError, match="invisible or control character"):
        refuse_unseen_characters([f"cat{unseen}"], "x")
    with pytest.raises(ZsfsError, match="more than once"):
        check_class_names(["cat", f"cat{unseen}"], "x")


def test_a_class_file_may_be_a_pipe():
    """Bug: `--classes <(grep -v x classes.txt)` (a pipe, /dev/fd/N) was called a missing file."""
    from zsfs.lists import read_class_file

    read_end, write_end = os.pipe()
    os.write(write_end, b"cat\ndog\n")
    os.close(write_end)
    try:
        assert read_class_file(f"/dev/fd/{read_end}") == ["cat", "dog"]
    finally:
        os.close(read_end)


def test_every_class_list_is_checked_by_one_rule():
    """Class files, the Python API's lists, vocabularies and subsets share `check_class_names`
    (before, four checks with four rules: extract's named no class, a vocabulary took a blank one)."""
    from zsfs.extract import extract
    from zsfs.names import check_class_names

    assert check_class_names(np.array(["cat", "dog"]), "x") == ["cat", "dog"]
    with pytest.raises(ZsfsError, match="^the classes given lists no class names$"):
        check_class_names([], "the classes given")
    with pytest.raises(ZsfsError, match=r"lists 2 empty class names \(first: position 2, counted from 1\)"):
        check_class_names(["cat", " ", "dog", ""], "x")
    with pytest.raises(ZsfsError, match="lists 2 names more than once: dog; cat$"):
        check_class_names(["dog", "cat", "dog", "cat", "owl", "dog"], "x")
    assert check_class_names(np.array([b"cat", "d\xc3\xb6g".encode("latin-1")]), "x") == ["cat", "d\xf6g"]  # "S" arrays
    # Bugs: an npz vocabulary took ' T-shirt ' next to 'T-shirt', a zero-width space as a class,
    # and 'cat' next to 'cat' + U+200B (two classes that print alike)
    assert check_class_names([" T-shirt\t", "dog"], "x") == [" T-shirt\t", "dog"]  # as given: labels match
    with pytest.raises(ZsfsError, match="lists 1 name more than once: ' T-shirt' = 'T-shirt'"):
        check_class_names([" T-shirt", "T-shirt"], "x")
    with pytest.raises(ZsfsError, match=r"lists 1 empty class name \(first: position 2, counted from 1\)"):
        check_class_names(["cat", "\u200b\ufeff "], "x")
    with pytest.raises(ZsfsError, match=r"lists 1 name more than once: 'cat' = 'cat\\u200b' \(names that differ only in"):
        check_class_names(["cat", "dog", "cat\u200b"], "x")
    # report review: these render as nothing too (a soft hyphen, a Hangul filler, musical formatting)
    from zsfs.names import refuse_unseen_characters, visible
    for unseen, shown in (("\u00ad", "\\u00ad"), ("\u3164", "\\u3164"), ("\U0001d173", "\\U0001d173")):
        with pytest.raises(ZsfsError, match=re.escape(f"lists 1 name more than once: 'cat' = 'cat{shown}'")):
            check_class_names(["cat", f"cat{unseen}"], "x")
        assert visible(f"cat{unseen}") == f"cat{shown}"
    # diff review: not emoji's variation selectors and tags, nor Japanese or Mongolian ones: names typed so
    names = ["\u2764\ufe0f heart", "\u2600\ufe0f sun", "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063"
             "\U000e0074\U000e007f flag", "\u845b\U000e0100\u57ce", "\u1820\u180b\u1821"]
    assert check_class_names(names, "x") == names and [visible(name) for name in names] == names
    refuse_unseen_characters(names, "x")
    with pytest.raises(ZsfsError, match="lists 1 name more than once: 'caf\u00e9' = 'cafe\u0301'"):
        check_class_names(["caf\u00e9", "cafe\u0301"], "x")  # one label once compared in NFC
    with pytest.raises(ZsfsError, match="x has a class name that is not UTF-8 text"):
        check_class_names([b"\xff"], "x")
    with pytest.raises(ZsfsError, match=r"x has a class name with a NUL byte \(position 2, counted from 1\)"):
        check_class_names(["cat", "d\x00g"], "x")  # bug: a vocabulary's write failed with a traceback
    with pytest.raises(ZsfsError, match="the classes given lists 1 name more than once: cat$"):
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


def test_repeated_rows_pairs_each_repeat_with_its_first():
    from zsfs.names import repeated_rows

    rows = np.array([[1, 2], [3, 4], [1, 2], [3, 4], [5, 6], [1, 2]])
    assert repeated_rows(rows) == [(0, 2), (1, 3), (0, 5)]
    assert repeated_rows(rows[:1]) == [] and repeated_rows(np.array([[1], [2]])) == []
    assert repeated_rows(np.array([[1, 2], [1, 2]])) == [(0, 1)]  # two class names CLIP reads as one


def test_a_suggested_command_names_a_hostile_file_as_the_shell_reads_it_back(tmp_path):
    """Review: "write that with `zsfs report -dash`" gave "No such option '-d'" (and a run named
    --help printed the help), and a name with a newline was suggested as 'new\\x0aline', which named
    no file once pasted. Each suggestion here goes through a real bash, in the run's folder."""
    from zsfs.names import as_argument

    names = ["-dash", "--help", "new\nline", os.fsdecode(b"caf\xe9"), "it's", "back\\slash", "a\u202eb", "sp ace"]
    for name in names:
        (tmp_path / name).mkdir()
        said = as_argument(name)
        assert "\n" not in said and "\u202e" not in said, said  # shown on one line, nothing acting on the terminal
        found = subprocess.run(["bash", "-c", f'[ -d {said} ] && printf %s {said}'], cwd=tmp_path, capture_output=True)
        assert found.returncode == 0 and found.stdout == os.fsencode(os.path.join(".", name) if name[0] == "-" else name), \
            (name, said, found)
    assert as_argument("--vocab-like", path=False) == "--vocab-like"  # a value after its option stays as it is
    assert as_argument(tmp_path / "-dash") == str(tmp_path / "-dash")  # an absolute path is no option
