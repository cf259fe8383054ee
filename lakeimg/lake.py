"""`Lake`: the Python entry point to one lake (a folder of Delta tables).

Example:
    >>> import tempfile
    >>> lake = Lake(tempfile.mkdtemp())
    >>> lake.tables()
    []
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.jobs.ingest import IngestSummary, ingest_files

__all__ = ["Lake"]


class Lake:
    """A lake rooted at `path`. Reads use delta-rs at any version; jobs run on the chosen engine.

    Args:
        path: the lake's root folder.
        engine: "local" (default, no JVM) or "spark".
        spark: an existing SparkSession for the Spark engine (lakeimg never builds a hidden one).
    """

    def __init__(self, path: str | os.PathLike[str], *, engine: str = "local", spark: Any = None):
        self.path = os.path.abspath(os.fspath(path))
        self.engine_name = engine
        self.spark = spark
        self._local = LocalEngine(self.path)

    def __repr__(self) -> str:
        return f"Lake({self.path!r})"

    def tables(self) -> list[str]:
        """Names of the Delta tables in the lake (runs excluded)."""
        return [n for n in self._local.tables() if not n.startswith("_")]

    def version(self, table: str) -> int | None:
        """Current version of `table`, or None when it does not exist."""
        return self._local.version(table)

    def read(
        self,
        table: str,
        version: VersionLike = None,
        *,
        columns: Sequence[str] | None = None,
        verify: bool = True,
    ) -> pa.Table:
        """The table as Arrow at a version (int), timestamp (datetime or ISO string) or latest.

        With `verify` (the default), whenever `content` is read every returned row's bytes are
        hashed and compared with its `content_sha256` (read too, then dropped if not asked for):
        a mismatch raises ContentMismatchError naming the uri. Reads without `content` cost
        nothing extra. A missing or unreadable data file raises LakeDamagedError naming it.

        Example:
            >>> Lake("/tmp/lake").read("images", 0, columns=["uri", "width"])  # doctest: +SKIP
        """
        wanted = list(columns) if columns is not None else None
        if not verify or (wanted is not None and "content" not in wanted):
            return self._local.read(table, version=version, columns=columns)
        from lakeimg.catalog.verify import check_content

        resolved = self._local.resolve_version(table, version)
        if not {"uri", "content", "content_sha256"} <= set(self._local.arrow_schema(table, resolved).names):
            return self._local.read(table, version=resolved, columns=columns)
        extra = [c for c in ("uri", "content_sha256") if wanted is not None and c not in wanted]
        result = self._local.read(table, version=resolved, columns=None if wanted is None else wanted + extra)
        check_content(result, table, resolved)
        return result.drop_columns(extra) if extra else result

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first, with lakeimg's run record under "lakeimg"."""
        return self._local.history(table, limit)

    def table(self, name: str):
        """A fluent transform builder over table `name` (see `lakeimg.fluent.TableBuilder`).

        Example:
            >>> Lake("/tmp/lake").table("images").where("label = 'cats'").resize(256, 256).normalize("imagenet").save("cats_256")  # doctest: +SKIP
        """
        from lakeimg.fluent import TableBuilder

        return TableBuilder(self, name)

    def transform(self, source: str, target: str, spec: Any, **options: Any):
        """Run a transform spec from `source` into `target`; options as `jobs.transform.transform_table`.

        Example:
            >>> Lake("/tmp/lake").transform("images", "gray", {"ops": [{"op": "color", "to": "gray"}]})  # doctest: +SKIP
        """
        from lakeimg.jobs.transform import transform_table

        if "engine" not in options:
            options["engine"] = self.jobs_engine()
        return transform_table(self.path, source, target, spec, **options)

    def ingest(self, sources: str | Sequence[str], **options: Any) -> IngestSummary:
        """Ingest files, folders or globs; options as `lakeimg.jobs.ingest.ingest_files`.

        Example:
            >>> Lake("/tmp/lake").ingest(["/data/photos"], label_from_path="parent")  # doctest: +SKIP
        """
        if isinstance(sources, (str, os.PathLike)):
            sources = [os.fspath(sources)]
        options.setdefault("engine", self.jobs_engine())
        return ingest_files(self.path, list(sources), **options)

    def jobs_engine(self):
        """The engine jobs run on: the lake's `LocalEngine`, or its SparkEngine (`spark_engine`)."""
        return self.spark_engine() if self.engine_name == "spark" else self._local

    def spark_engine(self):
        """The lake's SparkEngine on the session given as `Lake(path, engine="spark", spark=...)`."""
        from lakeimg.engine import open_engine
        from lakeimg.errors import SpecError

        if self.spark is None:
            raise SpecError("Lake(..., engine='spark') needs spark=<SparkSession>; lakeimg never builds a hidden one")
        return open_engine(self.path, "spark", spark=self.spark)

    def read_region(
        self,
        table: str,
        uri: str,
        x: int,
        y: int,
        width: int,
        height: int,
        level: int = 0,
        page: int = 0,
        version: VersionLike = None,
    ):
        """Exact pixels (HWC ndarray, native dtype) of a window; tiled images read only the tiles it needs.

        Example:
            >>> Lake("/tmp/lake").read_region("images", "/scans/slide.tif", 1000, 2000, 512, 512, level=1)  # doctest: +SKIP
        """
        from lakeimg.catalog.regions import read_region

        return read_region(self._local, table, uri, x, y, width, height, level=level, page=page, version=version)

    # --- catalog: history, lineage, reproduce, training sets, maintenance (lakeimg.catalog) ---

    def versions(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's versions, newest first: operation, run, job, counts, timestamp.

        Example:
            >>> Lake("/tmp/lake").versions("images")[0]["job"]  # doctest: +SKIP
            'ingest'
        """
        from lakeimg.catalog.history import table_history

        return table_history(self._local, table, limit=limit)

    def lineage(self, table: str, version: VersionLike = None) -> list[dict[str, Any]]:
        """Steps from `table@version` (or "trainset:NAME") back to ingest runs and source folders.

        Example:
            >>> [s["job"] for s in Lake("/tmp/lake").lineage("cats_256")]  # doctest: +SKIP
            ['transform', 'ingest']
        """
        from lakeimg.catalog.lineage import table_lineage, trainset_lineage

        if table.startswith("trainset:"):
            return trainset_lineage(self._local, table.split(":", 1)[1])
        return table_lineage(self._local, table, version)

    def reproduce(self, table: str, version: VersionLike = None, **options: Any) -> dict[str, Any]:
        """Re-run what made `table@version` and compare content hashes (see catalog.reproduce).

        Example:
            >>> Lake("/tmp/lake").reproduce("cats_256", 2)["identical"]  # doctest: +SKIP
            True
        """
        from lakeimg.catalog.reproduce import reproduce

        return reproduce(self._local, table, version, **options)

    def verify(self, table: str, version: VersionLike = None, *, tiles: bool = True):
        """Check every data file and row of `table@version`: a frozen `VerifyReport` (never raises
        for damage it finds; see `lakeimg.catalog.verify`).

        Example:
            >>> report = Lake("/tmp/lake").verify("images")  # doctest: +SKIP
            >>> report.ok, report.rows_hashed, [p.uri for p in report.problems]  # doctest: +SKIP
            (True, 12, [])
        """
        from lakeimg.catalog.verify import verify_table

        if not self._local.exists(table):
            from lakeimg.errors import TableNotFoundError

            raise TableNotFoundError(table, self.path)
        return verify_table(self._local, table, version, tiles=tiles)

    def create_training_set(self, name: str, table: str, version: VersionLike = None, **options: Any):
        """Record an immutable training set on `table@version`; options as `create_trainset`.

        Example:
            >>> Lake("/tmp/lake").create_training_set("cats-v1", "images", splits="train=0.8,test=0.2", seed=7)  # doctest: +SKIP
        """
        from lakeimg.catalog.trainsets import TrainingSet, create_trainset

        create_trainset(self._local, name, table, version=version, **options)
        return TrainingSet(self._local, name)

    def training_set(self, name: str):
        """A pinned training set: rows(split), iter_numpy(...), torch(...), to_spark(...).

        Example:
            >>> Lake("/tmp/lake").training_set("cats-v1").rows("train")  # doctest: +SKIP
        """
        from lakeimg.catalog.trainsets import TrainingSet

        return TrainingSet(self._local, name)

    def training_sets(self) -> list[dict[str, Any]]:
        """Every training set record, oldest first."""
        from lakeimg.catalog.trainsets import list_trainsets

        return list_trainsets(self._local)

    def maintain(self, **options: Any):
        """Compact and vacuum, keeping every version a training set or its lineage reads.

        Example:
            >>> Lake("/tmp/lake").maintain(optimize=True, vacuum_hours=0)  # doctest: +SKIP
        """
        from lakeimg.catalog.maintenance import maintain

        return maintain(self.jobs_engine(), **options)

    def to_spark(self, spark: Any, name: str, split: str, **options: Any):
        """Training set `name`'s split as a Spark DataFrame with an MLlib vector column.

        Example:
            >>> Lake("/lakes/main").to_spark(spark, "cats-v1", "train").printSchema()  # doctest: +SKIP
        """
        from lakeimg.catalog.loaders import to_spark

        return to_spark(spark, self.training_set(name), split, **options)
