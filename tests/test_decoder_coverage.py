"""A file that Pillow, tifffile or pydicom can read lands as a row, decoded by its format's
reader chain (`lakeimg.image.decode._readers`), with the winning reader recorded.

Each class of file is generated here: by Pillow, tifffile or pydicom where they can write it,
byte by byte from the TIFF 6.0 specification where none can (YCbCr-subsampled LZW/deflate
strips, old-style JPEG, ThunderScan, packed integer samples of 5 to 48 bits, a layered
Photoshop file, a 0 x N header). Each row's pixels are compared with what the reader that
succeeded returns when called directly; for packed samples, which no library unpacks, with the
values the test packed.
"""

from __future__ import annotations

import io
import itertools
import struct
import warnings
import zlib

import cv2
import imagecodecs
import numpy as np
import pyarrow as pa
import pydicom
import pytest
import tifffile
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.base import Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import ImageDecodeError
from lakeimg.image import decode_image, read_image
from lakeimg.image.display import make_thumbnail
from lakeimg.schemas import TableContract

RNG = np.random.default_rng(17)


def tiff_bytes(width: int, height: int, strip: bytes, tags: dict[int, tuple[int, list[int]]]) -> bytes:
    """A little-endian one-strip TIFF at offset 8; `tags` {tag: (3 SHORT | 4 LONG, values)}
    add to or override the strip and size tags."""
    base = {256: (4, [width]), 257: (4, [height]), 273: (4, [8]), 278: (4, [height]), 279: (4, [len(strip)])}
    entries = sorted({**base, **tags}.items())
    pad = len(strip) & 1
    ifd_at = 8 + len(strip) + pad
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd, extra = b"", b""
    for tag, (typ, values) in entries:
        packed = struct.pack("<" + {3: "H", 4: "I"}[typ] * len(values), *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field, extra = struct.pack("<I", extra_at + len(extra)), extra + packed
        ifd += struct.pack("<HHI", tag, typ, len(values)) + field
    return b"II*\0" + struct.pack("<I", ifd_at) + strip + b"\0" * pad + struct.pack("<H", len(entries)) + ifd + b"\0" * 4 + extra


def _ycbcr_subsampled(compression: int) -> bytes:
    """4:2:0 YCbCr (subsampling 2 x 2): per 2 x 2 block Y00 Y01 Y10 Y11 Cb Cr (TIFF 6.0, section 21)."""
    raw = RNG.integers(16, 240, 8 * 6 * 6, dtype=np.uint8).tobytes()  # 8 x 6 blocks = 16 x 12 pixels
    strip = zlib.compress(raw) if compression == 8 else bytes(imagecodecs.lzw_encode(raw))
    return tiff_bytes(16, 12, strip, {258: (3, [8, 8, 8]), 259: (3, [compression]), 262: (3, [6]),
                                      277: (3, [3]), 284: (3, [1]), 530: (3, [2, 2])})


def _old_style_jpeg() -> bytes:
    """OJPEG (compression 6): the strip is the JPEG's scan data, its tables are at
    JPEGInterchangeFormat; tifffile decodes the strip alone ("Not a JPEG file")."""
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    sos = jpeg.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    return tiff_bytes(24, 16, jpeg, {258: (3, [8, 8, 8]), 259: (3, [6]), 262: (3, [6]), 277: (3, [3]),
                                     284: (3, [1]), 513: (4, [8]), 514: (4, [len(jpeg)]),
                                     273: (4, [8 + scan]), 279: (4, [len(jpeg) - scan])})


def _bits(values: np.ndarray, bits: int, signed: int = 1) -> bytes:
    """Samples packed MSB-first at `bits` each, rows padded to a byte (uncompressed TIFF)."""
    height, width, spp = values.shape
    rows = []
    for row in values.reshape(height, -1):
        text = "".join(format(int(v) & ((1 << bits) - 1), f"0{bits}b") for v in row)
        text += "0" * (-len(text) % 8)
        rows.append(int(text, 2).to_bytes(len(text) // 8, "big"))
    return tiff_bytes(width, height, b"".join(rows), {258: (3, [bits] * spp), 259: (3, [1]),
                                                      262: (3, [1 if spp == 1 else 2]), 277: (3, [spp]),
                                                      339: (3, [signed] * spp)})


U24_GRAY = RNG.integers(0, 1 << 24, (5, 7, 1))
U24_RGB = RNG.integers(0, 1 << 24, (4, 6, 3))
# Widths tifffile has no dtype for: the bits are unpacked by lakeimg (`decode._unpack_tiff_ints`).
PACKED = {
    "s24.tif": (RNG.integers(-(1 << 23), 1 << 23, (3, 4, 1)), 24, 2, np.int32),
    "s12_rgb.tif": (RNG.integers(-(1 << 11), 1 << 11, (5, 3, 3)), 12, 2, np.int16),
    "u33.tif": (RNG.integers(0, 1 << 33, (4, 9, 1)), 33, 1, np.uint64),
    "u48_rgb.tif": (RNG.integers(0, 1 << 48, (2, 5, 3)), 48, 1, np.uint64),
    "s5.tif": (RNG.integers(-16, 16, (7, 3, 1)), 5, 2, np.int8),
}


def _thunderscan(values: np.ndarray) -> bytes:
    """ThunderScan 4-bit (compression 32809) with every pixel a raw code: 0b11 then the value."""
    strip = bytes(0xC0 | int(v) for v in values.ravel())
    height, width = values.shape
    return tiff_bytes(width, height, strip, {258: (3, [4]), 259: (3, [32809]), 262: (3, [1]), 277: (3, [1])})


def _psd_with_an_off_canvas_layer(rgb: np.ndarray) -> bytes:
    """A Photoshop file: an RGB composite plus one raw layer whose bounds reach past the canvas
    (Pillow reads the composite; the layer's tile is clipped)."""
    height, width, _ = rgb.shape
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    top, left, bottom, right = -2, -3, height + 1, width + 4
    lh, lw = bottom - top, right - left
    channel = struct.pack(">H", 0) + bytes(lh * lw)  # raw compression, zeros
    record = struct.pack(">iiiiH", top, left, bottom, right, 3)
    record += b"".join(struct.pack(">hI", cid, len(channel)) for cid in (0, 1, 2))
    name = b"\x05layer" + b"\0" * 2  # Pascal string padded to 4 bytes
    extra = struct.pack(">II", 0, 0) + name
    record += b"8BIMnorm" + struct.pack(">BBBx", 255, 0, 0) + struct.pack(">I", len(extra)) + extra
    layers = struct.pack(">h", 1) + record + channel * 3
    layers += b"\0" * (len(layers) & 1)
    layer_info = struct.pack(">I", len(layers)) + layers
    layer_section = struct.pack(">I", len(layer_info) + 4) + layer_info + struct.pack(">I", 0)
    composite = struct.pack(">H", 0) + rgb.transpose(2, 0, 1).tobytes()
    return header + struct.pack(">I", 0) + struct.pack(">I", 0) + layer_section + composite


def _complex_tiff() -> bytes:
    buf = io.BytesIO()
    real = RNG.random((6, 5)).astype(np.float32)
    tifffile.imwrite(buf, (real + 1j * real[::-1]).astype(np.complex64))
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _png_zero_width() -> bytes:
    data = bytearray(_png(np.zeros((3, 4), np.uint8)))
    data[16:20] = (0).to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _dicom_without_pixels() -> bytes:
    """A Basic Text structured report: a valid DICOM file (preamble, file meta) with no pixels."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = pydicom.dataset.FileDataset("sr.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "SR", "p1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _tiff(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB") if im.mode in ("YCbCr", "CMYK") else im)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _tifffile_pixels(data: bytes) -> np.ndarray:
    arr = tifffile.imread(io.BytesIO(data))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _cv2_pixels(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


# name -> (bytes, decoder that must win, that reader's own pixels)
LANDS = {
    "ycbcr_lzw.tif": (_ycbcr_subsampled(5), "pillow", _pillow_pixels),
    "ycbcr_deflate.tif": (_ycbcr_subsampled(8), "pillow", _pillow_pixels),
    "ojpeg.tif": (_old_style_jpeg(), "pillow", _pillow_pixels),
    "u24_gray.tif": (_bits(U24_GRAY, 24), "tifffile", _tifffile_pixels),
    "u24_rgb.tif": (_bits(U24_RGB, 24), "tifffile", _tifffile_pixels),
    "row_1xN.png": (_png(RNG.integers(0, 255, (1, 700), dtype=np.uint8)), "opencv", _pillow_pixels),
    "col_Nx1.png": (_png(RNG.integers(0, 255, (700, 1), dtype=np.uint8)), "opencv", _pillow_pixels),
    "row_1xN.tif": (_tiff(RNG.random((1, 900)).astype(np.float32)), "tifffile", _tifffile_pixels),
    "col_Nx1.tif": (_tiff(RNG.integers(0, 60000, (900, 1, 3), dtype=np.uint16)), "tifffile", _tifffile_pixels),
    "one_pixel.tif": (_tiff(np.array([[7]], np.int64)), "tifffile", _tifffile_pixels),
    "café_日本.png": (_png(RNG.integers(0, 255, (9, 11, 3), dtype=np.uint8)), "opencv", _pillow_pixels),
    # 8-bit PNGs and plain JPEGs: Pillow reads the header, OpenCV the pixels (the same samples)
    "plain.jpg": (_jpeg(RNG.integers(0, 255, (16, 24, 3), dtype=np.uint8)), "opencv", _cv2_pixels),
    "thunderscan.tif": (_thunderscan(RNG.integers(0, 16, (5, 8), dtype=np.uint8)), "pillow", _pillow_pixels),
    "layered.psd": (_psd_with_an_off_canvas_layer(RNG.integers(0, 255, (6, 7, 3), dtype=np.uint8)), "pillow",
                    _pillow_pixels),
    "complex.tif": (_complex_tiff(), "tifffile", _tifffile_pixels),
    **{name: (_bits(values, bits, signed), "tifffile",
              lambda _d, values=values, dtype=dtype: values.astype(dtype))
       for name, (values, bits, signed, dtype) in PACKED.items()},
    "gray16.png": (cv2.imencode(".png", RNG.integers(0, 65535, (6, 8), dtype=np.uint16))[1].tobytes(), "opencv",
                   lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED)[:, :, None]),
}

# name -> (bytes, reject class)
REJECTS = {
    "zero_width.tif": (tiff_bytes(0, 3, b"\0" * 3, {258: (3, [8]), 259: (3, [1]), 262: (3, [1]), 277: (3, [1])}),
                       "empty_image"),
    "zero_width.png": (_png_zero_width(), "empty_image"),
    "structured_report.dcm": (_dicom_without_pixels(), "no_pixel_data"),
    "garbage.tif": (b"II*\x00" + b"\xff" * 64, "corrupt"),
}


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    root = tmp_path_factory.mktemp("coverage")
    src = root / "src"
    src.mkdir()
    for name, (data, *_rest) in {**LANDS, **REJECTS}.items():
        (src / name).write_bytes(data)
    lake = Lake(root / "lake")
    lake.ingest([str(src)], workers=1)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images").to_pylist()}
    rejects = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images_rejects").to_pylist()}
    return rows, rejects


def _name(uri_tail: str) -> str:
    from urllib.parse import unquote

    return unquote(uri_tail)


@pytest.mark.parametrize("name", sorted(LANDS))
def test_readable_file_lands_as_a_row_decoded_by_the_named_reader(landed, name):
    rows = {_name(k): v for k, v in landed[0].items()}
    assert name in rows, {_name(k): v["error_message"] for k, v in landed[1].items()}
    data, decoder, direct = LANDS[name]
    row = rows[name]
    assert row["decoder"] == decoder
    expected = direct(data)
    pixels = decode_image(row["content"], row["uri"])
    assert pixels.dtype == expected.dtype and row["dtype"] == str(expected.dtype)
    np.testing.assert_array_equal(pixels, expected)
    assert (row["height"], row["width"], row["channels"]) == expected.shape
    thumb = cv2.imdecode(np.frombuffer(row["thumbnail"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert min(thumb.shape[:2]) >= 1 and max(thumb.shape[:2]) <= 256


def test_24_bit_samples_keep_their_native_values_in_uint32(landed):
    rows = landed[0]
    gray = decode_image(rows["u24_gray.tif"]["content"])
    assert gray.dtype == np.uint32 and gray.max() >= 1 << 16
    np.testing.assert_array_equal(gray, U24_GRAY.astype(np.uint32))
    np.testing.assert_array_equal(decode_image(rows["u24_rgb.tif"]["content"]), U24_RGB.astype(np.uint32))


@pytest.mark.parametrize("name", sorted(REJECTS))
def test_unreadable_file_is_a_reject_of_its_class(landed, name):
    rejects = {_name(k): v for k, v in landed[1].items()}
    assert name not in {_name(k) for k in landed[0]}
    assert rejects[name]["error_class"] == REJECTS[name][1], rejects[name]["error_message"]


def test_a_plain_jpeg_decodes_whole_through_opencv():
    data = LANDS["plain.jpg"][0]
    decoded = read_image(data, "x.jpg")
    assert decoded.decoder == "opencv"
    np.testing.assert_array_equal(decoded.pixels, _cv2_pixels(data))


def test_reject_message_names_every_reader_tried():
    with pytest.raises(ImageDecodeError) as info:
        read_image(REJECTS["garbage.tif"][0], "garbage.tif")
    message = info.value.message
    assert "tifffile refused" in message and "pillow refused" in message


def test_a_claiming_codec_that_fails_falls_back_to_the_format_chain():
    class Broken:
        name = "broken-plugin"

        def can_read(self, uri, head):
            return True

        def read(self, data, uri):
            raise ValueError("cannot")

    data = _png(np.full((3, 4), 9, np.uint8))
    assert read_image(data, "x.png", codecs=[Broken()]).decoder == "opencv"
    with pytest.raises(ImageDecodeError) as info:
        read_image(b"II*\x00" + b"\xff" * 64, "x.tif", codecs=[Broken()])
    assert info.value.message.startswith("broken-plugin refused (corrupt: ValueError: cannot)")


DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]
SHAPES = [(1, 1), (1, 1, 1), (1, 5000), (5000, 1, 1), (1, 3, 3), (3, 1, 2), (300, 2), (2, 300, 4),
          (40, 30, 7), (1, 600, 5), (600, 1, 4)]


@pytest.mark.parametrize(("shape", "dtype"), list(itertools.product(SHAPES, DTYPES)))
def test_thumbnail_of_every_dtype_and_shape_without_a_warning(shape, dtype):
    values = np.random.default_rng(0).random(shape) * 100
    arr = values > 50 if dtype == "bool" else values.astype(dtype)
    if dtype.startswith("complex"):
        arr = arr + 1j * arr[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thumb = make_thumbnail(arr, size=64)
    shown = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_UNCHANGED)
    assert min(shown.shape[:2]) >= 1 and max(shown.shape[:2]) == min(64, max(shape[:2]))


def _contract(version: int, *extra: str) -> TableContract:
    props = {"delta.enableChangeDataFeed": "true", "delta.enableDeletionVectors": "false",
             "delta.minReaderVersion": "1", "delta.minWriterVersion": "4"}
    fields = [{"name": n, "type": "string", "nullable": n != "uri", "metadata": {"comment": n}} for n in ("uri", *extra)]
    return TableContract("t", version, "", {"type": "struct", "fields": fields}, (), props)


def _evolve(engine) -> None:
    """A table written under a contract without `decoder` takes rows of the contract with it."""
    old, new = _contract(1, "label"), _contract(2, "label", "decoder")
    engine.commit(Write("t", old, "append", rows=pa.table({"uri": ["a", "b"], "label": ["x", "y"]})))
    # the old file stays as written (no uri of it is replaced): it has no `decoder` column at all
    engine.commit(Write("t", new, "replace", rows=pa.table({"uri": ["c"], "label": ["z"], "decoder": ["tifffile"]})))
    engine.commit(Write("t", new, "append", rows=pa.table({"uri": ["d"], "label": ["w"], "decoder": ["pydicom"]})))
    reader = engine.reader() if hasattr(engine, "reader") else engine
    for eng in (engine, reader):
        rows = {r["uri"]: (r["label"], r["decoder"]) for r in eng.read("t").to_pylist()}
        assert rows == {"a": ("x", None), "b": ("y", None), "c": ("z", "tifffile"), "d": ("w", "pydicom")}
        picked = eng.read("t", columns=["uri", "decoder"]).to_pylist()
        assert sorted((r["uri"], r["decoder"]) for r in picked) == [("a", None), ("b", None), ("c", "tifffile"), ("d", "pydicom")]
        assert eng.read("t", version=0).column_names == ["uri", "label"]


def test_a_table_written_under_an_older_contract_gains_its_new_columns(tmp_path):
    _evolve(LocalEngine(str(tmp_path / "lake")))


@pytest.mark.spark
def test_spark_engine_adds_new_contract_columns_too(spark, tmp_path):
    from lakeimg.engine.spark import SparkEngine

    _evolve(SparkEngine(str(tmp_path / "lake"), spark))


def test_a_tiled_complex_tiff_keeps_complex_values_at_every_level(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    real = np.random.default_rng(5).random((300, 200)).astype(np.float32)
    values = (real + 1j * real[::-1]).astype(np.complex64)
    tifffile.imwrite(src / "radar.tif", values, tile=(64, 64))
    lake = Lake(tmp_path / "lake")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lake.ingest([str(src)], workers=1, tile_above_pixels=10_000, tile_size=64)
    row = lake.read("images", columns=["uri", "dtype", "decoder", "levels"]).to_pylist()[0]
    assert (row["dtype"], row["decoder"]) == ("complex64", "tifffile") and row["levels"] > 1
    full = lake.read_region("images", row["uri"], 0, 0, 200, 300)
    np.testing.assert_array_equal(full[:, :, 0], values)
    half = lake.read_region("images", row["uri"], 0, 0, 100, 150, level=1)
    expected = (values[0::2, 0::2] + values[1::2, 0::2] + values[0::2, 1::2] + values[1::2, 1::2]) * 0.25
    np.testing.assert_allclose(half[:, :, 0], expected, rtol=1e-6)
    assert np.abs(half.imag).max() > 0
