"""The ingest job on the Spark engine: same plan, same rules, decoding on the executors.

The listing and the plan (which files changed) happen on the driver: they are just paths and
stat results. The files to read go out as a small DataFrame, are repartitioned, and every
executor runs the same `ingest_kernel` as the embedded engine through `mapInArrow`, opening
files by path. Results are staged as Parquet under the lake and MERGEd into images and rejects
from there with delta-spark; only uris and outcomes come back to the driver. The commit rules,
counts, runs row and commit metadata are those of `lakeimg.jobs.ingest`.

Example:
    >>> from lakeimg.engine import open_engine
    >>> eng = open_engine("/tmp/lake", "spark", spark=spark)  # doctest: +SKIP
    >>> ingest_files_spark("/tmp/lake", ["/data/photos"], engine=eng).added  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyarrow as pa

from lakeimg.catalog.runs import RUNS_TABLE, RunRecord, new_run_id, utc_now
from lakeimg.engine.local import MergeResult, ensure_lake
from lakeimg.jobs.listing import list_sources, source_scope, to_uri
from lakeimg.jobs.tiling import previously_tiled
from lakeimg.kernels.ingest import IngestOptions, ingest_kernel, ingest_result_schema
from lakeimg.schemas import table_contract

__all__ = ["ingest_files_spark"]


def ingest_files_spark(
    lake: str | os.PathLike[str],
    sources: Sequence[str],
    *,
    engine,
    table: str = "images",
    label_from_path: str | None = None,
    inline_max_bytes: int = 16 << 20,
    max_pixels: int | None = None,
    file_timeout_s: float = 120.0,
    sync_deletes: bool = False,
    codecs: Sequence[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    tile_rows_per_task: int = 0,
    **extra_spec: Any,
):
    """`lakeimg.jobs.ingest.ingest_files` on a `SparkEngine`; returns the same `IngestSummary`.

    `workers` is ignored (Spark's executors are the workers). `extra_spec` holds options of the
    embedded job that go into the run's spec unchanged (the tiling settings: tile_above_pixels,
    tile_size, tile_overlap, tile_encoding); huge files are tiled on the executors.

    Example:
        >>> ingest_files_spark("/tmp/lake", ["/data"], engine=spark_engine)  # doctest: +SKIP
    """
    from lakeimg.jobs.ingest import IngestSummary, _keys, plan_ingest, rejects_table_name

    started = time.monotonic()
    started_at = utc_now()
    lake = str(lake)
    ensure_lake(lake)
    rejects_name = rejects_table_name(table)
    run_id = new_run_id()

    listing = list_sources(sources, exclude=[lake], label_from_path=label_from_path)
    images_keys, rejects_keys = _keys(engine, table), _keys(engine, rejects_name)
    todo = plan_ingest(listing, images_keys, rejects_keys)

    vanished_images: list[str] = []
    vanished_rejects: list[str] = []
    if sync_deletes:
        scope = source_scope(sources)
        listed = set(listing["uri"].to_pylist())
        vanished_images = [u for u in images_keys["uri"].to_pylist() if u not in listed and scope.covers(u)]
        vanished_rejects = [u for u in rejects_keys["uri"].to_pylist() if u not in listed and scope.covers(u)]

    options = IngestOptions(
        run_id=run_id,
        inline_max_bytes=inline_max_bytes,
        max_pixels=max_pixels if max_pixels is not None else IngestOptions.max_pixels,
        file_timeout_s=file_timeout_s,
        codecs=tuple(codecs),
        ingested_at=started_at,
    )
    tile_settings = {k: extra_spec[k] for k in ("tile_above_pixels", "tile_size") if k in extra_spec}
    if tile_settings:  # the kernel decides what is huge exactly as on the embedded engine
        options = dataclasses.replace(options, **tile_settings)

    staged = None
    if todo.num_rows:
        staged = engine.map_kernel_to_stage(
            partial(ingest_kernel, options=options), todo, output_schema=ingest_result_schema()
        )
    tiling = None
    try:
        outcomes = staged.frame().select("uri", "outcome").collect() if staged is not None else []
        if on_progress:
            on_progress(len(outcomes), todo.num_rows)
        image_uris = [r[0] for r in outcomes if r[1] == "image"]
        reject_uris = [r[0] for r in outcomes if r[1] == "reject"]
        image_rows = staged.conform(table_contract("images"), where="outcome = 'image'") if image_uris else None
        reject_rows = (
            staged.conform(table_contract("rejects"), where="outcome = 'reject'", renames={"rejected_at": "ingested_at"})
            if reject_uris
            else None
        )

        # Huge files (the kernel marked them `tiled`): tiles cut on the executors, as on the
        # embedded engine; a file whose tiling fails becomes a reject.
        if image_uris and "tiled" in staged.frame().columns:
            huge = [r.asDict() for r in staged.frame("outcome = 'image' AND tiled").select(*_TILED_COLUMNS).collect()]
            if huge:
                tiling, image_rows, failed_rows = _tile_on_spark(
                    engine, huge, image_rows, run_id=run_id, started_at=started_at, options=options,
                    tile_rows_per_task=tile_rows_per_task, extra_spec=extra_spec,
                )
                if failed_rows is not None:
                    failed = set(tiling.failures)
                    image_uris = [u for u in image_uris if u not in failed]
                    reject_uris += sorted(failed)
                    failed_frame = engine._frame_of(failed_rows, table_contract("rejects"))
                    reject_rows = failed_frame if reject_rows is None else reject_rows.unionByName(failed_frame)
                    if not image_uris:
                        image_rows = None

        in_images = set(images_keys["uri"].to_pylist())
        in_rejects = set(rejects_keys["uri"].to_pylist())
        images_delete = vanished_images + [u for u in reject_uris if u in in_images]
        rejects_delete = vanished_rejects + [u for u in image_uris if u in in_rejects]
        # Old tiles go when their file changed, vanished or failed; new ones come from `tiling`.
        was_tiled = previously_tiled(engine, table) if engine.exists(table) else set()
        tiles_replace = was_tiled & (set(todo["uri"].to_pylist()) | set(vanished_images))

        spec = {
            "sources": [to_uri(s) for s in sources],
            "table": table,
            "label_from_path": label_from_path,
            "inline_max_bytes": inline_max_bytes,
            "max_pixels": options.max_pixels,
            "sync_deletes": sync_deletes,
            "codecs": list(codecs),
            **extra_spec,
        }
        record = RunRecord(
            run_id=run_id,
            job="ingest",
            engine=engine.name,
            target_table=table,
            spec=spec,
            started_at=started_at,
            sources=[to_uri(s) for s in sources],
        )
        images_result, rejects_result = commit_ingest_spark(
            engine,
            table,
            image_rows=image_rows,
            reject_rows=reject_rows,
            rejected=len(reject_uris),
            images_delete=images_delete,
            rejects_delete=rejects_delete,
            record=record,
            unchanged=listing.num_rows - todo.num_rows,
            deleted=len(vanished_images) + len(vanished_rejects),
            tiling=tiling,
            tiles_replace=tiles_replace,
        )
    finally:
        if tiling is not None:
            tiling.cleanup()
        if staged is not None:
            staged.drop()
    return IngestSummary(
        run_id=run_id,
        table=table,
        version=images_result.version,
        added=images_result.inserted,
        updated=images_result.updated,
        unchanged=listing.num_rows - todo.num_rows,
        deleted=len(vanished_images) + len(vanished_rejects),
        rejected=len(reject_uris),
        seconds=round(time.monotonic() - started, 3),
        rejects_version=rejects_result.version,
    )


_TILED_COLUMNS = ("uri", "content_sha256", "size_bytes", "modified_at", "label", "height", "width", "pages", "mode")


def _tile_on_spark(engine, huge, image_rows, *, run_id, started_at, options, tile_rows_per_task, extra_spec):
    """Cut tiles of the `huge` rows on the executors; returns (tiling, image rows with the tiled
    files' thumbnails and without failed files, reject rows of failed files or None)."""
    from pyspark.sql import functions as F

    from lakeimg.errors import ImageDecodeError
    from lakeimg.jobs.tiling import tile_images_spark
    from lakeimg.kernels.ingest import reject_row
    from lakeimg.kernels.tiles import TileOptions

    tile_options = TileOptions(
        **{k: v for k, v in (("tile_size", extra_spec.get("tile_size")), ("overlap", extra_spec.get("tile_overlap")),
                             ("encoding", extra_spec.get("tile_encoding"))) if v is not None},
        rows_per_task=tile_rows_per_task, run_id=run_id, ingested_at=started_at,
    )
    tiling = tile_images_spark(engine, huge, tile_options, thumbnail_size=options.thumbnail_size)
    spark = engine.spark
    if tiling.thumbnails:
        thumbs = spark.createDataFrame(
            [(u, t) for u, t in tiling.thumbnails.items()], "uri string, _new_thumbnail binary"
        )
        image_rows = (
            image_rows.join(thumbs, "uri", "left")
            .withColumn("thumbnail", F.coalesce(F.col("_new_thumbnail"), F.col("thumbnail")))
            .drop("_new_thumbnail")
        )
    failed_rows = None
    if tiling.failures:
        image_rows = image_rows.where(~F.col("uri").isin(sorted(tiling.failures)))
        by_uri = {row["uri"]: row for row in huge}
        rows = []
        for uri, message in sorted(tiling.failures.items()):
            row = reject_row(by_uri[uri], ImageDecodeError(uri, "corrupt", f"tiling failed: {message}"),
                             by_uri[uri]["content_sha256"], options)
            row["rejected_at"] = row.pop("ingested_at")
            rows.append(row)
        contract = table_contract("rejects")
        failed_rows = pa.Table.from_pylist(
            [{c: r.get(c) for c in contract.column_names} for r in rows],
            schema=pa.schema([f.with_nullable(True) for f in contract.arrow_schema]),
        )
    return tiling, image_rows, failed_rows


def commit_ingest_spark(
    engine,
    table: str,
    *,
    image_rows,
    reject_rows,
    rejected: int,
    images_delete: list[str],
    rejects_delete: list[str],
    record: RunRecord,
    unchanged: int = 0,
    deleted: int = 0,
    tiling=None,
    tiles_replace: set[str] = frozenset(),
) -> tuple[MergeResult, MergeResult]:
    """MERGE staged results into images and rejects, append the runs row; undo on failure.

    The same steps and rules as `lakeimg.jobs.ingest.commit_ingest` (tiles first, then images,
    rejects, the runs row), reading the rows to upsert from staged Parquet (DataFrames)
    instead of driver memory.
    """
    from lakeimg.jobs.ingest import rejects_table_name
    from lakeimg.jobs.tiling import commit_tiles_spark, tiles_table_name

    rejects_name = rejects_table_name(table)
    tiles_name = tiles_table_name(table)
    images_contract, rejects_contract = table_contract("images"), table_contract("rejects")
    before = {name: engine.version(name) for name in (table, rejects_name, tiles_name)}
    metadata = record.commit_metadata()
    committed: list[str] = []
    try:
        tiles_result = MergeResult(before[tiles_name])
        if tiling is not None or tiles_replace:
            tiles_result = commit_tiles_spark(engine, table, tiling, replace_uris=tiles_replace, metadata=metadata)
            if tiles_result.committed:
                committed.append(tiles_name)
        images_result = engine.merge_by_key(
            table, images_contract, upserts=image_rows, delete_keys=images_delete, metadata=metadata
        )
        if images_result.committed:
            committed.append(table)
        rejects_result = engine.merge_by_key(
            rejects_name, rejects_contract, upserts=reject_rows, delete_keys=rejects_delete, metadata=metadata
        )
        if rejects_result.committed:
            committed.append(rejects_name)
        if rejects_result.version is None and images_result.version is not None:
            # Create the (empty) rejects table with the first images commit so SQL can name it.
            engine.create_empty(rejects_name, rejects_contract, metadata)
            committed.append(rejects_name)
            rejects_result = dataclasses.replace(rejects_result, version=engine.version(rejects_name))
        record.status = "succeeded"
        record.target_version = images_result.version
        record.outputs = [
            {"table": table, "version": images_result.version},
            {"table": rejects_name, "version": rejects_result.version},
        ]
        if tiles_result.version is not None:
            record.outputs.append({"table": tiles_name, "version": tiles_result.version})
        record.finished_at = utc_now()
        record.counts = {
            "added": images_result.inserted,
            "updated": images_result.updated,
            "unchanged": unchanged,
            "deleted": deleted,
            "rejected": rejected,
        }
        engine.append(RUNS_TABLE, record.to_arrow(), table_contract("runs"), metadata)
    except BaseException:
        for name in reversed(committed):
            engine.restore(name, before[name])
        raise
    return images_result, rejects_result
