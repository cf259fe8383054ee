"""Memory and time limits of ingest and transform, and lakeimg's library settings (issue 11,
items 8, 9 and the sample formats of 12).

* `import lakeimg` (and using it) leaves Pillow's pixel limit, Pillow's truncated-image switch,
  OpenCV's thread count and tifffile's logger as the user set them.
* The limit is the decoded array's bytes, read from the header before decoding: above it a
  TIFF is tiled, anything else is a `too_large` reject; a spec whose output is above it is a
  SpecError.
* A tiny TIFF whose header claims 1e14 pixels is one `corrupt` reject, planned into no tile
  task; tiled images are capped by `max_tiled_pixels`; one file's tile tasks share one time
  budget and it becomes one `timeout` reject.
* Complex samples are `unsupported_dtype`; every other numpy sample type is kept, and no
  numpy warning is printed per file.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import tifffile
from cli_runs import ROOT, run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import ImageDecodeError, SpecError
from lakeimg.image.decode import read_image
from lakeimg.image.display import make_thumbnail
from lakeimg.image.info import decoded_bytes, default_max_decoded_bytes
from lakeimg.kernels.tiles import (
    STAGED_SCHEMA,
    TILE_TASK_SCHEMA,
    TileOptions,
    plan_tile_tasks,
    stage_tiles_kernel,
)
from lakeimg.transform_spec import parse_spec


def _zeros_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit gray PNG of zeros, written row by row (never the whole image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    squeeze = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + samples
    parts = [squeeze.compress(row) for _ in range(height)]
    parts.append(squeeze.flush())
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        out.write(chunk(b"IDAT", b"".join(parts)))
        out.write(chunk(b"IEND", b""))


def _hostile_tiff(path: Path, width: int = 10_000_000, height: int = 10_000_000) -> None:
    """A ~260-byte TIFF whose header claims width x height pixels and holds one 1-byte strip."""
    tifffile.imwrite(path, np.zeros((1, 1), np.uint8), rowsperstrip=1)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)


def _rejects(lake: Lake) -> dict[str, tuple[str, str]]:
    rows = lake.read("images_rejects", columns=["uri", "error_class", "error_message"]).to_pylist()
    return {r["uri"].rsplit("/", 1)[-1]: (r["error_class"], r["error_message"]) for r in rows}


# --- item 8: no setting leaks into the importing process -----------------------------------

_SETTINGS_PROBE = r"""
import json, logging, sys
import cv2
from PIL import Image, ImageFile
Image.MAX_IMAGE_PIXELS = 1000          # the user's own choices, all unlike lakeimg's
ImageFile.LOAD_TRUNCATED_IMAGES = True
logging.getLogger("tifffile").setLevel(logging.WARNING)
cv2.setNumThreads(3)

def state():
    return [Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES,
            logging.getLogger("tifffile").level, cv2.getNumThreads()]

seen = {"before": state()}
import lakeimg
seen["import"] = state()
lake = lakeimg.Lake(sys.argv[1])
seen["lake"] = state()
summary = lake.ingest([sys.argv[2]], workers=0)   # decodes in this process
seen["ingest_in_process"] = state()
seen["added"] = summary.added
summary = lake.ingest([sys.argv[3]], workers=1)   # decodes in a worker
seen["ingest_pool"] = state()
seen["added"] += summary.added
print(json.dumps(seen))
"""


def test_import_and_use_of_lakeimg_leave_the_users_library_settings_alone(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    # 100 x 100 = 10,000 pixels: more than twice the user's Pillow limit, so Pillow alone would
    # raise DecompressionBombError; lakeimg checks sizes itself while it decodes.
    Image.fromarray(np.full((100, 100), 7, np.uint8)).save(first / "a.png")
    tifffile.imwrite(first / "b.tif", np.arange(64 * 48, dtype=np.uint16).reshape(64, 48))
    Image.fromarray(np.full((100, 100), 9, np.uint8)).save(second / "c.png")
    done = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE, str(tmp_path / "lake"), str(first), str(second)],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT),
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == [1000, True, 30, 3]
    for when in ("import", "lake", "ingest_in_process", "ingest_pool"):
        assert seen[when] == seen["before"], when
    assert seen["added"] == 3


# --- item 8: the limit is the decoded array's bytes, checked before decoding ---------------


def test_15000_square_png_is_rejected_too_large_from_its_header(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _zeros_png(src / "big.png", 15_000, 15_000)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / "small.png")
    assert (src / "big.png").stat().st_size < 1_000_000  # a few hundred KB on disk
    limit = 64 << 20
    import resource

    warm = tmp_path / "warm"
    warm.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(warm / "w.png")
    Lake(tmp_path / "warm_lake").ingest([str(warm)], workers=0)  # imports and first-run costs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError) as info:
        read_image((src / "big.png").read_bytes(), "big.png", max_bytes=limit)
    assert info.value.error_class == "too_large"
    # both tiling on (the PNG is above tile_above_pixels: decoded whole to be tiled) and off
    for tile_above in (64_000_000, 0):
        lake = Lake(tmp_path / f"lake{tile_above}")
        summary = lake.ingest([str(src)], workers=0, max_decoded_bytes=limit, tile_above_pixels=tile_above)
        assert (summary.added, summary.rejected) == (1, 1)
        error_class, message = _rejects(lake)["big.png"]
        assert error_class == "too_large"
        assert "15000x15000" in message and f"{limit:,}" in message and "max_decoded_bytes" in message
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 100  # the 225 MB image was never decoded


def test_the_limit_counts_channels_and_bytes_per_sample():
    rgb16 = np.zeros((100, 100, 3), np.uint16)  # 60,000 bytes decoded
    gray8 = np.zeros((200, 200), np.uint8)  # 40,000 bytes decoded, but 4x the pixels
    assert decoded_bytes(100, 100, 3, "uint16") == rgb16.nbytes
    buf_rgb, buf_gray = _tiff_bytes(rgb16, photometric="rgb"), _tiff_bytes(gray8)
    with pytest.raises(ImageDecodeError, match="60,000 bytes decoded"):
        read_image(buf_rgb, "rgb16.tif", max_bytes=50_000)
    assert read_image(buf_gray, "gray8.tif", max_bytes=50_000).width == 200
    assert read_image(buf_rgb, "rgb16.tif", max_bytes=None).dtype == "uint16"
    # the old pixel cap still works as an extra limit
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        read_image(buf_gray, "gray8.tif", max_bytes=None, max_pixels=10_000)
    # the default fits the machine: workers x limit never exceeds half of memory (nor 2 GiB each)
    assert default_max_decoded_bytes(1) >= default_max_decoded_bytes(64) > 0
    assert default_max_decoded_bytes(1) <= 2 << 30


def _tiff_bytes(arr: np.ndarray, **options) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **options)
    return buf.getvalue()


def test_tiff_above_the_limit_is_tiled_and_other_formats_are_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 65535, (600, 400, 3)).astype(np.uint16)  # 1.44 MB decoded
    tifffile.imwrite(src / "striped.tif", arr, photometric="rgb", rowsperstrip=16)
    Image.fromarray(arr[:, :, 0].astype(np.uint8)).save(src / "gray.png")  # 240 KB decoded
    Image.fromarray((arr >> 8).astype(np.uint8)).save(src / "rgb.png")  # 720 KB decoded
    # one strip of 600 rows: no window smaller than the whole image
    tifffile.imwrite(src / "onestrip.tif", arr, photometric="rgb", rowsperstrip=600)
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0, max_decoded_bytes=500_000, tile_size=64)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images", columns=["uri", "tiled", "dtype"]).to_pylist()}
    assert rows["striped.tif"]["tiled"] is True and rows["striped.tif"]["dtype"] == "uint16"
    assert rows["gray.png"]["tiled"] is False
    rejects = _rejects(lake)
    assert set(rejects) == {"rgb.png", "onestrip.tif"}
    assert rejects["rgb.png"][0] == "too_large" and "PNG page" in rejects["rgb.png"][1]
    assert rejects["onestrip.tif"][0] == "too_large" and "band" in rejects["onestrip.tif"][1]
    uri = (src / "striped.tif").as_uri()
    region = lake.read_region("images", uri, 37, 101, 150, 333)
    assert np.array_equal(region, arr[101:434, 37:187])


def test_spec_whose_output_exceeds_the_limit_is_refused_when_parsed():
    with pytest.raises(SpecError, match=r"resize.*20000 x 20000.*max_decoded_bytes"):
        parse_spec({"ops": [{"op": "resize", "width": 20_000, "height": 20_000}]})
    with pytest.raises(SpecError, match="pad"):
        parse_spec({"ops": [{"op": "pad", "width": 1000, "height": 1000}]}, max_decoded_bytes=1 << 20)
    with pytest.raises(SpecError, match="shorter side"):
        parse_spec({"ops": [{"op": "resize", "fit": "shorter", "size": 30_000}]})
    assert parse_spec({"ops": [{"op": "resize", "width": 4096, "height": 4096}]}).ops[0]["width"] == 4096


def test_transform_refuses_a_huge_resize_before_reading_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    with pytest.raises(SpecError, match="max_decoded_bytes"):
        lake.transform("images", "huge", {"ops": [{"op": "resize", "width": 20_000, "height": 20_000}]}, workers=0)
    assert not (tmp_path / "lake" / "huge" / "_delta_log").exists()


# --- item 9: hostile headers, the tiled-pixel cap, one time budget per file -----------------


def test_tiny_tiff_claiming_1e14_pixels_is_one_corrupt_reject_and_no_tile_task(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _hostile_tiff(src / "claims.tif")
    assert (src / "claims.tif").stat().st_size < 1000
    # strips declared but pointing past the end of the file: a file cut short
    tifffile.imwrite(src / "outside.tif", np.ones((256, 256), np.uint8), rowsperstrip=64)
    with tifffile.TiffFile(src / "outside.tif", mode="r+") as tif:
        tif.pages[0].tags["StripOffsets"].overwrite([10**9] * 4)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src / "fine.png")
    lake = Lake(tmp_path / "lake")
    summary = lake.ingest([str(src)], workers=0, tile_above_pixels=10_000, tile_size=64)
    assert (summary.added, summary.rejected) == (1, 2)
    rejects = _rejects(lake)
    assert rejects["claims.tif"][0] == "corrupt"
    assert "10,000,000 strips" in rejects["claims.tif"][1] and "declares 1" in rejects["claims.tif"][1]
    assert rejects["outside.tif"][0] == "truncated" and "outside the" in rejects["outside.tif"][1]
    assert "Traceback" not in rejects["claims.tif"][1]
    assert not (tmp_path / "lake" / "images_tiles").exists() or lake.read("images_tiles").num_rows == 0


def test_tiled_images_are_capped_by_max_tiled_pixels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "pages.tif", np.ones((3, 300, 200), np.uint8), tile=(64, 64), photometric="minisblack")  # 180,000 pixels
    lake = Lake(tmp_path / "lake")
    summary = lake.ingest([str(src)], workers=0, tile_above_pixels=1000, tile_size=64, max_tiled_pixels=100_000)
    assert summary.rejected == 1
    error_class, message = _rejects(lake)["pages.tif"]
    assert error_class == "too_large" and "180,000 pixels over 3 page(s)" in message and "max_tiled_pixels" in message


def test_one_time_budget_stops_every_tile_task_of_the_file(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ones((1024, 256), np.uint8), tile=(32, 32))
    staging = str(tmp_path / "staging")
    tasks = plan_tile_tasks(path.as_uri(), "sha", 1024, 256, pages=1, tile_size=32, rows_per_task=2,
                            staging=staging, budget_s=1e-9)
    assert len(tasks) > 10
    batch = pa.RecordBatch.from_pylist(tasks, schema=TILE_TASK_SCHEMA)
    out = pa.Table.from_batches(list(stage_tiles_kernel(iter([batch]), TileOptions(tile_size=32), staging)), schema=STAGED_SCHEMA)
    classes = out["error_class"].to_pylist()
    # the first task finds the budget spent; every later one stops without decoding a tile
    assert classes[0] == "timeout" and set(classes[1:]) == {"skipped"}
    assert "budget" in out["error_message"][0].as_py()
    assert out["tiles"].to_pylist() == [None] * len(tasks)
    assert not list(Path(staging).glob("*.parquet"))


def test_a_file_out_of_time_budget_is_one_timeout_reject(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "big.tif", np.ones((1024, 256), np.uint8), tile=(32, 32))
    lake = Lake(tmp_path / "lake")
    # the file decodes nothing whole (it is tiled), so only its tiling meets the tiny budget
    summary = lake.ingest([str(src)], workers=0, tile_above_pixels=1000, tile_size=32, tile_rows_per_task=2,
                          file_timeout_s=1e-9)
    assert (summary.added, summary.rejected) == (0, 1)
    error_class, message = _rejects(lake)["big.tif"]
    assert error_class == "timeout" and "budget" in message


# --- item 12: unusual sample formats, on purpose and without warnings ------------------------

_KEPT = ["bool", "int8", "uint32", "int32", "float64", "float16", "int64", "uint64", "int16"]


@pytest.mark.parametrize("dtype", _KEPT)
def test_unusual_sample_types_are_kept_native_without_numpy_warnings(dtype):
    rng = np.random.default_rng(1)
    for shape, options in (((600, 500), {}), ((600, 500, 3), {"photometric": "minisblack", "planarconfig": "contig"})):
        arr = rng.integers(0, 100, shape).astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any numpy warning fails the test
            decoded = read_image(_tiff_bytes(arr, **options), "x.tif")
            thumbnail = make_thumbnail(decoded.pixels, window=decoded.display_window)
        assert decoded.dtype == dtype and decoded.channels == (1 if len(shape) == 2 else 3)
        assert thumbnail[:2] == b"\xff\xd8"


def test_extreme_values_and_many_bands_render_without_warnings():
    cases = [
        np.full((600, 500), 1e300),  # past float32's range
        np.array([[np.inf, -np.inf, np.nan, 1e300]] * 600),
        np.array([[np.iinfo(np.int64).min, np.iinfo(np.int64).max]] * 600),
        np.random.default_rng(2).integers(0, 255, (600, 500, 5)).astype(np.uint8),  # 5 bands
        np.full((300, 300, 4), 1e300),  # one value everywhere, alpha included
        np.full((300, 300, 2), np.nan),
    ]
    for arr in cases:
        options = {"photometric": "minisblack", "planarconfig": "contig"} if arr.ndim == 3 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            decoded = read_image(_tiff_bytes(arr, **options), "x.tif")
            assert make_thumbnail(decoded.pixels)[:2] == b"\xff\xd8"
        assert decoded.dtype == str(arr.dtype)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_samples_keep_their_values_and_render_their_magnitude(dtype):
    arr = (np.arange(12 * 10).reshape(12, 10) * (1 + 1j)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = read_image(_tiff_bytes(arr), "c.tif")
        thumbnail = make_thumbnail(decoded.pixels)
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], arr)
    shown = cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert shown[0, 0] < shown[-1, -1]  # magnitude grows along the ramp


def test_cli_flags_and_a_quiet_stderr_over_odd_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(3)
    for dtype in _KEPT:
        tifffile.imwrite(src / f"{dtype}.tif", rng.integers(0, 100, (200, 200)).astype(dtype))
    tifffile.imwrite(src / "complex.tif", np.ones((30, 20), np.complex64))
    tifffile.imwrite(src / "huge.tif", np.full((300, 300, 4), 1e300), rowsperstrip=16,  # 2.9 MB decoded
                     photometric="minisblack", planarconfig="contig")
    _hostile_tiff(src / "claims.tif")
    tifffile.imwrite(src / "pages.tif", np.ones((3, 300, 200), np.uint8), tile=(64, 64), photometric="minisblack")
    _zeros_png(src / "big.png", 15_000, 15_000)
    lake = tmp_path / "lake"
    done = run_cli("ingest", str(src), "--lake", str(lake), "--workers", "1", "--json",
                   "--max-decoded-bytes", "2M", "--max-tiled-pixels", "150000", "--tile-above-pixels", "50000", "--tile-size", "128")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    rejects = {name: cls for name, (cls, _m) in _rejects(Lake(lake)).items()}
    assert rejects == {"claims.tif": "corrupt", "pages.tif": "too_large", "big.png": "too_large"}
    dtypes = {r["uri"].rsplit("/", 1)[-1]: r["dtype"] for r in Lake(lake).read("images", columns=["uri", "dtype"]).to_pylist()}
    assert {f"{d}.tif": d for d in _KEPT}.items() <= dtypes.items()
    assert dtypes["complex.tif"] == "complex64"
    assert dtypes["huge.tif"] == "float64"  # above 2M decoded, so tiled: a striped TIFF reads by windows
    assert json.loads(done.stdout.strip().splitlines()[-1])["rejected"] == 3
