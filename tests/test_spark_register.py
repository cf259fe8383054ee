"""`lakeimg.spark.register`: a lake's tables in the Spark session catalog, queried by plain SQL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.spark


def test_register_and_query(spark, tmp_path):
    import lakeimg.spark
    from lakeimg.jobs.ingest import ingest_files
    from lakeimg.samples import write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src, 3, width=48, height=32)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a.png")
    (src / "empty.jpg").write_bytes(b"")
    lake = tmp_path / "lake"
    ingest_files(str(lake), [str(src)], workers=0)  # written by the embedded engine
    Image.fromarray(np.ones((8, 8), np.uint8)).save(src / "b.png")
    ingest_files(str(lake), [str(src)], workers=0)

    registered = lakeimg.spark.register(spark, lake)
    assert set(registered) == {"images", "images_rejects", "lakeimg_runs"}
    counts = {r[0]: r[1] for r in spark.sql("SELECT format, count(*) FROM images GROUP BY format").collect()}
    assert counts == {"JPEG": 3, "PNG": 2}
    assert spark.sql("SELECT count(*) FROM images VERSION AS OF 0").first()[0] == 4
    assert spark.sql("SELECT error_class FROM images_rejects").first()[0] == "empty"
    assert spark.sql("SELECT count(*) FROM lakeimg_runs").first()[0] == 2

    # Registering another lake re-points the names; the first lake's data stays.
    other = tmp_path / "other"
    ingest_files(str(other), [str(src / "a.png")], workers=0)
    lakeimg.spark.register(spark, other, database="lake2")
    assert spark.sql("SELECT count(*) FROM lake2.images").first()[0] == 1
    lakeimg.spark.register(spark, other)
    assert spark.sql("SELECT count(*) FROM images").first()[0] == 1
    spark.sql("DROP TABLE images")
    assert (lake / "images" / "_delta_log").is_dir()
    assert len(lakeimg.spark.engine(spark, lake).read("images", columns=["uri"])) == 5
