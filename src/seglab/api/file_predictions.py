"""Predict files into files: masks, overlays, --viz figures and cell labels, skipping unreadable inputs."""
from __future__ import annotations

import os
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.api.keywords import checked_keywords
from seglab.api.output_names import PredictJob, check_outputs, collect_inputs, name_outputs
from seglab.data.folder_lock import LOCK_FILE, FolderInUse, FolderLock, remove_stale_temporaries
from seglab.data.overlay import PALETTE
from seglab.data.overlay import overlay as draw_overlay
from seglab.data.writing import write_error, write_mask, write_rgb
from seglab.errors import DataError, SeglabError
from seglab.inference.prediction import Prediction
from seglab.inference.predictor import Predictor
from seglab.progress import progress_bar


@dataclass
class PredictSummary:
    inputs: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@checked_keywords("seglab.predict_files")
def predict_files(model: Predictor | str | os.PathLike, inputs: list, output: list | str | os.PathLike | None = None,
                  *, scale: float | None = None, save: bool = True, overlay: bool = False, viz: bool = False,
                  instances: bool = False, palette: bool = False, overwrite: bool = False,
                  stop_on_error: bool | None = None, progress: bool | None = None, log=print) -> PredictSummary:
    """Predict image files and folders into mask files (README: "Prediction outputs").

    `output`: one folder, or one file per input, or None (beside each input). Every output name
    is planned and checked before the first is written. An unreadable input is skipped, logged
    and listed in the summary; with `stop_on_error` (default: when there is one input) it raises.
    Several inputs get one progress bar on stderr (`progress` None: only on a terminal) in place
    of a line per file.

    >>> seglab.predict_files("runs/isbi/best.pt", ["data/isbi2012/test/images"], "predictions/", overlay=True)
    """
    if not isinstance(model, Predictor):
        from seglab.api.predicting import load

        model = load(model, scale=scale, log=log)
    elif scale is not None:
        model = model.with_options(scale=scale)
    if not (save or overlay or viz or instances):
        raise SeglabError("nothing to write: --no-save with no --overlay, --viz or --instances; drop --no-save "
                          "or ask for one of them")
    if palette and model.class_map.multilabel:
        raise SeglabError("--palette colours one class per pixel, but this model predicts overlapping labels (its "
                          "masks hold label k in bit k): leave out --palette, or use --overlay for a picture")
    files = collect_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    outputs = [output] if isinstance(output, (str, os.PathLike)) else output
    jobs = name_outputs(files, [os.fspath(o) for o in outputs] if outputs else None, save=save, overlay=overlay,
                        viz=viz, instances=instances, overwrite=overwrite)
    stop_on_error = len(jobs) == 1 if stop_on_error is None else stop_on_error
    summary = PredictSummary(len(jobs))
    bar = progress_bar(len(jobs), "predict", "image", progress if len(jobs) > 1 else False)
    with output_folders_locked(jobs, log), closing(bar):
        check_outputs(jobs, overwrite)  # again: files another run wrote before this one took the folders
        for job in (j for j in jobs if j.streamed):
            _stream(model, job, summary, stop_on_error, log)
            bar.update(1)
        by_source = {job.source: job for job in jobs if not job.streamed}
        for source, image, result in model.stream(list(by_source), instances):
            job = by_source[source]
            bar.update(1)
            if isinstance(result, DataError):
                if stop_on_error:
                    raise result
                log(f"warning: skipped {result}")
                summary.skipped.append((job.source, str(result)))
                continue
            _write_outputs(model, job, image, result, palette, summary, log, each_file=bar.disable)
    return summary


@contextmanager
def output_folders_locked(jobs: list[PredictJob], log):
    """Hold the lock of every folder the jobs write into (made if missing), so that a second
    `seglab predict` into one of them is refused in one line instead of replacing these outputs;
    temporary files a killed run left there are removed first."""
    folders = sorted({path.parent.resolve() for job in jobs for path in job.outputs.values()})
    with ExitStack() as held:
        for folder in folders:
            try:
                held.enter_context(FolderLock(folder, remove=True))
            except FolderInUse as error:
                raise SeglabError(f"output folder '{folder}' is in use by {error.holder}: wait for it to finish, "
                                  "or choose another -o") from None
            except OSError as error:
                raise write_error(folder / LOCK_FILE, error) from None
            removed = remove_stale_temporaries(folder)
            if removed:
                log(f"note: removed {len(removed)} temporary file(s) an interrupted seglab run left in {folder}")
        yield


def _stream(model: Predictor, job: PredictJob, summary: PredictSummary, stop_on_error: bool, log) -> None:
    target = job.outputs.get("mask")
    if target is None:
        return
    log(f"note: {job.source.name} is a huge TIFF: streaming it through tiled prediction into {target.name}")
    try:
        summary.written.append(model.predict_large_tiff(job.source, target))
    except DataError as error:
        if stop_on_error:
            raise
        summary.skipped.append((job.source, str(error)))


def _write_outputs(model: Predictor, job: PredictJob, image: np.ndarray, prediction: Prediction, palette: bool,
                   summary: PredictSummary, log, each_file: bool = True) -> None:
    outputs = job.outputs
    if "mask" in outputs:
        mask = prediction.classes if palette else prediction.mask
        colours = PALETTE if model.class_map.colors is None else np.asarray(model.class_map.colors, dtype=np.uint8)
        summary.written.append(write_mask(outputs["mask"], mask, palette=_palette(colours) if palette else None))
    if "overlay" in outputs:
        summary.written.append(write_rgb(outputs["overlay"], overlay_picture(image, prediction)))
    if "viz" in outputs:
        from seglab.viz.plots import save_side_by_side

        probability = (prediction.probabilities[0] if prediction.probabilities.shape[0] == 1
                       else prediction.probabilities.max(axis=0) if prediction.multilabel else None)
        summary.written.append(save_side_by_side(image, prediction.classes, outputs["viz"], title=job.source.name,
                                                 probability=probability))
    if "instances" in outputs:
        from seglab.inference.postprocess import save_instance_labels  # scipy, skimage: only for instances

        if prediction.instances.max() == 0:
            log(f"warning: {job.source.name}: no pixel is below --seed-threshold {model.seed_threshold}, so no "
                "cell was seeded; raise --seed-threshold")
        summary.written.append(save_instance_labels(outputs["instances"], prediction.instances))
    if "mask" in outputs and each_file:  # a progress bar stands for these lines
        log(f"{job.source} -> {outputs['mask']}")


def overlay_picture(image: np.ndarray, prediction: Prediction, alpha: float = 0.45) -> np.ndarray:
    """The `--overlay` picture (H, W, 3) uint8 of an image (H, W, C) and its prediction: every
    class but 0 coloured (every label of a multi-label model), or for binary models the less
    frequent class only."""
    if prediction.multilabel:
        return draw_overlay(image, prediction.classes, alpha=alpha, labels=prediction.probabilities.shape[0])
    highlight = None if prediction.probabilities.shape[0] > 1 else _rare_class(prediction.classes)
    return draw_overlay(image, prediction.classes, alpha=alpha, highlight=highlight)


def _palette(colours: np.ndarray) -> np.ndarray:
    """(256, 3): the class colours (a palette mask's, else the overlay's), class 0 included, repeated
    to fill the table."""
    return np.resize(colours, (256, 3)).astype(np.uint8)


def _rare_class(classes: np.ndarray) -> int:
    """For binary masks, colour the less frequent class (membranes in EM, the object in photos)."""
    return 0 if (classes == 0).mean() < 0.5 else 1
