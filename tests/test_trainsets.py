"""Training sets: immutable records, hash splits stable as the table grows, stratified quotas,
filters, label maps and the trainset CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import run_cli
from test_catalog import write_pngs

from lakeimg import Lake
from lakeimg.catalog.trainsets import hash_unit, parse_split_rule, split_of
from lakeimg.errors import SpecError

RULE = "train=0.6,val=0.2,test=0.2"


@pytest.fixture
def grown(tmp_path):
    """images@0 with 2 x 15 files, images@1 with 2 x 30 (15 new per label)."""
    src = tmp_path / "src"
    lake = Lake(tmp_path / "lake")
    write_pngs(src, per_label=15)
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    write_pngs(src, per_label=15, start=15)
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    assert lake.version("images") == 1
    return lake


def _splits(ts) -> dict[str, str]:
    rows = ts.rows()
    return dict(zip(rows["uri"].to_pylist(), rows["split"].to_pylist(), strict=True))


def test_split_rule_parsing():
    assert parse_split_rule(RULE) == [("train", 0.6), ("val", 0.2), ("test", 0.2)]
    for bad in ("train=0.5,test=0.4", "train", "a=0.5,a=0.5", "train=x"):
        with pytest.raises(SpecError):
            parse_split_rule(bad)
    assert 0 <= hash_unit(3, "file:///a") < 1
    assert split_of("file:///a", 3, [("x", 0.0), ("y", 1.0)]) == "y"


def test_split_depends_only_on_seed_and_uri_as_the_table_grows(grown):
    old = grown.create_training_set("v0", "images", 0, splits=RULE, seed=5)
    new = grown.create_training_set("v1", "images", 1, splits=RULE, seed=5)
    before, after = _splits(old), _splits(new)
    assert len(before) == 30 and len(after) == 60
    assert all(after[uri] == split for uri, split in before.items())  # no image changed split
    assert {s for s in after.values()} == {"train", "val", "test"}
    other_seed = _splits(grown.create_training_set("v1-seed6", "images", 1, splits=RULE, seed=6))
    assert other_seed != after  # the seed matters
    assert old.version == 0 and new.version == 1
    assert old.record.counts == {s: sum(1 for v in before.values() if v == s) for s in ("train", "val", "test")}


def test_stratified_quotas_exact_and_images_keep_their_split(grown):
    first = grown.create_training_set("s0", "images", 0, splits=RULE, seed=5, stratify=True)
    counts = first.counts()
    for label in ("cats", "dogs"):
        assert [counts[s][label] for s in ("train", "val", "test")] == [9, 3, 3]
    second = grown.create_training_set("s1", "images", 1, splits=RULE, seed=5, stratify=True)
    assert second.record.base_set == "s0"
    counts = second.counts()
    for label in ("cats", "dogs"):
        assert [counts[s][label] for s in ("train", "val", "test")] == [18, 6, 6]
    before, after = _splits(first), _splits(second)
    assert all(after[uri] == split for uri, split in before.items())
    # Re-reading a stratified set (through its base chain) gives the same assignment.
    assert _splits(grown.training_set("s1")) == after


def test_where_filter_label_map_and_rows(grown):
    ts = grown.create_training_set("cats", "images", where="label = 'cats' AND width = 16", splits="all=1.0", seed=1)
    rows = ts.rows("all")
    assert rows.column_names[:3] == ["uri", "label", "label_index"]
    assert rows.num_rows == 30 and set(rows["label"].to_pylist()) == {"cats"}
    assert ts.label_index == {"cats": 0}
    both = grown.create_training_set("both", "images", splits="all=1.0", seed=1)
    assert both.label_index == {"cats": 0, "dogs": 1} and both.classes == ["cats", "dogs"]
    index = dict(zip(both.rows()["label"].to_pylist(), both.rows()["label_index"].to_pylist(), strict=True))
    assert index == {"cats": 0, "dogs": 1}
    with pytest.raises(SpecError):
        grown.create_training_set("bad", "images", where="no_such_column = 1", splits="all=1.0", seed=1)


def test_training_sets_are_immutable_and_pinned(grown):
    ts = grown.create_training_set("pinned", "images", 0, splits=RULE, seed=2)
    with pytest.raises(SpecError):
        grown.create_training_set("pinned", "images", splits=RULE, seed=3)
    src = Path(grown.path).parent / "src"
    write_pngs(src, per_label=5, start=30)
    grown.ingest([str(src)], workers=0, label_from_path="parent")
    assert grown.version("images") == 2
    assert grown.training_set("pinned").rows().num_rows == 30 == ts.rows().num_rows
    # The live trainsets table follows its contract (schemas/trainsets.v1.json).
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.schemas import table_contract

    live = LocalEngine(grown.path).arrow_schema("_lakeimg/trainsets")
    contract = table_contract("trainsets")
    assert live.names == contract.column_names
    assert [f.type for f in live] == [f.type for f in contract.arrow_schema]


def test_trainset_cli_create_show_list(grown):
    lake = grown.path
    created = run_cli("trainset", "create", "--lake", lake, "--name", "cli-set", "--table", "images@0",
                      "--split", "train=0.5,test=0.5", "--seed", "9", "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout.strip().splitlines()[-1])
    assert (record["table"], record["version"], record["seed"]) == ("images", 0, 9)
    assert sum(sum(v.values()) for v in record["by_split_and_label"].values()) == 30
    shown = run_cli("trainset", "show", "cli-set", "--lake", lake)
    assert shown.returncode == 0 and "images@0" in shown.stdout and "cats" in shown.stdout
    listed = json.loads(run_cli("trainset", "list", "--lake", lake, "--json").stdout.strip().splitlines()[-1])
    assert [r["name"] for r in listed["trainsets"]] == ["cli-set"]
    again = run_cli("trainset", "create", "--lake", lake, "--name", "cli-set", "--table", "images", "--seed", "1")
    assert again.returncode == 2 and "immutable" in again.stderr
