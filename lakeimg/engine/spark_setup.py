"""Warm the Ivy cache with the jars lakeimg's Spark sessions use: `python -m lakeimg.engine.spark_setup`.

Starts a local Spark session built by `spark_session_builder` (which resolves delta-spark's
Maven artifact and, for S3 and Azure, `hadoop-aws` (with its AWS SDK) and `hadoop-azure` at
pyspark's Hadoop version, through
`spark.jars.packages` into `~/.ivy2`), runs one tiny Delta write and read to prove the jars
work, checks that Hadoop finds the S3A and ABFS file systems, and stops the session. CI and the Docker
image run it once at install time so tests and jobs never race to download jars.

Example:
    $ python -m lakeimg.engine.spark_setup
    delta-spark ready: io.delta:delta-spark_4.2_2.13:4.4.1,org.apache.hadoop:hadoop-aws:3.5.0,org.apache.hadoop:hadoop-azure:3.5.0 (Spark 4.2.0)
"""

from __future__ import annotations

import sys
import tempfile

# The object stores whose connectors are warmed (what the test suite's session loads).
OBJECT_STORES = ("s3", "az")
_FILE_SYSTEMS = {"s3": "s3a", "az": "abfs"}


def warm_up(master: str = "local[1]", object_stores: tuple[str, ...] = OBJECT_STORES) -> str:
    """Start and stop a session with Delta's and the connectors' jars; return the packages resolved.

    Example:
        It returns the packages a session built for OBJECT_STORES loads, as this process's did:

        >>> spark.sparkContext.getConf().get("spark.jars.packages")  # doctest: +ELLIPSIS
        'io.delta:delta-spark_...,org.apache.hadoop:hadoop-aws:...,org.apache.hadoop:hadoop-azure:...'
    """
    from lakeimg.engine.spark import spark_session_builder

    builder = spark_session_builder(
        master, {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"}, object_stores=object_stores
    )
    spark = builder.getOrCreate()
    try:
        packages = spark.conf.get("spark.jars.packages")
        with tempfile.TemporaryDirectory(prefix="lakeimg-spark-setup-") as tmp:
            spark.range(3).write.format("delta").save(f"{tmp}/t")
            count = spark.read.format("delta").load(f"{tmp}/t").count()
            if count != 3:
                raise RuntimeError(f"Delta round trip returned {count} rows, expected 3")
        jvm = spark.sparkContext._jvm
        hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
        for store in object_stores:
            # Raises (UnsupportedFileSystemException / ClassNotFound) when the jars are missing.
            jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(_FILE_SYSTEMS.get(store, store), hadoop_conf)
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
