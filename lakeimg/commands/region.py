"""`lakeimg region --lake LAKE URI X Y W H [--level L] --out FILE`: write a window of an image to a file."""

from __future__ import annotations

import os

from lakeimg.commands._common import lake_of
from lakeimg.errors import SpecError
from lakeimg.image.codecs import export_bytes
from lakeimg.storage import write_bytes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("region", help="write a window of an image (tiled or not) to a PNG or TIFF file")
    p.add_argument("uri", metavar="URI", help="the image's uri or local path")
    for name in ("x", "y", "width", "height"):
        p.add_argument(name, type=int, metavar=name[0].upper() if name in ("x", "y") else name[0].upper())
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--table", default="images", help="images table name (default: images)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (0: full resolution)")
    p.add_argument("--page", type=int, default=0, help="TIFF page or DICOM frame")
    p.add_argument("--version", type=int, default=None, help="the images table's version (default: latest)")
    p.add_argument("--out", required=True, help="output file: .png (8/16-bit, 1, 3 or 4 channels) or .tif/.tiff (any dtype)")
    p.set_defaults(handler=run)


def write_window(path: str, pixels) -> None:
    """Write an HWC array: TIFF keeps any dtype; PNG takes uint8/uint16 with 1, 3 or 4 channels."""
    fmt = {".tif": "tiff", ".tiff": "tiff", ".png": "png"}.get(os.path.splitext(path.lower())[1])
    if fmt is None:
        raise SpecError(f"--out must end in .png, .tif or .tiff: {path}")
    if fmt == "png" and (pixels.dtype.name not in ("uint8", "uint16") or pixels.shape[2] not in (1, 3, 4)):
        raise SpecError(f"PNG holds uint8/uint16 with 1, 3 or 4 channels, not {pixels.dtype} x {pixels.shape[2]}; use .tif")
    write_bytes(path, export_bytes(pixels, fmt))


def run(args) -> int:
    pixels = lake_of(args).read_region(
        args.table, args.uri, args.x, args.y, args.width, args.height, level=args.level, page=args.page, version=args.version
    )
    write_window(args.out, pixels)
    print(f"{args.out}: {pixels.shape[1]}x{pixels.shape[0]} {pixels.shape[2]} channel(s) {pixels.dtype}")
    return 0
