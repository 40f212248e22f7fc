"""Training plans, fold ensembles and EMA weights (issue 14)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import seglab
from conftest import TINY_FLAGS, assert_clean_failure, run_cli, run_main, train_until_killed
from seglab.config import config_from_dict
from seglab.data.fingerprint import Fingerprint
from seglab.engine.ema import WeightAverage
from seglab.engine.plan import DEFAULT_BUDGET, FORWARD_COST, MIN_VAL_IMAGES, VALIDATION_SHARE, plan_rules
from seglab.engine.runs import fit, resume

QUIET = lambda *args, **kwargs: None  # noqa: E731
CPU = {"type": "cpu", "cores": 2}


def fingerprint(size=(512, 512), kind="grayscale", shares=None, diameters=None) -> Fingerprint:
    shares = shares or {"background": 0.5, "object": 0.5}
    return Fingerprint(images=20, median_size=size, min_size=size, channels=1 if kind == "grayscale" else 3,
                       kind=kind, intensity_mean=0.5, intensity_std=0.2, class_shares=shares,
                       object_diameter=diameters or {name: 30.0 for name in shares},
                       object_counts={name: 10.0 for name in shares})


def values(plan) -> dict:
    return {key: choice.value for key, choice in plan.choices.items()}


# ---- the planner's rules ------------------------------------------------------------------------
def test_small_grayscale_images_train_whole_with_a_shallower_net_and_the_papers_augmentation():
    chosen = values(plan_rules(fingerprint(size=(96, 96)), CPU, {}, binary=True, train_images=20))
    assert chosen["data.crop"] is None and chosen["model.depth"] == 3
    assert chosen["train.augment"] == "paper" and chosen["train.monitor"] == "val_dice"
    assert chosen["train.time_budget"] == DEFAULT_BUDGET["cpu"] and chosen["train.epochs"] == 10_000


def test_large_colour_photos_get_crops_the_photo_preset_and_miou():
    photos = fingerprint(size=(1500, 2000), kind="colour", shares={"road": 0.6, "car": 0.3, "sky": 0.1},
                         diameters={"road": 900.0, "car": 120.0, "sky": 300.0})
    on_cpu = values(plan_rules(photos, CPU, {}, binary=False, train_images=300))
    assert on_cpu["data.crop"] == [256, 256] and on_cpu["model.base_channels"] == 16
    assert on_cpu["train.augment"] == "photo" and on_cpu["train.monitor"] == "val_miou"

    def probe(crop, batch):  # a big GPU: everything fits
        return {"peak_bytes": batch * 2**30, "images_per_s": 400.0}

    gpu = {"type": "cuda", "free_bytes": 80 * 2**30}
    on_gpu = values(plan_rules(photos, gpu, {}, binary=False, train_images=300, probe=probe))
    assert on_gpu["data.crop"] == [1024, 1024]  # large objects grow the GPU crop, up to twice 512
    assert on_gpu["train.batch_size"] == 16 and on_gpu["model.base_channels"] == 64 and on_gpu["train.amp"]


def test_gpu_memory_decides_the_batch_size():
    def probe(crop, batch):
        return None if batch == 16 else {"peak_bytes": batch * 2**30, "images_per_s": 100.0}  # 16 runs out

    little = values(plan_rules(fingerprint(), {"type": "cuda", "free_bytes": 8 * 2**30}, {}, True, 30, probe))
    much = values(plan_rules(fingerprint(), {"type": "cuda", "free_bytes": 40 * 2**30}, {}, True, 30, probe))
    assert little["train.batch_size"] == 4 and much["train.batch_size"] == 8  # 0.6 x free memory
    assert much["train.learning_rate"] == pytest.approx(2e-3 * np.sqrt(2), rel=1e-3)
    # under torchrun (no probe, every rank must plan alike): the GPU's total memory decides
    ranks = values(plan_rules(fingerprint(), {"type": "cuda", "total_bytes": 80 * 2**30}, {}, True, 30, None))
    assert ranks["train.batch_size"] == 8


def test_a_tiny_class_gets_class_weights_and_explicit_values_win():
    rare = fingerprint(shares={"background": 0.995, "lesion": 0.005})
    plan = plan_rules(rare, CPU, {"data.crop": [64, 64], "train.epochs": 40}, binary=True, train_images=20)
    chosen = values(plan)
    assert chosen["train.class_weights"] == "auto"
    # the loss and sampling measured best for rare classes (BENCHMARKS.md, "Small objects"), with why
    assert chosen["train.loss"] == "ce+dice" and chosen["train.oversample"] == 0.0
    assert "CamVid" in plan.choices["train.loss"].reason and "CamVid" in plan.choices["train.oversample"].reason
    common = values(plan_rules(fingerprint(), CPU, {}, binary=True, train_images=20))  # ISBI-like: none rare
    assert not {"train.class_weights", "train.loss", "train.oversample"} & set(common)
    assert plan.choices["data.crop"].given and chosen["data.crop"] == [64, 64]
    assert "train.time_budget" not in chosen  # --epochs given: no time budget is imposed
    assert chosen["train.eval_every"] == 4  # about ten validations in 40 epochs
    assert "data.crop" not in plan.updates() and "train.class_weights" in plan.updates()


def test_the_default_budget_gives_about_ten_validations():
    chosen = values(plan_rules(fingerprint(), CPU, {}, binary=True, train_images=25))
    # 420 s at 3 images/s (2 cores) is ~50 epochs of 25 images: the demo's recipe, every 5 epochs
    assert chosen["train.eval_every"] == 5 and chosen["data.crop"] == [256, 256]
    assert chosen["train.learning_rate"] == 2e-3 and chosen["train.batch_size"] == 4


def test_a_large_hold_out_is_validated_on_a_subset_within_a_tenth_of_the_training_time():
    plan = plan_rules(fingerprint(), CPU, {}, binary=True, train_images=2700, val_images=3000)
    chosen = values(plan)
    count, reason = chosen["train.val_images"], plan.choices["train.val_images"].reason
    assert MIN_VAL_IMAGES <= count < 3000 and reason.startswith(f"{count} of the 3000 held-out images")
    # one 512x512 image's forward pass against 256x256 training crops at the planned 3 crops/s (fp32)
    per_image = FORWARD_COST * 4 / 3
    evaluations = int(re.search(r"~(\d+) evaluations", reason).group(1))
    assert f"about {per_image:.2g} s each" in reason
    assert count * per_image * evaluations <= VALIDATION_SHARE * chosen["train.time_budget"]
    assert (count + 1) * per_image * evaluations > VALIDATION_SHARE * chosen["train.time_budget"]
    # scaled inputs cost less to validate: more of them fit
    scaled = values(plan_rules(fingerprint(), CPU, {"data.scale": 0.5}, True, 2700, val_images=3000))
    assert scaled["train.val_images"] > count
    # a hold-out validated whole within the share, a small one, and a count given are left as they are
    assert "train.val_images" not in values(plan_rules(fingerprint(), CPU, {}, True, 2700, val_images=90))
    assert "train.val_images" not in values(plan_rules(fingerprint(), CPU, {}, True, 20, val_images=MIN_VAL_IMAGES))
    given = plan_rules(fingerprint(), CPU, {"train.val_images": 7}, True, 2700, val_images=3000)
    assert given.choices["train.val_images"].value == 7 and given.choices["train.val_images"].given


def test_pretrained_weights_get_their_own_normalisation_and_others_per_image():
    pretrained = {"model.name": "smp-unet", "model.encoder_weights": "imagenet"}
    assert values(plan_rules(fingerprint(), CPU, pretrained, binary=True, train_images=25))["data.normalization"] \
        == "auto"
    scratch = {"model.name": "smp-unet", "model.encoder_weights": None}
    assert values(plan_rules(fingerprint(), CPU, scratch, binary=True, train_images=25))["data.normalization"] \
        == "per_image"


# ---- the plain command ---------------------------------------------------------------------------
def test_a_zero_flag_training_plans_finishes_within_its_budget_and_writes_plan_json(tmp_path, isbi_subset):
    started = time.monotonic()
    result = run_cli("train", isbi_subset, "--time-budget", "3", "--out", tmp_path / "run", "--no-progress")
    wall = time.monotonic() - started
    assert result.rc == 0, result.output
    assert wall < 3 + 60, f"{wall:.0f} s for a 3 s budget"  # margin: start-up, validation, report
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["choices"]["train.augment"]["value"] == "paper"  # grayscale slices
    assert plan["choices"]["train.time_budget"] == {"value": 3.0, "reason": "given", "given": True}
    assert plan["fingerprint"]["kind"] == "grayscale" and plan["device"]["type"] == "cpu"
    assert "plan (plan.json" in result.stdout and "crop" in result.stdout
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["augment"] == "paper" and saved["train"]["time_budget"] == 3.0
    report = (tmp_path / "run" / "report.html").read_text()
    assert "stopped by the 3 s time budget" in report  # the epochs card says what bounded the run


# ---- k-fold cross-validation and ensembles ----------------------------------------------------------
FOLD_FLAGS = ("--base-channels", "4", "--depth", "2", "--crop", "64", "-b", "2", "--augment", "none",
              "--epochs", "1", *TINY_FLAGS)


@pytest.fixture(scope="module")
def three_folds(tmp_path_factory, isbi_subset) -> Path:
    parent = tmp_path_factory.mktemp("folds") / "cv"
    result = run_cli("train", isbi_subset, "--folds", "3", "--out", parent, *FOLD_FLAGS)
    assert result.rc == 0, result.output
    return parent


def test_folds_train_disjoint_validation_splits_and_report_mean_and_spread(three_folds, isbi_subset):
    splits = [json.loads((three_folds / f"fold-{k}" / "split.json").read_text()) for k in (1, 2, 3)]
    held = [[Path(image).name for image, _ in split["val"]] for split in splits]
    assert sorted(sum(held, [])) == sorted(p.name for p in (isbi_subset / "images").iterdir())  # each once
    summary = json.loads((three_folds / "folds.json").read_text())
    assert summary["done"] == [1, 2, 3]
    dices = [summary["per_fold"][str(k)]["val_dice"] for k in (1, 2, 3)]
    assert summary["val_dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["val_dice"]["std"] == pytest.approx(np.std(dices))


def test_the_ensemble_predicts_the_mean_of_its_folds_probabilities(three_folds, isbi_subset):
    image = isbi_subset / "images" / "02.png"
    members = [seglab.load(three_folds / f"fold-{k}" / "best.pt", device="cpu").predict(image).probabilities
               for k in (1, 2, 3)]
    ensemble = seglab.load(three_folds / "ensemble.json", device="cpu")
    np.testing.assert_allclose(ensemble.predict(image).probabilities, np.mean(members, axis=0), atol=1e-5)
    flipped = seglab.load(three_folds / "ensemble.json", device="cpu", tta="flips", tile=(64, 64))
    assert flipped.predict(image, instances=True).instances is not None  # composes with TTA, tiles, cells
    scores = run_cli("evaluate", "-m", three_folds / "ensemble.json", isbi_subset, "--device", "cpu")
    assert scores.rc == 0 and "mean" in scores.stdout, scores.output


def test_the_ensemble_exports_with_parity(three_folds, tmp_path):
    report = seglab.export(three_folds / "ensemble.json", "onnx", tmp_path / "ensemble.onnx")
    assert report["max_abs_diff"] <= 1e-4 and (tmp_path / "ensemble.onnx").is_file()


def test_one_fold_alone_trains_only_that_fold(tmp_path, isbi_subset):
    result = run_cli("train", isbi_subset, "--folds", "3", "--fold", "2", "--out", tmp_path / "cv", *FOLD_FLAGS)
    assert result.rc == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cv").iterdir() if p.is_dir()) == ["fold-2"]
    assert json.loads((tmp_path / "cv" / "ensemble.json").read_text())["members"] == ["fold-2/best.pt"]


def test_an_ensemble_with_a_missing_or_mismatched_member_is_refused(three_folds, tmp_path, isbi_subset):
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"format": "seglab-ensemble", "version": 1,
                                   "members": [str(three_folds / "fold-1" / "best.pt"), "nowhere/best.pt"]}))
    image = isbi_subset / "images" / "00.png"
    result = run_main("predict", "-m", missing, "-i", image, "-o", tmp_path / "o.png")
    assert_clean_failure(result)
    assert "nowhere/best.pt" in result.stderr and "does not exist" in result.stderr
    other = Path(__file__).parent / "fixtures" / "v0.1.0" / "unet_tiny.pt"  # other class names
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"format": "seglab-ensemble", "version": 1,
                                 "members": [str(three_folds / "fold-1" / "best.pt"), str(other)]}))
    result = run_main("predict", "-m", mixed, "-i", image, "-o", tmp_path / "o.png")
    assert_clean_failure(result)
    assert "has classes" in result.stderr and not (tmp_path / "o.png").exists()


# ---- EMA ---------------------------------------------------------------------------------------------
def test_the_weight_average_follows_its_update_rule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for t in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model[1].running_mean.add_(1.0)
        average.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for got, want in zip(average.model.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(average.model[1].running_mean, model[1].running_mean)  # buffers are copied


def test_ema_runs_score_the_average_and_resume_bit_identically(tmp_path, isbi_dir):
    def config(out):
        return config_from_dict({"out": str(out), "data": {"root": str(isbi_dir), "validation": 20, "scale": 0.25},
                                 "model": {"base_channels": 4, "depth": 2},
                                 "train": {"epochs": 3, "batch_size": 4, "device": "cpu", "augment": "paper",
                                           "ema": 0.9, "checkpoint_interval": 0}})
    fit(config(tmp_path / "straight"), progress=False, log=QUIET)
    train_until_killed(config(tmp_path / "stopped"), epochs=1)
    resume(tmp_path / "stopped", progress=False, log=QUIET)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # the averages
    raw = a["train_state"]["raw_weights"]
    assert all(torch.equal(raw[k], b["train_state"]["raw_weights"][k]) for k in raw)
    assert any(not torch.equal(raw[k], a["state_dict"][k]) for k in raw if raw[k].is_floating_point())
