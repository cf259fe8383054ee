"""Incremental, idempotent ingest: MERGE keyed on uri, no-op re-runs, fixes, deletes, failed runs, runs rows."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.samples import photo_like
from lakeimg.tables import spec_hash

TABLES = ("images", "images_rejects")


def _png(path: Path, seed: int, size=(24, 32)) -> None:
    Image.fromarray(photo_like(*size, seed=seed)).save(path, "PNG")


def _bump_mtime(path: Path, seconds: float = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def _versions(lake: Lake) -> dict[str, int | None]:
    return {t: lake.version(t) for t in (*TABLES, "_lakeimg/runs")}


def _by_name(lake: Lake, table: str) -> dict[str, dict]:
    return {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read(table).to_pylist()}


@pytest.fixture
def src(tmp_path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"img{i}.png", seed=i)
    (folder / "bad.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_rerun_over_unchanged_files_is_a_no_op(src, lake_dir):
    lake = Lake(lake_dir)
    first = lake.ingest([str(src)], workers=0)
    assert (first.added, first.rejected, first.unchanged) == (4, 1, 0)
    before = _versions(lake)
    images_before = lake.read("images")
    second = lake.ingest([str(src)], workers=0)
    after = _versions(lake)
    assert (second.added, second.updated, second.deleted, second.rejected, second.unchanged) == (0, 0, 0, 0, 5)
    assert second.version == first.version
    assert {t: after[t] for t in TABLES} == {t: before[t] for t in TABLES}
    # only the runs table records the second run
    assert after["_lakeimg/runs"] == before["_lakeimg/runs"] + 1
    assert lake.read("images").equals(images_before)
    runs = lake.read("_lakeimg/runs").to_pylist()
    assert [r["run_id"] for r in runs if r["run_id"] == second.run_id]
    assert dict(next(r for r in runs if r["run_id"] == second.run_id)["counts"])["unchanged"] == 5


def test_changed_new_and_deleted_files(src, lake_dir):
    lake = Lake(lake_dir)
    first = lake.ingest([str(src)], workers=0)
    old = _by_name(lake, "images")
    _png(src / "img1.png", seed=99, size=(30, 40))  # changed content and size
    _png(src / "new.png", seed=7)
    (src / "img2.png").unlink()
    (src / "bad.jpg").unlink()
    second = lake.ingest([str(src)], workers=0)
    assert (second.added, second.updated, second.deleted, second.unchanged) == (1, 1, 0, 2)
    assert second.version == first.version + 1
    rows = _by_name(lake, "images")
    assert set(rows) == {"img0.png", "img1.png", "img2.png", "img3.png", "new.png"}  # no --sync-deletes
    assert (rows["img1.png"]["width"], rows["img1.png"]["height"]) == (40, 30)
    assert rows["img1.png"]["content_sha256"] != old["img1.png"]["content_sha256"]
    assert rows["img1.png"]["run_id"] == second.run_id
    assert rows["img0.png"]["run_id"] == first.run_id  # untouched rows keep their run
    third = lake.ingest([str(src)], workers=0, sync_deletes=True)
    assert (third.added, third.updated, third.deleted) == (0, 0, 2)
    assert set(_by_name(lake, "images")) == {"img0.png", "img1.png", "img3.png", "new.png"}
    assert _by_name(lake, "images_rejects") == {}
    # time travel still sees the deleted rows
    assert "img2.png" in _by_name_at(lake, "images", second.version)


def _by_name_at(lake: Lake, table: str, version) -> dict[str, dict]:
    return {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read(table, version).to_pylist()}


def test_touched_file_with_same_bytes_is_re_read(src, lake_dir):
    lake = Lake(lake_dir)
    lake.ingest([str(src)], workers=0)
    _bump_mtime(src / "img0.png")
    summary = lake.ingest([str(src)], workers=0)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 1, 4)


def test_sync_deletes_only_inside_the_given_sources(tmp_path, lake_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _png(a / "x.png", 1)
    _png(b / "y.png", 2)
    lake = Lake(lake_dir)
    lake.ingest([str(a), str(b)], workers=0)
    (b / "y.png").unlink()
    summary = lake.ingest([str(a)], workers=0, sync_deletes=True)  # b is not a source now
    assert summary.deleted == 0
    assert set(_by_name(lake, "images")) == {"x.png", "y.png"}
    summary = lake.ingest([str(b), str(a)], workers=0, sync_deletes=True)
    assert summary.deleted == 1
    assert set(_by_name(lake, "images")) == {"x.png"}


def test_rejected_file_fixed_later_moves_to_images(src, lake_dir):
    lake = Lake(lake_dir)
    lake.ingest([str(src)], workers=0)
    assert set(_by_name(lake, "images_rejects")) == {"bad.jpg"}
    Image.fromarray(photo_like(20, 20)).save(src / "bad.jpg", "JPEG")
    summary = lake.ingest([str(src)], workers=0)
    assert (summary.added, summary.rejected) == (1, 0)
    assert "bad.jpg" in _by_name(lake, "images")
    assert _by_name(lake, "images_rejects") == {}


def test_good_file_that_becomes_corrupt_moves_to_rejects(src, lake_dir):
    lake = Lake(lake_dir)
    lake.ingest([str(src)], workers=0)
    data = (src / "img3.png").read_bytes()
    (src / "img3.png").write_bytes(data[: len(data) // 3])
    summary = lake.ingest([str(src)], workers=0)
    assert summary.rejected == 1
    assert "img3.png" not in _by_name(lake, "images")
    assert _by_name(lake, "images_rejects")["img3.png"]["error_class"] == "truncated"
    images = set(_by_name(lake, "images"))
    rejects = set(_by_name(lake, "images_rejects"))
    assert not images & rejects and images | rejects == {p.name for p in src.iterdir()}


def test_failed_run_leaves_every_table_at_its_previous_version(src, lake_dir):
    lake = Lake(lake_dir)
    lake.ingest([str(src)], workers=0)
    before = {t: lake.version(t) for t in TABLES}
    images_before = lake.read("images")
    rejects_before = lake.read("images_rejects")
    # Make the runs-table append fail: a plain file where the runs table's folder should be.
    runs_dir = lake_dir / "_lakeimg" / "runs"
    shutil.move(runs_dir, lake_dir / "runs-saved")
    runs_dir.write_text("not a Delta table")
    _png(src / "img0.png", seed=42, size=(10, 10))  # work that would change images
    _png(src / "new.png", seed=43)
    (src / "bad.jpg").write_bytes(b"")  # and rejects
    with pytest.raises(Exception):  # noqa: B017 - whatever delta-rs raises, the run must fail
        lake.ingest([str(src)], workers=0)
    assert {t: lake.version(t) for t in TABLES} == before
    assert lake.read("images").equals(images_before)
    assert lake.read("images_rejects").equals(rejects_before)
    assert not (lake_dir / "_lakeimg" / "staging").exists()  # the staged rows went with the run
    # Put the runs table back: the next run does the work.
    runs_dir.unlink()
    shutil.move(lake_dir / "runs-saved", runs_dir)
    summary = lake.ingest([str(src)], workers=0)
    assert (summary.added, summary.updated, summary.rejected) == (1, 1, 1)


def test_failure_after_the_data_commits_keeps_them_and_the_next_run_completes(src, lake_dir, monkeypatch):
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.errors import PartialRunError
    from lakeimg.tables import RUNS_TABLE

    lake = Lake(lake_dir)
    lake.ingest([str(src)], workers=2)
    _png(src / "img1.png", seed=51, size=(12, 12))  # changed: its old row sits in a file with others
    _png(src / "new.png", seed=52)
    real_append = LocalEngine.append

    def failing_append(self, name, *args, **kwargs):
        if name == RUNS_TABLE and args and args[0]["status"][0].as_py() == "succeeded":
            raise OSError(28, "No space left on device")  # after the rejects and images commits
        return real_append(self, name, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "append", failing_append)
    with pytest.raises(PartialRunError, match="No space left") as failed:
        lake.ingest([str(src)], workers=2)
    monkeypatch.undo()
    # Nothing undone: the committed images version holds the new rows, correct on its own.
    images = _by_name(lake, "images")
    assert images["img1.png"]["width"] == 12 and "new.png" in images
    assert failed.value.landed == {"images": lake.version("images")}
    runs = {r["run_id"]: r for r in lake.read(RUNS_TABLE).to_pylist()}
    assert runs[failed.value.run_id]["status"] == "failed"
    assert not (lake_dir / "_lakeimg" / "staging").exists()
    # The next run finds nothing left to do, and history says what happened.
    summary = lake.ingest([str(src)], workers=2)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 6)
    statuses = {h.run_id: h.status for h in lake.versions("images")}
    assert statuses[failed.value.run_id] == "failed"


def test_runs_row_and_commit_metadata_carry_the_same_record(src, lake_dir):
    lake = Lake(lake_dir)
    summary = lake.ingest([str(src)], workers=0, label_from_path="parent")
    runs = lake.read("_lakeimg/runs").to_pylist()
    assert len(runs) == 1
    run = runs[0]
    assert run["run_id"] == summary.run_id
    assert (run["job"], run["status"], run["engine"], run["target_table"]) == ("ingest", "succeeded", "local", "images")
    assert run["target_version"] == summary.version == lake.version("images")
    spec = json.loads(run["spec"])
    assert spec["label_from_path"] == "parent"
    assert run["spec_hash"] == spec_hash(spec)
    assert run["code_version"]
    assert run["started_at"] <= run["finished_at"]
    assert dict(run["counts"]) == {"added": 4, "updated": 0, "unchanged": 0, "deleted": 0, "rejected": 1}
    for table in TABLES:
        commit = lake.history(table, 1)[0]
        record = commit["lakeimg"]
        assert record["run_id"] == summary.run_id
        assert record["spec_hash"] == run["spec_hash"]
        assert record["job"] == "ingest"
    # a second run with another spec gets another hash
    _png(src / "more.png", seed=9)
    other = lake.ingest([str(src)], workers=0)
    runs = {r["run_id"]: r for r in lake.read("_lakeimg/runs").to_pylist()}
    assert runs[other.run_id]["spec_hash"] != run["spec_hash"]
    assert lake.history("images", 1)[0]["lakeimg"]["run_id"] == other.run_id


def test_read_at_version_and_timestamp(src, lake_dir):
    lake = Lake(lake_dir)
    first = lake.ingest([str(src)], workers=0)
    stamp = lake.history("images", 1)[0]["timestamp"]
    _png(src / "later.png", seed=5)
    second = lake.ingest([str(src)], workers=0)
    assert second.version == first.version + 1
    assert lake.read("images", first.version).num_rows == 4
    assert lake.read("images", second.version).num_rows == 5
    assert lake.read("images").num_rows == 5
    import datetime as dt

    at_first = dt.datetime.fromtimestamp(stamp / 1000, dt.timezone.utc)
    assert lake.read("images", at_first, columns=["uri"]).num_rows == 4
    assert lake.read("images", at_first.isoformat(), columns=["uri"]).num_rows == 4
    assert lake.read("images", columns=["uri", "width"]).column_names == ["uri", "width"]


def test_labels_survive_and_update(tmp_path, lake_dir):
    for label in ("cats", "dogs"):
        (tmp_path / "src" / label).mkdir(parents=True)
        _png(tmp_path / "src" / label / "a.png", seed=len(label))
    lake = Lake(lake_dir)
    lake.ingest([str(tmp_path / "src")], workers=0, label_from_path="parent")
    labels = {r["uri"].split("/")[-2]: r["label"] for r in lake.read("images").to_pylist()}
    assert labels == {"cats": "cats", "dogs": "dogs"}
    pixels = np.asarray(Image.open(tmp_path / "src" / "cats" / "a.png"))
    assert pixels.shape == (24, 32, 3)
