"""The embedded engine's staged output: a stage's rows streamed to Parquet files under the lake.

`LocalStaged` is the embedded engine's `Staged`: output rows go to `StagedParquet` files in the
table contract's schema (moved into the table by the commit, never read into memory), while
the small parts (keys, held rows, rejects) stay on the driver.

Example:
    >>> import tempfile
    >>> from lakeimg.schemas import table_contract
    >>> staged = StagedParquet(tempfile.mkdtemp() + "/stage", table_contract("rejects"))
    >>> staged.finish()
    []
    >>> staged.discard()
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeimg.engine.layout import (
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    TARGET_FILE_BYTES,
    dictionary_columns,
)
from lakeimg.schemas import TableContract
from lakeimg.storage import open_output, remove_prefix, uri_to_path

__all__ = ["StagedParquet", "LocalStaged", "KEY_COLUMNS"]

KEY_COLUMNS = ("uri", "variant")  # what `Staged.keys` serves for rows staged in a contract


class StagedParquet:
    """Rows streamed to Parquet files in a local staging folder (path or file:// URI), in a
    table contract's schema: a job's output is written as it comes and never has to fit in
    the driver's memory.

    Rows are buffered into row groups of `row_group_bytes` or `row_group_rows` (whichever is
    reached first) and files roll over at `file_bytes` (`engine/layout.py` says why these sizes):
    the ingest kernel hands over a few rows at a time, and a row group per hand-over made
    tables of tiny images mostly Parquet metadata.
    """

    def __init__(self, folder: str, contract: TableContract, *, file_bytes: int = TARGET_FILE_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES, row_group_rows: int = ROW_GROUP_ROWS):
        self.folder, self.contract = uri_to_path(folder), contract
        self.file_bytes, self.row_group_bytes, self.row_group_rows = file_bytes, row_group_bytes, row_group_rows
        self.files: list[str] = []
        self._schema = contract.arrow_schema
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Append rows (any column order; cast to the contract's schema)."""
        if rows.num_rows == 0:
            return
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        table = table.select(self._schema.names).cast(self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        if self._pending_rows >= self.row_group_rows or self._pending_bytes >= self.row_group_bytes:
            self._flush()

    @property
    def uris(self) -> list[str]:
        """The uri of every row in the finished files, in order (read back: not kept in memory)."""
        return [u for path in self.files for u in pq.read_table(path, columns=["uri"])["uri"].to_pylist()]

    def _flush(self) -> None:
        """The buffered rows as one row group (several when a single hand-over is larger)."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        size = self._pending_bytes
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
        if self._writer is None:
            os.makedirs(self.folder, exist_ok=True)
            self.files.append(os.path.join(self.folder, f"part-{len(self.files):05d}.parquet"))
            # Page checksums let `lakeimg verify` catch damage in columns that have no hash of their own.
            self._sink = open_output(self.files[-1])
            self._writer = pq.ParquetWriter(self._sink, self._schema, write_page_checksum=True,
                                            use_dictionary=dictionary_columns(self._schema))
            self._written = 0
        per_row = max(1, size // max(1, table.num_rows))
        self._writer.write_table(table, row_group_size=max(1, min(self.row_group_rows, self.row_group_bytes // per_row)))
        self._written += size
        if self._written >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def finish(self) -> list[str]:
        """Write what is buffered and close the open file; the finished files, in write order."""
        self._flush()
        self._close_file()
        return list(self.files)

    def discard(self) -> None:
        """Remove the staging folder and what is left in it (after the commit, or a failure),
        then its parents while they are empty, up to the lake's `_lakeimg` folder."""
        self._pending = []
        self._close_file()
        remove_prefix(self.folder)
        parent = os.path.dirname(self.folder)
        while os.path.basename(parent) not in ("_lakeimg", ""):
            try:
                os.rmdir(parent)
            except OSError:
                return
            parent = os.path.dirname(parent)


class LocalStaged:
    """A stage's output on the embedded engine (`lakeimg.engine.base.Staged`).

    With a `contract`, output rows are written to `StagedParquet` files and only their key
    columns (`KEY_COLUMNS`) are kept here; without one (small outputs such as tiling summaries)
    they stay in memory.
    """

    def __init__(self, folder: str, contract: TableContract | None, schema: pa.Schema, held: str | None = None):
        self.parquet = StagedParquet(folder, contract) if contract is not None else None
        self.schema, self.held_column = schema, held
        # Only the keys of staged rows stay here: a run's metadata can be large too.
        self._key_columns = [c for c in KEY_COLUMNS if c in schema.names] if contract is not None else schema.names
        self._keys: list[pa.Table] = []
        self._held: list[pa.Table] = []
        self._rejects: list[pa.Table] = []

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Sort one output batch into rejects, held rows and output rows."""
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        # Filters copy every column (image bytes included): only when a batch mixes kinds of rows.
        if "error_class" in table.column_names and table["error_class"].null_count < table.num_rows:
            rejected = pc.is_valid(table["error_class"])
            self._rejects.append(table.filter(rejected))
            table = table.filter(pc.invert(rejected))
        if self.held_column is not None and pc.any(pc.fill_null(table[self.held_column], False)).as_py():
            hold = pc.fill_null(table[self.held_column], False)
            self._held.append(table.filter(hold))
            table = table.filter(pc.invert(hold))
        if self.parquet is not None:
            self.parquet.write(table)
        # A copy: sliced from the worker's IPC message, the key columns would keep the whole
        # message (image bytes and thumbnails) alive until the commit, ~5 KB per small file.
        self._keys.append(table.select(self._key_columns).take(pa.array(np.arange(table.num_rows))))

    def _concat(self, parts: list[pa.Table], columns: Sequence[str] | None = None) -> pa.Table:
        table = pa.concat_tables(parts) if parts else self.schema.empty_table()
        return table.select(list(columns)) if columns is not None else table

    def keys(self, columns: Sequence[str] = ("uri",)) -> pa.Table:
        return self._concat(self._keys, columns)

    def held(self) -> pa.Table:
        return self._concat(self._held)

    def rejects(self) -> pa.Table:
        return self._concat(self._rejects)

    def files(self) -> list[str]:
        """The finished Parquet files of the output rows."""
        return self.parquet.finish() if self.parquet is not None else []

    def discard(self) -> None:
        if self.parquet is not None:
            self.parquet.discard()
