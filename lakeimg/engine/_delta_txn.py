"""A hand-built delta-rs transaction: Parquet files moved into a table, rows of some uris removed.

delta-rs has no "add these finished files and drop the rows of these keys" write: `write_deltalake`
rewrites its input and `merge` needs it in memory. Staged output (GBs of image bytes, or tiles
a kernel already wrote in the contract's schema) is renamed into the table instead, and the
commit's add/remove actions are built here, with each file's statistics.

An object store has no rename: there a stage writes its files under their final names inside
the table while it runs (`engine/staged.py: PlacedFile`), any other file is uploaded once under
its final name here, and only the Delta log commit makes them part of the table. Objects of a
commit that never landed are deleted; a killed run's leftovers are named by its manifest
(`begin_placement`), and the next run deletes them (`remove_abandoned_uploads`).

Example:
    >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
    >>> p = os.path.join(tempfile.mkdtemp(), "f.parquet"); pq.write_table(pa.table({"uri": ["a", "b"]}), p)
    >>> json.loads(file_stats(p))["maxValues"]
    {'uri': 'b'}
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakeimg.engine.base import META_KEY, CommitResult, commit_metadata_json, with_retries
from lakeimg.engine.layout import delta_file_path, dictionary_columns
from lakeimg.engine.staged import ColumnStats, PlacedFile, Placement
from lakeimg.engine.urisets import SortedUris, union, uri_set
from lakeimg.errors import LakeImgError
from lakeimg.schemas import TableContract
from lakeimg.storage import (
    delete_file,
    file_size,
    is_remote,
    join_url,
    list_files,
    read_bytes,
    resolve,
    upload,
    uri_to_path,
    write_bytes,
)
from lakeimg.tables import lake_relative

__all__ = ["commit_files_by_uri", "file_stats", "uri_ranges", "as_contract", "cast_to_schema", "remove_abandoned_uploads",
           "begin_placement"]


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
    stats = ColumnStats(meta.schema_arrow)
    stats.add(meta.read(columns=stats.columns))
    return stats.json()


def write_kept_rows(source: pq.ParquetFile, dropped: pa.Array | pa.ChunkedArray, contract: TableContract, path: str) -> None:
    """Write the rows of `source` not flagged in `dropped` (one bool per row of the file) to a new
    Parquet file at `path`, one row group at a time: the memory a rewrite needs is one row
    group's, not the file's, and each row group keeps its size (the tiles tables' small groups
    stay small).

    Example:
        >>> import tempfile
        >>> from lakeimg.schemas import TableContract
        >>> c = TableContract("t", 1, "", {"type": "struct", "fields": [{"name": "uri", "type": "string"}]}, (), {})
        >>> folder = tempfile.mkdtemp(); old, new = f"{folder}/old.parquet", f"{folder}/new.parquet"
        >>> pq.write_table(pa.table({"uri": ["a", "b", "c"]}), old, row_group_size=2)
        >>> write_kept_rows(pq.ParquetFile(old), pa.array([False, True, False]), c, new)
        >>> pq.read_table(new)["uri"].to_pylist(), pq.ParquetFile(new).num_row_groups
        (['a', 'c'], 2)
    """
    schema = contract.arrow_schema
    offset = 0
    with pq.ParquetWriter(path, schema, write_page_checksum=True, use_dictionary=dictionary_columns(schema)) as writer:
        for index in range(source.num_row_groups):
            group = source.read_row_group(index)
            kept = group.filter(pc.invert(dropped.slice(offset, group.num_rows)))
            offset += group.num_rows
            if kept.num_rows:
                writer.write_table(as_contract(kept, contract), row_group_size=kept.num_rows)


def commit_files_by_uri(
    engine: Any,
    name: str,
    contract: TableContract,
    files: Sequence[str | PlacedFile],
    *,
    uris: Sequence[str] | pa.Array = (),
    new_uris: Callable[[], pa.Array | pa.ChunkedArray | Iterable[str]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    table_exists: bool | None = None,
) -> tuple[CommitResult, frozenset[str]]:
    """Move finished Parquet `files` into `engine`'s table and drop every row whose uri is in
    `uris`, in one Delta commit; returns the result and which of `uris` the table held.
    A `PlacedFile` is in the table's folder already: it is added as it is, and stays its
    stage's to delete if the commit fails. `new_uris` gives the uris of the rows in `files`,
    which are dropped too; it is called only when the table exists (a first commit of a million
    rows never holds their uris as Python strings). `table_exists`: whether the table existed
    when the caller looked (None: look it up here; on an object store each look is a request).

    Old files holding only dropped uris are removed; a file mixing dropped and kept uris is
    rewritten without them. The removals are planned on one snapshot and the commit must land
    right after it (no silent rebase): on a conflict (`CommitFailedError`) the plan is made
    again on the new snapshot, so a row another writer added for one of `uris` goes too.
    """
    from deltalake import CommitProperties
    from deltalake import Schema as DeltaSchema
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

    drop = uri_set(uris)
    if table_exists is None:
        table_exists = engine.exists(name)
    if not files and (not len(drop) or not table_exists):
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

    # On an object store, every object this call uploads is named part-<token>-*, and a manifest
    # naming the token is written before the first upload: if this process dies before the commit
    # lands, the next run deletes exactly those objects (`remove_abandoned_uploads`).
    token = uuid.uuid4().hex
    uploads = [f for f in files if not isinstance(f, PlacedFile)]
    manifest: str | None = None
    manifest_lock = threading.Lock()

    def before_upload() -> None:
        nonlocal manifest
        with manifest_lock:
            if manifest is None:
                manifest = _write_manifest(engine, name, token)[0]

    def move_in(path: str | PlacedFile) -> Any:
        """A finished local file as a file of the table: renamed locally; on an object store
        written once under its final name (no rename there)."""
        if isinstance(path, PlacedFile):
            if not remote or not path.url.startswith(root + "/") or "/" in path.url[len(root) + 1:]:
                raise LakeImgError(f"{path.url} was staged outside the table {name} it is committed into")
            return AddAction(path.url[len(root) + 1:], path.size, {}, now_ms, True, path.stats)
        target = f"part-{token}-{uuid.uuid4().hex[:16]}.parquet" if remote else f"part-{uuid.uuid4().hex}.parquet"
        if remote:
            stats, size = file_stats(path), os.path.getsize(path)
            url = join_url(root, target)
            before_upload()
            moved.append(url)
            upload(path, url, options)
            return AddAction(target, size, {}, now_ms, True, stats)
        os.replace(path, os.path.join(root, target))
        moved.append(os.path.join(root, target))
        return AddAction(target, os.path.getsize(moved[-1]), {}, now_ms, True, file_stats(moved[-1]))

    def remove_moved(path: str) -> bool:
        try:
            delete_file(path, options) if remote else os.remove(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def removals(table: Any) -> tuple[list[Any], set[str]]:
        actions: list[Any] = []
        found: set[str] = set()
        ranges = uri_ranges(table) if len(drop) else {}
        wanted = SortedUris(drop)
        for uri in table.file_uris() if len(drop) else []:
            path = delta_file_path(uri)
            relative = path[len(root) + 1:] if remote else os.path.relpath(path, root)
            bounds = ranges.get(relative)
            if bounds is not None and not any_between(wanted, *bounds):
                continue  # the log's uri statistics rule this file out: it is not even opened
            held = engine.parquet_file(path).read(columns=["uri"])["uri"].cast(pa.string())
            if len(held) == 0:
                continue
            # Only the wanted uris inside this file's range are hashed: a million-uri replace
            # over many files does not hash the million once per file.
            low, high = pc.min(held).as_py(), pc.max(held).as_py()
            hit = pc.is_in(held, value_set=wanted[bisect.bisect_left(wanted, low):bisect.bisect_right(wanted, high)])
            if not pc.any(hit).as_py():
                continue
            found.update(held.filter(hit).to_pylist())
            actions.append(RemoveAction(relative, True, now_ms, file_size(path, options), {}))
            if not pc.all(hit).as_py():  # keep the other uris' rows in a rewritten file
                if remote:
                    with tempfile.TemporaryDirectory(prefix="lakeimg-rewrite-") as scratch:
                        tmp = os.path.join(scratch, "rewrite.parquet")
                        write_kept_rows(engine.parquet_file(path), hit, contract, tmp)
                        actions.append(move_in(tmp))
                else:
                    tmp = os.path.join(root, f".rewrite-{uuid.uuid4().hex}.parquet")
                    write_kept_rows(engine.parquet_file(path), hit, contract, tmp)
                    actions.append(move_in(tmp))
        return actions, found

    found: set[str] = set()
    try:
        if remote and len(uploads) > 1:
            # Overlap the uploads: one object store request takes tens of milliseconds.
            with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
                adds = list(pool.map(move_in, files))
        else:
            adds = [move_in(path) for path in files]
        if not table_exists:
            try:
                create_table_with_add_actions(
                    engine.location(name), DeltaSchema.from_arrow(contract.arrow_schema), adds, mode="error",
                    name=name.rsplit("/", 1)[-1], description=contract.description,
                    configuration=contract.properties, storage_options=engine.storage_options,
                    commit_properties=CommitProperties(custom_metadata=custom),
                )
                return CommitResult(0, True), frozenset()  # mode="error": this call made version 0
            except Exception:
                if not engine.exists(name):
                    raise
                # Another writer created the table first: commit into it like any other.

        if new_uris is not None:  # the table exists (or another writer just created it)
            drop = union(drop, uri_set(new_uris()))

        def attempt() -> bool:
            nonlocal found
            table = engine._delta_table(name)
            removed, found = removals(table)
            actions = removed + adds
            if not actions:
                return False
            try:
                table.create_write_transaction(actions, mode="append", schema=contract.arrow_schema,
                                               commit_properties=CommitProperties(custom_metadata=custom, max_commit_retries=0),
                                               post_commithook_properties=post_commit_hooks(table))
            except CommitFailedError:
                for action in actions:  # this attempt's rewritten files (the new files stay)
                    if isinstance(action, AddAction) and action not in adds:
                        remove_moved(join_url(root, action.path) if remote else os.path.join(root, action.path))
                raise
            return True

        committed = with_retries(name, attempt, (CommitFailedError,))
    except BaseException:
        # never committed: not part of any version (a manifest stays if an object could not go)
        if all([remove_moved(path) for path in moved]) and manifest is not None:
            _remove_manifest(manifest, options)
        raise
    if manifest is not None:
        _remove_manifest(manifest, options)
    return CommitResult(engine.version(name), committed), frozenset(found)


def post_commit_hooks(table: Any) -> Any:
    """delta-rs' steps after a commit on `table` (a loaded DeltaTable): a checkpoint whenever
    one is due, as by default, but the listing that deletes expired log files only with that
    checkpoint, as delta-spark does, not after every commit (on an object store it is one more
    request in a row at the end of every commit). None when no table is loaded.

    Example:
        >>> import tempfile, pyarrow as pa
        >>> from deltalake import DeltaTable, write_deltalake
        >>> path = tempfile.mkdtemp(); write_deltalake(path, pa.table({"a": [1]}))
        >>> post_commit_hooks(DeltaTable(path)).cleanup_expired_logs
        False
    """
    if table is None:
        return None
    from deltalake import PostCommitHookProperties

    interval = int(table.metadata().configuration.get("delta.checkpointInterval") or 100)
    due = (table.version() + 2) % max(1, interval) == 0  # delta-rs checkpoints version v when v + 1 is a multiple
    return PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=None if due else False)


def uri_ranges(table: Any) -> dict[str, tuple[str, str]]:
    """Each data file's (min uri, max uri) from a delta-rs snapshot's add-action statistics,
    by its path relative to the table; files without those statistics are left out.

    A replace by uri reads only the files whose range holds one of its uris: rows are staged in
    uri order, so a file covers a narrow range and changing a few files rewrites a few files.
    (Spark truncates long string statistics: its min is a prefix and its max is rounded up, so
    the range still holds every uri of the file.)
    """
    actions = pa.table(table.get_add_actions(flatten=True))
    if not {"min.uri", "max.uri"} <= set(actions.column_names):
        return {}
    ranges = {}
    for path, low, high in zip(actions["path"].to_pylist(), actions["min.uri"].to_pylist(),
                               actions["max.uri"].to_pylist(), strict=True):
        if low is not None and high is not None:
            ranges[unquote(path)] = (low, high)
    return ranges


def any_between(sorted_uris: Sequence[str], low: str, high: str) -> bool:
    i = bisect.bisect_left(sorted_uris, low)
    return i < len(sorted_uris) and sorted_uris[i] <= high


# Where a run's manifests of uploads live, and how long one from another host stays untouched.
# A manifest lives from just before a commit's first upload to just after the commit lands (a
# commit call: minutes, even for huge tiles); a day is far beyond that, and far inside the
# retention vacuum keeps (7 days), so a foreign writer's objects are never taken mid-commit.
UPLOADS_FOLDER = "_lakeimg/uploads"
ABANDONED_AFTER_S = 24 * 3600.0
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


def begin_placement(engine: Any, name: str) -> Placement:
    """Where a stage writes files for the table `name` of an object-store lake, under their
    final names: a fresh token and its manifest (written by the stage before each new object),
    so that the next run can delete the objects if this one dies before its commit.

    Example:
        >>> import tempfile; from lakeimg.engine.delta_rs import LocalEngine
        >>> begin_placement(LocalEngine(tempfile.mkdtemp()), "images")
        Traceback (most recent call last):
        ...
        ValueError: files are placed only in tables on an object store
    """
    if not is_remote(engine.lake):
        raise ValueError("files are placed only in tables on an object store")
    token = uuid.uuid4().hex
    manifest, body = _manifest(engine, name, token)
    return Placement(engine.location(name).rstrip("/"), f"part-{token}-", manifest, body, dict(engine.options))


def _manifest(engine: Any, name: str, token: str) -> tuple[str, bytes]:
    """Where the manifest of `token`'s objects goes, and what it says."""
    url = join_url(engine.lake, UPLOADS_FOLDER, f"{token}.json")
    record = {"table": name, "token": token, "after_version": engine.version(name), "host": socket.gethostname(),
              "pid": os.getpid(), "written_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    return url, json.dumps(record, sort_keys=True).encode()


def _write_manifest(engine: Any, name: str, token: str) -> tuple[str, bytes]:
    url, body = _manifest(engine, name, token)
    write_bytes(url, body, engine.options)
    return url, body


def _remove_manifest(url: str, options: Mapping[str, str] | None) -> None:
    with contextlib.suppress(OSError):
        delete_file(url, options)


def _writer_gone(record: Mapping[str, Any], written_ns: int, now: float) -> bool:
    """Whether the process that wrote a manifest can no longer commit: on this host, its pid is
    gone; from another host (no way to ask), the manifest is older than ABANDONED_AFTER_S."""
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        if record["pid"] == os.getpid():
            return False
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, another user's
        return False  # alive (or its pid reused: the objects wait for a later run)
    return now - written_ns / 1e9 > ABANDONED_AFTER_S


def _added_since(engine: Any, name: str, after: int | None) -> set[str] | None:
    """Names of the data files every commit after version `after` added; None when a log entry
    in that range cannot be read (then nothing may be deleted)."""
    latest = engine.version(name)
    if latest is None:
        return set()
    location = engine.location(name)
    added: set[str] = set()
    for version in range(0 if after is None else after + 1, latest + 1):
        try:
            text = read_bytes(join_url(location, "_delta_log", f"{version:020d}.json"), engine.options).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        for line in text.splitlines():
            action = json.loads(line).get("add") if line.strip() else None
            if action and action.get("path"):
                added.add(unquote(action["path"]).rsplit("/", 1)[-1])
    return added


def remove_abandoned_uploads(engine: Any, *, now: float | None = None) -> list[str]:
    """Delete the objects of commits whose writer died before its commit landed; returns their URLs.

    Each manifest under `LAKE/_lakeimg/uploads` names a table and the token of the objects one
    commit call or stage uploaded (`part-<token>-*`). Only a manifest whose writer is gone (see
    `_writer_gone`) is acted on, and of its objects only those no commit after the manifest's
    version added are deleted (the writer may have died after its commit landed); then the
    manifest goes. A local lake has no manifests (its staged files are renamed in).

    Example:
        >>> import tempfile; from lakeimg.engine.delta_rs import LocalEngine
        >>> remove_abandoned_uploads(LocalEngine(tempfile.mkdtemp()))
        []
    """
    if not is_remote(engine.lake):
        return []
    now = time.time() if now is None else now
    options = engine.options
    removed: list[str] = []
    for listed in list_files(join_url(engine.lake, UPLOADS_FOLDER), options):
        try:
            record = json.loads(read_bytes(listed.url, options))
            token, name = str(record["token"]), lake_relative(str(record["table"]))  # confined to the lake
        except (OSError, ValueError, KeyError, TypeError, LakeImgError):
            continue  # not a manifest lakeimg wrote: left alone
        if not _TOKEN.match(token) or not _writer_gone(record, listed.mtime_ns, now):
            continue
        after = record.get("after_version")
        added = _added_since(engine, name, after if isinstance(after, int) else None)
        if added is None:
            continue
        fs, root = resolve(engine.location(name), options)
        leftovers = [i for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                     if i.type == pafs.FileType.File and i.base_name.startswith(f"part-{token}-")
                     and i.base_name not in added]
        for info in leftovers:
            url = join_url(engine.location(name), info.base_name)
            with contextlib.suppress(FileNotFoundError):  # another run cleaning up at the same time
                delete_file(url, options)
            removed.append(url)
        _remove_manifest(listed.url, options)
    return removed
