"""Silent content corruption: `content_sha256` is checked on export, read, loaders, reproduce and
by `lakeimg verify`; a damaged data file is a typed error (exit 8), never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import ContentMismatchError, LakeDamagedError
from lakeimg.jobs.export import export_table, safe_name
from lakeimg.jobs.ingest import ingest_files
from lakeimg.samples import photo_like

N_IMAGES = 6


def _lake(tmp_path: Path) -> Lake:
    """A lake whose `images` table holds N_IMAGES generated JPEG and PNG files in one data file."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(photo_like(48, 64, seed=i)).save(src / (f"p{i}.jpg" if i % 2 else f"p{i}.png"))
    ingest_files(str(tmp_path / "lake"), [str(src)], workers=0)
    return Lake(tmp_path / "lake")


def _data_file(lake: Lake) -> str:
    files = LocalEngine(lake.path).data_files("images")
    assert len(files) == 1
    return files[0]


def _alter_one_content(lake: Lake) -> tuple[str, str, str]:
    """Flip bytes inside one row's content and write the file back as valid Parquet under the
    same name (damage that passes every Parquet check). Returns (uri, recorded sha, new sha)."""
    path = _data_file(lake)
    table = pq.read_table(path)
    row = 2
    content = table["content"].to_pylist()
    damaged = bytearray(content[row])
    middle = len(damaged) // 2
    damaged[middle : middle + 16] = bytes(b ^ 0xFF for b in damaged[middle : middle + 16])
    content[row] = bytes(damaged)
    index = table.schema.get_field_index("content")
    table = table.set_column(index, table.schema.field(index), pa.array(content, table.schema.field(index).type))
    pq.write_table(table, path)
    return table["uri"][row].as_py(), table["content_sha256"][row].as_py(), hashlib.sha256(damaged).hexdigest()


def _garble_middle(lake: Lake, nbytes: int = 4096) -> str:
    """Overwrite `nbytes` in the middle of the content column's pages (the bulk of the file) with
    pseudo-random bytes, as a bad disk or a torn copy would. Returns the file's path."""
    path = _data_file(lake)
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index("content"))
    first = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    start = first + chunk.total_compressed_size // 2 - nbytes // 2
    data = bytearray(Path(path).read_bytes())
    data[start : start + nbytes] = hashlib.shake_256(b"garble").digest(nbytes)
    Path(path).write_bytes(bytes(data))
    return path


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("lakeimg: error: damaged lake: "), stderr
    return lines[0]


def test_a_clean_lake_verifies(tmp_path: Path):
    lake = _lake(tmp_path)
    report = lake.verify("images")
    assert report.ok and report.problems == ()
    assert (report.rows_checked, report.rows_hashed, report.files_checked) == (N_IMAGES, N_IMAGES, 1)
    assert report.checked == ("images@0",)
    result = run_cli("verify", "--lake", lake.path, "images@0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["ok"] is True and out["rows_hashed"] == N_IMAGES and out["problems"] == []
    assert lake.read("images", columns=["uri", "content"]).num_rows == N_IMAGES
    summary = export_table(lake.path, "images", tmp_path / "out")
    assert (summary["written"], summary["failed"]) == (N_IMAGES, 0)


def test_derived_table_verifies_files_and_says_data_has_no_hash(tmp_path: Path):
    lake = _lake(tmp_path)
    lake.transform("images", "gray", {"ops": [{"op": "color", "to": "gray"}], "output": "png"}, workers=0)
    report = lake.verify("gray")
    assert report.ok and report.rows_checked == N_IMAGES and report.rows_hashed == 0
    assert any("no hash of its own" in note for note in report.notes)


def test_altered_content_is_caught_everywhere(tmp_path: Path):
    lake = _lake(tmp_path)
    uri, recorded, actual = _alter_one_content(lake)
    assert recorded != actual

    # Lake.read: only when content is read, naming the uri and both hashes.
    with pytest.raises(ContentMismatchError) as caught:
        lake.read("images", columns=["uri", "content"])
    err = caught.value
    assert (err.table, err.version, err.uri, err.expected, err.actual) == ("images", 0, uri, recorded, actual)
    assert isinstance(err, LakeDamagedError) and uri in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.uri, again.actual) == (ContentMismatchError, uri, actual)
    with pytest.raises(ContentMismatchError):
        lake.read("images", columns=["content"])  # uri and hash read on the side, then dropped
    assert lake.read("images", columns=["uri", "width"]).num_rows == N_IMAGES
    assert lake.read("images", columns=["content"], verify=False).column_names == ["content"]

    # export: every other row written, the damaged one never written as a good file.
    out = tmp_path / "out"
    with pytest.raises(LakeDamagedError) as exported:
        export_table(lake.path, "images", out)
    assert uri in str(exported.value) and f"wrote {N_IMAGES - 1} files" in str(exported.value)
    written = {p.name for p in out.glob("*.png")}
    assert len(written) == N_IMAGES - 1 and safe_name(uri, "png") not in written
    cli = run_cli("export", "--lake", lake.path, "images", "--out", str(tmp_path / "out2"))
    assert cli.returncode == 8
    assert uri in _one_error_line(cli.stderr)

    # loaders: the split's rows are hashed when read.
    ts = lake.create_training_set("all", "images", splits="train=1.0", seed=1)
    with pytest.raises(ContentMismatchError) as loaded:
        next(ts.iter_numpy("train", batch_size=2, shuffle=False))
    assert loaded.value.uri == uri

    # reproduce: the sources are unchanged, the stored bytes are not.
    result = lake.reproduce("images", 0)
    assert not result.identical
    assert [(d["uri"], d["reason"]) for d in result.differences] == [(uri, "stored_content_differs")]

    # verify: names the uri, exits 9.
    report = lake.verify("images")
    assert not report.ok
    assert [(p.uri, p.reason) for p in report.problems if p.uri] == [(uri, "content_mismatch")]
    cli = run_cli("verify", "--lake", lake.path, "images")
    assert cli.returncode == 9, cli.stderr
    assert uri in cli.stdout and "content_mismatch" in cli.stdout


def test_garbled_data_file_is_a_typed_error(tmp_path: Path):
    lake = _lake(tmp_path)
    path = _garble_middle(lake)

    report = lake.verify("images")
    assert not report.ok and {p.file for p in report.problems} == {path}
    assert report.problems[0].reason in ("unreadable", "content_mismatch")
    cli = run_cli("verify", "--lake", lake.path, "images", "--json")
    assert cli.returncode == 9, cli.stderr
    assert json.loads(cli.stdout.splitlines()[-1])["problems"][0]["file"] == path

    with pytest.raises(LakeDamagedError) as caught:
        lake.read("images")
    assert caught.value.table == "images" and caught.value.version == 0
    with pytest.raises(LakeDamagedError):
        export_table(lake.path, "images", tmp_path / "out")
    cli = run_cli("export", "--lake", lake.path, "images", "--out", str(tmp_path / "out2"))
    assert cli.returncode == 8
    assert "images@0" in _one_error_line(cli.stderr)
    ts = lake.create_training_set("all", "images", splits="train=1.0", seed=1)
    with pytest.raises(LakeDamagedError):
        next(ts.iter_numpy("train", batch_size=2, shuffle=False))


def test_unreadable_file_names_the_file(tmp_path: Path):
    """Damage in the file's footer: nothing of it reads; every reader names the file."""
    lake = _lake(tmp_path)
    path = _data_file(lake)
    data = bytearray(Path(path).read_bytes())
    data[-200:-8] = b"\x5a" * 192  # the footer's metadata, keeping the PAR1 magic
    Path(path).write_bytes(bytes(data))
    with pytest.raises(LakeDamagedError) as caught:
        lake.read("images", columns=["uri", "width"])
    assert caught.value.file == path and path in str(caught.value)
    batches = LocalEngine(lake.path).read_batches("images", columns=["uri"])
    with pytest.raises(LakeDamagedError) as streamed:
        next(batches)
    assert streamed.value.file == path
    report = lake.verify("images")
    assert [(p.file, p.reason) for p in report.problems] == [(path, "unreadable")]


def test_missing_data_file(tmp_path: Path):
    lake = _lake(tmp_path)
    path = _data_file(lake)
    os.remove(path)
    report = lake.verify("images")
    assert [(p.file, p.reason) for p in report.problems] == [(path, "missing")]
    with pytest.raises(LakeDamagedError, match="missing") as caught:
        lake.read("images", columns=["uri"])
    assert caught.value.file == path
    cli = run_cli("export", "--lake", lake.path, "images", "--out", str(tmp_path / "out"))
    assert cli.returncode == 8
    assert "missing" in _one_error_line(cli.stderr)
    assert run_cli("verify", "--lake", lake.path, "images").returncode == 9


def test_content_check_skips_rows_without_inline_bytes():
    from lakeimg.jobs.verify import content_mismatches

    rows = pa.table({"uri": ["a", "b", "c"], "content": [b"x", None, b"z"],
                     "content_sha256": [hashlib.sha256(b"x").hexdigest(), "00", None]})
    assert content_mismatches(rows) == []
    rows = rows.set_column(1, "content", pc.if_else(pa.array([True, True, True]), pa.array([b"y", None, b"z"]), rows["content"]))
    assert [m[0] for m in content_mismatches(rows)] == ["a"]
