"""The embedded engine's process pool: streamed inputs spooled chunk by chunk, every row mapped
exactly once, a crashing row turned into a failure row, spool files removed; and the
engine's streamed snapshot read that feeds it."""

from __future__ import annotations

import os
import tempfile
from functools import partial

import pyarrow as pa
import pytest

from lakeimg.engine.pool import map_kernel


def doubling_kernel(batches, crash_on=None):
    """Top-level so forkserver workers can import it: x -> 2x; dies hard on `crash_on`."""
    for batch in batches:
        xs = batch["x"].to_pylist()
        if crash_on in xs:
            os._exit(9)
        yield pa.RecordBatch.from_pydict({"x": [2 * x for x in xs]})


def _pieces(sizes: list[int]):
    start = 0
    for size in sizes:
        yield pa.table({"x": pa.array(range(start, start + size), pa.int64())})
        start += size


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_of_uneven_pieces_maps_every_row_once(workers, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sizes = [1, 7, 0, 30, 3, 25]  # 66 rows: several spool files of 4 * workers tasks of 3 rows
    out = pa.Table.from_batches(list(map_kernel(doubling_kernel, _pieces(sizes), workers=workers, batch_rows=3)))
    assert sorted(out["x"].to_pylist()) == [2 * x for x in range(sum(sizes))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lakeimg-spool-")]


def test_crash_in_a_later_chunk_costs_only_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    schema = pa.schema([pa.field("x", pa.int64())])
    failures = []

    def on_failure(row, error_class, message):
        failures.append((row["x"], error_class))
        return {"x": -1}

    kernel = partial(doubling_kernel, crash_on=50)
    out = pa.Table.from_batches(
        list(map_kernel(kernel, _pieces([20, 20, 20]), workers=2, batch_rows=4, on_failure=on_failure, output_schema=schema))
    )
    assert failures == [(50, "decoder_crash")]
    assert sorted(out["x"].to_pylist()) == sorted([-1] + [2 * x for x in range(60) if x != 50])


def page_fault_kernel(batches):
    """Top-level for the workers: fresh page faults over 32 rounds of allocating three 1 MiB
    buffers and freeing them, as a decode-resize-encode does for each image."""
    import resource

    import numpy as np

    for batch in batches:
        counts = []
        for _ in batch["x"].to_pylist():
            held = [np.ones(1 << 20, np.uint8) for _ in range(3)]  # the first round's pages are new anyway
            del held
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(32):
                held = [np.ones(1 << 20, np.uint8) for _ in range(3)]
                del held
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        yield pa.RecordBatch.from_pydict({"x": counts})


def _page_faults_untuned() -> int:
    """The kernel's faults under glibc's starting thresholds (128 KiB; glibc raises them as a
    process frees large blocks, so a process's history would decide the baseline otherwise)."""
    import ctypes

    from lakeimg.engine.pool import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD

    mallopt = ctypes.CDLL(None).mallopt
    mallopt(_M_TRIM_THRESHOLD, 128 << 10)
    mallopt(_M_MMAP_THRESHOLD, 128 << 10)
    return next(page_fault_kernel(iter([pa.record_batch({"x": [1]})])))["x"][0].as_py()


def test_pool_workers_reuse_freed_memory_instead_of_faulting_it_back_in():
    # glibc (this platform) hands the freed buffers back to the kernel by default (heap trim), so
    # each round faults hundreds of pages in afresh. Workers keep freed memory (keep_freed_memory).
    out = pa.Table.from_batches(list(map_kernel(page_fault_kernel, pa.table({"x": [1, 2, 3, 4]}), workers=2, batch_rows=1)))
    assert max(out["x"].to_pylist()) < 256  # vs ~15,000 with glibc's defaults (below)
    # The same in a fresh process with glibc's starting thresholds.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as plain:
        untuned = plain.submit(_page_faults_untuned).result()
    assert untuned > 32 * 256, f"the test no longer measures what the workers avoid ({untuned} faults)"


def test_read_batches_streams_the_snapshot_like_read(lake_dir, tmp_path):
    from PIL import Image

    from lakeimg import Lake
    from lakeimg.engine.delta_rs import LocalEngine

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(9):
        Image.new("RGB", (8 + i, 8), (i * 20, 0, 0)).save(folder / f"{i}.png")
    lake = Lake(lake_dir)
    lake.ingest([str(folder)], workers=0)
    Image.new("RGB", (3, 3)).save(folder / "9.png")
    lake.ingest([str(folder)], workers=0)  # a second file in the snapshot
    engine = LocalEngine(lake_dir)
    columns = ["uri", "width", "content"]
    pieces = list(engine.read_batches("images", columns=columns, batch_rows=4))
    assert all(p.num_rows <= 4 for p in pieces) and len(pieces) >= 3
    streamed = pa.concat_tables(pieces).sort_by("uri")
    whole = engine.read("images", columns=columns).sort_by("uri")
    assert streamed.schema == whole.schema and streamed.equals(whole)
    assert streamed.num_rows == 10
