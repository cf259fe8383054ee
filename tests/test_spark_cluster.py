"""A real Spark standalone cluster: a master and one worker on 127.0.0.1, started from the
installed pyspark's own `spark-class`, an ingest against `spark://127.0.0.1:PORT` through the
CLI, the tables checked with the embedded engine, and both processes stopped, also on failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from object_stores import stop_process

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    spark_class = _spark_home() / "bin" / "spark-class"
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([str(spark_class), *args], stdout=handle, stderr=subprocess.STDOUT, env=env)
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, timeout_s=30)
    proc.log_handle.close()  # type: ignore[attr-defined]


def _wait_for_worker(ui_port: int, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"a cluster process exited early ({proc.args[1]})"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
                state = json.load(response)
            if state.get("aliveworkers", 0) >= 1:
                return
        except (OSError, ValueError):  # not listening yet, or a starting UI's empty answer
            pass
        time.sleep(1)
    raise AssertionError("the worker did not register with the master in time")


def test_ingest_on_standalone_cluster(tmp_path):
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.samples import write_broken_files, write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src, 4, width=96, height=64)
    write_broken_files(src / "broken")
    lake = tmp_path / "lake"

    env = {**os.environ, "SPARK_HOME": str(_spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_NO_DAEMONIZE": "1", "PYSPARK_PYTHON": sys.executable}
    master_port, master_ui, worker_ui = _free_port(), _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port),
                             "--webui-port", str(master_ui)], tmp_path / "master.log", env))
        procs.append(_start(["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                             "--cores", "1", "--memory", "1g", "--webui-port", str(worker_ui),
                             "--work-dir", str(tmp_path / "work")], tmp_path / "worker.log", env))
        _wait_for_worker(master_ui, procs)

        conf = ["spark.ui.enabled=false", "spark.driver.host=127.0.0.1", "spark.driver.bindAddress=127.0.0.1",
                "spark.executor.memory=512m", "spark.executor.cores=1", "spark.sql.shuffle.partitions=2",
                "spark.databricks.delta.snapshotPartitions=2",
                f"spark.pyspark.python={sys.executable}"]
        command = [sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", str(lake), "--json",
                   "--engine", "spark", "--master", master_url]
        for item in conf:
            command += ["--spark-conf", item]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=str(ROOT), env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert (summary["added"], summary["rejected"], summary["unchanged"]) == (4, 7, 0)

        # The executors really ran on the worker: it logged an application.
        assert any((tmp_path / "work").iterdir())
        local = LocalEngine(str(lake))
        images = local.read("images")
        assert images.num_rows == 4 and set(images["width"].to_pylist()) == {96}
        assert all(images["thumbnail"].to_pylist()) and all(images["content"].to_pylist())
        rejects = local.read("images_rejects")
        assert rejects.num_rows == 7 and "too_large" in rejects["error_class"].to_pylist()
        runs = local.read("_lakeimg/runs")
        assert runs["engine"].to_pylist() == ["spark"] and runs["run_id"].to_pylist() == [summary["run_id"]]
    finally:
        for proc in reversed(procs):
            _stop(proc)
    assert all(proc.poll() is not None for proc in procs)
