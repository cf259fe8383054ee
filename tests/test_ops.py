"""Ops, features and encodings against OpenCV / Pillow / numpy computed directly; dtype handling."""

from __future__ import annotations

import io
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from lakeimg.errors import SpecError
from lakeimg.image.codecs import (
    decode_pixels,
    decode_tile,
    encode_pixels,
    encode_tile,
    export_bytes,
    normalize_output,
)
from lakeimg.image.ops import ImageTransformer, make_op, perceptual_hash
from lakeimg.samples import photo_like


def run(op: dict, image: np.ndarray, seed: int = 0) -> np.ndarray:
    return make_op(op).apply(image, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return photo_like(48, 64, seed=3)


@pytest.fixture(scope="module")
def rgb16(rgb) -> np.ndarray:
    return (rgb.astype(np.uint16) * 257 + np.arange(64, dtype=np.uint16)[None, :, None]).astype(np.uint16)


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_resize_exact_matches_opencv_and_keeps_dtype(rgb, dtype):
    image = rgb.astype(dtype)
    out = run({"op": "resize", "width": 20, "height": 15}, image)
    assert out.dtype == np.dtype(dtype) and out.shape == (15, 20, 3)
    assert np.array_equal(out, cv2.resize(image, (20, 15), interpolation=cv2.INTER_AREA))
    up = run({"op": "resize", "width": 100, "height": 90, "interpolation": "lanczos"}, image)
    assert np.array_equal(up, cv2.resize(image, (100, 90), interpolation=cv2.INTER_LANCZOS4))


def test_resize_fit_modes(rgb):
    assert run({"op": "resize", "width": 32, "height": 32, "fit": "inside"}, rgb).shape == (24, 32, 3)
    cover = run({"op": "resize", "width": 32, "height": 32, "fit": "cover"}, rgb)
    assert cover.shape == (32, 32, 3)
    scaled = cv2.resize(rgb, (43, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(cover, scaled[:, 5:37])
    assert run({"op": "resize", "fit": "shorter", "size": 24}, rgb).shape == (24, 32, 3)


def test_resize_gray_and_int32_keep_channel_axis_and_dtype():
    gray = np.arange(100, dtype=np.int32).reshape(10, 10, 1) * 1000
    out = run({"op": "resize", "width": 5, "height": 5, "interpolation": "nearest"}, gray)
    assert out.dtype == np.int32 and out.shape == (5, 5, 1)
    expected = cv2.resize(gray[:, :, 0].astype(np.float64), (5, 5), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out[:, :, 0], expected.astype(np.int32))


def test_crop_center_box_random_match_pillow(rgb):
    pil = Image.fromarray(rgb)
    center = run({"op": "crop", "mode": "center", "width": 20, "height": 10}, rgb)
    assert np.array_equal(center, np.asarray(pil.crop((22, 19, 42, 29))))
    box = run({"op": "crop", "mode": "box", "x": 5, "y": 7, "width": 11, "height": 13}, rgb)
    assert np.array_equal(box, np.asarray(pil.crop((5, 7, 16, 20))))
    a = run({"op": "crop", "mode": "random", "width": 16, "height": 16}, rgb, seed=1)
    b = run({"op": "crop", "mode": "random", "width": 16, "height": 16}, rgb, seed=1)
    assert np.array_equal(a, b) and a.shape == (16, 16, 3)


@pytest.mark.parametrize(("mode", "border"), [("constant", cv2.BORDER_CONSTANT), ("edge", cv2.BORDER_REPLICATE), ("reflect", cv2.BORDER_REFLECT)])
def test_pad_matches_opencv(rgb16, mode, border):
    out = run({"op": "pad", "top": 1, "bottom": 2, "left": 3, "right": 4, "mode": mode, "value": 7}, rgb16)
    expected = cv2.copyMakeBorder(rgb16, 1, 2, 3, 4, border, value=(7, 7, 7))
    assert out.dtype == np.uint16 and np.array_equal(out, expected)
    assert run({"op": "pad", "width": 70, "height": 50}, rgb16).shape == (50, 70, 3)


def test_flip_and_rotate_match_pillow(rgb):
    pil = Image.fromarray(rgb)
    assert np.array_equal(run({"op": "flip"}, rgb), np.asarray(pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    assert np.array_equal(run({"op": "flip", "direction": "vertical"}, rgb), np.asarray(pil.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    for angle in (90, 180, 270):
        assert np.array_equal(run({"op": "rotate", "angle": angle}, rgb), np.asarray(pil.rotate(angle, expand=True)))


def test_rotate_arbitrary_angle_matches_opencv_and_keeps_uint16(rgb16):
    out = run({"op": "rotate", "angle": 30}, rgb16)
    matrix = cv2.getRotationMatrix2D((31.5, 23.5), 30, 1.0)
    expected = cv2.warpAffine(rgb16, matrix, (64, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    assert out.dtype == np.uint16 and np.array_equal(out, expected)
    for angle in (30, 45):  # the expanded canvas is Pillow's
        width, height = Image.fromarray(np.zeros((48, 64), np.uint8)).rotate(angle, expand=True).size
        assert run({"op": "rotate", "angle": angle, "expand": True}, rgb16).shape == (height, width, 3)


# --- color -----------------------------------------------------------------------------------


def test_color_conversions_match_opencv_and_pillow(rgb, rgb16):
    gray = run({"op": "color", "to": "gray"}, rgb)
    assert gray.shape == (48, 64, 1)
    assert np.array_equal(gray[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    assert np.abs(gray[:, :, 0].astype(int) - np.asarray(Image.fromarray(rgb).convert("L")).astype(int)).max() <= 1
    gray16 = run({"op": "color", "to": "gray"}, rgb16)
    assert gray16.dtype == np.uint16 and np.array_equal(gray16[:, :, 0], cv2.cvtColor(rgb16, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(run({"op": "color", "to": "hsv"}, rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL))
    assert np.array_equal(run({"op": "color", "to": "lab"}, rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab))
    lab16 = run({"op": "color", "to": "lab"}, rgb16)
    assert lab16.dtype == np.float32
    assert np.allclose(lab16, cv2.cvtColor(rgb16.astype(np.float32) / 65535, cv2.COLOR_RGB2Lab))
    back = run({"op": "color", "to": "rgb", "from": "hsv"}, run({"op": "color", "to": "hsv"}, rgb))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 8
    assert np.array_equal(run({"op": "color", "to": "rgb"}, gray), np.repeat(gray, 3, axis=2))


def test_to_uint8_windows():
    img = np.array([[[0], [1000], [2000], [4000]]], np.uint16)
    fixed = run({"op": "to_uint8", "window": "fixed", "low": 1000, "high": 3000}, img)
    assert fixed.dtype == np.uint8 and fixed.ravel().tolist() == [0, 0, 128, 255]
    assert run({"op": "to_uint8", "window": "minmax"}, img).ravel().tolist() == [0, 64, 128, 255]
    cw = run({"op": "to_uint8", "window": "center_width", "center": 2000, "width": 2000}, img)
    assert cw.ravel().tolist() == fixed.ravel().tolist()
    floats = np.array([[[0.0], [0.5], [1.0]]], np.float32)
    assert run({"op": "to_uint8", "window": "dtype"}, floats).ravel().tolist() == [0, 128, 255]
    u8 = np.array([[[3]]], np.uint8)
    assert run({"op": "to_uint8"}, u8) is u8 or np.array_equal(run({"op": "to_uint8"}, u8), u8)


def test_normalize_methods(rgb, rgb16):
    imagenet = run({"op": "normalize", "method": "imagenet"}, rgb)
    expected = (rgb.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    assert imagenet.dtype == np.float32 and np.allclose(imagenet, expected, atol=1e-6)
    assert np.allclose(run({"op": "normalize"}, rgb16), rgb16 / 65535.0, atol=1e-6)
    std = run({"op": "normalize", "method": "standard"}, rgb)
    assert np.allclose(std.reshape(-1, 3).mean(axis=0), 0, atol=1e-4) and np.allclose(std.reshape(-1, 3).std(axis=0), 1, atol=1e-3)
    mm = run({"op": "normalize", "method": "minmax"}, rgb16)
    assert mm.min() == 0 and mm.max() == 1
    pct = run({"op": "normalize", "method": "percentile", "percentiles": [5, 95]}, rgb)
    low, high = np.percentile(rgb, [5, 95])
    assert np.allclose(pct, np.clip((rgb.astype(np.float32) - low) / (high - low), 0, 1), atol=1e-6)


def test_equalize_and_clahe_match_opencv(rgb, rgb16):
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    assert np.array_equal(run({"op": "equalize"}, gray)[:, :, 0], cv2.equalizeHist(gray[:, :, 0]))
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    ycc[:, :, 0] = cv2.equalizeHist(ycc[:, :, 0])
    assert np.array_equal(run({"op": "equalize"}, rgb), cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB))
    eq16 = run({"op": "equalize"}, rgb16[:, :, :1])
    assert eq16.dtype == np.uint16 and eq16.max() == 65535
    assert np.all(np.diff(eq16.ravel()[np.argsort(rgb16[:, :, 0].ravel(), kind="stable")].astype(int)) >= 0)  # monotone
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4))
    assert np.array_equal(run({"op": "clahe", "clip_limit": 3.0, "tile_grid": 4}, gray)[:, :, 0], clahe.apply(gray[:, :, 0]))
    g16 = np.ascontiguousarray(rgb16[:, :, 0])
    out16 = run({"op": "clahe", "clip_limit": 3.0, "tile_grid": 4}, g16[:, :, None])
    assert out16.dtype == np.uint16 and np.array_equal(out16[:, :, 0], clahe.apply(g16))
    with pytest.raises(ValueError):
        run({"op": "clahe"}, rgb.astype(np.float32))


def test_augment_is_seeded_and_keeps_dtype(rgb16):
    spec = {"op": "augment", "flip": 0.5, "rotate": 10, "brightness": 0.1, "contrast": 0.2, "noise": 0.01}
    a, b = run(spec, rgb16, seed=5), run(spec, rgb16, seed=5)
    assert a.dtype == np.uint16 and np.array_equal(a, b)
    assert not np.array_equal(a, run(spec, rgb16, seed=6))
    flipped = run({"op": "augment", "flip": 1.0}, rgb16)
    assert np.array_equal(flipped, rgb16[:, ::-1])


# --- features --------------------------------------------------------------------------------


def test_histogram_and_mean_std_match_numpy(rgb, rgb16):
    feats = make_op({"op": "histogram", "bins": 8}).features(rgb)
    expected = np.concatenate([np.histogram(rgb[:, :, c], bins=8, range=(0, 256))[0] for c in range(3)])
    assert feats["histogram"] == expected.tolist()
    feats16 = make_op({"op": "histogram", "bins": 4, "column": "h"}).features(rgb16)
    assert sum(feats16["h"]) == rgb16.size
    ms = make_op({"op": "mean_std"}).features(rgb16)
    assert np.allclose(ms["mean"], rgb16.reshape(-1, 3).mean(axis=0)) and np.allclose(ms["std"], rgb16.reshape(-1, 3).std(axis=0))


def test_perceptual_hash_is_robust_and_discriminating(rgb):
    def distance(a: str, b: str) -> int:
        return bin(int(a, 16) ^ int(b, 16)).count("1")

    base = perceptual_hash(rgb)
    assert len(base) == 16 and base == perceptual_hash(rgb.copy())
    small = cv2.resize(rgb, (32, 24), interpolation=cv2.INTER_AREA)
    assert distance(base, perceptual_hash(small)) <= 6
    other = photo_like(48, 64, seed=99)
    assert distance(base, perceptual_hash(other)) >= 12


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "dtype", "channels"),
    [
        ({"encoding": "png"}, "uint16", 3),
        ({"encoding": "png"}, "uint8", 1),
        ({"encoding": "raw"}, "float32", 3),
        ({"encoding": "raw", "compression": "zstd"}, "int16", 1),
        ({"encoding": "raw", "compression": "deflate"}, "float64", 4),
        ({"encoding": "webp", "lossless": True}, "uint8", 3),
    ],
)
def test_lossless_encodings_round_trip(rgb16, output, dtype, channels):
    image = np.ascontiguousarray(np.dstack([rgb16] * 2)[:, :, :channels]).astype(dtype)
    encoding, data = encode_pixels(image, normalize_output(output))
    back = decode_pixels(data, encoding, 64, 48, channels, dtype)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, image)


def test_tiles_keep_their_encoding_names_and_old_tiles_still_decode(rgb16):
    """Tiles are written with the names they always had ("zstd", "deflate", "png"; one codec
    registry behind them), and tiles a lake stored before, a gray + alpha png written by
    imagecodecs among them, decode to the same pixels."""
    import zlib

    import imagecodecs

    pair = np.ascontiguousarray(rgb16[:, :, :2])
    assert encode_tile(pair, "zstd")[1] == "zstd" and encode_tile(pair, "deflate")[1] == "deflate"
    assert encode_tile(rgb16, "png")[1] == "png" and encode_tile(pair, "png")[1] == "zstd"
    old = {
        "zstd": imagecodecs.zstd_encode(pair.tobytes(), level=1),
        "deflate": zlib.compress(pair.tobytes(), 1),
        "png": imagecodecs.png_encode(pair, level=1),
    }
    for encoding, data in old.items():
        assert np.array_equal(decode_tile(bytes(data), encoding, 48, 64, 2, "uint16"), pair), encoding


def test_jpeg_encoding_matches_opencv_and_refuses_float(rgb):
    encoding, data = encode_pixels(rgb, normalize_output({"encoding": "jpeg", "quality": 80}))
    ok, expected = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert encoding == "jpeg" and data == expected.tobytes()
    with pytest.raises(ValueError, match="jpeg holds uint8"):
        encode_pixels(rgb.astype(np.float32), normalize_output("jpeg"))
    with pytest.raises(SpecError):
        normalize_output({"encoding": "jpeg", "quality": 0})


def test_export_bytes_formats(rgb16):
    for fmt in ("png", "tiff"):
        data = export_bytes(rgb16, fmt)
        if fmt == "tiff":
            import tifffile

            assert np.array_equal(tifffile.imread(io.BytesIO(data)), rgb16)
        else:
            assert np.array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB), rgb16)
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("bmp", b"BM")):
        assert export_bytes(rgb16.astype(np.float32), fmt)[:2] == magic


# --- custom ops and purity -------------------------------------------------------------------


class Posterize(ImageTransformer):
    name = "test_posterize"
    version = 2
    defaults = {"levels": 4}

    def transform(self, image):
        step = 256 // self.params["levels"]
        return (image // step * step).astype(image.dtype)


def test_custom_op_subclass_is_registered_with_version(rgb):
    op = make_op({"op": "test_posterize", "levels": 2})
    assert np.array_equal(op.apply(rgb, None), (rgb // 128 * 128).astype(np.uint8))
    spec = op.to_spec()
    assert spec["version"] == 2 and spec["impl"] == f"{__name__}:Posterize"
    with pytest.raises(SpecError, match="version"):
        make_op({"op": "test_posterize", "version": 1})
    with pytest.raises(SpecError, match="unknown op"):
        make_op({"op": "no_such_op"})
    with pytest.raises(SpecError, match="unknown parameter"):
        make_op({"op": "resize", "width": 2, "height": 2, "widht": 3})


def test_image_modules_do_not_import_spark_or_delta():
    code = "import sys, lakeimg.image.ops, lakeimg.image.codecs, lakeimg.kernels.transform; print(sorted(m for m in ('pyspark', 'deltalake') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
