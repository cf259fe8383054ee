"""Object-store lakes and sources on the embedded engine, against moto's real S3 server on
loopback (fixture `s3_server`): local -> S3 and S3 -> S3 ingest (globs, labels, rejects, tiles),
incremental merges of changed/new/deleted objects, transform + time travel, SQL, training sets,
maintenance, concurrent writers, a killed run, the three storage failures, and secrets that
never leave the options.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lakeimg import Lake
from lakeimg.engine.layout import staging_root

ROOT = Path(__file__).resolve().parents[1]
CANARY = "lakeimg-SECRET-canary-7f3a9d"  # a secret value that must never be printed or stored


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def _cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeimg.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env={**os.environ, **env})


def _keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """cats/ and dogs/ with 3 JPEGs each, one broken JPEG, and a 700 x 600 TIFF that tiles."""
    root = tmp_path / "photos"
    for i, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for j in range(3):
            (root / label / f"{label}{j}.jpg").write_bytes(_jpeg(10 * i + j))
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    big = np.random.default_rng(5).integers(0, 65535, (600, 700), dtype=np.uint16)
    tifffile.imwrite(root / "dogs" / "slide.tif", big, tile=(256, 256))
    return root


def test_local_sources_into_an_s3_lake_with_rejects_tiles_and_a_noop_rerun(s3_server, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a lake URL must never become a local folder named "s3:"
    bucket = s3_server.new_bucket()
    lake = Lake(f"s3://{bucket}/lake", storage_options=s3_server.storage_options)
    summary = lake.ingest([str(photos)], workers=2, label_from_path="parent", tile_above_pixels=100_000, tile_size=256)
    assert (summary.added, summary.rejected) == (7, 1)
    assert lake.tables() == ["images", "images_rejects", "images_tiles"]
    assert not (tmp_path / "s3:").exists()
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in lake.read("images", columns=["uri", "label", "tiled"]).to_pylist()}
    assert {name: r["label"] for name, r in rows.items()} == {
        **{f"cats{j}.jpg": "cats" for j in range(3)}, **{f"dogs{j}.jpg": "dogs" for j in range(3)}, "slide.tif": "dogs"}
    assert rows["slide.tif"]["tiled"] and not rows["cats0.jpg"]["tiled"]
    assert lake.read("images_rejects", columns=["uri"])["uri"].to_pylist()[0].endswith("/cats/broken.jpg")
    # Exact pixels of a window come back from the tiles on S3.
    slide = tifffile.imread(photos / "dogs" / "slide.tif")
    window = lake.read_region("images", (photos / "dogs" / "slide.tif").as_uri(), 200, 250, 300, 200)
    assert np.array_equal(window[..., 0], slide[250:450, 200:500])
    # Every table's files are objects in the bucket, under the table's prefix.
    keys = _keys(s3_server, bucket, "lake/")
    assert any(k.startswith("lake/images_tiles/part-") for k in keys)
    assert any(k.startswith("lake/images/_delta_log/") for k in keys)
    versions = {t: lake.version(t) for t in lake.tables()}
    again = lake.ingest([str(photos)], workers=2, label_from_path="parent", tile_above_pixels=100_000, tile_size=256)
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 8, 0)
    assert {t: lake.version(t) for t in lake.tables()} == versions  # no table got a new version
    # Nothing staged stays behind, locally or in the bucket.
    assert not os.path.exists(staging_root(lake.path)) or not os.listdir(staging_root(lake.path))
    referenced = {f.split("/", 3)[-1] for t in lake.tables() for f in lake._local.data_files(t)}
    assert {k for k in _keys(s3_server, bucket, "lake/") if k.endswith(".parquet") and "/_lakeimg/" not in k} == {
        k for k in referenced if "/_lakeimg/" not in k}


def test_s3_sources_by_glob_merge_changed_new_and_deleted_objects(s3_server, tmp_path):
    src, bucket = s3_server.new_bucket("src"), s3_server.new_bucket()
    client = s3_server.client()
    for label in ("cats", "dogs"):
        for j in range(3):
            client.put_object(Bucket=src, Key=f"scans/{label}/{j}.jpg", Body=_jpeg(hash((label, j)) % 1000))
    client.put_object(Bucket=src, Key="scans/cats/broken.jpg", Body=b"\xff\xd8 broken")
    client.put_object(Bucket=src, Key="scans/notes.txt", Body=b"not matched by the glob")
    client.put_object(Bucket=src, Key="other/cats/9.jpg", Body=_jpeg(99))  # outside the glob
    lake_url, glob = f"s3://{bucket}/lake", f"s3://{src}/scans/**/*.jpg"
    first = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--json", "--workers", "2",
                 env=s3_server.env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["added"], summary["rejected"]) == (6, 1)
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    labels = {r["uri"]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {f"s3://{src}/scans/{label}/{j}.jpg": label for label in ("cats", "dogs") for j in range(3)}
    same = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--json", env=s3_server.env)
    assert json.loads(same.stdout.strip().splitlines()[-1])["version"] == summary["version"]

    time.sleep(1.1)  # S3 modification times have 1 s resolution
    client.put_object(Bucket=src, Key="scans/cats/0.jpg", Body=_jpeg(500, size=(64, 48)))  # changed
    client.put_object(Bucket=src, Key="scans/dogs/new/3.jpg", Body=_jpeg(501))  # new, one folder deeper
    client.delete_object(Bucket=src, Key="scans/dogs/1.jpg")  # deleted
    merged = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--sync-deletes", "--json",
                  env=s3_server.env)
    assert merged.returncode == 0, merged.stderr
    result = json.loads(merged.stdout.strip().splitlines()[-1])
    assert (result["added"], result["updated"], result["deleted"], result["unchanged"]) == (1, 1, 1, 5)
    rows = lake.read("images", columns=["uri", "width"]).to_pylist()
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 6
    assert f"s3://{src}/scans/dogs/1.jpg" not in uris and f"s3://{src}/scans/dogs/new/3.jpg" in uris
    assert {r["uri"]: r["width"] for r in rows}[f"s3://{src}/scans/cats/0.jpg"] == 64


@pytest.fixture
def s3_lake(s3_server, tmp_path) -> Lake:
    photos = tmp_path / "photos"
    for i, label in enumerate(("cats", "dogs")):
        (photos / label).mkdir(parents=True)
        for j in range(5):
            (photos / label / f"{j}.jpg").write_bytes(_jpeg(50 * i + j, size=(32, 24)))
    lake = Lake(f"s3://{s3_server.new_bucket()}/lake", storage_options=s3_server.storage_options)
    lake.ingest([str(photos)], workers=0, label_from_path="parent")
    return lake


def test_transform_time_travel_sql_history_and_lineage_on_s3(s3_lake):
    first = s3_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0)
    assert first.added == 10
    second = s3_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 4, "height": 3}]}, workers=0)
    assert second.version == first.version + 1 and second.updated == 10
    assert set(s3_lake.read("small", first.version, columns=["width"])["width"].to_pylist()) == {8}
    assert set(s3_lake.read("small", columns=["width"])["width"].to_pylist()) == {4}
    rows = s3_lake.sql(f"SELECT max(width) AS w FROM small VERSION AS OF {first.version} "
                       "UNION ALL SELECT max(width) FROM small").to_pylist()
    assert [r["w"] for r in rows] == [8, 4]
    assert s3_lake.sql("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").to_pylist() == [
        {"label": "cats", "n": 5}, {"label": "dogs", "n": 5}]
    assert s3_lake.sql("SELECT count(*) AS n FROM lakeimg_runs").to_pylist() == [{"n": 3}]
    assert [v.job for v in s3_lake.versions("small")][:2] == ["transform", "transform"]
    assert [(s.table, s.job) for s in s3_lake.lineage("small", first.version)] == [("small", "transform"), ("images", "ingest")]


def test_training_set_on_s3_loads_each_sample_once_across_shards_and_maintain_keeps_it(s3_lake):
    ts = s3_lake.create_training_set("pets-v1", "images", splits="train=0.7,test=0.3", seed=3)
    train = set(ts.rows("train")["uri"].to_pylist())
    seen: list[str] = []
    for rank in range(2):
        for batch in ts.iter_numpy("train", batch_size=3, epoch=1, rank=rank, world_size=2):
            assert batch["image"].shape[1:] == (24, 32, 3)
            seen += batch["uri"]
    assert sorted(seen) == sorted(train) and len(seen) == len(set(seen))
    # A second ingest adds a file, optimize compacts, vacuum removes what nothing pins.
    report = s3_lake.maintain(optimize=True, vacuum_hours=0)
    assert not report.refused and report.pinned_sets_readable == {"pets-v1": True}
    again = [u for b in s3_lake.training_set("pets-v1").iter_numpy("train", batch_size=4) for u in b["uri"]]
    assert sorted(again) == sorted(train)


def _ingest_env(s3_server) -> dict[str, str]:
    return {**s3_server.env, "PYTHONPATH": str(ROOT)}


def test_two_concurrent_ingests_into_one_s3_table_both_commit(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    lake_url = f"s3://{bucket}/lake"
    folders = []
    for k in range(2):
        folder = tmp_path / f"batch{k}"
        folder.mkdir()
        for j in range(6):
            (folder / f"{k}-{j}.jpg").write_bytes(_jpeg(100 * k + j))
        folders.append(folder)
    procs = [subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "ingest", str(f), "--lake", lake_url, "--workers", "1",
                               "--json"], cwd=str(ROOT), env={**os.environ, **_ingest_env(s3_server)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in folders]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    uris = lake.read("images", columns=["uri"])["uri"].to_pylist()
    expected = sorted((f / name).as_uri() for f in folders for name in os.listdir(f))
    assert sorted(uris) == expected  # exact union, no duplicate uri
    runs = lake.read("_lakeimg/runs", columns=["status"])["status"].to_pylist()
    # Each run recorded its success (a run may also note the other, still committing, as incomplete).
    assert runs.count("succeeded") == 2


def test_a_run_killed_mid_run_leaves_every_table_readable_and_the_next_run_completes(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    lake_url = f"s3://{bucket}/lake"
    src = tmp_path / "src"
    src.mkdir()
    for j in range(4):
        (src / f"a{j}.jpg").write_bytes(_jpeg(j))
    assert _cli("ingest", str(src), "--lake", lake_url, env=s3_server.env).returncode == 0
    lake = Lake(lake_url, storage_options=s3_server.storage_options)
    before = lake.version("images")
    for j in range(4, 40):
        (src / f"a{j}.jpg").write_bytes(_jpeg(j, size=(400, 300)))
    proc = subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "ingest", str(src), "--lake", lake_url, "--workers", "1"],
                            cwd=str(ROOT), env={**os.environ, **_ingest_env(s3_server)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = staging_root(lake_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(staging) and any(not n.endswith(".lock") for n in os.listdir(staging)):
            break  # decoding has started: its output is being staged
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Every table reads whole at its latest version (the previous one unless a commit landed).
    assert lake.version("images") >= before
    assert len(lake.read("images", columns=["uri"])) in (4, 40)
    done = _cli("ingest", str(src), "--lake", lake_url, "--json", env=s3_server.env)
    assert done.returncode == 0, done.stderr
    uris = lake.read("images", columns=["uri"])["uri"].to_pylist()
    assert sorted(uris) == sorted(p.as_uri() for p in src.iterdir()) and len(set(uris)) == 40
    assert not os.path.isdir(staging) or not [n for n in os.listdir(staging) if not n.endswith(".lock")]
    # maintain's vacuum removes any object the killed run uploaded but never committed.
    assert _cli("maintain", "--lake", lake_url, "--vacuum-hours", "0", env=s3_server.env).returncode == 0
    referenced = {f.split("/", 3)[-1] for f in lake._local.data_files("images")}
    assert {k for k in _keys(s3_server, bucket, "lake/images/") if k.endswith(".parquet")} == referenced


def test_storage_failures_are_one_line_with_distinct_exit_codes_and_no_table(s3_server, tmp_path):
    from object_stores import free_port, moto_s3_server

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(1))
    codes = {}
    with moto_s3_server(authenticated=True) as guarded:
        bucket = guarded.new_bucket()
        wrong = dataclasses.replace(guarded, key_id="AKIAWRONGWRONGWRONG1", secret=CANARY)
        result = _cli("ingest", str(src), "--lake", f"s3://{bucket}/lake", env=wrong.env)
        codes["credentials"] = result
        assert _keys(guarded, bucket) == []  # nothing was written
    missing = _cli("ingest", str(src), "--lake", "s3://no-such-bucket-lakeimg/lake", env=s3_server.env)
    codes["bucket"] = missing
    unreachable = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    codes["endpoint"] = _cli("ingest", str(src), "--lake", f"s3://{s3_server.new_bucket()}/lake", env=unreachable)
    assert {k: r.returncode for k, r in codes.items()} == {"credentials": 10, "bucket": 5, "endpoint": 11}
    for result in codes.values():
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lakeimg: error: ") and "Traceback" not in result.stderr
        assert CANARY not in result.stderr + result.stdout
    # The same for a command that reads an existing lake, and a missing source bucket is exit 3.
    assert _cli("history", "images", "--lake", "s3://no-such-bucket-lakeimg/lake", env=s3_server.env).returncode == 5
    bad_source = _cli("ingest", "s3://no-such-bucket-lakeimg/x/*.jpg", "--lake", str(tmp_path / "lake"), env=s3_server.env)
    assert bad_source.returncode == 3, bad_source.stderr


def test_secrets_never_reach_tables_logs_lineage_or_output(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    lake_url = f"s3://{bucket}/lake"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(1))
    # moto accepts any secret: the canary is this run's real secret, given as an option.
    env = {k: v for k, v in s3_server.env.items() if k != "AWS_SECRET_ACCESS_KEY"}
    env["AWS_SECRET_ACCESS_KEY"] = "unused-env-secret"
    opt = ["--storage-option", f"AWS_SECRET_ACCESS_KEY={CANARY}"]
    outputs = [_cli("ingest", str(src), "--lake", lake_url, "--json", *opt, env=env),
               _cli("history", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("lineage", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("sql", "--lake", lake_url, "--json", *opt, "SELECT * FROM lakeimg_runs", env=env),
               _cli("history", "nosuchtable", "--lake", lake_url, *opt, env=env)]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 5], [o.stderr for o in outputs]
    assert all(CANARY not in o.stdout + o.stderr for o in outputs)
    client = s3_server.client()
    for key in _keys(s3_server, bucket):  # every Delta log entry and data file of every table
        assert CANARY.encode() not in client.get_object(Bucket=bucket, Key=key)["Body"].read(), key
