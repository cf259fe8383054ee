"""`lakeimg serve --lake LAKE [--host 127.0.0.1] [--port 8800] [--token T]`: the read-only web catalog.

Tables, a thumbnail grid with a SQL WHERE box, image pages with deep zoom, runs and lineage
graphs, at any version or timestamp (see lakeimg.serve). Binds to 127.0.0.1; any other host
needs --token (or LAKEIMG_SERVE_TOKEN), then open http://HOST:PORT/?token=T once. Needs the
`serve` extra: pip install "lakeimg[serve]".
"""

from __future__ import annotations

import os

from lakeimg.commands._common import lake_of
from lakeimg.errors import SpecError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="browse the lake in a web browser (read-only): grid, deep zoom, lineage",
                              description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--lake", required=True, help="the lake's root folder or URL")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8800, help="port (default 8800)")
    p.add_argument("--token", default=os.environ.get("LAKEIMG_SERVE_TOKEN") or None,
                   help="a secret every request must carry (default: $LAKEIMG_SERVE_TOKEN); required off loopback")
    p.set_defaults(handler=run)


def run(args) -> int:
    try:  # the optional `serve` extra: starlette and uvicorn
        from lakeimg.serve import app
    except ImportError as exc:
        raise SpecError(f"lakeimg serve needs the serve extra (pip install 'lakeimg[serve]'): {exc}") from exc
    app.check_bind(args.host, args.token)
    print(f"lakeimg: serving {args.lake} read-only on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app.serve(lake_of(args), host=args.host, port=args.port, token=args.token)
    return 0
