"""A hand-built delta-rs transaction: Parquet files moved into a table, rows of some uris removed.

delta-rs has no "add these finished files and drop the rows of these keys" write: `write_deltalake`
rewrites its input and `merge` needs it in memory. Staged output (GBs of image bytes, or tiles
a kernel already wrote in the contract's schema) is renamed into the table instead, and the
commit's add/remove actions are built here, with each file's statistics.

An object store has no rename: there each staged file is written once under its final name
inside the table (a few uploads at a time, to overlap the store's latency), and only the
Delta log commit makes it part of the table. Objects of a commit that never landed are
deleted; a killed run's leftovers are unreferenced objects that `maintain`'s vacuum removes.

Example:
    >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
    >>> p = os.path.join(tempfile.mkdtemp(), "f.parquet"); pq.write_table(pa.table({"uri": ["a", "b"]}), p)
    >>> json.loads(file_stats(p))["maxValues"]
    {'uri': 'b'}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeimg.engine.base import META_KEY, CommitResult, commit_metadata_json, with_retries
from lakeimg.engine.layout import delta_file_path
from lakeimg.schemas import TableContract
from lakeimg.storage import delete_file, file_size, is_remote, join_url, upload, uri_to_path

__all__ = ["commit_files_by_uri", "file_stats", "as_contract", "cast_to_schema"]


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


def as_contract(rows: pa.Table, contract: TableContract) -> pa.Table:
    """Rows read from any writer's Parquet file (Spark's INT96 timestamps, an older schema
    without later columns) in exactly the contract's Arrow schema, to be written again."""
    for field in contract.arrow_schema:
        if field.name not in rows.column_names:
            rows = rows.append_column(field.name, pa.nulls(rows.num_rows, field.type))
    return cast_to_schema(rows, contract.arrow_schema, contract.column_names).cast(contract.arrow_schema)


def file_stats(path: str | pq.ParquetFile) -> str:
    """Delta add-action stats (numRecords, min/max/nullCount of scalar columns) from a Parquet file."""
    meta = path if isinstance(path, pq.ParquetFile) else pq.ParquetFile(path)
    scalar = [f.name for f in meta.schema_arrow if pa.types.is_integer(f.type) or pa.types.is_string(f.type)]
    data = meta.read(columns=scalar)
    mins, maxs, nulls = {}, {}, {}
    for name in scalar:
        col = data[name]
        nulls[name] = col.null_count
        if len(col) > col.null_count:
            bounds = pc.min_max(col)
            mins[name], maxs[name] = bounds["min"].as_py(), bounds["max"].as_py()
    return json.dumps({"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls})


def commit_files_by_uri(
    engine: Any,
    name: str,
    contract: TableContract,
    files: Sequence[str],
    *,
    uris: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
) -> tuple[CommitResult, frozenset[str]]:
    """Move finished Parquet `files` into `engine`'s table and drop every row whose uri is in
    `uris`, in one Delta commit; returns the result and which of `uris` the table held.

    Old files holding only dropped uris are removed; a file mixing dropped and kept uris is
    rewritten without them. The removals are planned on one snapshot and the commit must land
    right after it (no silent rebase): on a conflict (`CommitFailedError`) the plan is made
    again on the new snapshot, so a row another writer added for one of `uris` goes too.
    """
    from deltalake import CommitProperties
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

    drop = set(uris)
    if not files and (not drop or not engine.exists(name)):
        return CommitResult(engine.version(name)), frozenset()
    location = engine.location(name)
    remote = is_remote(location)
    options = getattr(engine, "options", None)
    root = location.rstrip("/") if remote else uri_to_path(location)
    if not remote:
        os.makedirs(root, exist_ok=True)
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    moved: list[str] = []
    custom = {META_KEY: commit_metadata_json(metadata)} if metadata is not None else None

    def move_in(path: str) -> Any:
        """A finished local file as a file of the table: renamed locally; on an object store
        written once under its final name (no rename there)."""
        target = f"part-{uuid.uuid4().hex}.parquet"
        if remote:
            stats, size = file_stats(path), os.path.getsize(path)
            url = join_url(root, target)
            moved.append(url)
            upload(path, url, options)
            return AddAction(target, size, {}, now_ms, True, stats)
        os.replace(path, os.path.join(root, target))
        moved.append(os.path.join(root, target))
        return AddAction(target, os.path.getsize(moved[-1]), {}, now_ms, True, file_stats(moved[-1]))

    def remove_moved(path: str) -> None:
        with contextlib.suppress(OSError):
            delete_file(path, options) if remote else os.remove(path)

    def removals(table: Any) -> tuple[list[Any], set[str]]:
        actions: list[Any] = []
        found: set[str] = set()
        for uri in table.file_uris() if drop else []:
            path = delta_file_path(uri)
            held = engine.parquet_file(path).read(columns=["uri"])["uri"]
            hit = pc.is_in(held, pa.array(sorted(drop), held.type))
            if not pc.any(hit).as_py():
                continue
            found.update(held.filter(hit).to_pylist())
            relative = path[len(root) + 1:] if remote else os.path.relpath(path, root)
            actions.append(RemoveAction(relative, True, now_ms, file_size(path, options), {}))
            if not pc.all(hit).as_py():  # keep the other uris' rows in a rewritten file
                kept = as_contract(engine.parquet_file(path).read().filter(pc.invert(hit)), contract)
                if remote:
                    with tempfile.TemporaryDirectory(prefix="lakeimg-rewrite-") as scratch:
                        tmp = os.path.join(scratch, "rewrite.parquet")
                        pq.write_table(kept, tmp, row_group_size=16)
                        actions.append(move_in(tmp))
                else:
                    tmp = os.path.join(root, f".rewrite-{uuid.uuid4().hex}.parquet")
                    pq.write_table(kept, tmp, row_group_size=16)
                    actions.append(move_in(tmp))
        return actions, found

    before = engine.version(name)
    found: set[str] = set()
    try:
        if remote and len(files) > 1:
            # Overlap the uploads: one object store request takes tens of milliseconds.
            with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
                adds = list(pool.map(move_in, files))
        else:
            adds = [move_in(path) for path in files]
        if before is None:
            try:
                create_table_with_add_actions(
                    engine.location(name), DeltaSchema.from_arrow(contract.arrow_schema), adds, mode="error",
                    name=name.rsplit("/", 1)[-1], description=contract.description,
                    configuration=contract.properties, storage_options=engine.storage_options,
                    commit_properties=CommitProperties(custom_metadata=custom),
                )
                return CommitResult(engine.version(name), True), frozenset()
            except Exception:
                if not engine.exists(name):
                    raise
                # Another writer created the table first: commit into it like any other.

        def attempt() -> bool:
            nonlocal found
            table = engine._delta_table(name)
            removed, found = removals(table)
            actions = removed + adds
            if not actions:
                return False
            try:
                table.create_write_transaction(actions, mode="append", schema=contract.arrow_schema,
                                               commit_properties=CommitProperties(custom_metadata=custom, max_commit_retries=0))
            except CommitFailedError:
                for action in actions:  # this attempt's rewritten files (the new files stay)
                    if isinstance(action, AddAction) and action not in adds:
                        remove_moved(join_url(root, action.path) if remote else os.path.join(root, action.path))
                raise
            return True

        committed = with_retries(name, attempt, (CommitFailedError,))
    except BaseException:
        for path in moved:  # never committed: not part of any version
            remove_moved(path)
        raise
    return CommitResult(engine.version(name), committed), frozenset(found)
