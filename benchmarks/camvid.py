"""CamVid from scratch on a fixed training-time budget: seglab's configs/camvid.yaml against a plain loop.

    python benchmarks/camvid.py [--data ../shared/data/camvid] [--model deeplabv3|unet] [--budget 200]
                                [--device auto] [--crop 352] [--batch 16] [--scale 1.0]
    # a short CPU run (half-size frames, small crops):
    python benchmarks/camvid.py --device cpu --budget 120 --scale 0.5 --crop 128 --batch 8

Both runs train on `train/` from random initialisation for `--budget` seconds of training (data
loading before the first step and the final validation do not count), then score all of `val/` at
full size: mIoU over the 11 classes, per-class IoU, pixel accuracy, void (11) ignored, with the same
confusion-matrix code. Printed in one run: each side's mIoU and training images/s, and the ratios.

(a) seglab: `seglab.train` with configs/camvid.yaml (DeepLabV3-ResNet50, output stride
    16, auxiliary head, AdamW 1e-3 with a cosine schedule annealed over the budget, `strong` batched
    augmentation on the device, bf16 on GPUs, channels_last), `--budget` as `time_budget`, evaluated
    once at the end. `--model unet` swaps in seglab's U-Net (64 base channels).
(b) the reference, the loop of the issue: torchvision's `deeplabv3_resnet50` (output stride 8, as
    torchvision builds it: about three times the backbone work of seglab's stride 16; no auxiliary
    head; `--model unet`: seglab's U-Net class in the same loop), bf16 autocast and channels_last on
    GPUs (fp32 and the default layout on the CPU), AdamW 1e-3 with a cosine schedule over the
    budget, batches of random crops with scale 0.75-1.5 and horizontal flips cut on the device from
    the training set kept there.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import bench_device, device_name, require_camvid, synchronize  # noqa: E402
from seglab.config import load_config, override  # noqa: E402
from seglab.data.io import read_image, read_mask  # noqa: E402
from seglab.engine.runs import fit  # noqa: E402
from seglab.metrics.confusion import ConfusionMatrix  # noqa: E402
from seglab.models.registry import build_model  # noqa: E402

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]
VOID = 11
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_split(folder: Path, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, H, W) uint8 and masks (N, H, W) uint8 of one split, resized by `scale`."""
    names = sorted(p.stem for p in (folder / "images").iterdir())
    images = torch.from_numpy(np.stack([read_image(folder / "images" / f"{n}.jpg") for n in names]))
    masks = torch.from_numpy(np.stack([read_mask(folder / "masks" / f"{n}.png") for n in names]))
    images = images.permute(0, 3, 1, 2).contiguous()
    if scale != 1.0:
        size = (round(images.shape[2] * scale), round(images.shape[3] * scale))
        images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].to(torch.uint8)
    return images, masks


@functools.lru_cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 1, 1) mean and std on the device, made once (a copy per batch would sync the GPU)."""
    return (torch.tensor(IMAGENET_MEAN, device=device)[:, None, None],
            torch.tensor(IMAGENET_STD, device=device)[:, None, None])


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float with ImageNet mean and standard deviation."""
    mean, std = _imagenet_stats(images.device)
    return (images.float() / 255 - mean) / std


def random_crops(images: torch.Tensor, masks: torch.Tensor, batch: int, crop: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `crop`-square windows, each of random scale 0.75-1.5 and flipped half the time,
    resampled on the device: images bilinear, masks nearest; pixels outside the frame are void."""
    device = images.device
    n, _, height, width = images.shape
    pick = torch.randint(0, n, (batch,), generator=generator, device=device)
    scale = 0.75 + 0.75 * torch.rand(batch, generator=generator, device=device)
    half_w, half_h = crop / scale / width, crop / scale / height  # window half-size in grid units
    centre_x = (2 * torch.rand(batch, generator=generator, device=device) - 1) * (1 - half_w).clamp_min(0)
    centre_y = (2 * torch.rand(batch, generator=generator, device=device) - 1) * (1 - half_h).clamp_min(0)
    flip = torch.where(torch.rand(batch, generator=generator, device=device) < 0.5, -1.0, 1.0)
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([half_w * flip, zero, centre_x], -1),
                         torch.stack([zero, half_h, centre_y], -1)], -2)  # (B, 2, 3)
    grid = F.affine_grid(theta, (batch, 1, crop, crop), align_corners=False)
    x = F.grid_sample(normalise(images[pick]), grid, mode="bilinear", align_corners=False)
    y = F.grid_sample(masks[pick][:, None].float(), grid, mode="nearest", padding_mode="border",
                      align_corners=False)[:, 0].long()
    inside = (grid.abs() <= 1).all(-1)
    return x, y.masked_fill(~inside, VOID)


def reference_model(name: str, device: torch.device) -> torch.nn.Module:
    if name == "unet":
        return build_model("unet", in_channels=3, num_classes=len(CLASSES), base_channels=64)
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=len(CLASSES), aux_loss=False)


def run_reference(args, device: torch.device) -> dict:
    train_images, train_masks = (t.to(device) for t in load_split(args.data / "train", args.scale))
    # channels_last as the GPU loop has it; on the CPU it slows convolutions, so off there (as in seglab)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = reference_model(args.model, device).to(device, memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4,
                                  fused=device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    steps, elapsed = 0, 0.0
    synchronize(device)
    start = time.perf_counter()
    while elapsed < args.budget:
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(elapsed / args.budget, 1.0)))
        x, y = random_crops(train_images, train_masks, args.batch, args.crop, generator)
        x = x.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out
            loss = F.cross_entropy(out.float(), y, ignore_index=VOID)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % 10 == 0 or device.type == "cpu":
            synchronize(device)
            elapsed = time.perf_counter() - start
    synchronize(device)
    elapsed = time.perf_counter() - start
    del train_images, train_masks
    scores = score(model, args, device, dtype)
    return {"images_per_s": steps * args.batch / elapsed, "seconds": elapsed, "steps": steps, **scores}


@torch.no_grad()
def score(model: torch.nn.Module, args, device: torch.device, dtype) -> dict:
    """Whole val frames, batches of 4, argmax; void ignored."""
    images, masks = load_split(args.data / "val", args.scale)
    model.eval()
    confusion = ConfusionMatrix(len(CLASSES), ignore_index=VOID, device=device)
    for start in range(0, len(images), 4):
        x = normalise(images[start:start + 4].to(device))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        out = out["out"] if isinstance(out, dict) else out
        confusion.update(out.argmax(1), masks[start:start + 4].to(device).long())
    s = confusion.scores(CLASSES)
    return {"miou": s["miou"], "iou": s["iou"], "pixel_accuracy": s["pixel_accuracy"]}


def run_seglab(args, device: torch.device, out: Path) -> dict:
    config = load_config(ROOT / "configs" / "camvid.yaml")
    updates = {"data.root": str(args.data), "data.crop": [args.crop, args.crop], "data.scale": args.scale,
               "train.batch_size": args.batch, "train.time_budget": args.budget, "train.epochs": 100_000,
               "train.eval_every": 100_000, "train.device": str(device), "train.seed": 0, "out": str(out)}
    if args.model == "unet":
        updates |= {"model.name": "unet", "model.base_channels": 64}
    history = fit(override(config, updates), progress=False, log=lambda *a, **k: None)
    last = history.epochs[-1]
    return {"images_per_s": last["step"] * args.batch / last["time"], "seconds": last["time"],
            "steps": last["step"], "miou": last["val_miou"], "iou": last["val_iou_per_class"],
            "pixel_accuracy": last["val_pixel_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--model", choices=["deeplabv3", "unet"], default="deeplabv3")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds of training per side")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--crop", type=int, default=352)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--scale", type=float, default=1.0, help="resize the frames (0.5 for a CPU run)")
    args = parser.parse_args()
    require_camvid(args.data)
    device = bench_device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; model {args.model}; budget {args.budget:.0f} s; "
          f"crop {args.crop}, batch {args.batch}, frames scaled by {args.scale}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        ours = run_seglab(args, device, Path(folder) / "run")
    print(f"(a) seglab:    {ours['steps']} steps in {ours['seconds']:.0f} s, {ours['images_per_s']:.1f} images/s, "
          f"val mIoU {ours['miou']:.3f}, pixel accuracy {ours['pixel_accuracy']:.3f}", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    theirs = run_reference(args, device)
    print(f"(b) reference: {theirs['steps']} steps in {theirs['seconds']:.0f} s, "
          f"{theirs['images_per_s']:.1f} images/s, val mIoU {theirs['miou']:.3f}, "
          f"pixel accuracy {theirs['pixel_accuracy']:.3f}")
    print(f"ratio (a)/(b): images/s {ours['images_per_s'] / theirs['images_per_s']:.2f}x, "
          f"mIoU {ours['miou'] - theirs['miou']:+.3f}")
    print("per-class IoU  " + " ".join(f"{name[:8]:>8}" for name in CLASSES))
    for label, result in (("(a) seglab   ", ours), ("(b) reference", theirs)):
        print(f"{label}  " + " ".join(f"{'absent' if v is None else f'{v:.3f}':>8}" for v in result["iou"].values()))


if __name__ == "__main__":
    main()
