"""The storage seam: every byte lakeimg reads or writes outside the Delta log goes through here.

Source files, staged files, exports and spool files are named by URLs: a bare path, `file://`,
or an object store (`s3://`, `gs://`, `az://`, `abfss://`). `resolve` turns one into a
`pyarrow.fs` file system and the path inside it (see DEVELOPERS.md "Storage" for why pyarrow.fs);
the functions below read, write, list and delete through it. Local files keep lakeimg's own
rules: only regular files are opened for reading (a FIFO never hangs a run), and listing is a
stat-only walk that classifies what is not a regular file.

A local file's URI is its absolute path percent-encoded byte by byte as RFC 3986 asks, and
`uri_to_path` is its exact inverse, so every name a file system allows survives the round trip: a space, `%`, `?`, `#`, `[]`, quotes, a backslash,
a tab or newline, non-ASCII letters. A name that is not valid UTF-8 keeps its bytes: the path
string holds them as surrogate escapes (what `os.fsdecode` and `os.listdir` give), and the URI
percent-encodes the raw bytes, so URIs are always plain ASCII (they fit Arrow's UTF-8 strings).

The encoding is `pathlib.Path(p).as_uri()`'s except that the characters RFC 3986 allows as they
are in a path (`!$&'()*+,;=:@`) stay unencoded: names such as `IMG(1).jpg` or `a+b.jpg` always
ingested, and keep the URIs existing lakes hold for them. `uri_to_path` reads both spellings.

Strings without a scheme are taken as paths; URLs of other schemes (`s3://`, `az://`, ...) are
not local files: `uri_to_path` refuses them with `UriError`, and `local_path_or_none` tells
callers that hand them on to an object store.

Example:
    >>> path_to_uri("/data/IMG 0001.jpg")
    'file:///data/IMG%200001.jpg'
    >>> uri_to_path("file:///data/IMG%200001.jpg")
    '/data/IMG 0001.jpg'
    >>> name = "/data/q?mark #1 100%.jpg"
    >>> uri_to_path(path_to_uri(name)) == name
    True
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import shutil
import signal
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple
from urllib.parse import quote_from_bytes, unquote_to_bytes

import pyarrow as pa
import pyarrow.fs as pafs

from lakeimg.errors import (
    BucketNotFoundError,
    ErrorClass,
    LakeImgError,
    SpecError,
    StorageAccessError,
    StorageUnreachableError,
    UriError,
)

__all__ = [
    "SOURCE_BUFFER_BYTES", "Listed", "NotRegularFileError", "TimeLimitExceeded", "check_store", "delete_file", "exists", "file_size",
    "has_scheme", "is_remote", "is_secret_option", "join_url", "keep_alarm_handler", "list_children", "list_files", "local_path_or_none",
    "normalized_storage_options", "open_input", "open_output", "open_source", "open_regular_file", "parse_storage_options",
    "path_to_uri", "printable", "read_bytes", "read_regular_file", "redact", "remove_prefix", "resolve", "sha256_of", "storage_error",
    "storage_scheme", "time_limit", "to_uri", "upload", "uri_to_path", "write_bytes",
]

# A scheme followed by "//" (every object store URL has one), or "file:" (Hadoop writes "file:/p").
# A bare "name:rest" stays a path: "photos:2024/a.jpg" is a legal relative file name.
# RFC 3986 pchar minus the unreserved characters quote() never encodes: sub-delims, ":" and "@".
_PATH_SAFE = "/!$&'()*+,;=:@"
_SCHEME = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.-]*):(?=//)|([Ff][Ii][Ll][Ee]):)")


def has_scheme(text: str) -> bool:
    """Whether `text` is a URL (`file:...`, `s3://...`) rather than a bare path.

    Example:
        >>> has_scheme("file:///a.jpg"), has_scheme("s3://bucket/a.jpg"), has_scheme("photos:2024/a.jpg")
        (True, True, False)
    """
    return _SCHEME.match(text) is not None


def path_to_uri(path: str | bytes | os.PathLike) -> str:
    """The absolute file:// URI of a local path (relative paths are taken from the working folder).

    Every byte that RFC 3986 does not allow in a path (space, `%`, `?`, `#`, `[]`, `"`, `\\`,
    control characters, every non-ASCII byte) is percent-encoded, so the URI names exactly this
    file and `uri_to_path` gives the path back. Names that always ingested keep the URIs lakeimg
    wrote for them ("file:///a/b(1).jpg").

    Example:
        >>> path_to_uri("/a/b(1).jpg"), path_to_uri("/d/ü[1] #2.jpg")
        ('file:///a/b(1).jpg', 'file:///d/%C3%BC%5B1%5D%20%232.jpg')
        >>> path_to_uri(b"/d/caf\\xe9.jpg")  # not UTF-8: its raw bytes are encoded
        'file:///d/caf%E9.jpg'
    """
    raw = os.fsencode(os.path.abspath(os.fsdecode(path)))
    if raw.startswith(b"//"):
        # A path starting with "//" would read as a URI authority (host); one "/" means the same file.
        raw = b"/" + raw.lstrip(b"/")
    return "file://" + quote_from_bytes(raw, safe=_PATH_SAFE)


def uri_to_path(uri: str) -> str:
    """The local path of a file URI (`file:///p`, `file://localhost/p` or Hadoop's `file:/p`).

    A string without a scheme is already a path and comes back unchanged (a name with "%" in it
    is not decoded). "?" and "#" are part of the path, not a query or fragment: lakeimg's own
    URIs encode them, and a local file has neither.

    Raises:
        UriError: another scheme (an object store URL), a host other than localhost, or a NUL byte.

    Example:
        >>> uri_to_path("file:///d/caf%C3%A9%25.jpg"), uri_to_path("file:/d/a.jpg"), uri_to_path("/d/a%20b.jpg")
        ('/d/café%.jpg', '/d/a.jpg', '/d/a%20b.jpg')
        >>> uri_to_path("s3://bucket/a.jpg")
        Traceback (most recent call last):
        ...
        lakeimg.errors.UriError: s3://bucket/a.jpg: not a local file (scheme 's3')
    """
    match = _SCHEME.match(uri)
    if match is None:
        return uri
    scheme = (match.group(1) or match.group(2)).lower()
    if scheme != "file":
        raise UriError(uri, f"not a local file (scheme {scheme!r})")
    rest = uri[match.end() :]
    if rest.startswith("//"):
        host, slash, rest = rest[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            raise UriError(uri, f"names host {host!r}; only local files can be read")
        rest = slash + rest
    if not rest.startswith("/"):
        raise UriError(uri, "a file URI needs an absolute path")
    raw = unquote_to_bytes(rest)
    if b"\0" in raw:
        raise UriError(uri, "the path contains a NUL byte")
    return os.fsdecode(raw)


def local_path_or_none(uri: str) -> str | None:
    """The local path of a file URI or bare path; None for another scheme (an object store URL).

    Example:
        >>> local_path_or_none("file:///a%20b/c"), local_path_or_none("s3://bucket/c")
        ('/a b/c', None)
    """
    match = _SCHEME.match(uri)
    if match is not None and (match.group(1) or match.group(2)).lower() != "file":
        return None
    return uri_to_path(uri)


def to_uri(path_or_uri: str) -> str:
    """A user's source or image reference as a URI: paths (with "~") become file URIs, URIs stay.

    A file URI is re-encoded from its path, so hand-typed URIs match the ones ingest writes.

    Example:
        >>> to_uri("/photos/a b.jpg"), to_uri("file:///photos/a%20b.jpg"), to_uri("s3://bucket/a b.jpg")
        ('file:///photos/a%20b.jpg', 'file:///photos/a%20b.jpg', 's3://bucket/a b.jpg')
    """
    if not has_scheme(path_or_uri):  # a bare path: the shell's "~" may have been quoted away
        return path_to_uri(os.path.expanduser(path_or_uri))
    local = local_path_or_none(path_or_uri)
    return path_or_uri if local is None else path_to_uri(local)


def printable(text: str) -> str:
    """`text` with the surrogate escapes of non-UTF-8 names written as backslash escapes.

    For messages and labels stored in UTF-8 string columns, which cannot hold lone surrogates.

    Example:
        >>> printable(os.fsdecode(b"/d/caf\\xe9.jpg"))
        '/d/caf\\\\udce9.jpg'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def open_regular_file(path: str):
    """Open a local file for reading, refusing anything but a regular file without blocking.

    O_NONBLOCK keeps open() from waiting on a FIFO with no writer; the check after it catches a
    path that was swapped for a FIFO, socket or device after it was listed.

    Example:
        >>> import tempfile
        >>> with open_regular_file(tempfile.mkstemp()[1]) as handle:
        ...     handle.read()
        b''
    """
    fd, _size = _open_regular_fd(path)
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_regular_fd(path: str) -> tuple[int, int]:
    """A read-only descriptor of a regular file (see `open_regular_file`) and its size."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular_file(path: str) -> bytes:
    """A local regular file's whole bytes, refusing anything else without blocking (as
    `open_regular_file`), with no file object around the descriptor: for many small files that
    object cost more than the read.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc")
        >>> read_regular_file(path)
        b'abc'
    """
    fd, size = _open_regular_fd(path)
    try:  # O_NONBLOCK does not apply to regular files; read until EOF, in case the file grew
        parts = []
        while chunk := os.read(fd, max(size + 1, 1 << 16)):
            parts.append(chunk)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class NotRegularFileError(OSError):
    """A path that was to be read as a file is a folder, FIFO, socket or device."""


class TimeLimitExceeded(Exception):  # noqa: N818 - not an error of the file: the caller's budget ran out
    """A `time_limit` (or `read_bytes(..., time_limit_s=)`) ran out."""


_LOCAL = pafs.LocalFileSystem()
# delta-rs (object_store) storage_options keys -> pyarrow.fs arguments, so the one set of options
# (and the AWS_* / AZURE_* / GOOGLE_* variables delta-rs reads) reaches the Delta log and the
# bytes around it alike. Keys are matched lower-case; other keys are delta-rs' own and ignored.
_OPTIONS = {
    "s3": ("aws_", {"access_key_id": "access_key", "secret_access_key": "secret_key",
                    "session_token": "session_token", "token": "session_token", "region": "region",
                    "endpoint": "endpoint_override", "endpoint_url": "endpoint_override"}),
    "gs": ("google_", {}),  # see _gcs_arguments
    "az": ("azure_", {"storage_account_name": "account_name", "storage_account_key": "account_key",
                      "storage_sas_token": "sas_token", "client_id": "client_id",
                      "client_secret": "client_secret", "tenant_id": "tenant_id"}),
}
_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az", "abfs": "az", "abfss": "az", "adl": "az"}
# Environment variables that configure object stores (delta-rs reads the same ones).
_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_")
# Option names whose values are secrets: never printed, logged or stored (see `redact`).
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "ACCOUNT_KEY", "ACCESS_KEY", "SAS", "CONNECTION_STRING",
                 "CREDENTIAL", "CLIENT_SECRET", "SERVICE_ACCOUNT", "MASTER_KEY")  # GOOGLE_SERVICE_ACCOUNT[_KEY|_PATH]


def storage_scheme(url: str) -> str | None:
    """The object store kind a URL names ("s3", "gs", "az"), or None for a local path or file URL.

    Example:
        >>> storage_scheme("s3a://b/k"), storage_scheme("/data/lake"), storage_scheme("abfss://c@a.dfs.core.windows.net/k")
        ('s3', None, 'az')
    """
    if local_path_or_none(url) is not None:
        return None
    return _SCHEMES.get(url.partition("://")[0].lower(), url.partition("://")[0].lower())


def is_remote(url: str | os.PathLike) -> bool:
    """Whether `url` names an object store (or any non-local file system) rather than a local path.

    Example:
        >>> is_remote("s3://bucket/lake"), is_remote("file:///data/lake"), is_remote("/data/lake")
        (True, False, False)
    """
    return local_path_or_none(os.fspath(url)) is None


def normalized_storage_options(storage_options: Mapping[str, str] | None = None, *,
                               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The one set of object-store settings lakeimg uses: the `AWS_*`, `AZURE_*` and `GOOGLE_*`
    environment variables, overridden by `storage_options`, keys upper-cased (delta-rs' spelling,
    `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...). The same mapping goes to delta-rs, to
    `resolve` (pyarrow.fs) and to the workers; the Spark engine translates it to `fs.s3a.*`.

    Example:
        >>> normalized_storage_options({"aws_region": "eu-west-1"}, environ={"AWS_ALLOW_HTTP": "true", "HOME": "/root"})
        {'AWS_ALLOW_HTTP': 'true', 'AWS_REGION': 'eu-west-1'}
    """
    env = os.environ if environ is None else environ
    merged = _with_azure_connection_string({k.upper(): v for k, v in env.items() if k.upper().startswith(_ENV_PREFIXES)})
    merged.update(_with_azure_connection_string({str(k).upper(): str(v) for k, v in (storage_options or {}).items()}))
    return dict(sorted(merged.items()))


def _with_azure_connection_string(options: dict[str, str]) -> dict[str, str]:
    # Neither delta-rs nor pyarrow takes a connection string: its parts become the options both
    # read. A layer's own explicit keys win over its connection string; the string itself stays
    # in the mapping so that `redact` knows it.
    text = options.get("AZURE_STORAGE_CONNECTION_STRING")
    if not text:
        return options
    parts = {}
    for item in text.split(";"):
        name, eq, value = item.strip().partition("=")
        if eq:
            parts[name.strip().lower()] = value.strip()
    found = {"AZURE_STORAGE_ACCOUNT_NAME": parts.get("accountname"), "AZURE_STORAGE_ACCOUNT_KEY": parts.get("accountkey"),
             "AZURE_STORAGE_SAS_TOKEN": parts.get("sharedaccesssignature")}
    endpoint = parts.get("blobendpoint")
    if not endpoint and parts.get("endpointsuffix", "core.windows.net") != "core.windows.net" and parts.get("accountname"):
        endpoint = f"{parts.get('defaultendpointsprotocol', 'https')}://{parts['accountname']}.blob.{parts['endpointsuffix']}"
    if endpoint:
        found["AZURE_STORAGE_ENDPOINT"] = endpoint.rstrip("/")
        if endpoint.lower().startswith("http://"):
            found["AZURE_ALLOW_HTTP"] = "true"
    return {**{k: v for k, v in found.items() if v}, **options}


def parse_storage_options(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` texts (the CLI's repeatable `--storage-option`) as a mapping.

    Raises:
        SpecError: a text without "=" or with an empty key.

    Example:
        >>> parse_storage_options(["AWS_REGION=eu-west-1", "aws_allow_http=true"])
        {'AWS_REGION': 'eu-west-1', 'AWS_ALLOW_HTTP': 'true'}
    """
    options = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"--storage-option needs KEY=VALUE, got {key.strip() or '(nothing)'}=...")
        options[key.strip().upper()] = value
    return options


def is_secret_option(key: str) -> bool:
    """Whether a storage option's value is a secret (keys, tokens, connection strings).

    Example:
        >>> is_secret_option("AWS_SECRET_ACCESS_KEY"), is_secret_option("AWS_REGION")
        (True, False)
    """
    upper = key.upper()
    return upper not in ("AWS_ACCESS_KEY_ID",) and any(word in upper for word in _SECRET_WORDS)


def redact(text: str, storage_options: Mapping[str, str] | None = None) -> str:
    """`text` with every secret value of `storage_options` and of the environment replaced by
    `***`: the last guard of messages, logs and stored records.

    Example:
        >>> redact("denied for s3cr3t-value", {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
        'denied for ***'
    """
    secrets = {v for k, value in normalized_storage_options(storage_options).items() if is_secret_option(k)
               for v in (value, value.lstrip("?")) if len(v) >= 4}  # a SAS token is given with or without "?"
    for value in sorted(secrets, key=len, reverse=True):  # a connection string before the key inside it
        text = text.replace(value, "***")
    # A SAS token's signature, wherever a library printed the token (its fields reordered, or
    # encoded differently from how it was given): whoever's token it is, it is a secret.
    return _SAS_SIGNATURE.sub(r"\1***", text)


_SAS_SIGNATURE = re.compile(r"(?i)(\bsig=)[^&\s\"'<>]+")


def _filesystem(url: str, storage_options: Mapping[str, str] | None) -> tuple[pafs.FileSystem, str]:
    scheme, _, rest = url.partition("://")
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        return pafs.FileSystem.from_uri(url)
    prefix, names = _OPTIONS[kind]
    given = {k.lower(): v for k, v in normalized_storage_options(storage_options).items()}
    args = tuple(sorted((arg, given[key]) for key, arg in ((k if k in given else prefix + k, a) for k, a in names.items())
                        if key in given))
    if kind == "az":
        container, _, key = rest.partition("/")
        container, _, host = container.partition("@")  # abfss://container@account.dfs.core.windows.net/key
        rest = f"{container}/{key}"
        args = _azure_arguments(url, dict(args), host.split(".")[0], given)
    if kind == "gs":
        args = _gcs_arguments(given)
    allow_http = given.get(prefix + "allow_http", given.get("allow_http", "false")).lower() == "true"
    return _cached_filesystem(kind, args, allow_http), rest


@functools.lru_cache(maxsize=32)
def _cached_filesystem(kind: str, args: tuple[tuple[str, str | bool], ...], allow_http: bool) -> pafs.FileSystem:
    # One client per configuration and process: a kernel reads thousands of objects.
    options = dict(args)
    if kind == "s3":
        if options.get("endpoint_override", "").startswith("http://"):
            allow_http = True
        # allow_delayed_open: an object smaller than one part is one PUT, not a multipart upload
        # (fewer requests; and moto's server, used by the tests, fails pyarrow's multipart completion).
        return pafs.S3FileSystem(**options, allow_delayed_open=True, **({"scheme": "http"} if allow_http else {}))
    if kind == "gs":
        return pafs.GcsFileSystem(**options)
    account = options.pop("account_name")
    return pafs.AzureFileSystem(account, **options)


def _azure_arguments(url: str, args: dict[str, str], url_account: str,
                     given: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """pyarrow's AzureFileSystem arguments: the account (an abfss:// URL's host names it), and
    the endpoint override delta-rs reads (`AZURE_STORAGE_ENDPOINT`, e.g. Azurite's
    `http://127.0.0.1:10000/devstoreaccount1` or a sovereign cloud's
    `https://acct.blob.core.chinacloudapi.cn`) as pyarrow's authority and scheme."""
    account = url_account or args.get("account_name") or given.get("azure_storage_account") or ""
    if not account:
        raise UriError(url, "no Azure storage account (set AZURE_STORAGE_ACCOUNT_NAME, "
                            "AZURE_STORAGE_CONNECTION_STRING or use abfss://container@account.dfs.core.windows.net/)")
    args["account_name"] = account
    for key in ("azure_storage_account_key", "azure_storage_access_key", "azure_storage_master_key", "access_key",
                "account_key", "master_key"):
        if given.get(key) and "account_key" not in args:
            args["account_key"] = given[key]
    for key in ("azure_storage_sas_key", "sas_key", "sas_token"):
        if given.get(key) and "sas_token" not in args:
            args["sas_token"] = given[key]
    if "account_key" in args:
        args.pop("sas_token", None)  # pyarrow takes one of them; the key signs everything a SAS allows
    elif "sas_token" in args:
        args["sas_token"] = "?" + args["sas_token"].lstrip("?")  # pyarrow appends it to URLs as it is
    endpoint = next((given[k] for k in ("azure_storage_endpoint", "azure_endpoint", "endpoint") if given.get(k)), "")
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        host = rest.split("/", 1)[0]
        if host.lower().startswith(account.lower() + "."):
            # Host-style (https://acct.blob.<suffix>): pyarrow puts the account before ".blob.<suffix>".
            blob = host[len(account):]
            dfs = blob.replace(".blob.", ".dfs.", 1)
        else:
            blob = dfs = host  # path-style (an emulator): pyarrow puts the account in the path
        args.update(blob_storage_authority=blob, dfs_storage_authority=dfs,
                    blob_storage_scheme=scheme.lower(), dfs_storage_scheme=scheme.lower())
    return tuple(sorted(args.items()))


def _gcs_arguments(given: Mapping[str, str]) -> tuple[tuple[str, str | bool], ...]:
    """pyarrow's GcsFileSystem arguments: an endpoint (delta-rs' `GOOGLE_BASE_URL`, or
    `GOOGLE_ENDPOINT_URL`; a GCS emulator's `http://127.0.0.1:4443`) as pyarrow's authority and
    scheme, and `GOOGLE_SKIP_SIGNATURE=true` as anonymous access (public buckets, emulators).
    Credentials otherwise come from Google's default chain, which reads
    GOOGLE_APPLICATION_CREDENTIALS from the environment."""
    args: dict[str, str | bool] = {}
    endpoint = next((given[k] for k in ("google_base_url", "google_endpoint_url", "google_endpoint", "base_url")
                     if given.get(k)), "")
    if endpoint:
        scheme, sep, rest = endpoint.partition("://")
        args["endpoint_override"] = rest.split("/", 1)[0] if sep else endpoint
        args["scheme"] = scheme.lower() if sep else "https"
    if given.get("google_skip_signature", given.get("skip_signature", "")).lower() == "true":
        args["anonymous"] = True
    return tuple(sorted(args.items()))


def resolve(url: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The file system a URL lives on and the path inside it.

    Local paths and file URIs give the local file system and an absolute path; `s3://`, `gs://`
    and `az://` / `abfss://` URLs give pyarrow's S3, GCS or Azure file system configured from
    `normalized_storage_options(storage_options)` (delta-rs' keys, such as `AWS_REGION`, over the
    same variables in the environment). Other schemes go to `pyarrow.fs.FileSystem.from_uri`.
    Azure and GCS are one more branch each here.

    Example:
        >>> fs, path = resolve("file:///data/a%20b.jpg"); fs.type_name, path
        ('local', '/data/a b.jpg')
        >>> fs, path = resolve("s3://bucket/a b.jpg", {"AWS_REGION": "eu-west-1"}); fs.region, path
        ('eu-west-1', 'bucket/a b.jpg')
    """
    local = local_path_or_none(url)
    if local is not None:
        return _LOCAL, os.path.abspath(local)
    return _filesystem(url, storage_options)


def join_url(base: str, *parts: str) -> str:
    """`base` (a path or URL) with `/`-separated parts appended.

    Example:
        >>> join_url("s3://b/lake/", "images", "part-0.parquet"), join_url("/data/lake", "images")
        ('s3://b/lake/images/part-0.parquet', '/data/lake/images')
    """
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def exists(url: str, storage_options: Mapping[str, str] | None = None) -> bool:
    """Whether a file (or folder / prefix) exists at `url`.

    Example:
        >>> exists("/nonexistent/x")
        False
    """
    fs, path = resolve(url, storage_options)
    if fs is _LOCAL:
        return os.path.lexists(path)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def file_size(url: str, storage_options: Mapping[str, str] | None = None) -> int:
    """The size in bytes of one file.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc"); file_size(path)
        3
    """
    fs, path = resolve(url, storage_options)
    if fs is _LOCAL:
        return os.path.getsize(path)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(errno.ENOENT, "no such object", url)
    return int(info.size)


def upload(path: str, url: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Write the local file `path` as the object (or file) `url`, under its final name: object
    stores have no rename, so a staged local file reaches a remote table this way.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp(); write_bytes(d + "/a.bin", b"abc"); upload(d + "/a.bin", d + "/b.bin"); read_bytes(d + "/b.bin")
        b'abc'
    """
    fs, target = resolve(url, storage_options)
    if fs is _LOCAL:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        return
    pafs.copy_files(path, target, source_filesystem=_LOCAL, destination_filesystem=fs)


def list_children(url: str, storage_options: Mapping[str, str] | None = None) -> list[str]:
    """Names of the folders (prefixes) right under `url`; none when it does not exist.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp(); write_bytes(d + "/t/x", b""); list_children(d)
        ['t']
    """
    fs, path = resolve(url, storage_options)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def check_store(url: str, storage_options: Mapping[str, str] | None = None, *, writable: bool = False,
                what: str = "lake") -> None:
    """Reach the object store `url` lives on once, up front, so that wrong credentials, a
    missing bucket or an unreachable endpoint is one typed error before any table is touched
    (`StorageAccessError`, `BucketNotFoundError`, `StorageUnreachableError`). With `writable`,
    a probe object is written and deleted too. Local paths are left to the caller.

    Example:
        >>> check_store("/data/lake")
    """
    if not is_remote(url):
        return
    fs, path = resolve(url, storage_options)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise BucketNotFoundError(url, bucket, what=what)
        if not writable and what != "source":  # a probe below, or the listing that follows, reaches the path anyway
            fs.get_file_info(path)
        if writable:
            probe = join_url(path, f".lakeimg-write-probe-{os.getpid()}-{uuid.uuid4().hex}")
            with fs.open_output_stream(probe) as sink:
                sink.write(b"")
            fs.delete_file(probe)
    except LakeImgError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's OSError texts carry AWS' error codes
        typed = storage_error(exc, url, storage_options)
        if typed is None:
            raise
        raise typed from None


# AWS / Azure / object_store error texts -> what the user must fix.
_AUTH_MARKERS = ("access_denied", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "forbidden",
                 "invalid_access_key", "signature_does_not_match", "unauthorized", "expiredtoken",
                 "authorizationfailure", "authenticationfailed", "server failed to authenticate",
                 "authorizationpermissionmismatch")
_UNREACHABLE_MARKERS = ("network_connection", "could not connect", "connection refused", "error sending request",
                        "failed to connect", "dns error", "timed out", "couldn't resolve host", "connect error",
                        "tcp connect", "http error")
_NO_BUCKET_MARKERS = ("nosuchbucket", "no_such_bucket", "bucket does not exist", "the specified bucket does not exist",
                      "containernotfound", "the specified container does not exist")
# What to check, per store: the settings that carry credentials and the endpoint.
_HINTS = {
    "s3": ("AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN", ("AWS_ENDPOINT_URL",)),
    "az": ("AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_CONNECTION_STRING / "
           "AZURE_STORAGE_SAS_TOKEN", ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT")),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT", ("GOOGLE_BASE_URL", "GOOGLE_ENDPOINT_URL")),
}


def storage_error(exc: BaseException, url: str, storage_options: Mapping[str, str] | None = None) -> LakeImgError | None:
    """A typed lakeimg error for an object-store failure (pyarrow's or delta-rs' error text):
    `StorageAccessError`, `BucketNotFoundError` or `StorageUnreachableError`; None when the error
    is none of those. Messages name the URL and what to check, never a secret.

    Example:
        >>> type(storage_error(OSError("AWS Error ACCESS_DENIED during HeadObject"), "s3://b/lake")).__name__
        'StorageAccessError'
    """
    if not is_remote(url):
        return None
    text = " ".join(str(exc).lower().split())
    if any(m in text for m in _NO_BUCKET_MARKERS):
        bucket = resolve(url, storage_options)[1].split("/", 1)[0]
        return BucketNotFoundError(url, bucket)
    credentials, endpoints = _HINTS.get(storage_scheme(url) or "", _HINTS["s3"])
    if any(m in text for m in _AUTH_MARKERS):
        return StorageAccessError(url, f"the store refused the credentials (check {credentials} or --storage-option)")
    if any(m in text for m in _UNREACHABLE_MARKERS):
        options = normalized_storage_options(storage_options)
        endpoint = next((options[k] for k in endpoints if options.get(k)), "the default endpoint")
        return StorageUnreachableError(url, f"cannot reach {redact(endpoint, storage_options)} (check {endpoints[0]} "
                                            "and the network)")
    return None


def open_input(url: str, storage_options: Mapping[str, str] | None = None, *, memory_map: bool = False,
               buffer_size: int = 0):
    """A seekable binary file to read `url` from.

    A local file is opened only if it is a regular file (`open_regular_file`: a FIFO never
    blocks, it raises `NotRegularFileError`); `memory_map` maps a local file instead (lakeimg's
    own files, such as spools, read zero-copy by Arrow). An object is read by ranged GETs as the
    caller seeks and reads; `buffer_size` puts a read buffer of that many bytes in front of it,
    so the many small reads of a header parser (tifffile, pydicom) become a few requests.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc")
        >>> with open_input(path_to_uri(path)) as handle:
        ...     _ = handle.seek(1); handle.read()
        b'bc'
    """
    fs, path = resolve(url, storage_options)
    if fs is not _LOCAL:
        handle = fs.open_input_file(path)
        return io.BufferedReader(handle, buffer_size) if buffer_size > 0 else handle
    return pa.memory_map(path) if memory_map else open_regular_file(path)


# The read buffer in front of a source object read by windows: tifffile's and pydicom's header
# reads are a few bytes each, and one ranged GET costs 20-100 ms on a real store.
SOURCE_BUFFER_BYTES = 1 << 18


def open_source(url: str, storage_options: Mapping[str, str] | None = None):
    """A seekable binary file of a source image, for header and windowed reads (tiling, regions):
    a local regular file, or an object read by ranged GETs behind a `SOURCE_BUFFER_BYTES` buffer,
    never downloaded whole.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc")
        >>> with open_source(path) as handle:
        ...     handle.read(2)
        b'ab'
    """
    return open_input(url, storage_options, buffer_size=SOURCE_BUFFER_BYTES)


_alarm_kept = False  # set in lakeimg's own worker processes (`keep_alarm_handler`)
_alarm_seconds = 0.0  # the limit `time_limit` armed, for the handler's message


def _on_alarm(_signum, _frame):
    raise TimeLimitExceeded(f"took longer than {_alarm_seconds:g} s")


def keep_alarm_handler() -> None:
    """Install `time_limit`'s SIGALRM handler for good in this process, so each limit only arms
    a timer (swapping the handler in and out cost more than decoding a tiny image). Only for
    lakeimg's own worker processes: other processes keep their own handler between limits."""
    global _alarm_kept
    signal.signal(signal.SIGALRM, _on_alarm)
    _alarm_kept = True


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `TimeLimitExceeded` in the block once `seconds` pass (0: no limit).

    A SIGALRM interrupts Python-level work, so it only acts in the main thread (elsewhere the
    block runs unlimited; the engine's pool also kills hung workers).

    Example:
        >>> with time_limit(0.01):
        ...     while True: pass
        Traceback (most recent call last):
        ...
        lakeimg.storage.TimeLimitExceeded: took longer than 0.01 s
    """
    global _alarm_seconds
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = None if _alarm_kept else signal.signal(signal.SIGALRM, _on_alarm)
    _alarm_seconds = seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not _alarm_kept:
            signal.signal(signal.SIGALRM, previous)


def read_bytes(url: str, storage_options: Mapping[str, str] | None = None, *, time_limit_s: float = 0) -> bytes:
    """A whole file's bytes, from exactly the file `url` names (see `open_input`).

    Raises:
        OSError: the file cannot be read or is not a regular file (`NotRegularFileError`).
        TimeLimitExceeded: reading took longer than `time_limit_s` (0: no limit).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a b.bin"); write_bytes(path, b"abc")
        >>> read_bytes(path_to_uri(path), time_limit_s=60)
        b'abc'
    """
    local = local_path_or_none(url)
    with time_limit(time_limit_s):
        if local is not None:
            return read_regular_file(local)
        with open_input(url, storage_options) as handle:
            return handle.read()


def sha256_of(url: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The SHA-256 (hex) of a whole file, streamed: a huge file is never held in memory.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc")
        >>> sha256_of(path)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open_input(url, storage_options) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_output(url: str, storage_options: Mapping[str, str] | None = None):
    """A binary stream writing `url` from scratch (local parent folders are made; object stores
    have none). Arrow's Parquet and IPC writers take it as it is.

    Example:
        >>> import tempfile
        >>> with open_output(os.path.join(tempfile.mkdtemp(), "new", "a.bin")) as sink:
        ...     sink.write(b"abc")
        3
    """
    fs, path = resolve(url, storage_options)
    if fs is not _LOCAL:
        return fs.open_output_stream(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        return pa.OSFile(path, "wb")  # Arrow's own file: Arrow writers skip a Python call per write
    except UnicodeEncodeError:  # a non-UTF-8 name (surrogate escapes) only Python's open() takes
        return open(path, "wb")  # noqa: SIM115 - the caller closes it


def write_bytes(url: str, data: bytes, storage_options: Mapping[str, str] | None = None) -> None:
    """Write `data` as the whole file `url` (see `open_output`).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc"); read_bytes(path)
        b'abc'
    """
    with open_output(url, storage_options) as sink:
        sink.write(data)


def delete_file(url: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Delete one file.

    Raises:
        FileNotFoundError: there is no such file.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "a.bin"); write_bytes(path, b"abc"); delete_file(path)
        >>> os.path.exists(path)
        False
    """
    fs, path = resolve(url, storage_options)
    if fs is _LOCAL:
        os.unlink(path)  # a local symlink goes, not its target
    else:
        fs.delete_file(path)


def remove_prefix(url: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Remove everything under `url` (a folder, or an object store prefix) and itself; no error
    if it is already gone. The cleanup of staged files.

    Example:
        >>> import tempfile
        >>> staged = os.path.join(tempfile.mkdtemp(), "run1"); write_bytes(staged + "/part-0.parquet", b"x")
        >>> remove_prefix(staged); os.path.exists(staged)
        False
    """
    fs, path = resolve(url, storage_options)
    if fs is not _LOCAL:
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass
        except OSError:
            # The bulk delete (Azure's blob batch) can be refused where single deletes are
            # allowed (Azurite with a SAS token answers it with a 500): one object at a time.
            found = [info.path for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
                     if info.type == pafs.FileType.File]
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda p: _delete_if_there(fs, p), sorted(found, reverse=True)))
        # Hadoop's ABFS (Spark on Azure Blob) marks a folder with an empty blob of the folder's
        # own name, which a delete of the prefix leaves behind.
        if fs.get_file_info(path.rstrip("/")).type == pafs.FileType.File:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path.rstrip("/"))
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _delete_if_there(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


class Listed(NamedTuple):
    """One listed file: its URL, size, modification time (ns since the epoch), and `kind`: None
    for a regular file, else why it cannot be read (`not_regular_file`, `broken_symlink`,
    `symlink_loop`, `unreadable`)."""

    url: str
    size: int
    mtime_ns: int
    kind: str | None = None


def list_files(url: str, storage_options: Mapping[str, str] | None = None) -> Iterator[Listed]:
    """Every file under `url` (a file gives itself), streamed as it is found; names starting
    with "." are skipped, as Arrow datasets skip them. Nothing is opened.

    Locally only stat is called, so a FIFO or device is listed with its `kind`, never opened;
    folder links are followed, each folder once per path, and a link back to a parent is a
    `symlink_loop`. Object stores are listed with the store's paged LIST, one recursive listing
    per top-level prefix (no request per object).

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp(); write_bytes(root + "/d/a b.jpg", b"x"); write_bytes(root + "/.hidden", b"x")
        >>> [(f.url[len(path_to_uri(root)):], f.size, f.kind) for f in list_files(root)]
        [('/d/a%20b.jpg', 1, None)]
    """
    fs, path = resolve(url, storage_options)
    if fs is _LOCAL:
        yield from _walk_local(path)
        return
    base = url.rstrip("/")
    root = path.rstrip("/")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        yield Listed(url, info.size, info.mtime_ns or 0)
        return
    # The store's paged LIST (one request per 1000 keys), not a walk of HEAD requests: one
    # recursive listing per top-level prefix, a few prefixes listed at once (each request waits
    # on the store) while files stream out in order, prefix by prefix. GCS: one recursive
    # listing (pyarrow's one-level GCS listing can leave the sub-prefixes out).
    tops = ([pafs.FileInfo(root, pafs.FileType.Directory)] if isinstance(fs, pafs.GcsFileSystem)
            else fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)))

    def listed(top: pafs.FileInfo) -> list[Listed]:
        if top.type == pafs.FileType.File:
            return [Listed(base + top.path[len(root):], top.size, top.mtime_ns or 0)]
        found = []
        for info in fs.get_file_info(pafs.FileSelector(top.path, recursive=True, allow_not_found=True)):
            relative = info.path[len(root):]
            if info.type == pafs.FileType.File and not any(p.startswith(".") for p in relative.split("/")):
                found.append(Listed(base + relative, info.size, info.mtime_ns or 0))
        return found

    with ThreadPoolExecutor(max_workers=_LISTINGS_AT_ONCE) as pool:
        pending: collections.deque[Future[list[Listed]]] = collections.deque()
        for top in tops:
            if top.path == root or not top.base_name.startswith("."):
                pending.append(pool.submit(listed, top))
            while len(pending) > _LISTINGS_AT_ONCE:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


_LISTINGS_AT_ONCE = 8


def _walk_local(path: str) -> Iterator[Listed]:
    # Each folder carries the (device, inode) of the folders above it, so a folder link back to
    # one of them is a loop instead of a walk that never ends.
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(path, ())]
    while stack:
        path, ancestors = stack.pop()
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            continue  # vanished while listing
        except OSError:
            yield Listed(path_to_uri(path), 0, 0, ErrorClass.UNREADABLE)
            continue
        st = lst
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    kind = ErrorClass.SYMLINK_LOOP
                elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    kind = ErrorClass.BROKEN_SYMLINK
                else:
                    kind = ErrorClass.UNREADABLE
                yield Listed(path_to_uri(path), lst.st_size, lst.st_mtime_ns, kind)
                continue
        if not stat.S_ISDIR(st.st_mode):
            kind = None if stat.S_ISREG(st.st_mode) else ErrorClass.NOT_REGULAR_FILE
            yield Listed(path_to_uri(path), st.st_size, st.st_mtime_ns, kind)
            continue
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            yield Listed(path_to_uri(path), lst.st_size, lst.st_mtime_ns, ErrorClass.SYMLINK_LOOP)
            continue
        # Regular files are listed right here from their folder entry (one lstat each, the
        # folder's URI encoded once); folders and links go on the stack for the checks above.
        folder_uri = path_to_uri(path).rstrip("/") + "/"
        others: list[str] = []
        files: list[Listed] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                        others.append(entry.name)
                        continue
                    try:
                        fst = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # vanished while listing
                    except OSError:
                        others.append(entry.name)  # the full checks name why
                        continue
                    files.append(Listed(folder_uri + quote_from_bytes(os.fsencode(entry.name), safe=_PATH_SAFE),
                                        fst.st_size, fst.st_mtime_ns))
        except OSError:
            yield Listed(path_to_uri(path), st.st_size, st.st_mtime_ns, ErrorClass.UNREADABLE)
            continue
        # In name order, and folders popped in name order: a tree whose folders hold either
        # files or folders lists in uri order, which the listing table then needs not sort.
        files.sort(key=lambda f: f.url)
        yield from files
        below = (*ancestors, key)
        stack.extend((os.path.join(path, name), below) for name in sorted(others, reverse=True))
