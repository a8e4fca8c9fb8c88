"""Small JPEG thumbnails of source images, as ``data:`` URIs a page can embed.

An image that cannot be read (moved, deleted, a stand-in path of an imported store, not an
image) gives ``None`` and its reason: a report says so instead of failing.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsfs.sources import ImageSource

THUMBNAIL_PX = 96  # longest side
JPEG_QUALITY = 70


def thumbnail(source: "ImageSource", i: int, size: int = THUMBNAIL_PX,
              max_pixels: int | None = None) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for the ``i``-th image of ``source`` when readable, ``(None, reason)``
    otherwise (decoded as ``zsfs extract`` decodes: files or tar members, EXIF orientation, 16-bit
    and palette images, the same reasons and pixel budget ``max_pixels`` [its default]). The
    thumbnail is of the image's central square: what a page shows of it in a square tile, and what
    a centre-cropping model sees (a 30,000 x 50 strip made a 96 x 1 thumbnail, stretched into streaks)."""
    from zsfs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, MachineReadError

    try:
        image = source.decode(i, max_pixels or DEFAULT_MAX_PIXELS, draft=(size, size))
    except ImageDecodeError as error:
        return None, error.reason
    except MachineReadError as error:  # a page made again shows it: no reason to stop the report (review)
        return None, str(error)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None


def thumbnails(source: "ImageSource", size: int = THUMBNAIL_PX, workers: int | None = None,
               max_pixels: int | None = None) -> list[tuple[str | None, str | None]]:
    """:func:`thumbnail` of every image of ``source``, in order; decoded by threads (Pillow releases the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: thumbnail(source, i, size, max_pixels), range(len(source))))
