"""Huge images on the Spark engine: one image split across Spark tasks by tile-row ranges gives
exactly the embedded engine's tiles (the same `tile_images`), committed to the tiles table in
one replaceWhere commit."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import tifffile

from lakeimg import Lake
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.jobs.tiling import commit_tiles, tile_images
from lakeimg.kernels.ingest import ingest_result_schema
from lakeimg.kernels.tiles import TILES_PER_ROW_GROUP, TileOptions
from lakeimg.storage import to_uri

pytestmark = pytest.mark.spark

COLS = ["uri", "page", "level", "tile_row", "tile_col", "x", "y", "width", "height", "dtype", "encoding", "data"]


def _row(path: str, arr: np.ndarray) -> dict:
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    row = {"uri": to_uri(path), "content_sha256": sha, "height": arr.shape[0], "width": arr.shape[1], "pages": 1, "mode": "RGB",
           "tiled": True, "outcome": "image"}
    return pa.Table.from_pylist([row], schema=ingest_result_schema())


def test_one_huge_image_split_across_spark_tasks(spark, tmp_path):
    from lakeimg.engine.spark import SparkEngine

    src = tmp_path / "src"
    src.mkdir()
    arr = np.random.default_rng(6).integers(0, 255, (1500, 700, 3), dtype=np.uint8)
    path = str(src / "tall.tif")
    tifffile.imwrite(path, arr, tile=(128, 128))

    # The embedded engine's tiles of the same file are the reference.
    reference = Lake(tmp_path / "local")
    reference.ingest([str(src)], workers=0, tile_above_pixels=10_000, tile_size=128)
    expected = reference.read("images_tiles", columns=COLS).sort_by([(c, "ascending") for c in COLS[1:5]])

    lake = str(tmp_path / "lake")
    engine = SparkEngine(lake, spark)
    options = TileOptions(tile_size=128, rows_per_task=2, run_id="r1")
    tiling = tile_images(engine, _row(path, arr), options)
    try:
        assert tiling.rejects.num_rows == 0 and tiling.tiled_uris == [to_uri(path)]
        assert tiling.image_rows["thumbnail"][0].as_py()[:2] == b"\xff\xd8"
        # 12 level-0 tile rows in shares of 2: six share tasks on the executors, each its own
        # Parquet file, then one top task
        assert len(tiling.files) == 7 and all(os.path.getsize(p) > 1000 for p in tiling.files)
        result = commit_tiles(engine, "images", tiling, metadata={"run_id": "r1"})
    finally:
        tiling.cleanup()
    assert result.committed
    got = LocalEngine(lake).read("images_tiles", columns=COLS).sort_by([(c, "ascending") for c in COLS[1:5]])
    assert got.num_rows == expected.num_rows > 12 and got.equals(expected)
    local = LocalEngine(lake)  # the same row-group layout as the embedded engine's
    groups = [m.row_group(g).num_rows for m in (local.parquet_file(p).metadata for p in local.data_files("images_tiles"))
              for g in range(m.num_row_groups)]
    assert max(groups) == TILES_PER_ROW_GROUP

    # A changed image replaces all of its tiles (a smaller grid leaves no stale ones) in one commit.
    small = arr[:300, :200].copy()
    tifffile.imwrite(path, small, tile=(128, 128))
    before = engine.version("images_tiles")
    again = tile_images(engine, _row(path, small), options)
    try:
        commit_tiles(engine, "images", again, replace_uris={to_uri(path)})
    finally:
        again.cleanup()
    assert engine.version("images_tiles") == before + 1
    levels = LocalEngine(lake).read("images_tiles", columns=["level", "width", "height"])
    assert levels.num_rows == 3 * 2 + 2 + 1  # 300x200 -> 150x100 -> 75x50 with 128-pixel tiles
    assert pc.max(levels["level"]).as_py() == 2
