"""Everyday CLI use (issue 15): one exit-code table, finding your way around a lake (`tables`,
`info`, SHOW TABLES, `@latest`, `lakeimg_runs`), LAKEIMG_LAKE, --quiet/--verbose, progress
when stderr is no terminal, --json failures, Spark's interpreter and --dry-run.

One small lake (4 PNGs, a derived table, a training set) is shared by the module; commands run
in-process through `main` (cheap) unless the environment or stderr must differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cli_runs import ROOT
from PIL import Image

from lakeimg import Lake
from lakeimg.cli import main
from lakeimg.engine.spark import local_python_conf


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    base = tmp_path_factory.mktemp("everyday")
    src = base / "src" / "cats"
    src.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(src / f"{i}.png")
    lake = Lake(base / "lake")
    lake.ingest([str(base / "src")], workers=0, label_from_path="parent")
    lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 8}]}, workers=0)
    lake.create_training_set("cats-v1", "small", splits="train=0.5,test=0.5", seed=1)
    lake.src = str(base / "src")  # type: ignore[attr-defined]
    return lake


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lakeimg.cli", *args], capture_output=True, text=True, env=full,
                          cwd=str(ROOT), timeout=300)


# --- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["trainset", "show", "nope"], 5, "no training set named 'nope'"),
        (["lineage", "trainset:nope"], 5, "training sets: cats-v1"),
        (["sql", "SELECT * FROM images TIMESTAMP AS OF 'garbage'"], 2, "not a version or an ISO timestamp: 'garbage'"),
        (["region", "/nowhere.png", "0", "0", "4", "4", "--out", "OUT.png"], 5, "is not in images"),
        (["region", "SRC", "0", "0", "400", "4", "--out", "OUT.png"], 2, "runs past the edge"),
        (["region", "SRC", "0", "0", "4", "4", "--page", "3", "--out", "OUT.png"], 2, "page 3 does not exist"),
        (["region", "SRC", "0", "0", "4"], 2, "region: the following arguments are required"),
        (["sql", "SELECT * FROM imgaes"], 5, "(tables: images, images_rejects, small, small_rejects, lakeimg_runs)"),
        (["history", "imgaes"], 5, "(tables: images, images_rejects, small, small_rejects, lakeimg_runs)"),
        (["info", "imgaes@latest"], 5, "(tables: images, images_rejects, small, small_rejects, lakeimg_runs)"),
        (["export", "images@99", "--out", "OUT"], 5, "images@99: no such version (latest: "),
        (["tables", "--log-level", "nonsense"], 2, "argument --log-level: invalid choice"),  # argparse's own, as JSON too
    ],
)
def test_every_command_follows_the_exit_code_table(lake, capsys, tmp_path, args, code, words):
    src = os.path.join(lake.src, "cats", "0.png")
    args = [a.replace("OUT", str(tmp_path / "w")).replace("SRC", src) for a in args]
    as_json = ["--json"] if args[0] != "region" else []  # region writes a file, it has no --json
    try:
        done, out, err = _cli(capsys, *args, "--lake", lake.path, *as_json)
    except SystemExit as exc:  # argparse's own errors
        done, captured = exc.code, capsys.readouterr()
        out, err = captured.out, captured.err
    assert done == code, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("lakeimg: error: ") and words in line, err
    assert not line.startswith("lakeimg: error: lakeimg ")
    if as_json:
        failure = json.loads(out.strip().splitlines()[-1])  # --json: one JSON object for the failure too
        assert failure["exit_code"] == code and failure["error"] == line.removeprefix("lakeimg: error: ")
        assert failure["error_class"]


# --- finding your way around a lake ----------------------------------------------------------


def test_tables_lists_kinds_rows_versions_and_sizes(lake, capsys):
    code, out, _ = _cli(capsys, "tables", "--lake", lake.path, "--json")
    assert code == 0
    tables = {t["name"]: t for t in json.loads(out)["tables"]}
    assert {n: t["kind"] for n, t in tables.items()} == {
        "images": "images", "images_rejects": "rejects", "small": "derived", "small_rejects": "rejects",
        "lakeimg_runs": "runs", "trainset:cats-v1": "training set",
    }
    assert tables["images"]["rows"] == 4 and tables["small"]["rows"] == 4 and tables["lakeimg_runs"]["rows"] == 3
    assert tables["images"]["version"] == lake.version("images") and tables["images"]["size_bytes"] > 0
    assert tables["images"]["last_change"].startswith("20") and tables["trainset:cats-v1"]["rows"] == 4
    code, out, _ = _cli(capsys, "tables", "--lake", lake.path)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["table", "kind", "rows"]


def test_info_shows_schema_versions_properties_and_lineage(lake, capsys):
    code, out, _ = _cli(capsys, "info", "--lake", lake.path, "small@latest", "--json")
    assert code == 0
    info = json.loads(out)
    assert (info["name"], info["kind"], info["rows"], info["version"]) == ("small", "derived", 4, lake.version("small"))
    assert {"uri", "variant", "data"} <= {c["name"] for c in info["schema"]}
    assert info["properties"]["delta.enableChangeDataFeed"] == "true"
    assert info["versions"][0]["job"] == "transform" and info["readable_versions"][-1] == info["version"]
    assert info["lineage"][0].startswith("small@") and "images@" in info["lineage"][1]
    code, out, _ = _cli(capsys, "info", "--lake", lake.path, "lakeimg_runs")
    assert code == 0 and out.startswith("lakeimg_runs@") and "(runs;" in out


def test_show_tables_and_information_schema_in_sql(lake, capsys):
    code, out, _ = _cli(capsys, "sql", "--lake", lake.path, "--json", "SHOW TABLES")
    assert code == 0
    assert [r["name"] for r in json.loads(out)] == ["images", "images_rejects", "lakeimg_runs", "small", "small_rejects"]
    query = "SELECT table_name FROM information_schema.tables ORDER BY table_name"
    code, out, _ = _cli(capsys, "sql", "--lake", lake.path, "--json", query)
    assert code == 0 and [r["table_name"] for r in json.loads(out)] == ["images", "images_rejects", "lakeimg_runs", "small", "small_rejects"]
    # the guard stays strict: a catalog query still reaches no file
    code, _, err = _cli(capsys, "sql", "--lake", lake.path, "SELECT * FROM information_schema.tables, read_blob('/etc/hostname')")
    assert code == 2 and "SQL refused" in err


def test_latest_and_lakeimg_runs_work_everywhere(lake, capsys, tmp_path):
    assert _cli(capsys, "verify", "--lake", lake.path, "images@latest")[0] == 0
    assert _cli(capsys, "lineage", "--lake", lake.path, "small@latest")[0] == 0
    assert _cli(capsys, "history", "--lake", lake.path, "images@latest")[0] == 0
    assert _cli(capsys, "export", "--lake", lake.path, "small@latest", "--out", str(tmp_path / "x"))[0] == 0
    code, out, _ = _cli(capsys, "history", "--lake", lake.path, "lakeimg_runs", "--json")
    assert code == 0 and json.loads(out)["table"] == "lakeimg_runs" and len(json.loads(out)["versions"]) >= 3
    assert lake.read("lakeimg_runs", columns=["job"]).num_rows == 3


# --- environment, noise and progress ---------------------------------------------------------


def test_default_lake_from_the_environment_and_lake_wins(lake, tmp_path):
    done = _subprocess("tables", "--json", env={"LAKEIMG_LAKE": lake.path})
    assert done.returncode == 0 and {t["name"] for t in json.loads(done.stdout)["tables"]} >= {"images", "small"}
    done = _subprocess("tables", "--json", "--lake", str(tmp_path / "nope"), env={"LAKEIMG_LAKE": lake.path})
    assert done.returncode == 5 and "no lake at" in done.stderr
    done = _subprocess("tables", env={"LAKEIMG_LAKE": ""})
    assert done.returncode == 2 and "--lake (or set LAKEIMG_LAKE)" in done.stderr


def _leaf_commands(parser, path=()):
    import argparse

    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield path, parser
    for action in nested:
        for name, sub in action.choices.items():
            yield from _leaf_commands(sub, (*path, name))


def test_every_command_takes_quiet_verbose_and_log_level(lake, capsys):
    import logging

    from lakeimg.cli import build_parser

    commands = dict(_leaf_commands(build_parser()))
    assert len(commands) >= 18 and ("trainset", "create") in commands
    for path, parser in commands.items():
        assert {"--quiet", "-q", "--verbose", "-v", "--log-level"} <= set(parser._option_string_actions), path
    root = logging.getLogger()
    try:
        for options, level in ((["--log-level", "debug"], logging.DEBUG), (["--verbose"], logging.INFO), ([], logging.WARNING)):
            assert _cli(capsys, "tables", "--lake", lake.path, *options)[0] == 0
            assert root.level == level, options
    finally:
        root.setLevel(logging.WARNING)


def test_progress_lines_when_stderr_is_no_terminal_and_quiet(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(src / f"{i}.png")
    env = {"LAKEIMG_PROGRESS_SECONDS": "0"}
    done = _subprocess("ingest", str(src), "--lake", str(tmp_path / "lake"), "--workers", "0", env=env)
    assert done.returncode == 0, done.stderr
    assert "lakeimg: decoding: 3/3 files (100 %)" in done.stderr.splitlines()
    done = _subprocess("export", "images", "--lake", str(tmp_path / "lake"), "--out", str(tmp_path / "out"), "--quiet", env=env)
    assert done.returncode == 0 and done.stderr == ""
    done = _subprocess("transform", "--lake", str(tmp_path / "lake"), "--target", "t", "--workers", "0", "-q",
                       "--spec", '{"ops": [{"op": "resize", "width": 4, "height": 4}]}', env=env)
    assert done.returncode == 0 and done.stderr == ""
    done = _subprocess("tables", "--lake", str(tmp_path / "lake"), "--log-level", "nonsense")
    assert done.returncode == 2


def test_every_long_command_reports_progress_when_stderr_is_no_terminal(tmp_path, capsys, monkeypatch):
    """ingest, transform, export, reproduce, maintain and trainset create each leave lines on
    stderr for a log (counts where there are counts, else a heartbeat and its last line)."""
    src = tmp_path / "src" / "cats"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(src / f"{i}.png")
    monkeypatch.setenv("LAKEIMG_PROGRESS_SECONDS", "0")
    lake = str(tmp_path / "lake")
    runs = {
        "lakeimg: decoding: 3/3 files (100 %)": ["ingest", str(tmp_path / "src"), "--workers", "0", "--label-from-path", "parent"],
        "lakeimg: transforming: 3/3 rows (100 %)": ["transform", "--target", "t", "--workers", "0",
                                                    "--spec", '{"ops": [{"op": "resize", "width": 4, "height": 4}]}'],
        "lakeimg: exporting: done in ": ["export", "t", "--out", str(tmp_path / "out")],
        "lakeimg: reproducing: done in ": ["reproduce", "t@latest", "--workers", "0"],
        "lakeimg: maintaining: done in ": ["maintain", "--optimize"],
        "lakeimg: creating training set: done in ": ["trainset", "create", "--name", "s", "--table", "t@latest", "--seed", "1"],
    }
    for line, args in runs.items():
        code, _, err = _cli(capsys, *args, "--lake", lake)
        assert code == 0 and any(e.startswith(line) for e in err.splitlines()), (args, err)
    assert _cli(capsys, "maintain", "--optimize", "--lake", lake, "--quiet")[2] == ""


def test_progress_of_a_huge_image_counts_tiles(tmp_path, capsys, monkeypatch):
    """A tiled image reports its tiles (all levels, known up front), not one file."""
    import tifffile

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "big.tif", rng.integers(0, 255, (1024, 1024), np.uint8), tile=(64, 64))
    monkeypatch.setenv("LAKEIMG_PROGRESS_SECONDS", "0")
    code, _, err = _cli(capsys, "ingest", str(src), "--lake", str(tmp_path / "lake"), "--workers", "0",
                        "--tile-above-pixels", "100000", "--tile-size", "64")
    assert code == 0, err
    # 16 x 16 + 8 x 8 + 4 x 4 + 2 x 2 + 1 tiles, cut as two shares of 8 tile rows and a top task
    tiles = [line for line in err.splitlines() if line.startswith("lakeimg: tiling: ")]
    assert tiles == ["lakeimg: tiling: 170/341 tiles (49 %)", "lakeimg: tiling: 340/341 tiles (99 %)",
                     "lakeimg: tiling: 341/341 tiles (100 %)"], err
    assert "lakeimg: decoding: 1/1 files (100 %)" in err.splitlines()
    assert Lake(tmp_path / "lake").read("images_tiles", columns=["level"]).num_rows == 341


def test_heartbeat_prints_while_work_runs(capsys, monkeypatch):
    import threading

    from lakeimg.commands._common import heartbeat

    monkeypatch.setenv("LAKEIMG_PROGRESS_SECONDS", "0.01")
    beat = threading.Event()
    real_print = print

    def spy(*args, **kwargs):
        beat.set()
        real_print(*args, **kwargs)

    monkeypatch.setattr("builtins.print", spy)
    with heartbeat("exporting", True):
        assert beat.wait(30)  # waits for the first line, whatever the machine's load
    assert "lakeimg: exporting: running for" in capsys.readouterr().err


# --- Spark's interpreter -----------------------------------------------------------------------


def test_local_spark_workers_run_this_interpreter(monkeypatch):
    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_DRIVER_PYTHON", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert local_python_conf("local[2]") == {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable}
    assert local_python_conf(None)["spark.pyspark.python"] == sys.executable
    assert local_python_conf("spark://host:7077") == {}
    assert local_python_conf("local[2]", [("spark.pyspark.python", "/opt/py/bin/python")]) == {}
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/py/bin/python")
    assert local_python_conf("local[2]") == {}
    from lakeimg.engine.spark import spark_session_builder

    monkeypatch.delenv("PYSPARK_PYTHON")
    options = spark_session_builder("local[1]")._options  # the builder only: no JVM starts
    assert options["spark.pyspark.python"] == sys.executable
    options = spark_session_builder("local[1]", ["spark.pyspark.python=/opt/py/bin/python"])._options
    assert options["spark.pyspark.python"] == "/opt/py/bin/python"


# --- dry runs ------------------------------------------------------------------------------------


def test_dry_runs_count_and_commit_nothing(lake, capsys, tmp_path):
    versions = {t: lake.version(t) for t in ("images", "images_rejects", "small", "lakeimg_runs")}
    extra = os.path.join(lake.src, "cats", "new.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(extra)
    try:
        code, out, _ = _cli(capsys, "ingest", lake.src, "--lake", lake.path, "--dry-run", "--json")
        assert code == 0
        assert {k: json.loads(out)[k] for k in ("dry_run", "add", "update", "delete", "unchanged")} == {
            "dry_run": True, "add": 1, "update": 0, "delete": 0, "unchanged": 4}
        spec = '{"ops": [{"op": "resize", "width": 6, "height": 6}]}'
        code, out, _ = _cli(capsys, "transform", "--lake", lake.path, "--target", "small", "--spec", spec, "--dry-run", "--json")
        assert code == 0
        plan = json.loads(out)
        assert (plan["mode"], plan["add"], plan["update"], plan["delete"]) == ("spec_change", 0, 4, 0)
        code, out, _ = _cli(capsys, "ingest", lake.src, "--lake", str(tmp_path / "fresh"), "--dry-run")
        assert code == 0 and "would add 5" in out and "nothing committed" in out
    finally:
        os.remove(extra)
    assert {t: lake.version(t) for t in versions} == versions  # no commit, no runs row
    assert not (tmp_path / "fresh").exists()
    assert not os.listdir(os.path.join(lake.path, "_lakeimg", "staging")) if os.path.isdir(
        os.path.join(lake.path, "_lakeimg", "staging")) else True


def test_quiet_spark_sends_the_jvms_output_to_a_log(tmp_path, capfd):
    """What a JVM started inside `jvm_output_to` writes (Ivy, log4j) lands in the log, for its
    whole life; Python's own stdout and stderr come back after the block."""
    from lakeimg.engine.spark import jvm_output_to

    log = tmp_path / "spark.log"
    with jvm_output_to(str(log)):
        child = subprocess.Popen(["sh", "-c", "echo ivy-report >&2; echo log4j-line; read _; echo later >&2"],
                                 stdin=subprocess.PIPE)
    print("python-out")
    print("python-err", file=sys.stderr)
    child.communicate(b"\n", timeout=60)  # the child writes again after the block ended
    out = capfd.readouterr()
    assert out.out == "python-out\n" and out.err == "python-err\n"
    assert log.read_text().split() == ["ivy-report", "log4j-line", "later"]


@pytest.mark.spark
@pytest.mark.slow  # a JVM of its own (~1 min): the CLI builds its Spark session
def test_cli_on_spark_prints_only_its_own_lines(lake):
    """`lakeimg sql --engine spark` end to end: SHOW TABLES answers the lake's tables, and
    stderr holds no Ivy report or log4j line (they go to a log file)."""
    conf = ["spark.ui.enabled=false", "spark.driver.host=127.0.0.1", "spark.driver.bindAddress=127.0.0.1",
            "spark.sql.shuffle.partitions=2", "spark.databricks.delta.snapshotPartitions=2"]
    done = _subprocess("sql", "--lake", lake.path, "--engine", "spark", "--master", "local[1]", "--json",
                       *[a for c in conf for a in ("--spark-conf", c)], "SHOW TABLES")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["name"] for r in json.loads(done.stdout)] == ["images", "images_rejects", "lakeimg_runs", "small", "small_rejects"]
    assert [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("lakeimg: ")] == [], done.stderr
