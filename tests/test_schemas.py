"""The table contracts in schemas/*.json: valid Spark StructType JSON, and what live tables hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deltalake import DeltaTable
from PIL import Image

from lakeimg import Lake
from lakeimg.samples import photo_like
from lakeimg.schemas import table_contract

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_contract_files_are_spark_struct_json(path):
    from pyspark.sql.types import StructType  # the pure-Python types: no JVM starts

    doc = json.loads(path.read_text())
    assert {"name", "version", "schema", "properties"} <= set(doc)
    assert path.name == f"{doc['name']}.v{doc['version']}.json"
    struct = StructType.fromJson(doc["schema"])
    assert struct.fieldNames() == [f["name"] for f in doc["schema"]["fields"]]
    assert json.loads(struct.json()) == _without_empty_metadata(doc["schema"])
    for field in doc["schema"]["fields"]:
        assert field.get("metadata", {}).get("comment"), f"{path.name}: {field['name']} has no comment"
    props = doc["properties"]
    assert props.get("delta.enableDeletionVectors") == "false"
    assert props.get("delta.enableChangeDataFeed") == "true"


def _without_empty_metadata(schema):
    """Spark's JSON keeps metadata on every field; normalise both sides the same way."""
    if isinstance(schema, dict):
        return {k: _without_empty_metadata(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_without_empty_metadata(v) for v in schema]
    return schema


def _normalise(struct: dict) -> list:
    """(name, type, nullable) recursively; metadata (comments) aside."""
    out = []
    for field in struct["fields"]:
        out.append((field["name"], _type(field["type"]), field["nullable"]))
    return out


def _type(t):
    if isinstance(t, str):
        return t
    if t["type"] == "struct":
        return ("struct", _normalise(t))
    if t["type"] == "array":
        return ("array", _type(t["elementType"]), t["containsNull"])
    if t["type"] == "map":
        return ("map", _type(t["keyType"]), _type(t["valueType"]), t["valueContainsNull"])
    raise AssertionError(t)


@pytest.fixture(scope="module")
def live_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemas")
    src = root / "src"
    src.mkdir()
    Image.fromarray(photo_like(16, 16)).save(src / "a.png")
    (src / "b.jpg").write_bytes(b"broken")
    lake = Lake(root / "lake")
    lake.ingest([str(src)], workers=0)
    # a second run MERGEs into existing tables: their schemas must not drift
    Image.fromarray(photo_like(16, 16, seed=1)).save(src / "c.png")
    lake.ingest([str(src)], workers=0)
    return lake


@pytest.mark.parametrize("table,contract", [("images", "images"), ("images_rejects", "rejects"), ("_lakeimg/runs", "runs")])
def test_live_tables_match_their_contract(live_lake, table, contract):
    delta = DeltaTable(f"{live_lake.path}/{table}")
    live = json.loads(delta.schema().to_json())
    expected = table_contract(contract).struct_json
    assert _normalise(live) == _normalise(expected)
    config = delta.metadata().configuration
    for key, value in table_contract(contract).properties.items():
        if key.startswith("delta.min"):
            continue  # protocol versions live in the protocol action, checked below
        assert config.get(key) == value, key
    protocol = delta.protocol()
    assert protocol.min_reader_version == 1
    assert not (protocol.reader_features or [])


@pytest.mark.parametrize("engine_name", ["local", pytest.param("spark", marks=pytest.mark.spark)])
def test_appends_go_on_when_a_later_contract_rewords_a_column_comment(tmp_path, engine_name, request):
    import copy
    import dataclasses

    from lakeimg.engine import open_engine
    from lakeimg.engine.base import Write
    from lakeimg.tables import RunRecord, utc_now

    old = table_contract("runs")
    struct = copy.deepcopy(old.struct_json)
    commented = next(f for f in struct["fields"] if f.get("metadata", {}).get("comment"))
    was = commented["metadata"]["comment"]
    commented["metadata"]["comment"] = was + " (reworded)"
    new = dataclasses.replace(old, struct_json=struct)
    spark = request.getfixturevalue("spark") if engine_name == "spark" else None
    engine = open_engine(str(tmp_path), engine_name, spark=spark)
    for run_id, contract in (("r1", old), ("r2", new)):
        record = RunRecord(run_id=run_id, job="ingest", engine="local", target_table="images", spec={}, started_at=utc_now())
        engine.commit(Write("runs", contract, "append", rows=record.to_arrow()))
    table = DeltaTable(str(tmp_path / "runs"))
    assert sorted(table.to_pyarrow_table(columns=["run_id"])["run_id"].to_pylist()) == ["r1", "r2"]
    field = next(f for f in json.loads(table.schema().to_json())["fields"] if f["name"] == commented["name"])
    assert field["metadata"]["comment"] == was  # the table keeps its own comments
