"""The Spark engine: kernels through `mapInArrow`, Delta tables through delta-spark.

`SparkEngine` is the one place the Spark engine touches Delta. Library code never builds a
session: callers pass one in (`spark_session_builder` returns a builder configured the standard
way for delta-spark, for the CLI, tests and jobs to call `.getOrCreate()` on).

Example:
    >>> builder = spark_session_builder("local[2]")  # doctest: +SKIP
    >>> spark = builder.getOrCreate()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["spark_session_builder", "DELTA_SQL_CONF"]

# Delta's SQL extension and catalog: what delta-spark's quickstart sets on every session.
DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _pairs(conf: Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(conf, Mapping):
        return [(str(k), str(v)) for k, v in conf.items()]
    pairs = []
    for item in conf:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                from lakeimg.errors import SpecError

                raise SpecError(f"--spark-conf expects KEY=VALUE, got {item!r}")
            pairs.append((key.strip(), value.strip()))
        else:
            key, value = item
            pairs.append((str(key), str(value)))
    return pairs


def spark_session_builder(
    master: str | None = None,
    conf: Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]] = (),
    *,
    app_name: str = "lakeimg",
):
    """A SparkSession builder with Delta's SQL extension and catalog and Delta's jars.

    The jars come from Maven Central through Spark's package resolution
    (`configure_spark_with_delta_pip` sets `spark.jars.packages`), cached in `~/.ivy2`.
    `conf` is a mapping, `(key, value)` pairs or "KEY=VALUE" strings (as `--spark-conf` gives);
    it is applied last, so it can override anything here.

    Example:
        >>> spark = spark_session_builder("local[2]", ["spark.ui.enabled=false"]).getOrCreate()  # doctest: +SKIP
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in DELTA_SQL_CONF.items():
        builder = builder.config(key, value)
    # Python workers import lakeimg; Arrow batches carry whole files, so keep them modest.
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    builder = builder.config("spark.ui.showConsoleProgress", "false")  # jobs print their own summary
    pairs = _pairs(conf)
    extra_packages = [v for k, v in pairs if k == "spark.jars.packages"]
    builder = configure_spark_with_delta_pip(builder, extra_packages=extra_packages or None)
    for key, value in pairs:
        if key != "spark.jars.packages":
            builder = builder.config(key, value)
    return builder
