"""`lakeimg show --lake LAKE "SELECT ..." --out sheet.png|page.html`: a query's thumbnails as a contact sheet.

The query must select `thumbnail`, or for a derived table `data` with `encoding`, `width`,
`height`, `channels`, `dtype` (rendered at display size); `uri`, `width`, `height`,
`size_bytes` and `label`, when selected, make the captions. `--limit` is applied by the engine
before any thumbnail is read (`Lake.show`). `.html` output is one self-contained page (images inlined as
data: URIs); any other suffix is an image Pillow writes (PNG recommended).
"""

from __future__ import annotations

import os

from lakeimg.commands._common import add_engine_options, open_lake
from lakeimg.errors import SpecError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="render a query's thumbnails as a contact sheet (PNG) or HTML page")
    p.add_argument("query", metavar="SQL", help='e.g. "SELECT uri, label, width, height, thumbnail FROM images WHERE label = \'cats\'"')
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--out", required=True, help="output file: .png (contact sheet) or .html (self-contained page)")
    p.add_argument("--columns", type=int, default=6, help="thumbnails per row (default 6)")
    p.add_argument("--limit", type=int, default=500, help="at most this many rows are drawn (default 500)")
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    with open_lake(args) as lake:
        sheet = lake.show(args.query, limit=args.limit)  # rows past --limit are never read
    try:
        sheet.save(os.path.abspath(args.out), columns=args.columns)
    except (KeyError, ValueError) as exc:  # Pillow does not know the suffix
        raise SpecError(f"--out {args.out}: not an image format Pillow writes ({exc}); use .png or .html") from exc
    more = f" (the first {len(sheet)}; the query matched more rows)" if sheet.more else ""
    print(f"wrote {args.out}: {len(sheet)} thumbnails{more}")
    return 0
