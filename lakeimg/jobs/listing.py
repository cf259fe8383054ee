"""Listing ingest sources: files, folders (recursive) and globs, through `lakeimg.storage`.

Hidden files and folders (a name starting with ".") and anything inside the lake are skipped.
The listing is an Arrow table in the kernel's input schema (`uri`, `size_bytes`, `modified_at`,
`label`, `kind`), so it feeds `ingest_kernel` on either engine. It is gathered in Arrow chunks as
files are found (~100 bytes a file; Python objects live for one chunk), sorted by uri. URIs come from
`lakeimg.storage.path_to_uri`, so any file name the file system allows is listed (non-UTF-8 names too).

What is not a regular file is listed too, never opened, with `kind` set to the reject class the
kernel records for it (see `lakeimg.storage.list_files`): `not_regular_file`, `broken_symlink`,
`symlink_loop` or `unreadable`.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "cats").mkdir(); _ = (d / "cats" / "a.jpg").write_bytes(b"x")
    >>> list_sources([str(d)], label_from_path="parent").column("label").to_pylist()
    ['cats']
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.errors import SourceNotFoundError, SpecError
from lakeimg.kernels.ingest import LISTING_SCHEMA
from lakeimg.storage import (
    Listed,
    check_store,
    exists,
    has_scheme,
    is_remote,
    list_files,
    local_path_or_none,
    path_to_uri,
    printable,
    to_uri,
    uri_to_path,
)

__all__ = ["list_sources", "source_scope", "source_roots", "SourceScope", "label_for"]

_GLOB_CHARS = re.compile(r"[*?\[]")


def label_for(uri: str, rule: str | None) -> str | None:
    """The label a path gets: its parent folder's name ("parent"), or a regex's first group.

    Example:
        >>> label_for("file:///data/dogs/1.jpg", "parent"), label_for("file:///x/cat_1.png", r"/(\\w+)_\\d+")
        ('dogs', 'cat')
    """
    if not rule:
        return None
    # An object's key reads like a path: "s3://bucket/cats/1.jpg" -> "bucket/cats/1.jpg".
    path = uri.split("://", 1)[1] if is_remote(uri) else uri_to_path(uri)
    if rule == "parent":
        label = os.path.basename(os.path.dirname(path)) or None
    else:
        match = re.search(rule, path)
        if not match:
            return None
        if "label" in match.re.groupindex:
            label = match.group("label")
        else:
            label = match.group(1) if match.re.groups else match.group(0)
    # A non-UTF-8 folder name holds surrogate escapes, which a UTF-8 label column cannot store.
    return printable(label) if label is not None else None


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
        # Local patterns are paths, object-store patterns URLs; each matches its own kind.
        return any(glob_match(uri if is_remote(p) else uri_to_path(uri), p)
                   for p in self.patterns if is_remote(p) == is_remote(uri))


def glob_match(path: str, pattern: str) -> bool:
    """Whether `path` (or an object URL) matches a glob as `glob.glob(recursive=True)` reads it:
    `**/` is any number of folders (none too), `*` and `?` stay inside one name, hidden names
    match only a pattern that names them.

    Example:
        >>> glob_match("s3://b/scans/a/1.tif", "s3://b/scans/**/*.tif"), glob_match("s3://b/scans/1.tif", "s3://b/scans/**/*.tif")
        (True, True)
        >>> glob_match("/d/x/1.jpg", "/d/*.jpg")
        False
    """
    return re.fullmatch(_glob_regex(pattern), path) is not None


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append(r"(?:[^/.][^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r"(?:[^/.][^/]*(?:/[^/.][^/]*)*)?")
            i += 2
        elif pattern[i] == "*":
            out.append(r"(?:[^/.][^/]*)?" if i == 0 or pattern[i - 1] == "/" else r"[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body[:1] == "!" else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def list_sources(
    sources: Sequence[str],
    *,
    exclude: Sequence[str] = (),
    label_from_path: str | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> pa.Table:
    """List every file under `sources` (files, folders, globs) as a listing table.

    A source that exists under its literal name is taken literally, even with glob characters
    in it (`ü[1].jpg`, `q?mark.jpg`); otherwise `*`, `?` and `[` make it a glob. Object-store
    sources (`s3://bucket/scans/**/*.tif`) are listed with the store's paged LIST under the
    glob's literal prefix and matched here.

    Raises:
        SourceNotFoundError: a source does not exist, or a glob matches nothing.
    """
    if label_from_path and label_from_path != "parent":
        try:
            re.compile(label_from_path)
        except re.error as exc:
            raise SpecError(f"--label-from-path: invalid regular expression {label_from_path!r}: {exc}") from exc
    excluded = tuple(to_uri(e).rstrip("/") + "/" for e in exclude)
    chunks = _ListingChunks(label_from_path)

    def add(path: str, pattern: str | None = None) -> int:
        count = 0
        for file in list_files(path, storage_options):
            if pattern is not None and not glob_match(file.url, pattern):
                continue
            if not any((file.url + "/").startswith(e) for e in excluded):
                chunks.add(file)
                count += 1
        return count

    for source in sources:
        if is_remote(source):
            check_store(source, storage_options, what="source")
            if _GLOB_CHARS.search(source) and not exists(source, storage_options):
                prefix = source[: _GLOB_CHARS.search(source).start()].rsplit("/", 1)[0]
                if not add(prefix, source):
                    raise SourceNotFoundError(source)
            elif not add(source):
                raise SourceNotFoundError(source)
            continue
        path = _source_path(source)
        if _GLOB_CHARS.search(path) and not os.path.lexists(path):
            matches = [m for m in glob.glob(path, recursive=True) if not _hidden(m)]
            if not matches:
                raise SourceNotFoundError(source)
            for match in matches:
                add(match)
            continue
        if not os.path.lexists(path):
            raise SourceNotFoundError(source)
        add(path)
    return chunks.table()


class _ListingChunks:
    """Listed files gathered as Arrow record batches of `CHUNK_ROWS` rows: a million files take
    Arrow's ~100 bytes each, never a Python object each (those live for one chunk)."""

    CHUNK_ROWS = 16384

    def __init__(self, label_from_path: str | None):
        self.label_from_path = label_from_path
        self.batches: list[pa.RecordBatch] = []
        self.pending: list[Listed] = []

    def add(self, file: Listed) -> None:
        self.pending.append(file)
        if len(self.pending) >= self.CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        uris, sizes, mtimes, kinds = zip(*self.pending, strict=True)
        self.pending = []
        micros = pc.divide(pa.array(mtimes, pa.int64()), 1000)  # Delta's resolution: re-runs compare equal
        labels = [label_for(u, self.label_from_path) for u in uris] if self.label_from_path else None
        self.batches.append(pa.RecordBatch.from_arrays([
            pa.array(uris, pa.string()), pa.array(sizes, pa.int64()), micros.cast(LISTING_SCHEMA.field("modified_at").type),
            pa.array(labels, pa.string()) if labels is not None else pa.nulls(len(uris), pa.string()),
            pa.nulls(len(uris), LISTING_SCHEMA.field("attributes").type),  # filled from --metadata later
            pa.array(kinds, pa.string()),
        ], schema=LISTING_SCHEMA))

    def table(self) -> pa.Table:
        """Every listed file once (the last listing of a uri wins), sorted by uri."""
        self.flush()
        table = pa.Table.from_batches(self.batches, schema=LISTING_SCHEMA)
        self.batches = []
        if table.num_rows < 2:
            return table
        # A folder walk lists in uri order already: each copy skipped is ~100 bytes a file.
        uris = table["uri"]
        if not pc.all(pc.less_equal(uris.slice(0, len(uris) - 1), uris.slice(1))).as_py():
            # Stable sort, so among duplicates (overlapping sources) the last listed one is last.
            table = table.take(pc.sort_indices(table, [("uri", "ascending")]))
            uris = table["uri"]
        last = pc.not_equal(uris.slice(0, len(uris) - 1), uris.slice(1))
        if not pc.all(last).as_py():
            keep = pa.concat_arrays([*last.chunks, pa.array([True])]) if isinstance(last, pa.ChunkedArray) else pa.concat_arrays([last, pa.array([True])])
            table = table.filter(keep)
        return table.combine_chunks()


def _source_path(source: str) -> str:
    """The absolute local path of a source (a path, "~/...", or a file:// URI)."""
    if not has_scheme(source):
        return os.path.abspath(os.path.expanduser(source))
    path = local_path_or_none(source)
    if path is None:
        raise SpecError(f"only local sources are supported so far: {source}")
    return os.path.abspath(path)


def source_roots(sources: Sequence[str]) -> list[str]:
    """The root of each source, which a metadata file's `file_name` is relative to: a folder
    itself, a glob's literal folder, a single file's folder (an object-store prefix as a URL).

    Example:
        >>> source_roots(["/data/photos", "s3://b/scans/**/*.tif"])
        ['file:///data/photos', 's3://b/scans']
    """
    roots: list[str] = []
    for source in sources:
        if is_remote(source):
            match = _GLOB_CHARS.search(source)
            root = source[: match.start()].rsplit("/", 1)[0] if match else source.rstrip("/")
        else:
            path = _source_path(source)
            if _GLOB_CHARS.search(path) and not os.path.lexists(path):
                path = path[: _GLOB_CHARS.search(path).start()].rsplit("/", 1)[0] or "/"
            elif os.path.lexists(path) and not os.path.isdir(path):
                path = os.path.dirname(path)
            root = path_to_uri(path)
        if root not in roots:
            roots.append(root)
    return roots


def source_scope(sources: Sequence[str]) -> SourceScope:
    """The scope of `sources` for sync-deletes."""
    prefixes, files, patterns = [], set(), []
    for source in sources:
        if is_remote(source):
            if _GLOB_CHARS.search(source):
                patterns.append(source)
            else:  # an object or a prefix: both cover what starts with it
                files.add(source)
                prefixes.append(source.rstrip("/") + "/")
            continue
        path = _source_path(source)
        if _GLOB_CHARS.search(path) and not os.path.lexists(path):
            patterns.append(path)
        elif os.path.isdir(path):
            prefixes.append(path_to_uri(path).rstrip("/") + "/")
        else:
            files.add(path_to_uri(path))
    return SourceScope(tuple(prefixes), frozenset(files), tuple(patterns))
