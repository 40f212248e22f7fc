"""torch.compile against eager mode for seglab's training step, in interleaved rounds.

    python benchmarks/compile_step.py [--rounds 4] [--steps 12]

Two real Trainers of one config (U-Net-16, 256x256 crops of synthetic 512x512 images, batch 4,
"paper" augmentation, the machine's default precision and layout), one eager and one compiled,
each warmed up (the compiled one compiles there), then timed in alternating rounds of `--steps`
optimizer steps so that a change in the machine's load hits both alike. Prints images/s per round
and the medians; the last line is RATIO compile_step <compiled / eager>.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from train_throughput import FirstBatches, synthetic_pairs, write_data_folder

from bench_common import device_name  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from seglab.engine.history import EpochTally
from seglab.engine.recipe import Recipe
from seglab.engine.trainer import Trainer


def trainer(folder: Path, out: Path, compile_: bool) -> Trainer:
    config = RunConfig(data=DataConfig(root=str(folder), validation=0.0, crop=[256, 256]),
                       model=ModelConfig("unet", {"base_channels": 16, "depth": 4}),
                       train=TrainConfig(epochs=1, batch_size=4, augment="paper", device="cpu", seed=0,
                                         compile=compile_), out=str(out))
    return Trainer(Recipe.from_data(config), progress=False, log=lambda *args: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="seglab-compile-") as folder:
        workdir = Path(folder)
        images, masks = synthetic_pairs(64, 512)
        data = write_data_folder(workdir / "data", images, masks)
        sides = {}
        for name, compile_ in (("eager", False), ("compiled", True)):
            side = trainer(data, workdir / name, compile_)
            source = side.train_batches
            started = time.perf_counter()
            side.train_batches = FirstBatches(source, 3)
            side._train_epoch(0)  # warm-up; the compiled side compiles here
            print(f"{name}: warm-up {time.perf_counter() - started:.1f} s, compile {side.compile_seconds:.1f} s")
            sides[name] = (side, source)
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            for name, (side, source) in sides.items():
                side.train_batches, side.tally = FirstBatches(source, args.steps), EpochTally()
                started = time.perf_counter()
                side._train_epoch(1)
                rates[name].append(side.tally.images / (time.perf_counter() - started))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {v[-1]:.2f} images/s" for n, v in rates.items()),
                  flush=True)
        for side, _ in sides.values():
            side.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print("medians: " + ", ".join(f"{n} {v:.2f} images/s" for n, v in medians.items()))
    print(f"RATIO compile_step {medians['compiled'] / medians['eager']:.2f}")


if __name__ == "__main__":
    main()
