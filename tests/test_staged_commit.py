"""The embedded engine's file commit: rows staged as Parquet (StagedParquet) and moved into a
table with the removal of the rows they replace (`_delta_txn.commit_files_by_uri`), in one
commit, also when another writer commits in between (retried on delta-rs' typed
CommitFailedError, never on its message)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lakeimg.engine._delta_txn import commit_files_by_uri
from lakeimg.engine.base import COMMIT_ATTEMPTS, Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.staged import LocalStaged, StagedParquet
from lakeimg.errors import ConcurrentWriteError
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
    result, found = commit_files_by_uri(engine, "t", CONTRACT, staged.finish(), uris=[*staged.uris, "c"])
    assert (result.version, result.committed, found) == (1, True, {"b", "c"})
    assert contents(engine) == [("a", "v1"), ("b", "v2"), ("d", "v2")]
    staged.discard()
    assert not (tmp_path / "lake" / "_lakeimg" / "staging").exists()
    nothing = engine.commit(Write("t", CONTRACT, replace=frozenset({"absent"})))
    assert (nothing.version, nothing.committed) == (1, False)


def test_a_stage_sorts_output_held_rows_and_rejects(tmp_path):
    schema = pa.schema([("uri", pa.string()), ("tiled", pa.bool_()), ("error_class", pa.string())])
    staged = LocalStaged(str(tmp_path / "stage"), None, schema, held="tiled")
    staged.add(pa.table({"uri": ["a", "b", "c", "d"], "tiled": [False, True, None, False],
                         "error_class": [None, None, None, "corrupt"]}, schema=schema))
    assert staged.keys()["uri"].to_pylist() == ["a", "c"]
    assert staged.held()["uri"].to_pylist() == ["b"]
    assert staged.rejects()["uri"].to_pylist() == ["d"]


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
    result, found = commit_files_by_uri(engine, "t", CONTRACT, staged.finish(), uris=["a", "x"])
    monkeypatch.undo()
    assert attempts == [0, 1] and result.version == 2  # planned on version 0, refused, planned on 1
    assert found == {"a", "x"}
    # the other writer's "x" row is replaced too, not kept beside ours
    assert contents(engine) == [("a", "ours"), ("b", "v1"), ("x", "ours")]


def test_a_writer_winning_every_race_ends_in_concurrent_write_error(tmp_path, monkeypatch):
    """The retries are driven by delta-rs' typed CommitFailedError: bounded, then one typed
    error of lakeimg's, and the staged files never become part of any version."""
    engine = LocalEngine(str(tmp_path / "lake"))
    engine.append("t", rows(["a"], "v1"), CONTRACT)
    real = DeltaTable.create_write_transaction

    def another_writer_every_time(self, *args, **kwargs):
        engine.append("t", rows([f"x{self.version()}"], "theirs"), CONTRACT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", another_writer_every_time)
    staged = StagedParquet(str(tmp_path / "stage"), CONTRACT)
    staged.write(rows(["a"], "ours"))
    with pytest.raises(ConcurrentWriteError) as failed:
        engine.commit(Write("t", CONTRACT, files=tuple(staged.finish())))
    monkeypatch.undo()
    assert (failed.value.table, failed.value.attempts) == ("t", COMMIT_ATTEMPTS)
    assert ("a", "v1") in contents(engine) and ("a", "ours") not in contents(engine)
    folder = tmp_path / "lake" / "t"
    referenced = {os.path.basename(p) for p in engine.data_files("t")}
    assert {p.name for p in folder.glob("*.parquet")} == referenced  # no orphaned moved-in file
