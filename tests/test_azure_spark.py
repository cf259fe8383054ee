"""The Spark engine on Azure through hadoop-azure's ABFS connector, against Azurite on loopback
(`azurite`): the translation of lakeimg's Azure options into ABFS settings and paths (no JVM),
delta-spark's LogStore check on Azure, and one lake that Spark and the embedded engine ingest
into and transform in turn.

The shared `spark` session carries the hadoop-azure jars (conftest); `SparkEngine` sets the
account's ABFS settings on it. Azurite speaks the Blob API only, so ABFS runs with its Blob
client (`fs.azure.fns.account.service.type=BLOB`, set by `spark_storage_conf` for an emulator).
"""

from __future__ import annotations

import warnings

import pytest
from object_stores import AZURITE_ACCOUNT, AZURITE_KEY

from lakeimg import Lake
from lakeimg.engine.spark import SparkEngine, check_log_store, hadoop_path, spark_storage_conf
from lakeimg.errors import SpecError

# --- the translation (no JVM) -------------------------------------------------------------------


def test_azure_options_become_per_account_abfs_settings_and_paths():
    host = "acct.dfs.core.windows.net"
    conf = spark_storage_conf({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "a2V5=="}, environ={})
    assert conf == {f"spark.hadoop.fs.azure.account.auth.type.{host}": "SharedKey",
                    f"spark.hadoop.fs.azure.account.key.{host}": "a2V5==",
                    "spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "a2V5=="}
    assert hadoop_path("az://photos/lake/images", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}, environ={}) == \
        f"abfss://photos@{host}/lake/images"
    assert hadoop_path(f"abfss://photos@{host}/lake", environ={}) == f"abfss://photos@{host}/lake"  # already Hadoop's
    # The environment's variables when the options do not say; a connection string's parts.
    conn = "DefaultEndpointsProtocol=https;AccountName=other;AccountKey=c2Vj=;EndpointSuffix=core.windows.net"
    assert spark_storage_conf({}, environ={"AZURE_STORAGE_CONNECTION_STRING": conn})[
        "spark.hadoop.fs.azure.account.key.other.dfs.core.windows.net"] == "c2Vj="
    assert hadoop_path("az://c/k", environ={"AZURE_STORAGE_CONNECTION_STRING": conn}) == \
        "abfss://c@other.dfs.core.windows.net/k"
    # A sovereign cloud's host-style endpoint changes the host, not the protocol.
    china = {"AZURE_STORAGE_ACCOUNT_NAME": "cn1", "AZURE_STORAGE_ENDPOINT": "https://cn1.blob.core.chinacloudapi.cn"}
    assert hadoop_path("az://c/k", china, environ={}) == "abfss://c@cn1.dfs.core.chinacloudapi.cn/k"
    assert spark_storage_conf(china, environ={}) == {}  # no key: ABFS keeps its own auth settings
    # A SAS token without a key: ABFS' SAS auth with its fixed token ("?" dropped); a key wins over it.
    sas = {"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_SAS_TOKEN": "?sv=2019-12-12&sig=abc%2B"}
    assert spark_storage_conf(sas, environ={}) == {f"spark.hadoop.fs.azure.account.auth.type.{host}": "SAS",
                                                   f"spark.hadoop.fs.azure.sas.fixed.token.{host}": "sv=2019-12-12&sig=abc%2B"}
    assert spark_storage_conf({**sas, "AZURE_STORAGE_ACCOUNT_KEY": "a2V5=="}, environ={})[
        f"spark.hadoop.fs.azure.account.auth.type.{host}"] == "SharedKey"
    assert spark_storage_conf({}, environ={"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;SharedAccessSignature=sv=1&sig=x"})[
        f"spark.hadoop.fs.azure.sas.fixed.token.{host}"] == "sv=1&sig=x"
    # No account anywhere: a clear error, not a JVM stack trace later.
    with pytest.raises(SpecError, match="no Azure storage account"):
        hadoop_path("az://c/k", {}, environ={})


def test_an_emulator_endpoint_gets_the_blob_client_and_plain_http():
    emulator = {"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:10123/{AZURITE_ACCOUNT};"}
    host = f"{AZURITE_ACCOUNT}.dfs.core.windows.net"
    conf = spark_storage_conf(emulator, environ={})
    assert {k: v for k, v in conf.items() if "account.key" not in k} == {
        f"spark.hadoop.fs.azure.account.auth.type.{host}": "SharedKey",
        f"spark.hadoop.fs.azure.abfs.endpoint.{host}": "127.0.0.1:10123",
        f"spark.hadoop.fs.azure.fns.account.service.type.{host}": "BLOB",
        f"spark.hadoop.fs.azure.ingress.service.type.{host}": "BLOB",
        f"spark.hadoop.fs.azure.account.hns.enabled.{host}": "false",
        f"spark.hadoop.fs.azure.networking.library.{host}": "JDK_HTTP_URL_CONNECTION",
        "spark.hadoop.fs.azure.always.use.https": "false",
    }
    assert conf[f"spark.hadoop.fs.azure.account.key.{host}"] == AZURITE_KEY
    assert hadoop_path("az://c/lake", emulator, environ={}) == f"abfs://c@{host}/lake"  # http: abfs, not abfss
    # delta-rs' AZURE_STORAGE_USE_EMULATOR means Azurite's default endpoint and account.
    assert hadoop_path("az://c/lake", {"AZURE_STORAGE_USE_EMULATOR": "true"}, environ={}) == f"abfs://c@{host}/lake"
    assert spark_storage_conf({"azure_storage_use_emulator": "true"}, environ={})[
        f"spark.hadoop.fs.azure.abfs.endpoint.{host}"] == "127.0.0.1:10000"


# --- Spark on Azurite ---------------------------------------------------------------------------


@pytest.mark.spark
def test_session_has_abfs_and_the_azure_log_store_check(spark, azurite):
    fs_class = spark.sparkContext._jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass(
        "abfs", spark.sparkContext._jsc.hadoopConfiguration())
    assert fs_class.getName() == "org.apache.hadoop.fs.azurebfs.AzureBlobFileSystem"
    lake = f"az://{azurite.new_container()}/lake"
    assert check_log_store(spark, lake) == "io.delta.storage.AzureLogStore"
    key = "spark.delta.logStore.abfs.impl"
    try:
        spark.conf.set(key, "io.delta.storage.LocalLogStore")
        with pytest.raises(SpecError, match="not safe on Azure"):
            SparkEngine(lake, spark, storage_options=azurite.storage_options)
        spark.conf.set(key, "com.example.MyLogStore")
        with pytest.warns(UserWarning, match="cannot tell"):
            check_log_store(spark, lake)
        spark.conf.set(key, "io.delta.storage.HDFSLogStore")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_log_store(spark, lake) == "io.delta.storage.HDFSLogStore"
    finally:
        spark.conf.unset(key)


@pytest.mark.spark
@pytest.mark.slow
def test_spark_and_embedded_engines_ingest_and_transform_one_azure_lake(spark, azurite, tmp_path):
    from lakeimg.samples import write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src / "cats", 3, width=32, height=24)
    (src / "notes.jpg").write_bytes(b"not a jpeg\n" * 10)
    container = azurite.new_container()
    url = f"az://{container}/lake"
    # The account, key and endpoint as one connection string, as users of Azure tools have them.
    options = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    on_spark = Lake(url, engine="spark", spark=spark, storage_options=options)
    first = on_spark.ingest([str(src)], label_from_path="parent")
    assert (first.added, first.rejected) == (3, 1)
    # Spark wrote real Delta tables into the container (ABFS' Blob client, no hierarchical namespace).
    keys = azurite.keys(container, "lake/")
    assert "lake/images/_delta_log/00000000000000000001.json" in keys
    assert any(k.startswith("lake/images/part-") and k.endswith(".parquet") for k in keys)
    assert not [k for k in keys if k.startswith("lake/_lakeimg/staging/") and not k.endswith("/")]
    # Secrets went to the running session only, never to its launch settings.
    launched = "\n".join(f"{k}={v}" for k, v in spark.sparkContext.getConf().getAll())
    assert AZURITE_KEY not in launched

    embedded = Lake(url, storage_options=options)
    images = embedded.read("images", columns=["uri", "width", "label"])
    photos = sorted((src / "cats").rglob("*.jpg"))
    assert sorted(images["uri"].to_pylist()) == [p.as_uri() for p in photos]
    assert set(images["width"].to_pylist()) == {32}
    assert set(images["label"].to_pylist()) == {p.parent.name for p in photos}
    versions = {t: embedded.version(t) for t in ("images", "images_rejects")}
    # The embedded engine re-reads what Spark wrote: nothing changed, no table gets a version.
    again = embedded.ingest([str(src)], workers=0, label_from_path="parent")
    assert (again.added, again.updated, again.unchanged, again.rejected) == (0, 0, 4, 0)
    assert {t: embedded.version(t) for t in versions} == versions
    # A new file through the embedded engine, then Spark again: one add, then a no-op.
    write_photo_jpegs(src / "dogs", 1, width=32, height=24)
    assert embedded.ingest([str(src)], workers=0, label_from_path="parent").added == 1
    versions = {t: embedded.version(t) for t in versions}
    rerun = on_spark.ingest([str(src)], label_from_path="parent")
    assert (rerun.added, rerun.updated, rerun.unchanged) == (0, 0, 5)
    assert {t: embedded.version(t) for t in versions} == versions

    # Transform on Spark; the embedded engine reads the result and its lineage.
    small = on_spark.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]})
    assert small.added == 4
    assert set(embedded.read("small", columns=["width"])["width"].to_pylist()) == {8}
    assert [(s.table, s.job) for s in embedded.lineage("small", small.version)][:2] == [
        ("small", "transform"), ("images", "ingest")]
    # Spark's VACUUM dry run names files in the lake's own spelling.
    doomed = on_spark.spark_engine().vacuum("images", retention_hours=0, dry_run=True)
    assert all(p.startswith(url + "/images/") for p in doomed)


@pytest.mark.spark
def test_spark_writes_an_azure_lake_with_a_sas_token_alone(spark, azurite, tmp_path):
    """ABFS authenticates with the SAS token lakeimg's options carry: no account key reaches it."""
    from lakeimg.samples import write_photo_jpegs

    src = tmp_path / "src"
    write_photo_jpegs(src, 2, width=32, height=24)
    container = azurite.new_container()
    host = f"{AZURITE_ACCOUNT}.dfs.core.windows.net"
    for name in (f"fs.azure.account.key.{host}", f"fs.azure.account.key.{AZURITE_ACCOUNT}.blob.core.windows.net"):
        spark.conf.unset(name)  # other tests' engines set the key on this shared session
    options = {**{k: v for k, v in azurite.storage_options.items() if k != "AZURE_STORAGE_ACCOUNT_KEY"},
               "AZURE_STORAGE_SAS_TOKEN": "?" + azurite.sas_token()}
    lake = Lake(f"az://{container}/lake", engine="spark", spark=spark, storage_options=options)
    assert lake.ingest([str(src)]).added == 2
    assert spark.conf.get(f"fs.azure.account.auth.type.{host}") == "SAS"
    assert spark.conf.get(f"fs.azure.account.key.{host}", None) is None
    # Spark itself wrote the rows (its own file names), and the embedded engine reads them.
    keys = azurite.keys(container, "lake/")
    assert any(k.startswith("lake/images/part-00000-") for k in keys)
    # Its staged rows were removed (Azurite refuses the bulk delete with a SAS: one object at a time).
    assert not [k for k in keys if k.startswith("lake/_lakeimg/staging/") and not k.endswith("/")]
    embedded = Lake(f"az://{container}/lake", storage_options={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert sorted(embedded.read("images", columns=["uri"])["uri"].to_pylist()) == sorted(p.as_uri() for p in src.rglob("*.jpg"))
