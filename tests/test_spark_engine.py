"""The Spark engine on the shared local[2] session: session setup, SparkEngine, ingest."""

from __future__ import annotations

import datetime as dt
import json
import time

import pyarrow as pa
import pytest

from lakeimg.engine import open_engine
from lakeimg.engine.base import Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import TableNotFoundError
from lakeimg.schemas import table_contract

pytestmark = pytest.mark.spark


def _reject_rows(uris: list[str], error_class: str = "corrupt") -> pa.Table:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    return pa.Table.from_pylist(
        [
            {"uri": u, "size_bytes": 10, "modified_at": now, "content_sha256": None, "error_class": error_class,
             "error_message": "bad", "run_id": "r", "rejected_at": now}
            for u in uris
        ],
        schema=table_contract("rejects").arrow_schema,
    )


def test_session_has_delta(spark, tmp_path):
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    path = str(tmp_path / "t")
    spark.range(5).write.format("delta").save(path)
    from delta.tables import DeltaTable

    assert DeltaTable.isDeltaTable(spark, path)
    assert spark.read.format("delta").load(path).count() == 5


def test_engine_surface(spark, tmp_path):
    eng = open_engine(tmp_path / "lake", "spark", spark=spark)
    contract = table_contract("rejects")
    assert eng.version("r") is None and not eng.exists("r")
    with pytest.raises(TableNotFoundError):
        eng.read("r")

    meta = {"run_id": "run-1", "job": "test"}
    assert eng.create_empty("r", contract, meta) == 0
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, eng.location("r")).detail().first()
    assert (detail["minReaderVersion"], detail["minWriterVersion"]) == (1, 4)
    props = eng.table_properties("r")
    assert props["delta.enableChangeDataFeed"] == "true" and props["delta.enableDeletionVectors"] == "false"
    # The contract's NOT NULL columns stay NOT NULL (delta-rs creates them the same way).
    schema = spark.read.format("delta").load(eng.location("r")).schema
    assert not schema["uri"].nullable and schema["content_sha256"].nullable

    first = eng.commit(Write("r", contract, rows=_reject_rows(["a", "b", "c"]), metadata={"run_id": "run-2"}))
    assert (first.version, first.committed) == (1, True)
    time.sleep(1.1)  # commit timestamps have millisecond resolution; keep versions apart
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.1)
    # Replace by key: "c" replaced, "d" inserted, "a" deleted, in one commit.
    second = eng.commit(Write("r", contract, rows=_reject_rows(["c", "d"], "truncated"), replace=frozenset({"a"}), metadata={"run_id": "run-3"}))
    assert (second.version, second.committed) == (2, True)
    # Nothing to do: no commit.
    nothing = eng.commit(Write("r", contract, rows=_reject_rows([])))
    assert (nothing.version, nothing.committed) == (2, False)

    latest = eng.read("r")
    assert sorted(latest["uri"].to_pylist()) == ["b", "c", "d"]
    assert latest.schema.field("rejected_at").type == pa.timestamp("us", tz="UTC")
    assert dict(zip(latest["uri"].to_pylist(), latest["error_class"].to_pylist(), strict=True))["c"] == "truncated"
    assert sorted(eng.read("r", version=1, columns=["uri"])["uri"].to_pylist()) == ["a", "b", "c"]
    assert eng.read("r", version=0).num_rows == 0
    assert sorted(eng.read("r", version=between)["uri"].to_pylist()) == ["a", "b", "c"]
    assert sorted(eng.read("r", version=between.isoformat())["uri"].to_pylist()) == ["a", "b", "c"]
    with pytest.raises(TableNotFoundError):
        eng.read("r", version=7)

    history = eng.history("r")
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["lakeimg"]["run_id"] for h in history] == ["run-3", "run-2", "run-1"]
    assert history[0]["operation"] == "WRITE"  # replaceWhere
    # The session setting is unset after each commit: a plain write carries no run record.
    plain = str(tmp_path / "plain")
    spark.range(1).write.format("delta").save(plain)
    from delta.tables import DeltaTable

    assert DeltaTable.forPath(spark, plain).history().first()["userMetadata"] is None

    # delta-rs sees the same history and metadata.
    local = LocalEngine(eng.lake)
    assert json.loads(local.history("r")[0]["userMetadata"])["run_id"] == "run-3"

    version = eng.append("runs", _reject_rows(["x"]), contract, {"run_id": "run-4"})
    assert eng.read("runs")["uri"].to_pylist() == ["x"] and version == 1


def test_ingest_on_spark_and_noop_rerun(spark, tmp_path):
    from lakeimg import Lake
    from lakeimg.samples import write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src / "cats", 3, width=64, height=48)
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.jpg").write_bytes(b"not a jpeg\n" * 10)
    lake = Lake(tmp_path / "lake", engine="spark", spark=spark)

    first = lake.ingest([str(src)], label_from_path="parent")
    assert (first.added, first.updated, first.unchanged, first.rejected) == (3, 0, 0, 2)
    images = lake.read("images")  # read back through delta-rs
    assert sorted(images["label"].to_pylist()) == ["batch000"] * 3
    assert set(images["width"].to_pylist()) == {64} and set(images["format"].to_pylist()) == {"JPEG"}
    rejects = lake.read("images_rejects")
    assert sorted(zip(rejects["uri"].to_pylist(), rejects["error_class"].to_pylist(), strict=True)) == [
        ((src / "empty.jpg").as_uri(), "empty"),
        ((src / "notes.jpg").as_uri(), "unsupported_format"),
    ]
    runs = lake.read("_lakeimg/runs")
    assert runs["engine"].to_pylist() == ["spark"] and runs["status"].to_pylist() == ["succeeded"]
    assert dict(runs["counts"][0].as_py()) == {"added": 3, "updated": 0, "unchanged": 0, "deleted": 0, "rejected": 2}
    record = lake.history("images")[0]["lakeimg"]
    assert record["run_id"] == first.run_id and record["engine"] == "spark"
    # Staging is cleaned up.
    assert not any((tmp_path / "lake" / "_lakeimg" / "staging").glob("*"))

    versions = (lake.version("images"), lake.version("images_rejects"))
    again = lake.ingest([str(src)], label_from_path="parent")
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 5, 0)
    assert (lake.version("images"), lake.version("images_rejects")) == versions
    assert lake.read("_lakeimg/runs").num_rows == 2


def test_spark_ingest_tiles_huge_files_like_the_embedded_engine(spark, tmp_path):
    import numpy as np
    import tifffile

    from lakeimg.jobs.ingest import ingest_files

    src = tmp_path / "src"
    src.mkdir()
    arr = np.random.default_rng(4).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(src / "big.tif", arr, tile=(128, 128))
    options = dict(tile_above_pixels=10_000, tile_size=128)
    ingest_files(str(tmp_path / "L"), [str(src)], workers=0, **options)
    spark_engine = open_engine(tmp_path / "P", "spark", spark=spark)
    summary = ingest_files(str(tmp_path / "P"), [str(src)], engine=spark_engine, **options)
    assert (summary.added, summary.rejected) == (1, 0)

    local_l, local_p = LocalEngine(str(tmp_path / "L")), LocalEngine(str(tmp_path / "P"))
    drop = ["run_id", "ingested_at"]
    assert local_p.read("images").drop_columns(drop).equals(local_l.read("images").drop_columns(drop))
    cols = ["uri", "page", "level", "tile_row", "tile_col", "width", "height", "encoding", "data"]
    order = [(c, "ascending") for c in cols[:5]]
    tiles_p = local_p.read("images_tiles", columns=cols).sort_by(order)
    assert tiles_p.num_rows > 4 and tiles_p.equals(local_l.read("images_tiles", columns=cols).sort_by(order))
    runs = local_p.read("_lakeimg/runs").to_pylist()[0]
    assert {o["table"] for o in runs["outputs"]} == {"images", "images_rejects", "images_tiles"}


def test_crashing_and_hanging_decoders_become_rejects_on_spark(spark, tmp_path):
    """A decoder that kills or hangs its process costs one reject row on Spark too, not the job."""
    from pathlib import Path

    from PIL import Image

    from lakeimg import Lake
    from lakeimg.samples import photo_like

    # The executors' Python workers import the misbehaving readers from Spark's files folder.
    spark.sparkContext.addPyFile(str(Path(__file__).with_name("lakeimg_test_codecs.py")))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(32, 48, seed=i)).save(src / f"good{i}.png")
    for name in ("a.crash", "b.sleep", "c.stuck"):
        (src / name).write_bytes(b"payload " + name.encode())
    lake = Lake(tmp_path / "lake", engine="spark", spark=spark)
    summary = lake.ingest(
        [str(src)],
        file_timeout_s=1,
        codecs=("lakeimg_test_codecs:CRASH", "lakeimg_test_codecs:SLEEP", "lakeimg_test_codecs:STUCK"),
    )
    assert (summary.added, summary.rejected) == (3, 3)
    rejects = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images_rejects").to_pylist()}
    assert rejects["a.crash"]["error_class"] == "decoder_crash" and "died" in rejects["a.crash"]["error_message"]
    assert rejects["b.sleep"]["error_class"] == "timeout"  # the kernel's alarm, inside the child
    assert rejects["c.stuck"]["error_class"] == "timeout"  # the child was killed
    # A dead or killed child's reject carries no hash: nothing outside the child reads the file
    # (a FIFO or a stuck mount would hang it); the kernel's own timeout had read the bytes.
    assert rejects["a.crash"]["content_sha256"] is None and rejects["c.stuck"]["content_sha256"] is None
    assert rejects["b.sleep"]["content_sha256"]
    assert sorted(u.rsplit("/", 1)[-1] for u in lake.read("images", columns=["uri"])["uri"].to_pylist()) == [
        "good0.png", "good1.png", "good2.png"
    ]


def test_the_same_jobs_on_both_engines_make_equal_tables_in_one_lake(spark, tmp_path):
    """ingest_files and transform_table are written once: run on each engine into one lake,
    they make the same rows (tiles, rejects and derived tables included)."""
    import numpy as np
    import tifffile
    from PIL import Image

    from lakeimg.jobs.ingest import ingest_files
    from lakeimg.jobs.transform import transform_table
    from lakeimg.samples import photo_like

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(40, 30, seed=i)).save(src / f"p{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    tifffile.imwrite(src / "big.tif", np.random.default_rng(2).integers(0, 255, (300, 200), dtype=np.uint8), tile=(128, 128))
    lake = str(tmp_path / "lake")
    options = dict(tile_above_pixels=10_000, tile_size=128)
    spark_engine = open_engine(lake, "spark", spark=spark)
    ingest_files(lake, [str(src)], table="a", workers=0, **options)
    summary = ingest_files(lake, [str(src)], table="b", engine=spark_engine, **options)
    assert (summary.added, summary.rejected) == (4, 1)
    spec = {"ops": [{"op": "resize", "width": 16, "height": 16}, {"op": "mean_std"}]}
    transform_table(lake, "a", "ta", spec, workers=0)
    transformed = transform_table(lake, "b", "tb", spec, engine=spark_engine)
    assert (transformed.added, transformed.rejected) == (4, 0)

    local = LocalEngine(lake)
    volatile = {"run_id", "ingested_at", "rejected_at", "error_message"}

    def rows(table: str, keys: list[str]) -> pa.Table:
        data = local.read(table)
        return data.drop_columns([c for c in data.column_names if c in volatile]).sort_by([(k, "ascending") for k in keys])

    for a, b, keys in (("a", "b", ["uri"]), ("a_rejects", "b_rejects", ["uri"]),
                       ("a_tiles", "b_tiles", ["uri", "page", "level", "tile_row", "tile_col"]), ("ta", "tb", ["uri", "variant"])):
        left, right = rows(a, keys), rows(b, keys)
        assert left.num_rows > 0 and left.equals(right), (a, b)
