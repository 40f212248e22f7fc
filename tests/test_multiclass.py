"""Multi-class segmentation: CamVid through the CLI, void pixels, mIoU, plateau schedule, colour masks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_FLAGS, run_cli
from seglab.data.classmap import IGNORE_INDEX
from seglab.engine.schedule import LearningRateSchedule
from seglab.losses.segmentation import SegmentationLoss
from seglab.metrics import ConfusionMatrix

CAMVID = REPO.parent / "shared" / "data" / "camvid"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


@pytest.fixture(scope="module")
def camvid_subset(tmp_path_factory) -> Path:
    """train/ (6 frames) and val/ (2 frames) of real CamVid files, as shipped."""
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid is not at {CAMVID}")
    root = tmp_path_factory.mktemp("camvid")
    for split, count in (("train", 6), ("val", 2)):
        images = sorted((CAMVID / split / "images").iterdir())[:count]
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
        for image in images:
            shutil.copy(image, root / split / "images" / image.name)
            shutil.copy(CAMVID / split / "masks" / f"{image.stem}.png", root / split / "masks" / f"{image.stem}.png")
    return root


def test_deeplabv3_trains_on_camvid_and_evaluate_reports_eleven_class_ious(camvid_subset, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", camvid_subset, "--model", "deeplabv3", "--backbone", "resnet18", "--ignore-index", "11",
                     "--class-names", CAMVID_CLASSES, "--scale", "0.25", "--crop", "64", "-e", "1", "-b", "2",
                     "--augment", "light", "--monitor", "val_miou", "--out", run, *TINY_FLAGS)
    assert result.rc == 0, result.output
    assert "11 -> ignored" in result.output
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["val_iou_per_class"]) == set(CAMVID_CLASSES.split(","))
    scores = run_cli("evaluate", "-m", run / "best.pt", camvid_subset, "--json", "-s", "0.25", "--device", "cpu")
    assert scores.rc == 0, scores.output
    report = json.loads(scores.stdout)
    assert report["classes"] == CAMVID_CLASSES.split(",")
    assert len(report["pooled"]["iou"]) == 11
    assert len(report["images"]) == 2  # the val split


def test_void_pixels_change_neither_loss_nor_metrics():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16)
    target = torch.randint(0, 4, (2, 16, 16))
    target[:, :5] = IGNORE_INDEX
    other = target.clone()
    other[:, :5] = IGNORE_INDEX  # same void, then scribble over the content hidden under it:
    logits_changed = logits.clone()
    logits_changed[:, :, :5] = torch.randn(2, 4, 5, 16) * 10
    loss = SegmentationLoss(4, "ce+dice")
    assert torch.allclose(loss(logits, target), loss(logits_changed, other))
    pred, pred_changed = logits.argmax(1), logits_changed.argmax(1)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred, target)
    b.update(pred_changed, other)
    assert torch.equal(a.counts, b.counts)
    assert a.counts.sum() == 2 * 11 * 16


def test_miou_from_a_hand_made_confusion_matrix_reports_absent_classes_as_absent():
    matrix = ConfusionMatrix(4)
    # rows = truth, columns = prediction; class 3 is in neither truth nor prediction
    matrix.counts = torch.tensor([[8, 2, 0, 0], [1, 6, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    scores = matrix.scores(["a", "b", "c", "d"])
    # IoU_a = 8 / (10 + 9 - 8) = 8/11, IoU_b = 6 / (8 + 8 - 6) = 6/10, IoU_c = 2 / (2 + 3 - 2) = 2/3
    assert scores["iou"]["a"] == pytest.approx(8 / 11)
    assert scores["iou"]["b"] == pytest.approx(0.6)
    assert scores["iou"]["c"] == pytest.approx(2 / 3)
    assert scores["iou"]["d"] is None
    assert scores["miou"] == pytest.approx((8 / 11 + 0.6 + 2 / 3) / 3)
    assert scores["dice"]["b"] == pytest.approx(12 / 16)
    assert scores["pixel_accuracy"] == pytest.approx(16 / 20)


def test_plateau_schedule_divides_the_learning_rate_by_ten_after_patience_evaluations():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1.0)
    schedule = LearningRateSchedule(optimizer, "plateau", monitor_mode="max", patience=2)
    learning_rates = []
    for metric in [0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7]:
        schedule.step_metric(metric)
        learning_rates.append(optimizer.param_groups[0]["lr"])
    # best 0.6 at eval 2; evals 3 and 4 do not improve (patience 2), eval 5 is the third -> 0.1
    assert learning_rates == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01])


def test_poly_and_cosine_schedules_decay_to_zero():
    parameter = torch.nn.Parameter(torch.zeros(1))
    for kind in ("poly", "cosine"):
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        schedule = LearningRateSchedule(optimizer, kind)
        schedule.step_progress(0.5)
        middle = optimizer.param_groups[0]["lr"]
        schedule.step_progress(1.0)
        assert 0 < middle < 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-9)


COLOURS = {"background": [0, 0, 0], "road": [128, 64, 128], "car": [64, 0, 128]}


def test_rgb_colour_masks_train_with_a_colour_table_and_predict_in_colours(tmp_path):
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        (tmp_path / "data" / kind).mkdir(parents=True)
    palette = np.array(list(COLOURS.values()), dtype=np.uint8)
    for i in range(4):
        classes = np.zeros((48, 48), dtype=np.int64)
        classes[:, 16:32] = 1
        classes[i * 8:i * 8 + 12, 4:14] = 2
        image = (classes * 90 + rng.integers(0, 20, classes.shape)).astype(np.uint8)
        Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray(palette[classes]).save(tmp_path / "data" / "masks" / f"{i}.png")
    refused = run_cli("check", tmp_path / "data")
    assert refused.rc == 1 and "--mask-colors" in refused.output and "[128, 64, 128]" in refused.output
    table = tmp_path / "colors.json"
    table.write_text(json.dumps(COLOURS))
    checked = run_cli("check", tmp_path / "data", "--mask-colors", table)
    assert checked.rc == 0, checked.output
    assert "rgb(128,64,128) -> 1 (road)" in checked.output
    run = tmp_path / "run"
    trained = run_cli("train", tmp_path / "data", "--mask-colors", table, "-v", "25", "--base-channels", "4",
                      "--depth", "2", "-e", "2", "--augment", "none", "--out", run, *TINY_FLAGS)
    assert trained.rc == 0, trained.output
    predicted = run_cli("predict", "-m", run / "best.pt", "-i", tmp_path / "data" / "images" / "0.png",
                        "-o", tmp_path / "out.png", "--device", "cpu")
    assert predicted.rc == 0, predicted.output
    colours = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(colours, axis=0)} <= {tuple(c) for c in COLOURS.values()}
    palette_run = run_cli("predict", "-m", run / "best.pt", "-i", tmp_path / "data" / "images" / "0.png",
                          "-o", tmp_path / "indices.png", "--palette", "--device", "cpu")
    assert palette_run.rc == 0, palette_run.output
    with Image.open(tmp_path / "indices.png") as written:
        assert written.mode == "P" and np.asarray(written).max() <= 2
