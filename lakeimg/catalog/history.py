"""Table history and time travel: `TABLE@7` / `TABLE@2026-01-31T12:00:00` references, version lists.

A table's history is its Delta log: each commit's operation, timestamp and metrics, plus the
lakeimg run record that every job puts into the commit's `userMetadata` (parsed by
`LocalEngine.history`). Counts come from the runs table row of that run when there is one
(it holds the final added/updated/... figures), else from Delta's operation metrics.

Example:
    >>> parse_table_ref("images@7")
    ('images', 7)
    >>> parse_table_ref("images@2026-01-31T12:00:00")
    ('images', '2026-01-31T12:00:00')
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from lakeimg.catalog.runs import RUN_STATUS_RANK, RUNS_TABLE
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import SpecError

__all__ = ["parse_table_ref", "format_table_ref", "table_history", "run_records", "DATA_NEUTRAL_OPERATIONS"]

# Commits that leave a table's rows as they were: lineage and reproduce look through them.
DATA_NEUTRAL_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "CREATE TABLE", "UPGRADE PROTOCOL",
     "ADD CONSTRAINT", "FSCK", "CHECKPOINT"}
)


def parse_table_ref(text: str) -> tuple[str, VersionLike]:
    """Split `TABLE[@VERSION|@TIMESTAMP]` into (name, version-like).

    A number after `@` is a version; anything else must be an ISO timestamp (naive means UTC).

    Example:
        >>> parse_table_ref("cats_256")
        ('cats_256', None)
    """
    name, sep, ref = text.partition("@")
    if not name:
        raise SpecError(f"no table name in {text!r}")
    if not sep:
        return name, None
    ref = ref.strip()
    if ref.isdigit():
        return name, int(ref)
    try:
        dt.datetime.fromisoformat(ref.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SpecError(f"{text!r}: after @ give a version number or an ISO timestamp") from exc
    return name, ref


def format_table_ref(name: str, version: int | None) -> str:
    """`name@version` (or `name` for latest).

    Example:
        >>> format_table_ref("images", 3)
        'images@3'
    """
    return name if version is None else f"{name}@{version}"


def run_records(engine: LocalEngine) -> dict[str, dict[str, Any]]:
    """Rows of the runs table by run id (empty when the lake has no runs yet); of a run's two
    rows (`incomplete`, recorded by a later run, and its own) the final one wins."""
    if not engine.exists(RUNS_TABLE):
        return {}
    rows = engine.read(RUNS_TABLE).to_pylist()
    out = {}
    for row in rows:
        row["counts"] = dict(row.get("counts") or [])
        if isinstance(row.get("spec"), str):
            try:
                row["spec"] = json.loads(row["spec"])
            except json.JSONDecodeError:
                pass
        seen = out.get(row["run_id"])
        if seen is None or RUN_STATUS_RANK.get(row["status"], 0) >= RUN_STATUS_RANK.get(seen["status"], 0):
            out[row["run_id"]] = row
    return out


def _timestamp(ms: Any) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.timezone.utc).isoformat()


def table_history(engine: LocalEngine, table: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's versions, newest first: version, timestamp, operation, run, job, status, counts.

    `status` is the run's: succeeded, failed (it stopped after this commit; the next run
    completes the work), incomplete (killed after this commit, found by a later run) or
    unrecorded (no runs row yet: the run is still going, or was killed and no run came since).

    Example:
        >>> table_history(LocalEngine("/tmp/lake"), "images")[0]["operation"]  # doctest: +SKIP
        'MERGE'
    """
    runs = run_records(engine)
    out = []
    for entry in engine.history(table, limit):
        record = entry.get("lakeimg") or {}
        run_id = record.get("run_id")
        run = runs.get(run_id, {}) if run_id else {}
        metrics = entry.get("operationMetrics") or {}
        counts = run.get("counts") or _metric_counts(metrics)
        spec = record.get("spec")
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError:
                pass
        out.append(
            {
                "version": entry.get("version"),
                "timestamp": _timestamp(entry.get("timestamp")),
                "operation": entry.get("operation"),
                "run_id": run_id,
                "job": record.get("job"),
                "status": run.get("status") or (None if not run_id else "unrecorded"),
                "engine": record.get("engine"),
                "code_version": record.get("code_version"),
                "spec_hash": record.get("spec_hash"),
                "spec": spec,
                "inputs": run.get("inputs") or record.get("inputs") or [],
                "sources": run.get("sources") or record.get("sources") or [],
                "counts": counts,
                "data_change": _changes_data(engine, table, entry),
                "operation_parameters": entry.get("operationParameters") or {},
            }
        )
    return out


def _changes_data(engine: LocalEngine, table: str, entry: dict[str, Any]) -> bool:
    """Whether a commit changed the table's rows. A CREATE TABLE usually only makes the schema
    (delta-spark's create-then-MERGE), but a table created from staged files
    (`commit_files_by_uri`) gets its rows in that same commit."""
    operation = entry.get("operation")
    if operation != "CREATE TABLE":
        return operation not in DATA_NEUTRAL_OPERATIONS
    try:
        return bool(engine.data_files(table, entry.get("version")))
    except Exception:  # noqa: BLE001 - that version's log is gone: the schema-only reading
        return False


def _metric_counts(metrics: dict[str, Any]) -> dict[str, int]:
    names = {
        "num_added_rows": "added",
        "num_target_rows_inserted": "added",
        "num_target_rows_updated": "updated",
        "num_target_rows_deleted": "deleted",
        "num_added_files": "files_added",
        "num_removed_files": "files_removed",
        "numFilesAdded": "files_added",
        "numFilesRemoved": "files_removed",
    }
    counts: dict[str, int] = {}
    for key, label in names.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            counts[label] = counts.get(label, 0) + int(value)
    return counts
