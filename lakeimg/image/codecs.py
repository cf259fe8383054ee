"""Pixel encodings of derived tables and tiles (png, jpeg, webp, raw), and export file formats.

An *encoding* turns an HWC ndarray into the bytes of a derived table's `data` column and back:
"auto" (the default: png when png holds the pixels, else raw+zstd), "png" (uint8/uint16; 1, 3 or 4 channels), "jpeg" (uint8; 1 or 3 channels), "webp" (uint8; 3 or 4
channels), and "raw" (the array's C-order bytes in any dtype, optionally compressed with zstd or
deflate; the `encoding` column then reads "raw+zstd" / "raw+deflate"). Plugins add encodings
through the entry-point group `lakeimg.encodings` (an object or class with `name`,
`encode(image, **params) -> bytes`, `decode(data, width, height, channels, dtype) -> ndarray`).

Why not the group `lakeimg.codecs`: ingest already loads that group as *readers* (callables that
decode a source file), and an encoder registered there would be called by ingest as a reader.
Keeping writers in their own group keeps both meanings unambiguous.

Tiles use the same codecs: `encode_tile` maps a tile codec name ("zstd", "deflate", "png",
"raw": lossless, every dtype) to one of them; a tile row's `encoding` keeps that name.

Encoders are deterministic (fixed settings, single-threaded OpenCV), so the same pixels always
give the same bytes on every engine.

Example:
    >>> import numpy as np
    >>> a = np.arange(12, dtype=np.uint16).reshape(2, 2, 3)
    >>> enc = get_encoding("raw")
    >>> data = enc.encode(a, compression="zstd")
    >>> np.array_equal(decode_pixels(data, "raw+zstd", 2, 2, 3, "uint16"), a)
    True
"""

from __future__ import annotations

import io
import zlib
from typing import Any, ClassVar

import cv2
import numpy as np

from lakeimg.errors import SpecError
from lakeimg.image._plugins import entry_points_of
from lakeimg.image.display import to_display_uint8
from lakeimg.image.info import as_hwc

__all__ = [
    "Encoding",
    "get_encoding",
    "registered_encodings",
    "normalize_output",
    "encode_pixels",
    "decode_pixels",
    "export_bytes",
    "EXPORT_FORMATS",
    "DEFAULT_TILE_ENCODING",
    "TILE_ENCODINGS",
    "decode_tile",
    "encode_tile",
]

EXPORT_FORMATS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp"}


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's encoders expect BGR(A); lakeimg keeps RGB(A)."""
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    return image if image.ndim == 2 else image[:, :, 0]


def _from_cv(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image[:, :, None]
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def _cv_encode(ext: str, image: np.ndarray, flags: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, _to_bgr(np.ascontiguousarray(image)), flags)
    if not ok:
        raise ValueError(f"OpenCV could not encode {image.dtype} {image.shape} as {ext}")
    return buf.tobytes()


def _cv_decode(data: bytes) -> np.ndarray:
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if out is None:
        raise ValueError("OpenCV could not decode the data")
    return _from_cv(out)


class Encoding:
    """One output encoding. Subclass (or duck-type) it for a plugin in `lakeimg.encodings`."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def validate(self, params: dict[str, Any]) -> None:
        """Raise SpecError for bad params (called with defaults merged in)."""

    def column_value(self, params: dict[str, Any]) -> str:
        """What the `encoding` column says for rows written with these params."""
        return self.name

    def check(self, image: np.ndarray) -> None:
        """Raise ValueError when this encoding cannot hold `image` (dtype or channels)."""

    def encode(self, image: np.ndarray, **params: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes, width: int, height: int, channels: int, dtype: str) -> np.ndarray:
        raise NotImplementedError


class _OpenCv(Encoding):
    """An image format OpenCV encodes and decodes (png, jpeg, webp)."""

    def decode(self, data, width, height, channels, dtype):
        out = _cv_decode(data)  # gray + alpha comes back as RGBA: keep the stored two channels
        return out[:, :, [0, 3]] if channels == 2 and out.shape[2] == 4 else out


class Png(_OpenCv):
    name = "png"
    defaults = {"compression": 3}

    def check(self, image):
        if image.dtype not in (np.uint8, np.uint16) or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"png holds uint8/uint16 with 1, 3 or 4 channels, not {image.dtype} with {image.shape[2]}; add to_uint8 or use raw")

    def encode(self, image, **params):
        self.check(image)
        return _cv_encode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(params.get("compression", 3))])


class Jpeg(_OpenCv):
    name = "jpeg"
    defaults = {"quality": 90}

    def validate(self, params):
        if not 1 <= int(params["quality"]) <= 100:
            raise SpecError(f"jpeg quality must be 1..100, got {params['quality']}")

    def check(self, image):
        if image.dtype != np.uint8 or image.shape[2] not in (1, 3):
            raise ValueError(f"jpeg holds uint8 with 1 or 3 channels, not {image.dtype} with {image.shape[2]}; add to_uint8/color or use png/raw")

    def encode(self, image, **params):
        self.check(image)
        return _cv_encode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(params.get("quality", 90))])


class Webp(_OpenCv):
    name = "webp"
    defaults = {"quality": 90, "lossless": False}

    def check(self, image):
        if image.dtype != np.uint8 or image.shape[2] not in (3, 4):
            raise ValueError(f"webp holds uint8 RGB or RGBA, not {image.dtype} with {image.shape[2]} channels")

    def encode(self, image, **params):
        self.check(image)
        quality = 101 if params.get("lossless") else int(params.get("quality", 90))  # >100 means lossless
        return _cv_encode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])


class Raw(Encoding):
    """The array's C-order bytes (HWC, native dtype, little-endian), optionally compressed."""

    name = "raw"
    defaults = {"compression": None, "level": None}

    def validate(self, params):
        if params["compression"] not in (None, "zstd", "deflate"):
            raise SpecError(f"raw compression must be null, zstd or deflate, got {params['compression']!r}")

    def column_value(self, params):
        return f"raw+{params['compression']}" if params.get("compression") else "raw"

    def encode(self, image, **params):
        data = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes()
        compression = params.get("compression")
        if compression == "zstd":
            import imagecodecs

            return bytes(imagecodecs.zstd_encode(data, level=params.get("level") or 3))
        if compression == "deflate":
            return zlib.compress(data, params.get("level") or 6)
        return data

    def decode(self, data, width, height, channels, dtype, compression=None):
        if compression == "zstd":
            import imagecodecs

            data = imagecodecs.zstd_decode(data)
        elif compression == "deflate":
            data = zlib.decompress(data)
        return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(height, width, channels)


class Auto(Encoding):
    """png when png holds the pixels losslessly (uint8/uint16 with 1, 3 or 4 channels), else raw
    compressed with zstd; the `encoding` column names what each row got."""

    name = "auto"

    def pick(self, image: np.ndarray) -> tuple[Encoding, dict[str, Any]]:
        try:
            _BUILTIN["png"].check(image)
            return _BUILTIN["png"], dict(Png.defaults)
        except ValueError:
            return _BUILTIN["raw"], {"compression": "zstd", "level": None}

    def encode(self, image, **params):
        encoding, chosen = self.pick(image)
        return encoding.encode(image, **chosen)


_BUILTIN: dict[str, Encoding] = {e.name: e for e in (Png(), Jpeg(), Webp(), Raw(), Auto())}


def registered_encodings() -> list[str]:
    """Names of the built-in and plugin encodings."""
    return sorted({*_BUILTIN, *entry_points_of("lakeimg.encodings")})


def get_encoding(name: str) -> Encoding:
    """The encoding called `name` (built-in or `lakeimg.encodings` plugin).

    Example:
        >>> get_encoding("png").name
        'png'
    """
    if name in _BUILTIN:
        return _BUILTIN[name]
    plugins = entry_points_of("lakeimg.encodings")
    if name in plugins:
        obj = plugins[name].load()
        return obj() if isinstance(obj, type) else obj
    raise SpecError(f"unknown encoding {name!r}; known: {', '.join(registered_encodings())}")


def normalize_output(output: dict[str, Any] | str | None) -> dict[str, Any]:
    """A spec's "output" with the encoding's defaults filled in.

    Example:
        >>> normalize_output({"encoding": "jpeg"})
        {'encoding': 'jpeg', 'quality': 90}
    """
    if output is None:
        output = {"encoding": "auto"}
    if isinstance(output, str):
        output = {"encoding": output}
    params = dict(output)
    name = params.pop("encoding", "auto")
    encoding = get_encoding(name)
    defaults = getattr(encoding, "defaults", {}) or {}
    unknown = set(params) - set(defaults)
    if defaults and unknown:
        raise SpecError(f"output {name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
    merged = {**defaults, **params}
    if hasattr(encoding, "validate"):
        encoding.validate(merged)
    return {"encoding": name, **merged}


def encode_pixels(image: np.ndarray, output: dict[str, Any]) -> tuple[str, bytes]:
    """Encode pixels per a normalized output; returns (encoding column value, bytes)."""
    params = dict(output)
    encoding = get_encoding(params.pop("encoding"))
    if isinstance(encoding, Auto):
        encoding, params = encoding.pick(image)
    value = encoding.column_value(params) if hasattr(encoding, "column_value") else encoding.name
    return value, encoding.encode(image, **params)


def decode_pixels(data: bytes, encoding: str, width: int, height: int, channels: int, dtype: str) -> np.ndarray:
    """Pixels of a derived table row (HWC, the row's dtype) from its `data` and `encoding`.

    Example:
        >>> import numpy as np
        >>> decode_pixels(np.zeros(6, np.uint8).tobytes(), "raw", 3, 2, 1, "uint8").shape
        (2, 3, 1)
    """
    name, _, compression = encoding.partition("+")
    codec = get_encoding(name)
    if name == "raw":
        return codec.decode(data, width, height, channels, dtype, compression=compression or None)
    out = codec.decode(data, width, height, channels, dtype)
    return as_hwc(out)


# Tile codecs by the name `tile_encoding` takes. zstd at level 1 is the default: it keeps every
# dtype and encodes many times faster than png or deflate (benchmarks/bench_tiles.py), which
# would otherwise dominate the ingest of a huge image.
TILE_ENCODINGS: dict[str, dict[str, Any]] = {
    "zstd": {"encoding": "raw", "compression": "zstd", "level": 1},
    "deflate": {"encoding": "raw", "compression": "deflate", "level": 1},
    "png": {"encoding": "png", "compression": 1},
    "raw": {"encoding": "raw", "compression": None, "level": None},
}
DEFAULT_TILE_ENCODING = "zstd"
# A tile row's `encoding` keeps the tile codec's name (tables written by every version agree);
# these two name the derived tables' codec they stand for.
_TILE_AS_PIXEL_ENCODING = {"zstd": "raw+zstd", "deflate": "raw+deflate"}


def encode_tile(arr: np.ndarray, encoding: str = DEFAULT_TILE_ENCODING) -> tuple[bytes, str]:
    """Encode an HWC tile losslessly; returns (bytes, `encoding` column value).

    "png" falls back to "zstd" for dtypes or channel counts png cannot hold.

    Example:
        >>> data, used = encode_tile(np.zeros((4, 4, 1), np.float32), "png")
        >>> used, decode_tile(data, used, 4, 4, 1, "float32").shape
        ('zstd', (4, 4, 1))
    """
    if encoding not in TILE_ENCODINGS:
        raise ValueError(f"unknown tile encoding {encoding!r}; choose one of {', '.join(TILE_ENCODINGS)}")
    if encoding == "png":
        try:
            _BUILTIN["png"].check(arr)
        except ValueError:
            encoding = "zstd"
    _, data = encode_pixels(arr, TILE_ENCODINGS[encoding])
    return data, encoding


def decode_tile(data: bytes, encoding: str, height: int, width: int, channels: int, dtype: str) -> np.ndarray:
    """Pixels of a tile row (HWC) from its `data` and `encoding`: `decode_pixels` in tile-row order.

    Example:
        >>> arr = np.arange(12, dtype=np.uint16).reshape(2, 2, 3)
        >>> bool((decode_tile(*encode_tile(arr, "png"), 2, 2, 3, "uint16") == arr).all())
        True
    """
    return decode_pixels(data, _TILE_AS_PIXEL_ENCODING.get(encoding, encoding), width, height, channels, dtype)


def export_bytes(image: np.ndarray, fmt: str, *, quality: int = 90) -> bytes:
    """File bytes of `image` as jpeg, png, tiff or bmp; pixels the format cannot hold are
    rendered for display first (8-bit with a percentile window; png keeps uint16, tiff keeps
    every dtype).

    Example:
        >>> import numpy as np
        >>> export_bytes(np.zeros((2, 2, 1), np.float32), "tiff")[:2] in (b"II", b"MM")
        True
    """
    image = as_hwc(image)
    if fmt == "tiff":
        import tifffile

        buf = io.BytesIO()
        channels = image.shape[2]
        if channels == 1:
            tifffile.imwrite(buf, image[:, :, 0], photometric="minisblack")
        elif channels in (3, 4):
            extra = ["unassalpha"] if channels == 4 else None
            tifffile.imwrite(buf, image, photometric="rgb", planarconfig="contig", extrasamples=extra)
        else:  # any other sample count: gray plus unspecified extra samples, interleaved
            tifffile.imwrite(buf, image, photometric="minisblack", planarconfig="contig", extrasamples=["unspecified"] * (channels - 1))
        return buf.getvalue()
    if fmt == "png":
        if image.dtype not in (np.uint8, np.uint16) or image.shape[2] not in (1, 3, 4):
            image = to_display_uint8(image)
        return _cv_encode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if fmt in ("jpeg", "bmp"):
        if image.dtype != np.uint8 or image.shape[2] not in (1, 3):
            image = to_display_uint8(image)
        if fmt == "jpeg":
            return _cv_encode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        return _cv_encode(".bmp", image, [])
    raise SpecError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
