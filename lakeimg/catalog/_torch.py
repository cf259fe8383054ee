"""The PyTorch face of a training set split (imported only when torch is installed).

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> dataset = torch_dataset(lake.create_training_set("all-v1", "images", splits="all=1.0", seed=3), "all")
    >>> len(dataset), tuple(next(iter(dataset))["image"].shape)
    (4, (3, 24, 32))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lakeimg.catalog.loaders import (
    SplitData,
    epoch_order,
    even_shard_positions,
    resized,
    to_chw_float32,
)

if TYPE_CHECKING:
    from lakeimg.catalog.trainsets import TrainingSet

__all__ = ["LakeImageDataset", "torch_dataset"]


class LakeImageDataset(IterableDataset):
    """Global (seed, epoch) shuffle, sharded by rank x DataLoader worker: each sample once per
    epoch with one process; with world_size > 1 every shard gets the same number of samples
    (padded by repeating samples like DistributedSampler, or cut with `drop_last`), so every
    rank yields the same number of batches. `resize=(height, width)` resizes on load, so
    DataLoader's collate can stack images of mixed sizes."""

    def __init__(
        self,
        data: SplitData,
        *,
        seed: int,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        transform: Callable[[Any], Any] | None = None,
        decode_batch: int = 16,
        drop_last: bool = False,
        resize: tuple[int, int] | None = None,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.data = data
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.transform = transform
        self.decode_batch = decode_batch
        self.drop_last = drop_last
        self.resize = resize

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers, without DataLoader workers)."""
        return len(self.positions())

    def positions(self, worker: int = 0, workers: int = 1) -> np.ndarray:
        """Set positions one worker of this rank reads this epoch, in order."""
        order = epoch_order(len(self.data), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        shard, shards = self.rank * workers + worker, self.world_size * workers
        if self.world_size > 1:
            return even_shard_positions(order, shard, shards, drop_last=self.drop_last)
        return order[shard::shards]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.positions(worker, workers)
        for start in range(0, len(mine), self.decode_batch):
            chunk = mine[start : start + self.decode_batch]
            for position, image in zip(chunk, self.data.decode(chunk), strict=True):
                if self.resize is not None:
                    image = resized(image, self.resize)
                tensor = torch.from_numpy(to_chw_float32(image))
                if self.transform is not None:
                    tensor = self.transform(tensor)
                yield {
                    "image": tensor,
                    "label": int(self.data.labels[int(position)]),
                    "uri": self.data.uris[int(position)],
                }


def torch_dataset(trainset: TrainingSet, split: str, *, seed: int | None = None,
                  cache_dir: str | os.PathLike[str] | None = None, **options: Any) -> LakeImageDataset:
    """A torch IterableDataset of {"image": CHW float32 tensor, "label": int64, "uri": str};
    `options` as `LakeImageDataset` (shuffle, epoch, rank, world_size, drop_last, transform, resize).

    Call `.set_epoch(e)` before each epoch (like DistributedSampler). Needs `pip install lakeimg[torch]`.
    """
    data = SplitData(trainset, split, cache_dir=cache_dir)
    data.pixels()  # build before DataLoader forks its workers, so they share it
    return LakeImageDataset(data, seed=trainset.seed if seed is None else seed, **options)
