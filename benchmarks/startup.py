"""Start-up times of the `seglab` command and `import seglab`, against `import torch` measured in the same run.

    python benchmarks/startup.py [--runs 7] [--checkpoint runs/x/best.pt] [--image data/isbi2012/test/images/00.png]

Every command runs in a fresh interpreter (`--runs` times, after one warm-up; the median is shown), as a
user starts it: `seglab --version`, `seglab -h`, `seglab train -h`, `seglab predict -h`, `seglab check`
on the bundled ISBI slices, `python -c "import seglab"`, and one-image `seglab predict` with
`--checkpoint` (a tiny U-Net is trained into a temporary folder when none is given).

The reference of the prediction is what it cannot avoid: `python -c "import torch"` (a fresh
interpreter) plus, in one process whose imports are done, loading the checkpoint, building its model,
reading the image and one forward pass. Lines at the end:

    RATIO startup version_vs_import_torch <x>     (seglab --version / python -c "import torch")
    RATIO startup predict_vs_reference <x>        (one-image seglab predict / the reference; target <= 1.5)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "data" / "isbi2012"
SEGLAB = [sys.executable, "-m", "seglab"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Loads the checkpoint, builds the model, reads the image and predicts once, in a process whose
# imports are done: the part of a prediction that is not start-up. Prints its seconds.
LOAD_AND_FORWARD = """
import sys, time
import numpy as np, torch
from PIL import Image
from seglab.models.registry import build_model
torch.set_num_threads(1)
start = time.perf_counter()
payload = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
model = build_model(payload["model"]["name"], **payload["model"]["kwargs"])
model.load_state_dict(payload["state_dict"])
model.eval()
image = torch.from_numpy(np.asarray(Image.open(sys.argv[2]), dtype=np.float32) / 255.0)[None, None]
image = (image - image.mean()) / image.std()
with torch.inference_mode():
    torch.sigmoid(model(image))
print(time.perf_counter() - start)
"""


def wall(command: list[str], runs: int) -> float:
    """Median wall-clock seconds of `command` in a fresh process, after one warm-up run."""
    times = []
    for index in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(command, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if index:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_and_forward(checkpoint: Path, image: Path, runs: int) -> float:
    """Median seconds of LOAD_AND_FORWARD's timed part."""
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", LOAD_AND_FORWARD, str(checkpoint), str(image)], env=ENV,
                              check=True, capture_output=True, text=True)
        times.append(float(done.stdout.split()[-1]))
    return statistics.median(times)


def tiny_checkpoint(folder: Path) -> Path:
    """A U-Net-16 trained for one epoch on 128-pixel crops: speed does not depend on how well it learnt."""
    subprocess.run([*SEGLAB, "train", str(ISBI), "--base-channels", "16", "--crop", "128", "--epochs", "1",
                    "--device", "cpu", "--no-progress", "--out", str(folder / "run")],
                   env=ENV, check=True, stdout=subprocess.DEVNULL)
    return folder / "run" / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (median)")
    parser.add_argument("--checkpoint", type=Path, help="model of the one-image prediction (default: a tiny U-Net)")
    parser.add_argument("--image", type=Path, default=ISBI / "test" / "images" / "00.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or tiny_checkpoint(folder)
        commands = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "python -c 'import seglab'": [sys.executable, "-c", "import seglab"],
            "seglab --version": [*SEGLAB, "--version"],
            "seglab -h": [*SEGLAB, "-h"],
            "seglab train -h": [*SEGLAB, "train", "-h"],
            "seglab predict -h": [*SEGLAB, "predict", "-h"],
            "seglab check data/isbi2012": [*SEGLAB, "check", str(ISBI)],
            "seglab predict (one image)": [*SEGLAB, "predict", "-m", str(checkpoint), "-i", str(args.image),
                                           "-o", str(folder / "mask.png"), "--device", "cpu", "--overwrite"],
        }
        seconds = {name: wall(command, args.runs) for name, command in commands.items()}
        forward = load_and_forward(checkpoint, args.image, args.runs)
    for name, value in seconds.items():
        print(f"{name:<34} {value:6.3f} s")
    torch_import = seconds["python -c 'import torch'"]
    reference = torch_import + forward
    print(f"{'reference: import torch + load + forward':<34} {reference:6.3f} s "
          f"(load + forward {forward:.3f} s)")
    print(f"RATIO startup version_vs_import_torch {seconds['seglab --version'] / torch_import:.3f}")
    print(f"RATIO startup predict_vs_reference {seconds['seglab predict (one image)'] / reference:.3f}")


if __name__ == "__main__":
    main()
