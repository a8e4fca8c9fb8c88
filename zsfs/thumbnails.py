"""Small JPEG thumbnails of source images, as ``data:`` URIs a page can embed.

An image that cannot be read (moved, deleted, a stand-in path of an imported store, not an
image) gives ``None`` and its reason: a report says so instead of failing.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THUMBNAIL_PX = 96  # longest side
JPEG_QUALITY = 70


def thumbnail(path: str | Path, size: int = THUMBNAIL_PX) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for a readable image, ``(None, reason)`` otherwise (decoded as
    ``zsfs extract`` decodes: EXIF orientation, 16-bit and palette images, the same reasons)."""
    from zsfs.sources import ImageDecodeError, decode_image

    try:
        image = decode_image(path, draft=(size, size))
    except ImageDecodeError as error:
        return None, error.reason
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None


def thumbnails(paths: Sequence[str | Path], size: int = THUMBNAIL_PX,
               workers: int | None = None) -> list[tuple[str | None, str | None]]:
    """:func:`thumbnail` of every path, in order; decoded by threads (Pillow releases the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda path: thumbnail(path, size), paths))
