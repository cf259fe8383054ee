"""The embedded engine: Delta tables through delta-rs, kernels mapped over a process pool. No JVM.

`LocalEngine` is the one place the embedded engine touches Delta. Reads never go through
deltalake's pyarrow-dataset path (`to_pyarrow_dataset`/`to_pyarrow_table`): on these machines it
aborts the interpreter at exit about half the time (delta-rs #2184), which breaks the exit codes
scheduled jobs rely on. Instead delta-rs resolves the snapshot's file list from the log and
pyarrow.parquet reads those files. lakeimg's tables never use deletion vectors or column
mapping (see schemas/README.md), so the file list is the table.

Example:
    >>> import tempfile, pyarrow as pa
    >>> eng = LocalEngine(tempfile.mkdtemp())
    >>> eng.version("images") is None
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeimg.errors import ConcurrentWriteError, LakeDamagedError, LakeImgError, TableNotFoundError
from lakeimg.schemas import TableContract
from lakeimg.tables import lake_relative
from lakeimg.uris import has_scheme, open_regular_file, uri_to_path

__all__ = ["LocalEngine", "MergeResult", "VersionLike", "table_location", "cast_to_schema"]

VersionLike = int | str | dt.datetime | None

_COMMIT_ATTEMPTS = 4
META_KEY = "userMetadata"


def table_location(lake: str | os.PathLike[str], name: str) -> str:
    """Where a table lives inside a lake: `LAKE/<name>`, and `LAKE/_lakeimg/runs` for runs.

    The last guard of the naming rule (lakeimg.tables): a name whose path would leave the lake
    (`../x`, `/abs`) raises InvalidNameError, whichever caller it came through.
    """
    root = str(lake).rstrip("/")
    if name in ("runs", "_lakeimg/runs"):
        return f"{root}/_lakeimg/runs"
    return f"{root}/{lake_relative(name)}"


@dataclass(frozen=True)
class MergeResult:
    """What a MERGE did. `committed` is False when there was nothing to do (no new version)."""

    version: int | None
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    committed: bool = False
    replaced: frozenset[str] = frozenset()  # commit_files_by_uri: the dropped uris the table held


def _to_datetime(value: str | dt.datetime) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:  # naive means UTC (delta-rs' convention)
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


def cast_to_schema(table: pa.Table, schema: pa.Schema, columns: Sequence[str] | None = None) -> pa.Table:
    """Give a table read from Parquet the Delta schema's exact Arrow types (Spark writes INT96 etc.)."""
    names = list(columns) if columns is not None else [n for n in schema.names if n in table.column_names]
    arrays, fields = [], []
    for name in names:
        target = schema.field(name) if name in schema.names else table.schema.field(name)
        col = table[name]
        if col.type != target.type:
            try:
                col = col.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                target = table.schema.field(name)
        arrays.append(col)
        fields.append(target.with_nullable(True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class StagedParquet:
    """Rows streamed to Parquet files in a local staging folder (path or file:// URI), in a
    table contract's schema, to be moved into the table by `LocalEngine.commit_files_by_uri`:
    a job's output is written as it comes and never has to fit in the driver's memory (a MERGE
    from Arrow needs all of it).

    Files roll over at `file_bytes`; row groups hold `row_group_rows` rows, so a later streamed
    read (`read_batches`) holds a few images, not a whole file.

    Example:
        >>> from lakeimg.schemas import table_contract
        >>> staged = StagedParquet("/tmp/lakeimg-doc-stage", table_contract("rejects"))
        >>> staged.finish(), staged.uris
        ([], [])
        >>> staged.discard()
    """

    def __init__(self, folder: str, contract: TableContract, *, file_bytes: int = 256 << 20, row_group_rows: int = 64):
        self.folder, self.contract = _local_path(folder), contract
        self.file_bytes, self.row_group_rows = file_bytes, row_group_rows
        self.files: list[str] = []
        self.uris: list[str] = []  # of every row written, in order (a commit counts with them)
        self._writer: pq.ParquetWriter | None = None
        self._written = 0

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Append rows (any column order; cast to the contract's schema)."""
        if rows.num_rows == 0:
            return
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        table = table.select(self.contract.column_names).cast(self.contract.arrow_schema)
        if self._writer is None:
            os.makedirs(self.folder, exist_ok=True)
            self.files.append(os.path.join(self.folder, f"part-{len(self.files):05d}.parquet"))
            # Page checksums let `lakeimg verify` catch damage in columns that have no hash of their own.
            self._writer = pq.ParquetWriter(self.files[-1], self.contract.arrow_schema, write_page_checksum=True)
            self._written = 0
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.uris += table["uri"].to_pylist()
        self._written += table.nbytes
        if self._written >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[str]:
        """Close the open file; the finished files, in write order."""
        self._close_file()
        return list(self.files)

    def discard(self) -> None:
        """Remove the staging folder and what is left in it (after the commit, or a failure),
        then its parents while they are empty, up to the lake's `_lakeimg` folder."""
        self._close_file()
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = os.path.dirname(self.folder)
        while os.path.basename(parent) not in ("_lakeimg", ""):
            try:
                os.rmdir(parent)
            except OSError:
                return
            parent = os.path.dirname(parent)


class LocalEngine:
    """delta-rs handle for one lake: versions, snapshot reads, MERGE, append, history."""

    name = "local"

    def __init__(self, lake: str | os.PathLike[str], *, storage_options: dict[str, str] | None = None):
        self.lake = str(lake)
        self.storage_options = storage_options

    # --- reading -------------------------------------------------------------------------

    def location(self, name: str) -> str:
        return table_location(self.lake, name)

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.location(name), storage_options=self.storage_options)

    def delta_table(self, name: str, version: VersionLike = None):
        """delta-rs DeltaTable at a version (int), timestamp (datetime or ISO string) or latest.

        The latest version is loaded only when the log's last entry is whole (`check_log_tail`).
        """
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound

        if version is None:
            check_log_tail(self.location(name), name)

        try:
            table = DeltaTable(
                self.location(name),
                version=version if isinstance(version, int) else None,
                storage_options=self.storage_options,
            )
        except DeltaTableNotFound as exc:
            raise TableNotFoundError(name, self.lake) from exc
        except Exception as exc:  # noqa: BLE001 - delta-rs says "version not found" as DeltaError
            if isinstance(version, int):
                raise TableNotFoundError(f"{name}@{version}", self.lake) from exc
            raise
        if isinstance(version, (str, dt.datetime)):
            when = _to_datetime(version)
            table.load_as_version(when)
            _check_not_before_first(self.location(name), table.version(), when, name, version, self.lake)
        return table

    def version(self, name: str) -> int | None:
        """Current version of a table, or None when it does not exist."""
        if not self.exists(name):
            return None
        return self.delta_table(name).version()

    def data_files(self, name: str, version: VersionLike = None) -> list[str]:
        """Local paths of the Parquet files that make up a snapshot."""
        table = self.delta_table(name, version)
        features = table.protocol().reader_features or []
        if "deletionVectors" in features:
            actions = pa.table(table.get_add_actions(flatten=True))
            if "deletionVector.storageType" in actions.column_names and actions[
                "deletionVector.storageType"
            ].null_count < len(actions):
                raise LakeImgError(f"{name} uses deletion vectors; lakeimg tables are written without them")
        return [_delta_file_path(uri) for uri in table.file_uris()]

    def read_batches(self, name: str, *, columns: Sequence[str], version: VersionLike = None, batch_rows: int = 64) -> Iterator[pa.Table]:
        """A snapshot as a stream of small tables typed like `read`'s, file by file: the memory
        it takes is a few batches, whatever the table's size (the transform streams its image
        bytes to the workers this way).

        Example:
            >>> sum(t.num_rows for t in LocalEngine("/tmp/lake").read_batches("images", columns=["uri"]))  # doctest: +SKIP
            12
        """
        delta = self.delta_table(name, version)
        schema = pa.schema(delta.schema().to_arrow())
        for path in self.data_files(name, version):
            with _damage_as_error(name, delta.version(), path):
                parquet = pq.ParquetFile(path, memory_map=True)
                present = [c for c in columns if c in parquet.schema_arrow.names]
                batches = parquet.iter_batches(batch_size=batch_rows, columns=present)
            while True:
                with _damage_as_error(name, delta.version(), path):
                    batch = next(batches, None)
                if batch is None:
                    break
                piece = pa.Table.from_batches([batch])
                for c in columns:  # a column added after this file was written reads as nulls
                    if c not in present:
                        piece = piece.append_column(c, pa.nulls(piece.num_rows, schema.field(c).type))
                yield cast_to_schema(piece, schema, columns)

    def read(
        self,
        name: str,
        *,
        version: VersionLike = None,
        columns: Sequence[str] | None = None,
        filter: pc.Expression | None = None,
    ) -> pa.Table:
        """A snapshot as an Arrow table, typed by the table's Delta schema; only `columns` are read.

        `version` is an int, a datetime (naive means UTC), an ISO timestamp string, or None.
        """
        table = self.delta_table(name, version)
        schema = pa.schema(table.schema().to_arrow())
        files = self.data_files(name, version)
        if not files:
            empty = pa.schema([f.with_nullable(True) for f in schema]).empty_table()
            return empty.select(list(columns)) if columns else empty
        if filter is None:
            with _damage_as_error(name, table.version(), files, columns):
                result = pq.ParquetDataset(files).read(columns=list(columns) if columns else None)
            return cast_to_schema(result, schema, columns)
        # Filter after casting: files written by delta-rs' MERGE hold string_view columns, which
        # pyarrow's dataset filter kernels reject ("array_filter ... string_view").
        try:
            # Pushdown first: row groups whose statistics miss the filter are never read (the
            # tiles table's region reads rely on it); binding fails up front on string_view files.
            with _damage_as_error(name, table.version(), files, columns, passthrough=pa.ArrowNotImplementedError):
                pushed = pq.ParquetDataset(files, filters=filter).read(columns=list(columns) if columns else None)
            return cast_to_schema(pushed, schema, columns)
        except pa.ArrowNotImplementedError:
            pass
        needed = None
        if columns:
            needed = list(dict.fromkeys([*columns, *_expression_fields(filter, schema.names)]))
        with _damage_as_error(name, table.version(), files, needed):
            result = cast_to_schema(pq.ParquetDataset(files).read(columns=needed), schema, needed)
        result = result.filter(filter)
        return result.select(list(columns)) if columns else result

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first, with lakeimg's run record parsed from userMetadata."""
        out = []
        for entry in self.delta_table(name).history(limit):
            record = entry.get(META_KEY)
            if isinstance(record, str):
                try:
                    entry = {**entry, "lakeimg": json.loads(record)}
                except json.JSONDecodeError:
                    pass
            out.append(entry)
        return out

    def resolve_version(self, name: str, version: VersionLike = None) -> int:
        """The concrete version number a version-like (int, timestamp, None = latest) selects."""
        return self.delta_table(name, version).version()

    def arrow_schema(self, name: str, version: VersionLike = None) -> pa.Schema:
        """The table's Delta schema as Arrow (at a version)."""
        return pa.schema(self.delta_table(name, version).schema().to_arrow())

    def iter_batches(
        self,
        name: str,
        *,
        version: VersionLike = None,
        columns: Sequence[str] | None = None,
        batch_rows: int = 256,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a snapshot file by file (bounded memory), same typing rules as `read`."""
        delta = self.delta_table(name, version)
        schema = pa.schema(delta.schema().to_arrow())
        for path in self.data_files(name, version):
            with _damage_as_error(name, delta.version(), path):
                batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)
            while True:
                with _damage_as_error(name, delta.version(), path):
                    batch = next(batches, None)
                if batch is None:
                    break
                yield from cast_to_schema(pa.Table.from_batches([batch]), schema, columns).to_batches()

    def table_properties(self, name: str) -> dict[str, str]:
        """The table's Delta configuration (table properties)."""
        return dict(self.delta_table(name).metadata().configuration)

    # --- maintenance ---------------------------------------------------------------------

    def optimize(self, name: str, *, target_size: int | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Compact small files into larger ones (a new version with the same rows)."""
        table = self.delta_table(name)
        return self._with_retries(
            name, lambda: table.optimize.compact(target_size=target_size, commit_properties=self._commit_properties(metadata))
        )

    def vacuum(
        self,
        name: str,
        *,
        retention_hours: float,
        keep_versions: Sequence[int] = (),
        dry_run: bool = True,
    ) -> list[str]:
        """Files vacuum removes (or would, with `dry_run`): unreferenced by the versions it keeps.

        `keep_versions` are versions whose files stay whatever their age (pinned training sets
        and the versions their lineage needs).
        """
        table = self.delta_table(name)
        return table.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
            keep_versions=sorted(set(int(v) for v in keep_versions)) or None,
            full=True,
        )

    def set_table_properties(self, name: str, properties: dict[str, str]) -> None:
        """Set Delta table properties (one commit), e.g. to keep old log entries for time travel."""
        table = self.delta_table(name)
        self._with_retries(name, lambda: table.alter.set_table_properties(properties, raise_if_not_exists=False))

    def copy_snapshot(self, name: str, version: VersionLike, target: LocalEngine, target_name: str) -> int:
        """Write one snapshot of a table as a new table (same schema and properties) elsewhere."""
        from deltalake import write_deltalake

        source = self.delta_table(name, version)
        schema = pa.schema([f.with_nullable(True) for f in self.arrow_schema(name, version)])
        data = self.read(name, version=version).cast(schema)
        write_deltalake(
            target.location(target_name),
            data,
            mode="overwrite",
            configuration=dict(source.metadata().configuration),
            storage_options=target.storage_options,
        )
        return target.delta_table(target_name).version()

    # --- writing -------------------------------------------------------------------------

    def _commit_properties(self, metadata: dict[str, Any] | None):
        from deltalake import CommitProperties

        if metadata is None:
            return None
        return CommitProperties(custom_metadata={META_KEY: json.dumps(metadata, sort_keys=True, default=str)})

    def create_empty(self, name: str, contract: TableContract, metadata: dict[str, Any] | None = None) -> int:
        """Create a table with the contract's schema and properties (no rows)."""
        from deltalake import DeltaTable

        table = DeltaTable.create(
            self.location(name),
            schema=contract.arrow_schema,
            mode="ignore",
            name=name.rsplit("/", 1)[-1],
            description=contract.description,
            configuration=contract.properties,
            storage_options=self.storage_options,
            commit_properties=self._commit_properties(metadata),
        )
        return table.version()

    def append(self, name: str, rows: pa.Table, contract: TableContract, metadata: dict[str, Any] | None = None) -> int:
        """Append rows (creating the table on first write); returns the new version."""
        return self._write(name, rows, contract, metadata, mode="append")

    def _write(self, name: str, rows: pa.Table | StagedParquet, contract: TableContract, metadata: dict[str, Any] | None, **mode: Any) -> int:
        """One write_deltalake commit in `mode` (the contract's properties on a new table)."""
        from deltalake import write_deltalake

        if isinstance(rows, StagedParquet):
            import pyarrow.dataset as ds

            files = rows.finish()  # a fresh stream for every attempt: a retry cannot rewind one
            data = lambda: pa.RecordBatchReader.from_batches(  # noqa: E731
                contract.arrow_schema, ds.dataset(files, schema=contract.arrow_schema, format="parquet").to_batches()
            )
        else:
            table = rows.select(contract.column_names).cast(contract.arrow_schema)
            data = lambda: table  # noqa: E731
        exists = self.exists(name)
        self._with_retries(
            name,
            lambda: write_deltalake(
                self.location(name),
                data(),
                **mode,
                configuration=None if exists else contract.properties,
                name=None if exists else name.rsplit("/", 1)[-1],
                description=None if exists else contract.description,
                storage_options=self.storage_options,
                commit_properties=self._commit_properties(metadata),
            ),
        )
        return self.delta_table(name).version()

    def merge_by_key(
        self,
        name: str,
        contract: TableContract,
        *,
        upserts: pa.Table | StagedParquet | None,
        delete_keys: Sequence[Any] = (),
        key: str | Sequence[str] = "uri",
        metadata: dict[str, Any] | None = None,
    ) -> MergeResult:
        """Upsert rows and delete keys in one Delta commit (MERGE keyed on `key`).

        Inserts rows whose key is new, updates rows whose key exists, deletes rows whose key is
        in `delete_keys` (values, or tuples for composite keys). Nothing to do: no commit.
        `upserts` may be a `StagedParquet` for tables keyed on `uri` alone: its files are moved
        into the table in the same one commit (`commit_files_by_uri`), never read into memory.
        """
        keys = [key] if isinstance(key, str) else list(key)
        if isinstance(upserts, StagedParquet):
            if keys != ["uri"]:
                raise ValueError(f"staged upserts merge on uri alone, not on {keys}")
            return self._merge_staged_by_uri(name, contract, upserts, list(delete_keys), metadata)
        upserts = upserts if upserts is not None and upserts.num_rows else None
        if upserts is None and not delete_keys:
            return MergeResult(self.version(name))
        source_schema = pa.schema([f.with_nullable(True) for f in contract.arrow_schema] + [pa.field("_delete", pa.bool_())])
        parts = []
        if upserts is not None:
            data = upserts.select(contract.column_names).cast(pa.schema(list(source_schema)[:-1]))
            parts.append(data.append_column("_delete", pa.array([False] * data.num_rows, pa.bool_())))
        if delete_keys:
            columns = {}
            for field in source_schema:
                if field.name in keys:
                    values = [k if len(keys) == 1 else k[keys.index(field.name)] for k in delete_keys]
                    columns[field.name] = pa.array(values, field.type)
                elif field.name == "_delete":
                    columns[field.name] = pa.array([True] * len(delete_keys), pa.bool_())
                else:
                    columns[field.name] = pa.nulls(len(delete_keys), field.type)
            parts.append(pa.table(columns, schema=source_schema))
        source = pa.concat_tables(parts).combine_chunks()

        if not self.exists(name):
            inserts = source.filter(pc.invert(source["_delete"])).drop_columns(["_delete"])
            if inserts.num_rows == 0:
                return MergeResult(None)
            version = self.append(name, inserts, contract, metadata)
            return MergeResult(version, inserted=inserts.num_rows, committed=True)

        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

        def run_merge():
            table = self.delta_table(name)
            return (
                table.merge(
                    source=source,
                    predicate=predicate,
                    source_alias="s",
                    target_alias="t",
                    error_on_type_mismatch=False,
                    commit_properties=self._commit_properties(metadata),
                )
                .when_matched_delete(predicate="s._delete = true")
                .when_matched_update_all(predicate="s._delete = false", except_cols=["_delete"])
                .when_not_matched_insert_all(predicate="s._delete = false", except_cols=["_delete"])
                .execute()
            )

        before = self.version(name)
        metrics = self._with_retries(name, run_merge)
        after = self.version(name)
        return MergeResult(
            after,
            inserted=int(metrics.get("num_target_rows_inserted", 0)),
            updated=int(metrics.get("num_target_rows_updated", 0)),
            deleted=int(metrics.get("num_target_rows_deleted", 0)),
            committed=after != before,
        )

    def _merge_staged_by_uri(
        self, name: str, contract: TableContract, staged: StagedParquet, delete_uris: list[str], metadata: dict[str, Any] | None
    ) -> MergeResult:
        """`merge_by_key` of staged files: every row of a staged or deleted uri is replaced."""
        upserted = set(staged.uris)
        result = self.commit_files_by_uri(name, contract, staged.finish(), uris=sorted(upserted | set(delete_uris)), metadata=metadata)
        existing = result.replaced
        return dataclasses.replace(
            result, inserted=len(upserted - existing), updated=len(upserted & existing), deleted=len(existing - upserted)
        )

    def commit_files_by_uri(
        self,
        name: str,
        contract: TableContract,
        files: Sequence[str],
        *,
        uris: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> MergeResult:
        """Move finished Parquet `files` into the table and drop every row whose uri is in `uris`,
        in one Delta commit (add + remove actions), without rewriting the new files.

        For huge-image tiles and the embedded engine's staged rows: the files are written once
        and the commit only renames them into the table (local file systems). Old files holding
        only replaced uris are removed; a file mixing replaced and kept uris is rewritten without
        them. Nothing to do: no commit.

        Optimistic concurrency: the removals are planned on one snapshot and the commit must land
        right after it; if another writer committed in between, the plan is made again on the
        new snapshot (so a row it added for one of `uris` is removed too, never duplicated).
        """
        import contextlib
        import uuid

        from deltalake import CommitProperties
        from deltalake import Schema as DeltaSchema
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

        drop = set(uris)
        if not files and (not drop or not self.exists(name)):
            return MergeResult(self.version(name))
        root = _local_path(self.location(name))
        os.makedirs(root, exist_ok=True)
        now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
        moved: list[str] = []

        def move_in(path: str) -> AddAction:
            target = f"part-{uuid.uuid4().hex}.parquet"
            os.replace(path, os.path.join(root, target))
            moved.append(os.path.join(root, target))
            return AddAction(target, os.path.getsize(moved[-1]), {}, now_ms, True, _file_stats(moved[-1]))

        def removals(table: Any) -> tuple[list[Any], set[str]]:
            """Remove actions (and adds of rewritten files) that drop `uris` from this snapshot,
            and which of `uris` it held."""
            actions: list[Any] = []
            found: set[str] = set()
            for uri in table.file_uris() if drop else []:
                path = _delta_file_path(uri)
                held = pq.read_table(path, columns=["uri"])["uri"]
                hit = pc.is_in(held, pa.array(sorted(drop), held.type))
                if not pc.any(hit).as_py():
                    continue
                found.update(held.filter(hit).to_pylist())
                actions.append(RemoveAction(os.path.relpath(path, root), True, now_ms, os.path.getsize(path), {}))
                if not pc.all(hit).as_py():  # keep the other uris' rows in a rewritten file
                    kept = _as_contract(pq.read_table(path).filter(pc.invert(hit)), contract)
                    tmp = os.path.join(root, f".rewrite-{uuid.uuid4().hex}.parquet")
                    pq.write_table(kept, tmp, row_group_size=16)
                    actions.append(move_in(tmp))
            return actions, found

        before = self.version(name)
        found: set[str] = set()
        custom = {META_KEY: json.dumps(metadata, sort_keys=True, default=str)} if metadata is not None else None
        try:
            adds = [move_in(path) for path in files]
            created = False
            if before is None:
                try:
                    create_table_with_add_actions(
                        self.location(name), DeltaSchema.from_arrow(contract.arrow_schema), adds, mode="error",
                        name=name.rsplit("/", 1)[-1], description=contract.description,
                        configuration=contract.properties, storage_options=self.storage_options,
                        commit_properties=CommitProperties(custom_metadata=custom),
                    )
                    created = True
                except Exception:
                    if not self.exists(name):
                        raise
                    # Another writer created the table first: commit into it like any other.
            if not created:
                for attempt in range(1, _COMMIT_ATTEMPTS + 1):
                    table = self.delta_table(name)
                    removed, found = removals(table)
                    actions = removed + adds
                    if not actions:
                        return MergeResult(table.version())
                    try:  # no silent rebase onto a newer version: the removals were planned on this one
                        table.create_write_transaction(actions, mode="append", schema=contract.arrow_schema,
                                                       commit_properties=CommitProperties(custom_metadata=custom, max_commit_retries=0))
                        break
                    except CommitFailedError as exc:
                        for action in actions:  # this attempt's rewritten files (the new files stay)
                            if isinstance(action, AddAction) and action not in adds:
                                with contextlib.suppress(OSError):
                                    os.remove(os.path.join(root, action.path))
                        if attempt == _COMMIT_ATTEMPTS:
                            raise ConcurrentWriteError(name, _COMMIT_ATTEMPTS, str(exc)) from exc
        except BaseException:
            for path in moved:  # never committed: not part of any version
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        after = self.version(name)
        return MergeResult(after, inserted=len(adds), committed=after != before, replaced=frozenset(found))

    def changes(
        self,
        name: str,
        starting_version: int,
        ending_version: int | None = None,
        columns: Sequence[str] = ("uri",),
    ) -> pa.Table:
        """The change data feed between two versions (inclusive): `columns` plus `_change_type`
        (insert, update_preimage, update_postimage, delete) and `_commit_version`.

        delta-rs' `load_cdf` runs on DataFusion and hands back an Arrow stream; unlike the
        pyarrow-dataset path it does not abort the interpreter at exit (tests/test_transform_cli
        runs a CDF-reading CLI many times and checks every exit status).
        """
        table = self.delta_table(name)
        wanted = list(dict.fromkeys([*columns, "_change_type", "_commit_version"]))
        try:
            result = pa.table(table.load_cdf(starting_version=starting_version, ending_version=ending_version, columns=wanted))
        except Exception as exc:  # noqa: BLE001 - e.g. log entries or change files already vacuumed
            raise LakeImgError(f"{name}: no change data feed for versions {starting_version}..{ending_version}: {exc}") from exc
        # DataFusion hands out string_view columns, which many pyarrow kernels cannot take yet.
        result = result.select(wanted)
        return result.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type) for f in result.schema]))

    def overwrite(self, name: str, rows: pa.Table | StagedParquet, contract: TableContract, metadata: dict[str, Any] | None = None) -> int:
        """Replace all rows and the schema in one commit (a transform whose columns changed);
        staged rows are streamed from their files, not read into memory first."""
        return self._write(name, rows, contract, metadata, mode="overwrite", schema_mode="overwrite")

    def _with_retries(self, name: str, operation: Callable[[], Any]) -> Any:
        from deltalake.exceptions import CommitFailedError

        last: Exception | None = None
        for _attempt in range(_COMMIT_ATTEMPTS):
            try:
                return operation()
            except CommitFailedError as exc:  # a concurrent writer won; re-read and try again
                last = exc
        raise ConcurrentWriteError(name, _COMMIT_ATTEMPTS, str(last))

    # --- kernels -------------------------------------------------------------------------

    def map_kernel(self, kernel, inputs, **kwargs) -> Iterator[pa.RecordBatch]:
        """Run a mapInArrow-shaped kernel over `inputs` in a process pool (see `map_kernel`)."""
        from lakeimg.engine.pool import map_kernel

        return map_kernel(kernel, inputs, **kwargs)


def _as_contract(rows: pa.Table, contract: TableContract) -> pa.Table:
    """Rows read from any writer's Parquet file (Spark's INT96 timestamps, an older schema
    without later columns) in exactly the contract's Arrow schema, to be written again."""
    for field in contract.arrow_schema:
        if field.name not in rows.column_names:
            rows = rows.append_column(field.name, pa.nulls(rows.num_rows, field.type))
    return cast_to_schema(rows, contract.arrow_schema, contract.column_names).cast(contract.arrow_schema)


@contextlib.contextmanager
def _damage_as_error(
    name: str,
    version: int,
    files: str | Sequence[str],
    columns: Sequence[str] | None = None,
    *,
    passthrough: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Turn pyarrow's errors on a missing or damaged data file (a bad footer, page header or
    codec stream) into LakeDamagedError naming the table, version and file. When several files
    were read at once, the damaged one is found by reading them one by one (failure path only)."""
    try:
        yield
    except passthrough:
        raise
    except (OSError, pa.ArrowException) as exc:
        paths = [files] if isinstance(files, str) else list(files)
        culprit = paths[0] if len(paths) == 1 else None
        for path in paths if culprit is None else ():
            try:
                pq.ParquetFile(path).read(columns=list(columns) if columns else None)
            except (OSError, pa.ArrowException):
                culprit = path
                break
        reason = "missing (deleted or vacuumed)" if culprit and not os.path.exists(culprit) else _one_line(exc)
        raise LakeDamagedError(name, f"{reason}; run `lakeimg verify {name}@{version}`", version=version, file=culprit) from exc


def _one_line(exc: BaseException) -> str:
    """An exception as one printable line (pyarrow's thrift errors carry raw bytes and newlines)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(exc)).split())
    return f"{type(exc).__name__}: {text}"


def _expression_fields(expression: pc.Expression, names: Sequence[str]) -> list[str]:
    """Column names a filter expression mentions (pyarrow has no public accessor for them)."""
    text = str(expression)
    return [n for n in names if n in text]


def _local_path(uri: str) -> str:
    """A lake, table or staging location (a path or file:// URI) as a local path."""
    return uri_to_path(uri)


def _delta_file_path(uri: str) -> str:
    """The local path of a data file as delta-rs' `file_uris()` gives it: a URL, or an absolute
    path percent-encoded like one ("/my%20lake/images/part-0.parquet")."""
    if has_scheme(uri) or uri.startswith("/"):
        return uri_to_path(uri if has_scheme(uri) else "file://" + uri)
    return uri


def _file_stats(path: str) -> str:
    """Delta add-action stats (numRecords, min/max/nullCount of scalar columns) from a Parquet file."""
    meta = pq.ParquetFile(path)
    table_schema = meta.schema_arrow
    scalar = [f.name for f in table_schema if pa.types.is_integer(f.type) or pa.types.is_string(f.type)]
    data = meta.read(columns=scalar)
    mins, maxs, nulls = {}, {}, {}
    for name in scalar:
        col = data[name]
        nulls[name] = col.null_count
        if len(col) > col.null_count:
            bounds = pc.min_max(col)
            mins[name], maxs[name] = bounds["min"].as_py(), bounds["max"].as_py()
    return json.dumps({"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def check_log_tail(location: str, name: str) -> None:
    """Raise `LakeDamagedError` when a table's newest log entry is empty or cut short.

    A crash before a commit reached the disk can leave `_delta_log/N.json` empty or partial.
    delta-rs reads an empty entry as a version with no actions, so version N's rows vanish
    from reads, and the next commit (N+1) makes that permanent. Refuse instead, with the
    repair. Only local tables are checked here.

    Example:
        >>> check_log_tail("/nonexistent/table", "images")
    """
    log = os.path.join(_local_path(location), "_delta_log")
    try:
        entries = [e for e in os.scandir(log) if len(e.name) == 25 and e.name.endswith(".json") and e.name[:20].isdigit()]
    except OSError:
        return
    if not entries:
        return
    newest = max(entries, key=lambda e: e.name)
    version = int(newest.name[:20])
    try:
        with open(newest.path, "rb") as handle:
            text = handle.read()
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            reason = "is empty"
        else:
            for line in lines:
                json.loads(line)
            reason = ""
    except json.JSONDecodeError:
        reason = "is cut short (not valid JSON)"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    if reason:
        raise LakeDamagedError(
            name,
            f"the newest log entry {newest.path} {reason}: commit {version} never reached the disk whole "
            f"(a crash during the commit). No write goes on top of it. Repair: with no writer running, move "
            f"that file out of _delta_log to return the table to "
            + (f"version {version - 1}" if version else "no versions (then remove the table's folder)")
            + f", then run `lakeimg verify {name}`",
            version=version,
        )


def file_sha256(path: str) -> str | None:
    """SHA-256 of a local file, or None when it cannot be read."""
    try:
        digest = hashlib.sha256()
        with open_regular_file(_local_path(path)) as handle:  # a FIFO in its place must not hang
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def ensure_lake(lake: str) -> None:
    """Create the lake folder; raise LakeNotWritableError when that or writing into it fails."""
    from lakeimg.errors import LakeNotWritableError

    path = Path(_local_path(lake))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lakeimg-write-probe-{os.getpid()}-{uuid.uuid4().hex}"  # concurrent writers probe too
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LakeNotWritableError(lake, f"{type(exc).__name__}: {exc.strerror or exc}") from exc


def lake_exists(lake: str | os.PathLike[str]) -> bool:
    """Whether `lake` is a lake: a folder with lakeimg's `_lakeimg` folder or a Delta table in it.

    Example:
        >>> lake_exists("/nonexistent/lake")
        False
    """
    text = str(lake)
    if "://" in text and not text.startswith("file://"):
        return True  # an object store or cluster file system: the engine finds out when it reads
    root = Path(_local_path(text))
    if (root / "_lakeimg").is_dir():
        return True
    try:
        return any((entry / "_delta_log").is_dir() for entry in root.iterdir() if entry.is_dir())
    except OSError:
        return False


def require_lake(lake: str | os.PathLike[str]) -> None:
    """Raise `LakeNotFoundError` unless `lake` is a lake (every job but ingest and demo reads or
    writes an existing lake, and never creates one from a mistyped path).

    Example:
        >>> require_lake("/nonexistent/lake")
        Traceback (most recent call last):
        ...
        lakeimg.errors.LakeNotFoundError: no lake at /nonexistent/lake
    """
    if not lake_exists(lake):
        from lakeimg.errors import LakeNotFoundError

        raise LakeNotFoundError(str(lake))


def _check_not_before_first(location: str, loaded: int, when: dt.datetime, name: str, ref: Any, lake: str) -> None:
    """delta-rs loads the first version for a time before it; Delta (and lakeimg) refuse."""
    from lakeimg.errors import VersionNotFoundError

    log = os.path.join(_local_path(location), "_delta_log")
    try:
        first = min(int(n[:20]) for n in os.listdir(log) if len(n) == 25 and n.endswith(".json") and n[:20].isdigit())
    except (OSError, ValueError):
        return
    if loaded != first:
        return
    entry = os.path.join(log, f"{first:020d}.json")
    stamp_ms = None
    try:
        with open(entry, encoding="utf-8") as handle:
            for line in handle:
                info = json.loads(line).get("commitInfo") if line.strip() else None
                if info and info.get("timestamp") is not None:
                    stamp_ms = int(info["timestamp"])
                    break
        if stamp_ms is None:
            stamp_ms = int(os.path.getmtime(entry) * 1000)
    except (OSError, ValueError):
        return
    committed = dt.datetime.fromtimestamp(stamp_ms / 1000, dt.timezone.utc)
    if when < committed:
        raise VersionNotFoundError(
            name, ref, lake, f"before the table's first readable version ({first}, committed {committed.isoformat()})"
        )
