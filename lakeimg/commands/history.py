"""`lakeimg history --lake LAKE TABLE [--json]`: a table's versions with operation, run, counts."""

from __future__ import annotations

from lakeimg.commands._common import format_table, lake_of, print_json
from lakeimg.tables import parse_table_ref


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("history", help="a table's versions: operation, run, job, counts, timestamp")
    p.add_argument("table", metavar="TABLE", help="table name")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--limit", type=int, default=None, help="newest N versions only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    name = parse_table_ref(args.table).name
    versions = lake_of(args).versions(name, limit=args.limit)
    if args.json:
        print_json({"table": name, "versions": versions})
        return 0
    rows = [
        {"version": v.version, "timestamp": v.timestamp, "operation": v.operation, "job": v.job or "",
         "run": (v.run_id or "")[:12], "status": v.status or "",
         "counts": ", ".join(f"{k} {n}" for k, n in (v.counts or {}).items())}
        for v in versions
    ]
    print(format_table(rows, max_width=80))
    return 0
