"""The OpenCV path for plain 8-bit PNGs gives exactly Pillow's samples, and every other PNG keeps
Pillow's path (and its error messages)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lakeimg.errors import ImageDecodeError
from lakeimg.image import read_image
from lakeimg.image.decode import decode_plain_png


def _png(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return arr if arr.ndim == 3 else arr[:, :, None]


def _gamma_chunks() -> dict:
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))  # 1/2.2: neither library applies it
    info.add(b"sBIT", bytes([5, 6, 5]))
    return {"pnginfo": info}


_RNG = np.random.default_rng(11)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("L", {}), ("RGB", {}), ("RGBA", {}), ("RGB", {"compress_level": 0}), ("RGB", "gamma")],
)
def test_plain_pngs_decode_through_opencv_bit_equal_to_pillow(mode, options):
    channels = len(mode)
    pixels = _RNG.integers(0, 256, (37, 53, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    data = _png(image, **(_gamma_chunks() if options == "gamma" else options))
    got = read_image(data, "file:///a.png", preview=256)
    assert got.decoder == "opencv"
    assert (got.mode, got.channels, got.dtype) == (mode, channels, "uint8")
    assert np.array_equal(got.pixels, _pillow_pixels(data))
    assert np.array_equal(got.pixels, pixels)


def _unusual_pngs() -> dict[str, bytes]:
    rgb = Image.fromarray(_RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    frames = [rgb, Image.fromarray(_RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8))]
    return {
        "palette": _png(rgb.quantize(16)),
        "palette with transparency": _png(rgb.quantize(16), transparency=3),
        "gray with transparency": _png(rgb.convert("L"), transparency=7),
        "gray + alpha": _png(rgb.convert("LA")),
        "1-bit": _png(rgb.convert("1")),
        "ICC profile": _png(rgb, icc_profile=_RNG.bytes(200)),
        "animated": _png(frames[0], save_all=True, append_images=frames[1:]),
    }


@pytest.mark.parametrize("name", sorted(_unusual_pngs()))
def test_unusual_pngs_keep_the_pillow_path(name):
    data = _unusual_pngs()[name]
    with Image.open(io.BytesIO(data)) as im:
        assert decode_plain_png(im, data) is None
    got = read_image(data, "file:///a.png")
    assert got.decoder == "pillow"


def test_truncated_and_corrupt_pngs_are_rejected_as_before():
    data = _png(Image.fromarray(_RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError) as err:
        read_image(data[: len(data) // 2], "file:///half.png")
    assert err.value.error_class == "truncated"
    corrupt = bytearray(data)
    corrupt[60] ^= 0xFF  # inside the compressed pixels: OpenCV refuses it, Pillow names the fault
    with pytest.raises(ImageDecodeError) as err:
        read_image(bytes(corrupt), "file:///corrupt.png")
    assert err.value.error_class in ("corrupt", "truncated") and "corrupt.png" in str(err.value)


def test_preview_decodes_jpeg_through_opencv_at_pillows_draft_scale():
    """With a thumbnail size set, a photo decodes at the DCT scale Pillow's draft picks: same pixels."""
    yy, xx = np.mgrid[0:700, 0:1100]
    photo = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=80)
    data = buf.getvalue()
    got = read_image(data, "file:///p.jpg", preview=256)
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (256, 256))
        expected = np.asarray(im)
    assert got.decoder == "opencv" and (got.width, got.height) == (1100, 700)
    assert got.pixels.shape == (350, 550, 3) and np.array_equal(got.pixels, expected)
