"""Loaders of pinned training sets: NumPy batches, a PyTorch IterableDataset, a Spark DataFrame.

NumPy and PyTorch read through delta-rs at the pinned version (`LocalEngine`), no Spark. A split
is materialised once per process as an Arrow table of the encoded pixels (only the split's rows
and only the pixel columns), either in memory or, with `cache_dir`, as a memory-mapped Arrow IPC
file that every DataLoader worker and later run shares (the set is immutable, so the cache never
goes stale; its name is derived from the set's run id).

Order and sharding: the epoch's order is one global permutation from (seed, epoch) (seed
defaults to the set's seed); shard k of n takes positions k, k+n, k+2n, ... where
n = world_size * DataLoader workers and k = rank * workers + worker id. With one process every
sample appears exactly once per epoch. With world_size > 1 every shard gets the same number of
samples, so every rank the same number of batches (unequal counts hang collective ops): the
order is padded by repeating its first samples, as torch's DistributedSampler does, or with
`drop_last=True` cut to a multiple of the shard count. The same seed and epoch give the same order.

Sizes: a batch stacks to (N, H, W, C) only when its images share one shape and dtype; mixed
sizes raise MixedImageSizesError naming the fixes (`resize=(height, width)` on load,
`collate=list` for a list of arrays, or a derived table made with a `resize`), never a
silent 1-D object array.

Integrity: an ingest table's `content` is checked against `content_sha256` when the split is
read (ContentMismatchError names the uri); a damaged data file raises LakeDamagedError. A
derived table's `data` has no hash of its own (`source_sha256` is the source file's), so only
Parquet's own checks apply to it; `lakeimg verify` reads it in full. `to_spark` reads through
Spark and does not check hashes.

Decoding follows the table: an ingest table's `content` goes through
`lakeimg.image.decode_image` (native dtype, HWC); a derived table's `data` through
`lakeimg.image.codecs.decode_pixels` by its `encoding`. PyTorch gets CHW float32 (integer
dtypes scaled to [0, 1] by their maximum, like torchvision's ToTensor; floats unchanged).

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> ts = lake.create_training_set("all-v1", "images", splits="all=1.0", seed=3)
    >>> batch = next(iter_numpy(ts, "all", 2, epoch=0))
    >>> batch["image"].shape, len(batch["uri"])
    ((2, 24, 32, 3), 2)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import LakeImgError
from lakeimg.image import decode_image
from lakeimg.image.codecs import decode_pixels
from lakeimg.image.ops.geometry import resize_to
from lakeimg.jobs.verify import check_content

if TYPE_CHECKING:
    from lakeimg.catalog.trainsets import TrainingSet

__all__ = [
    "MixedImageSizesError",
    "SplitData",
    "decode_rows",
    "epoch_order",
    "even_shard_positions",
    "iter_numpy",
    "resized",
    "shard_positions",
    "stack_images",
    "to_chw_float32",
    "to_spark",
]

_PIXEL_COLUMNS_DERIVED = ["data", "width", "height", "channels", "dtype", "encoding"]


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's global order of sample positions: a permutation from (seed, epoch).

    Example:
        >>> epoch_order(4, seed=1, epoch=0, shuffle=False).tolist()
        [0, 1, 2, 3]
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x1A4E]).permutation(n).astype(np.int64)


def shard_positions(order: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """Shard `shard` of `shards`: positions shard, shard+shards, ... of the global order.

    Example:
        >>> shard_positions(np.arange(7), 1, 3).tolist()
        [1, 4]
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return order[shard::shards]


def even_shard_positions(order: np.ndarray, shard: int, shards: int, *, drop_last: bool = False) -> np.ndarray:
    """Shard `shard` of `shards` with every shard the same length: the order padded by
    repeating its first samples (DistributedSampler's default), or with `drop_last` cut to a
    multiple of `shards`.

    Example:
        >>> [len(even_shard_positions(np.arange(13), r, 2)) for r in (0, 1)], even_shard_positions(np.arange(13), 1, 2)[-1]
        ([7, 7], np.int64(0))
        >>> [len(even_shard_positions(np.arange(13), r, 2, drop_last=True)) for r in (0, 1)]
        [6, 6]
    """
    extra = len(order) % shards
    if extra and drop_last:
        order = order[: len(order) - extra]
    elif extra and len(order):
        order = np.concatenate([order, np.resize(order, shards - extra)])  # np.resize repeats cyclically
    return shard_positions(order, shard, shards)


class MixedImageSizesError(LakeImgError):
    """A batch's images differ in size or dtype, so they cannot stack into (N, H, W, C)."""


def stack_images(images: list[np.ndarray], uris: list[str]) -> np.ndarray:
    """Images of one shape and dtype as one (N, H, W, C) array; MixedImageSizesError otherwise.

    Example:
        >>> stack_images([np.zeros((2, 3, 1), np.uint8)] * 2, ["a", "b"]).shape
        (2, 2, 3, 1)
    """
    first = images[0] if images else None
    for image, uri in zip(images, uris, strict=True):
        if image.shape != first.shape or image.dtype != first.dtype:
            raise MixedImageSizesError(
                f"images of different sizes in one batch ({_shape(first)} {first.dtype} and {_shape(image)} "
                f"{image.dtype} at {uri}): pass resize=(height, width) to resize on load, collate=list to get a "
                "list of arrays, or make the set from a derived table with a resize op (lakeimg transform)",
                uri=uri, shapes=[first.shape, image.shape])
    return np.stack(images) if images else np.empty((0,), np.uint8)


def _shape(image: np.ndarray) -> str:
    return "x".join(map(str, image.shape))


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image resized to `size` = (height, width), dtype kept (area when shrinking, bilinear when enlarging).

    Example:
        >>> resized(np.zeros((8, 6, 3), np.uint16), (4, 3)).shape
        (4, 3, 3)
    """
    height, width = size
    return resize_to(image, int(width), int(height))


def to_chw_float32(image: np.ndarray) -> np.ndarray:
    """HWC (or HW) native dtype -> CHW float32; integer types scaled to [0, 1] by their maximum.

    Example:
        >>> to_chw_float32(np.full((2, 3, 1), 255, np.uint8)).max()
        np.float32(1.0)
    """
    if image.ndim == 2:
        image = image[:, :, None]
    chw = image.transpose(2, 0, 1)
    out = np.empty(chw.shape, np.float32)
    if np.issubdtype(image.dtype, np.integer):  # one pass: cast, scale and transpose together
        np.multiply(chw, np.float32(1.0 / np.iinfo(image.dtype).max), out=out, casting="unsafe")
    else:
        out[...] = chw
    return out


class SplitData:
    """One split's encoded pixels in the set's row order, decodable by position.

    Built from the pinned table version through delta-rs, reading only the pixel columns and
    keeping only the split's rows. Pickles by reference (lake, set, split, cache file), so
    DataLoader workers re-open a memory-mapped cache instead of copying the data.
    """

    def __init__(self, trainset: TrainingSet, split: str, *, cache_dir: str | os.PathLike[str] | None = None):
        self.lake = trainset.engine.lake
        # Object-store settings travel with the data to DataLoader workers (never printed).
        self._storage = dict(getattr(trainset.engine, "options", None) or {})
        self.name = trainset.name
        self.split = split
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        rows = trainset.rows(split)
        self.uris: list[str] = rows["uri"].to_pylist()
        self.labels = rows["label_index"].to_numpy(zero_copy_only=False).astype(np.int64)
        self.table = trainset.table
        self.version = trainset.version
        self.run_id = trainset.record.run_id
        self._pixels: pa.Table | None = None
        self._keys = rows.select([c for c in ("uri", "variant") if c in rows.column_names])

    def __len__(self) -> int:
        return len(self.uris)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.cache_dir is not None:
            state["_pixels"] = None  # re-opened (memory-mapped) in the worker
        return state

    @property
    def cache_path(self) -> str | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{os.path.abspath(self.lake)}\0{self.name}\0{self.run_id}\0{self.split}".encode()).hexdigest()[:24]
        return os.path.join(self.cache_dir, f"{self.name}-{self.split}-{key}.arrow")

    def pixels(self) -> pa.Table:
        """The split's pixel columns as Arrow, in row order (built or memory-mapped once)."""
        if self._pixels is not None:
            return self._pixels
        path = self.cache_path
        if path and os.path.exists(path):
            with pa.memory_map(path, "r") as source:
                self._pixels = pa.ipc.open_file(source).read_all()
            return self._pixels
        table = self._read()
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
            os.close(fd)
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=64)
            os.replace(tmp, path)  # atomic: concurrent builders leave one complete file
            with pa.memory_map(path, "r") as source:
                table = pa.ipc.open_file(source).read_all()
        self._pixels = table
        return table

    def _read(self) -> pa.Table:
        engine = LocalEngine(self.lake, storage_options=self._storage)
        schema = engine.arrow_schema(self.table, self.version)
        keys = self._keys.column_names
        if "data" in schema.names and "encoding" in schema.names:
            columns = keys + _PIXEL_COLUMNS_DERIVED
        elif "content" in schema.names:
            columns = keys + ["content"] + (["content_sha256"] if "content_sha256" in schema.names else [])
        else:
            raise LakeImgError(f"{self.table} has neither content nor data/encoding columns to load pixels from")
        # A set lookup per row: an Arrow `is_in` per batch would hash every wanted uri each time.
        wanted = set(self.uris)
        parts = []
        for batch in engine.iter_batches(self.table, version=self.version, columns=columns, batch_rows=128):
            mask = pa.array([uri in wanted for uri in batch.column("uri").to_pylist()], pa.bool_())
            if pc.any(mask).as_py():
                part = pa.Table.from_batches([batch]).filter(mask)
                if "content_sha256" in columns:  # hash the split's rows only: they are read anyway
                    check_content(part, self.table, self.version)
                parts.append(part)
        empty = pa.schema([engine.arrow_schema(self.table, self.version).field(c) for c in columns]).empty_table()
        found = pa.concat_tables(parts) if parts else empty
        # Put the rows in the set's order by key.
        index = pc.index_in(_key(self._keys), value_set=_key(found.select(keys)))
        if index.null_count:
            missing = self._keys.filter(pc.is_null(index)).column("uri")[0].as_py()
            raise LakeImgError(f"{self.table}@{self.version} has no pixels for {missing}")
        out = found.take(index).drop_columns(keys + [c for c in ("content_sha256",) if c in found.column_names])
        if "content" in out.column_names and out["content"].null_count:
            raise LakeImgError(
                f"{self.table}@{self.version}: {out['content'].null_count} rows keep no inline content (large or "
                "tiled files); make the set from a derived table (lakeimg transform) instead"
            )
        return out.combine_chunks()

    def decode(self, positions: np.ndarray | list[int]) -> list[np.ndarray]:
        """Decoded images (HWC, native dtype) at set positions."""
        chunk = self.pixels().take(pa.array(np.asarray(positions, dtype=np.int64)))
        return decode_rows(chunk, [self.uris[int(p)] for p in positions])


def decode_rows(rows: pa.Table, uris: list[str]) -> list[np.ndarray]:
    """Decoded images (HWC, native dtype) of rows by table kind: an ingest table's `content`
    through `decode_image`, a derived table's `data` through `decode_pixels` by its `encoding`.

    Example:
        >>> rows = pa.table({"data": [bytes(6)], "width": [2], "height": [1], "channels": [3], "dtype": ["uint8"],
        ...                  "encoding": ["raw"]})
        >>> decode_rows(rows, ["file:///a.png"])[0].shape
        (1, 2, 3)
    """
    if "content" in rows.column_names:
        return [decode_image(data, uri) for data, uri in zip(rows["content"].to_pylist(), uris, strict=True)]
    cols = [rows[c].to_pylist() for c in _PIXEL_COLUMNS_DERIVED]
    return [decode_pixels(d, e, w, h, c, t) for d, w, h, c, t, e in zip(*cols, strict=True)]


def _key(table: pa.Table) -> pa.Array:
    if "variant" not in table.column_names:
        return table["uri"].combine_chunks()
    return pc.binary_join_element_wise(table["uri"], pc.cast(table["variant"], pa.string()), "\0")


def iter_numpy(
    trainset: TrainingSet,
    split: str,
    batch_size: int = 32,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    resize: tuple[int, int] | None = None,
    collate: Callable[[list[np.ndarray]], Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    data: SplitData | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches {"image": ndarray (N, H, W, C) native dtype, "label": int64 ndarray, "uri": list}.

    Args:
        shuffle, seed, epoch: the epoch's order (one permutation from seed and epoch).
        rank, world_size: this process's shard; with world_size > 1 every rank gets the same
            number of batches (padded by repeating samples, or cut with `drop_last`).
        drop_last: drop the last incomplete batch (and, with world_size > 1, the samples that
            do not divide evenly among the ranks) instead of padding.
        transform: a function applied to each decoded HWC image.
        resize: (height, width) every image is resized to after decoding (and `transform`).
        collate: turns a batch's list of images into `batch["image"]` (e.g. `list`); by default
            they stack into one array, and images of different sizes raise MixedImageSizesError.
        cache_dir: keep the split's pixels as a memory-mapped Arrow file shared by processes.
        threads: > 0 decodes in that many threads and prefetches the next batch (same order).
    """
    data = data or SplitData(trainset, split, cache_dir=cache_dir)
    order = epoch_order(len(data), seed=trainset.seed if seed is None else seed, epoch=epoch, shuffle=shuffle)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    mine = even_shard_positions(order, rank, world_size, drop_last=drop_last) if world_size > 1 else order
    batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()

    def load(positions: np.ndarray) -> list[np.ndarray]:
        images = data.decode(positions)
        images = [transform(im) for im in images] if transform is not None else images
        return [resized(im, resize) for im in images] if resize is not None else images

    def batch_of(positions: np.ndarray, images: list[np.ndarray]) -> dict[str, Any]:
        uris = [data.uris[int(p)] for p in positions]
        return {"image": collate(images) if collate is not None else stack_images(images, uris),
                "label": data.labels[positions], "uri": uris}

    if threads <= 0:
        for positions in batches:
            yield batch_of(positions, load(positions))
        return
    from concurrent.futures import ThreadPoolExecutor

    # Decoders release the GIL: split each batch over the threads and keep the next batch in
    # flight while the caller works on this one.
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(positions: np.ndarray):
            parts = np.array_split(positions, min(threads, max(1, len(positions))))
            return [pool.submit(load, part) for part in parts]

        pending = submit(batches[0]) if batches else None
        for index, positions in enumerate(batches):
            current = pending
            pending = submit(batches[index + 1]) if index + 1 < len(batches) else None
            yield batch_of(positions, [im for future in current for im in future.result()])


def to_spark(spark: Any, trainset: TrainingSet, split: str, *, features: str = "features"):
    """The split as a Spark DataFrame: uri, label, label_index and an MLlib vector of the pixels.

    Spark reads the pinned version itself (Delta time travel); only the small (uri, label_index)
    list goes from the driver to the cluster. Pixels are decoded to float32 in an Arrow batch
    kernel (mapInArrow), then `array_to_vector` makes the MLlib column: no row-at-a-time UDF.

    Example:
        >>> df = to_spark(spark, lake.training_set("pets"), "train")
        >>> sorted((row.label, row.label_index, row.features.size) for row in df.collect())
        [('cat', 0, 2304), ('cat', 0, 2304), ('dog', 1, 2304), ('dog', 1, 2304)]
    """
    from functools import partial

    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    engine = trainset.engine
    schema = engine.arrow_schema(trainset.table, trainset.version)
    rows = trainset.rows(split)
    keys = [c for c in ("uri", "variant") if c in rows.column_names]
    wanted = spark.createDataFrame(rows.select([*keys, "label", "label_index"]))  # Arrow in: no pandas
    if "data" in schema.names and "encoding" in schema.names:
        pixel_columns = _PIXEL_COLUMNS_DERIVED
    else:
        pixel_columns = ["content"]
    source = (
        spark.read.format("delta")
        .option("versionAsOf", trainset.version)
        .load(engine.location(trainset.table))
        .select(*keys, *pixel_columns)
    )
    joined = wanted.join(source, on=keys, how="inner")
    out_schema = StructType(
        [joined.schema[k] for k in keys]
        + [joined.schema["label"], joined.schema["label_index"],
           StructField(features, ArrayType(FloatType(), containsNull=False))]
    )
    kernel = partial(_features_kernel, keys=tuple(keys), features=features)
    arrays = joined.mapInArrow(kernel, out_schema)
    return arrays.withColumn(features, array_to_vector(F.col(features)))


def _features_kernel(batches, *, keys, features):
    """mapInArrow kernel: encoded pixels -> flat float32 arrays (HWC order, values as stored)."""
    for batch in batches:
        table = pa.Table.from_batches([batch])
        images = decode_rows(table, table["uri"].to_pylist())
        flat = [np.ascontiguousarray(im, dtype=np.float32).ravel() for im in images]
        offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        np.cumsum([f.size for f in flat], out=offsets[1:])
        values = pa.array(np.concatenate(flat) if flat else np.empty(0, np.float32), pa.float32())
        vectors = pa.ListArray.from_arrays(pa.array(offsets), values)
        columns = {k: table[k] for k in keys}
        columns["label"] = table["label"]
        columns["label_index"] = table["label_index"].cast(pa.int64())
        columns[features] = vectors
        yield from pa.table(columns).to_batches()
