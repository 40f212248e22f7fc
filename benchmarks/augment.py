"""Augmentation throughput: seglab's batched one-resample augmenter against a per-sample torchvision pipeline.

    python benchmarks/augment.py [--iters 20] [--warmup 3]

Both sides augment the same 8 ISBI 2012 slices (512 x 512, already decoded in memory, so no file
reading is timed) with the U-Net paper's recipe: flips, rot90, elastic deformation, small intensity
changes. (a) seglab's BatchAugmenter on the device (CUDA if present, else CPU); (b) the usual CPU
pipeline, torchvision.transforms.v2 per sample in a DataLoader with 2 workers. Prints images/s of
each and the ratio (a)/(b); with CUDA also the augmentation time as a share of a U-Net-64 training
step at batch 8.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from bench_common import device_name, synchronize  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.data.augment import BatchAugmenter
from seglab.data.augment_config import augment_preset

ISBI_TRAIN = Path(__file__).resolve().parents[1] / "data" / "isbi2012" / "train"
BATCH = 8
WORKERS = 2

# torchvision's ElasticTransform blurs uniform noise in [-1, 1] with a Gaussian of `sigma` pixels and
# scales it so the displacement is about alpha * 0.0166 px (per axis, RMS) at sigma = 5, measured on
# 512 x 512. The paper's field (3x3 nodes ~ N(0, 10 px), bicubic) has an RMS of 7.7 px per axis over
# the image, so alpha = 7.7 / 0.0166 = 465 matches its strength. Its smoothness cannot be matched:
# the paper's field varies over ~250 px, which would need sigma ~ 100 and an 801 x 801 kernel; the
# cost grows with sigma^2, so torchvision's default sigma = 5 is the cheapest (most favourable to
# the CPU pipeline) of the honest choices.
TV_ELASTIC_ALPHA = 465.0
TV_ELASTIC_SIGMA = 5.0


class RandomRot90(v2.Transform):
    """Rotate image and mask together by 0, 90, 180 or 270 degrees (torchvision has no such transform)."""

    def make_params(self, flat_inputs):
        return {"turns": int(torch.randint(4, ()))}

    def transform(self, inpt, params):
        return tv_tensors.wrap(torch.rot90(inpt, params["turns"], dims=(-2, -1)), like=inpt)


def torchvision_paper_pipeline() -> v2.Compose:
    """Per-sample v2 transforms matching seglab's "paper" preset as closely as torchvision allows."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        RandomRot90(),
        v2.ElasticTransform(alpha=TV_ELASTIC_ALPHA, sigma=TV_ELASTIC_SIGMA),  # masks: nearest, by tv_tensors
        v2.RandomApply([v2.ColorJitter(brightness=0.05, contrast=0.1)], p=0.5),  # no gamma in v2
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ])


class AugmentedSlices(Dataset):
    """The same decoded slices over and over, each passed through `transform` as (Image, Mask)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, length: int, transform):
        self.images, self.masks, self.length, self.transform = images, masks, length, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        k = index % len(self.images)
        image, mask = self.transform(tv_tensors.Image(self.images[k]), tv_tensors.Mask(self.masks[k]))
        return image, mask


def read_isbi(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` training slices: images (N, 1, 512, 512) uint8, masks (N, 512, 512) int64 (1 = cell)."""
    names = sorted(p.name for p in (ISBI_TRAIN / "images").iterdir())[:count]
    images = np.stack([np.asarray(Image.open(ISBI_TRAIN / "images" / name)) for name in names])
    masks = np.stack([np.asarray(Image.open(ISBI_TRAIN / "masks" / name)) == 255 for name in names])
    return torch.from_numpy(images)[:, None], torch.from_numpy(masks).long()


def time_seglab(images: torch.Tensor, masks: torch.Tensor, device: torch.device, iters: int,
                warmup: int) -> float:
    """Seconds per batch of BatchAugmenter("paper") on `device`; images (N, 1, H, W) float in [0, 1]."""
    augmenter = BatchAugmenter(augment_preset("paper"), seed=0)
    images, masks = images.to(device), masks.to(device)
    for _ in range(warmup):
        augmenter(images, masks)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        augmenter(images, masks)
    synchronize(device)
    return (time.perf_counter() - started) / iters


def time_torchvision(images: torch.Tensor, masks: torch.Tensor, iters: int, warmup: int) -> float:
    """Seconds per batch of the per-sample torchvision pipeline in a DataLoader with WORKERS workers."""
    dataset = AugmentedSlices(images, masks, BATCH * (warmup + iters), torchvision_paper_pipeline())
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, shuffle=False)
    batches = iter(loader)
    for _ in range(warmup):  # also absorbs the workers' start-up
        next(batches)
    started = time.perf_counter()
    for _ in range(iters):
        next(batches)
    return (time.perf_counter() - started) / iters


def time_unet_step(images: torch.Tensor, masks: torch.Tensor, device: torch.device, iters: int,
                   warmup: int) -> float:
    """Seconds per U-Net-64 training step (forward, BCE loss, backward, Adam) on images (N, 1, H, W)."""
    from seglab.models import UNet

    model = UNet(1, 1, 64).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, targets = images.to(device), masks.to(device).float()[:, None]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), targets).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raw_images, masks = read_isbi(BATCH)
    images = raw_images.float() / 255
    print(f"augmenting {BATCH} ISBI slices {tuple(images.shape[-2:])} with the paper recipe; "
          f"torch {torch.__version__}")

    seglab_seconds = time_seglab(images, masks, device, args.iters, args.warmup)
    seglab_rate = BATCH / seglab_seconds
    print(f"(a) seglab BatchAugmenter on {device.type} [{device_name(device)}]: "
          f"{seglab_rate:8.1f} images/s ({seglab_seconds * 1e3:.1f} ms per batch)")

    tv_seconds = time_torchvision(raw_images, masks, args.iters, args.warmup)
    tv_rate = BATCH / tv_seconds
    print(f"(b) torchvision v2 per sample, DataLoader {WORKERS} workers "
          f"[{device_name(torch.device('cpu'))}]: {tv_rate:8.1f} images/s ({tv_seconds * 1e3:.1f} ms per batch)")
    print(f"ratio (a)/(b): {seglab_rate / tv_rate:.1f}x")

    if device.type == "cuda":
        step_seconds = time_unet_step(images, masks, device, args.iters, args.warmup)
        print(f"U-Net-64 training step, batch {BATCH}, float32: {step_seconds * 1e3:.1f} ms; "
              f"augmentation is {100 * seglab_seconds / step_seconds:.1f}% of it")


if __name__ == "__main__":
    main()
