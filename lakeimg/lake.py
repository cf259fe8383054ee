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

from lakeimg.engine.local import LocalEngine, VersionLike
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
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path) if not n.startswith(("_", ".")) and self._local.exists(n))

    def version(self, table: str) -> int | None:
        """Current version of `table`, or None when it does not exist."""
        return self._local.version(table)

    def read(
        self,
        table: str,
        version: VersionLike = None,
        *,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The table as Arrow at a version (int), timestamp (datetime or ISO string) or latest.

        Example:
            >>> Lake("/tmp/lake").read("images", 0, columns=["uri", "width"])  # doctest: +SKIP
        """
        return self._local.read(table, version=version, columns=columns)

    def history(self, table: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first, with lakeimg's run record under "lakeimg"."""
        return self._local.history(table, limit)

    def ingest(self, sources: str | Sequence[str], **options: Any) -> IngestSummary:
        """Ingest files, folders or globs; options as `lakeimg.jobs.ingest.ingest_files`.

        Example:
            >>> Lake("/tmp/lake").ingest(["/data/photos"], label_from_path="parent")  # doctest: +SKIP
        """
        if isinstance(sources, (str, os.PathLike)):
            sources = [os.fspath(sources)]
        return ingest_files(self.path, list(sources), **options)
