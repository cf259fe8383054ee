"""Plugin lookup shared by ops, encodings and ingest readers: entry-point groups and import paths.

Example:
    >>> import_path("os.path:join")("a", "b")
    'a/b'
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = ["entry_points_of", "import_path"]


def entry_points_of(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of `group` by name; {} when package metadata is broken."""
    try:
        return {ep.name: ep for ep in entry_points(group=group)}
    except Exception:  # noqa: BLE001 - broken plugin metadata must not break the built-ins
        return {}


def import_path(path: str) -> Any:
    """The object a "module:attribute.path" names."""
    module, _, attr = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        target = getattr(target, part)
    return target
