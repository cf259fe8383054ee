"""`lakeimg maintain --lake LAKE [--optimize] [--vacuum-hours H] [--engine spark] [--json]`: compact and vacuum safely.

Exit 0 when done, 7 when a table was refused (it would have broken a pinned training set).
"""

from __future__ import annotations

from lakeimg.commands._common import (
    add_engine_options,
    heartbeat,
    open_lake,
    print_json,
    show_progress,
)

EXIT_REFUSED = 7


def _hours(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of hours >= 0, not {text}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("maintain", help="compact small files and vacuum, keeping what training sets read")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--optimize", action="store_true", help="compact small files")
    p.add_argument("--vacuum-hours", type=_hours, default=None, metavar="H", help="delete unreferenced files older than H hours (H >= 0)")
    p.add_argument("--dry-run", action="store_true", help="report what would be vacuumed; change nothing")
    p.add_argument("--table", action="append", default=None, help="only this table (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    with open_lake(args) as lake, heartbeat("maintaining", show_progress(args)):
        report = lake.maintain(optimize=args.optimize, vacuum_hours=args.vacuum_hours, dry_run=args.dry_run,
                               tables=args.table).to_dict()
    if args.json:
        print_json(report)
    else:
        for name, entry in report["tables"].items():
            parts = []
            if "optimize" in entry:
                parts.append(f"compacted {entry['optimize']['files_removed']} -> {entry['optimize']['files_added']} files")
            vacuum = entry.get("vacuum", {})
            if "removed" in vacuum:
                parts.append(f"{'would vacuum' if vacuum['dry_run'] else 'vacuumed'} {vacuum['removed']} files")
            if entry["kept_versions"]:
                parts.append(f"kept versions {entry['kept_versions']}")
            print(f"{name}: {'; '.join(parts) or 'nothing to do'}")
        for message in report["refused"] + report["problems"]:
            print(f"lakeimg: {message}")
        for name, ok in report["pinned_sets_readable"].items():
            print(f"training set {name}: {'readable' if ok else 'NOT READABLE'}")
    return 0 if not report["refused"] else EXIT_REFUSED
