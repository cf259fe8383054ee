"""What every kernel does around its per-item work: cut output rows into Arrow batches, warm up.

Example:
    >>> import pyarrow as pa
    >>> schema = pa.schema([("n", pa.int64())])
    >>> [b.num_rows for b in batch_rows(({"n": i} for i in range(5)), schema, max_rows=2)]
    [2, 2, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

__all__ = ["batch_rows", "result_schema", "warm_up_kernel"]


def result_schema(table: pa.Schema, *extra: pa.Field) -> pa.Schema:
    """A kernel's output schema: the table's columns (nullable), outcome and errors, then `extra`."""
    return pa.schema([
        *(f.with_nullable(True) for f in table),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("error_class", pa.string()),
        pa.field("error_message", pa.string()),
        *extra,
    ])


def batch_rows(
    rows: Iterable[dict[str, Any]],
    schema: pa.Schema,
    *,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    size: Callable[[dict[str, Any]], int] = lambda row: 0,
) -> Iterator[pa.RecordBatch]:
    """Output rows as RecordBatches of `schema`, each cut at `max_rows` rows or once the rows'
    `size` reaches `max_bytes`, so a kernel holds a bounded amount of output at a time."""
    pending: list[dict[str, Any]] = []
    pending_bytes = 0
    for row in rows:
        pending.append(row)
        pending_bytes += size(row)
        if (max_rows is not None and len(pending) >= max_rows) or (max_bytes is not None and pending_bytes >= max_bytes):
            yield pa.RecordBatch.from_pylist(pending, schema=schema)
            pending, pending_bytes = [], 0
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


def warm_up_kernel(schema: pa.Schema) -> None:
    """The imports every kernel makes on first use: OpenCV, every Pillow plugin, and what pyarrow
    imports the first time it builds a batch from Python rows (see `prepare_ingest_kernel`)."""
    import cv2  # noqa: F401 - resize, colour, JPEG and 16-bit PNG paths
    from PIL import Image

    Image.init()
    pa.RecordBatch.from_pylist([], schema=schema)
