"""What seglab knows of an SMP architecture before building it (plain values, no torch), and where
encoder weights are looked for: what the registrations (`models.smp`), the builder
(`models.smp_network`) and the weight files (`models.pretrained`) share."""
from __future__ import annotations

from dataclasses import dataclass

WEIGHTS_DIR_VARIABLE = "SEGLAB_WEIGHTS_DIR"


@dataclass(frozen=True)
class Architecture:
    """What seglab knows of an SMP architecture before building it."""

    name: str                 # seglab's model name
    smp_class: str            # the class in segmentation_models_pytorch
    summary: str
    options: type
    smallest_encoder: str     # the encoder of its quickest working model (timm's test models: for tests)
    onnx_refusal: str = ""    # why it cannot be exported to ONNX ("" when it can)
    torchscript_refusal: str = ""
    feature_minimum: int = 1   # the deepest encoder features must be at least this many pixels a side
    feature_multiple: int = 1  # ... and a multiple of this many
