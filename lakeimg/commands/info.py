"""`lakeimg info --lake LAKE TABLE[@VERSION] [--json]`: a table version's schema, rows, size,
versions, properties and lineage (the runs table is `lakeimg_runs`, as in SQL)."""

from __future__ import annotations

from lakeimg.commands._common import format_table, human_bytes, lake_of, print_json
from lakeimg.tables import parse_table_ref


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="a table version's schema, rows, size, versions, properties and lineage")
    p.add_argument("ref", metavar="TABLE[@VERSION]", help="images, images@3, images@latest or images@2026-01-31T12:00:00")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    ref = parse_table_ref(args.ref)
    info = lake_of(args).info(ref.name, ref.version)
    if args.json:
        print_json(info)
        return 0
    print(f"{info.name}@{info.version} ({info.kind}; latest version {info.latest_version}, last change {info.last_change})")
    print(f"{info.rows} rows in {info.files} files, {human_bytes(info.size_bytes)}")
    print("\nschema:")
    print(format_table([{"column": c["name"], "type": c["type"], "nullable": c["nullable"]} for c in info.schema], max_width=80))
    print("\nproperties:")
    print(format_table([{"property": k, "value": v} for k, v in sorted(info.properties.items())], max_width=80))
    print(f"\nversions (newest first; readable: {', '.join(map(str, info.readable_versions)) or 'none'}):")
    print(format_table([{k: ("" if v is None else v) for k, v in entry.items() if k != "run_id"} for entry in info.versions]))
    if info.lineage:
        print("\nlineage:")
        print("\n".join(info.lineage))
    return 0
