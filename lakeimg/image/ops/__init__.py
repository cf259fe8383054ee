"""Image ops for transform jobs: pure ndarray in, ndarray out (HWC, native dtype where possible).

The package owns the op library, split by what the ops do: `geometry` (resize, crop, pad, flip,
rotate), `intensity` (color, to_uint8, normalize, equalize, clahe, augment) and `features`
(histogram, mean_std, phash: columns, pixels unchanged); `_base` holds the `ImageTransformer`
base class for custom ops and the op registry (built-ins, subclasses, the `lakeimg.ops`
entry-point group, and "module:Class" import paths).

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

from lakeimg.image.ops import geometry, intensity  # noqa: F401 - defining the classes registers them
from lakeimg.image.ops._base import FeatureOp, ImageTransformer, make_op, op_class, registered_ops
from lakeimg.image.ops.features import perceptual_hash

__all__ = ["FeatureOp", "ImageTransformer", "make_op", "op_class", "perceptual_hash", "registered_ops"]
