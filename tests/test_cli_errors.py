"""Every CLI failure is one line `lakeimg: error: ...` with its documented exit code, never a
traceback, and a mistyped --lake creates nothing (issue 11, items 13 and 14)."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake

_PROGRESS = re.compile(r"^lakeimg: [\w -]+: (\d+/\d+ |running for |done in )")


def _one_error_line(done) -> str:
    """The one error line on stderr (progress lines, printed when stderr is no terminal, aside)."""
    lines = [line for line in done.stderr.strip().splitlines() if not _PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("lakeimg: error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture
def lake(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(src / f"{i}.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    (src / "4.png").write_bytes((src / "0.png").read_bytes())
    lake.ingest([str(src)], workers=0)  # version 1 of images
    return lake


@pytest.mark.parametrize(
    "command",
    [
        ["maintain"],
        ["maintain", "--optimize", "--vacuum-hours", "0"],
        ["trainset", "list"],
        ["trainset", "show", "x"],
        ["transform", "--target", "small", "--spec", '{"ops": [{"op": "resize", "width": 8, "height": 8}]}'],
        ["history", "images"],
        ["lineage", "images"],
        ["sql", "SELECT 1"],
        ["export", "images", "--out", "OUT"],
    ],
)
def test_a_mistyped_lake_is_never_created(command, tmp_path):
    missing = tmp_path / "lkae"
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    done = run_cli(*args[:1], *args[1:], "--lake", str(missing)) if args[0] != "trainset" else run_cli(
        *args, "--lake", str(missing)
    )
    assert done.returncode == 5, done.stderr
    assert _one_error_line(done) == f"lakeimg: error: no lake at {missing}"
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_library_maintain_and_transform_need_a_lake(tmp_path):
    from lakeimg.errors import LakeNotFoundError

    with pytest.raises(LakeNotFoundError):
        Lake(tmp_path / "nope").maintain(vacuum_hours=0)
    with pytest.raises(LakeNotFoundError):
        Lake(tmp_path / "nope").transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 8}]})
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("ref", ["images@lastest", "images@", "@3", "images@-1", "images@yesterday"])
def test_malformed_table_references_are_usage_errors(lake, ref, tmp_path):
    for command in (["history", ref], ["export", ref, "--out", str(tmp_path / "o")], ["lineage", ref]):
        done = run_cli(*command, "--lake", lake.path)
        assert done.returncode == 2, (command, done.stderr)
        _one_error_line(done)


def test_bad_option_values_are_one_line_usage_errors(lake):
    done = run_cli("maintain", "--lake", lake.path, "--vacuum-hours", "-1")
    assert done.returncode == 2
    assert "--vacuum-hours" in _one_error_line(done)
    done = run_cli("transform", "--lake", lake.path, "--target", "images_rejects", "--spec", '{"ops": []}')
    assert done.returncode == 2
    _one_error_line(done)
    done = run_cli("ingest", "--lake", lake.path)  # no source
    assert done.returncode == 2
    _one_error_line(done)


def test_time_travel_before_the_first_version_is_an_error(lake, tmp_path):
    done = run_cli("export", "images@2000-01-01T00:00:00", "--lake", lake.path, "--out", str(tmp_path / "o"))
    assert done.returncode == 5
    assert "before the table's first" in _one_error_line(done)
    from lakeimg.errors import TableNotFoundError

    with pytest.raises(TableNotFoundError):
        lake.read("images", "2000-01-01T00:00:00", columns=["uri"])


def test_reading_a_vacuumed_version_names_the_readable_ones(lake, tmp_path):
    lake.maintain(optimize=True, vacuum_hours=0)  # compacts images into a new version, deletes old files
    latest = lake.version("images")
    done = run_cli("export", "images@0", "--lake", lake.path, "--out", str(tmp_path / "o"))
    assert done.returncode == 5, done.stderr
    line = _one_error_line(done)
    from lakeimg.catalog.maintenance import readable_versions

    readable = readable_versions(lake._local, "images")
    assert 0 not in readable and latest in readable
    assert "vacuumed" in line and line.endswith(f"readable versions of images: {min(readable)}" + (f"-{latest}" if len(readable) > 1 else ""))


def test_a_missing_data_file_of_the_latest_version_is_damage(lake, tmp_path):
    files = lake._local.data_files("images")
    os.remove(files[0])
    done = run_cli("export", "images", "--lake", lake.path, "--out", str(tmp_path / "o"))
    assert done.returncode == 8, done.stderr
    _one_error_line(done)


def test_a_full_disk_during_ingest_is_one_line_and_commits_nothing(tmp_path):
    import subprocess
    import sys

    from test_machinery import ENV, _images, _limit_file_size

    src = _images(tmp_path / "src", 12, size=200)
    lake = tmp_path / "lake"
    done = subprocess.run([sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", str(lake), "--workers", "2"],
                          capture_output=True, text=True, env=ENV, timeout=300, preexec_fn=_limit_file_size(30_000))
    assert done.returncode == 4, done.stderr[-3000:]
    assert "File too large" in _one_error_line(done) or "cannot write" in done.stderr
    assert Lake(lake).version("images") is None


def test_debug_shows_the_traceback(tmp_path):
    done = run_cli("--debug", "history", "images", "--lake", str(tmp_path / "none"))
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_maintain_on_a_read_only_lake(lake):
    os.chmod(lake.path, 0o555)
    for root, dirs, _ in os.walk(lake.path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    try:
        done = run_cli("maintain", "--lake", lake.path, "--optimize")
        assert done.returncode == 4
        _one_error_line(done)
    finally:
        for root, dirs, _ in os.walk(lake.path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(lake.path, 0o755)


def test_sigterm_before_any_work_is_quiet(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import lakeimg.cli, time, sys; sys.argv=['lakeimg']; "
                             "import signal; print('ready', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGTERM  # outside main() the default stays: the handler is the CLI's only
