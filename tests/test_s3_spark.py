"""The Spark engine on S3 through S3A, against moto's S3 server on loopback (`s3_server`).

The shared `spark` session carries the hadoop-aws jars (conftest); each test uses a fresh
bucket, and `SparkEngine` sets that bucket's S3A settings on the session.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeimg import Lake
from lakeimg.engine.base import Write
from lakeimg.engine.spark import (
    SparkEngine,
    bundled_hadoop_version,
    check_log_store,
    connector_packages,
    hadoop_path,
    spark_storage_conf,
)
from lakeimg.errors import SpecError
from lakeimg.schemas import table_contract
from lakeimg.storage import resolve

_NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def _rejects(uris: list[str], error_class: str = "corrupt") -> pa.Table:
    return pa.Table.from_pylist(
        [{"uri": u, "size_bytes": 10, "modified_at": _NOW, "content_sha256": None, "error_class": error_class,
          "error_message": "bad", "run_id": "r", "rejected_at": _NOW} for u in uris],
        schema=table_contract("rejects").arrow_schema,
    )


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _uris_by_delta_rs(location: str, options: dict[str, str]) -> list[str]:
    """The uris of a table's latest snapshot by delta-rs' own file list, read through pyarrow's S3."""
    from deltalake import DeltaTable

    files = DeltaTable(location, storage_options=options).file_uris()
    parts = []
    for uri in files:
        fs, path = resolve(uri, options)
        parts.extend(pq.read_table(path, filesystem=fs, columns=["uri"])["uri"].to_pylist())
    return sorted(parts)


# --- the translation (no JVM) -------------------------------------------------------------------


def test_storage_conf_falls_back_to_the_environment_and_options_win():
    env = {"AWS_ACCESS_KEY_ID": "env-key", "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_REGION": "eu-west-1",
           "AWS_ENDPOINT_URL": "https://minio.example:9000"}
    conf = spark_storage_conf({"aws_region": "us-east-2", "AWS_SECRET_ACCESS_KEY": "opt-secret"}, environ=env)
    assert conf == {
        "spark.hadoop.fs.s3a.access.key": "env-key",
        "spark.hadoop.fs.s3a.secret.key": "opt-secret",
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-2",
        "spark.hadoop.fs.s3a.endpoint": "https://minio.example:9000",
        "spark.hadoop.fs.s3a.path.style.access": "true",  # TLS stays on for https
    }


def test_storage_conf_session_token_virtual_hosts_and_buckets():
    opts = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "tok",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true"}
    conf = spark_storage_conf(opts, environ={}, bucket="my-bucket")
    prefix = "spark.hadoop.fs.s3a.bucket.my-bucket."
    assert all(k.startswith(prefix) for k in conf)
    assert conf[prefix + "session.token"] == "tok"
    assert conf[prefix + "aws.credentials.provider"] == "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
    assert conf[prefix + "path.style.access"] == "false"
    assert conf[prefix + "connection.ssl.enabled"] == "false"
    # Without a key pair S3A keeps its default provider chain (instance roles, profiles).
    assert spark_storage_conf({"AWS_SESSION_TOKEN": "tok", "AWS_ACCESS_KEY_ID": "k"}, environ={}) == {}
    # Azure: account key, or account and key from a connection string (keys hold "=").
    azure = spark_storage_conf({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "a2V5=="}, environ={})
    assert azure["spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net"] == "a2V5=="
    conn = "DefaultEndpointsProtocol=https;AccountName=other;AccountKey=c2Vj=;EndpointSuffix=core.windows.net"
    assert spark_storage_conf({}, environ={"AZURE_STORAGE_CONNECTION_STRING": conn}) == {
        "spark.hadoop.fs.azure.account.auth.type.other.dfs.core.windows.net": "SharedKey",
        "spark.hadoop.fs.azure.account.key.other.dfs.core.windows.net": "c2Vj=",
        "spark.hadoop.fs.azure.account.key.other.blob.core.windows.net": "c2Vj=",
    }


def test_paths_and_packages():
    assert hadoop_path("s3://b/lake/images") == "s3a://b/lake/images"
    assert hadoop_path("S3://b/x") == "s3a://b/x"
    assert hadoop_path("s3a://b/x") == "s3a://b/x"
    assert hadoop_path("/tmp/lake/s3://x") == "/tmp/lake/s3://x"
    assert hadoop_path("file:///tmp/lake") == "file:///tmp/lake"
    version = bundled_hadoop_version()
    assert connector_packages(["s3://b/l", "/tmp/l", "s3a://b/m"]) == [f"org.apache.hadoop:hadoop-aws:{version}"]
    assert connector_packages(["/tmp/l", "file:///x"]) == []


# --- Spark on S3 --------------------------------------------------------------------------------


@pytest.mark.spark
def test_session_runs_the_bundled_hadoop_with_s3a(spark):
    jvm = spark.sparkContext._jvm
    assert jvm.org.apache.hadoop.util.VersionInfo.getVersion() == bundled_hadoop_version()
    fs_class = jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass("s3a", spark.sparkContext._jsc.hadoopConfiguration())
    assert fs_class.getName() == "org.apache.hadoop.fs.s3a.S3AFileSystem"


@pytest.mark.spark
def test_spark_engine_creates_commits_and_reads_a_table_on_s3(spark, s3_server):
    bucket = s3_server.new_bucket()
    lake = f"s3://{bucket}/lake"
    eng = SparkEngine(lake, spark, storage_options=s3_server.storage_options)
    assert eng.log_store == "io.delta.storage.S3SingleDriverLogStore"
    contract = table_contract("rejects")
    assert not eng.exists("r") and eng.version("r") is None
    assert eng.location("r") == f"s3://{bucket}/lake/r"  # the user's spelling

    assert eng.create_empty("r", contract, {"run_id": "run-1", "job": "test"}) == 0
    assert eng.exists("r") and eng.version("r") == 0
    first = eng.commit(Write("r", contract, mode="append", rows=_rejects(["a", "b", "c"]), metadata={"run_id": "run-2"}))
    assert (first.version, first.committed) == (1, True)
    second = eng.commit(Write("r", contract, rows=_rejects(["c", "d"], "truncated"), replace=frozenset({"a"}),
                              metadata={"run_id": "run-3"}))
    assert (second.version, second.committed) == (2, True)

    latest = eng.read("r")
    assert sorted(latest["uri"].to_pylist()) == ["b", "c", "d"]
    assert dict(zip(latest["uri"].to_pylist(), latest["error_class"].to_pylist(), strict=True))["c"] == "truncated"
    assert sorted(eng.read("r", version=1, columns=["uri"])["uri"].to_pylist()) == ["a", "b", "c"]
    assert eng.read("r", version=0).num_rows == 0
    history = eng.history("r")
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["lakeimg"]["run_id"] for h in history] == ["run-3", "run-2", "run-1"]

    # The table is in the bucket, and its log names data files relative to the table.
    keys = _keys(s3_server, bucket, "lake/r/")
    assert "lake/r/_delta_log/00000000000000000002.json" in keys
    log = s3_server.client().get_object(Bucket=bucket, Key="lake/r/_delta_log/00000000000000000001.json")["Body"].read()
    adds = [json.loads(line)["add"]["path"] for line in log.splitlines() if b'"add"' in line]
    assert adds and all("://" not in p and not p.startswith("/") for p in adds)
    assert {f"lake/r/{p}" for p in adds} <= set(keys)
    # VACUUM (dry run) names the files the replace dropped in the lake's own spelling.
    doomed = eng.vacuum("r", retention_hours=0, dry_run=True)
    assert doomed and all(p.startswith(f"s3://{bucket}/lake/r/") for p in doomed)
    assert {p.split(f"s3://{bucket}/", 1)[1] for p in doomed} <= set(keys)
    # Spark's table detail names the s3a location it read.
    from delta.tables import DeltaTable

    assert DeltaTable.forPath(spark, hadoop_path(eng.location("r"))).detail().first()["location"] == f"s3a://{bucket}/lake/r"


@pytest.mark.spark
def test_delta_rs_and_spark_read_each_others_s3_tables(spark, s3_server):
    from deltalake import DeltaTable, write_deltalake

    bucket = s3_server.new_bucket()
    lake = f"s3://{bucket}/lake"
    options = s3_server.storage_options
    contract = table_contract("rejects")

    # delta-rs writes at s3://, Spark reads at s3a:// (and appends on top).
    write_deltalake(f"{lake}/by_rs", _rejects(["r1", "r2"]), storage_options=options)
    write_deltalake(f"{lake}/by_rs", _rejects(["r3"]), mode="append", storage_options=options)
    eng = SparkEngine(lake, spark, storage_options=options)
    assert eng.exists("by_rs") and eng.version("by_rs") == 1
    assert sorted(eng.read("by_rs")["uri"].to_pylist()) == ["r1", "r2", "r3"]
    assert sorted(eng.read("by_rs", version=0)["uri"].to_pylist()) == ["r1", "r2"]
    assert eng.commit(Write("by_rs", contract, mode="append", rows=_rejects(["s1"]))).version == 2
    assert _uris_by_delta_rs(f"{lake}/by_rs", options) == ["r1", "r2", "r3", "s1"]

    # Spark writes at s3a://, delta-rs reads at s3:// (and appends on top, then Spark reads that).
    eng.commit(Write("by_spark", contract, mode="append", rows=_rejects(["x", "y"]), metadata={"run_id": "run-9"}))
    table = DeltaTable(f"{lake}/by_spark", storage_options=options)
    assert table.version() == 1
    assert json.loads(table.history(1)[0]["userMetadata"])["run_id"] == "run-9"
    assert _uris_by_delta_rs(f"{lake}/by_spark", options) == ["x", "y"]
    write_deltalake(f"{lake}/by_spark", _rejects(["z"]), mode="append", storage_options=options)
    assert sorted(eng.read("by_spark")["uri"].to_pylist()) == ["x", "y", "z"]


@pytest.mark.spark
def test_s3_settings_are_per_bucket_and_secrets_stay_off_the_command_line(spark, s3_server):
    secret_opts = {**s3_server.storage_options, "AWS_SESSION_TOKEN": "tok-never-printed-4711"}
    bucket = s3_server.new_bucket()
    eng = SparkEngine(f"s3://{bucket}/lake", spark, storage_options=secret_opts)
    assert spark.conf.get(f"fs.s3a.bucket.{bucket}.endpoint") == s3_server.endpoint
    assert spark.conf.get(f"fs.s3a.bucket.{bucket}.aws.credentials.provider").endswith("TemporaryAWSCredentialsProvider")
    assert spark.conf.get("fs.s3a.endpoint", None) is None  # other buckets keep the session's settings
    # Never in the SparkConf (spark-submit's command line, the UI's environment page).
    launched = "\n".join(f"{k}={v}" for k, v in spark.sparkContext.getConf().getAll())
    assert "tok-never-printed-4711" not in launched and secret_opts["AWS_SECRET_ACCESS_KEY"] not in launched
    eng.append("t", _rejects(["a"]), table_contract("rejects"))
    assert eng.read("t")["uri"].to_pylist() == ["a"]

    # A missing bucket: an error whose message names no secret.
    missing = SparkEngine(f"s3://no-such-bucket-{bucket}/lake", spark, storage_options=secret_opts)
    with pytest.raises(Exception) as caught:
        missing.append("t", _rejects(["a"]), table_contract("rejects"))
    text = f"{caught.value!r} {caught.value}"
    assert "tok-never-printed-4711" not in text and secret_opts["AWS_SECRET_ACCESS_KEY"] not in text


@pytest.mark.spark
def test_log_store_check(spark, s3_server):
    lake = f"s3://{s3_server.new_bucket()}/lake"
    assert check_log_store(spark, "/tmp/lake") is None
    key = "spark.delta.logStore.s3a.impl"
    try:
        spark.conf.set(key, "io.delta.storage.HDFSLogStore")
        with pytest.raises(SpecError, match="not safe on S3"):
            SparkEngine(lake, spark, storage_options=s3_server.storage_options)
        spark.conf.set(key, "com.example.MyLogStore")
        with pytest.warns(UserWarning, match="cannot tell"):
            check_log_store(spark, lake)
        spark.conf.set(key, "io.delta.storage.S3DynamoDBLogStore")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_log_store(spark, lake) == "io.delta.storage.S3DynamoDBLogStore"
    finally:
        spark.conf.unset(key)
    assert check_log_store(spark, lake) == "io.delta.storage.S3SingleDriverLogStore"


@pytest.mark.spark
def test_spark_ingest_local_files_into_an_s3_lake(spark, s3_server, tmp_path):
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.jobs.ingest import ingest_files
    from lakeimg.samples import write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src / "cats", 3, width=64, height=48)
    (src / "notes.jpg").write_bytes(b"not a jpeg\n" * 10)
    bucket = s3_server.new_bucket()
    lake = f"s3://{bucket}/lake"
    options = s3_server.storage_options
    first = ingest_files(lake, [str(src)], engine=SparkEngine(lake, spark, storage_options=options), label_from_path="parent")
    assert (first.added, first.rejected) == (3, 1)
    local = LocalEngine(lake, storage_options=options)
    images = local.read("images", columns=["uri", "width", "label"])
    assert sorted(images["uri"].to_pylist()) == sorted(p.as_uri() for p in (src / "cats").rglob("*.jpg"))
    assert set(images["width"].to_pylist()) == {64}
    assert local.read("_lakeimg/runs", columns=["status"])["status"].to_pylist() == ["succeeded"]
    # Staging cleaned up (an empty "folder/" marker object may stay: pyarrow keeps the parent).
    assert [k for k in _keys(s3_server, bucket, "lake/_lakeimg/staging/") if not k.endswith("/")] == []
    assert {"images", "images_rejects", "_lakeimg/runs"} <= set(SparkEngine(lake, spark, storage_options=options).tables())
    versions = (local.version("images"), local.version("images_rejects"))
    on_spark = Lake(lake, engine="spark", spark=spark, storage_options=options)  # the Lake wires SparkEngine
    assert {"images", "images_rejects", "_lakeimg/runs"} <= set(on_spark.spark_engine().tables())
    again = on_spark.ingest([str(src)], label_from_path="parent")
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 4, 0)  # a no-op re-run
    assert (local.version("images"), local.version("images_rejects")) == versions
