"""Misbehaving readers for the broken-file tests, loaded through ingest's `codecs=("module:attr",)`,
and a transform op that crashes (`CrashOnRed`).

Each claims only files with its own suffix. Spawned decoding workers import this module by name:
multiprocessing's spawn start method hands the parent's sys.path (which holds tests/ under
pytest) to the child.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from lakeimg.image.decode import read_image
from lakeimg.image.ops import ImageTransformer


class _Claims:
    suffix = ""

    def can_read(self, uri: str, head: bytes) -> bool:
        return uri.endswith(self.suffix)


class _Crash(_Claims):
    """Kills its process the way a segfaulting C decoder would."""

    suffix = ".crash"

    def read(self, data: bytes, uri: str):
        os.abort()


class _Sleep(_Claims):
    """Hangs in Python: the kernel's per-file alarm interrupts it.

    With `LAKEIMG_TEST_SLEEPERS` set to a folder, it first leaves a file there named after its
    process, so a test can wait until every worker is in its hanging read.
    """

    suffix = ".sleep"

    def read(self, data: bytes, uri: str):
        if folder := os.environ.get("LAKEIMG_TEST_SLEEPERS"):
            with open(os.path.join(folder, str(os.getpid())), "w"):
                pass
        time.sleep(3600)


class _Stuck(_Claims):
    """Hangs where no alarm reaches it (like a C loop holding the GIL): only killing the worker helps."""

    suffix = ".stuck"

    def read(self, data: bytes, uri: str):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)


class _Wrapped(_Claims):
    """Reads `.wrapped` files (b"WRAP" + a PNG), which no built-in reader knows: installing it
    turns their `unsupported_format` rejects into images (the `--retry-rejects` tests)."""

    suffix = ".wrapped"
    name = "wrapped"

    def read(self, data: bytes, uri: str):
        return read_image(data[4:], uri)


CRASH = _Crash()
WRAPPED = _Wrapped()
SLEEP = _Sleep()
STUCK = _Stuck()


class CrashOnRed(ImageTransformer):
    """A transform op that aborts its process on a pure red image (like a crashing native op)."""

    name, version = "crash_on_red", 1

    def transform(self, image):
        if image.shape[-1] == 3 and (image[..., 0] == 255).all() and (image[..., 1:] == 0).all():
            os.abort()
        return np.ascontiguousarray(image[::-1])
