"""The CPU demo's recipe before and after issue 22: optimizer steps within one time budget, and scores.

    python benchmarks/demo_speed.py                 # 420 s each (the demo's budget): about 16 minutes
    python benchmarks/demo_speed.py --budget 120    # the steps ratio only, about 5 minutes

Both sides train `seglab demo`'s own config (`seglab.demo.demo_config`: U-Net-16, 256x256 crops,
batch 4, paper augmentation, AdamW, cosine to the budget, validation on slices 25-29 every 5
epochs) for the same seconds of training, in this process, one after the other:
    before  float32, NCHW: the CPU defaults before issue 22
    now     the defaults (precision auto: bf16 where native, and the layout rule: channels-last)
Each final model (last.pt, as the demo uses) is scored on 25-29 with flips TTA, as the demo does.
The last line: RATIO demo_steps <now steps / before steps>.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

import seglab
from bench_common import device_name  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.data.bundled import locate_isbi
from seglab.demo import demo_config

BEFORE = {"precision": "fp32", "channels_last": False}


def run(side: str, budget: float, workdir: Path) -> dict:
    config = demo_config(torch.device("cpu"), workdir / side, budget, locate_isbi())
    if side == "before":
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **BEFORE))
    started = time.perf_counter()
    result = seglab.train(config=config, progress=False, log=lambda *_: None)
    wall = time.perf_counter() - started
    model = seglab.load(result.last_checkpoint, device="cpu", tta="flips", log=lambda *_: None)
    scores = seglab.evaluate(model, result.validation_pairs)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {"steps": result.rows[-1]["step"], "epochs": len(result.rows), "wall_s": wall,
            "compile_s": summary.get("compile_seconds", 0.0), "pixel_error": scores.mean["pixel_error"],
            "membrane_dice": scores.mean["dice"]["membrane"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=420.0, help="seconds of training per side")
    args = parser.parse_args()
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}; budget {args.budget:.0f} s")
    print("| side | steps | epochs | compile s | wall s | pixel error | membrane Dice |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = {}
    with tempfile.TemporaryDirectory(prefix="seglab-demo-speed-") as folder:
        for side in ("before", "now"):
            r = results[side] = run(side, args.budget, Path(folder))
            print(f"| {side} | {r['steps']} | {r['epochs']} | {r['compile_s']:.1f} | {r['wall_s']:.0f} | "
                  f"{r['pixel_error']:.4f} | {r['membrane_dice']:.4f} |", flush=True)
    print(f"\nRATIO demo_steps {results['now']['steps'] / results['before']['steps']:.2f}")


if __name__ == "__main__":
    main()
