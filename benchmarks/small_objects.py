"""Small objects and rare classes on CamVid at equal training time: the zero-flag plan against the new
losses, rare-class oversampling and their combination, with the IoU of every class.

    python benchmarks/small_objects.py [--data ../shared/data/camvid] [--budget 600] [--seeds 0]
                                       [--variants plan,focal,lovasz,...] [--oversample 0.33]
                                       [--combined-loss ce+lovasz] [--val-frames N] [--device auto]
    # issue 27's measurement (10 minutes of training each on this CPU, all 101 val frames):
    python benchmarks/small_objects.py --device cpu --budget 600
    # a smoke run that only shows the script works (numbers mean nothing):
    python benchmarks/small_objects.py --device cpu --budget 20 --val-frames 8 --variants plan,lovasz,oversample

Every variant is `seglab.train` on the CamVid folder with no recipe flags but the void value 11 and
the class names (the zero-flag plan: its model, crop, batch, schedule over the budget, class
weights), plus one change:

    plan             nothing else: the reference every RATIO line divides by, measured in the same run
    LOSS             --loss LOSS for each LOSS in focal, ce+lovasz, tversky, focal-tversky, gdice
                     (any registered term or sum of terms is a variant name)
    oversample       --oversample P (default 0.33, nnU-Net's share of foreground patches)
    combined         --loss COMBINED --oversample P

Each trains for `--budget` seconds of training time (validation and checkpoints do not count) and
its last.pt (or `--checkpoint best`) is scored once on the val frames by `seglab.evaluate` (whole
frames, pooled counts), so every row is measured by the same code. The data are read in place
(`--val-frames N` links the first N val frames into a temporary folder; nothing is copied).
Printed: the device, one row per variant and seed, the per-class IoU table (mean over seeds),
and RATIO lines against the plan.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import seglab  # noqa: E402
from bench_common import device_name, require_camvid  # noqa: E402
from seglab.runtime.device import resolve_device  # noqa: E402

CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist"]
SMALL = ["Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist"]  # each under 2% of CamVid's pixels
DEFAULT_VARIANTS = "plan,focal,ce+lovasz,tversky,focal-tversky,gdice,oversample,combined"
QUIET = lambda *args, **kwargs: None  # noqa: E731


def variant_options(name: str, args) -> dict:
    """seglab.train keywords of one variant (beyond the zero-flag plan's)."""
    if name == "plan":
        return {}
    if name == "oversample":
        return {"oversample": args.oversample}
    if name == "combined":
        return {"loss": args.combined_loss, "oversample": args.oversample}
    return {"loss": name}  # a registered loss term or sum; seglab refuses unknown ones in one line


def data_view(camvid: Path, val_frames: int | None, folder: Path) -> Path:
    """CamVid itself, or a folder linking its train/ and the first `val_frames` val frames."""
    if not val_frames:
        return camvid
    os.symlink(camvid / "train", folder / "train")
    for kind in ("images", "masks"):
        (folder / "val" / kind).mkdir(parents=True)
    for image in sorted((camvid / "val" / "images").iterdir())[:val_frames]:
        masks = [m for m in (camvid / "val" / "masks").iterdir()
                 if m.stem == image.stem or m.stem.startswith(image.stem + "_")]
        os.symlink(image, folder / "val" / "images" / image.name)
        os.symlink(masks[0], folder / "val" / "masks" / masks[0].name)
    return folder


def warm_up(data: Path, args, out: Path) -> None:
    """Train the plan for `--warmup` seconds, unrecorded, so that the process's one-time costs
    (oneDNN's kernels for each shape, thread pools, the allocator) fall on no variant's budget
    rather than on the first variant's."""
    if args.warmup > 0:
        seglab.train(data, ignore_index=11, class_names=CAMVID_NAMES, time_budget=args.warmup, device=args.device,
                     out=out, progress=False, log=QUIET)


def train_and_score(name: str, seed: int, data: Path, args, out: Path) -> dict:
    started = time.perf_counter()
    run = seglab.train(data, ignore_index=11, class_names=CAMVID_NAMES, time_budget=args.budget, seed=seed,
                       device=args.device, out=out, progress=False, log=QUIET, **variant_options(name, args))
    checkpoint = run.best_checkpoint if args.checkpoint == "best" else run.last_checkpoint
    scores = seglab.evaluate(checkpoint, data, split="val", device=args.device).pooled
    iou = {k: (v if v is not None else 0.0) for k, v in scores["iou"].items()}
    rows = [r for r in run.rows if r.get("step")]
    return {"variant": name, "seed": seed, "steps": rows[-1]["step"] if rows else 0, "miou": scores["miou"],
            "small": sum(iou[c] for c in SMALL) / len(SMALL), "pixel_accuracy": scores["pixel_accuracy"],
            "iou": iou, "wall": time.perf_counter() - started}


def mean_of(results: list[dict], key: str):
    values = [r[key] for r in results]
    if isinstance(values[0], dict):
        return {k: sum(v[k] for v in values) / len(values) for k in values[0]}
    return sum(values) / len(values)


def report(results: dict[str, list[dict]], budget: float, checkpoint: str) -> None:
    """The per-class IoU table (means over seeds) and the RATIO lines against the plan."""
    names = list(results)
    print(f"\nper-class IoU on the val frames, {checkpoint}.pt after {budget:.0f} s of training (mean over seeds)")
    print("| class | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for cls in CAMVID_NAMES + ["small-5 mean", "mIoU"]:
        key = {"small-5 mean": "small", "mIoU": "miou"}.get(cls)
        cells = [mean_of(results[n], key) if key else mean_of(results[n], "iou")[cls] for n in names]
        label = f"**{cls}**" if cls in SMALL else cls
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    if "plan" not in results:
        return
    base_miou, base_small = mean_of(results["plan"], "miou"), mean_of(results["plan"], "small")
    for name in names:
        if name == "plan":
            continue
        miou, small = mean_of(results[name], "miou"), mean_of(results[name], "small")
        ratio = f"{miou / base_miou:.3f}" if base_miou else "n/a"
        print(f"RATIO {name}/plan: mIoU {miou:.3f}/{base_miou:.3f} = {ratio}; small-5 mean IoU {small:.3f} vs "
              f"{base_small:.3f} ({small - base_small:+.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "camvid")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default: {DEFAULT_VARIANTS})")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per variant and seed")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (two where differences are small)")
    parser.add_argument("--oversample", type=float, default=0.33, help="share of centred crops (oversample, combined)")
    parser.add_argument("--combined-loss", default="ce+lovasz", help="the loss of the combined variant")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of unrecorded training first (0: none)")
    parser.add_argument("--val-frames", type=int, help="score on the first N val frames only (a smoke run)")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="the weights scored: last.pt, or best.pt (chosen on these same val frames, as "
                        "benchmarks/plan.py scored the 0.385 of BENCHMARKS.md)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    require_camvid(args.data)
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"device: {device_name(device)}; torch {torch.__version__}; budget {args.budget:.0f} s per variant and "
          f"seed; seeds {seeds}; val frames {args.val_frames or 'all'}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = data_view(args.data.resolve(), args.val_frames, Path(scratch))
        runs = args.out or Path(scratch) / "runs"
        warm_up(data, args, Path(scratch) / "warm-up")
        for name in args.variants.split(","):
            for seed in seeds:
                result = train_and_score(name, seed, data, args, runs / f"{name.replace('+', '_')}-seed{seed}")
                results.setdefault(name, []).append(result)
                print(f"{name:16s} seed {seed}: {result['steps']:5d} steps  val mIoU {result['miou']:.3f}  small-5 "
                      f"mean IoU {result['small']:.3f}  pixel acc {result['pixel_accuracy']:.3f}  "
                      f"({result['wall']:.0f} s wall)", flush=True)
    report(results, args.budget, args.checkpoint)


if __name__ == "__main__":
    main()
