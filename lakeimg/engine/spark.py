"""The Spark engine: kernels through `mapInArrow`, Delta tables through delta-spark.

`SparkEngine` is the one place the Spark engine touches Delta. Library code never builds a
session: callers pass one in (`spark_session_builder` returns a builder configured the standard
way for delta-spark, for the CLI, tests and jobs to call `.getOrCreate()` on).

Example:
    >>> builder = spark_session_builder("local[2]")  # doctest: +SKIP
    >>> spark = builder.getOrCreate()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from lakeimg.engine.local import (
    META_KEY,
    MergeResult,
    VersionLike,
    cast_to_schema,
    check_log_tail,
    table_location,
)
from lakeimg.errors import ConcurrentWriteError, LakeImgError, TableNotFoundError
from lakeimg.schemas import TableContract, arrow_type
from lakeimg.uris import local_path_or_none

__all__ = ["spark_session_builder", "DELTA_SQL_CONF", "SparkEngine", "StagedRows"]

_COMMIT_ATTEMPTS = 4
_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
_ALLOW_NESTED_NOT_NULL_CONF = "spark.databricks.delta.constraints.allowUnenforcedNotNull.enabled"

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
    if master and master.startswith("local"):
        # Delta replays its log with 50 tasks by default (sized for clusters); on one machine
        # that is pure task overhead on every snapshot.
        builder = builder.config("spark.databricks.delta.snapshotPartitions", "2")
    pairs = _pairs(conf)
    extra_packages = [v for k, v in pairs if k == "spark.jars.packages"]
    builder = configure_spark_with_delta_pip(builder, extra_packages=extra_packages or None)
    for key, value in pairs:
        if key != "spark.jars.packages":
            builder = builder.config(key, value)
    return builder


def _to_datetime(value: str | dt.datetime) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:  # naive means UTC, as in the embedded engine
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


def _local_path(location: str) -> str | None:
    """The local path of a location (a path, `file:///p` or Hadoop's `file:/p`); None for a remote URL."""
    return local_path_or_none(location)


def spark_struct(fields: Sequence[dict[str, Any]]):
    """A Spark StructType from StructType-JSON fields (the contracts' format)."""
    from pyspark.sql.types import StructType

    return StructType.fromJson({"type": "struct", "fields": list(fields)})


def arrow_schema_of(struct) -> pa.Schema:
    """The Arrow schema lakeimg uses for a Spark StructType (timestamps as UTC microseconds).

    Columns of types the contracts never use are left out; `cast_to_schema` keeps them as read.
    """
    fields = []
    for f in struct.jsonValue()["fields"]:
        try:
            fields.append(pa.field(f["name"], arrow_type(f["type"]), nullable=f.get("nullable", True)))
        except (KeyError, ValueError):
            continue
    return pa.schema(fields)


class StagedRows:
    """A job's intermediate rows staged as Parquet under the lake (never collected to the driver).

    `where` filters are Spark SQL expressions; `frame()` is the Spark DataFrame to MERGE from.
    """

    def __init__(self, engine: SparkEngine, location: str):
        self.engine = engine
        self.location = location

    def frame(self, where: str | None = None):
        df = self.engine.spark.read.parquet(self.location)
        return df.where(where) if where else df

    def count(self, where: str | None = None) -> int:
        return self.frame(where).count()

    def column(self, name: str, where: str | None = None) -> list[Any]:
        """One small column (uris, outcomes) to the driver."""
        return [r[0] for r in self.frame(where).select(name).collect()]

    def conform(self, contract: TableContract, *, where: str | None = None, renames: Mapping[str, str] | None = None):
        """Rows in a contract's column order and types; `renames` maps target column -> staged column."""
        from pyspark.sql import functions as F

        renames = dict(renames or {})
        df = self.frame(where)
        columns = []
        for field in contract.spark_schema().fields:
            source = renames.get(field.name, field.name)
            columns.append(F.col(f"`{source}`").cast(field.dataType).alias(field.name))
        return df.select(*columns)

    def drop(self) -> None:
        local = _local_path(self.location)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
            return
        jvm = self.engine.spark._jvm  # object stores: delete through Hadoop's FileSystem
        path = jvm.org.apache.hadoop.fs.Path(self.location)
        path.getFileSystem(self.engine.spark._jsc.hadoopConfiguration()).delete(path, True)


class SparkEngine:
    """delta-spark handle for one lake on a caller's SparkSession: the same surface as LocalEngine.

    Example:
        >>> eng = SparkEngine("/tmp/lake", spark)  # doctest: +SKIP
        >>> eng.read("images", version=0, columns=["uri"]).num_rows  # doctest: +SKIP
    """

    name = "spark"
    distributed = True

    def __init__(self, lake: str | os.PathLike[str], spark, *, owns_session: bool = False):
        if spark is None:
            raise LakeImgError("the Spark engine needs a SparkSession (lakeimg never builds a hidden one)")
        self.lake = str(lake)
        self.spark = spark
        self.owns_session = owns_session

    def close(self) -> None:
        """Stop the session if this engine built it (`open_engine` without a session)."""
        if self.owns_session:
            self.spark.stop()
            self.owns_session = False

    # --- reading -------------------------------------------------------------------------

    def location(self, name: str) -> str:
        return table_location(self.lake, name)

    def _delta(self, name: str):
        from delta.tables import DeltaTable

        if not self.exists(name):
            raise TableNotFoundError(name, self.lake)
        check_log_tail(self.location(name), name)
        return DeltaTable.forPath(self.spark, self.location(name))

    def exists(self, name: str) -> bool:
        from delta.tables import DeltaTable

        local = _local_path(self.location(name))
        if local is not None and not os.path.isdir(os.path.join(local, "_delta_log")):
            return False  # cheap answer without a JVM round trip
        return bool(DeltaTable.isDeltaTable(self.spark, self.location(name)))

    def version(self, name: str) -> int | None:
        """Current version of a table, or None when it does not exist."""
        if not self.exists(name):
            return None
        return int(self._delta(name).history(1).select("version").first()[0])

    def resolve_version(self, name: str, version: VersionLike = None) -> int:
        """The version a version-like selects: an int as is, a timestamp the last commit at or before it.

        Resolved from the table's history (as delta-rs' `load_as_version` does), so a timestamp
        after the last commit means the latest version rather than an error.
        """
        if version is None:
            current = self.version(name)
            if current is None:
                raise TableNotFoundError(name, self.lake)
            return current
        if isinstance(version, int):
            if not self.exists(name):
                raise TableNotFoundError(name, self.lake)
            return version
        when = _to_datetime(version)
        micros = int(round(when.timestamp() * 1_000_000))
        history = self._delta(name).history().selectExpr("version", "unix_micros(timestamp) AS ts")
        row = history.where(f"ts <= {micros}").agg({"version": "max"}).first()
        if row is None or row[0] is None:
            raise TableNotFoundError(f"{name}@{when.isoformat()}", self.lake)
        return int(row[0])

    def frame(self, name: str, version: VersionLike = None):
        """The table (at a version or timestamp) as a Spark DataFrame."""
        reader = self.spark.read.format("delta")
        if version is not None:
            resolved = self.resolve_version(name, version)
            reader = reader.option("versionAsOf", resolved)
            try:
                return reader.load(self.location(name))
            except Exception as exc:  # delta-spark: the version does not exist (yet, or any more)
                raise TableNotFoundError(f"{name}@{resolved}", self.lake) from exc
        if not self.exists(name):
            raise TableNotFoundError(name, self.lake)
        return reader.load(self.location(name))

    def arrow_schema(self, name: str, version: VersionLike = None) -> pa.Schema:
        """The table's schema as Arrow (lakeimg's types: UTC microsecond timestamps)."""
        return arrow_schema_of(self.frame(name, version).schema)

    def read(
        self,
        name: str,
        *,
        version: VersionLike = None,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
    ) -> pa.Table:
        """A snapshot as an Arrow table on the driver, typed like LocalEngine.read.

        Only for small results (keys, metadata); jobs keep image data in DataFrames.
        `filter` is a Spark SQL expression.
        """
        df = self.frame(name, version)
        if filter is not None:
            df = df.where(filter)
        if columns:
            df = df.select(*[f"`{c}`" for c in columns])
        return cast_to_schema(df.toArrow(), arrow_schema_of(df.schema), columns)

    def table_properties(self, name: str) -> dict[str, str]:
        """The table's Delta configuration (table properties)."""
        detail = self._delta(name).detail().select("properties").first()[0]
        return dict(detail or {})

    def protocol(self, name: str) -> tuple[int, int]:
        """(minReaderVersion, minWriterVersion) of the table."""
        row = self._delta(name).detail().select("minReaderVersion", "minWriterVersion").first()
        return int(row[0]), int(row[1])

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first, shaped like delta-rs' history (timestamp in epoch ms),
        with lakeimg's run record parsed from userMetadata under "lakeimg"."""
        from pyspark.sql import functions as F

        df = self._delta(name).history(limit) if limit else self._delta(name).history()
        df = df.withColumn("timestamp", F.unix_millis("timestamp")).orderBy(F.col("version").desc())
        out = []
        for row in df.collect():
            entry = {k: v for k, v in row.asDict(recursive=True).items() if v is not None}
            record = entry.get(META_KEY)
            if isinstance(record, str):
                try:
                    entry["lakeimg"] = json.loads(record)
                except json.JSONDecodeError:
                    pass
            out.append(entry)
        return out

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def _user_metadata(self, metadata: dict[str, Any] | None):
        """Session settings for one commit: the run record as userMetadata, and nested NOT NULL.

        The contracts keep NOT NULL on fields inside arrays (e.g. runs.inputs[].table), which
        delta-rs writes as is; delta-spark refuses such schemas unless told to leave those
        nested constraints unenforced. Both are set around the commit and restored after.
        """
        settings = {_ALLOW_NESTED_NOT_NULL_CONF: "true"}
        if metadata is not None:
            settings[_USER_METADATA_CONF] = json.dumps(metadata, sort_keys=True, default=str)
        with self._session_conf(settings):
            yield

    @contextmanager
    def _session_conf(self, settings: dict[str, str]):
        """Set session settings for the block, restoring the previous values after."""
        previous = {key: self.spark.conf.get(key, None) for key in settings}
        for key, value in settings.items():
            self.spark.conf.set(key, value)
        try:
            yield
        finally:
            for key, value in previous.items():
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)

    # --- maintenance ---------------------------------------------------------------------

    def optimize(self, name: str, *, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Compact small files (delta-spark's OPTIMIZE); metrics as delta-rs names them."""
        table = self._delta(name)
        with self._user_metadata(metadata):
            metrics = self._with_retries(name, lambda: table.optimize().executeCompaction().collect()[0]["metrics"])
        return {"numFilesAdded": int(metrics["numFilesAdded"]), "numFilesRemoved": int(metrics["numFilesRemoved"])}

    def vacuum(self, name: str, *, retention_hours: float, keep_versions: Sequence[int] = (), dry_run: bool = True) -> list[str]:
        """Local paths of the files VACUUM removes (or would, with `dry_run`).

        delta-spark's VACUUM keeps only what the versions inside the retention window read;
        it has no `keep_versions`. Callers check the dry run against the versions they must
        keep (`lakeimg.catalog.maintenance` refuses the table when one would lose files).
        """
        location = self.location(name).replace("`", "``")
        query = f"VACUUM delta.`{location}` RETAIN {max(0.0, float(retention_hours)):g} HOURS"
        settings = {
            # A retention under Delta's 7-day safety check is the caller's explicit choice.
            "spark.databricks.delta.retentionDurationCheck.enabled": "false",
            # VACUUM lists the table's folders with this many tasks (default 10,000: minutes of
            # task overhead on a small cluster for a table of a few folders).
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
                max(2, self.spark.sparkContext.defaultParallelism)
            ),
        }
        with self._session_conf(settings):
            doomed = [_local_path(row[0]) or row[0] for row in self.spark.sql(query + " DRY RUN").collect()]
            if not dry_run and doomed:
                self.spark.sql(query).collect()
        return doomed

    def _frame_of(self, rows, contract: TableContract):
        """A Spark DataFrame in the contract's columns from an Arrow table or a DataFrame."""
        from pyspark.sql import functions as F

        schema = contract.spark_schema()
        if isinstance(rows, pa.Table):
            nullable = pa.schema([f.with_nullable(True) for f in contract.arrow_schema])
            data = rows.select(contract.column_names).cast(nullable)
            df = self.spark.createDataFrame(data)
        else:
            df = rows
        return df.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in schema.fields])

    def create_empty(self, name: str, contract: TableContract, metadata: dict[str, Any] | None = None) -> int:
        """Create a table with the contract's schema and properties (no rows); no-op if it exists."""
        from delta.tables import DeltaTable

        if not self.exists(name):
            builder = DeltaTable.createIfNotExists(self.spark).location(self.location(name))
            builder = builder.addColumns(contract.spark_schema())
            if contract.description:
                builder = builder.comment(contract.description)
            for key, value in contract.properties.items():
                builder = builder.property(key, value)
            if contract.partition_columns:
                builder = builder.partitionedBy(*contract.partition_columns)
            with self._user_metadata(metadata):
                self._with_retries(name, builder.execute)
        return int(self.version(name))

    def append(self, name: str, rows, contract: TableContract, metadata: dict[str, Any] | None = None) -> int:
        """Append rows (Arrow table or DataFrame), creating the table first if needed; returns the new version."""
        if not self.exists(name):
            self.create_empty(name, contract, metadata)
        df = self._frame_of(rows, contract)
        writer = df.write.format("delta").mode("append")
        with self._user_metadata(metadata):
            self._with_retries(name, lambda: writer.save(self.location(name)))
        return int(self.version(name))

    def replace_by_uri(
        self,
        name: str,
        contract: TableContract,
        rows=None,
        *,
        uris: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> MergeResult:
        """Drop every row whose uri is in `uris` and append `rows` (a DataFrame) in one commit.

        Delta's `replaceWhere` (the tiles table: all tiles of a changed image go together).
        Nothing to do: no commit.
        """
        exists = self.exists(name)
        if rows is None and (not uris or not exists):
            return MergeResult(self.version(name))
        before = self.version(name)
        if not exists:
            self.create_empty(name, contract, metadata)
        if rows is None:
            rows = self.spark.createDataFrame([], contract.spark_schema())
        df = self._frame_of(rows, contract)
        if uris:
            quoted = ", ".join("'" + u.replace("\\", "\\\\").replace("'", "\\'") + "'" for u in uris)
            writer = df.write.format("delta").mode("overwrite").option("replaceWhere", f"uri IN ({quoted})")
        else:
            writer = df.write.format("delta").mode("append")
        with self._user_metadata(metadata):
            self._with_retries(name, lambda: writer.save(self.location(name)))
        after = self.version(name)
        return MergeResult(after, committed=after != before)

    def merge_by_key(
        self,
        name: str,
        contract: TableContract,
        *,
        upserts=None,
        delete_keys: Sequence[Any] = (),
        key: str | Sequence[str] = "uri",
        metadata: dict[str, Any] | None = None,
    ) -> MergeResult:
        """Upsert rows (Arrow table or DataFrame) and delete keys in one Delta MERGE commit.

        Same rules as LocalEngine.merge_by_key: new keys insert, existing keys update, keys in
        `delete_keys` (values, or tuples for composite keys) delete; nothing to do, no commit.
        """
        from pyspark.sql import functions as F

        keys = [key] if isinstance(key, str) else list(key)
        if isinstance(upserts, pa.Table) and upserts.num_rows == 0:
            upserts = None
        source = None
        if upserts is not None:
            source = self._frame_of(upserts, contract).withColumn("_delete", F.lit(False))
            if not isinstance(upserts, pa.Table) and source.isEmpty():
                source = None
        if source is None and not delete_keys:
            return MergeResult(self.version(name))
        schema = contract.spark_schema()
        if delete_keys:
            key_rows = [
                tuple([k] if len(keys) == 1 else list(k)) for k in delete_keys
            ]
            key_fields = [schema[k] for k in keys]
            deletes = self.spark.createDataFrame(key_rows, spark_struct([{**f.jsonValue(), "nullable": True} for f in key_fields]))
            deletes = deletes.select(
                *[
                    (F.col(f"`{f.name}`") if f.name in keys else F.lit(None)).cast(f.dataType).alias(f.name)
                    for f in schema.fields
                ],
                F.lit(True).alias("_delete"),
            )
            source = deletes if source is None else source.unionByName(deletes)

        if not self.exists(name):
            inserts = source.where("NOT _delete").drop("_delete")
            if inserts.isEmpty():
                return MergeResult(None)
            self.create_empty(name, contract, metadata)
            version = self.append(name, inserts, contract, metadata)
            # The rows written, from the commit's own metrics (no second pass over the data).
            metrics = self._delta(name).history(1).select("operationMetrics").first()[0] or {}
            return MergeResult(version, inserted=int(metrics.get("numOutputRows", 0)), committed=True)

        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        values = {f.name: f"s.`{f.name}`" for f in schema.fields}

        def run_merge():
            target = self._delta(name).alias("t")
            merge = (
                target.merge(source.alias("s"), condition)
                .whenMatchedDelete(condition="s._delete = true")
                .whenMatchedUpdate(condition="s._delete = false", set=values)
                .whenNotMatchedInsert(condition="s._delete = false", values=values)
            )
            return merge.execute()

        before = self.version(name)
        with self._user_metadata(metadata):
            metrics_df = self._with_retries(name, run_merge)
        after = self.version(name)
        metrics = metrics_df.first().asDict() if metrics_df is not None else {}
        return MergeResult(
            after,
            inserted=int(metrics.get("num_inserted_rows", 0) or 0),
            updated=int(metrics.get("num_updated_rows", 0) or 0),
            deleted=int(metrics.get("num_deleted_rows", 0) or 0),
            committed=after != before,
        )

    def _with_retries(self, name: str, operation: Callable[[], Any]) -> Any:
        last: Exception | None = None
        for _attempt in range(_COMMIT_ATTEMPTS):
            try:
                return operation()
            except Exception as exc:  # delta-spark raises its conflicts as JVM exceptions
                text = f"{type(exc).__name__}: {exc}"
                if "Concurrent" not in text and "ProtocolChanged" not in text and "MetadataChanged" not in text:
                    raise
                last = exc
        raise ConcurrentWriteError(name, _COMMIT_ATTEMPTS, str(last))

    # --- kernels -------------------------------------------------------------------------

    def map_kernel_to_stage(
        self,
        kernel: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
        inputs: pa.Table,
        *,
        output_schema: pa.Schema,
        output_struct=None,
        rows_per_task: int = 32,
        on_failure: Callable[[dict[str, Any], str, str], dict[str, Any]] | None = None,
        task_timeout_s: float = 600.0,
        prepare: Callable[[], None] | None = None,
    ) -> StagedRows:
        """Run a mapInArrow kernel over `inputs` on the executors and stage its output as Parquet.

        `inputs` is small (paths and stat results, listed on the driver); executors open the
        files by path. The output never reaches the driver: it lands under
        `LAKE/_lakeimg/staging/<id>` (a location every executor can write, like the lake).
        With `on_failure`, each task runs the kernel in a child process (`isolated_kernel`):
        an input row whose decoding crashes or overruns `task_timeout_s` becomes
        `on_failure(row, error_class, message)`, as on the embedded engine; `prepare` runs in
        the task's Python worker before the first child is forked (caches the children share).
        """
        if on_failure is not None:
            from functools import partial

            from lakeimg.engine.pool import isolated_kernel

            kernel = partial(
                isolated_kernel, kernel=kernel, on_failure=on_failure, output_schema=output_schema,
                task_timeout_s=task_timeout_s, prepare=prepare,
            )
        struct = output_struct if output_struct is not None else _struct_of(output_schema)
        listing = self.spark.createDataFrame(inputs)
        parallelism = max(1, self.spark.sparkContext.defaultParallelism)
        partitions = max(1, min(inputs.num_rows, max(parallelism * 2, math.ceil(inputs.num_rows / rows_per_task))))
        results = listing.repartition(partitions).mapInArrow(kernel, struct)
        location = table_location(self.lake, f"_lakeimg/staging/{uuid.uuid4().hex}")
        results.write.mode("overwrite").parquet(location)
        return StagedRows(self, location)


def _struct_of(schema: pa.Schema):
    """A Spark StructType for an Arrow schema built from a contract (types via Spark's converter)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)
