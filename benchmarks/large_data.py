"""What a large folder costs `seglab train` outside its training: wall seconds and peak memory of the
command against its time budget, for N ISBI-sized pairs, with the bundled 30 pairs as the reference.

    python benchmarks/large_data.py --count 3000 30000 --budget 20

The folder holds N image/mask pairs hard-linked from the bundled ISBI slices (distinct files, one
copy of the bytes on disk); each is decoded as any file would be. Overhead = wall seconds of the
command - the seconds of training it logged (metrics.jsonl's last `time`); memory = the command's
peak resident set (ru_maxrss). Prints a RATIO line per size against the 30-pair folder measured in
the same run, and names the device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "data" / "isbi2012" / "train"


def make_folder(folder: Path, count: int) -> Path:
    """folder/images and folder/masks holding `count` pairs linked from the 30 bundled ones."""
    sources = sorted((ISBI / "images").iterdir())
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source = sources[index % len(sources)]
        for kind in ("images", "masks"):
            target = folder / kind / f"{index:06d}.png"
            if not target.exists():
                try:
                    os.link(ISBI / kind / source.name, target)
                except OSError:
                    shutil.copyfile(ISBI / kind / source.name, target)
    return folder


def measure(folder: Path, budget: float, out: Path, device: str) -> dict:
    """Wall seconds, training seconds and peak memory of one `seglab train` of `folder`."""
    shutil.rmtree(out, ignore_errors=True)  # a run of an earlier measurement
    command = [sys.executable, "-m", "seglab", "train", str(folder), "--time-budget", str(budget), "--out", str(out),
               "--device", device, "--no-progress"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"seglab train failed on {folder}:\n{output[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = rows[-1]["time"] if rows else 0.0
    return {"wall_s": round(wall, 1), "trained_s": round(trained, 1), "overhead_s": round(wall - trained, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[3000])
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", type=Path, help="make the folders here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="seglab-large-"))
    print(f"device: {args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
          f"budget {args.budget:g} s")
    try:
        reference = measure(make_folder(root / "n30", 30), args.budget, root / "run-30", args.device)
        print(f"     30 pairs: {json.dumps({k: v for k, v in reference.items() if k != 'output'})}")
        for count in args.count:
            started = time.perf_counter()
            folder = make_folder(root / f"n{count}", count)
            made = time.perf_counter() - started
            result = measure(folder, args.budget, root / f"run-{count}", args.device)
            print(f"{count:7d} pairs: {json.dumps({k: v for k, v in result.items() if k != 'output'})} "
                  f"(folder made in {made:.0f} s)")
            print(f"RATIO overhead_{count}_vs_30 {result['overhead_s'] / max(reference['overhead_s'], 0.1):.2f}")
            print(f"RATIO memory_{count}_vs_30 {result['peak_rss_mb'] / max(reference['peak_rss_mb'], 1):.2f}")
            for line in result["output"].splitlines():
                if line.startswith(("plan", "run ", "  ", "note", "data", "validation")):
                    print(f"    | {line}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
