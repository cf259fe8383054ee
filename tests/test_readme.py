"""The README works as written: its `bash` and `python` blocks run in order (issue 15).

Conventions (in README.md's source, invisible on the rendered page):

- `<!-- readme-test: setup ...` followed by a python block and `-->`: runs first, creating the
  sample folders the examples read.
- `<!-- readme-test: skip REASON -->` on the line before a block: not run (installs, Spark
  clusters, cloud stores); REASON is required, and the set is kept small (`MAX_SKIPPED`).

Every block runs in one temp folder (its cwd), with the absolute example paths `/lakes/...`,
`/data/...` and `/tmp/...` moved under it. Bash blocks run with `set -euo pipefail` and a
`lakeimg` on PATH that runs this checkout; python blocks run as plain script files (no
`if __name__ == "__main__":` guard), each on its own, as a reader would paste them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runs import ROOT

README = ROOT / "README.md"
MAX_SKIPPED = 12
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_SKIP = re.compile(r"<!-- readme-test: skip (\S.*?) -->\s*$")
_SETUP = re.compile(r"<!-- readme-test: setup\b[^\n]*\s*$")
_PATHS = re.compile(r"(?<![\w.:/-])/(lakes|data|tmp)/")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    role: str  # "run", "setup" or "skip"
    reason: str = ""


def readme_blocks(text: str) -> list[Block]:
    """The README's bash and python blocks in order, with their role."""
    blocks = []
    for match in _FENCE.finditer(text):
        language = match.group(1)
        if language not in ("bash", "python"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        skip = _SKIP.search(before)
        role = "setup" if _SETUP.search(before) else "skip" if skip else "run"
        blocks.append(Block(line, language, match.group(2), role, skip.group(1) if skip else ""))
    return blocks


def test_readme_conventions_hold():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    skipped = [b for b in blocks if b.role == "skip"]
    assert [b.role for b in blocks].count("setup") == 1
    assert len(skipped) <= MAX_SKIPPED, [(b.line, b.reason) for b in skipped]
    assert all(len(b.reason) > 10 for b in skipped)
    assert sum(b.role == "run" for b in blocks) >= 12  # everything but installs, Spark and cloud stores


def _moved(code: str, root: Path) -> str:
    return _PATHS.sub(lambda m: f"{root}/{m.group(1)}/", code)


@pytest.mark.slow  # ~45 s of CPU: about 20 CLI runs (each a fresh interpreter), a demo, a reproduce
def test_readme_blocks_run_in_order(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "lakeimg").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lakeimg.cli "$@"\n')
    (shim / "lakeimg").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "LAKEIMG_PROGRESS_SECONDS": "60"}
    env.pop("LAKEIMG_LAKE", None)
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    ordered = [b for b in blocks if b.role == "setup"] + [b for b in blocks if b.role == "run"]
    for number, block in enumerate(ordered):
        code = _moved(block.code, tmp_path)
        if block.language == "bash":
            command = ["bash", "-c", "set -euo pipefail\n" + code]
        else:
            script = work / f"readme_block_{number}_line_{block.line}.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, str(script)]
        started = time.monotonic()
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        print(f"README.md line {block.line} ({block.language}): {time.monotonic() - started:.1f} s")  # pytest -s shows it
        assert done.returncode == 0, (
            f"README.md line {block.line} ({block.language}) exited {done.returncode}:\n{block.code}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
    assert (tmp_path / "lakes" / "main" / "cats_256").is_dir() and (work / "window.tif").is_file()


@pytest.mark.parametrize("text, expected", [
    ("lakeimg ingest /data/photos --lake /lakes/main", "lakeimg ingest R/data/photos --lake R/lakes/main"),
    ("s3://lakes/main file:///data/x /tmp/a", "s3://lakes/main file:///data/x R/tmp/a"),
])
def test_paths_are_moved_but_urls_are_not(text, expected):
    assert _moved(text, Path("R")) == expected
