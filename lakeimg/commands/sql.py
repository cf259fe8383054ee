"""`lakeimg sql --lake LAKE [--engine spark] [--json] "SELECT ..."`: SQL over the lake's tables.

Table names resolve inside the lake (`images`, `images_rejects`, derived tables, `lakeimg_runs`);
`images VERSION AS OF 3` and `images TIMESTAMP AS OF '...'` read older snapshots. The embedded
engine (default) is DuckDB over the snapshots' Parquet files, no JVM (lakeimg.catalog.sql); the
Spark engine registers the lake's tables in the session catalog (lakeimg.spark.register).

Output: a text table, or with --json one JSON array of row objects on the last line, binary
values as base64 strings (lossless; decode with base64.b64decode).
"""

from __future__ import annotations

import json
from typing import Any

from lakeimg.commands._common import add_engine_options, format_table, jsonable_rows, open_lake


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sql",
        help="run a SQL query over the lake's tables (time travel: images VERSION AS OF 3)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("query", metavar="SQL", help='one query, e.g. "SELECT format, count(*) FROM images GROUP BY format"')
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--json", action="store_true", help="print a JSON array of row objects (binary as base64)")
    p.add_argument("--max-width", type=int, default=60, help="widest column in the text table (default 60)")
    add_engine_options(p)
    p.set_defaults(handler=run)


def query_rows(args, *, binary: str = "base64") -> tuple[list[dict[str, Any]], list[str]]:
    """Run `args.query` on the chosen engine; (JSON-ready rows, column names)."""
    with open_lake(args) as lake:
        table = lake.sql(args.query)
    return jsonable_rows(table, binary=binary), table.column_names


def run(args) -> int:
    rows, columns = query_rows(args, binary="base64" if args.json else "bytes")
    if args.json:
        # Not print_json: that sorts keys, and a row's keys should keep the query's column order.
        print(json.dumps(rows, default=str))
    else:
        print(format_table(rows, columns, max_width=args.max_width) if rows else f"(no rows; columns: {', '.join(columns)})")
    return 0
