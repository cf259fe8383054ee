"""A lake on disk: where tables live, whether a lake exists, and checks of a table's Delta log.

Example:
    >>> table_location("/data/lake", "_lakeimg/runs")
    '/data/lake/_lakeimg/runs'
    >>> lake_exists("/nonexistent/lake")
    False
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from lakeimg.errors import (
    LakeDamagedError,
    LakeNotFoundError,
    LakeNotWritableError,
    VersionNotFoundError,
)
from lakeimg.storage import (
    check_store,
    has_scheme,
    is_remote,
    join_url,
    list_children,
    read_bytes,
    resolve,
    uri_to_path,
)
from lakeimg.tables import RUNS_TABLE, TRAINSETS_TABLE, is_table_name, lake_relative, lake_tables

# The data file layout of lakeimg's tables (README "Performance", DEVELOPERS "Table layout").
# A data file closes at TARGET_FILE_BYTES (Arrow bytes written; image bytes are already
# compressed, so the file is about that size): replacing one row rewrites at most one such file,
# and a table of a million small images is a few dozen files. Row groups close at
# ROW_GROUP_BYTES or ROW_GROUP_ROWS, whichever comes first: a reader that wants a few rows by uri
# reads a few row groups (their uri statistics prune the rest), a streamed read holds one, and
# a re-run's key-column read touches a few hundred row groups per million rows, not 60,000.
TARGET_FILE_BYTES = 64 << 20
ROW_GROUP_BYTES = 8 << 20
ROW_GROUP_ROWS = 4096


# Columns whose values are (nearly) all distinct: dictionary encoding only costs time there
# (Parquet falls back to plain pages after trying), and image bytes are already compressed.
_UNIQUE_COLUMNS = ("uri", "content_sha256", "content", "thumbnail", "pixels", "data", "tile")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns of a pyarrow schema worth Parquet dictionary encoding (repeated values: format,
    mode, label...), for `use_dictionary=`: not the unique keys, hashes and byte columns.

    Example:
        >>> import pyarrow as pa
        >>> dictionary_columns(pa.schema([("uri", pa.string()), ("format", pa.string()), ("content", pa.binary())]))
        ['format']
    """
    return [f.name for f in schema if f.name not in _UNIQUE_COLUMNS and not pa.types.is_binary(f.type)
            and not pa.types.is_large_binary(f.type)]


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group for writing `table` (a pyarrow Table) in one go, per the layout above.

    Example:
        >>> import pyarrow as pa
        >>> row_group_rows(pa.table({"b": [b"x" * 1000] * 10})), row_group_rows(pa.table({"b": [b"x" * (3 << 20)] * 10}))
        (4096, 2)
    """
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // per_row))

__all__ = ["table_location", "ensure_lake", "lake_exists", "require_lake", "check_log_tail", "check_not_before_first",
           "delta_file_path", "latest_version", "staging_location", "staging_root", "tables_in"]

StorageOptions = Mapping[str, str] | None


def table_location(lake: str | os.PathLike[str], name: str) -> str:
    """Where a table lives inside a lake: `LAKE/<name>` (lakeimg's own under `LAKE/_lakeimg/`).

    The last guard of the naming rule (lakeimg.tables): a name whose path would leave the lake
    (`../x`, `/abs`) raises InvalidNameError, whichever caller it came through.
    """
    return f"{str(lake).rstrip('/')}/{lake_relative(name)}"


def staging_root(lake: str | os.PathLike[str]) -> str:
    """The local folder where runs on `lake` stage their output before the commit.

    `LAKE/_lakeimg/staging` for a local lake. For an object-store lake it is a local folder
    named after the lake's URL: object stores have no rename and no lock, so staged files are
    written locally (where the run's flock marks them live, `engine/staging.py`) and the commit
    writes each one once, under its final name inside the table.

    Example:
        >>> staging_root("/data/lake")
        '/data/lake/_lakeimg/staging'
    """
    if not is_remote(os.fspath(lake)):
        return os.path.join(uri_to_path(os.fspath(lake)), "_lakeimg", "staging")
    key = hashlib.sha256(os.fspath(lake).rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "lakeimg-staging", key)


def staging_location(lake: str | os.PathLike[str], label: str) -> str:
    """Where a stage labelled `label` (it starts with the run id) stages its files.

    Example:
        >>> staging_location("/data/lake", "r1-rows")
        '/data/lake/_lakeimg/staging/r1-rows'
    """
    lake_relative(f"_lakeimg/staging/{label}")  # the label is one safe path component
    return os.path.join(staging_root(lake), label)


def tables_in(lake: str | os.PathLike[str], storage_options: StorageOptions = None) -> list[str]:
    """`lakeimg.tables.lake_tables` for a lake anywhere: an object-store lake is listed through
    `lakeimg.storage` (one LIST per level).

    Example:
        >>> tables_in("/nonexistent/lake")
        []
    """
    lake = os.fspath(lake)
    if not is_remote(lake):
        return lake_tables(lake)
    names = [n for n in list_children(lake, storage_options) if is_table_name(n)]
    owned = [n for n in (RUNS_TABLE, TRAINSETS_TABLE) if n.rsplit("/", 1)[-1] in list_children(join_url(lake, "_lakeimg"), storage_options)]
    return [n for n in [*names, *owned] if "_delta_log" in list_children(join_url(lake, n), storage_options)]


def delta_file_path(uri: str) -> str:
    """The path of a data file as delta-rs' `file_uris()` gives it: a URL, or an absolute
    path percent-encoded like one ("/my%20lake/images/part-0.parquet"). Local files become
    local paths; object-store URLs stay URLs (read through `lakeimg.storage.resolve`)."""
    if is_remote(uri) and has_scheme(uri):
        return uri
    if has_scheme(uri) or uri.startswith("/"):
        return uri_to_path(uri if has_scheme(uri) else "file://" + uri)
    return uri


def latest_version(location: str, storage_options: StorageOptions = None) -> int | None:
    """A table's latest version from one listing of its `_delta_log` (the highest commit
    entry), or None when it has none: opening the table through delta-rs replays the log from
    its last checkpoint, several requests and every entry's actions, only to read one number.

    Example:
        >>> latest_version("/nonexistent/table") is None
        True
    """
    fs, path = resolve(join_url(location, "_delta_log"), dict(storage_options or {}))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), allow_not_found=True))
    except NotADirectoryError:
        return None
    versions = [int(i.base_name[:20]) for i in infos
                if len(i.base_name) == 25 and i.base_name.endswith(".json") and i.base_name[:20].isdigit()]
    return max(versions) if versions else None


def check_log_tail(location: str, name: str) -> None:
    """Raise `LakeDamagedError` when a table's newest log entry is empty or cut short.

    A crash before a commit reached the disk can leave `_delta_log/N.json` empty or partial.
    delta-rs reads an empty entry as a version with no actions, so version N's rows vanish
    from reads, and the next commit (N+1) makes that permanent. Refuse instead, with the
    repair. Only local tables are checked here: an object store's PUT makes an object whole or
    not at all, so a cut entry cannot happen there.

    Example:
        >>> check_log_tail("/nonexistent/table", "images")
    """
    if is_remote(location):
        return
    log = os.path.join(uri_to_path(location), "_delta_log")
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


def ensure_lake(lake: str, storage_options: StorageOptions = None) -> None:
    """Create the lake folder; raise LakeNotWritableError when that or writing into it fails.

    An object-store lake has no folder to make: its bucket is reached and a probe object
    written and deleted (`lakeimg.storage.check_store`: typed errors for wrong credentials, a
    missing bucket, an unreachable endpoint)."""
    if is_remote(lake):
        check_store(lake, storage_options, writable=True)
        return
    path = Path(uri_to_path(lake))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lakeimg-write-probe-{os.getpid()}-{uuid.uuid4().hex}"  # concurrent writers probe too
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LakeNotWritableError(lake, f"{type(exc).__name__}: {exc.strerror or exc}") from exc


def lake_exists(lake: str | os.PathLike[str], storage_options: StorageOptions = None) -> bool:
    """Whether `lake` is a lake: a folder (or object-store prefix) with lakeimg's `_lakeimg`
    folder or a Delta table in it. An unreachable store raises its typed error.

    Example:
        >>> lake_exists("/nonexistent/lake")
        False
    """
    text = str(lake)
    if is_remote(text):
        check_store(text, storage_options)
        children = list_children(text, storage_options)
        return "_lakeimg" in children or any(
            "_delta_log" in list_children(join_url(text, c), storage_options) for c in children if is_table_name(c))
    root = Path(uri_to_path(text))
    if (root / "_lakeimg").is_dir():
        return True
    try:
        return any((entry / "_delta_log").is_dir() for entry in root.iterdir() if entry.is_dir())
    except OSError:
        return False


def require_lake(lake: str | os.PathLike[str], storage_options: StorageOptions = None) -> None:
    """Raise `LakeNotFoundError` unless `lake` is a lake (every job but ingest and demo reads or
    writes an existing lake, and never creates one from a mistyped path).

    Example:
        >>> require_lake("/nonexistent/lake")
        Traceback (most recent call last):
        ...
        lakeimg.errors.LakeNotFoundError: no lake at /nonexistent/lake
    """
    if not lake_exists(lake, storage_options):
        raise LakeNotFoundError(str(lake))


def check_not_before_first(location: str, loaded: int, when: dt.datetime, name: str, ref: Any, lake: str,
                           storage_options: StorageOptions = None) -> None:
    """delta-rs loads the first version for a time before it; Delta (and lakeimg) refuse."""

    fs, log = resolve(join_url(location, "_delta_log"), storage_options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(log, allow_not_found=True))
        names = {i.base_name: i for i in infos}
        first = min(int(n[:20]) for n in names if len(n) == 25 and n.endswith(".json") and n[:20].isdigit())
    except (OSError, ValueError):
        return
    if loaded != first:
        return
    entry = names[f"{first:020d}.json"]
    stamp_ms = None
    try:
        for line in read_bytes(join_url(location, "_delta_log", entry.base_name), storage_options).decode("utf-8").splitlines():
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info and info.get("timestamp") is not None:
                stamp_ms = int(info["timestamp"])
                break
        if stamp_ms is None:
            stamp_ms = int((entry.mtime_ns or 0) // 1_000_000)
    except (OSError, ValueError):
        return
    committed = dt.datetime.fromtimestamp(stamp_ms / 1000, dt.timezone.utc)
    if when < committed:
        raise VersionNotFoundError(
            name, ref, lake, f"before the table's first readable version ({first}, committed {committed.isoformat()})"
        )
