"""Every format lands as an image row whose `content` decodes to the source's own pixels.

One module-scoped ingest of a generated folder (every format, 8/16-bit, float, multi-page,
compressed TIFFs, DICOM from pydicom's shipped files, GeoTIFF, all eight EXIF orientations);
each test then compares a row with the source file decoded independently (tifffile, OpenCV,
pydicom, Pillow), so a decoder bug in lakeimg cannot hide behind itself.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from lakeimg import Lake
from lakeimg.image import decode_image, read_image
from lakeimg.image.decode import probe_image
from lakeimg.image.sources import open_image, page_shapes
from lakeimg.samples import geotiff_bytes, photo_like, pydicom_test_file

RGB = photo_like(48, 64, seed=5)
GRAY16 = photo_like(40, 56, seed=6, channels=1)[:, :, 0].astype(np.uint16) * 257 + 3
# A narrow 16-bit range: an 8-bit squeeze by >> 8 would render it flat.
NARROW16 = (1000 + photo_like(40, 56, seed=7, channels=1)[:, :, 0].astype(np.uint16)).astype(np.uint16)


def _pil(path: Path, arr: np.ndarray, fmt: str, **kw) -> None:
    Image.fromarray(arr).save(path, fmt, **kw)


def _cv2_write(path: Path, rgb: np.ndarray) -> None:
    arr = rgb if rgb.ndim == 2 or rgb.shape[2] == 1 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if rgb.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), arr)


# name -> writer; the expected pixels always come from decoding the written file independently
WRITERS = {
    "rgb.jpg": lambda p: _pil(p, RGB, "JPEG", quality=90),
    "gray.jpg": lambda p: _pil(p, RGB[:, :, 0], "JPEG"),
    "cmyk.jpg": lambda p: Image.fromarray(RGB).convert("CMYK").save(p, "JPEG"),
    "gray8.png": lambda p: _pil(p, RGB[:, :, 1], "PNG"),
    "rgb8.png": lambda p: _pil(p, RGB, "PNG"),
    "rgba8.png": lambda p: _pil(p, photo_like(30, 20, channels=4), "PNG"),
    "la8.png": lambda p: _pil(p, np.dstack([RGB[:, :, 0], RGB[:, :, 2]]), "PNG"),
    "palette.png": lambda p: Image.fromarray(RGB).convert("P").save(p, "PNG"),
    "bilevel.png": lambda p: _pil(p, RGB[:, :, 0] > 120, "PNG"),
    "gray16.png": lambda p: _pil(p, GRAY16, "PNG"),
    "narrow16.png": lambda p: _pil(p, NARROW16, "PNG"),
    "rgb16.png": lambda p: _cv2_write(p, RGB.astype(np.uint16) * 257),
    "rgba16.png": lambda p: _cv2_write(p, np.dstack([RGB.astype(np.uint16) * 257, np.full(RGB.shape[:2], 40000, np.uint16)])),
    "gray_alpha16.png": lambda p: _write_gray_alpha16(p),
    "rgb8.tif": lambda p: tifffile.imwrite(p, RGB),
    "gray16.tif": lambda p: tifffile.imwrite(p, GRAY16),
    "int16.tif": lambda p: tifffile.imwrite(p, (GRAY16.astype(np.int32) - 30000).astype(np.int16)),
    "uint32.tif": lambda p: tifffile.imwrite(p, GRAY16.astype(np.uint32) * 1000),
    "float32.tif": lambda p: tifffile.imwrite(p, GRAY16.astype(np.float32) / 65535.0),
    "float16.tif": lambda p: tifffile.imwrite(p, (GRAY16 / 65535.0).astype(np.float16)),
    "float64_small.tif": lambda p: tifffile.imwrite(p, GRAY16.astype(np.float64) * 1e-9),
    "multipage.tif": lambda p: tifffile.imwrite(p, np.stack([GRAY16, GRAY16 // 2, GRAY16 // 3]), photometric="minisblack"),
    "planar.tif": lambda p: tifffile.imwrite(p, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate"),
    "deflate16.tif": lambda p: tifffile.imwrite(p, RGB.astype(np.uint16) * 257, compression="zlib"),
    "lzw.tif": lambda p: tifffile.imwrite(p, RGB, compression="lzw"),
    "zstd.tif": lambda p: tifffile.imwrite(p, GRAY16, compression="zstd"),
    "packbits.tif": lambda p: tifffile.imwrite(p, RGB, compression="packbits"),
    "jpeg.tif": lambda p: tifffile.imwrite(p, RGB, compression="jpeg"),
    "tiled.tif": lambda p: tifffile.imwrite(p, GRAY16, tile=(16, 16)),
    "big.tif": lambda p: tifffile.imwrite(p, GRAY16, bigtiff=True),
    "bits12.tif": lambda p: tifffile.imwrite(p, GRAY16 >> 4, bitspersample=12),  # Pillow cannot read this
    "bilevel.tif": lambda p: tifffile.imwrite(p, RGB[:, :, 0] > 120),
    "picture.bmp": lambda p: _pil(p, RGB, "BMP"),
    "palette.gif": lambda p: Image.fromarray(RGB).convert("P").save(p, "GIF"),
    "animated.gif": lambda p: Image.fromarray(RGB).save(p, "GIF", save_all=True, append_images=[Image.fromarray(RGB[::-1].copy())]),
    "lossless.webp": lambda p: _pil(p, RGB, "WEBP", lossless=True),
    "rgba.webp": lambda p: _pil(p, photo_like(30, 20, channels=4), "WEBP", lossless=True),
    "picture.jp2": lambda p: _pil(p, RGB, "JPEG2000"),
    "gray16.jp2": lambda p: _pil(p, GRAY16, "JPEG2000"),
    "picture.tga": lambda p: _pil(p, RGB, "TGA"),
    "scene.tif": lambda p: p.write_bytes(geotiff_bytes(GRAY16, origin=(300000.0, 5000000.0), pixel_size=(30.0, 30.0), epsg=32632)),
}

# pydicom's shipped test files: plain, big endian, deflated, and every compressed transfer
# syntax the pylibjpeg plugins decode (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE).
DICOM_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
]


def _gray_alpha16_png(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (colour type 4) written by hand: neither Pillow nor OpenCV writes one."""
    import struct
    import zlib

    h, w = gray.shape
    raw = np.dstack([gray, alpha]).astype(">u2").reshape(h, w * 2).view(np.uint8)
    rows = b"".join(b"\x00" + raw[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _write_gray_alpha16(path: Path) -> None:
    path.write_bytes(_gray_alpha16_png(GRAY16, np.full(GRAY16.shape, 50000, np.uint16)))


def _oriented_jpeg(path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "lakeimg-test"
    Image.fromarray(photo_like(30, 50, seed=orientation)).save(path, "JPEG", exif=exif.tobytes(), quality=95)


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Ingest every generated file once; rows by file name."""
    root = tmp_path_factory.mktemp("formats")
    src = root / "src"
    src.mkdir()
    for name, writer in WRITERS.items():
        writer(src / name)
    for name in DICOM_FILES:
        path = pydicom_test_file(name)
        assert path, f"pydicom no longer ships {name}"
        shutil.copyfile(path, src / name)
    for orientation in range(1, 9):
        _oriented_jpeg(src / f"orient{orientation}.jpg", orientation)
    tif = photo_like(24, 40, seed=11)
    tifffile.imwrite(src / "orient6.tif", tif, extratags=[(274, "H", 1, 6, True)])
    lake = Lake(root / "lake")
    summary = lake.ingest([str(src)], workers=2)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images").to_pylist()}
    rejects = lake.read("images_rejects").to_pylist()
    return {"src": src, "rows": rows, "rejects": rejects, "summary": summary}


def test_every_file_is_an_image_not_a_reject(landed):
    assert landed["rejects"] == []
    expected = set(WRITERS) | set(DICOM_FILES) | {f"orient{i}.jpg" for i in range(1, 9)} | {"orient6.tif"}
    assert set(landed["rows"]) == expected
    assert landed["summary"].added == len(expected)


def _reference(path: Path) -> np.ndarray:
    """The source decoded by a library other than lakeimg, as HWC."""
    name = path.name
    data = path.read_bytes()
    if name.endswith(".tif"):
        arr = tifffile.imread(path, key=0)
        if name == "planar.tif":
            arr = np.moveaxis(arr, 0, -1)
    elif name.endswith(".png") and name != "palette.png" and data[24] == 16 or name in ("gray8.png", "rgb8.png", "rgba8.png"):
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[2] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    else:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            arr = np.asarray(im)
            if im.mode.startswith("I;16"):
                arr = arr.astype(np.uint16)
    return arr[:, :, None] if arr.ndim == 2 else arr


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_pixels_from_content_equal_the_source(landed, name):
    row = landed["rows"][name]
    path = landed["src"] / name
    if name == "gray_alpha16.png":  # no library here writes or reads LA16 as LA: check by construction
        expected = np.dstack([GRAY16, np.full(GRAY16.shape, 50000, np.uint16)])
    else:
        expected = _reference(path)
    pixels = decode_image(row["content"], row["uri"])
    assert row["content"] == path.read_bytes()
    assert pixels.dtype == expected.dtype, name
    assert pixels.shape == expected.shape, name
    np.testing.assert_array_equal(pixels, expected)
    assert (row["height"], row["width"], row["channels"]) == expected.shape
    assert row["dtype"] == str(expected.dtype)


EXPECTED_META = {
    # name: (format, dtype, channels, pages)
    "rgb.jpg": ("JPEG", "uint8", 3, 1),
    "gray.jpg": ("JPEG", "uint8", 1, 1),
    "gray16.png": ("PNG", "uint16", 1, 1),
    "rgb16.png": ("PNG", "uint16", 3, 1),
    "rgba16.png": ("PNG", "uint16", 4, 1),
    "gray_alpha16.png": ("PNG", "uint16", 2, 1),
    "rgba8.png": ("PNG", "uint8", 4, 1),
    "la8.png": ("PNG", "uint8", 2, 1),
    "float16.tif": ("TIFF", "float16", 1, 1),
    "float32.tif": ("TIFF", "float32", 1, 1),
    "int16.tif": ("TIFF", "int16", 1, 1),
    "uint32.tif": ("TIFF", "uint32", 1, 1),
    "multipage.tif": ("TIFF", "uint16", 1, 3),
    "bits12.tif": ("TIFF", "uint16", 1, 1),
    "bilevel.tif": ("TIFF", "bool", 1, 1),
    "deflate16.tif": ("TIFF", "uint16", 3, 1),
    "picture.bmp": ("BMP", "uint8", 3, 1),
    "palette.gif": ("GIF", "uint8", 3, 1),
    "animated.gif": ("GIF", "uint8", 3, 2),
    "lossless.webp": ("WEBP", "uint8", 3, 1),
    "rgba.webp": ("WEBP", "uint8", 4, 1),
    "picture.jp2": ("JPEG2000", "uint8", 3, 1),
    "gray16.jp2": ("JPEG2000", "uint16", 1, 1),
    "picture.tga": ("TGA", "uint8", 3, 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_META))
def test_header_columns(landed, name):
    row = landed["rows"][name]
    fmt, dtype, channels, pages = EXPECTED_META[name]
    assert (row["format"], row["dtype"], row["channels"], row["pages"]) == (fmt, dtype, channels, pages)
    path = landed["src"] / name
    stat = path.stat()
    assert row["size_bytes"] == stat.st_size
    assert row["modified_at"].timestamp() == pytest.approx(stat.st_mtime, abs=1e-5)
    import hashlib

    assert row["content_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["uri"] == path.resolve().as_uri()
    assert row["run_id"] == landed["summary"].run_id
    assert row["ingested_at"] is not None
    assert row["tiled"] is False


def test_other_pages_decode_too(landed):
    row = landed["rows"]["multipage.tif"]
    for page in range(3):
        np.testing.assert_array_equal(decode_image(row["content"], row["uri"], page=page)[:, :, 0], tifffile.imread(landed["src"] / "multipage.tif", key=page))
    gif = landed["rows"]["animated.gif"]
    with Image.open(landed["src"] / "animated.gif") as im:
        im.seek(1)
        np.testing.assert_array_equal(decode_image(gif["content"], gif["uri"], page=1), np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_displayed(landed, orientation):
    name = f"orient{orientation}.jpg"
    row = landed["rows"][name]
    with Image.open(landed["src"] / name) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    assert (row["height"], row["width"]) == shown.shape[:2]
    np.testing.assert_array_equal(decode_image(row["content"], row["uri"]), shown)
    assert row["exif"] is not None and dict(row["exif"])["Orientation"] == str(orientation)
    assert dict(row["exif"])["Make"] == "lakeimg-test"
    thumb = Image.open(io.BytesIO(row["thumbnail"]))
    # The thumbnail is rendered as displayed: portrait for 5..8 (source is 50 wide, 30 high).
    assert (thumb.width < thumb.height) == (orientation >= 5)


def test_tiff_orientation_tag_applied(landed):
    row = landed["rows"]["orient6.tif"]
    with Image.open(landed["src"] / "orient6.tif") as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    assert (row["height"], row["width"]) == (40, 24) == shown.shape[:2]
    np.testing.assert_array_equal(decode_image(row["content"], row["uri"]), shown)


@pytest.mark.parametrize("name", sorted(WRITERS) + DICOM_FILES)
def test_thumbnail_is_a_small_jpeg_with_the_image_aspect(landed, name):
    row = landed["rows"][name]
    thumb = Image.open(io.BytesIO(row["thumbnail"]))
    assert thumb.format == "JPEG"
    assert max(thumb.size) <= 256
    assert thumb.mode in ("L", "RGB")
    if max(row["width"], row["height"]) <= 256:
        assert thumb.size == (row["width"], row["height"])
    else:
        assert max(thumb.size) == 256
        assert thumb.width / thumb.height == pytest.approx(row["width"] / row["height"], rel=0.05)


@pytest.mark.parametrize("name", ["gray16.png", "narrow16.png", "float32.tif", "float16.tif", "float64_small.tif", "int16.tif", "uint32.tif", "CT_small.dcm", "MR_small.dcm"])
def test_thumbnail_of_high_bit_depth_uses_the_display_range(landed, name):
    """16-bit and float images are windowed, not squeezed: the thumbnail spans most of 0..255."""
    row = landed["rows"][name]
    thumb = np.asarray(Image.open(io.BytesIO(row["thumbnail"])).convert("L")).astype(int)
    assert thumb.max() - thumb.min() > 150, (name, thumb.min(), thumb.max())
    # and it follows the image: correlated with the pixels rendered naively
    pixels = decode_image(row["content"], row["uri"]).astype(np.float64)[:, :, 0]
    small = cv2.resize(pixels, thumb.shape[::-1], interpolation=cv2.INTER_AREA)
    corr = np.corrcoef(small.ravel(), thumb.ravel())[0, 1]
    assert corr > 0.8, (name, corr)


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # rtdose.dcm has an odd UID
@pytest.mark.parametrize("name", DICOM_FILES)
def test_dicom_pixels_and_fields(landed, name):
    import pydicom

    row = landed["rows"][name]
    ds = pydicom.dcmread(pydicom_test_file(name))
    expected = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        expected = expected[0]
    if expected.ndim == 2:
        expected = expected[:, :, None]
    pixels = decode_image(row["content"], row["uri"])
    assert pixels.dtype == expected.dtype
    np.testing.assert_array_equal(pixels, expected)
    assert row["format"] == "DICOM"
    assert (row["height"], row["width"], row["channels"]) == expected.shape
    assert row["dtype"] == str(expected.dtype)
    assert row["pages"] == frames
    d = row["dicom"]
    assert d["modality"] == ds.get("Modality")
    assert d["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert d["study_instance_uid"] == str(ds.StudyInstanceUID)
    assert d["series_instance_uid"] == str(ds.SeriesInstanceUID)
    assert d["transfer_syntax_uid"] == str(ds.file_meta.TransferSyntaxUID)
    assert (d["rows"], d["columns"]) == (ds.Rows, ds.Columns)
    assert d["bits_stored"] == ds.BitsStored
    assert d["photometric_interpretation"] == ds.PhotometricInterpretation
    if "PixelSpacing" in ds:
        assert d["pixel_spacing"] == pytest.approx([float(v) for v in ds.PixelSpacing])
    header = json.loads(d["header_json"])
    assert header["00080018"]["Value"] == [str(ds.SOPInstanceUID)]
    assert "7FE00010" not in header  # pixel data is not copied into the header


def test_ct_rescale_and_window_fields(landed):
    d = landed["rows"]["CT_small.dcm"]["dicom"]
    assert d["modality"] == "CT"
    assert d["pixel_spacing"] == pytest.approx([0.661468, 0.661468])
    assert d["rescale_slope"] == 1.0 and d["rescale_intercept"] == -1024.0
    assert d["slice_thickness"] == pytest.approx(5.0)
    assert len(d["image_position_patient"]) == 3


def test_geotiff_crs_and_geotransform(landed):
    row = landed["rows"]["scene.tif"]
    assert row["geo"]["crs"] == "EPSG:32632"
    assert row["geo"]["epsg"] == 32632
    assert row["geo"]["geotransform"] == [300000.0, 30.0, 0.0, 5000000.0, 0.0, -30.0]
    assert landed["rows"]["gray16.tif"]["geo"] is None
    assert landed["rows"]["rgb.jpg"]["dicom"] is None


def test_content_is_null_above_inline_max_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _pil(src / "small.png", RGB[:8, :8].copy(), "PNG")
    _pil(src / "large.png", RGB, "PNG")
    lake = Lake(tmp_path / "lake")
    limit = (src / "small.png").stat().st_size
    lake.ingest([str(src)], workers=0, inline_max_bytes=limit)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images").to_pylist()}
    assert rows["small.png"]["content"] == (src / "small.png").read_bytes()
    assert rows["large.png"]["content"] is None
    assert rows["large.png"]["thumbnail"] and rows["large.png"]["width"] == 64


_HEADER_FACTS = ("format", "width", "height", "channels", "dtype", "mode", "pages", "exif", "geo", "invert_display")


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
def test_header_probe_agrees_with_the_decoder(landed):
    """The header-only probe (used to plan tiling) and the full read describe every file alike."""
    for path in sorted(landed["src"].iterdir()):
        decoded, probed = read_image(path.read_bytes(), str(path)), probe_image(str(path))
        assert probed.pixels is None
        assert {f: getattr(probed, f) for f in _HEADER_FACTS} == {f: getattr(decoded, f) for f in _HEADER_FACTS}, path.name


@pytest.mark.parametrize("tile", [None, 16])
def test_oriented_tiff_pages_are_read_by_windows_as_displayed(tmp_path, tile):
    """A TIFF page with an Orientation tag is tiled as displayed, the way decode_image shows it."""
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, photo_like(40, 70, seed=3), tile=(tile, tile) if tile else None, extratags=[(274, "H", 1, 6, True)])
    with open_image(str(path)) as img:
        source = img.page(0)
        rows = source.read_rows(0, source.height)
    assert page_shapes(str(path)) == [(70, 40)]
    assert np.array_equal(rows, decode_image(path.read_bytes()))
