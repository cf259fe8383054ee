"""The runs table's writing side: the bookkeeping around a job's commits (`run_commits`) and the
`incomplete` rows of runs killed between their commits (`record_unfinished_runs`).

The record itself (`RunRecord`) and the runs table's place are lake conventions
(`lakeimg.tables`); reading runs back (history, lineage) is `lakeimg.catalog`'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from lakeimg._version import __version__
from lakeimg.engine.staging import staging_is_live
from lakeimg.errors import PartialRunError, TableNotFoundError
from lakeimg.schemas import table_contract
from lakeimg.tables import RUNS_TABLE, RunRecord, utc_now

__all__ = ["prepare_run_commits", "record_unfinished_runs", "run_commits"]

# Commits per table a run looks back through for runs that never wrote their row.
_UNFINISHED_LOOKBACK = 50


def record_unfinished_runs(engine: Any, tables: Sequence[str], *, current_run_id: str) -> list[str]:
    """Append an `incomplete` runs row for each run that committed to `tables` but has no row.

    A run killed between its commits leaves data committed (each commit correct on its own)
    and no runs row; its commits still carry its record in their `userMetadata`. This finds
    them among the tables' recent commits and records them, so history and lineage say what
    happened. A run that still holds its staging claim is alive (committing its other tables
    right now) and is left to write its own row. `engine` is a `LocalEngine`; returns the run
    ids recorded.

    Example:
        >>> from lakeimg.engine.delta_rs import LocalEngine
        >>> import tempfile
        >>> record_unfinished_runs(LocalEngine(tempfile.mkdtemp()), ["images"], current_run_id="x")
        []
    """
    found: dict[str, dict[str, Any]] = {}
    # Each table's recent commits and the runs table's run ids are read side by side: on an
    # object store each read is a few requests in a row.
    with ThreadPoolExecutor(len(tables) + 1, thread_name_prefix="lakeimg-runs") as pool:
        recent = [pool.submit(_recent_commits, engine, table) for table in tables]
        recorded = pool.submit(_recorded_run_ids, engine)
        histories = [future.result() for future in recent]
        known = recorded.result()
    for table, entries in zip(tables, histories, strict=True):
        for entry in entries:
            meta = entry.get("lakeimg")
            run_id = meta.get("run_id") if isinstance(meta, dict) else None
            if not run_id or run_id == current_run_id or meta.get("job") not in ("ingest", "transform"):
                continue
            if run_id in known:
                continue
            if run_id not in found and staging_is_live(engine.lake, run_id):
                known.add(run_id)  # alive: it writes its own row
                continue
            outputs = found.setdefault(run_id, {"meta": meta, "outputs": {}})["outputs"]
            outputs[table] = max(outputs.get(table, -1), int(entry["version"]))
    if not found:
        return []
    rows = [_incomplete_record(run["meta"], run["outputs"]).to_arrow() for run in found.values()]
    engine.append(RUNS_TABLE, pa.concat_tables(rows), table_contract("runs"), {"job": "record_unfinished_runs"})
    return sorted(found)


def _recent_commits(engine: Any, table: str) -> list[dict[str, Any]]:
    try:
        return engine.history(table, _UNFINISHED_LOOKBACK)
    except TableNotFoundError:
        return []


def _recorded_run_ids(engine: Any) -> set[str]:
    try:
        return set(engine.read(RUNS_TABLE, columns=["run_id"])["run_id"].to_pylist())
    except TableNotFoundError:
        return set()


def _before_commits(engine: Any, tables: Sequence[str], run_id: str) -> None:
    if not engine.exists(RUNS_TABLE):
        engine.create_empty(RUNS_TABLE, table_contract("runs"))
    record_unfinished_runs(engine, tables, current_run_id=run_id)


def prepare_run_commits(engine: Any, record: RunRecord, tables: Sequence[str]) -> Future[None] | None:
    """Start `run_commits`' first step in a thread, for a job to overlap it with its own work
    (reading and decoding files) and pass to `run_commits` as `prepared`. It writes nothing but
    the runs table (made if missing) and `incomplete` rows of earlier runs, so a job that fails
    before its commits leaves nothing of its own behind. None (`run_commits` does the step
    itself) on an engine whose commits must not run in threads (`Engine.commits_in_threads`).

    Example:
        >>> from lakeimg.engine.delta_rs import LocalEngine
        >>> import tempfile
        >>> record = RunRecord(run_id="r1", job="ingest", engine="local", target_table="images", spec={}, started_at=utc_now())
        >>> prepare_run_commits(LocalEngine(tempfile.mkdtemp()), record, ["images"]).result()
    """
    if not engine.commits_in_threads:
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="lakeimg-runs")
    try:
        return pool.submit(_before_commits, engine, list(tables), record.run_id)
    finally:
        pool.shutdown(wait=False)


def _incomplete_record(meta: dict[str, Any], outputs: dict[str, int]) -> RunRecord:
    spec = meta.get("spec")
    started = meta.get("started_at")
    started_at = dt.datetime.fromisoformat(str(started)) if started else utc_now()
    return RunRecord(
        run_id=meta["run_id"],
        job=meta["job"],
        engine=meta.get("engine") or "local",
        target_table=meta.get("target_table") or "",
        spec=json.loads(spec) if isinstance(spec, str) else (spec or {}),
        started_at=started_at if started_at.tzinfo else started_at.replace(tzinfo=dt.timezone.utc),
        status="incomplete",
        target_version=outputs.get(meta.get("target_table") or ""),
        inputs=list(meta.get("inputs") or []),
        outputs=[{"table": t, "version": v} for t, v in sorted(outputs.items())],
        sources=list(meta.get("sources") or []),
        code_version=meta.get("code_version") or __version__,
    )


@contextlib.contextmanager
def run_commits(engine: Any, record: RunRecord, tables: Sequence[str],
                prepared: Future[None] | None = None) -> Iterator[dict[str, int]]:
    """The bookkeeping around a run's commits to `tables` (a `LocalEngine` writes the runs table).

    Before: the runs table exists (a lake whose runs table cannot be written fails here, before
    any data commit) and runs that committed to `tables` without a row are recorded
    `incomplete` (done here, or already started by `prepare_run_commits` as `prepared`). Yields a dict the job fills with table -> version as its commits land; the
    job's last step is its own runs row. If the job fails after a commit landed, nothing is
    undone (another writer may have committed on top): the run is recorded `failed` with what
    landed and a `PartialRunError` is raised (a Ctrl-C stays a KeyboardInterrupt).

    Example:
        >>> from lakeimg.engine.delta_rs import LocalEngine
        >>> import tempfile
        >>> record = RunRecord(run_id="r1", job="ingest", engine="local", target_table="images", spec={}, started_at=utc_now())
        >>> with run_commits(LocalEngine(tempfile.mkdtemp()), record, ["images"]) as landed:
        ...     landed
        {}
    """
    if prepared is not None:
        prepared.result()
    else:
        _before_commits(engine, tables, record.run_id)
    engine.preload(RUNS_TABLE)  # read while the job commits: its row is the last write
    landed: dict[str, int] = {}
    try:
        yield landed
    except BaseException as exc:
        if not landed:
            raise
        record.status = "failed"
        record.outputs = [{"table": t, "version": v} for t, v in landed.items()]
        record.target_version = landed.get(record.target_table)
        record.finished_at = utc_now()
        # Best effort: when this write fails too, the next run records the run as incomplete.
        with contextlib.suppress(Exception):
            engine.append(RUNS_TABLE, record.to_arrow(), table_contract("runs"), record.commit_metadata())
        if isinstance(exc, Exception) and not isinstance(exc, PartialRunError):
            raise PartialRunError(record.run_id, dict(landed), exc) from exc
        raise
