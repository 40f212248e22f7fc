"""seglab.load: a Predictor from a checkpoint, an ONNX file or a TorchScript file."""
from __future__ import annotations

import os

from seglab.api.keywords import checked_keywords
from seglab.inference.options import SEED_THRESHOLD, InferenceOptions
from seglab.inference.predictor import Predictor
from seglab.runtime.device import resolve_device


@checked_keywords("seglab.load")
def load(path: str | os.PathLike, *, device: str = "auto", threshold: float | None = None,
         tile: int | tuple[int, int] | None = None, overlap: float = 0.5, tta: str = "none", batch_size: int = 4,
         scale: float | None = None, membrane_class: int = 0, seed_threshold: float = SEED_THRESHOLD,
         precision: str = "auto", runtime: str = "auto", compile: bool = False, log=print) -> Predictor:
    """A Predictor for a seglab checkpoint (.pt), or a model exported by `seglab.export` (.onnx, .ts).

    >>> model = seglab.load("runs/isbi/best.pt", tta="flips")
    >>> result = model.predict("data/isbi2012/test/images/00.png")     # a path, an array or a PIL image
    >>> result.mask.shape, result.mask.dtype, sorted(set(result.mask.ravel()))
    ((512, 512), dtype('uint8'), [0, 255])                              # the training masks' own values
    >>> model.predict(image, instances=True).instances.max()             # cells by seeded watershed
    >>> for result in model.predict_many(paths): ...                      # batched, decoded ahead

    `tile` predicts overlapping tiles of that size (Gaussian-blended), `tta` averages "flips" or
    all eight rotations/flips ("d4"); `threshold` applies to binary models' probabilities; `scale`
    resizes images (default: the training scale);
    `membrane_class` and `seed_threshold` steer instances; `precision` is the autocast of PyTorch
    models ("auto": the precision the run validated in, where the device computes it natively);
    `runtime` "auto" runs a checkpoint on the CPU through the fastest parity-checked ONNX export of it
    beside it (`seglab export`, `seglab export --quantize int8`), "pytorch" the checkpoint itself;
    `compile` runs PyTorch models through torch.compile (each new input shape compiles once).
    Options are checked as `seglab predict` checks its flags.
    """
    tile = [tile] if isinstance(tile, int) else (list(tile) if tile is not None else None)
    options = InferenceOptions(threshold=threshold, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size,
                               scale=scale, membrane_class=membrane_class, seed_threshold=seed_threshold,
                               precision=precision, runtime=runtime, compile=compile)
    return load_with(path, options, device, log)


def load_with(path: str | os.PathLike, options: InferenceOptions, device: str = "auto", log=print) -> Predictor:
    """A Predictor of `path` with `options` as they are (the command and the server build them from flags)."""
    return Predictor.from_file(os.fspath(path), resolve_device(device), options, log)
