"""lakeimg on Apache Spark: the public, thin entry points (pyspark is imported only when called).

- `session_builder(master, conf)`: a SparkSession builder with Delta configured (the caller
  calls `.getOrCreate()`; lakeimg never builds a hidden session).
- `register(spark, lake)`: the lake's tables in the session catalog, so any Spark SQL client
  can run `SELECT format, count(*) FROM images GROUP BY format`, with time travel
  (`images VERSION AS OF 3`).
- `engine(spark, lake)`: the lake's `SparkEngine` (reads at any version, MERGE, jobs).

Example:
    >>> import lakeimg.spark
    >>> spark = lakeimg.spark.session_builder("local[2]").getOrCreate()  # or the one already running
    >>> sorted(lakeimg.spark.register(spark, lake_dir))
    ['images', 'images_rejects', 'lakeimg_runs']
    >>> spark.sql("SELECT label, count(*) AS n FROM images VERSION AS OF 0 GROUP BY label ORDER BY label").collect()
    [Row(label='cat', n=2), Row(label='dog', n=2)]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from lakeimg.catalog.sql import register
from lakeimg.engine.spark import SparkEngine, spark_session_builder
from lakeimg.storage import is_remote
from lakeimg.tables import RUNS_SQL_NAME as RUNS_NAME

__all__ = ["session_builder", "register", "engine", "RUNS_NAME"]


def session_builder(master: str | None = None, conf: Mapping[str, str] | Iterable[str] = (), *,
                    object_stores: Iterable[str] = ()):
    """A SparkSession builder with Delta's extension, catalog and jars, plus the connector jars
    of the `object_stores` (lake URLs such as "s3://bucket/lake"; see `engine.spark`).

    Example:
        >>> spark = session_builder("local[2]", ["spark.ui.enabled=false"]).getOrCreate()  # or the running one
        >>> spark.conf.get("spark.sql.catalog.spark_catalog")
        'org.apache.spark.sql.delta.catalog.DeltaCatalog'
    """
    return spark_session_builder(master, conf, object_stores=object_stores)


def engine(spark: Any, lake: str | os.PathLike[str], storage_options: Mapping[str, str] | None = None):
    """The lake's SparkEngine on `spark` (a URL lake takes `storage_options`).

    Example:
        >>> engine(spark, lake_dir).read("images", version=0).num_rows
        4
    """
    lake = os.fspath(lake)
    return SparkEngine(lake if is_remote(lake) else os.path.abspath(lake), spark, storage_options=storage_options)
