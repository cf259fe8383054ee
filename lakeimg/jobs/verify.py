"""Verify a table version's stored bytes: every data file present and readable, every row's image
bytes hashing to the `content_sha256` recorded at ingest.

What can be checked, per kind of table:

- ingest tables (`content`, `content_sha256`): every inline `content` cell is hashed (SHA-256)
  and compared with `content_sha256`. Rows whose file was too large to inline (or tiled) keep
  no bytes here and are counted as `rows_not_inline`.
- derived tables (`data`): `source_sha256` is the hash of the *source* file, not of `data`, so
  the pixels cannot be compared with anything; files and row groups are read in full (with
  Parquet page checksums, which lakeimg writes into the files it stages) and their size and row
  count compared with the Delta log.
- tiles tables (`TABLE_tiles`): `content_sha256` there is the source file's hash, not the
  tile's; tiles get the same file-level checks as derived tables. Verifying an ingest table
  also verifies its tiles table at the matching time (`tiles=False` skips it).

Reads stream one row group at a time in small batches, so memory stays at a few images
whatever the table's size; a damaged row group is reported and the next one is read.

`content_mismatches` and `check_content` are the cheap per-batch check that `Lake.read`,
export and the training-set loaders run on the rows they read anyway.

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> report = verify_table(LocalEngine(lake.path), "images")
    >>> report.ok, report.rows_checked, report.rows_hashed
    (True, 4, 4)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import ContentMismatchError
from lakeimg.jobs.regions import tiles_as_of
from lakeimg.storage import exists, file_size, is_remote, join_url, resolve
from lakeimg.tables import tiles_of

__all__ = ["VerifyProblem", "VerifyReport", "verify_table", "content_mismatches", "check_content", "READ_ERRORS"]

# What pyarrow raises on a damaged Parquet file: a bad footer, page header, checksum or codec
# stream (ArrowInvalid, OSError "Couldn't deserialize thrift", "Corrupt snappy compressed data").
READ_ERRORS = (OSError, pa.ArrowException)

_MAX_REPORTED = 1000
_BUFFER_BYTES = 1 << 20  # buffered, not pre-buffered reads: a row group is never held whole


@dataclass(frozen=True)
class VerifyProblem:
    """One thing wrong: `reason` is missing, unreadable, size_mismatch, row_count_mismatch or
    content_mismatch; `uri` is set for a row's problem."""

    table: str
    file: str
    reason: str
    detail: str
    uri: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify_table`; `ok` when no problem was found."""

    table: str
    version: int
    checked: tuple[str, ...]  # TABLE@VERSION of every table read (with its tiles table)
    files_checked: int
    rows_checked: int
    rows_hashed: int
    rows_not_inline: int
    problem_count: int
    problems: tuple[VerifyProblem, ...]  # the first 1000
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["checked"] = list(self.checked)
        out["notes"] = list(self.notes)
        out["problems"] = [asdict(p) for p in self.problems]
        return out


def content_mismatches(rows: pa.Table | pa.RecordBatch) -> list[tuple[str, str, str]]:
    """(uri, expected, actual) of every row whose `content` does not hash to `content_sha256`.

    Rows without inline content or without a recorded hash are skipped. The bytes are hashed
    in place (Arrow buffers, no copies).

    Example:
        >>> rows = pa.table({"uri": ["a", "b"], "content": [b"x", b"y"],
        ...                  "content_sha256": [hashlib.sha256(b"x").hexdigest(), "00"]})
        >>> [m[0] for m in content_mismatches(rows)]
        ['b']
    """
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
    out = []
    uris, content, expected = (table[c].combine_chunks() for c in ("uri", "content", "content_sha256"))
    for i in range(table.num_rows):
        data, want = content[i], expected[i]
        if not data.is_valid or not want.is_valid:
            continue
        actual = hashlib.sha256(data.as_buffer()).hexdigest()
        if actual != want.as_py():
            out.append((uris[i].as_py(), want.as_py(), actual))
    return out


def check_content(rows: pa.Table | pa.RecordBatch, table: str, version: int | None, *, file: str | None = None) -> None:
    """Raise ContentMismatchError for the first row whose bytes do not match `content_sha256`.

    Example:
        >>> check_content(pa.table({"uri": ["a"], "content": [b"x"], "content_sha256": ["00"]}), "images", 0)
        Traceback (most recent call last):
        ...
        lakeimg.errors.ContentMismatchError: damaged lake: images@0: content of a does not match ...
    """
    for uri, expected, actual in content_mismatches(rows)[:1]:
        raise ContentMismatchError(table, version, uri, expected, actual, file=file)


class _Checker:
    def __init__(self, batch_rows: int, options: dict[str, str] | None = None):
        self.batch_rows, self.options = batch_rows, options  # object-store settings of the lake
        self.files = self.rows = self.hashed = self.not_inline = self.count = 0
        self.problems: list[VerifyProblem] = []
        self.checked: list[str] = []
        self.notes: list[str] = []

    def problem(self, table: str, file: str, reason: str, detail: str, uri: str | None = None) -> None:
        self.count += 1
        if len(self.problems) < _MAX_REPORTED:
            self.problems.append(VerifyProblem(table, file, reason, detail, uri))

    def table(self, engine: LocalEngine, name: str, version: VersionLike) -> int:
        resolved = engine.resolve_version(name, version)
        self.checked.append(f"{name}@{resolved}")
        hashable = {"uri", "content", "content_sha256"} <= set(engine.arrow_schema(name, resolved).names)
        logged = _logged_files(engine.add_actions(name, resolved), engine.location(name))
        for path in engine.data_files(name, resolved):
            self.file(name, path, logged.get(_key(path)), hashable)
        return resolved

    def file(self, table: str, path: str, logged: tuple[int | None, int | None] | None, hashable: bool) -> None:
        self.files += 1
        options = self.options
        if not exists(path, options):
            self.problem(table, path, "missing", "the Delta log lists it but it is not in the store (deleted or vacuumed)")
            return
        size, records = logged or (None, None)
        actual = file_size(path, options)
        if size is not None and actual != size:
            self.problem(table, path, "size_mismatch", f"{actual} bytes stored, {size} in the Delta log")
        try:
            parquet = self.open(path, page_checksum_verification=True)
            groups = parquet.num_row_groups
        except READ_ERRORS as exc:
            self.problem(table, path, "unreadable", _one_line(exc))
            return
        rows, complete = 0, True
        for group in range(groups):
            try:
                for batch in parquet.iter_batches(batch_size=self.batch_rows, row_groups=[group]):
                    rows += batch.num_rows
                    if hashable:
                        self.rows_of(table, path, batch)
            except READ_ERRORS as exc:
                complete = False  # the next row group may still read: report every damaged one
                self.problem(table, path, "unreadable", f"row group {group} of {groups}: {_one_line(exc)}")
                if hashable:
                    self.salvage(table, path, group)
        self.rows += rows
        if complete and records is not None and rows != records:
            self.problem(table, path, "row_count_mismatch", f"{rows} rows in the file, {records} in the Delta log")

    def salvage(self, table: str, path: str, group: int) -> None:
        """Name the damaged rows of a row group that failed its page checksums, when it still
        decodes without them (garbled image bytes usually do)."""
        try:
            parquet = self.open(path)
            for batch in parquet.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=["uri", "content", "content_sha256"]):
                for uri, expected, actual in content_mismatches(batch):
                    self.problem(table, path, "content_mismatch", f"stored bytes hash to {actual}, content_sha256 is {expected}", uri)
        except READ_ERRORS:
            pass  # already reported as unreadable

    def open(self, path: str, **kwargs: Any) -> pq.ParquetFile:
        """A data file (local path or object URL) read through `storage.resolve`, buffered."""
        fs, located = resolve(path, self.options)
        return pq.ParquetFile(located, filesystem=fs, buffer_size=_BUFFER_BYTES, pre_buffer=False, **kwargs)

    def rows_of(self, table: str, path: str, batch: pa.RecordBatch) -> None:
        content = batch.column(batch.schema.get_field_index("content"))
        self.not_inline += content.null_count
        self.hashed += len(content) - content.null_count
        for uri, expected, actual in content_mismatches(batch):
            self.problem(table, path, "content_mismatch",
                         f"stored bytes hash to {actual}, content_sha256 is {expected}", uri)


def _one_line(exc: BaseException) -> str:
    """pyarrow's thrift errors carry raw bytes and newlines: one printable line."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(exc)).split())
    return f"{type(exc).__name__}: {text}"


def _logged_files(actions: pa.Table, location: str) -> dict[str, tuple[int | None, int | None]]:
    """(size in bytes, number of records) of each data file, as the Delta log states them."""
    actions = actions.to_pylist()
    root = location[len("file://"):] if location.startswith("file://") else location
    out = {}
    for action in actions:
        out[_key(join_url(root, unquote(action["path"])))] = (action.get("size_bytes"), action.get("num_records"))
    return out


def _key(path: str) -> str:
    """One spelling of a data file's name: normalized locally, the URL as it is on a store."""
    return path.rstrip("/") if is_remote(path) else os.path.normpath(path)


def verify_table(
    engine: LocalEngine,
    table: str,
    version: VersionLike = None,
    *,
    tiles: bool = True,
    batch_rows: int = 32,
) -> VerifyReport:
    """Check every data file and row of `table@version` (latest by default); never raises for
    damage found, which is reported instead.
    """
    check = _Checker(batch_rows, engine.options)
    schema = engine.arrow_schema(table, version)
    resolved = check.table(engine, table, version)
    names = set(schema.names)
    if "content" in names and "content_sha256" in names:
        check.notes.append("content hashed and compared with content_sha256")
    elif "data" in names:
        check.notes.append(
            f"{table}: data has no hash of its own (source_sha256 is the source file's): files read in full, "
            "page checksums where written, sizes and row counts compared with the Delta log"
        )
    else:
        check.notes.append(f"{table}: no content hash: files read in full and compared with the Delta log")
    tiles_table = tiles_of(table)
    if tiles and "content_sha256" in names and not table.endswith(tiles_of("")) and engine.exists(tiles_table):
        check.table(engine, tiles_table, tiles_as_of(engine, table, resolved))
        check.notes.append(
            f"{tiles_table}: content_sha256 there is the source file's hash, not the tile's: "
            "tiles were read in full and compared with the Delta log only"
        )
    if check.not_inline:
        check.notes.append(f"{check.not_inline} rows keep no inline content (large or tiled files): no bytes to hash")
    return VerifyReport(
        table=table,
        version=resolved,
        checked=tuple(check.checked),
        files_checked=check.files,
        rows_checked=check.rows,
        rows_hashed=check.hashed,
        rows_not_inline=check.not_inline,
        problem_count=check.count,
        problems=tuple(check.problems),
        notes=tuple(check.notes),
    )
