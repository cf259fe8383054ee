"""What the web catalog reads, and nothing it writes: table overviews, grid pages, an image's
page (metadata, the same uri elsewhere, its history), runs and lineage steps.

Every read goes through the lake's `LocalEngine` at a resolved version. User text is never
pasted: a table name must be one of the lake's tables, a `WHERE` box is parsed and validated by
`lakeimg.sqlguard.parse_where` and the SQL regenerated from its tree runs through
`lakeimg.catalog.sql.run_sql` (one read-only statement on a confined DuckDB connection), a sort
column must be one of the table's columns, and a version is an int or an ISO timestamp.

Example:
    >>> parse_at("3"), parse_at("2026-01-01T00:00:00Z"), parse_at("")
    (3, '2026-01-01T00:00:00Z', None)
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.catalog.history import run_records, table_history
from lakeimg.catalog.lineage import LineageStep, table_lineage, trainset_lineage
from lakeimg.catalog.sql import run_sql
from lakeimg.catalog.trainsets import TrainingSet, list_trainsets
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeImgError, SpecError
from lakeimg.image.codecs import decode_pixels
from lakeimg.image.display import make_thumbnail
from lakeimg.lake import Lake
from lakeimg.sqlguard import parse_where
from lakeimg.tables import is_table_name, rejects_of

__all__ = ["Catalog", "GridPage", "BadRequest", "parse_at", "check_uri"]

_BINARY_OR_NESTED = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_struct, pa.types.is_list,
                     pa.types.is_map, pa.types.is_large_list)


class BadRequest(LakeImgError):
    """A request the catalog refuses (HTTP 400): a bad version, uri, table, column or filter."""


def parse_at(text: str | None) -> int | str | None:
    """A version picker's value: an int version, an ISO timestamp (kept as text), or None.

    Example:
        >>> parse_at("yesterday")
        Traceback (most recent call last):
        ...
        lakeimg.serve.catalog.BadRequest: version 'yesterday': give a version number or an ISO timestamp
    """
    text = (text or "").strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"version {text!r}: give a version number or an ISO timestamp") from None
    return text


def check_uri(uri: str | None) -> str:
    """`uri` when it is one plain URI: BadRequest for missing ones, NUL, backslashes or `..` parts.

    A uri is only ever compared with the `uri` column, never opened; refusing `..` anyway keeps
    traversal attempts out of every code path below.

    Example:
        >>> check_uri("file:///data/../etc/passwd")
        Traceback (most recent call last):
        ...
        lakeimg.serve.catalog.BadRequest: uri 'file:///data/../etc/passwd': '..' is not allowed in a uri
    """
    if not uri:
        raise BadRequest("give a uri")
    decoded = urllib.parse.unquote(uri)
    if "\0" in decoded or "\\" in decoded:
        raise BadRequest(f"uri {uri!r}: NUL and backslashes are not allowed")
    path = urllib.parse.urlsplit(decoded).path if "://" in decoded else decoded
    if any(part == ".." for part in path.split("/")):
        raise BadRequest(f"uri {uri!r}: '..' is not allowed in a uri")
    return uri


@dataclass(frozen=True)
class GridPage:
    """One page of a table's grid: rows (without pixels), a thumbnail per row (JPEG or None)."""

    table: str
    version: int
    total: int
    rows: list[dict[str, Any]]
    thumbnails: list[bytes | None]
    columns: list[str]
    sortable: list[str]
    rejects: list[dict[str, Any]] = field(default_factory=list)


class Catalog:
    """Read-only views of one lake for the web catalog (see the module docstring)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self.engine = LocalEngine(lake.path, storage_options=lake.storage_options)
        self._listed: tuple[float, list[str]] | None = None

    # --- names and versions ---

    def tables(self) -> list[str]:
        """The lake's tables, listed again at most every 2 seconds (every request asks)."""
        now = time.monotonic()
        if self._listed is None or now - self._listed[0] > 2.0:
            self._listed = (now, self.lake.tables())
        return self._listed[1]

    def table(self, name: str) -> str:
        """`name` when it is one of the lake's tables; BadRequest otherwise (no paths, no `..`)."""
        if not is_table_name(name) or name not in self.tables():
            raise BadRequest(f"no table {name!r} in this lake")
        return name

    def resolve(self, table: str, at: int | str | None) -> int:
        """The version of `table` a picker value selects (int, timestamp or latest)."""
        try:
            return self.engine.resolve_version(table, at)
        except LakeImgError as exc:
            raise BadRequest(f"{table} has no version {at}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - delta-rs: a timestamp before the table's first commit
            raise BadRequest(f"{table} has no version as of {at}: {exc}") from exc

    def schema(self, table: str, version: int) -> pa.Schema:
        return self.engine.arrow_schema(table, version)

    # --- tables page ---

    def overview(self, at: int | str | None) -> list[dict[str, Any]]:
        """Each table with its kind, rows, version and last change, as of `at` (None: latest)."""
        out = []
        for name in self.tables():
            row: dict[str, Any] = {"table": name, "kind": self._kind(name)}
            try:
                version = self.engine.resolve_version(name, at)
            except Exception:  # noqa: BLE001 - the table did not exist yet at `at`
                row.update(version=None, rows=None, last_change=None, job=None)
                out.append(row)
                continue
            entries = table_history(self.engine, name)
            entry = next((e for e in entries if e.version == version), None)
            row.update(version=version, latest=entries[0].version if entries else version,
                       rows=self._row_count(name, version),
                       last_change=entry.timestamp if entry else None,
                       job=(entry.job or entry.operation) if entry else None)
            out.append(row)
        return out

    def _kind(self, name: str) -> str:
        """images, derived, rejects, tiles or table, told by the columns the table has."""
        names = set(self.engine.arrow_schema(name).names)
        if {"error_class", "error_message"} <= names:
            return "rejects"
        if {"tile_row", "tile_col", "level"} <= names:
            return "tiles"
        if "content" in names:
            return "images"
        return "derived" if "data" in names else "table"

    def _row_count(self, table: str, version: int) -> int:
        actions = self.engine.add_actions(table, version)
        if "num_records" in actions.column_names and actions.num_rows:
            return int(pc.sum(actions["num_records"]).as_py() or 0)
        return self.engine.read(table, version=version, columns=["uri"] if "uri" in self.schema(table, version).names else None).num_rows

    # --- grid ---

    def grid(self, table: str, version: int, *, where: str = "", sort: str = "", descending: bool = False,
             page: int = 0, per_page: int = 48) -> GridPage:
        """One page of `table@version`'s rows, filtered by a validated `where`, sorted by `sort`."""
        schema = self.schema(table, version)
        names = schema.names
        sortable = [f.name for f in schema if not any(check(f.type) for check in _BINARY_OR_NESTED)]
        shown = [c for c in ("uri", "variant", "label", "format", "width", "height", "channels", "dtype", "tiled",
                             "error_class", "error_message", "job", "status", "run_id") if c in names]
        if not shown:
            shown = sortable[:8]
        condition = ""
        if where.strip():
            condition = " WHERE " + parse_where(where, names).sql(dialect="duckdb")
        if sort and sort not in sortable:
            raise BadRequest(f"sort: no column {sort!r} to sort by (columns: {', '.join(sortable)})")
        order_by = sort or ("uri" if "uri" in names else "")
        order = f" ORDER BY {_quote(order_by)}{' DESC' if descending else ''}" if order_by else ""
        if order_by and order_by != "uri" and "uri" in names:
            order += ", \"uri\""
        source = f"{_quote(table)} VERSION AS OF {int(version)}"
        total = run_sql(self.lake.path, f"SELECT count(*) AS n FROM {source}{condition}", engine=self.engine)["n"][0].as_py()
        pixels = [c for c in ("thumbnail", "data", "encoding") if c in names]
        wanted = list(dict.fromkeys(shown + [c for c in ("width", "height", "channels", "dtype") if c in names and pixels] + pixels))
        cols = ", ".join(_quote(c) for c in wanted)
        page = max(0, int(page))
        query = f"SELECT {cols} FROM {source}{condition}{order} LIMIT {int(per_page)} OFFSET {page * int(per_page)}"
        result = run_sql(self.lake.path, query, engine=self.engine).to_pylist()
        thumbnails = [_thumbnail_of(row) for row in result]
        rows = [{c: row.get(c) for c in shown} for row in result]
        rejects = []
        if rejects_of(table) in self.tables():
            rejects = self.rejects_as_of(table, version)
        return GridPage(table, version, int(total), rows, thumbnails, shown, sortable, rejects)

    def rejects_as_of(self, table: str, version: int, limit: int = 200) -> list[dict[str, Any]]:
        """`table`'s rejects as of that version's commit time (they commit just before it)."""
        when = self.commit_time(table, version)
        try:
            rejects = self.engine.read(rejects_of(table), version=when,
                                       columns=["uri", "error_class", "error_message", "rejected_at"])
        except Exception:  # noqa: BLE001 - the rejects table did not exist yet then
            return []
        return rejects.slice(0, limit).to_pylist()

    def commit_time(self, table: str, version: int) -> dt.datetime | None:
        for entry in self.engine.history(table):
            if entry.get("version") == version and entry.get("timestamp") is not None:
                return dt.datetime.fromtimestamp(entry["timestamp"] / 1000.0, tz=dt.timezone.utc)
        return None

    # --- image page ---

    def row(self, table: str, version: int, uri: str) -> dict[str, Any]:
        """The row of `uri` in `table@version` without pixel columns; BadRequest if absent."""
        schema = self.schema(table, version)
        if "uri" not in schema.names:
            raise BadRequest(f"{table} has no uri column")
        columns = [f.name for f in schema if f.name not in ("content", "thumbnail", "data")]
        rows = self.engine.read(table, version=version, columns=columns, filter=pc.field("uri") == uri).to_pylist()
        if not rows:
            raise BadRequest(f"{uri} is not in {table} at version {version}")
        return rows[0]

    def thumbnail(self, table: str, version: int, uri: str) -> bytes | None:
        schema = self.schema(table, version)
        columns = [c for c in ("thumbnail", "data", "encoding", "width", "height", "channels", "dtype") if c in schema.names]
        rows = self.engine.read(table, version=version, columns=columns, filter=pc.field("uri") == uri).to_pylist()
        return _thumbnail_of(rows[0]) if rows else None

    def elsewhere(self, table: str, uri: str) -> list[dict[str, Any]]:
        """The same uri in the lake's other tables (latest versions) and in training sets."""
        out = []
        for name in self.tables():
            if name == table or name.endswith("_tiles"):
                continue
            try:
                schema = self.engine.arrow_schema(name)
                if "uri" not in schema.names:
                    continue
                cols = [c for c in ("uri", "variant", "error_class", "width", "height") if c in schema.names]
                hits = self.engine.read(name, columns=cols, filter=pc.field("uri") == uri)
            except Exception:  # noqa: BLE001 - an unreadable table is shown as such, not a crash
                continue
            for hit in hits.to_pylist():
                out.append({"kind": "table", "table": name, "version": self.engine.version(name), **hit})
        for record in list_trainsets(self.engine):
            try:
                rows = TrainingSet(self.engine, record.name).rows()
            except Exception:  # noqa: BLE001
                continue
            if "uri" not in rows.column_names or "split" not in rows.column_names:
                continue
            hit = rows.filter(pc.field("uri") == uri)
            if hit.num_rows:
                out.append({"kind": "trainset", "table": record.table, "version": record.version,
                            "trainset": record.name, "split": hit["split"][0].as_py()})
        return out

    def uri_history(self, table: str, version: int, uri: str) -> list[dict[str, Any]]:
        """Versions (up to `version`) in which the row of `uri` changed, from the change data feed."""
        cols = [c for c in ("uri", "content_sha256") if c in self.schema(table, version).names]
        try:
            changes = self.engine.changes(table, 0, version, columns=cols)
        except LakeImgError as exc:
            return [{"version": None, "change": f"change feed unavailable: {exc}"}]
        changes = changes.filter(pc.field("uri") == uri).to_pylist()
        times = {e.version: e for e in table_history(self.engine, table)}
        out = []
        for change in sorted(changes, key=lambda c: c["_commit_version"]):
            if change["_change_type"] == "update_preimage":
                continue
            entry = times.get(change["_commit_version"])
            out.append({"version": change["_commit_version"], "change": change["_change_type"],
                        "content_sha256": change.get("content_sha256"),
                        "timestamp": entry.timestamp if entry else None, "run_id": entry.run_id if entry else None,
                        "job": entry.job if entry else None})
        return out

    # --- runs and lineage ---

    def runs(self, at: int | str | None = None) -> list[dict[str, Any]]:
        """The runs table, newest first, with each run's duration in seconds; with a timestamp
        `at`, the runs started by then."""
        rows = list(run_records(self.engine).values())
        if isinstance(at, str):
            when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
            rows = [r for r in rows if r.get("started_at") is None or r["started_at"] <= when]
        for row in rows:
            started, finished = row.get("started_at"), row.get("finished_at")
            row["duration_s"] = (finished - started).total_seconds() if started and finished else None
        return sorted(rows, key=lambda r: r.get("started_at") or dt.datetime.min.replace(tzinfo=dt.timezone.utc), reverse=True)

    def lineage(self, table: str, version: int | None) -> list[LineageStep]:
        if table.startswith("trainset:"):
            return trainset_lineage(self.engine, table.split(":", 1)[1])
        return table_lineage(self.engine, table, version)

    def trainsets(self) -> list[Any]:
        return list_trainsets(self.engine)




def _thumbnail_of(row: dict[str, Any]) -> bytes | None:
    """A row's thumbnail: its `thumbnail` JPEG, or one rendered from a derived row's `data`."""
    if row.get("thumbnail"):
        return row["thumbnail"]
    if row.get("data") is not None and row.get("encoding"):
        try:
            pixels = decode_pixels(row["data"], row["encoding"], row["width"], row["height"], row["channels"], row["dtype"])
        except Exception:  # noqa: BLE001 - an undecodable row shows no thumbnail, the grid still renders
            return None
        return make_thumbnail(pixels, size=192)
    return None


def _quote(name: str) -> str:
    if '"' in name or "\0" in name:
        raise SpecError(f"invalid identifier {name!r}")
    return '"' + name + '"'
