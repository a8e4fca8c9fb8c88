"""Webdataset tar shards as img2dataset writes them, made from files or from bytes."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_tar_shards(folder: Path | str, samples: Iterable[tuple[str, bytes]], per_tar: int) -> list[str]:
    """Write ``folder/00000.tar, 00001.tar, ...``, ``per_tar`` samples each; sample ``i`` with
    image bytes ``data`` and suffix ``suffix`` becomes ``KEY<suffix>`` beside ``KEY.txt`` (a
    caption) and ``KEY.json`` (metadata), ``KEY`` = ``i`` on 9 digits. Returns the listing
    paths zsfs records, ``00000.tar::000000000.jpg``, in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, archive = [], None
    for i, (suffix, data) in enumerate(samples):
        if i % per_tar == 0:
            if archive is not None:
                archive.close()
            tar_name = f"{i // per_tar:05d}.tar"
            archive = tarfile.open(folder / tar_name, "w", format=tarfile.USTAR_FORMAT)
        key = f"{i:09d}"
        metadata = json.dumps({"key": key, "caption": f"sample {i}", "status": "success"}).encode()
        for name, content in ((key + suffix, data), (key + ".txt", f"sample {i}".encode()), (key + ".json", metadata)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        paths.append(f"{tar_name}::{key}{suffix}")
    if archive is not None:
        archive.close()
    return paths


def files_as_samples(root: Path, relative_paths: Sequence[str]) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of each file, to pack with ``write_tar_shards``."""
    return [(Path(path).suffix, (Path(root) / path).read_bytes()) for path in relative_paths]
