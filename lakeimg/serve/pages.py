"""The web catalog's HTML: one function per page, plain strings with every value escaped.

Pages carry no inline script (the app's Content-Security-Policy forbids it): the deep-zoom
viewer is `static/viewer.js`, configured through `data-` attributes. Every link keeps the
version picker's value (`at`), so a chosen version or timestamp follows the user around.

Example:
    >>> "<b>" in layout("t", "<b>x</b>", at=None), "&lt;script" in layout("<script>", "", at=None)
    (True, True)
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["layout", "tables_page", "grid_page", "image_page", "runs_page", "lineage_page", "error_page", "href"]


def href(path: str, **params: Any) -> str:
    """`path` with its query (None values left out), escaped for an HTML attribute."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return escape(path + ("?" + query if query else ""))


def _picker(at: Any, keep: dict[str, Any]) -> str:
    hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(str(v))}">'
                     for k, v in keep.items() if v not in (None, ""))
    return ('<form class="picker" method="get" id="version-picker">'
            f'{hidden}<label>version or timestamp <input name="at" id="at" value="{escape("" if at is None else str(at))}" '
            'placeholder="latest, 3 or 2026-01-01T00:00:00Z" size="28"></label> '
            '<button type="submit" id="at-go">show</button></form>')


def layout(title: str, body: str, *, at: Any, keep: dict[str, Any] | None = None, scripts: Sequence[str] = ()) -> str:
    """The page frame: navigation, the version picker (keeping `keep` query values), `body`."""
    script_tags = "".join(f'<script src="{escape(s)}"></script>' for s in scripts)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} - lakeimg</title><link rel=stylesheet href=\"/static/style.css\"></head><body>"
        f'<header><a class="brand" href="{href("/", at=at)}">lakeimg</a> '
        f'<a href="{href("/", at=at)}">tables</a> <a href="{href("/runs", at=at)}">runs</a> '
        f'{_picker(at, keep or {})}</header><main><h1>{escape(title)}</h1>{body}</main>{script_tags}</body></html>'
    )


def _cell(value: Any) -> str:
    if value is None:
        return '<span class="none">-</span>'
    if isinstance(value, float):
        return escape(f"{value:.3f}")
    if isinstance(value, (dict, list)):
        return f"<code>{escape(json.dumps(value, default=str))}</code>"
    return escape(str(value))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, cls: str = "") -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def tables_page(rows: list[dict[str, Any]], trainsets: list[Any], at: Any) -> str:
    lines = []
    for r in rows:
        name = r["table"]
        version = r["version"]
        link = f'<a class="table-link" href="{href("/table/" + name, at=version)}">{escape(name)}</a>' if version is not None else escape(name)
        lineage = f'<a href="{href("/lineage/" + name, at=version)}">lineage</a>' if version is not None else ""
        lines.append(f'<tr data-table="{escape(name)}"><td>{link}</td><td>{escape(r["kind"])}</td><td class="rows">{_cell(r["rows"])}</td>'
                     f'<td class="version">{_cell(version)}</td><td>{_cell(r.get("latest"))}</td><td>{_cell(r.get("last_change"))}</td>'
                     f'<td>{_cell(r.get("job"))}</td><td>{lineage}</td></tr>')
    body = ('<table class="tables"><thead><tr><th>table</th><th>kind</th><th>rows</th><th>version</th><th>latest</th>'
            '<th>last change</th><th>by</th><th></th></tr></thead><tbody>' + "".join(lines) + "</tbody></table>")
    if at is not None:
        body = f'<p class="note">as of <b>{escape(str(at))}</b> (a number picks that version of each table)</p>' + body
    if trainsets:
        items = "".join(f'<li><a href="{href("/lineage/trainset:" + t.name)}">{escape(t.name)}</a>: '
                        f'{escape(t.table)}@{t.version}, splits {escape(str(list(t.splits)))}</li>' for t in trainsets)
        body += f"<h2>training sets</h2><ul>{items}</ul>"
    return layout("tables", body, at=at)


def grid_page(grid, at: Any, *, where: str, sort: str, descending: bool, page: int, per_page: int,
              error: tuple[str, str] | None = None) -> str:
    table = grid.table if grid else ""
    form = (f'<form class="query" method="get" id="grid-form"><input type="hidden" name="at" value="{escape("" if at is None else str(at))}">'
            f'<label>WHERE <input name="where" id="where" size="60" value="{escape(where)}" placeholder="label = \'cats\' AND width > 100"></label> '
            '<label>sort by <select name="sort" id="sort"><option value="">uri</option>'
            + "".join(f'<option{" selected" if c == sort else ""}>{escape(c)}</option>' for c in (grid.sortable if grid else []))
            + f'</select></label> <label><input type="checkbox" name="desc" value="1"{" checked" if descending else ""}> descending</label> '
            '<button type="submit" id="where-go">filter</button></form>')
    if error is not None:
        cls, message = error
        body = form + f'<div class="error refused" id="error"><b class="error-class">{escape(cls)}</b>: <span class="error-message">{escape(message)}</span></div>'
        return layout(table or "grid", body, at=at, keep={"where": where, "sort": sort})
    base = "/table/" + grid.table
    pages = max(1, -(-grid.total // per_page))
    nav = (f'<p class="pager">version <b id="grid-version">{grid.version}</b> &middot; <b id="grid-total">{grid.total}</b> rows &middot; page {page + 1} of {pages} '
           + (f'<a id="prev" href="{href(base, at=grid.version, where=where, sort=sort, desc=int(descending) or None, page=page - 1)}">previous</a> ' if page > 0 else "")
           + (f'<a id="next" href="{href(base, at=grid.version, where=where, sort=sort, desc=int(descending) or None, page=page + 1)}">next</a>' if page + 1 < pages else "")
           + f' &middot; <a href="{href("/lineage/" + grid.table, at=grid.version)}">lineage</a></p>')
    cells = []
    for row, thumb in zip(grid.rows, grid.thumbnails, strict=True):
        uri = row.get("uri")
        img = (f'<img class="thumb" alt="" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}">' if thumb
               else '<div class="thumb none">no image</div>')
        caption = "<br>".join(f"{escape(c)}: {_cell(row.get(c))}" for c in grid.columns if c != "uri" and row.get(c) is not None)
        target = href("/image/" + grid.table, at=grid.version, uri=uri, variant=row.get("variant")) if uri else "#"
        cells.append(f'<figure class="cell"><a href="{target}">{img}</a><figcaption title="{escape(str(uri))}">'
                     f'{escape(str(uri).rsplit("/", 1)[-1])}<br>{caption}</figcaption></figure>')
    body = form + nav + f'<div class="grid" id="grid">{"".join(cells)}</div>'
    if grid.rejects:
        body += f"<h2>rejects ({len(grid.rejects)})</h2>" + _table(grid.rejects, ["uri", "error_class", "error_message", "rejected_at"], cls="rejects")
    return layout(grid.table, body, at=grid.version, keep={"where": where, "sort": sort})


def image_page(table: str, version: int, uri: str, row: dict[str, Any], info: dict[str, Any] | None,
               elsewhere: list[dict[str, Any]], history: list[dict[str, Any]], variant: str | None) -> str:
    meta = {k: v for k, v in row.items() if k not in ("exif", "dicom", "geo")}
    parts = ['<div class="image-page">']
    page = info["page"] if info is not None else 0
    if info is not None and (row.get("pages") or 1) > 1:
        current = ' class="current"'
        links = " ".join(f'<a href="{href("/image/" + table, at=version, uri=uri, variant=variant, page=p or None)}" '
                         f'data-page="{p}"{current if p == page else ""}>{p}</a>'
                         for p in range(row["pages"]))
        parts.append(f'<p class="pages" id="pages">page {page} of {row["pages"]} (0 is the first): {links}</p>')
    if info is not None:
        window = info.get("window")
        parts.append(
            f'<div class="viewer" id="viewer" data-descriptor="{href("/api/zoom/" + table, at=version, uri=uri, variant=variant, page=page or None)}">'
            '<div class="viewer-controls"><button type="button" data-zoom="in">+</button> <button type="button" data-zoom="out">-</button> '
            '<button type="button" data-zoom="fit">fit</button> <span class="viewer-status" id="viewer-status"></span>'
            + ('' if window is None else
               f' <label>window <input id="window-lo" size="8" value="{window[0]:g}"> .. <input id="window-hi" size="8" value="{window[1]:g}"></label>'
               ' <button type="button" id="window-apply">apply</button>')
            + '</div><canvas id="viewer-canvas" width="900" height="600"></canvas></div>')
    parts.append('<div class="meta"><h2>metadata</h2>' + _table([{"column": k, "value": v} for k, v in meta.items()], ["column", "value"], cls="kv"))
    for key in ("exif", "dicom", "geo"):
        if row.get(key):
            value = row[key]
            items = value.items() if isinstance(value, dict) else (value if isinstance(value, list) else [(key, value)])
            kv = [{"key": k, "value": v} for k, v in items] if not isinstance(value, list) else [
                {"key": i[0] if isinstance(i, (tuple, list)) else "", "value": i[1] if isinstance(i, (tuple, list)) else i} for i in value]
            parts.append(f'<h2>{escape(key)}</h2>' + _table(kv, ["key", "value"], cls=f"kv {key}"))
    parts.append("<h2>elsewhere in the lake</h2>")
    if elsewhere:
        rows = []
        for e in elsewhere:
            if e["kind"] == "trainset":
                rows.append({"where": f'training set {e["trainset"]} ({e["table"]}@{e["version"]})', "what": f'split {e["split"]}'})
            else:
                what = ", ".join(f"{k}={e[k]}" for k in ("variant", "width", "height", "error_class") if e.get(k) is not None)
                rows.append({"where": f'{e["table"]}@{e["version"]}', "what": what})
        parts.append(_table(rows, ["where", "what"], cls="elsewhere"))
    else:
        parts.append("<p>only in this table</p>")
    parts.append("<h2>history of this row</h2>" + _table(history, ["version", "change", "timestamp", "job", "run_id", "content_sha256"], cls="history"))
    parts.append("</div>")
    scripts = ["/static/viewer.js"] if info is not None else []
    return layout(uri.rsplit("/", 1)[-1] + f" in {table}@{version}", "".join(parts), at=version,
                  keep={"uri": uri, "page": page or None}, scripts=scripts)


def runs_page(runs: list[dict[str, Any]], at: Any) -> str:
    cols = ["run_id", "job", "status", "engine", "target_table", "target_version", "inputs", "started_at", "duration_s", "counts"]
    lines = []
    for r in runs:
        shown = {**r, "inputs": ", ".join(f'{i["table"]}@{i["version"]}' for i in (r.get("inputs") or [])),
                 "counts": ", ".join(f"{k} {v}" for k, v in (r.get("counts") or {}).items())}
        cells = "".join(f"<td>{_cell(shown.get(c))}</td>" for c in cols)
        lines.append(f'<tr id="{escape(str(r["run_id"]))}" class="status-{escape(str(r.get("status")))}">{cells}</tr>')
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
    return layout("runs", body, at=at)


def _reproduce_text(step: Any) -> str | None:
    """What the latest `reproduce` of a lineage step found, or the command that would check it.

    Example:
        >>> from lakeimg.catalog.lineage import LineageStep
        >>> step = LineageStep("small", 2, "transform", "r1", "1.0", None, {}, None, [], [],
        ...                    reproduced={"result": "mismatch", "rows": 4, "differing": 1, "at": "2026-12-01T10:00:00+00:00", "run_id": "r2"})
        >>> _reproduce_text(step)
        'mismatch: 1 of 4 rows differ (2026-12-01T10:00:00+00:00, run r2)'
    """
    if step.version is None:
        return None  # a training set's own step: its table version below is what reproduce checks
    found = step.reproduced
    if not found:
        return f"not run: lakeimg reproduce {step.table}@{step.version}"
    what = {"match": f"match: {found['rows']} rows", "failed": "failed: the check could not run",
            }.get(found["result"], f"mismatch: {found['differing']} of {found['rows']} rows differ")
    return f"{what} ({found['at']}, run {found['run_id']})"


def lineage_page(name: str, version: Any, svg: str, steps: list[Any]) -> str:
    rows = [{"table": s.table, "version": s.version, "job": s.job, "run": s.run_id, "status": s.status,
             "reproduce": _reproduce_text(s),
             "inputs": ", ".join(f'{i["table"]}@{i["version"]}' for i in s.inputs), "sources": ", ".join(s.sources),
             "spec": s.spec} for s in steps]
    body = (f'<div class="graph" id="lineage-graph">{svg}</div>'
            + _table(rows, ["table", "version", "job", "run", "status", "reproduce", "inputs", "sources", "spec"], cls="steps"))
    return layout(f"lineage of {name}" + ("" if version is None else f"@{version}"), body, at=version)


def error_page(status: int, cls: str, message: str, at: Any = None) -> str:
    body = f'<div class="error refused" id="error"><b class="error-class">{escape(cls)}</b>: <span class="error-message">{escape(message)}</span></div>'
    return layout(f"{status}", body, at=at)
