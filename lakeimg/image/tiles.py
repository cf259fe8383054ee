"""Huge images as tiles: windowed reading, a streaming pyramid, lossless tile codecs, region assembly.

Pure: files and ndarrays in, tiles (ndarrays and encoded bytes) out; no Spark, no Delta.

* Reading by windows (`open_image`): tiled TIFF/BigTIFF pages are read TIFF tile by TIFF tile
  and strip TIFFs strip by strip (tifffile's `page.decode` on the segment bytes at
  `page.dataoffsets`), never the whole page. Formats that cannot be read by windows (JPEG, PNG,
  TIFF pages with an orientation or a layout we do not window) are decoded once per page and
  served from that array; DICOM frames one at a time (pydicom's `iter_pixels`).
* The pyramid (`iter_tiles`) is built as level-0 rows stream past: each level keeps only the
  rows its current tile row and the next level's 2x2 average still need. Level L+1 halves level
  L (ceil), every output pixel the average of its 2x2 block (edge pixels repeated), dtype kept.
  Levels go on until a level fits in one tile.
* Tile codecs (`encode_tile`/`decode_tile`) are lossless and keep the dtype: "png" (uint8 and
  uint16, 1/3/4 channels), "zstd" and "deflate" (compressed raw HWC little-endian bytes, any
  dtype) and "raw".

Example:
    >>> import numpy as np
    >>> arr = np.arange(600 * 700, dtype=np.uint16).reshape(600, 700, 1)
    >>> tiles = list(iter_tiles(ArraySource(arr), tile_size=256))
    >>> sorted({t.level for t in tiles}), level_count(600, 700, 256)
    ([0, 1, 2], 3)
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lakeimg.errors import ImageDecodeError
from lakeimg.image._settings import decoder_settings

__all__ = [
    "ArraySource",
    "DEFAULT_MAX_TILED_PIXELS",
    "DEFAULT_TILE_ABOVE_PIXELS",
    "DEFAULT_TILE_ENCODING",
    "DEFAULT_TILE_SIZE",
    "ImageHeader",
    "Tile",
    "TILE_ENCODINGS",
    "assemble_region",
    "check_tileable",
    "decode_tile",
    "downsample2",
    "encode_tile",
    "iter_tiles",
    "level_count",
    "level_shape",
    "open_image",
    "page_shapes",
    "probe_image",
    "tile_geotransform",
]

DEFAULT_TILE_SIZE = 512
DEFAULT_TILE_ABOVE_PIXELS = 64_000_000
# The cap on a tiled image (every page's pixels together): 2**34 = 17.2 gigapixels, a
# 131,072 x 131,072 page. The largest real images we know of fit (whole-slide scans at 40x are
# up to ~150,000 x 100,000 = 1.5e10; Landsat/Sentinel scenes are < 1e9), while a few-hundred-byte
# header claiming 1e14 pixels is refused before any task is planned. At ~50 megapixels/s per
# worker, a file at the cap takes minutes, not days.
DEFAULT_MAX_TILED_PIXELS = 2**34
# Chosen by benchmarks/bench_tiles.py (codec table): zstd level 1 encodes at 200-500 MB/s and
# keeps every dtype (best ratio on float32); PNG/deflate are 1.5-2x smaller on 8/16-bit photos
# but encode at 13-40 MB/s, 10-20x slower, which would dominate ingest of a huge image.
DEFAULT_TILE_ENCODING = "zstd"
TILE_ENCODINGS = ("zstd", "deflate", "png", "raw")


# --- geometry ----------------------------------------------------------------------------


def level_shape(height: int, width: int, level: int) -> tuple[int, int]:
    """(height, width) of a pyramid level: each level halves the previous one, rounding up.

    Example:
        >>> level_shape(3000, 2001, 1)
        (1500, 1001)
    """
    for _ in range(level):
        height, width = max(1, (height + 1) // 2), max(1, (width + 1) // 2)
    return height, width


def level_count(height: int, width: int, tile_size: int) -> int:
    """Levels of the pyramid: level 0 and halvings until a level fits in one tile.

    Example:
        >>> level_count(3000, 2000, 512)
        4
    """
    levels = 1
    while max(height, width) > tile_size:
        height, width = level_shape(height, width, 1)
        levels += 1
    return levels


def tile_geotransform(geotransform: list[float] | None, x: int, y: int, level: int) -> list[float] | None:
    """GDAL-order geotransform of a tile whose top-left pixel is (x, y) at `level`.

    Example:
        >>> tile_geotransform([500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0], 256, 512, 1)
        [505120.0, 20.0, 0.0, 4589760.0, 0.0, -20.0]
    """
    if not geotransform:
        return None
    x0, a, b, y0, d, e = (float(v) for v in geotransform)
    scale = float(2**level)
    px, py = x * scale, y * scale
    return [x0 + px * a + py * b, a * scale, b * scale, y0 + px * d + py * e, d * scale, e * scale]


def downsample2(rows: np.ndarray) -> np.ndarray:
    """Halve an HWC block (even height, or the image's last odd row) by 2x2 area average, same dtype.

    Odd trailing rows/columns are averaged with themselves (edge repeated). Integers round
    half up; floats average in float64.

    Example:
        >>> downsample2(np.array([[[1], [2]], [[3], [5]]], np.uint8))[:, :, 0]
        array([[3]], dtype=uint8)
    """
    if rows.shape[0] % 2:
        rows = np.concatenate([rows, rows[-1:]], axis=0)
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    dtype = rows.dtype
    if dtype in (np.uint8, np.uint16) and rows.shape[2] <= 4:
        import cv2

        # OpenCV's 2x INTER_AREA fast path computes exactly (a + b + c + d + 2) >> 2, ~20x faster.
        out = cv2.resize(rows, (rows.shape[1] // 2, rows.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return out[:, :, None] if out.ndim == 2 else out
    if dtype == np.bool_:
        acc = rows.astype(np.uint8)
    elif dtype.kind == "f":
        acc = rows.astype(np.float64)
    elif dtype.kind in "ui" and dtype.itemsize <= 2:
        acc = rows.astype(np.int32)
    else:
        acc = rows.astype(np.int64)
    total = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    if dtype == np.bool_:
        return total >= 2
    if dtype.kind == "f":
        return (total * 0.25).astype(dtype)
    return ((total + 2) // 4).astype(dtype)


# --- tile codecs -------------------------------------------------------------------------


def _le(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def encode_tile(arr: np.ndarray, encoding: str = DEFAULT_TILE_ENCODING) -> tuple[bytes, str]:
    """Encode an HWC tile losslessly; returns (bytes, encoding actually used).

    "png" falls back to "zstd" for dtypes or channel counts PNG cannot hold.

    Example:
        >>> data, used = encode_tile(np.zeros((4, 4, 1), np.float32), "png")
        >>> used, decode_tile(data, used, 4, 4, 1, "float32").shape
        ('zstd', (4, 4, 1))
    """
    arr = _le(arr)
    if encoding == "png":
        if arr.dtype in (np.uint8, np.uint16) and arr.shape[2] in (1, 2, 3, 4):
            import imagecodecs

            img = arr[:, :, 0] if arr.shape[2] == 1 else arr
            return bytes(imagecodecs.png_encode(img, level=1)), "png"
        encoding = "zstd"
    if encoding == "zstd":
        import imagecodecs

        return bytes(imagecodecs.zstd_encode(arr.tobytes(), level=1)), "zstd"
    if encoding == "deflate":
        return zlib.compress(arr.tobytes(), 1), "deflate"
    if encoding == "raw":
        return arr.tobytes(), "raw"
    raise ValueError(f"unknown tile encoding {encoding!r}; choose one of {', '.join(TILE_ENCODINGS)}")


def decode_tile(data: bytes, encoding: str, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Decode one stored tile back to its HWC ndarray (exactly what was encoded).

    Example:
        >>> arr = np.arange(12, dtype=np.uint16).reshape(2, 2, 3)
        >>> bool((decode_tile(*encode_tile(arr, "png"), 2, 2, 3, "uint16") == arr).all())
        True
    """
    if encoding == "png":
        import imagecodecs

        arr = np.asarray(imagecodecs.png_decode(data))
        return arr.reshape(height, width, channels)
    if encoding == "zstd":
        import imagecodecs

        raw = imagecodecs.zstd_decode(data)
    elif encoding == "deflate":
        raw = zlib.decompress(data)
    elif encoding == "raw":
        raw = data
    else:
        raise ValueError(f"unknown tile encoding {encoding!r}")
    out = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=height * width * channels)
    return out.reshape(height, width, channels).astype(np.dtype(dtype), copy=False)


# --- sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding pixels (for the images row of a tiled file)."""

    format: str
    width: int
    height: int
    channels: int
    dtype: str
    mode: str
    pages: int
    geo: dict[str, Any] | None = None
    exif: dict[str, str] | None = None
    dicom: dict[str, Any] | None = None
    display_window: tuple[float, float] | None = None
    invert_display: bool = False


class ArraySource:
    """A page already in memory (HWC); the fallback for formats that cannot be read by windows."""

    def __init__(self, pixels: np.ndarray, geotransform: list[float] | None = None):
        self.pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
        self.height, self.width, self.channels = self.pixels.shape
        self.dtype = str(self.pixels.dtype)
        self.geotransform = geotransform

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.pixels[y0:y1]


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
            orientation = int(getattr(page, "orientation", 1) or 1)
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
    dtype, geotransform and read_rows(y0, y1). Close it (or use it as a context manager)."""

    def __init__(self, path: str):
        with decoder_settings():
            self._open(path)

    def _open(self, path: str) -> None:
        from lakeimg.image.decode import sniff_format

        self.path = path
        self._handle = open(path, "rb")  # noqa: SIM115 - closed in close()
        head = self._handle.read(132)
        self._handle.seek(0)
        self.format = sniff_format(head, path)
        self._tif = None
        if self.format == "TIFF":
            import tifffile

            self._tif = tifffile.TiffFile(self._handle)
            self.pages = len(self._tif.pages)
        elif self.format == "DICOM":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            self.pages = int(ds.get("NumberOfFrames") or 1)
        else:
            from PIL import Image

            with Image.open(path) as im:
                self.pages = int(getattr(im, "n_frames", 1) or 1)

    def page(self, index: int):
        with decoder_settings():
            return self._page(index)

    def _page(self, index: int):
        if self._tif is not None:
            from lakeimg.image.decode import geotiff_info

            page = self._tif.pages[index]
            geo = geotiff_info(page)
            transform = geo["geotransform"] if geo else None
            if TiffPageSource.windowable(page):
                return TiffPageSource(self._tif, page, transform)
            from lakeimg.image.decode import _tiff_hwc, _tiff_orientation, apply_orientation

            return ArraySource(apply_orientation(_tiff_hwc(page.asarray(), page.axes), _tiff_orientation(page)), transform)
        if self.format == "DICOM":
            return ArraySource(self._dicom_frame(index))
        from lakeimg.image.decode import decode_image

        with open(self.path, "rb") as handle:
            data = handle.read()
        return ArraySource(decode_image(data, self.path, page=index))

    def _dicom_frame(self, index: int) -> np.ndarray:
        # Only the frame asked for is decoded (pydicom's iter_pixels with indices), converted
        # as ds.pixel_array converts it.
        from pydicom.pixels import iter_pixels

        for frame in iter_pixels(self.path, indices=[index]):
            return np.ascontiguousarray(frame[:, :, None] if frame.ndim == 2 else frame)
        raise IndexError(f"frame {index} out of range")

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._handle.close()

    def __enter__(self) -> OpenedImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str) -> OpenedImage:
    """Open a local image file for windowed reading.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((300, 200), np.uint8), tile=(128, 128))
        >>> with open_image(p) as img:
        ...     img.page(0).read_rows(100, 140).shape
        (40, 200, 1)
    """
    return OpenedImage(path)


def page_shapes(path: str) -> list[tuple[int, int]]:
    """(height, width) of every page of a local image file, from headers only.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((2, 30, 20), np.uint8))
        >>> page_shapes(p)
        [(30, 20), (30, 20)]
    """
    header = probe_image(path)
    if header.format != "TIFF":
        return [(header.height, header.width)] * header.pages
    import tifffile

    from lakeimg.image.decode import _tiff_orientation

    shapes = []
    with decoder_settings(), tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            _planes, _depth, height, width, _contig = page.shaped
            swap = _tiff_orientation(page) in (5, 6, 7, 8)
            shapes.append((int(width), int(height)) if swap else (int(height), int(width)))
    return shapes


def probe_image(path: str) -> ImageHeader:
    """Header facts of a local image file without decoding its pixels.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((30, 20, 3), np.uint16))
        >>> probe_image(p).dtype, probe_image(p).width
        ('uint16', 20)
    """
    with decoder_settings():
        return _probe_image(path)


def _probe_image(path: str) -> ImageHeader:
    from lakeimg.image.decode import sniff_format

    with open(path, "rb") as handle:
        head = handle.read(132)
    kind = sniff_format(head, path)
    if kind == "TIFF":
        import tifffile

        from lakeimg.image.decode import _tiff_orientation, geotiff_info

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            planes, _depth, height, width, contig = page.shaped
            if _tiff_orientation(page) in (5, 6, 7, 8):
                height, width = width, height
            channels = int(planes) * int(contig)
            photometric = getattr(page.photometric, "name", str(page.photometric))
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-band")
            if photometric == "MINISWHITE":
                mode = "MINISWHITE"
            return ImageHeader(
                format="TIFF",
                width=int(width),
                height=int(height),
                channels=channels,
                dtype=str(np.dtype(page.dtype)),
                mode=mode,
                pages=len(tif.pages),
                geo=geotiff_info(page),
                invert_display=photometric == "MINISWHITE",
            )
    if kind == "DICOM":
        import pydicom

        from lakeimg.image.dicom import dicom_fields

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        from pydicom.pixels.utils import pixel_dtype

        fields = dicom_fields(ds)
        samples = int(ds.get("SamplesPerPixel") or 1)
        try:
            dtype = str(pixel_dtype(ds))
        except Exception:  # noqa: BLE001 - e.g. float pixel data
            dtype = "float32"
        photometric = fields["photometric_interpretation"] or "MONOCHROME2"
        return ImageHeader(
            format="DICOM",
            width=int(ds.Columns),
            height=int(ds.Rows),
            channels=samples,
            dtype=dtype,
            mode=photometric if samples == 1 else ("RGB" if samples == 3 else photometric),
            pages=int(ds.get("NumberOfFrames") or 1),
            dicom=fields,
            invert_display=photometric == "MONOCHROME1",
        )
    from PIL import Image

    from lakeimg.image.decode import _PIL_FORMATS, _exif_dict, _pillow_target

    with Image.open(path) as im:
        fmt = _PIL_FORMATS.get(im.format or "", im.format or "UNKNOWN")
        exif, orientation = _exif_dict(im)
        mode, channels, dtype = _pillow_target(im)
        width, height = im.size
        pages = int(getattr(im, "n_frames", 1) or 1)
    if kind == "PNG" and head[24] == 16:  # 16-bit PNG: OpenCV decodes it natively (see decode.py)
        color = head[25]
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color, channels)
        mode, dtype = {1: "I;16", 3: "RGB", 4: "RGBA"}.get(channels, mode), "uint16"
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(fmt, width, height, channels, dtype, mode, pages, exif=exif or None)


def check_tileable(
    path: str,
    uri: str = "",
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = 0,
    max_decoded_bytes: int | None = None,
    max_tiled_pixels: int | None = DEFAULT_MAX_TILED_PIXELS,
) -> ImageHeader:
    """Check from headers alone that a file can be tiled within the limits; return its header.

    Raises `ImageDecodeError` before any tiling task is planned:

    * `corrupt`: a TIFF page's strips or tiles are missing (fewer offsets than its size needs),
      or none of them holds data; `truncated`: some lie past the end of the file;
    * `too_large`: every page's pixels together exceed `max_tiled_pixels`; a page that must be
      decoded whole (not TIFF, or a TIFF page we do not read by windows) decodes to more than
      `max_decoded_bytes`; a TIFF page read by windows needs a band (one strip or tile row,
      at least `tile_size` rows, full width) larger than `max_decoded_bytes`;
    * `unsupported_dtype`: complex samples.

    Example:
        >>> import tempfile, os, numpy as np, tifffile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.tif")
        >>> tifffile.imwrite(p, np.ones((300, 200), np.uint8), tile=(128, 128))
        >>> check_tileable(p, max_tiled_pixels=50_000)
        Traceback (most recent call last):
        ...
        lakeimg.errors.ImageDecodeError: : too_large: 60,000 pixels over 1 page(s) to tile, above the limit of 50,000 (max_tiled_pixels)
    """
    from lakeimg.image.decode import check_decoded_size, check_dtype, decoded_bytes

    with decoder_settings():
        header = _probe_image(path)
        check_dtype(uri, header.dtype)
        if header.format != "TIFF":
            _check_tiled_total(uri, header.width * header.height * header.pages, header.pages, max_tiled_pixels)
            # Decoded one page (DICOM: one frame) at a time, each whole.
            check_decoded_size(
                uri, header.width, header.height, header.channels, header.dtype, max_bytes=max_decoded_bytes,
                what=f"for a {header.format} page, which is decoded whole to be tiled",
            )
            return header
        import tifffile

        file_size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            shapes = [tuple(int(v) for v in page.shaped) for page in pages]
            # A header that does not describe its data is `corrupt` whatever size it claims.
            for index, page in enumerate(pages):
                _check_segments(uri, page, index, file_size)
            _check_tiled_total(uri, sum(h * w * d for _p, d, h, w, _c in shapes), len(pages), max_tiled_pixels)
            for index, (page, (planes, depth, height, width, contig)) in enumerate(zip(pages, shapes, strict=True)):
                if page.dtype is None:
                    raise ImageDecodeError(uri, "unsupported_format", f"TIFF page {index}: tifffile cannot decode its sample format")
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
                        uri, "too_large",
                        f"TIFF page {index} ({width}x{height}, {channels} x {np.dtype(page.dtype)}) is tiled from bands "
                        f"of {band_rows} rows at full width (its strips or tiles are {seg_h} rows high): {band:,} bytes "
                        f"per band, above the limit of {max_decoded_bytes:,} bytes (max_decoded_bytes)",
                    )
    return header


def _check_tiled_total(uri: str, pixels: int, pages: int, max_tiled_pixels: int | None) -> None:
    if max_tiled_pixels is not None and pixels > max_tiled_pixels:
        raise ImageDecodeError(
            uri, "too_large",
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
            uri, "corrupt",
            f"{where} needs {needed:,} {kind} but declares {min(offsets.size, counts.size):,}: the header does not "
            "describe the pixel data",
        )
    offsets, counts = offsets[:needed], counts[:needed]
    used = counts > 0
    if not used.any():
        raise ImageDecodeError(uri, "corrupt", f"{where}: none of its {needed:,} {kind} holds any data")
    if (used & ((offsets < 0) | (counts < 0))).any():
        raise ImageDecodeError(uri, "corrupt", f"{where}: negative {kind[:-1]} offsets or byte counts")
    outside = used & (offsets + counts > file_size)
    if outside.any():
        # Data past the end: a file cut short (or still being written), so `truncated`.
        first = int(np.argmax(outside))
        raise ImageDecodeError(
            uri, "truncated",
            f"{where}: {int(outside.sum()):,} of its {kind} lie outside the {file_size:,}-byte file (the first, "
            f"#{first}, at offset {int(offsets[first]):,} + {int(counts[first]):,} bytes)",
        )


# --- the streaming pyramid ---------------------------------------------------------------


@dataclass
class Tile:
    """One tile: where it sits (level pixel coordinates, including overlap) and its pixels."""

    page: int
    level: int
    tile_row: int
    tile_col: int
    x: int
    y: int
    pixels: np.ndarray
    geotransform: list[float] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


class _Level:
    """One pyramid level fed rows top to bottom: cuts tile rows, feeds its 2x2 average upward."""

    def __init__(self, level, height, width, tile_size, overlap, page, geotransform, emit_rows, parent_next):
        self.level, self.height, self.width = level, height, width
        self.ts, self.overlap, self.page = tile_size, overlap, page
        self.geotransform = geotransform
        self.emit_lo, self.emit_hi = emit_rows  # tile rows [lo, hi) of this level are ours to emit
        self.next_level = parent_next
        self.buf: np.ndarray | None = None
        self.buf_y0 = 0
        self.pending_odd: np.ndarray | None = None  # one row waiting for its pair (next level)
        self.next_row = self.emit_lo
        self.n_rows = math.ceil(height / tile_size)
        self.n_cols = math.ceil(width / tile_size)

    def push(self, rows: np.ndarray, y0: int) -> Iterator[Tile]:
        if self.buf is None or self.buf.shape[0] == 0:  # nothing kept: no copy
            self.buf, self.buf_y0 = rows, y0
        else:
            self.buf = np.concatenate([self.buf, rows], axis=0)
        buf_end = self.buf_y0 + self.buf.shape[0]
        if self.next_level is not None:
            yield from self._feed_up(rows, y0, buf_end >= self.height)
        while self.next_row < min(self.emit_hi, self.n_rows):
            r = self.next_row
            top, bottom = max(0, r * self.ts - self.overlap), min(self.height, (r + 1) * self.ts + self.overlap)
            if buf_end < bottom:
                break
            band = self.buf[top - self.buf_y0 : bottom - self.buf_y0]
            for c in range(self.n_cols):
                left, right = max(0, c * self.ts - self.overlap), min(self.width, (c + 1) * self.ts + self.overlap)
                yield Tile(
                    self.page, self.level, r, c, left, top,
                    np.ascontiguousarray(band[:, left:right]),
                    tile_geotransform(self.geotransform, left, top, self.level),
                )
            self.next_row += 1
        keep_from = max(0, self.next_row * self.ts - self.overlap)
        if keep_from > self.buf_y0:  # drop rows no tile row still needs
            self.buf = self.buf[keep_from - self.buf_y0 :]
            self.buf_y0 = keep_from

    def _feed_up(self, rows: np.ndarray, y0: int, at_end: bool) -> Iterator[Tile]:
        if self.pending_odd is not None:
            rows = np.concatenate([self.pending_odd, rows], axis=0)
            y0 -= 1
            self.pending_odd = None
        usable = rows.shape[0] - (rows.shape[0] % 2)
        if at_end and usable < rows.shape[0]:
            usable = rows.shape[0]  # the image's last odd row is averaged with itself
        elif usable < rows.shape[0]:
            self.pending_odd = rows[usable:]
        if usable:
            yield from self.next_level.push(downsample2(rows[:usable]), y0 // 2)


def iter_tiles(
    source,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = 0,
    page: int = 0,
    rows: tuple[int, int] | None = None,
    max_level: int | None = None,
    band_rows: int | None = None,
) -> Iterator[Tile]:
    """Stream one page's tiles, level 0 and the pyramid above it, reading `band_rows` at a time.

    Args:
        source: a page source (`open_image(path).page(i)` or `ArraySource`).
        tile_size: tile edge in pixels; overlap: extra pixels on each side of a tile.
        rows: level-0 tile rows [start, end) this call covers (a task's share of a huge
            image); with it, only levels whose tile rows lie wholly in that range are emitted,
            so `start` and `end` should be multiples of 2**max_level (or end the image).
        max_level: emit levels up to this one (default: all levels).

    Memory: one band of level-0 rows (tile_size + 2 * overlap high, full width) plus
    the same at every coarser level, each half as wide.

    Example:
        >>> t = next(iter_tiles(ArraySource(np.zeros((40, 50, 3), np.uint8)), tile_size=32))
        >>> (t.level, t.tile_row, t.tile_col, t.pixels.shape)
        (0, 0, 0, (32, 32, 3))
    """
    height, width = source.height, source.width
    levels = level_count(height, width, tile_size)
    top = levels - 1 if max_level is None else min(max_level, levels - 1)
    start, end = rows if rows is not None else (0, math.ceil(height / tile_size))
    chain: _Level | None = None
    for level in range(top, -1, -1):  # build top-down so each level knows its parent
        h, w = level_shape(height, width, level)
        scale = 2**level
        lo = math.ceil(start / scale)
        hi = math.ceil(end / scale) if end * tile_size < height else math.ceil(h / tile_size)
        chain = _Level(level, h, w, tile_size, overlap, page, source.geotransform, (lo, hi), chain)
    assert chain is not None
    # Level-0 rows to read: this range plus the overlap each level needs, aligned so that
    # every level's 2x2 pairs start on an even row.
    align = 2**top
    y_start = max(0, start * tile_size - overlap * align)
    y_start -= y_start % align
    y_end = min(height, end * tile_size + overlap * align)
    step = band_rows or tile_size
    y = y_start
    while y < y_end:
        y1 = min(y_end, y + step)
        yield from chain.push(source.read_rows(y, y1), y)
        y = y1


# --- reading regions back ----------------------------------------------------------------


def assemble_region(
    tiles: list[dict[str, Any]],
    x: int,
    y: int,
    width: int,
    height: int,
    *,
    channels: int,
    dtype: str,
) -> np.ndarray:
    """Paste decoded tiles (rows with x, y, width, height, encoding, data) into a window.

    Example:
        >>> data, enc = encode_tile(np.full((2, 2, 1), 7, np.uint8))
        >>> row = dict(x=0, y=0, width=2, height=2, channels=1, dtype="uint8", encoding=enc, data=data)
        >>> assemble_region([row], 1, 1, 1, 1, channels=1, dtype="uint8").tolist()
        [[[7]]]
    """
    out = np.zeros((height, width, channels), dtype=np.dtype(dtype))
    for t in tiles:
        left, top = max(x, t["x"]), max(y, t["y"])
        right, bottom = min(x + width, t["x"] + t["width"]), min(y + height, t["y"] + t["height"])
        if right <= left or bottom <= top:
            continue
        arr = decode_tile(t["data"], t["encoding"], t["height"], t["width"], t["channels"], t["dtype"])
        out[top - y : bottom - y, left - x : right - x] = arr[top - t["y"] : bottom - t["y"], left - t["x"] : right - t["x"]]
    return out
