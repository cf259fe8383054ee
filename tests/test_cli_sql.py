"""`lakeimg sql` (embedded: DuckDB over Delta snapshots, no JVM) and `lakeimg show` (contact sheets)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import re
import sys
import time

import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.catalog.sql import run_sql, table_refs
from lakeimg.errors import LakeImgError, SpecError, SqlError, TableNotFoundError
from lakeimg.samples import photo_like


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Two ingest runs (version 0: 3 cats + 1 broken; version 1: + 2 dogs) and a derived table."""
    root = tmp_path_factory.mktemp("sql")
    src = root / "src"
    (src / "cats").mkdir(parents=True)
    (src / "dogs").mkdir()
    for i in range(3):
        Image.fromarray(photo_like(30 + i, 40, seed=i)).save(src / "cats" / f"c{i}.png")
    (src / "cats" / "broken.jpg").write_bytes(b"nope")
    lake = Lake(root / "lake")
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    time.sleep(0.05)  # the two commits' log files get distinct modification times
    for i in range(2):
        Image.fromarray(photo_like(20, 20, seed=10 + i)).save(src / "dogs" / f"d{i}.jpg")
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    lake.transform("images", "small", {"ops": [{"op": "resize", "width": 16, "height": 12}], "output": {"encoding": "png"}}, workers=0)
    # Time travel by timestamp goes by the log files' modification times (both engines): take
    # the middle between version 0's and version 1's.
    log = root / "lake" / "images" / "_delta_log"
    first, second = ((log / f"{v:020d}.json").stat().st_mtime for v in (0, 1))
    lake.first_commit_time = dt.datetime.fromtimestamp((first + second) / 2, dt.timezone.utc)
    return lake


def _q(lake, sql):
    return run_sql(lake.path, sql).to_pylist()


def test_tables_resolve_inside_the_lake(lake):
    rows = _q(lake, "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label")
    assert rows == [{"label": "cats", "n": 3}, {"label": "dogs", "n": 2}]
    assert _q(lake, "SELECT error_class FROM images_rejects") == [{"error_class": "unsupported_format"}]
    assert _q(lake, "SELECT count(*) AS n FROM lakeimg_runs WHERE job = 'ingest'") == [{"n": 2}]
    assert _q(lake, "SELECT count(*) AS n FROM small")[0]["n"] == 5
    joined = _q(lake, "SELECT count(*) AS n FROM images i JOIN small s ON s.uri = i.uri AND s.source_sha256 = i.content_sha256")
    assert joined == [{"n": 5}]
    # qualified column names keep working
    assert _q(lake, "SELECT images.width FROM images WHERE images.uri LIKE '%c0.png'") == [{"width": 40}]


def test_time_travel_by_version_and_timestamp(lake):
    assert _q(lake, "SELECT count(*) AS n FROM images VERSION AS OF 0") == [{"n": 3}]
    assert _q(lake, "SELECT count(*) AS n FROM images version as of 1") == [{"n": 5}]
    ts = lake.first_commit_time.isoformat()
    assert _q(lake, f"SELECT count(*) AS n FROM images TIMESTAMP AS OF '{ts}'") == [{"n": 3}]
    # both versions in one query, with and without aliases, and a qualified column on the unaliased one
    rows = _q(
        lake,
        "SELECT count(*) AS n FROM images VERSION AS OF 1 AS new "
        "LEFT JOIN images VERSION AS OF 0 old ON old.uri = new.uri WHERE old.uri IS NULL",
    )
    assert rows == [{"n": 2}]
    rows = _q(lake, "SELECT images.label FROM images VERSION AS OF 0 WHERE images.label = 'cats' LIMIT 1")
    assert rows == [{"label": "cats"}]
    with pytest.raises(TableNotFoundError):
        run_sql(lake.path, "SELECT * FROM images VERSION AS OF 99")


def test_string_literals_and_comments_are_not_rewritten(lake):
    rows = _q(lake, "SELECT 'FROM images VERSION AS OF 0' AS s -- FROM nothing VERSION AS OF 5\n FROM images LIMIT 1")
    assert rows == [{"s": "FROM images VERSION AS OF 0"}]
    assert [(r.name, r.version, r.has_alias) for r in table_refs("select * from \"images\" VERSION AS OF 2 x")] == [("images", 2, True)]


def test_errors_are_typed(lake):
    with pytest.raises(TableNotFoundError):
        run_sql(lake.path, "SELECT * FROM no_such_table")
    with pytest.raises(SpecError):
        run_sql(lake.path, "SELEC 1")
    with pytest.raises(SpecError):
        run_sql(lake.path, "SELECT no_such_column FROM images")


def test_cli_json_rows_keep_column_order_and_base64_binary(lake):
    done = run_cli("sql", "--lake", lake.path, "--json", "SELECT uri, width, height, exif, thumbnail, modified_at FROM images ORDER BY uri LIMIT 2")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and list(rows[0]) == ["uri", "width", "height", "exif", "thumbnail", "modified_at"]
    thumb = Image.open(io.BytesIO(base64.b64decode(rows[0]["thumbnail"])))
    assert thumb.format == "JPEG" and thumb.size == (rows[0]["width"], rows[0]["height"])
    assert dt.datetime.fromisoformat(rows[0]["modified_at"]).tzinfo is not None


def test_cli_text_table_is_aligned(lake):
    done = run_cli("sql", "--lake", lake.path, "SELECT label, count(*) AS n, min(thumbnail) AS t FROM images GROUP BY label ORDER BY label")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.match(r"label\s+n\s+t$", lines[0])
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].startswith("cats") and lines[3].startswith("dogs")
    assert re.search(r"<\d+ bytes>", lines[2])
    # columns line up: "n" starts at the same offset on every line
    offset = lines[0].index(" n ") + 1
    assert lines[2][offset] == "3" and lines[3][offset] == "2"


def test_cli_sql_exit_codes(lake, tmp_path):
    assert run_cli("sql", "--lake", lake.path, "SELECT * FROM nope").returncode == 5
    assert run_cli("sql", "--lake", lake.path, "SELECT * FROM images VERSION AS OF 42").returncode == 5
    bad = run_cli("sql", "--lake", lake.path, "SELEC 1")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert run_cli("sql", "SELECT 1").returncode == 2  # no --lake


def test_embedded_sql_starts_no_jvm(lake):
    import subprocess

    code = (
        "import sys; from lakeimg.catalog.sql import run_sql\n"
        f"assert run_sql({lake.path!r}, 'SELECT count(*) AS n FROM images').to_pylist() == [{{'n': 5}}]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_show_png_contact_sheet_grows_with_rows(lake, tmp_path):
    sizes = {}
    for limit in (2, 5):
        out = tmp_path / f"sheet{limit}.png"
        done = run_cli(
            "show", "--lake", lake.path, "--out", str(out), "--columns", "2",
            f"SELECT uri, width, height, size_bytes, label, thumbnail FROM images ORDER BY uri LIMIT {limit}",
        )
        assert done.returncode == 0, done.stderr
        assert f"{limit} thumbnails" in done.stdout
        with Image.open(out) as im:
            assert im.format == "PNG"
            sizes[limit] = im.size
            pixels = im.convert("L")
            assert pixels.getextrema()[0] < 100  # thumbnails and captions were drawn on the white sheet
    assert sizes[2][0] == sizes[5][0]  # two columns either way
    assert sizes[5][1] == 3 * sizes[2][1]  # one row of cells vs three


def test_show_html_is_self_contained(lake, tmp_path):
    out = tmp_path / "page.html"
    done = run_cli("show", "--lake", lake.path, "--out", str(out), "SELECT * FROM images WHERE label = 'dogs'")
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 2
    assert "dogs/d0.jpg" in page and "label: dogs" in page and "20x20" in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in sources)
    for uri in sources:
        assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (20, 20)


def test_show_stops_reading_rows_at_its_limit(lake, tmp_path):
    # Rows from the five-millionth on raise when computed, so the sheet exists only if the limit
    # stopped the query in the engine instead of cutting a fully fetched result.
    query = ("SELECT 'img' || i AS uri, NULL::BLOB AS thumbnail, "
             "CASE WHEN i >= 5000000 THEN error('read past the limit') END AS guard FROM range(10000000) t(i)")
    with pytest.raises(LakeImgError, match="read past the limit"):
        lake.sql(query)
    sheet = lake.show(query, limit=5)
    assert len(sheet) == 5 and sheet.more
    done = run_cli("show", "--lake", lake.path, "--out", str(tmp_path / "x.html"), "--limit", "3", query)
    assert done.returncode == 0, done.stderr
    assert "3 thumbnails" in done.stdout


def test_show_needs_the_thumbnail_column(lake, tmp_path):
    done = run_cli("show", "--lake", lake.path, "--out", str(tmp_path / "x.png"), "SELECT uri FROM images")
    assert done.returncode == 2
    assert "thumbnail" in done.stderr


def test_jsonable_rows_give_valid_json():
    import pyarrow as pa

    from lakeimg.commands._common import jsonable_rows

    table = pa.table(
        {
            "f": [float("nan"), 1.5],
            "m": pa.array([[("a", "1")], []], pa.map_(pa.string(), pa.string())),
            "b": [b"\x00\xff", None],
            "t": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), None], pa.timestamp("us", tz="UTC")),
        }
    )
    rows = jsonable_rows(table)
    assert json.loads(json.dumps(rows, allow_nan=False)) == [
        {"f": None, "m": {"a": "1"}, "b": "AP8=", "t": "2026-01-02T03:04:05+00:00"},
        {"f": 1.5, "m": {}, "b": None, "t": None},
    ]


@pytest.mark.spark
def test_spark_sql_on_the_same_lake(lake, spark):
    """Spark SQL over the registered lake answers like the embedded engine, time travel included."""
    from lakeimg.catalog.sql import run_spark_sql

    def both(sql):
        return run_spark_sql(spark, lake.path, sql).to_pylist(), run_sql(lake.path, sql).to_pylist()

    for sql in (
        "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label",
        "SELECT count(*) AS n FROM images VERSION AS OF 0",
        "SELECT count(*) AS n FROM images_rejects",
        "SELECT count(*) AS n FROM lakeimg_runs WHERE job = 'ingest'",
        "SELECT uri, width, height, dtype FROM images WHERE label = 'dogs' ORDER BY uri",
        "SELECT count(*) AS n FROM small",
    ):
        on_spark, embedded = both(sql)
        assert on_spark == embedded, sql
    ts = lake.first_commit_time.isoformat()
    on_spark, embedded = both(f"SELECT count(*) AS n FROM images TIMESTAMP AS OF '{ts}'")
    assert on_spark == embedded == [{"n": 3}]
    with pytest.raises(TableNotFoundError):
        run_spark_sql(spark, lake.path, "SELECT * FROM no_such_table")
    with pytest.raises(SpecError):
        run_spark_sql(spark, lake.path, "SELEC 1")


@pytest.mark.spark
def test_spark_sql_lists_the_lakes_tables_like_the_embedded_engine(lake, spark, tmp_path):
    """SHOW TABLES and information_schema on Spark: the lake's tables only (not others the
    session knows), the same names and columns as DuckDB's, and no view left behind."""
    on_spark = Lake(lake.path, engine="spark", spark=spark)
    spark.sql("CREATE OR REPLACE TEMPORARY VIEW not_in_the_lake AS SELECT 1 AS x")
    names = ["images", "images_rejects", "lakeimg_runs", "small", "small_rejects"]
    for query in ("SHOW TABLES", "show tables;"):
        assert on_spark.sql(query).to_pylist() == lake.sql(query).to_pylist() == [{"name": n} for n in names]
    query = "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'small%' ORDER BY table_name"
    assert on_spark.sql(query).to_pylist() == lake.sql(query).to_pylist() == [{"table_name": "small"}, {"table_name": "small_rejects"}]
    query = ("SELECT c.column_name FROM INFORMATION_SCHEMA.COLUMNS c JOIN information_schema.tables t "
             "ON c.table_name = t.table_name WHERE t.table_name = 'images' ORDER BY c.ordinal_position")
    assert on_spark.sql(query).to_pylist() == lake.sql(query).to_pylist()
    assert on_spark.sql(query, limit=2).column("column_name").to_pylist() == ["uri", "content_sha256"]
    assert not [t.name for t in spark.catalog.listTables() if t.name.startswith("lakeimg_information_schema")]
    with pytest.raises(TableNotFoundError, match=r"\(tables: images, images_rejects, small, small_rejects, lakeimg_runs\)"):
        on_spark.sql("SELECT * FROM imgaes")
    with pytest.raises(SqlError):  # the guard still holds for catalog queries
        on_spark.sql("SELECT * FROM information_schema.tables, csv.`/etc/passwd`")
    spark.catalog.dropTempView("not_in_the_lake")
