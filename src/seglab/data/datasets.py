"""SegmentationDataset: (image (C, H, W) float32, mask (H, W) int64) pairs from files."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from seglab.data.classmap import IGNORE_INDEX, ClassMap
from seglab.data.decoded import DecodedFiles
from seglab.data.discover import Pair
from seglab.data.normalization import Normalization
from seglab.data.oversampling import RareLocations, window_start
from seglab.data.preprocess import prepare_image, resize_mask
from seglab.data.truth import read_truth
from seglab.errors import DataError
from seglab.padding import mirror_pad


def load_pair(pair: Pair, class_map: ClassMap, channels: int, scale: float, normalization: Normalization,
              files: DecodedFiles | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read, map and scale one pair: image (C, h, w) float32 and mask (h, w) int64 class indices at
    `scale`, and the truth (H, W) int64 at the files' own size (the mask itself at scale 1).
    `files`: the run's store of decoded files (`data.decoded`), else the files are read."""
    files = files if files is not None else DecodedFiles(budget_bytes=0)
    array = files.image(pair.image)
    truth = torch.from_numpy(read_truth(pair.mask, class_map, array.shape[:2], pair.image,
                                        raw=files.mask(pair.mask)))
    image = prepare_image(array, channels, scale, normalization, name=str(pair.image))
    return image, resize_mask(truth, tuple(image.shape[-2:])), truth


def crop_or_pad(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int], rng: np.random.Generator,
                weights: torch.Tensor | None = None, centre: tuple[int, int] | None = None):
    """A random (h, w) window of image (C, H, W), mask (H, W) and optional weights (H, W); sides
    smaller than the window are padded (image by reflection, mask with IGNORE_INDEX and weights
    with 0, so the padding never counts). With `centre` (row, col) the window is centred there,
    moved inside the image (--oversample). Returns (image, mask) or (image, mask, weights)."""
    height, width = image.shape[-2:]
    pad_h, pad_w = max(0, size[0] - height), max(0, size[1] - width)
    if pad_h or pad_w:
        image = mirror_pad(image, 0, pad_h, 0, pad_w)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        weights = F.pad(weights, (0, pad_w, 0, pad_h), value=0.0) if weights is not None else None
        height, width = image.shape[-2:]
    top = int(rng.integers(0, height - size[0] + 1))
    left = int(rng.integers(0, width - size[1] + 1))
    if centre is not None:  # drawn above all the same: the stream of later draws does not change
        top, left = window_start(centre[0], size[0], height), window_start(centre[1], size[1], width)
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    cropped = (image[:, window[0], window[1]], mask[window])
    return cropped if weights is None else cropped + (weights[window],)


class SegmentationDataset(Dataset):
    """Image/mask pairs, mapped through a ClassMap, optionally cropped at random.

    Items: image (C, H, W) float32 normalised, mask (H, W) int64 with IGNORE_INDEX for ignored
    pixels, and with `border_weight=(w0, sigma)` a third item: the U-Net paper's weight map
    (H, W) float32, computed once per mask. Crops are drawn from a generator seeded by (seed,
    epoch, index), so any worker process, and a resumed run, draws the same crop for the same item
    and epoch. With `rare` locations and `oversample` P, a share P of the crops centre on a pixel
    of a rare class (`data.oversampling`).
    """

    def __init__(self, pairs: list[Pair], class_map: ClassMap, channels: int, scale: float = 1.0,
                 normalization: Normalization = "per_image", crop: tuple[int, int] | None = None,
                 cache: bool = False, seed: int = 0, border_weight: tuple[float, float] | None = None,
                 files: DecodedFiles | None = None, rare: RareLocations | None = None, oversample: float = 0.0):
        if not pairs:
            raise DataError("no image/mask pairs to load")
        self.pairs = list(pairs)
        self.class_map = class_map
        self.channels = channels
        self.scale = scale
        self.normalization = normalization
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.border_weight = border_weight
        self._cache: dict[int, tuple] | None = {} if cache else None
        self.files = files  # what the run's preparation decoded (not for worker processes)
        self.rare, self.oversample = rare, oversample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple:
        """The whole (uncropped) item."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = load_pair(self.pairs[index], self.class_map, self.channels, self.scale, self.normalization,
                         self.files)[:2]
        if self.border_weight is not None:
            from seglab.data.weightmap import border_weight_map

            w0, sigma = self.border_weight
            weights = border_weight_map(item[1].numpy(), cell_class=1, w0=w0, sigma=sigma)
            item = item + (torch.from_numpy(weights),)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> tuple:
        item = self.load(index)
        if self.crop is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            centre = (self.rare.draw(index, self.oversample, self.seed, self.epoch, slot=index)
                      if self.rare is not None else None)
            item = crop_or_pad(item[0], item[1], self.crop, rng, item[2] if len(item) > 2 else None, centre)
        return item


class ValidationImages:
    """Whole validation images, read once and kept: item i is (image (C, h, w) float32 at the
    training scale, mask (h, w) int64 at that scale for the loss, truth (H, W) int64 at the
    file's own size for the scores, which are computed at the size predictions are written)."""

    def __init__(self, pairs: list[Pair], class_map: ClassMap, channels: int, scale: float = 1.0,
                 normalization: Normalization = "per_image", files: DecodedFiles | None = None):
        self.pairs = list(pairs)
        self.files = files
        self.class_map, self.channels, self.scale, self.normalization = class_map, channels, scale, normalization
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if index not in self._cache:
            self._cache[index] = load_pair(self.pairs[index], self.class_map, self.channels, self.scale,
                                           self.normalization, self.files)
        return self._cache[index]
