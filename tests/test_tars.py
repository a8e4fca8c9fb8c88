"""Webdataset tar shards as a source: listed from headers, read in place, embedded as files are."""

from __future__ import annotations

import gc
import gzip
import io
import json
import os
import pickle
import re
import shutil
import signal
import sys
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.test_extract import ROW_DATASETS, assert_same_rows, read_store
from zsfs.decode import IMAGE_EXTENSIONS, ImageDecodeError
from zsfs.errors import ZsfsError
from zsfs.extract import default_output, extract
from zsfs.predict import TAR_BESIDE_IMAGES, TAR_LINK, image_inputs
from zsfs.sources import open_source
from zsfs.store.hdf5 import canonical_json
from zsfs.store.schema import ATTR_IDENTITY
from zsfs.tars import TarReadError, expand_braces, list_tar, locate_members, split_member_path
from zsfs.testing.cli import output_text, run_cli
from zsfs.testing.failures import run_zsfs
from zsfs.testing.models import TINY_MODEL_ARGS, TINY_MODELS
from zsfs.testing.tars import files_as_samples, write_tar_shards


@pytest.fixture(scope="module")
def shards(image_folder, tmp_path_factory) -> dict:
    """The generated folder's files (good and broken), in listing order, packed 7 per tar."""
    folder = open_source(image_folder["root"])
    out = tmp_path_factory.mktemp("tars") / "laion"
    paths = write_tar_shards(out, files_as_samples(folder.root, folder.paths), per_tar=7)
    return {"root": out, "paths": paths, "files": folder.paths, "folder": image_folder["root"]}


def test_a_folder_a_pattern_and_one_tar_list_the_image_members(shards, tmp_path):
    root, paths = shards["root"], shards["paths"]
    (root / "00000_stats.json").write_text("{}")  # img2dataset writes these beside the tars
    source = open_source(root)
    assert source.paths == paths and source.labels is None and source.root == root.resolve()
    assert all(path.endswith((".jpg", ".png", ".webp", ".bmp", ".tif", ".gif", ".JPEG")) for path in source.paths)
    for i in (0, 5, len(paths) - 1):  # the recorded byte range is the member's content
        file = shards["folder"] / shards["files"][i]
        assert source.members.read(i) == file.read_bytes()

    last = len(list(root.glob("*.tar"))) - 1
    pattern = open_source(str(root / f"{{00000..{last:05d}}}.tar"))
    assert pattern.paths == paths and pattern.root == root.resolve()
    assert default_output(pattern.location).name == "laion.h5"
    braced = tmp_path / "cats{2024}"  # bug: named after its parent folder, as a pattern is
    braced.mkdir()
    assert default_output(braced).name == "cats{2024}.h5"
    one = open_source(root / "00001.tar")
    assert one.paths == [path for path in paths if path.startswith("00001.tar::")]
    for name in ("x{1}.tar", "y{a,b}.tar"):  # bug: a tar whose name holds braces was read as a pattern
        (tmp_path / name).write_bytes((root / "00001.tar").read_bytes())
        assert open_source(tmp_path / name).paths == [path.replace("00001.tar", name, 1) for path in one.paths]


def test_tars_beside_images_or_a_subfolder_are_named_not_silently_dropped(shards, tmp_path):
    """Bug: one stray image or log folder beside the tars made the folder an image folder, and
    every tar was left out without a word (or "no images found" named none of them)."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(shards["root"] / "00000.tar", mixed)
    (mixed / "logs").mkdir()
    with pytest.raises(ZsfsError, match=r"no images found in .*mixed, but 1 tar file \(1: 00000.tar\): a folder is "
                                        r"read as tar shards only when it holds no subfolder and no loose image"):
        open_source(mixed)
    Image.new("RGB", (16, 16)).save(mixed / "stray.png")
    source = open_source(mixed)
    assert source.paths == ["stray.png"] and source.unread_tars == ["00000.tar"]
    result = run_cli("extract", mixed, "--out", tmp_path / "m.h5", *TINY_MODEL_ARGS, "--workers", "0")
    assert result.exit_code == 0 and "tar files not read" in output_text(result), result.output
    given = image_inputs([mixed])  # bug: predict dropped them without a row; now a row saying why
    assert given.paths == [str(mixed / "stray.png"), str(mixed / "00000.tar")]
    assert given.unreadable == {str(mixed / "00000.tar"): TAR_BESIDE_IMAGES}


def test_a_store_written_among_its_tars_is_rerun_from_the_same_tars(shards, tmp_path, monkeypatch):
    """Bug: `cd tars/ && zsfs extract .` wrote tars.shards/ there, and that subfolder made the rerun
    (a resume, a new --vocab) read the folder as an image folder: "no images found"."""
    folder = tmp_path / "tars"
    shutil.copytree(shards["root"], folder)
    monkeypatch.chdir(folder)
    first = run_cli("extract", ".", *TINY_MODEL_ARGS, "--workers", "0")
    assert first.exit_code == 0 and (folder / "tars.shards").is_dir(), first.output
    again = run_cli("extract", ".", *TINY_MODEL_ARGS, "--workers", "0")
    assert again.exit_code == 0, again.output
    assert open_source(folder).paths == shards["paths"]
    shutil.rmtree(folder / "tars.shards")
    (folder / "tars.shards").mkdir()  # as a first run stopped before its first shard leaves it
    assert open_source(folder).paths == shards["paths"]
    (folder / "extra.shards").mkdir()  # any other subfolder still makes it an image folder, so named or not
    (folder / "extra.shards" / "notes.txt").write_text("mine")
    with pytest.raises(ZsfsError, match="read as tar shards only when it holds no subfolder"):
        open_source(folder)


def test_a_tar_source_is_recorded_the_same_from_any_folder(shards, monkeypatch):
    """Bug: tars were recorded as written, made absolute ("/w/pat/../laion/00000.tar"), so a
    rerun from another folder was refused as another source; folders were already normalised."""
    root = shards["root"]
    last = len(list(root.glob("*.tar"))) - 1
    (root.parent / "elsewhere").mkdir(exist_ok=True)
    for name in ("00001.tar", f"{{00000..{last:05d}}}.tar"):
        direct = open_source(str(root / name))
        monkeypatch.chdir(root.parent / "elsewhere")
        roundabout = open_source(f"../{root.name}/./{name}")
        monkeypatch.chdir(root)
        here = open_source(name)
        assert roundabout.location == here.location == direct.location == root.absolute() / name
        assert roundabout.digest() == direct.digest()


def test_brace_expansion():
    assert expand_braces("d/{008..011}.tar") == ["d/008.tar", "d/009.tar", "d/010.tar", "d/011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("d/{03..01}.tar") == ["d/03.tar", "d/02.tar", "d/01.tar"]  # counts down, as a shell does
    assert expand_braces("d/{8..10}.tar") == ["d/8.tar", "d/9.tar", "d/10.tar"]  # unpadded, as a shell (review)
    with pytest.raises(ZsfsError, match="cannot expand"):
        expand_braces("d/{x}.tar")


def test_missing_compressed_and_damaged_tars_are_clear_errors(shards, tmp_path):
    with pytest.raises(ZsfsError, match="2 of 3 tar files do not exist"):
        open_source(str(shards["root"] / "{00000,00098,00099}.tar"))
    # walkthrough: a quoted * pattern was "1 of 1 tar files do not exist (first: shards/*.tar)"
    with pytest.raises(ZsfsError, match=r"\*.tar: zsfs expands brace patterns \('shards/\{000..099\}.tar', "
                                        r"'shards/\{a,b\}.tar'\), not \* \? or \[ \]; pass a brace pattern, or the "
                                        rf"folder of the tars \({re.escape(str(shards['root']))}\)$"):
        open_source(str(shards["root"] / "*.tar"))

    compressed = tmp_path / "gz" / "00000.tar"
    compressed.parent.mkdir()
    compressed.write_bytes(gzip.compress((shards["root"] / "00000.tar").read_bytes()))
    with pytest.raises(ZsfsError, match="00000.tar is compressed; zsfs reads uncompressed"):  # (by its bytes)
        open_source(compressed)
    # named by their suffix: each was "neither a folder nor a list file", "no images found" or, to
    # predict, "not an image"
    named = compressed.with_name("00000.tar.gz")
    compressed.rename(named)
    for call in (lambda: open_source(named), lambda: image_inputs([named])):
        with pytest.raises(ZsfsError, match="00000.tar.gz is compressed; zsfs reads uncompressed .tar shards"):
            call()
    with pytest.raises(ZsfsError, match=r"no images found in .*gz, but compressed tars \(1: 00000.tar.gz\).* "
                                        "decompress them first"):
        open_source(named.parent)

    damaged = tmp_path / "damaged" / "00000.tar"
    damaged.parent.mkdir()
    with tarfile.open(shards["root"] / "00000.tar") as archive:
        header = archive.getmembers()[3].offset
    data = bytearray((shards["root"] / "00000.tar").read_bytes())
    data[header + 148: header + 156] = b"garbage!"  # the checksum of the second image's header
    damaged.write_bytes(bytes(data))
    with pytest.raises(ZsfsError, match="damaged after 1 image"):
        open_source(damaged.parent)
    damaged.write_bytes(bytes(data[:header + 100]))  # cut inside that header
    with pytest.raises(ZsfsError, match="damaged after 1 image"):
        open_source(damaged.parent)


def test_one_error_names_every_damaged_tar(shards, tmp_path):
    """Bug: listing stopped at the first damaged tar, so among 10,000 downloaded shards each damaged
    one cost a rerun that listed every tar again before it was named."""
    root = tmp_path / "some damaged"
    shutil.copytree(shards["root"], root)
    names = sorted(path.name for path in root.glob("*.tar"))
    assert len(names) >= 3
    with tarfile.open(root / names[0]) as archive:
        second = archive.getmember(shards["paths"][1].split("::")[1])
    for name in (names[0], names[2]):  # cut inside the second image's data
        with open(root / name, "r+b") as handle:
            handle.truncate(second.offset_data + 10)
    with pytest.raises(ZsfsError) as raised:
        open_source(root)
    said = str(raised.value)
    assert said.startswith(f"2 of {len(names)} tar files cannot be listed; mend or remove each and rerun: ")
    assert said.count("or damaged after 1 image (the file ends inside the member") == 2 and said.count(" | ") == 1
    assert f"{root / names[0]} is" in said and f"{root / names[2]} is" in said and names[1] not in said
    assert "repair or remove it" not in said  # said once for all


def test_a_tar_cut_inside_any_member_or_with_a_size_past_its_end_is_a_clear_error(tmp_path):
    """Bugs: cut inside a caption, the listing stopped there as if at the archive's end (the
    samples after it were lost silently); a damaged base-256 size was an OverflowError traceback."""
    path = tmp_path / "t" / "00000.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as archive:
        for sample in range(4):
            for suffix, data in ((".jpg", b"\xff\xd8" + bytes(3000)), (".json", b"{}" + bytes(3000))):
                info = tarfile.TarInfo(f"{sample:06d}{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    data = path.read_bytes()
    assert len(open_source(path).paths) == 4
    path.write_bytes(data[:members[3].offset_data + 100])  # inside the second sample's .json
    with pytest.raises(ZsfsError, match=r"damaged after 2 images \(the file ends inside the member"):
        open_source(path)
    # walkthrough: cut in a small member's padding (a caption is mostly padding), the tar read as ending
    # there: 1 of 4 images listed, no word of the rest
    small = tmp_path / "small.tar"
    with tarfile.open(small, "w") as archive:
        for sample in range(4):
            for suffix, data_ in ((".jpg", b"\xff\xd8" + bytes(3000)), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{sample:06d}{suffix}")
                info.size = len(data_)
                archive.addfile(info, io.BytesIO(data_))
    with tarfile.open(small) as archive:
        caption = archive.getmembers()[1]
    small.write_bytes(small.read_bytes()[:caption.offset_data + 100])
    with pytest.raises(ZsfsError, match=rf"damaged after 1 image \(the file ends inside the padding of the member "
                                        rf"whose header is at byte {caption.offset}"):
        open_source(small)
    # review: cut inside the closing zero blocks, every member intact: read whole, not called damaged
    intact = tmp_path / "intact.tar"
    with tarfile.open(intact, "w") as archive:
        for sample in range(2):
            info = tarfile.TarInfo(f"{sample:06d}.jpg")
            info.size = 3000
            archive.addfile(info, io.BytesIO(b"\xff\xd8" + bytes(2998)))
    with tarfile.open(intact) as archive:
        last = archive.getmembers()[-1]
    intact.write_bytes(intact.read_bytes()[:last.offset_data + 3072 + 100])  # 100 bytes into the first zero block
    assert len(open_source(intact).paths) == 2
    # review: cut after a long name's extended header (GNU 'L', pax 'x'), before the member it names
    for tar_format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        long = tmp_path / "long.tar"
        with tarfile.open(long, "w", format=tar_format) as archive:
            for sample in range(3):
                info = tarfile.TarInfo(f"{'a_long_folder_name_' * 6}/{sample:06d}.jpg")
                info.size = 3000
                archive.addfile(info, io.BytesIO(b"\xff\xd8" + bytes(2998)))
        with tarfile.open(long) as archive:
            second = archive.getmembers()[1]
        long.write_bytes(long.read_bytes()[:second.offset_data - 512])  # the member's own header cut off
        with pytest.raises(ZsfsError, match=r"damaged after 1 image \(the file ends after the extended header"):
            open_source(long)
    huge = bytearray(data)
    header = members[2].offset
    huge[header + 124:header + 136] = b"\x80" + b"\xff" * 11  # base-256 size of 2**88 - 1 bytes
    huge[header + 148:header + 156] = b"%06o\0 " % (sum(huge[header:header + 148]) + 8 * 32
                                                      + sum(huge[header + 156:header + 512]))
    path.write_bytes(bytes(huge))
    with pytest.raises(ZsfsError, match=r"damaged after 1 image \(the file ends inside the member"):
        open_source(path)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ZsfsError, match="is not a readable tar"):
        open_source(path)


def test_extract_from_tars_equals_extract_from_the_files(shards, tmp_path):
    from_tars = extract(shards["root"], tmp_path / "tars.h5", workers=1, shard_size=8, batch_size=3, **TINY_MODELS)
    from_files = extract(shards["folder"], tmp_path / "files.h5", workers=0, shard_size=8, batch_size=3,
                         classes=["blue", "green", "red"], **TINY_MODELS)
    tars, files = read_store(from_tars.output), read_store(from_files.output)
    assert_same_rows({name: tars[name] for name in ROW_DATASETS}, {name: files[name] for name in ROW_DATASETS})
    by_member = dict(zip(shards["paths"], shards["files"]))
    assert [by_member[path] for path in tars["path"]] == files["path"]
    assert {by_member[path]: reason for path, reason in tars["skipped"].items()} == files["skipped"]
    assert tars["label"] is None and from_tars.vocabulary is None


def test_tars_holding_no_image_are_named_in_the_extract_summary(shards, tmp_path, monkeypatch):
    root = tmp_path / "laion"
    shutil.copytree(shards["root"], root)
    (root / "00000a.tar").write_bytes(b"")  # a failed download: tar itself lists nothing in it
    with tarfile.open(root / "00001a.tar", "w") as captions_only:
        captions_only.add(__file__, arcname="0.txt")
    with tarfile.open(root / "00002a.tar.gz", "w:gz") as compressed:  # bug: passed over without a word
        compressed.add(shards["folder"] / shards["files"][0], arcname="0.jpg")
    source = open_source(root)
    assert source.paths == shards["paths"] and source.empty_tars == ["00000a.tar", "00001a.tar"]
    assert source.compressed_tars == ["00002a.tar.gz"] and source.repeated_paths == []
    with tarfile.open(root / "99999.tar", "w") as last:  # the last tar in the listing, with no image
        last.add(__file__, arcname="0.txt")
    try:
        assert open_source(root).empty_tars == ["00000a.tar", "00001a.tar", "99999.tar"]
    finally:
        (root / "99999.tar").unlink()
    with tarfile.open(root / "00003a.tar", "w") as twice:  # bug: two rows of one name, without a note
        for _ in range(2):
            twice.add(shards["folder"] / shards["files"][0], arcname="0.jpg")
    assert open_source(root).repeated_paths == ["00003a.tar::0.jpg"]
    with tarfile.open(root / "00004a.tar", "w") as linked:  # bug: its links were passed over without a word
        linked.add(shards["folder"] / shards["files"][0], arcname="0.jpg")
        for name, kind in (("1.jpg", tarfile.SYMTYPE), ("2.jpg", tarfile.LNKTYPE), ("3.txt", tarfile.SYMTYPE)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "0.jpg"
            linked.addfile(link)
    source = open_source(root)
    assert source.tar_links == ["00004a.tar::1.jpg", "00004a.tar::2.jpg"] and "00004a.tar::0.jpg" in source.paths
    only_links = tmp_path / "links"
    only_links.mkdir()
    with tarfile.open(only_links / "0.tar", "w") as linked:
        link = tarfile.TarInfo("1.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "../0.jpg"
        linked.addfile(link)
    with pytest.raises(ZsfsError, match=r"^\S+links holds no images \(.*\), only 1 link \(not read"):
        open_source(only_links)
    given = image_inputs([root / "00004a.tar"])  # bug: predict dropped the links without a row
    assert given.paths == [str(root / f"00004a.tar::{i}.jpg") for i in range(3)]
    assert given.unreadable == {str(root / f"00004a.tar::{i}.jpg"): TAR_LINK for i in (1, 2)}
    with monkeypatch.context() as here:  # bug: a tar given by a bare name listed "./00004a.tar::0.jpg"
        here.chdir(root)
        assert image_inputs(["00004a.tar"]).paths == [f"00004a.tar::{i}.jpg" for i in range(3)]
    with pytest.raises(ZsfsError, match=r"'1.jpg' is a link or sparse file inside .*00004a.tar, not a plain file"):
        image_inputs([f"{root / '00004a.tar'}::1.jpg"])
    # walkthrough: predict stopped at a pattern's empty tar ("the 1 tar file of ... hold no images"), which extract
    # lists as empty and a folder of the tars passes over; a tar named alone, or a pattern of empty ones, still stops
    pattern = str(root / "{00000a,00004a,00001a}.tar")
    assert image_inputs([pattern]).paths == [str(root / f"00004a.tar::{i}.jpg") for i in range(3)]
    with pytest.raises(ZsfsError, match=r"^\S+00000a.tar holds no images"):
        image_inputs([root / "00000a.tar", root / "00004a.tar"])
    with pytest.raises(ZsfsError, match=r"^the 2 tar files of \S+ hold no images"):  # review: one pattern given twice
        image_inputs([str(root / "{00000a,00001a}.tar")] * 2)
    with pytest.raises(ZsfsError, match=r"^the 2 tar files of \S+\{00000a,00001a\}.tar hold no images"):
        image_inputs([str(root / "{00000a,00001a}.tar"), root / "00004a.tar"])

    result = run_cli("extract", root, "--out", tmp_path / "laion.h5", "--workers", "0", *TINY_MODEL_ARGS)
    assert result.exit_code == 0, result.output
    said = output_text(result)
    assert "tars with no image" in said and "2: 00000a.tar; 00001a.tar" in said
    assert "compressed tars (not read: decompress" in said and "1: 00002a.tar.gz" in said
    assert "paths listed twice or more" in said and "1: 00003a.tar::0.jpg" in said
    assert "tar links, sparse files (not read) │ 2: 00004a.tar::1.jpg;" in said and "00004a.tar::2.jpg" in said
    plain = run_cli("extract", shards["root"], "--out", tmp_path / "plain.h5", "--workers", "0", *TINY_MODEL_ARGS)
    assert "tars with no image" not in plain.output and "sparse files (not read)" not in plain.output


def test_a_tar_truncated_after_listing_costs_only_its_cut_images(shards, tmp_path):
    root = tmp_path / "cut"
    shutil.copytree(shards["root"], root)
    source = open_source(root)
    with tarfile.open(root / "00000.tar") as archive:  # cut inside the second image's data
        first, second = (archive.getmember(path.split("::")[1]) for path in shards["paths"][:2])
    with open(root / "00000.tar", "r+b") as handle:
        handle.truncate(second.offset_data + second.size // 2)
    original = [(shards["folder"] / shards["files"][i]).read_bytes() for i in range(2)]
    assert source.members.read(0) == original[0]  # before the cut: whole
    with pytest.raises(OSError, match=f"the tar ends {second.size // 2:,} bytes into this {second.size:,}-byte member"):
        source.members.read(1)
    # bug: a member past the new end read as b"" and was skipped as an "empty file"
    with pytest.raises(ImageDecodeError, match=r"unreadable tar \(the tar ends 0 bytes into this [\d,]+-byte member: "
                                               r"it was cut short since it was listed\)"):
        source.decode(3)
    # review: cut while a decoder reads it (after open's check): the tar named, not "truncated file"
    member = source.members.open(0).raw  # unbuffered: each read reaches the tar
    assert member.read(8) == original[0][:8]
    with open(root / "00000.tar", "r+b") as handle:
        handle.truncate(first.offset_data + 8)
    with pytest.raises(TarReadError, match="the tar ends 8 bytes into this"):
        member.read()
    assert locate_members([shards["paths"][0], "plain.jpg"], shards["root"]).tar.tolist() == [0, -1]
    # a file named like a member is that file (a folder's `00000.tar::x.jpg` beside the tar), not a member
    shutil.copy(shards["root"] / "00000.tar", tmp_path / "00000.tar")
    (tmp_path / "00000.tar::x.jpg").write_bytes(b"")
    assert locate_members([shards["paths"][0], "00000.tar::x.jpg"], tmp_path).tar.tolist() == [0, -1]
    # review: a member at the tar's root with a long name made a path component past 255 bytes: ENAMETOOLONG
    assert locate_members([shards["paths"][0], f"00000.tar::{'x' * 250}.jpg"], tmp_path,
                          reasons={}).tar.tolist() == [0, -1]


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_header_walk_agrees_with_tarfile(tar_format, tmp_path):
    """Long names (GNU 'L', pax 'path', ustar prefix), non-ASCII names, non-image members."""
    names = ["a.jpg", "x.txt", "p" * 120 + "/q.jpg", "ünï cödé.png"]
    if tar_format != tarfile.USTAR_FORMAT:
        names.append("d/" * 80 + "long.webp")
    path = tmp_path / "mix.tar"
    with tarfile.open(path, "w", format=tar_format, encoding="utf-8") as archive:
        for i, name in enumerate(names):
            info, data = tarfile.TarInfo(name), bytes([i]) * (700 * i + 5)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with tarfile.open(path, encoding="utf-8") as archive:
        expected = [(m.name, m.offset_data, m.size) for m in archive.getmembers() if m.name != "x.txt"]
    listing = list_tar(path, IMAGE_EXTENSIONS)
    assert list(zip(listing.names, listing.offsets, listing.sizes)) == expected and listing.links == []


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_a_sparse_member_is_listed_as_not_read_never_dropped_or_misnamed(tar_format, tmp_path):
    """Review: GNU tar --sparse wrote an image with long zero runs as a sparse member: as GNU's
    type 'S' it was dropped from the listing without a word (the module promises never a silently
    shorter listing), in pax form listed as ./GNUSparseFile.N/s.bmp and skipped as "not an image".
    Its data is the file without its holes, so it is listed with the links, as not read."""
    Image.new("RGB", (8, 8), (90, 0, 0)).save(tmp_path / "b.jpg")
    black = io.BytesIO()
    Image.new("RGB", (300, 300)).save(black, "BMP")
    with open(tmp_path / "s.bmp", "wb") as sparse:  # its header, then a hole: the black pixels
        sparse.write(black.getvalue()[:4096])
        sparse.truncate(len(black.getvalue()))
    with open(tmp_path / "many.bmp", "wb") as sparse:  # 40 runs between holes: GNU's map needs extension blocks
        for start in range(0, 40 * 65536, 65536):
            sparse.seek(start)
            sparse.write(b"x" * 4096)
        sparse.truncate(40 * 65536)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", f"--format={tar_format}", "--sparse", "-cf", str(archive),
                    "-C", str(tmp_path), "many.bmp", "b.jpg", "s.bmp"], check=True)
    with tarfile.open(archive) as opened:
        members = {member.name: member for member in opened.getmembers()}
    assert members["s.bmp"].issparse() and members["many.bmp"].issparse() and not members["b.jpg"].issparse()
    listing = list_tar(archive, IMAGE_EXTENSIONS)
    assert listing.names == ["b.jpg"] and listing.links == ["many.bmp", "s.bmp"]
    assert listing.offsets == [members["b.jpg"].offset_data] and listing.sizes == [members["b.jpg"].size]


def test_a_tar_named_in_capitals_is_a_tar_everywhere(tmp_path):
    """Review: a folder's SHARD0.TAR was listed and read, but its members were not found again
    (report thumbnails "not found"), and the tar named directly was "neither a folder nor a list file"."""
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "SHARD0.TAR", "w") as archive:
        for i in range(2):
            encoded = io.BytesIO()
            Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(encoded, "PNG")
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(encoded.getvalue())
            archive.addfile(info, io.BytesIO(encoded.getvalue()))
    listed = open_source(folder)
    assert listed.paths == ["SHARD0.TAR::0.png", "SHARD0.TAR::1.png"]
    assert split_member_path(listed.paths[1]) == ("SHARD0.TAR", "1.png")
    assert locate_members(listed.paths, folder).tar.tolist() == [0, 0]
    assert open_source(str(folder / "SHARD0.TAR")).paths == listed.paths
    assert split_member_path("a.TaR::") is None and split_member_path("plain.jpg") is None


def test_a_header_summed_as_signed_bytes_is_intact(tmp_path):
    """Review: old Sun and V7 tars summed a header's bytes as signed (tarfile accepts both); a
    non-ASCII name's header was refused as "bad header checksum"."""
    path = tmp_path / "signed.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as archive:
        info = tarfile.TarInfo("café.jpg")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"12345"))
    data = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(data[:512]), np.uint8).copy()
    header[148:156] = ord(" ")
    signed = int(header.view(np.int8).sum(dtype=np.int64))
    assert signed != int(header.sum(dtype=np.int64))  # the name's UTF-8 bytes are above 127
    data[148:156] = f"{signed:06o}\0 ".encode()
    path.write_bytes(bytes(data))
    with tarfile.open(path, encoding="utf-8") as archive:
        assert archive.getnames() == ["café.jpg"]
    assert list_tar(path, IMAGE_EXTENSIONS).names == ["café.jpg"]


def test_predict_inputs_list_each_tar_once_and_read_every_member(shards, monkeypatch):
    """Bug: predict listed every tar it was given twice (its listing, then again to locate members)."""
    import zsfs.tars
    from zsfs.predict import image_inputs

    listed = []
    list_tar = zsfs.tars.list_tar
    monkeypatch.setattr(zsfs.tars, "list_tar", lambda path, suffixes: listed.append(path) or list_tar(path, suffixes))
    root, files = shards["root"], shards["folder"] / shards["files"][0]
    named = root / shards["paths"][-1]  # ``00002.tar::...``: a member named by the user
    source = image_inputs([root / "00000.tar", files, str(named), root / "00001.tar"])
    assert sorted(path.name for path in listed) == ["00000.tar", "00001.tar", shards["paths"][-1].split("::")[0]]
    expected = ([shards["folder"] / f for p, f in zip(shards["paths"], shards["files"]) if p.startswith("00000.tar::")]
                + [files, shards["folder"] / shards["files"][-1]]
                + [shards["folder"] / f for p, f in zip(shards["paths"], shards["files"]) if p.startswith("00001.tar::")])
    assert len(source.paths) == len(expected)
    for row, file in enumerate(expected):
        assert (source.members.read(row) if source.members.holds(row) else Path(source.paths[row]).read_bytes()) \
            == file.read_bytes()


def descriptors_under(folder: Path) -> int:
    """This process's open descriptors of files in ``folder`` (others come and go in a full test run)."""
    found = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found += os.readlink(fd).startswith(str(folder))
        except OSError:  # closed meanwhile
            continue
    return found


def test_reading_through_many_tars_keeps_at_most_8_of_them_open(tmp_path):
    """A long run walks through thousands of tars: without the cap it would run out of file descriptors."""
    samples = [(f"{i:03d}.jpg", bytes([i]) * 10) for i in range(12)]
    write_tar_shards(tmp_path, samples, per_tar=1)  # 12 tars of one member
    source = open_source(tmp_path)
    assert [source.members.read(row) for row in range(12)] == [data for _, data in samples]
    assert descriptors_under(tmp_path) == 8
    first = str(tmp_path / source.paths[0].split("::")[0])
    assert not any(os.readlink(fd) == first for fd in Path("/proc/self/fd").iterdir()
                   if fd.is_symlink() and fd.exists())  # the first tars' files were closed on the way


def test_threads_reading_through_many_tars_each_get_their_own_member(tmp_path):
    """The report decodes thumbnails in 8 threads: one thread's read must not close (or reuse the
    descriptor of) a tar another thread is reading, once more than 8 tars are in play."""
    samples = [(f"{i:03d}.jpg", i.to_bytes(2, "big") * 50) for i in range(60)]
    write_tar_shards(tmp_path, samples, per_tar=2)  # 30 tars
    source = open_source(tmp_path)
    rows = list(range(60)) * 50
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave between any two bytecodes, as on a busy machine
    try:
        with ThreadPoolExecutor(8) as pool:
            read = list(pool.map(source.members.read, rows))
    finally:
        sys.setswitchinterval(switch_interval)
    assert read == [samples[row][1] for row in rows]


def test_a_sources_tars_are_closed_by_members_close_and_when_the_source_is_dropped(tmp_path):
    samples = [(f"{i:03d}.jpg", bytes([i]) * 10) for i in range(12)]
    write_tar_shards(tmp_path, samples, per_tar=1)

    open_tars = lambda: descriptors_under(tmp_path)  # noqa: E731
    source = open_source(tmp_path)
    for row in range(5):
        source.members.read(row)
    assert open_tars() == 5
    source.members.close()
    assert open_tars() == 0
    assert source.members.read(3) == samples[3][1]  # reopened on demand
    assert open_tars() == 1
    del source
    gc.collect()
    assert open_tars() == 0


def test_a_source_reads_in_a_process_that_unpickles_it_or_is_forked_from_a_reading_thread(tmp_path):
    """DataLoader workers started by spawn, and Ray tasks, receive the source pickled (its open
    descriptors' numbers mean nothing there); a worker forked while another thread of its parent
    held the reading lock would wait on it for good."""
    samples = [(f"{i:03d}.jpg", bytes([i]) * 10) for i in range(12)]
    write_tar_shards(tmp_path, samples, per_tar=1)
    source = open_source(tmp_path)
    source.members.read(0)
    (tmp_path / "source.pickle").write_bytes(pickle.dumps(source))
    other = subprocess.run([sys.executable, "-c", "import pickle, sys; source = pickle.load(open(sys.argv[1], 'rb')); "
                            "sys.stdout.buffer.write(b''.join(source.members.read(row) for row in range(12)))",
                            str(tmp_path / "source.pickle")], capture_output=True, timeout=120)
    assert other.returncode == 0 and other.stdout == b"".join(data for _, data in samples), other.stderr
    with source.members._lock:  # as a thumbnail thread holds it while the main thread forks a worker
        child = os.fork()
        if child == 0:
            signal.alarm(20)  # a deadlock ends the child, not the test run
            os._exit(0 if source.members.read(5) == samples[5][1] else 1)
    assert os.waitpid(child, 0)[1] == 0


def test_a_pax_path_wins_over_the_ustar_name_and_prefix_fields(tmp_path):
    """A pax writer may also fill the ustar header's name and prefix fields with an approximation
    of the path (libarchive does): the pax 'path' record is the member's name, not prefix + path."""
    path = tmp_path / "pax.tar"
    name = "dossier-été/" + "x" * 120 + ".jpg"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(name)
        info.size = 3
        archive.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(path.read_bytes())
    position = next(start for start in range(0, len(data), 512)
                    if data[start + 156:start + 157] == b"0")  # the member's own header, after its pax header
    header = data[position:position + 512]
    header[345:345 + 9] = b"elsewhere"  # the prefix field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[position:position + 512] = header
    path.write_bytes(bytes(data))
    listing = list_tar(path, {".jpg"})
    assert listing.names == [name] and path.read_bytes()[listing.offsets[0]:][:3] == b"abc"


def pax_tar(path: Path, records: bytes, image: bytes) -> None:
    """A tar of one ``a.jpg`` whose pax extended header holds ``records`` as written (damaged or not)."""
    def header(name: str, size: int, kind: bytes) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, kind
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    with open(path, "wb") as tar:
        for name, kind, data in (("PaxHeader/a.jpg", tarfile.XHDTYPE, records), ("a.jpg", tarfile.REGTYPE, image)):
            tar.write(header(name, len(data), kind) + data + bytes(-len(data) % 512))
        tar.write(bytes(1024))


@pytest.mark.parametrize("record", [b"0 path=b.jpg\n", b"-13 path=b.jpg\n", b"2 path=b.jpg\n"])
def test_a_pax_record_whose_length_does_not_pass_its_key_is_damage_not_a_hang(tmp_path, record):
    """Security review: a pax record of length 0 (or less, or within its own length field) was read
    again and again: `zsfs extract` of a 2 KB hostile tar listed it forever."""
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(encoded, "JPEG")
    image = encoded.getvalue()
    (tmp_path / "shards").mkdir()
    pax_tar(tmp_path / "shards" / "00000.tar", record, image)
    outcome = run_zsfs("extract", tmp_path / "shards", "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                       timeout=120)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "00000.tar is not a readable tar, or damaged" in outcome.output
    assert "a damaged pax record at byte 512" in outcome.output
    pax_tar(tmp_path / "intact.tar", b"18 path=b/c/d.jpg\n", image)  # the same tar, intact
    assert list_tar(tmp_path / "intact.tar", {".jpg"}).names == ["b/c/d.jpg"]


@pytest.mark.parametrize("written_in", ["the ustar size field", "a pax size record"])
def test_a_negative_member_size_is_damage_not_a_walk_back_to_the_same_header(tmp_path, written_in):
    """Security review: int() reads '-1000' as octal -512, and a pax 'size' record may say -1536: the
    walk jumped back to the header it had just read (or to the pax header before it), forever."""
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(encoded, "JPEG")
    (tmp_path / "shards").mkdir()
    pax_tar(tmp_path / "shards" / "00000.tar", b"14 size=-1536\n", encoded.getvalue())  # a.jpg's size: -1536
    if written_in == "the ustar size field":  # its own size -512 instead, and no pax header
        data = bytearray((tmp_path / "shards" / "00000.tar").read_bytes()[1024:])
        data[124:136], data[148:156] = b"-0000001000\0", b" " * 8
        data[148:156] = b"%06o\0 " % sum(data[:512])
        (tmp_path / "shards" / "00000.tar").write_bytes(bytes(data))
    outcome = run_zsfs("extract", tmp_path / "shards", "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                       timeout=120)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "00000.tar is not a readable tar, or damaged after 0 images (a negative member size in the header " \
           f"at byte {1024 if written_in == 'a pax size record' else 0})" in outcome.output


def test_a_named_pipe_among_the_tar_shards_is_refused_not_waited_on(shards, tmp_path):
    """Security review: a named pipe called 00001.tar beside the shards was opened to be listed, and
    the open waited for a writer that never came: `zsfs extract` of the folder hung before its first image."""
    folder = tmp_path / "shards"
    folder.mkdir()
    shutil.copy(shards["root"] / "00000.tar", folder)
    os.mkfifo(folder / "00001.tar")
    outcome = run_zsfs("extract", folder, "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0", timeout=60)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    assert "00001.tar is a named pipe, not a tar file" in outcome.output


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_gigabyte_long_name_or_pax_header_is_damage_not_read_into_memory(tmp_path, kind):
    """Security review: a GNU long name or pax header was read whole into memory, whatever its size:
    a shard of 8 KB on disk (a sparse file) that declares one of 6 GB took 6 GB to list, and under a
    memory limit crashed extract with a MemoryError traceback."""
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(encoded, "JPEG")
    image = encoded.getvalue()
    huge = 6 << 30
    (tmp_path / "shards").mkdir()
    with open(tmp_path / "shards" / "00000.tar", "wb") as tar:
        for name, size, member_kind in (("././@LongLink", huge, kind), ("a.jpg", len(image), tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.size, info.type = size, member_kind
            tar.write(info.tobuf(format=tarfile.USTAR_FORMAT))
            if member_kind == kind:
                tar.seek(size, os.SEEK_CUR)  # a hole: nothing written
            else:
                tar.write(image + bytes(-len(image) % 512) + bytes(1024))
    limited = ["prlimit", f"--data={3 << 30}", "--"]  # less than the header claims (torch loads within it)
    outcome = run_zsfs("extract", tmp_path / "shards", "--out", tmp_path / "s.h5", *TINY_MODEL_ARGS, "--workers", "0",
                       launcher=limited, timeout=120)
    assert outcome.returncode == 1 and outcome.problems == [], outcome.output
    what = "GNU long name" if kind == tarfile.GNUTYPE_LONGNAME else "pax header"
    assert f"00000.tar is not a readable tar, or damaged after 0 images (a {what} of 6,442,450,944 bytes in " \
           "the header at byte 0, over the 16 MiB any tar writer makes" in outcome.output


def test_hidden_members_are_left_out_as_a_folder_scan_leaves_out_hidden_files(tmp_path):
    """Bug: a tar made on macOS lists a ``._photo.jpg`` resource fork beside each image; a folder scan
    skips those (hidden), a tar listing took each as an image that then failed to decode."""
    tree = tmp_path / "tree"
    (tree / ".cache").mkdir(parents=True)
    (tree / "sub").mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tree / "photo.jpg")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(tree / "sub" / "b.png")
    (tree / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    shutil.copy(tree / "photo.jpg", tree / ".cache" / "copy.jpg")
    (tree / ".cache" / "link.jpg").symlink_to("copy.jpg")  # a hidden link: not named as a link either
    shards = tmp_path / "shards"
    shards.mkdir()
    subprocess.run(["tar", "-cf", str(shards / "00000.tar"), "-C", str(tree), "."], check=True)  # members "./x"
    assert "./._photo.jpg" in list_tar(shards / "00000.tar", None).names  # the real tool wrote them
    source = open_source(shards)
    assert sorted(source.paths) == ["00000.tar::./photo.jpg", "00000.tar::./sub/b.png"]
    assert source.tar_links == []
    assert open_source(tree).paths == ["photo.jpg", "sub/b.png"]  # the same images as the folder
    for row, path in enumerate(source.paths):
        assert source.members.read(row) == (tree / path.split("::./")[1]).read_bytes()

    # a store an earlier zsfs built from these tars listed the hidden members: its rerun says so
    out = tmp_path / "s.h5"
    assert run_cli("extract", shards, "--out", out, *TINY_MODEL_ARGS, "--workers", "0").exit_code == 0
    with h5py.File(out, "r+") as file:
        identity = json.loads(file.attrs[ATTR_IDENTITY])
        identity.update(listing_sha256=source.digest_with_hidden_members()[0], n_items=4)
        file.attrs[ATTR_IDENTITY] = canonical_json(identity)
    refused = run_cli("extract", shards, "--out", out, *TINY_MODEL_ARGS, "--workers", "0")
    assert refused.exit_code == 1 and "was built with the 2 hidden members (a name or folder starting with a dot" \
        in output_text(refused), output_text(refused)


def test_a_tar_without_closing_blocks_lists_its_last_member_and_data_after_an_empty_header_is_damage(tmp_path):
    """Some writers omit the closing blocks: a last member whose data ends at the file's end is
    whole. A block of zeros followed by more headers is not the end: the members after it would
    be lost silently."""
    path = tmp_path / "t" / "00000.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name in ("0.jpg", "1.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 1024  # whole blocks: no padding after the data
            archive.addfile(info, io.BytesIO(b"\xff\xd8" + bytes(1022)))
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    data = path.read_bytes()
    end = members[1].offset_data + 1024
    path.write_bytes(data[:end])
    listing = list_tar(path, IMAGE_EXTENSIONS)
    assert listing.names == ["0.jpg", "1.jpg"] and listing.offsets[1] == members[1].offset_data
    path.write_bytes(data[:members[1].offset] + bytes(512) + data[members[1].offset:end])
    with pytest.raises(ZsfsError, match=r"damaged after 1 image \(an empty header at byte 1536 is followed by data"):
        list_tar(path, IMAGE_EXTENSIONS)


def test_hidden_files_and_folders_beside_tars_leave_them_tar_shards(shards, tmp_path):
    """A folder of tars that a Mac or git also wrote into (``._0.jpg``, ``.git/``) is still read as
    tar shards: hidden entries count as neither loose images nor subfolders, as a scan skips them."""
    root = tmp_path / "tars"
    shutil.copytree(shards["root"], root, ignore=shutil.ignore_patterns("*.shards", "*.h5"))
    expected = open_source(root).paths
    (root / "._0.jpg").write_bytes(b"\0\5\26\7")
    (root / ".git").mkdir()
    assert open_source(root).paths == expected and expected and "::" in expected[0]


def test_a_member_over_2_gib_decodes_as_its_file_would_without_being_read_whole(tmp_path):
    """Walkthrough: a 2.5 GB member was read whole (2.6 GB per decoding process) and, as one pread
    returns at most 2 GiB - 4 KiB on Linux, skipped as "cut short since it was listed"; the same
    file in a folder decoded in 1 GB. Its tail here is a hole: the tar takes no disk."""
    image = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(image, "JPEG")
    big = 2_500_000_000
    with open(tmp_path / "00000.tar", "wb") as file:
        for name, size in (("small.jpg", len(image.getvalue())), ("big.jpg", big)):
            info = tarfile.TarInfo(name)
            info.size = size
            file.write(info.tobuf(tarfile.GNU_FORMAT) + image.getvalue())
            file.seek(size - len(image.getvalue()) + (-size % 512), os.SEEK_CUR)
        file.write(b"\0" * 1024)
    # the peak of this process alone (VmHWM; ru_maxrss keeps a forked parent's, the test runner's, across exec),
    # and the bytes it read (rchar)
    script = ("import sys\nfrom zsfs.sources import open_source\n"
              "source = open_source(sys.argv[1])\n"
              "print([source.decode(i).size for i in range(len(source))], source.members.size.tolist())\n"
              "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
              "print(int(status['VmHWM'].split()[0]) // 1024)\n"
              "print(int(dict(line.split(':') for line in open('/proc/self/io'))['rchar']) // 2**20)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "00000.tar")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sizes, peak_mb, read_mb = done.stdout.splitlines()
    assert sizes == f"[(64, 48), (64, 48)] [{len(image.getvalue())}, {big}]"
    assert int(peak_mb) < 1000 and int(read_mb) < 200, (peak_mb, read_mb)  # 2,600 MB and 2,400 MB read whole


def test_a_tar_member_named_in_a_list_is_skipped_with_what_to_do(shards, tmp_path):
    """Walkthrough: a list line ``../tars/00000.tar::000000001.jpg`` was skipped as "file not
    found", with no word that a list names files and the tars themselves are the source."""
    from zsfs.sources import TAR_MEMBER_IN_LIST

    member = f"{shards['root'] / '00000.tar'}::{shards['paths'][0].partition('::')[2]}"
    (tmp_path / "a.png").write_bytes((shards["folder"] / shards["files"][0]).read_bytes())
    (tmp_path / "list.txt").write_text(f"a.png\n{member}\n{tmp_path / 'gone.tar'}::x.jpg\n")
    source = open_source(tmp_path / "list.txt")
    assert source.unreadable == {member: TAR_MEMBER_IN_LIST}  # a missing tar's entry: "file not found" when read
    store = extract(tmp_path / "list.txt", tmp_path / "s.h5", workers=0, **TINY_MODELS).output
    result = run_cli("info", store, "--skipped")
    assert f"{member}\t{TAR_MEMBER_IN_LIST}" in result.output, result.output


def test_a_lost_mount_under_a_tar_stops_the_run_instead_of_skipping_its_images(shards, monkeypatch):
    """Review: an errno of the machine (a stale NFS handle, a lost FUSE mount) while a member's bytes
    were read became "unreadable tar (Stale file handle)", a skip no rerun retries; only a failure to
    open the tar stopped the run. (No NFS server here: the kernel's ESTALE is raised by pread's stand-in.)"""
    import errno

    from zsfs.decode import ImageDecodeError, MachineReadError
    from zsfs.tars import TarMembers

    source = open_source(shards["root"])

    def failing(number: int):
        def pread(self, *args):
            raise OSError(number, os.strerror(number))
        return pread

    monkeypatch.setattr(TarMembers, "pread", failing(errno.ESTALE))
    with pytest.raises(MachineReadError, match=r"::.*: Stale file handle, a failure of this machine or its file "
                                               r"system, not of the file: check the network mount the images are on"):
        source.decode(0)
    monkeypatch.setattr(TarMembers, "pread", failing(errno.EIO))
    with pytest.raises(ImageDecodeError, match=r"unreadable tar \(Input/output error\)"):  # a bad sector: the file's
        source.decode(0)
