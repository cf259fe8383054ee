"""The Spark engine on the shared local[2] session: session setup, SparkEngine, ingest."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.spark


def test_session_has_delta(spark, tmp_path):
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    path = str(tmp_path / "t")
    spark.range(5).write.format("delta").save(path)
    from delta.tables import DeltaTable

    assert DeltaTable.isDeltaTable(spark, path)
    assert spark.read.format("delta").load(path).count() == 5
