"""Listing sources: folders, files, globs; hidden files and the lake itself skipped; labels from paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import SourceNotFoundError, SpecError
from lakeimg.jobs.listing import label_for, list_sources
from lakeimg.samples import photo_like


def _img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_like(8, 8, seed=seed)).save(path, "PNG")
    return path


def _names(table) -> list[str]:
    return sorted(u.split("/src/", 1)[1] for u in table["uri"].to_pylist())


def _column_by_name(table, column: str) -> dict[str, object]:
    names = [u.split("/src/", 1)[1] for u in table["uri"].to_pylist()]
    return dict(zip(names, table[column].to_pylist(), strict=True))


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    _img(src / "cats" / "cat_001.png")
    _img(src / "cats" / "cat_002.png", 1)
    _img(src / "dogs" / "dog_001.png", 2)
    _img(src / "dogs" / "deep" / "puppy_7.png", 3)
    _img(src / ".hidden.png")
    _img(src / ".cache" / "x.png")
    _img(src / "dogs" / ".thumbs" / "y.png")
    return src


def test_folders_are_recursive_and_hidden_files_skipped(tree):
    listing = list_sources([str(tree)])
    assert _names(listing) == ["cats/cat_001.png", "cats/cat_002.png", "dogs/deep/puppy_7.png", "dogs/dog_001.png"]
    assert all(u.startswith("file:///") for u in listing["uri"].to_pylist())
    sizes = _column_by_name(listing, "size_bytes")
    assert sizes["cats/cat_001.png"] == (tree / "cats" / "cat_001.png").stat().st_size


def test_files_and_globs(tree):
    one = list_sources([str(tree / "cats" / "cat_002.png")])
    assert _names(one) == ["cats/cat_002.png"]
    globbed = list_sources([str(tree / "*" / "*_001.png")])
    assert _names(globbed) == ["cats/cat_001.png", "dogs/dog_001.png"]
    recursive = list_sources([str(tree / "**" / "*.png")])
    assert _names(recursive) == ["cats/cat_001.png", "cats/cat_002.png", "dogs/deep/puppy_7.png", "dogs/dog_001.png"]
    # a glob that matches only hidden files matches nothing
    with pytest.raises(SourceNotFoundError):
        list_sources([str(tree / ".h*.png")])
    assert ".hidden.png" not in _names(list_sources([str(tree / "*"), str(tree / "cats")]))
    # overlapping sources list each file once
    both = list_sources([str(tree), str(tree / "cats"), str(tree / "cats" / "*.png")])
    assert both.num_rows == 4


def test_missing_sources_raise(tree):
    with pytest.raises(SourceNotFoundError):
        list_sources([str(tree / "nope")])
    with pytest.raises(SourceNotFoundError):
        list_sources([str(tree / "*.tiff")])


def test_labels_from_parent_and_regex(tree):
    parent = list_sources([str(tree)], label_from_path="parent")
    assert _column_by_name(parent, "label") == {
        "cats/cat_001.png": "cats",
        "cats/cat_002.png": "cats",
        "dogs/deep/puppy_7.png": "deep",
        "dogs/dog_001.png": "dogs",
    }
    regex = list_sources([str(tree)], label_from_path=r"/(\w+?)_\d+\.png$")
    assert _column_by_name(regex, "label") == {
        "cats/cat_001.png": "cat",
        "cats/cat_002.png": "cat",
        "dogs/deep/puppy_7.png": "puppy",
        "dogs/dog_001.png": "dog",
    }
    named = list_sources([str(tree)], label_from_path=r"src/(?P<label>[^/]+)/")
    assert set(named["label"].to_pylist()) == {"cats", "dogs"}
    unmatched = list_sources([str(tree)], label_from_path=r"/zebra_(\d+)")
    assert unmatched["label"].null_count == 4
    assert label_for("file:///a/b%20c/x.png", "parent") == "b c"
    with pytest.raises(SpecError):
        list_sources([str(tree)], label_from_path="(unclosed")


def test_lake_inside_a_source_is_never_ingested(tree):
    lake = Lake(tree / "lake")
    first = lake.ingest([str(tree)], workers=0, label_from_path="parent")
    assert first.added == 4
    second = lake.ingest([str(tree)], workers=0)  # the lake's own Parquet files are not sources
    assert (second.added, second.rejected, second.unchanged) == (0, 0, 4)
    labels = {r["uri"].rsplit("/", 1)[-1]: r["label"] for r in lake.read("images").to_pylist()}
    assert labels["cat_001.png"] == "cats" and labels["puppy_7.png"] == "deep"
    rejects = lake.read("images_rejects")
    assert rejects.num_rows == 0
