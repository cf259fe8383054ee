"""8-bit display renderings: windowing of 16-bit and float pixels, thumbnails as JPEG.

Example:
    >>> import numpy as np
    >>> to_display_uint8(np.array([[0, 1000]], np.uint16)[:, :, None]).dtype
    dtype('uint8')
"""

from __future__ import annotations

import cv2
import numpy as np

from lakeimg.image.info import as_hwc

__all__ = ["to_display_uint8", "make_thumbnail", "display_window", "THUMBNAIL_SIZE"]

THUMBNAIL_SIZE = 256


def display_window(arr: np.ndarray) -> tuple[float, float]:
    """The (low, high) sample values shown as black and white: the 0.5th and 99.5th percentiles
    of the finite samples (their min and max when those two are equal).

    Example:
        >>> display_window(np.arange(1001, dtype=np.uint16))
        (5.0, 995.0)
    """
    sample = arr.reshape(-1)
    if sample.size > 1_000_000:  # a strided sample is plenty for a display window
        sample = sample[:: sample.size // 1_000_000]
    sample = sample.astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, [0.5, 99.5])
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    return float(low), float(high if high > low else low + 1)


def _real(arr: np.ndarray) -> np.ndarray:
    # A cast to real would keep only the real part, with a ComplexWarning per call.
    return np.abs(arr) if arr.dtype.kind == "c" else arr


def to_display_uint8(
    pixels: np.ndarray,
    *,
    window: tuple[float, float] | None = None,
    invert: bool = False,
) -> np.ndarray:
    """Render HWC pixels of any dtype as uint8 gray or RGB (alpha composited on white).

    uint8 passes through; bool becomes 0/255; complex samples show their magnitude; other
    dtypes are windowed to `window` (low, high) or, without one, to the 0.5th..99.5th
    percentile of finite values.
    """
    arr = _real(as_hwc(pixels))
    channels = arr.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha, arr = arr[:, :, -1], arr[:, :, :-1]
    elif channels > 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        low, high = window or display_window(arr)
        # float64 for wide types: float32 would overflow (a warning per file) on values past 3.4e38
        work = arr.astype(np.float64 if arr.dtype.itemsize > 4 else np.float32)
        span = float(high) - float(low)
        if not span > 0 or not np.isfinite(span):  # one value (1e300 + 1 == 1e300) or a window past float range
            span = max(abs(float(low)), 1.0) if np.isfinite(low) else 1.0
        with np.errstate(over="ignore", invalid="ignore"):  # inf and huge values clip to 0 / 255
            scaled = (work - low) * (255.0 / span)
        out = np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).astype(np.uint8)
    if invert:
        out = 255 - out
    if alpha is not None:
        a = alpha.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # an inf or NaN alpha: opaque
            top = a[np.isfinite(a)]
            a = a / 255.0 if alpha.dtype == np.uint8 else a / max(float(top.max()) if top.size else 1.0, 1.0)
        a = np.clip(np.nan_to_num(a, nan=1.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
        out = (out.astype(np.float32) * a[:, :, None] + 255.0 * (1 - a[:, :, None])).astype(np.uint8)
    return np.ascontiguousarray(out)


def make_thumbnail(
    pixels: np.ndarray,
    *,
    size: int = THUMBNAIL_SIZE,
    window: tuple[float, float] | None = None,
    invert: bool = False,
    quality: int = 85,
) -> bytes:
    """JPEG bytes of an 8-bit rendering whose longest side is at most `size` and every side at
    least one pixel, for every dtype and shape lakeimg stores (1 x N, N x 1, many channels).

    Example:
        >>> import numpy as np
        >>> make_thumbnail(np.zeros((600, 300, 3), np.uint8))[:2]
        b'\\xff\\xd8'
    """
    h, w = pixels.shape[:2]
    scale = min(1.0, size / max(h, w))
    small = pixels
    if scale < 1.0:
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        # Area averaging on the native dtype before windowing keeps 16-bit detail.
        src = _real(as_hwc(pixels))
        if src.shape[2] > 4:  # OpenCV resizes up to 4 channels; the rendering shows the first 3
            src = src[:, :, :3]
        if src.dtype == np.bool_:
            src = src.astype(np.uint8)
        elif src.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
            # int8, int32, uint32, (u)int64, float16: types cv2.resize has no kernel for
            src = src.astype(np.float64 if src.dtype.itemsize > 4 else np.float32)
        small = as_hwc(cv2.resize(src, new, interpolation=cv2.INTER_AREA))
    display = to_display_uint8(small, window=window, invert=invert)
    if display.shape[2] == 3:
        display = cv2.cvtColor(display, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", display, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding of the thumbnail failed")
    return buf.tobytes()
