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
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lakeimg.catalog.runs import RUNS_TABLE
from lakeimg.engine.layout import lake_table_names, table_location

__all__ = ["session_builder", "register", "engine", "RUNS_NAME"]

# The runs table lives at LAKE/_lakeimg/runs; in a catalog it needs a plain name.
RUNS_NAME = "lakeimg_runs"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def session_builder(master: str | None = None, conf: Mapping[str, str] | Iterable[str] = ()):
    """A SparkSession builder with Delta's extension, catalog and jars (see `engine.spark`).

    Example:
        >>> spark = session_builder("local[2]", ["spark.ui.enabled=false"]).getOrCreate()  # doctest: +SKIP
    """
    from lakeimg.engine.spark import spark_session_builder

    return spark_session_builder(master, conf)


def engine(spark: Any, lake: str | os.PathLike[str]):
    """The lake's SparkEngine on `spark`.

    Example:
        >>> engine(spark, "/data/lake").read("images", version=0).num_rows  # doctest: +SKIP
    """
    from lakeimg.engine.spark import SparkEngine

    return SparkEngine(os.path.abspath(os.fspath(lake)), spark)


def _lake_tables(lake: str) -> dict[str, str]:
    """{catalog name: location} of every Delta table in the lake, runs as `lakeimg_runs`."""
    names = [n for n in lake_table_names(lake) if n == RUNS_TABLE or not n.startswith("_")]
    return {RUNS_NAME if n == RUNS_TABLE else n: table_location(lake, n) for n in names}


def register(
    spark: Any,
    lake: str | os.PathLike[str],
    *,
    database: str | None = None,
    replace: bool = True,
) -> dict[str, str]:
    """Register the lake's Delta tables in the session catalog; returns {name: location}.

    Every table of the lake (images, images_rejects, derived tables, tiles) under its own
    name and the runs table as `lakeimg_runs`, as external Delta tables: dropping them drops
    the catalog entry only, never data. With `replace`, a same-named table that points
    elsewhere is re-pointed at this lake.

    Example:
        >>> register(spark, "/data/lake")  # doctest: +SKIP
        >>> spark.sql("SELECT format, count(*) FROM images GROUP BY format").show()  # doctest: +SKIP
    """
    from lakeimg.errors import SpecError

    root = os.path.abspath(os.fspath(lake))
    tables = _lake_tables(root)
    if database:
        if not _IDENTIFIER.match(database):
            raise SpecError(f"invalid database name {database!r}")
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    registered = {}
    for name, location in tables.items():
        if not _IDENTIFIER.match(name):
            continue  # a folder name SQL cannot use unquoted; reachable as delta.`path`
        qualified = f"`{database}`.`{name}`" if database else f"`{name}`"
        escaped = location.replace("'", "\\'")
        if replace:
            spark.sql(f"DROP TABLE IF EXISTS {qualified}")  # external: the data stays
        spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{escaped}'")
        registered[name] = location
    return registered
