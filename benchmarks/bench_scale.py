"""How ingest's costs grow with the table: first ingest, no-op re-run, +1,000 files, 10 changed files.

    python benchmarks/bench_scale.py [--sizes 10000,100000] [--workers N] [--small 20000] [--repeat 3] [--keep DIR]

Sources are made cheaply: a few hundred small images (32x32 PNGs and 64x64 JPEGs) and a million
distinct paths that are hard links to them (`--sizes`: 1,000 files per folder), so a million
files take no disk. Each step runs in a fresh interpreter, which reports its wall time and its
own peak RSS (`ru_maxrss`: the driver only; the pool's workers are separate processes):

  first      ingest of N files into a fresh lake
  no-op      the same ingest again: nothing changed, nothing is decoded, no commit
  +1000      a new folder of 1,000 files ingested into the N-row table (compared with the same
             into an empty lake); re-listing the whole N-file source costs the no-op on top
  changed10  10 files rewritten with new content; the row says how many bytes of Parquet the
             commit rewrote (removed files' sizes from the Delta log)
  transform  a derived table (gray copies) computed from the N-row table, then its incremental
             run after the +1000 step: it reads the 1,000 new rows from the change data feed, so
             it is compared with the same 1,000 rows transformed in an empty lake (target <= 2x)

`--small N` also times ingest of N tiny images (half 32x32 PNG, half 64x64 JPEG) against the bare
loop of bench_ingest.py (same per-file work, same number of processes); target >= 1.2x. The two
run in turn `--repeat` times and the best of each is compared, as bench_ingest.py does (on a
shared machine one run of either can take a third longer). Both wall clock and CPU seconds
(the process tree's) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import tree_cpu  # noqa: E402 - found through the path above

PER_FOLDER = 1000
DISTINCT = 300


def write_small_images(folder: str, count: int, *, seed: int = 0) -> list[str]:
    """`count` distinct tiny images: 32x32 PNGs and 64x64 JPEGs, alternating."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        if i % 2:
            path = os.path.join(folder, f"s{seed}_{i:06d}.jpg")
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
        else:
            path = os.path.join(folder, f"s{seed}_{i:06d}.png")
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def link_tree(originals: list[str], root: str, count: int, *, start: int = 0) -> None:
    """`count` hard links to `originals` under `root/dNNNN/` (1,000 per folder), named distinctly."""
    for i in range(start, start + count):
        folder = os.path.join(root, f"d{i // PER_FOLDER:05d}")
        if i % PER_FOLDER == 0 or i == start:
            os.makedirs(folder, exist_ok=True)
        original = originals[i % len(originals)]
        os.link(original, os.path.join(folder, f"f{i:07d}{os.path.splitext(original)[1]}"))


def _step(lake: str, src: str, workers: int) -> dict:
    """One ingest in this interpreter: seconds, summary counts, this process's peak RSS."""
    from lakeimg.jobs.ingest import ingest_files

    start = time.perf_counter()
    summary = ingest_files(lake, [src], workers=workers)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "added": summary.added, "updated": summary.updated, "unchanged": summary.unchanged,
            "rss_mb": rss, "cpu_s": tree_cpu()}


def _transform(lake: str, _src: str, workers: int) -> dict:
    """One transform run (images -> gray) in this interpreter: seconds, rows, peak RSS."""
    from lakeimg.jobs.transform import transform_table

    start = time.perf_counter()
    summary = transform_table(lake, "images", "gray", {"ops": [{"op": "color", "to": "gray"}]}, workers=workers)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "mode": summary.mode, "added": summary.added, "updated": summary.updated,
            "rss_mb": rss, "cpu_s": tree_cpu()}


def _bare(files_from: str, out: str, workers: int) -> dict:
    """bench_ingest's bare loop over every file under `files_from`, in this interpreter."""
    from bench_ingest import bare_loop

    files = sorted(str(p) for p in Path(files_from).rglob("*") if p.is_file())
    seconds = bare_loop(files, workers, out)
    return {"seconds": seconds, "cpu_s": tree_cpu()}


def run_step(lake: str, src: str, workers: int, step: str = "_step") -> dict:
    """`_step` (or `_bare`) in a fresh interpreter (so peak RSS and CPU are this step's alone)."""
    code = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}]; "
            f"from bench_scale import {step}; print(json.dumps({step}({lake!r}, {src!r}, {workers})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def rewritten_bytes(lake: str, table: str = "images") -> tuple[int, int]:
    """(bytes, files) of Parquet the table's latest commit removed (what a change rewrote)."""
    log = Path(lake) / table / "_delta_log"
    latest = max(log.glob("*.json"))
    size = files = 0
    for line in latest.read_text().splitlines():
        action = json.loads(line)
        if "remove" in action:
            size += action["remove"].get("size") or 0
            files += 1
    return size, files


def scale_row(n: int, originals: list[str], work: str, workers: int) -> dict:
    src = os.path.join(work, f"src{n}")
    lake = os.path.join(work, f"lake{n}")
    t0 = time.perf_counter()
    link_tree(originals, src, n)
    print(f"  {n} files linked in {time.perf_counter() - t0:.1f} s", flush=True)
    row = {"n": n}
    row["first"] = run_step(lake, src, workers)
    print(f"  first  {row['first']}", flush=True)
    row["noop"] = run_step(lake, src, workers)
    print(f"  no-op  {row['noop']}", flush=True)
    row["tx_all"] = run_step(lake, src, workers, step="_transform")
    print(f"  transform all  {row['tx_all']}", flush=True)
    # A new batch of 1,000 files (its own folder, as a nightly drop) ingested into the big table.
    extra = write_small_images(os.path.join(work, f"new{n}"), DISTINCT, seed=n)
    batch = os.path.join(work, f"batch{n}")
    link_tree(extra, batch, 1000, start=n)
    row["add"] = run_step(lake, batch, workers)
    print(f"  +1000  {row['add']}", flush=True)
    row["tx_add"] = run_step(lake, batch, workers, step="_transform")
    print(f"  transform +1000  {row['tx_add']}", flush=True)
    # 10 changed files: new content under 10 existing paths spread over the table.
    fresh = write_small_images(os.path.join(work, f"chg{n}"), 10, seed=n + 1)
    for k, path in enumerate(fresh):
        i = (k * n) // 10 + 7
        target = os.path.join(src, f"d{i // PER_FOLDER:05d}", f"f{i:07d}{os.path.splitext(originals[i % len(originals)])[1]}")
        os.unlink(target)
        shutil.copyfile(path, target)
    row["changed"] = run_step(lake, src, workers)
    row["rewritten"] = rewritten_bytes(lake)
    print(f"  chg10  {row['changed']} rewrote {row['rewritten']}", flush=True)
    for folder in (lake, src, batch):
        shutil.rmtree(folder, ignore_errors=True)
    return row


def empty_add(work: str, workers: int) -> tuple[dict, dict]:
    """+1,000 files into an empty lake, then their transform (the baselines of the +1000 columns)."""
    src, lake = os.path.join(work, "src-empty"), os.path.join(work, "lake-empty")
    link_tree(write_small_images(os.path.join(work, "new-empty"), DISTINCT, seed=7), src, 1000)
    ingest = run_step(lake, src, workers)
    transform = run_step(lake, src, workers, step="_transform")
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(lake, ignore_errors=True)
    return ingest, transform


def small_files(count: int, work: str, workers: int, repeat: int = 1) -> list[tuple[dict, dict]]:
    """(lakeimg, bare loop) over `count` distinct tiny images, `repeat` times in turn (each
    lakeimg run into a fresh lake): seconds and CPU seconds."""
    src = os.path.join(work, "small")
    write_small_images(src, count, seed=12345)
    pairs = []
    for i in range(repeat):
        ours = run_step(os.path.join(work, f"lake-small-{i}"), src, workers)
        out = os.path.join(work, f"bare-small-{i}")
        os.makedirs(out)
        pairs.append((ours, run_step(src, out, workers, step="_bare")))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="table sizes, comma-separated (e.g. 10000,100000,1000000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--small", type=int, default=20000, help="tiny images for the small-files ratio (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="small-files runs of each, in turn (the best of each is compared)")
    parser.add_argument("--keep", default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="bench-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        originals = write_small_images(os.path.join(work, "originals"), DISTINCT)
        rows = []
        if args.sizes:
            base, base_tx = empty_add(work, args.workers)
            print(f"+1000 into an empty lake: {base}; their transform: {base_tx}", flush=True)
            for n in (int(s) for s in args.sizes.split(",")):
                print(f"table of {n} files", flush=True)
                rows.append(scale_row(n, originals, work, args.workers))
            print()
            print(f"workers={args.workers}; seconds / driver peak RSS MB; into an empty lake, +1000 files: "
                  f"{base['seconds']:.1f} s / {base['rss_mb']:.0f} MB, their transform: {base_tx['seconds']:.1f} s / {base_tx['rss_mb']:.0f} MB")
            print("| files | first ingest | no-op re-run | +1,000 files | 10 changed files | rewritten by the change "
                  "| transform, all rows | transform, +1,000 rows |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                cells = [f"{r[k]['seconds']:.1f} s / {r[k]['rss_mb']:.0f} MB" for k in ("first", "noop", "add", "changed")]
                cells.append(f"{r['rewritten'][0] / 2**20:.1f} MiB in {r['rewritten'][1]} files")
                cells += [f"{r[k]['seconds']:.1f} s / {r[k]['rss_mb']:.0f} MB" for k in ("tx_all", "tx_add")]
                print(f"| {r['n']:,} | " + " | ".join(cells) + " |")
            for r in rows:
                ratio, tx_ratio = r["add"]["seconds"] / base["seconds"], r["tx_add"]["seconds"] / base_tx["seconds"]
                print(f"  {r['n']:,}: +1000 costs {ratio:.2f}x the empty-lake add (target <= 2x) {'OK' if ratio <= 2 else 'MISSED'}; "
                      f"their transform {tx_ratio:.2f}x (target <= 2x) {'OK' if tx_ratio <= 2 else 'MISSED'}; "
                      f"no-op {'OK' if r['noop']['seconds'] <= 60 and r['noop']['rss_mb'] <= 1024 else 'MISSED'} (<= 60 s, <= 1 GB)")
        if args.small:
            pairs = small_files(args.small, work, args.workers, args.repeat)
            print(f"small files ({args.small}: 32x32 PNG + 64x64 JPEG), {args.workers} processes each, "
                  f"{args.repeat} runs in turn:")
            for ours, bare in pairs:
                print(f"  lakeimg {ours['seconds']:.2f} s ({ours['cpu_s']:.1f} CPU s), bare loop {bare['seconds']:.2f} s "
                      f"({bare['cpu_s']:.1f} CPU s): {bare['seconds'] / ours['seconds']:.2f}x")
            ours = min(p[0]["seconds"] for p in pairs)
            bare = min(p[1]["seconds"] for p in pairs)
            cpu = min(p[1]["cpu_s"] for p in pairs) / min(p[0]["cpu_s"] for p in pairs)
            paired = sorted(b["seconds"] / o["seconds"] for o, b in pairs)
            print(f"  best of each: lakeimg {ours:.2f} s ({args.small / ours:.0f}/s), bare loop {bare:.2f} s "
                  f"({args.small / bare:.0f}/s): {bare / ours:.2f}x wall clock, {cpu:.2f}x per CPU second; median of "
                  f"the runs' ratios {paired[len(paired) // 2]:.2f}x (target >= 1.2x) {'OK' if bare / ours >= 1.2 else 'MISSED'}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
