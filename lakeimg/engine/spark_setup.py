"""Warm the Ivy cache with Delta Lake's jars: `python -m lakeimg.engine.spark_setup`.

Starts a local Spark session built by `spark_session_builder` (which resolves delta-spark's
Maven artifact through `spark.jars.packages` into `~/.ivy2`), runs one tiny Delta write and read
to prove the jars work, and stops the session. CI and the Docker image run it once at install
time so tests and jobs never race to download jars.

Example:
    $ python -m lakeimg.engine.spark_setup
    delta-spark ready: io.delta:delta-spark_4.2_2.13:4.4.1 (Spark 4.2.0)
"""

from __future__ import annotations

import sys
import tempfile


def warm_up(master: str = "local[1]") -> str:
    """Start and stop a session with Delta's jars; return the package coordinates resolved.

    Example:
        >>> warm_up()  # doctest: +SKIP
        'io.delta:delta-spark_4.2_2.13:4.4.1'
    """
    from lakeimg.engine.spark import spark_session_builder

    builder = spark_session_builder(master, {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"})
    spark = builder.getOrCreate()
    try:
        packages = spark.conf.get("spark.jars.packages")
        with tempfile.TemporaryDirectory(prefix="lakeimg-spark-setup-") as tmp:
            spark.range(3).write.format("delta").save(f"{tmp}/t")
            count = spark.read.format("delta").load(f"{tmp}/t").count()
            if count != 3:
                raise RuntimeError(f"Delta round trip returned {count} rows, expected 3")
        return packages
    finally:
        spark.stop()


def main() -> int:
    import pyspark

    packages = warm_up()
    print(f"delta-spark ready: {packages} (Spark {pyspark.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
