"""Run exported models (ONNX through onnxruntime, TorchScript through torch.jit) like a forward.

Both classes take RAW pixels: `forward(batch)` maps a float32 tensor (B, C, h, w) in the image
files' value range (0..255 for 8-bit images; see `input_max`) to probabilities (B, K, h, w)
(sigmoid for K = 1, softmax otherwise). Intensity scaling, normalisation and the network's padding
are inside the exported graph (`seglab.inference.export`), so do NOT normalise the pixels first. The caller
still matches the channels (`channels`) and resizes by `scale` as training did.

`forward` plugs into `tiling.predict_tiled` and `tta.tta_forward`. A graph with "per_image" or
"minmax" normalisation normalises each input with its own statistics; for tiles of a larger image
pass the whole image's as `stats` (`seglab.inference.export_graph.image_stats`), as `Predictor` does, so that tiles
are normalised as the whole image is. Files exported before seglab had the `stats` input
(`has_stats` False) ignore it. `ExportedModule` wraps one as the module a Predictor (and streamed
TIFF prediction) calls.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from seglab.data.classmap import ClassMap
from seglab.errors import SeglabError

EXPORT_FORMAT = "seglab-export"
TORCHSCRIPT_METADATA = "seglab.json"
STATS_INPUT = "stats"  # the optional whole-image statistics input of exported graphs


class ExportedModel(ABC):
    """What every exported model knows from its metadata; subclasses implement `forward`.

    Attributes: class_map (ClassMap), channels, scale, threshold, normalization (applied inside the
    graph), input_max (raw pixel range the graph divides out), num_outputs (K), metadata (dict).
    """

    def __init__(self, path: str | Path, metadata: dict):
        if metadata.get("format") != EXPORT_FORMAT:
            raise SeglabError(f"'{path}' is not a seglab export (no seglab metadata): export it with "
                              "`seglab export` or seglab.inference.export.export_model")
        self.path = Path(path)
        self.metadata = metadata
        self.class_map = ClassMap.from_dict(metadata["class_map"])
        self.channels = int(metadata["channels"])
        self.scale = float(metadata.get("scale", 1.0))
        self.threshold = float(metadata.get("threshold", 0.5))
        self.normalization = metadata.get("normalization", "per_image")  # a mode, or {"mean", "std"}
        self.input_max = float(metadata.get("input_max", 255.0))
        self.num_outputs = int(metadata.get("num_outputs", self.class_map.num_outputs))
        self.has_stats = "stats_input" in metadata  # the optional whole-image statistics input

    @property
    def runtime_name(self) -> str:
        """What runs this file, for logs: "onnxruntime", "onnxruntime int8", "torchscript"."""
        quantized = self.metadata.get("quantization")
        base = "onnxruntime" if isinstance(self, OnnxModel) else "torchscript"
        return f"{base} {quantized['precision']}" if quantized else base

    @abstractmethod
    def forward(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """Raw pixels (B, C, h, w) float32 [and whole-image statistics (B or 1, C, 2)] ->
        probabilities (B, K, h, w), run by the file's runtime."""

    def __call__(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(batch, stats)

    @staticmethod
    def _check_batch(batch: torch.Tensor, channels: int) -> None:
        if batch.ndim != 4 or batch.shape[1] != channels:
            raise SeglabError(f"exported model takes raw pixels (B, {channels}, H, W); got {tuple(batch.shape)}")


def json_entries(raw: dict[str, str]) -> dict:
    """An ONNX file's metadata entries that hold JSON (seglab's); others (ONNX Runtime's own
    "onnx.infer", "onnx.quant.pre_process" notes in quantized files) are left out."""
    entries = {}
    for key, value in raw.items():
        try:
            entries[key] = json.loads(value)
        except json.JSONDecodeError:
            continue
    return entries


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"exported model '{path}' does not exist: pass a file written by `seglab export`")
    return path


class OnnxModel(ExportedModel):
    """An exported .onnx file run by onnxruntime: raw pixels (B, C, h, w) -> probabilities (B, K, h, w).

    device "cpu" uses the CPUExecutionProvider; "cuda" (or "cuda:N") the CUDAExecutionProvider when
    onnxruntime-gpu provides it. `threads` sets onnxruntime's intra-op threads (default: its own).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SeglabError("running an ONNX model needs onnxruntime: pip install 'seglab[export]'") from None
        path = _require_file(path)
        device = torch.device(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers
        if threads:
            options.intra_op_num_threads = int(threads)
        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SeglabError("onnxruntime here has no CUDA support: pip install onnxruntime-gpu, or use "
                                  "--device cpu")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own unexported types
            raise SeglabError(f"onnxruntime cannot load '{path}' ({str(error).splitlines()[0]}): is it an "
                              "ONNX file written by `seglab export`?") from None
        super().__init__(path, json_entries(self.session.get_modelmeta().custom_metadata_map))
        self.device = device
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # The statistics input has a default, so onnxruntime lists it as an overridable initializer.
        self.has_stats = self.has_stats and any(entry.name == STATS_INPUT
                                                for entry in self.session.get_overridable_initializers())

    def forward(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """Raw pixels (B, C, h, w) [and stats (B or 1, C, 2)] -> probabilities (B, K, h, w) float32,
        on the batch's device."""
        self._check_batch(batch, self.channels)
        feeds = {self.input_name: batch.detach().to("cpu", torch.float32).contiguous().numpy()}
        if stats is not None and self.has_stats:
            feeds[STATS_INPUT] = stats.detach().to("cpu", torch.float32).contiguous().numpy()
        (probs,) = self.session.run([self.output_name], feeds)
        return torch.from_numpy(probs).to(batch.device)


class TorchScriptModel(ExportedModel):
    """An exported TorchScript file (torch.jit.load): raw pixels (B, C, h, w) -> probabilities (B, K, h, w)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        path = _require_file(path)
        self.device = torch.device(device)
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as error:
            raise SeglabError(f"torch.jit cannot load '{path}' ({str(error).splitlines()[0]}): is it a "
                              "TorchScript file written by `seglab export`?") from None
        try:
            metadata = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
        except json.JSONDecodeError:
            metadata = {}
        super().__init__(path, metadata)

    def forward(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """Raw pixels (B, C, h, w) [and stats (B or 1, C, 2)] -> probabilities (B, K, h, w) float32,
        on the batch's device."""
        self._check_batch(batch, self.channels)
        pixels = batch.to(self.device, torch.float32)
        with torch.inference_mode():
            if stats is not None and self.has_stats:
                return self.module(pixels, stats.to(self.device, torch.float32)).to(batch.device)
            return self.module(pixels).to(batch.device)


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """An exported model by its content: TorchScript files are zip archives, ONNX files are not."""
    path = _require_file(path)
    if zipfile.is_zipfile(path):
        return TorchScriptModel(path, device)
    return OnnxModel(path, device)


class ExportedModule(torch.nn.Module):
    """Adapts an exported model (raw pixels -> probabilities) to the Predictor's module calls:
    it returns logits whose sigmoid/softmax gives back the exported probabilities (a sigmoid
    per label for a multi-label model)."""

    def __init__(self, exported):
        super().__init__()
        self.exported = exported

    def forward(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """Raw pixels (B, C, h, w) [and the whole image's statistics (1, C, 2) when these are its
        tiles] -> logits (B, K, h, w)."""
        probs = self.exported.forward(batch, stats).float().clamp(1e-7, 1 - 1e-7)
        return torch.logit(probs) if probs.shape[1] == 1 or self.exported.class_map.multilabel else probs.log()
