"""The embedded engine's file commit: rows staged as Parquet (StagedParquet) and moved into a
table with the removal of the rows they replace (commit_files_by_uri), in one commit, also when
another writer commits in between."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeimg.engine.delta_rs import LocalEngine, StagedParquet
from lakeimg.schemas import table_contract

CONTRACT = table_contract("rejects")  # small and keyed on uri


def rows(uris: list[str], message: str) -> pa.Table:
    data = {}
    for field in CONTRACT.arrow_schema:
        if field.name == "uri":
            data[field.name] = pa.array(uris, field.type)
        elif pa.types.is_string(field.type):
            data[field.name] = pa.array([message] * len(uris), field.type)
        else:
            data[field.name] = pa.array([0] * len(uris), pa.int64()).cast(field.type)
    return pa.table(data)


def contents(engine: LocalEngine) -> list[tuple[str, str]]:
    table = engine.read("t", columns=["uri", "error_message"])
    return sorted(zip(table["uri"].to_pylist(), table["error_message"].to_pylist(), strict=True))


def test_staged_rows_replace_their_uris_in_one_commit(tmp_path):
    engine = LocalEngine(str(tmp_path / "lake"))
    engine.append("t", rows(["a", "b", "c"], "v1"), CONTRACT)
    staged = StagedParquet(str(tmp_path / "lake" / "_lakeimg" / "staging" / "run" / "t"), CONTRACT, row_group_rows=1)
    staged.write(rows(["b"], "v2"))
    staged.write(rows(["d"], "v2").to_batches()[0])
    result = engine.merge_by_key("t", CONTRACT, upserts=staged, delete_keys=["c"])
    assert (result.version, result.inserted, result.updated, result.deleted) == (1, 1, 1, 1)
    assert contents(engine) == [("a", "v1"), ("b", "v2"), ("d", "v2")]
    staged.discard()
    assert not (tmp_path / "lake" / "_lakeimg" / "staging").exists()
    with pytest.raises(ValueError, match="uri alone"):
        engine.merge_by_key("t", CONTRACT, upserts=staged, key=["uri", "variant"])


def test_a_writer_committing_in_between_makes_the_commit_plan_again(tmp_path, monkeypatch):
    engine = LocalEngine(str(tmp_path / "lake"))
    engine.append("t", rows(["a", "b"], "v1"), CONTRACT)
    real = DeltaTable.create_write_transaction
    attempts = []

    def another_writer_first(self, *args, **kwargs):
        attempts.append(self.version())
        if len(attempts) == 1:  # between our plan and our commit, another writer adds "x"
            engine.append("t", rows(["x"], "theirs"), CONTRACT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", another_writer_first)
    staged = StagedParquet(str(tmp_path / "stage"), CONTRACT)
    staged.write(rows(["a", "x"], "ours"))
    result = engine.commit_files_by_uri("t", CONTRACT, staged.finish(), uris=["a", "x"])
    monkeypatch.undo()
    assert attempts == [0, 1] and result.version == 2  # planned on version 0, refused, planned on 1
    # the other writer's "x" row is replaced too, not kept beside ours
    assert contents(engine) == [("a", "ours"), ("b", "v1"), ("x", "ours")]
