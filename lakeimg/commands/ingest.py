"""`lakeimg ingest SOURCE... --lake LAKE`: land image files as Delta tables."""

from __future__ import annotations

import argparse

from lakeimg.commands._common import (
    add_engine_options,
    open_lake,
    print_run_summary,
    progress_bars,
    show_progress,
)
from lakeimg.tables import validate_name


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _byte_size(text: str) -> int:
    """Bytes as an integer or with a binary suffix: 2G, 512M, 64K (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(value[-1:], 1)
    try:
        number = int(float(value[:-1] if scale > 1 else value) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text} (e.g. 2G, 512M, 1000000)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return number


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="ingest image files, folders or globs into a lake")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, folders (recursive) or globs")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--table", default="images", help="images table name (default: images)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: CPU count)")
    p.add_argument("--label-from-path", default=None, metavar="parent|REGEX", help="label from the parent folder or a regex group")
    p.add_argument("--metadata", default=None, metavar="FILE",
                   help="labels and extra columns per image: CSV, JSONL or Parquet with a file_name (relative to the "
                        "source folder) or uri column, an optional label column; other columns go to `attributes`")
    p.add_argument("--relabel", action="store_true",
                   help="also apply --label-from-path / --metadata to unchanged images (rows rewritten, nothing decoded)")
    p.add_argument("--inline-max-bytes", type=_positive_int, default=16 << 20, help="keep original bytes up to this size (default 16 MiB)")
    p.add_argument("--max-decoded-bytes", type=_byte_size, default=None, metavar="BYTES",
                   help="memory limit of one decoded image (width x height x channels x bytes per sample, from the header); "
                        "larger images are tiled if TIFF, else rejected too_large (default: min(2G, RAM / (2 x workers)); "
                        "suffixes K, M, G)")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help="also reject images decoded whole above this many pixels")
    p.add_argument("--max-tiled-pixels", type=_positive_int, default=2**34,
                   help="reject tiled images with more pixels, all pages together (default 2**34 = 17.2 gigapixels)")
    p.add_argument("--file-timeout", type=float, default=120.0, help="per-file decode time limit in seconds")
    p.add_argument("--sync-deletes", action="store_true", help="delete rows of files that vanished from the sources")
    p.add_argument("--retry-rejects", action="store_true",
                   help="read every rejected file again (timeout, decoder_crash and unreadable rejects are retried by every run)")
    p.add_argument("--codec", action="append", default=[], metavar="MODULE:ATTR", help="extra reader tried before the built-in ones")
    p.add_argument("--tile-above-pixels", type=_positive_int, default=64_000_000, help="store images with more pixels as tiles + pyramid in <table>_tiles (default 64 megapixels; 0: never)")
    p.add_argument("--tile-size", type=_positive_int, default=512, help="tile edge in pixels (default 512)")
    p.add_argument("--dry-run", action="store_true", help="list and plan only: count what would be added, re-read, deleted; commit nothing")
    p.add_argument("--json", action="store_true", help="print one JSON summary line")
    add_engine_options(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    validate_name("target table", args.table)  # before a JVM starts or the lake is created
    options = dict(
        table=args.table,
        workers=args.workers,
        label_from_path=args.label_from_path,
        metadata=args.metadata,
        relabel=args.relabel,
        inline_max_bytes=args.inline_max_bytes,
        max_pixels=args.max_pixels,
        max_decoded_bytes=args.max_decoded_bytes,
        max_tiled_pixels=args.max_tiled_pixels,
        file_timeout_s=args.file_timeout,
        sync_deletes=args.sync_deletes,
        retry_rejects=args.retry_rejects,
        codecs=args.codec,
        tile_above_pixels=args.tile_above_pixels,
        tile_size=args.tile_size,
        dry_run=args.dry_run,
    )
    with open_lake(args) as lake, progress_bars(enabled=show_progress(args)) as track:
        summary = lake.ingest(args.sources, on_progress=track("decoding", "files"),
                              on_tile_progress=track("tiling", "tiles"), **options)
    print_run_summary(args.lake, summary, args.json)
    return 0
