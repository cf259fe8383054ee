"""The package version, read from installed metadata."""

from __future__ import annotations

try:
    from importlib.metadata import version as _dist_version

    __version__ = _dist_version("lakeimg")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
