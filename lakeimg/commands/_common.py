"""Helpers shared by CLI commands: the lake a command works on, output (JSON, tables, run
summaries) and progress bars.

Example:
    >>> print(format_table([{"label": "cats", "n": 3}, {"label": "dogs", "n": 12}]))
    label  n
    ------ --
    cats   3
    dogs   12
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from lakeimg.lake import Lake
from lakeimg.storage import parse_storage_options


def add_engine_options(parser) -> None:
    """--engine, --master, --spark-conf: the same on every job."""
    parser.add_argument("--engine", choices=("local", "spark"), default="local", help="embedded (default, no JVM) or Apache Spark")
    parser.add_argument("--master", default=None, help="Spark master URL (spark engine), e.g. local[2] or spark://host:7077")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark settings (repeatable)")


def show_progress(args) -> bool:
    """Progress lines on stderr unless --quiet."""
    return not getattr(args, "quiet", False)


def storage_options_of(args) -> dict[str, str]:
    """The command's `--storage-option KEY=VALUE` settings (see `lakeimg.storage`)."""
    return parse_storage_options(getattr(args, "storage_option", None) or [])


def lake_of(args) -> Lake:
    """`args.lake` with the command's storage options, on the embedded engine."""
    return Lake(args.lake, storage_options=storage_options_of(args))


@contextmanager
def open_lake(args) -> Iterator[Lake]:
    """`args.lake` on the engine `args.engine` names; a Spark session is built for the command
    (no --master: spark-submit's, or local[*]) and stopped after it."""
    if getattr(args, "engine", "local") != "spark":
        yield lake_of(args)
        return
    lake = Lake.on_new_spark_session(args.lake, args.master, args.spark_conf, quiet=not getattr(args, "verbose", False))
    try:
        yield lake
    except BaseException:
        if lake.spark_log:
            print(f"lakeimg: Spark's own output is in {lake.spark_log} (--verbose shows it)", file=sys.stderr)
        raise
    else:
        if lake.spark_log:
            os.remove(lake.spark_log)
    finally:
        lake.spark.stop()


def print_json(value: Any) -> None:
    """One JSON object on the last line of stdout (result dataclasses through their to_dict)."""
    print(json.dumps(value, sort_keys=True, default=lambda v: v.to_dict() if hasattr(v, "to_dict") else str(v)))


PROGRESS_ENV = "LAKEIMG_PROGRESS_SECONDS"  # seconds between progress lines when stderr is no terminal


def _progress_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, "5")))
    except ValueError:
        return 5.0


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, str], Callable[[int, int], None] | None]]:
    """Progress on stderr for work in several steps (ingest: files decoded, then tiles cut);
    yields `track(label, unit)`, which gives each step its on_progress(done, total) callback
    (None when not `enabled`).

    A rich bar per step on a terminal; otherwise (cron, Airflow, a pipe) one line per step every
    few seconds (`LAKEIMG_PROGRESS_SECONDS`, default 5) and one when it is done:
    `lakeimg: decoding: 120/1000 files (12 %)`, `lakeimg: tiling: 1200/4096 tiles (29 %)`.
    """
    if not enabled:
        yield lambda label, unit: None
        return
    if not sys.stderr.isatty():
        interval = _progress_interval()

        def lines(label: str, unit: str) -> Callable[[int, int], None]:
            last, shown = [time.monotonic()], [None]

            def line(done: int, total: int) -> None:
                now = time.monotonic()
                if (done, total) == shown[0] or (done < total and now - last[0] < interval):
                    return
                last[0], shown[0] = now, (done, total)
                share = f" ({100 * done // total} %)" if total else ""
                print(f"lakeimg: {label}: {done}/{total} {unit}{share}", file=sys.stderr, flush=True)

            return line

        yield lines
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:

        def bars(label: str, unit: str) -> Callable[[int, int], None]:
            task: list[Any] = []  # added at the first update: a step that never runs shows no bar

            def update(done: int, total: int) -> None:
                if not task:
                    task.append(bar.add_task(f"{label} ({unit})", total=None))
                bar.update(task[0], completed=done, total=total)

            return update

        yield bars


@contextmanager
def progress_bar(label: str, enabled: bool, unit: str = "files") -> Iterator[Callable[[int, int], None] | None]:
    """One step's progress (`progress_bars`): yields its on_progress(done, total) callback."""
    with progress_bars(enabled) as track:
        yield track(label, unit)


def human_bytes(size: int | None) -> str:
    """A byte count for people: 1536 -> '1.5 KiB' (None -> '').

    Example:
        >>> human_bytes(1536), human_bytes(12), human_bytes(None)
        ('1.5 KiB', '12 B', '')
    """
    if size is None:
        return ""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


@contextmanager
def heartbeat(label: str, enabled: bool) -> Iterator[None]:
    """For long work without counts (export, reproduce, maintain, trainset create): a line on
    stderr every few seconds (`LAKEIMG_PROGRESS_SECONDS`, default 5) while it runs, so cron and
    Airflow logs show it is alive: `lakeimg: exporting: running for 10 s`; when stderr is no
    terminal, one more when the work is done: `lakeimg: exporting: done in 12 s`."""
    if not enabled:
        yield
        return
    interval, started, stop = max(_progress_interval(), 0.05), time.monotonic(), threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            print(f"lakeimg: {label}: running for {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="lakeimg-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if not sys.stderr.isatty():  # a log's last word on the step (a failure prints its own)
        print(f"lakeimg: {label}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, max_width: int = 60) -> str:
    """Rows as a plain-text table (rich, no colours, never wrapped): a header, a rule of dashes,
    one line per row; cells longer than `max_width` end in an ellipsis, bytes show their size."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> Text:
        text = f"<{len(value)} bytes>" if isinstance(value, bytes) else "" if value is None else str(value)
        return Text(text if len(text) <= max_width else text[: max_width - 1] + "…")

    # Only the rule under the header is drawn (dashes, blanks where columns meet).
    table = Table(*columns, box=box.Box("    \n    \n-- -\n    \n    \n    \n    \n    \n"), show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 1), header_style="", collapse_padding=True)
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    out = io.StringIO()
    Console(file=out, width=1 << 16, color_system=None, highlight=False, markup=False, emoji=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def print_run_summary(lake: str, summary: Any, as_json: bool) -> None:
    """An ingest or transform summary: one JSON object, or one human line."""
    if as_json:
        result = summary.to_dict()
        result.pop("rejects_version", None)
        print_json(result)
        return
    mode = f" ({summary.mode})" if getattr(summary, "mode", None) else ""
    if getattr(summary, "dry_run", False):
        at = "does not exist yet" if summary.version is None else f"stays at version {summary.version}"
        print(f"dry run{mode}: {lake}/{summary.table} {at}; would add {summary.add}, update {summary.update}, "
              f"delete {summary.delete}; {summary.unchanged} unchanged; nothing committed")
        return
    print(
        f"{lake}/{summary.table} version {summary.version}{mode}: {summary.added} added, {summary.updated} updated, "
        f"{summary.unchanged} unchanged, {summary.deleted} deleted, {summary.rejected} rejected "
        f"({summary.seconds:.1f} s, run {summary.run_id})"
    )


def _jsonable(value: Any, kind: pa.DataType, binary: str) -> Any:
    """One value as JSON-ready Python, guided by its Arrow type (maps become objects, even empty)."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {str(k): _jsonable(v, kind.item_type, binary) for k, v in value}
    if pa.types.is_struct(kind):
        return {f.name: _jsonable(value.get(f.name), f.type, binary) for f in kind}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_jsonable(v, kind.value_type, binary) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return base64.b64encode(data).decode("ascii") if binary == "base64" else data
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


def jsonable_rows(table: pa.Table, *, binary: str = "base64") -> list[dict[str, Any]]:
    """Result rows as JSON-ready dicts: maps as objects, timestamps as ISO text, binary as base64.

    `binary="bytes"` keeps binary values as bytes (for the text table and `show`).

    Example:
        >>> jsonable_rows(pa.table({"b": [b"hi"]}))
        [{'b': 'aGk='}]
    """
    types = {f.name: f.type for f in table.schema}
    return [{k: _jsonable(v, types[k], binary) for k, v in row.items()} for row in table.to_pylist()]
