"""Ingest at scale without timing: the streamed listing, key-column re-runs, bounded rewrites."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from lakeimg.engine._delta_txn import uri_ranges
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.jobs import listing
from lakeimg.jobs.ingest import ingest_files
from lakeimg.jobs.listing import list_sources


def _png(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_listing_of_50000_files_streams_into_arrow(tmp_path, monkeypatch):
    """50,000 hard links (no disk) are listed once each, sorted, and gathered in Arrow chunks:
    never 50,000 Python objects at once."""
    original = str(tmp_path / "one.png")
    _png(Path(original), 7)
    src = tmp_path / "src"
    for folder in range(50):
        base = str(src / f"d{folder:02d}")
        os.makedirs(base)
        for i in range(1000):
            os.link(original, f"{base}/f{i:04d} #{i}.png")
    held: list[int] = []
    flush = listing._ListingChunks.flush

    def counting_flush(self):
        held.append(len(self.pending))
        flush(self)

    monkeypatch.setattr(listing._ListingChunks, "CHUNK_ROWS", 2000)
    monkeypatch.setattr(listing._ListingChunks, "flush", counting_flush)
    table = list_sources([str(src), str(src / "d07")])  # overlapping sources: every file once
    assert table.num_rows == 50_000
    assert max(held) <= 2000 and sum(held) == 51_000  # d07 twice, in chunks of at most 2,000 Python rows
    uris = table["uri"]
    assert uris.to_pylist() == sorted(set(uris.to_pylist()))
    assert uris[0].as_py() == (src / "d00" / "f0000 #0.png").as_uri().replace("#", "%23")
    assert set(table["size_bytes"].to_pylist()) == {os.path.getsize(original)}


class KeyReadsEngine(LocalEngine):
    """A real LocalEngine that records which columns of which tables a job reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[str, tuple[str, ...] | None]] = []

    def read(self, name, *, version=None, columns=None, **options):
        self.reads.append((name, tuple(columns) if columns is not None else None))
        return super().read(name, version=version, columns=columns, **options)

    def read_batches(self, name, *, columns, version=None, **options):
        self.reads.append((name, tuple(columns)))
        return super().read_batches(name, columns=columns, version=version, **options)


def test_rerun_reads_only_key_columns(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        _png(src / f"{i}.png", i)
    (src / "bad.jpg").write_bytes(b"nope")
    lake = tmp_path / "lake"
    ingest_files(lake, [str(src)], workers=0)
    engine = KeyReadsEngine(lake, workers=0)
    summary = ingest_files(lake, [str(src)], workers=0, engine=engine)
    assert (summary.added, summary.unchanged) == (0, 6)
    data_reads = [(name, cols) for name, cols in engine.reads if not name.startswith("_lakeimg")]
    assert {name for name, _ in data_reads} == {"images", "images_rejects"}
    for _name, cols in data_reads:
        assert cols is not None and set(cols) <= {"uri", "size_bytes", "modified_at", "tiled", "error_class"}, cols


def _data_files(lake: Path, table: str = "images") -> set[str]:
    return {p.name for p in (lake / table).glob("*.parquet")}


def _latest_actions(lake: Path, table: str = "images") -> tuple[list[str], list[str]]:
    latest = max((lake / table / "_delta_log").glob("*.json"))
    adds, removes = [], []
    for line in latest.read_text().splitlines():
        action = json.loads(line)
        if "add" in action:
            adds.append(action["add"]["path"])
        if "remove" in action:
            removes.append(action["remove"]["path"])
    return adds, removes


def test_changing_one_file_rewrites_only_the_data_file_that_held_it(tmp_path):
    lake = tmp_path / "lake"
    folders = []
    held_by: dict[str, str] = {}
    for name in ("a", "b", "c"):  # one run per folder: three data files, disjoint uri ranges
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        for i in range(3):
            _png(folder / f"{i}.png", 10 * i + ord(name))
        folders.append(str(folder))
        ingest_files(lake, [str(folder)], workers=0)
        adds, _ = _latest_actions(lake)
        held_by[name] = adds[0]
    assert len(_data_files(lake)) == 3
    # The log's uri statistics put each file's rows in a range of its own: a replace of b's uri
    # opens b's file only.
    ranges = uri_ranges(LocalEngine(lake)._delta_table("images"))
    changed = (tmp_path / "src" / "b" / "1.png").as_uri()
    assert sorted(ranges) == sorted(held_by.values())
    assert [path for path, (low, high) in ranges.items() if low <= changed <= high] == [held_by["b"]]
    _png(tmp_path / "src" / "b" / "1.png", 200)  # new content (and size/mtime) for one file
    os.utime(tmp_path / "src" / "b" / "1.png", (1e9, 1e9))
    summary = ingest_files(lake, folders, workers=0)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 1, 8)
    adds, removes = _latest_actions(lake)
    assert removes == [held_by["b"]]  # only b's file: a's and c's are pruned by their uri statistics
    assert len(adds) == 2  # the changed row, and b's file rewritten with its two other rows
    table = LocalEngine(lake).read("images", columns=["uri", "content_sha256"])
    assert table.num_rows == 9
    rewritten = [a for a in adds if pq.read_table(lake / "images" / a, columns=["uri"]).num_rows == 2]
    assert len(rewritten) == 1


def _three_folder_lake(tmp_path):
    """A lake of folders a, b, c (three PNGs each), one ingest run per folder: three data
    files with disjoint uri ranges."""
    lake = tmp_path / "lake"
    for name in ("a", "b", "c"):
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        for i in range(3):
            _png(folder / f"{i}.png", 10 * i + ord(name))
        ingest_files(lake, [str(folder)], workers=0)
    return lake


def test_an_incremental_transform_opens_only_the_source_files_holding_changed_rows(tmp_path):
    """After one changed file, the transform reads the change data feed and the source rows of
    that uri only: the source's other data files are moved away during the run and never missed."""
    from lakeimg.jobs.transform import transform_table

    lake = _three_folder_lake(tmp_path)
    spec = {"ops": [{"op": "resize", "width": 4, "height": 4}], "output": {"encoding": "png"}}
    assert transform_table(lake, "images", "small", spec, workers=0).added == 9
    _png(tmp_path / "src" / "b" / "1.png", 200)
    os.utime(tmp_path / "src" / "b" / "1.png", (1e9, 1e9))
    ingest_files(lake, [str(tmp_path / "src" / "b")], workers=0)
    changed = (tmp_path / "src" / "b" / "1.png").as_uri()
    ranges = uri_ranges(LocalEngine(lake)._delta_table("images"))
    others = [path for path, (low, high) in ranges.items() if not low <= changed <= high]
    assert len(others) == 2  # a's and c's files
    for path in others:
        os.rename(lake / "images" / path, lake / "images" / f".away-{path}")
    try:
        summary = transform_table(lake, "images", "small", spec, workers=0)
    finally:
        for path in others:
            os.rename(lake / "images" / f".away-{path}", lake / "images" / path)
    assert (summary.mode, summary.updated, summary.added, summary.unchanged) == ("incremental", 1, 0, 8)
    assert LocalEngine(lake).read("small", columns=["uri"]).num_rows == 9


def test_a_run_over_one_folder_opens_only_the_data_files_near_its_uris(tmp_path):
    """The plan reads the tables' keys only from data files whose uri statistics overlap the
    sources: the other folders' files are moved away during a no-op re-run of one folder and
    an ingest of a new one, and neither run misses them."""
    lake = _three_folder_lake(tmp_path)
    (tmp_path / "src" / "b" / "bad.png").write_bytes(b"not a png")  # and a reject among b's files
    ingest_files(lake, [str(tmp_path / "src" / "b")], workers=0)
    ranges = uri_ranges(LocalEngine(lake)._delta_table("images"))
    b_uri = (tmp_path / "src" / "b" / "0.png").as_uri()
    others = [path for path, (low, high) in ranges.items() if not low <= b_uri <= high]
    assert len(others) == 2
    new = tmp_path / "src" / "bb"  # sorts between b and c
    new.mkdir()
    _png(new / "0.png", 99)
    for path in others:
        os.rename(lake / "images" / path, lake / "images" / f".away-{path}")
    try:
        again = ingest_files(lake, [str(tmp_path / "src" / "b")], workers=0)
        added = ingest_files(lake, [str(new)], workers=0)
    finally:
        for path in others:
            os.rename(lake / "images" / f".away-{path}", lake / "images" / path)
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 4, 0)
    assert (added.added, added.unchanged) == (1, 0)
    assert LocalEngine(lake).read("images", columns=["uri"]).num_rows == 10
