"""Pure image code: bytes/ndarray in, bytes/ndarray out. Never imports pyspark or deltalake."""

from __future__ import annotations

from lakeimg.image.decode import decode_image, read_image, sniff_format
from lakeimg.image.display import make_thumbnail, to_display_uint8
from lakeimg.image.info import DecodedImage, apply_orientation

__all__ = [
    "DecodedImage",
    "apply_orientation",
    "decode_image",
    "make_thumbnail",
    "read_image",
    "sniff_format",
    "to_display_uint8",
]
