"""Interoperability: a lake written by one engine is ingested into and read by the other.

One mixed sample folder is ingested into lake L by the embedded engine and into lake P by Spark;
then each lake gets the other engine's runs (a no-op re-run, then changes), and every version of
every table is read by both engines, by version and by timestamp.
"""

from __future__ import annotations

import datetime as dt
import io
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from lakeimg.engine import open_engine
from lakeimg.jobs.ingest import ingest_files

pytestmark = pytest.mark.spark

_RUN_COLUMNS = ("run_id", "ingested_at", "rejected_at")


def _rows(table: pa.Table) -> list[dict]:
    """Rows in a stable order, without the per-run columns; maps as dicts (order-free)."""
    table = table.drop_columns([c for c in _RUN_COLUMNS if c in table.column_names])
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, list) and value and isinstance(value[0], tuple):
                row[key] = dict(value)
    return sorted(rows, key=repr)


def _modify(src) -> None:
    """A changed file, a new file, a deleted file, a fixed reject and a newly broken image."""
    photos = src / "photos"
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(photos / "landscape.jpg", "JPEG")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(photos / "new.png", "PNG")
    os.remove(photos / "picture.bmp")
    good = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(good, "JPEG")
    (src / "broken" / "truncated.jpg").write_bytes(good.getvalue())
    (photos / "palette.gif").write_bytes(b"GIF89a" + b"\x00" * 5)


def _versions(engine, names):
    return {n: engine.version(n) for n in names}


def _commit_times(local, spark_engine, name: str) -> dict[int, dt.datetime]:
    """A timestamp inside each version's lifetime, agreed on by both engines' histories."""
    stamps: dict[int, int] = {}
    for entry in local.history(name) + spark_engine.history(name):
        stamps[entry["version"]] = max(stamps.get(entry["version"], 0), int(entry["timestamp"]))
    versions = sorted(stamps)
    out = {}
    for v in versions:
        nxt = stamps.get(v + 1)
        ms = stamps[v] + 1 if nxt is None else (stamps[v] + nxt) // 2
        out[v] = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return out


def _check_all_versions(local, spark_engine, name: str) -> None:
    """Both engines read every version of `name` alike, by version and by timestamp."""
    times = _commit_times(local, spark_engine, name)
    for version, when in times.items():
        expected = _rows(local.read(name, version=version))
        assert _rows(spark_engine.read(name, version=version)) == expected, (name, version)
        if version + 1 in times and times[version + 1] - when <= dt.timedelta(milliseconds=1):
            continue  # commits in the same millisecond: no timestamp separates them
        assert _rows(local.read(name, version=when)) == expected, (name, version, when)
        assert _rows(spark_engine.read(name, version=when)) == expected, (name, version, when)


def test_both_ways(spark, tmp_path, samples_dir):
    tables = ("images", "images_rejects")
    lake_l, lake_p = str(tmp_path / "L"), str(tmp_path / "P")
    local_l, spark_l = open_engine(lake_l), open_engine(lake_l, "spark", spark=spark)
    local_p, spark_p = open_engine(lake_p), open_engine(lake_p, "spark", spark=spark)
    src = [str(samples_dir)]

    first_l = ingest_files(lake_l, src, workers=0, label_from_path="parent", engine=local_l)
    first_p = ingest_files(lake_p, src, label_from_path="parent", engine=spark_p)
    for key in ("added", "updated", "unchanged", "deleted", "rejected"):
        assert getattr(first_l, key) == getattr(first_p, key), key
    assert first_l.rejected >= 5 and first_l.added >= 15
    for name in tables:  # same rows apart from run ids and timestamps, read by delta-rs
        assert _rows(local_p.read(name)) == _rows(local_l.read(name)), name
    # Spark-written Parquet (INT96 timestamps) reads back through LocalEngine.read with the Delta types.
    images_p = local_p.read("images")
    assert images_p.schema.field("modified_at").type == pa.timestamp("us", tz="UTC")
    assert images_p.schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")
    assert images_p["ingested_at"][0].as_py().year >= 2024

    # Unchanged files: the other engine commits nothing to the image tables.
    before_l, before_p = _versions(local_l, tables), _versions(local_p, tables)
    noop_l = ingest_files(lake_l, src, label_from_path="parent", engine=spark_l)
    noop_p = ingest_files(lake_p, src, workers=0, label_from_path="parent", engine=local_p)
    assert (noop_l.added, noop_l.updated, noop_l.rejected) == (0, 0, 0)
    assert (noop_p.added, noop_p.updated, noop_p.rejected) == (0, 0, 0)
    assert noop_l.unchanged == noop_p.unchanged == first_l.added + first_l.rejected
    assert _versions(local_l, tables) == before_l and _versions(local_p, tables) == before_p

    # Changes merge correctly, each engine on the other's lake.
    _modify(samples_dir)
    change_l = ingest_files(lake_l, src, label_from_path="parent", sync_deletes=True, engine=spark_l)
    change_p = ingest_files(lake_p, src, workers=0, label_from_path="parent", sync_deletes=True, engine=local_p)
    for summary in (change_l, change_p):
        assert (summary.added, summary.updated, summary.deleted, summary.rejected) == (2, 1, 1, 1)
    for name in tables:
        assert _rows(local_p.read(name)) == _rows(local_l.read(name)), name
        assert _rows(spark_l.read(name)) == _rows(local_l.read(name)), name
    uris = set(local_l.read("images", columns=["uri"])["uri"].to_pylist())
    assert (samples_dir / "broken" / "truncated.jpg").as_uri() in uris
    assert (samples_dir / "photos" / "picture.bmp").as_uri() not in uris
    assert (samples_dir / "photos" / "palette.gif").as_uri() not in uris

    # Runs: one row per run, same counts and spec whichever engine ran it.
    runs_l, runs_p = local_l.read("_lakeimg/runs"), local_p.read("_lakeimg/runs")
    order = lambda t: t.sort_by("started_at")  # noqa: E731
    assert order(runs_l)["engine"].to_pylist() == ["local", "spark", "spark"]
    assert order(runs_p)["engine"].to_pylist() == ["spark", "local", "local"]
    for column in ("counts", "spec", "spec_hash", "job", "status", "sources"):
        assert order(runs_l)[column].to_pylist() == order(runs_p)[column].to_pylist(), column
    # The commit metadata carries the same record under both engines.
    for engine, lake_runs in ((local_l, runs_l), (local_p, runs_p)):
        recorded = {h["lakeimg"]["run_id"] for h in engine.history("images") if "lakeimg" in h}
        assert recorded <= set(lake_runs["run_id"].to_pylist()) and len(recorded) >= 2

    # Every version of the image tables, read by both engines, by version and by timestamp
    # (the runs table's versions are covered by the engine tests).
    for local, spark_engine in ((local_l, spark_l), (local_p, spark_p)):
        for name in tables:
            _check_all_versions(local, spark_engine, name)
