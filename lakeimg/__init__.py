"""lakeimg: turn image collections into a Delta Lake lakehouse.

`import lakeimg` loads nothing heavy and changes nothing in the importing process: each public
name is imported on first use (PEP 562), so Delta, Spark, OpenCV and Pillow load only when a
lake is used.

Example:
    >>> import tempfile, lakeimg
    >>> lakeimg.Lake(tempfile.mkdtemp()).tables()
    []
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lakeimg._version import __version__
from lakeimg.errors import (
    ConcurrentWriteError,
    ImageDecodeError,
    LakeImgError,
    LakeNotWritableError,
    SourceNotFoundError,
    SpecError,
    TableNotFoundError,
)

if TYPE_CHECKING:
    from lakeimg.catalog.trainsets import TrainingSet
    from lakeimg.image.ops import ImageTransformer
    from lakeimg.lake import Lake

_HOMES = {"Lake": "lakeimg.lake", "TrainingSet": "lakeimg.catalog.trainsets", "ImageTransformer": "lakeimg.image.ops"}

__all__ = ["ConcurrentWriteError", "ImageDecodeError", "ImageTransformer", "Lake", "LakeImgError",
           "LakeNotWritableError", "SourceNotFoundError", "SpecError", "TableNotFoundError", "TrainingSet",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'lakeimg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
