"""Feature ops: columns computed from the pixels (histogram, mean_std, phash), pixels unchanged.

Example:
    >>> import numpy as np
    >>> MeanStd().features(np.full((2, 2, 1), 3, np.uint8))
    {'mean': [3.0], 'std': [0.0]}
"""

from __future__ import annotations

import cv2
import numpy as np

from lakeimg.image.info import as_hwc
from lakeimg.image.ops._base import FeatureOp, check_int, dtype_range
from lakeimg.image.ops.intensity import GRAY_WEIGHTS

__all__ = ["Histogram", "MeanStd", "PHash", "perceptual_hash"]


class Histogram(FeatureOp):
    """Per-channel histogram with `bins` bins over the dtype's range (floats: 0..1, clipped),
    channels concatenated: column `histogram` (array<long>)."""

    name = "histogram"
    version = 1
    defaults = {"bins": 16, "column": None}

    def validate(self, params):
        check_int(params, "bins")

    def columns(self):
        return [(self.params["column"] or "histogram", {"type": "array", "elementType": "long", "containsNull": False})]

    def features(self, image):
        image = as_hwc(image)
        bins = self.params["bins"]
        low, high = dtype_range(image.dtype)
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
        gray = image[:, :, :3].astype(np.float64) @ GRAY_WEIGHTS
    else:
        gray = image[:, :, 0].astype(np.float64)
    size = hash_size * 4
    small = cv2.resize(gray.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small.astype(np.float64))[:hash_size, :hash_size]
    bits = (low > np.median(low)).reshape(-1)
    # packbits pads the last byte with zero bits on the right: shift them back out.
    value = int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-bits.size % 8)
    return f"{value:0{hash_size * hash_size // 4}x}"


class PHash(FeatureOp):
    """Perceptual hash (64-bit DCT hash as 16 hex digits): column `phash` (string)."""

    name = "phash"
    version = 1
    defaults = {"hash_size": 8, "column": None}

    def validate(self, params):
        check_int(params, "hash_size", minimum=2)

    def columns(self):
        return [(self.params["column"] or "phash", "string")]

    def features(self, image):
        return {self.columns()[0][0]: perceptual_hash(image, self.params["hash_size"])}
