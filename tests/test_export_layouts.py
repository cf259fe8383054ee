"""`lakeimg export` layouts (flat, label, source), metadata.csv, --where, --overwrite, --pages all.

Names from the lake (labels, source paths) are user text: every file must land inside OUT.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import LakeImgError, OutputExistsError, SqlError


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (6, 8, 3), np.uint8)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    root = tmp_path_factory.mktemp("export")
    photos = root / "photos"
    for i, name in enumerate(["cats/a.png", "cats/b.png", "dogs/sub/d.png", "dogs/c d.png"]):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pixels(i)).save(photos / name)
    with tifffile.TiffWriter(photos / "stack.tif") as tif:
        for page in range(3):
            tif.write(np.full((5, 7), 10 * (page + 1), np.uint8))
    hostile = root / "hostile.csv"
    hostile.write_text("file_name,label,fold\ncats/a.png,cats,1\ncats/b.png,../../evil,2\n"
                       "dogs/sub/d.png,/abs/x,3\ndogs/c d.png,..,4\nstack.tif,,5\n")
    lake = Lake(root / "lake")
    lake.ingest([str(photos)], workers=0, label_from_path="parent", metadata=str(hostile))
    return lake


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _inside_only(out: Path) -> None:
    root = out.parent
    everything = [p for p in root.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in everything), everything


def test_label_layout_confines_hostile_labels_and_writes_metadata_csv(lake, tmp_path):
    out = tmp_path / "job" / "out"
    summary = lake.export("images", out, layout="label")
    assert (summary["written"], summary["failed"]) == (5, 0)
    _inside_only(out)
    folders = sorted({f.split("/")[0] for f in _files(out) if "/" in f})
    assert folders == ["abs_x", "cats", "evil", "image", "photos"]  # every label one safe component
    with open(out / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and all((out / r["file_name"]).is_file() for r in rows)
    by_label = {r["label"]: r for r in rows}
    assert by_label["cats"]["fold"] == "1" and by_label["cats"]["file_name"].startswith("cats/")
    assert by_label["../../evil"]["file_name"].startswith("evil/")  # the label kept as data, the path made safe
    assert by_label["photos"]["uri"].endswith("/stack.tif")  # no label in the file: the path rule's


def test_metadata_csv_round_trips_through_ingest(lake, tmp_path):
    out = tmp_path / "out"
    lake.export("images", out, layout="label", where="label = 'cats'")
    again = Lake(tmp_path / "lake2")
    again.ingest([str(out)], workers=0, metadata=str(out / "metadata.csv"))
    rows = again.read("images", columns=["label", "attributes"]).to_pylist()
    assert [r["label"] for r in rows] == ["cats"]
    assert dict(rows[0]["attributes"])["fold"] == "1"


def test_source_layout_keeps_the_tree_below_the_common_folder(lake, tmp_path):
    out = tmp_path / "out"
    lake.export("images", out, layout="source", metadata=False)
    assert _files(out) == ["cats/a.png", "cats/b.png", "dogs/c_d.png", "dogs/sub/d.png", "stack.png"]
    original = np.asarray(Image.open(out / "dogs/sub/d.png"))
    assert np.array_equal(original, _pixels(2))


def test_where_selects_rows_through_the_guarded_parser(lake, tmp_path):
    out = tmp_path / "out"
    summary = lake.export("images", out, where="attributes['fold'] IN ('1', '3') AND width = 8", metadata=False)
    assert summary["written"] == 2 and len(_files(out)) == 2
    with pytest.raises(SqlError):
        lake.export("images", tmp_path / "o2", where="read_blob('/etc/passwd') IS NOT NULL")
    with pytest.raises(SqlError):
        lake.export("images", tmp_path / "o3", where="1=1; DROP TABLE images")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_existing_files_are_refused_unless_overwrite(lake, tmp_path):
    out = tmp_path / "out"
    lake.export("images", out, format="png")
    before = {f: (out / f).read_bytes() for f in _files(out)}
    victim = next(f for f in before if f.endswith(".png"))
    (out / victim).write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        lake.export("images", out, format="png")
    assert (out / victim).read_bytes() == b"mine"  # nothing written
    assert lake.export("images", out, format="png", overwrite=True)["written"] == 5
    assert (out / victim).read_bytes() == before[victim]


def test_a_symlink_out_of_the_folder_is_refused(lake, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "cats").symlink_to(elsewhere)
    with pytest.raises(LakeImgError, match="outside"):
        lake.export("images", out, layout="label")
    assert list(elsewhere.iterdir()) == []


def test_pages_all_writes_every_page(lake, tmp_path):
    out = tmp_path / "out"
    summary = lake.export("images", out, where="uri LIKE '%stack.tif'", pages="all", format="tiff")
    assert summary["written"] == 3
    pages = sorted(f for f in _files(out) if f.endswith(".tif"))
    assert [p.rsplit("-", 1)[1] for p in pages] == ["p0.tif", "p1.tif", "p2.tif"]
    assert [int(tifffile.imread(out / p).max()) for p in pages] == [10, 20, 30]
    with open(out / "metadata.csv", newline="") as handle:
        assert sorted(r["page"] for r in csv.DictReader(handle)) == ["0", "1", "2"]
    first_only = lake.export("images", tmp_path / "first", where="uri LIKE '%stack.tif'", format="tiff")
    assert first_only["written"] == 1


def test_cli_export_layout_where_and_overwrite(lake, tmp_path):
    out = tmp_path / "out"
    args = ["export", "--lake", lake.path, "images", "--out", str(out), "--layout", "label", "--where", "label = 'cats'", "--json"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 1 and _files(out)[0].startswith("cats/")
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr
