"""The Spark engine: kernels through `mapInArrow`, Delta tables through delta-spark.

`SparkEngine` is the one place the Spark engine touches Delta. Library code never builds a
session: callers pass one in (`spark_session_builder` returns a builder configured the standard
way for delta-spark, for the CLI, tests and jobs to call `.getOrCreate()` on).

Object stores: Spark reaches them through Hadoop's connectors (S3A for `s3://`, ABFS for
Azure). This module owns what that takes: the connector jars at the Hadoop version pyspark
bundles (`connector_packages`, added by `spark_session_builder(object_stores=...)`), the one
mapping of lakeimg's URLs to the paths Hadoop reads (`hadoop_path`: `s3://` -> `s3a://`,
`az://c/k` -> `abfs[s]://c@ACCOUNT.dfs.core.windows.net/k`; lakeimg keeps and reports the user's
spelling), the translation of lakeimg's storage options into Hadoop settings
(`spark_storage_conf`, `azure_settings`), and the check of delta-spark's LogStore on S3 and
Azure (`check_log_store`).

Example:
    >>> connector_packages(["s3://bucket/lake"], hadoop_version="3.5.0")  # the builder adds them
    ['org.apache.hadoop:hadoop-aws:3.5.0']
    >>> spark_storage_conf({"AWS_REGION": "eu-west-1"}, environ={}, bucket="bucket")  # the engine sets them
    {'spark.hadoop.fs.s3a.bucket.bucket.endpoint.region': 'eu-west-1'}
    >>> hadoop_path("s3://bucket/lake/images")
    's3a://bucket/lake/images'
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import pyarrow as pa

from lakeimg.engine._delta_txn import cast_to_schema
from lakeimg.engine.base import (
    CommitResult,
    SnapshotRows,
    Stage,
    VersionLike,
    Write,
    commit_metadata_json,
    parse_history,
    task_partitions,
    with_retries,
)
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import check_log_tail, table_location, tables_in
from lakeimg.engine.pool import isolated_kernel
from lakeimg.engine.urisets import uri_set
from lakeimg.errors import LakeImgError, SpecError, TableNotFoundError
from lakeimg.schemas import TableContract, arrow_type
from lakeimg.storage import local_path_or_none, remove_prefix

__all__ = [
    "spark_session_builder", "DELTA_SQL_CONF", "SparkEngine", "SparkStaged", "bundled_hadoop_version",
    "connector_packages", "hadoop_path", "spark_storage_conf", "check_log_store", "azure_settings", "AzureSettings",
    "local_python_conf", "jvm_output_to",
]

_USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
_ALLOW_NESTED_NOT_NULL_CONF = "spark.databricks.delta.constraints.allowUnenforcedNotNull.enabled"
_ROW_GROUP_ROWS_CONF = "parquet.block.row.count.limit"  # parquet-mr 1.14+
# Up to this many uris, a stage's snapshot rows are chosen, and a replace's rows dropped, with IN
# (see _snapshot_rows, _replace_by_merge).
ISIN_LIMIT = 10_000

# Delta's SQL extension and catalog: what delta-spark's quickstart sets on every session.
DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


# --- object stores -----------------------------------------------------------------------
# Each URL scheme lakeimg accepts -> (the scheme Hadoop's connector registers, its Maven artifact).
_CONNECTORS = {
    "s3": ("s3a", "hadoop-aws"), "s3a": ("s3a", "hadoop-aws"), "s3n": ("s3a", "hadoop-aws"),
    "abfs": ("abfs", "hadoop-azure"), "abfss": ("abfss", "hadoop-azure"), "az": ("abfss", "hadoop-azure"),
    "wasb": ("wasb", "hadoop-azure"), "wasbs": ("wasbs", "hadoop-azure"),
}
# Azurite's well-known development account (public, documented by Microsoft): what
# AZURE_STORAGE_USE_EMULATOR=true means, as in delta-rs.
_AZURITE_ACCOUNT = "devstoreaccount1"
_AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_S3A_TEMPORARY = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
_S3A_SIMPLE = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
# delta-spark's LogStore for s3a when nothing is set: mutual exclusion inside one driver only.
_S3_DEFAULT_LOG_STORE = "io.delta.storage.S3SingleDriverLogStore"
_S3_SAFE_LOG_STORES = {
    _S3_DEFAULT_LOG_STORE, "org.apache.spark.sql.delta.storage.S3SingleDriverLogStore",
    "io.delta.storage.S3DynamoDBLogStore",  # delta-storage-s3-dynamodb: many drivers, one DynamoDB table
}
# Stores that commit by rename or by local-file semantics: on S3 (no atomic rename, no
# put-if-absent through them) two writers can both "win" a version and one commit is lost.
_S3_UNSAFE_LOG_STORES = {
    f"{package}.{name}"
    for package in ("io.delta.storage", "org.apache.spark.sql.delta.storage")
    for name in ("HDFSLogStore", "LocalLogStore", "AzureLogStore", "GCSLogStore")
}

# delta-spark's LogStore for abfs[s] (and wasb[s], adl) when nothing is set: a rename that
# never overwrites (atomic on ADLS Gen2).
_AZURE_DEFAULT_LOG_STORE = "io.delta.storage.AzureLogStore"
_AZURE_SAFE_LOG_STORES = {
    _AZURE_DEFAULT_LOG_STORE, "org.apache.spark.sql.delta.storage.AzureLogStore",
    "io.delta.storage.HDFSLogStore", "org.apache.spark.sql.delta.storage.HDFSLogStore",  # FileContext's rename
}
_AZURE_UNSAFE_LOG_STORES = {
    f"{package}.{name}"
    for package in ("io.delta.storage", "org.apache.spark.sql.delta.storage")
    for name in ("LocalLogStore", "S3SingleDriverLogStore", "S3DynamoDBLogStore", "GCSLogStore")
}


def _scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else url.lower()


def hadoop_path(url: str, storage_options: Mapping[str, str] | None = None, *,
                environ: Mapping[str, str] | None = None) -> str:
    """The path Spark's Hadoop file systems read for a lakeimg URL: the one place lakeimg's
    spellings become Hadoop's. `s3://` becomes `s3a://` (Hadoop 3 has no `s3://` file system);
    `az://container/key` becomes ABFS' `abfss://container@ACCOUNT.dfs.SUFFIX/key`, the account
    (and a sovereign cloud's suffix) taken from the storage options (`azure_settings`), and
    `abfs://` over an `http://` endpoint (an emulator such as Azurite). Other URLs and local
    paths are unchanged; lakeimg records and reports the user's own spelling.

    Raises:
        SpecError: an `az://` URL and no Azure account in the options or the environment.

    Example:
        >>> hadoop_path("s3://bucket/lake/images"), hadoop_path("/data/lake/images")
        ('s3a://bucket/lake/images', '/data/lake/images')
        >>> hadoop_path("az://photos/lake", {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}, environ={})
        'abfss://photos@acct.dfs.core.windows.net/lake'
        >>> hadoop_path("az://photos/lake", {"AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1",
        ...     "AZURE_STORAGE_ENDPOINT": "http://127.0.0.1:10000/devstoreaccount1"}, environ={})
        'abfs://photos@devstoreaccount1.dfs.core.windows.net/lake'
    """
    head, sep, rest = url.partition("://")
    scheme = head.lower()
    if not sep:
        return url
    if scheme in ("s3", "s3n"):
        return f"s3a://{rest}"
    if scheme not in ("az", "azure", "abfs", "abfss", "adl"):
        return url
    authority, slash, key = rest.partition("/")
    container, at, host = authority.partition("@")
    settings = azure_settings(storage_options, environ=environ, account=host.split(".")[0] if at else None)
    if settings is None:
        raise SpecError(f"{url}: no Azure storage account for Spark (set AZURE_STORAGE_ACCOUNT_NAME or "
                        "AZURE_STORAGE_CONNECTION_STRING, or use abfss://container@account.dfs.core.windows.net/)")
    if at and scheme in ("abfs", "abfss") and not settings.emulator:
        return url  # already Hadoop's spelling
    return f"{'abfs' if settings.http else 'abfss'}://{container}@{settings.host}{slash}{key}"


class AzureSettings(NamedTuple):
    """What Spark's ABFS connector needs for one Azure account (see `azure_settings`)."""

    account: str
    host: str  # ACCOUNT.dfs.SUFFIX: the host in ABFS URLs and in per-account setting names
    key: str | None  # the shared key (a secret)
    endpoint: str | None  # host:port of a path-style endpoint (an emulator), else None
    http: bool  # the endpoint is plain HTTP
    sas: str | None = None  # a SAS token without its leading "?" (a secret), used when there is no key

    @property
    def emulator(self) -> bool:
        return self.endpoint is not None


def azure_settings(storage_options: Mapping[str, str] | None = None, *, environ: Mapping[str, str] | None = None,
                   account: str | None = None) -> AzureSettings | None:
    """The Azure account, key and endpoint lakeimg's options name, as ABFS needs them (None:
    no account). Options over the environment, like delta-rs: AZURE_STORAGE_ACCOUNT_NAME,
    AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN (used without a key),
    AZURE_STORAGE_CONNECTION_STRING (its AccountName, AccountKey, SharedAccessSignature and
    BlobEndpoint), AZURE_STORAGE_ENDPOINT (a sovereign cloud's `https://acct.blob.SUFFIX` or an
    emulator's path-style `http://127.0.0.1:10000/devstoreaccount1`) and
    AZURE_STORAGE_USE_EMULATOR (Azurite's default endpoint and account).

    Example:
        >>> azure_settings({"AZURE_STORAGE_USE_EMULATOR": "true"}, environ={}).endpoint
        '127.0.0.1:10000'
    """
    options = dict(storage_options or {})
    env = os.environ if environ is None else environ
    key = _option(options, env, "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY")
    named = _option(options, env, "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT")
    endpoint = _option(options, env, "AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT")
    sas = _option(options, env, "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY", "AZURE_SAS_TOKEN", "AZURE_SAS_KEY")
    connection = _option(options, env, "AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = _connection_string(connection)
        named, key = named or fields.get("accountname"), key or fields.get("accountkey")
        sas = sas or fields.get("sharedaccesssignature")
        endpoint = endpoint or fields.get("blobendpoint")
    if (_option(options, env, "AZURE_STORAGE_USE_EMULATOR", "AZURE_USE_EMULATOR") or "").lower() == "true":
        named = named or _AZURITE_ACCOUNT
        key = key or (None if sas else _AZURITE_KEY)
        endpoint = endpoint or f"http://127.0.0.1:10000/{named}"
    account = account or named
    if not account:
        return None
    suffix, path_style = "core.windows.net", None
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        authority = rest.split("/", 1)[0]
        if authority.lower().startswith(account.lower() + ".") and ".blob." in authority:
            suffix = authority.split(".blob.", 1)[1]  # https://acct.blob.core.chinacloudapi.cn
        else:
            path_style = authority  # an emulator: the account is the URL's first path segment
        http = scheme.lower() == "http"
    else:
        http = False
    return AzureSettings(account, f"{account}.dfs.{suffix}", key, path_style, http, sas.lstrip("?") if sas and not key else None)


def _azure_conf(settings: AzureSettings) -> dict[str, str]:
    """ABFS' per-account settings (`fs.azure.*.<host>`) for `settings`; plain HTTP is the one
    setting ABFS reads for every account (`fs.azure.always.use.https`), and it only lets
    `abfs://` URLs (which `hadoop_path` gives for an http endpoint only) go over HTTP."""
    conf = {}
    if settings.key:
        conf["fs.azure.account.auth.type"] = "SharedKey"
        conf["fs.azure.account.key"] = settings.key
    elif settings.sas:  # ABFS' own fixed-token provider takes it (hadoop-azure 3.4+)
        conf["fs.azure.account.auth.type"] = "SAS"
        conf["fs.azure.sas.fixed.token"] = settings.sas
    if settings.emulator:
        conf.update({
            "fs.azure.abfs.endpoint": settings.endpoint,
            # Azurite speaks the Blob API only: ABFS' Blob client, and no hierarchical namespace.
            "fs.azure.fns.account.service.type": "BLOB",
            "fs.azure.ingress.service.type": "BLOB",
            "fs.azure.account.hns.enabled": "false",
            "fs.azure.networking.library": "JDK_HTTP_URL_CONNECTION",
        })
    out = {f"spark.hadoop.{k}.{settings.host}": v for k, v in conf.items()}
    if settings.key:  # wasb[s]:// reads the key under the account's blob host
        out[f"spark.hadoop.fs.azure.account.key.{settings.host.replace('.dfs.', '.blob.', 1)}"] = settings.key
    if settings.http:
        out["spark.hadoop.fs.azure.always.use.https"] = "false"
    return out


def bundled_hadoop_version(jars_dir: str | None = None) -> str:
    """The Hadoop version Spark runs with, read from its jars folder (`hadoop-client-api-X.jar`):
    `$SPARK_HOME/jars` when SPARK_HOME is set, else the installed pyspark's.

    Connector jars must match it exactly (hadoop-aws 3.4 on Hadoop 3.5 fails at class loading).

    Example:
        >>> import pathlib, tempfile
        >>> folder = tempfile.mkdtemp(); _ = pathlib.Path(folder, "hadoop-client-api-3.5.0.jar").touch()
        >>> bundled_hadoop_version(folder)
        '3.5.0'
    """
    if jars_dir is None:
        if os.environ.get("SPARK_HOME"):
            jars_dir = os.path.join(os.environ["SPARK_HOME"], "jars")
        else:
            import pyspark

            jars_dir = os.path.join(os.path.dirname(pyspark.__file__), "jars")
    found = sorted(glob.glob(os.path.join(glob.escape(jars_dir), "hadoop-client-api-*.jar")))
    if not found:
        raise LakeImgError(
            f"no hadoop-client-api jar in {jars_dir}: cannot tell which Hadoop version Spark runs; "
            "add the object-store connector yourself (spark.jars.packages=org.apache.hadoop:hadoop-aws:<version>)"
        )
    return os.path.basename(found[-1])[len("hadoop-client-api-"):-len(".jar")]


def connector_packages(object_stores: Iterable[str], hadoop_version: str | None = None) -> list[str]:
    """Maven coordinates of the Hadoop connectors the given URLs (or schemes) need.

    `hadoop-aws` brings its AWS SDK (`software.amazon.awssdk:bundle`) as a dependency, so
    Spark's package resolution fetches both; local paths need nothing.

    Example:
        >>> connector_packages(["s3://bucket/lake", "/local/lake", "s3a"], hadoop_version="3.5.0")
        ['org.apache.hadoop:hadoop-aws:3.5.0']
        >>> connector_packages(["abfss://c@acct.dfs.core.windows.net/lake"], hadoop_version="3.5.0")
        ['org.apache.hadoop:hadoop-azure:3.5.0']
    """
    artifacts = []
    for url in object_stores:
        entry = _CONNECTORS.get(_scheme(str(url)))
        if entry and entry[1] not in artifacts:
            artifacts.append(entry[1])
    if not artifacts:
        return []
    version = hadoop_version or bundled_hadoop_version()
    return [f"org.apache.hadoop:{artifact}:{version}" for artifact in artifacts]


def _option(options: Mapping[str, str], environ: Mapping[str, str], *names: str) -> str | None:
    """The first of `names` set in `options` (any case, with or without the AWS_/AZURE_ prefix,
    as delta-rs accepts them), else in the environment (upper case, as the variables are spelt)."""
    given = {k.lower(): v for k, v in options.items()}
    for name in names:
        short = name.lower().split("_", 1)[1]
        for key in (name.lower(), short):
            if given.get(key):
                return str(given[key])
    for name in names:
        if environ.get(name):
            return str(environ[name])
    return None


def _connection_string(text: str) -> dict[str, str]:
    """An Azure connection string's `Key=Value;` fields (values may hold "=")."""
    fields = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def spark_storage_conf(
    storage_options: Mapping[str, str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    bucket: str | None = None,
) -> dict[str, str]:
    """lakeimg's storage options as Spark's `spark.hadoop.fs.s3a.*` / `spark.hadoop.fs.azure.*`
    settings.

    Options use delta-rs' keys, which are the standard variables' names (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP,
    AWS_VIRTUAL_HOSTED_STYLE_REQUEST, AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY,
    AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ENDPOINT, AZURE_STORAGE_USE_EMULATOR); a key missing from `storage_options` is taken from
    `environ` (default: the process environment). With `bucket`, the S3A settings are that
    bucket's own (`fs.s3a.bucket.<bucket>.*`), leaving other buckets as the session has them.

    - a custom endpoint (MinIO, R2, a test server) turns on path-style access unless
      AWS_VIRTUAL_HOSTED_STYLE_REQUEST is true, and an `http://` endpoint turns TLS off;
    - an access key pair selects S3A's simple credentials provider, plus a session token
      the temporary one; without keys S3A keeps its default chain (instance roles, profiles);
    - Azure (`azure_settings`): the account's shared key, per account
      (`fs.azure.account.key.ACCOUNT.dfs.core.windows.net`), or without one a SAS token
      (`fs.azure.account.auth.type...=SAS` and ABFS' fixed token); an emulator's path-style endpoint
      (Azurite) adds ABFS' endpoint override, its Blob-API client and no hierarchical namespace
      for that account, and an `http://` endpoint allows HTTP for `abfs://` URLs.

    The values hold secrets: pass them to a running session (`spark.conf.set`, what
    `SparkEngine` does), never to a session builder, whose settings reach the `spark-submit`
    command line. Nothing here logs or formats them into a message.

    Example:
        >>> opts = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
        ...         "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "us-east-1"}
        >>> for k, v in sorted(spark_storage_conf(opts, environ={}).items()):
        ...     print(k, "=", v)
        spark.hadoop.fs.s3a.access.key = key
        spark.hadoop.fs.s3a.aws.credentials.provider = org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider
        spark.hadoop.fs.s3a.connection.ssl.enabled = false
        spark.hadoop.fs.s3a.endpoint = http://127.0.0.1:9000
        spark.hadoop.fs.s3a.endpoint.region = us-east-1
        spark.hadoop.fs.s3a.path.style.access = true
        spark.hadoop.fs.s3a.secret.key = secret
        >>> spark_storage_conf({"aws_session_token": "t"}, environ={"AWS_ACCESS_KEY_ID": "k",
        ...     "AWS_SECRET_ACCESS_KEY": "s"}, bucket="b")["spark.hadoop.fs.s3a.bucket.b.aws.credentials.provider"]
        'org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider'
        >>> for k, v in sorted(spark_storage_conf({"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;AccountKey=k=="},
        ...                                        environ={}).items()):
        ...     print(k, "=", v)
        spark.hadoop.fs.azure.account.auth.type.acct.dfs.core.windows.net = SharedKey
        spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net = k==
        spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net = k==
        >>> spark_storage_conf({}, environ={})
        {}
    """
    options = dict(storage_options or {})
    env = os.environ if environ is None else environ
    s3a: dict[str, str] = {}
    key_id = _option(options, env, "AWS_ACCESS_KEY_ID")
    secret = _option(options, env, "AWS_SECRET_ACCESS_KEY")
    token = _option(options, env, "AWS_SESSION_TOKEN", "AWS_TOKEN")
    if key_id and secret:
        s3a["access.key"], s3a["secret.key"] = key_id, secret
        s3a["aws.credentials.provider"] = _S3A_SIMPLE
        if token:
            s3a["session.token"] = token
            s3a["aws.credentials.provider"] = _S3A_TEMPORARY
    region = _option(options, env, "AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        s3a["endpoint.region"] = region
    endpoint = _option(options, env, "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
    if endpoint:
        s3a["endpoint"] = endpoint
        virtual = (_option(options, env, "AWS_VIRTUAL_HOSTED_STYLE_REQUEST") or "false").lower() == "true"
        s3a["path.style.access"] = "false" if virtual else "true"
        if endpoint.lower().startswith("http://"):
            s3a["connection.ssl.enabled"] = "false"
    prefix = f"spark.hadoop.fs.s3a.bucket.{bucket}." if bucket else "spark.hadoop.fs.s3a."
    conf = {prefix + k: v for k, v in s3a.items()}

    azure = azure_settings(options, environ=env)
    if azure is not None and (azure.key or azure.sas or azure.emulator):
        conf.update(_azure_conf(azure))
    return conf


def check_log_store(spark, lake: str) -> str | None:
    """The LogStore delta-spark commits an object-store lake's tables with, refused when unsafe.

    On `s3://` (Spark's `s3a://`) delta-spark's default is `S3SingleDriverLogStore`: it makes
    commits exclusive inside one Spark driver only, because it writes `_delta_log/N.json` with
    a check-then-PUT rather than S3's conditional PUT. That is safe for lakeimg's runs (one
    driver commits a table's versions in order) but not for two drivers, or a driver and the
    embedded engine, committing to one table at the same time. A rename- or local-file-based
    store (HDFSLogStore, LocalLogStore, ...) is never safe on S3 and is refused.

    On Azure (`az://`, Spark's `abfs[s]://`) the default is `AzureLogStore`: a rename that
    must not overwrite. ABFS makes that rename atomic on ADLS Gen2 (hierarchical namespace);
    on a Blob Storage account without it Delta supports one writing driver per table.
    `LocalLogStore` and the S3 stores are refused there.

    A class lakeimg does not know is allowed with a warning. Returns the store's class (None
    for a local lake, where delta-spark's default is atomic rename).

    Example:
        >>> check_log_store(None, "/data/lake") is None
        True
    """
    scheme = _scheme(lake)
    if scheme in ("s3", "s3a", "s3n"):
        keys, default, safe, unsafe, store_name = ("s3a",), _S3_DEFAULT_LOG_STORE, _S3_SAFE_LOG_STORES, _S3_UNSAFE_LOG_STORES, "S3"
        advice = (f"unset spark.delta.logStore.* to use {_S3_DEFAULT_LOG_STORE} (one writing driver per table) or use "
                  "io.delta.storage.S3DynamoDBLogStore")
    elif scheme in ("az", "azure", "abfs", "abfss", "adl"):
        keys, default, safe, unsafe, store_name = ("abfss", "abfs"), _AZURE_DEFAULT_LOG_STORE, _AZURE_SAFE_LOG_STORES, \
            _AZURE_UNSAFE_LOG_STORES, "Azure"
        advice = f"unset spark.delta.logStore.* to use {_AZURE_DEFAULT_LOG_STORE}"
    else:
        return None
    conf = spark.conf
    store = next((conf.get(f"spark.delta.logStore.{k}.impl", None) for k in keys
                  if conf.get(f"spark.delta.logStore.{k}.impl", None)), None)
    store = (store or conf.get("spark.delta.logStore.class", None) or default).strip()
    if store in unsafe:
        raise SpecError(
            f"delta-spark's LogStore {store} is not safe on {store_name} (it relies on an atomic rename, a local file "
            f"system or another store's semantics, so concurrent commits can overwrite each other); {advice}"
        )
    if store not in safe:
        warnings.warn(
            f"delta-spark's LogStore {store} on {lake}: lakeimg cannot tell whether it makes {store_name} commits "
            "exclusive; two writers committing at once may lose a version",
            stacklevel=2,
        )
    return store


def _pairs(conf: Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(conf, Mapping):
        return [(str(k), str(v)) for k, v in conf.items()]
    pairs = []
    for item in conf:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecError(f"--spark-conf expects KEY=VALUE, got {item!r}")
            pairs.append((key.strip(), value.strip()))
        else:
            key, value = item
            pairs.append((str(key), str(value)))
    return pairs


def spark_session_builder(
    master: str | None = None,
    conf: Mapping[str, str] | Iterable[str] | Iterable[tuple[str, str]] = (),
    *,
    app_name: str = "lakeimg",
    object_stores: Iterable[str] = (),
):
    """A SparkSession builder with Delta's SQL extension and catalog and Delta's jars.

    The jars come from Maven Central through Spark's package resolution
    (`configure_spark_with_delta_pip` sets `spark.jars.packages`), cached in `~/.ivy2`.
    `object_stores` are the URLs (or schemes) the session will read and write: their Hadoop
    connectors (`connector_packages`: hadoop-aws for `s3://`) are resolved the same way. Jars
    cannot be added to a running session, so name them here. Credentials are not taken here
    (builder settings reach the spark-submit command line): `SparkEngine` sets them on the
    running session from its `storage_options`.
    `conf` is a mapping, `(key, value)` pairs or "KEY=VALUE" strings (as `--spark-conf` gives);
    it is applied last, so it can override anything here.

    Example:
        >>> spark = spark_session_builder("local[2]", ["spark.ui.enabled=false"]).getOrCreate()  # or the running one
        >>> spark.conf.get("spark.sql.extensions")
        'io.delta.sql.DeltaSparkSessionExtension'
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in DELTA_SQL_CONF.items():
        builder = builder.config(key, value)
    # Python workers import lakeimg; Arrow batches carry whole files, so keep them modest.
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    builder = builder.config("spark.ui.showConsoleProgress", "false")  # jobs print their own summary
    if master and master.startswith("local"):
        # Delta replays its log with 50 tasks by default (sized for clusters); on one machine
        # that is pure task overhead on every snapshot.
        builder = builder.config("spark.databricks.delta.snapshotPartitions", "2")
    pairs = _pairs(conf)
    for key, value in local_python_conf(master, pairs).items():
        builder = builder.config(key, value)
    extra_packages = [v for k, v in pairs if k == "spark.jars.packages"] + connector_packages(object_stores)
    builder = configure_spark_with_delta_pip(builder, extra_packages=extra_packages or None)
    for key, value in pairs:
        if key != "spark.jars.packages":
            builder = builder.config(key, value)
    return builder


def local_python_conf(master: str | None, pairs: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """`spark.pyspark.python` / `spark.pyspark.driver.python` = this interpreter, for a session
    whose workers run on this machine (a `local` master, or none outside spark-submit), unless
    the user chose an interpreter (in `pairs` or PYSPARK_PYTHON / PYSPARK_DRIVER_PYTHON).

    Spark's workers otherwise run `python3` from PATH: from a venv that was never activated
    that is the system Python, without numpy or lakeimg.

    Example:
        >>> import sys
        >>> local_python_conf("local[2]", [])["spark.pyspark.python"] == sys.executable
        True
        >>> local_python_conf("spark://host:7077", []), local_python_conf("local[2]", [("spark.pyspark.python", "/opt/py")])
        ({}, {})
    """
    import sys

    under_submit = master is None and "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started this driver
    if not sys.executable or under_submit or (master is not None and not master.startswith("local")):
        return {}
    keys = {k for k, _ in pairs}
    if {"spark.pyspark.python", "spark.pyspark.driver.python"} & keys or os.environ.get("PYSPARK_PYTHON") \
            or os.environ.get("PYSPARK_DRIVER_PYTHON"):
        return {}
    return {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable}


@contextmanager
def jvm_output_to(path: str):
    """File descriptors 1 and 2 point at `path` while a JVM starts inside the block: the JVM
    inherits them for its lifetime (Ivy's resolution report, log4j), Python's own stdout and
    stderr come back after it. The CLI's quiet Spark (`--verbose` shows it all)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def arrow_schema_of(struct) -> pa.Schema:
    """The Arrow schema lakeimg uses for a Spark StructType (timestamps as UTC microseconds).

    Columns of types the contracts never use are left out; `cast_to_schema` keeps them as read.
    """
    fields = []
    for f in struct.jsonValue()["fields"]:
        try:
            fields.append(pa.field(f["name"], arrow_type(f["type"]), nullable=f.get("nullable", True)))
        except (KeyError, ValueError):
            continue
    return pa.schema(fields)


class SparkStaged:
    """A stage's output on the Spark engine (`lakeimg.engine.base.Staged`): the kernel's rows
    as Parquet under the lake, written by the executors; only what a job asks for small
    (keys, held rows, rejects) reaches the driver."""

    def __init__(self, engine: SparkEngine, location: str | None, schema: pa.Schema, held: str | None = None):
        self.engine, self.location, self.schema, self.held_column = engine, location, schema, held

    def _frame(self, part: str):
        from pyspark.sql import functions as F

        df = self.engine.spark.read.parquet(self.engine.hadoop(self.location))
        rejected = F.col("error_class").isNotNull() if "error_class" in self.schema.names else F.lit(False)
        held = F.coalesce(F.col(self.held_column), F.lit(False)) if self.held_column else F.lit(False)
        return df.where({"rejects": rejected, "held": ~rejected & held, "output": ~rejected & ~held}[part])

    def _arrow(self, part: str, columns: Sequence[str] | None = None) -> pa.Table:
        columns = list(columns) if columns is not None else self.schema.names
        if self.location is None:
            return self.schema.empty_table().select(columns)
        table = self._frame(part).select(*[f"`{c}`" for c in columns]).toArrow()
        return cast_to_schema(table, self.schema, columns)

    def keys(self, columns: Sequence[str] = ("uri",)) -> pa.Table:
        return self._arrow("output", columns)

    def held(self) -> pa.Table:
        return self._arrow("held")

    def rejects(self) -> pa.Table:
        return self._arrow("rejects")

    def conform(self, contract: TableContract):
        """The output rows as a DataFrame in a contract's columns and types (None: no stage ran)."""
        if self.location is None:
            return None
        return self.engine.conform(self._frame("output"), contract)

    def discard(self) -> None:
        if self.location is None:
            return
        remove_prefix(self.location, self.engine.storage_options)


class SparkEngine:
    """delta-spark handle for one lake on a caller's SparkSession: the same surface as LocalEngine.

    An object-store lake (`s3://bucket/lake`) needs a session with its connector's jars
    (`spark_session_builder(object_stores=[lake])`). The engine then sets the bucket's S3A
    settings from `storage_options` (over the AWS_* environment variables) on the session,
    for that bucket only (`spark_storage_conf(bucket=...)`), and checks delta-spark's LogStore
    (`check_log_store`). Paths go to Spark as `s3a://` (`hadoop_path`); `location()` and every
    path lakeimg reports keep the lake's own spelling.

    Example:
        >>> eng = SparkEngine(lake_dir, spark)
        >>> eng.read("images", version=0, columns=["uri"]).num_rows
        4
    """

    name = "spark"
    commits_in_threads = False  # userMetadata is a session setting (`_user_metadata`)

    def __init__(
        self,
        lake: str | os.PathLike[str],
        spark,
        *,
        owns_session: bool = False,
        storage_options: Mapping[str, str] | None = None,
    ):
        if spark is None:
            raise LakeImgError("the Spark engine needs a SparkSession (lakeimg never builds a hidden one)")
        self.lake = str(lake)
        self.spark = spark
        self.owns_session = owns_session
        self.storage_options = dict(storage_options) if storage_options is not None else None
        self.options = dict(storage_options or {})  # what jobs hand the kernels (sources on object stores)
        self.log_store = check_log_store(spark, self.lake)
        self._configure_store()

    def _configure_store(self) -> None:
        """Set the lake's bucket's S3A settings, or its Azure account's ABFS settings, on the
        session (a session setting reaches the Hadoop configuration of every read and write it
        runs, on the executors too)."""
        scheme = _scheme(self.lake)
        if scheme in ("s3", "s3a", "s3n"):
            bucket = self.lake.partition("://")[2].split("/", 1)[0]
            wanted = "spark.hadoop.fs.s3a."
        elif scheme in ("az", "azure", "abfs", "abfss", "adl"):
            bucket, wanted = None, "spark.hadoop.fs.azure."
            hadoop_path(self.lake, self.storage_options)  # no account: a SpecError now, not a JVM error later
        else:
            return
        for key, value in spark_storage_conf(self.storage_options, bucket=bucket).items():
            if key.startswith(wanted):
                self.spark.conf.set(key[len("spark.hadoop."):], value)

    def hadoop(self, url: str) -> str:
        """`url` (in the lake, or a staged file) as Spark's Hadoop file systems read it."""
        return hadoop_path(url, self.storage_options)

    def _path(self, name: str) -> str:
        """A table's location as Spark's Hadoop file systems read it (`hadoop_path`)."""
        return self.hadoop(self.location(name))

    def _user_spelling(self, path: str) -> str:
        """A path Spark reports (`s3a://...`, `abfs://c@acct.dfs.core.windows.net/...`) in the
        lake's own spelling (`s3://...`, `az://c/...`)."""
        hadoop_lake = self.hadoop(self.lake).rstrip("/")
        if hadoop_lake != self.lake and (path == hadoop_lake or path.startswith(hadoop_lake + "/")):
            return self.lake.rstrip("/") + path[len(hadoop_lake):]
        return path

    def start_workers(self) -> None:
        """Nothing: the session's executors are running already."""

    def preload(self, name: str) -> None:
        """Nothing: delta-spark reads a table's snapshot as part of each write."""

    def close(self) -> None:
        """Stop the session if this engine built it (`open_engine` without a session)."""
        if self.owns_session:
            self.spark.stop()
            self.owns_session = False

    # --- reading -------------------------------------------------------------------------

    def location(self, name: str) -> str:
        return table_location(self.lake, name)

    def _delta(self, name: str):
        from delta.tables import DeltaTable

        if not self.exists(name):
            raise TableNotFoundError(name, self.lake)
        if local_path_or_none(self.location(name)) is not None:  # a PUT is whole: only local entries can be cut
            check_log_tail(self.location(name), name)
        return DeltaTable.forPath(self.spark, self._path(name))

    def exists(self, name: str) -> bool:
        from delta.tables import DeltaTable

        local = local_path_or_none(self.location(name))
        if local is not None and not os.path.isdir(os.path.join(local, "_delta_log")):
            return False  # cheap answer without a JVM round trip
        return bool(DeltaTable.isDeltaTable(self.spark, self._path(name)))

    # Metadata comes from the same Delta log through delta-rs (`reader()`): the same answers
    # as the embedded engine's, and no Spark job for a version number.

    def version(self, name: str) -> int | None:
        return self.reader().version(name)

    def resolve_version(self, name: str, version: VersionLike = None) -> int:
        return self.reader().resolve_version(name, version)

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Spark's own reading of the log: timestamps are the commits' file times, which time
        travel by timestamp goes by (delta-rs' history gives the commit-info times)."""
        from pyspark.sql import functions as F

        df = self._delta(name).history(limit) if limit else self._delta(name).history()
        df = df.withColumn("timestamp", F.unix_millis("timestamp")).orderBy(F.col("version").desc())
        return [parse_history({k: v for k, v in row.asDict(recursive=True).items() if v is not None}) for row in df.collect()]

    def table_properties(self, name: str) -> dict[str, str]:
        return self.reader().table_properties(name)

    def frame(self, name: str, version: VersionLike = None):
        """The table (at a version or timestamp) as a Spark DataFrame."""
        reader = self.spark.read.format("delta")
        if version is not None:
            resolved = self.resolve_version(name, version)
            reader = reader.option("versionAsOf", resolved)
            try:
                return reader.load(self._path(name))
            except Exception as exc:  # delta-spark: the version does not exist (yet, or any more)
                raise TableNotFoundError(f"{name}@{resolved}", self.lake) from exc
        if not self.exists(name):
            raise TableNotFoundError(name, self.lake)
        return reader.load(self._path(name))

    def arrow_schema(self, name: str, version: VersionLike = None) -> pa.Schema:
        """The table's schema as Arrow (lakeimg's types: UTC microsecond timestamps)."""
        return arrow_schema_of(self.frame(name, version).schema)

    def read(
        self,
        name: str,
        *,
        version: VersionLike = None,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
    ) -> pa.Table:
        """A snapshot as an Arrow table on the driver, typed like LocalEngine.read.

        Only for small results (keys, metadata); jobs keep image data in DataFrames.
        `filter` is a Spark SQL expression.
        """
        df = self.frame(name, version)
        if filter is not None:
            df = df.where(filter)
        if columns:
            df = df.select(*[f"`{c}`" for c in columns])
        return cast_to_schema(df.toArrow(), arrow_schema_of(df.schema), columns)

    def changes(self, name: str, starting_version: int, ending_version: int | None = None, columns: Sequence[str] = ("uri",)) -> pa.Table:
        """The change data feed between two versions (inclusive), typed like `LocalEngine.changes`."""
        wanted = list(dict.fromkeys([*columns, "_change_type", "_commit_version"]))
        reader = self.spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", starting_version)
        if ending_version is not None:
            reader = reader.option("endingVersion", ending_version)
        try:
            table = reader.load(self._path(name)).select(*[f"`{c}`" for c in wanted]).toArrow()
        except Exception as exc:  # noqa: BLE001 - e.g. log entries or change files already vacuumed
            raise LakeImgError(f"{name}: no change data feed for versions {starting_version}..{ending_version}: {exc}") from exc
        return table.cast(pa.schema([pa.field(f.name, pa.int64() if f.name == "_commit_version" else f.type) for f in table.schema]))

    def read_batches(self, name: str, *, columns: Sequence[str], version: VersionLike = None, batch_rows: int = 64):
        """Streamed on the driver by the lake's delta-rs reader (`reader()`): no Spark job."""
        return self.reader().read_batches(name, columns=columns, version=version, batch_rows=batch_rows)

    def reader(self):
        """A delta-rs engine on this lake: small driver-side reads with row-group pushdown
        (region reads) cost no Spark job."""
        return LocalEngine(self.lake, storage_options=self.storage_options)

    def tables(self) -> list[str]:
        """The Delta tables in the lake (lakeimg's own as `_lakeimg/runs`...)."""
        return tables_in(self.lake, self.storage_options)

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def _user_metadata(self, metadata: dict[str, Any] | None):
        """Session settings for one commit: the run record as userMetadata, and nested NOT NULL.

        The contracts keep NOT NULL on fields inside arrays (e.g. runs.inputs[].table), which
        delta-rs writes as is; delta-spark refuses such schemas unless told to leave those
        nested constraints unenforced. Both are set around the commit and restored after.
        """
        settings = {_ALLOW_NESTED_NOT_NULL_CONF: "true"}
        if metadata is not None:
            settings[_USER_METADATA_CONF] = commit_metadata_json(metadata)
        with self._session_conf(settings):
            yield

    @contextmanager
    def _session_conf(self, settings: dict[str, str]):
        """Set session settings for the block, restoring the previous values after."""
        previous = {key: self.spark.conf.get(key, None) for key in settings}
        for key, value in settings.items():
            self.spark.conf.set(key, value)
        try:
            yield
        finally:
            for key, value in previous.items():
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)

    # --- maintenance ---------------------------------------------------------------------

    def optimize(self, name: str, *, metadata: dict[str, Any] | None = None,
                 row_group_rows: int | None = None) -> dict[str, Any]:
        """Compact small files (delta-spark's OPTIMIZE); metrics as delta-rs names them. Row
        groups keep at most `row_group_rows` rows (parquet-mr's limit, as in `commit`)."""
        table = self._delta(name)
        layout = {_ROW_GROUP_ROWS_CONF: str(row_group_rows)} if row_group_rows else {}
        with self._user_metadata(metadata), self._session_conf(layout):
            metrics = with_retries(name, lambda: table.optimize().executeCompaction().collect()[0]["metrics"], _conflicts())
        return {"numFilesAdded": int(metrics["numFilesAdded"]), "numFilesRemoved": int(metrics["numFilesRemoved"])}

    def vacuum(self, name: str, *, retention_hours: float, keep_versions: Sequence[int] = (), dry_run: bool = True) -> list[str]:
        """Paths of the files VACUUM removes (or would, with `dry_run`): local paths, or URLs
        in the lake's spelling.

        delta-spark's VACUUM keeps only what the versions inside the retention window read;
        it has no `keep_versions`. Callers check the dry run against the versions they must
        keep (`lakeimg.catalog.maintenance` refuses the table when one would lose files).
        """
        query = f"VACUUM {_table_sql(self._path(name))} RETAIN {max(0.0, float(retention_hours)):g} HOURS"
        settings = {
            # A retention under Delta's 7-day safety check is the caller's explicit choice.
            "spark.databricks.delta.retentionDurationCheck.enabled": "false",
            # VACUUM lists the table's folders with this many tasks (default 10,000: minutes of
            # task overhead on a small cluster for a table of a few folders).
            "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(
                max(2, self.spark.sparkContext.defaultParallelism)
            ),
        }
        with self._session_conf(settings):
            doomed = [local_path_or_none(row[0]) or self._user_spelling(row[0]) for row in self.spark.sql(query + " DRY RUN").collect()]
            if not dry_run and doomed:
                self.spark.sql(query).collect()
        return doomed

    def conform(self, df, contract: TableContract):
        """A DataFrame (or Arrow table) in a contract's columns and types."""
        from pyspark.sql import functions as F

        if isinstance(df, pa.Table):
            nullable = pa.schema([f.with_nullable(True) for f in contract.arrow_schema])
            df = self.spark.createDataFrame(df.select(contract.column_names).cast(nullable))
        have = {f.name: f.dataType.simpleString() for f in df.schema.fields}
        # Types equal but for nullability need no cast (Spark cannot cast array<double> whose
        # elements may be null to one whose elements may not).
        return df.select(*[
            (F.col(f"`{f.name}`") if have.get(f.name) == f.dataType.simpleString() else F.col(f"`{f.name}`").cast(f.dataType)).alias(f.name)
            for f in _contract_struct(contract).fields
        ])

    def create_empty(self, name: str, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """Create a table with the contract's schema and properties (no rows); no-op if it exists."""
        from delta.tables import DeltaTable

        if not self.exists(name):
            builder = DeltaTable.createIfNotExists(self.spark).location(self._path(name))
            builder = builder.addColumns(_contract_struct(contract))
            if contract.description:
                builder = builder.comment(contract.description)
            for key, value in contract.properties.items():
                builder = builder.property(key, value)
            if contract.partition_columns:
                builder = builder.partitionedBy(*contract.partition_columns)
            with self._user_metadata(metadata):
                with_retries(name, builder.execute, _conflicts())
        return int(self.version(name))

    def append(self, name: str, rows, contract: TableContract, metadata: Mapping[str, Any] | None = None) -> int:
        """Append rows (Arrow table or DataFrame), creating the table first; returns the new version."""
        return int(self.commit(Write(name, contract, "append", rows=rows, metadata=metadata)).version)

    def commit(self, write: Write) -> CommitResult:
        """One `Write` as one Delta commit (see `lakeimg.engine.base.Write`): "replace" is
        delta-spark's `replaceWhere` on the uris (dropped rows out, new rows in, one commit),
        or one MERGE past ISIN_LIMIT uris."""
        name, contract = write.table, write.contract
        parts = []
        if write.staged is not None and (frame := write.staged.conform(contract)) is not None:
            parts.append(frame)
        if write.rows is not None and write.rows.num_rows:
            parts.append(self.conform(write.rows, contract))
        if write.files:
            parts.append(self.conform(self.spark.read.parquet(*map(self.hadoop, write.files)), contract))
        uris = set(uri_set(write.replace).to_pylist())
        if write.mode == "replace" and parts:
            keys = [write.staged.keys() if write.staged is not None else None, write.rows]
            uris.update(u for k in keys if k is not None for u in k["uri"].to_pylist())
            if write.files:
                uris.update(r[0] for r in self.spark.read.parquet(*map(self.hadoop, write.files)).select("uri").distinct().collect())
        before = self.version(name)
        if before is not None and write.mode != "overwrite":  # an overwrite replaces the schema itself
            self._add_missing_columns(name, contract, write.metadata)
        if not parts and write.mode != "overwrite" and not (write.mode == "replace" and uris and before is not None):
            if write.create and before is None:
                return CommitResult(self.create_empty(name, contract, write.metadata), True)
            return CommitResult(before)
        if before is None:
            self.create_empty(name, contract, write.metadata)
        df = parts[0] if parts else self.spark.createDataFrame([], _contract_struct(contract))
        for part in parts[1:]:
            df = df.unionByName(part)
        writer = df.write.format("delta")
        replace = write.mode == "replace" and bool(uris) and before is not None  # a new table has no rows to replace
        if write.mode == "overwrite":
            writer = writer.mode("overwrite").option("overwriteSchema", "true")
        elif replace and len(uris) <= ISIN_LIMIT:
            writer = writer.mode("overwrite").option("replaceWhere", f"uri IN ({', '.join(map(_sql_string, sorted(uris)))})")
        elif not replace:
            writer = writer.mode("append")
        # parquet-mr reads its settings from the session's Hadoop configuration (delta-spark
        # passes no other writer options down): a row-count limit per row group.
        layout = {_ROW_GROUP_ROWS_CONF: str(write.row_group_rows)} if write.row_group_rows else {}
        with self._user_metadata(write.metadata), self._session_conf(layout):
            if replace and len(uris) > ISIN_LIMIT:
                with_retries(name, lambda: self._replace_by_merge(name, df, uris), _conflicts())
            else:
                with_retries(name, lambda: writer.save(self._path(name)), _conflicts())
        after = self.version(name)
        return CommitResult(after, after != before)

    def _replace_by_merge(self, name: str, rows, uris: set[str]) -> None:
        """`replaceWhere` for many uris, as one MERGE: a predicate naming a million uris is
        more SQL than Spark should parse. A marker row per uri deletes every row of it; the new
        rows match nothing and are inserted. One commit, like replaceWhere."""
        from pyspark.sql import functions as F

        new = "__lakeimg_new"
        markers = self.spark.createDataFrame(pa.table({"uri": pa.array(sorted(uris), pa.string())}))
        source = rows.withColumn(new, F.lit(True)).unionByName(markers.withColumn(new, F.lit(False)), allowMissingColumns=True)
        (self._delta(name).alias("t")
         .merge(source.alias("s"), f"t.uri = s.uri AND NOT s.{new}")
         .whenMatchedDelete()
         .whenNotMatchedInsert(condition=f"s.{new}", values={f"`{c}`": f"s.`{c}`" for c in rows.columns})
         .execute())

    def _add_missing_columns(self, name: str, contract: TableContract, metadata: Mapping[str, Any] | None) -> None:
        """Schema evolution: the contract's columns a table written under an older contract lacks
        are added (nullable, at the end) in a commit of their own before the data commit, so
        rows written before read those columns as null. A retry looks again: a concurrent
        writer may have added them first."""
        def add() -> None:
            have = set(self.frame(name).schema.fieldNames())
            missing = [f for f in _contract_struct(contract).fields if f.name not in have]
            if missing:
                columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()} COMMENT {_sql_string(f.metadata.get('comment', ''))}"
                                    for f in missing)
                self.spark.sql(f"ALTER TABLE {_table_sql(self._path(name))} ADD COLUMNS ({columns})")

        with self._user_metadata(metadata):
            with_retries(name, add, _conflicts())

    # --- kernels -------------------------------------------------------------------------

    def _snapshot_rows(self, inputs: SnapshotRows):
        """The snapshot rows a stage reads, as a DataFrame: a few uris are a filter Delta can
        skip files with; many are a join with a frame of them (a literal per uri would make
        a plan of a million literals)."""
        from pyspark.sql import functions as F

        frame = self.frame(inputs.table, inputs.version)
        if len(inputs.uris) <= ISIN_LIMIT:
            frame = frame.where(F.col("uri").isin(inputs.uris.to_pylist()))
        else:
            frame = frame.join(self.spark.createDataFrame(pa.table({"uri": inputs.uris})), "uri", "left_semi")
        return frame.select(*[f"`{c}`" for c in inputs.columns])

    def stage(self, stage: Stage) -> SparkStaged:
        """Run a mapInArrow kernel over the inputs on the executors and stage its output as
        Parquet under `LAKE/_lakeimg/staging/<label>` (a location every executor can write).

        Listing inputs (paths) go out from the driver; snapshot inputs are read by the
        executors, so pixels never reach the driver. With `on_failure`, each task runs the
        kernel in forked children (`engine/pool.isolated_kernel`): an input row whose kernel
        crashes or overruns `task_timeout_s` becomes `on_failure(row, error_class, message)`;
        `prepare` runs in the task's Python worker before the first child is forked.
        `contract` and `workers` are the embedded engine's concerns.
        """
        from pyspark.sql import functions as F

        total, inputs, kernel = stage.total, stage.inputs, stage.kernel
        if total == 0:
            return SparkStaged(self, None, stage.output_schema, stage.held)
        parts = [self.spark.createDataFrame(t) for t in (inputs, stage.extra) if isinstance(t, pa.Table) and t.num_rows]
        if isinstance(inputs, SnapshotRows) and len(inputs.uris):
            parts.insert(0, self._snapshot_rows(inputs))
        frame = parts[0]
        for part in parts[1:]:  # the driver's rows typed like the first part (the snapshot's)
            frame = frame.unionByName(part.select(*[F.col(f"`{f.name}`").cast(f.dataType) for f in frame.schema.fields]))
        if stage.on_failure is not None:
            kernel = partial(isolated_kernel, kernel=kernel, on_failure=stage.on_failure, output_schema=stage.output_schema,
                             task_timeout_s=stage.task_timeout_s, prepare=stage.prepare)
        partitions = task_partitions(total, parallelism=self.spark.sparkContext.defaultParallelism,
                                     rows_per_task=stage.rows_per_task)
        location = table_location(self.lake, f"_lakeimg/staging/{stage.label}")
        staged = SparkStaged(self, location, stage.output_schema, stage.held)
        try:
            frame.repartition(partitions).mapInArrow(kernel, _struct_of(stage.output_schema)).write.mode("overwrite").parquet(
                self.hadoop(location)
            )
        except BaseException:
            staged.discard()
            raise
        if stage.on_progress is not None:  # the executors report nothing on the way
            stage.on_progress(stage.progress_total(), stage.progress_total())
        return staged


def _conflicts() -> tuple[type[BaseException], ...]:
    """delta-spark's typed commit conflicts (`delta.exceptions`; importing it makes PySpark
    raise them in place of the generic JVM error)."""
    from delta import exceptions as conflicts

    return tuple(getattr(conflicts, n) for n in conflicts.__all__)


def _table_sql(location: str) -> str:
    """Spark SQL's name of the Delta table at `location` (backticks in the path doubled)."""
    return "delta.`" + location.replace("`", "``") + "`"


def _sql_string(value: str) -> str:
    """A Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _contract_struct(contract: TableContract):
    """The contract's StructType (its JSON is Spark's own format)."""
    from pyspark.sql.types import StructType

    return StructType.fromJson(contract.struct_json)


def _struct_of(schema: pa.Schema):
    """A Spark StructType for an Arrow schema built from a contract (types via Spark's converter)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)
