"""Batches for training and validation: device-resident tensors when the data fits, else a DataLoader.

Both sources yield (images (B, C, H, W) float32, masks (B, H, W) int64, weights (B, H, W) or None,
centres (B, 2) float32 or None) already on the training device, and both split each epoch's images
across DDP ranks. Centres are where the augmenter centres each crop (row, col; NaN: at random), given
with --oversample on the resident path; the DataLoader's dataset crops by itself and gives None.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, DistributedSampler

from seglab.data.datasets import SegmentationDataset
from seglab.data.oversampling import RareLocations
from seglab.progress import progress_iter


class ResidentBatches:
    """The whole training set as tensors on the device; an epoch is a seeded permutation of it.

    The permutation depends only on (seed, epoch), so every rank agrees on it and takes its own
    stride of it, and a resumed run replays the same order. With `full_batches` the last batch is
    filled up with the epoch's first images, so every batch has `batch_size` images: a compiled
    model then never meets a new shape. With `rare` locations and `oversample` P, each place of
    the epoch's order draws whether its crop centres on a rare pixel from (seed, epoch, place), the
    same whichever rank takes it.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, full_batches: bool = False,
                 rare: RareLocations | None = None, oversample: float = 0.0):
        self.images, self.masks, self.weights = images, masks, weights
        self.batch_size = batch_size
        self.full_batches = full_batches
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.rare, self.oversample = rare, oversample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.images) / self.world_size) / self.batch_size)

    def centres(self, images: torch.Tensor, places: torch.Tensor) -> torch.Tensor | None:
        """(B, 2) float32 (row, col) crop centres of the images at these places of the epoch's
        order (NaN: at random), or None without oversampling."""
        if self.rare is None or self.oversample <= 0:
            return None
        drawn = [self.rare.draw(int(image), self.oversample, self.seed, self.epoch, int(place))
                 for image, place in zip(images, places)]
        return torch.tensor([c if c is not None else (math.nan, math.nan) for c in drawn], dtype=torch.float32)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator)
        per_rank = math.ceil(len(order) / self.world_size)
        if self.full_batches:
            per_rank = self.batch_size * math.ceil(per_rank / self.batch_size)
        repeats = math.ceil(per_rank * self.world_size / len(order)) + 1
        order = order.repeat(repeats)[: per_rank * self.world_size]  # pad so ranks get equal shares
        mine = order[self.rank::self.world_size]
        places = torch.arange(len(order))[self.rank::self.world_size]
        on_host = mine
        if self.images.is_cuda:  # a pageable copy would make the host wait for the GPU's queue
            mine = mine.pin_memory().to(self.images.device, non_blocking=True)
        for start in range(0, len(mine), self.batch_size):
            index = mine[start:start + self.batch_size]
            weights = self.weights[index] if self.weights is not None else None
            centres = self.centres(on_host[start:start + self.batch_size], places[start:start + self.batch_size])
            if centres is not None:
                centres = centres.to(self.images.device, non_blocking=True)
            yield self.images[index], self.masks[index], weights, centres


class LoaderBatches:
    """A DataLoader (with a DistributedSampler under DDP) whose batches are moved to the device."""

    def __init__(self, dataset: SegmentationDataset, batch_size: int, device: torch.device,
                 workers: int, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.device = device
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=False)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", drop_last=len(self.sampler) > batch_size,
                                 persistent_workers=False)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            images, masks = batch[0], batch[1]
            weights = batch[2].to(self.device, non_blocking=True) if len(batch) > 2 else None
            yield images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True), weights, None


def stack_dataset(dataset: SegmentationDataset) -> tuple[torch.Tensor, ...] | None:
    """All items stacked: images (N, C, H, W), masks (N, H, W)[, weights (N, H, W)], or None when
    the images differ in size."""
    items = [dataset.load(i) for i in progress_iter(range(len(dataset)), "decode", "pair")]
    if len({tuple(item[0].shape) for item in items}) != 1:
        return None
    return tuple(torch.stack([item[k] for item in items]) for k in range(len(items[0])))
