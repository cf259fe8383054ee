"""User text is data (issue 11, items 6 and 7): `lakeimg sql` reaches the lake's tables and nothing
else, stored `where` filters are validated expressions (at creation and on every read), and table,
training-set and split names cannot leave the lake."""

from __future__ import annotations

import datetime as dt
import json
import os

import duckdb
import pyarrow as pa
import pytest
from test_catalog import write_pngs

from lakeimg import Lake
from lakeimg.catalog.sql import run_sql
from lakeimg.catalog.trainsets import TrainingSet
from lakeimg.cli import main
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import table_location
from lakeimg.errors import InvalidNameError, SqlError, TableNotFoundError
from lakeimg.schemas import table_contract
from lakeimg.sqlguard import check_spark_query, confined_connection, filter_table, parse_where
from lakeimg.tables import TRAINSETS_TABLE, validate_name
from lakeimg.transform_spec import parse_spec

RESIZE = {"ops": [{"op": "resize", "width": 8, "height": 6}], "output": {"encoding": "png"}}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """images@0: 3 cats + 3 dogs."""
    root = tmp_path_factory.mktemp("secure")
    write_pngs(root / "src", per_label=3)
    lake = Lake(root / "lake")
    lake.ingest([str(root / "src")], workers=0, label_from_path="parent")
    return lake


def _cli_sql(lake, query, capsys):
    code = main(["sql", "--lake", lake.path, "--json", query])
    return code, capsys.readouterr()


# --- lakeimg sql ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT content FROM read_blob('/etc/hostname') JOIN images ON true",
        "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM parquet_metadata('/etc/hostname')",
        "SELECT 1; SELECT 2",
        "SELECT count(*) FROM images; SELECT * FROM read_blob('/etc/hostname')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "PRAGMA version",
        "CALL pragma_version()",
        "CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
    ],
)
def test_sql_outside_the_lake_is_refused(lake, query, capsys):
    with pytest.raises(SqlError):
        run_sql(lake.path, query)
    code, out = _cli_sql(lake, query, capsys)
    assert code == 2
    assert out.err.startswith("lakeimg: error: SQL refused") and "Traceback" not in out.err
    # stdout holds only the --json error object (no rows); its message is the stderr line's
    assert json.loads(out.out) == {"error": out.err.strip().removeprefix("lakeimg: error: "), "error_class": "SqlError", "exit_code": 2}


def test_sql_that_writes_files_writes_nothing(lake, tmp_path, capsys):
    target = tmp_path / "leak.csv"
    database = tmp_path / "other.duckdb"
    for query in (
        f"COPY (SELECT 1) TO '{target}'",
        f"COPY (SELECT uri FROM images) TO '{target}' (FORMAT csv)",
        f"SELECT 1; COPY (SELECT 1) TO '{target}'",
        f"ATTACH '{database}' AS other",
        f"EXPORT DATABASE '{tmp_path / 'export'}'",
    ):
        with pytest.raises(SqlError):
            run_sql(lake.path, query)
        code, _ = _cli_sql(lake, query, capsys)
        assert code == 2
    assert sorted(os.listdir(tmp_path)) == []
    # the lake's own data files are readable by the query's views, not writable
    files = LocalEngine(lake.path).data_files("images")
    with pytest.raises(SqlError):
        run_sql(lake.path, f"COPY (SELECT 1 AS a) TO '{files[0]}' (FORMAT parquet)")
    assert run_sql(lake.path, "SELECT count(*) AS n FROM images").to_pylist() == [{"n": 6}]


def test_sql_still_reads_tables_and_time_travel(lake, capsys):
    assert run_sql(lake.path, "SELECT count(*) AS n FROM images VERSION AS OF 0").to_pylist() == [{"n": 6}]
    rows = run_sql(lake.path, "WITH c AS (SELECT label FROM images) SELECT label, count(*) AS n FROM c GROUP BY label ORDER BY label")
    assert rows.to_pylist() == [{"label": "cats", "n": 3}, {"label": "dogs", "n": 3}]
    assert run_sql(lake.path, "FROM lakeimg_runs SELECT count(*) AS n").to_pylist() == [{"n": 1}]
    assert run_sql(lake.path, "SELECT 1 AS one;").to_pylist() == [{"one": 1}]  # a trailing ';' is one statement
    code, out = _cli_sql(lake, "SELECT count(*) AS n FROM images VERSION AS OF 0 WHERE label = 'cats'", capsys)
    assert (code, out.out.strip()) == (0, '[{"n": 3}]')


def test_folders_that_break_the_naming_rule_are_not_sql_tables(lake):
    os.makedirs(os.path.join(lake.path, "Hidden Table", "_delta_log"), exist_ok=True)
    try:
        with pytest.raises(TableNotFoundError):
            run_sql(lake.path, 'SELECT * FROM "Hidden Table"')
    finally:
        os.rmdir(os.path.join(lake.path, "Hidden Table", "_delta_log"))
        os.rmdir(os.path.join(lake.path, "Hidden Table"))


def test_confined_connection_blocks_files_even_without_the_statement_check(tmp_path):
    con = confined_connection({"t": pa.table({"a": [1]})})
    try:
        assert con.sql("SELECT a FROM t").fetchall() == [(1,)]
        with pytest.raises(duckdb.PermissionException):
            con.sql("SELECT * FROM read_blob('/etc/hostname')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute(f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'")
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()
    assert not (tmp_path / "x.csv").exists()


def test_spark_queries_are_held_to_lake_tables_by_name():
    check_spark_query("SELECT count(*) FROM images VERSION AS OF 0")
    check_spark_query("WITH a AS (SELECT uri FROM images) SELECT * FROM a JOIN images_rejects r ON r.uri = a.uri")
    for query in (
        "SELECT * FROM csv.`/etc/passwd`",
        "SELECT * FROM parquet.`/tmp/x`",
        "SELECT * FROM read_files('/etc')",
        "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
        "INSERT INTO images SELECT * FROM images",
        "SELECT 1; SELECT 2",
        "SET spark.sql.x = 1",
    ):
        with pytest.raises(SqlError):
            check_spark_query(query)


# --- stored where filters -------------------------------------------------------------------

COLUMNS = ["uri", "label", "width", "height", "ingested_at"]


@pytest.mark.parametrize(
    "where",
    [
        "label = 'a'; COPY (SELECT 1) TO '/tmp/lakeimg-leak.csv'",
        "label IN (SELECT label FROM images)",
        "read_blob('/etc/hostname') IS NOT NULL",
        "EXISTS (SELECT * FROM read_csv('/etc/passwd'))",
        "length(getenv('HOME')) > 0",
        "label = 'a' UNION SELECT 1",
        "count(*) > 1",
        "width > ?",
        "no_such_column = 1",
        "images.label = 'cats'",
        "'just a value'",
        "",
    ],
)
def test_hostile_or_malformed_where_is_refused(where):
    with pytest.raises(SqlError):
        parse_where(where, COLUMNS)


def test_valid_where_is_evaluated_from_its_parsed_tree():
    table = pa.table({"uri": ["a", "b", "c", "d"], "label": ["cats", "dogs", None, "cats"], "width": [10, 20, 30, 40],
                      "height": [1, 2, 3, 4],
                      "ingested_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * 4, pa.timestamp("us", "UTC"))})
    cases = {
        "label = 'cats'": ["a", "d"],
        "label IN ('dogs', 'x') OR label IS NULL": ["b", "c"],
        "width BETWEEN 15 AND 35 AND NOT uri LIKE 'c%'": ["b"],
        "width * height >= 90 AND lower(label) = 'cats'": ["d"],
        "ingested_at < now() AND year(ingested_at) = 2026 AND starts_with(uri, 'a')": ["a"],
        "CASE WHEN label IS NULL THEN false ELSE width > 30 END": ["d"],
    }
    for where, expected in cases.items():
        assert filter_table(table, where)["uri"].to_pylist() == expected, where
    # the SQL that runs is sqlglot's, not the user's text
    assert parse_where("label = 'x' -- ; COPY", COLUMNS).sql("duckdb").startswith("label = 'x'")


def test_trainset_where_refused_at_creation_and_valid_where_works(lake, tmp_path, capsys):
    leak = tmp_path / "leak.csv"
    engine = LocalEngine(lake.path)
    before = engine.version(TRAINSETS_TABLE)
    for where in (f"label = 'a'; COPY (SELECT 1) TO '{leak}'", "label IN (SELECT label FROM images)",
                  "read_blob('/etc/hostname') IS NOT NULL"):
        with pytest.raises(SqlError):
            lake.create_training_set("evil", "images", where=where, splits="all=1.0", seed=1)
        code = main(["trainset", "create", "--lake", lake.path, "--name", "evil", "--table", "images",
                     "--where", where, "--split", "all=1.0", "--seed", "1"])
        assert code == 2
    assert not leak.exists()
    assert engine.version(TRAINSETS_TABLE) == before  # nothing recorded
    capsys.readouterr()

    ts = lake.create_training_set("cats-only", "images", where="label = 'cats' AND width = 16", splits="all=1.0", seed=1)
    assert ts.rows().num_rows == 3 and set(ts.rows()["label"].to_pylist()) == {"cats"}
    assert lake.training_set("cats-only").rows("all").num_rows == 3
    assert main(["trainset", "show", "cats-only", "--lake", lake.path, "--json"]) == 0
    assert '"cats": 3' in capsys.readouterr().out


def test_a_hostile_where_stored_earlier_is_refused_when_read(lake, tmp_path, capsys):
    leak = tmp_path / "leak.csv"
    engine = LocalEngine(lake.path)
    if not engine.exists(TRAINSETS_TABLE):
        lake.create_training_set("plain", "images", splits="all=1.0", seed=1)
    record = engine.read(TRAINSETS_TABLE).to_pylist()[0]
    record.update(name="stored-evil", where=f"label = 'cats'; COPY (SELECT 1) TO '{leak}'")
    contract = table_contract("trainsets")
    engine.append(TRAINSETS_TABLE, pa.Table.from_pylist([record], schema=contract.arrow_schema), contract, None)
    with pytest.raises(SqlError):
        TrainingSet(engine, "stored-evil").rows()
    with pytest.raises(SqlError):
        lake.training_set("stored-evil").rows("all")
    assert main(["trainset", "show", "stored-evil", "--lake", lake.path]) == 2
    assert "SQL refused" in capsys.readouterr().err
    assert not leak.exists()


def test_transform_where_validated_in_the_spec_and_valid_where_works(lake, tmp_path):
    leak = tmp_path / "leak.csv"
    for where in (f"label = 'cats'; COPY (SELECT 1) TO '{leak}'", "uri IN (SELECT uri FROM images)",
                  "read_blob('/etc/hostname') IS NOT NULL"):
        with pytest.raises(SqlError):
            parse_spec({**RESIZE, "where": where})
        with pytest.raises(SqlError):
            lake.transform("images", "evil", {**RESIZE, "where": where}, workers=0)
    with pytest.raises(SqlError):  # columns are checked against the source when it runs
        lake.transform("images", "evil", {**RESIZE, "where": "no_such_column = 1"}, workers=0)
    assert not leak.exists()
    assert lake.version("evil") is None
    summary = lake.transform("images", "cats_small", {**RESIZE, "where": "label = 'cats'"}, workers=0)
    assert summary.added == 3
    assert set(lake.read("cats_small", columns=["label"])["label"].to_pylist()) == {"cats"}


# --- names ----------------------------------------------------------------------------------


def test_name_rule():
    for name in ("images", "cats_256", "a", "x" * 63):
        assert validate_name("target table", name) == name
    for name in ("", "../x", "/abs", "a/b", "Images", "1st", "cats-v1", "a b", "x" * 64, ".", "images_rejects",
                 "images_tiles", "lakeimg_runs", "_lakeimg"):
        with pytest.raises(InvalidNameError):
            validate_name("target table", name)
    assert validate_name("table", "images_rejects") == "images_rejects"  # readable, not writable
    for name in ("cats-v1", "v1-seed6", "train", "all"):
        assert validate_name("training set", name) == name and validate_name("split", name) == name
    for name in ("Cats", "a/b", "../x", "-x", "tr ain", ""):
        with pytest.raises(InvalidNameError):
            validate_name("training set", name)


@pytest.mark.parametrize("table", ["../x", "/abs", "a/b", "", "Images", "images_rejects", "lakeimg_runs"])
def test_ingest_refuses_names_that_leave_the_lake_or_break_the_rule(tmp_path, table, capsys):
    write_pngs(tmp_path / "src", per_label=1)
    lake = tmp_path / "work" / "lake"
    code = main(["ingest", str(tmp_path / "src"), "--lake", str(lake), "--table",
                 str(tmp_path / "abs") if table == "/abs" else table])
    assert code == 2
    assert "lakeimg: error:" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # no lake, nothing beside it
    assert not (tmp_path / "abs").exists()
    with pytest.raises(InvalidNameError):
        Lake(lake).ingest([str(tmp_path / "src")], table=table, workers=0)
    assert not (tmp_path / "work").exists()


def test_transform_target_rules(lake, capsys, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"ops": [{"op": "flip"}]}')
    for target in ("images_rejects", "images_tiles", "lakeimg_runs", "../out", "_lakeimg", "a/b", "images"):
        code = main(["transform", "--lake", lake.path, "--source", "images", "--target", target, "--spec", str(spec)])
        assert code == 2, target
        assert capsys.readouterr().err.startswith("lakeimg: error:")
    assert main(["transform", "--lake", lake.path, "--source", "../images", "--target", "t", "--spec", str(spec)]) == 2
    assert not os.path.exists(os.path.join(os.path.dirname(lake.path), "out"))
    assert LocalEngine(lake.path).version("images_rejects") is not None  # untouched, still the ingest's


def test_trainset_and_split_names_validated(lake, capsys):
    for name, split in (("Bad/Name", "all=1.0"), ("ok-name", "../x=1.0"), ("ok-name", "a b=0.5,test=0.5"), ("ok-name", "Train=1.0")):
        with pytest.raises(InvalidNameError):
            lake.create_training_set(name, "images", splits=split, seed=1)
        code = main(["trainset", "create", "--lake", lake.path, "--name", name, "--table", "images", "--split", split, "--seed", "1"])
        assert code == 2
    with pytest.raises(InvalidNameError):
        lake.create_training_set("ok-name", "../images", splits="all=1.0", seed=1)
    assert "ok-name" not in {r.name for r in lake.training_sets()}


def test_every_path_is_guarded_in_the_engine(lake):
    assert table_location("/lake", "_lakeimg/staging/run1/images").endswith("/lake/_lakeimg/staging/run1/images")
    for name in ("../x", "/etc", "a/../../b", "a//b", "./a", "a\\b"):
        with pytest.raises(InvalidNameError):
            table_location("/lake", name)
    with pytest.raises(InvalidNameError):
        lake.read("../../etc")
