"""Predicting a huge TIFF in bounded memory: `seglab predict` on a --size x --size grayscale image.

    python benchmarks/huge_tiff.py [--size 20000] [--device auto] [--base-channels 64] [--depth 4]
                                   [--tile 512] [--overlap 0.25] [--batch 8]
    # the CPU run recorded in BENCHMARKS.md (a small network: this measures memory, not accuracy):
    python benchmarks/huge_tiff.py --device cpu --base-channels 4 --depth 3

The input is a tiled uint8 TIFF (BigTIFF past 4 GiB) of real ISBI 2012 slices laid side by side,
written one row of tiles at a time, so this script never holds it whole. A U-Net checkpoint with
random weights (speed and memory do not depend on training) predicts it through the real CLI in a
child process:
`seglab predict -m CKPT -i huge.tif -o huge_mask.tif --tile T --overlap F --batch-size B --device D`.

Printed: wall time, megapixels/s, and the child's peak resident memory (ru_maxrss), next to the
peak of the same command on an image of half the side (a quarter of the pixels) and to what
whole-image prediction would hold at least (the image as uint8 plus its float32 probabilities).
On a GPU the device side is bounded the same way (a batch of tiles at a time); this script measures
the host side.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import device_name  # noqa: E402
from seglab.data.classmap import ClassMap  # noqa: E402
from seglab.data.io import read_image  # noqa: E402
from seglab.models.registry import build_model  # noqa: E402
from seglab.runtime.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402

ISBI = Path(__file__).resolve().parent.parent / "data" / "isbi2012" / "train" / "images"


def write_mosaic(path: Path, size: int, tile: int = 256) -> None:
    """A size x size uint8 TIFF in tile x tile tiles, of ISBI slices side by side, written one row of
    tiles at a time."""
    slices = [read_image(p)[..., 0] for p in sorted(ISBI.glob("*.png"))]
    side = slices[0].shape[0]
    columns = -(-size // side)

    def rows(y0: int, y1: int) -> np.ndarray:
        """Mosaic rows y0..y1 (y1 - y0, size)."""
        out = np.empty((y1 - y0, size), np.uint8)
        y = y0
        while y < y1:
            first = (y // side) * columns
            top, take = y % side, min(side - y % side, y1 - y)
            strip = np.concatenate([slices[(first + c) % len(slices)][top:top + take] for c in range(columns)], 1)
            out[y - y0:y - y0 + take] = strip[:, :size]
            y += take
        return out

    def tiles():
        padded = np.zeros((tile, -(-size // tile) * tile), np.uint8)
        for y0 in range(0, size, tile):
            band = rows(y0, min(y0 + tile, size))
            padded[:] = 0
            padded[:len(band), :size] = band
            yield from (padded[:, x0:x0 + tile] for x0 in range(0, size, tile))

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(tile, tile),
                     bigtiff=size * size > 2**32 - 2**25)


def predict(checkpoint: Path, image: Path, mask: Path, args, device: torch.device, show: bool = False) -> int:
    """Run `seglab predict` in a child process; returns the child's peak resident memory in bytes."""
    command = [sys.executable, "-m", "seglab", "predict", "-m", str(checkpoint), "-i", str(image),
               "-o", str(mask), "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--batch-size", str(args.batch), "--device", str(device)]
    if show:
        print("$ " + " ".join(command), flush=True)
    child = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                             stdout=None if show else subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"seglab predict failed with exit code {child.returncode}")
    return usage.ru_maxrss * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="write the input and the mask here instead of a temporary folder")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.size}x{args.size} uint8 TIFF; "
          f"U-Net base {args.base_channels}, depth {args.depth}; tile {args.tile}, overlap {args.overlap}, "
          f"batch {args.batch}", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        image, mask, checkpoint = folder / "huge.tif", folder / "huge_mask.tif", folder / "random.pt"
        started = time.perf_counter()
        write_mosaic(image, args.size)
        print(f"input written in {time.perf_counter() - started:.0f} s ({image.stat().st_size / 2**20:.0f} MiB)",
              flush=True)
        torch.manual_seed(0)
        kwargs = {"in_channels": 1, "num_classes": 1, "base_channels": args.base_channels, "depth": args.depth}
        save_checkpoint(make_checkpoint(build_model("unet", **kwargs), "unet", kwargs, ClassMap.from_values([0, 255]),
                                        {"channels": 1, "scale": 1.0, "normalization": "per_image",
                                         "threshold": 0.5}), checkpoint)
        # The same command on an image of half the side first (a quarter of the pixels): if memory
        # followed the image it would grow 4x from there; bands of tiles grow only with the width.
        half, half_mask = folder / "half.tif", folder / "half_mask.tif"
        write_mosaic(half, args.size // 2)
        baseline = predict(checkpoint, half, half_mask, args, device)
        half.unlink()
        half_mask.unlink()
        started = time.perf_counter()
        peak = predict(checkpoint, image, mask, args, device, show=True)
        seconds = time.perf_counter() - started
        whole = args.size * args.size * (1 + 4)  # the uint8 image and its float32 probabilities
        with tifffile.TiffFile(mask) as tif:
            page = tif.pages[0]
            shape, tiled = page.shape, page.is_tiled
            middle = page.asarray()[args.size // 2]
        assert shape == (args.size, args.size), shape
        print(f"mask {shape[1]}x{shape[0]} ({'tiled' if tiled else 'striped'}), "
              f"{mask.stat().st_size / 2**20:.0f} MiB; foreground share of the middle row {(middle > 0).mean():.2f}")
        print(f"prediction: {seconds:.0f} s, {args.size**2 / 1e6 / seconds:.2f} megapixels/s")
        print(f"peak resident memory of the predicting process: {peak / 2**20:.0f} MiB; at half the side "
              f"({args.size // 2}x{args.size // 2}) {baseline / 2**20:.0f} MiB; growth {peak / baseline:.2f}x for "
              f"4x the pixels")
        print(f"whole-image prediction would hold at least {whole / 2**20:.0f} MiB (uint8 image + float32 "
              f"probabilities); ratio peak / that {peak / whole:.3f}")


if __name__ == "__main__":
    main()
