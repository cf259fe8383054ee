"""Maintenance: compaction and vacuum keep every version a pinned training set or its lineage reads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_runs import run_cli
from test_catalog import SPEC_A, SPEC_B, write_pngs

from lakeimg import Lake
from lakeimg.engine.base import Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.jobs.transform import transform_table


def _read_all(ts) -> dict[str, np.ndarray]:
    return {u: im for b in ts.iter_numpy("train", batch_size=8, shuffle=False) for u, im in zip(b["uri"], b["image"], strict=True)}


def test_optimize_and_vacuum_keep_pinned_sets_and_their_lineage(tmp_path):
    src = tmp_path / "src"
    lake = Lake(tmp_path / "lake")
    for start in (0, 2, 4):  # three ingest runs: images@0..2, several small files to compact
        write_pngs(src, per_label=2, start=start)
        lake.ingest([str(src)], workers=0, label_from_path="parent")
    transform_table(lake.path, "images", "small", SPEC_A, workers=0)  # small@0
    transform_table(lake.path, "images", "small", SPEC_B, workers=0)  # small@1 (from images@2)
    pinned = lake.create_training_set("pinned", "small", 1, splits="train=1.0", seed=3)
    write_pngs(src, per_label=2, start=6)
    lake.ingest([str(src)], workers=0, label_from_path="parent")  # images@3
    transform_table(lake.path, "images", "small", SPEC_B, workers=0)  # small@2 (incremental)
    before = _read_all(pinned)
    assert len(before) == 12
    engine = LocalEngine(lake.path)
    files_before = len(engine.data_files("images"))

    report = lake.maintain(optimize=True, vacuum_hours=0)

    assert report.ok and not report.refused
    assert report.protected["small"] == [1] and 2 in report.protected["images"]
    assert report.tables["images"].optimize["files_removed"] == files_before > 1
    assert len(engine.data_files("images")) == 1
    assert report.tables["small"].vacuum["removed"] > 0
    assert report.pinned_sets_readable == {"pinned": True}
    # The pinned set reads identically, through a fresh handle (no cached pixels).
    after = _read_all(Lake(lake.path).training_set("pinned"))
    assert after.keys() == before.keys() and all(np.array_equal(after[u], before[u]) for u in before)
    # Its lineage input (images@2) is kept too, so the pinned version still reproduces.
    assert lake.reproduce("small", 1, workers=0).identical
    # Unprotected old versions were vacuumed.
    assert any(not os.path.exists(f) for f in engine.data_files("small", 0))
    assert engine.table_properties("small")["delta.enableExpiredLogCleanup"] == "false"
    # Current versions are untouched.
    assert lake.read("small").num_rows == 16


def test_maintain_cli_dry_run_changes_nothing(tmp_path):
    src = tmp_path / "src"
    lake = Lake(tmp_path / "lake")
    for start in (0, 2):
        write_pngs(src, per_label=1, start=start)
        lake.ingest([str(src)], workers=0, label_from_path="parent")
    lake.create_training_set("first", "images", 0, splits="train=1.0", seed=1)
    version = lake.version("images")
    on_disk = sorted(p for p in (tmp_path / "lake").rglob("*") if p.is_file())
    result = run_cli("maintain", "--lake", lake.path, "--vacuum-hours", "0", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tables"]["images"]["vacuum"]["dry_run"] is True
    assert report["protected"] == {"images": [0]}
    assert lake.version("images") == version
    assert sorted(p for p in (tmp_path / "lake").rglob("*") if p.is_file()) == on_disk
    text = run_cli("maintain", "--lake", lake.path, "--optimize", "--vacuum-hours", "0")
    assert text.returncode == 0 and "training set first: readable" in text.stdout
    assert lake.training_set("first").rows().num_rows == 2


@pytest.mark.spark
def test_maintenance_on_spark_compacts_and_refuses_what_it_cannot_keep(spark, tmp_path):
    """OPTIMIZE and VACUUM through delta-spark. Spark's VACUUM cannot keep chosen old versions,
    so a table whose pinned version would lose files is refused (nothing deleted, exit 7 in the
    CLI); unprotected tables are vacuumed, and the pinned set reads as before."""
    src = tmp_path / "src"
    lake = Lake(tmp_path / "lake")
    for start in (0, 2):  # images@0 and images@1: two small files to compact
        write_pngs(src, per_label=1, start=start)
        lake.ingest([str(src)], workers=0, label_from_path="parent")
    pinned = lake.create_training_set("first", "images", 0, splits="train=1.0", seed=1)
    before = _read_all(pinned)
    transform_table(lake.path, "images", "small", SPEC_A, workers=0)
    transform_table(lake.path, "images", "small", SPEC_B, workers=0)  # small@0's file is now unreferenced
    old_small = LocalEngine(lake.path).data_files("small", 0)
    images_files = set(LocalEngine(lake.path).data_files("images", 0))

    on_spark = Lake(lake.path, engine="spark", spark=spark)
    report = on_spark.maintain(optimize=True, vacuum_hours=0, tables=["images", "small"])

    assert report.tables["images"].optimize["files_removed"] == 2
    assert report.tables["images"].optimize["files_added"] == 1
    assert report.refused and "images" in report.refused[0] and "[0]" in report.refused[0]
    assert report.tables["images"].vacuum == {"refused": report.refused[0]}
    assert report.ok is False
    assert all(os.path.exists(f) for f in images_files)  # refused: nothing of images@0 deleted
    assert report.tables["small"].vacuum["removed"] >= 1
    assert not any(os.path.exists(f) for f in old_small)
    assert report.pinned_sets_readable == {"first": True}
    after = _read_all(Lake(lake.path).training_set("first"))
    assert after.keys() == before.keys() and all(np.array_equal(after[u], before[u]) for u in before)
    runs = lake.read("_lakeimg/runs").to_pylist()
    assert [r["engine"] for r in runs if r["job"] == "maintain"] == ["spark"]


@pytest.mark.parametrize("engine_name", ["local", "spark"])
def test_compaction_keeps_small_tile_row_groups(engine_name, request, tmp_path):
    """OPTIMIZE rewrites the tiles table in row groups of a few tiles (what a deep-zoom or
    region read fetches), not in delta-rs' or parquet-mr's default groups of a whole file."""
    import pyarrow.parquet as pq
    import tifffile

    from lakeimg.kernels.tiles import TILES_PER_ROW_GROUP
    from lakeimg.samples import photo_like

    src = tmp_path / "src"
    src.mkdir()
    lake = Lake(tmp_path / "lake")
    for i in range(2):  # two runs: two tiles files to compact
        tifffile.imwrite(src / f"big{i}.tif", photo_like(700, 600, seed=i), tile=(128, 128))
        lake.ingest([str(src)], workers=0, tile_above_pixels=100_000, tile_size=128)
    region = lake.read_region("images", (src / "big0.tif").as_uri(), 100, 200, 300, 200)
    engine = LocalEngine(lake.path)
    assert len(engine.data_files("images_tiles")) == 2
    on = Lake(lake.path, engine="spark", spark=request.getfixturevalue("spark")) if engine_name == "spark" else lake

    report = on.maintain(optimize=True, tables=["images_tiles"])

    assert report.tables["images_tiles"].optimize["files_removed"] == 2
    files = engine.data_files("images_tiles")
    assert len(files) == 1
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.num_rows > 3 * TILES_PER_ROW_GROUP
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= TILES_PER_ROW_GROUP
    assert np.array_equal(Lake(lake.path).read_region("images", (src / "big0.tif").as_uri(), 100, 200, 300, 200), region)


def test_appends_still_write_checkpoints_and_clean_logs_only_with_them(tmp_path):
    """lakeimg's own commits skip delta-rs' expired-log listing except when a checkpoint is due."""
    from deltalake import DeltaTable

    from lakeimg.engine._delta_txn import post_commit_hooks
    from lakeimg.schemas import table_contract

    engine = LocalEngine(tmp_path / "lake")
    contract = table_contract("rejects")
    engine.create_empty("r", contract)
    engine.set_table_properties("r", {"delta.checkpointInterval": "3"})  # version 1
    log = tmp_path / "lake" / "r" / "_delta_log"
    hooks = []
    for i in range(4):
        table = DeltaTable(str(tmp_path / "lake" / "r"))
        hooks.append((table.version() + 1, post_commit_hooks(table).cleanup_expired_logs))
        engine.commit(Write("r", contract, "append", rows=_reject_rows(contract, f"file:///x{i}.png")))
    assert engine.version("r") == 5
    # delta-rs checkpoints version v when v + 1 is a multiple of the interval; None: its default cleanup
    assert hooks == [(2, None), (3, False), (4, False), (5, None)]
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == [
        "00000000000000000002.checkpoint.parquet", "00000000000000000005.checkpoint.parquet"]


def _reject_rows(contract, uri):
    import datetime as dt

    import pyarrow as pa

    row = {f.name: None for f in contract.arrow_schema}
    row.update(uri=uri, size_bytes=1, modified_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), error_class="corrupt",
               error_message="x", run_id="r", rejected_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    return pa.Table.from_pylist([row]).select([f.name for f in contract.arrow_schema])
