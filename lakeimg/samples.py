"""Generated sample images: one of every supported format, plus broken files, and photo-like JPEGs.

Used by `lakeimg demo`, the tests and the benchmarks; nothing is downloaded. DICOM samples are
copied from the test files that pydicom ships.

Example:
    >>> import tempfile
    >>> paths = write_sample_folder(tempfile.mkdtemp())
    >>> any(p.endswith(".dcm") for p in paths)
    True
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "photo_like",
    "write_photo_jpegs",
    "write_sample_folder",
    "write_broken_files",
    "geotiff_bytes",
    "png_with_huge_header",
    "pydicom_test_file",
    "pattern_tile",
    "write_tiled_bigtiff",
]


def photo_like(height: int, width: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth, textured uint8 image that compresses like a photo (not like noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, channels), np.float32)
    for c in range(channels):
        fx, fy, phase = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02), rng.uniform(0, 6.28)
        out[:, :, c] = 128 + 80 * np.sin(x * fx + phase) * np.cos(y * fy - phase)
    out += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def pattern_tile(y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """A window of the huge test pattern `write_tiled_bigtiff` writes (uint8 gray, HxW): every
    pixel depends on its position, so a misplaced tile or pixel shows.

    Example:
        >>> int(pattern_tile(0, 0, 1, 2)[0, 1])
        3
    """
    x, y = np.arange(x0, x0 + width), np.arange(y0, y0 + height)
    across = ((x * 3 + (x // 512) * 41) % 256).astype(np.uint8)
    down = ((y * 7 + (y // 512) * 13) % 256).astype(np.uint8)
    return down[:, None] + across[None, :]  # uint8 arithmetic wraps: the sum modulo 256


def write_tiled_bigtiff(path: str | os.PathLike[str], size: int, *, tile: int = 512, pyramid: int = 0,
                        photo: bool = False) -> str:
    """Write a `size` x `size` uint8 BigTIFF of `pattern_tile`, tiled and zlib-compressed, one
    tile at a time (memory: one tile). `pyramid` > 0 adds that many 2x-smaller levels as SubIFDs
    (their pixels are the pattern at that level's coordinates, for read benchmarks). `photo`:
    photo-like tiles instead (they compress like photos, not like the pattern; for benchmarks).

    Example:
        >>> import tempfile, tifffile
        >>> p = write_tiled_bigtiff(os.path.join(tempfile.mkdtemp(), "a.tif"), 1000, tile=256)
        >>> bool((tifffile.imread(p)[300:310, 500:520] == pattern_tile(300, 500, 10, 20)).all())
        True
    """
    import tifffile

    variants = [photo_like(tile, tile, seed=s, channels=1)[:, :, 0] for s in range(8)] if photo else []

    def tiles(shape: int):
        for r in range(0, shape, tile):
            for c in range(0, shape, tile):
                out = np.zeros((tile, tile), np.uint8)
                h, w = min(tile, shape - r), min(tile, shape - c)
                if photo:
                    out[:h, :w] = variants[(r // tile * 7 + c // tile * 3) % 8][:h, :w] + np.uint8((r // tile * 5 + c // tile * 3) % 64)
                else:
                    out[:h, :w] = pattern_tile(r, c, h, w)
                yield out

    path = os.fspath(path)
    options = {"tile": (tile, tile), "compression": "zlib", "compressionargs": {"level": 1}, "photometric": "minisblack"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(size), shape=(size, size), dtype=np.uint8, subifds=pyramid or None, **options)
        level_size = size
        for _ in range(pyramid):
            level_size = (level_size + 1) // 2
            tif.write(tiles(level_size), shape=(level_size, level_size), dtype=np.uint8, subfiletype=1, **options)
    return path


def write_photo_jpegs(folder: str | os.PathLike[str], count: int, *, width: int = 1024, height: int = 768, quality: int = 90) -> list[str]:
    """Write `count` photo-like JPEGs (distinct content) into `folder`, in sub-folders of 100."""
    folder = Path(folder)
    base = photo_like(height, width, seed=1)
    paths = []
    for i in range(count):
        sub = folder / f"batch{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        shifted = np.roll(base, shift=(i * 7) % height, axis=0)
        shifted[:16, :16] = i % 256  # distinct bytes per file
        path = sub / f"photo_{i:05d}.jpg"
        Image.fromarray(shifted).save(path, "JPEG", quality=quality)
        paths.append(str(path))
    return paths


def geotiff_bytes(pixels: np.ndarray, *, origin=(500000.0, 4600000.0), pixel_size=(10.0, 10.0), epsg: int = 32633, tile: int | None = None) -> bytes:
    """A GeoTIFF with ModelPixelScale, ModelTiepoint and a GeoKey directory naming `epsg`."""
    import tifffile

    sx, sy = pixel_size
    geokeys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg)
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        pixels,
        tile=(tile, tile) if tile else None,
        extratags=[
            (33550, "d", 3, (sx, sy, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),
            (34735, "H", len(geokeys), geokeys, True),
        ],
    )
    return buf.getvalue()


def png_with_huge_header(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose IHDR claims `width` x `height` pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def pydicom_test_file(name: str) -> str | None:
    """Path of a DICOM test file shipped inside the pydicom wheel (never downloaded)."""
    import pydicom

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    return str(path) if path.is_file() else None


def write_broken_files(folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write one file per broken-file class; returns {file name: expected error_class}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(photo_like(64, 64)).save(good, "JPEG")
    png = io.BytesIO()
    Image.fromarray(photo_like(64, 64)).save(png, "PNG")
    files = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated"),
        "random.bin": (np.random.default_rng(3).bytes(5000), "unsupported_format"),
        "notes.jpg": (b"this is a text file, not a JPEG\n" * 20, "unsupported_format"),
        "bomb.png": (png_with_huge_header(), "too_large"),
        "corrupt.tif": (b"II*\x00" + b"\xff" * 200, "corrupt"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: error_class for name, (_, error_class) in files.items()}


def write_sample_folder(folder: str | os.PathLike[str], *, broken: bool = True) -> list[str]:
    """A small mixed folder: every format, 8/16-bit and float, EXIF orientation, DICOM, GeoTIFF."""
    import tifffile

    folder = Path(folder)
    for sub in ("photos", "scans", "medical", "geo"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rgb = photo_like(240, 320)
    written: list[str] = []

    def save(path: Path, writer) -> None:
        writer(path)
        written.append(str(path))

    save(folder / "photos" / "landscape.jpg", lambda p: Image.fromarray(rgb).save(p, "JPEG", quality=92))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    exif[0x010F] = "lakeimg"
    save(folder / "photos" / "rotated.jpg", lambda p: Image.fromarray(rgb).save(p, "JPEG", exif=exif.tobytes()))
    save(folder / "photos" / "alpha.png", lambda p: Image.fromarray(photo_like(100, 120, channels=4)).save(p, "PNG"))
    save(folder / "photos" / "palette.gif", lambda p: Image.fromarray(rgb).convert("P").save(p, "GIF"))
    save(folder / "photos" / "picture.webp", lambda p: Image.fromarray(rgb).save(p, "WEBP", lossless=True))
    save(folder / "photos" / "picture.bmp", lambda p: Image.fromarray(rgb).save(p, "BMP"))
    save(folder / "photos" / "picture.jp2", lambda p: Image.fromarray(rgb).save(p, "JPEG2000"))
    gray16 = (photo_like(200, 300, channels=1)[:, :, 0].astype(np.uint16) * 257)
    save(folder / "scans" / "gray16.png", lambda p: Image.fromarray(gray16).save(p, "PNG"))
    rgb16 = rgb.astype(np.uint16) * 257
    import cv2

    save(folder / "scans" / "rgb16.png", lambda p: cv2.imwrite(str(p), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR)))
    save(folder / "scans" / "float32.tif", lambda p: tifffile.imwrite(p, gray16.astype(np.float32) / 65535.0))
    save(folder / "scans" / "float16.tif", lambda p: tifffile.imwrite(p, (gray16 / 65535.0).astype(np.float16)))
    save(folder / "scans" / "pages.tif", lambda p: tifffile.imwrite(p, np.stack([gray16, gray16 // 2, gray16 // 3]), photometric="minisblack"))
    save(folder / "scans" / "deflate.tif", lambda p: tifffile.imwrite(p, rgb16, compression="zlib"))
    save(folder / "geo" / "scene.tif", lambda p: p.write_bytes(geotiff_bytes(gray16)))
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"):
        src = pydicom_test_file(name)
        if src:
            save(folder / "medical" / name, lambda p, s=src: shutil.copyfile(s, p))
    if broken:
        bad = folder / "broken"
        for name in write_broken_files(bad):
            written.append(str(bad / name))
    return written
