"""The built-in loss terms registered with their options: plain values, no torch (the flags list them)."""
from __future__ import annotations

from dataclasses import dataclass

from seglab.losses.registry import LossSpec, register_loss
from seglab.options import option


@dataclass(frozen=True)
class FocalOptions:
    gamma: float = option(2.0, "focal loss: down-weights pixels already classified well by (1 - p_t)^gamma "
                          "(0: cross-entropy)", min=0, max=10, cli=False)


@dataclass(frozen=True)
class TverskyOptions:
    alpha: float = option(0.3, "Tversky: weight of false positives", min=0, max=1, cli=False)
    beta: float = option(0.7, "Tversky: weight of false negatives (above alpha favours recall of small "
                         "regions)", min=0, max=1, cli=False)


@dataclass(frozen=True)
class FocalTverskyOptions:
    alpha: float = option(0.3, "Tversky: weight of false positives", min=0, max=1, cli=False)
    beta: float = option(0.7, "Tversky: weight of false negatives", min=0, max=1, cli=False)
    gamma: float = option(0.75, "focal Tversky: each class's (1 - Tversky index) raised to gamma (< 1 "
                          "raises the loss of classes that are nearly right)", above=0, max=10, cli=False)


TERMS = "seglab.losses.terms"
for spec in (
    LossSpec("ce", f"{TERMS}:CrossEntropyTerm", summary="cross-entropy (sigmoid for one output channel, softmax "
             "for more; 'bce' is the same term); pixel and class weights"),
    LossSpec("dice", f"{TERMS}:SoftDiceTerm", summary="soft Dice, mean over classes (both classes of a binary "
             "mask), batch pooled"),
    LossSpec("focal", f"{TERMS}:FocalTerm", FocalOptions, "focal loss (Lin et al. 2017); pixel and class weights"),
    LossSpec("lovasz", "seglab.losses.lovasz:LovaszTerm", summary="Lovász-softmax over the classes present "
             "(multi-class), Lovász hinge (binary): a surrogate of IoU; class weights weight the classes"),
    LossSpec("tversky", f"{TERMS}:TverskyTerm", TverskyOptions, "Tversky loss (Salehi et al. 2017): Dice with "
             "false positives and negatives weighted by alpha and beta; class weights weight the classes"),
    LossSpec("focal-tversky", f"{TERMS}:TverskyTerm", FocalTverskyOptions, "focal Tversky loss (Abraham and "
             "Khan 2019): (1 - Tversky index)^gamma per class"),
    LossSpec("gdice", f"{TERMS}:GeneralisedDiceTerm", summary="generalised Dice (Sudre et al. 2017): classes "
             "weighted by 1 / their pixel count squared, so small classes count as much as large ones"),
):
    register_loss(spec)
