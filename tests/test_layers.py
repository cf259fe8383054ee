"""Layering: the import-linter contracts in pyproject.toml hold over the whole package, image
code and kernels never pull in Spark or Delta, and `import lakeimg` starts no JVM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"{statement}\n"
        "import json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'deltalake', 'delta', 'py4j'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import lakeimg.image",
        "import lakeimg.image.decode, lakeimg.image.dicom, lakeimg.image.display",
        "import lakeimg.kernels.ingest",
        "import lakeimg.samples",
    ],
)
def test_image_and_kernels_import_neither_spark_nor_delta(statement):
    assert _loaded_after(statement) == []


def test_import_lakeimg_does_not_import_pyspark():
    loaded = _loaded_after("import lakeimg; lakeimg.Lake")
    assert not [m for m in loaded if m.split(".")[0] in ("pyspark", "py4j", "delta")]


def test_decoding_a_file_loads_no_spark_or_delta():
    statement = (
        "import io, numpy as np\n"
        "from PIL import Image\n"
        "from lakeimg.kernels.ingest import ingest_one_file, IngestOptions\n"
        "from lakeimg.image import decode_image\n"
        "b = io.BytesIO(); Image.fromarray(np.zeros((4, 4), np.uint8)).save(b, 'PNG')\n"
        "assert decode_image(b.getvalue()).shape == (4, 4, 1)"
    )
    assert _loaded_after(statement) == []


@pytest.mark.layers
def test_import_linter_contracts_hold():
    """`lint-imports` (layers and forbidden imports, lazy imports included) over all of lakeimg."""
    command = shutil.which("lint-imports")
    assert command, "lint-imports is missing: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([command, "--no-cache"], capture_output=True, text=True, cwd=str(ROOT), env=env)
    assert out.returncode == 0, out.stdout[out.stdout.find("Broken contracts"):] + out.stderr
