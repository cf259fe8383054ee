"""`lakeimg region --lake LAKE URI X Y W H [--level L] --out FILE`: write a window of an image to a file."""

from __future__ import annotations

import argparse

from lakeimg.errors import SpecError
from lakeimg.lake import Lake


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
    p.add_argument("--out", required=True, help="output file: .png (8/16-bit, 1-4 channels) or .tif/.tiff (any dtype)")
    p.set_defaults(handler=run)


def write_window(path: str, pixels) -> None:
    """Write an HWC array: TIFF keeps any dtype; PNG takes uint8/uint16 with 1-4 channels."""
    lower = path.lower()
    if lower.endswith((".tif", ".tiff")):
        import tifffile

        tifffile.imwrite(path, pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, photometric="minisblack" if pixels.shape[2] not in (3, 4) else "rgb")
        return
    if lower.endswith(".png"):
        import imagecodecs

        if pixels.dtype.name not in ("uint8", "uint16") or pixels.shape[2] > 4:
            raise argparse.ArgumentTypeError(f"PNG holds uint8/uint16 with 1-4 channels, not {pixels.dtype} x {pixels.shape[2]}; use .tif")
        with open(path, "wb") as handle:
            handle.write(imagecodecs.png_encode(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels))
        return
    raise argparse.ArgumentTypeError(f"--out must end in .png, .tif or .tiff: {path}")


def run(args) -> int:
    pixels = Lake(args.lake).read_region(
        args.table, args.uri, args.x, args.y, args.width, args.height, level=args.level, page=args.page, version=args.version
    )
    try:
        write_window(args.out, pixels)
    except argparse.ArgumentTypeError as exc:
        raise SpecError(str(exc)) from exc
    print(f"{args.out}: {pixels.shape[1]}x{pixels.shape[0]} {pixels.shape[2]} channel(s) {pixels.dtype}")
    return 0
