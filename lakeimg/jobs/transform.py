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

The job is written once for every engine: plan (on the driver) -> stage (the transform kernel
over the source rows to compute, read by the engine's workers from the snapshot) -> commit the
staged rows together with the removal of every row of the recomputed and gone uris, in one
commit, without the driver holding the output.

Images an op cannot handle go to `<target>_rejects` (rejects contract) and the run goes on.
Every run appends its runs row (inputs: the source and its version; outputs: target and rejects
with versions; spec and spec_hash) and puts the same record in each commit's metadata. A failure
while committing undoes nothing: the run is recorded `failed` and the next run, planned from the
last succeeded run, redoes its work.

Example:
    >>> spec = {"ops": [{"op": "resize", "width": 16, "height": 16}]}
    >>> transform_table(lake_dir, "images", "small", spec, workers=0).added
    4
    >>> transform_table(lake_dir, "images", "small", spec, workers=0).added  # nothing changed
    0
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine import open_engine
from lakeimg.engine._delta_txn import remove_abandoned_uploads
from lakeimg.engine.base import Engine, EngineName, MergeMetrics, SnapshotRows, Stage, Staged, Write
from lakeimg.engine.layout import ensure_lake, require_lake
from lakeimg.engine.staging import claim_staging, remove_stale_staging
from lakeimg.engine.urisets import minus, same, union, uri_set, within
from lakeimg.errors import LakeImgError, SpecError, TableNotFoundError
from lakeimg.image.codecs import export_bytes
from lakeimg.image.pyramid import level_shape
from lakeimg.jobs.regions import read_region
from lakeimg.jobs.runs import run_commits
from lakeimg.jobs.summary import DryRunSummary, RunSummary
from lakeimg.kernels.rejects import as_rejects, reject_row
from lakeimg.kernels.transform import (
    SOURCE_COLUMNS,
    TransformOptions,
    prepare_transform_kernel,
    transform_kernel,
    transform_result_schema,
)
from lakeimg.schemas import table_contract
from lakeimg.sqlguard import filter_table, parse_where, where_columns
from lakeimg.tables import RUNS_TABLE, RunRecord, new_run_id, rejects_of, utc_now, validate_name
from lakeimg.transform_spec import TransformSpec, parse_spec

__all__ = ["TransformSummary", "transform_table", "last_transform_run"]

_KEY = ["uri", "variant"]
_SKIP_FOR_WHERE = {"content", "thumbnail"}


@dataclass(frozen=True)
class TransformSummary(RunSummary):
    """What a transform run did; `version` is the derived table's version after the run."""

    mode: str = "incremental"
    source: str = "images"
    source_version: int | None = None
    spec_hash: str = ""
    rejects_version: int | None = None


def last_transform_run(engine: Engine, target: str) -> dict[str, Any] | None:
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


def _where(meta: pa.Table, where: Any) -> pa.Array:
    """uris of `meta` rows passing the spec's SQL condition (a tree from `parse_where`, or None
    for every row), evaluated by DuckDB over the columns it names."""
    return uri_set((meta if where is None else filter_table(meta, where))["uri"])


def _read_uris(engine: Engine, name: str, version: int, columns: list[str], uris: pa.Array | None) -> pa.Table:
    """Rows of a snapshot whose uri is in `uris` (all rows for None). The caller's column list
    keeps the read narrow; with `uris`, only the data files and row groups whose uri statistics
    can hold one of them are opened (`LocalEngine.read_batches`, driver-side on either engine):
    1,000 changed rows of a million-row source read a few row groups."""
    if uris is None:
        return engine.read(name, version=version, columns=columns)
    pieces = list(engine.reader().read_batches(name, columns=columns, version=version, uris=uris, batch_rows=4096))
    return pa.concat_tables(pieces) if pieces else engine.arrow_schema(name, version).empty_table().select(columns)


def _net_changes(changes: pa.Table) -> tuple[pa.Array, pa.Array]:
    """(upserted uris, deleted uris): each uri's last change in commit order wins.

    Within one commit an insert beats a delete: a commit that adds and removes whole files
    (`commit_files_by_uri`) shows the rows it kept from a rewritten file as both.

    Example:
        >>> feed = pa.table({"uri": ["a", "a", "b", "b", "c"], "_commit_version": [1, 2, 1, 1, 3],
        ...                  "_change_type": ["insert", "delete", "delete", "insert", "update_postimage"]})
        >>> [s.to_pylist() for s in _net_changes(feed)]
        [['b', 'c'], ['a']]
    """
    rows = changes.filter(pc.not_equal(changes["_change_type"], "update_preimage"))
    # 2 * version + (1 for an insert or update, 0 for a delete): the largest is the last change.
    order = pc.add(pc.multiply(rows["_commit_version"].cast(pa.int64()), 2),
                   pc.not_equal(rows["_change_type"], "delete").cast(pa.int64()))
    last = pa.table({"uri": rows["uri"].cast(pa.string()), "order": order}).group_by("uri").aggregate([("order", "max")])
    upserted = pc.equal(pc.bit_wise_and(last["order_max"], 1), 1)
    return uri_set(last["uri"].filter(upserted)), uri_set(last["uri"].filter(pc.invert(upserted)))


@dataclass
class _Plan:
    mode: str
    todo: pa.Array  # uris to compute (a `uri_set`)
    drop: pa.Array  # uris whose target rows (every variant) and rejects go
    skipped: int = 0


def _plan(
    engine: Engine,
    source: str,
    source_version: int,
    spec: TransformSpec,
    target_keys: pa.Table,
    last: dict[str, Any] | None,
    *,
    full: bool,
    target_exists: bool,
) -> _Plan:
    names = [f.name for f in engine.arrow_schema(source, source_version) if f.name not in _SKIP_FOR_WHERE]
    # Validated (again: the spec may come from a stored run); only the columns it names are read.
    where = parse_where(spec.where, names) if spec.where else None
    where_names = where_columns(where, names) if where is not None else []

    def read_meta(uris: pa.Array | None, columns: tuple[str, ...] = ("uri", "content_sha256", "label")) -> pa.Table:
        return _read_uris(engine, source, source_version, list(dict.fromkeys([*columns, *where_names])), uris)

    if full or not target_exists or last is None or last["source"] != source or last["spec_hash"] != spec.spec_hash:
        mode = "full" if full else ("spec_change" if last is not None and target_exists and last["source"] == source else "initial")
        selected = _where(read_meta(None, ("uri",)), where)
        return _Plan(mode, selected, minus(uri_set(target_keys["uri"]), selected))

    if last["source_version"] == source_version:
        return _Plan("incremental", uri_set(), uri_set())
    try:
        changes = engine.changes(source, int(last["source_version"]) + 1, source_version, columns=["uri"])
        upserted, deleted = _net_changes(changes)
        meta = read_meta(upserted) if len(upserted) else None
        mode = "incremental"
    except LakeImgError:  # no readable change feed for this range (e.g. vacuumed): compare everything
        meta = read_meta(None)
        upserted = uri_set(meta["uri"])
        deleted = minus(uri_set(target_keys["uri"]), upserted)
        mode = "compare"
    if meta is None:
        return _Plan(mode, uri_set(), deleted)
    selected = _where(meta, where)
    todo = minus(selected, _unchanged(target_keys, meta, selected, spec))
    return _Plan(mode, todo, union(deleted, minus(upserted, selected)), skipped=len(selected) - len(todo))


def _unchanged(target_keys: pa.Table, meta: pa.Table, selected: pa.Array, spec: TransformSpec) -> pa.Array:
    """The `selected` uris whose target rows need no work: one row per variant, each made by
    this spec from the same bytes and label as the source row now has (`meta`)."""
    def text(column: pa.ChunkedArray) -> pa.ChunkedArray:
        return column.cast(pa.string())

    keys = target_keys.filter(pc.is_in(target_keys["uri"], value_set=selected))
    keys = pa.table({"uri": text(keys["uri"]), "made_from": text(keys["source_sha256"]), "made_label": text(keys["label"]),
                     "spec_hash": text(keys["spec_hash"])})
    now = pa.table({"uri": text(meta["uri"]), "sha": text(meta["content_sha256"]), "label": text(meta["label"])})
    pairs = keys.join(now, "uri", join_type="inner")
    current = pc.and_(pc.and_(same(pairs["made_from"], pairs["sha"]), same(pairs["made_label"], pairs["label"])),
                      pc.fill_null(pc.equal(pairs["spec_hash"], spec.spec_hash), False))
    per_uri = pa.table({"uri": pairs["uri"], "current": current}).group_by("uri").aggregate([("current", "all"), ("current", "count")])
    return uri_set(per_uri["uri"].filter(pc.and_(per_uri["current_all"], pc.equal(per_uri["current_count"], spec.variants))))


def transform_table(
    lake: str | os.PathLike[str],
    source: str,
    target: str,
    spec: TransformSpec | dict[str, Any] | str | os.PathLike[str],
    *,
    full: bool = False,
    engine: EngineName | Engine = "local",
    workers: int | None = None,
    spark: Any = None,
    on_progress: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
) -> TransformSummary | DryRunSummary:
    """Compute `LAKE/<target>` from `LAKE/<source>` with a transform spec; record the run.

    Args:
        lake: the lake's root folder.
        source: source table (an images table).
        target: derived table to write (created on the first run).
        spec: a TransformSpec, a dict, JSON/YAML text, or a path to a spec file.
        full: recompute every row and delete rows whose source row is gone.
        engine: "local" (process pool, delta-rs), "spark" (mapInArrow of the same kernel), or
            an engine (`lakeimg.engine.open_engine`).
        workers: processes for the local engine (default: CPU count; 0 runs in this process).
        spark: the SparkSession for engine="spark".
        dry_run: plan only: a `DryRunSummary` of the source images whose rows would be added,
            recomputed and deleted (mode: initial, incremental, spec_change, full); nothing is
            computed or committed (no runs row).

    Example:
        >>> transform_table(lake_dir, "images", "gray", {"ops": [{"op": "color", "to": "gray"}]}, workers=0).added
        4
    """
    started = time.monotonic()
    started_at = utc_now()
    lake = str(lake)
    spec = parse_spec(spec)
    validate_name("table", source)
    validate_name("target table", target)
    if target == source:
        raise SpecError(f"bad target table name {target!r}: it is the source")
    if engine == "spark" and spark is None:
        raise SpecError("engine spark needs a SparkSession (pass spark=...; the CLI builds one)")
    eng = open_engine(lake, engine, spark=spark) if isinstance(engine, str) else engine
    storage = getattr(eng, "options", None)
    require_lake(lake, storage)  # a transform reads an existing lake; it never creates one
    if not dry_run:
        ensure_lake(lake, storage)  # ... that it can write
    if not eng.exists(source):
        raise TableNotFoundError(source, lake)
    run_id = new_run_id()
    if not dry_run:
        eng.start_workers()  # they get ready while the run is planned
    source_version = eng.version(source)
    target_exists = eng.exists(target)
    key_columns = ["uri", "variant", "source_sha256", "label", "spec_hash"]
    target_keys = eng.read(target, columns=key_columns) if target_exists else pa.table({c: pa.array([], pa.int32() if c == "variant" else pa.string()) for c in key_columns})
    plan = _plan(eng, source, source_version, spec, target_keys, last_transform_run(eng, target), full=full, target_exists=target_exists)

    if dry_run:
        existing = uri_set(target_keys["uri"])
        recomputed = len(within(plan.todo, existing))
        return DryRunSummary("transform", target, eng.version(target) if target_exists else None,
                             add=len(plan.todo) - recomputed, update=recomputed, delete=len(minus(within(plan.drop, existing), plan.todo)),
                             unchanged=len(minus(minus(existing, plan.todo), plan.drop)), mode=plan.mode)
    options = TransformOptions(spec=spec, run_id=run_id, storage=tuple((storage or {}).items()))
    remove_stale_staging(lake)  # of runs killed before they could clean up
    remove_abandoned_uploads(eng.reader())  # ... and objects they uploaded but never committed
    staging = claim_staging(lake, run_id)  # marks this run's staging as live (engine/staging.py)
    try:
        tiled = uri_set()
        if len(plan.todo):
            meta = _read_uris(eng, source, source_version, ["uri", "tiled"], plan.todo)
            tiled = uri_set(meta.filter(pc.fill_null(meta["tiled"], False))["uri"])
        inlined = _inline_tiled(eng, source, source_version, _read_uris(eng, source, source_version, [*SOURCE_COLUMNS, "levels"], tiled), spec) if len(tiled) else None
        parallel = (os.cpu_count() or 1) if workers is None else workers
        staged = eng.stage(Stage(
            partial(transform_kernel, options=options),
            SnapshotRows(source, source_version, tuple(SOURCE_COLUMNS), minus(plan.todo, tiled)),
            extra=inlined.select(SOURCE_COLUMNS) if inlined is not None else None,
            label=f"{run_id}-rows",
            output_schema=transform_result_schema(spec),
            contract=spec.contract(),
            on_failure=partial(reject_row, run_id=run_id, at=started_at),
            prepare=partial(prepare_transform_kernel, options),
            rows_per_task=max(1, min(16, len(plan.todo) // max(1, parallel * 4))),
            on_progress=on_progress,
            # a pool costs more than it saves on a handful of images
            workers=0 if parallel > 0 and len(plan.todo) < 2 * parallel else workers,
            target=target,
        ))
        try:
            version, metrics, rejected, rejects_version = _commit(
                eng, staged, spec=spec, plan=plan, source=source, source_version=source_version, target=target,
                target_keys=target_keys, target_exists=target_exists, run_id=run_id, started_at=started_at,
            )  # fmt: skip
        finally:
            staged.discard()
    finally:
        staging.release()
    return TransformSummary(
        run_id=run_id, table=target, version=version, added=metrics.inserted, updated=metrics.updated,
        unchanged=len(target_keys) - metrics.updated - metrics.deleted, deleted=metrics.deleted, rejected=rejected,
        seconds=round(time.monotonic() - started, 3), mode=plan.mode, source=source, source_version=source_version,
        spec_hash=spec.spec_hash, rejects_version=rejects_version,
    )  # fmt: skip


def _commit(
    engine: Engine,
    staged: Staged,
    *,
    spec: TransformSpec,
    plan: _Plan,
    source: str,
    source_version: int,
    target: str,
    target_keys: pa.Table,
    target_exists: bool,
    run_id: str,
    started_at: Any,
) -> tuple[int | None, MergeMetrics, int, int | None]:
    """Commit the rejects, then the target (staged rows in, every row of a recomputed or gone
    uri out; or the whole table when the columns changed), then the runs row; a failure undoes
    nothing (see `run_commits`). Returns (target version, metrics, rejected, rejects version)."""
    rejects_name, contract = rejects_of(target), spec.contract()
    rejects = as_rejects(staged.rejects(), at=started_at)
    # Target rows to delete: dropped uris, rejected uris (their old rows are stale), variants
    # the spec no longer makes.
    rejected_uris = uri_set(rejects["uri"])
    gone_uris = union(plan.drop, rejected_uris)
    replaced = union(plan.todo, gone_uris)
    overwrite = target_exists and engine.arrow_schema(target).names != contract.column_names
    # Only the keys of the rows this run can touch are compared (all of them only when the whole
    # table is rewritten): an incremental run over a million-row target stays small.
    touched = target_keys if overwrite else target_keys.filter(pc.is_in(target_keys["uri"], value_set=replaced))
    metrics = _merge_metrics(staged.keys(["uri", "variant"]), touched.select(_KEY), None if overwrite else gone_uris)
    existing_rejects = uri_set(engine.read(rejects_name, columns=["uri"])["uri"]) if engine.exists(rejects_name) else uri_set()
    if plan.mode in ("full", "initial", "spec_change"):
        rejects_delete = minus(existing_rejects, rejected_uris)
    else:
        rejects_delete = within(existing_rejects, union(minus(plan.todo, rejected_uris), plan.drop))
    record = RunRecord(run_id=run_id, job="transform", engine=engine.name, target_table=target, spec=spec.to_dict(),
                       started_at=started_at, inputs=[{"table": source, "version": source_version}])
    metadata = record.commit_metadata()
    # Rejects, then the target, then the runs row: a stop in between leaves commits correct on
    # their own, and the next run (planned from the last succeeded run) redoes the rest.
    with run_commits(engine, record, [target, rejects_name]) as landed:
        rej = engine.commit(Write(rejects_name, table_contract("rejects"), rows=rejects, replace=rejects_delete, metadata=metadata))
        if rej.committed:
            landed[rejects_name] = rej.version
        # The columns changed (other feature ops): replace the table, schema included.
        result = engine.commit(Write(target, contract, "overwrite" if overwrite else "replace", staged=staged,
                                     replace=replaced, metadata=metadata))
        if result.committed:
            landed[target] = result.version
        rejects_version = engine.version(rejects_name)
        if rejects_version is None and result.version is not None:
            # Create the (empty) rejects table with the first target commit so SQL can name it.
            rejects_version = engine.create_empty(rejects_name, table_contract("rejects"), metadata)
            landed[rejects_name] = rejects_version
        record.status = "succeeded"
        record.target_version = result.version
        record.outputs = [{"table": target, "version": result.version}, {"table": rejects_name, "version": rejects_version}]
        record.finished_at = utc_now()
        record.counts = {"added": metrics.inserted, "updated": metrics.updated, "unchanged": target_keys.num_rows - metrics.updated - metrics.deleted,
                         "deleted": metrics.deleted, "rejected": rejects.num_rows}
        engine.append(RUNS_TABLE, record.to_arrow(), table_contract("runs"), metadata)
    return result.version, metrics, rejects.num_rows, rejects_version


def _merge_metrics(produced: pa.Table, touched: pa.Table, gone: pa.Array | None) -> MergeMetrics:
    """Rows inserted, updated and deleted when the `produced` keys (uri, variant) replace the
    `touched` target keys: a touched key nobody produced is deleted, and so is every key of a
    `gone` uri (None: the whole table is rewritten, gone is what is not produced). Counted with
    Arrow joins, so a million keys never become Python tuples.

    Example:
        >>> keys = lambda *pairs: pa.table({"uri": [u for u, _ in pairs], "variant": [v for _, v in pairs]})
        >>> _merge_metrics(keys(("a", 0), ("b", 0)), keys(("a", 0), ("a", 1), ("c", 0)), pa.array(["c"]))
        MergeMetrics(inserted=1, updated=1, deleted=2)
    """
    def typed(keys: pa.Table) -> pa.Table:
        return pa.table({"uri": keys["uri"].cast(pa.string()), "variant": keys["variant"].cast(pa.int32())})

    produced, touched = typed(produced), typed(touched)
    updated = produced.join(touched, _KEY, join_type="left semi").num_rows
    not_produced = touched.join(produced, _KEY, join_type="left anti").num_rows
    produced_but_gone = 0
    if gone is not None and len(gone):
        kept = touched.join(produced, _KEY, join_type="left semi")
        produced_but_gone = pc.sum(pc.is_in(kept["uri"], value_set=gone)).as_py() or 0
    return MergeMetrics(produced.num_rows - updated, updated, not_produced + produced_but_gone)


def pyramid_level(width: int, height: int, levels: int, spec: TransformSpec) -> int:
    """The smallest pyramid level still at least as large as what the spec's leading resize
    needs (0 when the spec does not start by shrinking).

    Example:
        >>> s = parse_spec({"ops": [{"op": "resize", "width": 256, "height": 256}]})
        >>> pyramid_level(4096, 3072, 5, s)
        3
    """
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


def _inline_tiled(engine: Engine, source: str, version: int, rows: pa.Table, spec: TransformSpec) -> pa.Table:
    """Give tiled source rows the pixels of the pyramid level the spec needs, as lossless TIFF
    bytes in `content` (the kernel decodes them like any file). Read on the driver through
    `read_region`, which touches only that level's tiles; a failure leaves content null and the
    kernel rejects the image with the reason."""
    contents = rows["content"].to_pylist()
    for i, row in enumerate(rows.select(["uri", "width", "height", "levels"]).to_pylist()):
        level = pyramid_level(row["width"], row["height"], row["levels"] or 1, spec)
        h, w = level_shape(row["height"], row["width"], level)
        try:
            pixels = read_region(engine.reader(), source, row["uri"], 0, 0, w, h, level=level, version=version)
        except LakeImgError:
            contents[i] = None
            continue
        contents[i] = export_bytes(pixels, "tiff")  # lossless, any dtype and channel count
    index = rows.column_names.index("content")
    return rows.set_column(index, "content", pa.array(contents, pa.binary()))
