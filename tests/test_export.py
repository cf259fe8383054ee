"""`lakeimg export`: files back out of derived and source tables, safe names, never outside DIR."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from cli_runs import run_cli
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.base import Write
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.image.codecs import encode_pixels, normalize_output
from lakeimg.jobs.export import export_table, safe_name
from lakeimg.samples import photo_like
from lakeimg.transform_spec import parse_spec

HOSTILE_URIS = [
    "file:///data/../../etc/passwd",
    "../../escape.png",
    "file:///x/..%2F..%2Fescape.png",
    "C:\\..\\..\\windows\\evil.png",
    "file:///tmp/.hidden",
    "s3://bucket/a/b/",
    "file:///data/%00nul.png",
    "/absolute/path/to/file.png",
]


def test_safe_names_are_single_components():
    names = [safe_name(uri, "png", 0) for uri in HOSTILE_URIS]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and ".." not in name.replace("-", " ").split()
        assert name == os.path.basename(name) and name.endswith("-v0.png")


def test_export_never_writes_outside_the_folder(tmp_path: Path):
    lake = tmp_path / "lake"
    engine = LocalEngine(str(lake))
    spec = parse_spec({"ops": [], "output": "raw"})
    image = np.linspace(0, 1, 12 * 10 * 3, dtype=np.float32).reshape(10, 12, 3)
    encoding, data = encode_pixels(image, normalize_output("raw"))
    rows = pa.Table.from_pylist(
        [
            {"uri": uri, "variant": 0, "source_sha256": None, "spec_hash": spec.spec_hash, "width": 12, "height": 10, "channels": 3,
             "dtype": "float32", "encoding": encoding, "data": data, "label": None, "run_id": "r"}
            for uri in HOSTILE_URIS
        ]
    )  # fmt: skip
    engine.commit(Write("hostile", spec.contract(), rows=rows))
    out = tmp_path / "out" / "inner"
    summary = export_table(lake, "hostile", out, fmt="jpeg")
    assert (summary["written"], summary["failed"]) == (len(HOSTILE_URIS), 0)
    everything = sorted(p for p in (tmp_path).rglob("*") if p.is_file() and "lake" not in p.parts and p.name != "metadata.csv")
    assert all(p.parent == out for p in everything) and len(everything) == len(HOSTILE_URIS)
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in everything)


def test_cli_export_derived_and_source_tables_at_versions(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    originals = {}
    for i in range(3):
        pixels = photo_like(20, 24, seed=i)
        Image.fromarray(pixels).save(src / f"p{i}.png")
        originals[f"p{i}"] = pixels
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    lake.transform("images", "gray", {"ops": [{"op": "color", "to": "gray"}], "output": "png"}, workers=0)
    lake.transform("images", "gray", {"ops": [{"op": "flip"}], "output": "png"}, workers=0)  # version 1
    out = tmp_path / "out"
    result = run_cli("export", "--lake", lake.path, "gray@0", "--out", str(out), "--format", "png", "--json")
    assert result.returncode == 0, result.stderr
    files = sorted(f for f in out.iterdir() if f.suffix == ".png")
    assert len(files) == 3 and all(np.asarray(Image.open(f)).ndim == 2 for f in files)  # version 0: gray
    source_out = tmp_path / "source_out"
    assert run_cli("export", "--lake", lake.path, "images", "--out", str(source_out), "--format", "tiff").returncode == 0
    import tifffile

    for f in source_out.glob("*.tif"):
        assert np.array_equal(tifffile.imread(f), originals[f.name.split("-")[0]])
    assert run_cli("export", "--lake", lake.path, "nope", "--out", str(out)).returncode == 5
