"""The tiling step of ingest: which files are tiled, cutting their tiles, committing `<table>_tiles`.

The ingest kernel marks a file `tiled` when it has more pixels than `tile_above_pixels` or more
bytes than the inline limit (it then streams the file's SHA-256 and reads only its header).
`tile_images` turns each such file into tiling tasks (one per page, or per share of a page's
tile rows with `rows_per_task`, see `lakeimg.kernels.tiles.plan_tile_tasks`), runs them in the
engine's process pool, each task writing its tiles to one staged Parquet file under
`LAKE/_lakeimg/staging/<run_id>`, and fills each row's thumbnail from its top pyramid level.
`commit_tiles` then streams the staged files into the tiles table in one Delta commit that also
deletes every old tile of the uris it replaces (changed, vanished or no longer tiled files), so
memory stays bounded however big the image.

Example:
    >>> tiles_table_name("images")
    'images_tiles'
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine.local import LocalEngine, MergeResult
from lakeimg.image.codecs import decode_tile
from lakeimg.image.display import make_thumbnail
from lakeimg.image.pyramid import level_count
from lakeimg.image.sources import page_shapes
from lakeimg.kernels.tiles import (
    STAGED_SCHEMA,
    TILE_TASK_SCHEMA,
    TileOptions,
    file_budget_s,
    mark_file_failed,
    plan_tile_tasks,
    stage_tiles_kernel,
    top_tile,
)
from lakeimg.schemas import table_contract
from lakeimg.uris import uri_to_path

__all__ = [
    "SparkTiling",
    "TilingResult",
    "commit_tiles",
    "commit_tiles_spark",
    "previously_tiled",
    "tile_images",
    "tile_images_spark",
    "tiles_table_name",
]

# Tiles per Parquet row group in the tiles table: a region read skips the row groups whose
# (uri, level, tile_row) statistics miss the window.
TILE_ROW_GROUP = 16


def tiles_table_name(table: str) -> str:
    return f"{table}_tiles"


@dataclass
class TilingResult:
    """What `tile_images` produced: rows to commit, failures, staged tile files to stream in."""

    image_rows: pa.Table
    failures: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)  # (row, class, message)
    staged_files: list[str] = field(default_factory=list)
    staging: str | None = None
    tiled_uris: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        """Remove the staged files (after the commit, or after a failed run)."""
        if self.staging:
            shutil.rmtree(uri_to_path(self.staging), ignore_errors=True)
            try:  # the shared staging folder goes too once no other run uses it
                os.rmdir(os.path.dirname(uri_to_path(self.staging)))
            except OSError:
                pass


def previously_tiled(engine: LocalEngine, table: str) -> set[str]:
    """Uris whose rows in the images table say `tiled` (their tiles live in `<table>_tiles`)."""
    if not engine.exists(table):
        return set()
    if getattr(engine, "distributed", False):  # the Spark engine filters with SQL
        rows = engine.read(table, columns=["uri"], filter="tiled")
        return set(rows["uri"].to_pylist())
    rows = engine.read(table, columns=["uri", "tiled"], filter=pc.field("tiled") == True)  # noqa: E712
    return set(rows["uri"].to_pylist())


def _thumbnail(staging: str, uri: str, mode: str | None, size: int) -> bytes | None:
    tile = top_tile(staging, uri, 0)
    if tile is None:
        return None
    arr = decode_tile(tile["data"], tile["encoding"], tile["height"], tile["width"], tile["channels"], tile["dtype"])
    return make_thumbnail(arr, size=size, invert=mode in ("MINISWHITE", "MONOCHROME1"))


def _plan(row: dict[str, Any], options: TileOptions, staging: str | None) -> list[dict[str, Any]]:
    # Only TIFF pages are read by windows; splitting any other format would decode it whole
    # in every share, so those get one task per page (decoded once, streamed out as tiles).
    split = options.rows_per_task if row.get("format") in (None, "TIFF") else 0
    shapes = page_shapes(uri_to_path(row["uri"])) if split > 0 else None
    pixels = sum(h * w for h, w in shapes) if shapes else row["height"] * row["width"] * (row["pages"] or 1)
    return plan_tile_tasks(
        row["uri"], row["content_sha256"], row["height"], row["width"],
        pages=row["pages"] or 1, tile_size=options.tile_size,
        rows_per_task=split, staging=staging, page_shapes=shapes,
        budget_s=file_budget_s(options.file_timeout_s, pixels),
    )


def tile_images(
    engine: LocalEngine,
    lake: str,
    image_rows: pa.Table,
    options: TileOptions,
    *,
    workers: int,
    thumbnail_size: int = 256,
    task_timeout_s: float = 6 * 3600.0,
) -> TilingResult:
    """Cut the tiles of every `tiled` row of `image_rows` into staged Parquet; fill thumbnails.

    Rows whose tiling fails leave `image_rows` and come back in `failures` (they become rejects).
    """
    if "tiled" not in image_rows.column_names or image_rows.num_rows == 0:
        return TilingResult(image_rows)
    mask = pc.fill_null(image_rows["tiled"], False)
    tiled = image_rows.filter(mask).to_pylist()
    if not tiled:
        return TilingResult(image_rows)
    staging = os.path.join(lake, "_lakeimg", "staging", options.run_id or "run")
    tasks: list[dict[str, Any]] = []
    failures: list[tuple[dict[str, Any], str, str]] = []
    for row in tiled:
        try:
            tasks += _plan(row, options, staging)
        except Exception as exc:  # noqa: BLE001 - one bad file becomes a reject
            failures.append((row, "corrupt", f"{type(exc).__name__}: {exc}"))

    budgets = [t["budget_s"] for t in tasks if t.get("budget_s")]
    if budgets:  # no task outlives its file's budget; this kills one stuck where no alarm reaches
        task_timeout_s = min(task_timeout_s, max(budgets) + 60.0)
    summaries: list[dict[str, Any]] = []
    kernel = partial(stage_tiles_kernel, options=options, staging=staging)

    def failed(task: dict[str, Any], error_class: str, message: str) -> dict[str, Any]:
        mark_file_failed(staging, task["uri"])  # the file's other tasks stop instead of failing on
        return {"uri": task["uri"], "page": task["page"], "from_level": task["from_level"],
                "error_class": error_class, "error_message": message}

    # Shares and whole pages first; then the top tasks, which read the shares' staged tiles.
    for phase in (pc.equal, pc.greater):
        todo = pa.Table.from_pylist(tasks, schema=TILE_TASK_SCHEMA)
        todo = todo.filter(phase(todo["from_level"], 0))
        if todo.num_rows == 0:
            continue
        for batch in engine.map_kernel(
            # a single top task (it only reads staged tiles) runs here: no pool to spawn for it
            kernel, todo, workers=0 if phase is pc.greater and todo.num_rows == 1 else min(workers, todo.num_rows),
            batch_rows=1,
            task_timeout_s=task_timeout_s, on_failure=failed, output_schema=STAGED_SCHEMA,
        ):
            summaries += batch.to_pylist()
        if phase is pc.equal:  # a file whose share failed gets no top task
            bad = {s["uri"] for s in summaries if s.get("error_class")}
            tasks = [t for t in tasks if t["uri"] not in bad]

    errors: dict[str, tuple[str, str]] = {}
    for s in summaries:  # one reject per file: the error that stopped it, not its skipped tasks
        if s.get("error_class") and (s["uri"] not in errors or errors[s["uri"]][0] == "skipped"):
            errors[s["uri"]] = (s["error_class"], s["error_message"] or "tiling failed")
    by_uri = {row["uri"]: row for row in tiled}
    for uri, (error_class, message) in errors.items():
        failures.append((by_uri[uri], error_class, f"tiling failed: {message}"))
    failed_uris = {row["uri"] for row, _c, _m in failures}

    thumbnails: dict[str, bytes | None] = {}
    for row in tiled:
        if row["uri"] not in failed_uris:
            try:
                thumbnails[row["uri"]] = _thumbnail(staging, row["uri"], row.get("mode"), thumbnail_size)
            except Exception as exc:  # noqa: BLE001
                failures.append((row, "corrupt", f"thumbnail from the top level failed: {exc}"))
                failed_uris.add(row["uri"])

    keep = pc.invert(pc.is_in(image_rows["uri"], pa.array(sorted(failed_uris), pa.string())))
    kept = image_rows.filter(keep)
    if thumbnails:
        uris = kept["uri"].to_pylist()
        old = kept["thumbnail"].to_pylist()
        new = [thumbnails.get(u, t) for u, t in zip(uris, old, strict=True)]
        index = kept.column_names.index("thumbnail")
        kept = kept.set_column(index, kept.schema.field(index), pa.array(new, kept.schema.field(index).type))
    staged = [s["path"] for s in summaries if s.get("path") and s["uri"] not in failed_uris]
    return TilingResult(
        kept, failures, staged, staging, sorted(u for u in by_uri if u not in failed_uris)
    )


def commit_tiles(
    engine: LocalEngine,
    table: str,
    result: TilingResult | None,
    *,
    replace_uris: set[str] | list[str] = (),
    metadata: dict[str, Any] | None = None,
) -> MergeResult:
    """One commit to `<table>_tiles`: drop every tile of `replace_uris`, add the staged tile files.

    No tiles to write and none to drop: no commit (the table stays at its version).
    """
    name = tiles_table_name(table)
    files = result.staged_files if result is not None else []
    uris = sorted(set(replace_uris) | set(result.tiled_uris if result is not None else []))
    # The staged files become the table's files as they are (renamed, not rewritten).
    return engine.commit_files_by_uri(name, table_contract("tiles"), files, uris=uris, metadata=metadata)


# --- the Spark engine --------------------------------------------------------------------


@dataclass
class SparkTiling:
    """What `tile_images_spark` produced: tiles staged as Parquet by the executors."""

    staged: list[Any] = field(default_factory=list)  # the engine's StagedRows, one per phase
    thumbnails: dict[str, bytes | None] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # uri -> message
    tiled_uris: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        for staged in self.staged:
            staged.drop()


def tile_images_spark(engine, rows: list[dict[str, Any]], options: TileOptions, *, thumbnail_size: int = 256) -> SparkTiling:
    """Cut the tiles of `rows` (images rows marked tiled) on Spark executors, one task per share.

    A huge page is split by tile-row ranges (`options.rows_per_task`) into many Spark tasks,
    then one task per page builds the top levels from the staged level; tiles stay on the
    executors' side (staged Parquet under the lake) and never reach the driver.
    """
    from lakeimg.kernels.tiles import safe_tile_kernel, tiles_schema

    result = SparkTiling()
    if not rows:
        return result
    tasks: list[dict[str, Any]] = []
    for row in rows:
        try:
            tasks += _plan(row, options, None)
        except Exception as exc:  # noqa: BLE001
            result.failures[row["uri"]] = f"{type(exc).__name__}: {exc}"
    kernel = partial(safe_tile_kernel, options=options)
    first = [t for t in tasks if t["from_level"] == 0 and t["uri"] not in result.failures]
    if first:
        result.staged.append(engine.map_kernel_to_stage(
            kernel, pa.Table.from_pylist(first, schema=TILE_TASK_SCHEMA), output_schema=tiles_schema(), rows_per_task=1
        ))
        for r in result.staged[0].frame("level < 0").select("uri", "data").collect():
            result.failures.setdefault(r[0], bytes(r[1]).decode("utf-8", "replace"))
        top = [
            {**t, "staging": result.staged[0].location}
            for t in tasks if t["from_level"] > 0 and t["uri"] not in result.failures
        ]
        if top:
            result.staged.append(engine.map_kernel_to_stage(
                kernel, pa.Table.from_pylist(top, schema=TILE_TASK_SCHEMA), output_schema=tiles_schema(), rows_per_task=1
            ))
            for r in result.staged[1].frame("level < 0").select("uri", "data").collect():
                result.failures.setdefault(r[0], bytes(r[1]).decode("utf-8", "replace"))
    for row in rows:
        uri = row["uri"]
        if uri in result.failures:
            continue
        top_level = level_count(row["height"], row["width"], options.tile_size) - 1
        quoted = uri.replace("\\", "\\\\").replace("'", "\\'")
        found = None
        for staged in result.staged:
            hits = staged.frame(f"uri = '{quoted}' AND page = 0 AND level = {top_level}").limit(1).collect()
            if hits:
                found = hits[0].asDict()
                break
        if found is None:
            result.failures[uri] = "no top-level tile was produced"
            continue
        arr = decode_tile(bytes(found["data"]), found["encoding"], found["height"], found["width"], found["channels"], found["dtype"])
        mode = row.get("mode")
        result.thumbnails[uri] = make_thumbnail(arr, size=thumbnail_size, invert=mode in ("MINISWHITE", "MONOCHROME1"))
        result.tiled_uris.append(uri)
    return result


def commit_tiles_spark(
    engine,
    table: str,
    result: SparkTiling | None,
    *,
    replace_uris: set[str] | list[str] = (),
    metadata: dict[str, Any] | None = None,
) -> MergeResult:
    """One Delta commit (replaceWhere) to `<table>_tiles`: old tiles of `replace_uris` out, new in."""
    contract = table_contract("tiles")
    frame = None
    uris = sorted(set(replace_uris) | set(result.tiled_uris if result is not None else []))
    if result is not None and result.tiled_uris:
        keep = ", ".join("'" + u.replace("\\", "\\\\").replace("'", "\\'") + "'" for u in result.tiled_uris)
        for staged in result.staged:
            part = staged.conform(contract, where=f"level >= 0 AND uri IN ({keep})")
            frame = part if frame is None else frame.unionByName(part)
    return engine.replace_by_uri(tiles_table_name(table), contract, frame, uris=uris, metadata=metadata)
