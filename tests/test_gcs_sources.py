"""GCS sources against a real GCS emulator on loopback (fixture `gcs`: gcp-storage-emulator,
JSON API): `gs://` globs listed with the store's paged LIST, objects read by ranged GETs through
pyarrow's GCS file system, merged into a local lake like files; and the GCS credentials options
never reach output, tables or logs.

A lake *on* GCS is not tested: delta-rs' GCS client (object_store) uses GCS' XML API, which
neither gcp-storage-emulator (501 on XML LIST) nor fake-gcs-server (400 "invalid uploadType" on
XML PUT) serves; see README "Object stores".
"""

from __future__ import annotations

import json
import time

from object_stores import cli as _cli
from object_stores import jpeg

from lakeimg import Lake
from lakeimg.storage import list_files, read_bytes, redact

CANARY = "lakeimg-GCS-canary-51c2e8"


def test_gcs_options_reach_pyarrow(gcs):
    bucket = gcs.new_bucket()
    gcs.put(bucket, "a/b.bin", b"0123456789")
    url = f"gs://{bucket}/a/b.bin"
    assert read_bytes(url, gcs.storage_options) == b"0123456789"
    assert [(f.url, f.size) for f in list_files(f"gs://{bucket}/", gcs.storage_options)] == [(url, 10)]


def test_gcs_glob_sources_merge_into_a_local_lake(gcs, tmp_path):
    src = gcs.new_bucket()
    for label in ("cats", "dogs"):
        for j in range(2):
            gcs.put(src, f"scans/{label}/{j}.jpg", jpeg(10 * len(label) + j))
    gcs.put(src, "scans/cats/broken.jpg", b"\xff\xd8 broken")
    gcs.put(src, "scans/notes.txt", b"not matched by the glob")
    lake_dir, glob = str(tmp_path / "lake"), f"gs://{src}/scans/**/*.jpg"
    first = _cli("ingest", glob, "--lake", lake_dir, "--label-from-path", "parent", "--json", env=gcs.env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["added"], summary["rejected"]) == (4, 1)
    lake = Lake(lake_dir)
    labels = {r["uri"]: r["label"] for r in lake.read("images", columns=["uri", "label"]).to_pylist()}
    assert labels == {f"gs://{src}/scans/{label}/{j}.jpg": label for label in ("cats", "dogs") for j in range(2)}
    versions = {t: lake.version(t) for t in lake.tables()}
    same = Lake(lake_dir, storage_options=gcs.storage_options).ingest([glob], workers=0, label_from_path="parent")
    assert (same.added, same.updated, same.unchanged) == (0, 0, 5)
    assert {t: lake.version(t) for t in lake.tables()} == versions

    time.sleep(1.1)  # object modification times have 1 s resolution
    gcs.put(src, "scans/cats/0.jpg", jpeg(500, size=(64, 48)))  # changed
    gcs.put(src, "scans/dogs/new/3.jpg", jpeg(501))  # new, one folder deeper
    gcs.delete(src, "scans/dogs/1.jpg")  # deleted
    merged = Lake(lake_dir, storage_options=gcs.storage_options).ingest(
        [glob], workers=2, label_from_path="parent", sync_deletes=True)
    assert (merged.added, merged.updated, merged.deleted, merged.unchanged) == (1, 1, 1, 3)
    widths = {r["uri"]: r["width"] for r in lake.read("images", columns=["uri", "width"]).to_pylist()}
    assert widths[f"gs://{src}/scans/cats/0.jpg"] == 64 and f"gs://{src}/scans/dogs/1.jpg" not in widths


def test_gcs_credentials_never_reach_output_tables_or_logs(gcs, tmp_path):
    src = gcs.new_bucket()
    gcs.put(src, "a.jpg", jpeg(1))
    key_json = json.dumps({"type": "service_account", "private_key": f"-----BEGIN PRIVATE KEY-----{CANARY}"})
    secrets = [f"/secrets/{CANARY}-path/sa.json", key_json, f"/secrets/{CANARY}-other/sa.json"]
    options = ["--storage-option", f"GOOGLE_APPLICATION_CREDENTIALS={secrets[0]}",
               "--storage-option", f"GOOGLE_SERVICE_ACCOUNT_KEY={secrets[1]}",
               "--storage-option", f"GOOGLE_SERVICE_ACCOUNT={secrets[2]}"]
    lake_dir = str(tmp_path / "lake")
    # Output and logs of a run, of lineage (commit metadata and the runs table), and of a failure.
    outputs = [_cli("ingest", f"gs://{src}/", "--lake", lake_dir, "--json", *options, env=gcs.env),
               _cli("lineage", "images", "--lake", lake_dir, "--json", *options, env=gcs.env),
               _cli("ingest", "gs://no-such-bucket-lakeimg/x/*.jpg", "--lake", lake_dir, *options, env=gcs.env)]
    assert [o.returncode for o in outputs] == [0, 0, 3], [o.stderr for o in outputs]
    assert '"job": "ingest"' in outputs[1].stdout.replace('":"', '": "')
    for out in outputs:
        assert CANARY not in out.stdout + out.stderr
    for path in (tmp_path / "lake").rglob("*"):  # every Delta log entry and data file
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    # The redaction the CLI applies knows both as secrets.
    assert CANARY not in redact(" ".join(secrets), {"GOOGLE_APPLICATION_CREDENTIALS": secrets[0],
                                                      "GOOGLE_SERVICE_ACCOUNT_KEY": secrets[1],
                                                      "GOOGLE_SERVICE_ACCOUNT": secrets[2]})
