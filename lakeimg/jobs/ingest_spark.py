"""The ingest job's decoding on the Spark engine: the same kernel, run on the executors.

The listing and the plan (which files changed) happen on the driver, as on the embedded engine
(`lakeimg.jobs.ingest.plan_run`): they are just paths and stat results. The files to read go
out as a small DataFrame, are repartitioned, and every executor runs the same `ingest_kernel`
through `mapInArrow`, opening files by path; huge files are tiled on the executors too. Results
are staged as Parquet under the lake and MERGEd from there by `lakeimg.jobs.ingest.commit_ingest`
with delta-spark; only uris and outcomes come back to the driver.

Example:
    >>> from lakeimg import ingest_files
    >>> from lakeimg.engine import open_engine
    >>> ingest_files("/tmp/lake", ["/data/photos"], engine=open_engine("/tmp/lake", "spark")).added  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pyarrow as pa

from lakeimg.kernels.ingest import ingest_kernel, ingest_result_schema, prepare_ingest_kernel
from lakeimg.schemas import table_contract

__all__ = ["decode_files_spark"]


def decode_files_spark(engine, run, tile_options, *, on_progress: Callable[[int, int], None] | None = None):
    """Decode `run.todo` on the executors and tile its huge files; a `DecodedFiles` over staged rows."""
    from lakeimg.jobs.ingest import DecodedFiles, failed_file_row, worker_time_limit
    from lakeimg.jobs.tiling import commit_tiles_spark

    todo, options = run.todo, run.options
    staged = tiling = None
    image_rows = reject_rows = None
    image_uris: list[str] = []
    reject_uris: list[str] = []

    def cleanup() -> None:
        if tiling is not None:
            tiling.cleanup()
        if staged is not None:
            staged.drop()

    try:
        if todo.num_rows:
            staged = engine.map_kernel_to_stage(
                partial(ingest_kernel, options=options),
                todo,
                output_schema=ingest_result_schema(),
                on_failure=partial(failed_file_row, options=options),
                task_timeout_s=worker_time_limit(options),
                prepare=partial(prepare_ingest_kernel, options),
            )
            outcomes = staged.frame().select("uri", "outcome").collect()
            image_uris = [r[0] for r in outcomes if r[1] == "image"]
            reject_uris = [r[0] for r in outcomes if r[1] == "reject"]
            if on_progress:
                on_progress(len(outcomes), todo.num_rows)
        if image_uris:
            image_rows = staged.conform(table_contract("images"), where="outcome = 'image'")
        if reject_uris:
            reject_rows = staged.conform(
                table_contract("rejects"), where="outcome = 'reject'", renames={"rejected_at": "ingested_at"}
            )
        # Huge files (the kernel marked them `tiled`): tiles cut on the executors, as on the
        # embedded engine; a file whose tiling fails becomes a reject.
        if image_uris and "tiled" in staged.frame().columns:
            huge = [r.asDict() for r in staged.frame("outcome = 'image' AND tiled").select(*_TILED_COLUMNS).collect()]
            if huge:
                tiling, image_rows, failed_rows = _tile_on_spark(engine, huge, image_rows, options, tile_options)
                if failed_rows is not None:
                    failed = set(tiling.failures)
                    image_uris = [u for u in image_uris if u not in failed]
                    reject_uris += sorted(failed)
                    failed_frame = engine._frame_of(failed_rows, table_contract("rejects"))
                    reject_rows = failed_frame if reject_rows is None else reject_rows.unionByName(failed_frame)
                    if not image_uris:
                        image_rows = None
    except BaseException:
        cleanup()
        raise
    return DecodedFiles(
        image_rows=image_rows,
        reject_rows=reject_rows,
        image_uris=image_uris,
        reject_uris=reject_uris,
        commit_tiles=lambda replace, metadata: commit_tiles_spark(
            engine, run.table, tiling, replace_uris=replace, metadata=metadata
        ),
        cleanup=cleanup,
    )


_TILED_COLUMNS = ("uri", "content_sha256", "size_bytes", "modified_at", "label", "height", "width", "pages", "mode")


def _tile_on_spark(engine, huge, image_rows, options, tile_options):
    """Cut tiles of the `huge` rows on the executors; returns (tiling, image rows with the tiled
    files' thumbnails and without failed files, reject rows of failed files or None)."""
    from pyspark.sql import functions as F

    from lakeimg.errors import ImageDecodeError
    from lakeimg.jobs.tiling import tile_images_spark
    from lakeimg.kernels.ingest import reject_row
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
