"""lakeimg's settings of the image libraries, in force only while lakeimg itself decodes.

Importing lakeimg changes nothing in the importing process: Pillow's pixel limit, Pillow's
truncated-image switch and tifffile's logger keep whatever the user set. lakeimg needs them
otherwise while it reads a file (it checks sizes from headers itself and wants a typed reject,
not Pillow's DecompressionBombError; tifffile's log lines about a broken file would only repeat
the reject row on stderr), so `decoder_settings()` applies them around each call and puts the
user's values back after. Its own worker processes (`configure_worker`, the pool's
initializer) keep them for good, plus one OpenCV thread per worker so N workers do not run
N x cores threads.

The context is process-wide while it is entered (these libraries offer no per-call switch):
another thread of the same process sees lakeimg's values during that time.

Example:
    >>> from PIL import Image
    >>> before = Image.MAX_IMAGE_PIXELS
    >>> with decoder_settings():
    ...     Image.MAX_IMAGE_PIXELS is None
    True
    >>> Image.MAX_IMAGE_PIXELS == before
    True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["configure_worker", "decoder_settings"]

_lock = threading.Lock()
_depth = 0
_saved: tuple[Any, Any, int] | None = None
_permanent = False


def _apply() -> tuple[Any, Any, int]:
    from PIL import Image, ImageFile

    logger = logging.getLogger("tifffile")
    saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, logger.level)
    Image.MAX_IMAGE_PIXELS = None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if logger.level != logging.CRITICAL:
        logger.setLevel(logging.CRITICAL)
    return saved


def _restore(saved: tuple[Any, Any, int]) -> None:
    from PIL import Image, ImageFile

    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, level = saved
    logger = logging.getLogger("tifffile")
    if logger.level != level:
        logger.setLevel(level)


@contextmanager
def decoder_settings() -> Iterator[None]:
    """Apply lakeimg's image-library settings for the duration; nested and threaded use nest."""
    global _depth, _saved
    if _permanent:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = _apply()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                _restore(_saved)
                _saved = None


def configure_worker() -> None:
    """Keep lakeimg's settings for good in this process: only for lakeimg's own workers.

    Example:
        >>> import subprocess, sys
        >>> code = "from lakeimg.image._settings import configure_worker; configure_worker(); import cv2; print(cv2.getNumThreads())"
        >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        '1'
    """
    global _permanent
    import cv2

    # Same results with any thread count; one per worker keeps N workers from oversubscribing.
    cv2.setNumThreads(1)
    with _lock:
        if not _permanent:
            _apply()
            _permanent = True
