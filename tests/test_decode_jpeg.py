"""The OpenCV fast path for plain JPEGs gives exactly Pillow's pixels (the path it replaces)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lakeimg.image import decode_image, read_image
from lakeimg.image.decode import decode_plain_jpeg
from lakeimg.image.info import apply_orientation


def _photo(height: int = 61, width: int = 83) -> np.ndarray:
    """Smooth gradients plus noise: exercises IDCT rounding and chroma upsampling."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 3 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], axis=-1).astype(np.int16)
    return np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        orientation = im.getexif().get(0x0112, 1)
        arr = np.asarray(im.convert("L" if im.mode == "L" else "RGB"))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return apply_orientation(arr, orientation)


def _takes_fast_path(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return decode_plain_jpeg(im, data) is not None


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 90, "subsampling": 0},  # 4:4:4
        {"quality": 75, "subsampling": 1},  # 4:2:2
        {"quality": 75, "subsampling": 2},  # 4:2:0
        {"quality": 60, "progressive": True},
        {"quality": 95, "optimize": True, "subsampling": 2},
    ],
)
def test_colour_jpegs_decode_bit_equal_to_pillow(options):
    data = _jpeg(_photo(), **options)
    assert _takes_fast_path(data)
    got = decode_image(data)
    assert got.dtype == np.uint8 and got.shape == (61, 83, 3)
    assert np.array_equal(got, _pillow_pixels(data))


def test_gray_jpeg_keeps_one_channel():
    data = _jpeg(_photo()[:, :, 0])
    assert _takes_fast_path(data)
    got = decode_image(data)
    assert got.shape == (61, 83, 1)
    assert np.array_equal(got, _pillow_pixels(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pillow(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(_photo(), exif=exif.tobytes())
    got = read_image(data)
    expected = _pillow_pixels(data)
    assert np.array_equal(got.pixels, expected)
    assert (got.height, got.width) == expected.shape[:2]


def test_cmyk_and_truncated_jpegs_keep_the_pillow_path():
    buf = io.BytesIO()
    Image.fromarray(_photo()).convert("CMYK").save(buf, "JPEG")
    cmyk = buf.getvalue()
    assert not _takes_fast_path(cmyk)
    assert np.array_equal(decode_image(cmyk), np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")))
    data = _jpeg(_photo(), quality=90)
    from lakeimg.errors import ImageDecodeError

    with pytest.raises(ImageDecodeError) as err:
        read_image(data[: len(data) // 2], "file:///half.jpg")
    assert err.value.error_class == "truncated"


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize(
    "options",
    [{"quality": 90, "subsampling": 0}, {"quality": 75, "subsampling": 2}, {"quality": 60, "progressive": True}, "gray"],
)
def test_scaled_decode_bit_equal_to_pillow_draft(scale, options):
    """The transform's shrink-on-load decodes through OpenCV at 1/2, 1/4, 1/8: Pillow's `draft` pixels."""
    pixels = _photo(203, 157)  # odd sizes: the scaled size rounds up
    data = _jpeg(pixels[:, :, 0], quality=80) if options == "gray" else _jpeg(pixels, **options)
    with Image.open(io.BytesIO(data)) as im:
        got = decode_plain_jpeg(im, data, scale)
    with Image.open(io.BytesIO(data)) as im:
        im.draft(im.mode, (157 // scale, 203 // scale))
        expected = np.asarray(im)
    expected = expected if expected.ndim == 3 else expected[:, :, None]
    assert got is not None and got.shape == (-(-203 // scale), -(-157 // scale), 1 if options == "gray" else 3)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("icc_bytes", [0, 150_000])  # a header longer than the 64 KiB first parse
def test_transform_reduced_read_matches_pillow_draft(orientation, icc_bytes):
    from lakeimg.kernels.transform import _reduced_jpeg

    exif = Image.Exif()
    exif[0x0112] = orientation
    icc = {"icc_profile": np.random.default_rng(1).bytes(icc_bytes)} if icc_bytes else {}
    data = _jpeg(_photo(240, 320), quality=85, exif=exif.tobytes(), **icc)
    assert len(data) > icc_bytes
    need = (70, 50) if orientation == 1 else (50, 70)  # displayed size wanted; stored is 320x240
    got = _reduced_jpeg(data, need)
    assert np.array_equal(_reduced_jpeg(memoryview(data), need), got)  # as the kernel passes it
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (70, 50))  # 1/4 scale: 80x60 still covers 70x50
        expected = apply_orientation(np.asarray(im), orientation)
    assert got is not None and np.array_equal(got, expected)
    assert got.shape == ((60, 80, 3) if orientation == 1 else (80, 60, 3))
    assert _reduced_jpeg(data, (200, 200)) is None  # not even half scale covers it: full decode


def test_transform_reduced_read_of_unusual_jpeg_longer_than_the_header_parse():
    """Bytes after the end marker keep the Pillow path; a file past the 64 KiB header parse
    must still decode whole (not as a truncated image)."""
    from lakeimg.kernels.transform import _HEADER_BYTES, _reduced_jpeg

    data = _jpeg(np.random.default_rng(3).integers(0, 256, (400, 600, 3), np.uint8), quality=95) + b"trailer"
    assert len(data) > _HEADER_BYTES
    with Image.open(io.BytesIO(data)) as im:
        assert decode_plain_jpeg(im, data, 2) is None  # the OpenCV path declines it
        im.draft("RGB", (250, 150))
        expected = np.asarray(im)
    got = _reduced_jpeg(memoryview(data), (250, 150))
    assert got is not None and np.array_equal(got, expected)
