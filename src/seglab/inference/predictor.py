"""Predictor: a checkpoint (or an exported model) -> probabilities, classes and masks in the user's values.

Whole images go through the network in one pass; large images, or any image with `tile` set, go
through overlap-tile prediction (Gaussian-blended tiles, mirror padding at the border); `tta`
averages flips or all eight rotations/flips, with or without tiles.

    predictor = Predictor.from_file("runs/isbi/best.pt", tta="flips")
    result = predictor.predict("data/isbi2012/test/images/00.png")
    result.mask            # (512, 512) uint8 in the training masks' values (0 = membrane, 255 = cell)
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from seglab.data.classmap import ClassMap
from seglab.data.normalization import check_normalization
from seglab.data.preprocess import prepare_image
from seglab.errors import CheckpointError, ConfigError, DataError, SeglabError
from seglab.inference.export_graph import image_stats
from seglab.inference.exported import ExportedModule
from seglab.inference.options import LOADING_OPTIONS, InferenceOptions
from seglab.inference.prediction import ImageInput, Prediction, as_array
from seglab.inference.tiling import predict_tiled
from seglab.inference.tta import tta_forward
from seglab.models.outputs import (
    full_size_logits,
    logits_to_probabilities,
    probabilities_to_classes,
    resize_probabilities,
)
from seglab.runtime.checkpoint import load_checkpoint, model_from_checkpoint, postprocess_of
from seglab.runtime.device import (
    autocast_factory,
    default_channels_last,
    describe_precision,
    free_memory,
    inference_precision,
)

# Rough activation memory of a forward pass per input pixel and base channel (bytes), used to
# decide when an image is too large to predict whole on the current device.
ACTIVATION_BYTES_PER_PIXEL_CHANNEL = 48
AUTO_TILE = 512
EXPORTED_SUFFIXES = (".onnx", ".ts", ".torchscript")


class Predictor:
    """Runs a trained model on images of any size.

    Applies the training's channel handling, scale and normalisation, and returns results at the
    input's size, as its `options` (an InferenceOptions) say: `threshold` for binary and multi-label models, `tile`
    and `overlap` for overlap-tile prediction, `tta`, `batch_size` tiles or images per forward pass,
    `scale`, `membrane_class` and `seed_threshold` for instances. `options` holds the trained
    model's own threshold and scale where the caller left them None.
    """

    def __init__(self, model: torch.nn.Module, class_map: ClassMap, preprocess: dict,
                 device: str | torch.device = "cpu", options: InferenceOptions | None = None,
                 postprocess: dict | None = None, log=print):
        options = options or InferenceOptions()
        self.class_map = class_map
        self.channels = int(preprocess["channels"])
        try:
            self.normalization = check_normalization(preprocess.get("normalization", "per_image"), self.channels)
        except ConfigError as error:
            raise CheckpointError(f"the model's preprocessing is damaged: {error}") from None
        trained = {"threshold": float((postprocess or {}).get("threshold", preprocess.get("threshold", 0.5))),
                   "scale": float(preprocess.get("scale", 1.0))}
        self.options = self._checked(dataclasses.replace(options, **{
            name: value for name, value in trained.items() if getattr(options, name) is None}))
        self.device = torch.device(device)
        self.trained_precision = preprocess.get("precision")  # None: float32, or a file of seglab <= 0.2
        self.amp_dtype = self._autocast_dtype(model, self.options.precision)
        # The layout is the model's: chosen once, from the precision the Predictor was made with.
        self.channels_last = default_channels_last(self.device, self.amp_dtype) and not isinstance(model,
                                                                                                   ExportedModule)
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last
                              else torch.contiguous_format).eval()
        # Exported models run in their own runtime; a compiled module passes attribute reads
        # (base_channels, margin, ...) through to the model it wraps.
        self.compiled = self.options.compile and not isinstance(model, ExportedModule)
        if self.compiled:
            self.model = torch.compile(self.model)
        self.log = log
        self.raw_input: float | None = None  # exported models take pixels in [0, raw_input]
        # Where the model came from and how it was trained (plain values, for servers and logs):
        # source, format, model (name, kwargs), epoch, step, metrics, seglab_version.
        self.info: dict = {}

    def _checked(self, options: InferenceOptions) -> InferenceOptions:
        if options.membrane_class >= self.class_map.num_classes:
            raise ConfigError(f"invalid inference.membrane_class (--membrane-class): {options.membrane_class}; the "
                              f"model has {self.class_map.num_classes} classes ({self.class_map.describe()})")
        return options

    # The options, read where they are used.
    threshold = property(lambda self: float(self.options.threshold))
    scale = property(lambda self: float(self.options.scale))
    tile = property(lambda self: self.options.tile_size)   # (H, W) or None
    overlap = property(lambda self: self.options.overlap)
    tta = property(lambda self: self.options.tta)
    batch_size = property(lambda self: self.options.batch_size)
    precision = property(lambda self: self.options.precision)
    membrane_class = property(lambda self: self.options.membrane_class)
    seed_threshold = property(lambda self: self.options.seed_threshold)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", options: InferenceOptions | None = None,
                  log=print) -> "Predictor":
        """A .pt checkpoint, an ensemble .json (of `seglab train --folds`), or an exported .onnx / .ts
        model (run through its own runtime).

        `options.runtime` "auto" (the default) runs a checkpoint on the CPU through the fastest export of
        it lying beside it, when `seglab export` measured one faster than PyTorch there
        (`inference.fastest`), and logs which; "pytorch" runs the checkpoint itself."""
        options = options or InferenceOptions()
        if Path(path).suffix.lower() in EXPORTED_SUFFIXES:
            return cls._from_exported(path, device, options, log)
        from seglab.inference.ensemble import EnsembleModule, is_ensemble_file, load_members

        if is_ensemble_file(path):  # fold ensembles: the members' probabilities averaged
            members, class_map, preprocess, postprocess = load_members(path)
            return cls(EnsembleModule(members, class_map.multilabel), class_map, preprocess, device, options,
                       postprocess, log)
        if (options.runtime == "auto" and torch.device(device).type == "cpu" and options.precision == "auto"
                and not options.compile):
            from seglab.inference.fastest import describe_choice, faster_export

            found = faster_export(path)
            if found is not None:
                log(describe_choice(*found))
                predictor = cls.from_file(found[0], device, options, log)
                predictor.info["checkpoint"] = str(path)
                return predictor
        payload = load_checkpoint(path)
        model = model_from_checkpoint(payload, path)
        predictor = cls(model, ClassMap.from_dict(payload["class_map"]), payload["preprocess"], device, options,
                        postprocess_of(payload), log)
        predictor.info = {"source": str(path), "format": "checkpoint", "model": payload["model"],
                          "epoch": payload.get("epoch"), "step": payload.get("step"),
                          "metrics": payload.get("metrics", {}), "seglab_version": payload.get("seglab_version")}
        return predictor

    @classmethod
    def _from_exported(cls, path: str | Path, device, options: InferenceOptions, log) -> "Predictor":
        from seglab.inference.exported import load_exported

        exported = load_exported(path, device)
        predictor = cls(ExportedModule(exported), exported.class_map,
                        {"channels": exported.channels, "scale": exported.scale, "normalization": "none"}, "cpu",
                        options, {"threshold": exported.threshold}, log)
        predictor.raw_input = float(exported.input_max)
        predictor.info = {"source": str(path), "format": Path(path).suffix.lower().lstrip("."),
                          "model": exported.metadata.get("model"),
                          "seglab_version": exported.metadata.get("seglab_version")}
        return predictor

    def _autocast_dtype(self, model: torch.nn.Module, precision: str) -> torch.dtype | None:
        """The autocast dtype of this model's forward passes: None for float32 and for exported
        models, which compute in their own runtime's precision."""
        if isinstance(model, ExportedModule):
            return None
        return inference_precision(precision, self.trained_precision, self.device)

    def __repr__(self) -> str:
        source = Path(self.info.get("checkpoint") or self.info.get("source") or "model").name
        model = (self.info.get("model") or {}).get("name", type(self.model).__name__)
        changed = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(InferenceOptions)
                   if f.name not in ("threshold", "scale")
                   and getattr(self.options, f.name) != f.default}
        settings = ", ".join([f"threshold {self.threshold:g}", f"scale {self.scale:g}",
                              *(f"{name} {value}" for name, value in changed.items())])
        return (f"Predictor({model} from {source}: {self.class_map.describe()}\n"
                f"  {self.runtime} on {self.device}; {settings})")

    @property
    def runtime(self) -> str:
        """What runs the network, for logs and servers: "pytorch bf16 (AMX)", "onnxruntime", ..."""
        if isinstance(self.model, ExportedModule):
            return self.model.exported.runtime_name
        layout = ", channels-last" if self.channels_last else ""
        compiled = ", compiled" if self.compiled else ""
        return f"pytorch {describe_precision(self.amp_dtype, self.device)}{layout}{compiled}"

    def with_options(self, **changes) -> "Predictor":
        """A Predictor that shares this one's model (no copy of the weights) with some options
        changed (InferenceOptions' fields), checked as the constructor checks them. A None keeps
        this one's value, except for `tile` (None: whole images)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(InferenceOptions)}
        if unknown:
            known = [f.name for f in dataclasses.fields(InferenceOptions) if f.name not in LOADING_OPTIONS]
            raise ConfigError(f"unknown inference option {sorted(unknown)[0]!r}; known: {', '.join(known)}")
        fixed = [name for name in LOADING_OPTIONS if name in changes and changes[name] != getattr(self.options, name)]
        if fixed:
            raise ConfigError(f"{fixed[0]} is chosen when a model is loaded: load it again with {fixed[0]}="
                              f"{changes[fixed[0]]!r}")
        kept = {name: value for name, value in changes.items() if value is not None or name == "tile"}
        if isinstance(kept.get("tile"), tuple):
            kept["tile"] = list(kept["tile"])
        variant = copy.copy(self)
        variant.options = self._checked(dataclasses.replace(self.options, **kept))
        variant.amp_dtype = self._autocast_dtype(self.model, variant.options.precision)
        return variant

    # ---- forward passes -----------------------------------------------------------------------
    def tile_forward(self, batch: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) tiles -> probabilities (B, K, h', w') straight from the network (smaller
        than the tiles by `margin` per side for unpadded U-Nets). `stats` (1, C, 2): the whole
        image's statistics, with which an exported model normalises the tiles instead of each
        tile's own (None for checkpoints, whose inputs come normalised)."""
        with self._autocast():
            logits = self.model(self._layout(batch)) if stats is None else self.model(self._layout(batch), stats)
        return logits_to_probabilities(logits.float(), self.class_map.multilabel)

    def _whole_forward(self, batch: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = full_size_logits(self.model, self._layout(batch))
        return logits_to_probabilities(logits.float(), self.class_map.multilabel)

    def _autocast(self):
        return autocast_factory(self.device, self.amp_dtype)()

    def _layout(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

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
        forward = functools.partial(self.tile_forward, stats=self._exported_stats(image[None]))
        return predict_tiled(tta_forward(forward, self.tta), image, tile, self.overlap, self.batch_size, self.device,
                             margin=margin, valid_input=self.model.valid_input_size if margin else None)

    def _exported_stats(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """Raw pixels (1, C, H, W) of a whole image -> an exported model's `stats` input (1, C, 2);
        None for checkpoints, whose inputs come normalised."""
        if not isinstance(self.model, ExportedModule):
            return None
        return image_stats(pixels, self.model.exported.normalization, self.model.exported.input_max)

    def prepare(self, array: np.ndarray, name: str = "image") -> torch.Tensor:
        """A decoded image (H, W, C) as the network takes it (C, h, w): channels, scale, normalisation."""
        return prepare_image(array, self.channels, self.scale, self.normalization, name=name, raw_max=self.raw_input)

    # ---- predictions --------------------------------------------------------------------------
    def predict(self, image: ImageInput, instances: bool = False, name: str | None = None) -> Prediction:
        """One image (a path, a NumPy array (H, W[, C]) or a PIL image) -> Prediction at its size.

        `instances` adds cell labels from a seeded watershed
        of the `membrane_class` probability (boundary models such as ISBI's)."""
        array, default_name = as_array(image)
        name = name or default_name
        height, width = array.shape[:2]
        prepared = self.prepare(array, name)
        try:
            probs = self.probabilities(prepared)
        except torch.OutOfMemoryError:
            tile = self.tile[0] if self.tile else AUTO_TILE
            raise SeglabError(f"out of memory on {self.device} predicting '{name}' ({width}x{height}): try "
                              f"--tile {max(64, tile // 2)} and --batch-size 1, or --device cpu") from None
        probs = resize_probabilities(probs[None], (height, width))[0]
        return self.finish(probs, instances, name, array)

    @torch.inference_mode()
    def predict_batch(self, arrays: list[np.ndarray], names: list[str],
                      instances: bool = False) -> list["Prediction | DataError"]:
        """Several decoded images (H, W, C) -> one Prediction each (or the DataError that image raised).

        Images that go through the network whole and share a size after preparation are stacked
        into one forward pass; tiled or odd-sized ones are predicted one by one.
        """
        results: list = [None] * len(arrays)
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for index, (array, name) in enumerate(zip(arrays, names)):
            try:
                image = self.prepare(array, name)
                if self.tile or self._auto_tile(*image.shape[-2:]):
                    results[index] = self.predict(array, instances, name)
                    continue
            except DataError as error:
                results[index] = error
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
                size = arrays[index].shape[:2]
                full_size = resize_probabilities(image_probs[None], size)[0]
                results[index] = self.finish(full_size, instances, names[index], arrays[index])
        return results

    def predict_many(self, images: Iterable[ImageInput], instances: bool = False) -> Iterator[Prediction]:
        """Predictions of a stream of images (paths, arrays or PIL images), in order.

        `batch_size` same-size images share a forward pass; files are decoded by a reader thread
        while the network runs, at most two batches ahead, so a folder or a generator of any
        length streams in bounded memory. An unreadable image raises its DataError.
        """
        for _, _, result in self.stream(images, instances):
            if isinstance(result, DataError):
                raise result
            yield result

    def stream(self, images: Iterable, instances: bool = False
               ) -> Iterator[tuple[object, np.ndarray | None, "Prediction | DataError"]]:
        """(input, its decoded (H, W, C) array or None, Prediction or the DataError it raised) for
        each input, in order (see predict_many)."""
        window = max(1, self.batch_size)
        upcoming = iter(images)

        def decode(item):
            try:
                return as_array(item)
            except DataError as error:
                return error

        with ThreadPoolExecutor(max_workers=1) as reader:
            pending: list = []
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < 2 * window:  # decode ahead while the network runs
                    item = next(upcoming, _END)
                    if item is _END:
                        exhausted = True
                    else:
                        pending.append((item, reader.submit(decode, item)))
                chunk, pending = pending[:window], pending[window:]
                decoded = [(item, future.result()) for item, future in chunk]
                readable = [(item, got) for item, got in decoded if not isinstance(got, DataError)]
                predictions = iter(self.predict_batch([array for _, (array, _) in readable],
                                                      [name for _, (_, name) in readable], instances))
                for item, got in decoded:
                    if isinstance(got, DataError):
                        yield item, None, got
                    else:
                        yield item, got[0], next(predictions)

    def finish(self, probs: torch.Tensor, instances: bool = False, name: str = "image",
               image: np.ndarray | None = None) -> Prediction:
        """Probabilities (K, H, W) -> classes (a multi-label model's: bit sets), mask values and, if
        asked, cell instances."""
        classes = probabilities_to_classes(probs, self.threshold, self.class_map.multilabel).numpy()
        prediction = Prediction(probs.float().numpy(), classes, self.class_map.decode(classes), name=name,
                                image=image, class_names=self.class_map.names, multilabel=self.class_map.multilabel)
        if instances:
            from seglab.inference.postprocess import membrane_to_instances  # scipy, skimage: only for instances

            prediction.instances = membrane_to_instances(self.class_probability(prediction, self.membrane_class),
                                                         self.seed_threshold)
        return prediction

    def class_probability(self, prediction: Prediction, class_index: int) -> np.ndarray:
        """(H, W) probability of one class (for binary models P(0) = 1 - P(1))."""
        probs = prediction.probabilities
        if probs.shape[0] == 1:
            return probs[0] if class_index == 1 else 1.0 - probs[0]
        return probs[class_index]

    def predict_large_tiff(self, in_path: str | Path, out_path: str | Path, tile: int = AUTO_TILE) -> Path:
        """Stream a TIFF of any size through tiled prediction into a tiled (Big)TIFF mask; only a
        band of tile rows is in memory at once (see `inference.streaming`)."""
        from seglab.inference.streaming import predict_huge_tiff

        return predict_huge_tiff(self, in_path, out_path, tile)


_END = object()
