"""Helpers shared by CLI commands: engine options, JSON output, progress bars, tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def add_engine_options(parser) -> None:
    """--engine, --master, --spark-conf: the same on every job."""
    parser.add_argument("--engine", choices=("local", "spark"), default="local", help="embedded (default, no JVM) or Apache Spark")
    parser.add_argument("--master", default=None, help="Spark master URL (spark engine), e.g. local[2] or spark://host:7077")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark settings (repeatable)")


def print_json(value: Any) -> None:
    """One JSON object on the last line of stdout."""
    print(json.dumps(value, sort_keys=True, default=str))


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on a terminal; yields an on_progress(done, total) callback or None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, max_width: int = 60) -> str:
    """An aligned plain-text table."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, bytes):
            text = f"<{len(value)} bytes>"
        else:
            text = "" if value is None else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def print_run_summary(lake: str, summary: Any, as_json: bool) -> None:
    """An ingest or transform summary: one JSON object, or one human line."""
    if as_json:
        result = summary.to_dict()
        result.pop("rejects_version", None)
        print_json(result)
        return
    mode = f" ({summary.mode})" if getattr(summary, "mode", None) else ""
    print(
        f"{lake}/{summary.table} version {summary.version}{mode}: {summary.added} added, {summary.updated} updated, "
        f"{summary.unchanged} unchanged, {summary.deleted} deleted, {summary.rejected} rejected "
        f"({summary.seconds:.1f} s, run {summary.run_id})"
    )
