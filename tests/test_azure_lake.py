"""Azure Blob lakes and sources on the embedded engine, against Azurite on loopback (fixture
`azurite`): local -> Azure and Azure -> Azure ingest (globs, labels, rejects, a no-op re-run,
--sync-deletes), the URL spellings (az, abfss, adl) and a connection string, transform + time
travel, SQL, history, training sets, maintenance, two concurrent writers, the three storage
failures, the mapping of Azure settings onto pyarrow, and secrets that never leave the options.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.storage import normalized_storage_options, redact, resolve

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


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """cats/ and dogs/ with 3 JPEGs each and one broken JPEG."""
    root = tmp_path / "photos"
    for i, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for j in range(3):
            (root / label / f"{label}{j}.jpg").write_bytes(_jpeg(10 * i + j))
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_local_sources_into_an_azure_lake_with_rejects_and_a_noop_rerun(azurite, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a lake URL must never become a local folder named "az:"
    container = azurite.new_container()
    lake = Lake(f"az://{container}/lake", storage_options=azurite.storage_options)
    summary = lake.ingest([str(photos)], workers=2, label_from_path="parent")
    assert (summary.added, summary.rejected) == (6, 1)
    assert lake.tables() == ["images", "images_rejects"]
    assert not (tmp_path / "az:").exists()
    labels = {r["uri"].rsplit("/", 1)[-1]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {**{f"cats{j}.jpg": "cats" for j in range(3)}, **{f"dogs{j}.jpg": "dogs" for j in range(3)}}
    assert lake.read("images_rejects", columns=["uri"])["uri"].to_pylist()[0].endswith("/cats/broken.jpg")
    keys = azurite.keys(container, "lake/")
    assert any(k.startswith("lake/images/_delta_log/") for k in keys)
    assert any(k.startswith("lake/images/") and k.endswith(".parquet") for k in keys)
    versions = {t: lake.version(t) for t in lake.tables()}
    again = lake.ingest([str(photos)], workers=0, label_from_path="parent")
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 7, 0)
    assert {t: lake.version(t) for t in lake.tables()} == versions  # no table got a new version
    # Every data file in the container is one the table references.
    referenced = {f.split("/", 3)[-1] for t in lake.tables() for f in lake._local.data_files(t)}
    assert {k for k in azurite.keys(container, "lake/") if k.endswith(".parquet") and "/_lakeimg/" not in k} == {
        k for k in referenced if "/_lakeimg/" not in k}


def test_azure_sources_by_glob_merge_changed_new_and_deleted_blobs(azurite, tmp_path):
    src, container = azurite.new_container("src"), azurite.new_container()
    for label in ("cats", "dogs"):
        for j in range(3):
            azurite.put(src, f"scans/{label}/{j}.jpg", _jpeg(hash((label, j)) % 1000))
    azurite.put(src, "scans/cats/broken.jpg", b"\xff\xd8 broken")
    azurite.put(src, "scans/notes.txt", b"not matched by the glob")
    azurite.put(src, "other/cats/9.jpg", _jpeg(99))  # outside the glob
    lake_url, glob = f"az://{container}/lake", f"az://{src}/scans/**/*.jpg"
    first = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--json", "--workers", "2",
                 env=azurite.env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["added"], summary["rejected"]) == (6, 1)
    lake = Lake(lake_url, storage_options=azurite.storage_options)
    labels = {r["uri"]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {f"az://{src}/scans/{label}/{j}.jpg": label for label in ("cats", "dogs") for j in range(3)}

    time.sleep(1.1)  # blob modification times have 1 s resolution
    azurite.put(src, "scans/cats/0.jpg", _jpeg(500, size=(64, 48)))  # changed
    azurite.put(src, "scans/dogs/new/3.jpg", _jpeg(501))  # new, one folder deeper
    azurite.delete(src, "scans/dogs/1.jpg")  # deleted
    merged = _cli("ingest", glob, "--lake", lake_url, "--label-from-path", "parent", "--sync-deletes", "--json",
                  env=azurite.env)
    assert merged.returncode == 0, merged.stderr
    result = json.loads(merged.stdout.strip().splitlines()[-1])
    assert (result["added"], result["updated"], result["deleted"], result["unchanged"]) == (1, 1, 1, 5)
    rows = lake.read("images", columns=["uri", "width"]).to_pylist()
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)) == 6
    assert f"az://{src}/scans/dogs/1.jpg" not in uris and f"az://{src}/scans/dogs/new/3.jpg" in uris
    assert {r["uri"]: r["width"] for r in rows}[f"az://{src}/scans/cats/0.jpg"] == 64


def test_abfss_and_adl_urls_and_a_connection_string_reach_the_same_container(azurite, tmp_path):
    from object_stores import AZURITE_KEY

    src = tmp_path / "src"
    src.mkdir()
    for j in range(2):
        (src / f"{j}.jpg").write_bytes(_jpeg(j))
    container = azurite.new_container()
    # Only a connection string: account, key and endpoint come out of it for delta-rs and pyarrow.
    only_string = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    env: dict[str, str] = {}  # no AZURE_* variable: only the option
    written = _cli("ingest", str(src), "--lake", f"az://{container}/lake", "--json",
                   "--storage-option", f"AZURE_STORAGE_CONNECTION_STRING={azurite.connection_string}", env=env)
    assert written.returncode == 0, written.stderr
    # abfss names the account in the host; adl is delta-rs' other spelling of the same container.
    for url, options in ((f"abfss://{container}@devstoreaccount1.dfs.core.windows.net/lake", only_string),
                         (f"adl://{container}/lake", azurite.storage_options)):
        lake = Lake(url, storage_options=options)
        assert lake.tables() == ["images", "images_rejects"]
        assert sorted(u.rsplit("/", 1)[-1] for u in lake.read("images", columns=["uri"])["uri"].to_pylist()) == [
            "0.jpg", "1.jpg"]
    assert AZURITE_KEY not in written.stdout + written.stderr


def test_a_sas_token_alone_reads_and_writes_and_a_wrong_one_is_refused(azurite, tmp_path):
    from lakeimg.errors import StorageAccessError

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(3))
    container = azurite.new_container()
    options = {k: v for k, v in azurite.storage_options.items() if k != "AZURE_STORAGE_ACCOUNT_KEY"}
    lake = Lake(f"az://{container}/lake", storage_options={**options, "AZURE_STORAGE_SAS_TOKEN": "?" + azurite.sas_token()})
    assert lake.ingest([str(src)], workers=0).added == 1
    assert lake.ingest([str(src)], workers=0).unchanged == 1  # the second commit reads the first
    assert lake.read("images", columns=["uri"])["uri"].to_pylist() == [(src / "a.jpg").as_uri()]
    forged = azurite.sas_token(base64.b64encode(CANARY.encode()).decode())
    with pytest.raises(StorageAccessError) as refused:
        Lake(f"az://{container}/other", storage_options={**options, "AZURE_STORAGE_SAS_TOKEN": forged}).ingest(
            [str(src)], workers=0)
    assert forged.rsplit("sig=", 1)[1] not in str(refused.value)


def test_azure_settings_map_onto_pyarrow_and_delta_rs_alike():
    key = base64.b64encode(CANARY.encode()).decode()
    string = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.chinacloudapi.cn"
    options = normalized_storage_options({"AZURE_STORAGE_CONNECTION_STRING": string}, environ={
        "AZURE_STORAGE_ACCOUNT_NAME": "from-env", "HOME": "/root"})
    # The connection string's parts, over the environment; explicit keys of the same layer win.
    assert {k: options[k] for k in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ENDPOINT")} == {
        "AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": key,
        "AZURE_STORAGE_ENDPOINT": "https://acct.blob.core.chinacloudapi.cn"}
    assert normalized_storage_options({"AZURE_STORAGE_CONNECTION_STRING": string, "AZURE_STORAGE_ACCOUNT_NAME": "other"},
                                      environ={})["AZURE_STORAGE_ACCOUNT_NAME"] == "other"
    # A sovereign cloud's host-style endpoint and an emulator's path-style one, as pyarrow's authorities.
    fs, path = resolve("az://photos/raw/a.jpg", {"AZURE_STORAGE_CONNECTION_STRING": string})
    args = fs.__reduce__()[1][0]
    assert path == "photos/raw/a.jpg"
    assert (args["account_name"], args["account_key"], args["blob_storage_authority"], args["dfs_storage_authority"],
            args["blob_storage_scheme"]) == ("acct", key, ".blob.core.chinacloudapi.cn", ".dfs.core.chinacloudapi.cn", "https")
    fs, path = resolve("abfss://photos@devstoreaccount1.dfs.core.windows.net/raw", {
        "AZURE_STORAGE_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1", "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc%2Bdef"})
    args = fs.__reduce__()[1][0]
    assert (path, args["account_name"], args["blob_storage_authority"], args["blob_storage_scheme"], args["sas_token"]) == (
        "photos/raw", "devstoreaccount1", "127.0.0.1:10000", "http", "?sv=1&sig=abc%2Bdef")
    # Keys, SAS tokens and connection strings are secrets.
    text = f"failed with {string} and {key} and ?sv=1&sig=abc%2Bdef"
    assert redact(text, {"AZURE_STORAGE_CONNECTION_STRING": string, "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc%2Bdef"}) == (
        "failed with *** and *** and ***")


@pytest.fixture
def azure_lake(azurite, tmp_path) -> Lake:
    photos = tmp_path / "photos"
    for i, label in enumerate(("cats", "dogs")):
        (photos / label).mkdir(parents=True)
        for j in range(5):
            (photos / label / f"{j}.jpg").write_bytes(_jpeg(50 * i + j, size=(32, 24)))
    lake = Lake(f"az://{azurite.new_container()}/lake", storage_options=azurite.storage_options)
    lake.ingest([str(photos)], workers=0, label_from_path="parent")
    return lake


def test_transform_time_travel_sql_history_and_lineage_on_azure(azure_lake):
    first = azure_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0)
    assert first.added == 10
    second = azure_lake.transform("images", "small", {"ops": [{"op": "resize", "width": 4, "height": 3}]}, workers=0)
    assert second.version == first.version + 1 and second.updated == 10
    assert set(azure_lake.read("small", first.version, columns=["width"])["width"].to_pylist()) == {8}
    rows = azure_lake.sql(f"SELECT max(width) AS w FROM small VERSION AS OF {first.version} "
                          "UNION ALL SELECT max(width) FROM small").to_pylist()
    assert [r["w"] for r in rows] == [8, 4]
    assert azure_lake.sql("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").to_pylist() == [
        {"label": "cats", "n": 5}, {"label": "dogs", "n": 5}]
    assert azure_lake.sql("SELECT count(*) AS n FROM lakeimg_runs").to_pylist() == [{"n": 3}]
    assert [v.job for v in azure_lake.versions("small")][:2] == ["transform", "transform"]
    assert [(s.table, s.job) for s in azure_lake.lineage("small", first.version)] == [
        ("small", "transform"), ("images", "ingest")]


def test_training_set_on_azure_loads_each_sample_once_across_shards_and_maintain_keeps_it(azure_lake):
    ts = azure_lake.create_training_set("pets-v1", "images", splits="train=0.7,test=0.3", seed=3)
    train = set(ts.rows("train")["uri"].to_pylist())
    seen: list[str] = []
    for rank in range(2):
        for batch in ts.iter_numpy("train", batch_size=3, epoch=1, rank=rank, world_size=2):
            assert batch["image"].shape[1:] == (24, 32, 3)
            seen += batch["uri"]
    assert sorted(seen) == sorted(train) and len(seen) == len(set(seen))
    report = azure_lake.maintain(optimize=True, vacuum_hours=0)
    assert not report.refused and report.pinned_sets_readable == {"pets-v1": True}
    again = [u for b in azure_lake.training_set("pets-v1").iter_numpy("train", batch_size=4) for u in b["uri"]]
    assert sorted(again) == sorted(train)


def test_two_concurrent_ingests_into_one_azure_table_both_commit(azurite, tmp_path):
    lake_url = f"az://{azurite.new_container()}/lake"
    folders = []
    for k in range(2):
        folder = tmp_path / f"batch{k}"
        folder.mkdir()
        for j in range(6):
            (folder / f"{k}-{j}.jpg").write_bytes(_jpeg(100 * k + j))
        folders.append(folder)
    env = {**os.environ, **azurite.env, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "lakeimg.cli", "ingest", str(f), "--lake", lake_url, "--workers", "1",
                               "--json"], cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in folders]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    lake = Lake(lake_url, storage_options=azurite.storage_options)
    uris = lake.read("images", columns=["uri"])["uri"].to_pylist()
    expected = sorted((f / name).as_uri() for f in folders for name in os.listdir(f))
    assert sorted(uris) == expected  # exact union, no duplicate uri
    assert lake.read("_lakeimg/runs", columns=["status"])["status"].to_pylist().count("succeeded") == 2


def test_azure_failures_are_one_line_with_the_s3_exit_codes_and_no_table(azurite, tmp_path):
    from object_stores import free_port

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(1))
    container = azurite.new_container()
    wrong_key = base64.b64encode(CANARY.encode()).decode()
    results = {
        "credentials": _cli("ingest", str(src), "--lake", f"az://{container}/lake",
                            env={**azurite.env, "AZURE_STORAGE_ACCOUNT_KEY": wrong_key}),
        "container": _cli("ingest", str(src), "--lake", "az://no-such-container/lake", env=azurite.env),
        "endpoint": _cli("ingest", str(src), "--lake", f"az://{container}/lake",
                         env={**azurite.env, "AZURE_STORAGE_ENDPOINT": f"http://127.0.0.1:{free_port()}/devstoreaccount1"}),
    }
    assert {k: r.returncode for k, r in results.items()} == {"credentials": 10, "container": 5, "endpoint": 11}
    assert azurite.keys(container) == []  # nothing was written
    for result in results.values():
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lakeimg: error: ") and "Traceback" not in result.stderr
        assert wrong_key not in result.stderr + result.stdout
    assert "AZURE_STORAGE_ACCOUNT_KEY" in results["credentials"].stderr  # says what to check
    assert "no container 'no-such-container'" in results["container"].stderr
    assert _cli("history", "images", "--lake", "az://no-such-container/lake", env=azurite.env).returncode == 5
    bad_source = _cli("ingest", "az://no-such-container/x/*.jpg", "--lake", str(tmp_path / "lake"), env=azurite.env)
    assert bad_source.returncode == 3, bad_source.stderr


def test_secrets_never_reach_azure_tables_logs_lineage_or_output(azurite, tmp_path):
    from object_stores import AZURITE_KEY

    container = azurite.new_container()
    lake_url = f"az://{container}/lake"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(1))
    # The key only in the options (the environment's is wrong): it is this run's real secret.
    env = {**azurite.env, "AZURE_STORAGE_ACCOUNT_KEY": base64.b64encode(CANARY.encode()).decode()}
    opt = ["--storage-option", f"AZURE_STORAGE_ACCOUNT_KEY={AZURITE_KEY}"]
    outputs = [_cli("ingest", str(src), "--lake", lake_url, "--json", *opt, env=env),
               _cli("history", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("lineage", "images", "--lake", lake_url, "--json", *opt, env=env),
               _cli("sql", "--lake", lake_url, "--json", *opt, "SELECT * FROM lakeimg_runs", env=env),
               _cli("history", "nosuchtable", "--lake", lake_url, *opt, env=env)]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 5], [o.stderr for o in outputs]
    assert all(AZURITE_KEY not in o.stdout + o.stderr for o in outputs)
    for key in azurite.keys(container):  # every Delta log entry and data file of every table
        assert AZURITE_KEY.encode() not in azurite.get(container, key), key
