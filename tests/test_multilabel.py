"""Multi-label masks: a mask folder per label, channel masks and bit-set masks made from the bundled ISBI
masks (membrane, and a band of the membrane dilated by two pixels: two overlapping labels), their packing
and refusals, the loss and the scores per label, and one tiny model through train, evaluate, predict,
export and serve."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from sklearn.metrics import f1_score, jaccard_score

import seglab
from conftest import TINY_FLAGS, assert_clean_failure, run_cli, run_main, start_server
from seglab.data.classmap import IGNORE_INDEX, ClassMap
from seglab.data.discover import discover
from seglab.losses.lovasz import lovasz_hinge
from seglab.losses.segmentation import SegmentationLoss
from seglab.metrics.scoring import evaluate_images

LABELS = ("band", "membrane")  # label folders in name order: bit 0 = band, bit 1 = membrane


def isbi_labels(mask_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(band, membrane) (H, W) bool of one ISBI mask (0 = membrane): the band holds the membrane."""
    membrane = np.asarray(Image.open(mask_file)) == 0
    return ndimage.binary_dilation(membrane, iterations=2), membrane


def bit_sets(mask_file: Path) -> np.ndarray:
    band, membrane = isbi_labels(mask_file)
    return band.astype(np.uint8) | (membrane.astype(np.uint8) << 1)


def label_folder(isbi_subset: Path, dest: Path) -> Path:
    """images/ + masks/band/ ({0, 1}) + masks/membrane/ ({0, 255}) of the five ISBI crops."""
    shutil.copytree(isbi_subset / "images", dest / "images")
    for mask_file in sorted((isbi_subset / "masks").iterdir()):
        band, membrane = isbi_labels(mask_file)
        for name, plane, on in (("band", band, 1), ("membrane", membrane, 255)):
            (dest / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray((plane * on).astype(np.uint8)).save(dest / "masks" / name / mask_file.name)
    return dest


@pytest.fixture
def labelled(tmp_path, isbi_subset) -> Path:
    return label_folder(isbi_subset, tmp_path / "labels")


def test_label_folders_pack_into_bit_sets_once(labelled, isbi_subset):
    scan = discover(labelled).splits["all"]
    assert scan.labels.multilabel and scan.labels.names == LABELS and len(scan.pairs) == 5
    for pair in scan.pairs:
        assert np.array_equal(np.asarray(Image.open(pair.mask)), bit_sets(isbi_subset / "masks" / pair.image.name))
    assert discover(labelled).splits["all"].labels.reused
    report = seglab.check(labelled)
    assert report.ok and report.class_map == ClassMap.of_labels(LABELS), str(report)
    assert "2 overlapping labels: bit 0 -> band, bit 1 -> membrane" in str(report)
    assert "label shares" in str(report)
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(labelled / "masks" / "band" / "00.png")
    changed = discover(labelled).splits["all"]
    assert not changed.labels.reused  # a changed mask file rebuilds the packed masks
    assert not (np.asarray(Image.open(changed.pairs[0].mask)) & 1).any()


def test_an_image_missing_from_a_label_folder_has_none_of_that_label(labelled):
    (labelled / "masks" / "band" / "03.png").unlink()
    (labelled / "masks" / "membrane" / "04.png").rename(labelled / "masks" / "membrane" / "stray.png")
    (labelled / "masks" / "band" / "04.png").unlink()
    scan = discover(labelled).splits["all"]
    assert [p.image.name for p in scan.pairs] == ["00.png", "01.png", "02.png", "03.png"]
    assert [p.name for p in scan.unpaired_images] == ["04.png"]
    assert [p.name for p in scan.unpaired_masks] == ["stray.png"]
    packed = np.asarray(Image.open(scan.pairs[3].mask))
    assert packed.max() == 2 and not (packed & 1).any()  # membrane only


@pytest.mark.parametrize("case", ["values", "size", "one_folder", "names"])
def test_bad_label_masks_are_refused_in_one_line(labelled, case):
    flags = []
    if case == "values":
        bad = labelled / "masks" / "band" / "02.png"
        Image.fromarray(np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) % 3).save(bad)
        expected = f"label mask '{bad}' holds {{0, 1, 2}}"
    elif case == "size":
        bad = labelled / "masks" / "membrane" / "01.png"
        Image.fromarray(np.zeros((64, 128), np.uint8)).save(bad)
        expected = f"mask '{bad}' is 128x64 but its image"
    elif case == "one_folder":
        shutil.rmtree(labelled / "masks" / "band")
        expected = "holds one label folder 'membrane': one label is a binary mask"
    else:
        flags = ["--class-names", "a,b,c"]
        expected = "3 class names given for 2 labels"
    result = run_main("check", labelled, *flags)
    assert_clean_failure(result)
    assert expected in result.output, result.output
    assert not any(p.name.endswith(".tmp") for p in (labelled / ".seglab-cache").iterdir()) \
        if (labelled / ".seglab-cache").exists() else True


def test_channel_masks_and_bit_set_masks_with_multilabel(tmp_path, isbi_subset):
    channels, packed = tmp_path / "channels", tmp_path / "packed"
    for folder in (channels, packed):
        shutil.copytree(isbi_subset / "images", folder / "images")
        (folder / "masks").mkdir()
    for mask_file in sorted((isbi_subset / "masks").iterdir()):
        band, membrane = isbi_labels(mask_file)
        tifffile.imwrite(channels / "masks" / f"{mask_file.stem}.tif", np.stack([band, membrane], -1).astype(np.uint8),
                         photometric="minisblack", planarconfig="contig")
        Image.fromarray(bit_sets(mask_file)).save(packed / "masks" / mask_file.name)
    report = seglab.check(channels, multilabel=True, class_names=list(LABELS))
    assert report.ok and report.class_map == ClassMap.of_labels(LABELS), str(report)
    first = discover(channels, multilabel=True).splits["all"].pairs[0]
    assert np.array_equal(np.asarray(Image.open(first.mask)), bit_sets(isbi_subset / "masks" / "00.png"))
    assert seglab.check(packed, multilabel=True).class_map.names == ("label0", "label1")
    plain = seglab.check(packed)  # without --multilabel, values 0..3 are four classes
    assert not plain.class_map.multilabel and plain.class_map.num_classes == 4
    Image.fromarray(np.full((128, 128), 4, np.uint8)).save(packed / "masks" / "03.png")
    beyond = run_main("check", packed, "--multilabel", "--class-names", "band,membrane")
    assert_clean_failure(beyond)
    assert f"mask '{packed / 'masks' / '03.png'}' holds {{4}}, beyond the bits of 2 labels" in beyond.output, \
        beyond.output


# ---- the loss and the scores, against hand computations --------------------------------------------
def labelled_batch(seed: int = 0, labels: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (2, K, 5, 6), truth planes (2, K, 5, 6) and their bit sets (2, 5, 6) with a few ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, labels, 5, 6, generator=generator)
    planes = (torch.rand(2, labels, 5, 6, generator=generator) < 0.4).long()
    bits = (planes << torch.arange(labels).view(1, -1, 1, 1)).sum(1)
    bits[0, 0, :3] = IGNORE_INDEX
    return logits, planes.float(), bits


def test_multilabel_loss_is_bce_and_dice_per_label():
    logits, planes, bits = labelled_batch()
    valid = (bits != IGNORE_INDEX)[:, None].float()
    bce = F.binary_cross_entropy_with_logits(logits, planes, reduction="none")
    expected_bce = (bce * valid).sum() / (valid.sum() * 3)
    probs = torch.sigmoid(logits) * valid
    truth = planes * valid
    dice = (2 * (probs * truth).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + truth.sum((0, 2, 3)) + 1)
    loss = SegmentationLoss(3, "ce+dice", multilabel=True)
    assert torch.allclose(loss(logits, bits), expected_bce + 1 - dice.mean(), atol=1e-6)
    weighted = SegmentationLoss(3, "ce", class_weights=[1.0, 2.0, 0.0], multilabel=True)
    per_label = (bce * valid).sum((0, 2, 3)) / valid.sum()
    assert torch.allclose(weighted(logits, bits), (per_label[0] + 2 * per_label[1]) / 3, atol=1e-6)
    with pytest.raises(seglab.SeglabError, match="2 class weights for 3 labels"):
        SegmentationLoss(3, "ce", class_weights=[1.0, 2.0], multilabel=True)


def test_multilabel_focal_and_lovasz_are_their_binary_forms_per_label():
    logits, planes, bits = labelled_batch(1)
    valid = (bits != IGNORE_INDEX).reshape(-1)
    lovasz = SegmentationLoss(3, "lovasz", multilabel=True)(logits, bits)
    per_label = [lovasz_hinge(logits[:, k].reshape(-1), planes[:, k].reshape(-1), valid) for k in range(3)]
    assert torch.allclose(lovasz, torch.stack(per_label).mean(), atol=1e-6)
    bce = F.binary_cross_entropy_with_logits(logits, planes, reduction="none")
    focal = ((1 - torch.exp(-bce)) ** 2 * bce).mean(1)[bits != IGNORE_INDEX].mean()
    assert torch.allclose(SegmentationLoss(3, "focal", multilabel=True)(logits, bits), focal, atol=1e-6)


@pytest.mark.parametrize("name", ["ce+dice", "focal+lovasz", "tversky", "gdice"])
def test_multilabel_losses_are_finite_when_all_is_ignored_and_give_gradients(name):
    logits, _, bits = labelled_batch(2)
    logits.requires_grad_(True)
    loss = SegmentationLoss(3, name, multilabel=True)
    value = loss(logits, bits)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0
    assert torch.isfinite(loss(logits.detach(), torch.full_like(bits, IGNORE_INDEX)))


def test_label_scores_match_scikit_learn_per_label():
    rng = np.random.default_rng(3)
    truth = (rng.random((3, 40, 50)) < 0.3).astype(np.int64)
    guess = np.where(rng.random((3, 40, 50)) < 0.8, truth, 1 - truth)
    truth_bits = (truth << np.arange(3)[:, None, None]).sum(0)
    guess_bits = (guess << np.arange(3)[:, None, None]).sum(0)
    truth_bits[:4] = IGNORE_INDEX
    kept = truth_bits.reshape(-1) != IGNORE_INDEX
    y_true, y_pred = truth.reshape(3, -1).T[kept], guess.reshape(3, -1).T[kept]
    pooled = evaluate_images(lambda _: (guess_bits, truth_bits, {}), [0], ["a", "b", "c"], multilabel=True).pooled
    assert np.allclose(list(pooled["iou"].values()), jaccard_score(y_true, y_pred, average=None), atol=3e-8)
    assert np.allclose(list(pooled["dice"].values()), f1_score(y_true, y_pred, average=None), atol=3e-8)
    assert pooled["pixels"] == kept.sum()
    assert np.isclose(pooled["pixel_share"]["b"], y_true[:, 1].mean())
    assert np.isclose(pooled["pixel_accuracy"], (y_true == y_pred).mean())


# ---- one tiny model through every command -----------------------------------------------------------
def test_a_multilabel_model_trains_evaluates_predicts_exports_and_serves(tmp_path, isbi_subset):
    data = label_folder(isbi_subset, tmp_path / "labels")
    run = tmp_path / "run"
    trained = run_cli("train", data, "-e", 3, "-b", 2, "--crop", 64, "--base-channels", 4, "--depth", 2, "-v", 20,
                      "--augment", "none", "-l", 0.01, "--out", run, *TINY_FLAGS)
    assert trained.rc == 0, trained.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[-1]["val_dice_per_class"]) == set(LABELS)
    report = (run / "report.html").read_text()
    assert "band" in report and "membrane" in report
    model = seglab.load(run / "best.pt", device="cpu")
    assert model.class_map.multilabel and model.class_map.names == LABELS

    scores = run_cli("evaluate", "-m", run / "best.pt", data, "--json", "--device", "cpu")
    assert scores.rc == 0, scores.output
    pooled = json.loads(scores.stdout)["pooled"]
    predicted = run_cli("predict", "-m", run / "best.pt", "-i", data / "images", "-o", tmp_path / "out", "--overlay",
                        "--device", "cpu")
    assert predicted.rc == 0, predicted.output
    truth, guess = [], []
    for image in sorted((data / "images").iterdir()):
        written = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}_mask.png"))
        assert written.dtype == np.uint8 and set(np.unique(written)) <= {0, 1, 2, 3}
        assert np.array_equal(written, model.predict(image).classes)
        truth.append(bit_sets(isbi_subset / "masks" / image.name))
        guess.append(written)
    planes = lambda bits: ((np.stack(bits)[..., None] >> np.arange(2)) & 1).reshape(-1, 2)  # noqa: E731
    assert np.allclose([pooled["dice"][name] for name in LABELS],
                       f1_score(planes(truth), planes(guess), average=None, zero_division=0), atol=1e-6)
    refused = run_main("predict", "-m", run / "best.pt", "-i", data / "images" / "00.png", "-o", tmp_path / "p",
                       "--palette", "--device", "cpu")
    assert_clean_failure(refused)
    assert "overlapping labels" in refused.output

    exported = run_cli("export", "-m", run / "best.pt", "--format", "onnx", "--output", tmp_path / "model.onnx")
    assert exported.rc == 0, exported.output
    onnx, fp32 = seglab.load(tmp_path / "model.onnx"), seglab.load(run / "best.pt", device="cpu", precision="fp32")
    image = data / "images" / "01.png"
    by_onnx, by_torch = onnx.predict(image), fp32.predict(image)  # a sigmoid per label in the graph
    assert onnx.class_map.multilabel and np.abs(by_onnx.probabilities - by_torch.probabilities).max() < 1e-4

    server = start_server("-m", run / "best.pt", "--device", "cpu", "--precision", "fp32")
    try:
        body = httpx.post(f"{server.url}/v1/predict", content=image.read_bytes(), timeout=60)
        served = np.asarray(Image.open(io.BytesIO(body.content)))
        assert body.status_code == 200 and np.array_equal(served, by_torch.mask)  # the bit sets, as predict writes
        described = httpx.post(f"{server.url}/v1/predict?format=json", content=image.read_bytes(), timeout=60).json()
        counts = {entry["name"]: entry["pixels"] for entry in described["classes"]}
        assert described["multilabel"] and counts == {"band": int((served & 1).sum()),
                                                      "membrane": int((served >> 1 & 1).sum())}
        assert httpx.get(f"{server.url}/v1/model", timeout=30).json()["multilabel"]
    finally:
        server.stop()
