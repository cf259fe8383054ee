"""Image ops for transform jobs: pure ndarray in, ndarray out (HWC, native dtype where possible).

Owns the op library (resize, crop, pad, flip, rotate, color, to_uint8, normalize, equalize,
clahe, augment), the feature ops that become columns (histogram, mean_std, phash), the
`ImageTransformer` base class for custom ops, and the op registry (built-ins, subclasses, the
`lakeimg.ops` entry-point group, and "module:Class" import paths).

Every op is deterministic: random ops draw only from the `numpy.random.Generator` they are given
(the transform kernel seeds it from spec seed, uri and variant). Each op has a `version` that is
bumped whenever its output changes for the same input, so the spec hash changes with it.
Numerical work runs in OpenCV where OpenCV supports the dtype, else in numpy (float64) and is cast
back to the input dtype with rounding and clipping.

Example:
    >>> import numpy as np
    >>> op = make_op({"op": "resize", "width": 4, "height": 2})
    >>> op.apply(np.zeros((8, 16, 3), np.uint16), np.random.default_rng(0)).shape
    (2, 4, 3)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import cv2
import numpy as np

from lakeimg.errors import SpecError

__all__ = [
    "ImageTransformer",
    "FeatureOp",
    "make_op",
    "op_class",
    "registered_ops",
    "as_hwc",
    "cast_like",
]

# OpenCV's own thread pool splits work in ways that do not change results; lakeimg's workers
# run it on one thread each (lakeimg.image._settings.configure_worker) so they do not
# oversubscribe, and the importing process keeps its own setting.

_BUILTIN: dict[str, type[ImageTransformer]] = {}
_CUSTOM: dict[str, type[ImageTransformer]] = {}

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}
# dtypes OpenCV's geometric functions take as they are
_CV_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "float32", "float64")}


def as_hwc(arr: np.ndarray) -> np.ndarray:
    """HWC view of a 2-D or 3-D array (gray images get a channel axis)."""
    return arr[:, :, None] if arr.ndim == 2 else arr


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to `dtype`: round and clip for integers, plain cast for floats."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return values >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype == np.bool_:
        return 0.0, 1.0
    return 0.0, 1.0  # float images are taken to be 0..1 where a range is needed


def _cv_call(arr: np.ndarray, fn) -> np.ndarray:
    """Run an OpenCV geometric function on any dtype: native where OpenCV takes it, else float64."""
    src = as_hwc(arr)
    if src.dtype in _CV_DTYPES:
        return as_hwc(fn(src))
    work = src.astype(np.float64)
    return cast_like(as_hwc(fn(work)), src.dtype)


def _check_int(params: Mapping[str, Any], key: str, *, minimum: int = 1, optional: bool = False) -> None:
    value = params.get(key)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{params.get('op')}: {key} must be an integer >= {minimum}, got {value!r}")


def _check_choice(params: Mapping[str, Any], key: str, choices) -> None:
    if params.get(key) not in choices:
        raise SpecError(f"{params.get('op')}: {key} must be one of {sorted(choices)}, got {params.get(key)!r}")


class ImageTransformer:
    """Base class of every op: ndarray in (HWC), ndarray out, with a name, a version and params.

    Subclass it for a custom op: set `name` and `version`, list default params in `defaults`,
    and implement `transform(image)` (or `apply(image, rng)` when the op is random). Defining
    the subclass registers it under `name`; workers in other processes find it through its
    import path, so define it in an importable module (or register an entry point in the
    `lakeimg.ops` group).

    Example:
        >>> import numpy as np
        >>> class Invert(ImageTransformer):
        ...     name, version = "invert_doc", 1
        ...     def transform(self, image):
        ...         return np.iinfo(image.dtype).max - image
        >>> int(Invert().apply(np.zeros((1, 1, 1), np.uint8), None)[0, 0, 0])
        255
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    defaults: ClassVar[dict[str, Any]] = {}
    #: True when the op draws from the rng (makes "variants" meaningful)
    random: ClassVar[bool] = False
    #: "image" ops change the pixels; "feature" ops add columns and pass pixels through
    kind: ClassVar[str] = "image"

    def __init__(self, **params: Any):
        merged = {**self.defaults, **params}
        self.params = merged
        self.validate({"op": self.name, **merged})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not name:
            return
        if cls.__module__ == __name__:
            _BUILTIN[name] = cls
        elif name in _BUILTIN:
            raise SpecError(f"custom op name {name!r} is taken by a built-in op")
        else:
            _CUSTOM[name] = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @classmethod
    def import_path(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    def validate(self, params: dict[str, Any]) -> None:
        """Raise SpecError for bad params (called with defaults merged in)."""

    def to_spec(self) -> dict[str, Any]:
        """The op as it appears in a normalized spec: name, version and all params."""
        out: dict[str, Any] = {"op": self.name, "version": self.version, **self.params}
        if type(self).__module__ != __name__ and _CUSTOM.get(self.name) is type(self):
            out["impl"] = self.import_path()
        return out

    def transform(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement transform(image)")

    def apply(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Run the op; random ops use `rng`, deterministic ones ignore it."""
        return as_hwc(np.asarray(self.transform(as_hwc(image))))

    def output_size(self, width: int, height: int) -> tuple[int, int] | None:
        """Size the op produces from a (width, height) input, or None when unknown."""
        return None


class FeatureOp(ImageTransformer):
    """An op that adds feature columns and passes pixels through unchanged."""

    kind: ClassVar[str] = "feature"
    defaults: ClassVar[dict[str, Any]] = {"column": None}

    def columns(self) -> list[tuple[str, Any]]:
        """(column name, Spark JSON type) of each column this op adds."""
        raise NotImplementedError

    def features(self, image: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, image: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        return image


# --- geometry -------------------------------------------------------------------------------


def _interp(name: str, shrinking: bool) -> int:
    if name == "auto":  # area averaging when shrinking (no aliasing), bilinear when enlarging
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return _INTERPOLATION[name]


def resize_to(image: np.ndarray, width: int, height: int, interpolation: str = "auto") -> np.ndarray:
    """Resize HWC pixels to exactly width x height, keeping the dtype.

    Example:
        >>> import numpy as np
        >>> resize_to(np.zeros((10, 10, 1), np.float32), 5, 4).shape
        (4, 5, 1)
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return as_hwc(image)
    flag = _interp(interpolation, width * height < w * h)
    channels = as_hwc(image).shape[2]
    if channels > 4 and flag in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        # OpenCV's cubic and Lanczos kernels take at most 4 channels
        return np.concatenate([resize_to(image[:, :, i : i + 4], width, height, interpolation) for i in range(0, channels, 4)], axis=2)
    return _cv_call(image, lambda a: cv2.resize(a, (width, height), interpolation=flag))


class Resize(ImageTransformer):
    """Resize: fit "exact" (width x height), "inside" (keep aspect, within the box), "cover"
    (keep aspect, fill the box, center crop) or "shorter" (shorter side = size).

    As the first op of a spec with `reduce_on_load` (default), a shrinking resize starts from a
    reduced-resolution read that is still at least as large as the result on both axes: the
    smallest large-enough pyramid level of a tiled source, or JPEG's DCT scaling (1/2, 1/4,
    1/8 — "shrink on load", as libvips and Pillow's `draft` do). Set it to false for a resize
    computed from full-resolution pixels."""

    name = "resize"
    version = 1
    defaults = {"width": None, "height": None, "size": None, "fit": "exact", "interpolation": "auto", "reduce_on_load": True}

    def validate(self, params):
        _check_choice(params, "fit", {"exact", "inside", "cover", "shorter"})
        _check_choice(params, "reduce_on_load", {True, False})
        _check_choice(params, "interpolation", {"auto", *_INTERPOLATION})
        if params["fit"] == "shorter":
            _check_int(params, "size")
        else:
            _check_int(params, "width")
            _check_int(params, "height")

    def _scaled(self, width: int, height: int) -> tuple[int, int]:
        p = self.params
        if p["fit"] == "exact":
            return p["width"], p["height"]
        if p["fit"] == "shorter":
            scale = p["size"] / min(width, height)
        elif p["fit"] == "inside":
            scale = min(p["width"] / width, p["height"] / height)
        else:
            scale = max(p["width"] / width, p["height"] / height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def output_size(self, width, height):
        if self.params["fit"] == "cover":
            return self.params["width"], self.params["height"]
        return self._scaled(width, height)

    def transform(self, image):
        h, w = image.shape[:2]
        new_w, new_h = self._scaled(w, h)
        out = resize_to(image, new_w, new_h, self.params["interpolation"])
        if self.params["fit"] == "cover":
            out = center_crop(out, self.params["width"], self.params["height"])
        return out


def center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centered width x height window (clamped to the image)."""
    h, w = image.shape[:2]
    width, height = min(width, w), min(height, h)
    x, y = (w - width) // 2, (h - height) // 2
    return as_hwc(image)[y : y + height, x : x + width]


class Crop(ImageTransformer):
    """Crop: mode "center" (width, height), "box" (x, y, width, height) or "random" (width, height)."""

    name = "crop"
    version = 1
    defaults = {"mode": "center", "width": None, "height": None, "x": 0, "y": 0}

    def validate(self, params):
        _check_choice(params, "mode", {"center", "box", "random"})
        _check_int(params, "width")
        _check_int(params, "height")
        _check_int(params, "x", minimum=0)
        _check_int(params, "y", minimum=0)

    @property
    def random(self) -> bool:  # type: ignore[override]
        return self.params["mode"] == "random"

    def output_size(self, width, height):
        return min(self.params["width"], width), min(self.params["height"], height)

    def apply(self, image, rng):
        p = self.params
        image = as_hwc(image)
        if p["mode"] == "center":
            return center_crop(image, p["width"], p["height"])
        h, w = image.shape[:2]
        cw, ch = min(p["width"], w), min(p["height"], h)
        if p["mode"] == "random":
            if rng is None:
                raise ValueError("crop mode random needs an rng")
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        else:
            x, y = p["x"], p["y"]
            if x >= w or y >= h:
                raise ValueError(f"crop box at ({x}, {y}) lies outside the {w}x{h} image")
        return image[y : y + ch, x : x + cw]


class Pad(ImageTransformer):
    """Pad by top/bottom/left/right pixels, or centered up to width x height; mode constant
    (with `value`), edge or reflect."""

    name = "pad"
    version = 1
    defaults = {"top": 0, "bottom": 0, "left": 0, "right": 0, "width": None, "height": None, "mode": "constant", "value": 0}

    def validate(self, params):
        _check_choice(params, "mode", {"constant", "edge", "reflect"})
        for key in ("top", "bottom", "left", "right"):
            _check_int(params, key, minimum=0)
        _check_int(params, "width", optional=True)
        _check_int(params, "height", optional=True)

    def _amounts(self, width: int, height: int) -> tuple[int, int, int, int]:
        p = self.params
        top, bottom, left, right = p["top"], p["bottom"], p["left"], p["right"]
        if p["width"] and p["width"] > width:
            extra = p["width"] - width
            left, right = extra // 2, extra - extra // 2
        if p["height"] and p["height"] > height:
            extra = p["height"] - height
            top, bottom = extra // 2, extra - extra // 2
        return top, bottom, left, right

    def output_size(self, width, height):
        top, bottom, left, right = self._amounts(width, height)
        return width + left + right, height + top + bottom

    def transform(self, image):
        h, w = image.shape[:2]
        top, bottom, left, right = self._amounts(w, h)
        widths = ((top, bottom), (left, right), (0, 0))
        if self.params["mode"] == "constant":
            return np.pad(image, widths, mode="constant", constant_values=np.array(self.params["value"]).astype(image.dtype))
        return np.pad(image, widths, mode="symmetric" if self.params["mode"] == "reflect" else "edge")


class Flip(ImageTransformer):
    """Mirror: direction "horizontal" (left-right), "vertical" (top-bottom) or "both"."""

    name = "flip"
    version = 1
    defaults = {"direction": "horizontal"}

    def validate(self, params):
        _check_choice(params, "direction", {"horizontal", "vertical", "both"})

    def output_size(self, width, height):
        return width, height

    def transform(self, image):
        axes = {"horizontal": (1,), "vertical": (0,), "both": (0, 1)}[self.params["direction"]]
        return np.ascontiguousarray(np.flip(image, axis=axes))


def rotate_image(image: np.ndarray, angle: float, *, expand: bool = False, interpolation: str = "linear", fill: float = 0) -> np.ndarray:
    """Rotate counter-clockwise by `angle` degrees (Pillow's direction); multiples of 90 are exact.

    Example:
        >>> import numpy as np
        >>> rotate_image(np.zeros((2, 3, 1), np.uint8), 90).shape
        (3, 2, 1)
    """
    image = as_hwc(image)
    if float(angle) % 90 == 0:
        return np.ascontiguousarray(np.rot90(image, k=int(angle // 90) % 4, axes=(0, 1)))
    h, w = image.shape[:2]
    center = ((w - 1) / 2.0, (h - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(center, angle, 1.0)
    out_w, out_h = w, h
    if expand:
        cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
        out_w, out_h = int(math.ceil(h * sin + w * cos - 1e-9)), int(math.ceil(h * cos + w * sin - 1e-9))
        matrix[0, 2] += (out_w - 1) / 2.0 - center[0]
        matrix[1, 2] += (out_h - 1) / 2.0 - center[1]
    flag = _INTERPOLATION[interpolation]
    channels = image.shape[2]

    def warp(a):
        return cv2.warpAffine(a, matrix, (out_w, out_h), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)

    if channels > 4:
        return np.concatenate([_cv_call(image[:, :, i : i + 4], warp) for i in range(0, channels, 4)], axis=2)
    return _cv_call(image, warp)


class Rotate(ImageTransformer):
    """Rotate counter-clockwise by `angle` degrees; `expand` grows the canvas to fit."""

    name = "rotate"
    version = 1
    defaults = {"angle": 90, "expand": False, "interpolation": "linear", "fill": 0}

    def validate(self, params):
        if not isinstance(params["angle"], (int, float)) or isinstance(params["angle"], bool):
            raise SpecError(f"rotate: angle must be a number, got {params['angle']!r}")
        _check_choice(params, "interpolation", set(_INTERPOLATION))

    def output_size(self, width, height):
        if float(self.params["angle"]) % 180 == 90:
            return height, width
        if float(self.params["angle"]) % 180 == 0 or not self.params["expand"]:
            return width, height
        return None

    def transform(self, image):
        p = self.params
        return rotate_image(image, p["angle"], expand=p["expand"], interpolation=p["interpolation"], fill=p["fill"])


# --- color ----------------------------------------------------------------------------------

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])


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
        _check_choice(params, "to", {"rgb", "gray", "hsv", "lab"})
        _check_choice(params, "from", {"auto", "rgb", "gray", "hsv", "lab"})

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
            return cast_like(as_hwc(rgb.astype(np.float64) @ _GRAY_WEIGHTS), rgb.dtype)
        code = cv2.COLOR_RGB2HSV_FULL if target == "hsv" else cv2.COLOR_RGB2Lab
        if rgb.dtype == np.uint8:
            return cv2.cvtColor(rgb, code)
        low, high = _dtype_range(rgb.dtype)
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
        _check_choice(params, "window", {"percentile", "minmax", "dtype", "fixed", "center_width"})
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
            return _dtype_range(image.dtype)
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
        _check_choice(params, "method", {"zero_one", "standard", "imagenet", "minmax", "percentile"})

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
        _check_choice(params, "channels", {"luma", "per_channel"})

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
        _check_int(params, "tile_grid")
        _check_choice(params, "channels", {"luma", "per_channel"})

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
            low, high = _dtype_range(image.dtype)
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


# --- features -------------------------------------------------------------------------------


class Histogram(FeatureOp):
    """Per-channel histogram with `bins` bins over the dtype's range (floats: 0..1, clipped),
    channels concatenated: column `histogram` (array<long>)."""

    name = "histogram"
    version = 1
    defaults = {"bins": 16, "column": None}

    def validate(self, params):
        _check_int(params, "bins")

    def columns(self):
        return [(self.params["column"] or "histogram", {"type": "array", "elementType": "long", "containsNull": False})]

    def features(self, image):
        image = as_hwc(image)
        bins = self.params["bins"]
        low, high = _dtype_range(image.dtype)
        if np.issubdtype(image.dtype, np.integer):
            high += 1  # integer bins cover [min, max] inclusive
        counts = []
        for c in range(image.shape[2]):
            values = image[:, :, c].astype(np.float64).reshape(-1)
            values = np.clip(values[np.isfinite(values)], low, np.nextafter(high, low))
            hist, _ = np.histogram(values, bins=bins, range=(low, high))
            counts.extend(int(v) for v in hist)
        return {self.columns()[0][0]: counts}


class MeanStd(FeatureOp):
    """Per-channel mean and standard deviation: columns `mean` and `std` (array<double>)."""

    name = "mean_std"
    version = 1

    def _names(self) -> tuple[str, str]:
        prefix = self.params["column"]
        return (f"{prefix}_mean", f"{prefix}_std") if prefix else ("mean", "std")

    def columns(self):
        kind = {"type": "array", "elementType": "double", "containsNull": False}
        return [(name, kind) for name in self._names()]

    def features(self, image):
        flat = as_hwc(image).reshape(-1, as_hwc(image).shape[2]).astype(np.float64)
        mean_name, std_name = self._names()
        return {mean_name: [float(v) for v in flat.mean(axis=0)], std_name: [float(v) for v in flat.std(axis=0)]}


def perceptual_hash(image: np.ndarray, hash_size: int = 8) -> str:
    """DCT perceptual hash (the imagehash "phash" recipe) as hex: gray, area-resize to
    4*hash_size square, 2-D DCT, low-frequency hash_size x hash_size block vs its median.

    Example:
        >>> import numpy as np
        >>> len(perceptual_hash(np.zeros((40, 40, 3), np.uint8)))
        16
    """
    image = as_hwc(image)
    if image.shape[2] >= 3:
        gray = image[:, :, :3].astype(np.float64) @ _GRAY_WEIGHTS
    else:
        gray = image[:, :, 0].astype(np.float64)
    size = hash_size * 4
    small = cv2.resize(gray.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small.astype(np.float64))[:hash_size, :hash_size]
    bits = (low > np.median(low)).reshape(-1)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{hash_size * hash_size // 4}x}"


class PHash(FeatureOp):
    """Perceptual hash (64-bit DCT hash as 16 hex digits): column `phash` (string)."""

    name = "phash"
    version = 1
    defaults = {"hash_size": 8, "column": None}

    def validate(self, params):
        _check_int(params, "hash_size", minimum=2)

    def columns(self):
        return [(self.params["column"] or "phash", "string")]

    def features(self, image):
        return {self.columns()[0][0]: perceptual_hash(image, self.params["hash_size"])}


# --- registry -------------------------------------------------------------------------------


def _entry_point_ops() -> dict[str, Any]:
    try:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group="lakeimg.ops")}
    except Exception:  # noqa: BLE001 - broken plugin metadata must not break built-in ops
        return {}


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def op_class(name: str, impl: str | None = None) -> type[ImageTransformer]:
    """The op class for a spec name: built-in, subclass, `lakeimg.ops` entry point, or "module:Class".

    Example:
        >>> op_class("flip").__name__
        'Flip'
    """
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _CUSTOM:
        return _CUSTOM[name]
    candidates = []
    if impl:
        candidates.append(lambda: _import(impl))
    eps = _entry_point_ops()
    if name in eps:
        candidates.append(eps[name].load)
    if ":" in name:
        candidates.append(lambda: _import(name))
    for load in candidates:
        try:
            cls = load()
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"op {name!r}: cannot load {impl or name}: {exc}") from exc
        if isinstance(cls, type) and issubclass(cls, ImageTransformer):
            return cls
        raise SpecError(f"op {name!r} is not an ImageTransformer subclass")
    raise SpecError(f"unknown op {name!r}; known: {', '.join(registered_ops())}")


def registered_ops() -> list[str]:
    """Names of every op this process knows (built-in, subclasses, entry points)."""
    return sorted({*_BUILTIN, *_CUSTOM, *_entry_point_ops()})


def make_op(spec: Mapping[str, Any]) -> ImageTransformer:
    """Build an op from its spec entry {"op": name, ...params} ("version" and "impl" are checked).

    Example:
        >>> make_op({"op": "flip", "direction": "vertical"}).params
        {'direction': 'vertical'}
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("op"), str):
        raise SpecError(f"each op must be an object with an 'op' name, got {spec!r}")
    params = dict(spec)
    name = params.pop("op")
    impl = params.pop("impl", None)
    version = params.pop("version", None)
    cls = op_class(name, impl)
    unknown = set(params) - set(cls.defaults) if cls.defaults and cls.__module__ == __name__ else set()
    if unknown:
        raise SpecError(f"{name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(cls.defaults)}")
    try:
        op = cls(**params)
    except TypeError as exc:
        raise SpecError(f"{name}: {exc}") from exc
    if version is not None and version != cls.version:
        raise SpecError(f"{name}: spec asks for version {version}, this lakeimg has version {cls.version}")
    return op
