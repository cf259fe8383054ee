"""Reading an image file by windows of rows, and the checks that it can be tiled.

A file is a local path or a seekable binary file (an object-store object opened through
`lakeimg.storage.open_input`: tifffile and pydicom read it by ranges, so only the header and
the segments a window touches are fetched).

* Tiled TIFF/BigTIFF pages are read TIFF tile by TIFF tile and strip TIFFs strip by strip
  (tifffile's `page.decode` on the segment bytes at `page.dataoffsets`), never the whole page.
* Formats that cannot be read by windows (JPEG, PNG, TIFF pages with an orientation or a layout
  we do not window) are decoded once per page and served from that array; DICOM frames one at
  a time (pydicom's `iter_pixels`).

Example:
    >>> import tempfile, os, numpy as np, tifffile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
    >>> tifffile.imwrite(p, np.ones((300, 200), np.uint8), tile=(128, 128))
    >>> with open_image(p) as img:
    ...     type(img.page(0)).__name__
    'TiffPageSource'
"""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np

from lakeimg.errors import ErrorClass, ImageDecodeError
from lakeimg.image._settings import decoder_settings
from lakeimg.image.decode import (
    binary_file,
    decode_image,
    geotiff_info,
    open_tiff,
    probe_image,
    sniff_format,
    tiff_orientation,
    tiff_page_pixels,
    tiff_page_shape,
)
from lakeimg.image.dicom import read_dicom_frame
from lakeimg.image.info import (
    DecodedImage,
    check_decoded_size,
    check_dtype,
    decoded_bytes,
)
from lakeimg.image.pyramid import DEFAULT_TILE_SIZE, ArraySource

__all__ = [
    "DEFAULT_MAX_TILED_PIXELS",
    "DEFAULT_TILE_ABOVE_PIXELS",
    "OpenedImage",
    "TiffPageSource",
    "check_tileable",
    "open_image",
    "page_shapes",
]

DEFAULT_TILE_ABOVE_PIXELS = 64_000_000
# The cap on a tiled image (every page's pixels together): 2**34 = 17.2 gigapixels, a
# 131,072 x 131,072 page. The largest real images we know of fit (whole-slide scans at 40x are
# up to ~150,000 x 100,000 = 1.5e10; Landsat/Sentinel scenes are < 1e9), while a few-hundred-byte
# header claiming 1e14 pixels is refused before any task is planned.
DEFAULT_MAX_TILED_PIXELS = 2**34


class TiffPageSource:
    """One TIFF page read by windows of rows: only the TIFF tiles or strips those rows touch."""

    def __init__(self, tif, page, geotransform: list[float] | None = None):
        self._fh = tif.filehandle
        self._page = page
        planes, depth, height, width, contig = page.shaped
        self.height, self.width = int(height), int(width)
        self._planes, self._contig = int(planes), int(contig)
        self.channels = self._planes * self._contig
        self.dtype = str(np.dtype(page.dtype))
        self.geotransform = geotransform
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = int(page.rowsperstrip or height), self.width
            self._seg_h = min(self._seg_h, self.height)
        self._down = math.ceil(self.height / self._seg_h)
        self._across = math.ceil(self.width / self._seg_w)
        self._cache: tuple[int, np.ndarray] | None = None  # last decoded segment row

    @staticmethod
    def windowable(page) -> bool:
        """True when `page` can be read by windows here (else decode it whole)."""
        try:
            planes, depth, _h, _w, contig = page.shaped
            orientation = tiff_orientation(page)
        except Exception:  # noqa: BLE001
            return False
        return (
            depth == 1
            and (planes == 1 or contig == 1)
            and orientation == 1
            and page.dtype is not None
            and len(page.dataoffsets) > 0
            and not getattr(page, "is_subsampled", False)
        )

    def _segment_row(self, row: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == row:
            return self._cache[1]
        page = self._page
        h = min(self._seg_h, self.height - row * self._seg_h)
        out = np.zeros((h, self.width, self.channels), dtype=page.dtype)
        decode = page.decode
        per_plane = self._down * self._across
        for plane in range(self._planes):
            for col in range(self._across):
                index = plane * per_plane + row * self._across + col
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if not count:
                    continue  # an empty segment: TIFF says fill with zeros
                self._fh.seek(offset)
                segment, _pos, _shape = decode(self._fh.read(count), index, jpegtables=page.jpegtables)
                x0 = col * self._seg_w
                w = min(self._seg_w, self.width - x0)
                block = segment[0, :h, :w, :]
                if self._planes > 1:
                    out[:, x0 : x0 + w, plane] = block[:, :, 0]
                else:
                    out[:, x0 : x0 + w, :] = block
        self._cache = (row, out)
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        first, last = y0 // self._seg_h, (y1 - 1) // self._seg_h
        if first == last:
            base = first * self._seg_h
            return self._segment_row(first)[y0 - base : y1 - base]
        parts = []
        for row in range(first, last + 1):
            base = row * self._seg_h
            seg = self._segment_row(row)
            parts.append(seg[max(0, y0 - base) : min(seg.shape[0], y1 - base)])
        return np.concatenate(parts, axis=0)


class OpenedImage:
    """An open image file: `pages` and `page(i)` -> a source with height, width, channels,
    dtype, geotransform and read_rows(y0, y1). Close it (or use it as a context manager).

    `source` is a local path (opened and closed here) or a seekable binary file (the caller
    closes it); `name` (its path or URI) is for messages and the DICOM suffix test."""

    def __init__(self, source: str | BinaryIO, name: str = ""):
        self.path = name or (source if isinstance(source, str) else "")
        self._owned = isinstance(source, str)
        self._handle = open(source, "rb") if isinstance(source, str) else source  # noqa: SIM115 - closed in close()
        self._handle.seek(0)
        self.format = sniff_format(self._handle.read(132), self.path)
        self._handle.seek(0)
        with decoder_settings():
            self._tif = open_tiff(self._handle, self.path) if self.format == "TIFF" else None
        self.pages = len(self._tif.pages) if self._tif is not None else probe_image(self._handle, self.path).pages

    def page(self, index: int):
        with decoder_settings():
            if self._tif is not None:
                page = self._tif.pages[index]
                geo = geotiff_info(page)
                transform = geo["geotransform"] if geo else None
                if TiffPageSource.windowable(page):
                    return TiffPageSource(self._tif, page, transform)
                return ArraySource(tiff_page_pixels(page), transform)
            self._handle.seek(0)
            if self.format == "DICOM":
                return ArraySource(read_dicom_frame(self._handle, index))
            # Not read by windows: the page is decoded whole (`check_tileable` bounds its size).
            return ArraySource(decode_image(self._handle.read(), self.path, page=index))

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        if self._owned:
            self._handle.close()

    def __enter__(self) -> OpenedImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(source: str | BinaryIO, name: str = "") -> OpenedImage:
    """Open an image file (a local path or a seekable binary file) for windowed reading.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((300, 200), np.uint8), tile=(128, 128))
        >>> with open_image(p) as img:
        ...     img.page(0).read_rows(100, 140).shape
        (40, 200, 1)
    """
    return OpenedImage(source, name)


def page_shapes(source: str | BinaryIO) -> list[tuple[int, int]]:
    """(height, width) of every page of an image file (a path or a seekable binary file), from
    headers only.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((2, 30, 20), np.uint8))
        >>> page_shapes(p)
        [(30, 20), (30, 20)]
    """
    header = probe_image(source)
    if header.format != "TIFF":
        return [(header.height, header.width)] * header.pages
    with decoder_settings(), binary_file(source) as handle, open_tiff(handle) as tif:
        return [tiff_page_shape(page) for page in tif.pages]


def check_tileable(
    path: str | BinaryIO,
    uri: str = "",
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = 0,
    max_decoded_bytes: int | None = None,
    max_tiled_pixels: int | None = DEFAULT_MAX_TILED_PIXELS,
) -> DecodedImage:
    """Check from headers alone that a file can be tiled within the limits; return its header.

    Raises `ImageDecodeError` before any tiling task is planned:

    * `corrupt`: a TIFF page's strips or tiles are missing (fewer offsets than its size needs),
      or none of them holds data; `truncated`: some lie past the end of the file;
    * `too_large`: every page's pixels together exceed `max_tiled_pixels`; a page that must be
      decoded whole (not TIFF, or a TIFF page we do not read by windows) decodes to more than
      `max_decoded_bytes`; a TIFF page read by windows needs a band (one strip or tile row,
      at least `tile_size` rows, full width) larger than `max_decoded_bytes`;
    * `unsupported_format`: a page whose packed sample width tifffile does not read by windows.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((300, 200), np.uint8), tile=(128, 128))
        >>> check_tileable(p, max_tiled_pixels=50_000)
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: : too_large: 60,000 pixels over 1 page(s) to tile, above the limit of 50,000 (max_tiled_pixels)
    """
    header = probe_image(path, uri)
    with decoder_settings():
        check_dtype(uri, header.dtype)
        if header.format != "TIFF":
            _check_tiled_total(uri, header.width * header.height * header.pages, header.pages, max_tiled_pixels)
            # Decoded one page (DICOM: one frame) at a time, each whole.
            check_decoded_size(
                uri, header.width, header.height, header.channels, header.dtype, max_bytes=max_decoded_bytes,
                what=f"for a {header.format} page, which is decoded whole to be tiled",
            )
            return header
        with binary_file(path) as handle, open_tiff(handle, uri) as tif:
            file_size = tif.filehandle.size
            pages = list(tif.pages)
            shapes = [tuple(int(v) for v in page.shaped) for page in pages]
            # A header that does not describe its data is `corrupt` whatever size it claims.
            for index, page in enumerate(pages):
                _check_segments(uri, page, index, file_size)
            _check_tiled_total(uri, sum(h * w * d for _p, d, h, w, _c in shapes), len(pages), max_tiled_pixels)
            for index, (page, (planes, depth, height, width, contig)) in enumerate(zip(pages, shapes, strict=True)):
                if page.dtype is None:
                    raise ImageDecodeError(uri, ErrorClass.UNSUPPORTED_FORMAT, f"TIFF page {index}: tifffile cannot decode its sample format")
                check_dtype(uri, page.dtype)
                channels = planes * contig
                if not TiffPageSource.windowable(page):
                    check_decoded_size(
                        uri, width, height, channels, page.dtype, frames=depth, max_bytes=max_decoded_bytes,
                        what=f"for TIFF page {index}, which cannot be read by windows (orientation, depth or layout) "
                        "and is decoded whole to be tiled",
                    )
                    continue
                seg_h = int(page.tilelength) if page.is_tiled else min(height, int(page.rowsperstrip or height))
                band_rows = max(seg_h, min(height, tile_size + 2 * overlap))
                band = decoded_bytes(width, band_rows, channels, page.dtype)
                if max_decoded_bytes is not None and band > max_decoded_bytes:
                    raise ImageDecodeError(
                        uri, ErrorClass.TOO_LARGE,
                        f"TIFF page {index} ({width}x{height}, {channels} x {np.dtype(page.dtype)}) is tiled from bands "
                        f"of {band_rows} rows at full width (its strips or tiles are {seg_h} rows high): {band:,} bytes "
                        f"per band, above the limit of {max_decoded_bytes:,} bytes (max_decoded_bytes)",
                    )
    return header


def _check_tiled_total(uri: str, pixels: int, pages: int, max_tiled_pixels: int | None) -> None:
    if max_tiled_pixels is not None and pixels > max_tiled_pixels:
        raise ImageDecodeError(
            uri, ErrorClass.TOO_LARGE,
            f"{pixels:,} pixels over {pages} page(s) to tile, above the limit of {max_tiled_pixels:,} (max_tiled_pixels)",
        )


def _check_segments(uri: str, page, index: int, file_size: int) -> None:
    """The page's strips or tiles are all declared and lie inside the file (else `corrupt`)."""
    kind = "tiles" if page.is_tiled else "strips"
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    needed = int(np.prod([int(v) for v in page.chunked], dtype=object))
    where = f"TIFF page {index} ({int(page.imagewidth)} x {int(page.imagelength)} pixels)"
    if offsets.size < needed or counts.size < needed:
        raise ImageDecodeError(
            uri, ErrorClass.CORRUPT,
            f"{where} needs {needed:,} {kind} but declares {min(offsets.size, counts.size):,}: the header does not "
            "describe the pixel data",
        )
    offsets, counts = offsets[:needed], counts[:needed]
    used = counts > 0
    if not used.any():
        raise ImageDecodeError(uri, ErrorClass.CORRUPT, f"{where}: none of its {needed:,} {kind} holds any data")
    if (used & ((offsets < 0) | (counts < 0))).any():
        raise ImageDecodeError(uri, ErrorClass.CORRUPT, f"{where}: negative {kind[:-1]} offsets or byte counts")
    outside = used & (offsets + counts > file_size)
    if outside.any():
        # Data past the end: a file cut short (or still being written), so `truncated`.
        first = int(np.argmax(outside))
        raise ImageDecodeError(
            uri, ErrorClass.TRUNCATED,
            f"{where}: {int(outside.sum()):,} of its {kind} lie outside the {file_size:,}-byte file (the first, "
            f"#{first}, at offset {int(offsets[first]):,} + {int(counts[first]):,} bytes)",
        )


