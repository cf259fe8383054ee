"""The tiling step of ingest: cutting the tiles of huge files, committing `<table>_tiles`.

The ingest kernel marks a file `tiled` when it has more pixels than `tile_above_pixels` or more
bytes than the inline limit (it then streams the file's SHA-256 and reads only its header).
`tile_images` turns each such file into tiling tasks (one per page, or per share of a page's
tile rows with `rows_per_task`, see `lakeimg.kernels.tiles.plan_tile_tasks`) and stages them on
the engine (a process pool, or Spark executors), each task writing its tiles to one Parquet
file under `LAKE/_lakeimg/staging/<run_id>`; then it fills each row's thumbnail from its top
pyramid level. A file whose tiling fails becomes a reject row. `commit_tiles` moves the
staged files into the tiles table in one Delta commit that also drops every old tile of the
uris it replaces (changed, vanished or no longer tiled files): memory stays bounded however
big the image. The same code runs on both engines."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine.base import CommitResult, Engine, Stage, Write
from lakeimg.engine.layout import staging_location
from lakeimg.errors import ErrorClass
from lakeimg.image.codecs import decode_tile
from lakeimg.image.display import make_thumbnail
from lakeimg.image.sources import page_shapes
from lakeimg.kernels.ingest import ingest_result_schema
from lakeimg.kernels.rejects import reject_row
from lakeimg.kernels.tiles import (
    STAGED_SCHEMA,
    TILE_TASK_SCHEMA,
    TILES_PER_ROW_GROUP,
    TileOptions,
    file_budget_s,
    mark_file_failed,
    plan_tile_tasks,
    stage_tiles_kernel,
    top_tile,
)
from lakeimg.schemas import table_contract
from lakeimg.storage import open_source, remove_prefix, uri_to_path
from lakeimg.tables import tiles_of

__all__ = ["TilingResult", "commit_tiles", "previously_tiled", "tile_images"]


@dataclass
class TilingResult:
    """What `tile_images` produced: the images rows of the tiled files (thumbnails filled),
    the reject rows of files whose tiling failed, and the staged tile files."""

    image_rows: pa.Table
    rejects: pa.Table
    files: list[str] = field(default_factory=list)
    tiled_uris: list[str] = field(default_factory=list)
    staging: str | None = None

    def cleanup(self) -> None:
        """Remove the staged files (after the commit, or after a failed run)."""
        if self.staging:
            remove_prefix(self.staging)
            try:  # the shared staging folder goes too once no other run uses it
                os.rmdir(os.path.dirname(uri_to_path(self.staging)))
            except OSError:
                pass


def previously_tiled(engine: Engine, table: str) -> set[str]:
    """Uris whose rows in the images table say `tiled` (their tiles live in `<table>_tiles`)."""
    if not engine.exists(table):
        return set()
    rows = engine.read(table, columns=["uri", "tiled"])
    return set(rows.filter(pc.fill_null(rows["tiled"], False))["uri"].to_pylist())


def _thumbnail(staging: str, uri: str, mode: str | None, size: int) -> bytes | None:
    tile = top_tile(staging, uri, 0)
    if tile is None:
        return None
    arr = decode_tile(tile["data"], tile["encoding"], tile["height"], tile["width"], tile["channels"], tile["dtype"])
    return make_thumbnail(arr, size=size, invert=mode in ("MINISWHITE", "MONOCHROME1"))


def _plan(row: dict[str, Any], options: TileOptions, staging: str) -> list[dict[str, Any]]:
    # Only TIFF pages are read by windows; splitting any other format would decode it whole
    # in every share, so those get one task per page (decoded once, streamed out as tiles).
    split = options.rows_per_task if row.get("format") in (None, "TIFF") else 0
    shapes = None
    if split > 0:  # headers only: an object is read by ranges
        with open_source(row["uri"], dict(options.storage)) as handle:
            shapes = page_shapes(handle)
    pixels = sum(h * w for h, w in shapes) if shapes else row["height"] * row["width"] * (row["pages"] or 1)
    return plan_tile_tasks(
        row["uri"], row["content_sha256"], row["height"], row["width"],
        pages=row["pages"] or 1, tile_size=options.tile_size,
        rows_per_task=split, staging=staging, page_shapes=shapes,
        budget_s=file_budget_s(options.file_timeout_s, pixels),
    )


def _failed_task(task: dict[str, Any], error_class: str, message: str, *, staging: str) -> dict[str, Any]:
    """A task whose worker crashed or overran: its summary row; the file's other tasks stop."""
    mark_file_failed(staging, task["uri"])
    return {"uri": task["uri"], "page": task["page"], "from_level": task["from_level"],
            "error_class": error_class, "error_message": message}


def _progress_after(on_progress: Callable[[int, int], None], before: int, total: int, done: int, _: int) -> None:
    """A phase's progress (tiles it wrote) as the run's: after the `before` tiles of earlier phases."""
    on_progress(before + done, total)


def tile_images(
    engine: Engine,
    rows: pa.Table,
    options: TileOptions,
    *,
    thumbnail_size: int = 256,
    task_timeout_s: float = 6 * 3600.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> TilingResult:
    """Cut the tiles of the images rows `rows` (files the ingest kernel marked `tiled`) into
    staged Parquet on `engine`, and fill their thumbnails from the top level.

    Rows whose tiling fails leave the image rows and come back as reject rows.
    `on_progress(done, total)` counts tiles (every task's count is known from its page's shape
    before it runs); the tiles of a failed task count as done once its phase ends.
    """
    schema = ingest_result_schema()
    staging = staging_location(engine.lake, options.run_id or "run")
    result = TilingResult(rows.slice(0, 0), schema.empty_table(), staging=staging)
    if rows.num_rows == 0:
        return result
    tiled = rows.to_pylist()
    tasks: list[dict[str, Any]] = []
    failures: dict[str, tuple[str, str]] = {}
    for row in tiled:
        try:
            tasks += _plan(row, options, staging)
        except Exception as exc:  # noqa: BLE001 - one bad file becomes a reject
            failures[row["uri"]] = (ErrorClass.CORRUPT, f"{type(exc).__name__}: {exc}")

    budgets = [t["budget_s"] for t in tasks if t.get("budget_s")]
    if budgets:  # no task outlives its file's budget; this kills one stuck where no alarm reaches
        task_timeout_s = min(task_timeout_s, max(budgets) + 60.0)
    summaries: list[dict[str, Any]] = []
    planned = [t for t in tasks if t["uri"] not in failures]
    total, finished = sum(t["tiles"] for t in planned), 0  # tiles planned, tiles of the phases done
    # Shares and whole pages first; then the top tasks, which read the shares' staged tiles.
    for phase, first in (("shares", True), ("tops", False)):
        todo = [t for t in tasks if (t["from_level"] == 0) == first and t["uri"] not in failures]
        phase_tiles = sum(t["tiles"] for t in planned if (t["from_level"] == 0) == first)
        if not todo:
            finished += phase_tiles
            continue
        phase_progress = None if on_progress is None else partial(_progress_after, on_progress, finished, total)
        staged = engine.stage(Stage(
            partial(stage_tiles_kernel, options=options, staging=staging),
            pa.Table.from_pylist(todo, schema=TILE_TASK_SCHEMA),
            label=f"{options.run_id or 'run'}-{phase}", output_schema=STAGED_SCHEMA, rows_per_task=1,
            task_timeout_s=task_timeout_s, on_failure=partial(_failed_task, staging=staging),
            # a single top task (it only reads staged tiles) runs in this process: no pool for it
            workers=0 if not first and len(todo) == 1 else None,
            on_progress=phase_progress, progress_column="tiles",
        ))
        try:
            summaries += staged.keys(STAGED_SCHEMA.names).to_pylist() + staged.rejects().to_pylist()
        finally:
            staged.discard()
        for s in summaries:  # one reject per file: the error that stopped it, not its skipped tasks
            if s.get("error_class") and (s["uri"] not in failures or failures[s["uri"]][0] == ErrorClass.SKIPPED):
                failures[s["uri"]] = (s["error_class"], f"tiling failed: {s['error_message'] or 'tiling failed'}")
        finished += phase_tiles
        if on_progress is not None:
            on_progress(finished, total)

    kept, rejects = [], []
    for row in tiled:
        if row["uri"] not in failures:
            try:
                row = {**row, "thumbnail": _thumbnail(staging, row["uri"], row.get("mode"), thumbnail_size)}
                kept.append(row)
                continue
            except Exception as exc:  # noqa: BLE001
                failures[row["uri"]] = (ErrorClass.CORRUPT, f"thumbnail from the top level failed: {exc}")
        error_class, message = failures[row["uri"]]
        rejects.append(reject_row(row, error_class, message, run_id=options.run_id, at=options.ingested_at, sha=row["content_sha256"]))
    result.image_rows = pa.Table.from_pylist(kept, schema=rows.schema)
    result.rejects = pa.Table.from_pylist(rejects, schema=schema)
    result.tiled_uris = [row["uri"] for row in kept]
    result.files = [s["path"] for s in summaries if s.get("path") and s["uri"] not in failures]
    return result


def commit_tiles(
    engine: Engine,
    table: str,
    result: TilingResult | None,
    *,
    replace_uris: Iterable[str] = (),
    metadata: dict[str, Any] | None = None,
) -> CommitResult:
    """One commit to `<table>_tiles`: drop every tile of `replace_uris`, add the staged tile files.

    No tiles to write and none to drop: no commit (the table stays at its version).
    """
    files = tuple(result.files) if result is not None else ()
    uris = frozenset(replace_uris) | frozenset(result.tiled_uris if result is not None else ())
    # The staged files become the table's files as they are (renamed, not rewritten).
    return engine.commit(Write(tiles_of(table), table_contract("tiles"), files=files, replace=uris, metadata=metadata,
                               row_group_rows=TILES_PER_ROW_GROUP))
