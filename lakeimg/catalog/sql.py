"""Embedded SQL over a lake: DuckDB reads each Delta snapshot's Parquet files. No JVM.

Table names resolve inside the lake: `images`, `images_rejects`, derived tables, and the runs
table as `lakeimg_runs`; `SHOW TABLES` and `information_schema.tables` / `.columns` list them. Time travel is written the Spark way, `images VERSION AS OF 3` or
`images TIMESTAMP AS OF '2026-01-01T00:00:00Z'`; lakeimg rewrites such a reference to a view
over that snapshot (aliased back to the table's name, so `images.uri` still works).

Why DuckDB over the file list and not delta-rs' own query engine or DuckDB's delta extension:
delta-rs resolves the snapshot (which files, at which version or timestamp) through
`LocalEngine.data_files`, and DuckDB reads only the columns a query needs from those files.
delta-rs' DataFusion path goes through the pyarrow-dataset bridge that aborts Python at exit
(delta-rs #2184), and DuckDB's delta extension is downloaded at run time. lakeimg's tables have no
deletion vectors and no column mapping (see schemas/README.md), so the file list is the table.

Example:
    >>> import tempfile
    >>> run_sql(tempfile.mkdtemp(), "SELECT 1 AS one").to_pylist()
    [{'one': 1}]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeDamagedError, LakeImgError, SpecError, SqlError, TableNotFoundError
from lakeimg.sqlguard import check_spark_query, check_statement, confined_connection
from lakeimg.storage import is_remote, resolve
from lakeimg.tables import sql_tables

__all__ = ["run_sql", "run_spark_sql", "register", "TimeTravelRef", "table_refs"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Words that may follow a table reference and are not an alias.
_NOT_ALIAS = {
    "where", "group", "order", "limit", "offset", "join", "inner", "left", "right", "full", "cross",
    "natural", "anti", "semi", "positional", "asof", "on", "using", "union", "except", "intersect",
    "having", "window", "qualify", "sample", "tablesample", "pivot", "unpivot", "lateral", "fetch",
}
_REF = re.compile(
    r"\b(?P<kw>from|join)\s+(?P<name>[A-Za-z_]\w*|\"[^\"]+\"|`[^`]+`)"
    r"(?P<tt>\s+(?P<kind>version|timestamp)\s+as\s+of\s+(?P<value>\d+|'[^']*'))?",
    re.IGNORECASE,
)
_WORD = re.compile(r"\s*([A-Za-z_]\w*)")
# Queries about the catalog itself see every table of the lake (not only those they name).
_CATALOG_QUERY = re.compile(r"\bshow\s+(all\s+)?tables\b|\b(information_schema|duckdb_tables|duckdb_views|duckdb_columns)\b",
                            re.IGNORECASE)
_SHOW_TABLES = re.compile(r"\s*show\s+(all\s+)?tables\s*;?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class TimeTravelRef:
    """One time-travel reference found in a query: `name VERSION|TIMESTAMP AS OF value`."""

    start: int
    end: int
    name: str
    version: int | str
    has_alias: bool


def _mask(sql: str) -> str:
    """The query with string literals, quoted identifiers' insides and comments blanked out.

    Positions are kept, so matches on the mask index the original text.
    """
    out = list(sql)
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            for k in range(i + 1, min(j, n)):
                out[k] = "x" if c != "'" else "_"
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "\"`" else name


def table_refs(sql: str) -> Iterator[TimeTravelRef]:
    """Time-travel references in `sql` (plain references need no rewriting).

    Example:
        >>> [(r.name, r.version) for r in table_refs("SELECT * FROM images VERSION AS OF 3")]
        [('images', 3)]
    """
    masked = _mask(sql)
    for m in _REF.finditer(masked):
        if not m.group("tt"):
            continue
        raw = sql[m.start("value") : m.end("value")]
        version: int | str = int(raw) if m.group("kind").lower() == "version" else raw[1:-1]
        following = _WORD.match(masked, m.end())
        has_alias = bool(following) and following.group(1).lower() not in _NOT_ALIAS
        yield TimeTravelRef(m.start("name"), m.end(), _unquote(sql[m.start("name") : m.end("name")]), version, has_alias)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_literal(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


@dataclass
class _Views:
    """What the confined connection gets before its settings are locked."""

    selects: dict[str, str]
    empties: dict[str, Any]  # Arrow scans (object-store snapshots as datasets)
    files: list[str]
    copies: dict[str, pa.Table] = field(default_factory=dict)  # empty snapshots


def _snapshot_view(views: _Views, engine: LocalEngine, view: str, table_path: str, version: int | str | None) -> None:
    try:
        files = engine.data_files(table_path, version)
    except (TableNotFoundError, LakeDamagedError, SpecError):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a timestamp before the table existed
        at = "" if version is None else f" as of {version!r}"
        raise LakeImgError(f"cannot read {table_path}{at}: {exc}") from exc
    if not files:
        schema = engine.arrow_schema(table_path, version)
        views.copies[view] = pa.schema([pa.field(f.name, f.type) for f in pa.schema(schema)]).empty_table()
        return
    if any(is_remote(f) for f in files):
        # DuckDB reads object stores only through extensions lakeimg does not load: the
        # snapshot is an Arrow dataset on pyarrow's file system instead (projection and filters
        # still reach the Parquet files), registered like the empty tables.
        import pyarrow.dataset as ds

        schema = pa.schema([pa.field(f.name, f.type) for f in engine.arrow_schema(table_path, version)])
        fs, _ = resolve(files[0], engine.options)
        dataset = ds.dataset([resolve(f, engine.options)[1] for f in files], schema=schema, format="parquet", filesystem=fs)
        views.empties[f"__snapshot_{view}"] = dataset
        views.selects[view] = f"SELECT * FROM {_quote('__snapshot_' + view)}"
        return
    # Absolute paths: DuckDB's allowed_paths compares the paths it opens with these.
    files = [f if "://" in f else os.path.abspath(f) for f in files]
    views.files += files
    views.selects[view] = f"SELECT * FROM read_parquet({_files_literal(files)}, union_by_name = true)"


def run_sql(lake: str | os.PathLike[str], query: str, *, engine: LocalEngine | None = None, limit: int | None = None) -> pa.Table:
    """Run one read-only SQL query over the lake's tables with DuckDB; returns the result as Arrow.

    The query reaches the lake's tables and nothing else: exactly one statement, a query
    (SELECT, WITH, VALUES, ...), on a connection with external access off except the snapshots'
    Parquet files and its settings locked (lakeimg.sqlguard), so `read_blob`, `read_csv`,
    `COPY ... TO`, `ATTACH`, `INSTALL`/`LOAD` and `SET` are refused. `limit` caps the rows
    through DuckDB's relation API (never pasted into the text), so wide columns of rows past it
    are not read.

    Raises:
        SqlError: the text is not exactly one read-only query, or it reaches outside the lake.
        SpecError: the query does not parse or names an unknown column.
        TableNotFoundError: it names a table (or version) the lake does not have.
    """
    import duckdb

    lake = os.fspath(lake)
    engine = engine or LocalEngine(lake)
    tables = sql_tables(lake, engine.tables())
    masked = _mask(query)
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", masked)}
    quoted = {_unquote(q) for q in re.findall(r"\"[^\"]+\"|`[^`]+`", query)}
    views = _Views({}, {}, [])
    catalog_query = bool(_CATALOG_QUERY.search(masked))
    for sql_name, path in tables.items():
        if catalog_query or sql_name.lower() in words or sql_name in quoted:
            _snapshot_view(views, engine, sql_name, path, None)
    if _SHOW_TABLES.fullmatch(masked):
        # The lake's tables only (an object-store snapshot is a registered scan named __...).
        query = r"SELECT name FROM (SHOW TABLES) WHERE name NOT LIKE '\_\_%' ESCAPE '\' ORDER BY name"
    # Rewrite time-travel references back to front so earlier offsets stay valid.
    rewritten = query
    for ref in sorted(table_refs(query), key=lambda r: r.start, reverse=True):
        path = tables.get(ref.name)
        if path is None:
            raise TableNotFoundError(ref.name, lake, available=list(tables))
        tag = re.sub(r"\W", "_", str(ref.version))
        view = f"{ref.name}@{tag}"
        _snapshot_view(views, engine, view, path, ref.version)
        replacement = _quote(view) + ("" if ref.has_alias else f" AS {_quote(ref.name)}")
        rewritten = rewritten[: ref.start] + replacement + rewritten[ref.end :]
    con = confined_connection(views.empties, allowed_paths=views.files, views=views.selects, copies=views.copies)
    try:
        check_statement(con, rewritten)
        try:
            relation = con.sql(rewritten)
            return (relation.limit(limit) if limit is not None else relation).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise SqlError(query, f"it reaches outside the lake's tables: {_first_line(exc)}") from exc
        except duckdb.CatalogException as exc:
            missing = re.search(r"with name (.+?) does not exist", str(exc))
            if missing:
                raise TableNotFoundError(missing.group(1).strip("\"'!"), lake, available=list(tables)) from exc
            raise SpecError(f"SQL: {_first_line(exc)}") from exc
        except (duckdb.ParserException, duckdb.BinderException, duckdb.ConversionException) as exc:
            raise SpecError(f"SQL: {_first_line(exc)}") from exc
        except duckdb.Error as exc:
            raise LakeImgError(f"SQL: {_first_line(exc)}") from exc
    finally:
        con.close()


def run_spark_sql(spark, lake: str | os.PathLike[str], query: str, *, limit: int | None = None) -> pa.Table:
    """Run one query in Spark SQL with the lake's tables registered in the session catalog.

    Spark SQL reads Delta's `VERSION AS OF` / `TIMESTAMP AS OF` natively. `SHOW TABLES` and
    `information_schema.tables` / `.columns` (which Spark's own catalog lacks) list the lake's
    tables as on the embedded engine, from temporary views dropped after the query. The result
    comes back as Arrow (`DataFrame.toArrow`); it is a query's result, so it is meant to be small.

    Example:
        >>> run_spark_sql(spark, lake_dir, "SELECT count(*) AS n FROM images VERSION AS OF 0").to_pylist()
        [{'n': 4}]
        >>> run_spark_sql(spark, lake_dir, "SHOW TABLES").column("name").to_pylist()
        ['images', 'images_rejects', 'lakeimg_runs']
    """
    from pyspark.errors import AnalysisException, ParseException

    lake = os.fspath(lake)
    if _SHOW_TABLES.fullmatch(_mask(query)):
        query = "SELECT table_name AS name FROM information_schema.tables ORDER BY name"
    # `information_schema.X` becomes the view of X (a plain name, as the guard wants).
    masked, catalog_views = _mask(query), {}
    for m in sorted(_INFORMATION_SCHEMA.finditer(masked), key=lambda m: m.start(), reverse=True):
        view = catalog_views.setdefault(m.group(1).lower(), f"lakeimg_information_schema_{m.group(1).lower()}")
        query = query[: m.start()] + view + query[m.end() :]
    check_spark_query(query)
    registered = register(spark, lake)
    try:
        for kind, view in catalog_views.items():
            spark.createDataFrame(_spark_catalog_rows(spark, sorted(registered), kind)).createOrReplaceTempView(view)
        frame = spark.sql(query)
        if limit is not None:
            frame = frame.limit(limit)
        if hasattr(frame, "toArrow"):  # Spark >= 4.0
            return frame.toArrow()
        return pa.Table.from_pandas(frame.toPandas(), preserve_index=False)  # pragma: no cover - older Spark
    except ParseException as exc:
        raise SpecError(f"SQL: {_first_line(exc)}") from exc
    except AnalysisException as exc:
        missing = re.search(r"TABLE_OR_VIEW_NOT_FOUND\]?[^`]*`?([^`\s]+)`?", str(exc))
        if missing:
            raise TableNotFoundError(missing.group(1), lake, available=list(registered)) from exc
        raise SpecError(f"SQL: {_first_line(exc)}") from exc
    finally:
        for view in catalog_views.values():
            spark.catalog.dropTempView(view)


_INFORMATION_SCHEMA = re.compile(r"\binformation_schema\s*\.\s*(tables|columns)\b", re.IGNORECASE)


def _spark_catalog_rows(spark: Any, names: list[str], kind: str) -> pa.Table:
    """information_schema's `tables` or `columns` rows of the lake's registered tables (the
    standard's leading columns, as DuckDB names them)."""
    place = {"table_catalog": spark.catalog.currentCatalog(), "table_schema": spark.catalog.currentDatabase()}
    if kind == "tables":
        rows = [{**place, "table_name": n, "table_type": "BASE TABLE"} for n in names]
    else:
        rows = [{**place, "table_name": n, "column_name": f.name, "ordinal_position": i,
                 "is_nullable": "YES" if f.nullable else "NO", "data_type": f.dataType.simpleString().upper()}
                for n in names for i, f in enumerate(spark.table(f"`{n}`").schema.fields, start=1)]
    return pa.Table.from_pylist(rows, schema=_CATALOG_SCHEMAS[kind])


_CATALOG_SCHEMAS = {
    "tables": pa.schema([(c, pa.string()) for c in ("table_catalog", "table_schema", "table_name", "table_type")]),
    "columns": pa.schema([(c, pa.int32() if c == "ordinal_position" else pa.string()) for c in (
        "table_catalog", "table_schema", "table_name", "column_name", "ordinal_position", "is_nullable", "data_type")]),
}


def register(spark: Any, lake: str | os.PathLike[str], *, database: str | None = None, replace: bool = True) -> dict[str, str]:
    """Register the lake's Delta tables in the session catalog; returns {name: location}.

    Every table of the lake (images, images_rejects, derived tables, tiles) under its own
    name and the runs table as `lakeimg_runs`, as external Delta tables: dropping them drops
    the catalog entry only, never data. With `replace`, a same-named table that points
    elsewhere is re-pointed at this lake.

    Example:
        >>> sorted(register(spark, lake_dir))
        ['images', 'images_rejects', 'lakeimg_runs']
        >>> spark.sql("SELECT format, count(*) AS n FROM images GROUP BY format").collect()
        [Row(format='JPEG', n=4)]
    """
    root = os.path.abspath(os.fspath(lake))
    if database:
        if not _IDENTIFIER.match(database):
            raise SpecError(f"invalid database name {database!r}")
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    registered = {}
    for name, path in sql_tables(root).items():
        location = os.path.join(root, path)
        qualified = f"`{database}`.`{name}`" if database else f"`{name}`"
        escaped = location.replace("'", "\\'")
        if replace:
            spark.sql(f"DROP TABLE IF EXISTS {qualified}")  # external: the data stays
        spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{escaped}'")
        registered[name] = location
    return registered


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
