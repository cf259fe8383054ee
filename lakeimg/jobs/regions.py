"""Reading a window of an image back from the lake, tiled or not (`read_region`), and a whole
page of an untiled one (`read_page`).

A tiled image's window is assembled from only the tiles it touches: the tiles table is read with
a filter on uri, page, level and tile row/column ranges, which pyarrow pushes down to Parquet row
group statistics (tiles are written in small row groups for that). A non-tiled image's window is
cut from its decoded `content` (or from the source file when the bytes were not inlined);
levels above 0 follow the same 2x2 area-average pyramid the tiles use. Time travel reads the
tiles table as of the images version's commit time (tiles commit first in each run).

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> uri = lake.read("images", columns=["uri"])["uri"][0].as_py()
    >>> read_region(LocalEngine(lake.path), "images", uri, 0, 0, 8, 4).shape
    (4, 8, 3)
    >>> read_page(LocalEngine(lake.path), "images", uri).shape
    (24, 32, 3)
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np
import pyarrow.compute as pc

from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeImgError, NotFoundError, SpecError
from lakeimg.image.decode import decode_image
from lakeimg.image.pyramid import assemble_region, downsample2, level_shape
from lakeimg.storage import read_bytes, to_uri
from lakeimg.tables import tiles_of

__all__ = ["read_region", "read_page", "image_record", "tiles_as_of"]

_META = ["uri", "content_sha256", "width", "height", "channels", "dtype", "pages", "tiled", "tile_size", "levels"]


def image_record(engine: LocalEngine, table: str, uri: str, version: VersionLike = None) -> dict[str, Any]:
    """The images row of `uri` (path or URI) without its content and thumbnail."""
    uri = to_uri(uri)
    rows = engine.read(table, version=version, columns=_META, filter=pc.field("uri") == uri).to_pylist()
    if not rows:
        raise NotFoundError(f"{uri} is not in {table}" + (f" at version {version}" if version is not None else ""))
    return rows[0]


def tiles_as_of(engine: LocalEngine, table: str, version: VersionLike):
    """The tiles table's version-like matching `version` of the images table."""
    if version is None or isinstance(version, (str, dt.datetime)):
        return version
    for entry in engine.history(table):
        if entry.get("version") == version and entry.get("timestamp") is not None:
            return dt.datetime.fromtimestamp(entry["timestamp"] / 1000.0, tz=dt.timezone.utc)
    raise LakeImgError(f"no commit time for {table} version {version}")


def read_region(
    engine: LocalEngine,
    table: str,
    uri: str,
    x: int,
    y: int,
    width: int,
    height: int,
    *,
    level: int = 0,
    page: int = 0,
    version: VersionLike = None,
) -> np.ndarray:
    """The exact pixels (HWC, native dtype) of a window of an image in `table`.

    Args:
        uri: the image's uri (a local path is turned into its file:// URI).
        x, y, width, height: the window in the pixel coordinates of `level`.
        level: pyramid level (0: full resolution; level n is 2**n times smaller, rounded up).
        page: TIFF page or DICOM frame.
        version: the images table's version (int) or timestamp; None for the latest.

    Raises:
        NotFoundError: the uri is not in the table (CLI exit code 5).
        SpecError: no such level or page, or a window outside the image (exit code 2).
    """
    row = image_record(engine, table, uri, version)
    uri = row["uri"]
    levels = row["levels"] if row["tiled"] else None
    _check_page(row, page)
    if level < 0 or (levels is not None and level >= levels):
        raise SpecError(f"{uri} has {levels} level(s); level {level} does not exist")
    if width <= 0 or height <= 0 or x < 0 or y < 0:
        raise SpecError(f"empty or negative window {x},{y} {width}x{height}")
    if not row["tiled"]:
        return _from_content(engine, table, row, x, y, width, height, level, page, version)

    if page == 0:
        level_h, level_w = level_shape(row["height"], row["width"], level)
        if x + width > level_w or y + height > level_h:
            raise SpecError(f"window {x},{y} {width}x{height} runs past the edge of {uri} ({level_w}x{level_h} at level {level})")
    ts = int(row["tile_size"])
    r0, r1 = y // ts, (y + height - 1) // ts
    c0, c1 = x // ts, (x + width - 1) // ts
    flt = (
        (pc.field("uri") == uri)
        & (pc.field("page") == page)
        & (pc.field("level") == level)
        & (pc.field("tile_row") >= r0)
        & (pc.field("tile_row") <= r1)
        & (pc.field("tile_col") >= c0)
        & (pc.field("tile_col") <= c1)
    )
    tiles = engine.read(tiles_of(table), version=tiles_as_of(engine, table, version), filter=flt)
    tiles = tiles.filter(pc.field("content_sha256") == row["content_sha256"]).to_pylist()
    if not tiles:
        raise LakeImgError(f"no tiles of {uri} page {page} level {level} cover {x},{y} {width}x{height}")
    past_edge = SpecError(f"window {x},{y} {width}x{height} runs past the edge of {uri} at level {level}")
    if len(tiles) < (r1 - r0 + 1) * (c1 - c0 + 1):
        raise past_edge
    if max(t["x"] + t["width"] for t in tiles) < x + width or max(t["y"] + t["height"] for t in tiles) < y + height:
        raise past_edge
    first = tiles[0]
    return assemble_region(tiles, x, y, width, height, channels=first["channels"], dtype=first["dtype"])


def read_page(engine: Any, table: str, uri: str, *, page: int = 0, version: VersionLike = None) -> np.ndarray:
    """A whole page (TIFF page, DICOM frame) of an untiled image at full resolution, HWC in
    its native dtype: a multi-page file's pages may each have their own size.

    Raises:
        SpecError: no such page, or the image is tiled (read it by windows: `read_region`).
    """
    row = image_record(engine, table, uri, version)
    _check_page(row, page)
    if row["tiled"]:
        raise SpecError(f"{row['uri']} is stored as tiles: read it by windows (read_region)")
    return _decoded(engine, table, row, page, version)


def _check_page(row: dict[str, Any], page: int) -> None:
    if page < 0 or page >= (row["pages"] or 1):
        raise SpecError(f"{row['uri']} has {row['pages'] or 1} page(s); page {page} does not exist")


def _decoded(engine, table, row, page, version) -> np.ndarray:
    data = engine.read(table, version=version, columns=["content"], filter=pc.field("uri") == row["uri"])["content"][0].as_py()
    if data is None:  # not inlined: the source file is the content (its hash is checked)
        data = read_bytes(row["uri"], getattr(engine, "options", None))  # a local file or an object
        if hashlib.sha256(data).hexdigest() != row["content_sha256"]:
            raise LakeImgError(f"{row['uri']} changed since it was ingested; re-ingest it to read it")
    return decode_image(data, row["uri"], page=page)


def _from_content(engine, table, row, x, y, width, height, level, page, version) -> np.ndarray:
    pixels = _decoded(engine, table, row, page, version)
    for _ in range(level):
        pixels = downsample2(pixels)
    h, w = pixels.shape[:2]
    if x + width > w or y + height > h:
        raise SpecError(f"window {x},{y} {width}x{height} runs past the edge of {row['uri']} ({w}x{h} at level {level})")
    return np.ascontiguousarray(pixels[y : y + height, x : x + width])
