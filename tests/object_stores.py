"""Real object-store servers on loopback for tests: moto's standalone S3 server, Azurite and a GCS
emulator (gcp-storage-emulator).

Each server is a child process on 127.0.0.1 at a free port, started once per test session by
the fixtures in conftest.py and stopped at its end (`running_server`: start, a bounded wait,
terminate-then-kill). Also the small JPEG and CLI helpers the object-store tests share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

# moto accepts any key pair; these are what every test client passes.
S3_KEY_ID = "lakeimg-test-key"
S3_SECRET = "lakeimg-test-secret"
S3_REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[1]


def jpeg(seed: int, size=(40, 30)) -> bytes:
    """A small random RGB JPEG (`size` is width, height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def write_photos(root: Path) -> Path:
    """cats/ and dogs/ under `root` with 3 JPEGs each and one broken JPEG."""
    for i, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for j in range(3):
            (root / label / f"{label}{j}.jpg").write_bytes(jpeg(10 * i + j))
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the lakeimg CLI in a fresh interpreter with `env` over this process's environment."""
    return subprocess.run([sys.executable, "-m", "lakeimg.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env={**os.environ, **env})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers (any HTTP status), the process dies or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering at {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no answer at {url} within {timeout_s:.0f} s")


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate `process` if it still runs; kill it if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


@contextlib.contextmanager
def running_server(command: list[str], ready_url: str, **popen_args) -> Iterator[subprocess.Popen]:
    """Start `command` (output discarded), wait until `ready_url` answers, stop it on exit."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_args)
    try:
        wait_for_http(ready_url, process)
        yield process
    finally:
        stop_process(process)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint and the options that reach it."""

    endpoint: str
    key_id: str = S3_KEY_ID
    secret: str = S3_SECRET

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment variables a subprocess (CLI, Spark) reads."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": S3_REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def storage_options(self) -> dict[str, str]:
        """The same settings as options for `Lake(..., storage_options=...)` and delta-rs."""
        return dict(self.env)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name=S3_REGION)

    def new_bucket(self, prefix: str = "lake") -> str:
        """A fresh, empty bucket (names are unique, so tests never share one)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def moto_s3_server(*, authenticated: bool = False) -> Iterator[S3Server]:
    """Start `moto_server` on 127.0.0.1 at a free port; stop it on exit.

    `authenticated`: the server checks credentials (moto's IAM mode, where only the first few
    requests go unchecked): the test key pair is made an IAM user's key with full S3 access, so
    any other key pair is refused, as real S3 does.
    """
    port = free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if authenticated else {})}
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with running_server(command, endpoint + "/moto-api/", env=env):
        server = S3Server(endpoint)
        yield _with_iam_user(server) if authenticated else server


def _with_iam_user(server: S3Server) -> S3Server:
    """Three unchecked requests make an IAM user, its key pair and its S3 policy."""
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=server.endpoint, aws_access_key_id=S3_KEY_ID,
                       aws_secret_access_key=S3_SECRET, region_name=S3_REGION)
    iam.create_user(UserName="lakeimg")
    key = iam.create_access_key(UserName="lakeimg")["AccessKey"]
    iam.put_user_policy(UserName="lakeimg", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    return dataclasses.replace(server, key_id=key["AccessKeyId"], secret=key["SecretAccessKey"])


# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


# delta-rs lists the Delta log with List Blobs' `startFrom`; older Azurite ignores it, so every
# commit after a table's second fails ("Invalid table version").
AZURITE_MIN_VERSION = (3, 37, 0)


def azurite_command() -> str:
    """The `azurite-blob` executable (3.37 or newer): $LAKEIMG_AZURITE, else on PATH (.ci/run
    installs it with npm)."""
    found = os.environ.get("LAKEIMG_AZURITE") or shutil.which("azurite-blob")
    install = "`npm install -g azurite@^3.37.0` (as .ci/run does) or set LAKEIMG_AZURITE"
    if not found:
        raise RuntimeError(f"azurite-blob not found: {install}")
    text = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    version = tuple(int(p) for p in text.split(".")[:3] if p.isdigit())
    if version < AZURITE_MIN_VERSION:
        raise RuntimeError(f"{found} is Azurite {text or '?'}; the tests need 3.37.0 or newer: {install}")
    return found


@dataclasses.dataclass(frozen=True)
class AzuriteServer:
    """A running Azurite blob server: its endpoint and the options that reach it."""

    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1

    @property
    def env(self) -> dict[str, str]:
        """The standard Azure environment variables plus the emulator's endpoint."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
            "AZURE_ALLOW_HTTP": "true",
        }

    @property
    def storage_options(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def connection_string(self) -> str:
        """The same account as an Azure connection string."""
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    def sas_token(self, key: str = AZURITE_KEY) -> str:
        """An account SAS (blob service; read, add, create, write, delete, list) signed with `key`."""
        import base64
        import hashlib
        import hmac
        from urllib.parse import quote

        fields = {"sv": "2019-12-12", "ss": "b", "srt": "sco", "sp": "racwdl", "se": "2099-01-01T00:00:00Z",
                  "spr": "https,http"}
        signed = "\n".join([AZURITE_ACCOUNT, fields["sp"], fields["ss"], fields["srt"], "", fields["se"], "",
                             fields["spr"], fields["sv"], ""])
        signature = base64.b64encode(hmac.new(base64.b64decode(key), signed.encode(), hashlib.sha256).digest()).decode()
        return "&".join(f"{k}={quote(v, safe=',')}" for k, v in {**fields, "sig": signature}.items())

    def filesystem(self):
        """pyarrow's Azure file system on this server (the tests' own client, not lakeimg's)."""
        import pyarrow.fs as pafs

        authority = self.endpoint.split("//", 1)[1].split("/", 1)[0]
        return pafs.AzureFileSystem(account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY,
                                    blob_storage_authority=authority, dfs_storage_authority=authority,
                                    blob_storage_scheme="http", dfs_storage_scheme="http")

    def new_container(self, prefix: str = "lake") -> str:
        """A fresh, empty container."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def put(self, container: str, key: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(f"{container}/{key}") as sink:
            sink.write(data)

    def delete(self, container: str, key: str) -> None:
        self.filesystem().delete_file(f"{container}/{key}")

    def get(self, container: str, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{container}/{key}") as source:
            return source.read()

    def keys(self, container: str, prefix: str = "") -> list[str]:
        """Every blob's name in `container` under `prefix`, sorted."""
        import pyarrow.fs as pafs

        infos = self.filesystem().get_file_info(pafs.FileSelector(container, recursive=True))
        names = (i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File)
        return sorted(n for n in names if n.startswith(prefix))


@contextlib.contextmanager
def azurite_server() -> Iterator[AzuriteServer]:
    """Start Azurite's blob service on 127.0.0.1 at a free port, in memory, without telemetry."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    command = [azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
               "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"]
    # Azurite writes a debug log and its extent files under its working folder even in memory.
    with tempfile.TemporaryDirectory(prefix="azurite-") as workdir, \
            running_server(command, endpoint + "?comp=list", cwd=workdir):
        yield AzuriteServer(endpoint)


@dataclasses.dataclass(frozen=True)
class GcsServer:
    """A running GCS emulator (gcp-storage-emulator, JSON API): its endpoint and the options
    that reach it. pyarrow's GCS file system works against it; delta-rs does not (its
    object_store client uses GCS' XML API, which neither Python-installable emulator serves),
    so a GCS lake is not tested, only GCS sources."""

    endpoint: str  # http://127.0.0.1:PORT

    @property
    def env(self) -> dict[str, str]:
        """delta-rs' option names: the emulator's base URL, and no signing (it has no accounts)."""
        return {"GOOGLE_BASE_URL": self.endpoint, "GOOGLE_SKIP_SIGNATURE": "true"}

    @property
    def storage_options(self) -> dict[str, str]:
        return dict(self.env)

    def filesystem(self):
        """pyarrow's GCS file system on this server (the tests' own client, not lakeimg's)."""
        import datetime

        import pyarrow.fs as pafs

        return pafs.GcsFileSystem(anonymous=True, endpoint_override=self.endpoint.split("//", 1)[1], scheme="http",
                                  retry_time_limit=datetime.timedelta(seconds=10))

    def new_bucket(self, prefix: str = "src") -> str:
        """A fresh, empty bucket (the JSON API's bucket insert)."""
        import json

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=lakeimg-test",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(f"{bucket}/{key}") as sink:
            sink.write(data)

    def delete(self, bucket: str, key: str) -> None:
        self.filesystem().delete_file(f"{bucket}/{key}")


@contextlib.contextmanager
def gcs_server() -> Iterator[GcsServer]:
    """Start gcp-storage-emulator (pure Python, from PyPI: the dev extra) on 127.0.0.1 at a free
    port, in memory."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
               "--in-memory", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="gcs-") as workdir, \
            running_server(command, endpoint + "/storage/v1/b", cwd=workdir):
        yield GcsServer(endpoint)
