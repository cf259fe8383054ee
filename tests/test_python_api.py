"""The Python face of a lake: `lake.sql` as Arrow, `lake.read(filter=...)` pushed down, tables
that other Delta readers read, contact sheets of derived tables, and Jupyter display."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cli_runs import run_cli
from deltalake import DeltaTable, QueryBuilder
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import SpecError


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    root = tmp_path_factory.mktemp("api")
    for i, label in enumerate(["cats", "cats", "dogs", "dogs", "birds"]):
        (root / "src" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10 + i, 14, 3), 40 * i, np.uint8)).save(root / "src" / label / f"{i}.png")
    lake = Lake(root / "lake")
    lake.ingest([str(root / "src")], workers=0, label_from_path="parent")
    lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}], "output": "raw"}, workers=0)
    return lake


def test_sql_returns_arrow_and_limit_is_applied_by_the_engine(lake):
    result = lake.sql("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label")
    assert isinstance(result, pa.Table) and result.to_pylist() == [
        {"label": "birds", "n": 1}, {"label": "cats", "n": 2}, {"label": "dogs", "n": 2}]
    assert result.to_pandas()["n"].sum() == 5
    assert lake.sql("SELECT uri, thumbnail FROM images ORDER BY uri", limit=2).num_rows == 2


def test_read_filter_pushed_down_as_expression_or_terms(lake):
    by_terms = lake.read("images", columns=["uri", "label"], filter=[("label", "in", ["cats", "birds"]), ("height", ">=", 11)])
    assert sorted(by_terms["label"].to_pylist()) == ["birds", "cats"]
    by_expression = lake.read("images", columns=["uri"], filter=pc.field("label") == "dogs")
    assert by_expression.num_rows == 2 and by_expression.column_names == ["uri"]
    with_content = lake.read("images", columns=["uri", "content"], filter=[("label", "=", "birds")])  # verified read
    assert with_content.num_rows == 1 and with_content["content"][0].as_py()[:4] == b"\x89PNG"
    assert lake.read("images", version=0, filter=[("label", "=", "none")]).num_rows == 0
    with pytest.raises(SpecError, match="operator"):
        lake.read("images", filter=[("label", "LIKE", "c%")])
    with pytest.raises(SpecError, match="column, operator, value"):
        lake.read("images", filter=["label = 'cats'"])  # SQL text is not a filter


def test_tables_are_plain_delta_that_deltalake_reads(lake):
    """Every table is an ordinary Delta table: delta-rs' own SQL engine (DataFusion) reads it,
    time travel included, without lakeimg."""
    images = DeltaTable(f"{lake.path}/images")
    counts = QueryBuilder().register("images", images).execute(
        "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").read_all()
    assert pa.table(counts).to_pylist() == lake.sql(
        "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").to_pylist()
    small = DeltaTable(f"{lake.path}/small", version=0)
    rows = pa.table(QueryBuilder().register("small", small).execute("SELECT uri, data, width FROM small").read_all())
    assert rows.num_rows == 5 and set(rows["width"].to_pylist()) == {8}
    assert small.metadata().configuration["delta.enableChangeDataFeed"] == "true"


def test_show_draws_derived_tables_from_their_data(lake, tmp_path):
    sheet = lake.show("SELECT * FROM small ORDER BY uri")
    assert len(sheet) == 5 and not sheet.more
    for item in sheet.items:  # rendered at display size from `data`, not placeholders
        assert item.thumbnail is not None and Image.open(io.BytesIO(item.thumbnail)).size == (8, 6)
    limited = lake.show("SELECT * FROM small ORDER BY uri", limit=2)
    assert len(limited) == 2 and limited.more
    with pytest.raises(SpecError, match="thumbnail"):
        lake.show("SELECT uri FROM small")
    out = tmp_path / "small.png"
    done = run_cli("show", "--lake", lake.path, "--out", str(out), "--limit", "3", "SELECT uri, label, data, encoding, "
                   "width, height, channels, dtype FROM small")
    assert done.returncode == 0, done.stderr
    assert "3 thumbnails" in done.stdout and "matched more" in done.stdout
    sheet_image = np.asarray(Image.open(out).convert("L"))
    assert (sheet_image < 200).sum() > 3 * 8 * 6  # the three cells hold pixels, not only captions


def test_contact_sheets_and_lakes_display_in_jupyter(lake):
    html = lake.show("SELECT uri, label, width, height, thumbnail FROM images WHERE label = 'cats'")._repr_html_()
    assert html.count("<figure>") == 2 and html.count('src="data:image/jpeg;base64,') == 2
    assert "label: cats" in html and "<script" not in html
    hostile = lake.show("SELECT '<script>alert(1)</script>' AS uri, thumbnail FROM images LIMIT 1")._repr_html_()
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile  # captions are escaped
    lake_html = lake._repr_html_()
    assert "<table>" in lake_html and "<td>images</td>" in lake_html and "<td>small</td>" in lake_html
