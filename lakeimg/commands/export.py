"""`lakeimg export --lake LAKE TABLE[@VERSION] --out DIR [--format ...] [--layout flat|label|source] [--where COND]
[--pages all] [--overwrite]`: rows back to files, plus `DIR/metadata.csv`."""

from __future__ import annotations

from lakeimg.commands._common import heartbeat, lake_of, print_json, show_progress
from lakeimg.tables import parse_table_ref


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a table's images (derived or source) back as files")
    p.add_argument("table", metavar="TABLE[@VERSION]", help="table to export, optionally at a version or ISO timestamp")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--out", required=True, help="output folder (created; nothing is written outside it) or an object-store prefix (s3://bucket/prefix)")
    p.add_argument("--format", choices=("jpeg", "png", "tiff", "bmp"), default="png", help="file format (default: png)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100 (default: 90)")
    p.add_argument("--layout", choices=("flat", "label", "source"), default="flat",
                   help="flat: every file in DIR; label: DIR/<label>/<name> (ImageFolder); source: the source tree below the common folder")
    p.add_argument("--where", default=None, metavar="CONDITION", help="export only rows matching one condition over the table's columns")
    p.add_argument("--pages", choices=("first", "all"), default="first", help="all: every page of multi-page images (default: first)")
    p.add_argument("--overwrite", action="store_true", help="replace files already in DIR (default: refuse, exit 2)")
    p.add_argument("--no-metadata", action="store_true", help="do not write DIR/metadata.csv")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    p.set_defaults(handler=run)


def run(args) -> int:
    ref = parse_table_ref(args.table)
    with heartbeat("exporting", show_progress(args)):
        summary = lake_of(args).export(ref.name, args.out, format=args.format, version=ref.version, quality=args.quality,
                                       layout=args.layout, where=args.where, overwrite=args.overwrite, pages=args.pages,
                                       metadata=not args.no_metadata)
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['written']} files written to {summary['out']} ({summary['failed']} failed) from {ref.name}@{summary['version']}")
    return 0
