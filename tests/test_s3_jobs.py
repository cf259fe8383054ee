"""Jobs on S3 sources and S3 lakes beyond ingest itself, against moto's real S3 server on
loopback (fixture `s3_server`): huge source objects tiled by ranged reads, transform and
reproduce of content read from the source object, verify / export / region reads, and the
cleanup of objects a killed run uploaded but never committed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import tifffile
from object_stores import ROOT, jpeg
from PIL import Image

from lakeimg import Lake
from lakeimg.engine._delta_txn import ABANDONED_AFTER_S, remove_abandoned_uploads


def _tiff(arr: np.ndarray, **kwargs) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, arr, **kwargs)
    return out.getvalue()


def _keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def s3_sources(s3_server):
    """A source bucket: a tiled 16-bit TIFF slide and a strip TIFF (both tile above 100,000
    pixels), a PNG above the inline limit, and three small JPEGs."""
    bucket = s3_server.new_bucket("src")
    client = s3_server.client()
    rng = np.random.default_rng(7)
    slide = rng.integers(0, 65535, (600, 700), dtype=np.uint16)
    strips = rng.integers(0, 255, (520, 300, 3), dtype=np.uint8)
    client.put_object(Bucket=bucket, Key="scans/slide.tif", Body=_tiff(slide, tile=(256, 256)))
    client.put_object(Bucket=bucket, Key="scans/strips.tif", Body=_tiff(strips, rowsperstrip=64))
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(big, format="PNG")
    client.put_object(Bucket=bucket, Key="scans/big.png", Body=big.getvalue())
    for j in range(3):
        client.put_object(Bucket=bucket, Key=f"scans/small{j}.jpg", Body=jpeg(j))
    return {"bucket": bucket, "slide": slide, "strips": strips, "png": big.getvalue()}


def test_huge_s3_sources_are_tiled_from_ranged_reads(s3_server, s3_sources):
    bucket = s3_sources["bucket"]
    lake = Lake(f"s3://{s3_server.new_bucket()}/lake", storage_options=s3_server.storage_options)
    summary = lake.ingest([f"s3://{bucket}/scans/*.tif"], workers=2, tile_above_pixels=100_000, tile_size=128,
                          tile_rows_per_task=2)
    assert (summary.added, summary.rejected) == (2, 0)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images", columns=["uri", "tiled", "content"]).to_pylist()}
    assert rows["slide.tif"]["tiled"] and rows["strips.tif"]["tiled"]
    assert rows["slide.tif"]["content"] is None
    window = lake.read_region("images", f"s3://{bucket}/scans/slide.tif", 100, 150, 400, 300)
    assert np.array_equal(window[..., 0], s3_sources["slide"][150:450, 100:500])
    window = lake.read_region("images", f"s3://{bucket}/scans/strips.tif", 30, 100, 200, 350)
    assert np.array_equal(window, s3_sources["strips"][100:450, 30:230])


def test_content_read_from_s3_sources_with_the_lakes_options_only(s3_server, s3_sources, tmp_path, monkeypatch):
    # The store's settings live in the lake's options only: nothing in the environment reaches it.
    for key in list(os.environ):
        if key.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(key)
    bucket = s3_sources["bucket"]
    out_bucket = s3_server.new_bucket("out")
    lake = Lake(f"s3://{s3_server.new_bucket()}/lake", storage_options=s3_server.storage_options)
    summary = lake.ingest([f"s3://{bucket}/scans/*.jpg", f"s3://{bucket}/scans/*.png"], workers=2, inline_max_bytes=100,
                           tile_above_pixels=0)  # tiling off: large files stay rows read from their source
    assert (summary.added, summary.rejected) == (4, 0)
    rows = lake.read("images", columns=["uri", "content", "tiled", "content_sha256"]).to_pylist()
    assert all(r["content"] is None and not r["tiled"] for r in rows)  # every row reads from its source object
    png_uri = f"s3://{bucket}/scans/big.png"
    png = np.asarray(Image.open(io.BytesIO(s3_sources["png"])))

    small = lake.transform("images", "small", {"ops": [{"op": "resize", "width": 16, "height": 12}]}, workers=2)
    assert (small.added, small.rejected) == (4, 0)
    for ref in (("images", summary.version), ("small", small.version)):
        result = lake.reproduce(*ref, workers=0)
        assert result.identical and result.rows == 4, result.differences

    report = lake.verify("images")
    assert report.ok and report.files_checked >= 1 and report.rows_not_inline == 4
    assert lake.verify("small").ok

    assert np.array_equal(lake.read_region("images", png_uri, 10, 20, 50, 40), png[20:60, 10:60])

    local = lake.export("images", tmp_path / "out", format="png")
    assert (local["written"], local["failed"]) == (4, 0)
    exported = {p.name: p for p in (tmp_path / "out").glob("*.png")}  # and metadata.csv
    assert len(exported) == 4
    assert any(np.array_equal(np.asarray(Image.open(p)), png) for p in exported.values())
    remote = lake.export("small", f"s3://{out_bucket}/exports/small", format="png")
    assert (remote["written"], remote["failed"]) == (4, 0)
    keys = [k for k in _keys(s3_server, out_bucket) if k != "exports/small/metadata.csv"]  # metadata.csv too
    assert len(keys) == 4 and all(k.startswith("exports/small/") and k.endswith(".png") for k in keys)
    assert "exports/small/metadata.csv" in _keys(s3_server, out_bucket)

    # A source object that changed after ingest is never exported or read as the ingested image.
    s3_server.client().put_object(Bucket=bucket, Key="scans/big.png", Body=jpeg(77))
    again = lake.export("images", tmp_path / "out2", format="png")
    assert (again["written"], again["failed"]) == (3, 1)
    changed = lake.reproduce("images", summary.version)
    assert [(d["uri"], d["reason"]) for d in changed.differences] == [(png_uri, "source_changed")]


# Runs the CLI with a SIGKILL at one point of the commit of staged files: right after the first
# object is uploaded (before any commit lands), or right after a commit landed (before its
# manifest is removed). Fault injection only: storage and Delta stay real.
_KILL_RUNNER = """
import os, signal, sys
from lakeimg.engine.staged import StagedParquet
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "upload":
    real = StagedParquet._close_file
    def close_file(self):
        real(self)
        if self.placed:
            die()
    StagedParquet._close_file = close_file
else:
    StagedParquet.handed_over = die
from lakeimg.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _manifests(s3_server, bucket: str) -> list[str]:
    # pyarrow leaves an empty "folder/" marker when a folder's last object goes: not a manifest
    return [k for k in _keys(s3_server, bucket, "lake/_lakeimg/uploads/") if k.endswith(".json")]


def _parquet_keys(s3_server, bucket: str, prefix: str) -> set[str]:
    return {k for k in _keys(s3_server, bucket, prefix) if k.endswith(".parquet")}


@pytest.mark.parametrize("point", ["upload", "commit"])
def test_the_next_run_deletes_what_a_killed_run_uploaded_but_never_committed(s3_server, tmp_path, point):
    bucket = s3_server.new_bucket()
    lake_url = f"s3://{bucket}/lake"
    src = tmp_path / "src"
    src.mkdir()
    for j in range(3):
        (src / f"a{j}.jpg").write_bytes(jpeg(j))
    env = {**os.environ, **s3_server.env, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", lake_url, "--workers", "0"],
                           env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    for j in range(3, 8):
        (src / f"a{j}.jpg").write_bytes(jpeg(j))
    killed = subprocess.run([sys.executable, "-c", _KILL_RUNNER, point, "ingest", str(src), "--lake", lake_url,
                             "--workers", "0"], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    referenced = {f.split("/", 3)[-1] for f in lake._local.data_files("images")}
    assert len(_manifests(s3_server, bucket)) == 1
    if point == "upload":  # an object of a commit that never landed is in the bucket
        assert _parquet_keys(s3_server, bucket, "lake/images/") - referenced
        assert len(lake.read("images", columns=["uri"])) == 3
    else:  # the commit landed: its objects are the table's
        assert _parquet_keys(s3_server, bucket, "lake/images/") == referenced

    done = subprocess.run([sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", lake_url, "--workers", "0"],
                          env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(lake.read("images", columns=["uri"])["uri"].to_pylist()) == sorted(p.as_uri() for p in src.iterdir())
    referenced = {f.split("/", 3)[-1] for f in lake._local.data_files("images")}
    assert _parquet_keys(s3_server, bucket, "lake/images/") == referenced  # exactly the referenced objects
    assert _manifests(s3_server, bucket) == []


def test_uploads_of_a_writer_that_may_still_commit_are_never_deleted(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(1))
    lake = Lake(f"s3://{bucket}/lake", storage_options=s3_server.storage_options)
    lake.ingest([str(src)], workers=0)
    client = s3_server.client()
    mine, foreign = uuid.uuid4().hex, uuid.uuid4().hex
    writers = {mine: {"host": socket.gethostname(), "pid": os.getpid()},  # alive: this process
               foreign: {"host": "another-host.example", "pid": 1}}  # another host: only its age tells
    for token, writer in writers.items():
        client.put_object(Bucket=bucket, Key=f"lake/images/part-{token}-0.parquet", Body=b"not yet committed")
        manifest = {"table": "images", "token": token, "after_version": lake.version("images"), **writer}
        client.put_object(Bucket=bucket, Key=f"lake/_lakeimg/uploads/{token}.json", Body=json.dumps(manifest).encode())
    (src / "b.jpg").write_bytes(jpeg(2))
    assert lake.ingest([str(src)], workers=0).added == 1  # the next run leaves both alone
    keys = _keys(s3_server, bucket, "lake/")
    for token in writers:
        assert f"lake/images/part-{token}-0.parquet" in keys and f"lake/_lakeimg/uploads/{token}.json" in keys
    # A day later the other host's writer is taken as gone; this process is still alive.
    removed = remove_abandoned_uploads(lake._local, now=time.time() + ABANDONED_AFTER_S + 60)
    assert removed == [f"s3://{bucket}/lake/images/part-{foreign}-0.parquet"]
    keys = _keys(s3_server, bucket, "lake/")
    assert f"lake/images/part-{mine}-0.parquet" in keys and f"lake/_lakeimg/uploads/{foreign}.json" not in keys
    assert len(lake.read("images", columns=["uri"])) == 2


def test_staged_rows_are_written_under_their_final_names_and_a_vanished_one_fails_the_commit(s3_server):
    import pyarrow as pa
    from test_staged_commit import CONTRACT, rows

    from lakeimg.engine._delta_txn import begin_placement
    from lakeimg.engine.base import Write
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.engine.staged import LocalStaged
    from lakeimg.errors import LakeImgError

    bucket = s3_server.new_bucket()
    engine = LocalEngine(f"s3://{bucket}/lake", storage_options=s3_server.storage_options)
    engine.append("t", rows(["a", "b"], "v1"), CONTRACT)
    table_objects = _parquet_keys(s3_server, bucket, "lake/t/")

    def stage(uris: list[str]) -> tuple[LocalStaged, set[str]]:
        before = _parquet_keys(s3_server, bucket, "lake/t/")
        staged = LocalStaged("unused-local-folder", CONTRACT, CONTRACT.arrow_schema, placement=begin_placement(engine, "t"))
        staged.parquet.write(rows(uris, "v2"))  # as output rows (add() would sort these out as rejects)
        staged.files()  # closed: the object is in the table's folder before any commit
        return staged, _parquet_keys(s3_server, bucket, "lake/t/") - before

    staged, placed = stage(["b", "c"])
    assert len(placed) == 1 and len(_manifests(s3_server, bucket)) == 1
    result = engine.commit(Write("t", CONTRACT, staged=staged, replace=frozenset({"b", "c"})))
    staged.discard()  # after a commit: the table's objects stay
    assert result.committed and placed <= _parquet_keys(s3_server, bucket, "lake/t/")
    assert sorted(zip(*engine.read("t", columns=["uri", "error_message"]).to_pydict().values(), strict=True)) == [
        ("a", "v1"), ("b", "v2"), ("c", "v2")]
    names = {k.rsplit("/", 1)[-1] for k in placed}
    added = [a for a in pa.table(engine._delta_table("t").get_add_actions(flatten=True)).to_pylist() if a["path"] in names]
    assert [(a["num_records"], a["min.uri"], a["max.uri"]) for a in added] == [(2, "b", "c")]  # statistics written as it went
    assert _manifests(s3_server, bucket) == []
    table_objects = _parquet_keys(s3_server, bucket, "lake/t/")

    lost, lost_keys = stage(["a", "d"])
    for key in lost_keys:
        s3_server.client().delete_object(Bucket=bucket, Key=key)
    with pytest.raises(LakeImgError, match="vanished before the commit"):
        engine.commit(Write("t", CONTRACT, staged=lost, replace=frozenset({"a", "d"})))
    lost.discard()
    assert engine.version("t") == result.version and _manifests(s3_server, bucket) == []

    dropped, _ = stage(["e"])  # a failed run: its objects and manifest go, the table is as it was
    dropped.discard()
    assert _parquet_keys(s3_server, bucket, "lake/t/") == table_objects and _manifests(s3_server, bucket) == []
