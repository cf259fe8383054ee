"""The lineage page's drawing: lineage steps as an SVG graph, laid out server-side.

Columns run from the sources (left) to the table the walk started at (right): source folders,
then each step by its depth, deepest first. A step's node names its table and version, the job
and run that made it, the run's status and spec hash; it links to the table's grid at that
version; edges go from each input (table, version) and source folder to the step that read it.
All text is escaped; no script runs inside the SVG.

Example:
    >>> from lakeimg.catalog.lineage import LineageStep
    >>> step = LineageStep("images", 0, "ingest", "r1", "0.1", None, None, None, [], ["file:///photos"])
    >>> svg = lineage_svg([step], link=lambda t, v: f"/table/{t}?at={v}")
    >>> svg.count("<rect"), "file:///photos" in svg
    (2, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from lakeimg.catalog.lineage import LineageStep

__all__ = ["lineage_svg"]

_W, _H, _GAP_X, _GAP_Y, _PAD = 250, 92, 70, 24, 16


def lineage_svg(steps: Sequence[LineageStep], *, link: Callable[[str, int | None], str],
                run_link: Callable[[str], str] = lambda run: f"/runs#{run}") -> str:
    """An SVG document (text) drawing `steps` and their source folders as a graph."""
    depth_max = max((s.depth for s in steps), default=0)
    sources: list[str] = []
    for step in steps:
        for source in step.sources:
            if source not in sources:
                sources.append(source)
    columns: dict[int, list] = {}
    if sources:
        columns[0] = [("source", s) for s in sources]
    offset = 1 if sources else 0
    for step in steps:
        columns.setdefault(offset + depth_max - step.depth, []).append(("step", step))
    place: dict[tuple, tuple[int, int]] = {}
    for col, items in sorted(columns.items()):
        for i, (kind, item) in enumerate(items):
            key = ("source", item) if kind == "source" else ("step", item.table, item.version)
            place[key] = (_PAD + col * (_W + _GAP_X), _PAD + i * (_H + _GAP_Y))
    width = _PAD * 2 + (max(columns) + 1) * (_W + _GAP_X) - _GAP_X if columns else 100
    height = _PAD * 2 + max((len(v) for v in columns.values()), default=1) * (_H + _GAP_Y) - _GAP_Y
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']
    for step in steps:
        target = place[("step", step.table, step.version)]
        parents = [("step", p["table"], p["version"]) for p in step.inputs] + [("source", s) for s in step.sources]
        for parent in parents:
            if parent in place:
                out.append(_edge(place[parent], target))
    for (kind, *rest), (x, y) in place.items():
        if kind == "source":
            out.append(_source_node(rest[0], x, y))
    for step in steps:
        x, y = place[("step", step.table, step.version)]
        out.append(_step_node(step, x, y, link, run_link))
    out.append("</svg>")
    return "\n".join(out)


def _edge(a: tuple[int, int], b: tuple[int, int]) -> str:
    x1, y1 = a[0] + _W, a[1] + _H // 2
    x2, y2 = b[0], b[1] + _H // 2
    mid = (x1 + x2) // 2
    return (f'<path class="edge" d="M {x1} {y1} C {mid} {y1}, {mid} {y2}, {x2} {y2}" fill="none" '
            f'stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>')


def _source_node(source: str, x: int, y: int) -> str:
    label = source if len(source) <= 38 else "..." + source[-35:]
    return (f'<g class="node source"><title>{escape(source)}</title>'
            f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6" fill="#f3f0e6" stroke="#9a8f6b"/>'
            f'<text x="{x + 10}" y="{y + 22}" font-weight="bold">source folder</text>'
            f'<text x="{x + 10}" y="{y + 44}">{escape(label)}</text></g>')


def _step_node(step: LineageStep, x: int, y: int, link, run_link) -> str:
    is_trainset = step.job == "trainset"
    title = step.table if is_trainset else f"{step.table}@{step.version}"
    colour = {"succeeded": "#e7f4e8", "failed": "#fbe3e1", "incomplete": "#fdf1d8"}.get(step.status or "", "#eef1f7")
    run = step.run_id or "no run recorded"
    made = "" if step.made_at_version in (None, step.version) else f" (made at v{step.made_at_version})"
    lines = [f"{step.job or step.operation or '?'} run {run[:18]}{made}",
             f"status: {step.status or ('-' if is_trainset else 'unrecorded')}"
             + (f"; reproduce: {step.reproduced['result']}" if step.reproduced else ""),
             f"spec {step.spec_hash[:12]}" if step.spec_hash else "no spec"]
    if step.inputs:
        lines.append("reads " + ", ".join(f"{p['table']}@{p['version']}" for p in step.inputs))
    href = link(step.table, step.version)
    texts = "".join(f'<text x="{x + 10}" y="{y + 40 + 14 * i}">{escape(line)}</text>' for i, line in enumerate(lines[:4]))
    run_anchor = (f'<a href="{escape(run_link(step.run_id))}"><text x="{x + _W - 40}" y="{y + 20}" fill="#1a4fa0">run</text></a>'
                  if step.run_id else "")
    return (f'<g class="node step" data-table="{escape(step.table)}" data-version="{escape(str(step.version))}" '
            f'data-job="{escape(step.job or "")}" data-run="{escape(step.run_id or "")}" '
            f'data-reproduce="{escape(step.reproduced["result"] if step.reproduced else "")}">'
            f'<a href="{escape(href)}"><rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="6" fill="{colour}" stroke="#4a5a7a"/>'
            f'<text x="{x + 10}" y="{y + 20}" font-weight="bold" fill="#1a4fa0">{escape(title)}</text></a>'
            f'{run_anchor}{texts}</g>')
