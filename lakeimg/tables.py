"""Lake conventions, the one place for each: table names and the tables lakeimg derives from them,
where lakeimg keeps its own tables, which tables a lake has, table references
(`TABLE@VERSION|TIMESTAMP`), run records and the canonical JSON their specs are hashed by.

Table names: a lowercase letter, then lowercase letters, digits and `_`, at most 63 characters
(`images`, `cats_256`). Such a name is one folder inside the lake on every file system (no
case folding surprises) and a SQL identifier that needs no quoting in DuckDB or Spark.
Training-set and split names follow the same rule and may also use `-` (`cats-v1`, `v1-seed6`):
they are records in a table, never folders or SQL identifiers.

A table a job writes as its main output (ingest `--table`, transform `--target`) may not end in
`_rejects` or `_tiles` (those are the tables lakeimg derives from it, `rejects_of` and
`tiles_of`) nor be `lakeimg_runs` (the SQL name of the runs table). Derived names
(`images_rejects`) may exceed 63 characters by their suffix.

Example:
    >>> validate_name("table", "cats_256")
    'cats_256'
    >>> validate_name("training set", "cats-v1")
    'cats-v1'
    >>> rejects_of("images"), tiles_of("images")
    ('images_rejects', 'images_tiles')
    >>> parse_table_ref("images@7")
    TableRef(name='images', version=7)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa

from lakeimg._version import __version__
from lakeimg.errors import InvalidNameError, TableRefError
from lakeimg.schemas import table_contract

__all__ = [
    "NAME_RULE", "NameKind", "RUNS_SQL_NAME", "RUNS_TABLE", "RUN_STATUS_RANK", "RunRecord", "TRAINSETS_TABLE",
    "TableRef", "canonical_json", "is_table_name", "lake_relative", "lake_tables", "new_run_id", "parse_table_ref",
    "rejects_of", "spec_hash", "sql_tables", "table_path", "tiles_of", "utc_now", "validate_name",
]

NameKind = Literal["table", "target table", "training set", "split"]

NAME_RULE = "a lowercase letter, then lowercase letters, digits and '_', at most 63 characters"
_MAX = 63
_TABLE = re.compile(r"[a-z][a-z0-9_]*")
_RECORD = re.compile(r"[a-z][a-z0-9_-]*")  # training sets and splits: '-' too
_REJECTS, _TILES = "_rejects", "_tiles"

RUNS_TABLE = "_lakeimg/runs"  # one row per job run (lakeimg's own folder: no user table is there)
RUNS_SQL_NAME = "lakeimg_runs"  # the runs table's name in SQL (DuckDB views, Spark's catalog)
TRAINSETS_TABLE = "_lakeimg/trainsets"  # one immutable record per training set

# A run may have two rows: `incomplete` (written by a later run that found its commits but no
# row, possibly while it was still running) and its own final row. The higher rank wins.
RUN_STATUS_RANK = {"incomplete": 0, "failed": 1, "succeeded": 2}


def rejects_of(table: str) -> str:
    """The table holding the files or rows a job writing `table` rejected.

    Example:
        >>> rejects_of("cats_256")
        'cats_256_rejects'
    """
    return table + _REJECTS


def tiles_of(table: str) -> str:
    """The table holding the tiles and pyramid levels of `table`'s tiled images.

    Example:
        >>> tiles_of("images")
        'images_tiles'
    """
    return table + _TILES


def is_table_name(name: str) -> bool:
    """Whether `name` can be a table's name (a folder of the lake that SQL and lakeimg see).

    Example:
        >>> is_table_name("images_rejects"), is_table_name("My Table")
        (True, False)
    """
    return isinstance(name, str) and _TABLE.fullmatch(name) is not None


def validate_name(kind: NameKind, name: str) -> str:
    """`name` when it follows the rule for `kind`; InvalidNameError (exit code 2) otherwise.

    "table" is any table a job or query reads (derived names such as `images_rejects` too);
    "target table" is a table a job writes as its output, which also may not be a reserved name.

    Example:
        >>> validate_name("target table", "images_rejects")
        Traceback (most recent call last):
        ...
        lakeimg.errors.InvalidNameError: target table name 'images_rejects': names ending in '_rejects' are reserved for the tables lakeimg derives
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(kind, str(name), f"give a name: {_rule(kind)}")
    pattern = _TABLE if kind in ("table", "target table") else _RECORD
    if pattern.fullmatch(name) is None:
        raise InvalidNameError(kind, name, f"use {_rule(kind)}")
    if kind != "table" and len(name) > _MAX:
        raise InvalidNameError(kind, name, f"at most {_MAX} characters")
    if kind == "target table":
        for suffix in (_REJECTS, _TILES):
            if name.endswith(suffix):
                raise InvalidNameError(kind, name, f"names ending in {suffix!r} are reserved for the tables lakeimg derives")
        if name == RUNS_SQL_NAME:
            raise InvalidNameError(kind, name, "reserved (the runs table's SQL name)")
    return name


def lake_relative(name: str) -> str:
    """`name` when, joined to the lake's root, it stays inside the lake (the last guard before a path).

    Relative, '/'-separated, no empty, '.' or '..' parts, no backslash or NUL: lakeimg's own
    names (`images`, `_lakeimg/runs`, `_lakeimg/staging/<run>/<table>`) pass; `../x`, `/abs`,
    `a/../../b` do not.

    Example:
        >>> lake_relative("_lakeimg/runs")
        '_lakeimg/runs'
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("table", str(name), "give a name")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise InvalidNameError("table", name, "a table's path must stay inside the lake")
    return name


def _rule(kind: NameKind) -> str:
    if kind in ("table", "target table"):
        return NAME_RULE
    return NAME_RULE.replace("and '_'", "'_' and '-'")


def lake_tables(lake: str | os.PathLike[str]) -> list[str]:
    """Lake-relative paths of the lake's Delta tables: the user's tables (names that follow the
    naming rule; a folder the lake could not have made, such as `My Table`, is none), sorted,
    then lakeimg's own (`RUNS_TABLE`, `TRAINSETS_TABLE`) that exist.

    Example:
        >>> import tempfile
        >>> lake_tables(tempfile.mkdtemp())
        []
    """
    root = os.fspath(lake)
    names = sorted(n for n in os.listdir(root) if is_table_name(n)) if os.path.isdir(root) else []
    return [n for n in [*names, RUNS_TABLE, TRAINSETS_TABLE] if os.path.isdir(os.path.join(root, n, "_delta_log"))]


def sql_tables(lake: str | os.PathLike[str], tables: Sequence[str] | None = None) -> dict[str, str]:
    """SQL name -> lake-relative path of the tables SQL sees: the user's tables under their own
    names and the runs table as `lakeimg_runs` (training sets are read through `TrainingSet`).
    `tables`: the lake's tables when the caller listed them already (an object-store lake).

    Example:
        >>> import tempfile
        >>> sql_tables(tempfile.mkdtemp())
        {}
    """
    names = {RUNS_TABLE: RUNS_SQL_NAME}
    listed = lake_tables(lake) if tables is None else tables
    return {names.get(path, path): path for path in listed if path != TRAINSETS_TABLE}


def table_path(name: str) -> str:
    """The lake-relative path of the table SQL calls `name` (`lakeimg_runs` is `_lakeimg/runs`),
    so every command takes the names SQL uses.

    Example:
        >>> table_path("lakeimg_runs"), table_path("images")
        ('_lakeimg/runs', 'images')
    """
    return RUNS_TABLE if name == RUNS_SQL_NAME else name


@dataclass(frozen=True)
class TableRef:
    """A table at a version (int), an ISO timestamp (str) or its latest (None); `str()` gives
    it back as `TABLE[@VERSION|@TIMESTAMP]`.

    Example:
        >>> str(TableRef("images", 3)), str(TableRef("images"))
        ('images@3', 'images')
    """

    name: str
    version: int | str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_table_ref(text: str) -> TableRef:
    """`TABLE[@VERSION|@TIMESTAMP]` as a TableRef; TableRefError (exit code 2) when malformed.

    A number after `@` is a version, `latest` (or nothing after the name) the latest version;
    anything else must be an ISO timestamp (naive means UTC).

    Example:
        >>> parse_table_ref("images@latest")
        TableRef(name='images', version=None)
        >>> parse_table_ref("images@2026-01-31T12:00:00Z")
        TableRef(name='images', version='2026-01-31T12:00:00Z')
        >>> parse_table_ref("images@yesterday")
        Traceback (most recent call last):
        ...
        lakeimg.errors.TableRefError: table reference 'images@yesterday': after @ give a version number, latest or an ISO timestamp
    """
    name, sep, ref = text.partition("@")
    if not name:
        raise TableRefError(text, "no table name before @")
    if not sep:
        return TableRef(name)
    ref = ref.strip()
    if ref.lower() == "latest":
        return TableRef(name)
    if ref.isdigit():
        return TableRef(name, int(ref))
    try:
        dt.datetime.fromisoformat(ref.replace("Z", "+00:00"))
    except ValueError as exc:
        raise TableRefError(text, "after @ give a version number, latest or an ISO timestamp") from exc
    return TableRef(name, ref)


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: equal specs give equal text, hence equal hashes.

    Example:
        >>> canonical_json({"b": 1, "a": [2]})
        '{"a":[2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(spec: Any) -> str:
    """SHA-256 of a spec's canonical JSON.

    Example:
        >>> spec_hash({"b": 1, "a": [2]}) == spec_hash({"a": [2], "b": 1})
        True
    """
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunRecord:
    """One job run, as stored in the runs table and in its commits' `userMetadata` (so a table's
    own history answers "which run made this version" even without the runs table).

    Example:
        >>> record = RunRecord("r1", "ingest", "local", "images", {}, utc_now())
        >>> record.commit_metadata()["spec"], record.to_arrow().num_rows
        ('{}', 1)
    """

    run_id: str
    job: str
    engine: str
    target_table: str
    spec: dict[str, Any]
    started_at: dt.datetime
    status: str = "succeeded"
    target_version: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    finished_at: dt.datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    code_version: str = __version__

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.spec)

    def commit_metadata(self) -> dict[str, Any]:
        """The record as it goes into a Delta commit (before the target version is known)."""
        record = asdict(self)
        record["spec"] = canonical_json(self.spec)
        record["spec_hash"] = self.spec_hash
        for key in ("target_version", "finished_at", "counts", "outputs"):
            record.pop(key)
        return record

    def to_arrow(self) -> pa.Table:
        row = asdict(self)
        row["spec"] = canonical_json(self.spec)
        row["spec_hash"] = self.spec_hash
        row["counts"] = list(self.counts.items())
        row["finished_at"] = self.finished_at or utc_now()
        return pa.Table.from_pylist([row], schema=table_contract("runs").arrow_schema)
