"""The transform job: a derived table from a source table and a spec, MERGE keyed on (uri, variant).

Planning decides which source rows to (re)compute:

- incremental (the default): read only the source's change data feed since the source version
  that the last successful run for this target recorded in the runs table; inserted and updated
  uris are recomputed, deleted uris are deleted (every variant). Unchanged source version: no work
  and no commit. Changed rows whose content, label and spec are the same are skipped.
- full (`full=True`, the first run, a different source, or a new `spec_hash`): every source row
  that passes `where` is recomputed, and target rows whose source row is gone (or filtered out)
  are deleted, all in one commit. When the spec's feature columns changed, the commit replaces
  the table (schema included) instead of merging.
- when the change data feed between those versions cannot be read (e.g. vacuumed), the job
  compares the whole source with the target by content hash and label instead.

The embedded engine streams the computed rows to Parquet files in `LAKE/_lakeimg/staging/`
(`StagedParquet`) and commits them together with the removal of every row of the recomputed and
gone uris (`commit_files_by_uri`): the MERGE's effect, in one commit, without the driver holding
the output. Spark stages its rows the same way and MERGEs them with delta-spark.

Images an op cannot handle go to `<target>_rejects` (rejects contract) and the run goes on.
Every run appends its runs row (inputs: the source and its version; outputs: target and rejects
with versions; spec and spec_hash) and puts the same record in each commit's metadata. A failure
while committing undoes nothing: the run is recorded `failed` and the next run, planned from the
last succeeded run, redoes its work.

Example:
    >>> transform_table("/tmp/lake", "images", "small", {"ops": [{"op": "resize", "width": 64, "height": 64}]})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine.local import (
    LocalEngine,
    StagedParquet,
    ensure_lake,
    require_lake,
    table_location,
)
from lakeimg.engine.staging import claim_staging, remove_stale_staging
from lakeimg.errors import LakeImgError, SpecError, TableNotFoundError
from lakeimg.jobs.runs import run_commits
from lakeimg.kernels.transform import (
    SOURCE_COLUMNS,
    TransformOptions,
    prepare_transform_kernel,
    transform_kernel,
    transform_result_schema,
)
from lakeimg.schemas import table_contract
from lakeimg.sqlguard import filter_table
from lakeimg.tables import RUNS_TABLE, RunRecord, new_run_id, utc_now, validate_name
from lakeimg.transform_spec import TransformSpec, parse_spec
from lakeimg.uris import uri_to_path

__all__ = ["TransformSummary", "transform_table", "last_transform_run"]

_KEY = ["uri", "variant"]
_SKIP_FOR_WHERE = {"content", "thumbnail"}


@dataclass(frozen=True)
class TransformSummary:
    """What a transform run did; `version` is the derived table's version after the run."""

    run_id: str
    table: str
    version: int | None
    added: int
    updated: int
    unchanged: int
    deleted: int
    rejected: int
    seconds: float
    mode: str = "incremental"
    source: str = "images"
    source_version: int | None = None
    spec_hash: str = ""
    rejects_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def last_transform_run(engine: LocalEngine, target: str) -> dict[str, Any] | None:
    """The newest succeeded transform run into `target`: source, source_version, spec_hash, run_id."""
    if not engine.exists(RUNS_TABLE):
        return None
    runs = engine.read(RUNS_TABLE, columns=["run_id", "job", "status", "target_table", "inputs", "spec_hash", "finished_at"])
    mask = pc.and_(pc.and_(pc.equal(runs["job"], "transform"), pc.equal(runs["target_table"], target)), pc.equal(runs["status"], "succeeded"))
    runs = runs.filter(mask)
    if runs.num_rows == 0:
        return None
    row = runs.sort_by([("finished_at", "descending")]).slice(0, 1).to_pylist()[0]
    inputs = row["inputs"] or [{}]
    return {"run_id": row["run_id"], "source": inputs[0].get("table"), "source_version": inputs[0].get("version"), "spec_hash": row["spec_hash"]}


def _where(meta: pa.Table, where: str | None) -> set[str]:
    """uris of `meta` rows passing the spec's SQL condition (DuckDB over the source's columns)."""
    if not where:
        return set(meta["uri"].to_pylist())
    # Validated (again: the spec may come from a stored run) and evaluated from its parsed tree.
    return set(filter_table(meta, where)["uri"].to_pylist())


def _read_uris(engine: LocalEngine, name: str, version: int, columns: list[str], uris: set[str] | None) -> pa.Table:
    """Rows of a snapshot whose uri is in `uris` (all rows for None).

    Filtered after the read: pyarrow's dataset filters have no kernels for the string_view
    columns delta-rs writes. The caller's column list keeps the read narrow.
    """
    table = engine.read(name, version=version, columns=columns)
    if uris is None:
        return table
    return table.filter(pc.is_in(table["uri"], value_set=pa.array(sorted(uris), pa.string())))


def _net_changes(changes: pa.Table) -> tuple[set[str], set[str]]:
    """(upserted uris, deleted uris): each uri's last change in commit order wins.

    Within one commit an insert beats a delete: a commit that adds and removes whole files
    (`commit_files_by_uri`) shows the rows it kept from a rewritten file as both.
    """
    rank = {"delete": 0, "insert": 1, "update_postimage": 1}
    last: dict[str, tuple[int, int]] = {}
    rows = changes.filter(pc.not_equal(changes["_change_type"], "update_preimage"))
    for uri, kind, version in zip(rows["uri"].to_pylist(), rows["_change_type"].to_pylist(), rows["_commit_version"].to_pylist(), strict=True):
        last[uri] = max(last.get(uri, (-1, -1)), (version, rank[kind]))
    deleted = {u for u, (_, r) in last.items() if r == 0}
    return set(last) - deleted, deleted


@dataclass
class _Plan:
    mode: str
    todo: set[str]  # uris to compute
    drop: set[str]  # uris whose target rows (every variant) and rejects go
    skipped: int = 0


def _plan(
    engine: LocalEngine,
    source: str,
    source_version: int,
    spec: TransformSpec,
    target_keys: pa.Table,
    last: dict[str, Any] | None,
    *,
    full: bool,
    target_exists: bool,
) -> _Plan:
    meta_columns = [f.name for f in engine.delta_table(source, source_version).schema().to_arrow() if f.name not in _SKIP_FOR_WHERE]

    def read_meta(uris: set[str] | None) -> pa.Table:
        return _read_uris(engine, source, source_version, meta_columns, uris)

    if full or not target_exists or last is None or last["source"] != source or last["spec_hash"] != spec.spec_hash:
        mode = "full" if full else ("spec_change" if last is not None and target_exists and last["source"] == source else "initial")
        selected = _where(read_meta(None), spec.where)
        return _Plan(mode, selected, set(target_keys["uri"].to_pylist()) - selected)

    if last["source_version"] == source_version:
        return _Plan("incremental", set(), set())
    try:
        changes = engine.changes(source, int(last["source_version"]) + 1, source_version, columns=["uri"])
        upserted, deleted = _net_changes(changes)
        meta = read_meta(upserted) if upserted else None
        mode = "incremental"
    except LakeImgError:  # no readable change feed for this range (e.g. vacuumed): compare everything
        meta = read_meta(None)
        upserted, deleted = set(meta["uri"].to_pylist()), set(target_keys["uri"].to_pylist()) - set(meta["uri"].to_pylist())
        mode = "compare"
    selected = _where(meta, spec.where) if meta is not None else set()
    drop = deleted | (upserted - selected)
    # Skip rows whose inputs did not change (same bytes, label and spec for every variant).
    done: dict[str, list[tuple[Any, Any, Any]]] = {}
    for row in target_keys.to_pylist():
        done.setdefault(row["uri"], []).append((row["source_sha256"], row["label"], row["spec_hash"]))
    current = {r["uri"]: (r["content_sha256"], r["label"]) for r in meta.select(["uri", "content_sha256", "label"]).to_pylist()} if meta is not None else {}
    todo = set()
    for uri in selected:
        rows = done.get(uri, [])
        if len(rows) == spec.variants and all(r == (*current[uri], spec.spec_hash) for r in rows):
            continue
        todo.add(uri)
    return _Plan(mode, todo, drop, skipped=len(selected) - len(todo))


def transform_table(
    lake: str | os.PathLike[str],
    source: str,
    target: str,
    spec: TransformSpec | dict[str, Any] | str | os.PathLike[str],
    *,
    full: bool = False,
    engine: str | LocalEngine = "local",
    workers: int | None = None,
    spark: Any = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TransformSummary:
    """Compute `LAKE/<target>` from `LAKE/<source>` with a transform spec; record the run.

    Args:
        lake: the lake's root folder.
        source: source table (an images table).
        target: derived table to write (created on the first run).
        spec: a TransformSpec, a dict, JSON/YAML text, or a path to a spec file.
        full: recompute every row and delete rows whose source row is gone.
        engine: "local" (process pool, delta-rs) or "spark" (mapInArrow of the same kernel).
        workers: processes for the local engine (default: CPU count; 0 runs in this process).
        spark: the SparkSession for engine="spark".

    Example:
        >>> transform_table("/tmp/lake", "images", "gray", {"ops": [{"op": "color", "to": "gray"}]}).added  # doctest: +SKIP
        12
    """
    started = time.monotonic()
    started_at = utc_now()
    lake = str(lake)
    spec = parse_spec(spec)
    validate_name("table", source)
    validate_name("target table", target)
    if target == source:
        raise SpecError(f"bad target table name {target!r}: it is the source")
    require_lake(lake)  # a transform reads an existing lake; it never creates one
    ensure_lake(lake)  # ... that it can write
    local = engine if isinstance(engine, LocalEngine) else LocalEngine(lake)
    engine_name = engine if isinstance(engine, str) else local.name
    if engine_name not in ("local", "spark"):
        raise SpecError(f"unknown engine {engine_name!r}; use local or spark")
    if not local.exists(source):
        raise TableNotFoundError(source, lake)
    run_id = new_run_id()
    workers = (os.cpu_count() or 1) if workers is None else workers

    source_version = local.version(source)
    target_exists = local.exists(target)
    key_columns = ["uri", "variant", "source_sha256", "label", "spec_hash"]
    target_keys = local.read(target, columns=key_columns) if target_exists else pa.table({c: pa.array([], pa.int32() if c == "variant" else pa.string()) for c in key_columns})
    last = last_transform_run(local, target)
    plan = _plan(local, source, source_version, spec, target_keys, last, full=full, target_exists=target_exists)

    options = TransformOptions(spec=spec, run_id=run_id)
    contract = spec.contract()
    writer: Any = local
    staged = None
    if engine_name == "spark":
        writer = _spark_engine(lake, spark)
    remove_stale_staging(lake)  # of runs killed before they could clean up
    staging = claim_staging(lake, run_id)  # marks this run's staging as live (engine/staging.py)
    # The embedded engine streams its rows to Parquet here, then moves the files into the table.
    local_rows = StagedParquet(table_location(lake, f"_lakeimg/staging/{run_id}/{target}"), contract)
    try:
        if plan.todo and engine_name == "spark":
            staged = _run_spark(writer, local, source, source_version, plan.todo, options)
            rows: Any = staged.conform(contract, where="outcome = 'row'")
            produced = {(r[0], r[1]) for r in staged.frame("outcome = 'row'").select("uri", "variant").collect()}
            rejects = _staged_rejects(staged, options)
        else:
            rows, rejects, produced = local_rows, transform_result_schema(spec).empty_table(), set()
            if plan.todo:
                todo = _todo_rows(local, source, source_version, plan.todo, spec)
                rejects, produced = _run_local(local, todo, len(plan.todo), options, local_rows, workers=workers, on_progress=on_progress)
        return _commit(
            local, writer, staged, rows, rejects, produced,
            spec=spec, contract=contract, plan=plan, source=source, source_version=source_version, target=target,
            target_keys=target_keys, target_exists=target_exists, run_id=run_id, engine_name=engine_name,
            started=started, started_at=started_at,
        )  # fmt: skip
    finally:
        local_rows.discard()
        if staged is not None:
            staged.drop()
        staging.release()


def _commit(
    local: LocalEngine,
    writer: Any,
    staged: Any,
    rows: Any,
    rejects: pa.Table,
    produced: set[tuple[str, int]],
    *,
    spec: TransformSpec,
    contract: Any,
    plan: _Plan,
    source: str,
    source_version: int,
    target: str,
    target_keys: pa.Table,
    target_exists: bool,
    run_id: str,
    engine_name: str,
    started: float,
    started_at: Any,
) -> TransformSummary:
    """Commit rows into the target (staged files, a Spark MERGE, or a replace when the columns
    changed) and the rejects, append the runs row; a failure undoes nothing (see `run_commits`)."""
    rejects_name = f"{target}_rejects"
    if staged is None:  # no Spark DataFrame of rows to merge (nothing to compute): delta-rs does the rest
        writer = local
    # Target rows to delete: dropped uris, rejected uris (their old rows are stale), variants
    # the spec no longer makes.
    rejected_uris = set(rejects["uri"].to_pylist())
    gone_uris = plan.drop | rejected_uris
    delete_keys = [
        (u, v)
        for u, v in zip(target_keys["uri"].to_pylist(), target_keys["variant"].to_pylist(), strict=True)
        if u in gone_uris or (u in plan.todo and (u, v) not in produced)
    ]
    existing_rejects = set(local.read(rejects_name, columns=["uri"])["uri"].to_pylist()) if local.exists(rejects_name) else set()
    if plan.mode in ("full", "initial", "spec_change"):
        rejects_delete = sorted(existing_rejects - rejected_uris)
    else:
        rejects_delete = sorted(existing_rejects & ((plan.todo - rejected_uris) | plan.drop))

    record = RunRecord(
        run_id=run_id,
        job="transform",
        engine=engine_name,
        target_table=target,
        spec=spec.to_dict(),
        started_at=started_at,
        inputs=[{"table": source, "version": source_version}],
    )
    replace = target_exists and pa.schema(local.delta_table(target).schema().to_arrow()).names != contract.column_names
    metadata = record.commit_metadata()
    old_keys = set(zip(target_keys["uri"].to_pylist(), target_keys["variant"].to_pylist(), strict=True))
    rejects_contract = table_contract("rejects")
    # Rejects, then the target, then the runs row: a stop in between leaves commits correct on
    # their own, and the next run (planned from the last succeeded run) redoes the rest.
    with run_commits(local, record, [target, rejects_name]) as landed:
        # Rejects and the runs row are small and pixel-free: delta-rs writes them on either engine
        # (a Spark MERGE or append of a handful of rows costs seconds of JVM work each).
        rej = local.merge_by_key(rejects_name, rejects_contract, upserts=_as_rejects(rejects, started_at), delete_keys=rejects_delete, metadata=metadata)
        if rej.committed:
            landed[rejects_name] = rej.version
        if replace:
            # The columns changed (other feature ops): replace the table, schema included.
            data = rows if staged is None else _staged_arrow(staged, contract)
            version = local.overwrite(target, data, contract, metadata)
            landed[target] = version
            inserted, updated, deleted = len(produced - old_keys), len(produced & old_keys), len(old_keys - produced)
        elif isinstance(rows, StagedParquet):
            # Every variant of a recomputed or gone uri is replaced: the staged files go in and
            # the old rows of those uris out, in one commit (no MERGE holding all rows in memory).
            result = local.commit_files_by_uri(target, contract, rows.finish(), uris=sorted(plan.todo | gone_uris), metadata=metadata)
            if result.committed:
                landed[target] = result.version
            version, inserted, updated, deleted = result.version, len(produced - old_keys), len(produced & old_keys), len(delete_keys)
        else:
            result = writer.merge_by_key(target, contract, upserts=rows, delete_keys=delete_keys, key=_KEY, metadata=metadata)
            if result.committed:
                landed[target] = result.version
            version, inserted, updated, deleted = result.version, result.inserted, result.updated, result.deleted
        rejects_version = local.version(rejects_name)
        if rejects_version is None and version is not None:
            # Create the (empty) rejects table with the first target commit so SQL can name it.
            rejects_version = local.create_empty(rejects_name, rejects_contract, metadata)
            landed[rejects_name] = rejects_version
        unchanged = len(old_keys) - updated - deleted
        record.target_version = version
        record.outputs = [{"table": target, "version": version}, {"table": rejects_name, "version": rejects_version}]
        record.finished_at = utc_now()
        record.counts = {"added": inserted, "updated": updated, "unchanged": unchanged, "deleted": deleted, "rejected": rejects.num_rows}
        local.append(RUNS_TABLE, record.to_arrow(), table_contract("runs"), metadata)
    return TransformSummary(
        run_id=run_id,
        table=target,
        version=version,
        added=inserted,
        updated=updated,
        unchanged=unchanged,
        deleted=deleted,
        rejected=rejects.num_rows,
        seconds=round(time.monotonic() - started, 3),
        mode=plan.mode,
        source=source,
        source_version=source_version,
        spec_hash=spec.spec_hash,
        rejects_version=rejects_version,
    )


def pyramid_level(width: int, height: int, levels: int, spec: TransformSpec) -> int:
    """The smallest pyramid level still at least as large as what the spec's leading resize
    needs (0 when the spec does not start by shrinking).

    Example:
        >>> s = parse_spec({"ops": [{"op": "resize", "width": 256, "height": 256}]})
        >>> pyramid_level(4096, 3072, 5, s)
        3
    """
    from lakeimg.image.pyramid import level_shape

    need = spec.shrink_target(width, height)
    if need is None:
        return 0
    level = 0
    for candidate in range(1, max(1, levels)):
        h, w = level_shape(height, width, candidate)
        if w < need[0] or h < need[1]:
            break
        level = candidate
    return level


def _inline_tiled(engine: LocalEngine, source: str, version: int, rows: pa.Table, spec: TransformSpec) -> pa.Table:
    """Give tiled source rows the pixels of the pyramid level the spec needs, as lossless TIFF
    bytes in `content` (the kernel decodes them like any file). Read on the driver through
    `read_region`, which touches only that level's tiles; a failure leaves content null and the
    kernel rejects the image with the reason."""
    if not pc.any(pc.fill_null(rows["tiled"], False)).as_py():
        return rows
    from lakeimg.image.codecs import export_bytes
    from lakeimg.image.pyramid import level_shape
    from lakeimg.jobs.regions import read_region

    contents = rows["content"].to_pylist()
    for i, row in enumerate(rows.select(["uri", "tiled", "width", "height", "levels"]).to_pylist()):
        if not row["tiled"]:
            continue
        level = pyramid_level(row["width"], row["height"], row["levels"] or 1, spec)
        h, w = level_shape(row["height"], row["width"], level)
        try:
            pixels = read_region(engine, source, row["uri"], 0, 0, w, h, level=level, version=version)
        except LakeImgError:
            contents[i] = None
            continue
        contents[i] = export_bytes(pixels, "tiff")  # lossless, any dtype and channel count
    index = rows.column_names.index("content")
    return rows.set_column(index, "content", pa.array(contents, pa.binary()))


def _todo_rows(engine: LocalEngine, source: str, version: int, todo: set[str], spec: TransformSpec) -> Iterator[pa.Table]:
    """The source rows to compute, streamed from the snapshot a few dozen at a time (tiled rows
    with their pyramid level inlined): the driver never holds the whole table's image bytes."""
    wanted = pa.array(sorted(todo), pa.string())
    for piece in engine.read_batches(source, version=version, columns=[*SOURCE_COLUMNS, "levels"]):
        piece = piece.filter(pc.is_in(piece["uri"], value_set=wanted))
        if piece.num_rows:
            yield _inline_tiled(engine, source, version, piece, spec)


def _run_local(
    engine: LocalEngine, todo: Iterable[pa.Table], total: int, options: TransformOptions, staged: StagedParquet, *, workers: int, on_progress=None
) -> tuple[pa.Table, set[tuple[str, int]]]:
    """The kernel over the rows to compute (`total` of them) in a process pool, its rows
    written to `staged` as they come; returns (reject rows, the (uri, variant) keys staged).
    A crashing image becomes a reject."""
    schema = transform_result_schema(options.spec)
    contract = options.spec.contract()
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    if workers > 0 and total < 2 * workers:
        workers = 0  # a pool costs more than it saves on a handful of images
    batch_rows = max(1, min(16, total // max(1, workers * 4)))
    batches = engine.map_kernel(
        partial(transform_kernel, options=options),
        todo,
        workers=workers,
        batch_rows=batch_rows,
        on_failure=partial(failed_transform_row, run_id=options.run_id),
        on_progress=progress,
        output_schema=schema,
    )
    rejects, produced = [], set()
    for batch in batches:
        is_row = pc.equal(batch["outcome"], "row")
        rows = batch.filter(is_row)
        staged.write(rows.select(contract.column_names))
        produced.update(zip(rows["uri"].to_pylist(), rows["variant"].to_pylist(), strict=True))
        rejects.append(batch.filter(pc.invert(is_row)))
    return pa.Table.from_batches(rejects, schema=schema), produced


def failed_transform_row(src: dict[str, Any], error_class: str, message: str, *, run_id: str) -> dict[str, Any]:
    """The reject row of a source row whose worker crashed or was killed (`on_failure` of the pools)."""
    return {
        "uri": src["uri"], "variant": 0, "source_sha256": src.get("content_sha256"), "label": src.get("label"),
        "run_id": run_id, "outcome": "reject", "error_class": error_class, "error_message": message,
        "size_bytes": src.get("size_bytes"), "modified_at": src.get("modified_at"),
    }  # fmt: skip


def _spark_engine(lake: str, spark: Any):
    if spark is None:
        raise SpecError("engine spark needs a SparkSession (pass spark=...; the CLI builds one)")
    from lakeimg.engine.spark import SparkEngine

    return SparkEngine(lake, spark)


def _run_spark(engine: Any, local: LocalEngine, source: str, source_version: int, todo: set[str], options: TransformOptions):
    """The same kernel through Spark's mapInArrow over the source rows to compute, staged as
    Parquet under the lake. Pixels never reach the driver, except the pyramid level a tiled
    source row needs, read there as on the embedded engine (`_inline_tiled`)."""
    import math
    import uuid

    from pyspark.sql import functions as F

    from lakeimg.engine.local import table_location
    from lakeimg.engine.pool import isolated_kernel
    from lakeimg.engine.spark import StagedRows, _struct_of

    spark = engine.spark
    meta = _read_uris(local, source, source_version, ["uri", "tiled"], todo)
    tiled = set(meta.filter(pc.fill_null(meta["tiled"], False))["uri"].to_pylist())
    frame = engine.frame(source, source_version).where(F.col("uri").isin(sorted(todo - tiled))).select(*SOURCE_COLUMNS)
    if tiled:
        rows = _read_uris(local, source, source_version, [*SOURCE_COLUMNS, "levels"], tiled)
        rows = _inline_tiled(local, source, source_version, rows, options.spec).select(SOURCE_COLUMNS)
        inlined = spark.createDataFrame(rows).select(*[F.col(f.name).cast(f.dataType) for f in frame.schema.fields])
        frame = frame.unionByName(inlined)
    partitions = max(1, min(len(todo), max(2 * spark.sparkContext.defaultParallelism, math.ceil(len(todo) / 16))))
    schema = transform_result_schema(options.spec)
    # Each task computes in forked children (engine/pool.py): an op that crashes or hangs costs
    # a reject row, as on the embedded engine, not the job.
    kernel = partial(
        isolated_kernel, kernel=partial(transform_kernel, options=options), output_schema=schema,
        on_failure=partial(failed_transform_row, run_id=options.run_id), task_timeout_s=600.0,
        prepare=partial(prepare_transform_kernel, options),
    )
    results = frame.repartition(partitions).mapInArrow(kernel, _struct_of(schema))
    location = table_location(engine.lake, f"_lakeimg/staging/{uuid.uuid4().hex}")
    results.write.mode("overwrite").parquet(location)
    return StagedRows(engine, location)


def _staged_rejects(staged: Any, options: TransformOptions) -> pa.Table:
    """The (small, pixel-free) reject rows of a staged Spark result, as Arrow on the driver."""
    schema = transform_result_schema(options.spec)
    names = ["uri", "source_sha256", "run_id", "error_class", "error_message", "size_bytes", "modified_at"]
    found = staged.frame("outcome = 'reject'").select(*names).collect()
    return pa.Table.from_pylist([r.asDict() for r in found], schema=pa.schema([schema.field(n) for n in names]))


def _staged_arrow(staged: Any, contract: Any) -> pa.Table:
    """Staged Spark rows read back with pyarrow (only for a schema-changing commit on a local lake)."""
    import pyarrow.dataset as ds

    location = uri_to_path(staged.location)
    table = ds.dataset(location, format="parquet").to_table()
    return table.filter(pc.equal(table["outcome"], "row")).select(contract.column_names)


def _as_rejects(rows: pa.Table, at) -> pa.Table:
    contract = table_contract("rejects")
    n = rows.num_rows
    data = {
        "uri": rows["uri"],
        "size_bytes": rows["size_bytes"],
        "modified_at": rows["modified_at"],
        "content_sha256": rows["source_sha256"],
        "error_class": rows["error_class"],
        "error_message": rows["error_message"],
        "run_id": rows["run_id"],
        "rejected_at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table({c: data[c] for c in contract.column_names}).cast(pa.schema([f.with_nullable(True) for f in contract.arrow_schema]))
