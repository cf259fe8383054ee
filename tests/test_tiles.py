"""Huge images as tiles: the pure pyramid and codecs, windowed TIFF reading, and tiled ingest
with exact region reads, levels, dtypes, pages, GeoTIFF transforms and re-ingest behaviour.

Images are small (a 3000 x 2000 RGB TIFF at most) with --tile-above-pixels lowered so they tile.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import tifffile
from cli_runs import run_cli

from lakeimg import Lake
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeImgError
from lakeimg.image.codecs import TILE_ENCODINGS, decode_tile, encode_tile
from lakeimg.image.decode import decode_image
from lakeimg.image.pyramid import (
    ArraySource,
    downsample2,
    iter_tiles,
    level_count,
    level_shape,
    tile_count,
)
from lakeimg.image.sources import open_image
from lakeimg.kernels.tiles import TILES_PER_ROW_GROUP, plan_tile_tasks
from lakeimg.samples import geotiff_bytes, photo_like, pydicom_test_file

TILE = 512
SMALL_THRESHOLD = 100_000  # pixels: everything bigger than ~316 x 316 is tiled in these tests


def _pyramid(arr: np.ndarray, tile: int) -> list[np.ndarray]:
    levels = [arr]
    while max(levels[-1].shape[:2]) > tile:
        levels.append(downsample2(levels[-1]))
    return levels


def _ingest(lake: Lake, src: Path, **options):
    options.setdefault("workers", 0)
    options.setdefault("tile_above_pixels", SMALL_THRESHOLD)
    options.setdefault("tile_size", TILE)
    return lake.ingest([str(src)], **options)


# --- pure: pyramid, splits, codecs, windowed reading -------------------------------------


@pytest.mark.parametrize("overlap", [0, 5])
def test_streamed_pyramid_equals_whole_image_pyramid_and_splits_agree(overlap):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 65535, (1000, 777, 2)).astype(np.uint16)
    refs = _pyramid(arr, 128)
    tiles = list(iter_tiles(ArraySource(arr), tile_size=128, overlap=overlap, band_rows=100))
    assert max(t.level for t in tiles) + 1 == len(refs) == level_count(1000, 777, 128)
    keys = [(t.level, t.tile_row, t.tile_col) for t in tiles]
    assert len(keys) == len(set(keys))
    for t in tiles:
        ref = refs[t.level]
        assert ref.shape[:2] == level_shape(1000, 777, t.level)
        assert np.array_equal(ref[t.y : t.y + t.height, t.x : t.x + t.width], t.pixels)
        # the stored extent is the tile_size cell plus `overlap` on every side, clipped
        assert t.x == max(0, t.tile_col * 128 - overlap) and t.y == max(0, t.tile_row * 128 - overlap)
    # Shares of 4 tile rows emitting levels 0..2 cover exactly those levels' tiles.
    shares = []
    for start in range(0, 8, 4):
        shares += list(iter_tiles(ArraySource(arr), tile_size=128, overlap=overlap, rows=(start, min(8, start + 4)), max_level=2))
    assert sorted((t.level, t.tile_row, t.tile_col) for t in shares) == sorted(k for k in keys if k[0] <= 2)
    for t in shares:
        assert np.array_equal(refs[t.level][t.y : t.y + t.height, t.x : t.x + t.width], t.pixels)


@pytest.mark.parametrize(("height", "width", "tile"), [(300, 200, 128), (1000, 700, 64), (513, 1025, 32), (2000, 40, 16)])
def test_planned_tile_counts_match_the_tiles_emitted(height, width, tile):
    """Each task's `tiles` (progress counts them) is what it emits, for every split; a split of
    1 tile row still builds the whole pyramid."""
    source = ArraySource(np.zeros((height, width, 1), np.uint8))
    whole = sum(1 for _ in iter_tiles(source, tile_size=tile))
    assert tile_count(height, width, tile) == whole
    for rows_per_task in (0, 1, 2, 3, 8):
        tasks = plan_tile_tasks("u", None, height, width, pages=1, tile_size=tile, rows_per_task=rows_per_task, staging="s")
        emitted = 0
        for task in tasks:
            if task["from_level"] > 0:  # the top task: the levels above the shares'
                levels = level_count(height, width, tile) - task["from_level"] - 1
                assert levels > 0 and task["tiles"] == tile_count(height, width, tile, min_level=task["from_level"] + 1)
                emitted += task["tiles"]
                continue
            top = None if task["max_level"] < 0 else task["max_level"]
            count = sum(1 for _ in iter_tiles(source, tile_size=tile, rows=(task["row_start"], task["row_end"]), max_level=top))
            assert count == task["tiles"], task
            emitted += count
        assert emitted == whole, rows_per_task


def test_downsample_is_area_average_keeping_dtype():
    f = np.array([[[0.5], [1.5], [7.0]], [[2.5], [3.5], [9.0]], [[1.0], [1.0], [1.0]]], np.float32)
    out = downsample2(f)
    assert out.dtype == np.float32 and out.shape == (2, 2, 1)
    assert out[:, :, 0].tolist() == [[2.0, 8.0], [1.0, 1.0]]
    u = np.array([[[65535], [65535]], [[65534], [65535]]], np.uint16)
    assert downsample2(u).dtype == np.uint16 and int(downsample2(u)[0, 0, 0]) == 65535  # no overflow


@pytest.mark.parametrize("encoding", TILE_ENCODINGS)
@pytest.mark.parametrize("dtype,channels", [("uint8", 3), ("uint16", 1), ("float32", 1), ("int16", 2), ("float64", 4)])
def test_tile_codecs_are_lossless_and_keep_dtype(encoding, dtype, channels):
    rng = np.random.default_rng(0)
    arr = (rng.random((37, 53, channels)) * 1000).astype(dtype)
    data, used = encode_tile(arr, encoding)
    back = decode_tile(data, used, 37, 53, channels, dtype)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, arr)
    if encoding == "png" and dtype in ("uint8", "uint16"):
        assert used == "png"


@pytest.mark.parametrize(
    "layout",
    [dict(tile=(96, 160), compression="zlib"), dict(rowsperstrip=50, compression="lzw"), dict(tile=(64, 64), planarconfig="separate")],
)
def test_windowed_tiff_reading_matches_the_whole_page(tmp_path, layout):
    arr = np.random.default_rng(1).integers(0, 4000, (700, 555, 3)).astype(np.uint16)
    path = str(tmp_path / "a.tif")
    data = np.moveaxis(arr, 2, 0) if layout.get("planarconfig") == "separate" else arr
    tifffile.imwrite(path, data, photometric="rgb", **layout)
    with open_image(path) as img:
        source = img.page(0)
        assert type(source).__name__ == "TiffPageSource"  # read by windows, not decoded whole
        for y0, y1 in [(0, 700), (95, 97), (333, 650), (699, 700)]:
            assert np.array_equal(source.read_rows(y0, y1), arr[y0:y1])


# --- tiled ingest and region reads --------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_lake(tmp_path_factory):
    """One ingest of a folder of images that all tile (workers=0), shared by the read tests."""
    root = tmp_path_factory.mktemp("tiled")
    src = root / "src"
    src.mkdir()
    rgb = photo_like(2000, 3000, seed=5)
    tifffile.imwrite(src / "rgb.tif", rgb, tile=(256, 256), compression="zlib", bigtiff=True)
    u16 = np.random.default_rng(2).integers(0, 65535, (700, 900, 1)).astype(np.uint16)
    tifffile.imwrite(src / "u16.tif", u16, rowsperstrip=64)
    f32 = np.random.default_rng(3).normal(size=(600, 650, 1)).astype(np.float32)
    tifffile.imwrite(src / "f32.tif", f32, tile=(128, 128))
    pages = np.stack([photo_like(640, 560, seed=s) for s in (7, 8)])
    tifffile.imwrite(src / "pages.tif", pages, photometric="rgb")
    (src / "geo.tif").write_bytes(geotiff_bytes(photo_like(700, 600, seed=9), origin=(500000.0, 4600000.0), pixel_size=(10.0, 10.0), tile=256))
    shutil.copy(pydicom_test_file("SC_rgb_rle_2frame.dcm"), src / "frames.dcm")
    import cv2

    cv2.imwrite(str(src / "photo.jpg"), photo_like(600, 700, seed=11))
    cv2.imwrite(str(src / "small.png"), photo_like(60, 70, seed=12))  # under the threshold: not tiled
    lake = Lake(root / "lake")
    summary = _ingest(lake, src, tile_above_pixels=5_000)  # 100x100 DICOM frames tile too
    return lake, src, summary, {"rgb": rgb, "u16": u16, "f32": f32, "pages": pages}


def test_tiled_rows_and_levels(tiled_lake):
    lake, src, summary, arrays = tiled_lake
    assert summary.added == 8 and summary.rejected == 0
    images = {r["uri"].rsplit("/", 1)[1]: r for r in lake.read("images").to_pylist()}
    rgb = images["rgb.tif"]
    assert rgb["tiled"] and rgb["content"] is None and rgb["tile_size"] == TILE
    assert rgb["levels"] == level_count(2000, 3000, TILE) == 4
    assert rgb["thumbnail"][:2] == b"\xff\xd8"  # JPEG made from the top level
    assert not images["small.png"]["tiled"] and images["small.png"]["content"] is not None
    tiles = lake.read("images_tiles", columns=["uri", "level", "page", "x", "y", "width", "height", "content_sha256", "dtype"])
    mine = tiles.filter(pc.equal(tiles["uri"], rgb["uri"])).to_pylist()
    assert {t["content_sha256"] for t in mine} == {rgb["content_sha256"]}
    for level in range(4):
        h, w = level_shape(2000, 3000, level)
        at = [t for t in mine if t["level"] == level]
        assert max(t["x"] + t["width"] for t in at) == w and max(t["y"] + t["height"] for t in at) == h
        assert sum(t["width"] * t["height"] for t in at) == w * h  # no gaps, no overlaps
        assert len(at) == -(-h // TILE) * -(-w // TILE)
    assert {t["dtype"] for t in tiles.to_pylist() if t["uri"].endswith("f32.tif")} == {"float32"}
    # The layout tile readers rely on: a few tiles per row group, each with uri statistics.
    engine = LocalEngine(lake.path)
    for path in engine.data_files("images_tiles"):
        meta = engine.parquet_file(path).metadata
        uri_column = meta.schema.to_arrow_schema().get_field_index("uri")
        for group in range(meta.num_row_groups):
            assert 0 < meta.row_group(group).num_rows <= TILES_PER_ROW_GROUP
            assert meta.row_group(group).column(uri_column).statistics.has_min_max


@pytest.mark.parametrize(
    "x,y,w,h",
    [(0, 0, 3000, 2000), (500, 300, 700, 900), (511, 511, 2, 2), (2990, 1990, 10, 10), (1024, 0, 512, 512), (0, 1999, 3000, 1)],
)
def test_region_is_exact_across_tile_borders_and_edges(tiled_lake, x, y, w, h):
    lake, src, _summary, arrays = tiled_lake
    region = lake.read_region("images", str(src / "rgb.tif"), x, y, w, h)
    assert region.dtype == np.uint8 and np.array_equal(region, arrays["rgb"][y : y + h, x : x + w])


def test_region_at_every_level(tiled_lake):
    lake, src, _summary, arrays = tiled_lake
    refs = _pyramid(arrays["rgb"], TILE)
    for level, ref in enumerate(refs):
        h, w = ref.shape[:2]
        assert (h, w) == level_shape(2000, 3000, level)
        assert np.array_equal(lake.read_region("images", str(src / "rgb.tif"), 0, 0, w, h, level=level), ref)
    with pytest.raises(LakeImgError):
        lake.read_region("images", str(src / "rgb.tif"), 0, 0, 10, 10, level=len(refs))
    with pytest.raises(LakeImgError):
        lake.read_region("images", str(src / "rgb.tif"), 2995, 0, 10, 10)


def test_16bit_float_pages_frames_and_jpeg_regions(tiled_lake):
    lake, src, _summary, arrays = tiled_lake
    u16 = lake.read_region("images", str(src / "u16.tif"), 500, 480, 400, 220)
    assert u16.dtype == np.uint16 and np.array_equal(u16, arrays["u16"][480:700, 500:900])
    f32 = lake.read_region("images", str(src / "f32.tif"), 1, 2, 649, 598, level=0)
    assert f32.dtype == np.float32 and np.array_equal(f32, arrays["f32"][2:600, 1:650])
    f32_top = lake.read_region("images", str(src / "f32.tif"), 0, 0, 325, 300, level=1)
    assert np.array_equal(f32_top, downsample2(arrays["f32"]))
    for page in (0, 1):
        got = lake.read_region("images", str(src / "pages.tif"), 100, 500, 460, 140, page=page)
        assert np.array_equal(got, arrays["pages"][page][500:640, 100:560])
    dicom = (src / "frames.dcm").read_bytes()
    for frame in (0, 1):
        assert np.array_equal(lake.read_region("images", str(src / "frames.dcm"), 0, 0, 100, 100, page=frame), decode_image(dicom, page=frame))
    jpeg = decode_image((src / "photo.jpg").read_bytes())
    assert np.array_equal(lake.read_region("images", str(src / "photo.jpg"), 13, 500, 687, 100), jpeg[500:600, 13:700])
    small = decode_image((src / "small.png").read_bytes())  # not tiled: cut from the stored content
    assert np.array_equal(lake.read_region("images", str(src / "small.png"), 10, 20, 30, 40), small[20:60, 10:40])


def test_geotiff_tiles_carry_their_own_geotransform(tiled_lake):
    lake, src, _summary, _arrays = tiled_lake
    tiles = lake.read("images_tiles", columns=["uri", "level", "x", "y", "geotransform"])
    geo = [t for t in tiles.to_pylist() if t["uri"].endswith("geo.tif")]
    assert len(geo) == 4 + 1  # 2x2 level-0 tiles + one level-1 tile
    for t in geo:
        scale = 10.0 * 2 ** t["level"]
        assert t["geotransform"] == pytest.approx(
            [500000.0 + t["x"] * scale, scale, 0.0, 4600000.0 - t["y"] * scale, 0.0, -scale]
        )
    assert all(t["geotransform"] is None for t in tiles.to_pylist() if t["uri"].endswith("u16.tif"))


def test_region_cli_writes_png_and_tif(tiled_lake, tmp_path):
    lake, src, _summary, arrays = tiled_lake
    out_png, out_tif = tmp_path / "w.png", tmp_path / "w.tif"
    done = run_cli("region", "--lake", lake.path, str(src / "rgb.tif"), "700", "400", "300", "200", "--out", str(out_png))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(decode_image(out_png.read_bytes()), arrays["rgb"][400:600, 700:1000])
    done = run_cli("region", "--lake", lake.path, str(src / "f32.tif"), "0", "0", "50", "40", "--level", "1", "--out", str(out_tif))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(tifffile.imread(out_tif), downsample2(arrays["f32"])[:40, :50, 0])
    bad = run_cli("region", "--lake", lake.path, str(src / "rgb.tif"), "2990", "0", "20", "20", "--out", str(out_png))
    assert bad.returncode != 0 and "edge" in bad.stderr


# --- re-ingest: unchanged, changed, deleted; split tasks over a process pool -------------


def test_reingest_unchanged_changed_and_deleted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    first = photo_like(1300, 1100, seed=1)
    tifffile.imwrite(src / "a.tif", first, tile=(256, 256))
    tifffile.imwrite(src / "b.tif", photo_like(700, 700, seed=2), tile=(256, 256))
    lake = Lake(tmp_path / "lake")
    _ingest(lake, src)
    v_tiles, v_images = lake.version("images_tiles"), lake.version("images")
    n_a = lake.read("images_tiles", columns=["uri"]).filter(pc.field("uri") == f"file://{src}/a.tif").num_rows

    again = _ingest(lake, src)  # unchanged: nothing decoded, no table moves
    assert (again.added, again.updated) == (0, 0)
    assert (lake.version("images_tiles"), lake.version("images")) == (v_tiles, v_images)

    smaller = photo_like(600, 900, seed=3)  # a smaller grid: stale tiles must go too
    tifffile.imwrite(src / "a.tif", smaller, tile=(256, 256))
    os.utime(src / "a.tif", (1, 1))
    changed = _ingest(lake, src)
    assert changed.updated == 1
    assert lake.version("images_tiles") == v_tiles + 1  # old tiles out, new in: one commit
    tiles = lake.read("images_tiles", columns=["uri", "level", "tile_row", "tile_col"])
    a_tiles = tiles.filter(pc.field("uri") == f"file://{src}/a.tif")
    assert a_tiles.num_rows == 2 * 2 + 1 < n_a
    assert np.array_equal(lake.read_region("images", str(src / "a.tif"), 0, 0, 900, 600), smaller)
    # time travel: the images version before the change still reads the old pixels
    assert np.array_equal(lake.read_region("images", str(src / "a.tif"), 0, 0, 1100, 1300, version=v_images), first)

    (src / "a.tif").unlink()
    deleted = _ingest(lake, src, sync_deletes=True)
    assert deleted.deleted == 1
    uris = set(lake.read("images_tiles", columns=["uri"])["uri"].to_pylist())
    assert uris == {f"file://{src}/b.tif"}


def test_one_image_split_across_workers_equals_one_task(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = np.random.default_rng(4).integers(0, 255, (1500, 700, 3), dtype=np.uint8)
    tifffile.imwrite(src / "tall.tif", arr, tile=(128, 128))
    whole, split = Lake(tmp_path / "whole"), Lake(tmp_path / "split")
    _ingest(whole, src, tile_size=128)
    _ingest(split, src, tile_size=128, workers=2, tile_rows_per_task=2)
    cols = ["level", "tile_row", "tile_col", "x", "y", "width", "height", "data"]
    a = whole.read("images_tiles", columns=cols).sort_by([(c, "ascending") for c in cols[:3]])
    b = split.read("images_tiles", columns=cols).sort_by([(c, "ascending") for c in cols[:3]])
    assert a.num_rows == b.num_rows > 0 and a.equals(b)
    assert not os.path.exists(split.path + "/_lakeimg/staging")  # staged files cleaned up
    assert np.array_equal(split.read_region("images", str(src / "tall.tif"), 100, 200, 600, 1300), arr[200:1500, 100:700])


def test_inline_byte_limit_also_tiles(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = np.random.default_rng(5).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    (src / "bytes.tif").write_bytes(buf.getvalue())
    lake = Lake(tmp_path / "lake")
    _ingest(lake, src, tile_above_pixels=10**9, inline_max_bytes=100_000, tile_size=128)
    row = lake.read("images", columns=["tiled", "levels", "content"]).to_pylist()[0]
    assert row["tiled"] and row["levels"] == 3 and row["content"] is None
    assert np.array_equal(lake.read_region("images", str(src / "bytes.tif"), 0, 0, 300, 300), arr)


def test_tiled_file_whose_tiles_cannot_be_read_becomes_a_reject(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "good.tif", photo_like(700, 600, seed=1), tile=(256, 256))
    tifffile.imwrite(src / "cut.tif", photo_like(1400, 1200, seed=2), tile=(256, 256), compression="zlib")
    data = (src / "cut.tif").read_bytes()
    (src / "cut.tif").write_bytes(data[: len(data) // 2])  # header intact, later tiles missing
    lake = Lake(tmp_path / "lake")
    summary = _ingest(lake, src, workers=2)
    assert (summary.added, summary.rejected) == (1, 1)
    rejects = lake.read("images_rejects", columns=["uri", "error_class", "error_message"]).to_pylist()
    # found from the header before any tile task runs (tests/test_limits.py has the hostile cases)
    assert rejects[0]["uri"].endswith("cut.tif") and rejects[0]["error_class"] == "truncated"
    assert "outside the" in rejects[0]["error_message"]
    assert set(lake.read("images_tiles", columns=["uri"])["uri"].to_pylist()) == {f"file://{src}/good.tif"}
    assert not os.path.exists(os.path.join(lake.path, "_lakeimg", "staging"))


def test_bad_tile_settings_are_a_clear_cli_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", np.zeros((10, 10), np.uint8))
    done = run_cli("ingest", str(src), "--lake", str(tmp_path / "lake"), "--tile-size", "0")
    assert done.returncode == 2 and "tile_size" in done.stderr
    assert not (tmp_path / "lake" / "images").exists()


def test_overlapping_tiles_still_read_back_exactly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = np.random.default_rng(8).integers(0, 65535, (900, 700, 1)).astype(np.uint16)
    tifffile.imwrite(src / "o.tif", arr, tile=(128, 128))
    lake = Lake(tmp_path / "lake")
    _ingest(lake, src, tile_size=256, tile_overlap=8, tile_encoding="png")
    tiles = lake.read("images_tiles", columns=["level", "tile_row", "tile_col", "x", "y", "width", "overlap", "encoding"]).to_pylist()
    inner = next(t for t in tiles if (t["level"], t["tile_row"], t["tile_col"]) == (0, 1, 1))
    assert (inner["x"], inner["y"], inner["width"], inner["overlap"], inner["encoding"]) == (248, 248, 272, 8, "png")
    assert np.array_equal(lake.read_region("images", str(src / "o.tif"), 200, 250, 500, 650), arr[250:900, 200:700])
