"""What a lake holds: its tables with kind, rows, version, last change and size (`lake_inventory`,
`lakeimg tables`), and one table's schema, versions, properties and lineage (`table_info`,
`lakeimg info`).

Everything comes from the Delta log (add actions' record counts and sizes, commit infos): no
data file is read. A table's kind follows from its name and columns (the contracts in
`schemas/`): `images` (an ingest table), `rejects`, `tiles`, `derived` (a transform's output),
`runs`, or `training set` (one row per training set, named `trainset:NAME` as `lineage` takes it).

Example:
    >>> import tempfile
    >>> lake_inventory(LocalEngine(tempfile.mkdtemp()))
    []
    >>> table_kind("cats_256_rejects", ["uri", "error_class"])
    'rejects'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lakeimg.catalog.history import table_history
from lakeimg.catalog.lineage import table_lineage
from lakeimg.catalog.maintenance import readable_versions
from lakeimg.catalog.trainsets import list_trainsets
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import TableNotFoundError
from lakeimg.tables import RUNS_SQL_NAME, RUNS_TABLE, TRAINSETS_TABLE, sql_tables, table_path

__all__ = ["TableSummary", "TableInfo", "lake_inventory", "table_info", "table_kind", "sql_table_names"]


@dataclass(frozen=True)
class TableSummary:
    """One line of `lakeimg tables`: a table (or a training set) of the lake."""

    name: str
    kind: str
    rows: int | None
    version: int | None
    last_change: str | None
    size_bytes: int | None
    files: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TableInfo:
    """`lakeimg info TABLE[@V]`: a table version's schema, size, versions, properties, lineage."""

    name: str
    kind: str
    version: int
    latest_version: int
    rows: int
    files: int
    size_bytes: int
    last_change: str | None
    schema: list[dict[str, Any]]
    properties: dict[str, str]
    versions: list[dict[str, Any]]
    readable_versions: list[int]
    lineage: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def table_kind(name: str, columns: Sequence[str]) -> str:
    """The kind of a lake table from its name and columns (see the module docstring)."""
    cols = set(columns)
    if name in (RUNS_TABLE, RUNS_SQL_NAME):
        return "runs"
    if name == TRAINSETS_TABLE:
        return "training set"
    if name.endswith("_rejects") and "error_class" in cols:
        return "rejects"
    if name.endswith("_tiles") and {"tile_row", "tile_col", "level"} <= cols:
        return "tiles"
    if {"variant", "source_sha256"} <= cols:
        return "derived"
    if {"content_sha256", "format"} <= cols:
        return "images"
    return "other"


def sql_table_names(engine: LocalEngine) -> list[str]:
    """The names the lake's tables have in SQL (and in every command), sorted, `lakeimg_runs` last."""
    return list(sql_tables(engine.lake, engine.tables()))


def _snapshot_figures(engine: LocalEngine, path: str, version: VersionLike) -> tuple[int, int, int]:
    """(rows, files, bytes) of a snapshot, from its add actions (the Delta log only)."""
    actions = engine.add_actions(path, version)
    rows = actions["num_records"].to_pylist() if "num_records" in actions.column_names else []
    sizes = actions["size_bytes"].to_pylist() if "size_bytes" in actions.column_names else []
    return sum(r or 0 for r in rows), actions.num_rows, sum(s or 0 for s in sizes)


def _last_change(engine: LocalEngine, path: str) -> str | None:
    entries = engine.history(path, 1)
    stamp = entries[0].get("timestamp") if entries else None
    return None if stamp is None else dt.datetime.fromtimestamp(stamp / 1000.0, tz=dt.timezone.utc).isoformat()


def lake_inventory(engine: LocalEngine) -> list[TableSummary]:
    """Every table of the lake (SQL names) and every training set, with kind and figures."""
    out = []
    for name, path in sql_tables(engine.lake, engine.tables()).items():
        rows, files, size = _snapshot_figures(engine, path, None)
        kind = table_kind(path, engine.arrow_schema(path).names)
        out.append(TableSummary(name, kind, rows, engine.version(path), _last_change(engine, path), size, files))
    for record in list_trainsets(engine):
        out.append(TableSummary(f"trainset:{record.name}", "training set", sum(record.counts.values()), record.version,
                                str(record.created_at), None, None))
    return out


def table_info(engine: LocalEngine, name: str, version: VersionLike = None, *, history_limit: int = 20) -> TableInfo:
    """A table version's schema, row count, size, newest versions, properties and lineage.

    `name` is the table's SQL name (`lakeimg_runs` for the runs table); `versions` and
    `readable_versions` cover the newest `history_limit` versions.
    """
    path = table_path(name)
    if not engine.exists(path):
        raise TableNotFoundError(name, engine.lake, available=sql_table_names(engine))
    resolved = engine.resolve_version(path, version)
    schema = engine.arrow_schema(path, resolved)
    rows, files, size = _snapshot_figures(engine, path, resolved)
    versions = [
        {"version": e.version, "timestamp": e.timestamp, "operation": e.operation, "job": e.job, "status": e.status,
         "run_id": e.run_id}
        for e in table_history(engine, path, limit=history_limit)
    ]
    lineage = []
    if path != RUNS_TABLE:
        for step in table_lineage(engine, path, resolved):
            at = step.table if step.version is None else f"{step.table}@{step.version}"
            lineage.append(f"{'  ' * step.depth}{at} <- {step.job or step.operation or '?'} run {step.run_id or '-'}")
    return TableInfo(
        name=name, kind=table_kind(path, schema.names), version=resolved, latest_version=engine.version(path) or 0,
        rows=rows, files=files, size_bytes=size, last_change=_last_change(engine, path),
        schema=[{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        properties=engine.table_properties(path), versions=versions,
        readable_versions=readable_versions(engine, path, newest=history_limit), lineage=lineage,
    )
