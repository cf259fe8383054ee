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

from lakeimg.catalog.runs import RUNS_TABLE, RunRecord, new_run_id, utc_now
from lakeimg.engine.local import MergeResult, ensure_lake
from lakeimg.jobs.listing import list_sources, source_scope, to_uri
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
    **extra_spec: Any,
):
    """`lakeimg.jobs.ingest.ingest_files` on a `SparkEngine`; returns the same `IngestSummary`.

    `workers` is ignored (Spark's executors are the workers). `extra_spec` holds options of the
    embedded job that go into the run's spec unchanged (e.g. tiling settings).

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
    if any(f.name == "tile_above_pixels" for f in dataclasses.fields(IngestOptions)):
        # Tiling huge images is an embedded-engine step so far; on Spark they land whole
        # (content stays null above inline_max_bytes, so no cell ever holds a huge file).
        options = dataclasses.replace(options, tile_above_pixels=0)

    staged = None
    if todo.num_rows:
        staged = engine.map_kernel_to_stage(
            partial(ingest_kernel, options=options), todo, output_schema=ingest_result_schema()
        )
    try:
        outcomes = staged.frame().select("uri", "outcome").collect() if staged is not None else []
        if on_progress:
            on_progress(len(outcomes), todo.num_rows)
        image_uris = [r[0] for r in outcomes if r[1] == "image"]
        reject_uris = [r[0] for r in outcomes if r[1] == "reject"]
        in_images = set(images_keys["uri"].to_pylist())
        in_rejects = set(rejects_keys["uri"].to_pylist())
        images_delete = vanished_images + [u for u in reject_uris if u in in_images]
        rejects_delete = vanished_rejects + [u for u in image_uris if u in in_rejects]

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
            staged=staged,
            has_images=bool(image_uris),
            rejected=len(reject_uris),
            images_delete=images_delete,
            rejects_delete=rejects_delete,
            record=record,
            unchanged=listing.num_rows - todo.num_rows,
            deleted=len(vanished_images) + len(vanished_rejects),
        )
    finally:
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


def commit_ingest_spark(
    engine,
    table: str,
    *,
    staged,
    has_images: bool,
    rejected: int,
    images_delete: list[str],
    rejects_delete: list[str],
    record: RunRecord,
    unchanged: int = 0,
    deleted: int = 0,
) -> tuple[MergeResult, MergeResult]:
    """MERGE staged results into images and rejects, append the runs row; undo on failure.

    The same steps and rules as `lakeimg.jobs.ingest.commit_ingest`, reading the rows to
    upsert from the staged Parquet instead of driver memory.
    """
    from lakeimg.jobs.ingest import rejects_table_name

    rejects_name = rejects_table_name(table)
    images_contract, rejects_contract = table_contract("images"), table_contract("rejects")
    before = {table: engine.version(table), rejects_name: engine.version(rejects_name)}
    metadata = record.commit_metadata()
    committed: list[str] = []
    image_rows = staged.conform(images_contract, where="outcome = 'image'") if staged is not None and has_images else None
    reject_rows = (
        staged.conform(rejects_contract, where="outcome = 'reject'", renames={"rejected_at": "ingested_at"})
        if staged is not None and rejected
        else None
    )
    try:
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
