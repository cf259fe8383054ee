"""Geometry ops: resize, crop, pad, flip, rotate (any dtype, HWC).

Example:
    >>> import numpy as np
    >>> Flip(direction="vertical").apply(np.arange(2, dtype=np.uint8).reshape(2, 1, 1), None).ravel().tolist()
    [1, 0]
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from lakeimg.errors import SpecError
from lakeimg.image.info import as_hwc
from lakeimg.image.ops._base import (
    INTERPOLATION,
    ImageTransformer,
    check_choice,
    check_int,
    cv_call,
)

__all__ = ["Crop", "Flip", "Pad", "Resize", "Rotate", "center_crop", "resize_to", "rotate_image"]


def _interp(name: str, shrinking: bool) -> int:
    if name == "auto":  # area averaging when shrinking (no aliasing), bilinear when enlarging
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return INTERPOLATION[name]


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
    # OpenCV's cubic and Lanczos kernels take at most 4 channels
    limit = 4 if flag in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4) else None
    return cv_call(image, lambda a: cv2.resize(a, (width, height), interpolation=flag), limit)


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
        check_choice(params, "fit", {"exact", "inside", "cover", "shorter"})
        check_choice(params, "reduce_on_load", {True, False})
        check_choice(params, "interpolation", {"auto", *INTERPOLATION})
        if params["fit"] == "shorter":
            check_int(params, "size")
        else:
            check_int(params, "width")
            check_int(params, "height")

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
        check_choice(params, "mode", {"center", "box", "random"})
        check_int(params, "width")
        check_int(params, "height")
        check_int(params, "x", minimum=0)
        check_int(params, "y", minimum=0)

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
        check_choice(params, "mode", {"constant", "edge", "reflect"})
        for key in ("top", "bottom", "left", "right"):
            check_int(params, key, minimum=0)
        check_int(params, "width", optional=True)
        check_int(params, "height", optional=True)

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
        check_choice(params, "direction", {"horizontal", "vertical", "both"})

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
    flag = INTERPOLATION[interpolation]

    def warp(a):
        return cv2.warpAffine(a, matrix, (out_w, out_h), flags=flag, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)

    return cv_call(image, warp, 4)


class Rotate(ImageTransformer):
    """Rotate counter-clockwise by `angle` degrees; `expand` grows the canvas to fit."""

    name = "rotate"
    version = 1
    defaults = {"angle": 90, "expand": False, "interpolation": "linear", "fill": 0}

    def validate(self, params):
        if not isinstance(params["angle"], (int, float)) or isinstance(params["angle"], bool):
            raise SpecError(f"rotate: angle must be a number, got {params['angle']!r}")
        check_choice(params, "interpolation", set(INTERPOLATION))

    def output_size(self, width, height):
        if float(self.params["angle"]) % 180 == 90:
            return height, width
        if float(self.params["angle"]) % 180 == 0 or not self.params["expand"]:
            return width, height
        return None

    def transform(self, image):
        p = self.params
        return rotate_image(image, p["angle"], expand=p["expand"], interpolation=p["interpolation"], fill=p["fill"])

