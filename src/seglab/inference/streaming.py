"""Huge TIFFs through a Predictor without loading them: a statistics pass, then tiled prediction by bands.

Per-image normalisation needs the whole image's mean and spread (or range), so a first pass reads
bounded bands of rows to gather them; the second pass predicts tile rows and writes each finished
band of the mask into a tiled (Big)TIFF. Memory stays at a few bands whatever the image's size.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from seglab.data.normalization import Normalization
from seglab.data.preprocess import match_channels, to_float
from seglab.errors import SeglabError
from seglab.inference.exported import ExportedModule
from seglab.inference.tiff_io import TiffRows, predict_tiff_tiled
from seglab.inference.tta import tta_forward

STATS_PIXELS = 2**22  # pixels per band of the statistics pass (32 MiB as float64)


def _hwc(rows: np.ndarray) -> np.ndarray:
    return rows[..., None] if rows.ndim == 2 else rows


def tiff_statistics(path: str | Path, channels: int, mode: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """(shift, divide) per channel of a TIFF's first page for normalisation `mode` ("per_image":
    mean and unbiased std; "minmax": low and range; "none": 0 and 1), read in bounded bands; a
    pretrained encoder's fixed {"mean", "std"} as they are."""
    if isinstance(mode, dict):
        return np.asarray(mode["mean"], dtype=np.float64), np.asarray(mode["std"], dtype=np.float64)
    with TiffRows(path) as source:
        height, width = source.height, source.width
        total, squares = np.zeros(channels), np.zeros(channels)
        low, high = np.full(channels, np.inf), np.full(channels, -np.inf)
        band = max(16, STATS_PIXELS // max(width, 1))  # rows per read: the band's size is bounded
        for y0 in range(0, height, band):
            rows = to_float(match_channels(_hwc(source.read_rows(y0, min(y0 + band, height))), channels,
                                           str(path))).astype(np.float64)
            total += rows.sum(axis=(0, 1))
            squares += (rows ** 2).sum(axis=(0, 1))
            low, high = np.minimum(low, rows.min(axis=(0, 1))), np.maximum(high, rows.max(axis=(0, 1)))
    count = height * width
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0) * count / max(count - 1, 1))
    if mode == "per_image":
        return mean, np.maximum(std, 1e-6)
    if mode == "minmax":
        return low, np.maximum(high - low, 1e-6)
    return np.zeros(channels), np.ones(channels)


def predict_huge_tiff(predictor, in_path: str | Path, out_path: str | Path, tile: int = 512) -> Path:
    """Predict the TIFF at `in_path` into a mask TIFF at `out_path` (the user's mask values)."""
    if predictor.scale != 1.0:
        raise SeglabError("streamed TIFF prediction needs a model trained at --scale 1")
    exported = predictor.model if isinstance(predictor.model, ExportedModule) else None
    mode = exported.exported.normalization if exported is not None else predictor.normalization
    channels = predictor.channels
    shift, divide = tiff_statistics(in_path, channels, mode)

    def normalize(rows: np.ndarray) -> np.ndarray:
        pixels = to_float(match_channels(_hwc(rows), channels, str(in_path)))
        if exported is not None:  # the graph normalises raw pixels with the stats it is given
            return pixels * np.float32(predictor.raw_input)
        return ((pixels - shift) / divide).astype(np.float32)

    def to_output(probs: torch.Tensor) -> np.ndarray:
        return predictor.finish(probs).mask

    margin = getattr(predictor.model, "margin", 0)
    stats = (torch.from_numpy(np.stack([shift, divide], -1)[None].astype(np.float32))
             if exported is not None and mode != "none" else None)  # (1, C, 2)
    forward = functools.partial(predictor.tile_forward, stats=stats)
    return predict_tiff_tiled(tta_forward(forward, predictor.tta), in_path, out_path,
                              tile=predictor.tile or (tile, tile), overlap=predictor.overlap,
                              batch_size=predictor.batch_size, device=predictor.device, margin=margin,
                              valid_input=predictor.model.valid_input_size if margin else None,
                              normalize=normalize, to_output=to_output)
