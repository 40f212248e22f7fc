"""seglab.check, seglab.export and seglab.report: a data folder's preflight, an exported model, a run's page."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seglab.api.keywords import checked_keywords
from seglab.data.classmap import MaskRules
from seglab.data.preflight import Preflight, run_preflight
from seglab.errors import SeglabError


@checked_keywords("seglab.check")
def check(data: str | os.PathLike, *, mask_values: list[int] | None = None, num_classes: int | None = None,
          class_names: list[str] | None = None, ignore_index: int | None = None,
          mask_colors: str | os.PathLike | None = None, label_map: str | os.PathLike | None = None,
          multilabel: bool = False) -> Preflight:
    """What `seglab check DATA` reports, as an object: `.ok`, `.errors`, `.warnings`, `.class_map`,
    `.lines`, and `str(report)` the text the command prints. Nothing is written but the mask cache
    of a folder labelled by annotations, remapped by `label_map` or holding overlapping labels
    (its `.seglab-cache/`). `multilabel`: masks with a channel per label, or label k in bit k.

    >>> report = seglab.check("data/isbi2012")
    >>> report.ok, report.class_map.describe()     # (True, '0 -> 0 (0), 255 -> 1 (255)')
    """
    rules = MaskRules.from_options(mask_values, num_classes, class_names, ignore_index,
                                   os.fspath(mask_colors) if mask_colors else None, multilabel)
    return run_preflight(os.fspath(data), **rules.as_kwargs(), label_map=os.fspath(label_map) if label_map else None)


@checked_keywords("seglab.export")
def export(model: str | os.PathLike, format: str = "onnx", output: str | os.PathLike | None = None, *,
           parity_images: list | None = None, tolerance: float = 1e-4, quantize: str | None = None,
           calibration_images: list | None = None, max_dice_drop: float = 0.01) -> dict:
    """Export a checkpoint to ONNX or TorchScript (raw pixels in, probabilities out), written only
    when the exported file matches the checkpoint within `tolerance` on real images (paths or arrays;
    default: crops of the bundled ISBI slices). Returns the parity report: path, max_abs_diff, ...

    `quantize="int8"` writes an int8 ONNX model for ONNX Runtime on the CPU (default name
    `<checkpoint>.int8.onnx`), calibrated on `calibration_images` (default: a sample of the run's
    training images) and kept only when its masks lose at most `max_dice_drop` mean Dice on the
    run's validation images; the report's "quantization" holds the Dice of both and their agreement.
    An ONNX export records its speed on this CPU: `seglab.load(checkpoint)` then runs the fastest.

    >>> seglab.export("runs/isbi/best.pt", "onnx", "isbi.onnx")["max_abs_diff"]    # 1.8e-06
    >>> seglab.export("runs/isbi/best.pt", quantize="int8")["quantization"]["parity"]["dice_drop"]
    """
    from seglab.data.io import read_image
    from seglab.inference.export import export_model
    from seglab.inference.quantize import export_int8

    def decoded(images: list | None) -> list | None:
        if images is None:
            return None
        return [image if isinstance(image, np.ndarray) else read_image(image) for image in images]

    output = os.fspath(output) if output else None
    if quantize is None:
        return export_model(os.fspath(model), format, output, decoded(parity_images), tolerance=tolerance)
    if quantize != "int8":
        raise SeglabError(f"unknown quantization {quantize!r}: int8 is the one seglab writes")
    if format != "onnx":
        raise SeglabError("int8 quantization is for ONNX Runtime: export it with --format onnx")
    return export_int8(os.fspath(model), output, decoded(calibration_images), decoded(parity_images),
                       max_dice_drop=max_dice_drop, tolerance=tolerance)


@checked_keywords("seglab.report")
def report(run_dir: str | os.PathLike, device: str = "cpu") -> Path:
    """Write run_dir/report.html (curves, per-class scores, best and worst validation images,
    speed, environment, config) and return its path; `device` predicts the validation images."""
    from seglab.runtime.device import resolve_device
    from seglab.viz.report import write_report

    return write_report(Path(run_dir), str(resolve_device(device)))
