"""`lakeimg serve` on an S3 lake (moto's real S3 server on loopback, fixture `s3_server`): the
tables page, a grid and deep-zoom tiles read from the tiles table's objects, over plain HTTP
against the CLI's server (no browser: tests/test_serve.py drives Chromium on a local lake).
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tifffile
from object_stores import ROOT, free_port, running_server, write_photos
from PIL import Image

from lakeimg import Lake

pytest.importorskip("starlette")


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def test_serve_an_s3_lake_tables_grid_and_zoom_tiles(s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a lake URL must never become a local folder named "s3:"
    photos = write_photos(tmp_path / "photos")
    slide = np.random.default_rng(16).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    tifffile.imwrite(photos / "dogs" / "slide.tif", slide, tile=(128, 128))
    lake_url = f"s3://{s3_server.new_bucket()}/lake"
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    summary = lake.ingest([str(photos)], workers=0, tile_above_pixels=100_000, tile_size=256)
    assert (summary.added, summary.rejected) == (7, 1)
    slide_uri = (photos / "dogs" / "slide.tif").as_uri()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", lake_url, "--port", str(port)]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT), env={**os.environ, **s3_server.env}):
        status, page = _get(base + "/")
        assert status == 200
        for table, rows in (("images", 7), ("images_rejects", 1)):
            assert f'<tr data-table="{table}">'.encode() in page
            row = page.split(f'<tr data-table="{table}">'.encode(), 1)[1].split(b"</tr>", 1)[0]
            assert f'<td class="rows">{rows}</td>'.encode() in row
        assert b'<tr data-table="images_tiles">' in page

        status, grid = _get(base + "/table/images")
        assert status == 200 and grid.count(b'<figure class="cell">') == 7
        assert b"broken.jpg" in grid and b"slide.tif" in grid  # the reject is listed under the grid

        query = urllib.parse.urlencode({"uri": slide_uri})
        status, body = _get(f"{base}/api/zoom/images?{query}")
        info = json.loads(body)
        assert status == 200 and info["tiled"] and (info["width"], info["height"], info["levels"]) == (700, 600, 3)
        version = info["version"]
        for level, col, row, (x, y, w, h) in ((0, 1, 1, (256, 256, 256, 256)), (0, 2, 2, (512, 512, 188, 88)),
                                              (1, 1, 0, (256, 0, 94, 256)), (2, 0, 0, (0, 0, 175, 150))):
            status, png = _get(f"{base}/zoom/images/{version}/{level}/{col}_{row}.png?{query}")
            assert status == 200
            pixels = np.asarray(Image.open(io.BytesIO(png)))
            expected = lake.read_region("images", slide_uri, x, y, w, h, level=level)
            assert pixels.shape == expected.shape and np.array_equal(pixels, expected)
        assert np.array_equal(lake.read_region("images", slide_uri, 256, 256, 256, 256), slide[256:512, 256:512])
