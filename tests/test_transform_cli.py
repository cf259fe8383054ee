"""`lakeimg transform` and the CDF read path through the CLI: JSON summary, exit codes, and
exit status 0 on every one of 20 runs that read the change data feed (delta-rs #2184 guard)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.samples import photo_like

SPEC = {"ops": [{"op": "resize", "width": 8, "height": 8}, {"op": "mean_std"}], "output": {"encoding": "png"}}


def make_lake(tmp_path: Path, count: int = 2) -> tuple[Lake, Path]:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        Image.fromarray(photo_like(16, 16, seed=i)).save(src / f"img{i}.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    return lake, src


def test_cli_transform_json_summary_and_exit_codes(tmp_path: Path):
    lake, _ = make_lake(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    result = run_cli("transform", "--lake", lake.path, "--target", "small", "--spec", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("added", "updated", "unchanged", "deleted", "rejected", "version", "run_id", "seconds"):
        assert key in summary
    assert (summary["added"], summary["version"], summary["table"]) == (2, 0, "small")
    assert run_cli("transform", "--lake", lake.path, "--source", "nope", "--target", "x", "--spec", str(spec)).returncode == 5
    bad = run_cli("transform", "--lake", lake.path, "--target", "x", "--spec", '{"ops": [{"op": "nope"}]}')
    assert bad.returncode == 2 and "unknown op" in bad.stderr
    assert run_cli("transform", "--lake", lake.path, "--target", "x", "--spec", str(tmp_path / "missing.json")).returncode == 2


@pytest.mark.slow  # 20 transform CLI processes
def test_cdf_reading_cli_exits_cleanly_every_time(tmp_path: Path):
    lake, src = make_lake(tmp_path)
    targets = [f"t{i}" for i in range(20)]
    for name in targets:
        lake.transform("images", name, SPEC, workers=0)
    Image.fromarray(photo_like(16, 16, seed=99)).save(src / "img0.png")  # one changed source row
    lake.ingest([str(src)], workers=0)
    codes, modes = [], []
    for name in targets:  # each target is one source version behind: every run reads the change feed
        result = run_cli("transform", "--lake", lake.path, "--target", name, "--spec", json.dumps(SPEC), "--json", "--workers", "0")
        codes.append(result.returncode)
        if result.returncode == 0:
            modes.append(json.loads(result.stdout.strip().splitlines()[-1])["mode"])
    assert codes == [0] * 20
    assert modes == ["incremental"] * 20
