"""Benchmark: deep-zoom tiles served by `lakeimg serve` from the tiles table, against reading the
same windows straight from the source BigTIFF with tifffile, in one run.

    python benchmarks/bench_serve.py [--size 20000] [--tiles 60] [--keep DIR]

1. Writes a SIZE x SIZE uint8 gray BigTIFF of photo-like content (512-pixel zlib tiles) with 3
   pyramid levels as SubIFDs (`lakeimg.samples.write_tiled_bigtiff`), and ingests it (tiles +
   pyramid, 512-pixel zstd tiles).
2. tifffile: each window is one TIFF tile of that level: seek, read, decode. Cold: a fresh
   `TiffFile` per tile (header and IFDs parsed again); warm: one open `TiffFile`.
3. lakeimg serve: the CLI's server in its own process, tiles fetched over one keep-alive HTTP
   connection as PNG (`/zoom/images/{version}/{level}/{col}_{row}.png`), by Python's
   http.client ("python" rows, cold and z=1) and, when curl is installed, by one curl process
   per batch (a native client like a browser's: Python's own spends milliseconds reading a
   260 KB body on a loaded machine, curl under one). Cold: a freshly started server, each
   tile's first request, after the descriptor request the viewer makes first (it builds the
   image's tile index; its time is printed on its own); the python cold rows and the curl
   cold rows each get their own fresh server;
   warm: the same tiles again (full responses, no If-None-Match), which the server's
   rendered-tile cache answers (128 MB of PNG bytes by ETag); the "in-process" rows give the
   uncached path (tile store + PNG encoding, row groups cached). Loopback
   tiles are stored PNG (no deflate); `z=1` rows: deflated PNG, what the viewer asks for when
   the server is not on loopback. Also a revisit with If-None-Match (304) and the in-process
   time of the tile store + PNG encoding.

Both sides read from the OS page cache (the files were just written). p50 and p95 per tile at
levels 0 and 3. Targets (issue 16): p95 within 2x of tifffile, and under 50 ms warm.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, as the other benchmarks

from lakeimg import Lake  # noqa: E402
from lakeimg.engine.delta_rs import LocalEngine  # noqa: E402
from lakeimg.image.pyramid import level_shape  # noqa: E402
from lakeimg.samples import write_tiled_bigtiff  # noqa: E402
from lakeimg.serve.zoom import TileStore, render_png  # noqa: E402

TILE = 512
LEVELS = (0, 3)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def pick_tiles(size: int, level: int, count: int, rng: random.Random) -> list[tuple[int, int]]:
    h, w = level_shape(size, size, level)
    every = [(c, r) for r in range(-(-h // TILE)) for c in range(-(-w // TILE))]
    return every if len(every) <= count else rng.sample(every, count)


def tiff_page(tif: tifffile.TiffFile, level: int):
    return tif.series[0].levels[level].keyframe


def tiff_read(tif: tifffile.TiffFile, level: int, col: int, row: int) -> np.ndarray:
    """One TIFF tile: the window lakeimg serves as tile (level, col, row)."""
    page = tiff_page(tif, level)
    per_row = -(-page.imagewidth // TILE)
    index = row * per_row + col
    tif.filehandle.seek(page.dataoffsets[index])
    data = tif.filehandle.read(page.databytecounts[index])
    segment, _, _ = page.decode(data, index)
    return segment


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(lake: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "serve", "--lake", lake, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/static/style.css")
            conn.getresponse().read()
            conn.close()
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tiles", type=int, default=60, help="tiles sampled per level (all when fewer)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="lakeimg-bench-serve-")
    os.makedirs(os.path.join(work, "src"), exist_ok=True)
    source = os.path.join(work, "src", "huge.tif")
    lake_path = os.path.join(work, "lake")
    try:
        if not os.path.exists(lake_path):
            start = time.perf_counter()
            write_tiled_bigtiff(source, args.size, tile=TILE, pyramid=max(LEVELS), photo=True)
            print(f"wrote {args.size} x {args.size} BigTIFF ({os.path.getsize(source) / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
            start = time.perf_counter()
            Lake(lake_path).ingest(source, workers=args.workers)
            print(f"ingested (tiles + pyramid) in {time.perf_counter() - start:.1f} s")
        lake = Lake(lake_path)
        uri = lake.read("images", columns=["uri"])["uri"][0].as_py()
        version = lake.version("images")
        rng = random.Random(16)
        chosen = {level: pick_tiles(args.size, level, args.tiles, rng) for level in LEVELS}

        results: dict[tuple[str, int, str], list[float]] = {}

        def add(key: tuple[str, int, str], seconds: float) -> None:
            results.setdefault(key, []).append(seconds)

        query = urllib.parse.urlencode({"uri": uri})
        urls = {level: [f"/zoom/images/{version}/{level}/{c}_{r}.png?{query}" for c, r in chosen[level]] for level in LEVELS}
        process, port = start_server(lake_path)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def fetch_curl(paths: list[str], port: int = port) -> list[float]:
            """Per-request total times from one curl process (keep-alive, like a browser's native
            HTTP client): Python's own client takes milliseconds to read a 260 KB body here."""
            args = ["curl", "-s", "--fail", "-w", "%{time_total} %{http_code}\\n"]
            for path in paths:
                args += ["-o", "/dev/null", f"http://127.0.0.1:{port}{path}"]
            lines = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout.split()
            assert set(lines[1::2]) == {"200"}, lines
            return [float(t) for t in lines[0::2]]

        curl = shutil.which("curl") is not None

        def fetch(url: str, headers: dict | None = None) -> tuple[float, int]:
            start = time.perf_counter()
            conn.request("GET", url, headers=headers or {})
            response = conn.getresponse()
            response.read()
            return time.perf_counter() - start, response.status

        try:
            seconds, _ = fetch(f"/api/zoom/images?{query}")  # the viewer's first request: builds the tile index
            print(f"descriptor on a fresh server: {seconds * 1000:.1f} ms")
            # tifffile and lakeimg alternate tile by tile, so both see the same machine load
            for level in LEVELS:
                for (col, row), url in zip(chosen[level], urls[level], strict=True):
                    start = time.perf_counter()
                    with tifffile.TiffFile(source) as tif:
                        tiff_read(tif, level, col, row)
                    add(("tifffile", level, "cold"), time.perf_counter() - start)
                    seconds, status = fetch(url)  # this tile's first request to a fresh server
                    assert status == 200, status
                    add(("lakeimg serve (python)", level, "cold"), seconds)
            with tifffile.TiffFile(source) as tif:
                for _ in range(3):
                    for level in LEVELS:
                        for (col, row), url in zip(chosen[level], urls[level], strict=True):
                            start = time.perf_counter()
                            tiff_read(tif, level, col, row)
                            add(("tifffile", level, "warm"), time.perf_counter() - start)
                            add(("lakeimg serve (python)", level, "warm"), fetch(url)[0])
                        if curl:  # batches between tifffile's rounds
                            for seconds in fetch_curl(urls[level]):
                                add(("lakeimg serve", level, "warm"), seconds)
            for level in LEVELS:
                for url in urls[level]:
                    fetch(url + "&z=1")
                for url in urls[level]:
                    add(("lakeimg serve z=1", level, "warm"), fetch(url + "&z=1")[0])
            conn.request("GET", urls[0][0])
            response = conn.getresponse()
            response.read()
            tag = response.getheader("ETag")
            for url in urls[0][:1] * 20:
                seconds, status = fetch(url, {"If-None-Match": tag})
                assert status == 304, status
                add(("lakeimg serve 304", 0, "warm"), seconds)
        finally:
            conn.close()
            stop(process)
        if curl:  # cold again with a native client, on another fresh server
            process, port = start_server(lake_path)
            try:
                fetch_curl([f"/api/zoom/images?{query}"], port)
                for level in LEVELS:
                    for seconds in fetch_curl(urls[level], port):
                        add(("lakeimg serve", level, "cold"), seconds)
            finally:
                stop(process)

        store = TileStore(LocalEngine(lake.path))
        info = store.info("images", version, uri)
        for level in LEVELS:
            for col, row in chosen[level]:
                store.tile(info, level, col, row)
            warm = []
            for col, row in chosen[level]:
                start = time.perf_counter()
                render_png(store.tile(info, level, col, row), None)
                warm.append(time.perf_counter() - start)
            results[("in-process tile+png", level, "warm")] = warm

        print(f"\nper {TILE}x{TILE} tile, milliseconds ({len(chosen[0])} tiles at level 0, {len(chosen[3])} at level 3):")
        print(f"{'reader':22} {'level':>5} {'state':>5} {'p50':>8} {'p95':>8}")
        for (name, level, state), times in results.items():
            print(f"{name:22} {level:>5} {state:>5} {pct(times, 50):8.2f} {pct(times, 95):8.2f}")
        print("\nratios (lakeimg serve p95 / tifffile p95) and the 50 ms warm target:")
        for level in LEVELS:
            for state in ("cold", "warm"):
                key = ("lakeimg serve", level, state) if ("lakeimg serve", level, state) in results else ("lakeimg serve (python)", level, state)
                ours, theirs = pct(results[key], 95), pct(results[("tifffile", level, state)], 95)
                verdict = "within 2x" if ours <= 2 * theirs else "NOT within 2x"
                target = "" if state == "cold" else ("; under 50 ms" if ours < 50 else "; OVER 50 ms")
                print(f"  level {level} {state}: {ours:.2f} / {theirs:.2f} = {ours / theirs:.2f}x ({verdict}{target})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
