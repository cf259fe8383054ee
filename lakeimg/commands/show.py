"""`lakeimg show --lake LAKE "SELECT ..." --out sheet.png|page.html`: a query's thumbnails as a contact sheet.

The query must select `thumbnail`; `uri`, `width`, `height`, `size_bytes` and `label`, when
selected, make the captions. `.html` output is one self-contained page (images inlined as
data: URIs); any other suffix is an image Pillow writes (PNG recommended).
"""

from __future__ import annotations

import os

from lakeimg.commands._common import add_engine_options
from lakeimg.commands.sql import query_rows
from lakeimg.errors import SpecError
from lakeimg.image.sheet import SheetItem, caption_lines, contact_sheet, html_page


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
    rows, columns = query_rows(args, binary="bytes")
    if "thumbnail" not in columns:
        raise SpecError("the query must select the thumbnail column, e.g. SELECT uri, label, thumbnail FROM images")
    shown = rows[: max(0, args.limit)]
    items = [SheetItem(row.get("thumbnail"), caption_lines(row)) for row in shown]
    out = os.path.abspath(args.out)
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    if out.lower().endswith((".html", ".htm")):
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(html_page(items, title=args.query))
    else:
        try:
            contact_sheet(items, columns=args.columns).save(out)
        except (KeyError, ValueError) as exc:  # Pillow does not know the suffix
            raise SpecError(f"--out {args.out}: not an image format Pillow writes ({exc}); use .png or .html") from exc
    more = f" (first {len(shown)} of {len(rows)} rows)" if len(rows) > len(shown) else ""
    print(f"wrote {args.out}: {len(shown)} thumbnails{more}")
    return 0
