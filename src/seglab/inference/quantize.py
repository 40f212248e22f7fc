"""Int8 ONNX models: static quantization calibrated on a run's training images, checked on its validation images.

The float ONNX graph (`inference.export`) is quantized by ONNX Runtime's static quantizer in QDQ
form: convolution weights int8 per output channel, activations uint8 (the u8 x s8 products
AVX512-VNNI and AMX compute natively), their ranges calibrated (min/max) on a sample of the run's
training images. Normalisation, padding and the final sigmoid/softmax stay float. The int8 model
is kept only when its masks on the run's validation images lose at most `max_dice_drop` mean Dice
against the float model's (`int8_parity`); a broken calibration (blank images, another data set)
fails that check and nothing is written.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seglab.data.discover import Pair
from seglab.data.io import read_image
from seglab.data.truth import read_truth
from seglab.data.writing import write_error
from seglab.errors import DataError, SeglabError
from seglab.inference.export import DEFAULT_TOLERANCE, default_parity_images, export_model, temporary_name
from seglab.inference.export_timing import largest, time_against_pytorch
from seglab.inference.fastest import set_onnx_metadata
from seglab.inference.predictor import Predictor
from seglab.metrics.scoring import evaluate_images
from seglab.runtime.run_files import SPLIT_FILE, read_split

DEFAULT_MAX_DICE_DROP = 0.01   # mean Dice the int8 model may lose against the float one
CALIBRATION_IMAGES = 16        # training images sampled for the activation ranges
CALIBRATION_SIDE = 1024        # larger images are centre-cropped to this side for calibration
PARITY_IMAGES = 32            # validation images the Dice check predicts, at most
QUANTIZED_OPS = ["Conv", "ConvTranspose"]


def run_pairs(checkpoint: Path) -> dict[str, list[Pair]] | None:
    """The training and validation pairs of the run folder holding `checkpoint` (its split.json),
    or None for a checkpoint outside a run folder."""
    if not (checkpoint.parent / SPLIT_FILE).is_file():
        return None
    return read_split(checkpoint.parent)


def calibration_inputs(float_model: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Decoded images (H, W[, C]) -> the exported graph's raw-pixel inputs (1, C, h, w) float32, at
    the model's scale, each centre-cropped to at most CALIBRATION_SIDE per side."""
    inputs = []
    for index, image in enumerate(images):
        array = image[..., None] if image.ndim == 2 else image
        pixels = float_model.prepare(array, f"calibration image {index}")  # (C, h, w) raw
        top = max(0, (pixels.shape[1] - CALIBRATION_SIDE) // 2)
        left = max(0, (pixels.shape[2] - CALIBRATION_SIDE) // 2)
        pixels = pixels[:, top:top + CALIBRATION_SIDE, left:left + CALIBRATION_SIDE]
        inputs.append(np.ascontiguousarray(pixels[None].numpy(), dtype=np.float32))
    return inputs


def sample_training_images(pairs: list[Pair], count: int = CALIBRATION_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """Up to `count` decoded training images, a seeded sample; unreadable files are skipped."""
    order = np.random.default_rng(seed).permutation(len(pairs))[:count]
    images = []
    for index in sorted(order.tolist()):
        try:
            images.append(read_image(pairs[index].image))
        except DataError:
            continue
    return images


def quantize_graph(float_path: Path, out_path: Path, inputs: list[np.ndarray], input_name: str) -> None:
    """Write the int8 QDQ model of the float ONNX file `float_path` to `out_path`, its activation
    ranges calibrated on `inputs` ((1, C, h, w) float32 raw pixels each)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise SeglabError("int8 export needs onnxruntime's quantization tools: pip install 'seglab[export]'") from None

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: its notes on the optional stats input are noise

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.pending = iter(inputs)

        def get_next(self):
            batch = next(self.pending, None)
            return None if batch is None else {input_name: batch}

    prepared = out_path.with_name(f".{out_path.name}.{os.getpid()}.prep.tmp")
    try:
        # Shape inference and graph clean-up first, as ONNX Runtime advises; the symbolic pass
        # cannot follow the graph's data-dependent padding, and is not needed for QDQ.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Calibration(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
    finally:
        prepared.unlink(missing_ok=True)


def int8_parity(float_model: Predictor, int8_model: Predictor, pairs: list[Pair] | None,
                images: list[np.ndarray]) -> dict:
    """How the int8 model's masks compare with the float model's, whole images through the
    Predictor: the mean Dice of each against the truth of labelled `pairs` (the run's validation
    images, at most PARITY_IMAGES), or without pairs the int8 masks' Dice against the float masks on
    `images`; and the share of pixels where the two models agree."""
    names = list(float_model.class_map.names)
    float_classes: dict[int, np.ndarray] = {}
    agreement = [0, 0]  # (equal pixels, pixels)

    def decoded(index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if not pairs:
            return images[index], None
        image = read_image(pairs[index].image)
        return image, read_truth(pairs[index].mask, float_model.class_map, image.shape[:2], pairs[index].image)

    def predict_float(index: int):
        image, truth = decoded(index)
        float_classes[index] = float_model.predict(image).classes
        return float_classes[index], truth, {}

    def predict_int8(index: int):
        image, truth = decoded(index)
        classes = int8_model.predict(image).classes
        agreement[0] += int((classes == float_classes[index]).sum())
        agreement[1] += classes.size
        return classes, float_classes[index] if truth is None else truth, {}

    pairs = pairs[:PARITY_IMAGES] if pairs else None
    items = list(range(len(pairs) if pairs else len(images)))
    labels = float_model.class_map.multilabel
    dice_float = evaluate_images(predict_float, items, names, multilabel=labels).pooled["mdice"] if pairs else None
    if not pairs:
        for index in items:
            predict_float(index)
        dice_float = 1.0
    dice_int8 = evaluate_images(predict_int8, items, names, multilabel=labels).pooled["mdice"]
    source = (f"{len(items)} validation images of the run" if pairs else
              f"{len(items)} images, against the float model's masks (no labelled validation images)")
    return {"dice_float": float(dice_float), "dice_int8": float(dice_int8),
            "dice_drop": float(dice_float - dice_int8), "mask_agreement": agreement[0] / max(agreement[1], 1),
            "images": source}


def export_int8(checkpoint_path: str | Path, out_path: str | Path | None = None,
                calibration_images: list[np.ndarray] | None = None, parity_images: list[np.ndarray] | None = None,
                max_dice_drop: float = DEFAULT_MAX_DICE_DROP, tolerance: float = DEFAULT_TOLERANCE,
                input_max: float = 255.0) -> dict:
    """Export a checkpoint as an int8 ONNX model for ONNX Runtime on the CPU.

    The float graph is exported and parity-checked first (`export_model`), then quantized with
    activation ranges calibrated on `calibration_images` (decoded images; default: a sample of the
    run's training images, split.json beside the checkpoint), and kept only when its masks lose at
    most `max_dice_drop` mean Dice on the run's validation images (or, outside a run folder, on
    `parity_images` against the float model's masks). Written atomically to `out_path` (default:
    the checkpoint's path with .int8.onnx); returns the export report with "quantization" added.
    """
    if not 0 <= max_dice_drop < 1:
        raise SeglabError(f"invalid --max-dice-drop: {max_dice_drop}; expected a number in [0, 1) "
                          f"(default {DEFAULT_MAX_DICE_DROP})")
    checkpoint_path = Path(checkpoint_path)
    out_path = Path(out_path) if out_path else checkpoint_path.with_suffix(".int8.onnx")
    pairs = run_pairs(checkpoint_path)
    if calibration_images is None:
        if pairs is None or not pairs["train"]:
            raise SeglabError(f"'{checkpoint_path}' is not in a run folder (no split.json beside it): give "
                              "--calibration-images, a few of the images the model was trained on")
        calibration_images = sample_training_images(pairs["train"])
    if not calibration_images:
        raise SeglabError("no readable calibration images: give --calibration-images")
    float_path, int8_path = temporary_name(out_path, "float"), temporary_name(out_path)
    try:
        report = export_model(checkpoint_path, "onnx", float_path, parity_images, tolerance=tolerance,
                              input_max=input_max, timed=False)
        float_model = Predictor.from_file(float_path, "cpu", log=_quiet)
        quantize_graph(float_path, int8_path, calibration_inputs(float_model, calibration_images), "pixels")
        quantization = {"precision": "int8", "format": "QDQ", "weights": "int8 per channel",
                        "activations": "uint8", "calibration_images": len(calibration_images)}
        metadata = {**report["metadata"], "quantization": quantization}
        metadata.pop("speed", None)
        set_onnx_metadata(int8_path, metadata)
        int8_model = Predictor.from_file(int8_path, "cpu", log=_quiet)
        parity_set = parity_images if parity_images is not None else default_parity_images()
        quantization["parity"] = int8_parity(float_model, int8_model, pairs["val"] if pairs else None, parity_set)
        quantization["parity"]["max_dice_drop"] = max_dice_drop
        _refuse_if_worse(quantization["parity"], checkpoint_path, max_dice_drop)
        image = read_image(pairs["val"][0].image) if pairs and pairs["val"] else largest(parity_set)
        metadata["speed"] = time_against_pytorch(checkpoint_path, int8_path, image)
        set_onnx_metadata(int8_path, {"quantization": quantization, "speed": metadata["speed"]})
        os.replace(int8_path, out_path)
    except OSError as error:
        raise write_error(out_path, error) from None
    finally:
        float_path.unlink(missing_ok=True)
        int8_path.unlink(missing_ok=True)
    return {**report, "path": str(out_path), "metadata": metadata, "quantization": quantization}


def _refuse_if_worse(parity: dict, checkpoint_path: Path, max_dice_drop: float) -> None:
    if not parity["dice_drop"] <= max_dice_drop:  # also catches NaN
        raise SeglabError(f"int8 export of '{checkpoint_path}' refused: mean Dice {parity['dice_int8']:.4f} against "
                          f"{parity['dice_float']:.4f} for the float model on {parity['images']} (a drop of "
                          f"{parity['dice_drop']:.4f} > {max_dice_drop:g}); nothing was written. Calibrate on the "
                          "training images (--calibration-images) or export float (no --quantize)")


def _quiet(*args, **kwargs) -> None:
    pass
