"""The ingest kernel: file listings in, image rows and reject rows out, as Arrow batches.

`ingest_kernel(batches, options)` has exactly the shape of Spark's `mapInArrow` function, so
the Spark engine runs it as `df.mapInArrow(partial(ingest_kernel, options=o), schema)` and the
embedded engine maps it over batches in a process pool. All per-file work lives here.

Input batches carry `uri`, `size_bytes`, `modified_at`, `label` and `kind` (see `LISTING_SCHEMA`;
a listed path that is not a regular file has its reject class in `kind` and is never opened).
Output batches follow `ingest_result_schema()`: every images column plus `outcome`
("image" or "reject"), `error_class` and `error_message`.

Example:
    >>> import pyarrow as pa
    >>> opts = IngestOptions(run_id="r1")
    >>> empty = pa.RecordBatch.from_pylist([], schema=LISTING_SCHEMA)
    >>> list(ingest_kernel(iter([empty]), opts))
    []
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakeimg.errors import ErrorClass, ImageDecodeError
from lakeimg.image._plugins import entry_points_of, import_path
from lakeimg.image._settings import decoder_settings
from lakeimg.image.decode import probe_image, read_image
from lakeimg.image.display import THUMBNAIL_SIZE, make_thumbnail
from lakeimg.image.info import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodedImage,
    check_decoded_size,
    decoded_bytes,
)
from lakeimg.image.pyramid import DEFAULT_TILE_SIZE, level_count
from lakeimg.image.sources import (
    DEFAULT_MAX_TILED_PIXELS,
    DEFAULT_TILE_ABOVE_PIXELS,
    check_tileable,
)
from lakeimg.kernels import rejects
from lakeimg.kernels._batches import batch_rows, result_schema, warm_up_kernel
from lakeimg.schemas import table_contract
from lakeimg.storage import (
    NotRegularFileError,
    TimeLimitExceeded,
    is_remote,
    local_path_or_none,
    open_source,
    read_bytes,
    read_regular_file,
    sha256_of,
    time_limit,
)

__all__ = [
    "IngestOptions",
    "LISTING_SCHEMA",
    "ingest_kernel",
    "ingest_result_schema",
    "ingest_one_file",
]

LISTING_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("modified_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("label", pa.string()),
        # Extra columns of a `--metadata` file (`lakeimg.jobs.metadata`), null without one.
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        # Null for a regular file; else the reject class listing found (not_regular_file,
        # broken_symlink, symlink_loop, unreadable): the kernel records it without opening the path.
        pa.field("kind", pa.string()),
    ]
)

_OUTPUT_BATCH_BYTES = 64 << 20
_OUTPUT_BATCH_ROWS = 256


@dataclass(frozen=True)
class IngestOptions:
    """Per-file settings of an ingest run (picklable: shipped to workers and executors).

    Attributes:
        run_id: stamped on every row written.
        inline_max_bytes: files above this keep `content` null (original bytes stay in place).
        max_decoded_bytes: the memory limit of one decoded image (width x height x channels x
            bytes per sample), checked from the header before decoding: larger images are
            tiled when their format allows windowed reads (tiled or striped TIFF), else
            rejected `too_large`. The job sizes it to the machine (`default_max_decoded_bytes`).
        max_pixels: an extra cap on width x height for images decoded whole (None: none).
        max_tiled_pixels: reject tiled images with more pixels (every page together).
        thumbnail_size: longest side of the thumbnail.
        file_timeout_s: per-file time limit; a file over it becomes a `timeout` reject.
        codecs: extra readers as "module:attribute" (see `lakeimg.image.codecs`).
    """

    run_id: str = ""
    inline_max_bytes: int = 16 << 20
    max_pixels: int | None = None
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS
    thumbnail_size: int = THUMBNAIL_SIZE
    file_timeout_s: float = 120.0
    codecs: tuple[str, ...] = ()
    ingested_at: dt.datetime | None = None
    # Huge images (more pixels than this, or more bytes than inline_max_bytes) become tiles
    # (see lakeimg/jobs/tiling.py); 0 turns tiling off.
    tile_above_pixels: int = DEFAULT_TILE_ABOVE_PIXELS
    tile_size: int = DEFAULT_TILE_SIZE
    # Object-store settings for reading sources (`lakeimg.storage.normalized_storage_options`),
    # as pairs; never printed (repr=False) and never part of the run's recorded spec.
    storage: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def ingest_result_schema() -> pa.Schema:
    """The kernel's output schema: images columns (nullable) + outcome, error_class, error_message."""
    return result_schema(table_contract("images").arrow_schema)


@functools.lru_cache(maxsize=16)
def _load_codecs(specs: tuple[str, ...]) -> tuple[Any, ...]:
    # Once per process: the kernel runs once per batch, and scanning installed packages' entry
    # points is slow next to a batch of small files.
    codecs = [import_path(spec) for spec in specs]
    try:
        codecs += [ep.load() for ep in entry_points_of("lakeimg.codecs").values()]
    except Exception:  # noqa: BLE001 - a broken plugin must not break ingest of plain files
        pass
    return tuple(codecs)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _reject(listing: dict[str, Any], error: ImageDecodeError, sha: str | None, options: IngestOptions) -> dict[str, Any]:
    """One reject row in the kernel's output schema (`lakeimg.kernels.rejects.reject_row`)."""
    return rejects.reject_row(listing, error.error_class, error.message, run_id=options.run_id, at=options.ingested_at, sha=sha)


def ingest_one_file(listing: dict[str, Any], options: IngestOptions, codecs: Iterable[Any] | None = None,
                    fetched: Future[bytes] | None = None) -> dict[str, Any]:
    """Read, hash and describe one file; return an image row or a reject row (never raises).
    `fetched`: the file's bytes being read ahead (`_prefetched`).

    Decoders' warnings about the file (pydicom's invalid values, numpy casts in an odd codec)
    are dropped: what matters about a file lands in its row or its reject, and N workers
    printing per-file warnings to one terminal tell nobody which file they were about.
    """
    with decoder_settings(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _ingest_one_file(listing, options, codecs, fetched)


def _ingest_one_file(listing: dict[str, Any], options: IngestOptions, codecs: Iterable[Any] | None,
                     fetched: Future[bytes] | None = None) -> dict[str, Any]:
    uri = listing["uri"]
    sha = None
    if listing.get("kind"):
        return _reject(listing, ImageDecodeError(uri, listing["kind"], _KIND_MESSAGES.get(listing["kind"], listing["kind"])),
                          None, options)
    path = local_path_or_none(uri)
    try:
        data = _source_bytes(uri, options, fetched) if fetched is not None else None
    except ImageDecodeError as exc:
        return _reject(listing, exc, None, options)
    if data is None and path is not None and _read_first(listing, options):
        try:  # a small local file is read whole anyway: its header is checked from the bytes
            data = _source_bytes(uri, options, path=path)
        except ImageDecodeError as exc:
            return _reject(listing, exc, None, options)
    huge = None if data is not None and _surely_small(data, options) else _huge_header(listing, options, data, path)
    if huge is not None:
        return _tiled_row(listing, huge, options)
    try:
        if data is None:
            data = _source_bytes(uri, options, path=path)
        sha = hashlib.sha256(data).hexdigest()
        with time_limit(options.file_timeout_s):
            decoded = read_image(data, uri, max_bytes=options.max_decoded_bytes, max_pixels=options.max_pixels,
                                 preview=options.thumbnail_size, codecs=codecs or ())
            thumbnail = make_thumbnail(
                decoded.pixels,
                size=options.thumbnail_size,
                window=decoded.display_window,
                invert=decoded.invert_display,
            )
    except ImageDecodeError as exc:
        return _reject(listing, exc, sha, options)
    except TimeLimitExceeded:
        err = ImageDecodeError(uri, ErrorClass.TIMEOUT, f"decoding took longer than the {options.file_timeout_s:g} s per-file limit")
        return _reject(listing, err, sha, options)
    except MemoryError as exc:
        return _reject(listing, ImageDecodeError(uri, ErrorClass.TOO_LARGE, f"out of memory: {exc}"), sha, options)
    except Exception as exc:  # noqa: BLE001 - e.g. a thumbnail of a degenerate array
        return _reject(listing, ImageDecodeError(uri, ErrorClass.CORRUPT, f"{type(exc).__name__}: {exc}"), sha, options)
    content = data if len(data) <= options.inline_max_bytes else None
    return _image_row(listing, sha, decoded, options, content=content, thumbnail=thumbnail)


def _image_row(
    listing: dict[str, Any],
    sha: str,
    info: DecodedImage,
    options: IngestOptions,
    *,
    content: bytes | None = None,
    thumbnail: bytes | None = None,
    tile_size: int | None = None,
) -> dict[str, Any]:
    """The images row of a file (`tile_size` set: a tiled file, whose pyramid has `levels`)."""
    facts = ("format", "width", "height", "channels", "dtype", "mode", "pages", "dicom", "geo")
    return {
        "uri": listing["uri"],
        "content_sha256": sha,
        "size_bytes": listing["size_bytes"],
        "modified_at": listing["modified_at"],
        **{name: getattr(info, name) for name in facts},
        "exif": list(info.exif.items()) if info.exif else None,
        "content": content,
        "thumbnail": thumbnail,
        "tiled": tile_size is not None,
        "tile_size": tile_size,
        "levels": level_count(info.height, info.width, tile_size) if tile_size else None,
        "label": listing.get("label"),
        "attributes": listing.get("attributes"),
        "decoder": info.decoder,
        "run_id": options.run_id,
        "ingested_at": options.ingested_at or _now(),
        "outcome": "image",
        "error_class": None,
        "error_message": None,
    }


_KIND_MESSAGES = {
    ErrorClass.NOT_REGULAR_FILE: "not a regular file (a FIFO, socket or device); it was not opened",
    ErrorClass.BROKEN_SYMLINK: "a symbolic link whose target does not exist",
    ErrorClass.SYMLINK_LOOP: "a symbolic link that leads back to itself or to a folder above it",
    ErrorClass.UNREADABLE: "the path could not be listed (permission denied?)",
}


def _source_bytes(uri: str, options: IngestOptions, fetched: Future[bytes] | None = None, path: str | None = None) -> bytes:
    """A source file's bytes (read now, or by `fetched`), or the reject of a file that cannot be
    read. `path`: the local path of `uri`, when it is a local file."""
    try:
        if fetched is not None:
            return fetched.result()
        return read_regular_file(path) if path is not None else read_bytes(uri, dict(options.storage))
    except FileNotFoundError as exc:
        raise ImageDecodeError(uri, ErrorClass.UNREADABLE, f"file vanished before it was read: {exc}") from exc
    except NotRegularFileError as exc:
        raise ImageDecodeError(uri, ErrorClass.NOT_REGULAR_FILE, _KIND_MESSAGES[ErrorClass.NOT_REGULAR_FILE]) from exc
    except OSError as exc:
        raise ImageDecodeError(uri, ErrorClass.UNREADABLE, f"{type(exc).__name__}: {exc}") from exc


def _huge_header(listing: dict[str, Any], options: IngestOptions, data: bytes | None = None,
                 path: str | None = None) -> DecodedImage | None:
    """The header of a file to tile (too many pixels or bytes, or above the memory limit), or
    None to ingest it whole. `data`: the file's bytes when they were already fetched; `path`:
    the local path of a local file."""
    if options.tile_above_pixels <= 0:
        return None
    uri = listing["uri"]
    # stat never blocks; open() of a FIFO swapped in after listing would (the read path refuses it).
    if path is not None and not os.path.isfile(path):
        return None
    try:  # only the header's bytes: an object is read by ranges, never downloaded
        with (io.BytesIO(data) if data is not None else open_source(uri, dict(options.storage))) as source:
            header = probe_image(source, uri)
    except Exception:  # noqa: BLE001 - unreadable headers take the normal path and become rejects
        return None
    if header.width * header.height > options.tile_above_pixels or listing["size_bytes"] > options.inline_max_bytes:
        return header
    # Above the memory limit: tiled if the format reads by windows, else `_tiled_row` rejects it.
    if decoded_bytes(header.width, header.height, header.channels, header.dtype) > options.max_decoded_bytes:
        return header
    return None


# A local file up to this size is read before its header is looked at (it is read whole anyway
# unless it turns out to be huge, and then it is small enough that the extra read is cheap).
_READ_FIRST_BYTES = 4 << 20
# The most bytes a pixel of a PNG or JPEG decodes to (4 channels x 16 bits).
_MAX_PIXEL_BYTES = 8


def _read_first(listing: dict[str, Any], options: IngestOptions) -> bool:
    """Whether a local file is read before its header is looked at (see `_READ_FIRST_BYTES`)."""
    size = int(listing.get("size_bytes") or 0)
    return options.tile_above_pixels > 0 and size <= min(_READ_FIRST_BYTES, options.inline_max_bytes)


def _surely_small(data: bytes, options: IngestOptions) -> bool:
    """Whether a PNG's or JPEG's dimensions, read from its first bytes without Pillow, put it
    below every limit that makes a file tiled (`_huge_header`): then the header probe (a third
    of the work for a tiny image) is skipped. False when unsure: the probe decides.

    Example:
        >>> import io, numpy as np; from PIL import Image
        >>> out = io.BytesIO(); Image.fromarray(np.zeros((4, 6), np.uint8)).save(out, "JPEG")
        >>> _surely_small(out.getvalue(), IngestOptions()), _surely_small(b"not an image", IngestOptions())
        (True, False)
    """
    dims = _png_or_jpeg_size(data)
    if dims is None or len(data) > options.inline_max_bytes:
        return False
    pixels = dims[0] * dims[1]
    return 0 < pixels <= options.tile_above_pixels and pixels * _MAX_PIXEL_BYTES <= options.max_decoded_bytes


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_or_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's first SOF segment; None otherwise."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, min(len(data), 1 << 20)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > len(data) or length < 8:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or start of scan before any SOF
            return None
        i += 2 + length
    return None


def _tiled_row(listing: dict[str, Any], header: DecodedImage, options: IngestOptions) -> dict[str, Any]:
    """The images row of a tiled file: header facts, streamed SHA-256, no content; the tiling
    step (lakeimg/jobs/tiling.py) cuts the tiles and fills the thumbnail from the top level."""
    uri = listing["uri"]
    try:
        sha = sha256_of(uri, dict(options.storage))  # streamed: a huge file is never read whole
    except OSError as exc:
        return _reject(listing, ImageDecodeError(uri, ErrorClass.UNREADABLE, f"{type(exc).__name__}: {exc}"), None, options)
    try:
        if header.format != "TIFF":
            check_decoded_size(uri, header.width, header.height, header.channels, header.dtype,
                               max_bytes=None, max_pixels=options.max_pixels)
        # Before any tiling task is planned: strips/tiles inside the file, the tiled-pixel cap,
        # and the memory one task holds (a whole page, or one band of a windowed TIFF page).
        with open_source(uri, dict(options.storage)) as source:
            check_tileable(source, uri, tile_size=options.tile_size,
                           max_decoded_bytes=options.max_decoded_bytes, max_tiled_pixels=options.max_tiled_pixels)
    except ImageDecodeError as exc:
        return _reject(listing, exc, sha, options)
    except Exception as exc:  # noqa: BLE001 - a header tifffile or Pillow cannot parse twice
        return _reject(listing, ImageDecodeError(uri, ErrorClass.CORRUPT, f"{type(exc).__name__}: {exc}"), sha, options)
    return _image_row(listing, sha, header, options, tile_size=options.tile_size)


# Objects read ahead per worker: a GET to an object store takes tens of milliseconds, so a
# worker keeps this many in flight while it decodes (bounded in bytes too).
_PREFETCH_FILES = 16
_PREFETCH_BYTES = 64 << 20


def _prefetched(listings: Iterator[dict[str, Any]], options: IngestOptions) -> Iterator[tuple[dict[str, Any], Future[bytes] | None]]:
    """Each listing with its bytes being read ahead in threads, for objects on a store that are
    small enough to be read whole (at most `inline_max_bytes`; bigger ones are tiled from ranged
    reads); local files and everything else pair with None and are read when their turn comes."""
    storage = dict(options.storage)
    window: collections.deque[tuple[dict[str, Any], Future[bytes] | None, int]] = collections.deque()
    in_flight = 0
    with ThreadPoolExecutor(max_workers=_PREFETCH_FILES, thread_name_prefix="lakeimg-read") as pool:
        for listing in listings:
            size = int(listing.get("size_bytes") or 0)
            ahead = (not listing.get("kind") and is_remote(listing["uri"]) and size <= options.inline_max_bytes)
            if not ahead and not window:  # nothing to overlap: a local file is read in its turn
                yield listing, None
                continue
            future = pool.submit(read_bytes, listing["uri"], storage) if ahead else None
            window.append((listing, future, size if ahead else 0))
            in_flight += size if ahead else 0
            while len(window) > _PREFETCH_FILES or (in_flight > _PREFETCH_BYTES and len(window) > 1):
                done, fetched, held = window.popleft()
                in_flight -= held
                yield done, fetched
        while window:
            done, fetched, _held = window.popleft()
            yield done, fetched


def prepare_ingest_kernel(options: IngestOptions) -> None:
    """Do the one-time work of `ingest_kernel` in this process: codecs, plugins, lazy imports.

    For a parent that forks a child per batch (`lakeimg.engine.pool.isolated_kernel`): done
    once there, not in every child. In a Spark Python worker the codec entry-point scan walks
    PySpark's zip archives on sys.path, and pyarrow imports pandas the first time it builds a
    batch from Python rows: both slow enough to pay only once.
    """
    _load_codecs(tuple(options.codecs))
    warm_up_kernel(ingest_result_schema())


def ingest_kernel(batches: Iterator[pa.RecordBatch], options: IngestOptions) -> Iterator[pa.RecordBatch]:
    """mapInArrow-shaped kernel: listing batches in, result batches (images + rejects) out."""
    codecs = _load_codecs(tuple(options.codecs))
    listings = (listing for batch in batches for listing in batch.to_pylist())
    rows = (ingest_one_file(listing, options, codecs, fetched) for listing, fetched in _prefetched(listings, options))
    yield from batch_rows(rows, ingest_result_schema(), max_rows=_OUTPUT_BATCH_ROWS, max_bytes=_OUTPUT_BATCH_BYTES,
                          size=lambda row: len(row.get("content") or b"") + len(row.get("thumbnail") or b""))

