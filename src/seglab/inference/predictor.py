"""Predictor: a checkpoint -> probabilities and masks in the user's own mask values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seglab.data.classmap import ClassMap
from seglab.data.io import read_image
from seglab.data.preprocess import prepare_image
from seglab.engine.checkpoint import load_checkpoint, model_from_checkpoint
from seglab.losses import logits_to_probabilities
from seglab.models.common import full_size_logits


@dataclass
class Prediction:
    probabilities: np.ndarray  # (K, H, W) float32; K = 1 (sigmoid) for binary models
    classes: np.ndarray        # (H, W) int64 class indices
    mask: np.ndarray           # (H, W) the user's mask values (uint8 / uint16)


class Predictor:
    """Runs a trained model on whole images of any size.

    `Predictor.from_checkpoint("runs/x/best.pt").predict(array)` applies the same channel
    handling, scaling and normalisation as training, and resizes the result back to the input.
    """

    def __init__(self, model: torch.nn.Module, class_map: ClassMap, preprocess: dict,
                 device: str | torch.device = "cpu", threshold: float | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_map = class_map
        self.channels = int(preprocess["channels"])
        self.scale = float(preprocess.get("scale", 1.0))
        self.normalization = preprocess.get("normalization", "per_image")
        self.threshold = float(preprocess.get("threshold", 0.5) if threshold is None else threshold)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        threshold: float | None = None) -> "Predictor":
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        return cls(model, ClassMap.from_dict(payload["class_map"]), payload["preprocess"], device, threshold)

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Prepared image (C, h, w) -> probabilities (K, h, w) on the CPU."""
        logits = full_size_logits(self.model, image[None].to(self.device))
        return logits_to_probabilities(logits.float())[0].cpu()

    def predict(self, array: np.ndarray, scale: float | None = None, name: str = "image") -> Prediction:
        """Decoded image (H, W[, C]) -> Prediction at the image's own size."""
        if array.ndim == 2:
            array = array[..., None]
        height, width = array.shape[:2]
        scale = self.scale if scale is None else scale
        image = prepare_image(array, self.channels, scale, self.normalization, name=name)
        probs = self.probabilities(image)
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return self.finish(probs.numpy())

    def finish(self, probs: np.ndarray) -> Prediction:
        """Probabilities (K, H, W) -> classes and mask values."""
        if probs.shape[0] == 1:
            classes = (probs[0] > self.threshold).astype(np.int64)
        else:
            classes = probs.argmax(axis=0).astype(np.int64)
        return Prediction(probs.astype(np.float32), classes, self.class_map.decode(classes))

    def predict_file(self, path: str | Path, scale: float | None = None) -> Prediction:
        return self.predict(read_image(path), scale, name=str(path))
