"""How long one image takes through a checkpoint and through its export, on this CPU: what `seglab export`
records in the ONNX file and `inference.fastest` chooses the faster path by."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from seglab.inference.fastest import PYTORCH, cpu_model_name
from seglab.inference.options import InferenceOptions
from seglab.inference.predictor import Predictor


def time_against_pytorch(checkpoint_path: str | Path, exported_path: Path, image: np.ndarray,
                         runs: int = 3) -> dict:
    """Seconds of one whole-image prediction of `image` (H, W[, C]) through PyTorch (the checkpoint
    at its "auto" precision) and through the exported file, on the CPU; the fastest of 2 x `runs`
    runs each. What `inference.fastest` chooses a path by."""
    quiet = lambda *args, **kwargs: None  # noqa: E731
    paths = {PYTORCH: Predictor.from_file(checkpoint_path, "cpu", InferenceOptions(runtime="pytorch"), log=quiet)}
    exported = Predictor.from_file(exported_path, "cpu", log=quiet)
    paths[exported.runtime] = exported
    seconds = {name: float("inf") for name in paths}
    # Each runtime in a block of its own, after an untimed call: kernels are chosen, and the other
    # runtime's threads have settled (onnxruntime's threads spin on after a run, and interleaved
    # timings at export chose int8 where the benchmark then measured PyTorch faster). Both orders,
    # so a drift in the machine's load hits both alike.
    for order in (list(paths), list(paths)[::-1]):
        for name in order:
            paths[name].predict(image)
            for _ in range(runs):
                started = time.perf_counter()
                paths[name].predict(image)
                seconds[name] = min(seconds[name], time.perf_counter() - started)
    return {"cpu": cpu_model_name(), "image": list(image.shape[:2]), "runtime": exported.runtime,
            "pytorch_path": paths[PYTORCH].runtime, "seconds": {k: round(v, 6) for k, v in seconds.items()}}


def largest(images: list[np.ndarray]) -> np.ndarray:
    return max(images, key=lambda image: image.shape[0] * image.shape[1])
