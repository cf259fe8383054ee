"""Labels and metadata like imagefolder: `--metadata FILE`, `--relabel`, `--retry-rejects`.

A metadata file's labels and extra columns (the `attributes` map) join the images by path; a
changed metadata file or label rule rewrites only those rows, without decoding an image.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.base import Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import SpecError
from lakeimg.schemas import table_contract


def _png(path: Path, value: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, name in enumerate(["cats/a.png", "cats/b.png", "dogs/c.png", "dogs/sub/d.png"]):
        _png(root / name, 40 * i)
    return root


def _rows(lake: Lake) -> dict[str, dict]:
    table = lake.read("images", columns=["uri", "label", "attributes", "ingested_at", "content_sha256"])
    return {r["uri"].rsplit("/photos/", 1)[1]: {**r, "attributes": dict(r["attributes"]) if r["attributes"] else None}
            for r in table.to_pylist()}


def _ingest(lake: Lake, photos: Path, **options):
    decoded = []
    summary = lake.ingest([str(photos)], workers=0, on_progress=lambda done, total: decoded.append(done), **options)
    return summary, decoded


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_metadata_sets_labels_and_attributes_and_a_changed_file_relabels_without_decoding(tmp_path, photos, kind):
    lake = Lake(tmp_path / "lake")
    records = [{"file_name": "cats/a.png", "label": "tabby", "split": "train", "score": 0.5},
               {"file_name": "dogs/sub/d.png", "label": None, "split": "val", "score": None}]
    meta = tmp_path / f"metadata.{kind}"

    def write(rows):
        if kind == "csv":
            lines = ["file_name,label,split,score"] + [
                ",".join("" if r[k] is None else str(r[k]) for k in ("file_name", "label", "split", "score")) for r in rows]
            meta.write_text("\n".join(lines) + "\n")
        elif kind == "jsonl":
            meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            pq.write_table(pa.Table.from_pylist(rows), meta)

    write(records)
    first, _ = _ingest(lake, photos, label_from_path="parent", metadata=str(meta))
    assert first.added == 4
    rows = _rows(lake)
    assert rows["cats/a.png"]["label"] == "tabby" and rows["cats/a.png"]["attributes"] == {"split": "train", "score": "0.5"}
    # no label in the file: the path rule's; null values are left out of the map
    assert rows["dogs/sub/d.png"]["label"] == "sub" and rows["dogs/sub/d.png"]["attributes"] == {"split": "val"}
    assert rows["cats/b.png"]["label"] == "cats" and rows["cats/b.png"]["attributes"] is None

    # Same metadata again: nothing to do, no commit.
    version = lake.version("images")
    again, decoded = _ingest(lake, photos, label_from_path="parent", metadata=str(meta))
    assert (again.relabeled, again.added, again.updated, lake.version("images"), decoded) == (0, 0, 0, version, [])

    # The metadata file changes, the images do not: those rows change, nothing is decoded.
    records[0] = {**records[0], "label": "siamese", "split": "test"}
    records[1] = {**records[1], "label": "puppy"}
    write(records)
    changed, decoded = _ingest(lake, photos, label_from_path="parent", metadata=str(meta))
    assert (changed.relabeled, changed.updated, changed.added, changed.unchanged, decoded) == (2, 0, 0, 4, [])
    after = _rows(lake)
    assert after["cats/a.png"]["label"] == "siamese" and after["cats/a.png"]["attributes"]["split"] == "test"
    assert after["dogs/sub/d.png"]["label"] == "puppy"
    for name in rows:  # rows are copied, not decoded again: ingest time and hash kept; others untouched
        assert (after[name]["ingested_at"], after[name]["content_sha256"]) == (rows[name]["ingested_at"], rows[name]["content_sha256"])
    assert after["cats/b.png"] == rows["cats/b.png"]
    assert lake.verify("images").ok
    run = lake.versions("images")[0]
    assert run.job == "ingest" and json.loads(lake.history("images", 1)[0]["lakeimg"]["spec"])["metadata"] == meta.as_uri()


def test_metadata_with_a_uri_column_of_absolute_paths_and_uris(tmp_path, photos):
    lake = Lake(tmp_path / "lake")
    meta = photos / "labels.jsonl"  # among the images, as imagefolder keeps it: not ingested itself
    meta.write_text(json.dumps({"uri": str(photos / "cats" / "a.png"), "label": "x", "tags": ["a", "b"]}) + "\n"
                    + json.dumps({"uri": (photos / "dogs" / "c.png").as_uri(), "label": "y"}) + "\n")
    lake.ingest([str(photos)], workers=0, metadata=str(meta))
    rows = _rows(lake)
    assert (rows["cats/a.png"]["label"], rows["dogs/c.png"]["label"], rows["cats/b.png"]["label"]) == ("x", "y", None)
    assert rows["cats/a.png"]["attributes"] == {"tags": '["a", "b"]'}
    assert "labels.jsonl" not in rows and lake.read("images_rejects").num_rows == 0
    # SQL reads the map like any column
    assert lake.sql("SELECT count(*) AS n FROM images WHERE attributes['tags'] IS NOT NULL").to_pylist() == [{"n": 1}]


@pytest.mark.parametrize("text, message", [
    ("file_name,label\n../outside.png,x\n", "relative to the source root"),
    ("file_name,label\n/etc/passwd,x\n", "relative to the source root"),
    ("name,label\ncats/a.png,x\n", "file_name"),
    ("file_name,label\ncats/a.png,x\ncats/./a.png,y\n", "two rows"),
    ("file_name,label\nnope/a.png,x\n", "no row names a listed file"),
    ("uri,label\ncats/a.png,x\n", "absolute path or a URI"),
])
def test_bad_metadata_files_are_refused_before_anything_is_written(tmp_path, photos, text, message):
    meta = tmp_path / "m.csv"
    meta.write_text(text)
    with pytest.raises(SpecError, match=message):
        Lake(tmp_path / "lake").ingest([str(photos)], workers=0, metadata=str(meta))
    assert not (tmp_path / "lake" / "images").exists()


def test_relabel_applies_a_new_label_rule_to_existing_rows_without_decoding(tmp_path, photos):
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(photos)], workers=0)
    before = _rows(lake)
    assert {r["label"] for r in before.values()} == {None}
    spec = {"ops": [{"op": "resize", "width": 4, "height": 3}], "output": "raw"}
    lake.transform("images", "small", spec, workers=0)

    # A new rule alone labels new files only (unchanged rows keep theirs), as before.
    plain, _ = _ingest(lake, photos, label_from_path="parent")
    assert plain.relabeled == 0 and {r["label"] for r in _rows(lake).values()} == {None}

    relabeled, decoded = _ingest(lake, photos, label_from_path="parent", relabel=True)
    assert (relabeled.relabeled, relabeled.updated, decoded) == (4, 0, [])
    after = _rows(lake)
    assert {k: r["label"] for k, r in after.items()} == {"cats/a.png": "cats", "cats/b.png": "cats",
                                                         "dogs/c.png": "dogs", "dogs/sub/d.png": "sub"}
    assert all(after[k]["ingested_at"] == before[k]["ingested_at"] for k in before)
    # A derived table follows: the relabeled rows are updates in the change feed.
    assert lake.transform("images", "small", spec, workers=0).updated == 4
    assert sorted(lake.read("small", columns=["label"])["label"].to_pylist()) == ["cats", "cats", "dogs", "sub"]

    # Another rule: every row follows it; a rule that gives no label clears it.
    regex, _ = _ingest(lake, photos, label_from_path=r"/(?P<label>[a-c])\.png$", relabel=True)
    assert regex.relabeled == 4
    assert {k: r["label"] for k, r in _rows(lake).items()} == {"cats/a.png": "a", "cats/b.png": "b",
                                                               "dogs/c.png": "c", "dogs/sub/d.png": None}
    with pytest.raises(SpecError, match="--relabel"):
        lake.ingest([str(photos)], workers=0, relabel=True)


def test_a_table_without_attributes_gains_the_column(tmp_path, photos):
    """images v3 added `attributes`: a table written under v2 gets it before the first write."""
    scratch = Lake(tmp_path / "scratch")
    scratch.ingest([str(photos)], workers=0, label_from_path="parent")
    v2 = table_contract("images", 2)
    rows = scratch.read("images").select(v2.column_names)
    engine = LocalEngine(str(tmp_path / "lake"))
    engine.commit(Write("images", v2, mode="append", rows=rows))
    lake = Lake(tmp_path / "lake")
    assert "attributes" not in lake.read("images").column_names
    meta = tmp_path / "m.csv"
    meta.write_text("file_name,split\ncats/a.png,train\n")
    summary = lake.ingest([str(photos)], workers=0, label_from_path="parent", metadata=str(meta))
    assert (summary.relabeled, summary.updated) == (1, 0)
    rows = _rows(lake)
    assert rows["cats/a.png"]["attributes"] == {"split": "train"} and rows["cats/a.png"]["label"] == "cats"
    assert rows["dogs/c.png"]["attributes"] is None


def test_retry_rejects_reads_rejected_files_again_after_a_codec_is_installed(tmp_path, photos):
    lake = Lake(tmp_path / "lake")
    (photos / "odd.wrapped").write_bytes(b"WRAP" + _png(tmp_path / "x.png", 9))
    first = lake.ingest([str(photos)], workers=0)
    assert first.rejected == 1
    assert lake.read("images_rejects", columns=["error_class"]).to_pylist() == [{"error_class": "unsupported_format"}]
    codec = ["lakeimg_test_codecs:WRAPPED"]
    # The reject is known: without --retry-rejects the file is not read again, even with the codec.
    assert lake.ingest([str(photos)], workers=0, codecs=codec).unchanged == 5
    retried = lake.ingest([str(photos)], workers=0, codecs=codec, retry_rejects=True)
    assert (retried.added, retried.rejected) == (1, 0)
    assert lake.read("images_rejects").num_rows == 0
    sizes = {r["uri"].rsplit("/", 1)[1]: (r["width"], r["height"]) for r in lake.read("images", columns=["uri", "width", "height"]).to_pylist()}
    assert sizes["odd.wrapped"] == (8, 6)


def test_cli_metadata_and_relabel(tmp_path, photos):
    lake = tmp_path / "lake"
    meta = tmp_path / "metadata.csv"
    meta.write_text("file_name,label,quality\ncats/a.png,best,5\n")
    done = run_cli("ingest", str(photos), "--lake", str(lake), "--workers", "0", "--metadata", str(meta), "--json")
    assert done.returncode == 0, done.stderr
    meta.write_text("file_name,label,quality\ncats/a.png,worst,1\n")
    again = run_cli("ingest", str(photos), "--lake", str(lake), "--workers", "0", "--metadata", str(meta), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["relabeled"] == 1
    assert _rows(Lake(lake))["cats/a.png"]["attributes"] == {"quality": "1"}
    bad = run_cli("ingest", str(photos), "--lake", str(lake), "--relabel")
    assert bad.returncode == 2 and "lakeimg: error:" in bad.stderr


@pytest.mark.spark
@pytest.mark.slow  # two Spark ingests
def test_metadata_and_relabel_on_the_spark_engine(spark, tmp_path, photos):
    lake = Lake(tmp_path / "lake", engine="spark", spark=spark)
    meta = tmp_path / "m.csv"
    meta.write_text("file_name,label,split\ncats/a.png,tabby,train\n")
    first = lake.ingest([str(photos)], metadata=str(meta))
    assert first.added == 4
    meta.write_text("file_name,label,split\ncats/a.png,siamese,test\n")
    changed = lake.ingest([str(photos)], metadata=str(meta), label_from_path="parent", relabel=True)
    assert (changed.relabeled, changed.updated, changed.added) == (4, 0, 0)
    rows = _rows(lake)
    assert {k: r["label"] for k, r in rows.items()} == {"cats/a.png": "siamese", "cats/b.png": "cats",
                                                        "dogs/c.png": "dogs", "dogs/sub/d.png": "sub"}
    assert rows["cats/a.png"]["attributes"] == {"split": "test"} and rows["cats/b.png"]["attributes"] is None
    assert lake.verify("images").ok
