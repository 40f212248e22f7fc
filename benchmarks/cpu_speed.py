"""CPU speed: seglab's training step, inference paths and start-up against the textbook loops, in one run.

    python benchmarks/cpu_speed.py            # the issue's models; about 15 minutes on 2 cores
    python benchmarks/cpu_speed.py --quick    # U-Net-16 only, fewer steps: under two minutes
    python benchmarks/cpu_speed.py --compile  # also torch.compile: U-Net-16 training, every inference model

Training step (images/s of the whole step, on synthetic 512x512 images with blob masks):
    seglab  `Trainer._train_epoch` of a real Trainer built from a RunConfig on a data folder, as
            `seglab train` runs it: resident data, "paper" augmentation to the crop, bce+dice,
            fused AdamW, and the defaults this machine gets (precision "auto", the layout the
            default rule picks; `--compile` adds a compiled row, its compile time printed apart);
            also seglab with `--precision fp32` and NCHW: the defaults before issue 22.
    reference  the Pytorch-UNet train.py loop of `train_throughput.py` (float32, NCHW, RMSprop,
            BCE + Dice, gradient clipping, loss.item() per step) over the same network, on crops.
    models  U-Net-16 at 256x256 batch 4, U-Net-64 at 512x512 batch 1, SMP FPN over ResNet-34 at
            256x256 batch 4 (`--quick`: U-Net-16).
Inference (512x512 ISBI slices, one image per call, median of interleaved runs):
    plain   the tutorial loop: `model.eval()`, `torch.no_grad()`, float32 `model(x)`, NCHW.
    seglab  the Predictor on a checkpoint (precision "auto" = the training's, bf16 here), and on
            its exports: ONNX Runtime float32 and int8 (`seglab export --quantize int8`, calibrated
            and Dice-checked on the run); `--compile` adds the Predictor under torch.compile.
            U-Net-16 is trained for `--train-seconds` first so the int8 check means something;
            U-Net-64 keeps random weights (speed only, parity n/a).
Start-up: `benchmarks/startup.py`'s measurements (fresh interpreters).

The lines at the end:
    RATIO train_step <model> <x>      seglab (defaults) / reference images/s
    RATIO inference <model> <x>       plain fp32 loop seconds / the fastest seglab path that passes parity
    RATIO startup <name> <x>          as benchmarks/startup.py prints them
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from train_throughput import (  # noqa: E402
    REFERENCE_CLIP,
    REFERENCE_LR,
    REFERENCE_MOMENTUM,
    REFERENCE_WEIGHT_DECAY,
    FirstBatches,
    NumpySegmentationDataset,
    dice_coeff,
    synthetic_pairs,
    write_data_folder,
)

import seglab
from bench_common import device_name  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from seglab.engine.history import EpochTally
from seglab.engine.recipe import Recipe
from seglab.engine.trainer import Trainer
from seglab.models import build_model
from seglab.runtime.device import native_cpu_bf16

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "data" / "isbi2012"
MODELS = {  # name: (model, options, crop side, batch)
    "unet16": ("unet", {"base_channels": 16, "depth": 4}, 256, 4),
    "unet64": ("unet", {"base_channels": 64, "depth": 4}, 512, 1),
    "smp-fpn-r34": ("smp-fpn", {"encoder": "resnet34"}, 256, 4),
}
QUIET = lambda *args, **kwargs: None  # noqa: E731


# ---- training step ----------------------------------------------------------------------------------
def seglab_rate(folder: Path, run_dir: Path, model: str, options: dict, crop: int, batch: int, iters: int,
                **train) -> tuple[float, Trainer]:
    """Images/s of Trainer._train_epoch over `iters` steps after two warm-up steps; the Trainer's log."""
    config = RunConfig(data=DataConfig(root=str(folder), validation=0.0, crop=[crop, crop]),
                       model=ModelConfig(model, options),
                       train=TrainConfig(epochs=1, batch_size=batch, augment="paper", device="cpu", seed=0,
                                         **train),
                       out=str(run_dir))
    notes: list[str] = []
    trainer = Trainer(Recipe.from_data(config), progress=False, log=notes.append)
    source = trainer.train_batches
    trainer.train_batches = FirstBatches(source, 2)  # warm-up (and, compiled, the compilation)
    trainer._train_epoch(0)
    trainer.train_batches, trainer.tally = FirstBatches(source, iters), EpochTally()
    started = time.perf_counter()
    trainer._train_epoch(1)
    rate = trainer.tally.images / (time.perf_counter() - started)
    described = {"precision": str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else "fp32",
                 "channels_last": trainer.channels_last, "compile_seconds": trainer.compile_seconds}
    trainer.close()
    torch.compiler.reset()
    return rate, described


def reference_rate(network: nn.Module, images: np.ndarray, masks: np.ndarray, crop: int, batch: int,
                   iters: int) -> float:
    """Images/s of the Pytorch-UNet training loop (float32, NCHW) on `crop` x `crop` crops."""
    optimizer = torch.optim.RMSprop(network.parameters(), lr=REFERENCE_LR, weight_decay=REFERENCE_WEIGHT_DECAY,
                                    momentum=REFERENCE_MOMENTUM, foreach=True)
    criterion = nn.BCEWithLogitsLoss()
    loader = DataLoader(NumpySegmentationDataset(images[:, :crop, :crop], masks[:, :crop, :crop]), batch_size=batch,
                        shuffle=True, drop_last=True)
    network.train()
    batches = iter(loader)

    def step() -> None:
        items = next(batches)
        prediction = network(items["image"])
        truth = items["mask"].float()
        loss = criterion(prediction.squeeze(1), truth) + (1 - dice_coeff(F.sigmoid(prediction.squeeze(1)), truth))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), REFERENCE_CLIP)
        optimizer.step()
        loss.item()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - started)


def training_steps(names: list[str], args, workdir: Path) -> dict[str, float]:
    print("\n== training step (images/s) ==")
    count = 64
    images, masks = synthetic_pairs(count, 512)
    folder = write_data_folder(workdir / "train-data", images, masks)
    ratios = {}
    for name in names:
        model, options, crop, batch = MODELS[name]
        iters = max(2, args.iters // batch) if crop >= 512 else args.iters
        reference = reference_rate(build_model(model, in_channels=1, num_classes=1, **options), images, masks, crop,
                                   batch, iters)
        before, _ = seglab_rate(folder, workdir / f"{name}-fp32", model, options, crop, batch, iters,
                                precision="fp32", channels_last=False)
        now, described = seglab_rate(folder, workdir / f"{name}-auto", model, options, crop, batch, iters)
        print(f"{name} ({crop}x{crop}, batch {batch}): reference {reference:.2f}, seglab fp32 NCHW {before:.2f} "
              f"({before / reference:.2f}x), seglab defaults [{described['precision']}, "
              f"{'channels-last' if described['channels_last'] else 'NCHW'}] {now:.2f} ({now / reference:.2f}x)")
        if args.compile and name == "unet16":
            compiled, described = seglab_rate(folder, workdir / f"{name}-compiled", model, options, crop, batch,
                                              iters, compile=True)
            print(f"{name} + torch.compile: {compiled:.2f} ({compiled / reference:.2f}x), compiled in "
                  f"{described['compile_seconds']:.1f} s (not counted)")
        ratios[name] = now / reference
    return ratios


# ---- inference ------------------------------------------------------------------------------------------
def trained_unet16(workdir: Path, seconds: float) -> Path:
    """best.pt of a U-Net-16 trained on the bundled ISBI slices for `seconds` (defaults: bf16 here)."""
    run = seglab.train(ISBI, out=workdir / "unet16-run", base_channels=16, crop=[256, 256], time_budget=seconds,
                       epochs=10_000, val_files=["25", "26", "27", "28", "29"], device="cpu", progress=False,
                       log=QUIET)
    return run.best_checkpoint


def random_checkpoint(workdir: Path, options: dict) -> Path:
    from seglab.data.classmap import ClassMap
    from seglab.runtime.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    network = build_model("unet", in_channels=1, num_classes=1, **options)
    payload = make_checkpoint(network, "unet", {"in_channels": 1, "num_classes": 1, **options},
                              ClassMap.from_values([0, 255]),
                              {"channels": 1, "scale": 1.0, "normalization": "per_image", "threshold": 0.5,
                               "precision": "bf16"})
    folder = workdir / f"unet{options['base_channels']}-random"
    folder.mkdir()
    return save_checkpoint(payload, folder / "best.pt")


def interleaved(calls: dict, iters: int) -> dict[str, float]:
    """Median seconds of each call, timed in turns so a load change hits every contender alike."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def inference(names: list[str], args, workdir: Path) -> dict[str, float]:
    from PIL import Image

    print("\n== inference, one 512x512 ISBI slice per call (ms) ==")
    image = np.asarray(Image.open(ISBI / "test" / "images" / "00.png"))
    ratios = {}
    for name in names:
        if args.quick:
            checkpoint = random_checkpoint(workdir, {"base_channels": 16, "depth": 4})
        elif name == "unet16":
            checkpoint = args.checkpoint or trained_unet16(workdir, args.train_seconds)
        else:
            checkpoint = random_checkpoint(workdir, MODELS[name][1])
        pytorch = seglab.load(checkpoint, device="cpu", runtime="pytorch", log=QUIET)
        network = build_model("unet", in_channels=1, num_classes=1, **MODELS[name][1]).eval()
        network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
        pixels = torch.from_numpy(image.astype(np.float32) / 255)[None, None]
        pixels = (pixels - pixels.mean()) / pixels.std()

        def plain() -> None:
            with torch.no_grad():
                torch.sigmoid(network(pixels))

        calls = {"plain fp32 loop": plain, pytorch.runtime: lambda: pytorch.predict(image)}
        notes = {}
        seglab.export(checkpoint, "onnx", checkpoint.with_suffix(".onnx"))
        calls["onnxruntime fp32"] = (lambda m: lambda: m.predict(image))(seglab.load(checkpoint.with_suffix(".onnx")))
        if not args.quick:
            trained = name == "unet16"
            report = seglab.export(checkpoint, quantize="int8", max_dice_drop=0.01 if trained else 0.999,
                                   calibration_images=None if trained else [image])
            parity = report["quantization"]["parity"]
            notes["onnxruntime int8"] = (f"Dice {parity['dice_int8']:.4f} vs {parity['dice_float']:.4f}, masks "
                                         f"agree {100 * parity['mask_agreement']:.2f}%" if trained
                                         else "untrained: speed only")
            int8 = seglab.load(report["path"])
            calls["onnxruntime int8"] = lambda: int8.predict(image)
        if args.compile:
            compiled = seglab.load(checkpoint, device="cpu", compile=True, log=QUIET)
            started = time.perf_counter()
            compiled.predict(image)  # the compilation, for this image size
            notes[compiled.runtime] = f"compiled in {time.perf_counter() - started:.1f} s (not counted)"
            calls[compiled.runtime] = lambda: compiled.predict(image)
        seconds = interleaved(calls, args.iters)
        base = seconds["plain fp32 loop"]
        print(f"{name}:")
        for path, value in seconds.items():
            print(f"  {path:48s} {1e3 * value:8.1f} ms  {base / value:5.2f}x  {notes.get(path, '')}")
        chosen = seglab.load(checkpoint, device="cpu", log=QUIET)
        print(f"  seglab.load(best.pt) on this CPU runs: {chosen.runtime}")
        ratios[name] = base / min(value for path, value in seconds.items() if path != "plain fp32 loop")
    return ratios


def startup(args) -> list[str]:
    print("\n== start-up ==")
    runs = ["--runs", "2"] if args.quick else ["--runs", "5"]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "startup.py"), *runs], capture_output=True,
                          text=True, check=True)
    print(done.stdout.rstrip())
    return [line for line in done.stdout.splitlines() if line.startswith("RATIO")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="U-Net-16 only, few steps: under two minutes")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile: U-Net-16 training, "
                        "inference of each model")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per training measurement")
    parser.add_argument("--train-seconds", type=float, default=90.0, help="training of the U-Net-16 for inference")
    parser.add_argument("--checkpoint", type=Path, help="a trained U-Net-16 checkpoint instead of training one")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--only", choices=("train", "inference", "startup"), help="run one part")
    args = parser.parse_args()
    args.iters = args.iters or (3 if args.quick else 8)
    names = ["unet16"] if args.quick else list(MODELS)
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}; "
          f"native bf16: {native_cpu_bf16() or 'none'}")
    with tempfile.TemporaryDirectory(prefix="seglab-cpu-speed-") as folder:
        workdir = Path(folder)
        train = training_steps(names, args, workdir) if args.only in (None, "train") else {}
        infer = (inference([n for n in names if n.startswith("unet")], args, workdir)
                 if args.only in (None, "inference") else {})
    lines = [f"RATIO train_step {name} {value:.2f}" for name, value in train.items()]
    lines += [f"RATIO inference {name} {value:.2f}" for name, value in infer.items()]
    lines += startup(args) if args.only in (None, "startup") else []
    print()
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"train_step": train, "inference": infer, "lines": lines}, indent=1))


if __name__ == "__main__":
    main()
