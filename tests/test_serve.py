"""`lakeimg serve` in a real browser: headless Chromium (Debian's package) through Selenium
against the CLI's server on a free loopback port, plus plain HTTP checks of what must be refused.

Every page visited is saved to test-artifacts/screenshots/ (tests/browser.py).
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_runs import ROOT, run_cli
from PIL import Image

from lakeimg.errors import LakeImgError
from lakeimg.image.display import to_display_uint8
from lakeimg.lake import Lake
from lakeimg.samples import write_photo_jpegs
from tests.browser import canvas_rgb, chromium, screenshot, wait_for_viewer
from tests.object_stores import free_port, running_server

pytest.importorskip("starlette")
pytest.importorskip("selenium")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """images v0: 6 photos; images v1: 2 more photos and a tiled 16-bit TIFF; `small`: derived;
    training set `pets` on small."""
    root = tmp_path_factory.mktemp("serve")
    photos, more = root / "photos", root / "photos" / "more"
    write_photo_jpegs(photos, 6, width=96, height=64)
    lake = Lake(root / "lake")
    lake.ingest(str(photos), workers=0)
    write_photo_jpegs(more, 2, width=80, height=60)
    y, x = np.mgrid[0:500, 0:700]
    ramp = (x * 50 + y * 40 + (x * y) % 97).astype(np.uint16)  # a gradient with texture, up to 55k
    tifffile.imwrite(more / "ramp16.tif", ramp)
    lake.ingest(str(photos), workers=0, tile_above_pixels=100_000, tile_size=256)
    lake.transform("images", "small", {"ops": [{"op": "resize", "width": 32, "height": 24}]}, workers=0)
    lake.create_training_set("pets", "small", splits="train=0.5,test=0.5", seed=1)
    return lake


@pytest.fixture(scope="module")
def server(demo):
    """`lakeimg serve` (the CLI, in its own interpreter) on a free loopback port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", demo.path, "--port", str(port)]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT)):
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _get(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _thumbnails(driver) -> list[str]:
    return [e.get_attribute("title") for e in driver.find_elements("css selector", "#grid figure figcaption")]


def test_tables_page_lists_tables_with_rows_and_versions(server, browser, demo):
    browser.get(server + "/")
    screenshot(browser, "tables")
    rows = {r.get_attribute("data-table"): r for r in browser.find_elements("css selector", "table.tables tbody tr")}
    assert {"images", "images_rejects", "small"} <= set(rows)
    assert rows["images"].find_element("css selector", "td.rows").text == "9"
    assert rows["images"].find_element("css selector", "td.version").text == str(demo.version("images"))


def test_grid_shows_a_thumbnail_per_row_and_an_older_version_changes_it(server, browser, demo):
    browser.get(server + "/table/images")
    screenshot(browser, "grid-latest")
    latest = _thumbnails(browser)
    assert len(browser.find_elements("css selector", "#grid img.thumb")) == 9 == len(latest)
    picker = browser.find_element("id", "at")
    picker.clear()
    picker.send_keys("0")
    browser.find_element("id", "at-go").click()
    screenshot(browser, "grid-version-0")
    assert browser.find_element("id", "grid-version").text == "0"
    older = _thumbnails(browser)
    assert len(browser.find_elements("css selector", "#grid img.thumb")) == 6 == len(older)
    assert set(older) < set(latest)
    # the version follows the user: the image page opened from the old grid is at version 0
    browser.find_element("css selector", "#grid figure a").click()
    assert "@0" in browser.find_element("tag name", "h1").text


def test_grid_of_a_derived_table_renders_its_data(server, browser, demo):
    browser.get(server + "/table/small")
    screenshot(browser, "grid-derived")
    assert len(browser.find_elements("css selector", "#grid img.thumb")) == demo.read("small", columns=["uri"]).num_rows == 9


def test_where_box_filters_and_sorts(server, browser):
    browser.get(server + "/table/images?" + urllib.parse.urlencode({"where": "width < 90", "sort": "width", "desc": "1"}))
    screenshot(browser, "grid-where")
    assert browser.find_element("id", "grid-total").text == "2"  # the two 80 x 60 photos
    assert all("/more/" in uri for uri in _thumbnails(browser)) and len(_thumbnails(browser)) == 2
    browser.get(server + "/table/images?" + urllib.parse.urlencode({"sort": "width", "desc": "1"}))
    assert _thumbnails(browser)[0].endswith("ramp16.tif")  # the widest first


@pytest.mark.parametrize("where, refused", [
    ("read_csv('/etc/passwd') IS NOT NULL", "function read_csv is not allowed"),
    ("1=1; COPY images TO '/tmp/lakeimg-serve-copy.csv'", "one condition only"),
    ("1=1; ATTACH '/tmp/lakeimg-serve-attach.db' AS x", "one condition only"),
    ("uri IN (SELECT uri FROM images_rejects)", "subquery"),
])
def test_where_box_refuses_what_is_not_one_condition(server, browser, where, refused):
    browser.get(server + "/table/images?" + urllib.parse.urlencode({"where": where}))
    error = browser.find_element("id", "error")
    assert error.find_element("css selector", ".error-class").text == "SqlError"
    assert refused in error.find_element("css selector", ".error-message").text
    assert not browser.find_elements("css selector", "#grid")
    assert not os.path.exists("/tmp/lakeimg-serve-copy.csv") and not os.path.exists("/tmp/lakeimg-serve-attach.db")
    if "read_csv" in where:
        screenshot(browser, "grid-refused")


def test_image_page_metadata_elsewhere_history_and_exact_pixels(server, browser, demo):
    uri = sorted(demo.read("images", version=0, columns=["uri"])["uri"].to_pylist())[0]
    browser.get(server + "/image/images?" + urllib.parse.urlencode({"uri": uri}))
    wait_for_viewer(browser)
    screenshot(browser, "image-page")
    elsewhere = browser.find_element("css selector", "table.elsewhere").text
    split = demo.training_set("pets").rows().to_pydict()
    assert "small@" in elsewhere and f"split {split['split'][split['uri'].index(uri)]}" in elsewhere
    history = browser.find_element("css selector", "table.history").text
    assert "insert" in history
    meta = browser.find_element("css selector", "table.kv").text
    assert "content_sha256" in meta and "96" in meta
    browser.execute_script("window.lakeimgViewer.goTo(0, 0, 0)")
    wait_for_viewer(browser)
    shown = canvas_rgb(browser, 96, 64)
    assert np.array_equal(shown, demo.read_region("images", uri, 0, 0, 96, 64))


def test_deep_zoom_of_a_tiled_16_bit_image_with_a_window(server, browser, demo):
    uri = next(u for u in demo.read("images", columns=["uri"])["uri"].to_pylist() if u.endswith("ramp16.tif"))
    browser.get(server + "/image/images?" + urllib.parse.urlencode({"uri": uri}))
    wait_for_viewer(browser)
    info = browser.execute_script("return window.lakeimgViewer.info()")
    assert info["tiled"] and info["tile_size"] == 256 and info["levels"] == 3 and info["dtype"] == "uint16"
    lo, hi = browser.find_element("id", "window-lo"), browser.find_element("id", "window-hi")
    for box, value in ((lo, "1000"), (hi, "30000")):
        box.clear()
        box.send_keys(value)
    browser.find_element("id", "window-apply").click()
    browser.execute_script("window.lakeimgViewer.goTo(0, 200, 150)")  # four tiles meet at 256, 256
    wait_for_viewer(browser)
    screenshot(browser, "deep-zoom-16bit")
    expected = to_display_uint8(demo.read_region("images", uri, 200, 150, 120, 200), window=(1000.0, 30000.0))
    shown = canvas_rgb(browser, 120, 200)
    assert np.array_equal(shown[:, :, 0], expected[:, :, 0])
    assert np.array_equal(shown[:, :, 0], shown[:, :, 2])


def test_deep_zoom_shows_every_page_of_a_multi_page_tiled_tiff(tmp_path, browser):
    src = tmp_path / "src"
    src.mkdir()
    y, x = np.mgrid[0:500, 0:700]
    tifffile.imwrite(src / "two.tif", ((x + y) % 256).astype(np.uint8))
    y, x = np.mgrid[0:450, 0:600]  # a second page of another size and pattern
    tifffile.imwrite(src / "two.tif", ((x * 3 + (y * 7) % 251) % 256).astype(np.uint8), append=True)
    tifffile.imwrite(src / "small.tif", np.full((30, 40), 7, np.uint8))  # untiled: pages decoded whole
    tifffile.imwrite(src / "small.tif", np.arange(200, dtype=np.uint8).reshape(10, 20), append=True)
    lake = Lake(tmp_path / "lake")
    lake.ingest(str(src), workers=0, tile_above_pixels=100_000, tile_size=256)
    uri, small = sorted(lake.read("images", columns=["uri"])["uri"].to_pylist(), key=lambda u: "small" in u)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", lake.path, "--port", str(port)]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT)):
        browser.get(base + "/image/images?" + urllib.parse.urlencode({"uri": uri}))
        wait_for_viewer(browser)
        assert browser.execute_script("return window.lakeimgViewer.info()")["page"] == 0
        browser.find_element("css selector", '#pages a[data-page="1"]').click()
        wait_for_viewer(browser)
        info = browser.execute_script("return window.lakeimgViewer.info()")
        assert (info["page"], info["width"], info["height"], info["tiled"], info["levels"]) == (1, 600, 450, True, 3)
        browser.execute_script("window.lakeimgViewer.goTo(0, 200, 150)")  # four tiles meet at 256, 256
        wait_for_viewer(browser)
        screenshot(browser, "deep-zoom-page-1")
        expected = lake.read_region("images", uri, 200, 150, 120, 200, page=1)
        assert not np.array_equal(expected, lake.read_region("images", uri, 200, 150, 120, 200, page=0))
        assert np.array_equal(canvas_rgb(browser, 120, 200)[:, :, 0], expected[:, :, 0])
        status, body, _ = _get(base + "/api/zoom/images?" + urllib.parse.urlencode({"uri": small, "page": "1"}))
        assert status == 200 and (json.loads(body)["width"], json.loads(body)["height"]) == (20, 10)
        status, body, _ = _get(base + "/zoom/images/0/0/0_0.png?" + urllib.parse.urlencode({"uri": small, "page": "1"}))
        assert status == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("L")), np.arange(200, dtype=np.uint8).reshape(10, 20))
        status, body, _ = _get(base + "/api/zoom/images?" + urllib.parse.urlencode({"uri": uri, "page": "2"}))
        assert status == 400 and b"page 2 does not exist" in body
        status, _, _ = _get(base + "/zoom/images/0/0/0_0.png?" + urllib.parse.urlencode({"uri": uri, "page": "-1"}))
        assert status == 400


def test_tiles_read_by_many_threads_at_once_are_the_tiles_read_one_by_one(demo):
    """The server reads tiles in a thread pool; its open data files are shared between them."""
    from concurrent.futures import ThreadPoolExecutor

    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.image.pyramid import level_shape
    from lakeimg.serve.zoom import TileStore

    uri = next(u for u in demo.read("images", columns=["uri"])["uri"].to_pylist() if u.endswith("ramp16.tif"))
    engine = LocalEngine(demo.path)
    version = engine.resolve_version("images")
    one_by_one = TileStore(engine)
    info = one_by_one.info("images", version, uri)
    assert info.tiled
    ts = info.tile_size
    keys = [(level, col, row) for level in range(info.levels)
            for height, width in [level_shape(info.height, info.width, level)]
            for row in range(-(-height // ts)) for col in range(-(-width // ts))]
    assert len(keys) > 6
    expected = [one_by_one.tile(info, *key) for key in keys]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(40):  # a fresh store each time: every thread opens and reads cold files
            store = TileStore(engine)
            fresh = store.info("images", version, uri)
            got = list(pool.map(lambda key, store=store, fresh=fresh: store.tile(fresh, *key), keys * 2))
            assert all(np.array_equal(a, b) for a, b in zip(got, expected * 2, strict=True))


def test_lineage_page_shows_the_transform_run_and_source_version(server, browser, demo):
    browser.get(server + "/lineage/small")
    screenshot(browser, "lineage")
    made = demo.versions("small")[0]
    node = browser.find_element("css selector", 'g.step[data-table="small"]')
    assert node.get_attribute("data-job") == "transform"
    assert node.get_attribute("data-run") == made.run_id
    source = made.inputs[0]
    assert f"reads images@{source['version']}" in node.text
    parent = browser.find_element("css selector", f'g.step[data-table="images"][data-version="{source["version"]}"]')
    assert parent.get_attribute("data-job") == "ingest"
    assert len(browser.find_elements("css selector", "#lineage-graph path.edge")) >= 2  # images -> small, folder -> images


def test_lineage_of_a_training_set(server, browser):
    browser.get(server + "/lineage/trainset:pets")
    screenshot(browser, "lineage-trainset")
    tables = [n.get_attribute("data-table") for n in browser.find_elements("css selector", "g.step")]
    assert tables == ["trainset:pets", "small", "images"]


def test_runs_page_lists_every_run(server, browser, demo):
    browser.get(server + "/runs")
    screenshot(browser, "runs")
    rows = browser.find_elements("css selector", "table.runs tbody tr")
    runs = demo.sql("SELECT DISTINCT run_id FROM lakeimg_runs")["run_id"].to_pylist()
    assert sorted(r.get_attribute("id") for r in rows) == sorted(runs) and len(runs) >= 3
    assert {r.get_attribute("class") for r in rows} == {"status-succeeded"}
    first = demo.sql("SELECT min(started_at) AS t FROM lakeimg_runs")["t"][0].as_py()
    _, body, _ = _get(server + "/runs?" + urllib.parse.urlencode({"at": first.isoformat()}))
    assert body.count(b'<tr id="') == 1  # a timestamp shows the runs started by then


@pytest.mark.parametrize("path", [
    "/image/images?uri=" + urllib.parse.quote("file:///tmp/../etc/passwd"),
    "/image/images?uri=" + urllib.parse.quote("file:///tmp/%2e%2e/etc/passwd"),
    "/api/zoom/images?uri=" + urllib.parse.quote("../../etc/passwd"),
    "/zoom/images/0/0/0_0.png?uri=" + urllib.parse.quote("file:///x/../../etc/passwd"),
])
def test_traversal_through_a_uri_is_refused(server, path):
    status, body, _ = _get(server + path)
    assert status == 400 and b"is not allowed in a uri" in body


@pytest.mark.parametrize("path", ["/table/..%2F..%2Fetc", "/table/_lakeimg", "/lineage/..", "/static/..%2Fapp.py"])
def test_table_names_and_static_files_stay_inside(server, path):
    status, body, _ = _get(server + path)
    assert status in (400, 404) and b"root:" not in body and b"import" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_writes_are_refused(server, demo, method):
    before = {t: demo.version(t) for t in demo.tables()}
    for path in ("/", "/table/images", "/zoom/images/0/0/0_0.png"):
        status, _, headers = _get(server + path, method=method)
        assert status == 405 and headers.get("allow") == "GET, HEAD"
    assert {t: demo.version(t) for t in demo.tables()} == before


def test_tiles_are_cached_by_etag(server, demo):
    uri = next(u for u in demo.read("images", columns=["uri"])["uri"].to_pylist() if u.endswith("ramp16.tif"))
    version = demo.version("images")
    url = f"{server}/zoom/images/{version}/1/1_0.png?" + urllib.parse.urlencode({"uri": uri, "window": "0,60000"})
    status, body, headers = _get(url)
    assert status == 200 and headers["content-type"] == "image/png"
    tag = headers["etag"]
    pixels = np.asarray(Image.open(io.BytesIO(body)))
    expected = to_display_uint8(demo.read_region("images", uri, 256, 0, 94, 250, level=1), window=(0.0, 60000.0))
    assert np.array_equal(pixels, expected[:, :, 0])
    assert _get(url, headers={"If-None-Match": tag})[0] == 304
    other = f"{server}/zoom/images/{version}/1/0_0.png?" + urllib.parse.urlencode({"uri": uri, "window": "0,60000"})
    assert _get(other, headers={"If-None-Match": tag})[0] == 200  # another tile, another tag


def test_a_token_guards_the_server_and_other_hosts_need_one(demo, server):
    from lakeimg.errors import SpecError
    from lakeimg.serve.app import check_bind

    with pytest.raises(SpecError, match="give --token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", demo.path, "--port", str(port), "--token", "s3cret"]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT)):
        assert _get(base + "/")[0] == 401
        assert _get(base + "/", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _get(base + "/", headers={"Authorization": "Bearer s3cret"})[0] == 200
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(base + "/runs?token=s3cret", timeout=30) as response:  # redirected, with a cookie
            assert response.status == 200 and response.geturl() == base + "/runs"
        with opener.open(base + "/table/images", timeout=30) as response:
            assert response.status == 200
    # on loopback, a foreign Host header (DNS rebinding) is refused
    assert _get(server + "/", headers={"Host": "attacker.example"})[0] == 400


def test_lineage_shows_the_latest_reproduce_of_each_version(tmp_path):
    """reproduce records its result as a runs row of its own (and writes nothing else); the
    lineage page and `lakeimg lineage` show the latest result per table version."""
    photos = tmp_path / "photos"
    paths = write_photo_jpegs(photos, 3, width=32, height=24)
    lake = Lake(tmp_path / "lake")
    lake.ingest(str(photos), workers=0)
    lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lakeimg.cli", "serve", "--lake", lake.path, "--port", str(port)]
    with running_server(command, base + "/static/style.css", cwd=str(ROOT)):
        _, page, _ = _get(base + "/lineage/small")
        assert b"not run: lakeimg reproduce small@0" in page and b'data-reproduce="match"' not in page

        data = {t: lake.version(t) for t in ("images", "small")}
        assert lake.reproduce("small", 0, workers=0).identical
        assert {t: lake.version(t) for t in ("images", "small")} == data  # only the runs table gained a row
        _, page, _ = _get(base + "/lineage/small")
        assert b'data-table="small" data-version="0" data-job="transform"' in page
        assert page.count(b'data-reproduce="match"') == 1 and b"match: 3 rows (" in page
        assert b"not run: lakeimg reproduce images@0" in page

        Image.open(paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[0], quality=90)  # the source changed
        assert not lake.reproduce("images", 0).identical
        _, page, _ = _get(base + "/lineage/small")
        assert page.count(b'data-reproduce="mismatch"') == 1 and b"mismatch: 1 of 3 rows differ (" in page
        assert page.count(b'data-reproduce="match"') == 1  # small@0's own check stays

        rows = lake.sql("SELECT job, status, target_table, target_version, counts FROM lakeimg_runs WHERE job = 'reproduce'")
        found = sorted((r["target_table"], r["target_version"], dict(r["counts"])["differing"]) for r in rows.to_pylist())
        assert found == [("images", 0, 1), ("small", 0, 0)] and set(rows["status"].to_pylist()) == {"succeeded"}
        shown = run_cli("lineage", "small", "--lake", lake.path)
        assert shown.returncode == 0, shown.stderr
        assert "reproduce match: 0 of 3 rows differ" in shown.stdout and "reproduce mismatch: 1 of 3 rows differ" in shown.stdout

        # A check that cannot run (the version's files are gone) is on record as failed.
        for data_file in (Path(lake.path) / "images").glob("*.parquet"):
            data_file.unlink()
        with pytest.raises(LakeImgError, match="no longer readable"):
            lake.reproduce("images", 0, workers=0)
        _, page, _ = _get(base + "/lineage/small")
        assert page.count(b'data-reproduce="failed"') == 1 and b"failed: the check could not run (" in page
        assert page.count(b'data-reproduce="mismatch"') == 0 and page.count(b'data-reproduce="match"') == 1
    status = lake.sql("SELECT status FROM lakeimg_runs WHERE job = 'reproduce' ORDER BY finished_at")["status"].to_pylist()
    assert status == ["succeeded", "succeeded", "failed"]
    shown = run_cli("lineage", "small", "--lake", lake.path)
    assert shown.returncode == 0, shown.stderr
    assert "reproduce failed: the check could not run" in shown.stdout
