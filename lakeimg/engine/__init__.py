"""Engines: where lakeimg touches Delta. `open_engine` picks one by name.

- "local" (default): `LocalEngine` (engine/delta_rs.py), delta-rs and a process pool, no JVM.
- "spark": `SparkEngine` (engine/spark.py), delta-spark on a SparkSession (pyspark is
  imported only by its methods).

Both implement `lakeimg.engine.base.Engine`; jobs take one as a parameter.

Example:
    >>> open_engine("/tmp/lake").name
    'local'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from lakeimg.engine.base import Engine, EngineName
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.spark import SparkEngine, spark_session_builder
from lakeimg.errors import SpecError

__all__ = ["open_engine", "ENGINES"]

ENGINES: tuple[str, ...] = get_args(EngineName)


def open_engine(
    lake: str | os.PathLike[str],
    engine: EngineName = "local",
    *,
    master: str | None = None,
    spark_conf: Mapping[str, str] | Iterable[str] = (),
    spark: Any = None,
    storage_options: Mapping[str, str] | None = None,
) -> Engine:
    """The engine handle for a lake.

    For "spark", pass an existing `spark` session; without one (the CLI's case) a session is
    built from `spark_session_builder(master, spark_conf, object_stores=[lake])` (the lake's
    object-store connector jars) and owned by the engine, which then stops it on `close()`.

    Example:
        >>> eng = open_engine(lake_dir, "spark", spark=spark)
        >>> eng.version("images"), eng.owns_session
        (0, False)
        >>> eng.close()  # stops only a session the engine built
    """
    if engine == "local":
        return LocalEngine(os.fspath(lake), storage_options=storage_options)
    if engine == "spark":
        owns = spark is None
        if owns:
            spark = spark_session_builder(master, spark_conf, object_stores=[os.fspath(lake)]).getOrCreate()
        return SparkEngine(os.fspath(lake), spark, owns_session=owns, storage_options=storage_options)
    raise SpecError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
