"""Ingest's `--metadata FILE`: labels and extra columns per image, like Hugging Face imagefolder.

A metadata file (CSV, JSONL or Parquet, chosen by its suffix) has one row per image, named by
a `file_name` column (a path relative to a source root: the source folder, a glob's literal
folder, or a single file's folder; `/`-separated, never absolute, never `..`) or a `uri` column
(absolute URIs or paths, turned into URIs by `lakeimg.storage.to_uri`, the one path <-> URI
function). A `label` column sets the label; every other column goes into the `attributes`
map (column name -> value as text; empty CSV cells and nulls are left out).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "m.csv").write_text("file_name,label,split\\na/1.jpg,cat,train\\n")
    >>> meta = read_metadata(str(d / "m.csv"), roots=[str(d)])
    >>> meta.rows[(d / "a" / "1.jpg").as_uri()]
    ('cat', {'split': 'train'})
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakeimg.errors import SpecError
from lakeimg.storage import (
    has_scheme,
    is_remote,
    join_url,
    open_input,
    path_to_uri,
    printable,
    to_uri,
    uri_to_path,
)

__all__ = ["Metadata", "read_metadata", "ATTRIBUTES_TYPE"]

ATTRIBUTES_TYPE = pa.map_(pa.string(), pa.string())
_KEYS = ("file_name", "uri")


@dataclass(frozen=True)
class Metadata:
    """A metadata file read and resolved: uri -> (label or None, attributes or None).

    `has_label`: the file has a `label` column (then its value, even empty, is the label).
    `source`: the file's URI and `sha256` its content hash, for the run record.
    """

    rows: Mapping[str, tuple[str | None, dict[str, str] | None]]
    has_label: bool
    source: str
    sha256: str


def read_metadata(path: str, *, roots: Sequence[str], storage_options: Mapping[str, str] | None = None) -> Metadata:
    """Read a metadata file and resolve its rows to image URIs (see the module docstring).

    Raises:
        SpecError: an unknown suffix, no `file_name`/`uri` column, a row without one, a
            `file_name` that leaves its root, or two rows naming the same image.
    """
    url = to_uri(path)
    try:
        with open_input(url, storage_options) as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:
        raise SpecError(f"--metadata {path}: cannot be read: {exc}") from exc
    records = _records(path, data)
    if not records:
        raise SpecError(f"--metadata {path}: no rows")
    columns = list(records[0])
    key = next((k for k in _KEYS if k in columns), None)
    if key is None:
        raise SpecError(f"--metadata {path}: needs a `file_name` (relative to the source root) or `uri` column; "
                        f"found {', '.join(columns) or 'none'}")
    has_label = "label" in columns
    rows: dict[str, tuple[str | None, dict[str, str] | None]] = {}
    for number, record in enumerate(records, start=1):
        name = record.get(key)
        if name in (None, ""):
            raise SpecError(f"--metadata {path}: row {number} has no {key}")
        label = record.get("label")
        attributes = {str(k): v for k, v in record.items() if k not in (key, "label") and v not in (None, "")}
        label = None if label in (None, "") else label
        for uri in _uris(str(name), key, roots, path, number):
            if uri in rows:
                raise SpecError(f"--metadata {path}: two rows name {printable(uri)}")
            rows[uri] = (label, attributes or None)
    return Metadata(rows, has_label, url, hashlib.sha256(data).hexdigest())


def _uris(name: str, key: str, roots: Sequence[str], path: str, number: int) -> list[str]:
    """The image URIs one row names: its uri, or its file_name under each source root."""
    if key == "uri":
        if not has_scheme(name) and not os.path.isabs(os.path.expanduser(name)):
            raise SpecError(f"--metadata {path}: row {number}: uri {name!r} must be an absolute path or a URI; "
                            "use a `file_name` column for paths relative to the source root")
        return [to_uri(name)]
    relative = name.replace("\\", "/") if not has_scheme(name) else None
    parts = posixpath.normpath(relative).split("/") if relative else []
    if relative is None or relative.startswith("/") or ".." in parts or parts in ([], ["."]):
        raise SpecError(f"--metadata {path}: row {number}: file_name {name!r} must be a path relative to the "
                        "source root (no leading /, no ..); use a `uri` column for absolute paths or URIs")
    out = []
    for root in roots:
        if is_remote(root):
            out.append(join_url(root, *parts))
        else:
            out.append(path_to_uri(posixpath.join(uri_to_path(root), *parts)))
    return out


def _records(path: str, data: bytes) -> list[dict[str, str | None]]:
    """The file's rows as {column: text or None}, by suffix."""
    suffix = path.lower().rsplit(".", 1)[-1]
    try:
        if suffix in ("csv", "tsv"):
            text = data.decode("utf-8-sig")
            return [dict(r) for r in csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == "tsv" else ",")]
        if suffix in ("jsonl", "ndjson", "json"):
            lines = [line for line in data.decode("utf-8-sig").splitlines() if line.strip()]
            rows = [json.loads(line) for line in lines]
            if not all(isinstance(r, dict) for r in rows):
                raise SpecError(f"--metadata {path}: every JSONL line must be an object")
            return [{str(k): _text(v) for k, v in r.items()} for r in rows]
        if suffix == "parquet":
            table = pq.read_table(pa.BufferReader(data))
            return [{k: _text(v) for k, v in r.items()} for r in table.to_pylist()]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, pa.ArrowException) as exc:
        raise SpecError(f"--metadata {path}: not readable as {suffix}: {exc}") from exc
    raise SpecError(f"--metadata {path}: unknown suffix; use .csv, .jsonl or .parquet")


def _text(value: Any) -> str | None:
    """One metadata value as text (numbers and booleans as JSON writes them, nested values as JSON)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return json.dumps(value, sort_keys=True, default=str)
