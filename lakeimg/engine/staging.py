"""Staging folders of runs (`LAKE/_lakeimg/staging/<run_id>...`): who owns them, and removing
those that killed runs left behind.

A run holds an exclusive `flock` on `LAKE/_lakeimg/staging/<run_id>.lock` (which also records
its pid, host and start time) for as long as it lives; the kernel drops the lock when the
process dies however it dies. `remove_stale_staging` removes a run's staging only when nobody
holds its lock (the owner is gone), or, for staging without a lock file (Spark's, or from a
lakeimg before this one), when nothing in it changed for `grace_hours`. A live run's staging
is never removed: its lock is held, and a lock file still being created counts as held.

Example:
    >>> import tempfile
    >>> lake = tempfile.mkdtemp()
    >>> claim = claim_staging(lake, "0123abcd")
    >>> remove_stale_staging(lake)  # the claim is live
    []
    >>> claim.release()
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import weakref

from lakeimg.engine.layout import staging_root
from lakeimg.storage import delete_file, remove_prefix

__all__ = ["StagingClaim", "claim_staging", "remove_stale_staging", "staging_is_live", "STAGING_FOLDER"]

STAGING_FOLDER = os.path.join("_lakeimg", "staging")
GRACE_HOURS = 24.0


def _staging_root(lake: str) -> str:
    # A local folder even for an object-store lake (`layout.staging_root`): flocks need one.
    return staging_root(str(lake))


def _close(handle) -> None:
    with contextlib.suppress(OSError):
        handle.close()


def _release(handle, path: str) -> None:
    # Unlink before unlocking: a cleaner that gets the lock afterwards finds no file to remove.
    with contextlib.suppress(OSError):
        delete_file(path)
    _close(handle)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))  # the last run's staging is gone: no empty folder stays


class StagingClaim:
    """A run's hold on its staging (see the module doc); released by `release()` or when the
    object is garbage-collected, and by the kernel when the process dies."""

    def __init__(self, lake: str, run_id: str):
        import fcntl

        root = _staging_root(lake)
        self.path = os.path.join(root, f"{run_id}.lock")
        for attempt in range(3):
            os.makedirs(root, exist_ok=True)
            try:
                handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
                break
            except FileNotFoundError:  # a cleaner removed the empty staging folder just now
                if attempt == 2:
                    raise
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
        handle.flush()
        self._finalizer = weakref.finalize(self, _release, handle, self.path)

    def release(self) -> None:
        """Give the staging up (after its files were committed or discarded)."""
        self._finalizer()


def claim_staging(lake: str, run_id: str) -> StagingClaim:
    """Mark `LAKE/_lakeimg/staging/<run_id>*` as owned by this live process.

    Example:
        >>> import tempfile
        >>> claim_staging(tempfile.mkdtemp(), "r1").release()
    """
    return StagingClaim(lake, run_id)


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def staging_is_live(lake: str, run_id: str) -> bool:
    """Whether a run on this machine still holds its staging claim (it is running).

    Example:
        >>> import tempfile
        >>> lake = tempfile.mkdtemp()
        >>> claim = claim_staging(lake, "0123abcd")
        >>> staging_is_live(lake, "0123abcd"), staging_is_live(lake, "feedbeef")
        (True, False)
        >>> claim.release()
    """
    import fcntl

    try:
        handle = open(os.path.join(_staging_root(lake), f"{run_id}.lock"))  # noqa: SIM115
    except OSError:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        _close(handle)  # closing drops a lock this probe took
    return False


def remove_stale_staging(lake: str, *, grace_hours: float = GRACE_HOURS) -> list[str]:
    """Remove staging left by runs that are gone; the paths removed.

    Example:
        >>> import tempfile
        >>> remove_stale_staging(tempfile.mkdtemp())
        []
    """
    import fcntl

    root = _staging_root(lake)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    now = time.time()
    owners = {n[: -len(".lock")] for n in names if n.endswith(".lock")}
    removed: list[str] = []

    def remove(path: str) -> None:
        with contextlib.suppress(OSError):
            remove_prefix(path)
        if not os.path.lexists(path):
            removed.append(path)

    for run_id in owners:
        lock_path = os.path.join(root, f"{run_id}.lock")
        try:
            handle = open(lock_path)  # noqa: SIM115
        except OSError:
            continue
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: the run is alive
            try:
                owner = json.loads(handle.read() or "null")
                age = now - os.fstat(handle.fileno()).st_mtime
            except (OSError, ValueError):
                owner, age = None, 0.0
            if owner is None and age < grace_hours * 3600:
                continue  # being created right now (locked and written next)
            if owner and owner.get("host") != socket.gethostname():
                # Another host's run: its lock may not reach us (some network file systems).
                folders = [os.path.join(root, n) for n in names if n.startswith(run_id) and not n.endswith(".lock")]
                if any(now - _newest_mtime(f) < grace_hours * 3600 for f in folders if os.path.exists(f)):
                    continue
            for name in names:
                if name.startswith(run_id) and not name.endswith(".lock"):
                    remove(os.path.join(root, name))
            remove(lock_path)
        finally:
            _close(handle)
    for name in names:
        if name.endswith(".lock") or any(name.startswith(r) for r in owners):
            continue
        path = os.path.join(root, name)
        try:
            idle = now - _newest_mtime(path)
        except OSError:
            continue
        if idle >= grace_hours * 3600:
            remove(path)
    with contextlib.suppress(OSError):
        os.rmdir(root)  # empty: no run is staging
    return removed
