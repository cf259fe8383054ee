"""Deep zoom: image descriptors, tiles by (table, version, uri, page, level, column, row), their
8-bit rendering (with a display window for 16-bit and float) and their ETags.

The URL scheme is Deep Zoom (DZI)-like: `/zoom/{table}/{version}/{level}/{col}_{row}.png?uri=...`
with a JSON descriptor at `/api/zoom/{table}?uri=...&at=...`, except that levels count lakeimg's
way: level 0 is full resolution and level n is 2**n times smaller (rounded up), as in the tiles
table (`lakeimg.kernels.tiles`, `lakeimg.image.pyramid`).

Tiled images are read straight from the `<table>_tiles` table: the snapshot of the tiles table
that matches the images version (`jobs.regions.tiles_as_of`), a per-uri index of where each
tile sits (data file, row group, row), found from the row groups' statistics, and the tile's
row group read from its Parquet file (tiles are written in small row groups for that). Untiled
images and derived tables' rows are decoded once and cut into tiles of the same size along the
same 2x2 area-average pyramid (`Lake.read_region` follows it too). Every cache is keyed by a
resolved version, so nothing cached can go stale: a version's pixels never change.

Example:
    >>> etag("images", 3, "file:///a.tif", 0, 0, 1, 2, None) == etag("images", 3, "file:///a.tif", 0, 0, 1, 2, None)
    True
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import SpecError
from lakeimg.image.codecs import decode_pixels, decode_tile
from lakeimg.image.display import display_window, to_display_uint8
from lakeimg.image.pyramid import DEFAULT_TILE_SIZE, downsample2, level_count, level_shape
from lakeimg.jobs.regions import image_record, read_page, tiles_as_of
from lakeimg.serve.catalog import BadRequest
from lakeimg.tables import tiles_of

__all__ = ["ImageInfo", "RenderedTiles", "TileStore", "etag", "render_png", "parse_page", "parse_window"]

_TILE_COLUMNS = ["data", "encoding", "x", "y", "width", "height", "channels", "dtype", "overlap"]
_INDEX_COLUMNS = ["uri", "content_sha256", "page", "level", "tile_row", "tile_col"]


@dataclass(frozen=True)
class ImageInfo:
    """What the viewer needs to know about one image at one version."""

    table: str
    version: int
    uri: str
    page: int
    width: int
    height: int
    channels: int
    dtype: str
    tiled: bool
    tile_size: int
    levels: int
    content_sha256: str | None
    window: tuple[float, float] | None  # the default display window (None: 8-bit, no window)
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def etag(table: str, version: int, uri: str, page: int, level: int, col: int, row: int,
         window: tuple[float, float] | None, variant: str | None = None, compress: bool = False) -> str:
    """A strong ETag for one rendered tile: its identity at a version, the display window and
    the PNG's encoding."""
    key = "\0".join(str(p) for p in (table, version, uri, page, level, col, row, window, variant, compress))
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def parse_window(text: str | None) -> tuple[float, float] | None:
    """`lo,hi` as a display window; None for empty text. BadRequest when malformed.

    Example:
        >>> parse_window("0,4095"), parse_window("")
        ((0.0, 4095.0), None)
    """
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise BadRequest(f"window {text!r}: give two numbers, low,high") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise BadRequest(f"window {text!r}: low must be below high, both finite")
    return lo, hi


def parse_page(text: str | None) -> int:
    """A page (TIFF page, DICOM frame) number from a query; 0 for empty text. BadRequest when
    it is not a small non-negative integer.

    Example:
        >>> parse_page("2"), parse_page(None)
        (2, 0)
    """
    if not text:
        return 0
    if not text.isdigit() or len(text) > 6:
        raise BadRequest(f"page {text!r}: give a page number, 0 for the first")
    return int(text)


def render_png(pixels: np.ndarray, window: tuple[float, float] | None, *, compress: bool = False) -> bytes:
    """PNG bytes of an 8-bit rendering (uint8 as is; other dtypes through `window`).

    Lossless either way. Without `compress` the PNG is stored (no filter, deflate level 0): it
    encodes in about a millisecond, 10-20x faster than deflating, at the raw size, which suits
    loopback; `compress` (deflate level 1, SUB filter) is for serving over a network.
    """
    out = to_display_uint8(pixels, window=window)
    if out.ndim == 3 and out.shape[2] == 3:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    options = ([cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB] if compress
               else [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE])
    ok, data = cv2.imencode(".png", out, options)
    if not ok:
        raise BadRequest("tile could not be encoded")
    return data.tobytes()


class _Lru:
    """A small thread-safe LRU cache."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


class RenderedTiles:
    """Rendered tiles (PNG bytes) by ETag, least recently used first out, within a byte budget:
    a tile served once is served again without reading or encoding (a version never changes)."""

    def __init__(self, max_bytes: int = 128 << 20):
        self.max_bytes, self.used, self.items, self.lock = max_bytes, 0, OrderedDict(), threading.Lock()

    def get(self, tag: str) -> bytes | None:
        with self.lock:
            data = self.items.get(tag)
            if data is not None:
                self.items.move_to_end(tag)
            return data

    def put(self, tag: str, data: bytes) -> None:
        with self.lock:
            if tag in self.items or len(data) > self.max_bytes:
                return
            self.items[tag] = data
            self.used += len(data)
            while self.used > self.max_bytes:
                self.used -= len(self.items.popitem(last=False)[1])


class TileStore:
    """Tiles of one lake's images at resolved versions (see the module docstring)."""

    def __init__(self, engine: LocalEngine, *, tile_size: int = DEFAULT_TILE_SIZE):
        self.engine = engine
        self.tile_size = tile_size  # for untiled images
        self._info = _Lru(256)
        self._tiles_version = _Lru(256)
        self._files = _Lru(64)
        self._index = _Lru(64)
        self._groups = _Lru(64)  # a row group holds a few tiles (kernels/tiles.py)
        self._levels = _Lru(8)

    # --- descriptors ---

    def info(self, table: str, version: int, uri: str, page: int = 0, variant: str | None = None) -> ImageInfo:
        return self._info.get((table, version, uri, page, variant), lambda: self._make_info(table, version, uri, page, variant))

    def _make_info(self, table: str, version: int, uri: str, page: int, variant: str | None) -> ImageInfo:
        names = self.engine.arrow_schema(table, version).names
        if "content" in names:  # an images table
            try:
                row = image_record(self.engine, table, uri, version)
            except Exception as exc:  # noqa: BLE001 - an unknown uri is the request's fault
                raise BadRequest(str(exc)) from exc
            pages = int(row["pages"] or 1)
            if not 0 <= page < pages:
                raise BadRequest(f"{uri} has {pages} page(s); page {page} does not exist")
            tiled = bool(row["tiled"])
            channels, dtype = row["channels"] or 1, row["dtype"]  # the images row describes page 0
            tile_size = int(row["tile_size"]) if tiled else self.tile_size
            if tiled and page:
                height, width, channels, dtype, levels = self._page_geometry(table, version, uri, row["content_sha256"], page)
            elif tiled:
                height, width, levels = row["height"], row["width"], int(row["levels"])
            else:
                pixels = self._full(table, version, uri, page, 0, variant)
                height, width = pixels.shape[:2]
                if page:
                    channels, dtype = (pixels.shape[2] if pixels.ndim == 3 else 1), str(pixels.dtype)
                levels = level_count(height, width, tile_size)
            info = ImageInfo(table, version, uri, page, width, height, channels, dtype, tiled,
                             tile_size, levels, row["content_sha256"], None)
        elif "data" in names:  # a derived table
            if page:
                raise BadRequest(f"a row of {table} has one page; page {page} does not exist")
            pixels = self._full(table, version, uri, page, 0, variant)
            height, width = pixels.shape[:2]
            info = ImageInfo(table, version, uri, page, width, height, pixels.shape[2], str(pixels.dtype), False,
                             self.tile_size, level_count(height, width, self.tile_size), None, None, variant)
        else:
            raise BadRequest(f"{table} holds no images")
        if info.tiled:
            self._uri_index(info)  # built with the descriptor, so no tile request waits for it
        # Read with the descriptor: the viewer's first view shows it, its window is the default
        # one, and the first decode's one-time costs (codec imports) land here, not in a tile.
        top = self.tile(info, info.levels - 1, 0, 0)
        if np.dtype(info.dtype) != np.uint8:
            info = ImageInfo(**{**info.to_dict(), "window": display_window(top)})
        return info

    # --- tiles ---

    def tile(self, info: ImageInfo, level: int, col: int, row: int) -> np.ndarray:
        """The pixels (HWC, native dtype) of one tile: up to tile_size square, cut at the edges."""
        if not 0 <= level < info.levels:
            raise BadRequest(f"{info.uri} has {info.levels} level(s); level {level} does not exist")
        level_h, level_w = level_shape(info.height, info.width, level)
        ts = info.tile_size
        if col < 0 or row < 0 or col * ts >= level_w or row * ts >= level_h:
            raise BadRequest(f"no tile {col}_{row} at level {level} of {info.uri}")
        if info.tiled:
            return self._stored_tile(info, level, col, row)
        full = self._full(info.table, info.version, info.uri, info.page, level, info.variant)
        return np.ascontiguousarray(full[row * ts:(row + 1) * ts, col * ts:(col + 1) * ts])

    def _stored_tile(self, info: ImageInfo, level: int, col: int, row: int) -> np.ndarray:
        where = self._uri_index(info).get((info.content_sha256, info.page, level, row, col))
        if where is None:
            raise BadRequest(f"no stored tile {col}_{row} at level {level} of {info.uri}")
        path, group, index = where
        rows = self._groups.get((path, group), lambda: self._read_row_groups(path, [group], _TILE_COLUMNS))
        t = {name: rows.column(name)[index].as_py() for name in _TILE_COLUMNS}
        pixels = decode_tile(t["data"], t["encoding"], t["height"], t["width"], t["channels"], t["dtype"])
        ts, overlap = info.tile_size, int(t["overlap"] or 0)
        if overlap:  # the stored tile carries extra pixels on each side: keep the tile's own
            x0, y0 = col * ts - t["x"], row * ts - t["y"]
            pixels = pixels[y0:y0 + ts, x0:x0 + ts]
        return np.ascontiguousarray(pixels)

    def _page_geometry(self, table: str, version: int, uri: str, sha: str, page: int) -> tuple[int, int, int, str, int]:
        """(height, width, channels, dtype, levels) of a tiled image's page after the first,
        from that page's stored tiles (no pixels read): the images row describes page 0."""
        tiles_table, tiles_version = self._tiles_snapshot(table, version)
        tiles = self.engine.read(tiles_table, version=tiles_version,
                                 filter=(pc.field("uri") == uri) & (pc.field("page") == page),
                                 columns=["content_sha256", "level", "x", "y", "width", "height", "channels", "dtype"])
        tiles = tiles.filter(pc.equal(tiles["content_sha256"], sha))
        full = tiles.filter(pc.equal(tiles["level"], 0))
        if not full.num_rows:
            raise BadRequest(f"no stored tiles of {uri} page {page}")
        width = pc.max(pc.add(full["x"], full["width"])).as_py()
        height = pc.max(pc.add(full["y"], full["height"])).as_py()
        return height, width, full["channels"][0].as_py() or 1, full["dtype"][0].as_py(), pc.max(tiles["level"]).as_py() + 1

    def _tiles_snapshot(self, table: str, version: int) -> tuple[str, int]:
        def make() -> int:
            return self.engine.resolve_version(tiles_of(table), tiles_as_of(self.engine, table, version))

        return tiles_of(table), self._tiles_version.get((table, version), make)

    def _parquet(self, path: str) -> tuple[pq.ParquetFile, threading.Lock]:
        """One data file, opened once, with the lock its reads take: a ParquetFile shares one
        read cache between calls, so two tile requests reading it at once can fail."""
        return self._files.get(path, lambda: (self.engine.parquet_file(path), threading.Lock()))

    def _read_row_groups(self, path: str, groups: list[int], columns: list[str]) -> pa.Table:
        handle, lock = self._parquet(path)
        with lock:
            return handle.read_row_groups(groups, columns=columns, use_threads=False)

    def _uri_index(self, info: ImageInfo) -> dict[tuple, tuple[str, int, int]]:
        """(sha, page, level, row, col) -> (data file, row group, row) for one uri's tiles."""
        tiles_table, tiles_version = self._tiles_snapshot(info.table, info.version)

        def make() -> dict[tuple, tuple[str, int, int]]:
            index: dict[tuple, tuple[str, int, int]] = {}
            for path in self.engine.data_files(tiles_table, tiles_version):
                handle = self._parquet(path)[0]
                meta = handle.metadata
                position = handle.schema_arrow.get_field_index("uri")
                groups = []
                for group in range(meta.num_row_groups):
                    stats = meta.row_group(group).column(position).statistics
                    if stats is None or not stats.has_min_max or stats.min <= info.uri <= stats.max:
                        groups.append(group)  # else: this row group holds other images' tiles only
                if not groups:
                    continue
                keys = self._read_row_groups(path, groups, _INDEX_COLUMNS)  # one read per file
                where = [(g, i) for g in groups for i in range(meta.row_group(g).num_rows)]
                hits = pc.indices_nonzero(pc.equal(keys["uri"], info.uri)).to_pylist()
                picked = keys.take(hits).to_pydict()
                for n, hit in enumerate(hits):
                    group, offset = where[hit]
                    index[(picked["content_sha256"][n], picked["page"][n], picked["level"][n], picked["tile_row"][n],
                           picked["tile_col"][n])] = (path, group, offset)
            return index

        return self._index.get((tiles_table, tiles_version, info.uri), make)

    def _full(self, table: str, version: int, uri: str, page: int, level: int, variant: str | None) -> np.ndarray:
        """A whole untiled image (or derived row) at a pyramid level, decoded once and cached."""

        def make() -> np.ndarray:
            if level > 0:
                return downsample2(self._full(table, version, uri, page, level - 1, variant))
            names = self.engine.arrow_schema(table, version).names
            if "data" in names and "content" not in names:
                flt = pc.field("uri") == uri
                if variant is not None and "variant" in names:
                    flt = flt & (pc.field("variant") == variant)
                rows = self.engine.read(table, version=version, filter=flt,
                                        columns=["data", "encoding", "width", "height", "channels", "dtype"]).to_pylist()
                if not rows:
                    raise BadRequest(f"{uri} is not in {table} at version {version}")
                r = rows[0]
                return decode_pixels(r["data"], r["encoding"], r["width"], r["height"], r["channels"], r["dtype"])
            try:  # a tiled image is read from its tiles
                return read_page(self.engine, table, uri, page=page, version=version)
            except SpecError as exc:
                raise BadRequest(str(exc)) from exc

        return self._levels.get((table, version, uri, page, level, variant), make)
