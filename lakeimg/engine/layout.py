"""A lake on disk: where tables live, whether a lake exists, and checks of a table's Delta log.

Example:
    >>> table_location("/data/lake", "_lakeimg/runs")
    '/data/lake/_lakeimg/runs'
    >>> lake_exists("/nonexistent/lake")
    False
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

from lakeimg.errors import (
    LakeDamagedError,
    LakeNotFoundError,
    LakeNotWritableError,
    VersionNotFoundError,
)
from lakeimg.storage import has_scheme, local_path_or_none, uri_to_path
from lakeimg.tables import lake_relative

__all__ = ["table_location", "ensure_lake", "lake_exists", "require_lake", "check_log_tail", "check_not_before_first", "delta_file_path"]


def table_location(lake: str | os.PathLike[str], name: str) -> str:
    """Where a table lives inside a lake: `LAKE/<name>` (lakeimg's own under `LAKE/_lakeimg/`).

    The last guard of the naming rule (lakeimg.tables): a name whose path would leave the lake
    (`../x`, `/abs`) raises InvalidNameError, whichever caller it came through.
    """
    return f"{str(lake).rstrip('/')}/{lake_relative(name)}"


def delta_file_path(uri: str) -> str:
    """The local path of a data file as delta-rs' `file_uris()` gives it: a URL, or an absolute
    path percent-encoded like one ("/my%20lake/images/part-0.parquet")."""
    if has_scheme(uri) or uri.startswith("/"):
        return uri_to_path(uri if has_scheme(uri) else "file://" + uri)
    return uri


def check_log_tail(location: str, name: str) -> None:
    """Raise `LakeDamagedError` when a table's newest log entry is empty or cut short.

    A crash before a commit reached the disk can leave `_delta_log/N.json` empty or partial.
    delta-rs reads an empty entry as a version with no actions, so version N's rows vanish
    from reads, and the next commit (N+1) makes that permanent. Refuse instead, with the
    repair. Only local tables are checked here.

    Example:
        >>> check_log_tail("/nonexistent/table", "images")
    """
    if local_path_or_none(location) is None:
        return  # an object store's PUT is whole: no cut entry to find there
    log = os.path.join(uri_to_path(location), "_delta_log")
    try:
        entries = [e for e in os.scandir(log) if len(e.name) == 25 and e.name.endswith(".json") and e.name[:20].isdigit()]
    except OSError:
        return
    if not entries:
        return
    newest = max(entries, key=lambda e: e.name)
    version = int(newest.name[:20])
    try:
        with open(newest.path, "rb") as handle:
            text = handle.read()
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            reason = "is empty"
        else:
            for line in lines:
                json.loads(line)
            reason = ""
    except json.JSONDecodeError:
        reason = "is cut short (not valid JSON)"
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
    if reason:
        raise LakeDamagedError(
            name,
            f"the newest log entry {newest.path} {reason}: commit {version} never reached the disk whole "
            f"(a crash during the commit). No write goes on top of it. Repair: with no writer running, move "
            f"that file out of _delta_log to return the table to "
            + (f"version {version - 1}" if version else "no versions (then remove the table's folder)")
            + f", then run `lakeimg verify {name}`",
            version=version,
        )


def ensure_lake(lake: str) -> None:
    """Create the lake folder; raise LakeNotWritableError when that or writing into it fails."""

    path = Path(uri_to_path(lake))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".lakeimg-write-probe-{os.getpid()}-{uuid.uuid4().hex}"  # concurrent writers probe too
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LakeNotWritableError(lake, f"{type(exc).__name__}: {exc.strerror or exc}") from exc


def lake_exists(lake: str | os.PathLike[str]) -> bool:
    """Whether `lake` is a lake: a folder with lakeimg's `_lakeimg` folder or a Delta table in it.

    Example:
        >>> lake_exists("/nonexistent/lake")
        False
    """
    text = str(lake)
    if "://" in text and not text.startswith("file://"):
        return True  # an object store or cluster file system: the engine finds out when it reads
    root = Path(uri_to_path(text))
    if (root / "_lakeimg").is_dir():
        return True
    try:
        return any((entry / "_delta_log").is_dir() for entry in root.iterdir() if entry.is_dir())
    except OSError:
        return False


def require_lake(lake: str | os.PathLike[str]) -> None:
    """Raise `LakeNotFoundError` unless `lake` is a lake (every job but ingest and demo reads or
    writes an existing lake, and never creates one from a mistyped path).

    Example:
        >>> require_lake("/nonexistent/lake")
        Traceback (most recent call last):
        ...
        lakeimg.errors.LakeNotFoundError: no lake at /nonexistent/lake
    """
    if not lake_exists(lake):

        raise LakeNotFoundError(str(lake))


def check_not_before_first(location: str, loaded: int, when: dt.datetime, name: str, ref: Any, lake: str) -> None:
    """delta-rs loads the first version for a time before it; Delta (and lakeimg) refuse."""

    if local_path_or_none(location) is None:
        return  # delta-rs reads an object-store log itself
    log = os.path.join(uri_to_path(location), "_delta_log")
    try:
        first = min(int(n[:20]) for n in os.listdir(log) if len(n) == 25 and n.endswith(".json") and n[:20].isdigit())
    except (OSError, ValueError):
        return
    if loaded != first:
        return
    entry = os.path.join(log, f"{first:020d}.json")
    stamp_ms = None
    try:
        with open(entry, encoding="utf-8") as handle:
            for line in handle:
                info = json.loads(line).get("commitInfo") if line.strip() else None
                if info and info.get("timestamp") is not None:
                    stamp_ms = int(info["timestamp"])
                    break
        if stamp_ms is None:
            stamp_ms = int(os.path.getmtime(entry) * 1000)
    except (OSError, ValueError):
        return
    committed = dt.datetime.fromtimestamp(stamp_ms / 1000, dt.timezone.utc)
    if when < committed:
        raise VersionNotFoundError(
            name, ref, lake, f"before the table's first readable version ({first}, committed {committed.isoformat()})"
        )
