"""The transform kernel: source image rows in, derived rows (and reject rows) out, as Arrow batches.

`transform_kernel(batches, options=...)` has exactly the shape of Spark's `mapInArrow` function,
so the Spark engine runs it as `df.mapInArrow(partial(transform_kernel, options=o), schema)` and
the embedded engine maps it over batches in a process pool. All per-image work lives here:
decode the source's `content` (or the original file when it was not inlined), run the spec's
ops per variant with an rng seeded from (spec seed, uri, variant), compute feature columns,
encode the result.

Input batches carry `SOURCE_COLUMNS` of the source (images) table. Output batches follow
`transform_result_schema(spec)`: the derived table's columns plus `outcome` ("row" or
"reject"), `error_class`, `error_message`, and the source's `size_bytes` / `modified_at`
(the rejects contract needs them).

Example:
    >>> import pyarrow as pa
    >>> from lakeimg.transform_spec import parse_spec
    >>> opts = TransformOptions(spec=parse_spec({"ops": []}), run_id="r1")
    >>> list(transform_kernel(iter([]), options=opts))
    []
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from lakeimg.errors import ErrorClass, ImageDecodeError
from lakeimg.image.codecs import encode_pixels
from lakeimg.image.decode import decode_image, decode_plain_jpeg, draft_scale, exif_orientation
from lakeimg.image.info import apply_orientation, as_hwc
from lakeimg.image.ops import FeatureOp, ImageTransformer
from lakeimg.kernels._batches import batch_rows, result_schema, warm_up_kernel
from lakeimg.kernels.rejects import reject_row
from lakeimg.storage import read_bytes
from lakeimg.transform_spec import TransformSpec

__all__ = [
    "SOURCE_COLUMNS",
    "TransformOptions",
    "transform_kernel",
    "transform_result_schema",
    "transform_image",
    "variant_rng",
]

SOURCE_COLUMNS = ["uri", "content_sha256", "content", "label", "size_bytes", "modified_at", "tiled", "width", "height"]
_OUTPUT_BATCH_ROWS = 64


@dataclass(frozen=True)
class TransformOptions:
    """Per-image settings of a transform run (picklable: shipped to workers and executors)."""

    spec: TransformSpec
    run_id: str = ""
    # Object-store settings for reading content that was not inlined from its source
    # (`lakeimg.storage.normalized_storage_options`), as pairs; never printed or recorded.
    storage: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def transform_result_schema(spec: TransformSpec) -> pa.Schema:
    """The kernel's output schema: derived columns (nullable) + outcome, errors, source size/mtime."""
    return result_schema(
        spec.contract().arrow_schema, pa.field("size_bytes", pa.int64()), pa.field("modified_at", pa.timestamp("us", tz="UTC"))
    )


def variant_rng(seed: int, uri: str, variant: int) -> np.random.Generator:
    """The rng of one (seed, uri, variant): the same numbers on every run, process and engine.

    Example:
        >>> float(variant_rng(7, "file:///a.png", 0).random()) == float(variant_rng(7, "file:///a.png", 0).random())
        True
    """
    digest = hashlib.sha256(uri.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, variant, *words]))


_OPS_CACHE: dict[str, tuple[ImageTransformer, ...]] = {}


def _ops_for(spec: TransformSpec) -> tuple[ImageTransformer, ...]:
    # Built once per process and spec (custom ops may import modules on first use).
    ops = _OPS_CACHE.get(spec.spec_hash)
    if ops is None:
        if len(_OPS_CACHE) > 8:
            _OPS_CACHE.clear()
        ops = _OPS_CACHE[spec.spec_hash] = tuple(spec.build_ops())
    return ops


def transform_image(pixels: np.ndarray, spec: TransformSpec, uri: str, variant: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the spec's ops on one image for one variant; returns (pixels, feature values).

    Example:
        >>> import numpy as np
        >>> from lakeimg.transform_spec import parse_spec
        >>> s = parse_spec({"ops": [{"op": "resize", "width": 2, "height": 2}, {"op": "mean_std"}]})
        >>> out, feats = transform_image(np.full((4, 4, 1), 9, np.uint8), s, "u", 0)
        >>> out.shape, feats["mean"]
        ((2, 2, 1), [9.0])
    """
    ops = _ops_for(spec)
    # Seeding is a noticeable share of a small image's work: only for ops that may draw.
    rng = variant_rng(spec.seed, uri, variant) if any(_may_draw(op) for op in ops) else None
    arr = as_hwc(pixels)
    features: dict[str, Any] = {}
    for op in ops:
        try:
            if isinstance(op, FeatureOp):
                features.update(op.features(arr))
            else:
                arr = as_hwc(np.asarray(op.apply(arr, rng)))
        except Exception as exc:  # noqa: BLE001 - becomes a reject naming the op
            raise _OpError(op.name, f"{type(exc).__name__}: {exc}") from exc
    return np.ascontiguousarray(arr), features


def _may_draw(op: ImageTransformer) -> bool:
    """Random ops, and any custom op (it may use its rng without declaring `random`)."""
    return bool(op.random) or not op.builtin


class _OpError(Exception):
    def __init__(self, op: str, message: str):
        super().__init__(f"op {op}: {message}")
        self.op = op


_HEADER_BYTES = 1 << 16


def _reduced_jpeg(content: bytes | memoryview, need: tuple[int, int]) -> np.ndarray | None:
    """JPEG pixels decoded with DCT scaling to the smallest size still >= `need` (displayed
    orientation), or None when the reduction does not apply (not a plain RGB/L JPEG, no gain).

    The scale is the one Pillow's `draft` picks (the largest of 8, 4, 2 that still covers
    `need`); the pixels are the same as `draft`'s, decoded through OpenCV (`decode_plain_jpeg`).
    """
    try:  # Pillow only parses the header here (markers up to the scan); OpenCV decodes
        im = Image.open(io.BytesIO(content[:_HEADER_BYTES]))
    except Exception:  # noqa: BLE001 - a header longer than that (big ICC or EXIF segments)
        im = Image.open(io.BytesIO(content))
    if im.format != "JPEG" or im.mode not in ("RGB", "L"):
        return None
    orientation = exif_orientation(im)
    want = need if orientation < 5 else (need[1], need[0])  # the stored image is transposed
    scale = draft_scale(im.size, want)
    if scale == 1:
        return None  # not even a 1/2 scale fits: a full decode is what is needed
    arr = decode_plain_jpeg(im, content, scale)
    if arr is None:  # unusual JPEG (Adobe colour, trailing bytes): Pillow's own scaled decode,
        im = Image.open(io.BytesIO(content))  # of the whole file, not the header parsed above
        im.draft(im.mode, want)
        arr = as_hwc(np.asarray(im))
    return np.ascontiguousarray(apply_orientation(arr, orientation))


def _source_pixels(src: dict[str, Any], spec: TransformSpec | None = None,
                   storage: tuple[tuple[str, str], ...] = ()) -> np.ndarray:
    content = src.get("content")
    if content is not None and spec is not None and content[:2] == b"\xff\xd8" and src.get("width") and src.get("height"):
        need = spec.shrink_target(src["width"], src["height"])
        if need is not None:
            reduced = _reduced_jpeg(content, need)
            if reduced is not None:
                return reduced
    if content is None:
        if src.get("tiled"):
            raise ImageDecodeError(src["uri"], ErrorClass.TILED_SOURCE, "the source is tiled and its pyramid level could not be read")
        try:  # not inlined at ingest (above --inline-max-bytes): read the original file
            content = read_bytes(src["uri"], dict(storage))
        except OSError as exc:
            raise ImageDecodeError(src["uri"], ErrorClass.UNREADABLE, f"content not inlined and the file cannot be read: {exc}") from exc
    return decode_image(bytes(content), src["uri"])


def transform_rows(src: dict[str, Any], options: TransformOptions) -> list[dict[str, Any]]:
    """All output rows of one source row: one per variant, or one reject row."""
    spec = options.spec
    try:
        pixels = _source_pixels(src, spec, options.storage)
    except ImageDecodeError as exc:
        return [reject_row(src, exc.error_class, exc.message, run_id=options.run_id)]
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the run
        return [reject_row(src, ErrorClass.CORRUPT, f"{type(exc).__name__}: {exc}", run_id=options.run_id)]
    rows = []
    for variant in range(spec.variants):
        try:
            arr, features = transform_image(pixels, spec, src["uri"], variant)
        except _OpError as exc:
            return [reject_row(src, ErrorClass.OP_FAILED, str(exc), run_id=options.run_id)]
        try:
            encoding, data = encode_pixels(arr, spec.output)
        except Exception as exc:  # noqa: BLE001
            return [reject_row(src, ErrorClass.ENCODE_FAILED, f"{spec.output['encoding']}: {type(exc).__name__}: {exc}", run_id=options.run_id)]
        rows.append(
            {
                "uri": src["uri"],
                "variant": variant,
                "source_sha256": src.get("content_sha256"),
                "spec_hash": spec.spec_hash,
                "width": int(arr.shape[1]),
                "height": int(arr.shape[0]),
                "channels": int(arr.shape[2]),
                "dtype": arr.dtype.name,
                "encoding": encoding,
                "data": data,
                "label": src.get("label"),
                "run_id": options.run_id,
                **features,
                "outcome": "row",
                "size_bytes": src.get("size_bytes"),
                "modified_at": src.get("modified_at"),
            }
        )
    return rows


def prepare_transform_kernel(options: TransformOptions) -> None:
    """Do the one-time work of `transform_kernel` in this process (see `prepare_ingest_kernel`):
    the spec's op objects (custom ops import their modules), encoders, pyarrow's lazy imports."""
    _ops_for(options.spec)
    warm_up_kernel(transform_result_schema(options.spec))


def _source_rows(batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """The batch's rows as dicts, `content` as a memoryview of the Arrow buffer, not a copy of
    each image's bytes."""
    if "content" not in batch.schema.names:
        yield from batch.to_pylist()
        return
    contents = batch.column("content")
    for i, src in enumerate(batch.drop_columns(["content"]).to_pylist()):
        buffer = contents[i].as_buffer()
        src["content"] = None if buffer is None else memoryview(buffer).cast("B")  # Arrow exports signed bytes
        yield src


def transform_kernel(batches: Iterator[pa.RecordBatch], *, options: TransformOptions) -> Iterator[pa.RecordBatch]:
    """mapInArrow-shaped: source batches (`SOURCE_COLUMNS`) in, result batches out."""
    rows = (row for batch in batches for src in _source_rows(batch) for row in transform_rows(src, options))
    yield from batch_rows(rows, transform_result_schema(options.spec), max_rows=_OUTPUT_BATCH_ROWS)
