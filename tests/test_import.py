"""`import lakeimg` is cheap and leaves the importing process alone: public names load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lakeimg

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import json, sys
import lakeimg
loaded = sorted(m for m in ("cv2", "PIL", "pyspark", "py4j", "deltalake", "duckdb", "torch", "lakeimg.lake") if m in sys.modules)
print(json.dumps(loaded))
"""


def test_import_lakeimg_loads_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=str(ROOT), check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_every_public_name_resolves_and_unknown_names_raise():
    for name in lakeimg.__all__:
        assert getattr(lakeimg, name) is not None, name
    assert set(lakeimg.__all__) <= set(dir(lakeimg))
    try:
        lakeimg.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("lakeimg.NoSuchThing resolved")
