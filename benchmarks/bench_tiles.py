"""Benchmark: ingest of a huge tiled BigTIFF as tiles + pyramid, against a bare tile-decoding loop.

    python benchmarks/bench_tiles.py [--size 24000] [--workers 2] [--rows-per-task 8] [--keep DIR]

1. Writes a SIZE x SIZE RGB uint8 tiled BigTIFF (deflate, 512-pixel TIFF tiles) with tifffile
   from an iterator of tiles, so the image never sits in memory.
2. Baseline: one process reads and decodes every TIFF tile with tifffile (nothing else).
3. lakeimg ingest of that file (tile size 512, zstd tiles, full pyramid) into a fresh lake,
   with the peak RSS of the whole process tree (this process + pool workers) sampled by psutil.
4. A codec table on sample tiles (uint8, uint16, float32): encode/decode speed and size,
   which is how the default tile encoding was chosen.

Prints the figures; the issue's targets: peak RSS of the process tree under 1 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, as the other benchmarks

from lakeimg import Lake  # noqa: E402
from lakeimg.image.codecs import TILE_ENCODINGS, decode_tile, encode_tile  # noqa: E402
from lakeimg.samples import photo_like  # noqa: E402

TIFF_TILE = 512


def write_big_tiff(path: str, size: int) -> None:
    """A size x size RGB tiled BigTIFF written tile by tile (photo-like content, deflate)."""
    variants = [photo_like(TIFF_TILE, TIFF_TILE, seed=s) for s in range(8)]
    rows = cols = -(-size // TIFF_TILE)

    def tiles():
        for r in range(rows):
            for c in range(cols):
                base = variants[(r * 7 + c * 3) % len(variants)]
                # a slow gradient across the image so tiles differ and the pyramid has content
                shift = np.uint8((r * 5 + c * 3) % 64)
                yield base + shift

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(TIFF_TILE, TIFF_TILE),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 6},
        bigtiff=True,
    )


def bare_decode_loop(path: str) -> tuple[float, int]:
    """Read and decode every TIFF tile with tifffile; returns (seconds, tiles)."""
    started = time.perf_counter()
    count = 0
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        for index, (offset, nbytes) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
            fh.seek(offset)
            segment, _pos, _shape = page.decode(fh.read(nbytes), index, jpegtables=page.jpegtables)
            count += 1
    return time.perf_counter() - started, count


class TreeRSS:
    """Samples the summed RSS of this process and all its descendants every `interval` s, and
    their summed PSS (proportional set size: a page shared by n processes counts 1/n in each,
    so the forked workers' copy-on-write pages inherited from the forkserver count once)."""

    def __init__(self, interval: float = 0.05, *, children: bool = True):
        self.interval, self.children = interval, children
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = pss = 0
            for proc in [me, *(me.children(recursive=True) if self.children else [])]:
                try:
                    info = proc.memory_full_info()
                    total, pss = total + info.rss, pss + info.pss
                except psutil.Error:
                    pass
            self.peak, self.peak_pss = max(self.peak, total), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def codec_table() -> None:
    samples = {
        "uint8 RGB photo-like": photo_like(512, 512, seed=1),
        "uint16 gray": (photo_like(512, 512, seed=2, channels=1).astype(np.uint16) * 257),
        "float32 gray": photo_like(512, 512, seed=3, channels=1).astype(np.float32) / 7.0,
    }
    print("\ncodec table (512x512 tiles, 20 rounds each):")
    print(f"{'sample':24} {'codec':8} {'ratio':>6} {'enc MB/s':>9} {'dec MB/s':>9}")
    for name, arr in samples.items():
        for encoding in TILE_ENCODINGS:
            data, used = encode_tile(arr, encoding)
            if used != encoding:
                continue
            t0 = time.perf_counter()
            for _ in range(20):
                encode_tile(arr, encoding)
            t1 = time.perf_counter()
            for _ in range(20):
                decode_tile(data, used, *arr.shape, str(arr.dtype))
            t2 = time.perf_counter()
            mb = arr.nbytes * 20 / 1e6
            print(f"{name:24} {encoding:8} {arr.nbytes / len(data):6.2f} {mb / (t1 - t0):9.0f} {mb / (t2 - t1):9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=24000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rows-per-task", type=int, default=8, help="level-0 tile rows per tiling task (0: one task)")
    parser.add_argument("--encoding", default="zstd")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder, removed)")
    args = parser.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="bench_tiles_")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "src")
    os.makedirs(src, exist_ok=True)
    path = os.path.join(src, f"big_{args.size}.tif")
    try:
        if not os.path.exists(path):
            t0 = time.perf_counter()
            write_big_tiff(path, args.size)
            print(f"wrote {path}: {os.path.getsize(path) / 1e9:.2f} GB on disk in {time.perf_counter() - t0:.1f} s")
        pixels = args.size * args.size * 3
        print(f"image: {args.size} x {args.size} RGB uint8 = {pixels / 1e9:.2f} GB of pixels")

        base_s, tiles = bare_decode_loop(path)
        print(f"bare loop (1 process, tifffile read+decode of {tiles} TIFF tiles): {base_s:.1f} s, {pixels / 1e6 / base_s:.0f} MB/s")

        lake_dir = os.path.join(work, "lake")
        shutil.rmtree(lake_dir, ignore_errors=True)
        with TreeRSS() as rss:
            t0 = time.perf_counter()
            summary = Lake(lake_dir).ingest(
                [src], workers=args.workers, tile_rows_per_task=args.rows_per_task, tile_encoding=args.encoding
            )
            ingest_s = time.perf_counter() - t0
        lake = Lake(lake_dir)
        n_tiles = lake.read("images_tiles", columns=["level"]).num_rows
        row = lake.read("images", columns=["levels", "tiled"]).to_pylist()[0]
        print(
            f"lakeimg ingest ({args.workers} workers, {args.rows_per_task} tile rows per task, {args.encoding}): "
            f"{ingest_s:.1f} s for {n_tiles} tiles over {row['levels']} levels (added={summary.added}, rejected={summary.rejected})"
        )
        print(f"ingest time / bare decode loop: {ingest_s / base_s:.2f}x  (throughput ratio {base_s / ingest_s:.2f})")
        print(f"peak RSS of the process tree during ingest: {rss.peak / 2**20:.0f} MiB (target < 1024 MiB); "
              f"peak PSS {rss.peak_pss / 2**20:.0f} MiB (shared pages counted once)")

        t0 = time.perf_counter()
        window = lake.read_region("images", path, args.size // 2 - 300, args.size // 2 - 300, 600, 600)
        print(f"read_region 600x600 at the centre: {time.perf_counter() - t0:.2f} s, shape {window.shape}")
        codec_table()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
