"""Export a checkpoint to ONNX or TorchScript: raw pixels in, probabilities out, checked for parity.

The exported graph is self-contained. It takes RAW pixels, a float32 batch (B, C, H, W) in the
value range of the image files (0..255 for 8-bit images, the default `input_max`; pass
`input_max=65535` for 16-bit files, `1.0` for float images already in [0, 1]), and does what
`Predictor` does before and after the network:

    pixels / input_max -> the checkpoint's normalisation ("per_image": per image and channel zero
    mean / unit std with the unbiased std, as `preprocess.normalize`; "minmax"; "none"; a
    pretrained encoder's fixed mean and std)
    -> mirror padding to a size the network takes (models with an `input_multiple`: far sides up to
    a multiple, 2 ** depth for a same-padding U-Net, the encoder's stride for SMP models;
    valid-padding U-Net: `margin` context on every side, as `full_size_logits`)
    -> network -> crop to (H, W) -> sigmoid (1 output channel) or softmax (K channels).

A second, optional input `stats` (B or 1, C, 2) carries a whole image's normalisation statistics
(shift, divide) for inputs that are tiles of it; left out (or NaN), the graph uses the input's own.
In ONNX it is an input with a NaN default (an overridable initializer); in TorchScript an optional
argument of `forward`.

Batch, height and width are dynamic. The channels must already match the model (gray repeated for
RGB models), and a checkpoint trained at `--scale` s expects pixels resized by s first (both are
stored in the file's metadata: `channels`, `scale`).

Export fails with a SeglabError, leaving no file behind, unless the exported model, run by its own
runtime (onnxruntime or torch.jit.load), matches the PyTorch model run the Predictor's way within
`tolerance` (max abs difference of probabilities) on real images of several sizes.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from seglab.data.classmap import ClassMap
from seglab.data.folder_lock import remove_stale_temporaries
from seglab.data.normalization import Normalization
from seglab.data.preprocess import match_channels, normalize
from seglab.data.writing import write_error
from seglab.errors import SeglabError
from seglab.inference.export_graph import ExportWrapper, image_stats
from seglab.inference.exported import EXPORT_FORMAT, STATS_INPUT, TORCHSCRIPT_METADATA, load_exported
from seglab.models.outputs import full_size_logits, logits_to_probabilities
from seglab.runtime.checkpoint import load_checkpoint, model_from_checkpoint, postprocess_of
from seglab.version import __version__

FORMATS = ("onnx", "torchscript")
INPUT_NAME, STATS_NAME, OUTPUT_NAME = "pixels", STATS_INPUT, "probabilities"
DEFAULT_TOLERANCE = 1e-4
# Default parity images: (height, width) crops of the bundled ISBI test slices. Odd sizes, none a
# multiple of 16 or equal to the trace size, prove the dynamic height and width; the pair proves
# the dynamic batch.
PARITY_CROPS = ((300, 420), (300, 420), (512, 512), (181, 97))
TRACE_SIZE = (64, 80)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its checkpoint's model/class_map/preprocess): a checkpoint, or an
    ensemble file whose members become one EnsembleModule."""
    from seglab.inference.ensemble import EnsembleModule, is_ensemble_file, load_members, read_ensemble

    if is_ensemble_file(path):
        members, class_map, preprocess, postprocess = load_members(path)
        names = [str(p) for p in read_ensemble(path)[0]]
        return (EnsembleModule(members, class_map.multilabel).eval(),
                {"model": {"name": "ensemble", "kwargs": {"members": names}}, "class_map": class_map.to_dict(),
                 "preprocess": preprocess, "postprocess": postprocess})
    payload = load_checkpoint(path)
    return model_from_checkpoint(payload, path).eval(), payload


def export_metadata(payload: dict, input_max: float) -> dict:
    """What an exported file carries besides the graph (plain JSON values)."""
    preprocess = payload["preprocess"]
    class_map = ClassMap.from_dict(payload["class_map"])
    return {
        "format": EXPORT_FORMAT,
        "seglab_version": __version__,
        "model": payload["model"],
        "class_map": class_map.to_dict(),
        "num_outputs": class_map.num_outputs,
        "channels": int(preprocess["channels"]),
        "scale": float(preprocess.get("scale", 1.0)),
        "normalization": preprocess.get("normalization", "per_image"),
        "threshold": postprocess_of(payload)["threshold"],
        "input_max": float(input_max),
        "input": f"{INPUT_NAME}: raw pixels (B, C, H, W) float32 in 0..input_max; the graph normalises",
        "stats_input": f"{STATS_NAME} (optional): (B or 1, C, 2) float32 (shift, divide) of the whole image in "
                       "units of pixels / input_max, for tiles; NaN or absent: the input's own",
        "output": f"{OUTPUT_NAME}: (B, K, H, W) float32, " + ("a sigmoid per label (K overlapping labels)"
                                                               if class_map.multilabel else
                                                               "sigmoid for K = 1, softmax otherwise"),
    }


# ---- parity -------------------------------------------------------------------------------------
def default_parity_images() -> list[np.ndarray]:
    """Crops (PARITY_CROPS) of the bundled ISBI test slices as uint8 (H, W) arrays, or seeded
    random uint8 images of the same sizes when the data is not installed."""
    from seglab.data.io import read_image

    folder = None
    try:
        from seglab.data.bundled import locate_isbi

        folder = locate_isbi() / "test" / "images"
    except SeglabError:
        pass
    files = sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []
    rng = np.random.default_rng(0)
    images = []
    for i, (height, width) in enumerate(PARITY_CROPS):
        if files:
            slice_ = read_image(files[i % len(files)])
            top = (slice_.shape[0] - height) // 2 if slice_.shape[0] > height else 0
            images.append(np.ascontiguousarray(slice_[top:top + height, :width]))
        else:
            images.append(rng.integers(0, 256, size=(height, width), dtype=np.uint8))
    return images


def _parity_batches(images: list[np.ndarray], channels: int) -> list[torch.Tensor]:
    """Images (H, W[, C]) -> raw float32 batches (B, C, H, W), images of one size batched together."""
    by_size: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i, array in enumerate(images):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise SeglabError(f"parity image {i} has shape {array.shape}; expected (H, W) or (H, W, C)")
        pixels = match_channels(array, channels, name=f"parity image {i}").astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)  # (C, H, W)
        by_size.setdefault(tuple(tensor.shape[-2:]), []).append(tensor)
    return [torch.stack(group) for group in by_size.values()]


@torch.inference_mode()
def reference_probabilities(model: nn.Module, pixels: torch.Tensor, normalization: Normalization,
                            input_max: float = 255.0, multilabel: bool = False) -> torch.Tensor:
    """What PyTorch gives the Predictor's way: raw (B, C, H, W) -> probabilities (B, K, H, W)."""
    x = normalize(pixels.float() / input_max, normalization)
    return logits_to_probabilities(full_size_logits(model, x).float(), multilabel)


def check_parity(run_exported: Callable[..., torch.Tensor], model: nn.Module,
                 batches: list[torch.Tensor], normalization: Normalization, input_max: float,
                 num_outputs: int | None = None, multilabel: bool = False) -> tuple[float, list]:
    """Max abs difference of probabilities between the exported model and PyTorch over the batches,
    with and without the optional statistics input, and the batch shapes checked. `num_outputs`
    (the class map's K) is checked against PyTorch; `multilabel`: a sigmoid per output."""
    worst, shapes = 0.0, []
    for batch in batches:
        expected = reference_probabilities(model, batch, normalization, input_max, multilabel)
        if num_outputs is not None and expected.shape[1] != num_outputs:
            raise SeglabError(f"the model gives {expected.shape[1]} output channels but its class map needs "
                              f"{num_outputs}: the checkpoint is inconsistent, retrain or fix its class map")
        for got in (run_exported(batch), run_exported(batch, image_stats(batch, normalization, input_max))):
            if tuple(got.shape) != tuple(expected.shape):
                raise SeglabError(f"exported model returned {tuple(got.shape)} for input {tuple(batch.shape)}; "
                                  f"PyTorch gives {tuple(expected.shape)}")
            worst = max(worst, float((got.float() - expected).abs().max()))
        shapes.append(list(batch.shape))
    return worst, shapes


# ---- the two formats ----------------------------------------------------------------------------
@contextmanager
def _quiet_tracing():
    """Silence the tracer's warnings about Python values frozen into the graph: the wrapper keeps
    sizes symbolic on purpose, and the parity check on other sizes proves the graph."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, UserWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def _export_onnx(wrapper: ExportWrapper, example: torch.Tensor, path: Path, opset: int,
                 metadata: dict) -> str:
    """Write the ONNX graph with its metadata to `path`; returns which exporter worked."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise SeglabError("ONNX export needs the onnx and onnxruntime packages: pip install 'seglab[export]'") from None
    axes = {0: "batch", 2: "height", 3: "width"}
    no_stats = _nan_stats(example.shape[1])
    errors = []
    with _quiet_tracing():
        for dynamo in (False, True):  # the TorchScript-based exporter needs no onnxscript
            try:
                options = ({"dynamic_shapes": {"pixels": {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
                                                          3: torch.export.Dim("width")},
                                               "stats": {0: torch.export.Dim("stats_batch")}}}
                           if dynamo else {"dynamic_axes": {INPUT_NAME: axes, STATS_NAME: {0: "stats_batch"},
                                                            OUTPUT_NAME: axes}})
                torch.onnx.export(wrapper, (example, no_stats), str(path), input_names=[INPUT_NAME, STATS_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                                  dynamo=dynamo, **options)
                exporter = "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False)"
                break
            except Exception as error:  # noqa: BLE001 - reported below with both exporters' reasons
                errors.append(f"{'dynamo' if dynamo else 'legacy'}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}")
        else:
            raise SeglabError(f"ONNX export failed ({'; '.join(errors)})")
    graph = onnx.load(str(path))
    if any(entry.name == STATS_NAME for entry in graph.graph.input):
        # An input that is also an initializer may be left out by the caller: raw pixels alone work.
        graph.graph.initializer.append(numpy_helper.from_array(no_stats.numpy(), STATS_NAME))
    graph.doc_string = ("seglab segmentation model. Input 'pixels': raw pixels (B, C, H, W) float32 in "
                        f"0..{metadata['input_max']:g}; optional input 'stats': a whole image's normalisation "
                        "statistics for tiles of it; output 'probabilities' (B, K, H, W).")
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(graph, str(path))
    return exporter


def _nan_stats(channels: int) -> torch.Tensor:
    """The `stats` input (1, C, 2) that means "use the input's own statistics"."""
    return torch.full((1, channels, 2), float("nan"))


class _OptionalStats(nn.Module):
    """TorchScript entry point: forward(pixels, stats=None) around the traced two-input graph."""

    def __init__(self, traced: nn.Module, channels: int):
        super().__init__()
        self.traced = traced
        self.channels = channels

    # TorchScript compiles this method: it reads Optional[...], not "X | None".
    def forward(self, pixels: torch.Tensor, stats: Optional[torch.Tensor] = None) -> torch.Tensor:
        if stats is None:
            stats = torch.full((1, self.channels, 2), float("nan"), dtype=torch.float32, device=pixels.device)
        return self.traced(pixels, stats)


def _export_torchscript(wrapper: ExportWrapper, example: torch.Tensor, path: Path, metadata: dict) -> str:
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (example, _nan_stats(example.shape[1])), check_trace=False)
        scripted = torch.jit.script(_OptionalStats(traced, example.shape[1]))
        torch.jit.save(scripted, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return "torch.jit.trace"


def _write_if_faithful(fmt: str, wrapper: ExportWrapper, example: torch.Tensor, out_path: Path, opset: int,
                       metadata: dict, model: nn.Module, batches: list[torch.Tensor], input_max: float,
                       tolerance: float, checkpoint_path, finish: Callable[[Path], None] | None = None,
                       ) -> tuple[str, float, list]:
    """Export into a temporary file, run it with its own runtime against PyTorch, and rename it to
    `out_path` only when it matches within `tolerance` (after `finish(temporary file)`, if given).
    Returns (exporter, max difference, shapes)."""
    temporary = temporary_name(out_path)
    remove_stale_temporaries(out_path.parent, out_path.name)  # of an export killed mid-write
    try:
        temporary.touch()  # a folder that cannot be written fails here, before a long export
        if fmt == "onnx":
            exporter = _export_onnx(wrapper, example, temporary, opset, metadata)
        else:
            exporter = _export_torchscript(wrapper, example, temporary, metadata)
        exported = load_exported(temporary)
        worst, shapes = check_parity(exported.forward, model, batches, metadata["normalization"], input_max,
                                     metadata["num_outputs"], bool(metadata["class_map"].get("multilabel")))
        del exported  # release the file before it is renamed
        if not worst <= tolerance:  # also catches NaN
            raise SeglabError(f"{fmt} export of '{checkpoint_path}' failed its parity check: probabilities "
                              f"differ from PyTorch by up to {worst:.3g} (> {tolerance:g}) on images "
                              f"{shapes}; nothing was written")
        if finish is not None:
            finish(temporary)
        os.replace(temporary, out_path)
    except OSError as error:
        raise write_error(out_path, error) from None
    finally:
        temporary.unlink(missing_ok=True)
    return exporter, worst, shapes


def temporary_name(out_path: Path, role: str = "tmp") -> Path:
    """A hidden file beside `out_path` that is renamed to it once complete; it keeps the suffix,
    so the exported file can be loaded (by suffix) before the rename."""
    tag = "tmp" if role == "tmp" else f"{role}.tmp"  # data.folder_lock's pattern: stale ones get removed
    return out_path.with_name(f".{out_path.name}.{os.getpid()}.{tag}{out_path.suffix}")


def _record_for_fastest(checkpoint_path: str | Path, metadata: dict, images: list[np.ndarray],
                        timed: bool) -> Callable[[Path], None] | None:
    """What `inference.fastest` needs to run an ONNX file instead of its checkpoint: the checkpoint's
    record in `metadata` now, and (`timed`) a finish step that times the written file against
    PyTorch on the largest parity image and records the seconds in it."""
    from seglab.inference.export_timing import largest, time_against_pytorch
    from seglab.inference.fastest import set_onnx_metadata, source_record

    metadata["source"] = source_record(checkpoint_path)
    if not timed:
        return None

    def finish(temporary: Path) -> None:
        speed = time_against_pytorch(checkpoint_path, temporary, np.asarray(largest(images)))
        set_onnx_metadata(temporary, {"speed": speed})
        metadata["speed"] = speed

    return finish


def _output_file(checkpoint_path: str | Path, out_path: str | Path | None, fmt: str) -> Path:
    """The file an export writes (default: beside the checkpoint), its folder made."""
    out_path = Path(out_path) if out_path else Path(checkpoint_path).with_suffix(".onnx" if fmt == "onnx" else ".ts")
    if out_path.is_dir():
        raise SeglabError(f"-o '{out_path}' is a folder: give the file to write, e.g. {out_path / 'model.onnx'}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out_path, error) from None
    return out_path


def export_model(checkpoint_path: str | Path, fmt: str = "onnx", out_path: str | Path | None = None,
                 parity_images: list[np.ndarray] | None = None, opset: int = 17,
                 tolerance: float = DEFAULT_TOLERANCE, input_max: float = 255.0, timed: bool = True) -> dict:
    """Export a checkpoint as a raw-pixels-in, probabilities-out graph, after a parity check.

    Args:
        checkpoint_path: a seglab .pt checkpoint.
        fmt: "onnx" (onnxruntime) or "torchscript" (torch.jit.load).
        out_path: the file to write (default: the checkpoint's path with .onnx / .ts); written
            atomically, and only once parity passed.
        parity_images: decoded images (H, W) or (H, W, C) in the files' dtype, at the model's scale;
            default: crops of the bundled ISBI test slices (`PARITY_CROPS`).
        opset: ONNX opset.
        tolerance: largest allowed max abs difference of probabilities against PyTorch.
        input_max: the value range of the raw pixels (255 for 8-bit files): divided out in the graph.
        timed: an ONNX file records the seconds of one prediction through it and through PyTorch
            on this CPU (`time_against_pytorch`), by which `seglab predict -m CHECKPOINT` picks it.

    Returns:
        a report: path, format, exporter, opset, max_abs_diff, tolerance, parity_shapes,
        seconds, metadata.

    Raises:
        SeglabError when the export or the parity check fails; no file is left at out_path.
    """
    if fmt not in FORMATS:
        raise SeglabError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not tolerance > 0:
        raise SeglabError(f"invalid --tolerance: {tolerance}; expected a number > 0 (default {DEFAULT_TOLERANCE})")
    started = time.perf_counter()
    model, payload = load_model(checkpoint_path)
    refusal = getattr(model, "export_refusals", {}).get(fmt)
    if refusal:
        raise SeglabError(f"{payload['model']['name']} cannot be exported to {fmt}: {refusal}")
    metadata = export_metadata(payload, input_max)
    out_path = _output_file(checkpoint_path, out_path, fmt)
    wrapper = ExportWrapper(model, metadata["normalization"], input_max,
                            bool(metadata["class_map"].get("multilabel"))).eval()
    channels = metadata["channels"]
    example = torch.rand(1, channels, *TRACE_SIZE, generator=torch.Generator().manual_seed(0)) * input_max
    images = default_parity_images() if parity_images is None else parity_images
    batches = _parity_batches(images, channels)
    if not batches:
        raise SeglabError("no parity images: pass at least one image, or None for the bundled defaults")
    finish = _record_for_fastest(checkpoint_path, metadata, images, timed) if fmt == "onnx" else None
    exporter, worst, shapes = _write_if_faithful(fmt, wrapper, example, out_path, opset, metadata, model, batches,
                                                 input_max, tolerance, checkpoint_path, finish)
    return {
        "path": str(out_path),
        "format": fmt,
        "exporter": exporter,
        "opset": opset if fmt == "onnx" else None,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "parity_shapes": shapes,
        "seconds": round(time.perf_counter() - started, 2),
        "metadata": metadata,
    }
