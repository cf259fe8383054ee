"""`lakeimg verify --lake LAKE TABLE[@VERSION] [--json]`: check every data file and row of a version.

Exit 0 when clean, 9 when anything is missing, unreadable or does not match its content_sha256.
"""

from __future__ import annotations

from lakeimg.commands._common import format_table, lake_of, print_json
from lakeimg.tables import parse_table_ref

EXIT_VERIFY_FAILED = 9  # cli.EXIT_VERIFY_FAILED (not imported: cli imports the commands)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check a table version's data files and content hashes")
    p.add_argument("ref", metavar="TABLE[@VERSION]", help="images, images@3 or images@2026-01-31T12:00:00 (latest when no @)")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--no-tiles", action="store_true", help="skip the TABLE_tiles table of an ingest table")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    ref = parse_table_ref(args.ref)
    report = lake_of(args).verify(ref.name, ref.version, tiles=not args.no_tiles)
    if args.json:
        print_json(report.to_dict())
    else:
        status = "ok" if report.ok else f"{report.problem_count} problems"
        print(f"{', '.join(report.checked)}: {report.files_checked} files, {report.rows_checked} rows checked, "
              f"{report.rows_hashed} hashed: {status}")
        for note in report.notes:
            print(f"  note: {note}")
        if report.problems:
            rows = [{"reason": p.reason, "uri": p.uri or "", "file": p.file, "detail": p.detail} for p in report.problems]
            print(format_table(rows, ["reason", "uri", "file", "detail"], max_width=90))
    return 0 if report.ok else EXIT_VERIFY_FAILED
