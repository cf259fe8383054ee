"""Reject rows: the one builder of a row for an input a kernel could not handle.

Kernels emit rejects inside their own output schema (`outcome` "reject", `error_class`,
`error_message`); `reject_row` fills the columns every such schema shares, so the same dict
serves the ingest kernel, the transform kernel and the pools' `on_failure`. `as_rejects` turns
those rows into the rejects contract (`schemas/rejects.v1.json`).

Example:
    >>> row = reject_row({"uri": "file:///a.png", "size_bytes": 3}, "corrupt", "bad", run_id="r1")
    >>> row["outcome"], row["error_class"], as_rejects(pa.Table.from_pylist([row]))["uri"].to_pylist()
    ('reject', 'corrupt', ['file:///a.png'])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from lakeimg.errors import ErrorClass
from lakeimg.schemas import table_contract
from lakeimg.storage import printable

__all__ = ["reject_row", "as_rejects"]

_MESSAGE_CHARS = 2000


def reject_row(
    source: Mapping[str, Any],
    error_class: ErrorClass | str,
    message: str,
    *,
    run_id: str,
    at: dt.datetime | None = None,
    sha: str | None = None,
) -> dict[str, Any]:
    """The reject row of one input row (a listing row, a source row or a task), usable as a
    pool's `on_failure` through `functools.partial`. `sha` is the hash of the bytes read, if any.

    Example:
        >>> reject_row({"uri": "u"}, ErrorClass.TIMEOUT, "slow", run_id="r")["error_class"]
        'timeout'
    """
    at = at or dt.datetime.now(dt.timezone.utc)
    return {
        "uri": source["uri"],
        "size_bytes": source.get("size_bytes"),
        "modified_at": source.get("modified_at"),
        "label": source.get("label"),
        "content_sha256": sha,
        "source_sha256": source.get("content_sha256") if sha is None else sha,
        "variant": 0,
        "outcome": "reject",
        "error_class": str(error_class),
        # A decoder's message may quote a non-UTF-8 path (surrogate escapes): not storable as is.
        "error_message": printable(str(message)[:_MESSAGE_CHARS]),
        "run_id": run_id,
        "ingested_at": at,
        "rejected_at": at,
    }


def as_rejects(rows: pa.Table, at: dt.datetime | None = None) -> pa.Table:
    """Reject rows of any kernel's output schema in the rejects contract's columns and types.

    The hash is `content_sha256` (ingest) or `source_sha256` (transform); the time is
    `rejected_at`, else `ingested_at`, else `at`.
    """
    contract = table_contract("rejects")
    schema = pa.schema([f.with_nullable(True) for f in contract.arrow_schema])
    names = rows.column_names
    columns = {}
    for field in schema:
        name = field.name
        if name == "content_sha256" and name not in names:
            name = "source_sha256"
        elif name == "rejected_at" and name not in names:
            name = "ingested_at"
        if name in names:
            columns[field.name] = rows[name].cast(field.type)
        elif field.name == "rejected_at":
            columns[field.name] = pa.array([at or dt.datetime.now(dt.timezone.utc)] * rows.num_rows, field.type)
        else:
            columns[field.name] = pa.nulls(rows.num_rows, field.type)
    return pa.table(columns, schema=schema)
