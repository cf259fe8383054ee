"""Jobs on S3 sources and S3 lakes beyond ingest itself, against moto's real S3 server on
loopback (fixture `s3_server`): huge source objects tiled by ranged reads, transform and
reproduce of content read from the source object, verify / export / region reads, and the
cleanup of objects a killed run uploaded but never committed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lakeimg import Lake

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


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
        client.put_object(Bucket=bucket, Key=f"scans/small{j}.jpg", Body=_jpeg(j))
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
    exported = {p.name: p for p in (tmp_path / "out").iterdir()}
    assert len(exported) == 4
    assert any(np.array_equal(np.asarray(Image.open(p)), png) for p in exported.values())
    remote = lake.export("small", f"s3://{out_bucket}/exports/small", format="png")
    assert (remote["written"], remote["failed"]) == (4, 0)
    keys = _keys(s3_server, out_bucket)
    assert len(keys) == 4 and all(k.startswith("exports/small/") and k.endswith(".png") for k in keys)

    # A source object that changed after ingest is never exported or read as the ingested image.
    s3_server.client().put_object(Bucket=bucket, Key="scans/big.png", Body=_jpeg(77))
    again = lake.export("images", tmp_path / "out2", format="png")
    assert (again["written"], again["failed"]) == (3, 1)
    changed = lake.reproduce("images", summary.version)
    assert [(d["uri"], d["reason"]) for d in changed.differences] == [(png_uri, "source_changed")]
