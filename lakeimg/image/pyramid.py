"""Tile pyramids: level geometry, the 2x2 downsample, a streaming pyramid, region assembly.

Pure: ndarrays in, tiles out; no files, no Spark, no Delta. A page source is anything with
height, width, channels, dtype, geotransform and `read_rows(y0, y1)` (`ArraySource`, or a file
page from `lakeimg.image.sources.open_image`).

* The pyramid (`iter_tiles`) is built as level-0 rows stream past: each level keeps only the
  rows its current tile row and the next level's 2x2 average still need. Level L+1 halves level
  L (ceil), every output pixel the average of its 2x2 block (edge pixels repeated), dtype kept.
  Levels go on until a level fits in one tile.
* `assemble_region` pastes stored tiles (decoded by `lakeimg.image.codecs.decode_tile`) into
  a window.

Example:
    >>> import numpy as np
    >>> arr = np.arange(600 * 700, dtype=np.uint16).reshape(600, 700, 1)
    >>> tiles = list(iter_tiles(ArraySource(arr), tile_size=256))
    >>> sorted({t.level for t in tiles}), level_count(600, 700, 256)
    ([0, 1, 2], 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lakeimg.image.codecs import decode_tile
from lakeimg.image.info import as_hwc

__all__ = [
    "ArraySource",
    "DEFAULT_TILE_SIZE",
    "Tile",
    "assemble_region",
    "downsample2",
    "iter_tiles",
    "level_count",
    "level_shape",
    "tile_count",
    "tile_geotransform",
]

DEFAULT_TILE_SIZE = 512


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


def _level_rows(height: int, tile_size: int, level: int, rows: tuple[int, int]) -> tuple[int, int]:
    """Tile rows [lo, hi) of `level` that a task covering level-0 tile rows `rows` emits."""
    start, end = rows
    scale = 2**level
    h, _ = level_shape(height, 1, level)
    return math.ceil(start / scale), math.ceil(end / scale) if end * tile_size < height else math.ceil(h / tile_size)


def tile_count(
    height: int, width: int, tile_size: int, *, rows: tuple[int, int] | None = None, min_level: int = 0,
    max_level: int | None = None,
) -> int:
    """How many tiles `iter_tiles` emits for a page (levels `min_level`..`max_level`, level-0
    tile rows `rows`): known from the page's shape alone, before any pixel is read.

    Example:
        >>> tile_count(300, 200, 128), tile_count(300, 200, 128, max_level=0), tile_count(300, 200, 128, min_level=1)
        (9, 6, 3)
    """
    levels = level_count(height, width, tile_size)
    top = levels - 1 if max_level is None else min(max_level, levels - 1)
    span = rows if rows is not None else (0, math.ceil(height / tile_size))
    total = 0
    for level in range(min_level, top + 1):
        lo, hi = _level_rows(height, tile_size, level, span)
        total += max(0, hi - lo) * math.ceil(level_shape(height, width, level)[1] / tile_size)
    return total


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

        # OpenCV's 2x INTER_AREA fast path computes exactly (a + b + c + d + 2) >> 2, and fast.
        out = cv2.resize(rows, (rows.shape[1] // 2, rows.shape[0] // 2), interpolation=cv2.INTER_AREA)
        return as_hwc(out)
    if dtype == np.bool_:
        acc = rows.astype(np.uint8)
    elif dtype.kind in "fc":
        acc = rows.astype(np.complex128 if dtype.kind == "c" else np.float64)
    elif dtype.kind in "ui" and dtype.itemsize <= 2:
        acc = rows.astype(np.int32)
    else:
        acc = rows.astype(np.int64)
    total = acc[0::2, 0::2] + acc[1::2, 0::2] + acc[0::2, 1::2] + acc[1::2, 1::2]
    if dtype == np.bool_:
        return total >= 2
    if dtype.kind in "fc":
        return (total * 0.25).astype(dtype)
    return ((total + 2) // 4).astype(dtype)


class ArraySource:
    """A page already in memory (HWC); the fallback for formats that cannot be read by windows."""

    def __init__(self, pixels: np.ndarray, geotransform: list[float] | None = None):
        self.pixels = as_hwc(pixels)
        self.height, self.width, self.channels = self.pixels.shape
        self.dtype = str(self.pixels.dtype)
        self.geotransform = geotransform

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.pixels[y0:y1]


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
        chain = _Level(level, h, w, tile_size, overlap, page, source.geotransform,
                       _level_rows(height, tile_size, level, (start, end)), chain)
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
        >>> from lakeimg.image.codecs import encode_tile
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
