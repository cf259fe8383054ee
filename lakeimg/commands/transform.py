"""`lakeimg transform --lake LAKE --source images --target NAME --spec spec.json`: derived tables."""

from __future__ import annotations

from lakeimg.commands._common import (
    add_engine_options,
    open_lake,
    print_run_summary,
    progress_bar,
    show_progress,
)
from lakeimg.tables import validate_name


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("transform", help="compute a derived table from a source table and a transform spec")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--source", default="images", help="source table (default: images)")
    p.add_argument("--target", required=True, help="derived table to write (MERGE keyed on uri, variant)")
    p.add_argument("--spec", required=True, help="spec file (.json, .yaml) or inline JSON")
    p.add_argument("--full", action="store_true", help="recompute every row and delete rows whose source row is gone")
    p.add_argument("--workers", type=int, default=None, help="processes for the embedded engine (default: CPU count)")
    p.add_argument("--dry-run", action="store_true", help="plan only: count what would be added, recomputed, deleted; commit nothing")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    # Before a JVM starts: a bad name fails in a moment.
    validate_name("table", args.source)
    validate_name("target table", args.target)
    with open_lake(args) as lake, progress_bar("transforming", enabled=show_progress(args), unit="rows") as on_progress:
        summary = lake.transform(args.source, args.target, args.spec, full=args.full, workers=args.workers,
                                 on_progress=on_progress, dry_run=args.dry_run)
    print_run_summary(args.lake, summary, args.json)
    return 0
