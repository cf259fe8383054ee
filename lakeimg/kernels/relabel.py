"""The relabel kernel: existing image rows with a new `label` and `attributes`, nothing decoded.

Ingest uses it when only an image's labels changed (a new `--metadata` file, `--relabel`): the
rows are read from the table snapshot by the engine, every column but `label`, `attributes`
and `run_id` is passed through as it is, and the output replaces the rows by uri.

Example:
    >>> batch = pa.RecordBatch.from_pylist([{"uri": "file:///a.png", "label": "old"}])
    >>> out = next(relabel_kernel(iter([batch]), labels={"file:///a.png": ("new", (("split", "train"),))}, run_id="r"))
    >>> out.column("label").to_pylist(), out.column("attributes").to_pylist(), out.column("outcome").to_pylist()
    (['new'], [[('split', 'train')]], ['image'])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pyarrow as pa

from lakeimg.kernels._batches import result_schema
from lakeimg.schemas import table_contract

__all__ = ["relabel_kernel", "relabel_result_schema", "Labels"]

# uri -> (label, attributes as (key, value) pairs or None): picklable, and what Arrow's map takes.
Labels = Mapping[str, tuple[str | None, tuple[tuple[str, str], ...] | None]]


def relabel_result_schema() -> pa.Schema:
    """The kernel's output schema: the images columns (nullable) plus outcome and errors."""
    return result_schema(table_contract("images").arrow_schema)


def relabel_kernel(batches: Iterator[pa.RecordBatch], *, labels: Labels, run_id: str) -> Iterator[pa.RecordBatch]:
    """Each input row (images columns; ones a table written under an older contract lacks may
    be missing) with its new label and attributes from `labels`, stamped with `run_id`."""
    schema = relabel_result_schema()
    for batch in batches:
        n = batch.num_rows
        new = [labels[uri] for uri in batch.column("uri").to_pylist()]
        replaced = {
            "label": pa.array([label for label, _ in new], pa.string()),
            "attributes": pa.array([list(attrs) if attrs else None for _, attrs in new], schema.field("attributes").type),
            "run_id": pa.array([run_id] * n, pa.string()),
            "outcome": pa.array(["image"] * n, pa.string()),
        }
        names = batch.schema.names
        arrays = [
            replaced[f.name] if f.name in replaced
            else batch.column(names.index(f.name)).cast(f.type) if f.name in names
            else pa.nulls(n, f.type)
            for f in schema
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
