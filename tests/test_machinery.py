"""Failures of the machinery are the run's, never a file's (issue 11, items 12 and 15): the pool
starts from a script without a main guard, from `python -c` and from stdin; a pool that cannot
run the kernel fails the run; spool and staging leftovers of killed processes are removed;
transient rejects are retried; SIGTERM ends the CLI like Ctrl-C. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from cli_runs import ROOT
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.pool import map_kernel
from lakeimg.engine.staging import claim_staging, remove_stale_staging

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _images(folder: Path, n: int, size: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


SCRIPT = """
import sys
import lakeimg
lake = lakeimg.Lake(sys.argv[1] if len(sys.argv) > 1 else {lake!r})
summary = lake.ingest([{src!r}], workers=2)
rows = lake.read("images", columns=["uri"]).num_rows
rejects = lake.read("images_rejects", columns=["uri"]).num_rows
print("RESULT", summary.added, summary.rejected, rows, rejects)
"""


@pytest.mark.parametrize("how", ["script", "stdin", "dash_c"])
def test_pool_starts_from_a_script_without_main_guard_stdin_and_dash_c(how, tmp_path):
    # Before: forkserver workers re-ran the script (or looked for a file named <stdin>), died
    # before their first task, and every file became a `corrupt` reject with exit 0.
    src = _images(tmp_path / "src", 10)
    lake = tmp_path / "lake"
    code = textwrap.dedent(SCRIPT.format(lake=str(lake), src=str(src)))
    script = tmp_path / "job.py"
    script.write_text(code)
    if how == "script":
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    elif how == "stdin":
        done = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    else:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert result == ["RESULT 10 0 10 0"], done.stdout + done.stderr[-3000:]


KERNEL_IN_MAIN = """
import pyarrow as pa
from lakeimg.engine.pool import map_kernel
from lakeimg.errors import PoolError

def double(batches):  # defined in __main__: workers, which never import __main__, cannot load it
    for b in batches:
        yield pa.RecordBatch.from_pydict({"x": [2 * v for v in b["x"].to_pylist()]})

failed = []
def on_failure(row, error_class, message):
    failed.append(error_class)
    return {"x": -1}

try:
    out = list(map_kernel(double, pa.table({"x": list(range(20))}), workers=2, batch_rows=3,
                          on_failure=on_failure, output_schema=pa.schema([("x", pa.int64())])))
    print("NO ERROR", len(out), failed)
except PoolError as exc:
    print("POOL ERROR", failed, str(exc)[:200])
"""


def test_a_pool_that_cannot_run_the_kernel_fails_instead_of_failing_every_row(tmp_path):
    done = subprocess.run([sys.executable, "-c", KERNEL_IN_MAIN], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("POOL ERROR [] "), done.stdout + done.stderr[-2000:]
    assert "__main__" in done.stdout


def doubling(batches):
    for b in batches:
        yield pa.RecordBatch.from_pydict({"x": [2 * v for v in b["x"].to_pylist()]})


def test_spool_folders_of_dead_processes_are_removed_and_own_ones_never_left(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"lakeimg-spool-{dead_pid}-abc"
    stale.mkdir()
    (stale / "inputs-0.arrow").write_bytes(b"x" * 100)
    live = tmp_path / f"lakeimg-spool-{os.getppid()}-def"  # a live process (pytest's parent)
    live.mkdir()
    out = pa.Table.from_batches(list(map_kernel(doubling, pa.table({"x": list(range(30))}), workers=2, batch_rows=4)))
    assert sorted(out["x"].to_pylist()) == [2 * x for x in range(30)]
    assert not stale.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lakeimg-spool-")) == [live.name]


def test_an_abandoned_map_removes_its_spool_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream = map_kernel(doubling, pa.table({"x": list(range(200))}), workers=2, batch_rows=2)
    next(stream)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("lakeimg-spool-")]
    stream.close()  # the consumer stopped (its own error, Ctrl-C)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lakeimg-spool-")]


HOLD_CLAIM = """
import sys, time, os
from lakeimg.engine.staging import claim_staging
claim = claim_staging(sys.argv[1], sys.argv[2])
os.makedirs(os.path.join(sys.argv[1], "_lakeimg", "staging", sys.argv[2] + "-rows", "images"), exist_ok=True)
print("ready", flush=True)
time.sleep(600)
"""


def test_staging_of_a_killed_run_is_removed_and_a_live_runs_is_kept(tmp_path):
    lake = tmp_path / "lake"
    procs = {}
    for run_id in ("aaaa1111", "bbbb2222"):
        procs[run_id] = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(lake), run_id], stdout=subprocess.PIPE, text=True, env=ENV)
        assert procs[run_id].stdout.readline().strip() == "ready"
    try:
        procs["aaaa1111"].send_signal(signal.SIGKILL)
        procs["aaaa1111"].wait()
        staging = lake / "_lakeimg" / "staging"
        removed = remove_stale_staging(str(lake))
        assert sorted(Path(p).name for p in removed) == ["aaaa1111-rows", "aaaa1111.lock"]
        assert (staging / "bbbb2222-rows" / "images").is_dir() and (staging / "bbbb2222.lock").exists()
        # Staging without any lock (a Spark run's, an older lakeimg's): removed once idle for the grace period.
        orphan = staging / "cccc3333"
        orphan.mkdir()
        (orphan / "part-0.parquet").write_bytes(b"x")
        assert remove_stale_staging(str(lake)) == []
        old = time.time() - 25 * 3600
        os.utime(orphan / "part-0.parquet", (old, old))
        os.utime(orphan, (old, old))
        assert [Path(p).name for p in remove_stale_staging(str(lake))] == ["cccc3333"]
    finally:
        procs["bbbb2222"].kill()
        procs["bbbb2222"].wait()


def test_an_ingest_removes_the_staging_a_killed_run_left(tmp_path):
    src = _images(tmp_path / "src", 3)
    lake = tmp_path / "lake"
    Lake(lake).ingest([str(src)], workers=0)
    killed = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(lake), "dddd4444"], stdout=subprocess.PIPE, text=True, env=ENV)
    assert killed.stdout.readline().strip() == "ready"
    killed.kill()
    killed.wait()
    assert (lake / "_lakeimg" / "staging" / "dddd4444-rows").is_dir()
    _images(tmp_path / "src", 4)
    Lake(lake).ingest([str(src)], workers=0)
    assert not (lake / "_lakeimg" / "staging").exists()


def test_claims_of_this_process_are_released(tmp_path):
    claim = claim_staging(str(tmp_path), "eeee5555")
    assert remove_stale_staging(str(tmp_path)) == []  # held: never removed
    claim.release()
    assert not (tmp_path / "_lakeimg" / "staging" / "eeee5555.lock").exists()


def _rejects(lake: Path) -> dict[str, tuple[str, str]]:
    rows = Lake(lake).read("images_rejects", columns=["uri", "error_class", "run_id"]).to_pylist()
    return {r["uri"].rsplit("/", 1)[-1]: (r["error_class"], r["run_id"]) for r in rows}


def test_transient_rejects_are_retried_and_retry_rejects_retries_all(tmp_path):
    src = _images(tmp_path / "src", 3)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (src / "x.crash").write_bytes(b"not an image at all")
    lake = tmp_path / "lake"
    first = Lake(lake).ingest([str(src)], workers=2, codecs=["lakeimg_test_codecs:CRASH"])
    assert first.added == 3 and first.rejected == 2
    before = _rejects(lake)
    assert before["x.crash"][0] == "decoder_crash" and before["bad.png"][0] != "decoder_crash"
    # The next run (the crashing reader gone) reads the decoder_crash file again, not the corrupt one.
    second = Lake(lake).ingest([str(src)], workers=0)
    after = _rejects(lake)
    assert after["x.crash"][0] != "decoder_crash" and after["x.crash"][1] == second.run_id
    assert after["bad.png"] == before["bad.png"]
    assert second.unchanged == 4
    # --retry-rejects reads every rejected file again.
    third = Lake(lake).ingest([str(src)], workers=0, retry_rejects=True)
    assert {name: run for name, (_, run) in _rejects(lake).items()} == {"bad.png": third.run_id, "x.crash": third.run_id}
    assert third.unchanged == 3


def test_cli_retry_rejects_flag(tmp_path):
    from cli_runs import run_cli

    src = _images(tmp_path / "src", 2)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    lake = tmp_path / "lake"
    assert run_cli("ingest", str(src), "--lake", str(lake), "--workers", "0").returncode == 0
    again = run_cli("ingest", str(src), "--lake", str(lake), "--workers", "0", "--retry-rejects", "--json")
    assert again.returncode == 0, again.stderr
    assert '"unchanged": 2' in again.stdout and '"rejected": 1' in again.stdout


def _limit_file_size(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_spool_or_staging_write_failure_fails_the_transform_and_keeps_the_table(tmp_path):
    # Before: a broken pool turned every row into a reject and the derived table was replaced by
    # an empty one with exit 0. A failed write in the machinery now fails the run.
    src = _images(tmp_path / "src", 24, size=160)
    lake = tmp_path / "lake"
    Lake(lake).ingest([str(src)], workers=0)
    spec1 = '{"ops": [{"op": "resize", "width": 96, "height": 96}], "output": {"encoding": "raw"}}'
    spec2 = '{"ops": [{"op": "resize", "width": 120, "height": 120}], "output": {"encoding": "raw"}}'
    cli = [sys.executable, "-m", "lakeimg.cli", "transform", "--lake", str(lake), "--target", "small", "--workers", "2"]
    ok = subprocess.run([*cli, "--spec", spec1], capture_output=True, text=True, env=ENV, timeout=300)
    assert ok.returncode == 0, ok.stderr
    version = Lake(lake).version("small")
    failed = subprocess.run([*cli, "--spec", spec2], capture_output=True, text=True, env=ENV, timeout=300,
                            preexec_fn=_limit_file_size(40_000))
    assert failed.returncode not in (0, 130), failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lakeimg: error: "), failed.stderr[-2000:]
    assert Lake(lake).version("small") == version
    rows = Lake(lake).read("small", columns=["uri", "width"])
    assert rows.num_rows == 24 and set(rows["width"].to_pylist()) == {96}


def test_sigterm_ends_the_cli_like_ctrl_c(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.sleep").write_bytes(b"z")
    lake = tmp_path / "lake"
    sleepers = tmp_path / "sleepers"
    sleepers.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", str(lake), "--workers", "2",
         "--codec", "lakeimg_test_codecs:SLEEP", "--file-timeout", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "LAKEIMG_TEST_SLEEPERS": str(sleepers)},
    )
    # Signal once both workers are in their hanging reads: a worker still being started while the
    # pool stops prints the forkserver's own traceback, which is not what this test is about.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(sleepers.iterdir())) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert len(list(sleepers.iterdir())) == 2, proc.communicate(timeout=60)[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["lakeimg: interrupted"], err[-2000:]
