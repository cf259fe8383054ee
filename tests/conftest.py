"""Shared fixtures: every test gets its own lake under tmp_path; sample folders are generated.

The `spark` session fixture is in the root conftest.py, shared with the docstring examples.
"""

from __future__ import annotations

from pathlib import Path

import cli_runs  # noqa: F401 - sets PYTHONPATH for spawned workers before any test runs
import pytest


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """A fresh lake folder (not yet created)."""
    return tmp_path / "lake"


@pytest.fixture
def samples_dir(tmp_path: Path) -> Path:
    """A mixed folder of every supported format plus one broken file per class."""
    from lakeimg.samples import write_sample_folder

    folder = tmp_path / "samples"
    write_sample_folder(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    """A test that starts Spark must say so (`-m "not spark and not slow"` is the fast lane)."""
    unmarked = [item.nodeid for item in items if "spark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("spark") is None]
    if unmarked:
        raise pytest.UsageError("tests using the spark fixture without @pytest.mark.spark: " + ", ".join(unmarked))


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1 for the whole run (see tests/object_stores.py)."""
    from object_stores import moto_s3_server

    with moto_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite():
    """Azurite's blob service on 127.0.0.1 for the whole run (see tests/object_stores.py)."""
    from object_stores import azurite_server

    with azurite_server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator (gcp-storage-emulator) on 127.0.0.1 for the whole run (see tests/object_stores.py)."""
    from object_stores import gcs_server

    with gcs_server() as server:
        yield server
