"""The engine interface: what a job asks of an engine, and the typed values it passes.

Both engines implement `Engine`: `LocalEngine` (delta-rs and a process pool, engine/delta_rs.py)
and `SparkEngine` (delta-spark and mapInArrow, engine/spark.py). A job is written once as
plan -> `stage` (a kernel mapped over inputs; its rows land in staging, never all in the
driver's memory) -> `commit` (one `Write` = one Delta commit, retried on typed conflicts).

Example:
    >>> to_datetime("2026-01-01T00:00:00Z").isoformat()
    '2026-01-01T00:00:00+00:00'
    >>> task_partitions(100, parallelism=2, rows_per_task=16)
    7
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.errors import ConcurrentWriteError, SpecError
from lakeimg.schemas import TableContract

__all__ = [
    "COMMIT_ATTEMPTS",
    "CommitResult",
    "Engine",
    "EngineName",
    "Kernel",
    "MergeMetrics",
    "SnapshotRows",
    "Stage",
    "Staged",
    "VersionLike",
    "Write",
    "WriteMode",
    "parse_history",
    "task_partitions",
    "to_datetime",
    "with_retries",
]

VersionLike = int | str | dt.datetime | None
EngineName = Literal["local", "spark"]
WriteMode = Literal["append", "replace", "overwrite"]
Kernel = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
META_KEY = "userMetadata"
COMMIT_ATTEMPTS = 4

_T = TypeVar("_T")


def to_datetime(value: str | dt.datetime) -> dt.datetime:
    """A timestamp version (ISO text or datetime) as an aware datetime; naive means UTC."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"not a version or an ISO timestamp: {value!r} (e.g. 3 or 2026-01-31T12:00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


def with_retries(table: str, operation: Callable[[], _T], conflicts: tuple[type[BaseException], ...]) -> _T:
    """Run one commit, again after each typed conflict (`conflicts`: the engine's exception
    classes for "another writer committed first"); `ConcurrentWriteError` after `COMMIT_ATTEMPTS`.

    Example:
        >>> with_retries("t", lambda: 1, (KeyError,))
        1
    """
    last: BaseException | None = None
    for _attempt in range(COMMIT_ATTEMPTS):
        try:
            return operation()
        except conflicts as exc:  # a concurrent writer won; the operation re-reads and tries again
            last = exc
    raise ConcurrentWriteError(table, COMMIT_ATTEMPTS, str(last))


def task_partitions(rows: int, *, parallelism: int, rows_per_task: int) -> int:
    """How many tasks `rows` input rows are split into on a distributed engine: at least two per
    core (so a slow file does not leave cores idle), at most one per row."""
    return max(1, min(rows, max(2 * max(1, parallelism), math.ceil(rows / max(1, rows_per_task)))))


def parse_history(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A commit info with lakeimg's run record (the commit's userMetadata JSON) under "lakeimg".

    Example:
        >>> parse_history({"version": 1, "userMetadata": '{"run_id": "r"}'})["lakeimg"]
        {'run_id': 'r'}
    """
    out = dict(entry)
    record = out.get(META_KEY)
    if isinstance(record, str):
        try:
            out["lakeimg"] = json.loads(record)
        except json.JSONDecodeError:
            pass
    return out


def commit_metadata_json(metadata: Mapping[str, Any]) -> str:
    """The run record as a commit's userMetadata text (the same on both engines)."""
    return json.dumps(metadata, sort_keys=True, default=str)


@dataclass(frozen=True)
class CommitResult:
    """What one commit did: the table's version after it, and whether it made one."""

    version: int | None
    committed: bool = False


@dataclass(frozen=True)
class MergeMetrics:
    """Rows a replace-by-key changed, counted from the keys a job planned with.

    Example:
        >>> MergeMetrics.of(old={"a", "b"}, new={"b", "c"}, deleted={"a"})
        MergeMetrics(inserted=1, updated=1, deleted=1)
    """

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @classmethod
    def of(cls, *, old: Iterable[Any], new: Iterable[Any], deleted: Iterable[Any]) -> MergeMetrics:
        old, new = set(old), set(new)
        return cls(len(new - old), len(new & old), len((set(deleted) & old) - new))


@dataclass(frozen=True)
class SnapshotRows:
    """Input rows of a stage read by the engine itself from a table snapshot (pixels never pass
    through the driver): `columns` of the rows whose uri is in `uris` (`urisets.uri_set`)."""

    table: str
    version: int
    columns: tuple[str, ...]
    uris: pa.Array


class Staged(Protocol):
    """A stage's output, kept where the engine put it until a commit moves it into a table.

    A kernel's output row is a reject when its `error_class` is set. The other rows are the
    output; rows whose `held` column is true are held back (small rows the job finishes on the
    driver, e.g. tiled images whose thumbnail comes from their tiles).
    """

    def keys(self, columns: Sequence[str] = ("uri",)) -> pa.Table:
        """Key columns (uri, variant) of the output rows (not held, not rejects), to the driver."""
        ...

    def held(self) -> pa.Table:
        """The held rows, every column (to the driver)."""
        ...

    def rejects(self) -> pa.Table:
        """The reject rows (to the driver)."""
        ...

    def discard(self) -> None:
        """Remove what was staged (after the commit, or a failure)."""
        ...


@dataclass(frozen=True)
class Stage:
    """A kernel to map over inputs (`extra`: more input rows from the driver), its output staged
    under `LAKE/_lakeimg/staging/<label>` (label starts with the run id).

    A row whose kernel crashes or overruns `task_timeout_s` becomes `on_failure(row,
    error_class, message)`; `prepare` runs once per worker before the kernel; `contract` is the
    output table's (rows staged in its schema); `held` names the output column marking rows held
    back for the driver; `workers` sizes a local pool (0: in this process). `target` names the
    table a "replace" commit will move the staged rows into: on an object-store lake the
    embedded engine then writes them straight under their final names there while the stage
    runs (`engine/staged.py`), so uploading overlaps the work.

    `on_progress(done, total)` counts input rows; with `progress_column` it counts units of
    work instead: the column's sum over the input rows is the total, over the output rows done.
    """

    kernel: Kernel
    inputs: pa.Table | SnapshotRows
    label: str
    output_schema: pa.Schema
    contract: TableContract | None = None
    held: str | None = None
    on_failure: Callable[[dict[str, Any], str, str], dict[str, Any]] | None = None
    prepare: Callable[[], None] | None = None
    task_timeout_s: float = 600.0
    rows_per_task: int = 16
    extra: pa.Table | None = None
    on_progress: Callable[[int, int], None] | None = None
    workers: int | None = None
    progress_column: str | None = None
    target: str | None = None

    @property
    def total(self) -> int:
        """How many input rows the stage maps."""
        rows = self.inputs.num_rows if isinstance(self.inputs, pa.Table) else len(self.inputs.uris)
        return rows + (self.extra.num_rows if self.extra is not None else 0)

    def progress_total(self) -> int:
        """What `on_progress` counts up to: input rows, or the sum of `progress_column` over
        the driver's input rows."""
        if self.progress_column is None:
            return self.total
        return sum(pc.sum(t[self.progress_column]).as_py() or 0
                   for t in (self.inputs, self.extra) if isinstance(t, pa.Table) and self.progress_column in t.column_names)


@dataclass(frozen=True)
class Write:
    """One Delta commit: rows into `table`, in the contract's schema.

    Modes: "append"; "replace" drops every row whose uri is in `replace` or among the new rows,
    then adds the new rows (insert, replace and delete by key in one commit); "overwrite"
    replaces the whole table, schema included. The rows are a stage's output (`staged`), small
    rows from the driver (`rows`) and Parquet files already in the contract's schema (`files`,
    e.g. tiles written by a kernel). `create`: make the (empty) table even with nothing to write.
    `row_group_rows`: at most this many rows per Parquet row group in the files the engine
    writes itself (files committed as they are keep their own layout). Nothing to do: no commit.
    """

    table: str
    contract: TableContract
    mode: WriteMode = "replace"
    staged: Staged | None = None
    rows: pa.Table | None = None
    files: tuple[str, ...] = ()
    replace: frozenset[str] | pa.Array = frozenset()  # a `urisets.uri_set` when there are many
    metadata: Mapping[str, Any] | None = None
    create: bool = False
    row_group_rows: int | None = None


class Engine(Protocol):
    """What jobs and the catalog ask of an engine (see DEVELOPERS.md, "Engines")."""

    name: EngineName
    lake: str
    # Whether commits to different tables may run at once in threads of one process: a job
    # overlaps them on an object store, where each commit is requests in a row. delta-spark takes
    # a commit's userMetadata from session settings, which threads would share, so Spark says no.
    commits_in_threads: bool

    def location(self, name: str) -> str:
        """Where a table lives (`LAKE/<table>`)."""
        ...

    def exists(self, name: str) -> bool:
        """Whether the table exists."""
        ...

    def version(self, name: str) -> int | None:
        """The latest version, None when the table does not exist."""
        ...

    def resolve_version(self, name: str, version: VersionLike = None) -> int:
        """The version a version-like (int, timestamp, None = latest) selects."""
        ...

    def arrow_schema(self, name: str, version: VersionLike = None) -> pa.Schema:
        """The table's schema at a version, as Arrow."""
        ...

    def read(self, name: str, *, version: VersionLike = None, columns: Sequence[str] | None = None) -> pa.Table:
        """A snapshot's columns as Arrow on the driver (small columns: keys, metadata)."""
        ...

    def read_batches(self, name: str, *, columns: Sequence[str], version: VersionLike = None, batch_rows: int = 64) -> Iterator[pa.Table]:
        """A snapshot's columns streamed to the driver a few rows at a time (image bytes too)."""
        ...

    def changes(self, name: str, starting_version: int, ending_version: int | None = None, columns: Sequence[str] = ("uri",)) -> pa.Table:
        """The change data feed between two versions: `columns`, `_change_type`, `_commit_version`."""
        ...

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first, with the run record under "lakeimg" (`parse_history`)."""
        ...

    def tables(self) -> list[str]:
        """The Delta tables in the lake (names relative to the lake)."""
        ...

    def reader(self) -> Any:
        """The engine for small driver-side reads with row-group pushdown (the catalog's read
        path: region reads): a `LocalEngine` on the same lake, on either engine."""
        ...

    def start_workers(self) -> None:
        """Start what `stage` will need (the embedded engine's worker pool) in the background,
        so that it gets ready while the driver lists and plans; nothing to wait for."""
        ...

    def preload(self, name: str) -> None:
        """Start reading what the next append to table `name` needs (its latest snapshot) in the
        background, while the job commits elsewhere; nothing to wait for, nothing if it fails."""
        ...

    def stage(self, stage: Stage) -> Staged:
        """Map the stage's kernel over its inputs; its output stays staged until a commit."""
        ...

    def commit(self, write: Write) -> CommitResult:
        """Apply one `Write` as one Delta commit, retried on typed conflicts."""
        ...

    def append(self, name: str, rows: pa.Table, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """`commit` of an append of small rows (the runs row); the new version."""
        ...

    def create_empty(self, name: str, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """Create the table with the contract's schema and properties, if missing; its version."""
        ...

    def optimize(self, name: str, *, metadata: Mapping[str, Any] | None = None,
                 row_group_rows: int | None = None) -> dict[str, int]:
        """Compact small files (one commit): numFilesAdded, numFilesRemoved. `row_group_rows`:
        at most this many rows per Parquet row group in the files written (the table's layout)."""
        ...

    def vacuum(self, name: str, *, retention_hours: float, keep_versions: Sequence[int] = (), dry_run: bool = True) -> list[str]:
        """The files VACUUM removes (or would, with `dry_run`)."""
        ...

    def table_properties(self, name: str) -> dict[str, str]:
        """The table's Delta properties."""
        ...

    def close(self) -> None:
        """Release what the engine holds (a Spark session it built)."""
        ...
