"""Loaders of pinned training sets: NumPy batches, PyTorch exactly-once sharding, decoding, Spark."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from test_catalog import SPEC_A, write_pngs
from torch.utils.data import DataLoader

from lakeimg import Lake
from lakeimg.catalog.loaders import MixedImageSizesError
from lakeimg.image import decode_image
from lakeimg.jobs.transform import transform_table


@pytest.fixture(scope="module")
def pinned(tmp_path_factory):
    """A lake with images (2 x 13 PNGs), a raw-encoded derived table, and a set on each."""
    root = tmp_path_factory.mktemp("loaders")
    src = root / "src"
    write_pngs(src, per_label=13)
    lake = Lake(root / "lake")
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    transform_table(lake.path, "images", "small", SPEC_A, workers=0)
    lake.create_training_set("raw", "images", splits="train=0.7,test=0.3", seed=4)
    lake.create_training_set("derived", "small", splits="train=0.7,test=0.3", seed=4)
    return lake


def test_iter_numpy_batches_decode_like_decode_image(pinned):
    ts = pinned.training_set("raw")
    rows = ts.rows("train")
    batches = list(ts.iter_numpy("train", batch_size=5, shuffle=False))
    assert [len(b["uri"]) for b in batches[:-1]] == [5] * (len(batches) - 1)
    uris = [u for b in batches for u in b["uri"]]
    assert uris == rows["uri"].to_pylist()  # no shuffle: the set's order
    first = batches[0]
    assert first["image"].shape == (5, 12, 16, 3) and first["image"].dtype == np.uint8
    content = dict(zip(*pinned.read("images", columns=["uri", "content"]).to_pydict().values(), strict=True))
    for uri, image, label in zip(first["uri"], first["image"], first["label"], strict=True):
        assert np.array_equal(image, decode_image(content[uri]))
        assert label == ts.label_index[uri.rsplit("/", 2)[-2]]


def test_derived_tables_decode_by_encoding(pinned):
    ts = pinned.training_set("derived")
    batch = next(ts.iter_numpy("test", batch_size=64))
    assert batch["image"].shape[1:] == (6, 8, 3)
    data = pinned.read("small", columns=["uri", "data"]).to_pydict()
    raw = dict(zip(data["uri"], data["data"], strict=True))
    for uri, image in zip(batch["uri"], batch["image"], strict=True):
        assert image.tobytes() == raw[uri]  # raw encoding: the bytes are the pixels


def test_same_seed_and_epoch_same_order_and_shards_cover_once(pinned):
    ts = pinned.training_set("raw")
    def order(**kw):
        return [u for b in ts.iter_numpy("train", batch_size=4, **kw) for u in b["uri"]]
    assert order(epoch=1) == order(epoch=1)
    assert order(epoch=1, threads=2) == order(epoch=1)  # threaded decoding keeps the order
    threaded = next(ts.iter_numpy("train", batch_size=5, epoch=1, threads=3))
    plain = next(ts.iter_numpy("train", batch_size=5, epoch=1))
    assert np.array_equal(threaded["image"], plain["image"]) and threaded["uri"] == plain["uri"]
    assert order(epoch=1) != order(epoch=2)
    assert order(seed=99, epoch=1) != order(epoch=1)
    everything = sorted(ts.rows("train")["uri"].to_pylist())
    for world in (1, 2, 3):
        seen = [u for r in range(world) for u in order(epoch=3, rank=r, world_size=world)]
        assert sorted(set(seen)) == everything  # every sample; padded to equal shards when world > 1
        assert len(seen) == world * -(-len(everything) // world)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_torch_exactly_once_per_epoch_with_two_workers(pinned, world_size, tmp_path):
    ts = pinned.training_set("raw")
    expected = sorted(ts.rows("train")["uri"].to_pylist())
    per_epoch = []
    for epoch in (0, 1):
        seen: list[str] = []
        for rank in range(world_size):
            dataset = ts.torch("train", rank=rank, world_size=world_size, cache_dir=tmp_path / "cache")
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=4, num_workers=2)
            for batch in loader:
                assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (3, 12, 16)
                assert float(batch["image"].max()) <= 1.0
                assert batch["label"].dtype == torch.int64
                seen += batch["uri"]
        if world_size == 1:
            assert Counter(seen) == Counter(expected)  # each sample exactly once across workers
        else:  # every sample, the shards padded to one length by repeating samples (DistributedSampler)
            assert set(seen) == set(expected) and len(seen) == -(-len(expected) // (2 * world_size)) * 2 * world_size
        per_epoch.append(seen)
    if world_size == 1:
        assert per_epoch[0] != per_epoch[1]  # a new epoch, a new global order
    assert list((tmp_path / "cache").glob("raw-train-*.arrow"))  # memory-mapped cache was used


def test_torch_tensor_values_match_numpy(pinned):
    ts = pinned.training_set("raw")
    dataset = ts.torch("test", shuffle=False)
    sample = next(iter(dataset))
    batch = next(ts.iter_numpy("test", batch_size=1, shuffle=False))
    expected = batch["image"][0].astype(np.float32).transpose(2, 0, 1) / 255.0
    assert sample["uri"] == batch["uri"][0]
    assert np.allclose(sample["image"].numpy(), expected, atol=1e-6)
    assert len(dataset) == ts.rows("test").num_rows


@pytest.mark.spark
def test_to_spark_gives_an_mllib_vector_column(pinned, spark):
    from pyspark.ml.linalg import DenseVector

    ts = pinned.training_set("derived")
    df = pinned.to_spark(spark, "derived", "train")  # to_spark(spark, NAME, split)
    rows = {r["uri"]: r for r in df.collect()}
    expected = ts.rows("train")
    assert sorted(rows) == sorted(expected["uri"].to_pylist())
    batch = next(ts.iter_numpy("train", batch_size=1, shuffle=False))
    row = rows[batch["uri"][0]]
    assert isinstance(row["features"], DenseVector) and len(row["features"]) == 6 * 8 * 3
    assert np.array_equal(row["features"].toArray(), batch["image"][0].astype(np.float64).ravel())
    assert row["label_index"] == int(batch["label"][0])


def test_13_samples_on_2_ranks_give_every_rank_the_same_number_of_batches(pinned):
    pinned.create_training_set("cats13", "images", splits="all=1.0", seed=2, where="label = 'cats'")
    ts = pinned.training_set("cats13")
    assert ts.rows("all").num_rows == 13

    def batches(rank, **options):
        return [b["uri"] for b in ts.iter_numpy("all", batch_size=2, epoch=1, rank=rank, world_size=2, **options)]

    padded = [batches(rank) for rank in (0, 1)]
    assert [len(b) for b in padded] == [4, 4]  # 7 samples each: the 14th repeats the first
    seen = [u for rank in padded for batch in rank for u in batch]
    assert len(seen) == 14 and len(set(seen)) == 13
    dropped = [batches(rank, drop_last=True) for rank in (0, 1)]
    assert [len(b) for b in dropped] == [3, 3] and len({u for r in dropped for b in r for u in b}) == 12
    datasets = [ts.torch("all", rank=rank, world_size=2) for rank in (0, 1)]
    assert [len(d) for d in datasets] == [7, 7]
    assert [len(list(DataLoader(d, batch_size=2))) for d in datasets] == [4, 4]
    assert [len(ts.torch("all", rank=rank, world_size=2, drop_last=True)) for rank in (0, 1)] == [6, 6]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A set over images of two sizes."""
    root = tmp_path_factory.mktemp("mixed")
    for i, (h, w) in enumerate([(12, 16), (20, 10), (12, 16)]):
        (root / "src").mkdir(exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 50 * i, np.uint8)).save(root / "src" / f"{i}.png")
    lake = Lake(root / "lake")
    lake.ingest([str(root / "src")], workers=0)
    return lake.create_training_set("mixed", "images", splits="all=1.0", seed=1)


def test_mixed_sizes_raise_a_clear_error_or_resize_or_collate(mixed):
    with pytest.raises(MixedImageSizesError, match=r"resize=\(height, width\).*collate=list"):
        next(mixed.iter_numpy("all", batch_size=3))
    batch = next(mixed.iter_numpy("all", batch_size=3, resize=(8, 10)))
    assert batch["image"].shape == (3, 8, 10, 3) and batch["image"].dtype == np.uint8
    listed = next(mixed.iter_numpy("all", batch_size=3, collate=list, shuffle=False))
    assert isinstance(listed["image"], list) and sorted(im.shape for im in listed["image"]) == [(12, 16, 3), (12, 16, 3), (20, 10, 3)]
    loader = DataLoader(mixed.torch("all", resize=(8, 10)), batch_size=3)
    assert tuple(next(iter(loader))["image"].shape) == (3, 3, 8, 10)
