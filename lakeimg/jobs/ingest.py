"""The ingest job: list sources, decode what changed, commit images, rejects and tiles, record the run.

Incremental and idempotent: a file whose (uri, size, modification time) is already in the images
or rejects table is not read again; with nothing to do no image table gets a new version. Every
listed file ends up in exactly one of the two tables. The job is written once for every engine:
plan (`plan_run`, on the driver) -> stage decoding (`decode_files`: the ingest kernel on the
engine's workers, then the tiles of huge files) -> commit (`commit_ingest`). All decoding
happens before the first commit; a failure before it leaves every table as it was. A failure or
kill between commits leaves what landed (each commit correct on its own) and the next run
completes the work.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> src = pathlib.Path(tempfile.mkdtemp()); Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a.png")
    >>> ingest_files(tempfile.mkdtemp(), [str(src)], workers=0).added
    1
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine._delta_txn import remove_abandoned_uploads
from lakeimg.engine.base import (
    CommitResult,
    Engine,
    MergeMetrics,
    SnapshotRows,
    Stage,
    Staged,
    Write,
)
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import ensure_lake
from lakeimg.engine.staging import claim_staging, remove_stale_staging
from lakeimg.engine.urisets import same, uri_set
from lakeimg.errors import ErrorClass, SpecError, TableNotFoundError
from lakeimg.image.codecs import DEFAULT_TILE_ENCODING, TILE_ENCODINGS
from lakeimg.image.info import default_max_decoded_bytes
from lakeimg.image.pyramid import DEFAULT_TILE_SIZE
from lakeimg.image.sources import DEFAULT_MAX_TILED_PIXELS, DEFAULT_TILE_ABOVE_PIXELS
from lakeimg.jobs.listing import list_sources, source_roots, source_scope
from lakeimg.jobs.metadata import Metadata, read_metadata
from lakeimg.jobs.runs import prepare_run_commits, run_commits
from lakeimg.jobs.summary import DryRunSummary, RunSummary
from lakeimg.jobs.tiling import (
    TilingResult,
    commit_tiles,
    tile_images,
)
from lakeimg.kernels.ingest import (
    IngestOptions,
    ingest_kernel,
    ingest_result_schema,
    prepare_ingest_kernel,
)
from lakeimg.kernels.rejects import as_rejects, reject_row
from lakeimg.kernels.relabel import Labels, relabel_kernel, relabel_result_schema
from lakeimg.kernels.tiles import TileOptions
from lakeimg.schemas import table_contract
from lakeimg.storage import to_uri
from lakeimg.tables import (
    RUNS_TABLE,
    RunRecord,
    new_run_id,
    rejects_of,
    tiles_of,
    utc_now,
    validate_name,
)

__all__ = ["IngestSummary", "ingest_files"]

_KEY_COLUMNS = ["uri", "size_bytes", "modified_at"]


@dataclass(frozen=True)
class IngestSummary(RunSummary):
    """What an ingest run did; `version` is the images table's version after the run."""

    rejects_version: int | None = None
    relabeled: int = 0  # unchanged images whose label or attributes were rewritten (nothing decoded)


# Reject classes that say nothing about the file itself (a worker killed or a read that failed
# this time): the next run reads such files again.
TRANSIENT_REJECTS = tuple(str(c) for c in ErrorClass if c.transient)


def _keys(engine: Engine, name: str, extra: Sequence[str] = (), uri_range: tuple[str, str] | None = None) -> pa.Table:
    """Only the key columns (and `extra`) of a table, as Arrow: a re-run never reads content.
    With `uri_range`, only the rows in it, from the data files that can hold them (read
    driver-side by delta-rs on either engine)."""
    try:
        return engine.reader().read(name, columns=[*_KEY_COLUMNS, *extra], uri_range=uri_range)
    except TableNotFoundError:
        return pa.table({"uri": pa.array([], pa.string()), "size_bytes": pa.array([], pa.int64()),
                         "modified_at": pa.array([], pa.timestamp("us", tz="UTC")),
                         **{c: pa.array([], pa.bool_() if c == "tiled" else pa.string()) for c in extra}})


def sources_uri_range(sources: Sequence[str], listing: pa.Table) -> tuple[str, str]:
    """The uris a run over `sources` can touch: from the smallest source root (or listed uri)
    to the largest root's last possible child. Table rows outside it are left out of the plan.

    Example:
        >>> import pyarrow as pa
        >>> sources_uri_range(["/data/b", "/data/a"], pa.table({"uri": ["file:///data/a/1.png"]}))[0]
        'file:///data/a'
    """
    roots = source_roots(sources)
    low = min([*roots, *([pc.min(listing["uri"]).as_py()] if listing.num_rows else [])])
    high = max([*(r + "/\U0010ffff" for r in roots), *([pc.max(listing["uri"]).as_py()] if listing.num_rows else [])])
    return low, high


def _among(uris: Iterable[str] | pa.Array | pa.ChunkedArray, known: pa.Array | pa.ChunkedArray) -> set[str]:
    """The `uris` (a small set: this run's files) that are in `known` (a table's whole uri column,
    kept as Arrow: a million uris as Python strings would cost the driver ~100 MB)."""
    wanted = uris if isinstance(uris, (pa.Array, pa.ChunkedArray)) else pa.array(sorted(uris), pa.string())
    if len(wanted) == 0 or len(known) == 0:
        return set()
    return set(wanted.filter(pc.is_in(wanted, value_set=_plain(known))).to_pylist())


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.cast(pa.string()) if column.type != pa.string() else column


def plan_ingest(listing: pa.Table, images_keys: pa.Table, rejects_keys: pa.Table, *, retry_rejects: bool = False) -> pa.Table:
    """Rows of `listing` that must be read: not already in images or rejects with equal size and mtime.

    A reject counts as known only when its `error_class` (if given) is not transient
    (`TRANSIENT_REJECTS`), and never with `retry_rejects`: those files are read again.

    Example:
        >>> import pyarrow as pa, datetime as dt
        >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        >>> listing = pa.table({"uri": ["a", "b"], "size_bytes": [1, 2], "modified_at": pa.array([t, t], pa.timestamp("us", tz="UTC"))})
        >>> rejects = listing.append_column("error_class", pa.array(["timeout", "corrupt"]))
        >>> plan_ingest(listing, listing.slice(0, 0), rejects)["uri"].to_pylist()
        ['a']
    """
    if retry_rejects:
        rejects_keys = rejects_keys.slice(0, 0)
    elif "error_class" in rejects_keys.column_names:
        transient = pc.is_in(rejects_keys["error_class"], pa.array(TRANSIENT_REJECTS, rejects_keys["error_class"].type))
        rejects_keys = rejects_keys.filter(pc.invert(pc.fill_null(transient, False)))
    known = pc.or_(_unchanged(listing, images_keys), _unchanged(listing, rejects_keys))
    return listing.filter(pc.invert(known)).sort_by("uri")


def _unchanged(listing: pa.Table, keys: pa.Table) -> pa.Array | pa.ChunkedArray:
    """For each listed file: whether `keys` (one row per uri) holds its uri with the same size
    and modification time. A lookup of each listed uri in a hash of the table's uris, not a
    join: a join copies both sides into its own rows, over twice the memory at a million."""
    if keys.num_rows == 0:
        return pa.nulls(listing.num_rows, pa.bool_()).fill_null(False)
    at = pc.index_in(listing["uri"], value_set=_plain(keys["uri"]))
    same = None
    for column in _KEY_COLUMNS[1:]:
        theirs = pc.take(keys[column], at)
        if theirs.type != listing[column].type:
            theirs = theirs.cast(listing[column].type)
        equal = pc.equal(theirs, listing[column])
        same = equal if same is None else pc.and_(same, equal)
    return pc.fill_null(same, False)


def ingest_files(
    lake: str | os.PathLike[str],
    sources: Sequence[str],
    *,
    table: str = "images",
    workers: int | None = None,
    label_from_path: str | None = None,
    inline_max_bytes: int = 16 << 20,
    max_pixels: int | None = None,
    max_decoded_bytes: int | None = None,
    max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS,
    file_timeout_s: float = 120.0,
    sync_deletes: bool = False,
    retry_rejects: bool = False,
    codecs: Sequence[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
    on_tile_progress: Callable[[int, int], None] | None = None,
    engine: Engine | None = None,
    tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS,
    tile_size: int = DEFAULT_TILE_SIZE,
    tile_overlap: int = 0,
    tile_encoding: str = DEFAULT_TILE_ENCODING,
    tile_rows_per_task: int = 8,
    dry_run: bool = False,
    metadata: str | os.PathLike[str] | None = None,
    relabel: bool = False,
) -> IngestSummary | DryRunSummary:
    """Ingest image files into `LAKE/<table>` (+ `<table>_rejects`) and record the run.

    Args:
        lake: the lake's root folder.
        sources: files, folders (recursive) and globs.
        workers: decoding processes (default: CPU count; 0 decodes in this process).
        label_from_path: "parent" or a regex whose first group (or group "label") is the label.
        inline_max_bytes: files above this keep `content` null.
        max_decoded_bytes: memory limit of one decoded image (width x height x channels x bytes
            per sample), checked from headers before decoding; larger images are tiled when
            their format reads by windows (TIFF), else rejected `too_large`. Default:
            min(2 GiB, memory / (2 x workers)) (`lakeimg.image.decode.default_max_decoded_bytes`).
        max_pixels: an extra cap on width x height of images decoded whole (default: none).
        max_tiled_pixels: tiled images with more pixels (all pages) are rejected `too_large`.
        file_timeout_s: per-file decode time limit; tiling a file gets this per started gigapixel
            across all its tasks.
        sync_deletes: delete rows of files under the sources that no longer exist.
        retry_rejects: read every rejected file again (transient rejects, `TRANSIENT_REJECTS`,
            are read again by every run anyway).
        codecs: extra readers as "module:attribute" tried before the built-in ones.
        on_progress: called as on_progress(done, total) while files are decoded.
        on_tile_progress: called as on_tile_progress(done, total) while the tiles of huge
            files are cut (counted in tiles, all levels of every page).
        tile_above_pixels: files with more pixels (or more bytes than inline_max_bytes) are
            stored as tiles and a pyramid in `<table>_tiles` (0: never); see jobs/tiling.py.
        tile_size, tile_overlap, tile_encoding: the tiles' edge, overlap and codec.
        tile_rows_per_task: split one huge page into tasks of this many tile rows (0: no split).
        dry_run: list and plan only: a `DryRunSummary` of the files that would be added,
            re-read and deleted; nothing is decoded, created or committed (no runs row).
        metadata: a CSV, JSONL or Parquet file with a `file_name` (relative to the source
            root) or `uri` column, an optional `label` column and extra columns (the
            `attributes` map); see `lakeimg.jobs.metadata`. Rows it names whose label or
            attributes differ are rewritten without decoding, also when their files did not change.
        relabel: apply `label_from_path` and `metadata` to every unchanged image under the
            sources too (without decoding): labels no rule gives any more become null.
    """
    if tile_size < 16 or tile_overlap < 0 or tile_overlap >= tile_size or tile_encoding not in TILE_ENCODINGS:
        raise SpecError(
            f"tiles need tile_size >= 16, 0 <= overlap < tile_size and an encoding in {', '.join(TILE_ENCODINGS)}; "
            f"got tile_size={tile_size}, overlap={tile_overlap}, encoding={tile_encoding!r}"
        )
    validate_name("target table", table)  # before anything is created: `../x` must not leave the lake
    if relabel and not (label_from_path or metadata):
        raise SpecError("--relabel re-applies --label-from-path or --metadata: give one of them")
    started = time.monotonic()
    lake = str(lake)
    engine = engine or LocalEngine(lake, workers=workers)
    # The engine's object-store settings (env + options): they reach the lake and the sources.
    storage = getattr(engine, "options", None) or {}
    meta = read_metadata(os.fspath(metadata), roots=source_roots(sources), storage_options=storage) if metadata else None
    # The lake's check (a probe object written and deleted: requests in a row on an object
    # store) runs while the sources are listed; its error wins over the listing's.
    lake_check = None if dry_run else _in_thread(ensure_lake, lake, storage)
    run_id, started_at = new_run_id(), utc_now()
    options = IngestOptions(
        run_id=run_id,
        inline_max_bytes=inline_max_bytes,
        max_pixels=max_pixels,
        max_decoded_bytes=max_decoded_bytes if max_decoded_bytes is not None else default_max_decoded_bytes(
            (os.cpu_count() or 1) if workers is None else workers
        ),
        max_tiled_pixels=max_tiled_pixels,
        file_timeout_s=file_timeout_s,
        codecs=tuple(codecs),
        ingested_at=started_at,
        tile_above_pixels=tile_above_pixels,
        tile_size=tile_size,
        storage=tuple(storage.items()),
    )
    tile_options = TileOptions(tile_size=tile_size, overlap=tile_overlap, encoding=tile_encoding,
                               rows_per_task=tile_rows_per_task, run_id=run_id, ingested_at=started_at,
                               file_timeout_s=file_timeout_s, storage=tuple(storage.items()))
    spec = {
        "sources": [to_uri(s) for s in sources],
        "table": table,
        "label_from_path": label_from_path,
        "inline_max_bytes": inline_max_bytes,
        "max_pixels": options.max_pixels,
        "max_decoded_bytes": options.max_decoded_bytes,
        "max_tiled_pixels": max_tiled_pixels,
        "sync_deletes": sync_deletes,
        "codecs": list(codecs),
        "tile_above_pixels": tile_above_pixels,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "tile_encoding": tile_encoding,
    }
    if meta is not None:  # only when given: earlier runs' recorded specs stay as they were
        spec.update(metadata=meta.source, metadata_sha256=meta.sha256)
    if relabel:
        spec["relabel"] = True
    record = RunRecord(run_id=run_id, job="ingest", engine=engine.name, target_table=table, spec=spec,
                       started_at=started_at, sources=spec["sources"])
    if not dry_run:
        engine.start_workers()  # they get ready while the sources are listed
    try:
        run = plan_run(engine, lake, sources, table=table, label_from_path=label_from_path,
                       sync_deletes=sync_deletes, options=options, record=record, retry_rejects=retry_rejects,
                       metadata=meta, relabel=relabel)
    finally:
        if lake_check is not None:
            lake_check.result()

    if dry_run:
        todo = run.todo["uri"]
        updated = len(_among(todo, run.known_images) | _among(todo, run.known_rejects))
        return DryRunSummary("ingest", table, engine.version(table) if engine.exists(table) else None,
                             add=len(todo) - updated, update=updated, delete=run.deleted, unchanged=run.unchanged,
                             relabel=len(run.relabel))
    remove_stale_staging(lake)  # of runs killed before they could clean up
    staging = claim_staging(lake, run_id)  # marks this run's staging as live (engine/staging.py)
    try:
        # Neither needs a decoded file, so both run while the workers decode: the objects that
        # runs killed before their commit uploaded are deleted (a live process's never are),
        # and the runs-table bookkeeping is done.
        abandoned = _in_thread(remove_abandoned_uploads, engine.reader())
        prepared = prepare_run_commits(engine, record, _committed_tables(table))
        decoded = decode_files(engine, run, tile_options, workers=workers, on_progress=on_progress,
                               on_tile_progress=on_tile_progress)
        abandoned.result()
        try:
            images_version, metrics, rejects_version = commit_ingest(engine, run, decoded, prepared)
        finally:
            decoded.cleanup()
    finally:
        staging.release()
    return IngestSummary(
        run_id=run_id,
        table=table,
        version=images_version,
        added=metrics.inserted,
        updated=metrics.updated,
        unchanged=run.unchanged,
        deleted=run.deleted,
        rejected=decoded.rejects.num_rows,
        seconds=round(time.monotonic() - started, 3),
        rejects_version=rejects_version,
        relabeled=len(run.relabel),
    )


@dataclass
class IngestRun:
    """One run's plan, the same on both engines: the files to read and the rows to delete."""

    table: str
    options: IngestOptions
    record: RunRecord
    listing: pa.Table
    todo: pa.Table  # the listing rows to read (new or changed files)
    known_images: pa.Array  # uris in the images table (Arrow: a million of them stay small)
    known_rejects: pa.Array
    vanished_images: list[str]
    vanished_rejects: list[str]
    tiles_replace: set[str]  # uris whose old tiles go (changed or vanished tiled files)
    stale_images: list[str] = dataclasses.field(default_factory=list)  # left by a stopped run
    stale_rejects: list[str] = dataclasses.field(default_factory=list)
    # Unchanged images whose label/attributes change (rewritten from `images_version`, not decoded).
    relabel: dict[str, tuple[str | None, tuple[tuple[str, str], ...] | None]] = dataclasses.field(default_factory=dict)
    images_version: int | None = None

    @property
    def unchanged(self) -> int:
        return self.listing.num_rows - self.todo.num_rows

    @property
    def deleted(self) -> int:
        return len(self.vanished_images) + len(self.vanished_rejects)


@dataclass
class DecodedFiles:
    """What decoding and tiling staged, ready to commit: whole images in `staged`, tiled images
    and their tiles in `tiling`, every reject (rejects contract) in `rejects`."""

    staged: Staged
    tiling: TilingResult
    rejects: pa.Table
    # Every uri the run stages an image row for, in Arrow: a million of them as Python strings
    # would cost the driver hundreds of MB.
    image_uris: pa.Array
    relabeled: Staged | None = None

    def cleanup(self) -> None:
        self.tiling.cleanup()
        self.staged.discard()
        if self.relabeled is not None:
            self.relabeled.discard()


def plan_run(
    engine: Engine,
    lake: str,
    sources: Sequence[str],
    *,
    table: str,
    label_from_path: str | None,
    sync_deletes: bool,
    options: IngestOptions,
    record: RunRecord,
    retry_rejects: bool = False,
    metadata: Metadata | None = None,
    relabel: bool = False,
) -> IngestRun:
    """List the sources and compare them with the tables: what to read, what vanished, and
    which unchanged images get a new label or attributes.

    Everything per file stays in Arrow (the listing, the tables' key columns, the joins); only
    the files to read, vanished and stale ones become Python objects, so a re-run that finds
    nothing to do costs the driver ~200 bytes a file (`--metadata` and `--relabel` also compare
    the stored labels of the images they name).
    """
    validate_name("target table", table)
    # The lake, and a metadata file kept among the images (imagefolder's metadata.csv), are not images.
    exclude = [lake, *([metadata.source] if metadata is not None else [])]
    listing = list_sources(sources, exclude=exclude, label_from_path=label_from_path,
                           storage_options=dict(options.storage))
    if metadata is not None:
        listing = _with_metadata(listing, metadata)
    # Only rows under the sources matter to this run: a new folder's run into a million-row
    # table reads the keys of the few data files near that folder's uris. The two tables are
    # read side by side (on an object store each read is requests in a row).
    uri_range = sources_uri_range(sources, listing)
    with ThreadPoolExecutor(3, thread_name_prefix="lakeimg-plan") as pool:
        version_read = pool.submit(engine.version, table)
        images_read = pool.submit(_keys, engine, table, ["tiled"], uri_range)
        rejects_read = pool.submit(_keys, engine, rejects_of(table), ["error_class"], uri_range)
        images_version, images_keys, rejects_keys = version_read.result(), images_read.result(), rejects_read.result()
    todo = plan_ingest(listing, images_keys, rejects_keys, retry_rejects=retry_rejects)
    known_images, known_rejects = _plain(images_keys["uri"]), _plain(rejects_keys["uri"])
    vanished_images: list[str] = []
    vanished_rejects: list[str] = []
    listed = _plain(listing["uri"])
    if sync_deletes:
        scope = source_scope(sources)
        for known, vanished in ((known_images, vanished_images), (known_rejects, vanished_rejects)):
            gone = known.filter(pc.invert(pc.is_in(known, value_set=listed)))
            vanished.extend(sorted(u for u in gone.to_pylist() if scope.covers(u)))
    # Old tiles go when their file changed or vanished (or failed); new ones come from tiling.
    todo_uris = _plain(todo["uri"])  # Arrow: a first ingest reads every listed file
    tiled = images_keys.filter(pc.fill_null(images_keys["tiled"], False))["uri"]
    tiles_replace = _among(todo_uris, tiled) | _among(vanished_images, tiled)
    # A run stopped between its rejects and images commits can leave a file in both tables;
    # the row whose key no longer matches the file goes now (this completes that run, for the
    # files under these sources).
    in_both = _among(known_rejects, known_images)
    in_both -= _among(in_both, todo_uris)
    current_images: set[str] = set()
    if in_both:
        listed_keys = listing.select(_KEY_COLUMNS)
        matched = listed_keys.join(images_keys.select(_KEY_COLUMNS).cast(listed_keys.schema), keys=_KEY_COLUMNS, join_type="inner")
        current_images = _among(in_both, matched["uri"])
    stale_images = sorted(in_both - current_images)
    changed_labels: dict[str, tuple[str | None, tuple[tuple[str, str], ...] | None]] = {}
    if (metadata is not None or relabel) and images_version is not None:
        skip = pa.concat_arrays([todo_uris, pa.array(stale_images, pa.string())])
        changed_labels = _label_changes(engine, table, images_version, listing, metadata, relabel, skip)
    return IngestRun(table, options, record, listing, todo, known_images, known_rejects,
                     vanished_images, vanished_rejects, tiles_replace,
                     stale_images=stale_images, stale_rejects=sorted(in_both & current_images),
                     relabel=changed_labels, images_version=images_version)


def _with_metadata(listing: pa.Table, metadata: Metadata) -> pa.Table:
    """The listing with the metadata file's labels (over the path rule's) and attributes."""
    uris = listing["uri"].to_pylist()
    if metadata.rows and not any(u in metadata.rows for u in uris):
        raise SpecError(f"--metadata {metadata.source}: no row names a listed file (file_name is relative to "
                        "the source folder; a uri column holds absolute paths or URIs)")
    labels, attributes = listing["label"].to_pylist(), []
    for i, uri in enumerate(uris):
        label, attrs = metadata.rows.get(uri, (None, None))
        if label is not None:
            labels[i] = label
        attributes.append(sorted(attrs.items()) if attrs else None)
    listing = listing.set_column(listing.schema.get_field_index("label"), "label", pa.array(labels, pa.string()))
    index = listing.schema.get_field_index("attributes")
    return listing.set_column(index, listing.schema.field(index), pa.array(attributes, listing.schema.field(index).type))


def _label_changes(engine: Engine, table: str, version: int, listing: pa.Table, metadata: Metadata | None,
                   relabel: bool, skip: pa.Array) -> dict[str, tuple[str | None, tuple[tuple[str, str], ...] | None]]:
    """Unchanged images (not in `skip`) whose stored label or attributes differ from what the
    rules give now: with `relabel` every listed image, else the ones the metadata file names
    (their label only when the file gives one).

    Compared in Arrow (a join on uri, attributes as (row, key, value) entries joined by key), so
    the driver's Python work grows with the rows that change, not with the table.
    """
    wanted = listing.select(["uri", "label", "attributes"])
    wanted = wanted.set_column(0, "uri", _plain(wanted["uri"]))
    if len(skip):
        wanted = wanted.filter(pc.invert(pc.is_in(wanted["uri"], value_set=skip)))
    keep_stored = None  # rows whose stored label stays (the metadata file gives them none)
    if not relabel:
        named = metadata.rows if metadata is not None else {}
        wanted = wanted.filter(pc.is_in(wanted["uri"], value_set=pa.array(list(named), pa.string())))
        unlabeled = pa.array([uri for uri, (label, _) in named.items() if label is None], pa.string())
        keep_stored = pc.is_in(wanted["uri"], value_set=unlabeled)
    have = engine.arrow_schema(table, version).names
    stored = engine.read(table, version=version, columns=[c for c in ("uri", "label", "attributes") if c in have])
    if "attributes" not in stored.column_names:
        stored = stored.append_column("attributes", pa.nulls(stored.num_rows, wanted.schema.field("attributes").type))
    # Arrow joins carry no map columns: join row numbers on uri, then take the columns.
    pairs = pa.table({"uri": wanted["uri"], "w": np.arange(wanted.num_rows, dtype=np.int64)}).join(
        pa.table({"uri": _plain(stored["uri"]), "s": np.arange(stored.num_rows, dtype=np.int64)}),
        keys="uri", join_type="inner").sort_by("w")
    w, st = pairs["w"], pairs["s"]
    new_label, old_label = wanted["label"].take(w).cast(pa.string()), stored["label"].take(st).cast(pa.string())
    if keep_stored is not None:
        new_label = pc.if_else(keep_stored.take(w), old_label, new_label)
    changed = pc.invert(same(new_label, old_label))
    new_attrs, old_attrs = wanted["attributes"].take(w), stored["attributes"].take(st)
    differs = _map_differs(new_attrs.combine_chunks(), old_attrs.combine_chunks().cast(new_attrs.type))
    changed = pc.or_(changed, pc.is_in(pa.array(np.arange(pairs.num_rows, dtype=np.int64)), value_set=differs))
    rows = pa.table({"uri": pairs["uri"], "label": new_label, "attributes": new_attrs}).filter(changed)
    return {row["uri"]: (row["label"], tuple(sorted(row["attributes"])) if row["attributes"] else None)
            for row in rows.to_pylist()}


def _map_differs(a: pa.MapArray, b: pa.MapArray) -> pa.Array:
    """Row numbers where two map columns hold different entries (null and empty maps are equal).

    Example:
        >>> t = pa.map_(pa.string(), pa.string())
        >>> _map_differs(pa.array([[("k", "1")], None, [], [("k", "1")]], t), pa.array([[("k", "1")], [], None, [("k", "2")]], t)).to_pylist()
        [3]
    """
    def entries(m: pa.MapArray) -> pa.Table:
        offsets = m.offsets.to_numpy()  # (pc.list_parent_indices aborts on maps)
        pairs = m.values.slice(offsets[0], offsets[-1] - offsets[0])
        rows = np.repeat(np.arange(len(m), dtype=np.int64), np.diff(offsets))
        return pa.table({"row": rows, "key": pairs.field(0), "value": pairs.field(1)})

    joined = entries(a).join(entries(b), keys=["row", "key"], join_type="full outer", left_suffix="_a", right_suffix="_b")
    return pc.unique(joined.filter(pc.invert(same(joined["value_a"], joined["value_b"])))["row"].combine_chunks())


def decode_files(
    engine: Engine,
    run: IngestRun,
    tile_options: TileOptions,
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_tile_progress: Callable[[int, int], None] | None = None,
) -> DecodedFiles:
    """Decode the files to read on the engine's workers, then cut the tiles of huge ones.

    Image rows are staged as the workers return them, so the driver never holds the run's
    image bytes; only the rows of tiled files (their tiling fills in the thumbnail) and the
    rejects come back to it. A worker that crashes or hangs on a file makes that file's reject
    (without a hash: the driver never reads a source file, which could hang it).
    """
    options = run.options
    parallel = (os.cpu_count() or 1) if workers is None else workers
    staged = engine.stage(Stage(
        partial(ingest_kernel, options=options),
        run.todo,
        label=f"{options.run_id}-rows",
        output_schema=ingest_result_schema(),
        contract=table_contract("images"),
        held="tiled",
        on_failure=partial(reject_row, run_id=options.run_id, at=options.ingested_at),
        prepare=partial(prepare_ingest_kernel, options),
        task_timeout_s=worker_time_limit(options),
        rows_per_task=rows_per_task(run.todo, parallel),
        on_progress=on_progress,
        workers=workers,
        target=run.table,
    ))
    try:
        tiling = tile_images(engine, staged.held(), tile_options, thumbnail_size=options.thumbnail_size,
                             on_progress=on_tile_progress)
    except BaseException:
        staged.discard()
        raise
    rejects = pa.concat_tables([as_rejects(staged.rejects()), as_rejects(tiling.rejects)])
    image_uris = pc.unique(pa.chunked_array([_plain(staged.keys()["uri"]), pa.array(sorted(tiling.tiled_uris), pa.string())],
                                            pa.string()).combine_chunks())
    try:
        relabeled = relabel_rows(engine, run) if run.relabel else None
    except BaseException:
        tiling.cleanup()
        staged.discard()
        raise
    return DecodedFiles(staged, tiling, rejects, image_uris, relabeled)


def relabel_rows(engine: Engine, run: IngestRun) -> Staged:
    """Stage the rows of `run.relabel` with their new labels: read from the planned snapshot by
    the engine and passed through the relabel kernel (a copy: nothing is decoded)."""
    have = set(engine.arrow_schema(run.table, run.images_version).names)
    columns = tuple(c for c in table_contract("images").column_names if c in have)
    labels: Labels = dict(run.relabel)
    return engine.stage(Stage(
        partial(relabel_kernel, labels=labels, run_id=run.options.run_id),
        SnapshotRows(run.table, run.images_version, columns, uri_set(labels)),
        label=f"{run.options.run_id}-relabel",
        output_schema=relabel_result_schema(),
        contract=table_contract("images"),
        rows_per_task=64,
        workers=0,  # a copy of rows: a pool would cost more than it saves
        target=run.table,
    ))


def rows_per_task(todo: pa.Table, parallel: int) -> int:
    """Files per pool task: 16, or 64 when the files are small (a task's spool and IPC cost is
    then worth more than the files' own work); fewer when there are few files, so every worker
    gets some.

    Example:
        >>> import pyarrow as pa
        >>> rows_per_task(pa.table({"size_bytes": [5_000] * 10_000}), 2), rows_per_task(pa.table({"size_bytes": [3 << 20] * 10_000}), 2)
        (64, 16)
    """
    if todo.num_rows == 0:
        return 1
    mean = (pc.sum(todo["size_bytes"]).as_py() or 0) / todo.num_rows
    most = 64 if mean <= _SMALL_FILE_BYTES else 16
    return max(1, min(most, todo.num_rows // max(1, parallel * 4)))


_SMALL_FILE_BYTES = 256 << 10


def worker_time_limit(options: IngestOptions) -> float:
    """Seconds per file after which a decoding worker is killed.

    The kernel's own alarm stops Python-level hangs at file_timeout_s; this limit only catches
    decoders stuck where no signal reaches (C loops), so its margin is short.
    """
    return options.file_timeout_s + min(30.0, options.file_timeout_s + 5)


def _in_thread(function: Callable[..., object], *args: object) -> Future:
    """`function(*args)` started in a thread of its own; `.result()` joins it (and raises its error)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="lakeimg-ingest")
    try:
        return pool.submit(function, *args)
    finally:
        pool.shutdown(wait=False)


def _committed_tables(table: str) -> list[str]:
    return [table, rejects_of(table), tiles_of(table)]


def commit_ingest(engine: Engine, run: IngestRun, decoded: DecodedFiles,
                  prepared: Future[None] | None = None) -> tuple[int | None, MergeMetrics, int | None]:
    """Commit a run: rejects alongside tiles then images, then the runs row that marks it
    complete; returns (images version, images metrics, rejects version). `prepared`: the
    runs-table bookkeeping started by `prepare_run_commits`.

    Delta has no multi-table transaction, so the order makes every state a stop can leave
    correct on its own (DEVELOPERS.md, "What a reader sees during a run"): tiles land before
    the images rows that point at them, and each commit replaces rows by uri, so whichever of
    the rejects and images commits lands first, a file is at worst in neither table (the next
    run reads it again) or, for one run, in both (the next run's plan drops the stale row).
    The rejects commit runs in a thread beside the other two (where the engine's
    `commits_in_threads` allows), and so does a tiles step with nothing to write (it only looks
    up the tiles table's version): on an object store each commit is a dozen requests in a row.
    A failure undoes nothing; see `run_commits`.
    """
    table, record = run.table, run.record
    rejects_name, tiles_name = rejects_of(table), tiles_of(table)
    metadata = record.commit_metadata()
    reject_uris = set(decoded.rejects["uri"].to_pylist())
    images_delete = {*run.vanished_images, *run.stale_images, *_among(reject_uris, run.known_images)}
    rejects_delete = {*run.vanished_rejects, *run.stale_rejects, *_among(decoded.image_uris, run.known_rejects)}
    tiling = decoded.tiling
    writes_tiles = bool(tiling.files or tiling.tiled_uris or run.tiles_replace)
    with run_commits(engine, record, _committed_tables(table), prepared) as landed, \
            ThreadPoolExecutor(2, thread_name_prefix="lakeimg-beside") as beside:
        # The rejects table is made with the first images commit, so SQL can name it.
        rejects_write = Write(rejects_name, table_contract("rejects"), rows=decoded.rejects, replace=frozenset(rejects_delete),
                              metadata=metadata, create=bool(len(decoded.image_uris) or images_delete))
        rejects_commit = (beside.submit(engine.commit, rejects_write) if engine.commits_in_threads
                          else _done(engine.commit(rejects_write)))
        tiles_commit = None
        try:
            if writes_tiles or not engine.commits_in_threads:
                tiles = commit_tiles(engine, table, tiling, replace_uris=run.tiles_replace, metadata=metadata)
                if tiles.committed:
                    landed[tiles_name] = tiles.version
            else:  # nothing to write: only the tiles table's version is looked up, beside the rest
                tiles_commit = beside.submit(commit_tiles, engine, table, tiling, metadata=metadata)
            images = engine.commit(Write(table, table_contract("images"), staged=decoded.staged,
                                         rows=decoded.tiling.image_rows, replace=frozenset(images_delete), metadata=metadata))
            if images.committed:
                landed[table] = images.version
            if decoded.relabeled is not None:  # unchanged images' new labels: rows copied, not decoded
                relabeled = engine.commit(Write(table, table_contract("images"), staged=decoded.relabeled, metadata=metadata))
                if relabeled.committed:
                    images = relabeled
                    landed[table] = relabeled.version
        finally:  # what landed is known (and recorded) whichever commit fails
            rejects = _landed_result(rejects_commit, landed, rejects_name)
            if tiles_commit is not None:
                tiles = tiles_commit.result()
        replaced = _among(decoded.image_uris, run.known_images)
        gone = _among(images_delete, run.known_images) - _among(images_delete, decoded.image_uris)
        metrics = MergeMetrics(len(decoded.image_uris) - len(replaced), len(replaced), len(gone))
        rejects_version = rejects.version if rejects.version is not None else engine.version(rejects_name)
        record.status = "succeeded"
        record.target_version = images.version
        record.outputs = [{"table": table, "version": images.version}, {"table": rejects_name, "version": rejects_version}]
        if tiles.version is not None:
            record.outputs.append({"table": tiles_name, "version": tiles.version})
        record.finished_at = utc_now()
        record.counts = {"added": metrics.inserted, "updated": metrics.updated, "unchanged": run.unchanged,
                         "deleted": run.deleted, "rejected": len(reject_uris)}
        if run.relabel:
            record.counts["relabeled"] = len(run.relabel)
        engine.append(RUNS_TABLE, record.to_arrow(), table_contract("runs"), metadata)
    return images.version, metrics, rejects_version


def _done(result: CommitResult) -> Future[CommitResult]:
    done: Future[CommitResult] = Future()
    done.set_result(result)
    return done


def _landed_result(commit: Future[CommitResult], landed: dict[str, int], table: str) -> CommitResult:
    """The result of a commit made in a thread, recorded in `landed` once it committed."""
    result = commit.result()
    if result.committed:
        landed[table] = result.version
    return result
