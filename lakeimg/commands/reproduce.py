"""`lakeimg reproduce --lake LAKE TABLE@VERSION [--json]`: re-run what made a version, compare hashes.

Exit 0 when identical, 6 when rows differ (so scripts can check reproducibility).
"""

from __future__ import annotations

from lakeimg.commands._common import format_table, heartbeat, lake_of, print_json, show_progress
from lakeimg.tables import parse_table_ref

EXIT_DIFFERENT = 6


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("reproduce", help="re-run the recorded spec on the recorded input version and compare rows")
    p.add_argument("ref", metavar="TABLE[@VERSION]", help="table@7 or table@2026-01-31T12:00:00 (latest when no @)")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--scratch", default=None, help="keep the re-run's scratch lake in this folder")
    p.add_argument("--workers", type=int, default=None, help="processes for the re-run (default: CPU count)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    ref = parse_table_ref(args.ref)
    with heartbeat("reproducing", show_progress(args)):
        result = lake_of(args).reproduce(ref.name, ref.version, scratch=args.scratch, workers=args.workers)
    if args.json:
        print_json(result)
    else:
        print(f"{result.ref} (job {result.job}, run {result.run_id}): {result.rows} rows, identical {str(result.identical).lower()}")
        if result.differences:
            print(format_table(result.differences, ["uri", "variant", "reason", "recorded_hash", "reproduced_hash"], max_width=70))
    return 0 if result.identical else EXIT_DIFFERENT
