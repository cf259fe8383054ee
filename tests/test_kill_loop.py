"""SIGKILL at random points: ingest, transform, trainset create and maintain are each killed at
20 random moments (the whole process group, pool workers included). After every kill each table
loads at a consistent version, no row is duplicated or lost, and the next run completes the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.catalog.history import run_records
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.storage import uri_to_path

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
KILLS = 20
SPEC = json.dumps({"ops": [{"op": "resize", "width": 16, "height": 16}]})


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), np.uint8)).save(path)


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "lakeimg.cli", *argv]


def _run(argv: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def _kill_at(argv: list[str], seconds: float) -> None:
    """Start a run in its own process group and SIGKILL the group after `seconds`."""
    proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _rows(lake: Lake, table: str, columns: list[str]) -> list[tuple]:
    if not LocalEngine(lake.path).exists(table):
        return []
    data = lake.read(table, columns=columns)
    return list(zip(*(data[c].to_pylist() for c in columns), strict=True))


def _check_consistent(lake: Lake) -> None:
    """Every table loads; no key twice in any table."""
    for table, key in (("images", ["uri"]), ("images_rejects", ["uri"]), ("small", ["uri", "variant"]),
                       ("small_rejects", ["uri"]), ("_lakeimg/trainsets", ["name"])):
        keys = _rows(lake, table, key)
        assert len(keys) == len(set(keys)), f"duplicated rows in {table}"


def _check_complete(lake: Lake, src: Path) -> None:
    images = dict(_rows(lake, "images", ["uri", "content_sha256"]))
    rejects = {u for (u,) in _rows(lake, "images_rejects", ["uri"])}
    assert not images.keys() & rejects
    assert {Path(uri_to_path(u)) for u in images.keys() | rejects} == {p for p in src.rglob("*") if p.is_file()}
    for uri, sha in images.items():
        assert sha == hashlib.sha256(Path(uri_to_path(uri)).read_bytes()).hexdigest()


def _mutate(src: Path, rng: random.Random, step: int) -> None:
    files = sorted(src.iterdir())
    action = step % 4
    if action == 0 or len(files) < 4:
        _png(src / f"new{step:03d}.png", 1000 + step)
    elif action == 1:
        rng.choice(files).write_bytes(b"broken")
    elif action == 2:
        _png(rng.choice(files), 2000 + step)
    else:
        rng.choice(files).unlink()


@pytest.fixture
def lake_and_src(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        _png(src / f"f{i:02d}.png", i)
    (src / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    lake = Lake(str(tmp_path / "lake"))
    return lake, src


def _ingest(lake: Lake, src: Path) -> list[str]:
    return _cli("ingest", str(src), "--lake", lake.path, "--sync-deletes", "--workers", "1")


def test_ingest_killed_at_random_points(lake_and_src):
    lake, src = lake_and_src
    rng = random.Random(11)
    duration = _run(_ingest(lake, src))
    for step in range(KILLS):
        _mutate(src, rng, step)
        _kill_at(_ingest(lake, src), rng.uniform(0.3, duration * 1.3))
        _check_consistent(lake)
        if step % 5 == 4:
            _run(_ingest(lake, src))
            _check_complete(lake, src)
    _run(_ingest(lake, src))
    _check_complete(lake, src)
    statuses = {r["status"] for r in run_records(LocalEngine(lake.path)).values()}
    assert statuses <= {"succeeded", "failed", "incomplete"}


def test_transform_killed_at_random_points(lake_and_src):
    lake, src = lake_and_src
    rng = random.Random(12)
    _run(_ingest(lake, src))
    transform = _cli("transform", "--lake", lake.path, "--target", "small", "--spec", SPEC, "--workers", "1")
    duration = _run(transform)
    for step in range(KILLS):
        if step % 3 == 0:  # give the transform source changes to work on
            _mutate(src, rng, step)
            _run(_ingest(lake, src))
        _kill_at(transform, rng.uniform(0.3, duration * 1.3))
        _check_consistent(lake)
    _run(transform)
    _check_consistent(lake)
    # Complete and exact: one row per source image, made from that image's current bytes.
    images = dict(_rows(lake, "images", ["uri", "content_sha256"]))
    small = _rows(lake, "small", ["uri", "source_sha256"])
    assert dict(small) == images


def test_trainset_create_killed_at_random_points(lake_and_src):
    lake, src = lake_and_src
    rng = random.Random(13)
    _run(_ingest(lake, src))

    def create(name: str) -> list[str]:
        return _cli("trainset", "create", "--lake", lake.path, "--name", name, "--table", "images", "--seed", "7", "--label-column", "")

    duration = _run(create("first"))
    for step in range(KILLS):
        _kill_at(create(f"set{step}"), rng.uniform(0.3, duration * 1.3))
        _check_consistent(lake)
        names = {n for (n,) in _rows(lake, "_lakeimg/trainsets", ["name"])}
        if f"set{step}" not in names:  # killed before its commit: nothing of it; it can be made now
            _run(create(f"set{step}"))
        assert lake.training_set(f"set{step}").rows("train").num_rows >= 0
    assert len(_rows(lake, "_lakeimg/trainsets", ["name"])) == KILLS + 1


def test_maintain_killed_at_random_points(lake_and_src):
    lake, src = lake_and_src
    rng = random.Random(14)
    for step in range(4):  # several versions and small files to compact
        _mutate(src, rng, step)
        _run(_ingest(lake, src))
    expected = sorted(_rows(lake, "images", ["uri", "content_sha256"]))
    maintain = _cli("maintain", "--lake", lake.path, "--optimize", "--vacuum-hours", "0")
    duration = _run(maintain)
    for step in range(KILLS):
        _mutate(src, rng, step)
        _run(_ingest(lake, src))
        expected = sorted(_rows(lake, "images", ["uri", "content_sha256"]))
        _kill_at(maintain, rng.uniform(0.3, duration * 1.3))
        _check_consistent(lake)
        assert sorted(_rows(lake, "images", ["uri", "content_sha256"])) == expected
    _run(maintain)
    _check_complete(lake, src)
