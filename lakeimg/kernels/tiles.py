"""The tiles kernel: tiling tasks in, tile rows out, as Arrow batches (Spark's mapInArrow shape).

A task is one page of one huge image, or a share of it: level-0 tile rows [row_start, row_end)
with the levels that lie wholly inside them (`max_level`). A "top" task (`from_level` > 0)
reads the finished tiles of level `from_level` back from `staging` (Parquet written by the
share tasks) and builds the levels above it, so one huge image spreads over many tasks without
any task holding the whole image (see `plan_tile_tasks`).

`stage_tiles_kernel` writes each task's tiles (rows of `schemas/tiles.v1.json`) to one Parquet
file under the run's staging and emits a small summary row (or the error that stopped the
task), so tile bytes never travel between processes, on either engine.

Example:
    >>> import tempfile, os, numpy as np, tifffile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.tif"); tifffile.imwrite(p, np.zeros((300, 200), np.uint8))
    >>> tasks = pa.RecordBatch.from_pylist(plan_tile_tasks(p, "sha", 300, 200, pages=1, tile_size=128), schema=TILE_TASK_SCHEMA)
    >>> [b["tiles"][0].as_py() for b in stage_tiles_kernel(iter([tasks]), TileOptions(tile_size=128), tempfile.mkdtemp())]
    [9]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lakeimg.errors import ErrorClass
from lakeimg.image._settings import decoder_settings
from lakeimg.image.codecs import DEFAULT_TILE_ENCODING, encode_tile
from lakeimg.image.pyramid import (
    DEFAULT_TILE_SIZE,
    ArraySource,
    assemble_region,
    iter_tiles,
    level_count,
    tile_count,
    tile_geotransform,
)
from lakeimg.image.sources import open_image
from lakeimg.kernels._batches import batch_rows
from lakeimg.schemas import table_contract
from lakeimg.storage import (
    TimeLimitExceeded,
    open_output,
    open_source,
    remove_prefix,
    time_limit,
    uri_to_path,
)

__all__ = [
    "STAGED_SCHEMA",
    "TILES_PER_ROW_GROUP",
    "TILE_TASK_SCHEMA",
    "TileOptions",
    "file_budget_s",
    "mark_file_failed",
    "plan_tile_tasks",
    "stage_tiles_kernel",
    "tiles_schema",
]

TILE_TASK_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("content_sha256", pa.string()),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("row_start", pa.int32(), nullable=False),
        pa.field("row_end", pa.int32(), nullable=False),  # level-0 tile rows; exclusive
        pa.field("max_level", pa.int32(), nullable=False),  # -1: every level
        pa.field("from_level", pa.int32(), nullable=False),  # > 0: a top task built from staging
        pa.field("staging", pa.string()),
        # Seconds all tasks of this file may take together, from its first task's start (see
        # `file_budget_s`); null or <= 0: no budget.
        pa.field("budget_s", pa.float64()),
        pa.field("tiles", pa.int64()),  # how many tiles the task emits (progress counts them)
    ]
)

STAGED_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("page", pa.int32(), nullable=False),
        pa.field("from_level", pa.int32(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("tiles", pa.int64()),
        pa.field("data_bytes", pa.int64()),
        pa.field("error_class", pa.string()),
        pa.field("error_message", pa.string()),
    ]
)

_BATCH_BYTES = 8 << 20  # encoded tiles waiting per output batch: bounds a worker's memory
# Tiles per Parquet row group, for readers that want one tile (deep zoom) or a window
# (read_region): a row group is the smallest unit Parquet reads, and a 512-pixel tile is about
# 250 KB, so 4 tiles read in about half a millisecond (16: about 2 ms). Fewer rows per group
# cost footer bytes (about 2 KB a group) for no gain in read time.
TILES_PER_ROW_GROUP = 4


@dataclass(frozen=True)
class TileOptions:
    """Settings of a tiling run (picklable: shipped to workers and executors).

    Attributes:
        tile_size: tile edge in pixels; overlap: extra pixels stored on each side of a tile.
        encoding: tile codec (see `lakeimg.image.codecs.TILE_ENCODINGS`).
        rows_per_task: split a page into tasks of this many level-0 tile rows (0: one task
            per page). Rounded up to a power of two so every level's rows align.
        file_timeout_s: the time budget of one file's tiling (every task of it together) per
            started gigapixel (see `file_budget_s`); 0: none.
    """

    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = 0
    encoding: str = DEFAULT_TILE_ENCODING
    rows_per_task: int = 8
    run_id: str = ""
    ingested_at: dt.datetime | None = None
    file_timeout_s: float = 0.0
    # Object-store settings for reading sources (`lakeimg.storage.normalized_storage_options`),
    # as pairs; never printed (repr=False) and never recorded.
    storage: tuple[tuple[str, str], ...] = field(default=(), repr=False)


# Pixels one `file_timeout_s` pays for when tiling. Tiling runs at 20-100 megapixels/s per
# worker (decode, pyramid, zstd), so a gigapixel takes 10-50 s: the default 120 s per started
# gigapixel leaves a genuine slide (at most 2**34 pixels, `max_tiled_pixels`) room to spare on a
# slow disk, while a file whose tasks stall or fail stops within that bound instead of holding
# the run for hours.
_BUDGET_PIXELS = 1_000_000_000


def file_budget_s(file_timeout_s: float, pixels: int) -> float:
    """The time budget of tiling one file: `file_timeout_s` per started gigapixel (0: none).

    Example:
        >>> file_budget_s(120.0, 2_500_000_000), file_budget_s(120.0, 1000)
        (360.0, 120.0)
    """
    if file_timeout_s <= 0:
        return 0.0
    return float(file_timeout_s) * max(1, math.ceil(pixels / _BUDGET_PIXELS))


def _marker(staging: str | None, uri: str, kind: str) -> str | None:
    if not staging:
        return None
    name = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return os.path.join(uri_to_path(staging), ".files", f"{name}.{kind}")


def mark_file_failed(staging: str | None, uri: str) -> None:
    """Tell the file's other tiling tasks to stop: one failure rejects the whole file."""
    path = _marker(staging, uri, "failed")
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass


def _file_failed(staging: str | None, uri: str) -> bool:
    path = _marker(staging, uri, "failed")
    return path is not None and os.path.exists(path)


def _file_started(staging: str | None, uri: str) -> float:
    """When the file's first tiling task started (shared through the staging folder: the first
    task creates the clock file, the others read its time); this task's start without staging."""
    now = time.time()
    path = _marker(staging, uri, "clock")
    if path is None:
        return now
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        return now
    except FileExistsError:
        return min(now, os.stat(path).st_mtime)


class _BudgetSpent(Exception):
    """The file's tiling ran out of time, or another of its tasks failed."""

    def __init__(self, error_class: ErrorClass, message: str):
        super().__init__(message)
        self.error_class, self.message = error_class, message


def tiles_schema() -> pa.Schema:
    """The tiles table's Arrow schema (from schemas/tiles.v1.json)."""
    return table_contract("tiles").arrow_schema


def plan_tile_tasks(
    uri: str,
    sha: str | None,
    height: int,
    width: int,
    *,
    pages: int,
    tile_size: int,
    rows_per_task: int = 0,
    staging: str | None = None,
    page_shapes: list[tuple[int, int]] | None = None,
    budget_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Task rows (TILE_TASK_SCHEMA) for one file: per page, one task or shares plus a top task.

    With `rows_per_task` = R > 0 and more than R level-0 tile rows, a page becomes shares of
    2**m >= R tile rows that emit levels 0..m, and one top task that builds levels above m
    from staged level-m tiles (`staging` names where the shares' Parquet files land). Each
    task counts the tiles it will emit (`tiles`), from the page's shape alone.

    Example:
        >>> [(t["row_start"], t["row_end"], t["max_level"], t["from_level"], t["tiles"]) for t in
        ...  plan_tile_tasks("a", None, 3000, 2000, pages=1, tile_size=256, rows_per_task=4, staging="s")]
        [(0, 4, 2, 0, 42), (4, 8, 2, 0, 42), (8, 12, 2, 0, 42), (0, 0, -1, 2, 3)]
    """
    tasks = []
    for page in range(pages):
        h, w = page_shapes[page] if page_shapes else (height, width)
        rows = math.ceil(h / tile_size)
        levels = level_count(h, w, tile_size)
        base = {"uri": uri, "content_sha256": sha, "page": page, "staging": staging, "budget_s": budget_s}
        if rows_per_task <= 0 or rows <= rows_per_task or levels <= 1:
            tasks.append({**base, "row_start": 0, "row_end": rows, "max_level": -1, "from_level": 0,
                          "tiles": tile_count(h, w, tile_size)})
            continue
        # At least level 1 in the shares: the top task is told apart by from_level > 0.
        m = min(levels - 1, max(1, math.ceil(math.log2(rows_per_task))))
        share = 2**m
        for start in range(0, rows, share):
            end = min(rows, start + share)
            tasks.append({**base, "row_start": start, "row_end": end, "max_level": m, "from_level": 0,
                          "tiles": tile_count(h, w, tile_size, rows=(start, end), max_level=m)})
        if m < levels - 1:
            tasks.append({**base, "row_start": 0, "row_end": 0, "max_level": -1, "from_level": m,
                          "tiles": tile_count(h, w, tile_size, min_level=m + 1)})
    return tasks


def _tile_row(task: dict[str, Any], tile, level: int, geotransform, options: TileOptions, now) -> dict[str, Any]:
    data, used = encode_tile(tile.pixels, options.encoding)
    return {
        "uri": task["uri"],
        "content_sha256": task["content_sha256"] or "",
        "page": task["page"],
        "level": level,
        "tile_row": tile.tile_row,
        "tile_col": tile.tile_col,
        "x": tile.x,
        "y": tile.y,
        "width": tile.width,
        "height": tile.height,
        "channels": int(tile.pixels.shape[2]),
        "dtype": str(tile.pixels.dtype),
        "encoding": used,
        "data": data,
        "overlap": options.overlap,
        "geotransform": geotransform,
        "run_id": options.run_id,
        "ingested_at": now,
    }


def _staged_level(task: dict[str, Any], level: int) -> tuple[np.ndarray, list[float] | None, int, int]:
    """Rebuild one finished level of a page from its staged tiles (a top task's input)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(uri_to_path(task["staging"]), format="parquet")
    flt = (ds.field("uri") == task["uri"]) & (ds.field("page") == task["page"]) & (ds.field("level") == level)
    rows = dataset.to_table(filter=flt).to_pylist()
    if not rows:
        raise ValueError(f"no staged level-{level} tiles for {task['uri']} page {task['page']}")
    width = max(r["x"] + r["width"] for r in rows)
    height = max(r["y"] + r["height"] for r in rows)
    first = min(rows, key=lambda r: (r["y"], r["x"]))
    arr = assemble_region(rows, 0, 0, width, height, channels=first["channels"], dtype=first["dtype"])
    gt = first["geotransform"]
    if gt is not None:  # back to the level-0 transform the tiles' transforms derive from
        scale = float(2**level)
        gt = [gt[0], gt[1] / scale, gt[2] / scale, gt[3], gt[4] / scale, gt[5] / scale]
    return arr, gt, height, width


def _task_tiles(task: dict[str, Any], options: TileOptions) -> Iterator[tuple[Any, int, Any]]:
    """(tile, true level, geotransform) for one task."""
    from_level = task["from_level"]
    if from_level > 0:
        arr, gt, _h, _w = _staged_level(task, from_level)
        for tile in iter_tiles(ArraySource(arr), tile_size=options.tile_size, overlap=options.overlap, page=task["page"]):
            if tile.level == 0:
                continue  # level `from_level` itself is already staged
            level = tile.level + from_level
            yield tile, level, tile_geotransform(gt, tile.x, tile.y, level)
        return
    # A source object is read by ranges (the header, then the segments each band touches).
    with open_source(task["uri"], dict(options.storage)) as handle, open_image(handle, task["uri"]) as img:
        source = img.page(task["page"])
        max_level = None if task["max_level"] < 0 else task["max_level"]
        for tile in iter_tiles(
            source,
            tile_size=options.tile_size,
            overlap=options.overlap,
            page=task["page"],
            rows=(task["row_start"], task["row_end"]),
            max_level=max_level,
        ):
            yield tile, tile.level, tile.geotransform


class _TaskGuard:
    """Stops a task once its file's time budget is spent or another task of the file failed."""

    def __init__(self, task: dict[str, Any], staging: str | None):
        self.uri, self.staging = task["uri"], staging
        budget = task.get("budget_s") or 0.0
        self.budget = budget
        self.deadline = _file_started(staging, self.uri) + budget if budget > 0 else math.inf

    def remaining(self) -> float:
        return self.deadline - time.time()

    def check(self) -> None:
        if _file_failed(self.staging, self.uri):
            raise _BudgetSpent(ErrorClass.SKIPPED, "another tiling task of this file failed")
        if time.time() > self.deadline:
            raise _BudgetSpent(
                ErrorClass.TIMEOUT,
                f"tiling this file took longer than its budget of {self.budget:g} s (--file-timeout per started gigapixel)",
            )


def _task_batches(
    task: dict[str, Any], options: TileOptions, schema: pa.Schema, guard: _TaskGuard | None = None
) -> Iterator[pa.RecordBatch]:
    now = options.ingested_at or dt.datetime.now(dt.timezone.utc)

    def rows() -> Iterator[dict[str, Any]]:
        for tile, level, gt in _task_tiles(task, options):
            if guard is not None:
                guard.check()  # between tiles: a stat() per tile, against milliseconds of decoding
            yield _tile_row(task, tile, level, gt, options, now)

    yield from batch_rows(rows(), schema, max_bytes=_BATCH_BYTES, size=lambda row: len(row["data"]))


def stage_tiles_kernel(batches: Iterator[pa.RecordBatch], options: TileOptions, staging: str) -> Iterator[pa.RecordBatch]:
    """Like `tile_kernel`, but each task's tiles go to one Parquet file under `staging`; emits
    one STAGED_SCHEMA row per task (path, counts, or the error that stopped it)."""
    schema = tiles_schema()
    os.makedirs(uri_to_path(staging), exist_ok=True)
    for batch in batches:
        for task in batch.to_pylist():
            name = f"part-{uuid.uuid4().hex}.parquet"
            path = os.path.join(uri_to_path(staging), name)
            # Written under a hidden name, renamed when whole: a top task listing the folder
            # meanwhile (pyarrow skips "."-names) never sees a half-written file.
            partial = os.path.join(uri_to_path(staging), f".{name}.tmp")
            tiles = size = 0
            summary = {"uri": task["uri"], "page": task["page"], "from_level": task["from_level"]}
            try:
                with decoder_settings():
                    guard = _TaskGuard(task, staging)
                    guard.check()
                    left = guard.remaining()
                    # The alarm stops Python-level work at the deadline; between tiles the guard does.
                    with time_limit(0 if left == math.inf else max(left, 0.001)):
                        tiles, size = _write_task(task, options, schema, guard, partial)
                os.replace(partial, path)
                summary.update(path=path, tiles=tiles, data_bytes=size)
            except (_BudgetSpent, TimeLimitExceeded) as exc:
                remove_prefix(partial)
                if not isinstance(exc, _BudgetSpent):
                    exc = _BudgetSpent(ErrorClass.TIMEOUT, f"tiling this file took longer than its budget of {guard.budget:g} s")
                if exc.error_class != ErrorClass.SKIPPED:
                    mark_file_failed(staging, task["uri"])
                summary.update(error_class=exc.error_class, error_message=exc.message)
            except Exception as exc:  # noqa: BLE001 - one bad file becomes a reject, not a failed run
                remove_prefix(partial)
                mark_file_failed(staging, task["uri"])
                summary.update(
                    error_class=ErrorClass.CORRUPT,
                    error_message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[:2000],
                )
            yield pa.RecordBatch.from_pylist([summary], schema=STAGED_SCHEMA)


def _write_task(task: dict[str, Any], options: TileOptions, schema: pa.Schema, guard: _TaskGuard, partial: str) -> tuple[int, int]:
    """One task's tiles into one Parquet file at `partial`; (tiles, tile bytes) written."""
    tiles = size = 0
    # Small row groups (TILES_PER_ROW_GROUP): region and tile reads skip every row group whose
    # statistics miss, and read little from the one that holds their tile.
    codecs = {f.name: "none" if f.name == "data" else "snappy" for f in schema}  # tiles are compressed already
    small = [f.name for f in schema if f.name != "data"]
    # No dictionary, statistics or compression on the tile bytes: all three would
    # hash, copy or squeeze ~1 MB values for nothing (and stats would bloat footers).
    with open_output(partial) as sink, pq.ParquetWriter(sink, schema, compression=codecs, use_dictionary=small,
                                                        write_statistics=small) as writer:
        for out in _task_batches(task, options, schema, guard):
            writer.write_batch(out, row_group_size=TILES_PER_ROW_GROUP)
            tiles += out.num_rows
            size += out["data"].nbytes
            del out
            pa.default_memory_pool().release_unused()  # mimalloc keeps freed pages otherwise
    return tiles, size


def top_tile(staging: str, uri: str, page: int = 0) -> dict[str, Any] | None:
    """The single tile of a page's top level from staged Parquet (for the thumbnail)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(uri_to_path(staging), format="parquet")
    flt = (ds.field("uri") == uri) & (ds.field("page") == page)
    levels = dataset.to_table(columns=["level"], filter=flt)["level"]
    if len(levels) == 0:
        return None
    import pyarrow.compute as pc

    top = pc.max(levels).as_py()
    rows = dataset.to_table(filter=flt & (ds.field("level") == top)).to_pylist()
    return rows[0] if rows else None
