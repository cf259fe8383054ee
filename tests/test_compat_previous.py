"""Lakes written before the architecture redesign are read and merged into after it.

The code of `PREVIOUS` (the last commit before the redesign) is taken from this repository's own
history with `git archive`, writes a lake through its CLI (ingest with tiles and rejects, a
transform, a training set), and today's code then reads it, ingests into it, transforms into it
and verifies it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.samples import write_sample_folder

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS = "c5f3b0e"  # main before issue 12's redesign

pytestmark = pytest.mark.slow


def _previous_code(folder: Path) -> Path:
    """The package and table contracts of PREVIOUS, unpacked under `folder`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS, "lakeimg", "schemas"],
                             capture_output=True, check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _cli(code_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    return subprocess.run([sys.executable, "-m", "lakeimg.cli", *args], capture_output=True, text=True,
                          cwd=str(code_root), env=env, timeout=600)


def _ok(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else {}


def _png(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), np.uint8)).save(path)


def test_a_lake_written_by_the_previous_code_is_read_and_merged_into(tmp_path):
    old = _previous_code(tmp_path / "previous")
    src, lake_path = tmp_path / "src", tmp_path / "lake"
    write_sample_folder(src)
    for i in range(4):
        _png(src / f"extra{i}.png", i)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"ops": [{"op": "resize", "width": 16, "height": 16, "fit": "exact"}],
                                "output": {"encoding": "raw"}, "seed": 3}))
    ingest_args = ["ingest", str(src), "--lake", str(lake_path), "--tile-above-pixels", "20000", "--json"]

    first = _ok(_cli(old, *ingest_args))
    assert first["rejected"] >= 1
    _ok(_cli(old, "transform", "--lake", str(lake_path), "--source", "images", "--target", "small",
             "--spec", str(spec), "--json"))
    _ok(_cli(old, "trainset", "create", "--lake", str(lake_path), "--name", "set-1", "--table", "small",
             "--split", "train=0.5,val=0.5", "--seed", "7"))

    lake = Lake(str(lake_path))
    tiles_before = lake.read("images_tiles", columns=["uri", "level", "tile_row", "tile_col"]).num_rows
    assert tiles_before > 0
    before = {r["uri"]: r for r in lake.read("images", columns=["uri", "content_sha256", "ingested_at"]).to_pylist()}
    old_set = lake.training_set("set-1").rows("train").to_pylist()

    # Today's code: one file changed, one deleted, one added.
    _png(src / "extra0.png", 100)
    (src / "extra1.png").unlink()
    _png(src / "extra9.png", 9)
    second = _ok(_cli(ROOT, *ingest_args, "--sync-deletes"))
    assert (second["added"], second["updated"], second["deleted"]) == (1, 1, 1)
    assert lake.read("images_tiles", columns=["uri", "level", "tile_row", "tile_col"]).num_rows == tiles_before
    after = {r["uri"]: r for r in lake.read("images", columns=["uri", "content_sha256", "ingested_at"]).to_pylist()}
    assert set(after) == (set(before) - {(src / "extra1.png").as_uri()}) | {(src / "extra9.png").as_uri()}
    kept = set(before) & set(after) - {(src / "extra0.png").as_uri()}
    assert all(after[u] == before[u] for u in kept), "unchanged rows written by the previous code were rewritten"
    # images v2 added `decoder`: the table gained the column, new rows carry it, old rows read null
    decoders = {r["uri"]: r["decoder"] for r in lake.read("images", columns=["uri", "decoder", "tiled"]).to_pylist()
                if not r["tiled"]}
    assert decoders[(src / "extra9.png").as_uri()] == decoders[(src / "extra0.png").as_uri()] == "opencv"
    assert kept and all(decoders[u] is None for u in kept if u in decoders)
    assert "decoder" not in lake.read("images", version=0).column_names

    third = _ok(_cli(ROOT, "transform", "--lake", str(lake_path), "--source", "images", "--target", "small",
                     "--spec", str(spec), "--json"))
    assert (third["added"], third["updated"], third["deleted"]) == (1, 1, 1)
    small = lake.read("small", columns=["uri"])["uri"].to_pylist()
    assert sorted(small) == sorted(after)

    for table in ("images", "small"):
        assert _cli(ROOT, "verify", "--lake", str(lake_path), table).returncode == 0
    lineage = _ok(_cli(ROOT, "lineage", "--lake", str(lake_path), "small", "--json"))
    assert "ingest" in json.dumps(lineage) and "transform" in json.dumps(lineage)

    pinned = lake.training_set("set-1")
    assert pinned.rows("train").to_pylist() == old_set
    # The old lake mixes channel counts and dtypes (RGB photos, a 16-bit DICOM): a list of arrays.
    batch = next(iter(pinned.iter_numpy("train", batch_size=64, collate=list)))
    assert len(batch["uri"]) == len(old_set)
    assert all(np.asarray(image).shape[:2] == (16, 16) for image in batch["image"])
