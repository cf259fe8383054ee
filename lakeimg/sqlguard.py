"""User text is data: confined DuckDB connections, one read-only statement, and `where` filters
parsed and validated as one boolean expression (sqlglot), never pasted.

Two entry points take SQL from users:

- `lakeimg sql` runs a whole query: `confined_connection` opens DuckDB with external access off
  (no files, no network, no extensions, no Python replacement scans) except the Parquet files the
  caller lists, then locks the configuration so the query cannot switch it back on;
  `check_statement` lets exactly one read-only query through (SELECT, WITH, VALUES, FROM-first,
  DESCRIBE, ...), judged by DuckDB's own parser.
- a stored `where` (training sets, transform specs) is re-run by whoever reads the record later,
  so it is held to much less: `parse_where` accepts one expression over the table's columns built
  from comparisons, IN/LIKE/BETWEEN lists, AND/OR/NOT, IS NULL, arithmetic, casts and a list of
  pure scalar functions; `filter_table` evaluates the SQL regenerated from that tree (not the
  user's text) on a confined connection holding only the one Arrow table.

Example:
    >>> import pyarrow as pa
    >>> t = pa.table({"label": ["cat", "dog"], "width": [10, 20]})
    >>> filter_table(t, "label = 'cat' OR width > 15").num_rows
    2
    >>> parse_where("width * 2 > 30", ["width"]).sql("duckdb")
    'width * 2 > 30'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from lakeimg.errors import SpecError, SqlError

__all__ = ["confined_connection", "check_statement", "check_spark_query", "parse_where", "where_columns", "filter_table", "WHERE_FUNCTIONS"]

_ROW = "__lakeimg_row"


def confined_connection(tables: Mapping[str, pa.Table] | None = None, *, allowed_paths: Iterable[str] = (),
                        views: Mapping[str, str] | None = None, copies: Mapping[str, pa.Table] | None = None):
    """A DuckDB connection that reaches nothing outside what it is given, with its settings locked.

    `tables` are registered as Arrow scans; `views` (name -> SELECT) are created before the lock
    and may read only `allowed_paths` (exact files, e.g. a snapshot's Parquet files); `copies`
    (small Arrow tables, e.g. an empty snapshot) become DuckDB tables of their own, so nothing
    but their name shows in `SHOW TABLES`.

    Example:
        >>> con = confined_connection({"t": pa.table({"a": [1]})})
        >>> con.sql("SELECT a FROM t").fetchall()
        [(1,)]
        >>> con.sql("SELECT * FROM read_blob('/etc/hostname')")
        Traceback (most recent call last):
        ...
        _duckdb.PermissionException: Permission Error: Cannot access file "/etc/hostname" - file system operations are disabled by configuration
    """
    import duckdb

    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
    })
    try:
        con.execute("SET TimeZone = 'UTC'")
        paths = sorted(set(allowed_paths))
        if paths:
            con.execute("SET allowed_paths = ?", [paths])
        con.execute("SET enable_external_access = false")
        con.execute("SET python_enable_replacements = false")
        for name, table in (tables or {}).items():
            con.register(name, table)
        for name, table in (copies or {}).items():
            con.register("__lakeimg_copy", table)
            con.execute(f"CREATE TABLE {_quote(name)} AS SELECT * FROM __lakeimg_copy")
            con.unregister("__lakeimg_copy")
        for name, select in (views or {}).items():
            con.execute(f"CREATE VIEW {_quote(name)} AS {select}")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_statement(con: Any, sql: str) -> None:
    """SqlError unless `sql` is exactly one read-only query, as DuckDB's own parser sees it.

    Example:
        >>> check_statement(confined_connection(), "SELECT 1; SELECT 2")
        Traceback (most recent call last):
        ...
        lakeimg.errors.SqlError: SQL refused: one statement only, this text has 2
    """
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SpecError(f"SQL: {_first_line(exc)}") from exc
    if len(statements) != 1:
        raise SqlError(sql, f"one statement only, this text has {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        raise SqlError(sql, f"only a read-only query (SELECT, WITH, VALUES, ...) runs here, not {name}")


_SPARK_HOST_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect"})


def check_spark_query(sql: str) -> None:
    """SqlError unless `sql` is one read-only Spark SQL query over catalog tables by plain name.

    Spark has no switch like DuckDB's external access, so the text is held to what the lake's
    registered tables need: one query (SELECT, WITH, UNION, ...), table references by name
    (time travel included), no path tables (parquet.`/etc`), no table-valued functions
    (`read_files`, `range`) and no Java reflection (`reflect`, `java_method`).

    Example:
        >>> check_spark_query("SELECT * FROM images VERSION AS OF 0")
        >>> check_spark_query("SELECT * FROM csv.`/etc/passwd`")
        Traceback (most recent call last):
        ...
        lakeimg.errors.SqlError: SQL refused: csv.`/etc/passwd`: only the lake's tables, by name
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        parsed = [p for p in sqlglot.parse(sql, read="spark") if p is not None]
    except SqlglotError as exc:
        raise SpecError(f"SQL: {_first_line(exc)}") from exc
    if len(parsed) != 1:
        raise SqlError(sql, f"one statement only, this text has {len(parsed)}")
    tree = parsed[0]
    if not isinstance(tree, exp.Query):
        raise SqlError(sql, f"only a read-only query (SELECT, WITH, ...) runs here, not {tree.key.upper()}")
    for table in tree.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog") or not isinstance(table.this, exp.Identifier):
            raise SqlError(sql, f"{table.sql(dialect='spark')}: only the lake's tables, by name")
    for func in tree.find_all(exp.Anonymous):
        if str(func.name).lower() in _SPARK_HOST_FUNCTIONS:
            raise SqlError(sql, f"function {str(func.name).lower()} is not allowed")


# Pure scalar functions a stored filter may call, as sqlglot names them (typed nodes) ...
_FUNCTION_NODES = (
    "Abs", "Ceil", "Coalesce", "Concat", "Contains", "CurrentDate", "CurrentTimestamp", "Date", "DateTrunc",
    "Day", "EndsWith", "Exp", "Extract", "Floor", "Greatest", "Least", "Left", "Length", "Ln", "Log", "Lower",
    "Month", "Nullif", "Pow", "Right", "Round", "Sign", "Sqrt", "StartsWith", "StrPosition", "Substring",
    "TimestampTrunc", "Trim", "Upper", "Year", "If", "Case", "ArrayContains",
)
# ... and as DuckDB names those sqlglot keeps as anonymous calls.
WHERE_FUNCTIONS = frozenset({
    "now", "strlen", "lcase", "ucase", "prefix", "suffix", "regexp_full_match", "date_part", "datepart",
    "hour", "minute", "second", "epoch", "list_contains", "array_length", "len", "cardinality",
    "map_extract", "element_at", "isnan", "isinf", "isfinite", "ltrim", "rtrim", "strip_accents",
})
_STRUCTURE_NODES = (
    "And", "Or", "Not", "Xor", "Paren", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ",
    "Is", "In", "Like", "ILike", "Glob", "SimilarTo", "RegexpLike", "RegexpILike", "Between", "Escape",
    "Add", "Sub", "Mul", "Div", "IntDiv", "Mod", "Neg", "DPipe", "Cast", "TryCast", "DataType", "DataTypeParam",
    "Interval", "Column", "Identifier", "Literal", "Boolean", "Null", "Bracket", "Array", "Tuple",
)


def _allowed_nodes() -> tuple[type, ...]:
    from sqlglot import exp

    return tuple(getattr(exp, n) for n in _STRUCTURE_NODES + _FUNCTION_NODES if hasattr(exp, n))


def parse_where(text: str, columns: Sequence[str] | None = None):
    """The filter `text` as one validated sqlglot expression; SqlError (a SpecError) otherwise.

    Allowed: column references (to `columns`, when given), literals, comparisons, IN with a list,
    LIKE/ILIKE/GLOB/regexp matches, BETWEEN, AND/OR/NOT, IS [NOT] NULL, arithmetic, CAST,
    CASE, intervals and pure scalar functions (`lower`, `length`, `starts_with`, `year`, `now`, ...).
    Refused: several statements, subqueries, table functions (`read_blob`, `read_csv`, ...), any
    other function, aggregates, windows, parameters.

    Example:
        >>> parse_where("label IN ('cat', 'dog') AND NOT uri LIKE '%.gif'", ["label", "uri"]).sql("duckdb")
        "label IN ('cat', 'dog') AND NOT uri LIKE '%.gif'"
        >>> parse_where("read_blob('/etc/hostname') IS NOT NULL")
        Traceback (most recent call last):
        ...
        lakeimg.errors.SqlError: SQL refused: where: function read_blob is not allowed in a filter
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    if not isinstance(text, str) or not text.strip():
        raise SqlError(str(text), "where: give a condition, e.g. label = 'cats'")
    try:
        parsed = [p for p in sqlglot.parse(text, read="duckdb") if p is not None]
    except SqlglotError as exc:
        raise SqlError(text, f"where: does not parse: {_first_line(exc)}") from exc
    if len(parsed) != 1:
        raise SqlError(text, f"where: one condition only, this text has {len(parsed)} statements")
    tree = parsed[0]
    allowed = _allowed_nodes()
    known = {c.lower(): c for c in columns} if columns is not None else None
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            if str(node.name).lower() not in WHERE_FUNCTIONS:
                raise SqlError(text, f"where: function {str(node.name).lower()} is not allowed in a filter")
            continue
        if isinstance(node, exp.Var) and isinstance(node.parent, (exp.Interval, exp.Extract, exp.DateTrunc, exp.TimestampTrunc)):
            continue  # a unit keyword: INTERVAL 1 DAY, extract(year FROM ts)
        if not isinstance(node, allowed):
            raise SqlError(text, f"where: {_describe(node)} is not allowed in a filter (one boolean condition over the table's columns)")
        if isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest") or node.args.get("field")):
            raise SqlError(text, "where: IN takes a list of values here, not a subquery")
        if isinstance(node, exp.Column):
            head = node.parts[0].name  # `a.b` is column a's field b: the table has no alias here
            if isinstance(node.this, exp.Star):
                raise SqlError(text, "where: * is not allowed in a filter")
            if known is not None and head.lower() not in known:
                raise SqlError(text, f"where: unknown column {head!r} (columns: {', '.join(sorted(columns))})")
    if isinstance(tree, (exp.Literal, exp.Array, exp.Tuple, exp.Interval)):
        raise SqlError(text, "where: a condition is needed, not a value")
    return tree


def where_columns(tree: Any, columns: Sequence[str]) -> list[str]:
    """The `columns` a filter from `parse_where` reads (SQL names are case-insensitive), in
    `columns`' order: what a caller must read to evaluate it.

    Example:
        >>> where_columns(parse_where("Label = 'cat' AND width > 10"), ["uri", "label", "width"])
        ['label', 'width']
    """
    from sqlglot import exp

    used = {node.parts[0].name.lower() for node in tree.find_all(exp.Column)}
    return [c for c in columns if c.lower() in used]


def filter_table(table: pa.Table, where: str | Any, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Rows of `table` for which the validated filter is true (in their original order).

    `where` is text (validated here against the table's columns) or a tree from `parse_where`;
    DuckDB evaluates the SQL sqlglot regenerates from the tree, on a confined connection that
    holds only this table.

    Example:
        >>> filter_table(pa.table({"n": [1, 2, 3]}), "n BETWEEN 2 AND 3")["n"].to_pylist()
        [2, 3]
    """
    import duckdb

    tree = parse_where(where, columns if columns is not None else table.column_names) if isinstance(where, str) else where
    condition = tree.sql(dialect="duckdb")
    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    con = confined_connection({"t": numbered})
    try:
        relation = con.sql(f"SELECT {_quote(_ROW)} FROM t WHERE {condition}")
        kept = (getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table)()  # duckdb 1.x: fetch_
    except duckdb.Error as exc:
        raise SpecError(f"where {condition!r} does not work on this table: {_first_line(exc)}") from exc
    finally:
        con.close()
    return table.take(kept[_ROW].combine_chunks().sort())


def _describe(node: Any) -> str:
    from sqlglot import exp

    if isinstance(node, (exp.Subquery, exp.Select, exp.Query, exp.Exists, exp.Any, exp.All)):
        return "a subquery"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}"
    if isinstance(node, (exp.Placeholder, exp.Parameter)):
        return "a parameter"
    return type(node).__name__


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
