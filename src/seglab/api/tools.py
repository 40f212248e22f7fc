"""seglab.check, seglab.export and seglab.report: a data folder's preflight, an exported model, a run's page."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seglab.data.classmap import MaskRules
from seglab.data.preflight import Preflight, run_preflight


def check(data: str | os.PathLike, *, mask_values: list[int] | None = None, num_classes: int | None = None,
          class_names: list[str] | None = None, ignore_value: int | None = None,
          mask_colors: str | os.PathLike | None = None) -> Preflight:
    """What `seglab check DATA` reports, as an object: `.ok`, `.errors`, `.warnings`, `.class_map`,
    `.lines`, and `str(report)` the text the command prints. Nothing is written.

    >>> report = seglab.check("data/isbi2012")
    >>> report.ok, report.class_map.describe()     # (True, '0 -> 0 (0), 255 -> 1 (255)')
    """
    rules = MaskRules.from_options(mask_values, num_classes, class_names, ignore_value,
                                   os.fspath(mask_colors) if mask_colors else None)
    return run_preflight(os.fspath(data), **rules.as_kwargs())


def export(model: str | os.PathLike, format: str = "onnx", output: str | os.PathLike | None = None, *,
           parity_images: list | None = None, tolerance: float = 1e-4) -> dict:
    """Export a checkpoint to ONNX or TorchScript (raw pixels in, probabilities out), written only
    when the exported file matches the checkpoint within `tolerance` on real images (paths or arrays;
    default: crops of the bundled ISBI slices). Returns the parity report: path, max_abs_diff, ...

    >>> seglab.export("runs/isbi/best.pt", "onnx", "isbi.onnx")["max_abs_diff"]    # 1.8e-06
    """
    from seglab.data.io import read_image
    from seglab.inference.export import export_model

    images = None
    if parity_images is not None:
        images = [image if isinstance(image, np.ndarray) else read_image(image) for image in parity_images]
    return export_model(os.fspath(model), format, os.fspath(output) if output else None, images,
                        tolerance=tolerance)


def report(run_dir: str | os.PathLike, device: str = "cpu") -> Path:
    """Write run_dir/report.html (curves, per-class scores, best and worst validation images,
    speed, environment, config) and return its path; `device` predicts the validation images."""
    from seglab.runtime.device import resolve_device
    from seglab.viz.report import write_report

    return write_report(Path(run_dir), str(resolve_device(device)))
