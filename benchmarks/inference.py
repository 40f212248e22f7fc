"""Inference throughput and latency: seglab's fast path, tiling and ONNX Runtime against a plain loop.

    python benchmarks/inference.py [--device auto] [--base-channels 64] [--batch 16] [--mosaic 4096]
                                   [--iters 10] [--warmup 2]
    # a small CPU run:
    python benchmarks/inference.py --device cpu --base-channels 16 --batch 2 --mosaic 1024 --iters 3

One U-Net (depth 4, `--base-channels`, random He-initialised weights: speed does not depend on
training) and real ISBI 2012 slices, in one run:

(a) whole images, `--size` x `--size`, batches of `--batch`, images/s:
    seglab's fast path: eval, torch.inference_mode, full-size logits + sigmoid; on CUDA also
    channels_last and bf16 (fp16 where the GPU has no bf16) autocast, as `--amp` picks; fp32 on
    the CPU. Against the plain loop a tutorial writes: `model.eval()`, `torch.no_grad()`,
    fp32 `model(x)`, contiguous layout. Prints the ratio.
(b) overlap-tile prediction of a `--mosaic` x `--mosaic` mosaic of ISBI slices with
    `seglab.inference.tiling.predict_tiled` (`--tile`, `--overlap`, `--batch` tiles per forward)
    over the fast path: megapixels/s.
(c) CPU latency per `--size` image (batch 1, median of `--iters`): seglab PyTorch (`Predictor` on a
    normalised image), ONNX Runtime (the model exported with `seglab.inference.export.export_model` to a
    temporary folder; raw pixels in, normalisation inside the graph) and the plain loop
    (pre-normalised input), with the same number of threads.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_common import device_name, synchronize  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.data.classmap import ClassMap
from seglab.data.preprocess import normalize
from seglab.inference.predictor import Predictor
from seglab.inference.tiling import predict_tiled
from seglab.models import UNet
from seglab.models.outputs import full_size_logits, logits_to_probabilities
from seglab.runtime.checkpoint import make_checkpoint, save_checkpoint
from seglab.runtime.device import resolve_precision

ISBI = Path(__file__).resolve().parents[1] / "data" / "isbi2012"


def read_slices(count: int) -> np.ndarray:
    """(count, 512, 512) uint8 ISBI slices (test split, then train), repeated if fewer are bundled."""
    files = sorted((ISBI / "test" / "images").glob("*.png")) + sorted((ISBI / "train" / "images").glob("*.png"))
    if not files:
        raise SystemExit(f"no ISBI slices under {ISBI}: run from the seglab checkout")
    return np.stack([np.asarray(Image.open(files[i % len(files)])) for i in range(count)])


def fit_size(slices: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size): mirrored tiling of the slices when size exceeds them, else a crop."""
    reps = -(-size // slices.shape[1]), -(-size // slices.shape[2])
    return np.tile(slices, (1,) + reps)[:, :size, :size]


def mosaic(slices: np.ndarray, side: int) -> np.ndarray:
    """(side, side) uint8 mosaic of different slices, row-major, cropped at the far edges."""
    tile = slices.shape[1]
    per_row = -(-side // tile)
    rows = [np.concatenate([slices[(r * per_row + c) % len(slices)] for c in range(per_row)], axis=1)
            for r in range(per_row)]
    return np.concatenate(rows, axis=0)[:side, :side]


def prepared(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> normalised float32 (N, 1, H, W), as `prepare_image` does ("per_image")."""
    return normalize(torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None], "per_image")


def seglab_forward(model: torch.nn.Module, device: torch.device):
    """seglab's fast path as a tiling forward: (B, C, h, w) normalised -> probabilities (B, K, h, w)."""
    amp = resolve_precision(None, amp=True, device=device)  # bf16/fp16 on CUDA, None (fp32) on CPU
    channels_last = device.type == "cuda"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), (torch.autocast(device.type, dtype=amp) if amp else nullcontext()):
            return logits_to_probabilities(full_size_logits(model, batch).float())

    return forward, ("fp32" if amp is None else str(amp).replace("torch.", "")) + (
        ", channels_last" if channels_last else "")


def plain_forward(model: torch.nn.Module, device: torch.device):
    """The tutorial loop: eval, no_grad, fp32, contiguous."""
    model.to(device, memory_format=torch.contiguous_format).eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(batch.to(device))

    return forward


def interleaved_seconds(calls: dict, device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each named callable, timed in turns (a, b, a, b, ...) so that a
    load change on a shared machine hits every contender alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def build_model(base_channels: int, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(in_channels=1, num_classes=1, base_channels=base_channels, depth=4).eval()


def whole_images(args, device: torch.device, slices: np.ndarray) -> None:
    batch = prepared(fit_size(slices[:args.batch], args.size))  # (B, 1, size, size)
    fast, mode = seglab_forward(build_model(args.base_channels), device)
    plain = plain_forward(build_model(args.base_channels), device)
    seconds = interleaved_seconds({"fast": lambda: fast(batch), "plain": lambda: plain(batch)}, device,
                                  args.iters, args.warmup)
    fast_rate, plain_rate = args.batch / seconds["fast"], args.batch / seconds["plain"]
    print(f"(a) whole {args.size}x{args.size} images, batch {args.batch}:")
    print(f"    seglab fast path ({mode}, inference_mode): {fast_rate:9.2f} images/s")
    print(f"    plain fp32 model(x) loop (no_grad):        {plain_rate:9.2f} images/s")
    print(f"    ratio seglab / plain: {fast_rate / plain_rate:.2f}x")


def tiled(args, device: torch.device, slices: np.ndarray) -> None:
    image = prepared(mosaic(slices, args.mosaic)[None])[0]  # (1, mosaic, mosaic) on the CPU
    fast, mode = seglab_forward(build_model(args.base_channels), device)
    fast(image[None, :, :args.tile, :args.tile])  # warm-up (cuDNN algorithm choice)
    synchronize(device)
    started = time.perf_counter()
    probs = predict_tiled(fast, image, tile=args.tile, overlap=args.overlap, batch_size=args.batch, device=device)
    synchronize(device)
    seconds = time.perf_counter() - started
    megapixels = args.mosaic * args.mosaic / 1e6
    print(f"(b) tiled {args.mosaic}x{args.mosaic} mosaic, tiles {args.tile} overlap {args.overlap}, "
          f"{args.batch} tiles per forward ({mode}): {megapixels / seconds:.3f} megapixels/s "
          f"({seconds:.1f} s, output {tuple(probs.shape)})")


def cpu_latency(args, slices: np.ndarray) -> None:
    from seglab.inference.export import export_model
    from seglab.inference.exported import OnnxModel

    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    pixels = fit_size(slices[:1], args.size)  # (1, size, size) uint8
    image = prepared(pixels)  # (1, 1, size, size)
    model = build_model(args.base_channels)
    predictor = Predictor(model, ClassMap.from_values([0, 255]),
                          {"channels": 1, "scale": 1.0, "normalization": "per_image"}, cpu, log=lambda *_: None)
    plain = plain_forward(build_model(args.base_channels), cpu)
    raw = torch.from_numpy(pixels.astype(np.float32))[:, None]  # (1, 1, size, size) raw 0..255
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model.pt"
        save_checkpoint(make_checkpoint(model, "unet", {"in_channels": 1, "num_classes": 1, "depth": 4,
                                                        "base_channels": args.base_channels},
                                        ClassMap.from_values([0, 255]),
                                        {"channels": 1, "scale": 1.0, "normalization": "per_image",
                                         "threshold": 0.5}), checkpoint)
        started = time.perf_counter()
        report = export_model(checkpoint, "onnx", Path(folder) / "model.onnx",
                              parity_images=[slices[0][:300, :420], slices[1][:181, :97]])
        export_seconds = time.perf_counter() - started
        session = OnnxModel(report["path"], threads=threads)
        results = interleaved_seconds({
            "seglab PyTorch (Predictor)": lambda: predictor.probabilities(image[0]),
            "ONNX Runtime (raw pixels in)": lambda: session.forward(raw),
            "plain fp32 model(x) loop": lambda: plain(image),
        }, cpu, args.iters, args.warmup)
    print(f"(c) CPU latency per {args.size}x{args.size} image, batch 1, {threads} threads "
          f"[{device_name(cpu)}] (median of {args.iters}):")
    for name, seconds in results.items():
        print(f"    {name:30s} {seconds * 1e3:9.1f} ms")
    print(f"    (ONNX export with parity check: {export_seconds:.1f} s, max abs diff {report['max_abs_diff']:.2g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net width (64 = the paper's)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch in (a), tiles per forward in (b)")
    parser.add_argument("--size", type=int, default=512, help="whole-image side in (a) and (c)")
    parser.add_argument("--mosaic", type=int, default=4096, help="mosaic side in (b)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in (b)")
    parser.add_argument("--overlap", type=float, default=0.5, help="tile overlap in (b)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--threads", type=int, help="torch (and ONNX Runtime) CPU threads (default: torch's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"], help="parts to leave out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for both sides alike
    print(f"device: {device} [{device_name(device)}]; torch {torch.__version__}; "
          f"U-Net depth 4, {args.base_channels} base channels")
    slices = read_slices(max(args.batch, 16))
    if "a" not in args.skip:
        whole_images(args, device, slices)
    if "b" not in args.skip:
        tiled(args, device, slices)
    if "c" not in args.skip:
        cpu_latency(args, slices)


if __name__ == "__main__":
    main()
