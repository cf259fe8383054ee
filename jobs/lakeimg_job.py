"""spark-submit entry point for any lakeimg job command on Spark (ingest, transform, ...).

The first argument is the lakeimg command; the rest are its arguments. `--engine spark` is
added, so the job runs on the session spark-submit provides.

Example:
    spark-submit --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/lakeimg_job.py ingest /data/incoming --lake /data/lake --json
"""

from __future__ import annotations

import sys

from lakeimg.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: spark-submit jobs/lakeimg_job.py COMMAND [ARGS...]")
    sys.exit(main([*sys.argv[1:], "--engine", "spark"]))
