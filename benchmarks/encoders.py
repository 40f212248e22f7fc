"""CamVid at equal training time: seglab's U-Net and DeepLabV3 against SMP architectures over ResNet encoders.

    python benchmarks/encoders.py [--data ../shared/data/camvid] [--runs unet,deeplabv3,smp-unet:resnet34,...]
                                  [--budget 200] [--scale 1.0] [--crop 352] [--batch 16] [--device auto]
                                  [--weights-dir DIR]
    # the CPU runs of BENCHMARKS.md: 10 minutes each, half-size frames
    python benchmarks/encoders.py --device cpu --budget 600 --scale 0.5 --crop 192 --batch 8

Every run is `seglab.engine.runs.fit` with configs/camvid.yaml (AdamW 1e-3, cosine schedule annealed
over the budget, `strong` augmentation, cross-entropy, void = 11 ignored) and only the model
changed, trained on `train/` for `--budget` seconds of training time, then scored once on ALL of
`val/` by the trainer's validation (the one evaluation path: whole frames, pooled confusion counts),
so every row is measured by the same code:

    unet                      seglab's U-Net, 64 base channels, from scratch
    deeplabv3                 configs/camvid.yaml as it is: DeepLabV3-ResNet50, output stride 16, aux head
    smp-ARCH:ENCODER          an SMP architecture over an SMP encoder, e.g. smp-fpn:resnet34

With `--weights-dir DIR` the SMP runs start their encoder from ImageNet weights found in DIR
(`seglab weights fetch resnet34 --dest DIR`), normalised with ImageNet's statistics, and the
DeepLabV3 run from torchvision's ImageNet backbone (torch hub cache); without it, all start from
random weights. Printed: per run, steps, training images/s, val mIoU, pixel accuracy and per-class IoU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import bench_device, device_name, require_camvid  # noqa: E402
from seglab.config import load_config, override  # noqa: E402
from seglab.engine.runs import fit  # noqa: E402

DEFAULT_RUNS = "unet,deeplabv3,smp-unet:resnet34,smp-fpn:resnet34,smp-deeplabv3plus:resnet34"


def run_updates(run: str, weights_dir: Path | None) -> tuple[dict, str]:
    """Config updates for one run name, and what its weights start from."""
    if run == "unet":
        return {"model.name": "unet", "model.base_channels": 64}, "random"
    if run == "deeplabv3":
        if weights_dir is None:
            return {}, "random"
        return {"model.pretrained_backbone": True, "data.normalization": "auto"}, "ImageNet (torchvision)"
    architecture, _, encoder = run.partition(":")
    updates = {"model.name": architecture, "model.encoder": encoder or "resnet34"}
    if weights_dir is None:
        return updates, "random"
    updates |= {"model.encoder_weights": "imagenet", "model.weights_dir": str(weights_dir),
                "data.normalization": "auto"}
    return updates, "ImageNet (SMP hub)"


def train_and_score(run: str, args, device: torch.device, out: Path) -> dict:
    updates, start = run_updates(run, args.weights_dir)
    config = load_config(ROOT / "configs" / "camvid.yaml")
    updates |= {"data.root": str(args.data), "data.crop": [args.crop, args.crop], "data.scale": args.scale,
                "train.batch_size": args.batch, "train.time_budget": args.budget, "train.epochs": 100_000,
                "train.eval_every": 100_000, "train.device": str(device), "train.seed": 0, "out": str(out)}
    started = time.perf_counter()
    history = fit(override(config, updates), progress=False, log=lambda *a, **k: None)
    last = history.epochs[-1]
    return {"run": run, "start": start, "steps": last["step"], "seconds": last["time"],
            "images_per_s": last["step"] * args.batch / last["time"], "miou": last["val_miou"],
            "pixel_accuracy": last["val_pixel_accuracy"], "iou": last["val_iou_per_class"],
            "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated (default: {DEFAULT_RUNS})")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds of training per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--crop", type=int, default=352)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--scale", type=float, default=1.0, help="resize the frames (0.5 for a CPU run)")
    parser.add_argument("--weights-dir", type=Path, help="encoder weights folder: start from ImageNet weights")
    args = parser.parse_args()
    require_camvid(args.data)
    device = bench_device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; budget {args.budget:.0f} s per run; "
          f"crop {args.crop}, batch {args.batch}, frames scaled by {args.scale}; {time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    results = []
    for run in args.runs.split(","):
        with tempfile.TemporaryDirectory() as folder:
            result = train_and_score(run, args, device, Path(folder) / "run")
        results.append(result)
        print(f"{run:28s} from {result['start']:22s} {result['steps']:6d} steps in {result['seconds']:4.0f} s "
              f"{result['images_per_s']:6.2f} img/s  val mIoU {result['miou']:.3f}  pixel acc "
              f"{result['pixel_accuracy']:.3f}  ({result['wall']:.0f} s wall)", flush=True)
        print("    IoU " + " ".join(f"{name[:6]}={'-' if v is None else f'{v:.3f}'}"
                                    for name, v in result["iou"].items()), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
