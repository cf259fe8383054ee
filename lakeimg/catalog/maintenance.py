"""Safe maintenance: compact small files and vacuum, never breaking a pinned training set.

What must stay readable: every training set's pinned (table, version), and every version its
lineage needs (the versions that made it and their recorded inputs, so `reproduce` keeps
working). Vacuum runs with delta-rs' `keep_versions` set to those versions; before deleting,
a dry run is checked against the files of each protected version and the table is refused with
a clear message if anything protected would go. Afterwards each pinned set is checked to still
list only existing files.

Old log entries matter too: Delta writers delete log files older than
`delta.logRetentionDuration` (30 days) whenever they write a checkpoint, after which old versions
cannot be loaded at all. Maintenance therefore sets `delta.enableExpiredLogCleanup=false` on every
table that holds a protected version (one property commit, only when not yet set).

Example:
    >>> report = maintain(LocalEngine(lake_dir), optimize=True, vacuum_hours=0)
    >>> report.protected, report.pinned_sets_readable
    ({'images': [0]}, {'pets': True})
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from lakeimg.catalog.lineage import lineage_nodes
from lakeimg.catalog.trainsets import list_trainsets
from lakeimg.engine._delta_txn import remove_abandoned_uploads
from lakeimg.engine.base import Engine
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import ROW_GROUP_ROWS, ensure_lake, require_lake
from lakeimg.engine.staging import remove_stale_staging
from lakeimg.errors import LakeImgError, SpecError
from lakeimg.kernels.tiles import TILES_PER_ROW_GROUP
from lakeimg.schemas import table_contract
from lakeimg.storage import is_remote, join_url
from lakeimg.tables import RUNS_TABLE, RunRecord, new_run_id, tiles_of, utc_now

__all__ = ["MaintenanceReport", "TableMaintenance", "maintain", "protected_versions", "readable_versions"]

_KEEP_LOGS = {"delta.enableExpiredLogCleanup": "false"}


@dataclass(frozen=True)
class TableMaintenance:
    """What maintenance did to one table (`to_dict` leaves out the steps that did not run)."""

    kept_versions: list[int]
    log_cleanup_disabled: bool | None = None
    optimize: dict[str, int] | None = None  # files_added, files_removed
    vacuum: dict[str, Any] | None = None  # removed + dry_run, or refused

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class MaintenanceReport:
    """A maintenance run: per-table results, refusals, problems, protected versions, and
    whether every pinned training set still reads (`ok`: nothing refused, every set readable)."""

    run_id: str
    tables: dict[str, TableMaintenance]
    refused: list[str]
    problems: list[str]
    protected: dict[str, list[int]]
    pinned_sets_readable: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.refused and all(self.pinned_sets_readable.values())

    def to_dict(self) -> dict[str, Any]:
        """The report as the CLI's `--json` prints it."""
        return {"run_id": self.run_id, "tables": {n: t.to_dict() for n, t in self.tables.items()},
                "refused": self.refused, "problems": self.problems, "protected": self.protected,
                "pinned_sets_readable": self.pinned_sets_readable, "ok": self.ok}



def _row_group_rows(table: str) -> int:
    """Rows per row group a compaction keeps: a few tiles in a tiles table (a deep-zoom or
    region read fetches one small group), the data layout's `ROW_GROUP_ROWS` elsewhere.

    Example:
        >>> _row_group_rows("images_tiles") == TILES_PER_ROW_GROUP, _row_group_rows("images") == ROW_GROUP_ROWS
        (True, True)
    """
    return TILES_PER_ROW_GROUP if table.endswith(tiles_of("")) else ROW_GROUP_ROWS  # the suffix is reserved

def protected_versions(engine: LocalEngine) -> tuple[dict[str, set[int]], list[str]]:
    """{table: versions to keep} over all training sets, plus problems found on the way.

    Example:
        >>> protected_versions(LocalEngine("/tmp/empty-lake"))
        ({}, [])
    """
    keep: dict[str, set[int]] = {}
    problems = []
    for record in list_trainsets(engine):
        keep.setdefault(record.table, set()).add(record.version)
        try:
            nodes = lineage_nodes(engine, record.name)
        except LakeImgError as exc:
            problems.append(f"training set {record.name!r}: lineage unreadable ({exc})")
            continue
        for table, version in nodes:
            keep.setdefault(table, set()).add(version)
    return keep, problems


def _normal(path: str, location: str) -> str:
    """A data file as one spelling: local paths normalized, object-store URLs as they are."""
    if is_remote(path):
        return path
    if is_remote(location):
        return join_url(location, path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(location, path))


def _files_of(engine: LocalEngine, table: str, version: int) -> set[str]:
    location = engine.location(table)
    return {_normal(p, location) for p in engine.data_files(table, version)}


def maintain(
    engine: Engine,
    *,
    optimize: bool = False,
    vacuum_hours: float | None = None,
    dry_run: bool = False,
    tables: list[str] | None = None,
) -> MaintenanceReport:
    """Compact (`optimize`) and vacuum files older than `vacuum_hours`, keeping protected versions.

    OPTIMIZE and VACUUM run on `engine`; which versions to keep is read through its delta-rs
    `reader()`. Spark's VACUUM cannot keep chosen old versions, so on Spark a table whose
    protected versions would lose files is refused rather than vacuumed (the same check guards
    delta-rs' `keep_versions`).

    Example:
        >>> maintain(LocalEngine(lake_dir), vacuum_hours=168, dry_run=True).ok
        True
    """
    if vacuum_hours is not None and not vacuum_hours >= 0:
        raise SpecError(f"vacuum hours must be a number >= 0, not {vacuum_hours}")
    storage = getattr(engine, "options", None)
    require_lake(engine.lake, storage)
    if not dry_run:
        ensure_lake(engine.lake, storage)  # writable: fail before the first change, not halfway
        remove_stale_staging(engine.lake)
        remove_abandoned_uploads(engine.reader())  # of commits whose writer died first
    reader = engine.reader()
    run = RunRecord(run_id=new_run_id(), job="maintain", engine=engine.name, target_table="*",
                    spec={"optimize": optimize, "vacuum_hours": vacuum_hours, "dry_run": dry_run},
                    started_at=utc_now())
    names = tables or engine.tables()
    keep, problems = protected_versions(reader)
    refused: list[str] = []
    results: dict[str, TableMaintenance] = {}
    metadata = run.commit_metadata()
    for name in names:
        protected = sorted(keep.get(name, ()))
        logs = optimized = vacuumed = None
        if protected and not dry_run and reader.table_properties(name).get(next(iter(_KEEP_LOGS))) != "false":
            reader.set_table_properties(name, _KEEP_LOGS)
            logs = True
        if optimize and not dry_run and name != RUNS_TABLE:
            metrics = engine.optimize(name, metadata=metadata, row_group_rows=_row_group_rows(name))
            optimized = {"files_added": int(metrics.get("numFilesAdded", 0)), "files_removed": int(metrics.get("numFilesRemoved", 0))}
        if vacuum_hours is not None:
            vacuumed = _vacuum(engine, reader, name, vacuum_hours, protected, dry_run, problems)
            if "refused" in vacuumed:
                refused.append(vacuumed["refused"])
        results[name] = TableMaintenance(protected, logs, optimized, vacuumed)
    report = MaintenanceReport(run.run_id, results, refused, problems, {t: sorted(v) for t, v in sorted(keep.items())},
                               _check_pinned(reader))
    if not dry_run:
        run.finished_at = utc_now()
        run.counts = {"tables": len(names), "refused": len(refused)}
        engine.append(RUNS_TABLE, run.to_arrow(), table_contract("runs"), run.commit_metadata())
    return report


def _vacuum(engine: Engine, reader: LocalEngine, name: str, hours: float, protected: list[int], dry_run: bool, problems: list[str]) -> dict[str, Any]:
    """Vacuum one table unless a dry run says a protected version would lose files."""
    candidates = engine.vacuum(name, retention_hours=hours, keep_versions=protected, dry_run=True)
    location = engine.location(name)
    doomed = {_normal(c, location) for c in candidates}
    clash = []
    for version in protected:
        try:
            if doomed & _files_of(reader, name, version):
                clash.append(version)
        except LakeImgError as exc:
            problems.append(f"{name}@{version}: {exc}")
    if clash:
        return {"refused": f"refused to vacuum {name}: it would delete files that protected versions "
                           f"{clash} still read (training sets or their lineage); nothing was deleted"}
    removed = candidates if dry_run else engine.vacuum(name, retention_hours=hours, keep_versions=protected, dry_run=False)
    return {"removed": len(removed), "dry_run": dry_run}


def _check_pinned(engine: LocalEngine) -> dict[str, bool]:
    status = {}
    for record in list_trainsets(engine):
        try:
            files = engine.data_files(record.table, record.version)
            status[record.name] = all(engine.file_exists(f) for f in files)
        except Exception:  # noqa: BLE001 - an unreadable pinned version is exactly what we report
            status[record.name] = False
    return status


def readable_versions(engine: LocalEngine, table: str, *, newest: int = 500) -> list[int]:
    """Versions of `table` (among the `newest` ones) whose log entry and data files all still
    exist: what time travel can read after vacuum or log cleanup.

    Example:
        >>> readable_versions(LocalEngine(lake_dir), "images")
        [0]
    """
    latest = engine.version(table)
    if latest is None:
        return []
    out = []
    for version in range(latest, max(-1, latest - newest), -1):
        try:
            files = engine.data_files(table, version)
        except Exception:  # noqa: BLE001 - its log entry is gone: older ones are too
            break
        if all(engine.file_exists(f) for f in files):
            out.append(version)
    return sorted(out)
