"""Table history: a table's versions with the run that made each one (`HistoryEntry`).

A table's history is its Delta log: each commit's operation, timestamp and metrics, plus the
lakeimg run record that every job puts into the commit's `userMetadata` (parsed by
`LocalEngine.history`). Counts come from the runs table row of that run when there is one
(it holds the final added/updated/... figures), else from Delta's operation metrics.

Example:
    >>> import tempfile
    >>> run_records(LocalEngine(tempfile.mkdtemp()))
    {}
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.tables import RUN_STATUS_RANK, RUNS_TABLE

__all__ = ["HistoryEntry", "table_history", "run_records", "reproduce_checks", "DATA_NEUTRAL_OPERATIONS"]

# Commits that leave a table's rows as they were: lineage and reproduce look through them.
DATA_NEUTRAL_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "CREATE TABLE", "UPGRADE PROTOCOL",
     "ADD CONSTRAINT", "FSCK", "CHECKPOINT"}
)


@dataclass(frozen=True)
class HistoryEntry:
    """One version of a table and the run that made it.

    `status` is the run's: succeeded, failed (it stopped after this commit; the next run
    completes the work), incomplete (killed after this commit, found by a later run) or
    unrecorded (no runs row yet: the run is still going, or was killed and no run came since).
    """

    version: int
    timestamp: str | None
    operation: str | None
    run_id: str | None
    job: str | None
    status: str | None
    engine: str | None
    code_version: str | None
    spec_hash: str | None
    spec: Any
    inputs: list[dict[str, Any]]
    sources: list[str]
    counts: dict[str, int]
    data_change: bool
    operation_parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_records(engine: LocalEngine) -> dict[str, dict[str, Any]]:
    """Rows of the runs table by run id (empty when the lake has no runs yet); of a run's two
    rows (`incomplete`, recorded by a later run, and its own) the final one wins."""
    if not engine.exists(RUNS_TABLE):
        return {}
    rows = engine.read(RUNS_TABLE).to_pylist()
    out = {}
    for row in rows:
        row["counts"] = dict(row.get("counts") or [])
        row["spec"] = _parsed(row.get("spec"))
        seen = out.get(row["run_id"])
        if seen is None or RUN_STATUS_RANK.get(row["status"], 0) >= RUN_STATUS_RANK.get(seen["status"], 0):
            out[row["run_id"]] = row
    return out


def reproduce_checks(engine: LocalEngine) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest `reproduce` of each checked (table, version), from the runs table:
    {result: "match", "mismatch" or "failed" (the check could not run), rows, differing,
    at (finished, UTC), run_id}.

    Example:
        >>> import tempfile
        >>> reproduce_checks(LocalEngine(tempfile.mkdtemp()))
        {}
    """
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in run_records(engine).values():
        if row["job"] != "reproduce" or row["status"] not in ("succeeded", "failed") or row.get("target_version") is None:
            continue
        key = (row["target_table"], int(row["target_version"]))
        if key not in latest or latest[key]["finished_at"] < row["finished_at"]:
            latest[key] = row
    out = {}
    for key, row in latest.items():
        differing = int(row["counts"].get("differing") or 0)
        result = "failed" if row["status"] == "failed" else "match" if differing == 0 else "mismatch"
        out[key] = {"result": result, "rows": row["counts"].get("rows"),
                    "differing": differing, "at": row["finished_at"].isoformat(timespec="seconds"), "run_id": row["run_id"]}
    return out


def _timestamp(ms: Any) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.timezone.utc).isoformat()


def table_history(engine: LocalEngine, table: str, *, limit: int | None = None) -> list[HistoryEntry]:
    """The table's versions, newest first (`HistoryEntry`: operation, run, job, status, counts).

    Example:
        >>> import tempfile
        >>> from lakeimg.schemas import table_contract
        >>> engine = LocalEngine(tempfile.mkdtemp())
        >>> engine.create_empty(RUNS_TABLE, table_contract("runs"))
        0
        >>> [(e.version, e.operation, e.data_change) for e in table_history(engine, RUNS_TABLE)]
        [(0, 'CREATE TABLE', False)]
    """
    runs = run_records(engine)
    out = []
    for entry in engine.history(table, limit):
        record = entry.get("lakeimg") or {}
        run_id = record.get("run_id")
        run = runs.get(run_id, {}) if run_id else {}
        metrics = entry.get("operationMetrics") or {}
        counts = run.get("counts") or _metric_counts(metrics)
        out.append(
            HistoryEntry(
                version=entry.get("version"),
                timestamp=_timestamp(entry.get("timestamp")),
                operation=entry.get("operation"),
                run_id=run_id,
                job=record.get("job"),
                status=run.get("status") or (None if not run_id else "unrecorded"),
                engine=record.get("engine"),
                code_version=record.get("code_version"),
                spec_hash=record.get("spec_hash"),
                spec=_parsed(record.get("spec")),
                inputs=run.get("inputs") or record.get("inputs") or [],
                sources=run.get("sources") or record.get("sources") or [],
                counts=counts,
                data_change=_changes_data(engine, table, entry),
                operation_parameters=entry.get("operationParameters") or {},
            )
        )
    return out


def _parsed(spec: Any) -> Any:
    """A spec stored as canonical JSON text, parsed (text that is not JSON stays as it is)."""
    if isinstance(spec, str):
        try:
            return json.loads(spec)
        except json.JSONDecodeError:
            pass
    return spec


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
