"""Layering: image code and kernels never pull in Spark or Delta; `import lakeimg` starts no JVM."""

from __future__ import annotations

import ast
import json
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


def test_image_package_source_never_imports_spark_or_delta():
    """Also lazily: no function inside lakeimg/image imports them."""
    offenders = []
    for path in sorted((ROOT / "lakeimg" / "image").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("pyspark", "deltalake", "delta", "lakeimg.engine")]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("lakeimg.engine", "lakeimg.jobs", "lakeimg.catalog"))]
    assert offenders == []
