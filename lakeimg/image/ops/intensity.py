"""Intensity and colour ops: color, to_uint8, normalize, equalize, clahe, augment.

Example:
    >>> import numpy as np
    >>> ToUint8(window="fixed", low=0, high=1000).apply(np.full((1, 1, 1), 500, np.uint16), None).item()
    128
"""

from __future__ import annotations

import cv2
import numpy as np

from lakeimg.errors import SpecError
from lakeimg.image.info import as_hwc
from lakeimg.image.ops._base import (
    ImageTransformer,
    cast_like,
    check_choice,
    check_int,
    dtype_range,
)
from lakeimg.image.ops.geometry import rotate_image

__all__ = ["Augment", "Clahe", "Color", "Equalize", "GRAY_WEIGHTS", "Normalize", "ToUint8", "window_to_uint8"]

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _space_of(channels: int) -> str:
    return {1: "gray", 2: "gray", 3: "rgb", 4: "rgb"}.get(channels, "rgb")


class Color(ImageTransformer):
    """Convert between color spaces: to "rgb", "gray", "hsv" or "lab" (from "auto": gray for 1-2
    channels, rgb for 3-4; or name the source space). uint8 stays uint8 (OpenCV's 8-bit HSV and
    Lab encodings); uint16 stays uint16 for rgb/gray; HSV and Lab of other dtypes are float32
    (H in degrees, S and V in 0..1, L in 0..100) computed from pixels scaled to 0..1."""

    name = "color"
    version = 1
    defaults = {"to": "rgb", "from": "auto"}

    def validate(self, params):
        check_choice(params, "to", {"rgb", "gray", "hsv", "lab"})
        check_choice(params, "from", {"auto", "rgb", "gray", "hsv", "lab"})

    def output_size(self, width, height):
        return width, height

    def transform(self, image):
        image = as_hwc(image)
        source = self.params["from"]
        if source == "auto":
            source = _space_of(image.shape[2])
        if source in ("rgb", "gray") and image.shape[2] in (2, 4):
            image = image[:, :, :-1]  # drop alpha: the spaces below have none
        target = self.params["to"]
        if source == target:
            return image
        if source in ("hsv", "lab"):
            image, source = self._to_rgb(image, source), "rgb"
            if target == "rgb":
                return image
        if source == "gray":
            rgb = np.repeat(image, 3, axis=2)
            return rgb if target == "rgb" else self._from_rgb(rgb, target)
        return self._from_rgb(image, target)

    @staticmethod
    def _from_rgb(rgb: np.ndarray, target: str) -> np.ndarray:
        if target == "gray":
            if rgb.dtype in (np.uint8, np.uint16, np.float32):
                return as_hwc(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
            return cast_like(as_hwc(rgb.astype(np.float64) @ GRAY_WEIGHTS), rgb.dtype)
        code = cv2.COLOR_RGB2HSV_FULL if target == "hsv" else cv2.COLOR_RGB2Lab
        if rgb.dtype == np.uint8:
            return cv2.cvtColor(rgb, code)
        low, high = dtype_range(rgb.dtype)
        unit = ((rgb.astype(np.float32) - low) / (high - low)) if np.issubdtype(rgb.dtype, np.integer) else rgb.astype(np.float32)
        return cv2.cvtColor(unit, cv2.COLOR_RGB2HSV if target == "hsv" else cv2.COLOR_RGB2Lab)

    @staticmethod
    def _to_rgb(image: np.ndarray, source: str) -> np.ndarray:
        if image.dtype == np.uint8:
            return cv2.cvtColor(image, cv2.COLOR_HSV2RGB_FULL if source == "hsv" else cv2.COLOR_Lab2RGB)
        return cv2.cvtColor(image.astype(np.float32), cv2.COLOR_HSV2RGB if source == "hsv" else cv2.COLOR_Lab2RGB)


def window_to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (rounded, clipped; NaN becomes 0).

    Example:
        >>> import numpy as np
        >>> window_to_uint8(np.array([[[0], [500], [1000]]], np.uint16), 0, 1000).ravel().tolist()
        [0, 128, 255]
    """
    if high <= low:
        high = low + 1.0
    scaled = (image.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(np.nan_to_num(scaled, nan=0.0)), 0, 255).astype(np.uint8)


def _finite_sample(image: np.ndarray) -> np.ndarray:
    flat = image.reshape(-1).astype(np.float64)
    return flat[np.isfinite(flat)]


class ToUint8(ImageTransformer):
    """Convert to 8-bit with a window: "percentile" (low..high percentiles, default 0.5..99.5),
    "minmax", "dtype" (the dtype's full range; 0..1 for floats), "fixed" (`low`, `high`), or
    "center_width" (`center`, `width`, DICOM style). uint8 input passes through."""

    name = "to_uint8"
    version = 1
    defaults = {"window": "percentile", "low": None, "high": None, "center": None, "width": None, "percentiles": [0.5, 99.5]}

    def validate(self, params):
        check_choice(params, "window", {"percentile", "minmax", "dtype", "fixed", "center_width"})
        if params["window"] == "fixed" and (params["low"] is None or params["high"] is None):
            raise SpecError("to_uint8: window fixed needs low and high")
        if params["window"] == "center_width" and (params["center"] is None or params["width"] is None):
            raise SpecError("to_uint8: window center_width needs center and width")

    def output_size(self, width, height):
        return width, height

    def window(self, image: np.ndarray) -> tuple[float, float]:
        p = self.params
        mode = p["window"]
        if mode == "fixed":
            return float(p["low"]), float(p["high"])
        if mode == "center_width":
            return p["center"] - p["width"] / 2.0, p["center"] + p["width"] / 2.0
        if mode == "dtype":
            return dtype_range(image.dtype)
        sample = _finite_sample(image)
        if sample.size == 0:
            return 0.0, 1.0
        if mode == "minmax":
            return float(sample.min()), float(sample.max())
        low, high = np.percentile(sample, p["percentiles"])
        return float(low), float(high)

    def transform(self, image):
        if image.dtype == np.uint8:
            return image
        if image.dtype == np.bool_:
            return image.astype(np.uint8) * 255
        return window_to_uint8(image, *self.window(image))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(ImageTransformer):
    """Normalize to float32: "zero_one" (integers divided by the dtype's max, floats as they are),
    "standard" (per channel (x - mean) / std: given `mean`/`std`, else the image's own),
    "imagenet" (zero_one, then ImageNet's RGB mean/std), "minmax" (image min..max to 0..1),
    "percentile" (`percentiles` window to 0..1, clipped)."""

    name = "normalize"
    version = 1
    defaults = {"method": "zero_one", "mean": None, "std": None, "percentiles": [1.0, 99.0]}

    def validate(self, params):
        check_choice(params, "method", {"zero_one", "standard", "imagenet", "minmax", "percentile"})

    def output_size(self, width, height):
        return width, height

    def transform(self, image):
        method = self.params["method"]
        x = image.astype(np.float32)
        if method in ("zero_one", "imagenet"):
            if np.issubdtype(image.dtype, np.integer):
                x /= np.float32(np.iinfo(image.dtype).max)
            if method == "imagenet":
                if image.shape[2] != 3:
                    raise ValueError(f"imagenet normalization needs 3 channels (RGB), got {image.shape[2]}")
                x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
            return x.astype(np.float32)
        if method == "standard":
            mean = self.params["mean"]
            std = self.params["std"]
            mean = np.array(mean, np.float32) if mean is not None else x.reshape(-1, x.shape[2]).mean(axis=0, dtype=np.float64).astype(np.float32)
            std = np.array(std, np.float32) if std is not None else x.reshape(-1, x.shape[2]).std(axis=0, dtype=np.float64).astype(np.float32)
            return ((x - mean) / np.where(std > 0, std, np.float32(1))).astype(np.float32)
        sample = _finite_sample(image)
        if sample.size == 0:
            return np.zeros_like(x)
        if method == "minmax":
            low, high = float(sample.min()), float(sample.max())
        else:
            low, high = (float(v) for v in np.percentile(sample, self.params["percentiles"]))
        span = high - low if high > low else 1.0
        out = (x - np.float32(low)) / np.float32(span)
        return np.clip(out, 0, 1).astype(np.float32) if method == "percentile" else out.astype(np.float32)


def _equalize_channel(channel: np.ndarray) -> np.ndarray:
    """Histogram equalization of one 2-D integer channel (OpenCV's formula, any integer width)."""
    if channel.dtype == np.uint8:
        return cv2.equalizeHist(channel)
    low = int(channel.min())
    values = channel.astype(np.int64) - low
    hist = np.bincount(values.reshape(-1))
    cdf = np.cumsum(hist)
    nonzero = cdf[hist > 0]
    first = int(nonzero[0]) if nonzero.size else 0
    total = channel.size
    top = np.iinfo(channel.dtype).max
    if total == first:
        return channel.copy()
    lut = np.rint((cdf - first) * (top / (total - first)))
    lut = np.clip(lut, 0, top)
    return lut[values].astype(channel.dtype)


class Equalize(ImageTransformer):
    """Histogram equalization: gray per channel; color on luma ("luma", YCrCb's Y, uint8) or
    "per_channel". Integer dtypes only (uint16 through an exact full-range LUT)."""

    name = "equalize"
    version = 1
    defaults = {"channels": "luma"}

    def validate(self, params):
        check_choice(params, "channels", {"luma", "per_channel"})

    def output_size(self, width, height):
        return width, height

    def transform(self, image):
        if not np.issubdtype(image.dtype, np.unsignedinteger):
            raise ValueError(f"equalize needs unsigned integer pixels, got {image.dtype}")
        if image.shape[2] == 3 and self.params["channels"] == "luma" and image.dtype == np.uint8:
            ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
            ycc[:, :, 0] = cv2.equalizeHist(ycc[:, :, 0])
            return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
        return np.stack([_equalize_channel(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])], axis=2)


class Clahe(ImageTransformer):
    """Contrast-limited adaptive histogram equalization (OpenCV), uint8 or uint16: gray per
    channel; uint8 RGB on Lab's L ("luma") or "per_channel"."""

    name = "clahe"
    version = 1
    defaults = {"clip_limit": 2.0, "tile_grid": 8, "channels": "luma"}

    def validate(self, params):
        check_int(params, "tile_grid")
        check_choice(params, "channels", {"luma", "per_channel"})

    def output_size(self, width, height):
        return width, height

    def transform(self, image):
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"clahe needs uint8 or uint16 pixels, got {image.dtype}")
        grid = self.params["tile_grid"]
        clahe = cv2.createCLAHE(clipLimit=float(self.params["clip_limit"]), tileGridSize=(grid, grid))
        if image.shape[2] == 3 and self.params["channels"] == "luma" and image.dtype == np.uint8:
            lab = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
            lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
            return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
        return np.stack([clahe.apply(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[2])], axis=2)


class Augment(ImageTransformer):
    """Random augmentation, drawn from the rng in a fixed order: horizontal flip with probability
    `flip`, rotation uniform in +-`rotate` degrees, brightness offset uniform in +-`brightness`
    and contrast factor uniform in 1+-`contrast` (both relative to the dtype's range), gaussian
    noise with sigma `noise` (relative to the range). The dtype is kept (integers clipped)."""

    name = "augment"
    version = 1
    random = True
    defaults = {"flip": 0.5, "vflip": 0.0, "rotate": 0.0, "brightness": 0.0, "contrast": 0.0, "noise": 0.0}

    def validate(self, params):
        for key, value in params.items():
            if key != "op" and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise SpecError(f"augment: {key} must be a number >= 0, got {value!r}")

    def output_size(self, width, height):
        return width, height

    def apply(self, image, rng):
        if rng is None:
            raise ValueError("augment needs an rng")
        p = self.params
        image = as_hwc(image)
        # Draw every number every time, so one setting never shifts the others' random streams.
        do_flip = rng.random() < p["flip"]
        do_vflip = rng.random() < p["vflip"]
        angle = rng.uniform(-p["rotate"], p["rotate"]) if p["rotate"] else 0.0
        brightness = rng.uniform(-p["brightness"], p["brightness"]) if p["brightness"] else 0.0
        contrast = rng.uniform(1 - p["contrast"], 1 + p["contrast"]) if p["contrast"] else 1.0
        out = image
        if do_flip:
            out = out[:, ::-1]
        if do_vflip:
            out = out[::-1]
        if angle:
            out = rotate_image(np.ascontiguousarray(out), angle, interpolation="linear", fill=0)
        if brightness or contrast != 1.0 or p["noise"]:
            low, high = dtype_range(image.dtype)
            span = high - low
            x = out.astype(np.float64)
            if contrast != 1.0:
                mean = x.mean()
                x = (x - mean) * contrast + mean
            if brightness:
                x = x + brightness * span
            if p["noise"]:
                x = x + rng.normal(0.0, p["noise"] * span, size=x.shape)
            out = cast_like(x, image.dtype)
        return np.ascontiguousarray(out)

