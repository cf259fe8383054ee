"""Multi-table writes that can be trusted: a failed or killed run never undoes another writer's
commits, every state a stop leaves is correct on its own, the next run completes it, and a
damaged log tail is refused before anything is written on top of it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.catalog.history import run_records
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeDamagedError, PartialRunError
from lakeimg.storage import uri_to_path

ROOT = Path(__file__).resolve().parent.parent


def _png(path: Path, seed: int, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)).save(path)


def _folder(path: Path, count: int, seed: int) -> Path:
    for i in range(count):
        _png(path / f"f{i:03d}.png", seed + i)
    return path


def _python(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          cwd=str(ROOT), check=check, timeout=300)


def _uris(lake: Lake, table: str) -> list[str]:
    return lake.read(table, columns=["uri"])["uri"].to_pylist() if LocalEngine(lake.path).exists(table) else []


def _assert_whole(lake: Lake, folders: list[Path]) -> None:
    """Every listed file is in exactly one of images and rejects, once, with its own bytes."""
    images, rejects = _uris(lake, "images"), _uris(lake, "images_rejects")
    assert len(images) == len(set(images)) and len(rejects) == len(set(rejects))
    assert not set(images) & set(rejects)
    listed = {p for folder in folders for p in folder.rglob("*") if p.is_file()}
    assert {Path(uri_to_path(u)) for u in images + rejects} == listed
    for row in lake.read("images", columns=["uri", "content_sha256"]).to_pylist():
        assert row["content_sha256"] == hashlib.sha256(Path(uri_to_path(row["uri"])).read_bytes()).hexdigest()


@pytest.mark.parametrize("new_lake", [False, True], ids=["existing-lake", "new-lake"])
def test_a_failed_run_never_undoes_what_another_writer_committed(tmp_path, monkeypatch, new_lake):
    lake = Lake(str(tmp_path / "lake"))
    first = _folder(tmp_path / "first", 3, seed=1)
    if not new_lake:
        lake.ingest([str(first)], workers=0)
    mine = _folder(tmp_path / "mine", 4, seed=10)
    (mine / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    theirs = _folder(tmp_path / "theirs", 40, seed=100)
    real_commit = LocalEngine.commit

    def commit_then_fail(self, write):
        if write.table != "images":
            return real_commit(self, write)
        # Between this run's rejects commit and its images commit another writer commits.
        _python("import sys, lakeimg; lakeimg.Lake(sys.argv[1]).ingest([sys.argv[2]], workers=0)", lake.path, str(theirs))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalEngine, "commit", commit_then_fail)
    with pytest.raises(PartialRunError) as failed:
        lake.ingest([str(mine)], workers=0)
    monkeypatch.undo()
    assert set(failed.value.landed) == {"images_rejects"}
    # The other writer's 40 rows are all there, its run succeeded, and mine is recorded failed.
    assert {Path(uri_to_path(u)).parent for u in _uris(lake, "images")} >= {theirs}
    assert sum(Path(uri_to_path(u)).parent == theirs for u in _uris(lake, "images")) == 40
    # The other writer found my rejects commit without a runs row, saw my run alive (its staging
    # claim held) and left the row to me: no `incomplete` row for a run that was still going.
    status = {run_id: r["status"] for run_id, r in run_records(LocalEngine(lake.path)).items()}
    assert status[failed.value.run_id] == "failed"
    assert "incomplete" not in lake.read("_lakeimg/runs", columns=["status"])["status"].to_pylist()
    assert list(status.values()).count("succeeded") == (2 if not new_lake else 1)
    # The next run of mine completes the work.
    summary = lake.ingest([str(mine)], workers=0)
    assert (summary.added, summary.rejected) == (4, 0)  # broken.jpg landed already
    _assert_whole(lake, [mine, theirs] + ([] if new_lake else [first]))


KILL_AFTER_COMMIT = """
import os, signal, sys
from lakeimg.engine.delta_rs import LocalEngine
real = LocalEngine.commit
def commit_then_die(self, write):
    result = real(self, write)
    if write.table == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
LocalEngine.commit = commit_then_die
from lakeimg.jobs.ingest import ingest_files
ingest_files(sys.argv[1], [sys.argv[2]], workers=0)
"""


@pytest.mark.parametrize("killed_after", ["images_rejects", "images"])
def test_a_run_killed_between_commits_is_recorded_and_completed_by_the_next(tmp_path, killed_after):
    src = _folder(tmp_path / "src", 4, seed=1)
    (src / "was_bad.png").write_bytes(b"not a png")
    lake = Lake(str(tmp_path / "lake"))
    lake.ingest([str(src)], workers=0)
    # Changes that move files between the tables, plus a new file.
    (src / "f000.png").write_bytes(b"now broken")
    _png(src / "was_bad.png", seed=50)
    _png(src / "new.png", seed=51)
    killed = _python(KILL_AFTER_COMMIT, lake.path, str(src), killed_after, check=False)
    assert killed.returncode == -9, killed.stderr

    # What a reader sees now: every table readable, no row twice, each row's bytes its file's.
    images, rejects = _uris(lake, "images"), _uris(lake, "images_rejects")
    assert len(images) == len(set(images)) and len(rejects) == len(set(rejects))
    killed_run = lake.versions(killed_after)[0]
    assert killed_run.status == "unrecorded"
    # The rejects commit runs in a thread beside the images commit, so the other one may have
    # landed too before the kill: whichever did, the next run must record exactly those.
    landed = {t for t in ("images", "images_rejects") if killed_run.run_id in {v.run_id for v in lake.versions(t)}}
    assert killed_after in landed

    summary = lake.ingest([str(src)], workers=0)
    _assert_whole(lake, [src])
    assert _uris(lake, "images_rejects") == [(src / "f000.png").as_uri()]
    runs = run_records(LocalEngine(lake.path))
    assert runs[killed_run.run_id]["status"] == "incomplete"
    assert {o["table"] for o in runs[killed_run.run_id]["outputs"]} == landed
    assert runs[summary.run_id]["status"] == "succeeded"
    statuses = {h.run_id: h.status for h in lake.versions(killed_after)}
    assert statuses[killed_run.run_id] == "incomplete"
    # A further run finds nothing to do.
    again = lake.ingest([str(src)], workers=0)
    assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 6)


@pytest.mark.parametrize("damage", ["empty", "cut"])
def test_a_damaged_log_tail_is_refused_and_never_committed_over(tmp_path, damage):
    src = _folder(tmp_path / "src", 3, seed=1)
    lake = Lake(str(tmp_path / "lake"))
    lake.ingest([str(src)], workers=0)
    _png(src / "new.png", seed=9)
    lake.ingest([str(src)], workers=0)
    log = Path(lake.path) / "images" / "_delta_log"
    newest = max(log.glob("*.json"))
    text = newest.read_bytes()
    newest.write_bytes(b"" if damage == "empty" else text[: len(text) // 2])
    entries = sorted(p.name for p in log.iterdir())

    with pytest.raises(LakeDamagedError, match="newest log entry") as refused:
        lake.read("images")
    assert refused.value.version == int(newest.name[:20])
    _png(src / "newer.png", seed=10)
    with pytest.raises(LakeDamagedError):
        lake.ingest([str(src)], workers=0)
    assert sorted(p.name for p in log.iterdir()) == entries  # nothing written on top
    for argv in (["ingest", str(src), "--lake", lake.path], ["history", "--lake", lake.path, "images"],
                 ["sql", "--lake", lake.path, "SELECT count(*) FROM images"]):
        done = subprocess.run([sys.executable, "-m", "lakeimg.cli", *argv], capture_output=True, text=True, cwd=str(ROOT))
        assert done.returncode == 8, (argv, done.stderr)
        assert done.stderr.startswith("lakeimg: error: damaged lake") and "Traceback" not in done.stderr
    assert sorted(p.name for p in log.iterdir()) == entries
    # The repair the message names works: move the entry aside, the table is at the version before.
    newest.rename(tmp_path / newest.name)
    assert lake.version("images") == int(newest.name[:20]) - 1
    lake.ingest([str(src)], workers=0)
    _assert_whole(lake, [src])


def test_writers_racing_to_create_a_table_both_land(tmp_path):
    """The first-writer race on a new lake: the loser appends instead of failing."""
    for attempt in range(3):
        lake = str(tmp_path / f"lake{attempt}")
        folders = [_folder(tmp_path / f"a{attempt}", 6, seed=attempt * 100), _folder(tmp_path / f"b{attempt}", 6, seed=attempt * 100 + 50)]
        code = "import sys, lakeimg; lakeimg.Lake(sys.argv[1]).ingest([sys.argv[2]], workers=0)"
        procs = [subprocess.Popen([sys.executable, "-c", code, lake, str(f)], cwd=str(ROOT), stderr=subprocess.PIPE, text=True)
                 for f in folders]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        _assert_whole(Lake(lake), folders)
        assert os.path.isdir(os.path.join(lake, "_lakeimg", "runs"))
