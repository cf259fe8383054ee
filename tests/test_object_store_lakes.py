"""Object-store lakes and sources on the embedded engine, each test once against moto's real S3
server (fixture `s3_server`) and once against Azurite (fixture `azurite`), both on loopback:
local -> store and store -> store ingest (globs, labels, rejects, a no-op re-run, --sync-deletes),
transform + time travel, SQL, history, lineage, training sets, maintenance, two concurrent
writers, the three storage failures, and secrets that never leave the options.

The `store` fixture hides the two servers behind one small interface; what only one store has
(S3 tiles and a killed run, Azure's URL spellings and SAS tokens) stays in test_s3_lake.py and
test_azure_lake.py.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from object_stores import AZURITE_KEY, ROOT, free_port, jpeg, moto_s3_server, write_photos
from object_stores import cli as _cli

from lakeimg import Lake
from lakeimg.engine.layout import staging_root

CANARY = "lakeimg-SECRET-canary-7f3a9d"  # a secret value that must never be printed or stored


class S3Store:
    """moto's S3 server: buckets, objects and the options and environment that reach them."""

    scheme, bucket_word, missing = "s3", "bucket", "no-such-bucket-lakeimg"
    failure_messages: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self, server):
        self.server = server
        self.env, self.storage_options = server.env, server.storage_options

    def new_bucket(self, prefix: str = "lake") -> str:
        return self.server.new_bucket(prefix)

    def url(self, bucket: str, key: str) -> str:
        return f"{self.scheme}://{bucket}/{key}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.server.client().delete_object(Bucket=bucket, Key=key)

    def get(self, bucket: str, key: str) -> bytes:
        return self.server.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    @contextlib.contextmanager
    def refusing(self, bucket: str) -> Iterator[tuple[S3Store, str, dict[str, str], str]]:
        """(store, bucket, env, secret): the env's credentials are refused; the secret is in them.

        moto only checks keys in its IAM mode: a second, authenticated server with its own bucket.
        """
        with moto_s3_server(authenticated=True) as guarded:
            wrong = dataclasses.replace(guarded, key_id="AKIAWRONGWRONGWRONG1", secret=CANARY)
            yield S3Store(guarded), guarded.new_bucket(), wrong.env, CANARY

    def unreachable_env(self) -> dict[str, str]:
        return {**self.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}

    def secret_in_option(self) -> tuple[dict[str, str], str, str]:
        """(env, --storage-option, secret): the secret only in the option. moto accepts any
        secret: the canary is this run's real secret, given as an option."""
        env = {k: v for k, v in self.env.items() if k != "AWS_SECRET_ACCESS_KEY"}
        env["AWS_SECRET_ACCESS_KEY"] = "unused-env-secret"
        return env, f"AWS_SECRET_ACCESS_KEY={CANARY}", CANARY


class AzureStore:
    """Azurite: containers, blobs and the options and environment that reach them."""

    scheme, bucket_word, missing = "az", "container", "no-such-container"
    failure_messages = {  # noqa: RUF012 - read only
        "credentials": "AZURE_STORAGE_ACCOUNT_KEY",  # says what to check
        "container": "no container 'no-such-container'"}

    def __init__(self, server):
        self.server = server
        self.env, self.storage_options = server.env, server.storage_options
        self.keys, self.put, self.delete, self.get = server.keys, server.put, server.delete, server.get

    def new_bucket(self, prefix: str = "lake") -> str:
        return self.server.new_container(prefix)

    def url(self, bucket: str, key: str) -> str:
        return f"{self.scheme}://{bucket}/{key}"

    @contextlib.contextmanager
    def refusing(self, bucket: str) -> Iterator[tuple[AzureStore, str, dict[str, str], str]]:
        """(store, bucket, env, secret): the env's account key is wrong; the secret is that key."""
        wrong_key = base64.b64encode(CANARY.encode()).decode()
        yield self, bucket, {**self.env, "AZURE_STORAGE_ACCOUNT_KEY": wrong_key}, wrong_key

    def unreachable_env(self) -> dict[str, str]:
        return {**self.env, "AZURE_STORAGE_ENDPOINT": f"http://127.0.0.1:{free_port()}/devstoreaccount1"}

    def secret_in_option(self) -> tuple[dict[str, str], str, str]:
        """(env, --storage-option, secret): the key only in the options (the environment's is
        wrong): it is this run's real secret."""
        env = {**self.env, "AZURE_STORAGE_ACCOUNT_KEY": base64.b64encode(CANARY.encode()).decode()}
        return env, f"AZURE_STORAGE_ACCOUNT_KEY={AZURITE_KEY}", AZURITE_KEY


@pytest.fixture(params=["s3", "azure"])
def store(request):
    """Each test once on S3 (moto) and once on Azure (Azurite); both servers live for the session."""
    if request.param == "s3":
        return S3Store(request.getfixturevalue("s3_server"))
    return AzureStore(request.getfixturevalue("azurite"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """cats/ and dogs/ with 3 JPEGs each and one broken JPEG."""
    return write_photos(tmp_path / "photos")


def test_local_sources_into_a_store_lake_with_rejects_and_a_noop_rerun(store, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a lake URL must never become a local folder named "s3:" or "az:"
    bucket = store.new_bucket()
    lake = Lake(store.url(bucket, "lake"), storage_options=store.storage_options)
    summary = lake.ingest([str(photos)], workers=2, label_from_path="parent")
    assert (summary.added, summary.rejected) == (6, 1)
    assert lake.tables() == ["images", "images_rejects"]
    assert not (tmp_path / f"{store.scheme}:").exists()
    labels = {r["uri"].rsplit("/", 1)[-1]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {**{f"cats{j}.jpg": "cats" for j in range(3)}, **{f"dogs{j}.jpg": "dogs" for j in range(3)}}
    assert lake.read("images_rejects", columns=["uri"])["uri"].to_pylist()[0].endswith("/cats/broken.jpg")
    # Every table's files are objects in the bucket, under the table's prefix.
    keys = store.keys(bucket, "lake/")
    assert any(k.startswith("lake/images/_delta_log/") for k in keys)
    assert any(k.startswith("lake/images/") and k.endswith(".parquet") for k in keys)
    versions = {t: lake.version(t) for t in lake.tables()}
    again = lake.ingest([str(photos)], workers=0, label_from_path="parent")
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 7, 0)
    assert {t: lake.version(t) for t in lake.tables()} == versions  # no table got a new version
    # Nothing staged stays behind, locally or in the bucket: every data file there is one a table references.
    assert not os.path.exists(staging_root(lake.path)) or not os.listdir(staging_root(lake.path))
    referenced = {f.split("/", 3)[-1] for t in lake.tables() for f in lake._local.data_files(t)}
    assert {k for k in store.keys(bucket, "lake/") if k.endswith(".parquet") and "/_lakeimg/" not in k} == {
        k for k in referenced if "/_lakeimg/" not in k}


def test_store_sources_by_glob_merge_changed_new_and_deleted_objects(store, tmp_path):
    src, bucket = store.new_bucket("src"), store.new_bucket()
    for label in ("cats", "dogs"):
        for j in range(3):
            store.put(src, f"scans/{label}/{j}.jpg", jpeg(hash((label, j)) % 1000))
    store.put(src, "scans/cats/broken.jpg", b"\xff\xd8 broken")
    store.put(src, "scans/notes.txt", b"not matched by the glob")
    store.put(src, "other/cats/9.jpg", jpeg(99))  # outside the glob
    lake_url, glob = store.url(bucket, "lake"), store.url(src, "scans/**/*.jpg")
    first = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--json", "--workers", "2",
                 env=store.env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["added"], summary["rejected"]) == (6, 1)
    lake = Lake(lake_url, storage_options=store.storage_options)
    labels = {r["uri"]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {store.url(src, f"scans/{label}/{j}.jpg"): label for label in ("cats", "dogs") for j in range(3)}
    same = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--json", env=store.env)
    assert json.loads(same.stdout.strip().splitlines()[-1])["version"] == summary["version"]

    time.sleep(1.1)  # object modification times have 1 s resolution
    store.put(src, "scans/cats/0.jpg", jpeg(500, size=(64, 48)))  # changed
    store.put(src, "scans/dogs/new/3.jpg", jpeg(501))  # new, one folder deeper
    store.delete(src, "scans/dogs/1.jpg")  # deleted
    merged = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--sync-deletes", "--json",
                  env=store.env)
    assert merged.returncode == 0, merged.stderr
    result = json.loads(merged.stdout.strip().splitlines()[-1])
    assert (result["added"], result["updated"], result["deleted"], result["unchanged"]) == (1, 1, 1, 5)
    rows = lake.read("images", columns=["uri", "width"]).to_pylist()
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 6
    assert store.url(src, "scans/dogs/1.jpg") not in uris and store.url(src, "scans/dogs/new/3.jpg") in uris
    assert {r["uri"]: r["width"] for r in rows}[store.url(src, "scans/cats/0.jpg")] == 64


@pytest.fixture
def store_lake(store, tmp_path) -> Lake:
    photos = tmp_path / "photos"
    for i, label in enumerate(("cats", "dogs")):
        (photos / label).mkdir(parents=True)
        for j in range(5):
            (photos / label / f"{j}.jpg").write_bytes(jpeg(50 * i + j, size=(32, 24)))
    lake = Lake(store.url(store.new_bucket(), "lake"), storage_options=store.storage_options)
    lake.ingest([str(photos)], workers=0, label_from_path="parent")
    return lake


def test_transform_time_travel_sql_history_and_lineage(store_lake):
    first = store_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0)
    assert first.added == 10
    second = store_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 4, "height": 3}]}, workers=0)
    assert second.version == first.version + 1 and second.updated == 10
    assert set(store_lake.read("small", first.version, columns=["width"])["width"].to_pylist()) == {8}
    assert set(store_lake.read("small", columns=["width"])["width"].to_pylist()) == {4}
    rows = store_lake.sql(f"SELECT max(width) AS w FROM small VERSION AS OF {first.version} "
                          "UNION ALL SELECT max(width) FROM small").to_pylist()
    assert [r["w"] for r in rows] == [8, 4]
    assert store_lake.sql("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").to_pylist() == [
        {"label": "cats", "n": 5}, {"label": "dogs", "n": 5}]
    assert store_lake.sql("SELECT count(*) AS n FROM lakeimg_runs").to_pylist() == [{"n": 3}]
    assert [v.job for v in store_lake.versions("small")][:2] == ["transform", "transform"]
    assert [(s.table, s.job) for s in store_lake.lineage("small", first.version)] == [
        ("small", "transform"), ("images", "ingest")]


def test_training_set_loads_each_sample_once_across_shards_and_maintain_keeps_it(store_lake):
    ts = store_lake.create_training_set("pets-v1", "images", splits="train=0.7,test=0.3", seed=3)
    train = set(ts.rows("train")["uri"].to_pylist())
    seen: list[str] = []
    for rank in range(2):
        for batch in ts.iter_numpy("train", batch_size=3, epoch=1, rank=rank, world_size=2):
            assert batch["image"].shape[1:] == (24, 32, 3)
            seen += batch["uri"]
    # every sample; two ranks get one length each (an odd count repeats one, like DistributedSampler)
    assert set(seen) == train and len(seen) == 2 * -(-len(train) // 2)
    # optimize compacts, vacuum removes what nothing pins.
    report = store_lake.maintain(optimize=True, vacuum_hours=0)
    assert not report.refused and report.pinned_sets_readable == {"pets-v1": True}
    again = [u for b in store_lake.training_set("pets-v1").iter_numpy("train", batch_size=4) for u in b["uri"]]
    assert sorted(again) == sorted(train)


def test_two_concurrent_ingests_into_one_table_both_commit(store, tmp_path):
    lake_url = store.url(store.new_bucket(), "lake")
    folders = []
    for k in range(2):
        folder = tmp_path / f"batch{k}"
        folder.mkdir()
        for j in range(6):
            (folder / f"{k}-{j}.jpg").write_bytes(jpeg(100 * k + j))
        folders.append(folder)
    env = {**os.environ, **store.env, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "ingest", str(f), "--lake", lake_url, "--workers", "1",
                               "--json"], cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in folders]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    lake = Lake(lake_url, storage_options=store.storage_options)
    uris = lake.read("images", columns=["uri"])["uri"].to_pylist()
    expected = sorted((f / name).as_uri() for f in folders for name in os.listdir(f))
    assert sorted(uris) == expected  # exact union, no duplicate uri
    runs = lake.read("_lakeimg/runs", columns=["status"])["status"].to_pylist()
    # Each run recorded its success, and neither took the other, still committing, for killed.
    assert sorted(runs) == ["succeeded", "succeeded"]


def test_storage_failures_are_one_line_with_distinct_exit_codes_and_no_table(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(1))
    bucket = store.new_bucket()
    results = {}
    with store.refusing(bucket) as (guarded, guarded_bucket, wrong_env, secret):
        results["credentials"] = _cli("ingest", str(src), "--lake", guarded.url(guarded_bucket, "lake"), env=wrong_env)
        assert guarded.keys(guarded_bucket) == []  # nothing was written
    results[store.bucket_word] = _cli("ingest", str(src), "--lake", store.url(store.missing, "lake"), env=store.env)
    results["endpoint"] = _cli("ingest", str(src), "--lake", store.url(bucket, "lake"), env=store.unreachable_env())
    assert {k: r.returncode for k, r in results.items()} == {"credentials": 10, store.bucket_word: 5, "endpoint": 11}
    assert store.keys(bucket) == []  # nothing was written
    for result in results.values():
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lakeimg: error: ") and "Traceback" not in result.stderr
        assert secret not in result.stderr + result.stdout
    for kind, text in store.failure_messages.items():
        assert text in results[kind].stderr
    # The same for a command that reads an existing lake, and a missing source bucket is exit 3.
    assert _cli("history", "images", "--lake", store.url(store.missing, "lake"), env=store.env).returncode == 5
    bad_source = _cli("ingest", store.url(store.missing, "x/*.jpg"), "--lake", str(tmp_path / "lake"), env=store.env)
    assert bad_source.returncode == 3, bad_source.stderr


def test_secrets_never_reach_tables_logs_lineage_or_output(store, tmp_path):
    bucket = store.new_bucket()
    lake_url = store.url(bucket, "lake")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(1))
    env, option, secret = store.secret_in_option()
    opt = ["--storage-option", option]
    outputs = [_cli("ingest", str(src), "--lake", lake_url, "--json", *opt, env=env),
               _cli("history", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("lineage", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("sql", "--lake", lake_url, "--json", *opt, "SELECT * FROM lakeimg_runs", env=env),
               _cli("history", "nosuchtable", "--lake", lake_url, *opt, env=env)]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 5], [o.stderr for o in outputs]
    assert all(secret not in o.stdout + o.stderr for o in outputs)
    for key in store.keys(bucket):  # every Delta log entry and data file of every table
        assert secret.encode() not in store.get(bucket, key), key


def test_an_azure_connection_string_never_reaches_output_tables_or_logs(azurite, tmp_path):
    """The account key inside a connection string (the form Azure tools hand out) is as secret
    as the key itself: not in output, logs, lineage or any blob, also when the store refuses it."""
    container = azurite.new_container()
    lake_url = f"az://{container}/lake"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg(1))
    env = {"AZURE_STORAGE_ACCOUNT_KEY": base64.b64encode(b"not-the-key").decode()}  # the option's string wins
    wrong_key = base64.b64encode(CANARY.encode()).decode()
    good, bad = azurite.connection_string, azurite.connection_string.replace(AZURITE_KEY, wrong_key)
    outputs = [_cli("ingest", str(src), "--lake", lake_url, "--json", "--storage-option",
                    f"AZURE_STORAGE_CONNECTION_STRING={good}", env=env),
               _cli("lineage", "images", "--lake", lake_url, "--json", "--storage-option",
                    f"AZURE_STORAGE_CONNECTION_STRING={good}", env=env),
               _cli("ingest", str(src), "--lake", lake_url, "--storage-option", f"AZURE_STORAGE_CONNECTION_STRING={bad}",
                    env=env)]
    assert [o.returncode for o in outputs] == [0, 0, 10], [o.stderr for o in outputs]
    for out in outputs:
        text = out.stdout + out.stderr
        assert AZURITE_KEY not in text and wrong_key not in text and "AccountKey=" not in text
    for key in azurite.keys(container):
        assert AZURITE_KEY.encode() not in azurite.get(container, key), key
