"""Small JPEG thumbnails of source images, as ``data:`` URIs a page can embed.

An image that cannot be read (moved, deleted, a stand-in path of an imported store, not an
image) gives ``None`` and its reason: a report says so instead of failing.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsfs.sources import ImageSource

THUMBNAIL_PX = 96  # longest side
JPEG_QUALITY = 70


def thumbnail(source: "ImageSource", i: int, size: int = THUMBNAIL_PX, max_pixels: int | None = None,
              admit: Callable[[int], AbstractContextManager] | None = None
              ) -> tuple[str | None, str | None]:
    """``(data URI, None)`` for the ``i``-th image of ``source`` when readable, ``(None, reason)``
    otherwise (decoded as ``zsfs extract`` decodes: files or tar members, EXIF orientation, 16-bit
    and palette images, the same reasons and pixel budget ``max_pixels`` [its default]). The
    thumbnail is of the image's central square: what a page shows of it in a square tile, and what
    a centre-cropping model sees (a 30,000 x 50 strip made a 96 x 1 thumbnail, stretched into streaks).
    ``admit``: as :func:`zsfs.decode.decode_image`'s."""
    from zsfs.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, MachineReadError

    try:
        image = source.decode(i, max_pixels or DEFAULT_MAX_PIXELS, draft=(size, size), admit=admit)
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
    """:func:`thumbnail` of every image of ``source``, in order; decoded by threads (Pillow releases
    the GIL) that together hold about what one image at the pixel budget costs (:class:`DecodingBudget`)."""
    from zsfs.decode import DEFAULT_MAX_PIXELS, MOST_BYTES_PER_PIXEL

    workers = workers or min(8, os.cpu_count() or 1)
    budget = DecodingBudget(MOST_BYTES_PER_PIXEL * (max_pixels or DEFAULT_MAX_PIXELS))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda i: thumbnail(source, i, size, max_pixels, budget.held), range(len(source))))


class DecodingBudget:
    """Memory that threads decoding images at once may hold together, in bytes: a thread waits until
    its image's share is free, and an image costing more than all of it decodes alone. (A report's 8
    threads each decoded a 9000 x 9000 16-bit tile at once: 6.4 GB where extract's worker took 1.6.)"""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._free = total_bytes
        self._changed = threading.Condition()

    @contextmanager
    def held(self, cost_bytes: int) -> Iterator[None]:
        """Hold the share of an image whose decoding costs ``cost_bytes`` (capped at the whole budget)."""
        share = min(cost_bytes, self.total_bytes)
        with self._changed:
            self._changed.wait_for(lambda: self._free >= share)
            self._free -= share
        try:
            yield
        finally:
            with self._changed:
                self._free += share
                self._changed.notify_all()
