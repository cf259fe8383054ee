"""Fixtures shared by the tests (tests/) and the docstring examples (lakeimg/, --doctest-modules).

It sits at the repository root, outside the package: it is never installed and belongs to no
import layer. The one Spark session of a test process lives here so tests and doctests share it.

Docstring examples find these names ready (`doctest_namespace`), each only when it uses it:
- `lake`, `lake_dir`: a Lake (and its folder) holding 4 small JPEGs labelled cat/dog in `images`
  and the training set "pets" (all of it in "train") on it; ingested once per session and
  copied for each example, which may change it freely (Spark examples only read it and share
  the original);
- `out_dir`: an empty folder of the example's own;
- `spark`: the session below (such an example is marked `spark`, like the tests that start it).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from _pytest.doctest import DoctestItem

_DOCTEST_NAMES = ("lake", "lake_dir", "out_dir", "spark")


def _names_used(item: DoctestItem) -> set[str]:
    """The namespace names an example's code mentions (attributes like `lakeimg.spark` do not count)."""
    code = "\n".join(example.source for example in item.dtest.examples)
    return {name for name in _DOCTEST_NAMES if re.search(rf"(?<![.\w]){name}\b", code)}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if isinstance(item, DoctestItem) and "spark" in _names_used(item):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session with Delta for the whole test run (marked tests only start it)."""
    from lakeimg.engine.spark import spark_session_builder

    conf = {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.memory": "1g",
        "spark.pyspark.python": sys.executable,
        # Delta replays its log with 50 tasks by default; test tables have a handful of commits.
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    # With S3A's and ABFS' jars (hadoop-aws + AWS SDK, hadoop-azure; warmed by spark_setup): one JVM
    # serves local, S3 and Azure tests.
    session = spark_session_builder("local[2]", conf, app_name="lakeimg-tests", object_stores=("s3", "az")).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def _doctest_lake(tmp_path_factory) -> Path:
    """The examples' lake, built once: 4 JPEGs (cat/dog folders) ingested in-process, one training set."""
    from lakeimg.lake import Lake
    from lakeimg.samples import write_photo_jpegs

    photos = tmp_path_factory.mktemp("doctest-photos")
    write_photo_jpegs(photos / "cat", 2, width=32, height=24)
    write_photo_jpegs(photos / "dog", 2, width=24, height=32)
    lake = Lake(tmp_path_factory.mktemp("doctest-lake") / "lake")
    lake.ingest(str(photos), workers=0, label_from_path=r"/(cat|dog)/")
    lake.create_training_set("pets", "images", splits="train=1")  # split by uri hash: tmp paths vary
    return Path(lake.path)


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    """Give a docstring example the namespace names it uses (nothing for tests, nothing unused)."""
    if not isinstance(request.node, DoctestItem):
        return
    used = _names_used(request.node)
    for name in _DOCTEST_NAMES:
        doctest_namespace.pop(name, None)  # the namespace outlives the example
    if used & {"lake", "lake_dir"}:
        from lakeimg.lake import Lake

        where = request.getfixturevalue("_doctest_lake")
        if "spark" not in used:  # Spark examples only read: they share the lake, whose logs Spark caches
            where = shutil.copytree(where, request.getfixturevalue("tmp_path") / "lake")
        doctest_namespace["lake_dir"] = str(where)
        doctest_namespace["lake"] = Lake(where)
    if "out_dir" in used:
        out = request.getfixturevalue("tmp_path") / "out"
        out.mkdir()
        doctest_namespace["out_dir"] = str(out)
    if "spark" in used:
        doctest_namespace["spark"] = request.getfixturevalue("spark")
