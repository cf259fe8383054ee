"""Decoding image files: bytes in, header + native-dtype ndarray (HWC) + metadata out.

Pure: no Spark, no Delta. Pillow reads the common formats; tifffile reads every TIFF (any dtype,
float16, BigTIFF, compressed through imagecodecs); OpenCV reads 16-bit PNGs, which Pillow squeezes
to 8 bits; pydicom (with the pylibjpeg plugins) reads DICOM. EXIF/TIFF orientation is applied, so
`width` and `height` are as displayed and `decode_image(content)` returns the displayed pixels.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue()).shape
    (4, 6, 3)
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from lakeimg.errors import ImageDecodeError
from lakeimg.image._settings import decoder_settings

__all__ = [
    "DecodedImage",
    "decode_image",
    "read_image",
    "sniff_format",
    "apply_orientation",
    "check_decoded_size",
    "check_dtype",
    "decoded_bytes",
    "default_max_decoded_bytes",
    "DEFAULT_MAX_DECODED_BYTES",
]

# The ceiling of the per-image memory limit: the decoded array of one image (width x height x
# channels x bytes per sample), checked from the header before any decoding. The default a job
# uses is smaller on small machines: see `default_max_decoded_bytes`.
DEFAULT_MAX_DECODED_BYTES = 2 << 30

_PIL_FORMATS = {"JPEG2000": "JPEG2000", "MPO": "JPEG"}


@dataclass
class DecodedImage:
    """What one file holds: header facts, page-0 pixels (HWC, native dtype) and metadata.

    `pixels` may be a reduced-size preview when the reader was asked only for a thumbnail
    (`preview=True`); `width`/`height` always describe the full image.
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
    extra: dict[str, Any] = field(default_factory=dict)


def sniff_format(head: bytes, uri: str = "") -> str | None:
    """Guess the container from magic bytes (and the .dcm suffix for preamble-less DICOM)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if uri.lower().endswith((".dcm", ".dicom")):
        return "DICOM"
    return None


def read_image(
    data: bytes,
    uri: str = "",
    *,
    max_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    max_pixels: int | None = None,
    preview: int | None = None,
) -> DecodedImage:
    """Read a file's header, metadata and page-0 pixels.

    Args:
        data: the whole file.
        uri: used in error messages and to recognise preamble-less DICOM.
        max_bytes: images whose decoded array (width x height x channels x bytes per sample,
            every frame a DICOM decodes) is larger, read from the header before any decoding,
            raise `ImageDecodeError(error_class="too_large")`; None: no limit.
        max_pixels: the same for width x height (an extra cap; None: none).
        preview: when set, pixels may be decoded at reduced scale whose longest side is at
            least this (JPEG DCT scaling), which is all a thumbnail needs.

    Raises:
        ImageDecodeError: with error_class empty, truncated, unsupported_format,
            unsupported_dtype (complex samples), corrupt or too_large.

    Example:
        >>> read_image(b"", "file:///x.png")
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: file:///x.png: empty: the file has no bytes
    """
    if not data:
        raise ImageDecodeError(uri, "empty", "the file has no bytes")
    kind = sniff_format(data[:132], uri)
    limits = (max_bytes, max_pixels)
    try:
        with decoder_settings():
            if kind == "DICOM":
                from lakeimg.image.dicom import read_dicom

                decoded = read_dicom(data, uri, max_pixels=max_pixels, max_bytes=max_bytes)
            elif kind == "TIFF":
                decoded = _read_tiff(data, uri, limits=limits)
            elif kind == "PNG" and len(data) > 25 and data[24] == 16:
                decoded = _read_png16(data, uri, limits=limits)
            else:
                decoded = _read_pillow(data, uri, limits=limits, preview=preview)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(uri, "too_large", f"out of memory while decoding: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(uri, "unsupported_format", "not an image format that Pillow, tifffile or pydicom can read") from exc
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a typed reject
        raise ImageDecodeError(uri, _classify(exc), f"{type(exc).__name__}: {exc}") from exc
    check_dtype(uri, decoded.dtype)
    return decoded


def check_dtype(uri: str, dtype: Any) -> None:
    """Refuse sample types lakeimg does not store: complex values (a `unsupported_dtype` reject).

    Every real numpy dtype (bool, int8..uint64, float16..float64) is kept as it is. Complex
    samples (TIFF SampleFormat 6, e.g. radar or FFT data) are refused on purpose: thumbnails,
    display windows and every op would silently drop the imaginary part (numpy's
    ComplexWarning, once per file).

    Example:
        >>> check_dtype("x.tif", "complex64")
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: x.tif: unsupported_dtype: complex-valued samples (complex64) are not supported: store the real and imaginary parts (or magnitude and phase) as separate float images
    """
    kind = np.dtype(dtype).kind if dtype is not None else "V"
    if kind == "c":
        raise ImageDecodeError(
            uri, "unsupported_dtype",
            f"complex-valued samples ({np.dtype(dtype)}) are not supported: store the real and imaginary "
            "parts (or magnitude and phase) as separate float images",
        )
    if kind not in "biuf":
        raise ImageDecodeError(uri, "unsupported_dtype", f"samples of type {dtype} are not supported")


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
    """Raise a `too_large` (or `corrupt`, for an empty size) reject from header facts alone.

    Example:
        >>> check_decoded_size("x.png", 15_000, 15_000, 1, "uint8", max_bytes=64 << 20)
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: x.png: too_large: header claims 15000x15000 = 225,000,000 pixels (1 x uint8): 225,000,000 bytes decoded (214.6 MiB), above the limit of 67,108,864 bytes (64.0 MiB, max_decoded_bytes) for formats that must be decoded whole
    """
    if width <= 0 or height <= 0:
        raise ImageDecodeError(uri, "corrupt", f"header gives an empty size {width}x{height}")
    pixels = width * height
    frame_text = f" x {frames} frames" if frames > 1 else ""
    if max_pixels is not None and pixels > max_pixels:
        raise ImageDecodeError(
            uri, "too_large",
            f"header claims {width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,} pixels "
            f"(max_pixels) {what}",
        )
    size = decoded_bytes(width, height, channels, dtype, frames)
    if max_bytes is not None and size > max_bytes:
        raise ImageDecodeError(
            uri, "too_large",
            f"header claims {width}x{height} = {pixels:,} pixels ({channels} x {np.dtype(dtype)}){frame_text}: "
            f"{size:,} bytes decoded ({_size_text(size)}), above the limit of {max_bytes:,} bytes "
            f"({_size_text(max_bytes)}, max_decoded_bytes) {what}",
        )


def decode_image(data: bytes, uri: str = "", *, page: int = 0) -> np.ndarray:
    """Decode a file's pixels at full resolution (HWC, native dtype, orientation applied).

    Example:
        >>> import io, numpy as np, tifffile
        >>> buf = io.BytesIO(); tifffile.imwrite(buf, np.arange(12, dtype=np.uint16).reshape(3, 4))
        >>> decode_image(buf.getvalue()).dtype
        dtype('uint16')
    """
    if page:
        return _decode_page(data, uri, page)
    img = read_image(data, uri, max_bytes=None)
    assert img.pixels is not None
    return img.pixels


def _decode_page(data: bytes, uri: str, page: int) -> np.ndarray:
    with decoder_settings():
        return _decode_page_unguarded(data, uri, page)


def _decode_page_unguarded(data: bytes, uri: str, page: int) -> np.ndarray:
    kind = sniff_format(data[:132], uri)
    if kind == "TIFF":
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            p = tif.pages[page]
            return apply_orientation(_tiff_hwc(p.asarray(), p.axes), _tiff_orientation(p))
    if kind == "DICOM":
        from lakeimg.image.dicom import decode_dicom_frame

        return decode_dicom_frame(data, page)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(page)
        return _pillow_array(im, *_pillow_target(im))


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, UnidentifiedImageError) or "cannot identify" in text:
        return "unsupported_format"
    if "truncat" in text or "premature end" in text or "unexpected end" in text:
        return "truncated"
    if isinstance(exc, Image.DecompressionBombError):
        return "too_large"
    if "not a tiff" in text or "invalid tiff" in text:
        return "corrupt"
    return "corrupt"


# --- orientation -------------------------------------------------------------------------


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


# --- Pillow ------------------------------------------------------------------------------

_MODE_TARGETS: dict[str, tuple[str, int, str]] = {
    "1": ("L", 1, "uint8"),
    "L": ("L", 1, "uint8"),
    "LA": ("LA", 2, "uint8"),
    "La": ("LA", 2, "uint8"),
    "RGB": ("RGB", 3, "uint8"),
    "RGBX": ("RGB", 3, "uint8"),
    "RGBA": ("RGBA", 4, "uint8"),
    "RGBa": ("RGBA", 4, "uint8"),
    "CMYK": ("RGB", 3, "uint8"),
    "YCbCr": ("RGB", 3, "uint8"),
    "LAB": ("LAB", 3, "uint8"),
    "HSV": ("HSV", 3, "uint8"),
    "I;16": ("I;16", 1, "uint16"),
    "I;16L": ("I;16", 1, "uint16"),
    "I;16B": ("I;16", 1, "uint16"),
    "I;16N": ("I;16", 1, "uint16"),
    "I": ("I", 1, "int32"),
    "F": ("F", 1, "float32"),
}


def _pillow_target(im: Image.Image) -> tuple[str, int, str]:
    if im.mode in ("P", "PA"):
        has_alpha = im.mode == "PA" or "transparency" in im.info
        return ("RGBA", 4, "uint8") if has_alpha else ("RGB", 3, "uint8")
    if im.mode not in _MODE_TARGETS:
        return ("RGB", 3, "uint8")
    return _MODE_TARGETS[im.mode]


def _pillow_array(im: Image.Image, target_mode: str, channels: int, dtype: str) -> np.ndarray:
    if target_mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16, copy=False)
    elif im.mode != target_mode:
        arr = np.asarray(im.convert(target_mode))
    else:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _exif_dict(im: Image.Image) -> tuple[dict[str, str], int]:
    if im.format == "PNG" and "exif" not in im.info:
        # Pillow decodes the whole image to look for an eXIf chunk after the pixel data (a
        # 15,000 x 15,000 PNG header cost 215 MB here, before any size check); PNG wants
        # eXIf before IDAT, where Image.open has already read it.
        return {}, 1
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not reject a readable image
        return {}, 1
    out: dict[str, str] = {}
    items = list(exif.items())
    try:
        items += list(exif.get_ifd(0x8769).items())  # Exif sub-IFD: camera settings
    except Exception:  # noqa: BLE001
        pass
    for tag, value in items:
        if tag in (0x8769, 0x8825, 0x927C, 0x02BC):  # pointers, MakerNote, XMP: not text
            continue
        name = ExifTags.TAGS.get(tag, f"0x{tag:04X}")
        if isinstance(value, bytes):
            value = value.rstrip(b"\x00").decode("utf-8", "replace")
        text = str(value)
        out[name] = text[:1024]
    orientation = exif.get(0x0112, 1)
    try:
        orientation = int(orientation)
    except (TypeError, ValueError):
        orientation = 1
    return out, orientation if 1 <= orientation <= 8 else 1


def _read_pillow(data: bytes, uri: str, *, limits: tuple[int | None, int | None], preview: int | None) -> DecodedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data))
        fmt = _PIL_FORMATS.get(im.format or "", im.format or "UNKNOWN")
        pages = int(getattr(im, "n_frames", 1) or 1)
        raw_w, raw_h = im.size
        target, channels, dtype = _pillow_target(im)
        check_decoded_size(uri, raw_w, raw_h, channels, dtype, max_bytes=limits[0], max_pixels=limits[1])
        exif, orientation = _exif_dict(im)
        arr = None if preview else decode_plain_jpeg(im, data)
        if arr is None:
            if preview and im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, (preview, preview))
            im.load()
            arr = _pillow_array(im, target, channels, dtype)
    width, height = (raw_h, raw_w) if orientation in (5, 6, 7, 8) else (raw_w, raw_h)
    return DecodedImage(
        format=fmt,
        width=width,
        height=height,
        channels=channels,
        dtype=dtype,
        mode=target,
        pages=pages,
        pixels=apply_orientation(arr, orientation),
        exif=exif or None,
    )


def decode_plain_jpeg(im: Image.Image, data: bytes | memoryview, scale: int = 1) -> np.ndarray | None:
    """Pixels of a complete 8-bit gray or YCbCr JPEG through OpenCV, else None (use Pillow);
    `scale` 2, 4 or 8 decodes at that fraction with libjpeg's DCT scaling (Pillow's `draft`).

    Both libraries decode with libjpeg-turbo's default (accurate integer IDCT, fancy
    upsampling), so the pixels are bit-equal to Pillow's, at every scale
    (tests/test_decode_jpeg.py checks every subsampling, progressive, gray and orientation);
    OpenCV decodes straight into one array where Pillow copies the image out once more:
    1.3-1.8x faster on 320x240 photos, 1.2x on half-scale 1024x768 ones. Anything unusual (CMYK
    or Adobe-transformed colour, bytes after the end marker, a file that looks truncated)
    keeps the Pillow path and its error messages.
    """
    if im.format != "JPEG" or im.mode not in ("L", "RGB") or "adobe" in im.info or data[-2:] != b"\xff\xd9":
        return None
    import cv2

    reduced = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    flags = reduced | (cv2.IMREAD_GRAYSCALE if im.mode == "L" else cv2.IMREAD_COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None or arr.shape[:2] != (-(-im.height // scale), -(-im.width // scale)):
        return None
    return arr[:, :, None] if arr.ndim == 2 else arr


# --- 16-bit PNG --------------------------------------------------------------------------


def _read_png16(data: bytes, uri: str, *, limits: tuple[int | None, int | None]) -> DecodedImage:
    import cv2

    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    # OpenCV decodes gray + alpha as 4 channels: that is what the decoder allocates.
    channels = {0: 1, 2: 3, 4: 4, 6: 4}.get(data[25], 4)
    check_decoded_size(uri, width, height, channels, "uint16", max_bytes=limits[0], max_pixels=limits[1])
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageDecodeError(uri, "corrupt", "OpenCV could not decode this 16-bit PNG")
    if arr.ndim == 2:
        arr, mode = arr[:, :, None], "I;16"
    elif data[25] == 4:  # gray + alpha: OpenCV expands it to BGRA; keep the file's two channels
        arr, mode = arr[:, :, [0, 3]], "LA"
    elif arr.shape[2] == 3:
        arr, mode = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), "RGB"
    else:
        arr, mode = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA), "RGBA"
    # EXIF in PNG (eXIf chunk) is rare for 16-bit; Pillow still reads the tags for us.
    try:
        with Image.open(io.BytesIO(data)) as im:
            exif, orientation = _exif_dict(im)
    except Exception:  # noqa: BLE001
        exif, orientation = {}, 1
    arr = apply_orientation(np.ascontiguousarray(arr), orientation)
    return DecodedImage(
        format="PNG",
        width=arr.shape[1],
        height=arr.shape[0],
        channels=arr.shape[2],
        dtype=str(arr.dtype),
        mode=mode,
        pages=1,
        pixels=arr,
        exif=exif or None,
    )


# --- TIFF --------------------------------------------------------------------------------


def _tiff_hwc(arr: np.ndarray, axes: str) -> np.ndarray:
    """Bring one TIFF page to HWC whatever its planar configuration."""
    axes = axes.upper()
    if arr.ndim == 2:
        return arr[:, :, None]
    if "S" in axes and axes.index("S") == 0 and arr.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    if arr.ndim == 3:
        return arr
    # Leading singleton axes (e.g. depth 1): squeeze them away.
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr if arr.ndim == 3 else arr.reshape(arr.shape[-3], arr.shape[-2], -1)


def _tiff_orientation(page) -> int:
    # TiffPage has no orientation attribute: read the Orientation tag (274) itself.
    tag = page.tags.get(274)
    try:
        value = int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _read_tiff(data: bytes, uri: str, *, limits: tuple[int | None, int | None]) -> DecodedImage:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not len(tif.pages):
            raise ImageDecodeError(uri, "corrupt", "the TIFF header points at no readable page")
        page = tif.pages[0]
        pages = len(tif.pages)
        planes, depth, height, width, contig = (int(v) for v in page.shaped)
        if page.dtype is not None:
            check_dtype(uri, page.dtype)
            check_decoded_size(uri, width, height, planes * contig, page.dtype, frames=depth,
                               max_bytes=limits[0], max_pixels=limits[1])
        arr = _tiff_hwc(page.asarray(), page.axes)
        geo = geotiff_info(page)
        orientation = _tiff_orientation(page)
        photometric = getattr(page.photometric, "name", str(page.photometric))
    arr = apply_orientation(arr, orientation)
    channels = arr.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-band")
    if photometric == "MINISWHITE":
        mode = "MINISWHITE"
    return DecodedImage(
        format="TIFF",
        width=arr.shape[1],
        height=arr.shape[0],
        channels=channels,
        dtype=str(arr.dtype),
        mode=mode,
        pages=pages,
        pixels=arr,
        geo=geo,
        invert_display=photometric == "MINISWHITE",
    )


_GEOKEY_GEOGRAPHIC = 2048
_GEOKEY_PROJECTED = 3072


def geotiff_info(page) -> dict[str, Any] | None:
    """CRS and GDAL-order geotransform of a GeoTIFF page, or None when it has no georeferencing."""
    tags = page.tags
    scale = tags.get(33550)
    tiepoint = tags.get(33922)
    matrix = tags.get(34264)
    keydir = tags.get(34735)
    if not (matrix or (scale and tiepoint)):
        return None
    if matrix is not None:
        m = [float(v) for v in matrix.value]
        transform = [m[3], m[0], m[1], m[7], m[4], m[5]]
    else:
        sx, sy = float(scale.value[0]), float(scale.value[1])
        i, j, _k, x, y = (float(v) for v in tiepoint.value[:5])
        transform = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
    epsg = None
    if keydir is not None:
        keys = [int(v) for v in keydir.value]
        for n in range(keys[3]):
            key_id, location, _count, value = keys[4 + 4 * n : 8 + 4 * n]
            if location == 0 and key_id in (_GEOKEY_PROJECTED, _GEOKEY_GEOGRAPHIC) and value not in (0, 32767):
                epsg = value
                if key_id == _GEOKEY_PROJECTED:
                    break
    return {"crs": f"EPSG:{epsg}" if epsg else None, "epsg": epsg, "geotransform": transform}


def to_json_text(value: Any) -> str:
    """Compact, sorted JSON used for header dumps."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
