"""The embedded engine: Delta tables through delta-rs, kernels mapped over a process pool. No JVM.

`LocalEngine` implements `lakeimg.engine.base.Engine`. Reads never go through deltalake's
pyarrow-dataset path (`to_pyarrow_dataset`/`to_pyarrow_table`): it can abort the interpreter at
exit (delta-rs #2184), which breaks the exit codes scheduled jobs rely on. Instead delta-rs resolves the snapshot's file list from the log and
pyarrow.parquet reads those files. lakeimg's tables never use deletion vectors or column
mapping (see schemas/README.md), so the file list is the table.

Example:
    >>> import tempfile
    >>> eng = LocalEngine(tempfile.mkdtemp())
    >>> eng.version("images") is None
    True
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeimg.engine._delta_txn import (
    any_between,
    as_contract,
    begin_placement,
    cast_to_schema,
    commit_files_by_uri,
    post_commit_hooks,
    uri_ranges,
)
from lakeimg.engine.base import (
    META_KEY,
    CommitResult,
    SnapshotRows,
    Stage,
    VersionLike,
    Write,
    commit_metadata_json,
    parse_history,
    to_datetime,
    with_retries,
)
from lakeimg.engine.layout import (
    TARGET_FILE_BYTES,
    check_log_tail,
    check_not_before_first,
    delta_file_path,
    latest_version,
    row_group_rows,
    staging_location,
    table_location,
    tables_in,
)
from lakeimg.engine.pool import map_kernel, start_forkserver
from lakeimg.engine.staged import LocalStaged, PlacedFile
from lakeimg.engine.urisets import SortedUris, union, uri_set
from lakeimg.errors import LakeDamagedError, LakeImgError, TableNotFoundError, VersionNotFoundError
from lakeimg.schemas import TableContract
from lakeimg.storage import exists as storage_exists
from lakeimg.storage import (
    is_remote,
    normalized_storage_options,
    resolve,
    storage_error,
    uri_to_path,
)

__all__ = ["LocalEngine"]


class LocalEngine:
    """delta-rs handle for one lake (`lakeimg.engine.base.Engine`); `workers` processes map kernels."""

    name = "local"
    commits_in_threads = True  # each delta-rs commit carries its own metadata

    def __init__(self, lake: str | os.PathLike[str], *, workers: int | None = None,
                 storage_options: Mapping[str, str] | None = None):
        self.lake = str(lake)
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.remote = is_remote(self.lake)
        # The environment's AWS_*/AZURE_*/GOOGLE_* settings under the given options: the same
        # mapping reaches delta-rs, pyarrow.fs and the workers (sources on object stores).
        self.options = normalized_storage_options(storage_options)
        # delta-rs gets them only for an object-store lake (a local lake needs none).
        self.storage_options = self.options if self.remote else None
        # (table, contract columns) known to hold every column of the contract (_add_missing_columns)
        self._complete: set[tuple[str, tuple[str, ...]]] = set()
        self._preloaded: dict[str, Future[Any]] = {}  # table -> its DeltaTable being loaded (`preload`)

    # --- reading -------------------------------------------------------------------------

    def location(self, name: str) -> str:
        return table_location(self.lake, name)

    def exists(self, name: str) -> bool:
        return latest_version(self.location(name), self.storage_options) is not None

    def _delta_table(self, name: str, version: VersionLike = None):
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
                latest = self.version(name) if version >= 0 else None
                if latest is not None and version > latest:
                    raise VersionNotFoundError(name, version, self.lake, f"no such version (latest: {latest})") from exc
                raise TableNotFoundError(f"{name}@{version}", self.lake) from exc
            raise
        if isinstance(version, (str, dt.datetime)):
            when = to_datetime(version)
            table.load_as_version(when)
            check_not_before_first(self.location(name), table.version(), when, name, version, self.lake,
                                   self.storage_options)
        return table

    def version(self, name: str) -> int | None:
        """Current version of a table, or None when it does not exist (one listing of its log;
        a local table's newest entry is checked whole first, as every latest read does)."""
        check_log_tail(self.location(name), name)
        return latest_version(self.location(name), self.storage_options)

    def data_files(self, name: str, version: VersionLike = None, *, table: Any = None) -> list[str]:
        """The Parquet files that make up a snapshot: local paths, or URLs on an object store
        (read them through `parquet_files`); `table` is the snapshot when the caller opened it."""
        table = table if table is not None else self._delta_table(name, version)
        features = table.protocol().reader_features or []
        if "deletionVectors" in features:
            actions = pa.table(table.get_add_actions(flatten=True))
            if "deletionVector.storageType" in actions.column_names and actions[
                "deletionVector.storageType"
            ].null_count < len(actions):
                raise LakeImgError(f"{name} uses deletion vectors; lakeimg tables are written without them")
        return [delta_file_path(uri) for uri in table.file_uris()]

    def read_batches(self, name: str, *, columns: Sequence[str], version: VersionLike = None, batch_rows: int = 64,
                     uris: Sequence[str] | pa.Array | None = None) -> Iterator[pa.Table]:
        """A snapshot as a stream of small tables typed like `read`'s, file by file: the memory
        it takes is a few batches, whatever the table's size (the transform streams its image
        bytes to the workers this way).

        With `uris`, only rows with those uris come back, and only the data files and row groups
        whose uri statistics (Delta log, Parquet footer) can hold one of them are read: 1,000
        changed rows of a million-row table read a few row groups, not the table.

        Example:
            >>> sum(t.num_rows for t in LocalEngine(lake_dir).read_batches("images", columns=["uri"]))
            4
        """
        delta = self._delta_table(name, version)
        schema = pa.schema(delta.schema().to_arrow())
        wanted = SortedUris(uri_set(uris)) if uris is not None else None
        ranges = uri_ranges(delta) if wanted is not None else {}
        location = self.location(name).rstrip("/")
        root = location if self.remote else uri_to_path(location)
        for path in self.data_files(name, version, table=delta):
            if wanted is not None:
                bounds = ranges.get(path[len(root) + 1:] if self.remote else os.path.relpath(path, root))
                if not wanted or (bounds is not None and not any_between(wanted, *bounds)):
                    continue
            with _damage_as_error(name, delta.version(), path, options=self.options):
                parquet = self.parquet_file(path)
                present = [c for c in dict.fromkeys([*columns, *(["uri"] if wanted is not None else [])])
                           if c in parquet.schema_arrow.names]
                groups = _row_groups_holding(parquet, wanted) if wanted is not None else None
                if groups == []:
                    continue
                # Which rows to keep, for the whole file at once: a lookup per small batch would
                # hash all of `wanted` each time (a million-row transform: quadratic).
                keep = _rows_holding(parquet, groups, wanted) if wanted is not None else None
                if keep is not None and not pc.any(keep).as_py():
                    continue
                batches = parquet.iter_batches(batch_size=batch_rows, columns=present, row_groups=groups)
            offset = 0
            while True:
                with _damage_as_error(name, delta.version(), path, options=self.options):
                    batch = next(batches, None)
                if batch is None:
                    break
                piece = pa.Table.from_batches([batch])
                if keep is not None:
                    piece = piece.filter(keep.slice(offset, piece.num_rows))
                    offset += batch.num_rows
                    if not piece.num_rows:
                        continue
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
        uri_range: tuple[str, str] | None = None,
    ) -> pa.Table:
        """A snapshot as an Arrow table, typed by the table's Delta schema; only `columns` are read.

        `version` is an int, a datetime (naive means UTC), an ISO timestamp string, or None.
        `uri_range` (low, high): only rows whose uri lies between the two (inclusive), read from
        only the data files whose uri statistics in the Delta log overlap that range (a re-run
        over one folder of a million-row table opens that folder's few files).
        """
        table = self._delta_table(name, version)
        schema = pa.schema(table.schema().to_arrow())
        files = self.data_files(name, version, table=table)
        if uri_range is not None:
            files = self._files_overlapping(name, table, files, *uri_range)
            between = (pc.field("uri") >= uri_range[0]) & (pc.field("uri") <= uri_range[1])
            filter = between if filter is None else filter & between
        if not files:
            empty = pa.schema([f.with_nullable(True) for f in schema]).empty_table()
            return empty.select(list(columns)) if columns else empty
        with _damage_as_error(name, table.version(), files[:1], columns, options=self.options):
            physical = _physical_schema(self.parquet_file(files[0]).schema_arrow, schema)
        if filter is None:
            with _damage_as_error(name, table.version(), files, columns, options=self.options):
                result = self.parquet_dataset(files, schema=physical).read(columns=list(columns) if columns else None)
            return cast_to_schema(result, schema, columns)
        # Filter after casting: files written by delta-rs' MERGE hold string_view columns, which
        # pyarrow's dataset filter kernels reject ("array_filter ... string_view").
        try:
            # Pushdown first: row groups whose statistics miss the filter are never read (the
            # tiles table's region reads rely on it); binding fails up front on string_view files.
            with _damage_as_error(name, table.version(), files, columns, passthrough=pa.ArrowNotImplementedError,
                                  options=self.options):
                pushed = self.parquet_dataset(files, schema=physical, filters=filter).read(columns=list(columns) if columns else None)
            return cast_to_schema(pushed, schema, columns)
        except pa.ArrowNotImplementedError:
            pass
        needed = None
        if columns:
            needed = list(dict.fromkeys([*columns, *_expression_fields(filter, schema.names)]))
        with _damage_as_error(name, table.version(), files, needed, options=self.options):
            result = cast_to_schema(self.parquet_dataset(files, schema=physical).read(columns=needed), schema, needed)
        result = result.filter(filter)
        return result.select(list(columns)) if columns else result

    def _files_overlapping(self, name: str, table: Any, files: list[str], low: str, high: str) -> list[str]:
        """The data files whose (min uri, max uri) in the log overlaps [low, high]; files
        without those statistics are kept."""
        ranges = uri_ranges(table)
        root = self.location(name).rstrip("/") if self.remote else uri_to_path(self.location(name))
        kept = []
        for path in files:
            bounds = ranges.get(path[len(root) + 1:] if self.remote else os.path.relpath(path, root))
            if bounds is None or (bounds[0] <= high and bounds[1] >= low):
                kept.append(path)
        return kept

    def file_exists(self, path: str) -> bool:
        """Whether a data file (a path or URL from `data_files`) is still there."""
        return storage_exists(path, self.options)

    def parquet_file(self, path: str) -> pq.ParquetFile:
        """One data file (a local path or URL from `data_files`) opened through `storage.resolve`."""
        fs, inner = resolve(path, self.options)
        if not self.remote and not is_remote(path):
            return pq.ParquetFile(inner, memory_map=True)
        return pq.ParquetFile(fs.open_input_file(inner))

    def parquet_dataset(self, files: Sequence[str], **options: Any) -> pq.ParquetDataset:
        """`data_files` as one pyarrow ParquetDataset, on the file system `storage.resolve` gives."""
        if not any(is_remote(f) for f in files):
            return pq.ParquetDataset(list(files), **options)
        fs, _ = resolve(files[0], self.options)
        return pq.ParquetDataset([resolve(f, self.options)[1] for f in files], filesystem=fs, **options)

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first, with lakeimg's run record parsed from userMetadata."""
        return [parse_history(entry) for entry in self._delta_table(name).history(limit)]

    def resolve_version(self, name: str, version: VersionLike = None) -> int:
        """The concrete version number a version-like (int, timestamp, None = latest) selects."""
        return self._delta_table(name, version).version()

    def arrow_schema(self, name: str, version: VersionLike = None) -> pa.Schema:
        """The table's Delta schema as Arrow (at a version)."""
        return pa.schema(self._delta_table(name, version).schema().to_arrow())

    def iter_batches(
        self, name: str, *, version: VersionLike = None, columns: Sequence[str] | None = None, batch_rows: int = 256
    ) -> Iterator[pa.RecordBatch]:
        """`read_batches` as record batches (all columns by default)."""
        columns = list(columns) if columns else self.arrow_schema(name, version).names
        for piece in self.read_batches(name, columns=columns, version=version, batch_rows=batch_rows):
            yield from piece.to_batches()

    def add_actions(self, name: str, version: VersionLike = None) -> pa.Table:
        """The snapshot's add actions (path, size_bytes, num_records, stats...) as the log states them."""
        return pa.table(self._delta_table(name, version).get_add_actions(flatten=True))

    def table_properties(self, name: str) -> dict[str, str]:
        """The table's Delta configuration (table properties)."""
        return dict(self._delta_table(name).metadata().configuration)

    # --- maintenance ---------------------------------------------------------------------

    def optimize(self, name: str, *, metadata: Mapping[str, Any] | None = None,
                 row_group_rows: int | None = None) -> dict[str, Any]:
        """Compact small files into files of about `layout.TARGET_FILE_BYTES` (a new version with the
        same rows): the size a replace by uri rewrites at most per changed file. Row groups keep
        at most `row_group_rows` rows (delta-rs' default is a million)."""
        from deltalake import WriterProperties

        properties = WriterProperties(max_row_group_size=row_group_rows) if row_group_rows else None
        return with_retries(
            name, lambda: self._delta_table(name).optimize.compact(
                target_size=TARGET_FILE_BYTES, writer_properties=properties,
                commit_properties=_commit_properties(metadata)), _conflicts()
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
        table = self._delta_table(name)
        return table.vacuum(
            retention_hours=int(retention_hours),
            dry_run=dry_run,
            enforce_retention_duration=False,
            keep_versions=sorted(set(int(v) for v in keep_versions)) or None,
            full=True,
        )

    def set_table_properties(self, name: str, properties: dict[str, str]) -> None:
        """Set Delta table properties (one commit), e.g. to keep old log entries for time travel."""
        table = self._delta_table(name)
        with_retries(name, lambda: table.alter.set_table_properties(dict(properties), raise_if_not_exists=False), _conflicts())

    def copy_snapshot(self, name: str, version: VersionLike, target: LocalEngine, target_name: str) -> int:
        """Write one snapshot of a table as a new table (same schema and properties) elsewhere."""
        from deltalake import write_deltalake

        source = self._delta_table(name, version)
        schema = pa.schema([f.with_nullable(True) for f in self.arrow_schema(name, version)])
        data = self.read(name, version=version).cast(schema)
        write_deltalake(
            target.location(target_name),
            data,
            mode="overwrite",
            configuration=dict(source.metadata().configuration),
            storage_options=target.storage_options,
        )
        return target._delta_table(target_name).version()

    # --- writing -------------------------------------------------------------------------

    def create_empty(self, name: str, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """Create a table with the contract's schema and properties (no rows); no-op if it
        exists. Returns the table's version."""
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import create_table_with_add_actions

        # Not DeltaTable.create: it loads the new table again only to hand it back, a round of
        # requests per table on an object store. mode="error" says whether this call made
        # version 0, so neither a look before nor a listing after is needed.
        try:
            create_table_with_add_actions(
                self.location(name), DeltaSchema.from_arrow(contract.arrow_schema), [], mode="error",
                name=name.rsplit("/", 1)[-1], description=contract.description, configuration=contract.properties,
                storage_options=self.storage_options, commit_properties=_commit_properties(metadata),
            )
        except Exception:
            version = self.version(name)
            if version is None:  # not "it exists already": the store or the path refused
                raise
            return version
        self._complete.add((name, tuple(contract.column_names)))
        return 0

    def append(self, name: str, rows: pa.Table, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """Append rows (creating the table on first write); returns the new version."""
        return int(self.commit(Write(name, contract, "append", rows=rows, metadata=metadata)).version)

    def commit(self, write: Write) -> CommitResult:
        """One `Write` as one Delta commit (see `lakeimg.engine.base.Write`).

        "replace" moves the staged files into the table and removes the rows they replace in
        one hand-built transaction (`_delta_txn.commit_files_by_uri`: nothing is rewritten but
        the old files that mix kept and replaced uris); small `rows` are written to one file
        first. "append" and "overwrite" go through `write_deltalake`.

        Example:
            >>> import tempfile
            >>> from lakeimg.schemas import table_contract
            >>> eng, c = LocalEngine(tempfile.mkdtemp()), table_contract("rejects")
            >>> eng.commit(Write("r", c, create=True)).version
            0
        """
        name, contract = write.table, write.contract
        files = [*(write.staged.files() if write.staged is not None else []), *write.files]
        rows = write.rows if write.rows is not None and write.rows.num_rows else None
        if rows is None and not files and (write.mode == "append" or (write.mode == "replace" and len(write.replace) == 0)):
            result = CommitResult(self.version(name))  # nothing to write: one listing of the log
        elif write.mode != "replace":
            result = self._write(write, files, rows)
        else:
            result = self._replace(write, files, rows)
        if write.create and result.version is None:
            result = CommitResult(self.create_empty(name, contract, write.metadata), True)
        return result

    def _replace(self, write: Write, files: list[str | PlacedFile], rows: pa.Table | None) -> CommitResult:
        """A "replace" `Write`: staged files and rows in, the rows of their uris and
        `write.replace` out, in one transaction (`commit_files_by_uri`)."""
        name, contract = write.table, write.contract
        staged = write.staged
        # Two independent looks, side by side (on an object store each is a round trip): is the
        # table there, and is every file this run placed on the store still there.
        with ThreadPoolExecutor(1, thread_name_prefix="lakeimg-placed") as pool:
            lost = pool.submit(staged.missing) if staged is not None else None
            exists = self.version(name) is not None
            lost_files = lost.result() if lost is not None else []
        if lost_files:  # deleted by another run's cleanup of a writer it took for dead: never commit a hole
            raise LakeImgError(f"{name}: {len(lost_files)} staged file(s) of this run vanished before the commit, "
                               f"e.g. {lost_files[0]}; nothing was committed, run again")
        if exists:
            self._add_missing_columns(name, contract, write.metadata)
        uris = uri_set(write.replace)
        if rows is not None:
            uris = union(uris, uri_set(rows["uri"]))
        scratch = None
        if rows is not None:
            if self.remote:  # written locally, then once under its final name by the commit
                scratch = tempfile.mkdtemp(prefix="lakeimg-rows-")
                root = scratch
            else:
                root = uri_to_path(self.location(name))
                os.makedirs(root, exist_ok=True)
            files.append(os.path.join(root, f".rows-{uuid.uuid4().hex}.parquet"))
            contracted = as_contract(rows, contract)
            pq.write_table(contracted, files[-1], row_group_size=row_group_rows(contracted), write_page_checksum=True)
        try:
            result, _found = commit_files_by_uri(
                self, name, contract, files, uris=uris, metadata=write.metadata, table_exists=exists,
                new_uris=(lambda: staged.keys()["uri"]) if staged is not None else None)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        if write.staged is not None:
            write.staged.handed_over()
        return result

    def _add_missing_columns(self, name: str, contract: TableContract, metadata: Mapping[str, Any] | None,
                             table: Any = None) -> None:
        """Schema evolution: the contract's columns a table written under an older contract lacks
        are added (nullable, at the end) in a commit of their own before the data commit, so
        rows written before read those columns as null. A retry looks again: a concurrent
        writer may have added them first. `table`: the table's DeltaTable, loaded already (it
        is updated when columns are added)."""
        from deltalake import Schema as DeltaSchema

        added = False

        def add() -> None:
            nonlocal added
            current = table if table is not None else self._delta_table(name)
            if added:  # a retry: see what the concurrent writer did
                current.update_incremental()
            have = set(current.schema().to_arrow().names)
            missing = [f for f in contract.arrow_schema if f.name not in have]
            if missing:
                fields = DeltaSchema.from_arrow(pa.schema([f.with_nullable(True) for f in missing])).fields
                added = True
                current.alter.add_columns(fields, commit_properties=_commit_properties(metadata))

        key = (name, tuple(contract.column_names))
        if key not in self._complete:  # checked once per table and contract in this engine's life
            with_retries(name, add, _conflicts())
            self._complete.add(key)

    def preload(self, name: str) -> None:
        """Load table `name`'s latest snapshot in a thread, for the next `_write` to it: on an
        object store a load is four requests in a row. That write brings it up to date if
        another writer committed since (as after any conflict)."""
        if name not in self._preloaded:
            pool = ThreadPoolExecutor(1, thread_name_prefix="lakeimg-preload")
            self._preloaded[name] = pool.submit(self._delta_table, name)
            pool.shutdown(wait=False)

    def _loaded_table(self, name: str) -> Any:
        """Table `name`'s DeltaTable: the preloaded one when its load succeeded, else loaded now;
        None when the table does not exist."""
        preloaded = self._preloaded.pop(name, None)
        if preloaded is not None:
            with contextlib.suppress(Exception):  # a failed preload: load again, and fail here if it must
                return preloaded.result()
        try:
            return self._delta_table(name)
        except TableNotFoundError:
            return None

    def _write(self, write: Write, files: list[str | PlacedFile], rows: pa.Table | None) -> CommitResult:
        """One write_deltalake commit ("append", or "overwrite" with the schema) from rows or files.

        An existing table is loaded once: its schema, the snapshot the commit is made on, and
        the version it made (on an object store each load or listing is a round trip)."""
        import pyarrow.dataset as ds
        from deltalake import write_deltalake

        contract, schema = write.contract, write.contract.arrow_schema
        table = self._loaded_table(write.table)
        if table is not None and write.mode == "append":
            self._add_missing_columns(write.table, contract, write.metadata, table)
            # Column comments are the table's: delta-rs refuses to append data whose field
            # metadata differs, so a comment reworded in a later contract would stop every
            # append to a table an older lakeimg created.
            schema = pa.schema([field.remove_metadata() for field in schema])
        parts = [as_contract(rows, contract).cast(schema)] if rows is not None else []

        local = [f for f in files if not isinstance(f, PlacedFile)]
        placed = [resolve(f.url, self.options) for f in files if isinstance(f, PlacedFile)]  # staged on the store

        def data() -> pa.RecordBatchReader:  # a fresh stream for every attempt: a retry cannot rewind one
            streams = [part.to_batches() for part in parts]
            if local:
                streams.append(ds.dataset(local, schema=schema, format="parquet").to_batches())
            if placed:
                streams.append(ds.dataset([path for _fs, path in placed], schema=schema, format="parquet",
                                          filesystem=placed[0][0]).to_batches())
            return pa.RecordBatchReader.from_batches(schema, itertools.chain.from_iterable(streams))

        mode = {"mode": "overwrite", "schema_mode": "overwrite"} if write.mode == "overwrite" else {"mode": "append"}
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            if attempts and table is not None:  # another writer committed first: write on its version
                table.update_incremental()
            attempts += 1
            write_deltalake(
                table if table is not None else self.location(write.table), data(), **mode,
                configuration=None if table is not None else contract.properties,
                name=None if table is not None else write.table.rsplit("/", 1)[-1],
                description=None if table is not None else contract.description,
                storage_options=None if table is not None else self.storage_options,
                commit_properties=_commit_properties(write.metadata),
                post_commithook_properties=post_commit_hooks(table),
            )

        with_retries(write.table, attempt, _conflicts())
        return CommitResult(table.version() if table is not None else self.version(write.table), True)

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
        pyarrow-dataset path it does not abort the interpreter at exit.
        """
        table = self._delta_table(name)
        wanted = list(dict.fromkeys([*columns, "_change_type", "_commit_version"]))
        try:
            result = pa.table(table.load_cdf(starting_version=starting_version, ending_version=ending_version, columns=wanted))
        except Exception as exc:  # noqa: BLE001 - e.g. log entries or change files already vacuumed
            raise LakeImgError(f"{name}: no change data feed for versions {starting_version}..{ending_version}: {exc}") from exc
        # DataFusion hands out string_view columns, which many pyarrow kernels cannot take yet.
        result = result.select(wanted)
        return result.cast(pa.schema([pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type) for f in result.schema]))

    def tables(self) -> list[str]:
        """The Delta tables in the lake (lakeimg's own as `_lakeimg/runs`...)."""
        return tables_in(self.lake, self.options)

    # --- kernels -------------------------------------------------------------------------

    def start_workers(self) -> None:
        """Start the pool's forkserver now (`engine/pool.start_forkserver`): it imports the
        kernels while the driver lists and plans, instead of after."""
        if self.workers > 0:
            start_forkserver()

    def stage(self, stage: Stage) -> LocalStaged:
        """Map `kernel` over the inputs in a process pool (`engine/pool.map_kernel`, `workers`
        processes, 0: in this process) and stage its output as it comes (`LocalStaged`).

        `prepare` is for engines whose workers outlive a task; the pool's workers start fresh.
        """
        workers = self.workers if stage.workers is None else stage.workers
        total, done, column = stage.progress_total(), 0, stage.progress_column

        def progress(n: int) -> None:
            nonlocal done
            done += n
            if stage.on_progress is not None:
                stage.on_progress(done, total)

        placement = (begin_placement(self, stage.target)
                     if self.remote and stage.target is not None and stage.contract is not None else None)
        staged = LocalStaged(staging_location(self.lake, stage.label), stage.contract,
                             stage.output_schema, stage.held, placement)
        try:
            for batch in map_kernel(
                stage.kernel, self._input_pieces(stage.inputs, stage.extra), workers=min(workers, stage.total),
                batch_rows=stage.rows_per_task, task_timeout_s=stage.task_timeout_s, on_failure=stage.on_failure,
                on_progress=None if column else progress, output_schema=stage.output_schema,
            ):
                staged.add(batch)
                if column and batch.num_rows:  # units of work the output rows report done
                    progress(pc.sum(batch[column]).as_py() or 0)
            # The last row group and footers are written now, so a full disk fails the stage
            # (before any commit), not the commit that moves the files in.
            staged.files()
        except BaseException:
            staged.discard()
            raise
        return staged

    def _input_pieces(self, inputs: pa.Table | SnapshotRows, extra: pa.Table | None) -> Iterator[pa.Table]:
        """A stage's input rows, streamed: snapshot rows are read a few at a time."""
        if isinstance(inputs, pa.Table):
            yield inputs
        elif len(inputs.uris):
            yield from self.read_batches(inputs.table, version=inputs.version, columns=list(inputs.columns),
                                         uris=inputs.uris)
        if extra is not None and extra.num_rows:
            yield extra

    def reader(self) -> LocalEngine:
        """This engine (reads are delta-rs already)."""
        return self

    def close(self) -> None:
        """Nothing to release (the pool lives only as long as a stage)."""


def _rows_holding(parquet: pq.ParquetFile, groups: list[int] | None, wanted: SortedUris) -> pa.ChunkedArray:
    """For each row of `groups` (None: every row group) of a data file, in order: whether its uri
    is one of `wanted` (sorted). Only the wanted uris inside the file's own uri range are hashed."""
    uris = parquet.read_row_groups(groups if groups is not None else range(parquet.num_row_groups), columns=["uri"])["uri"]
    uris = uris.cast(pa.string())
    if len(uris) == 0:
        return pa.chunked_array([], pa.bool_())
    low, high = pc.min(uris).as_py(), pc.max(uris).as_py()
    return pc.is_in(uris, value_set=wanted[bisect.bisect_left(wanted, low):bisect.bisect_right(wanted, high)])


def _row_groups_holding(parquet: pq.ParquetFile, wanted: SortedUris) -> list[int] | None:
    """Row groups of a data file whose uri statistics can hold one of `wanted` (sorted); None
    when the file has no uri statistics (then every row group is read)."""
    meta = parquet.metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "uri" not in names:
        return None
    column = names.index("uri")
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        low, high = stats.min, stats.max
        if isinstance(low, bytes):
            low, high = low.decode("utf-8", "surrogateescape"), high.decode("utf-8", "surrogateescape")
        if any_between(wanted, low, high):
            groups.append(i)
    return groups


def _conflicts() -> tuple[type[BaseException], ...]:
    """delta-rs' typed "another writer committed first" errors."""
    from deltalake.exceptions import CommitFailedError

    return (CommitFailedError,)


def _physical_schema(first: pa.Schema, delta_schema: pa.Schema) -> pa.Schema:
    """The first file's Parquet schema plus the Delta schema's columns it lacks (added to the
    table after it was written): the dataset then reads those as nulls from older files instead
    of dropping them from newer ones."""
    return pa.schema([*first, *(f for f in delta_schema if f.name not in first.names)])


def _commit_properties(metadata: Mapping[str, Any] | None):
    from deltalake import CommitProperties

    if metadata is None:
        return None
    return CommitProperties(custom_metadata={META_KEY: commit_metadata_json(metadata)})


@contextlib.contextmanager
def _damage_as_error(
    name: str,
    version: int,
    files: str | Sequence[str],
    columns: Sequence[str] | None = None,
    *,
    passthrough: type[BaseException] | tuple[type[BaseException], ...] = (),
    options: Mapping[str, str] | None = None,
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
        typed = storage_error(exc, paths[0], options) if paths else None
        if typed is not None:  # the store refused or was unreachable: not damage
            raise typed from exc
        for path in paths if culprit is None else ():
            try:
                fs, inner = resolve(path, options)
                pq.ParquetFile(fs.open_input_file(inner)).read(columns=list(columns) if columns else None)
            except (OSError, pa.ArrowException):
                culprit = path
                break
        reason = "missing (deleted or vacuumed)" if culprit and not storage_exists(culprit, options) else _one_line(exc)
        raise LakeDamagedError(name, f"{reason}; run `lakeimg verify {name}@{version}`", version=version, file=culprit) from exc


def _one_line(exc: BaseException) -> str:
    """An exception as one printable line (pyarrow's thrift errors carry raw bytes and newlines)."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(exc)).split())
    return f"{type(exc).__name__}: {text}"


def _expression_fields(expression: pc.Expression, names: Sequence[str]) -> list[str]:
    """Column names a filter expression mentions (pyarrow has no public accessor for them)."""
    text = str(expression)
    return [n for n in names if n in text]


