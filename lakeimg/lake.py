"""`Lake`: the Python entry point to one lake (a folder of Delta tables), and the CLI's only door.

Example:
    >>> import tempfile
    >>> from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24)
    >>> lake.ingest(photos, workers=0).added, lake.tables()
    (4, ['images', 'images_rejects'])
    >>> lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0).added
    4
    >>> [(step.table, step.job) for step in lake.lineage("small")]
    [('small', 'transform'), ('images', 'ingest')]
    >>> lake.versions("small")[0].job, lake.reproduce("small", workers=0).identical, lake.verify("images").ok
    ('transform', True, True)
    >>> lake.sql("SELECT count(*) AS n FROM small").to_pylist()
    [{'n': 4}]
    >>> lake.create_training_set("pets-v1", "small", splits="train=0.5,test=0.5", seed=1).rows().num_rows
    4
    >>> uri = lake.read("images", columns=["uri"])["uri"][0].as_py()
    >>> lake.read_region("images", uri, 0, 0, 4, 4).shape, lake.export("small", tempfile.mkdtemp())["written"]
    ((4, 4, 3), 4)
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.catalog import trainsets
from lakeimg.catalog.history import HistoryEntry, table_history
from lakeimg.catalog.inventory import TableInfo, TableSummary, lake_inventory, table_info
from lakeimg.catalog.lineage import LineageStep, table_lineage, trainset_lineage
from lakeimg.catalog.maintenance import MaintenanceReport, maintain, readable_versions
from lakeimg.catalog.reproduce import ReproduceResult, reproduce
from lakeimg.catalog.sql import run_spark_sql, run_sql
from lakeimg.engine import open_engine
from lakeimg.engine.base import Engine, EngineName, VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import require_lake, tables_in
from lakeimg.engine.spark import jvm_output_to, spark_session_builder
from lakeimg.errors import SpecError, TableNotFoundError
from lakeimg.fluent import TableBuilder
from lakeimg.image.sheet import PIXEL_COLUMNS, ContactSheet, SheetItem, caption_lines, row_thumbnail
from lakeimg.jobs.export import ExportLayout, export_table
from lakeimg.jobs.ingest import IngestSummary, ingest_files
from lakeimg.jobs.regions import read_region
from lakeimg.jobs.transform import TransformSummary, transform_table
from lakeimg.jobs.verify import VerifyReport, check_content, verify_table
from lakeimg.storage import is_remote, uri_to_path
from lakeimg.tables import is_table_name, table_path

__all__ = ["Lake", "EngineName", "ExportFormat", "FilterTerms", "filter_expression"]

ExportFormat = Literal["jpeg", "png", "tiff", "bmp"]
# delta-rs' filter terms: (column, operator, value) tuples that must all hold.
FilterTerms = Sequence[tuple[str, str, Any]]
_OPERATORS = {"=": "__eq__", "==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__", ">=": "__ge__"}


def filter_expression(terms: pc.Expression | FilterTerms) -> pc.Expression:
    """A read filter as a pyarrow expression: one already, or delta-rs style (column, op, value)
    terms joined by AND. Columns are field references and values literals: nothing is parsed
    as SQL.

    Example:
        >>> str(filter_expression([("label", "=", "cats"), ("width", ">=", 64)]))
        '((label == "cats") and (width >= 64))'
    """
    if isinstance(terms, pc.Expression):
        return terms
    expression = None
    for term in terms:
        if not (isinstance(term, (tuple, list)) and len(term) == 3 and isinstance(term[0], str)):
            raise SpecError(f"filter term {term!r}: give (column, operator, value)")
        column, op, value = term
        field = pc.field(column)
        if op in _OPERATORS:
            part = getattr(field, _OPERATORS[op])(value)
        elif op in ("in", "not in"):
            part = field.isin(list(value))
            part = ~part if op == "not in" else part
        else:
            raise SpecError(f"filter term {term!r}: operator must be one of {', '.join([*_OPERATORS, 'in', 'not in'])}")
        expression = part if expression is None else expression & part
    if expression is None:
        raise SpecError("filter: give at least one (column, operator, value) term")
    return expression


class Lake:
    """A lake rooted at `path`. Reads use delta-rs at any version; jobs run on the chosen engine.

    Args:
        path: the lake's root: a folder, a `file://` URL, or an object-store URL
            (`s3://bucket/prefix`; see the README's "Object stores").
        engine: "local" (default, no JVM) or "spark".
        spark: an existing SparkSession for the Spark engine (lakeimg never builds a hidden one).
        storage_options: object-store settings in delta-rs' spelling (`AWS_REGION`,
            `AWS_ENDPOINT_URL`, ...) over the `AWS_*`/`AZURE_*`/`GOOGLE_*` environment variables;
            they reach delta-rs, the source reader and the workers. Never stored or printed.
    """

    def __init__(self, path: str | os.PathLike[str], *, engine: EngineName = "local", spark: Any = None,
                 storage_options: Mapping[str, str] | None = None):
        text = os.fspath(path)
        self.path = text.rstrip("/") if is_remote(text) else os.path.abspath(uri_to_path(text))
        self.engine_name = engine
        self.spark = spark
        self.spark_log: str | None = None  # where a quiet session's JVM output went (on_new_spark_session)
        self._local = LocalEngine(self.path, storage_options=storage_options)

    @property
    def storage_options(self) -> dict[str, str]:
        """The object-store settings every part of this lake uses (environment + given options)."""
        return dict(self._local.options)

    @classmethod
    def existing(cls, path: str | os.PathLike[str], **options: Any) -> Lake:
        """The lake at `path`; LakeNotFoundError when there is none (a mistyped path makes no lake).

        Example:
            >>> Lake.existing("/nonexistent/lake")
            Traceback (most recent call last):
            ...
            lakeimg.errors.LakeNotFoundError: no lake at /nonexistent/lake
        """
        lake = cls(path, **options)
        require_lake(lake.path, lake.storage_options)
        return lake

    @classmethod
    def on_new_spark_session(cls, path: str | os.PathLike[str], master: str | None = None, conf: Iterable[str] = (),
                             *, quiet: bool = False) -> Lake:
        """The lake on the Spark engine with a session built for it (Delta configured; no
        `master`: spark-submit's, or local[*] when run directly). The caller stops `lake.spark`.

        `quiet` (the CLI without --verbose): the JVM's own output (Ivy's report, log4j) goes to
        a log file in the temp folder (`lake.spark_log`) instead of the terminal, and Spark logs
        errors only.

        Example:
            >>> lake = Lake.on_new_spark_session(lake_dir, "local[2]")  # getOrCreate: a running session is reused
            >>> lake.spark is spark, lake.version("images")
            (True, 0)
        """
        builder = spark_session_builder(master, conf, object_stores=[os.fspath(path)])
        log = None
        if quiet:
            handle, log = tempfile.mkstemp(prefix="lakeimg-spark-", suffix=".log")
            os.close(handle)
            with jvm_output_to(log):
                session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        else:
            session = builder.getOrCreate()
        lake = cls(path, engine="spark", spark=session)
        lake.spark_log = log
        return lake

    def __repr__(self) -> str:
        return f"Lake({self.path!r})"

    def tables(self) -> list[str]:
        """Names of the lake's tables (lakeimg's own runs and training-set tables left out)."""
        return [t for t in tables_in(self.path, self._local.options) if is_table_name(t)]

    def version(self, table: str) -> int | None:
        """Current version of `table`, or None when it does not exist."""
        return self._local.version(table_path(table))

    def inventory(self) -> list[TableSummary]:
        """Every table (SQL names, `lakeimg_runs` included) and training set of the lake: kind,
        rows, current version, last change, size, from the Delta log only (`lakeimg tables`)."""
        return lake_inventory(self._local)

    def info(self, table: str, version: VersionLike = None) -> TableInfo:
        """One table version's schema, rows, size, versions, properties and lineage (`lakeimg info`)."""
        return table_info(self._local, table, version)

    def readable_versions(self, table: str) -> list[int]:
        """Versions of `table` time travel can still read (vacuum and log cleanup remove others)."""
        return readable_versions(self._local, table)

    def read(self, table: str, version: VersionLike = None, *, columns: Sequence[str] | None = None,
             filter: pc.Expression | FilterTerms | None = None, verify: bool = True) -> pa.Table:
        """The table as Arrow at a version (int), timestamp (datetime or ISO string) or latest.

        `filter` keeps matching rows and is pushed down to the Parquet files (row groups whose
        statistics rule it out are never read): a pyarrow expression
        (`pc.field("label") == "cats"`) or delta-rs style terms (`[("label", "=", "cats"),
        ("width", ">=", 64)]`, all must hold; operators = != < <= > >= in "not in").

        With `verify` (the default), whenever `content` is read every returned row's bytes are
        hashed and compared with its `content_sha256` (read too, then dropped if not asked for):
        a mismatch raises ContentMismatchError naming the uri. Reads without `content` cost
        nothing extra. A missing or unreadable data file raises LakeDamagedError naming it.

        Example:
            >>> import tempfile, pyarrow.compute as pc
            >>> from lakeimg.samples import write_photo_jpegs
            >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
            >>> _ = write_photo_jpegs(photos, 3, width=32, height=24); _ = lake.ingest(photos, workers=0)
            >>> lake.read("images", columns=["uri"], filter=[("width", "=", 32)]).num_rows
            3
            >>> lake.read("images", columns=["uri"], filter=pc.field("width") > 32).num_rows
            0
        """
        table = table_path(table)
        expression = filter_expression(filter) if filter is not None else None
        wanted = list(columns) if columns is not None else None
        if not verify or (wanted is not None and "content" not in wanted):
            return self._local.read(table, version=version, columns=columns, filter=expression)
        resolved = self._local.resolve_version(table, version)
        if not {"uri", "content", "content_sha256"} <= set(self._local.arrow_schema(table, resolved).names):
            return self._local.read(table, version=resolved, columns=columns, filter=expression)
        extra = [c for c in ("uri", "content_sha256") if wanted is not None and c not in wanted]
        result = self._local.read(table, version=resolved, columns=None if wanted is None else wanted + extra,
                                  filter=expression)
        check_content(result, table, resolved)
        return result.drop_columns(extra) if extra else result

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's raw Delta commits, newest first, with lakeimg's run record under "lakeimg".

        `versions()` is lakeimg's reading of the same log (run, job, status, counts per
        version): what `lakeimg history` prints.
        """
        return self._local.history(table_path(table), limit)

    def sql(self, query: str, *, limit: int | None = None) -> pa.Table:
        """One read-only query over the lake's tables as an Arrow table: DuckDB, or Spark SQL on
        the Spark engine. `limit` caps the rows (applied by the engine, not pasted into the
        text). `.to_pandas()` or `polars.from_arrow(...)` turn the result into a data frame.

        Example:
            >>> import tempfile
            >>> Lake(tempfile.mkdtemp()).sql("SELECT 1 AS one").to_pylist()
            [{'one': 1}]
        """
        if self.engine_name == "spark":
            return run_spark_sql(self._spark(), self.path, query, limit=limit)
        return run_sql(self.path, query, engine=self._local, limit=limit)

    def show(self, query: str, *, limit: int = 500) -> ContactSheet:
        """A query's rows as a contact sheet (`.save("x.png" | "x.html")`; inline in Jupyter).

        Rows are drawn from their `thumbnail`, or (derived tables) from `data` with `encoding`,
        `width`, `height`, `channels`, `dtype` rendered at display size; `uri`, `width`,
        `height`, `size_bytes` and `label` make the captions. At most `limit` rows are read.

        Example:
            >>> import tempfile
            >>> sheet = Lake(tempfile.mkdtemp()).show("SELECT 'a.jpg' AS uri, NULL::BLOB AS thumbnail")
            >>> len(sheet), "a.jpg" in sheet._repr_html_()
            (1, True)
        """
        table = self.sql(query, limit=max(0, limit) + 1)  # one more: whether rows were left out
        names = set(table.column_names)
        if "thumbnail" not in names and not set(PIXEL_COLUMNS) <= names:
            raise SpecError("the query must select the thumbnail column (SELECT uri, label, thumbnail FROM images) "
                            f"or, for a derived table, {', '.join(PIXEL_COLUMNS)} (SELECT * FROM small)")
        rows = table.slice(0, max(0, limit)).to_pylist()
        items = [SheetItem(row_thumbnail(row), caption_lines(row)) for row in rows]
        return ContactSheet(items, title=query, more=table.num_rows > len(rows))

    def _repr_html_(self) -> str:
        """The lake's tables with their current versions, for Jupyter."""
        cells = "".join(f"<tr><td>{html.escape(t)}</td><td>{self.version(t)}</td></tr>" for t in self.tables())
        return (f"<p>lakeimg lake <code>{html.escape(self.path)}</code></p>"
                f"<table><thead><tr><th>table</th><th>version</th></tr></thead><tbody>{cells}</tbody></table>")

    def table(self, name: str) -> TableBuilder:
        """A fluent transform builder over table `name` (see `lakeimg.fluent.TableBuilder`)."""
        return TableBuilder(self, name)

    def transform(self, source: str, target: str, spec: Any, **options: Any) -> TransformSummary:
        """Run a transform spec from `source` into `target`; options as `jobs.transform.transform_table`."""
        options.setdefault("engine", self.jobs_engine())
        return transform_table(self.path, source, target, spec, **options)

    def ingest(self, sources: str | Sequence[str], **options: Any) -> IngestSummary:
        """Ingest files, folders or globs; options as `lakeimg.jobs.ingest.ingest_files`."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [os.fspath(sources)]
        options.setdefault("engine", self.jobs_engine())
        return ingest_files(self.path, list(sources), **options)

    def export(
        self, table: str, out: str | os.PathLike[str], *, format: ExportFormat = "png", version: VersionLike = None,
        quality: int = 90, layout: ExportLayout = "flat", where: str | None = None, overwrite: bool = False,
        pages: Literal["first", "all"] = "first", metadata: bool = True,
    ) -> dict[str, Any]:
        """Write the images of `table@version` into the folder `out` as files; returns a summary.

        `layout` "flat", "label" (`out/<label>/...`) or "source" (the source tree), `where` a
        condition over the table's columns, `pages="all"` every page of multi-page images, plus
        `out/metadata.csv`; existing files are refused unless `overwrite` (see `jobs.export.export_table`).
        """
        return export_table(self.path, table, out, fmt=format, version=version, quality=quality, engine=self._local,
                            layout=layout, where=where, overwrite=overwrite, pages=pages, metadata=metadata)

    def jobs_engine(self) -> Engine:
        """The engine jobs run on: the lake's `LocalEngine`, or its SparkEngine (`spark_engine`)."""
        return self.spark_engine() if self.engine_name == "spark" else self._local

    def spark_engine(self):
        """The lake's SparkEngine on the session given as `Lake(path, engine="spark", spark=...)`."""
        return open_engine(self.path, "spark", spark=self._spark(), storage_options=self.storage_options)

    def _spark(self) -> Any:
        if self.spark is None:
            raise SpecError("Lake(..., engine='spark') needs spark=<SparkSession>; lakeimg never builds a hidden one")
        return self.spark

    def read_region(self, table: str, uri: str, x: int, y: int, width: int, height: int, level: int = 0, page: int = 0,
                    version: VersionLike = None):
        """Exact pixels (HWC ndarray, native dtype) of a window; tiled images read only the tiles it needs."""
        return read_region(self._local, table, uri, x, y, width, height, level=level, page=page, version=version)

    # --- catalog: history, lineage, reproduce, training sets, maintenance (lakeimg.catalog) ---

    def versions(self, table: str, limit: int | None = None) -> list[HistoryEntry]:
        """The table's versions, newest first: operation, run, job, status, counts, timestamp."""
        return table_history(self._local, table_path(table), limit=limit)

    def lineage(self, table: str, version: VersionLike = None) -> list[LineageStep]:
        """Steps from `table@version` (or "trainset:NAME") back to ingest runs and source folders.
        """
        if table.startswith("trainset:"):
            return trainset_lineage(self._local, table.split(":", 1)[1])
        return table_lineage(self._local, table, version)

    def reproduce(self, table: str, version: VersionLike = None, **options: Any) -> ReproduceResult:
        """Re-run what made `table@version` and compare content hashes (see catalog.reproduce)."""
        return reproduce(self._local, table, version, **options)

    def verify(self, table: str, version: VersionLike = None, *, tiles: bool = True) -> VerifyReport:
        """Check every data file and row of `table@version`: a frozen `VerifyReport` (never raises
        for damage it finds; see `lakeimg.jobs.verify`).
        """
        if not self._local.exists(table):
            raise TableNotFoundError(table, self.path)
        return verify_table(self._local, table, version, tiles=tiles)

    def create_training_set(self, name: str, table: str, version: VersionLike = None, **options: Any) -> trainsets.TrainingSet:
        """Record an immutable training set on `table@version`; options as `create_trainset`."""
        trainsets.create_trainset(self._local, name, table, version=version, **options)
        return trainsets.TrainingSet(self._local, name)

    def training_set(self, name: str) -> trainsets.TrainingSet:
        """A pinned training set: rows(split), iter_numpy(...), torch(...), to_spark(...)."""
        return trainsets.TrainingSet(self._local, name)

    def training_sets(self) -> list[trainsets.TrainingSetRecord]:
        """Every training set record, oldest first."""
        return trainsets.list_trainsets(self._local)

    def maintain(self, **options: Any) -> MaintenanceReport:
        """Compact and vacuum, keeping every version a training set or its lineage reads."""
        return maintain(self.jobs_engine(), **options)

    def to_spark(self, spark: Any, name: str, split: str, **options: Any):
        """Training set `name`'s split as a Spark DataFrame with an MLlib vector column.

        Example:
            >>> Lake(lake_dir).to_spark(spark, "pets", "train").dtypes
            [('uri', 'string'), ('label', 'string'), ('label_index', 'bigint'), ('features', 'vector')]
        """
        return self.training_set(name).to_spark(spark, split, **options)
