"""The web catalog's ASGI app (Starlette) and its server (uvicorn): routes, the read-only and
token guards, error pages, and `serve`, what `lakeimg serve` runs.

Routes (all GET; any other method is refused with 405 before a route runs):

    /                                   tables: kind, rows, version, last change (`at` picks the time)
    /table/{table}                      grid: thumbnails, `where`, `sort`, `desc`, `page`
    /image/{table}?uri=[&page=]         image page: viewer (of `page`, default 0), metadata, same uri
                                        elsewhere, history; links to every page of a multi-page file
    /api/zoom/{table}?uri=[&page=]      deep-zoom descriptor (JSON)
    /zoom/{table}/{version}/{level}/{col}_{row}.png?uri=[&page=]&window=lo,hi[&z=1]   one tile (ETag, 304;
                                        z=1: deflated PNG, what the viewer asks for off loopback)
    /runs                               the runs table
    /lineage/{table | trainset:NAME}    the lineage graph (SVG drawn server-side)
    /static/viewer.js, /static/style.css

Safe by default: `check_bind` refuses a non-loopback host without a token; with a token every
request needs it (`Authorization: Bearer`, or `?token=` once, which sets an HttpOnly cookie and
redirects to the same URL without it; compared in constant time, never logged: uvicorn's access
log is off). On loopback the Host header must name loopback (no DNS rebinding).

Example:
    >>> check_bind("0.0.0.0", None)
    Traceback (most recent call last):
    ...
    lakeimg.errors.SpecError: --host 0.0.0.0 is not a loopback address: give --token to serve it
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import urllib.parse
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from lakeimg.errors import LakeImgError, SpecError, TableNotFoundError
from lakeimg.lake import Lake
from lakeimg.serve import pages
from lakeimg.serve.catalog import BadRequest, Catalog, check_uri, parse_at
from lakeimg.serve.graph import lineage_svg
from lakeimg.serve.zoom import RenderedTiles, TileStore, etag, parse_page, parse_window, render_png
from lakeimg.tables import is_table_name

__all__ = ["create_app", "check_bind", "serve", "is_loopback"]

_STATIC = {"viewer.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_COOKIE = "lakeimg_token"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """SpecError when `host` is not loopback and no token guards it."""
    if not is_loopback(host) and not token:
        raise SpecError(f"--host {host} is not a loopback address: give --token to serve it")


class _Guard:
    """ASGI middleware: only GET/HEAD, the token when one is set, and security headers."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("read-only: only GET and HEAD are served\n", status_code=405,
                                         headers={"Allow": "GET, HEAD"})
            return await response(scope, receive, send)
        if self.token:
            request = Request(scope)
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = scope["path"] + ("?" + urllib.parse.urlencode(rest) if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(_COOKIE, self.token, httponly=True, samesite="strict")
                return await response(scope, receive, send)
            header = request.headers.get("authorization", "")
            offered = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(_COOKIE, "")
            if not hmac.compare_digest(offered.encode(), self.token.encode()):
                response = PlainTextResponse("a token is needed: open the URL with ?token=...\n", status_code=401)
                return await response(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, with_headers)


def create_app(lake: Lake | str, *, token: str | None = None, loopback_only: bool = True,
               compress_tiles: bool | None = None) -> Starlette:
    """The catalog app over `lake` (a Lake or its path). `loopback_only`: Host must be loopback.
    `compress_tiles`: the viewer asks for deflated PNG tiles (default: when not loopback-only).

    Example:
        >>> import tempfile
        >>> create_app(tempfile.mkdtemp()).routes[0].path
        '/'
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    catalog = Catalog(lake)
    store = TileStore(catalog.engine)
    rendered = RenderedTiles()
    compress = (not loopback_only) if compress_tiles is None else compress_tiles

    def html(text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status)

    def failure(exc: Exception, *, json_body: bool = False, at=None) -> Response:
        status = 400 if isinstance(exc, (BadRequest, SpecError)) else 404 if isinstance(exc, TableNotFoundError) else 500
        cls = type(exc).__name__
        message = str(exc).splitlines()[0] if str(exc) else cls
        if json_body:
            return JSONResponse({"error_class": cls, "error_message": message}, status_code=status)
        return html(pages.error_page(status, cls, message, at), status)

    def tables(request: Request) -> Response:
        try:
            at = parse_at(request.query_params.get("at"))
            return html(pages.tables_page(catalog.overview(at), catalog.trainsets(), at))
        except LakeImgError as exc:
            return failure(exc)

    def grid(request: Request) -> Response:
        q = request.query_params
        where, sort, descending = q.get("where", ""), q.get("sort", ""), q.get("desc") == "1"
        try:
            table = catalog.table(request.path_params["table"])
            version = catalog.resolve(table, parse_at(q.get("at")))
            page = int(q.get("page") or 0) if (q.get("page") or "0").isdigit() else 0
        except LakeImgError as exc:
            return failure(exc, at=q.get("at"))
        per_page = 48
        try:
            result = catalog.grid(table, version, where=where, sort=sort, descending=descending, page=page, per_page=per_page)
        except LakeImgError as exc:  # a refused or failing filter: shown with its class and message
            return html(pages.grid_page(None, version, where=where, sort=sort, descending=descending, page=page,
                                        per_page=per_page, error=(type(exc).__name__, str(exc).splitlines()[0])), 400)
        return html(pages.grid_page(result, version, where=where, sort=sort, descending=descending, page=page, per_page=per_page))

    def image_target(request: Request) -> tuple[str, str, int, str | None, int]:
        """(table, uri, version, variant, page) an image page or zoom descriptor asks for, checked."""
        q = request.query_params
        table = catalog.table(request.path_params["table"])
        return (table, check_uri(q.get("uri")), catalog.resolve(table, parse_at(q.get("at"))), q.get("variant") or None,
                parse_page(q.get("page")))

    def image(request: Request) -> Response:
        q = request.query_params
        try:
            table, uri, version, variant, page = image_target(request)
            row = catalog.row(table, version, uri)
            if page and page >= (row.get("pages") or 1):
                raise BadRequest(f"{uri} has {row.get('pages') or 1} page(s); page {page} does not exist")
            try:
                info = store.info(table, version, uri, page, variant).to_dict()
            except BadRequest:
                info = None  # a row without pixels (a reject, a run): no viewer
            body = pages.image_page(table, version, uri, row, info, catalog.elsewhere(table, uri),
                                    catalog.uri_history(table, version, uri), variant)
            return html(body)
        except LakeImgError as exc:
            return failure(exc, at=q.get("at"))

    def descriptor(request: Request) -> Response:
        try:
            table, uri, version, variant, page = image_target(request)
            info = store.info(table, version, uri, page, variant).to_dict()
        except LakeImgError as exc:
            return failure(exc, json_body=True)
        params = {"uri": uri, **({"page": str(page)} if page else {}), **({"variant": variant} if variant else {}),
                  **({"z": "1"} if compress else {})}
        info["tile_url"] = (f"/zoom/{urllib.parse.quote(table)}/{version}/{{level}}/{{col}}_{{row}}.png?"
                            + urllib.parse.urlencode(params))
        info["scheme"] = "dzi-like: /zoom/{table}/{version}/{level}/{col}_{row}.png, level 0 = full resolution"
        return Response(json.dumps(info), media_type="application/json", headers={"Cache-Control": "no-cache"})

    async def tile(request: Request) -> Response:
        # async: a tile the rendered-tile cache holds (or a 304) is answered on the event loop;
        # only reading and rendering a new one goes to the thread pool.
        q, p = request.query_params, request.path_params
        try:
            table = p["table"]
            if not is_table_name(table):  # whether the lake has it is checked before reading
                raise BadRequest(f"no table {table!r} in this lake")
            uri = check_uri(q.get("uri"))
            col_text, _, row_text = p["tile"].removesuffix(".png").partition("_")
            if not (p["tile"].endswith(".png") and col_text.isdigit() and row_text.isdigit()):
                raise BadRequest(f"tile {p['tile']!r}: use COL_ROW.png")
            version, level, col, row = int(p["version"]), int(p["level"]), int(col_text), int(row_text)
            window, variant, deflate = parse_window(q.get("window")), q.get("variant") or None, q.get("z") == "1"
            page = parse_page(q.get("page"))
            tag = etag(table, version, uri, page, level, col, row, window, variant, deflate)
            headers = {"ETag": tag, "Cache-Control": "private, max-age=86400"}
            if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
                return Response(status_code=304, headers=headers)
            data = rendered.get(tag)
            if data is None:
                def render() -> bytes:
                    info = store.info(catalog.table(table), version, uri, page, variant)
                    return render_png(store.tile(info, level, col, row), window or info.window, compress=deflate)

                data = await run_in_threadpool(render)
                rendered.put(tag, data)
            return Response(data, media_type="image/png", headers=headers)
        except LakeImgError as exc:
            return failure(exc, json_body=True)

    def runs(request: Request) -> Response:
        try:
            at = parse_at(request.query_params.get("at"))
            return html(pages.runs_page(catalog.runs(at), at))
        except LakeImgError as exc:
            return failure(exc)

    def lineage(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            at = parse_at(request.query_params.get("at"))
            if name.startswith("trainset:"):
                version = None
            else:
                name = catalog.table(name)
                version = catalog.resolve(name, at)
            steps = catalog.lineage(name, version)
            svg = lineage_svg(steps, link=lambda t, v: pages.href("/table/" + t, at=v) if not t.startswith("trainset:")
                              else pages.href("/lineage/" + t))
            return html(pages.lineage_page(name, version, svg, steps))
        except LakeImgError as exc:
            return failure(exc, at=request.query_params.get("at"))

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return PlainTextResponse("not found\n", status_code=404)
        text = resources.files("lakeimg.serve").joinpath("static", name).read_text(encoding="utf-8")
        return Response(text, media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", tables),
        Route("/table/{table}", grid),
        Route("/image/{table}", image),
        Route("/api/zoom/{table}", descriptor),
        Route("/zoom/{table}/{version:int}/{level:int}/{tile}", tile),
        Route("/runs", runs),
        Route("/lineage/{name}", lineage),
        Route("/static/{name}", static),
    ]
    middleware = [Middleware(_Guard, token=token)]
    if loopback_only:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    return Starlette(routes=routes, middleware=middleware)


def serve(lake: Lake | str, *, host: str = "127.0.0.1", port: int = 8800, token: str | None = None) -> None:
    """Run the catalog with uvicorn until interrupted (Ctrl-C)."""
    import uvicorn

    check_bind(host, token)
    app = create_app(lake, token=token, loopback_only=is_loopback(host))
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
