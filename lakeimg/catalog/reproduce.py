"""Reproduce a table version: re-run what made it and compare the rows' content hashes.

- A transform-made version: the recorded input version is copied into a scratch lake, the
  recorded spec is run there in full (`lakeimg.jobs.transform.transform_table`), and every row's
  hash (all columns but `run_id` and `*_at` timestamps, keyed by uri and variant) is compared
  with the recorded version's. Works for any version whose input version is still readable.
- An ingest-made version: every row's recorded source file is read again and its SHA-256
  compared with `content_sha256`; a file changed or removed without a re-ingest is a difference,
  and so is a row whose stored `content` no longer hashes to `content_sha256`
  (`stored_content_differs`: damage in the lake, see `lakeimg verify`).

Each finished comparison is recorded as a row of its own in the runs table (job `reproduce`,
target_table@target_version the version checked, counts `rows` and `differing`), so the catalog
shows where a version was reproduced and with what result; nothing else is written.

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> result = reproduce(LocalEngine(lake.path), "images", 0)
    >>> result.job, result.identical, result.ref, result.rows
    ('ingest', True, 'images@0', 4)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lakeimg.catalog.lineage import LineageStep, producing_step
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import (
    LakeImgError,
    StorageAccessError,
    StorageUnreachableError,
    TableNotFoundError,
)
from lakeimg.jobs.regions import tiles_as_of
from lakeimg.jobs.transform import transform_table
from lakeimg.jobs.verify import content_mismatches
from lakeimg.schemas import table_contract
from lakeimg.storage import remove_prefix, sha256_of, storage_error
from lakeimg.tables import (
    RUNS_TABLE,
    RunRecord,
    TableRef,
    new_run_id,
    parse_table_ref,
    tiles_of,
    utc_now,
)

__all__ = ["ReproduceResult", "reproduce", "row_hashes"]

_MAX_REPORTED = 1000


@dataclass(frozen=True)
class ReproduceResult:
    """What `reproduce` found: `identical` when no row differs; `differences` holds the first
    1000 of `differing` ({uri, variant, reason, recorded_hash, reproduced_hash}). A transform's
    result names its `input` version, an ingest's its `sources`.

    Example:
        >>> ReproduceResult("images", 0, "images@0", "ingest", "r1", None, 0, "re-read", 0, True, 0, []).to_dict()["ref"]
        'images@0'
    """

    table: str
    version: int
    ref: str
    job: str | None
    run_id: str | None
    spec_hash: str | None
    made_at_version: int | None
    method: str
    rows: int
    identical: bool
    differing: int
    differences: list[dict[str, Any]]
    input: str | None = None
    sources: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("input", "sources"):
            if out[key] is None:
                del out[key]
        return out


def _ignored(column: str) -> bool:
    return column == "run_id" or column.endswith("_at")


def row_hashes(table: pa.Table) -> dict[tuple[Any, ...], str]:
    """SHA-256 per row over its content columns, keyed by (uri[, variant]).

    Example:
        >>> list(row_hashes(pa.table({"uri": ["a"], "data": [b"x"], "run_id": ["r"]})))
        [('a',)]
    """
    keys = [c for c in ("uri", "variant") if c in table.column_names]
    columns = sorted(c for c in table.column_names if not _ignored(c))
    out: dict[tuple[Any, ...], str] = {}
    for row in table.select(columns).to_pylist():
        digest = hashlib.sha256()
        for name in columns:
            value = row[name]
            digest.update(name.encode() + b"\0")
            if isinstance(value, bytes):
                digest.update(hashlib.sha256(value).digest())
            else:
                digest.update(json.dumps(value, sort_keys=True, default=str).encode())
            digest.update(b"\1")
        out[tuple(row[k] for k in keys)] = digest.hexdigest()
    return out


def _compare(recorded: dict, reproduced: dict) -> list[dict[str, Any]]:
    diffs = []
    for key in sorted(set(recorded) | set(reproduced), key=lambda k: tuple(str(x) for x in k)):
        a, b = recorded.get(key), reproduced.get(key)
        if a == b:
            continue
        reason = "missing_in_reproduction" if b is None else "extra_in_reproduction" if a is None else "content_differs"
        diffs.append({"uri": key[0], "variant": key[1] if len(key) > 1 else None, "reason": reason,
                      "recorded_hash": a, "reproduced_hash": b})
    return diffs


def _reproduce_ingest(engine: LocalEngine, table: str, version: int) -> tuple[int, list[dict[str, Any]]]:
    rows = engine.read(table, version=version, columns=["uri", "content_sha256"]).to_pylist()
    diffs = []
    # The stored bytes too: a row whose inline content no longer hashes to content_sha256 is
    # damage in the lake, whatever the source file says (streamed: a few images in memory).
    for batch in engine.read_batches(table, columns=["uri", "content", "content_sha256"], version=version):
        for uri, expected, actual in content_mismatches(batch):
            diffs.append({"uri": uri, "variant": None, "reason": "stored_content_differs",
                          "recorded_hash": expected, "reproduced_hash": actual})
    for row in sorted(rows, key=lambda r: r["uri"]):
        try:  # with the lake's storage options: the source may be an object
            current = sha256_of(row["uri"], engine.options)
        except OSError as exc:
            typed = storage_error(exc, row["uri"], engine.options)
            if isinstance(typed, (StorageAccessError, StorageUnreachableError)):
                raise typed from None  # the store refused or is down: not a missing source
            current = None
        if current == row["content_sha256"]:
            continue
        diffs.append({"uri": row["uri"], "variant": None, "reason": "source_missing" if current is None else "source_changed",
                      "recorded_hash": row["content_sha256"], "reproduced_hash": current})
    return len(rows), diffs


def _reproduce_transform(
    engine: LocalEngine, step: LineageStep, scratch: str | None, workers: int | None
) -> tuple[int, list[dict[str, Any]], str]:
    inputs = step.inputs
    if len(inputs) != 1 or inputs[0].get("version") is None:
        raise LakeImgError(f"{step.table}@{step.version}: expected one recorded input version, found {inputs}")
    source, source_version = inputs[0]["table"], int(inputs[0]["version"])
    _require_readable(engine, source, source_version, f"its input {source}@{source_version}")
    workdir = scratch or tempfile.mkdtemp(prefix="lakeimg-reproduce-")
    # The lake's storage options: the re-run reads not-inlined content from its source objects.
    scratch_engine = LocalEngine(workdir, storage_options=engine.options)
    try:
        tiles = tiles_of(source)  # tiled sources: pyramid levels live beside the images table
        if engine.exists(tiles):  # as they were when the input version was committed
            # Copied first: the scratch images commit must not predate its tiles (tiles_as_of
            # matches them by commit time, and time travel before a first commit is an error).
            engine.copy_snapshot(tiles, tiles_as_of(engine, source, source_version), scratch_engine, tiles)
        engine.copy_snapshot(source, source_version, scratch_engine, source)
        spec = json.loads(step.spec) if isinstance(step.spec, str) else step.spec
        transform_table(workdir, source, step.table, spec, full=True, workers=workers, engine=scratch_engine)
        recorded = row_hashes(_content(engine, step.table, step.version))
        reproduced = row_hashes(_content(scratch_engine, step.table, None))
    finally:
        if scratch is None:
            remove_prefix(workdir)
    return len(recorded), _compare(recorded, reproduced), f"{source}@{source_version}"


def _require_readable(engine: LocalEngine, table: str, version: int, what: str) -> None:
    """Fail clearly when a version's log or files are gone (vacuumed or log-expired)."""
    try:
        files = engine.data_files(table, version)
    except TableNotFoundError as exc:
        raise LakeImgError(f"cannot reproduce: {what} is no longer readable ({exc})") from exc
    missing = [f for f in files if not engine.file_exists(f)]
    if missing:
        raise LakeImgError(
            f"cannot reproduce: {what} is no longer readable: {len(missing)} of its files were vacuumed "
            "(maintenance keeps only versions that training sets and their lineage need)"
        )


def _content(engine: LocalEngine, table: str, version: int | None) -> pa.Table:
    schema = engine.arrow_schema(table, version)
    return engine.read(table, version=version, columns=[f.name for f in schema if not _ignored(f.name)])


def reproduce(
    engine: LocalEngine,
    table: str,
    version: VersionLike = None,
    *,
    scratch: str | None = None,
    workers: int | None = None,
) -> ReproduceResult:
    """Re-run what made `table@version` and compare (see `ReproduceResult`).

    `scratch` keeps the re-run's lake in that folder (default: a temporary folder, removed);
    `workers` are the re-run's processes (default: CPU count; 0 runs in this process).
    """
    started = utc_now()
    resolved = engine.resolve_version(table, version)
    try:
        result = _reproduce(engine, table, resolved, scratch, workers)
    except Exception:
        # A check that could not run is on record too (lineage shows it failed); recording it
        # must not hide why it failed.
        with contextlib.suppress(Exception):
            _record(engine, table, resolved, started, status="failed")
        raise
    _record(engine, table, resolved, started, result=result)
    return result


def _reproduce(engine: LocalEngine, table: str, resolved: int, scratch: str | None, workers: int | None) -> ReproduceResult:
    step = producing_step(engine, table, resolved)
    _require_readable(engine, table, resolved, f"{table}@{resolved}")
    extra: dict[str, Any] = {}
    if step.job == "transform":
        rows, diffs, extra["input"] = _reproduce_transform(engine, step, scratch, workers)
        method = "re-ran the recorded spec on the recorded input version; compared row hashes"
    elif step.job == "ingest" or (step.job is None and not step.inputs):
        rows, diffs = _reproduce_ingest(engine, table, resolved)
        extra["sources"] = step.sources
        method = "re-read the recorded source files and the stored content; compared SHA-256 with content_sha256"
    else:
        raise LakeImgError(f"{table}@{resolved} was made by job {step.job!r}, which lakeimg cannot re-run")
    result = ReproduceResult(
        table=table, version=resolved, ref=str(TableRef(table, resolved)), job=step.job, run_id=step.run_id,
        spec_hash=step.spec_hash, made_at_version=step.made_at_version, method=method, rows=rows,
        identical=not diffs, differing=len(diffs), differences=diffs[:_MAX_REPORTED], **extra,
    )
    return result


def _record(engine: LocalEngine, table: str, version: int, started: dt.datetime, *,
            result: ReproduceResult | None = None, status: str = "succeeded") -> None:
    """The check's runs row (its only write): the version checked, and what it found (no
    `result` when it could not run)."""
    inputs = [{"table": table, "version": version}]
    if result is not None and result.input:
        source = parse_table_ref(result.input)
        inputs.append({"table": source.name, "version": source.version})
    run = RunRecord(run_id=new_run_id(), job="reproduce", engine=engine.name, target_table=table,
                    spec={"table": table, "version": version}, started_at=started, status=status,
                    target_version=version, inputs=inputs, sources=list(result.sources or []) if result else [],
                    counts={"rows": result.rows, "differing": result.differing} if result else {}, finished_at=utc_now())
    if not engine.exists(RUNS_TABLE):
        engine.create_empty(RUNS_TABLE, table_contract("runs"))
    engine.append(RUNS_TABLE, run.to_arrow(), table_contract("runs"), run.commit_metadata())
