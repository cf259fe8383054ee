"""Running this checkout's lakeimg CLI from tests: `ROOT` (the checkout) and `run_cli`.

A plain module rather than conftest.py: test modules import these names, and spawned decoding
workers import those test modules again, where `conftest` could be the repository root's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Spawned decoding workers must import the same lakeimg as the tests.
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYTHONPATH", str(ROOT))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the lakeimg CLI in a fresh interpreter; returns CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "lakeimg.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
    )
