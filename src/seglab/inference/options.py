"""The options of a Predictor, declared once: checked the same for flags of predict/evaluate and for seglab.load.

Plain values only (no torch, no scipy): the flags of predict, evaluate and serve are made from them at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass

from seglab.options import check_fields, option

# Test-time augmentation modes; `inference.tta.TRANSFORMS` holds each one's transforms.
TTA_MODES = ("none", "flips", "d4")
# Seeds of the watershed (`inference.postprocess`): interiors whose membrane probability is below this.
# Lower values merge fewer cells until seeds go missing; 0.05-0.07 scored best on ISBI slices 25-29
# (BENCHMARKS.md).
SEED_THRESHOLD = 0.07

# Autocast precisions of a PyTorch model's forward passes (exported models compute in their own).
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("auto", "pytorch")
# The rules of a prediction's resize factor (--scale of predict, evaluate and serve, a request's scale).
SCALE_RULES = {"above": 0, "max": 16}


# Options that decide how a model is loaded (which runtime, compiled or not): a loaded Predictor keeps them.
LOADING_OPTIONS = ("runtime", "compile")


@dataclass(frozen=True)
class InferenceOptions:
    """How a Predictor predicts, declared once: the flags of predict, evaluate and serve, seglab.load's
    keywords and a request's query are made from these fields. None for threshold and scale: the
    trained model's own."""

    threshold: float | None = option(None, "probability threshold of binary models (default: the training's)",
                                     min=0, max=1, flags=("-t", "--mask-threshold"))
    tile: list[int] | None = option(None, "overlap-tile prediction with H[,W] tiles (default: whole images, "
                                    "tiles when an image is too large for the device)", min=8, length=(1, 2),
                                    metavar="H[,W]")
    overlap: float = option(0.5, "overlap of neighbouring tiles, a fraction of the tile", min=0, below=1)
    tta: str = option("none", "test-time augmentation: average over flips, or all 8 rotations/flips",
                      choices=TTA_MODES)
    batch_size: int = option(4, "tiles, or same-size images, per forward pass", min=1, max=4096,
                             flags=("-b", "--batch-size"))
    precision: str = option("auto", "autocast precision of PyTorch models; auto: the precision the model was "
                            "validated in (bf16 runs predict in bf16 where the CPU or GPU computes it natively), "
                            "fp32 for fp32 runs and older checkpoints", choices=INFERENCE_PRECISIONS)
    runtime: str = option("auto", "what runs a checkpoint on the CPU; auto: the fastest ONNX export of it lying beside "
                          "it (seglab export, parity-checked, timed on this CPU) when one beat PyTorch, else "
                          "PyTorch; pytorch: the checkpoint itself", choices=RUNTIMES)
    compile: bool = option(False, "torch.compile PyTorch models (each new input shape compiles once, seconds to "
                           "minutes; pays off over many same-size images)")
    scale: float | None = option(None, "resize factor of the images (default: the training scale)",
                                 flags=("-s", "--scale"), **SCALE_RULES)
    membrane_class: int = option(0, "class index of the boundaries for instances (ISBI: 0 = membrane)", min=0)
    seed_threshold: float = option(SEED_THRESHOLD, "instances: boundary probability below which pixels seed "
                                   "a cell", above=0, below=1)

    def __post_init__(self):
        check_fields(self, "inference")

    @property
    def tile_size(self) -> tuple[int, int] | None:
        return (self.tile[0], self.tile[-1]) if self.tile else None
