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

import csv
import hashlib
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import (
    LakeDamagedError,
    LakeImgError,
    OutputExistsError,
    SpecError,
    TableNotFoundError,
)
from lakeimg.image.codecs import EXPORT_FORMATS, decode_pixels, export_bytes
from lakeimg.image.decode import decode_image
from lakeimg.jobs.verify import READ_ERRORS, content_mismatches
from lakeimg.sqlguard import filter_table
from lakeimg.storage import (
    check_store,
    is_remote,
    join_url,
    local_path_or_none,
    read_bytes,
    resolve,
    write_bytes,
)
from lakeimg.storage import exists as storage_exists

__all__ = ["export_table", "safe_name", "safe_component", "ExportLayout", "EXPORT_LAYOUTS"]

ExportLayout = Literal["flat", "label", "source"]
EXPORT_LAYOUTS = ("flat", "label", "source")
_BYTE_COLUMNS = {"content", "data", "thumbnail"}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PIXEL_COLUMNS = ["uri", "variant", "data", "encoding", "width", "height", "channels", "dtype"]


def safe_name(uri: str, ext: str, variant: int | None = None, page: int | None = None) -> str:
    """A file name for a uri: sanitized stem of its last path component, uri hash, variant, page, ext.

    Example:
        >>> safe_name("file:///photos/cat%201.jpg", "png", 2), safe_name("file:///s.tif", "png", page=1)
        ('cat_1-8b41fb031f-v2.png', 's-47773a9d57-p1.png')
    """
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    return f"{_stem(uri)}-{digest}{_suffix(variant, page)}.{ext.lstrip('.')}"


def _uri_parts(uri: str) -> list[str]:
    """A uri's path components (an object-store URL's scheme and bucket first)."""
    try:
        path = local_path_or_none(uri)
    except LakeImgError:  # a file URI naming another host: its text is still a name
        path = None
    if path is None:
        scheme, _, rest = uri.partition("://")
        return [scheme, *rest.replace("\\", "/").split("/")] if rest else uri.replace("\\", "/").split("/")
    return path.replace("\\", "/").split("/")


def _stem(uri: str) -> str:
    parts = [p for p in _uri_parts(uri) if p]
    last = parts[-1] if parts else "image"
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    return safe_component(stem)


def _suffix(variant: int | None, page: int | None) -> str:
    return (f"-v{variant}" if variant is not None else "") + (f"-p{page}" if page is not None else "")


def safe_component(text: str) -> str:
    """One path component made of `[A-Za-z0-9._-]`, never starting or ending with `.`, `_` or
    `-` (so never `.`, `..` or hidden), at most 80 characters.

    Example:
        >>> safe_component("../etc"), safe_component("Maine Coon"), safe_component("..")
        ('etc', 'Maine_Coon', 'image')
    """
    return _UNSAFE.sub("_", text).strip("._-")[:80] or "image"


def _inside(folder: Path, parts: Sequence[str]) -> Path:
    """`folder/parts...`, refused unless it resolves inside `folder` (a symlink out is refused too)."""
    target = folder.joinpath(*parts).resolve()
    if not target.is_relative_to(folder) or target == folder:
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
    layout: ExportLayout = "flat",
    where: str | None = None,
    overwrite: bool = False,
    pages: Literal["first", "all"] = "first",
    metadata: bool = True,
) -> dict[str, Any]:
    """Write the images of `table@version` into `out` as `fmt` files; returns a summary.

    Derived tables export their `data` (decoded per `encoding`); source tables their `content`,
    each row's bytes first checked against its `content_sha256`. Damage (a row whose bytes do
    not match, a missing or unreadable data file) is never written as a good file: the rest is
    exported, then LakeDamagedError names what was left out. A row that fails to decode is
    counted in `failed` and reported on stderr.

    Args:
        layout: "flat" (every file right in `out`, named `<stem>-<uri hash>.<ext>`), "label"
            (`out/<label>/<name>`, torchvision's ImageFolder and Hugging Face imagefolder
            layout; no label: `unlabeled`) or "source" (the source tree below the uris' common
            folder, original stems). Every name is made of safe components and checked to stay
            inside `out`.
        where: one condition over the table's columns (`lakeimg.sqlguard.parse_where`).
        overwrite: replace files already there (otherwise OutputExistsError before anything is written).
        pages: "all" writes every page of a multi-page source image (`-p<N>` in the name).
        metadata: also write `out/metadata.csv` (file_name, uri, label, variant/page, attributes).

    Example:
        >>> export_table(lake_dir, "images", out_dir, fmt="png")["written"]
        4
    """
    if fmt not in EXPORT_FORMATS:
        raise SpecError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if not 1 <= quality <= 100:
        raise SpecError(f"quality must be 1..100, got {quality}")
    if layout not in EXPORT_LAYOUTS:
        raise SpecError(f"unknown export layout {layout!r}; use one of {', '.join(EXPORT_LAYOUTS)}")
    if pages not in ("first", "all"):
        raise SpecError(f"pages must be 'first' or 'all', got {pages!r}")
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
    ext = EXPORT_FORMATS[fmt].lstrip(".")
    plan = _plan(engine, table, resolved, names, where=where, layout=layout, ext=ext,
                 all_pages=pages == "all" and not derived)

    def target_of(parts: Sequence[str]) -> str:
        return join_url(folder, *parts) if isinstance(folder, str) else str(_inside(folder, parts))

    targets = {key: [(page, parts, target_of(parts)) for page, parts in entries] for key, entries in plan.files.items()}
    meta_target = target_of(["metadata.csv"]) if metadata else None
    if not overwrite:
        wanted = [t for entries in targets.values() for _, _, t in entries] + ([meta_target] if meta_target else [])
        existing = [t for t in wanted if storage_exists(t, options)]
        if existing:
            raise OutputExistsError(str(folder), existing)
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
    written = failed = 0
    listed: list[dict[str, Any]] = []  # metadata.csv rows of the files written
    mismatched: list[str] = []  # uris whose stored bytes do not match content_sha256
    unreadable: list[tuple[str, str]] = []  # (data file, why)
    for path in engine.data_files(table, resolved) if targets else []:
        for batch in _batches(path, columns, unreadable, options):
            bad = {m[0] for m in content_mismatches(batch)} if hashed else set()
            for row in batch.to_pylist():
                entries = targets.get((row["uri"], row.get("variant")))
                if entries is None:  # not selected by `where`
                    continue
                if row["uri"] in bad:  # damage, not a decode failure: never written as a good file
                    mismatched.append(row["uri"])
                    failed += 1
                    continue
                source = None
                for page, parts, target in entries:
                    try:
                        if derived:
                            pixels = decode_pixels(row["data"], row["encoding"], row["width"], row["height"], row["channels"], row["dtype"])
                        else:
                            source = source if source is not None else _source_content(row, options)
                            pixels = decode_image(source, row["uri"], page=page)
                        data = export_bytes(pixels, fmt, quality=quality)
                    except Exception as exc:  # noqa: BLE001 - one bad row never stops the export
                        failed += 1
                        print(f"lakeimg: export: {row['uri']}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        break
                    if isinstance(folder, Path):
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                    write_bytes(target, data, options)
                    written += 1
                    listed.append({"file_name": "/".join(parts), **plan.meta[(row["uri"], row.get("variant"))],
                                   **({"page": page} if pages == "all" and not derived else {})})
    if meta_target is not None:
        write_bytes(meta_target, _metadata_csv(listed), options)
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
    return {"table": table, "version": resolved, "out": str(folder), "format": fmt, "layout": layout,
            "written": written, "failed": failed, "selected": len(targets)}


class _Plan:
    """What an export writes: per (uri, variant) its (page, relative path parts), and the
    metadata.csv values of the row."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, int | None], list[tuple[int, list[str]]]] = {}
        self.meta: dict[tuple[str, int | None], dict[str, Any]] = {}


def _plan(engine: LocalEngine, table: str, version: int, names: Sequence[str], *, where: str | None, layout: str,
          ext: str, all_pages: bool) -> _Plan:
    """Select the rows (`where`, validated by `sqlguard`) and name their files (see `export_table`)."""
    small = [n for n in names if n not in _BYTE_COLUMNS]
    rows = engine.read(table, version=version, columns=small)
    if where is not None:
        rows = filter_table(rows, where, columns=small)
    records = rows.select([c for c in ("uri", "variant", "label", "attributes", "pages", "tiled") if c in small]).to_pylist()
    plan = _Plan()
    root: list[str] = []
    if layout == "source" and records:
        folders = [_uri_parts(r["uri"])[:-1] for r in records]
        root = folders[0]
        for other in folders[1:]:
            while other[: len(root)] != root:
                root = root[:-1]
    used: set[tuple[str, ...]] = set()
    for r in records:
        key = (r["uri"], r.get("variant"))
        page_list = list(range(r.get("pages") or 1)) if all_pages else [0]
        entries = []
        for page in page_list:
            page_tag = page if all_pages else None
            if layout == "flat":
                parts = [safe_name(r["uri"], ext, r.get("variant"), page_tag)]
            elif layout == "label":
                parts = [safe_component(r["label"]) if r.get("label") else "unlabeled", safe_name(r["uri"], ext, r.get("variant"), page_tag)]
            else:
                below = [safe_component(p) for p in _uri_parts(r["uri"])[len(root):-1]]
                parts = [*below, f"{_stem(r['uri'])}{_suffix(r.get('variant'), page_tag)}.{ext}"]
                if tuple(parts) in used:  # two sources that sanitize alike: the hashed name keeps both
                    parts = [*below, safe_name(r["uri"], ext, r.get("variant"), page_tag)]
            used.add(tuple(parts))
            entries.append((page, parts))
        plan.files[key] = entries
        attributes = dict(r.get("attributes") or [])
        plan.meta[key] = {"uri": r["uri"], "label": r.get("label"),
                          **({"variant": r["variant"]} if "variant" in r else {}), **attributes}
    return plan


def _metadata_csv(rows: list[dict[str, Any]]) -> bytes:
    """metadata.csv (Hugging Face imagefolder's name and `file_name` column) of the files written."""
    head = ["file_name", "uri", "label", "variant", "page"]
    columns = [c for c in head if any(c in r for r in rows) or c in ("file_name", "uri", "label")]
    extra = sorted({k for r in rows for k in r} - set(head))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns + extra, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


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
