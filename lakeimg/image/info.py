"""What an image file holds (`DecodedImage`), its orientation, and the limits checked from its header.

Every reader (decode, dicom, sources) builds the same `DecodedImage`; a header read without
pixels (`probe_image`) is one with `pixels=None`.

Example:
    >>> check_decoded_size("x.png", 100, 100, 3, "uint8", max_bytes=1 << 20)
    >>> decoded_bytes(100, 100, 3, "uint16")
    60000
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lakeimg.errors import ErrorClass, ImageDecodeError

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DecodedImage",
    "apply_orientation",
    "as_hwc",
    "check_decoded_size",
    "check_dtype",
    "decoded_bytes",
    "default_max_decoded_bytes",
    "valid_orientation",
]

# The ceiling of the per-image memory limit: the decoded array of one image (width x height x
# channels x bytes per sample), checked from the header before any decoding. The default a job
# uses is smaller on small machines: see `default_max_decoded_bytes`.
DEFAULT_MAX_DECODED_BYTES = 2 << 30


@dataclass
class DecodedImage:
    """What one file holds: header facts, page-0 pixels (HWC, native dtype) and metadata.

    `pixels` is None for a header read without decoding (`probe_image`), and may be a
    reduced-size preview when the reader was asked only for a thumbnail (`preview=True`);
    `width`/`height` always describe the full image as displayed (orientation applied).
    """

    format: str
    width: int
    height: int
    channels: int
    dtype: str
    mode: str
    pages: int
    pixels: np.ndarray | None = None
    exif: dict[str, str] | None = None
    dicom: dict[str, Any] | None = None
    geo: dict[str, Any] | None = None
    display_window: tuple[float, float] | None = None  # (low, high) for 8-bit display
    invert_display: bool = False
    decoder: str | None = None  # the reader that decoded the pixels (see `lakeimg.image.decode`)


def as_hwc(arr: np.ndarray) -> np.ndarray:
    """HWC view of a 2-D or 3-D array (gray images get a channel axis).

    Example:
        >>> as_hwc(np.zeros((2, 3))).shape
        (2, 3, 1)
    """
    return arr[:, :, None] if arr.ndim == 2 else arr


def valid_orientation(value: Any) -> int:
    """An EXIF/TIFF Orientation tag value as 1..8 (1, upright, for a missing or broken value).

    Example:
        >>> valid_orientation(6), valid_orientation("junk"), valid_orientation(None)
        (6, 1, 1)
    """
    try:
        value = int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1..8) to an HWC array, as Pillow's exif_transpose does."""
    if not orientation or orientation == 1:
        return arr
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(int(orientation))
    return np.ascontiguousarray(op(arr)) if op else arr


def check_dtype(uri: str, dtype: Any) -> None:
    """Refuse sample types lakeimg does not store (an `unsupported_dtype` reject).

    Every numeric numpy dtype is kept as it is: bool, int8..uint64, float16..float64 and
    complex64/complex128 (TIFF SampleFormat 6: radar, FFT data; thumbnails show the magnitude).

    Example:
        >>> check_dtype("x.tif", "complex64")
        >>> check_dtype("x.tif", "U4")
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: x.tif: unsupported_dtype: samples of type <U4 are not supported
    """
    kind = np.dtype(dtype).kind if dtype is not None else "V"
    if kind not in "biufc":
        raise ImageDecodeError(uri, ErrorClass.UNSUPPORTED_DTYPE, f"samples of type {np.dtype(dtype) if dtype is not None else dtype} are not supported")


def decoded_bytes(width: int, height: int, channels: int, dtype: Any, frames: int = 1) -> int:
    """Bytes of the decoded array: width x height x channels x bytes per sample (x frames).

    Example:
        >>> decoded_bytes(15_000, 15_000, 1, "uint8")
        225000000
    """
    return int(width) * int(height) * max(1, int(channels)) * np.dtype(dtype).itemsize * max(1, int(frames))


def _total_memory() -> int | None:
    """Physical memory, or the cgroup's limit when the process runs in a smaller container."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def default_max_decoded_bytes(workers: int | None = None) -> int:
    """The per-image memory limit a job uses by default: min(2 GiB, memory / (2 x workers)).

    Half the machine's memory (or its container's limit) shared by the decoding workers,
    leaving room for each worker's second copy (orientation, colour conversion, the thumbnail)
    and for the driver; never more than 2 GiB per image (`DEFAULT_MAX_DECODED_BYTES`), since
    larger images are tiled when their format allows windowed reads.

    Example:
        >>> 0 < default_max_decoded_bytes(4) <= DEFAULT_MAX_DECODED_BYTES
        True
    """
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    total = _total_memory()
    if not total:
        return DEFAULT_MAX_DECODED_BYTES
    return int(max(64 << 20, min(DEFAULT_MAX_DECODED_BYTES, total // (2 * workers))))


def _size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def check_decoded_size(
    uri: str,
    width: int,
    height: int,
    channels: int,
    dtype: Any,
    *,
    max_bytes: int | None,
    max_pixels: int | None = None,
    frames: int = 1,
    what: str = "for formats that must be decoded whole",
) -> None:
    """Raise a `too_large` (or `empty_image`, for a 0 x N size) reject from header facts alone.

    Example:
        >>> check_decoded_size("x.png", 15_000, 15_000, 1, "uint8", max_bytes=64 << 20)
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: x.png: too_large: header claims 15000x15000 = 225,000,000 pixels (1 x uint8): 225,000,000 bytes decoded (214.6 MiB), above the limit of 67,108,864 bytes (64.0 MiB, max_decoded_bytes) for formats that must be decoded whole
    """
    if width <= 0 or height <= 0:
        raise ImageDecodeError(uri, ErrorClass.EMPTY_IMAGE, f"header gives an empty size {width}x{height}")
    pixels = width * height
    frame_text = f" x {frames} frames" if frames > 1 else ""
    if max_pixels is not None and pixels > max_pixels:
        raise ImageDecodeError(
            uri, ErrorClass.TOO_LARGE,
            f"header claims {width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,} pixels "
            f"(max_pixels) {what}",
        )
    size = decoded_bytes(width, height, channels, dtype, frames)
    if max_bytes is not None and size > max_bytes:
        raise ImageDecodeError(
            uri, ErrorClass.TOO_LARGE,
            f"header claims {width}x{height} = {pixels:,} pixels ({channels} x {np.dtype(dtype)}){frame_text}: "
            f"{size:,} bytes decoded ({_size_text(size)}), above the limit of {max_bytes:,} bytes "
            f"({_size_text(max_bytes)}, max_decoded_bytes) {what}",
        )
