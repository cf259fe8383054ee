"""The export job: a table's images (derived `data` or source `content`) back as files in a folder.

File names come from the uri (its last path component, sanitized) plus a short hash of the
uri (and the variant), so different uris never collide and no uri can name a path outside the
output folder: names are single components of `[A-Za-z0-9._-]`, never start with a dot, and
every resolved path is checked to sit directly inside the folder before writing. The output
may be an object-store prefix (`s3://bucket/out`): each name becomes one object right under it.
Source rows whose file was too large to inline are read from their source (file or object,
with the lake's storage options) and checked against `content_sha256`; tiled images are not
exported whole.

Example:
    >>> safe_name("file:///data/../../etc/passwd", "png")[:7]
    'passwd-'
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeDamagedError, LakeImgError, SpecError, TableNotFoundError
from lakeimg.image.codecs import EXPORT_FORMATS, decode_pixels, export_bytes
from lakeimg.image.decode import decode_image
from lakeimg.jobs.verify import READ_ERRORS, content_mismatches
from lakeimg.storage import (
    check_store,
    is_remote,
    join_url,
    local_path_or_none,
    read_bytes,
    resolve,
    write_bytes,
)

__all__ = ["export_table", "safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PIXEL_COLUMNS = ["uri", "variant", "data", "encoding", "width", "height", "channels", "dtype"]


def safe_name(uri: str, ext: str, variant: int | None = None) -> str:
    """A file name for a uri: sanitized stem of its last path component, uri hash, variant, ext.

    Example:
        >>> safe_name("file:///photos/cat%201.jpg", "png", 2)
        'cat_1-8b41fb031f-v2.png'
    """
    try:
        path = local_path_or_none(uri) or uri
    except LakeImgError:  # a file URI naming another host: its text is still a name
        path = uri
    last = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    stem = _UNSAFE.sub("_", stem).strip("._-")[:80] or "image"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    suffix = f"-v{variant}" if variant is not None else ""
    return f"{stem}-{digest}{suffix}.{ext.lstrip('.')}"


def _inside(folder: Path, name: str) -> Path:
    target = (folder / name).resolve()
    if target.parent != folder:
        raise LakeImgError(f"refusing to write {target}: outside {folder}")
    return target


def export_table(
    lake: str | os.PathLike[str],
    table: str,
    out: str | os.PathLike[str],
    *,
    fmt: str = "png",
    version: VersionLike = None,
    quality: int = 90,
    engine: LocalEngine | None = None,
) -> dict[str, Any]:
    """Write every image of `table@version` into `out` as `fmt` files; returns a summary.

    Derived tables export their `data` (decoded per `encoding`); source tables their `content`,
    each row's bytes first checked against its `content_sha256`. Damage (a row whose bytes do
    not match, a missing or unreadable data file) is never written as a good file: the rest is
    exported, then LakeDamagedError names what was left out. A row that fails to decode is
    counted in `failed` and reported on stderr.

    Example:
        >>> export_table(lake_dir, "images", out_dir, fmt="png")["written"]
        4
    """
    if fmt not in EXPORT_FORMATS:
        raise SpecError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if not 1 <= quality <= 100:
        raise SpecError(f"quality must be 1..100, got {quality}")
    engine = engine or LocalEngine(str(lake))
    if not engine.exists(table):
        raise TableNotFoundError(table, str(lake))
    resolved = engine.resolve_version(table, version)
    names = engine.arrow_schema(table, resolved).names
    derived = "data" in names
    hashed = not derived and "content_sha256" in names
    columns = [c for c in _PIXEL_COLUMNS if c in names] if derived else ["uri", "content"] + (["content_sha256"] if hashed else [])
    columns += ["tiled"] if not derived and "tiled" in names else []
    options = engine.options
    remote_out = is_remote(os.fspath(out))
    folder: Path | str
    if remote_out:  # an object-store prefix: names are single safe components joined under it
        folder = os.fspath(out).rstrip("/")
        check_store(folder, options, what="export")  # one typed error (credentials, bucket) before any read
    else:
        folder = Path(out).resolve()
        folder.mkdir(parents=True, exist_ok=True)
    ext = EXPORT_FORMATS[fmt].lstrip(".")
    written = failed = 0
    mismatched: list[str] = []  # uris whose stored bytes do not match content_sha256
    unreadable: list[tuple[str, str]] = []  # (data file, why)
    for path in engine.data_files(table, resolved):
        for batch in _batches(path, columns, unreadable, options):
            bad = {m[0] for m in content_mismatches(batch)} if hashed else set()
            for row in batch.to_pylist():
                if row["uri"] in bad:  # damage, not a decode failure: never written as a good file
                    mismatched.append(row["uri"])
                    failed += 1
                    continue
                try:
                    if derived:
                        pixels = decode_pixels(row["data"], row["encoding"], row["width"], row["height"], row["channels"], row["dtype"])
                    else:
                        pixels = decode_image(_source_content(row, options), row["uri"])
                    data = export_bytes(pixels, fmt, quality=quality)
                except Exception as exc:  # noqa: BLE001 - one bad row never stops the export
                    failed += 1
                    print(f"lakeimg: export: {row['uri']}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                name = safe_name(row["uri"], ext, row.get("variant"))
                target = join_url(folder, name) if isinstance(folder, str) else str(_inside(folder, name))
                write_bytes(target, data, options)
                written += 1
    if mismatched or unreadable:
        parts = []
        if mismatched:
            shown = ", ".join(mismatched[:5]) + (", ..." if len(mismatched) > 5 else "")
            parts.append(f"{len(mismatched)} rows whose content does not match content_sha256 ({shown})")
        if unreadable:
            parts.append(f"unreadable data ({len(unreadable)} files or row groups; {unreadable[0][0]}: {unreadable[0][1]})")
        raise LakeDamagedError(
            table,
            f"export wrote {written} files to {folder} but left out " + " and ".join(parts)
            + f"; run `lakeimg verify {table}@{resolved}`",
            version=resolved,
            file=unreadable[0][0] if unreadable else None,
        )
    return {"table": table, "version": resolved, "out": str(folder), "format": fmt, "written": written, "failed": failed}


def _source_content(row: dict[str, Any], options: dict[str, str] | None) -> bytes:
    """A source row's image bytes: inline, or read from its source file or object (a file too
    large to inline) and checked against `content_sha256`. Tiled files are not exported whole."""
    if row["content"] is not None:
        return row["content"]
    if row.get("tiled"):
        raise LakeImgError("a tiled image is not exported whole; read windows of it with read_region")
    data = read_bytes(row["uri"], options)
    if row.get("content_sha256") and hashlib.sha256(data).hexdigest() != row["content_sha256"]:
        raise LakeImgError("content not inlined and the source file changed since it was ingested; re-ingest it")
    return data


def _batches(path: str, columns: list[str], unreadable: list[tuple[str, str]],
             options: dict[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """A data file's batches, row group by row group; a missing file or a damaged row group
    (bad page, page checksum or codec stream) is noted in `unreadable` and skipped. Only reads
    are guarded: a failed write of an exported file stays an error."""

    def note(where: str, exc: BaseException) -> None:
        why = "missing (deleted or vacuumed)" if isinstance(exc, FileNotFoundError) else f"{where}{type(exc).__name__}: {exc}"
        unreadable.append((path, " ".join("".join(ch if ch.isprintable() else " " for ch in why).split())))

    try:
        fs, located = resolve(path, options)
        parquet = pq.ParquetFile(located, filesystem=fs, page_checksum_verification=True)
        groups = parquet.num_row_groups
    except READ_ERRORS as exc:
        note("", exc)
        return
    for group in range(groups):
        try:
            batches = parquet.iter_batches(batch_size=32, columns=columns, row_groups=[group])
            while True:
                batch = next(batches, None)
                if batch is None:
                    break
                yield batch
        except READ_ERRORS as exc:
            note(f"row group {group}: ", exc)
