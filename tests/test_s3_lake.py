"""What only S3 lakes are tested for on the embedded engine, against moto's real S3 server on
loopback (fixture `s3_server`): tiles stored in the lake and read back exactly, and a run killed
mid-run. What S3 and Azure share (ingest, merges, transform, SQL, training sets, concurrent
writers, storage failures, secrets) is in test_object_store_lakes.py, once per store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from object_stores import ROOT, jpeg, write_photos
from object_stores import cli as _cli

from lakeimg import Lake
from lakeimg.engine.layout import staging_root


def _keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """cats/ and dogs/ with 3 JPEGs each, one broken JPEG, and a 700 x 600 TIFF that tiles."""
    root = write_photos(tmp_path / "photos")
    big = np.random.default_rng(5).integers(0, 65535, (600, 700), dtype=np.uint16)
    tifffile.imwrite(root / "dogs" / "slide.tif", big, tile=(256, 256))
    return root


def test_local_sources_into_an_s3_lake_with_rejects_tiles_and_a_noop_rerun(s3_server, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a lake URL must never become a local folder named "s3:"
    bucket = s3_server.new_bucket()
    lake = Lake(f"s3://{bucket}/lake", storage_options=s3_server.storage_options)
    summary = lake.ingest([str(photos)], workers=2, label_from_path="parent", tile_above_pixels=100_000, tile_size=256)
    assert (summary.added, summary.rejected) == (7, 1)
    assert lake.tables() == ["images", "images_rejects", "images_tiles"]
    assert not (tmp_path / "s3:").exists()
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images", columns=["uri", "label", "tiled"]).to_pylist()}
    assert {name: r["label"] for name, r in rows.items()} == {
        **{f"cats{j}.jpg": "cats" for j in range(3)}, **{f"dogs{j}.jpg": "dogs" for j in range(3)}, "slide.tif": "dogs"}
    assert rows["slide.tif"]["tiled"] and not rows["cats0.jpg"]["tiled"]
    assert lake.read("images_rejects", columns=["uri"])["uri"].to_pylist()[0].endswith("/cats/broken.jpg")
    # Exact pixels of a window come back from the tiles on S3.
    slide = tifffile.imread(photos / "dogs" / "slide.tif")
    window = lake.read_region("images", (photos / "dogs" / "slide.tif").as_uri(), 200, 250, 300, 200)
    assert np.array_equal(window[..., 0], slide[250:450, 200:500])
    # Every table's files are objects in the bucket, under the table's prefix.
    keys = _keys(s3_server, bucket, "lake/")
    assert any(k.startswith("lake/images_tiles/part-") for k in keys)
    assert any(k.startswith("lake/images/_delta_log/") for k in keys)
    versions = {t: lake.version(t) for t in lake.tables()}
    again = lake.ingest([str(photos)], workers=2, label_from_path="parent", tile_above_pixels=100_000, tile_size=256)
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 8, 0)
    assert {t: lake.version(t) for t in lake.tables()} == versions  # no table got a new version
    # Nothing staged stays behind, locally or in the bucket.
    assert not os.path.exists(staging_root(lake.path)) or not os.listdir(staging_root(lake.path))
    referenced = {f.split("/", 3)[-1] for t in lake.tables() for f in lake._local.data_files(t)}
    assert {k for k in _keys(s3_server, bucket, "lake/") if k.endswith(".parquet") and "/_lakeimg/" not in k} == {
        k for k in referenced if "/_lakeimg/" not in k}


def test_a_run_killed_mid_run_leaves_every_table_readable_and_the_next_run_completes(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    lake_url = f"s3://{bucket}/lake"
    src = tmp_path / "src"
    src.mkdir()
    for j in range(4):
        (src / f"a{j}.jpg").write_bytes(jpeg(j))
    assert _cli("ingest", str(src), "--lake", lake_url, env=s3_server.env).returncode == 0
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    before = lake.version("images")
    for j in range(4, 40):
        (src / f"a{j}.jpg").write_bytes(jpeg(j, size=(400, 300)))
    proc = subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", lake_url, "--workers", "1"],
                            cwd=str(ROOT), env={**os.environ, **s3_server.env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = staging_root(lake_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(staging) and any(not n.endswith(".lock") for n in os.listdir(staging)):
            break  # decoding has started: its output is being staged
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Every table reads whole at its latest version (the previous one unless a commit landed).
    assert lake.version("images") >= before
    assert len(lake.read("images", columns=["uri"])) in (4, 40)
    done = _cli("ingest", str(src), "--lake", lake_url, "--json", env=s3_server.env)
    assert done.returncode == 0, done.stderr
    uris = lake.read("images", columns=["uri"])["uri"].to_pylist()
    assert sorted(uris) == sorted(p.as_uri() for p in src.iterdir()) and len(set(uris)) == 40
    assert not os.path.isdir(staging) or not [n for n in os.listdir(staging) if not n.endswith(".lock")]
    # maintain's vacuum removes any object the killed run uploaded but never committed.
    assert _cli("maintain", "--lake", lake_url, "--vacuum-hours", "0", env=s3_server.env).returncode == 0
    referenced = {f.split("/", 3)[-1] for f in lake._local.data_files("images")}
    assert {k for k in _keys(s3_server, bucket, "lake/images/") if k.endswith(".parquet")} == referenced
