"""Spark parity of transform jobs: mapInArrow of the same kernel gives bit-identical `data`
(augmentation variants included), and incremental runs work the same on the Spark engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.samples import photo_like

pytestmark = pytest.mark.spark

SPEC = {
    "ops": [{"op": "resize", "width": 20, "height": 16, "fit": "cover"}, {"op": "augment", "flip": 0.5, "rotate": 10, "noise": 0.02}, {"op": "phash"}],
    "variants": 2,
    "seed": 11,
    "output": {"encoding": "png"},
}


def _four_image_lake(tmp_path: Path) -> tuple[Path, Lake]:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        Image.fromarray(photo_like(24, 32, seed=i)).save(src / f"p{i}.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    return src, lake


def test_spark_and_embedded_engines_give_bit_identical_data(tmp_path: Path, spark):
    src, lake = _four_image_lake(tmp_path)
    local = lake.transform("images", "local_t", SPEC, workers=0)
    remote = lake.transform("images", "spark_t", SPEC, engine="spark", spark=spark)
    assert (local.added, remote.added, remote.rejected) == (8, 8, 0)
    a = {(r["uri"], r["variant"]): r for r in lake.read("local_t").to_pylist()}
    b = {(r["uri"], r["variant"]): r for r in lake.read("spark_t").to_pylist()}
    assert set(a) == set(b)
    for key in a:
        assert a[key]["data"] == b[key]["data"] and a[key]["phash"] == b[key]["phash"] and a[key]["spec_hash"] == b[key]["spec_hash"]
    run = next(r for r in lake.read("_lakeimg/runs").to_pylist() if r["run_id"] == remote.run_id)
    assert run["engine"] == "spark" and run["inputs"] == [{"table": "images", "version": lake.version("images")}]

    Image.fromarray(photo_like(24, 32, seed=50)).save(src / "p0.png")  # changed
    Image.fromarray(photo_like(24, 32, seed=51)).save(src / "p9.png")  # new
    lake.ingest([str(src)], workers=0)
    again = lake.transform("images", "spark_t", SPEC, engine="spark", spark=spark)
    assert (again.mode, again.updated, again.added, again.deleted) == ("incremental", 2, 2, 0)
    assert lake.transform("images", "spark_t", SPEC, engine="spark", spark=spark).version == again.version  # no-op
    lake.transform("images", "local_t", SPEC, workers=0)
    a = {(r["uri"], r["variant"]): r["data"] for r in lake.read("local_t").to_pylist()}
    b = {(r["uri"], r["variant"]): r["data"] for r in lake.read("spark_t").to_pylist()}
    assert a == b


def test_many_changed_uris_are_read_by_a_join_and_replaced_by_a_merge_on_spark(tmp_path: Path, spark, monkeypatch):
    """Past ISIN_LIMIT uris, the Spark stage reads its snapshot rows through a join with a frame
    of them, and the commit replaces their rows with one MERGE, not a predicate of literals: the
    same rows, the same data, one commit each."""
    import lakeimg.engine.spark as spark_engine

    src, lake = _four_image_lake(tmp_path)
    monkeypatch.setattr(spark_engine, "ISIN_LIMIT", 2)
    assert lake.transform("images", "spark_t", SPEC, engine="spark", spark=spark).added == 8  # 4 uris: a join
    for i in range(3):
        Image.fromarray(photo_like(24, 32, seed=60 + i)).save(src / f"p{i}.png")
    lake.ingest([str(src)], workers=0)
    merged = lake.transform("images", "spark_t", SPEC, engine="spark", spark=spark)  # 3 uris: join and MERGE
    assert (merged.updated, merged.added, merged.deleted) == (6, 0, 0)
    assert lake.history("spark_t")[0]["operation"] == "MERGE"
    assert lake.read("spark_t").num_rows == 8  # the replaced rows are gone, not kept beside the new
    lake.transform("images", "local_t", SPEC, workers=0)
    a = {(r["uri"], r["variant"]): r["data"] for r in lake.read("local_t").to_pylist()}
    b = {(r["uri"], r["variant"]): r["data"] for r in lake.read("spark_t").to_pylist()}
    assert len(a) == 8 and a == b


def test_tiled_sources_transform_on_spark_like_the_embedded_engine(tmp_path: Path, spark):
    """A tiled (huge) source row is computed from the pyramid level the resize needs, on Spark
    too, with the same bytes as the embedded engine."""
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(src / "scan.png")
    Image.fromarray(photo_like(24, 32, seed=5)).save(src / "small.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0, tile_above_pixels=2000, tile_size=32)
    tiled = {r["uri"].rsplit("/", 1)[-1]: r["tiled"] for r in lake.read("images", columns=["uri", "tiled"]).to_pylist()}
    assert tiled == {"scan.png": True, "small.png": False}
    spec = {"ops": [{"op": "resize", "width": 15, "height": 12}], "output": {"encoding": "png"}}
    local = lake.transform("images", "local_t", spec, workers=0)
    remote = lake.transform("images", "spark_t", spec, engine="spark", spark=spark)
    assert (local.added, local.rejected, remote.added, remote.rejected) == (2, 0, 2, 0)
    a = {r["uri"]: r["data"] for r in lake.read("local_t").to_pylist()}
    b = {r["uri"]: r["data"] for r in lake.read("spark_t").to_pylist()}
    assert a == b


def test_an_op_that_crashes_costs_a_reject_on_spark_not_the_job(tmp_path: Path, spark):
    import numpy as np

    spark.sparkContext.addPyFile(str(Path(__file__).with_name("lakeimg_test_codecs.py")))
    src = tmp_path / "src"
    src.mkdir()
    red = np.zeros((8, 10, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(src / "red.png")
    for i in range(3):
        Image.fromarray(photo_like(8, 10, seed=i)).save(src / f"p{i}.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    spec = {"ops": [{"op": "crash_on_red", "impl": "lakeimg_test_codecs:CrashOnRed"}], "output": {"encoding": "png"}}
    summary = lake.transform("images", "flipped", spec, engine="spark", spark=spark)
    assert (summary.added, summary.rejected) == (3, 1)
    rejects = lake.read("flipped_rejects").to_pylist()
    assert [r["uri"].rsplit("/", 1)[-1] for r in rejects] == ["red.png"]
    assert rejects[0]["error_class"] == "decoder_crash" and "died" in rejects[0]["error_message"]
    assert sorted(u.rsplit("/", 1)[-1] for u in lake.read("flipped", columns=["uri"])["uri"].to_pylist()) == [
        "p0.png", "p1.png", "p2.png"
    ]


def test_engines_take_turns_on_one_derived_table(tmp_path: Path, spark):
    """A table whose files the embedded engine staged and moved in is read, queried and MERGEd
    by delta-spark, and the embedded engine carries on after Spark's commits."""
    src, lake = _four_image_lake(tmp_path)
    assert lake.transform("images", "mixed", SPEC, workers=0).added == 8
    location = str(tmp_path / "lake" / "mixed")
    assert spark.read.format("delta").load(location).where("variant = 1").count() == 4

    Image.fromarray(photo_like(24, 32, seed=60)).save(src / "p1.png")  # changed
    lake.ingest([str(src)], workers=0)
    on_spark = lake.transform("images", "mixed", SPEC, engine="spark", spark=spark)
    assert (on_spark.mode, on_spark.updated, on_spark.added, on_spark.unchanged) == ("incremental", 2, 0, 6)

    (src / "p2.png").unlink()  # deleted
    Image.fromarray(photo_like(24, 32, seed=61)).save(src / "p7.png")  # new
    lake.ingest([str(src)], workers=0, sync_deletes=True)
    local = lake.transform("images", "mixed", SPEC, workers=0)
    assert (local.mode, local.added, local.deleted, local.unchanged) == ("incremental", 2, 2, 6)
    assert lake.transform("images", "reference", SPEC, workers=0).added == 8
    mixed = {(r["uri"], r["variant"]): r["data"] for r in lake.read("mixed").to_pylist()}
    reference = {(r["uri"], r["variant"]): r["data"] for r in lake.read("reference").to_pylist()}
    assert mixed == reference
    assert spark.read.format("delta").load(location).count() == 8
