"""Predict many files: resolve inputs and output names, write masks / overlays / figures, skip bad files."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.data.io import (IMAGE_EXTENSIONS, TIFF_EXTENSIONS, image_info, is_image_file, read_image, write_mask,
                           write_rgb)
from seglab.errors import DataError, SeglabError
from seglab.inference.predictor import Predictor


OUTPUT_TAGS = ("_mask", "_overlay", "_viz", "_instances")


@dataclass
class PredictJob:
    source: Path
    mask_path: Path | None      # None with --no-save
    output_dir: Path


@dataclass
class PredictSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, plus the image files inside given folders (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_image_file(p))
            stems = {p.stem for p in found}
            # seglab's own outputs beside their inputs are not inputs of a second run
            found = [p for p in found if not any(p.stem.endswith(tag) and p.stem[: -len(tag)] in stems
                                                 for tag in OUTPUT_TAGS)]
            if not found:
                raise DataError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"input '{path}' does not exist: check the path")
    return files


def safe_join(folder: Path, name: str) -> Path:
    """folder / name, refusing names that would land outside `folder` (e.g. "../x")."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise SeglabError(f"output name '{name}' would escape the output folder '{folder}': rename the input")
    return folder / name


def plan_outputs(files: list[Path], outputs: list[str] | None, save: bool, suffix: str = "_mask.png"
                 ) -> list[PredictJob]:
    """Output names: one -o per input file, or one -o folder for all (`<stem>_mask.png` inside it),
    or, with no -o, `<stem>_mask.png` beside each input."""
    if outputs and len(outputs) == len(files) and len(files) > 0 and all(Path(o).suffix for o in outputs) \
            and not any(Path(o).is_dir() for o in outputs):
        return [PredictJob(f, Path(o) if save else None, Path(o).parent) for f, o in zip(files, outputs)]
    if outputs and len(outputs) == 1:
        folder = Path(outputs[0])
        if folder.suffix.lower() in IMAGE_EXTENSIONS and not folder.is_dir():
            raise SeglabError(f"-o '{folder}' names one file but there are {len(files)} inputs: "
                              "give an output folder instead")
        return [PredictJob(f, safe_join(folder, f"{f.stem}{suffix}") if save else None, folder) for f in files]
    if outputs:
        raise SeglabError(f"{len(outputs)} outputs for {len(files)} inputs: give one -o per input file, "
                          "or a single output folder")
    return [PredictJob(f, f.parent / f"{f.stem}{suffix}" if save else None, f.parent) for f in files]


# TIFFs with more pixels than this stream through tiled prediction band by band.
STREAM_PIXELS = 8192 * 8192


def _streamed(predictor: Predictor, job: PredictJob, log) -> Path | None:
    """Predict a huge TIFF without loading it; returns the mask path, or None if not huge."""
    if job.source.suffix.lower() not in TIFF_EXTENSIONS:
        return None
    height, width, _, _ = image_info(job.source)
    if height * width <= STREAM_PIXELS:
        return None
    target = (job.mask_path or safe_join(job.output_dir, f"{job.source.stem}_mask.tif")).with_suffix(".tif")
    log(f"note: {job.source.name} is {width}x{height}: streaming it through tiled prediction into {target.name}")
    return predictor.predict_large_tiff(job.source, target)


def run_predictions(predictor: Predictor, jobs: list[PredictJob], scale: float | None = None,
                    overlay: bool = False, viz: bool = False, instances: bool = False,
                    membrane_class: int = 0, palette: bool = False, stop_on_error: bool = False,
                    seed_threshold: float = 0.07,
                    log=print) -> PredictSummary:
    """Predict every job; a file that cannot be read is skipped and reported, the rest go on.

    `palette` writes class indices as palette PNGs (multi-class models); `instances` also writes `<stem>_instances.png` (16-bit cell labels from a seeded watershed of
    the probability of `membrane_class`).
    """
    from seglab.inference.postprocess import membrane_to_instances, save_instance_labels
    from seglab.data.overlay import overlay as make_overlay
    from seglab.viz.plots import save_side_by_side

    summary = PredictSummary()
    for job, array, prediction in _predicted(predictor, jobs, scale, log, summary):
        if isinstance(prediction, DataError):
            if stop_on_error:
                raise prediction
            log(f"warning: skipped {prediction}")
            summary.skipped.append((job.source, str(prediction)))
            continue
        if job.mask_path is not None:
            if palette:
                from seglab.data.overlay import PALETTE

                summary.written.append(write_mask(job.mask_path, prediction.classes, palette=_palette(PALETTE)))
            else:
                summary.written.append(write_mask(job.mask_path, prediction.mask))
        if overlay:
            path = safe_join(job.output_dir, f"{job.source.stem}_overlay.png")
            highlight = None if prediction.probabilities.shape[0] > 1 else _rare_class(prediction.classes)
            summary.written.append(write_rgb(path, make_overlay(array, prediction.classes, highlight=highlight)))
        if viz:
            path = safe_join(job.output_dir, f"{job.source.stem}_viz.png")
            probability = prediction.probabilities[0] if prediction.probabilities.shape[0] == 1 else None
            summary.written.append(save_side_by_side(array, prediction.classes, path, title=job.source.name,
                                                     probability=probability))
        if instances:
            labels = membrane_to_instances(predictor.class_probability(prediction, membrane_class), seed_threshold)
            if labels.max() == 0:
                log(f"warning: {job.source.name}: no pixel is below --seed-threshold {seed_threshold}, so no cell "
                    "was seeded; raise --seed-threshold")
            path = safe_join(job.output_dir, f"{job.source.stem}_instances.png")
            summary.written.append(save_instance_labels(path, labels))
        if job.mask_path is not None:
            log(f"{job.source} -> {job.mask_path}")
    return summary


def _predicted(predictor: Predictor, jobs: list[PredictJob], scale: float | None, log, summary: PredictSummary):
    """(job, image, Prediction or DataError) in job order. A reader thread decodes the next files
    while the network runs, and same-size images go through it `predictor.batch_size` at a time.
    Huge TIFFs are streamed (and yield nothing here)."""
    def load(job: PredictJob):
        try:
            return read_image(job.source)
        except DataError as error:
            return error

    window = max(1, predictor.batch_size)
    upcoming = iter(jobs)
    with ThreadPoolExecutor(max_workers=1) as reader:
        queue: deque = deque()

        def refill() -> None:  # keep at most two batches decoded or decoding ahead
            while len(queue) < 2 * window:
                job = next(upcoming, None)
                if job is None:
                    return
                try:
                    streamed = _streamed(predictor, job, log)
                except DataError as error:
                    queue.append((job, None, error))
                    continue
                if streamed is not None:
                    summary.written.append(streamed)
                    continue
                queue.append((job, reader.submit(load, job), None))

        refill()
        while queue:
            chunk = [queue.popleft() for _ in range(min(window, len(queue)))]
            refill()  # the next files decode while this batch is predicted
            loaded = [(job, future.result() if future is not None else error) for job, future, error in chunk]
            readable = [(job, array) for job, array in loaded if not isinstance(array, DataError)]
            predictions = iter(predictor.predict_batch([array for _, array in readable],
                                                       [str(job.source) for job, _ in readable], scale))
            for job, array in loaded:
                yield (job, None, array) if isinstance(array, DataError) else (job, array, next(predictions))


def _palette(colours: np.ndarray) -> np.ndarray:
    """(256, 3): the overlay colours, class 0 included, repeated to fill the table."""
    return np.resize(colours, (256, 3)).astype(np.uint8)


def _rare_class(classes: np.ndarray) -> int:
    """For binary masks, colour the less frequent class (membranes in EM, the object in photos)."""
    return 0 if (classes == 0).mean() < 0.5 else 1
