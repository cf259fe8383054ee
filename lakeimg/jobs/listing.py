"""Listing ingest sources: files, folders (recursive) and globs, through pyarrow.fs.

Hidden files and folders (a name starting with ".") and anything inside the lake are skipped.
The listing is an Arrow table in the kernel's input schema (`uri`, `size_bytes`, `modified_at`,
`label`), so it feeds `ingest_kernel` on either engine.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "cats").mkdir(); _ = (d / "cats" / "a.jpg").write_bytes(b"x")
    >>> list_sources([str(d)], label_from_path="parent").column("label").to_pylist()
    ['cats']
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from lakeimg.errors import SourceNotFoundError, SpecError
from lakeimg.kernels.ingest import LISTING_SCHEMA

__all__ = ["list_sources", "source_scope", "SourceScope", "to_uri", "uri_to_path", "label_for"]

_GLOB_CHARS = re.compile(r"[*?\[]")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def to_uri(path: str) -> str:
    """Absolute file:// URI of a local path (URIs with a scheme pass through)."""
    if "://" in path:
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


def uri_to_path(uri: str) -> str:
    """Local path of a file:// URI."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def label_for(uri: str, rule: str | None) -> str | None:
    """The label a path gets: its parent folder's name ("parent"), or a regex's first group.

    Example:
        >>> label_for("file:///data/dogs/1.jpg", "parent"), label_for("file:///x/cat_1.png", r"/(\\w+)_\\d+")
        ('dogs', 'cat')
    """
    if not rule:
        return None
    path = uri_to_path(uri)
    if rule == "parent":
        return os.path.basename(os.path.dirname(path)) or None
    match = re.search(rule, path)
    if not match:
        return None
    if "label" in match.re.groupindex:
        return match.group("label")
    return match.group(1) if match.re.groups else match.group(0)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/") if part)


@dataclass(frozen=True)
class SourceScope:
    """Which URIs a set of sources covers; `--sync-deletes` only deletes rows inside it."""

    prefixes: tuple[str, ...]
    files: frozenset[str]
    patterns: tuple[str, ...]

    def covers(self, uri: str) -> bool:
        if uri in self.files or any(uri.startswith(p) for p in self.prefixes):
            return True
        return any(glob_match(uri_to_path(uri), p) for p in self.patterns)


def glob_match(path: str, pattern: str) -> bool:
    regex = glob.translate(pattern, recursive=True, include_hidden=False) if hasattr(glob, "translate") else None
    if regex is None:
        import fnmatch

        return fnmatch.fnmatch(path, pattern)
    return re.match(regex, path) is not None


def list_sources(
    sources: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    label_from_path: str | None = None,
) -> pa.Table:
    """List every file under `sources` (files, folders, globs) as a listing table.

    Raises:
        SourceNotFoundError: a source does not exist, or a glob matches nothing.
    """
    if label_from_path and label_from_path != "parent":
        try:
            re.compile(label_from_path)
        except re.error as exc:
            raise SpecError(f"--label-from-path: invalid regular expression {label_from_path!r}: {exc}") from exc
    excluded = tuple(uri_to_path(to_uri(e)).rstrip("/") + "/" for e in exclude)
    found: dict[str, tuple[int, int]] = {}
    local = pafs.LocalFileSystem()

    def add(path: str, info: pafs.FileInfo) -> None:
        if any((path + "/").startswith(e) for e in excluded):
            return
        found[to_uri(path)] = (info.size, info.mtime_ns or 0)

    for source in sources:
        if "://" in source and not source.startswith("file://"):
            raise SpecError(f"only local sources are supported so far: {source}")
        path = os.path.abspath(os.path.expanduser(uri_to_path(source)))
        if _GLOB_CHARS.search(source):
            matches = [m for m in glob.glob(path, recursive=True) if not _hidden(m)]
            files = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise SourceNotFoundError(source)
            for info in local.get_file_info(files):
                add(info.path, info)
            for folder in (m for m in matches if os.path.isdir(m)):
                _walk(local, folder, add)
            continue
        info = local.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceNotFoundError(source)
        if info.type == pafs.FileType.Directory:
            _walk(local, path, add)
        else:
            add(path, info)
    uris = sorted(found)
    return pa.table(
        {
            "uri": uris,
            "size_bytes": [found[u][0] for u in uris],
            "modified_at": [_ns_to_datetime(found[u][1]) for u in uris],
            "label": [label_for(u, label_from_path) for u in uris],
        },
        schema=LISTING_SCHEMA,
    )


def _walk(fs: pafs.LocalFileSystem, root: str, add) -> None:
    selector = pafs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        if _hidden(os.path.relpath(info.path, root)):
            continue
        add(info.path, info)


def _ns_to_datetime(ns: int) -> dt.datetime:
    # Microseconds: Delta timestamps' resolution, so re-runs compare equal.
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def source_scope(sources: Sequence[str]) -> SourceScope:
    """The scope of `sources` for sync-deletes."""
    prefixes, files, patterns = [], set(), []
    for source in sources:
        path = os.path.abspath(os.path.expanduser(uri_to_path(source)))
        if _GLOB_CHARS.search(source):
            patterns.append(path)
        elif os.path.isdir(path):
            prefixes.append(to_uri(path).rstrip("/") + "/")
        else:
            files.add(to_uri(path))
    return SourceScope(tuple(prefixes), frozenset(files), tuple(patterns))
