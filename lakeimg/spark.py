"""lakeimg on Apache Spark: the public, thin entry points (pyspark is imported only when called).

- `session_builder(master, conf)`: a SparkSession builder with Delta configured (the caller
  calls `.getOrCreate()`; lakeimg never builds a hidden session).
- `register(spark, lake)`: the lake's tables in the session catalog, so any Spark SQL client
  can run `SELECT format, count(*) FROM images GROUP BY format`, with time travel
  (`images VERSION AS OF 3`).
- `engine(spark, lake)`: the lake's `SparkEngine` (reads at any version, MERGE, jobs).

Example:
    >>> import lakeimg.spark
    >>> spark = lakeimg.spark.session_builder("local[2]").getOrCreate()  # doctest: +SKIP
    >>> lakeimg.spark.register(spark, "/data/lake")  # doctest: +SKIP
    {'images': 'file:/data/lake/images', ...}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from lakeimg.catalog.sql import register
from lakeimg.engine.spark import SparkEngine, spark_session_builder
from lakeimg.tables import RUNS_SQL_NAME as RUNS_NAME

__all__ = ["session_builder", "register", "engine", "RUNS_NAME"]


def session_builder(master: str | None = None, conf: Mapping[str, str] | Iterable[str] = ()):
    """A SparkSession builder with Delta's extension, catalog and jars (see `engine.spark`).

    Example:
        >>> spark = session_builder("local[2]", ["spark.ui.enabled=false"]).getOrCreate()  # doctest: +SKIP
    """
    return spark_session_builder(master, conf)


def engine(spark: Any, lake: str | os.PathLike[str]):
    """The lake's SparkEngine on `spark`.

    Example:
        >>> engine(spark, "/data/lake").read("images", version=0).num_rows  # doctest: +SKIP
    """
    return SparkEngine(os.path.abspath(os.fspath(lake)), spark)
