"""Catalog: history, time travel, lineage across ingest -> two transform versions -> training set,
and reproduce (identical for current and older versions; differences when a source changed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import SpecError, TableRefError
from lakeimg.jobs.transform import transform_table
from lakeimg.tables import TableRef, parse_table_ref

SPEC_A = {"ops": [{"op": "resize", "width": 8, "height": 6}], "output": {"encoding": "raw"}}
SPEC_B = {"ops": [{"op": "resize", "width": 10, "height": 10}, {"op": "flip", "direction": "horizontal"}],
          "output": {"encoding": "png"}}


def write_pngs(folder: Path, labels=("cats", "dogs"), per_label: int = 4, start: int = 0) -> list[Path]:
    paths = []
    for li, label in enumerate(labels):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_label):
            pixels = np.random.default_rng(1000 * li + i).integers(0, 255, (12, 16, 3), dtype=np.uint8)
            path = folder / label / f"{i:03d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


@pytest.fixture
def chain(tmp_path):
    """ingest -> small (spec A, then spec B) -> training set on small's latest version."""
    src = tmp_path / "src"
    write_pngs(src)
    lake = Lake(tmp_path / "lake")
    ingest = lake.ingest([str(src)], workers=0, label_from_path="parent")
    first = transform_table(lake.path, "images", "small", SPEC_A, workers=0)
    second = transform_table(lake.path, "images", "small", SPEC_B, workers=0)
    assert (first.version, second.version) == (0, 1)
    lake.create_training_set("pets-v1", "small", splits="train=0.5,test=0.5", seed=11)
    return lake, src, ingest, first, second


def test_parse_table_ref():
    assert parse_table_ref("images@12") == TableRef("images", 12)
    assert parse_table_ref("images@2026-01-31T12:00:00Z") == TableRef("images", "2026-01-31T12:00:00Z")
    assert parse_table_ref("images") == TableRef("images", None)
    assert str(parse_table_ref("images@12")) == "images@12"
    for bad in ("images@yesterday", "@3", "images@"):
        with pytest.raises(TableRefError) as raised:
            parse_table_ref(bad)
        assert isinstance(raised.value, SpecError) and raised.value.ref == bad


def test_history_lists_versions_with_run_and_counts(chain):
    lake, _src, ingest, first, second = chain
    versions = lake.versions("small")
    assert [v.version for v in versions] == [1, 0]
    assert [v.run_id for v in versions] == [second.run_id, first.run_id]
    assert all(v.job == "transform" for v in versions)
    assert versions[0].counts["updated"] == 8
    result = run_cli("history", "--lake", lake.path, "images", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["versions"][0]["run_id"] == ingest.run_id
    assert payload["versions"][0]["counts"]["added"] == 8


def test_time_travel_by_version_and_timestamp(chain):
    lake, *_ = chain
    old = lake.read("small", 0, columns=["width"])
    new = lake.read("small", 1, columns=["width"])
    assert set(old["width"].to_pylist()) == {8} and set(new["width"].to_pylist()) == {10}
    stamp = lake.versions("small")[-1].timestamp  # version 0's commit time
    assert set(lake.read("small", stamp, columns=["width"])["width"].to_pylist()) == {8}
    steps = lake.lineage("small", stamp)
    assert steps[0].version == 0


def test_lineage_from_training_set_to_ingest_sources(chain):
    lake, src, ingest, first, second = chain
    steps = lake.lineage("trainset:pets-v1")
    assert [(s.table, s.version, s.job) for s in steps] == [
        ("trainset:pets-v1", None, "trainset"),
        ("small", 1, "transform"),
        ("images", 0, "ingest"),
    ]
    assert steps[1].run_id == second.run_id and steps[1].spec["ops"][1]["op"] == "flip"
    assert steps[1].inputs == [{"table": "images", "version": 0}]
    assert steps[2].run_id == ingest.run_id
    assert steps[2].sources == [src.resolve().as_uri()]
    assert all(s.code_version for s in steps)
    # The older transform version has its own spec in its lineage.
    older = lake.lineage("small", 0)
    assert older[0].run_id == first.run_id and older[0].spec["ops"][0]["width"] == 8
    result = run_cli("lineage", "--lake", lake.path, "small@0", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert [s["table"] for s in payload["steps"]] == ["small", "images"]
    text = run_cli("lineage", "--lake", lake.path, "trainset:pets-v1")
    assert src.resolve().as_uri() in text.stdout


def test_lineage_lists_every_ingest_run_of_a_grown_table(tmp_path):
    lake = Lake(tmp_path / "lake")
    a, b = tmp_path / "a", tmp_path / "b"
    write_pngs(a, labels=("x",), per_label=2)
    write_pngs(b, labels=("y",), per_label=2)
    lake.ingest([str(a)], workers=0)
    lake.ingest([str(b)], workers=0)
    step = lake.lineage("images")[0]
    assert [r["version"] for r in step.ingest_runs] == [0, 1]
    assert step.sources == [a.resolve().as_uri(), b.resolve().as_uri()]
    assert lake.lineage("images", 0)[0].sources == [a.resolve().as_uri()]


def test_reproduce_current_and_older_versions_identical(chain):
    lake, *_ = chain
    current = lake.reproduce("small", workers=0)
    older = lake.reproduce("small", 0, workers=0)
    assert current.identical and older.identical
    assert current.rows == older.rows == 8
    assert (current.version, older.version) == (1, 0)
    assert current.input == older.input == "images@0"


def test_reproduce_reports_changed_source_without_reingest(chain):
    lake, src, *_ = chain
    assert lake.reproduce("images").identical
    changed = src / "cats" / "001.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(changed)
    (src / "dogs" / "002.png").unlink()
    result = lake.reproduce("images", 0)
    assert result.identical is False
    reasons = {d["uri"].rsplit("/", 2)[-2] + "/" + d["uri"].rsplit("/", 1)[-1]: d["reason"] for d in result.differences}
    assert reasons == {"cats/001.png": "source_changed", "dogs/002.png": "source_missing"}
    cli = run_cli("reproduce", "--lake", lake.path, "images@0", "--json")
    assert cli.returncode == 6, cli.stderr
    payload = json.loads(cli.stdout.strip().splitlines()[-1])
    assert payload["identical"] is False and payload["differing"] == 2
    # The derived table was made from the recorded images version, still readable: still identical.
    assert lake.reproduce("small", 1, workers=0).identical


def test_reproduce_detects_a_tampered_derived_version(chain):
    lake, *_ = chain
    # Overwrite small with SPEC_A's output under SPEC_B's record: a re-run must disagree.
    from lakeimg.engine.base import Write
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.schemas import table_contract

    engine = LocalEngine(lake.path)
    rows = engine.read("small", version=0)
    metadata = engine.history("small")[0]["lakeimg"]
    engine.commit(Write("small", table_contract("derived"), rows=rows.slice(0, 1), metadata=metadata))
    result = lake.reproduce("small", 2, workers=0)
    assert result.identical is False
    assert [d["reason"] for d in result.differences] == ["content_differs"]


def test_reproduce_an_old_version_over_a_tiled_source_uses_the_tiles_of_that_version(tmp_path):
    """A changed huge image gets new tiles; reproducing the derived version made before the change
    must read the tiles as they were at its input version, not the latest ones."""
    src = tmp_path / "src"
    src.mkdir()
    huge = src / "scan.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(huge)
    lake = Lake(tmp_path / "lake")
    tiling = {"tile_above_pixels": 1000, "tile_size": 32}
    lake.ingest([str(src)], workers=0, **tiling)
    assert lake.read("images", columns=["tiled"])["tiled"].to_pylist() == [True]
    spec = {"ops": [{"op": "resize", "width": 12, "height": 10}], "output": {"encoding": "raw"}}
    assert transform_table(lake.path, "images", "thumbs", spec, workers=0).version == 0
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(huge)
    assert lake.ingest([str(src)], workers=0, **tiling).updated == 1
    assert transform_table(lake.path, "images", "thumbs", spec, workers=0).updated == 1
    old = lake.reproduce("thumbs", 0, workers=0)
    assert old.input == "images@0"
    assert old.identical, old.differences
    assert lake.reproduce("thumbs", workers=0).identical


def test_results_are_frozen_and_their_json_is_the_clis(chain):
    lake, _src, ingest, _first, second = chain
    steps = lake.lineage("trainset:pets-v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        steps[0].job = "ingest"
    assert set(steps[0].to_dict()) == {"table", "version", "job", "run_id", "code_version", "timestamp", "spec",
                                       "spec_hash", "inputs", "sources", "depth"}
    assert {"made_at_version", "operation", "status", "engine", "ingest_runs"} <= set(steps[-1].to_dict())
    assert "ingest_runs" not in steps[1].to_dict() and steps[1].run_id == second.run_id
    shown = run_cli("lineage", "--lake", lake.path, "trainset:pets-v1", "--json")
    payload = json.loads(shown.stdout.strip().splitlines()[-1])
    assert payload["steps"] == json.loads(json.dumps([s.to_dict() for s in steps], default=str))
    result = lake.reproduce("small", workers=0).to_dict()
    assert result["input"] == "images@0" and "sources" not in result
    assert lake.versions("images")[0].to_dict()["run_id"] == ingest.run_id
    record = lake.training_sets()[0]
    assert record.pinned == "small@1" and record.to_dict()["splits"] == [("train", 0.5), ("test", 0.5)]
