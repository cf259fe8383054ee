"""spark-submit entry point: the scheduled ingest job on Spark (a thin call into lakeimg).

Takes `lakeimg ingest`'s arguments; the session comes from spark-submit (master, resources)
plus Delta's SQL settings from `lakeimg.engine.spark.spark_session_builder`. Delta's jars are
passed with `--packages` (spark-submit starts the JVM before this script runs).

Example:
    spark-submit --master spark://master:7077 \\
        --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/ingest_job.py /data/incoming --lake /data/lake --label-from-path parent --json
"""

from __future__ import annotations

import sys

from lakeimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:], "--engine", "spark"]))
