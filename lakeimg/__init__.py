"""lakeimg: turn image collections into a Delta Lake lakehouse.

Example:
    >>> import lakeimg
    >>> lakeimg.Lake("/tmp/lake")  # doctest: +SKIP
"""

from __future__ import annotations

from lakeimg._version import __version__
from lakeimg.catalog.trainsets import TrainingSet
from lakeimg.errors import (
    ConcurrentWriteError,
    ImageDecodeError,
    LakeImgError,
    LakeNotWritableError,
    SourceNotFoundError,
    SpecError,
    TableNotFoundError,
)
from lakeimg.image.ops import ImageTransformer
from lakeimg.lake import Lake

__all__ = [
    "ConcurrentWriteError",
    "ImageDecodeError",
    "ImageTransformer",
    "Lake",
    "LakeImgError",
    "LakeNotWritableError",
    "SourceNotFoundError",
    "SpecError",
    "TableNotFoundError",
    "TrainingSet",
    "__version__",
]
