"""Deep zoom of a generated 20,000 x 20,000 BigTIFF in headless Chromium: the viewer, at level 0
(and level 3) at a known spot, shows exactly `Lake.read_region`'s pixels for that window.

Slow (about half a minute on 2 cores, most of it the ingest that tiles the image).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from cli_runs import ROOT

from lakeimg.lake import Lake
from lakeimg.samples import pattern_tile, write_tiled_bigtiff
from tests.browser import canvas_rgb, chromium, screenshot, wait_for_viewer
from tests.object_stores import free_port, running_server

pytest.importorskip("starlette")
pytest.importorskip("selenium")

SIZE = 20_000


@pytest.mark.slow
def test_deep_zoom_of_a_gigapixel_image_shows_read_region_pixels(tmp_path):
    import urllib.parse

    src = tmp_path / "src"
    src.mkdir()
    write_tiled_bigtiff(src / "huge.tif", SIZE)
    lake = Lake(tmp_path / "lake")
    summary = lake.ingest(str(src), workers=2)
    assert summary.added == 1
    uri = lake.read("images", columns=["uri"])["uri"][0].as_py()
    row = lake.read("images", columns=["tiled", "levels", "tile_size"]).to_pylist()[0]
    assert row["tiled"] and row["tile_size"] == 512

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", lake.path, "--port", str(port)]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT)), chromium() as browser:
        browser.get(base + "/image/images?" + urllib.parse.urlencode({"uri": uri}))
        wait_for_viewer(browser)
        screenshot(browser, "deep-zoom-gigapixel-fit")
        assert browser.execute_script("return window.lakeimgViewer.info()")["levels"] == row["levels"]

        x, y, w, h = 20 * 512 - 150, 14 * 512 - 100, 300, 200  # four tiles meet inside the window
        browser.execute_script("window.lakeimgViewer.goTo(0, arguments[0], arguments[1])", x, y)
        wait_for_viewer(browser)
        assert browser.execute_script("return document.getElementById('viewer-canvas').dataset.level") == "0"
        screenshot(browser, "deep-zoom-gigapixel-level0")
        shown = canvas_rgb(browser, w, h)
        expected = lake.read_region("images", uri, x, y, w, h)
        assert np.array_equal(shown[:, :, 0], expected[:, :, 0])
        assert np.array_equal(expected[:, :, 0], pattern_tile(y, x, h, w))  # and both are the file's pixels

        lx, ly = 1200, 900  # level 3: 2500 x 2500, a tile edge at 1536 and 1024
        browser.execute_script("window.lakeimgViewer.goTo(3, arguments[0], arguments[1])", lx * 8, ly * 8)
        wait_for_viewer(browser)
        shown = canvas_rgb(browser, 400, 200)
        assert np.array_equal(shown[:, :, 0], lake.read_region("images", uri, lx, ly, 400, 200, level=3)[:, :, 0])
