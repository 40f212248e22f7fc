"""The training plan against hand-written recipes, fold ensembles against one long run, EMA against none.

    python benchmarks/plan.py [PART ...] [--device auto] [--budget 420] [--camvid-budget 600]
                              [--out runs/bench-plan] [--camvid ../shared/data/camvid]
    PART: isbi camvid folds ema (default: all four, in that order)

Every comparison trains both sides for the same seconds of training (`time_budget`; validation and
checkpoint writing do not count) and scores them with the same code on the same held-out images,
then prints each side's scores and their ratio:

- isbi: `seglab train` with no recipe flags (only which slices to hold out, 25-29, and the class
  names) against the demo's hand-written recipe, both at the demo's budget; scored like the demo:
  last.pt, flips TTA, on slices 25-29 (pixel error, membrane Dice, and the ISBI Rand error / VI).
- camvid: no recipe flags (only the void value 11 and the class names) against
  configs/camvid.yaml, `--camvid-budget` seconds each; val mIoU on all of val/.
- folds: `--folds 5` on slices 00-24 at budget / 5 per fold and its ensemble, against one model
  with the whole budget on the same slices (held out 10% by the plan's default); both scored on
  25-29, which neither trained on.
- ema: the plan's recipe with and without `--ema 0.999` at the demo's budget, scored on 25-29.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import seglab  # noqa: E402
from bench_common import device_name  # noqa: E402
from seglab.api.preparing import config_updates, prepare_updates  # noqa: E402
from seglab.config import config_to_dict  # noqa: E402
from seglab.demo import demo_config  # noqa: E402
from seglab.runtime.device import resolve_device  # noqa: E402

HELD_OUT = [f"{i:02d}" for i in range(25, 30)]
ISBI = ROOT / "data" / "isbi2012"
ISBI_NAMES = ["membrane", "cell"]
CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist"]
QUIET = lambda *args, **kwargs: None  # noqa: E731


def held_out_pairs() -> list[tuple[Path, Path]]:
    train = ISBI / "train"
    return [(train / "images" / f"{s}.png", train / "masks" / f"{s}.png") for s in HELD_OUT]


def isbi_scores(model_path: Path, device: str) -> dict:
    """The demo's scoring: flips TTA on 25-29; pixel error and membrane Dice, plus the ISBI scores."""
    scores = seglab.evaluate(model_path, held_out_pairs(), device=device, tta="flips", instances=True)
    mean = scores.mean
    return {"pixel_error": mean["pixel_error"], "membrane_dice": mean["dice"]["membrane"],
            "rand_error": mean.get("rand_error"), "vi": mean.get("vi")}


def first_slices(folder: Path) -> Path:
    """An ISBI folder of slices 00-24 only (symlinks), so 25-29 stay unseen by every fold."""
    if folder.exists():
        shutil.rmtree(folder)
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
        for i in range(25):
            os.symlink(ISBI / "train" / kind / f"{i:02d}.png", folder / kind / f"{i:02d}.png")
    return folder


def compare(name: str, a: tuple[str, dict], b: tuple[str, dict], lower_is_better: tuple[str, ...]) -> dict:
    """Print both sides and the ratio of each score (a / b); returns the record."""
    (label_a, scores_a), (label_b, scores_b) = a, b
    print(f"\n== {name}: (a) {label_a}  vs  (b) {label_b}")
    for key, value in scores_a.items():
        other = scores_b.get(key)
        if isinstance(value, (int, float)) and isinstance(other, (int, float)) and other:
            better = (value <= other) if key in lower_is_better else (value >= other)
            print(f"  {key:16s} (a) {value:.4f}  (b) {other:.4f}  a/b {value / other:.3f}  "
                  f"{'(a) at least as good' if better else '(b) better'}")
    return {"a": label_a, "b": label_b, "scores_a": scores_a, "scores_b": scores_b}


def run_isbi(args, out: Path) -> dict:
    options = dict(val_files=HELD_OUT, class_names=ISBI_NAMES, time_budget=args.budget, device=args.device)
    planned_recipe = prepare_updates(ISBI, None, config_updates(options | {"out": str(out / "isbi-plan")}),
                                     log=QUIET).config
    recipe = demo_config(resolve_device(args.device), out / "isbi-demo", args.budget, ISBI)
    planned = seglab.train(ISBI, out=out / "isbi-plan", progress=False, log=QUIET, **options)
    if _recipe(planned_recipe) == _recipe(recipe):
        # Same config, same seed: a second run would differ only by timing noise, so it is not trained.
        print("\n== ISBI 25-29: the zero-flag plan IS the demo's recipe (config.yaml equal but for out and "
              "device); one run scored for both, ratio 1 by construction")
        scores = isbi_scores(planned.last_checkpoint, args.device) | _speed(planned)
        for key, value in scores.items():
            print(f"  {key:16s} {value:.4f}  a/b 1 (one run)")
        return {"a": "plan", "b": "demo recipe", "identical_config": True, "scores_a": scores, "scores_b": scores}
    handwritten = seglab.train(config=recipe, progress=False, log=QUIET)
    return compare("ISBI 25-29, zero-flag plan vs the demo's recipe",
                   ("plan", isbi_scores(planned.last_checkpoint, args.device) | _speed(planned)),
                   ("demo recipe", isbi_scores(handwritten.last_checkpoint, args.device) | _speed(handwritten)),
                   ("pixel_error", "rand_error", "vi"))


def _recipe(config) -> dict:
    """A config as config.yaml writes it, without what names the run (out) or the machine (device)."""
    recipe = config_to_dict(config)
    recipe.pop("out", None)
    recipe["train"].pop("device", None)
    return recipe


def _speed(run) -> dict:
    rows = [r["images_per_s"] for r in run.rows if r.get("images_per_s")]
    return {"epochs": len(run.rows), "images_per_s": sum(rows) / max(len(rows), 1)}


def camvid_scores(model_path: Path, camvid: Path, device: str) -> dict:
    scores = seglab.evaluate(model_path, camvid, split="val", device=device)
    return {"val_miou": scores.pooled["miou"], "pixel_accuracy": scores.pooled["pixel_accuracy"]}


def run_camvid(args, out: Path) -> dict:
    camvid = Path(args.camvid)
    planned = seglab.train(camvid, ignore_index=11, class_names=CAMVID_NAMES, time_budget=args.camvid_budget,
                           device=args.device, out=out / "camvid-plan", progress=False, log=QUIET)
    config = ROOT / "configs" / "camvid.yaml"
    handwritten = seglab.train(camvid, config=config, time_budget=args.camvid_budget, epochs=10_000,
                               device=args.device, out=out / "camvid-config", progress=False, log=QUIET)
    return compare(f"CamVid val, zero-flag plan vs configs/camvid.yaml, {args.camvid_budget:.0f} s each",
                   ("plan", camvid_scores(planned.best_checkpoint, camvid, args.device) | _speed(planned)),
                   ("configs/camvid.yaml", camvid_scores(handwritten.best_checkpoint, camvid, args.device)
                    | _speed(handwritten)), ())


def run_folds(args, out: Path) -> dict:
    data = first_slices(out / "isbi-00-24")
    folds = seglab.train(data, folds=5, class_names=ISBI_NAMES, time_budget=args.budget / 5, device=args.device,
                         out=out / "folds", progress=False, log=QUIET)
    single = seglab.train(data, class_names=ISBI_NAMES, time_budget=args.budget, device=args.device,
                          out=out / "folds-single", progress=False, log=QUIET)
    record = compare(f"ISBI 25-29, 5-fold ensemble ({args.budget / 5:.0f} s per fold) vs one model "
                     f"({args.budget:.0f} s)", ("ensemble", isbi_scores(folds.ensemble, args.device)),
                     ("one model", isbi_scores(single.last_checkpoint, args.device)),
                     ("pixel_error", "rand_error", "vi"))
    record["folds"] = folds.summary
    return record


def run_ema(args, out: Path) -> dict:
    common = dict(val_files=HELD_OUT, class_names=ISBI_NAMES, time_budget=args.budget, device=args.device,
                  progress=False, log=QUIET)
    averaged = seglab.train(ISBI, ema=0.999, out=out / "ema", **common)
    plain = seglab.train(ISBI, out=out / "no-ema", **common)
    return compare(f"ISBI 25-29, EMA 0.999 vs none, {args.budget:.0f} s each",
                   ("ema", isbi_scores(averaged.last_checkpoint, args.device)),
                   ("no ema", isbi_scores(plain.last_checkpoint, args.device)), ("pixel_error", "rand_error", "vi"))


PARTS = {"isbi": run_isbi, "camvid": run_camvid, "folds": run_folds, "ema": run_ema}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds of training (ISBI parts)")
    parser.add_argument("--camvid-budget", type=float, default=600.0)
    parser.add_argument("--camvid", default=str(ROOT.parent / "shared" / "data" / "camvid"))
    parser.add_argument("--out", default="runs/bench-plan")
    args = parser.parse_args()
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    results = {}
    for part in args.parts or list(PARTS):
        started = time.perf_counter()
        results[part] = PARTS[part](args, out) | {"wall_s": round(time.perf_counter() - started, 1)}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
