"""`lakeimg tables --lake LAKE [--json]`: the lake's tables and training sets with kind, rows,
current version, last change and size (from the Delta log only)."""

from __future__ import annotations

from lakeimg.commands._common import format_table, human_bytes, lake_of, print_json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tables", help="list the lake's tables: kind, rows, version, last change, size")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    tables = lake_of(args).inventory()
    if args.json:
        print_json({"lake": args.lake, "tables": tables})
        return 0
    rows = [
        {"table": t.name, "kind": t.kind, "rows": t.rows, "version": t.version, "last change": (t.last_change or "")[:19],
         "size": human_bytes(t.size_bytes)}
        for t in tables
    ]
    print(format_table(rows) if rows else f"(no tables in {args.lake})")
    return 0
