"""Training throughput: seglab's real training step against the textbook Pytorch-UNet loop, with MFU.

    python benchmarks/train_throughput.py [--device auto] [--base-channels 64] [--size 512]
                                          [--batches 1,8] [--iters 20] [--warmup 5] [--compile]
    # a small CPU run:
    python benchmarks/train_throughput.py --device cpu --base-channels 16 --size 256 --batches 1,4 \
        --iters 3 --warmup 1

One U-Net (depth 4, `--base-channels`, transposed up-convolutions, BatchNorm, 1 input channel,
1 output for binary masks) on synthetic `--size` x `--size` grayscale images, in one run, for each
batch size in `--batches`:

(a) seglab: a real `seglab.engine.trainer.Trainer` built from a RunConfig on a data folder written
    to a temporary directory (images/ + masks/ PNGs, masks {0, 255}), and its `_train_epoch` timed
    per image. It runs exactly what `seglab train` runs: training set resident on the device,
    BatchAugmenter("light"), channels_last on CUDA, bf16 autocast on CUDA (fp16 + GradScaler on GPUs
    without bf16; `--amp`), fp32 on the CPU, AdamW (fused on CUDA), SegmentationLoss("bce+dice"),
    the non-finite-loss check, the loss tally and the per-step learning-rate schedule.
(b) the reference: the loop of milesial/Pytorch-UNet's train.py: the same U-Net layers, batches from
    a torch DataLoader over a Dataset of numpy arrays (2 workers and pinned memory on CUDA, 0 on the
    CPU), fp16 autocast + GradScaler + channels_last on CUDA (fp32 on the CPU), RMSprop(lr=1e-5,
    weight_decay=1e-8, momentum=0.999, foreach), BCEWithLogits + Dice every step, unscale + clip the
    gradient norm to 1, `loss.item()` every step, cudnn.benchmark left at PyTorch's default (off).

Printed: images/s of each, the ratio (a)/(b), peak memory (torch.cuda.max_memory_allocated on
CUDA; growth of the peak resident set on the CPU), FLOPs per image (forward + backward of one image
under torch.utils.flop_counter.FlopCounterMode: convolutions and matmuls, which is what MFU counts)
and MFU = achieved FLOP/s / peak FLOP/s, the peak measured in the same run with large matmuls in the
precision (a) computes in (bf16 on CUDA, fp32 on the CPU). `--compile` torch.compiles the model in
both loops (seglab through its own `compile` setting).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from bench_common import device_name, synchronize  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from seglab.data.loaders import ResidentBatches
from seglab.engine.history import EpochTally
from seglab.engine.recipe import Recipe
from seglab.engine.trainer import Trainer
from seglab.models import UNet
from seglab.runtime.device import resolve_device, resolve_precision

DEPTH = 4
REFERENCE_WORKERS_CUDA = 2
# milesial/Pytorch-UNet train.py defaults.
REFERENCE_LR, REFERENCE_WEIGHT_DECAY, REFERENCE_MOMENTUM, REFERENCE_CLIP = 1e-5, 1e-8, 0.999, 1.0
PEAK_MATMUL_SIDE = {"cuda": 8192, "cpu": 2048}


# ---- device helpers ---------------------------------------------------------------------------
def free_everything(device: torch.device) -> None:
    torch.compiler.reset()  # compiled graphs hold the model: drop them so the next measurement starts empty
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of the steps run between `start()` and `stop()`, in bytes.

    CUDA: torch.cuda.max_memory_allocated after a reset (model, optimizer state and device-resident
    data included). CPU: growth of the process's peak resident set above its size at `start()`.
    ru_maxrss never goes down, so a second measurement would hide below the first one's peak; where
    Linux allows it, the high-water mark is reset first (/proc/self/clear_refs "5") and read back as
    VmHWM, which is the number ru_maxrss reports.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0
        self.reset_ok = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _return_freed_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
            self.baseline = _proc_status_kib("VmRSS") * 1024
        except OSError:
            self.reset_ok = False
            self.baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.reset_ok:
            return max(0, _proc_status_kib("VmHWM") * 1024 - self.baseline)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline)


def _return_freed_heap() -> None:
    """Give memory freed by an earlier measurement back to the OS (glibc), so the next one's growth
    is not hidden by reusing it. Best effort: a no-op where libc has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def measure_peak_flops(device: torch.device, dtype: torch.dtype, rounds: int = 3) -> float:
    """FLOP/s of back-to-back square matmuls in `dtype`: the practical peak MFU is measured against.

    The fastest of `rounds` rounds counts: a peak should not include a neighbour's load on shared cores.
    """
    side = PEAK_MATMUL_SIDE[device.type]
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    repeats = 50 if device.type == "cuda" else 3
    for _ in range(3 if device.type == "cuda" else 1):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * side**3 * repeats / best


def flops_per_image(base_channels: int, size: int) -> int:
    """Convolution/matmul FLOPs of one training image's forward + backward (shape-only, on 'meta')."""
    with torch.device("meta"):
        model = UNet(1, 1, base_channels, depth=DEPTH)
        image = torch.empty(1, 1, size, size)
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(image).sum().backward()
    return counter.get_total_flops()


# ---- synthetic data ---------------------------------------------------------------------------
def synthetic_pairs(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """images (count, size, size) uint8 and masks (count, size, size) uint8 in {0, 255}: blobs + noise.

    The content does not change the speed; it only has to be a valid binary segmentation set.
    """
    rng = np.random.default_rng(seed)
    cells = max(1, size // 32)
    coarse = rng.random((count, cells, cells)) > 0.5
    masks = np.kron(coarse, np.ones((1, -(-size // cells), -(-size // cells)), dtype=bool))[:, :size, :size]
    noise = rng.integers(0, 60, (count, size, size))
    images = (masks * 150 + 40 + noise).clip(0, 255).astype(np.uint8)
    return images, (masks * 255).astype(np.uint8)


def write_data_folder(root: Path, images: np.ndarray, masks: np.ndarray) -> Path:
    """root/images/NNNN.png + root/masks/NNNN.png, the layout `seglab train root` reads."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(image).save(root / "images" / f"{index:04d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{index:04d}.png")
    return root


# ---- (a) seglab -------------------------------------------------------------------------------
class FirstBatches:
    """The first `count` batches of a batch source (ResidentBatches or LoaderBatches), so warm-up
    steps run through the same `_train_epoch` as the timed ones."""

    def __init__(self, source, count: int):
        self.source, self.count = source, count

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return min(self.count, len(self.source))

    def __iter__(self):
        return itertools.islice(iter(self.source), len(self))


def time_seglab(folder: Path, run_dir: Path, batch: int, args, device: torch.device) -> dict:
    """Seconds per image of Trainer._train_epoch over `batch * args.iters` images, and its peak memory.

    Why the Trainer itself rather than a loop rebuilt from seglab's pieces: the step's cost lives
    as much in the Trainer's own code (non-finite check, loss tally, schedule, augmentation call,
    resident-batch indexing, channels_last conversion) as in the model, and a copy would drift from
    it. `_train_epoch` is the whole step loop with nothing else (validation and checkpoints live in
    fit()). The progress bar is off: it writes to the terminal, not the device.
    """
    config = RunConfig(
        data=DataConfig(root=str(folder), validation=0.0),
        model=ModelConfig("unet", {"base_channels": args.base_channels, "depth": DEPTH}),
        # "auto" is bce+dice for binary masks (checked below).
        train=TrainConfig(epochs=1, batch_size=batch, optimizer="adamw", loss="auto", augment="light",
                          amp=device.type == "cuda", compile=args.compile, device=str(device), seed=0),
        out=str(run_dir))
    messages: list[str] = []
    trainer = Trainer(Recipe.from_data(config), progress=False, log=messages.append)
    loss = trainer.loss_fn
    assert loss.num_outputs == 1 and list(loss.terms) == ["ce", "dice"], "expected SegmentationLoss bce+dice"
    source = trainer.train_batches
    resident = isinstance(source, ResidentBatches)
    resident_bytes = (source.images.numel() * source.images.element_size()
                      + source.masks.numel() * source.masks.element_size()) if resident else 0
    memory = PeakMemory(device)
    memory.start()
    if args.warmup:
        trainer.train_batches = FirstBatches(source, args.warmup)
        trainer._train_epoch(0)
        trainer.train_batches = source
    trainer.tally = EpochTally()
    synchronize(device)
    started = time.perf_counter()
    trainer._train_epoch(1)
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = memory.stop()
    images = trainer.tally.images
    assert images == batch * args.iters, f"timed {images} images, expected {batch * args.iters}"
    result = {"seconds_per_image": seconds / images, "peak_bytes": peak, "resident": resident,
              "resident_bytes": resident_bytes, "precision": _precision_name(trainer),
              "channels_last": trainer.channels_last, "cudnn_benchmark": torch.backends.cudnn.benchmark}
    trainer.close()  # the run folder's lock, the process group, cuDNN and RNG state as they were
    del trainer, source, loss
    free_everything(device)
    return result


def _precision_name(trainer: Trainer) -> str:
    dtype = resolve_precision(trainer.config.train.precision, trainer.config.train.amp, trainer.device)
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return name + (" + GradScaler" if trainer.scaler.is_enabled() else "")


# ---- (b) the reference loop -------------------------------------------------------------------
class NumpySegmentationDataset(Dataset):
    """Pytorch-UNet's BasicDataset without the file reading: uint8 arrays scaled to [0, 1] per item."""

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index][None].astype(np.float32) / 255.0  # (1, H, W)
        mask = (self.masks[index] > 0).astype(np.int64)  # (H, W)
        return {"image": torch.as_tensor(image.copy()).float().contiguous(),
                "mask": torch.as_tensor(mask.copy()).long().contiguous()}


def dice_coeff(input: torch.Tensor, target: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Pytorch-UNet's utils/dice_score.py with reduce_batch_first=True: input, target (N, H, W)."""
    sum_dim = (-1, -2, -3)
    inter = 2 * (input * target).sum(dim=sum_dim)
    sets_sum = input.sum(dim=sum_dim) + target.sum(dim=sum_dim)
    sets_sum = torch.where(sets_sum == 0, inter, sets_sum)
    return ((inter + epsilon) / (sets_sum + epsilon)).mean()


def time_reference(images: np.ndarray, masks: np.ndarray, batch: int, args, device: torch.device) -> dict:
    """Seconds per image of the Pytorch-UNet training loop over `args.iters` batches, and its peak memory."""
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = False  # PyTorch's default; the Trainer turned it on for (a)
    torch.manual_seed(0)
    model = UNet(1, 1, args.base_channels, depth=DEPTH, up="transpose", batch_norm=True)
    model = model.to(device=device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.RMSprop(model.parameters(), lr=REFERENCE_LR, weight_decay=REFERENCE_WEIGHT_DECAY,
                                    momentum=REFERENCE_MOMENTUM, foreach=True)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    criterion = nn.BCEWithLogitsLoss()
    count = batch * (args.warmup + args.iters)
    loader = DataLoader(NumpySegmentationDataset(images[:count], masks[:count]), batch_size=batch, shuffle=True,
                        num_workers=REFERENCE_WORKERS_CUDA if cuda else 0, pin_memory=cuda, drop_last=True)
    autocast = torch.autocast(device.type, dtype=torch.float16) if cuda else nullcontext()
    layout = torch.channels_last if cuda else torch.contiguous_format

    def step(batch_items: dict) -> float:
        images = batch_items["image"].to(device=device, dtype=torch.float32, memory_format=layout)
        true_masks = batch_items["mask"].to(device=device, dtype=torch.long)
        with autocast:
            masks_pred = step_model(images)
            loss = criterion(masks_pred.squeeze(1), true_masks.float())
            loss = loss + (1 - dice_coeff(F.sigmoid(masks_pred.squeeze(1)), true_masks.float()))
        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), REFERENCE_CLIP)
        grad_scaler.step(optimizer)
        grad_scaler.update()
        return loss.item()

    model.train()
    memory = PeakMemory(device)
    memory.start()
    batches = iter(loader)
    for _ in range(args.warmup):  # also absorbs the workers' start-up
        step(next(batches))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.iters):
        step(next(batches))
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = memory.stop()
    step = batches = loader = optimizer = step_model = model = None  # freed before the memory is emptied
    free_everything(device)
    return {"seconds_per_image": seconds / (batch * args.iters), "peak_bytes": peak,
            "precision": "fp16 + GradScaler" if cuda else "fp32"}


# ---- report -----------------------------------------------------------------------------------
def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--batches {text!r}: give comma-separated batch sizes, e.g. 1,8") from None
    if not batches or min(batches) < 1:
        raise SystemExit(f"--batches {text!r}: give positive batch sizes, e.g. 1,8")
    return batches


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net width of the first level")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (>= 1 with --compile)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    batches = parse_batches(args.batches)
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    amp_dtype = resolve_precision(None, device.type == "cuda", device)
    peak_dtype = amp_dtype or torch.float32
    side = PEAK_MATMUL_SIDE[device.type]
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print(f"model: UNet(in_channels=1, num_classes=1, base_channels={args.base_channels}, depth={DEPTH}, "
          f"up='transpose', batch_norm=True), {args.size}x{args.size} images; "
          f"{args.warmup} warm-up + {args.iters} timed steps per batch size"
          + (", torch.compile" if args.compile else ""))
    peak_flops = measure_peak_flops(device, peak_dtype)
    flops = flops_per_image(args.base_channels, args.size)
    print(f"peak: {peak_flops / 1e12:.3f} TFLOP/s ({str(peak_dtype).removeprefix('torch.')} "
          f"{side}x{side} matmul, measured now)")
    print(f"FLOPs per image (forward + backward, FlopCounterMode): {flops / 1e9:.2f} GFLOP")

    count = max(batches) * (args.warmup + args.iters)
    images, masks = synthetic_pairs(count, args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="seglab-throughput-") as tmp:
        for batch in batches:
            folder = write_data_folder(Path(tmp) / f"data-b{batch}", images[:batch * args.iters],
                                       masks[:batch * args.iters])
            seglab = time_seglab(folder, Path(tmp) / f"run-b{batch}", batch, args, device)
            reference = time_reference(images, masks, batch, args, device)
            rows.append((batch, seglab, reference))

    first = rows[0][1]
    print(f"(a) seglab Trainer._train_epoch: {first['precision']}, AdamW{' (fused)' if device.type == 'cuda' else ''}, "
          f"bce+dice, augment 'light', data {'resident on ' + device.type if first['resident'] else 'via DataLoader'}, "
          f"channels_last {'on' if first['channels_last'] else 'off'}"
          + (f", cudnn.benchmark {'on' if first['cudnn_benchmark'] else 'off'}" if device.type == "cuda" else ""))
    workers = REFERENCE_WORKERS_CUDA if device.type == "cuda" else 0
    print(f"(b) Pytorch-UNet loop: {rows[0][2]['precision']}, RMSprop (foreach), BCEWithLogits + Dice, "
          f"clip_grad_norm 1.0, no augmentation, DataLoader over numpy ({workers} workers), "
          f"channels_last {'on' if device.type == 'cuda' else 'off'}"
          + (", cudnn.benchmark off" if device.type == "cuda" else "") + ", loss.item() per step")
    memory_kind = "max_memory_allocated" if device.type == "cuda" else "peak RSS growth"
    print(f"memory: {memory_kind}" + ("; (a) includes the resident training set" if device.type == "cuda" else ""))
    header = (f"{'batch':>5}  {'(a) img/s':>10}  {'(b) img/s':>10}  {'(a)/(b)':>7}  {'(a) MFU':>7}  "
              f"{'(b) MFU':>7}  {'(a) ms/step':>11}  {'(b) ms/step':>11}  {'(a) memory':>12}  {'(b) memory':>12}")
    print(header)
    for batch, seglab, reference in rows:
        rate_a, rate_b = 1 / seglab["seconds_per_image"], 1 / reference["seconds_per_image"]
        mfu_a, mfu_b = rate_a * flops / peak_flops, rate_b * flops / peak_flops
        print(f"{batch:>5}  {rate_a:>10.2f}  {rate_b:>10.2f}  {rate_a / rate_b:>6.2f}x  {100 * mfu_a:>6.1f}%  "
              f"{100 * mfu_b:>6.1f}%  {1e3 * batch / rate_a:>11.1f}  {1e3 * batch / rate_b:>11.1f}  "
              f"{mib(seglab['peak_bytes']):>12}  {mib(reference['peak_bytes']):>12}")
    if device.type == "cuda" and first["resident"]:
        print("resident training set of (a): " + ", ".join(f"batch {b}: {mib(s['resident_bytes'])}"
                                                           for b, s, _ in rows))


if __name__ == "__main__":
    main()
