"""Loss terms against values worked out by hand on two pixels, and their sums, weights and edge cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_main
from seglab.config import TrainConfig, config_from_dict
from seglab.data.classmap import IGNORE_INDEX
from seglab.errors import ConfigError
from seglab.losses.registry import list_losses, loss_terms
from seglab.losses.segmentation import SegmentationLoss
from seglab.losses.terms import soft_dice_loss

TERMS = list_losses()


def two_pixels(p1=(0.8, 0.4), targets=(1, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax logits (1, 2, 1, 2) whose class-1 probabilities are p1, and targets (1, 1, 2)."""
    logit = torch.tensor([math.log(p / (1 - p)) for p in p1])
    logits = torch.stack([torch.zeros(2), logit])[None, :, None, :]
    return logits, torch.tensor(targets)[None, None, :]


def test_the_names_of_seglab_0_2_compute_what_they_did():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 6, 6), torch.randint(0, 4, (2, 6, 6))
    target[0, 0] = IGNORE_INDEX
    valid = target != IGNORE_INDEX
    safe = torch.where(valid, target, 0)
    ce = F.cross_entropy(logits, safe, reduction="none")[valid].mean()
    probs, onehot = logits.softmax(1) * valid[:, None], F.one_hot(safe, 4).permute(0, 3, 1, 2) * valid[:, None]
    dice = 1 - ((2 * (probs * onehot).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)).mean()
    assert SegmentationLoss(4, "ce")(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    assert SegmentationLoss(4, "ce+dice")(logits, target).item() == pytest.approx((ce + dice).item(), rel=1e-6)
    assert SegmentationLoss(4, "bce+dice")(logits, target) == SegmentationLoss(4, "ce+dice")(logits, target)
    binary = torch.randn(2, 1, 6, 6)
    bce = F.binary_cross_entropy_with_logits(binary[:, 0], (target % 2).float())
    assert SegmentationLoss(1, "ce")(binary, target % 2).item() == pytest.approx(bce.item(), rel=1e-6)
    assert loss_terms("bce+dice") == ["ce", "dice"]
    assert config_from_dict({"train": {"loss": "bce+dice"}}).train.loss_options == {}


def test_focal_loss_by_hand():
    # binary, both pixels foreground: p = 0.5 and 0.75, ce = ln 2 and ln 4/3
    logits, target = torch.tensor([0.0, math.log(3)]).reshape(1, 1, 1, 2), torch.ones(1, 1, 2, dtype=torch.long)
    expected = (0.5**2 * math.log(2) + 0.25**2 * math.log(4 / 3)) / 2
    assert SegmentationLoss(1, "focal")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 is the cross-entropy; class weights weight the pixels as they do for it
    softmax, classes = two_pixels()
    weights = [1.0, 3.0]
    zero = SegmentationLoss(2, "focal", weights, options={"gamma": 0})(softmax, classes)
    assert zero.item() == pytest.approx(SegmentationLoss(2, "ce", weights)(softmax, classes).item(), rel=1e-6)
    assert zero.item() == pytest.approx((3 * -math.log(0.8) + -math.log(0.6)) / 4, rel=1e-5)


def test_lovasz_hinge_and_softmax_by_hand():
    # hinge: errors 1 - 0.5 = 0.5 (foreground), 1 + 0.5 = 1.5 (background); sorted 1.5, 0.5; the
    # Jaccard increments of truth [0, 1] are 0.5, 0.5: loss 1.5 * 0.5 + 0.5 * 0.5
    logits, target = torch.full((1, 1, 1, 2), 0.5), torch.tensor([[[1, 0]]])
    assert SegmentationLoss(1, "lovasz")(logits, target).item() == pytest.approx(1.0)
    # softmax: class 1 errors 0.2 (truth), 0.4 -> 0.4 * 0.5 + 0.2 * 0.5 = 0.3; class 0 errors 0.2, 0.4
    # (truth) -> 0.4 * 1 + 0.2 * 0 = 0.4; mean 0.35, or (0.4 + 3 * 0.3) / 4 with class weights 1, 3
    logits, target = two_pixels()
    assert SegmentationLoss(2, "lovasz")(logits, target).item() == pytest.approx(0.35, rel=1e-5)
    assert SegmentationLoss(2, "lovasz", [1.0, 3.0])(logits, target).item() == pytest.approx(1.3 / 4, rel=1e-5)


def test_tversky_focal_tversky_and_generalised_dice_by_hand():
    logits, target = two_pixels()
    # class 1: TP 0.8, FP 0.4, FN 0.2; class 0: TP 0.6, FP 0.2, FN 0.4
    tversky = [(0.8 + 1) / (0.8 + 0.3 * 0.4 + 0.7 * 0.2 + 1), (0.6 + 1) / (0.6 + 0.3 * 0.2 + 0.7 * 0.4 + 1)]
    expected = sum(1 - t for t in tversky) / 2
    assert SegmentationLoss(2, "tversky")(logits, target).item() == pytest.approx(expected, rel=1e-5)
    focal = sum((1 - t) ** 0.75 for t in tversky) / 2
    assert SegmentationLoss(2, "focal-tversky")(logits, target).item() == pytest.approx(focal, rel=1e-5)
    # one pixel per class: equal weights; 1 - 2 (0.8 + 0.6) / ((1.6 + 0.6) + (1.2 + 0.6))
    assert SegmentationLoss(2, "gdice")(logits, target).item() == pytest.approx(0.3, rel=1e-4)
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    half = SegmentationLoss(3, "tversky", options={"alpha": 0.5, "beta": 0.5})(logits, target)
    # (TP + 1) / (TP + FP / 2 + FN / 2 + 1) = (2 TP + 2) / (2 TP + FP + FN + 2): Dice smoothed by 2
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    dice = soft_dice_loss(logits.softmax(1), onehot, torch.ones(2, 1, 5, 5), smooth=2.0)
    assert half.item() == pytest.approx(dice.item(), rel=1e-6)


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("term", TERMS)
def test_every_term_is_finite_on_ignored_and_empty_classes_and_its_gradients_flow(term, outputs):
    torch.manual_seed(2)
    loss = SegmentationLoss(outputs, term, class_weights=[0.5] + [2.0] * max(outputs - 1, 1))
    logits = torch.randn(2, outputs, 8, 8, requires_grad=True)
    target = torch.zeros(2, 8, 8, dtype=torch.long)  # class 0 only: the others are empty
    target[:, :3] = IGNORE_INDEX
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[:, :, :3].abs().sum() == 0  # ignored pixels get no gradient
    hidden = logits.detach().clone()
    hidden[:, :, :3] = 50 * torch.randn(2, outputs, 3, 8)  # what is ignored changes nothing
    assert loss(hidden, target).item() == pytest.approx(value.item(), rel=1e-6)
    nothing = torch.full((2, 8, 8), IGNORE_INDEX)
    blank = logits.detach().clone().requires_grad_()
    empty = loss(blank, nothing)
    empty.backward()
    assert empty.item() == 0 and torch.isfinite(blank.grad).all()


def test_a_sum_of_terms_is_the_sum_of_its_terms_and_shares_its_options():
    torch.manual_seed(3)
    logits, target = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
    options = {"gamma": 1.5}
    total = SegmentationLoss(3, "focal+lovasz+focal-tversky", options=options)(logits, target)
    parts = sum(SegmentationLoss(3, term, options={"gamma": 1.5} if "focal" in term else {})(logits, target)
                for term in ("focal", "lovasz", "focal-tversky"))
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


def test_unknown_terms_and_options_are_one_line_errors():
    assert TrainConfig(loss="focal", loss_options={"gamma": "2"}).loss_options == {"gamma": 2.0}
    for loss, options, words in (("focl", {}, "unknown loss term 'focl'"), ("ce+", {}, "empty term"),
                                 ("ce+ce", {}, "twice"), ("focal", {"gama": 1}, "did you mean 'gamma'"),
                                 ("tversky", {"alpha": 2}, "train.loss_options.alpha"),
                                 ("dice", {"gamma": 2}, "takes no options")):
        with pytest.raises(ConfigError, match=words):
            TrainConfig(loss=loss, loss_options=options)
    rc, out, err = run_main("train", "data/isbi2012", "--loss", "focal", "--loss-options", "gama=2")
    assert rc == 1 and err.strip().count("\n") == 0 and "did you mean 'gamma'" in err
