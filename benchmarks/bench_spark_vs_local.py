"""Spark engine on local[2] vs the embedded engine: ingest of the same JPEG set, in one run.

    python benchmarks/bench_spark_vs_local.py [--count 520] [--workers 2] [--keep DIR]

Input: `--count` generated 1024x768 photo-like JPEGs (lakeimg.samples.write_photo_jpegs).
Measured, each into a fresh lake, the whole job (listing, decode, thumbnail, sha256, MERGE into
images and rejects, runs row):

  embedded   `ingest_files(..., workers=N)`: delta-rs + a process pool of N workers.
  spark      the same job with `engine=SparkEngine` on a `local[N]` session (the kernel through
             mapInArrow, staged Parquet, delta-spark MERGE). Session start-up (JVM, jars from
             the Ivy cache) is timed separately and excluded from the job figure.

Each engine runs twice into fresh lakes (the first run also pays for worker start-up: the
process pool, Spark's Python workers and JIT). Prints files/s of each run and the ratios. Both lakes are checked to hold the
same rows (apart from run ids and timestamps).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONPATH", str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=520)
    parser.add_argument("--workers", type=int, default=2, help="processes / Spark cores (default 2)")
    parser.add_argument("--keep", default=None, help="folder for the generated JPEGs (reused if present)")
    args = parser.parse_args()

    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.engine.spark import SparkEngine, spark_session_builder
    from lakeimg.jobs.ingest import ingest_files
    from lakeimg.samples import write_photo_jpegs

    work = Path(tempfile.mkdtemp(prefix="lakeimg-bench-spark-"))
    src = Path(args.keep) if args.keep else work / "jpegs"
    if not (src.is_dir() and sum(1 for _ in src.rglob("*.jpg")) >= args.count):
        print(f"generating {args.count} 1024x768 JPEGs in {src} ...", flush=True)
        write_photo_jpegs(src, args.count)
    files = sum(1 for _ in src.rglob("*.jpg"))
    try:
        local_runs = []
        for i in range(2):  # the first run also pays for spawning the process pool
            started = time.perf_counter()
            local = ingest_files(str(work / f"lake_local{i}"), [str(src)], workers=args.workers)
            local_runs.append(time.perf_counter() - started)
            assert local.added == files, local

        started = time.perf_counter()
        conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": str(args.workers),
                "spark.driver.memory": "2g", "spark.pyspark.python": sys.executable}
        spark = spark_session_builder(f"local[{args.workers}]", conf, app_name="lakeimg-bench").getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        startup_s = time.perf_counter() - started
        spark_runs = []
        try:
            for i in range(2):  # the first run also starts Python workers and warms the JIT
                engine = SparkEngine(str(work / f"lake_spark{i}"), spark)
                started = time.perf_counter()
                remote = ingest_files(engine.lake, [str(src)], engine=engine)
                spark_runs.append(time.perf_counter() - started)
                assert remote.added == files, remote
        finally:
            spark.stop()

        columns = ["uri", "content_sha256", "width", "thumbnail"]
        a = LocalEngine(str(work / "lake_local1")).read("images", columns=columns)
        b = LocalEngine(str(work / "lake_spark1")).read("images", columns=columns)
        same = a.sort_by("uri").equals(b.sort_by("uri"))

        print(f"files: {files} JPEGs 1024x768, {args.workers} workers / local[{args.workers}], {os.cpu_count()} cores")
        for label, runs in (("embedded engine", local_runs), (f"spark local[{args.workers}]", spark_runs)):
            print(f"{label:16}: first {runs[0]:7.2f} s ({files / runs[0]:6.1f} files/s), "
                  f"second {runs[1]:7.2f} s ({files / runs[1]:6.1f} files/s)")
        print(f"spark session start-up (excluded): {startup_s:.1f} s")
        print(f"ratio embedded/spark: first runs {spark_runs[0] / local_runs[0]:.2f}x, "
              f"second runs {spark_runs[1] / local_runs[1]:.2f}x  (same rows in both lakes: {same})")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
