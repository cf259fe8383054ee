"""The embedded engine's staged output: a stage's rows streamed to Parquet files under the lake.

`LocalStaged` is the embedded engine's `Staged`: output rows go to `StagedParquet` files in the
table contract's schema (moved into the table by the commit, never read into memory), while
the small parts (keys, held rows, rejects) stay on the driver.

On an object-store lake there is no rename, so the files are written straight under their
final names inside the target table (`PlacedFile`) while the stage runs: the upload overlaps
the decoding instead of following it, and the Delta commit is what makes them part of the
table. Until then they are this run's to delete (`discard`), or, if the run dies, the next
run's (`_delta_txn.remove_abandoned_uploads`, through the manifest written before the first).

Example:
    >>> import tempfile
    >>> from lakeimg.schemas import table_contract
    >>> staged = StagedParquet(tempfile.mkdtemp() + "/stage", table_contract("rejects"))
    >>> staged.finish()
    []
    >>> staged.discard()
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
from lakeimg.storage import (
    delete_file,
    file_size,
    join_url,
    open_output,
    remove_prefix,
    uri_to_path,
    write_bytes,
)

__all__ = ["StagedParquet", "LocalStaged", "KEY_COLUMNS", "PlacedFile", "ColumnStats", "Placement"]

KEY_COLUMNS = ("uri", "variant")  # what `Staged.keys` serves for rows staged in a contract


class ColumnStats:
    """Delta add-action statistics of rows as they are written: numRecords, and the min, max
    and null count of every integer and string column (what a reader prunes files with).

    Example:
        >>> import pyarrow as pa
        >>> stats = ColumnStats(pa.schema([("uri", pa.string()), ("n", pa.int64()), ("b", pa.binary())]))
        >>> stats.add(pa.table({"uri": ["b", "a"], "n": [1, None], "b": [b"x", b"y"]})); stats.add(pa.table({"uri": ["c"], "n": [5], "b": [b""]}))
        >>> stats.json()
        '{"numRecords": 3, "minValues": {"uri": "a", "n": 1}, "maxValues": {"uri": "c", "n": 5}, "nullCount": {"uri": 0, "n": 1}}'
    """

    def __init__(self, schema: pa.Schema):
        self.columns = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_string(f.type)]
        self.rows = 0
        self.mins: dict[str, object] = {}
        self.maxs: dict[str, object] = {}
        self.nulls = dict.fromkeys(self.columns, 0)

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        for name in self.columns:
            col = table[name]
            self.nulls[name] += col.null_count
            if len(col) > col.null_count:
                bounds = pc.min_max(col)
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                self.mins[name] = low if name not in self.mins else min(self.mins[name], low)
                self.maxs[name] = high if name not in self.maxs else max(self.maxs[name], high)

    def json(self) -> str:
        order = [c for c in self.columns if c in self.mins]
        return json.dumps({"numRecords": self.rows, "minValues": {c: self.mins[c] for c in order},
                           "maxValues": {c: self.maxs[c] for c in order}, "nullCount": self.nulls})


@dataclass(frozen=True)
class PlacedFile:
    """A finished data file already under its final name inside a table on an object store:
    the commit adds it as it is (`url`, its `size` in bytes and Delta `stats`)."""

    url: str
    size: int
    stats: str


@dataclass(frozen=True)
class Placement:
    """Where a stage on an object-store lake writes its files: the target table's folder, the
    run's object-name prefix (`part-<token>-`, named by the manifest at `manifest`, whose
    content is `manifest_body`) and the store's settings."""

    folder: str
    prefix: str
    manifest: str
    manifest_body: bytes
    storage_options: Mapping[str, str]


def _delete_quietly(url: str, storage_options: Mapping[str, str] | None) -> None:
    with contextlib.suppress(OSError):
        delete_file(url, storage_options)


class StagedParquet:
    """Rows streamed to Parquet files in a local staging folder (path or file:// URI), in a
    table contract's schema: a job's output is written as it comes and never has to fit in
    the driver's memory.

    Rows are buffered into row groups of `row_group_bytes` or `row_group_rows` (whichever is
    reached first) and files roll over at `file_bytes` (`engine/layout.py` says why these sizes):
    the ingest kernel hands over a few rows at a time, and a row group per hand-over made
    tables of tiny images mostly Parquet metadata. With a `placement`, files are written under
    their final names in the target table instead (`PlacedFile`, see the module doc).
    """

    def __init__(self, folder: str, contract: TableContract, *, file_bytes: int = TARGET_FILE_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES, row_group_rows: int = ROW_GROUP_ROWS,
                 placement: Placement | None = None):
        self.folder, self.contract, self.placement = uri_to_path(folder), contract, placement
        self.file_bytes, self.row_group_bytes, self.row_group_rows = file_bytes, row_group_bytes, row_group_rows
        self.files: list[str] = []
        self.placed: list[PlacedFile] = []
        self._stats: ColumnStats | None = None
        self._schema = contract.arrow_schema
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._written = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self._tidying: threading.Thread | None = None

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
            place = self.placement
            if place is None:
                os.makedirs(self.folder, exist_ok=True)
                self.files.append(os.path.join(self.folder, f"part-{len(self.files):05d}.parquet"))
            else:
                # Before the object; and again for each later one: a manifest that keeps changing
                # belongs to a live writer (`_delta_txn._writer_gone`).
                write_bytes(place.manifest, place.manifest_body, place.storage_options)
                self.files.append(join_url(place.folder, f"{place.prefix}{len(self.files):05d}.parquet"))
                self._stats = ColumnStats(self._schema)
            # Page checksums let `lakeimg verify` catch damage in columns that have no hash of their own.
            self._sink = open_output(self.files[-1], place.storage_options if place else None)
            self._writer = pq.ParquetWriter(self._sink, self._schema, write_page_checksum=True,
                                            use_dictionary=dictionary_columns(self._schema))
            self._written = 0
        per_row = max(1, size // max(1, table.num_rows))
        self._writer.write_table(table, row_group_size=max(1, min(self.row_group_rows, self.row_group_bytes // per_row)))
        if self._stats is not None:
            self._stats.add(table)
        self._written += size
        if self._written >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            size = self._sink.tell()
            self._sink.close()  # on an object store: the upload's last part, then the object exists
            self._writer = self._sink = None
            if self._stats is not None:
                self.placed.append(PlacedFile(self.files[-1], size, self._stats.json()))
                self._stats = None

    def finish(self) -> list[str] | list[PlacedFile]:
        """Write what is buffered and close the open file; the finished files, in write order
        (`PlacedFile`s with a placement)."""
        self._flush()
        self._close_file()
        return list(self.placed) if self.placement is not None else list(self.files)

    def missing(self) -> list[str]:
        """Placed files that are not (or no longer) on the store, checked a few at a time: the
        commit refuses to add a file that is gone."""
        options = self.placement.storage_options if self.placement else None

        def gone(url: str) -> bool:
            try:
                file_size(url, options)
            except FileNotFoundError:
                return True
            return False

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(self.placed)))) as pool:
            return [p.url for p, lost in zip(self.placed, pool.map(gone, [p.url for p in self.placed]), strict=True) if lost]

    def handed_over(self) -> None:
        """The placed files were committed: they are the table's now, and the manifest goes.

        Only tidying (a manifest this process leaves behind is removed by the next run's
        cleanup), so its requests run in a thread while the job goes on; `discard` waits for it."""
        written, self.files, self.placed = bool(self.files), [], []
        if self.placement is not None and written:
            self._tidying = threading.Thread(target=_delete_quietly, name="lakeimg-manifest",
                                             args=(self.placement.manifest, self.placement.storage_options))
            self._tidying.start()

    def discard(self) -> None:
        """Remove the staging folder and what is left in it (after the commit, or a failure),
        then its parents while they are empty, up to the lake's `_lakeimg` folder. Placed files
        not handed over to a commit are deleted, then their manifest."""
        self._pending = []
        if self._tidying is not None:
            self._tidying.join()
        try:
            self._close_file()
        except OSError:
            self._writer = self._sink = None  # an upload that failed: its object never appeared
        if self.placement is not None:
            left = []
            for url in self.files:
                try:
                    delete_file(url, self.placement.storage_options)
                except FileNotFoundError:
                    pass
                except OSError:
                    left.append(url)  # the manifest stays: the next run deletes it
            if not left:
                self.handed_over()
            return
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

    def __init__(self, folder: str, contract: TableContract | None, schema: pa.Schema, held: str | None = None,
                 placement: Placement | None = None):
        self.parquet = StagedParquet(folder, contract, placement=placement) if contract is not None else None
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

    def files(self) -> list[str] | list[PlacedFile]:
        """The finished Parquet files of the output rows."""
        return self.parquet.finish() if self.parquet is not None else []

    def missing(self) -> list[str]:
        """Placed files no longer on the store (see `StagedParquet.missing`)."""
        return self.parquet.missing() if self.parquet is not None and self.parquet.placement is not None else []

    def handed_over(self) -> None:
        """A commit took the files (see `StagedParquet.handed_over`)."""
        if self.parquet is not None:
            self.parquet.handed_over()

    def discard(self) -> None:
        if self.parquet is not None:
            self.parquet.discard()
