"""Predictor: a checkpoint (or an exported model) -> probabilities and masks in the user's values.

Whole images go through the network in one pass; large images, or any image with `tile` set, go
through overlap-tile prediction (Gaussian-blended tiles, mirror padding at the border); `tta`
averages flips or all eight rotations/flips, with or without tiles.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seglab.data.classmap import ClassMap
from seglab.data.io import read_image
from seglab.data.preprocess import prepare_image
from seglab.runtime.checkpoint import load_checkpoint, model_from_checkpoint
from seglab.inference.export_graph import image_stats
from seglab.errors import DataError, SeglabError
from seglab.inference.tiling import predict_tiled
from seglab.inference.tta import tta_forward
from seglab.models.outputs import full_size_logits, logits_to_probabilities
from seglab.runtime.device import free_memory

# Rough activation memory of a forward pass per input pixel and base channel (bytes), used to
# decide when an image is too large to predict whole on the current device.
ACTIVATION_BYTES_PER_PIXEL_CHANNEL = 48
AUTO_TILE = 512
STATS_PIXELS = 2**22  # pixels per band of the statistics pass over a streamed TIFF (32 MiB as float64)


@dataclass
class Prediction:
    probabilities: np.ndarray  # (K, H, W) float32; K = 1 (sigmoid, P(class 1)) for binary models
    classes: np.ndarray        # (H, W) int64 class indices
    mask: np.ndarray           # (H, W) the user's mask values (uint8 / uint16)


class Predictor:
    """Runs a trained model on images of any size.

    `Predictor.from_checkpoint("runs/x/best.pt").predict(array)` applies the training's channel
    handling, scale and normalisation, and returns the result at the input's size.
    """

    def __init__(self, model: torch.nn.Module, class_map: ClassMap, preprocess: dict,
                 device: str | torch.device = "cpu", threshold: float | None = None,
                 tile: tuple[int, int] | None = None, overlap: float = 0.5, tta: str = "none",
                 batch_size: int = 4, log=print):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_map = class_map
        self.channels = int(preprocess["channels"])
        self.scale = float(preprocess.get("scale", 1.0))
        self.normalization = preprocess.get("normalization", "per_image")
        self.threshold = float(preprocess.get("threshold", 0.5) if threshold is None else threshold)
        self.tile, self.overlap, self.tta, self.batch_size = tile, overlap, tta, batch_size
        self.log = log
        self.raw_input: float | None = None  # exported models take pixels in [0, raw_input]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        threshold: float | None = None, **options) -> "Predictor":
        """A .pt checkpoint, or an exported .onnx / .ts model (run through its own runtime)."""
        suffix = Path(path).suffix.lower()
        if suffix in (".onnx", ".ts", ".torchscript"):
            from seglab.inference.exported import load_exported

            exported = load_exported(path, device)
            predictor = cls(_ExportedModule(exported), exported.class_map,
                            {"channels": exported.channels, "scale": exported.scale, "normalization": "none",
                             "threshold": exported.threshold}, "cpu", threshold, **options)
            predictor.raw_input = float(exported.input_max)
            return predictor
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        return cls(model, ClassMap.from_dict(payload["class_map"]), payload["preprocess"], device, threshold,
                   **options)

    # ---- forward passes -----------------------------------------------------------------------
    def _tile_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> probabilities (B, K, h', w') straight from the network."""
        return logits_to_probabilities(self.model(batch).float())

    def _whole_forward(self, batch: torch.Tensor) -> torch.Tensor:
        return logits_to_probabilities(full_size_logits(self.model, batch).float())

    def _auto_tile(self, height: int, width: int) -> tuple[int, int] | None:
        base = getattr(self.model, "base_channels", None) or 64
        needed = height * width * base * ACTIVATION_BYTES_PER_PIXEL_CHANNEL
        if needed <= 0.5 * free_memory(self.device):
            return None
        self.log(f"note: a {width}x{height} image is too large to predict whole on {self.device}; "
                 f"predicting in {AUTO_TILE}x{AUTO_TILE} tiles")
        return (AUTO_TILE, AUTO_TILE)

    @torch.inference_mode()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Prepared image (C, h, w) -> probabilities (K, h, w) on the CPU."""
        tile = self.tile or self._auto_tile(*image.shape[-2:])
        if tile is None:
            forward = tta_forward(self._whole_forward, self.tta)
            return forward(image[None].to(self.device))[0].float().cpu()
        margin = getattr(self.model, "margin", 0)
        with self._tiles_normalised_as(self._exported_stats(image[None])):
            return predict_tiled(tta_forward(self._tile_forward, self.tta), image, tile, self.overlap,
                                 self.batch_size, self.device, margin=margin,
                                 valid_input=self.model.valid_input_size if margin else None)

    def _exported_stats(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """Raw pixels (1, C, H, W) of a whole image -> an exported model's `stats` input (1, C, 2);
        None for checkpoints, whose inputs come normalised."""
        if not isinstance(self.model, _ExportedModule):
            return None
        return image_stats(pixels, self.model.exported.normalization, self.model.exported.input_max)

    @contextmanager
    def _tiles_normalised_as(self, stats: torch.Tensor | None):
        """While an image's tiles go through an exported model, it normalises them with `stats`
        (1, C, 2), the whole image's, instead of each tile's own. A no-op when stats is None."""
        if stats is None:
            yield
            return
        self.model.image_stats = stats
        try:
            yield
        finally:
            self.model.image_stats = None

    def predict(self, array: np.ndarray, scale: float | None = None, name: str = "image") -> Prediction:
        """Decoded image (H, W[, C]) -> Prediction at the image's own size."""
        if array.ndim == 2:
            array = array[..., None]
        height, width = array.shape[:2]
        scale = self.scale if scale is None else scale
        image = prepare_image(array, self.channels, scale, self.normalization, name=name, raw_max=self.raw_input)
        try:
            probs = self.probabilities(image)
        except torch.OutOfMemoryError:
            tile = self.tile[0] if self.tile else AUTO_TILE
            raise SeglabError(f"out of memory on {self.device} predicting '{name}' ({width}x{height}): try "
                              f"--tile {max(64, tile // 2)} and --batch-size 1, or --device cpu") from None
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return self.finish(probs.numpy())

    @torch.inference_mode()
    def predict_batch(self, arrays: list[np.ndarray], names: list[str], scale: float | None = None
                      ) -> list["Prediction | DataError"]:
        """Several decoded images -> one Prediction each (or the DataError that image raised).

        Images that go through the network whole and share a size after preparation are stacked
        into one forward pass; tiled or odd-sized ones are predicted one by one.
        """
        scale = self.scale if scale is None else scale
        results: list = [None] * len(arrays)
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for index, (array, name) in enumerate(zip(arrays, names)):
            array = array[..., None] if array.ndim == 2 else array
            try:
                image = prepare_image(array, self.channels, scale, self.normalization, name=name,
                                      raw_max=self.raw_input)
            except DataError as error:
                results[index] = error
                continue
            if self.tile or self._auto_tile(*image.shape[-2:]):
                results[index] = self.predict(array, scale, name)
                continue
            groups.setdefault(tuple(image.shape), []).append((index, image))
        forward = tta_forward(self._whole_forward, self.tta)
        for members in groups.values():
            batch = torch.stack([image for _, image in members]).to(self.device)  # (B, C, h, w)
            try:
                probs = forward(batch).float().cpu()
            except torch.OutOfMemoryError:
                raise SeglabError(f"out of memory on {self.device} predicting {len(members)} images at once: "
                                  "try --batch-size 1, --tile 512, or --device cpu") from None
            for (index, _), image_probs in zip(members, probs):
                height, width = arrays[index].shape[:2]
                if image_probs.shape[-2:] != (height, width):
                    image_probs = F.interpolate(image_probs[None], size=(height, width), mode="bilinear",
                                                align_corners=False)[0]
                results[index] = self.finish(image_probs.numpy())
        return results

    def finish(self, probs: np.ndarray) -> Prediction:
        """Probabilities (K, H, W) -> classes and mask values."""
        if probs.shape[0] == 1:
            classes = (probs[0] > self.threshold).astype(np.int64)
        else:
            classes = probs.argmax(axis=0).astype(np.int64)
        return Prediction(probs.astype(np.float32), classes, self.class_map.decode(classes))

    def predict_file(self, path: str | Path, scale: float | None = None) -> Prediction:
        return self.predict(read_image(path), scale, name=str(path))

    @torch.inference_mode()
    def predict_large_tiff(self, in_path: str | Path, out_path: str | Path, tile: int = AUTO_TILE) -> Path:
        """Stream a TIFF of any size through tiled prediction into a tiled (Big)TIFF mask.

        Only a band of tile rows is in memory at once. Per-image normalisation uses the whole
        image's statistics, gathered in a first streaming pass.
        """
        from seglab.data.preprocess import match_channels, to_float
        from seglab.inference.tiff_io import TiffRows, predict_tiff_tiled

        if self.scale != 1.0:
            raise SeglabError("streamed TIFF prediction needs a model trained at --scale 1")
        exported = self.model if isinstance(self.model, _ExportedModule) else None
        mode = exported.exported.normalization if exported is not None else self.normalization
        with TiffRows(in_path) as source:
            height, width = source.height, source.width
            total = np.zeros(self.channels)
            squares = np.zeros(self.channels)
            low, high = np.full(self.channels, np.inf), np.full(self.channels, -np.inf)
            band = max(16, STATS_PIXELS // max(width, 1))  # rows per read: the band's size is bounded
            for y0 in range(0, height, band):
                rows = to_float(match_channels(_hwc(source.read_rows(y0, min(y0 + band, height))), self.channels,
                                               str(in_path))).astype(np.float64)
                total += rows.sum(axis=(0, 1))
                squares += (rows ** 2).sum(axis=(0, 1))
                low, high = np.minimum(low, rows.min(axis=(0, 1))), np.maximum(high, rows.max(axis=(0, 1)))
        count = height * width
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean ** 2, 0) * count / max(count - 1, 1))
        if mode == "per_image":
            shift, divide = mean, np.maximum(std, 1e-6)
        elif mode == "minmax":
            shift, divide = low, np.maximum(high - low, 1e-6)
        else:
            shift, divide = np.zeros(self.channels), np.ones(self.channels)

        def normalize(rows: np.ndarray) -> np.ndarray:
            pixels = to_float(match_channels(_hwc(rows), self.channels, str(in_path)))
            if exported is not None:  # the graph normalises raw pixels with the stats it is given
                return pixels * np.float32(self.raw_input)
            return ((pixels - shift) / divide).astype(np.float32)

        def to_output(probs: torch.Tensor) -> np.ndarray:
            return self.finish(probs.numpy()).mask

        margin = getattr(self.model, "margin", 0)
        stats = (torch.from_numpy(np.stack([shift, divide], -1)[None].astype(np.float32))
                 if exported is not None and mode != "none" else None)  # (1, C, 2)
        with self._tiles_normalised_as(stats):
            return predict_tiff_tiled(tta_forward(self._tile_forward, self.tta), in_path, out_path,
                                      tile=self.tile or (tile, tile), overlap=self.overlap,
                                      batch_size=self.batch_size, device=self.device, margin=margin,
                                      valid_input=self.model.valid_input_size if margin else None,
                                      normalize=normalize, to_output=to_output)

    def class_probability(self, prediction: Prediction, class_index: int) -> np.ndarray:
        """(H, W) probability of one class (for binary models P(0) = 1 - P(1))."""
        probs = prediction.probabilities
        if probs.shape[0] == 1:
            return probs[0] if class_index == 1 else 1.0 - probs[0]
        return probs[class_index]


def _hwc(rows: np.ndarray) -> np.ndarray:
    return rows[..., None] if rows.ndim == 2 else rows


class _ExportedModule(torch.nn.Module):
    """Adapts an exported model (raw pixels -> probabilities) to the Predictor's module calls:
    it returns logits whose sigmoid/softmax gives back the exported probabilities."""

    def __init__(self, exported):
        super().__init__()
        self.exported = exported
        self.image_stats: torch.Tensor | None = None  # (1, C, 2) of the image being tiled, if any

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        probs = self.exported.forward(batch, self.image_stats).float().clamp(1e-7, 1 - 1e-7)
        return torch.logit(probs) if probs.shape[1] == 1 else probs.log()
