"""A first end-to-end check of the embedded ingest (the detailed suites live beside it)."""

from __future__ import annotations

from lakeimg import Lake


def test_ingest_sample_folder_then_rerun_is_a_no_op(samples_dir, lake_dir):
    lake = Lake(lake_dir)
    first = lake.ingest([str(samples_dir)], workers=2)
    images = lake.read("images", columns=["uri", "format"])
    rejects = lake.read("images_rejects", columns=["uri", "error_class"])
    assert first.added == images.num_rows > 10
    assert first.rejected == rejects.num_rows > 0
    second = lake.ingest([str(samples_dir)], workers=2)
    assert (second.added, second.updated, second.rejected) == (0, 0, 0)
    assert second.version == first.version
    assert second.unchanged == images.num_rows + rejects.num_rows
