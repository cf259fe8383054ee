"""Decoding and probing image files: bytes in, header + native-dtype ndarray (HWC) + metadata out.

Pure: no Spark, no Delta. Each format has a chain of readers, tried in order until one decodes
the file (`_readers`; the winner's name is `DecodedImage.decoder`). Pillow reads the common
formats; tifffile reads every TIFF (any dtype, float16, BigTIFF, compressed through imagecodecs)
and Pillow the TIFFs it refuses; OpenCV reads 16-bit PNGs, which Pillow squeezes to 8 bits,
and the pixels of plain JPEGs and 8-bit PNGs, where it is faster than Pillow;
pydicom (with the pylibjpeg plugins) reads DICOM (`lakeimg.image.dicom`). EXIF/TIFF orientation
is applied, so `width` and `height` are as displayed and `decode_image(content)`
returns the displayed pixels. `probe_image` reads the same header facts without the pixels.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue()).shape
    (4, 6, 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from lakeimg.errors import ErrorClass, ImageDecodeError
from lakeimg.image._settings import decoder_settings
from lakeimg.image.dicom import decode_dicom_frame, probe_dicom, read_dicom
from lakeimg.image.info import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodedImage,
    apply_orientation,
    as_hwc,
    check_decoded_size,
    check_dtype,
    valid_orientation,
)
from lakeimg.storage import TimeLimitExceeded

__all__ = [
    "binary_file",
    "decode_image",
    "decode_plain_jpeg",
    "decode_plain_png",
    "draft_scale",
    "exif_orientation",
    "geotiff_info",
    "open_tiff",
    "probe_image",
    "read_image",
    "sniff_format",
    "tiff_orientation",
    "tiff_page_pixels",
    "tiff_page_shape",
]

_PIL_FORMATS = {"JPEG2000": "JPEG2000", "MPO": "JPEG"}
_SWAPPED = (5, 6, 7, 8)  # orientations that transpose the stored image


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
    codecs: Iterable[Any] = (),
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
        codecs: extra readers (`can_read(uri, head)`, `read(data, uri)`, optional `name`);
            those that claim the file are tried before the format's own chain.

    Raises:
        ImageDecodeError: with error_class empty, empty_image (0 x N pixels), no_pixel_data
            (a DICOM without pixels), truncated, unsupported_format, unsupported_dtype
            (complex samples), corrupt or too_large. When a format has more than one reader
            (`_readers`), the message names each reader tried and why it refused.

    Example:
        >>> read_image(b"", "file:///x.png")
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: file:///x.png: empty: the file has no bytes
    """
    if not data:
        raise ImageDecodeError(uri, ErrorClass.EMPTY, "the file has no bytes")
    limits = (max_bytes, max_pixels)
    with decoder_settings():
        claimed = [(_codec_name(c), functools.partial(c.read, data, uri)) for c in codecs if c.can_read(uri, data[:132])]
        decoded = _read_first(uri, claimed + _readers(data, uri, limits, preview))
    check_dtype(uri, decoded.dtype)
    return decoded


def _codec_name(codec: Any) -> str:
    return str(getattr(codec, "name", "") or getattr(codec, "__name__", "") or type(codec).__name__)


# Facts of the header that every reader would find alike: the next reader is not tried.
_FINAL = (ErrorClass.TOO_LARGE, ErrorClass.EMPTY_IMAGE)


def _readers(data: bytes, uri: str, limits: tuple[int | None, int | None], preview: int | None) -> list[tuple[str, Any]]:
    """The reader chain of a file's format, fastest faithful reader first.

    DICOM: pydicom alone (Pillow reads no DICOM). TIFF: tifffile (every dtype, BigTIFF, every
    imagecodecs compression), then Pillow (libtiff: YCbCr-subsampled LZW/deflate, old-style
    JPEG, ThunderScan). 16-bit PNG: OpenCV (keeps 16 bits), then Pillow. Everything else:
    Pillow, which reads the header and hands plain JPEGs and 8-bit PNGs to OpenCV for the
    pixels (`decode_plain_jpeg`, `decode_plain_png`).
    """
    pillow = ("pillow", lambda: _read_pillow(data, uri, limits=limits, preview=preview))
    kind = sniff_format(data[:132], uri)
    if kind == "DICOM":
        return [("pydicom", lambda: read_dicom(data, uri, max_pixels=limits[1], max_bytes=limits[0]))]
    if kind == "TIFF":
        return [("tifffile", lambda: _read_tiff(data, uri, limits=limits)), pillow]
    if kind == "PNG" and data[12:16] == b"IHDR":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        check_decoded_size(uri, width, height, 1, "uint8", max_bytes=None)  # Pillow calls a 0 x N PNG unidentified
    if _png16_ihdr(data) is not None:
        return [("opencv", lambda: _read_png16(data, uri, limits=limits)), pillow]
    return [pillow]


def _read_first(uri: str, readers: list[tuple[str, Any]]) -> DecodedImage:
    """The first reader's image that succeeds (its name in `decoder`), or one reject naming
    every reader tried and why it refused, classed by the first (most faithful) reader."""
    refusals: list[tuple[str, ImageDecodeError]] = []
    for name, read in readers:
        try:
            decoded = read()
        except ImageDecodeError as exc:
            error = exc
        except TimeLimitExceeded:
            raise  # the caller's time budget, not this reader's verdict on the file
        except MemoryError as exc:
            error = ImageDecodeError(uri, ErrorClass.TOO_LARGE, f"out of memory while decoding: {exc}")
        except UnidentifiedImageError:
            error = ImageDecodeError(uri, ErrorClass.UNSUPPORTED_FORMAT, "not an image format that Pillow, tifffile or pydicom can read")
        except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a typed reject
            error = ImageDecodeError(uri, _classify(exc), f"{type(exc).__name__}: {exc}")
        else:
            return decoded if decoded.decoder else dataclasses.replace(decoded, decoder=name)
        refusals.append((name, error))
        if error.error_class in _FINAL:
            break
    if len(refusals) == 1 and len(readers) == 1:
        raise refusals[0][1]
    text = "; ".join(f"{name} refused ({error.error_class}: {error.message})" for name, error in refusals)
    raise ImageDecodeError(uri, refusals[0][1].error_class, text)


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
    kind = sniff_format(data[:132], uri)
    with decoder_settings():
        if kind == "TIFF":
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                return tiff_page_pixels(tif.pages[page])
        if kind == "DICOM":
            return decode_dicom_frame(data, page)
        with Image.open(io.BytesIO(data)) as im:
            im.seek(page)
            return _pillow_array(im, *_pillow_target(im))


def probe_image(source: str | BinaryIO, name: str = "") -> DecodedImage:
    """Header facts of an image file without decoding its pixels (`pixels` is None);
    `decoder` names the reader that decodes the file at full resolution (for tiling).

    `source` is a local path or a seekable binary file (an object opened through
    `lakeimg.storage.open_input`: only the header's bytes are read); `name` (a path or URI)
    helps to tell a preamble-less DICOM by its suffix.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((30, 20, 3), np.uint16))
        >>> probe_image(p).dtype, probe_image(p).width
        ('uint16', 20)
    """
    with decoder_settings(), binary_file(source) as handle:
        head = handle.read(132)
        handle.seek(0)
        kind = sniff_format(head, name or (source if isinstance(source, str) else ""))
        if kind == "TIFF":

            with open_tiff(handle, name) as tif:
                page = tif.pages[0]
                channels = int(page.shaped[0]) * int(page.shaped[4])
                header = _tiff_image(page, len(tif.pages), (*tiff_page_shape(page), channels), np.dtype(page.dtype))
                return dataclasses.replace(header, decoder="tifffile")
        if kind == "DICOM":
            return dataclasses.replace(probe_dicom(handle), decoder="pydicom")
        with Image.open(handle) as im:
            png16 = _png16_ihdr(head)
            # The same test as `decode_plain_jpeg` minus the end marker, which needs the whole file.
            plain_jpeg = im.format == "JPEG" and im.mode in ("L", "RGB") and "adobe" not in im.info
            return dataclasses.replace(_pillow_header(im, png16)[0], decoder="opencv" if png16 or plain_jpeg else "pillow")


def open_tiff(handle: BinaryIO, name: str = ""):
    """tifffile's TiffFile on an open binary file; `name` (a path or URI) stands in for the
    file's own name when it has none (an object, or a file opened from a descriptor).

    Example:
        >>> import tifffile
        >>> out = io.BytesIO(); tifffile.imwrite(out, np.ones((3, 2), np.uint8)); _ = out.seek(0)
        >>> with open_tiff(out, "s3://b/a.tif") as tif:
        ...     tif.pages[0].shape
        (3, 2)
    """
    import tifffile

    own = getattr(handle, "name", None)
    return tifffile.TiffFile(handle, name=None if isinstance(own, str) else name.rsplit("/", 1)[-1] or "image")


@contextlib.contextmanager
def binary_file(source: str | BinaryIO) -> Iterator[BinaryIO]:
    """A local path opened for reading (closed after), or the caller's file rewound (left open).

    Example:
        >>> with binary_file(io.BytesIO(b"abc")) as handle:
        ...     handle.read()
        b'abc'
    """
    if isinstance(source, str):
        with open(source, "rb") as handle:
            yield handle
        return
    source.seek(0)
    yield source


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if "cannot identify" in text:  # UnidentifiedImageError itself is caught before
        return ErrorClass.UNSUPPORTED_FORMAT
    if "truncat" in text or "premature end" in text or "unexpected end" in text:
        return ErrorClass.TRUNCATED
    if isinstance(exc, Image.DecompressionBombError):
        return ErrorClass.TOO_LARGE
    return ErrorClass.CORRUPT


# --- Pillow ------------------------------------------------------------------------------

_MODE_TARGETS: dict[str, tuple[str, int, str]] = {
    **dict.fromkeys(("1", "L"), ("L", 1, "uint8")),
    **dict.fromkeys(("LA", "La"), ("LA", 2, "uint8")),
    **dict.fromkeys(("RGB", "RGBX", "CMYK", "YCbCr"), ("RGB", 3, "uint8")),
    **dict.fromkeys(("RGBA", "RGBa"), ("RGBA", 4, "uint8")),
    **{mode: (mode, 3, "uint8") for mode in ("LAB", "HSV")},
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), ("I;16", 1, "uint16")),
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
    return np.ascontiguousarray(as_hwc(arr).astype(dtype, copy=False))


def _pillow_exif(im: Image.Image) -> Image.Exif | None:
    if im.format == "PNG" and "exif" not in im.info:
        # Pillow would decode the whole image to look for an eXIf chunk after the pixel data;
        # PNG wants eXIf before IDAT, where Image.open has already read it.
        return None
    try:
        return im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not reject a readable image
        return None


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened Pillow image; 1 when it has none.

    Example:
        >>> exif_orientation(Image.new("L", (2, 2)))
        1
    """
    exif = _pillow_exif(im)
    return valid_orientation(exif.get(0x0112) if exif is not None else None)


def _exif_text(exif: Image.Exif | None) -> dict[str, str]:
    if exif is None:
        return {}
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
        out[name] = str(value)[:1024]
    return out


def _pillow_header(im: Image.Image, png16: tuple[int, int, int] | None = None) -> tuple[DecodedImage, int]:
    """The header of an opened Pillow image (displayed size) and its EXIF orientation."""
    mode, channels, dtype = _pillow_target(im)
    if png16 is not None:  # decoded by OpenCV at 16 bits, not by Pillow
        channels, mode, _ = _PNG16.get(png16[2], _PNG16[6])
        dtype = "uint16"
    exif = _pillow_exif(im)
    orientation = valid_orientation(exif.get(0x0112) if exif is not None else None)
    width, height = im.size
    if orientation in _SWAPPED:
        width, height = height, width
    fmt = _PIL_FORMATS.get(im.format or "", im.format or "UNKNOWN")
    pages = int(getattr(im, "n_frames", 1) or 1)
    text = _exif_text(exif)
    return DecodedImage(fmt, width, height, channels, dtype, mode, pages, exif=text or None), orientation


def _read_pillow(data: bytes, uri: str, *, limits: tuple[int | None, int | None], preview: int | None) -> DecodedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data), formats=_pillow_formats(data))
        header, orientation = _pillow_header(im)
        check_decoded_size(uri, *im.size, header.channels, header.dtype, max_bytes=limits[0], max_pixels=limits[1])
        scale = draft_scale(im.size, (preview, preview)) if preview else 1
        arr = decode_plain_jpeg(im, data, scale) if im.format == "JPEG" else decode_plain_png(im, data)
        decoder = "opencv" if arr is not None else "pillow"
        if arr is None:
            if scale > 1 and im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
                im.draft(im.mode, (preview, preview))
            im.load()
            arr = _pillow_array(im, header.mode, header.channels, header.dtype)
    return dataclasses.replace(header, pixels=apply_orientation(arr, orientation), decoder=decoder)


def _pillow_formats(data: bytes) -> tuple[str, ...] | None:
    """The one Pillow plugin a PNG or JPEG needs (by its magic bytes), so Image.open does not
    ask a dozen others first (for a tiny image that took as long as decoding it); None: all."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ("PNG",)
    if data[:3] == b"\xff\xd8\xff":
        return ("JPEG",)
    return None


def decode_plain_jpeg(im: Image.Image, data: bytes | memoryview, scale: int = 1) -> np.ndarray | None:
    """Pixels of a complete 8-bit gray or YCbCr JPEG through OpenCV, else None (use Pillow);
    `scale` 2, 4 or 8 decodes at that fraction with libjpeg's DCT scaling (Pillow's `draft`).

    Both libraries decode with libjpeg-turbo's default (accurate integer IDCT, fancy
    upsampling), so the pixels are bit-equal to Pillow's, at every scale
    (tests/test_decode_jpeg.py checks every subsampling, progressive, gray and orientation);
    OpenCV decodes straight into one array where Pillow copies the image out once more. Anything
    unusual (CMYK or Adobe-transformed colour, bytes after the end marker, a file that looks
    truncated) keeps the Pillow path and its error messages.
    """
    if im.format != "JPEG" or im.mode not in ("L", "RGB") or "adobe" in im.info or data[-2:] != b"\xff\xd9":
        return None
    import cv2

    reduced = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    flags = reduced | (cv2.IMREAD_GRAYSCALE if im.mode == "L" else cv2.IMREAD_COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None or arr.shape[:2] != (-(-im.height // scale), -(-im.width // scale)):
        return None
    return as_hwc(arr)


def draft_scale(size: tuple[int, int], want: tuple[int, int]) -> int:
    """The DCT scale (8, 4, 2 or 1) at which Pillow's JPEG `draft(mode, want)` decodes an image
    of `size`: the largest that keeps both sides at least `want`'s.

    Example:
        >>> draft_scale((1024, 768), (256, 256)), draft_scale((64, 64), (256, 256))
        (2, 1)
    """
    fits = min(size[0] // max(1, want[0]), size[1] // max(1, want[1]))
    return next((s for s in (8, 4, 2) if fits >= s), 1)


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def decode_plain_png(im: Image.Image, data: bytes | memoryview) -> np.ndarray | None:
    """Pixels of a complete 8-bit gray, RGB or RGBA PNG through OpenCV, else None (use Pillow).

    PNG is lossless, so both libraries give the same samples (tests/test_decode_png.py); for a
    small image OpenCV takes about a third of Pillow's time, which decodes into its own buffer
    and copies out. Palettes, transparency chunks, other bit depths, animations and ICC
    profiles (libpng prints warnings about odd ones on stderr) keep the Pillow path, as does a
    file without its end chunk (Pillow's messages name what is wrong with it).
    """
    if (im.format != "PNG" or im.mode not in ("L", "RGB", "RGBA") or data[24] != 8 or bytes(data[-12:]) != _PNG_END
            or "transparency" in im.info or "icc_profile" in im.info or getattr(im, "n_frames", 1) != 1):
        return None
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    channels = len(im.mode)
    if arr is None or arr.shape[:2] != (im.height, im.width) or (arr.shape[2] if arr.ndim == 3 else 1) != channels:
        return None
    if channels > 1:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGBA)
    return as_hwc(arr)


# --- 16-bit PNG --------------------------------------------------------------------------

# colour type -> (channels stored, mode, channels OpenCV's decoder allocates: gray + alpha as 4)
_PNG16 = {0: (1, "I;16", 1), 2: (3, "RGB", 3), 4: (2, "LA", 4), 6: (4, "RGBA", 4)}


def _png16_ihdr(head: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour type) from a 16-bit PNG's IHDR; None for any other file."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) <= 25 or head[24] != 16:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"), head[25]


def _read_png16(data: bytes, uri: str, *, limits: tuple[int | None, int | None]) -> DecodedImage:
    import cv2

    width, height, color = _png16_ihdr(data)
    allocated = _PNG16.get(color, _PNG16[6])[2]
    check_decoded_size(uri, width, height, allocated, "uint16", max_bytes=limits[0], max_pixels=limits[1])
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageDecodeError(uri, ErrorClass.CORRUPT, "OpenCV could not decode this 16-bit PNG")
    if arr.ndim == 2:
        arr, mode = arr[:, :, None], "I;16"
    elif color == 4:  # gray + alpha: OpenCV expands it to BGRA; keep the file's two channels
        arr, mode = arr[:, :, [0, 3]], "LA"
    elif arr.shape[2] == 3:
        arr, mode = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), "RGB"
    else:
        arr, mode = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA), "RGBA"
    try:  # EXIF in PNG (an eXIf chunk): Pillow reads the tags without decoding
        with Image.open(io.BytesIO(data)) as im:
            exif = _pillow_exif(im)
    except Exception:  # noqa: BLE001
        exif = None
    arr = apply_orientation(np.ascontiguousarray(arr), valid_orientation(exif.get(0x0112) if exif is not None else None))
    height, width, channels = arr.shape
    return DecodedImage("PNG", width, height, channels, str(arr.dtype), mode, 1, pixels=arr, exif=_exif_text(exif) or None)


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


def tiff_orientation(page) -> int:
    """The Orientation tag (274) of a tifffile page, 1..8 (TiffPage has no attribute for it)."""
    tag = page.tags.get(274)
    return valid_orientation(tag.value if tag is not None else None)


def tiff_page_pixels(page) -> np.ndarray:
    """A tifffile page's pixels as displayed: HWC, orientation applied."""
    return apply_orientation(_tiff_hwc(page.asarray(), page.axes), tiff_orientation(page))


def tiff_page_shape(page) -> tuple[int, int]:
    """(height, width) of a tifffile page as displayed, from its header alone."""
    _planes, _depth, height, width, _contig = (int(v) for v in page.shaped)
    return (width, height) if tiff_orientation(page) in _SWAPPED else (height, width)


def _tiff_image(page, pages: int, shape: tuple[int, ...], dtype, pixels: np.ndarray | None = None) -> DecodedImage:
    """A TIFF page's DecodedImage from its displayed (height, width, channels) and dtype."""
    height, width, channels = (int(v) for v in shape)
    photometric = getattr(page.photometric, "name", str(page.photometric))
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-band")
    if photometric == "MINISWHITE":
        mode = "MINISWHITE"
    return DecodedImage(
        "TIFF", width, height, channels, str(dtype), mode, pages,
        pixels=pixels, geo=geotiff_info(page), invert_display=photometric == "MINISWHITE",
    )


def _read_tiff(data: bytes, uri: str, *, limits: tuple[int | None, int | None]) -> DecodedImage:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not len(tif.pages):
            raise ImageDecodeError(uri, ErrorClass.CORRUPT, "the TIFF header points at no readable page")
        page = tif.pages[0]
        planes, depth, height, width, contig = (int(v) for v in page.shaped)
        dtype = page.dtype if page.dtype is not None else _packed_int_dtype(uri, page)
        check_dtype(uri, dtype)
        check_decoded_size(uri, width, height, planes * contig, dtype, frames=depth,
                           max_bytes=limits[0], max_pixels=limits[1])
        if page.dtype is None:
            arr = apply_orientation(_unpack_tiff_ints(data, uri, page, dtype), tiff_orientation(page))
        else:
            arr = tiff_page_pixels(page)
        return _tiff_image(page, len(tif.pages), arr.shape, arr.dtype, arr)


def _packed_int_dtype(uri: str, page) -> np.dtype:
    """The smallest numpy integer dtype that holds a TIFF page's packed integer samples.

    tifffile has no dtype for signed samples of a width that is not 8, 16, 32 or 64 bits, nor for
    unsigned samples wider than 32 bits (33..63, e.g. 48-bit); `_unpack_tiff_ints` reads those.

    Example:
        >>> class Page: bitspersample, sampleformat = 24, 2
        >>> _packed_int_dtype("x.tif", Page())
        dtype('int32')
    """
    bits, sample_format = int(page.bitspersample), int(page.sampleformat)
    if sample_format not in (1, 2) or not 1 <= bits <= 64:
        raise ImageDecodeError(uri, ErrorClass.UNSUPPORTED_DTYPE,
                               f"no numpy dtype holds BitsPerSample {bits} with SampleFormat {sample_format}")
    width = next(w for w in (8, 16, 32, 64) if bits <= w)
    return np.dtype(f"{'u' if sample_format == 1 else 'i'}{width // 8}")


def _unpack_tiff_ints(data: bytes, uri: str, page, dtype: np.dtype) -> np.ndarray:
    """HWC pixels of a striped TIFF page whose integer samples are packed at a width tifffile
    does not unpack: tifffile parses and decompresses, the bits are read here (MSB first, each
    row padded to a byte, as TIFF 6.0 packs them), signed values sign-extended."""
    import tifffile

    bits, channels = int(page.bitspersample), int(page.samplesperpixel)
    height, width = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled or int(page.predictor) != 1:
        raise ImageDecodeError(uri, ErrorClass.UNSUPPORTED_FORMAT,
                               f"{bits}-bit samples are read from strips without a predictor only")
    separate = int(page.planarconfig) == 2 and channels > 1
    per_row = width if separate else width * channels
    row_bytes = (per_row * bits + 7) // 8
    decompress = tifffile.TIFF.DECOMPRESSORS[page.compression]
    raw = b"".join(bytes(decompress(data[o:o + n])) if int(page.compression) != 1 else data[o:o + n]
                   for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
    planes = channels if separate else 1
    rows = np.frombuffer(raw, np.uint8, count=planes * height * row_bytes).reshape(planes * height, row_bytes)
    weights = np.left_shift(np.uint64(1), np.arange(bits - 1, -1, -1, dtype=np.uint64))
    values = np.empty((planes * height, per_row), np.uint64)
    step = max(1, (32 << 20) // max(1, row_bytes * 8))  # about 32 MiB of unpacked bits at a time
    bitorder = "little" if int(page.fillorder) == 2 else "big"
    for start in range(0, planes * height, step):
        unpacked = np.unpackbits(rows[start:start + step], axis=1, bitorder=bitorder)[:, :per_row * bits]
        values[start:start + step] = unpacked.reshape(-1, per_row, bits) @ weights
    if dtype.kind == "i":
        signed = values.astype(np.int64)
        signed[values >= (1 << (bits - 1))] -= 1 << bits
        values = signed
    if separate:
        return np.ascontiguousarray(values.reshape(channels, height, width).transpose(1, 2, 0)).astype(dtype)
    return values.reshape(height, width, channels).astype(dtype)


def geotiff_info(page) -> dict | None:
    """CRS and GDAL-order geotransform of a GeoTIFF page, or None when it has no georeferencing.

    The EPSG code comes from tifffile's parse of the GeoKey directory (`geotiff_tags`); the
    transform from the model tags themselves, which a page may carry without a GeoKey directory.
    """
    tags = page.tags
    scale, tiepoint, matrix = tags.get(33550), tags.get(33922), tags.get(34264)
    if not (matrix or (scale and tiepoint)):
        return None
    if matrix is not None:
        m = [float(v) for v in matrix.value]
        transform = [m[3], m[0], m[1], m[7], m[4], m[5]]
    else:
        sx, sy = float(scale.value[0]), float(scale.value[1])
        i, j, _k, x, y = (float(v) for v in tiepoint.value[:5])
        transform = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
    keys = (page.geotiff_tags or {}) if 34735 in tags else {}
    codes = (keys.get("ProjectedCSTypeGeoKey"), keys.get("GeographicTypeGeoKey"))  # projected first
    epsg = next((int(c) for c in codes if isinstance(c, int) and c not in (0, 32767)), None)
    return {"crs": f"EPSG:{epsg}" if epsg else None, "epsg": epsg, "geotransform": transform}
