"""Real object-store servers on loopback for tests: moto's standalone S3 server.

Each server is a child process on 127.0.0.1 at a free port, started once per test session by
the fixtures in conftest.py and stopped at its end. Waiting for it is a bounded loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

# moto accepts any key pair; these are what every test client passes.
S3_KEY_ID = "lakeimg-test-key"
S3_SECRET = "lakeimg-test-secret"
S3_REGION = "us-east-1"


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


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running moto S3 server: its endpoint and the options that reach it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment variables a subprocess (CLI, Spark) reads."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
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

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY_ID,
                            aws_secret_access_key=S3_SECRET, region_name=S3_REGION)

    def new_bucket(self, prefix: str = "lake") -> str:
        """A fresh, empty bucket (names are unique, so tests never share one)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def moto_s3_server() -> Iterator[S3Server]:
    """Start `moto_server` on 127.0.0.1 at a free port; stop it on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(endpoint + "/moto-api/", process)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
