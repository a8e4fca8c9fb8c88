"""A tar's member list from its 512-byte headers alone (ustar, GNU long names, pax): headers read
through a 64 KiB window (one ``pread`` per window, or per large member jumped over), checksums
verified in bulk with numpy, and a cut or damaged file an error, never a silently shorter
listing. ``zsfs.tars`` opens the files and names the errors."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import numpy as np


class TarListing(NamedTuple):
    """The members of one tar whose suffix is one of the image suffixes, in tar order."""

    names: list[str]
    offsets: list[int]  # where each member's data starts
    sizes: list[int]
    links: list[str]  # names of links and sparse files (not read: a tar shard's images are plain files)


class DamagedTar(Exception):
    """A header, checksum or member size that no intact tar has (its text says where)."""


class CompressedTar(Exception):
    """The file starts as a compressed stream (gzip, bzip2, xz, zstd), not a tar."""


_BLOCK = 512
_WINDOW = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular, old-style regular, contiguous
_LINK_TYPES = (b"1", b"2")  # hard, symbolic
_GNU_SPARSE = b"S"  # its data holds the file without its holes: not the file's bytes
EXTENDED_HEADER_MAX = 16 << 20
"""Most bytes of a GNU long name or pax extended header, read whole into memory: a name is at most
a few KiB, a pax header a member's names, times and extended attributes (64 KiB each on Linux);
libarchive refuses long names over 1 MiB."""
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def scan_headers(fd: int, suffixes: frozenset | None, listing: TarListing) -> None:
    """Walk the headers of an uncompressed tar (ustar, GNU long names, pax), appending matches to ``listing``.

    Headers are read through a 64 KiB window: small members (captions, metadata) cost no
    system call of their own, a large image's data is jumped over with one ``pread``.
    """
    byte_suffixes = None if suffixes is None else {suffix.encode() for suffix in suffixes}
    pread, checked, file_size = os.pread, _Checksums(), os.fstat(fd).st_size
    names, offsets, sizes = listing.names, listing.offsets, listing.sizes
    position, window, window_start, last_header = 0, b"", 0, 0
    long_name, long_size, sparse = None, None, False  # from a preceding GNU 'L' or pax 'x' header
    while True:
        start = position - window_start
        if start + _BLOCK > len(window):
            window, window_start, start = pread(fd, _WINDOW, position), position, 0
        header = window[start:start + _BLOCK]
        # the end (some writers omit the closing blocks; a download may cut them short: zeros, no member lost)
        if header == _ZERO_BLOCK or not any(header):
            checked.verify(names, offsets)
            if position > file_size:  # cut in the last member's padding: what followed it is unknown
                raise DamagedTar(f"the file ends inside the padding of the member whose header is at byte "
                                 f"{last_header}")
            if long_name is not None or long_size is not None:  # a GNU long name or pax header names a next member
                raise DamagedTar(f"the file ends after the extended header at byte {last_header}, before the "
                                 "member it describes")
            if any(pread(fd, 20 * _BLOCK, position)):
                raise DamagedTar(f"an empty header at byte {position} is followed by data")
            return
        if position == 0 and header.startswith(_COMPRESSED_MAGIC):
            raise CompressedTar
        if len(header) < _BLOCK:
            raise DamagedTar(f"the file ends inside the header at byte {position}")
        checked.add(header, position, names, offsets)
        last_header = position
        if long_size is not None:
            size = long_size
        elif header[124] & 0x80:  # base-256, for members over 8 GiB
            size = int.from_bytes(header[125:136], "big")
        else:
            size = int(header[124:136].strip(b" \0") or b"0", 8)
        kind, data = header[156:157], position + _BLOCK
        if size < 0 or data + size > file_size:  # a cut file, or a damaged size field: never read past the end
            checked.verify(names, offsets)  # a bad header before this one is the first damage
            if size < 0:  # (int() reads '-1000' as octal) the walk would jump back to a header read before: forever
                raise DamagedTar(f"a negative member size in the header at byte {position}")
            raise DamagedTar(f"the file ends inside the member whose header is at byte {position}")
        if kind in (b"L", b"x") and size > EXTENDED_HEADER_MAX:  # read whole below: a sparse tar costs no disk
            checked.verify(names, offsets)  # (a damaged header's checksum says so first)
            what = "GNU long name" if kind == b"L" else "pax header"
            raise DamagedTar(f"a {what} of {size:,} bytes in the header at byte {position}, over the "
                             f"{EXTENDED_HEADER_MAX >> 20} MiB any tar writer makes")
        if kind == b"L":
            long_name = pread(fd, size, data).split(b"\0", 1)[0]
        elif kind == b"x":
            records = _pax_records(pread(fd, size, data), data)
            # GNU tar's pax sparse file: named ./GNUSparseFile.N/NAME in the header, NAME in the records
            sparse = any(key.startswith(b"GNU.sparse.") for key in records)
            long_name = records.get(b"GNU.sparse.name", records.get(b"path", long_name))
            long_size = int(records[b"size"]) if b"size" in records else None
        else:
            if kind == _GNU_SPARSE:  # its sparse map may go on in extension blocks before the data
                extended = header[482]
                while extended:
                    extension = pread(fd, _BLOCK, data)
                    if len(extension) < _BLOCK:
                        raise DamagedTar(f"the file ends inside the sparse map of the member whose header is at "
                                         f"byte {position}")
                    data, extended = data + _BLOCK, extension[504]
                if data + size > file_size:
                    raise DamagedTar(f"the file ends inside the member whose header is at byte {position}")
            if kind in _FILE_TYPES or kind in _LINK_TYPES or kind == _GNU_SPARSE:
                name = long_name or header[:100].split(b"\0", 1)[0]
                if long_name is None and header[345] and header[257:263] == b"ustar\0":
                    name = header[345:500].split(b"\0", 1)[0] + b"/" + name  # POSIX ustar prefix
                if byte_suffixes is None or name[name.rfind(b"."):].lower() in byte_suffixes:
                    if kind in _LINK_TYPES or kind == _GNU_SPARSE or sparse:  # (review: a sparse one was dropped)
                        listing.links.append(name.decode("utf-8", "surrogateescape"))
                    else:
                        names.append(name.decode("utf-8", "surrogateescape"))
                        offsets.append(data)
                        sizes.append(size)
            if kind != b"g":  # a pax global header leaves the next member's overrides alone
                long_name, long_size, sparse = None, None, False
        position = data + -(-size // _BLOCK) * _BLOCK


class _Checksums:
    """Header checksums verified in bulk with numpy (a Python byte sum per header would be
    most of the listing's time); a bad one drops the entries listed after it and raises."""

    BATCH = 8192

    def __init__(self):
        self.headers: list[bytes] = []
        self.positions: list[int] = []

    def add(self, header: bytes, position: int, names: list, offsets: list) -> None:
        self.headers.append(header)
        self.positions.append(position)
        if len(self.headers) == self.BATCH:
            self.verify(names, offsets)

    def verify(self, names: list, offsets: list) -> None:
        if not self.headers:
            return
        blocks = np.frombuffer(b"".join(self.headers), dtype=np.uint8).reshape(-1, _BLOCK)
        field = blocks[:, 148:156]
        recorded = _octal_fields(field)
        unsigned = blocks.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * ord(" ")
        # old Sun and V7 tars summed the bytes as signed (as tarfile also accepts)
        signed = blocks.view(np.int8).sum(axis=1, dtype=np.int64) - field.view(np.int8).sum(axis=1, dtype=np.int64) \
            + 8 * ord(" ")
        bad = np.flatnonzero((unsigned != recorded) & (signed != recorded))
        if bad.size:
            position = self.positions[bad[0]]
            keep = sum(offset < position for offset in offsets)
            del names[keep:], offsets[keep:]
            raise DamagedTar(f"bad header checksum at byte {position}")
        self.headers.clear()
        self.positions.clear()


def _octal_fields(field: np.ndarray) -> np.ndarray:
    """Octal numbers of (n, width) ASCII fields: leading spaces skipped, digits up to the first
    other byte (NUL or space); -1 where a field holds no digit."""
    digit = (field >= ord("0")) & (field <= ord("7"))
    started = np.cumsum(digit, axis=1) > 0
    ended = np.cumsum(started & ~digit, axis=1) > 0
    use = digit & ~ended
    values = np.zeros(len(field), dtype=np.int64)
    for column in range(field.shape[1]):
        values = np.where(use[:, column], values * 8 + (field[:, column].astype(np.int64) - ord("0")), values)
    return np.where(use.any(axis=1), values, -1)


_PAX_RECORD = re.compile(rb"(\d+) ([^=]*)=")


def _pax_records(data: bytes, start: int) -> dict[bytes, bytes]:
    """``LENGTH KEY=VALUE\\n`` records of a pax extended header (its data at byte ``start`` of the tar)."""
    records, position = {}, 0
    while position < len(data) and data[position:position + 1] != b"\0":
        record = _PAX_RECORD.match(data, position)
        end = position + int(record[1]) if record is not None else -1
        # a length that ends before the record's key reads the same record again, forever (a hostile tar)
        if record is None or end <= record.end() or end > len(data):
            raise DamagedTar(f"a damaged pax record at byte {start + position}")
        records[record[2]] = data[record.end():end - 1]
        position = end
    return records
