"""Where each prediction goes, decided for all inputs before anything is written.

Rules (README, "Prediction outputs"):
- `-o` one file per input, `-o` one folder for all, or no `-o` (beside each input);
- in a folder, `<stem>_mask.png` (also `_overlay.png`, `_viz.png`, `_instances.png`); inputs that
  share a stem there (a.png, a.jpg) keep their extension in the name: `a_png_mask.png`;
- a naming that sends two inputs to one file, or writes over an input, is refused, and so is one
  that would replace a file that already exists, unless `overwrite`.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seglab.data.io import IMAGE_EXTENSIONS, TIFF_EXTENSIONS, image_info, is_image_file
from seglab.errors import DataError, SeglabError

OUTPUT_TAGS = ("_mask", "_overlay", "_viz", "_instances")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
# TIFFs with more pixels than this stream through tiled prediction band by band, into a TIFF mask.
STREAM_PIXELS = 8192 * 8192
MAX_LISTED = 3


@dataclass
class PredictJob:
    """One input and the files its prediction writes, by kind: mask, overlay, viz, instances."""

    source: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    streamed: bool = False  # a huge TIFF, predicted band by band into its mask TIFF


def collect_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given, plus the image files inside given folders (sorted), without seglab's own
    outputs of an earlier run beside their inputs."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_image_file(p))
            stems = {p.stem for p in found}
            found = [p for p in found if not any(p.stem.endswith(tag) and _base_stem(p.stem[: -len(tag)]) in stems
                                                 for tag in OUTPUT_TAGS)]
            if not found:
                raise DataError(f"folder '{path}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise DataError(f"input '{path}' does not exist: check the path")
    return files


def _base_stem(stem: str) -> str:
    """'a_png' -> 'a' for outputs named after a same-stem input's extension; else the stem itself."""
    for extension in IMAGE_EXTENSIONS:
        tag = "_" + extension.lstrip(".")
        if stem.endswith(tag):
            return stem[: -len(tag)]
    return stem


def safe_join(folder: Path, name: str) -> Path:
    """folder / name, refusing names that would land outside `folder` (e.g. "../x")."""
    target = (folder / name).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise SeglabError(f"output name '{name}' would escape the output folder '{folder}': rename the input")
    return folder / name


def is_huge_tiff(path: Path) -> bool:
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        return False
    try:
        height, width, _, _ = image_info(path)
    except DataError:
        return False  # unreadable: it is skipped when it is read
    return height * width > STREAM_PIXELS


def _names(files: list[Path], folder_of) -> dict[Path, str]:
    """The output base name of each input: its stem, or stem_ext when another input going to the
    same folder shares the stem."""
    shared = Counter((folder_of(f).resolve(), f.stem) for f in files)
    return {f: f.stem if shared[(folder_of(f).resolve(), f.stem)] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
            for f in files}


def name_outputs(files: list[Path], outputs: list[str] | None, *, save: bool = True, overlay: bool = False,
                 viz: bool = False, instances: bool = False, overwrite: bool = False) -> list[PredictJob]:
    """The jobs of a predict command, checked as a whole before anything is written (SeglabError)."""
    one_file_each = (outputs and len(outputs) == len(files) and all(Path(o).suffix for o in outputs)
                     and not any(Path(o).is_dir() for o in outputs))
    if outputs and not one_file_each and len(outputs) != 1:
        raise SeglabError(f"{len(outputs)} outputs for {len(files)} inputs: give one -o per input file, "
                          "or a single output folder")
    if outputs and not one_file_each:
        folder = Path(outputs[0])
        if folder.suffix.lower() in IMAGE_EXTENSIONS and not folder.is_dir():
            raise SeglabError(f"-o '{folder}' names one file but there are {len(files)} inputs: "
                              "give an output folder instead")
        if folder.exists() and not folder.is_dir():
            raise SeglabError(f"-o '{folder}' is a file, not a folder: choose an output folder")
    folder_of = (lambda f: Path(outputs[0])) if outputs and not one_file_each else (lambda f: f.parent)
    names = _names(files, folder_of)
    jobs = []
    for index, source in enumerate(files):
        job = PredictJob(source, streamed=is_huge_tiff(source))
        folder, name = folder_of(source), names[source]
        if save:
            mask = Path(outputs[index]) if one_file_each else safe_join(folder, f"{name}_mask.png")
            if mask.suffix.lower() not in MASK_SUFFIXES:
                raise SeglabError(f"-o '{mask}': masks are written losslessly as PNG or TIFF; name the file "
                                  f"{mask.with_suffix('.png').name} (or .tif)")
            job.outputs["mask"] = mask.with_suffix(".tif") if job.streamed else mask
        side_folder = Path(outputs[index]).parent if one_file_each else folder
        for kind, wanted in (("overlay", overlay), ("viz", viz), ("instances", instances)):
            if wanted and not job.streamed:
                job.outputs[kind] = safe_join(side_folder, f"{name}_{kind}.png")
        jobs.append(job)
    check_outputs(jobs, overwrite)
    return jobs


def check_outputs(jobs: list[PredictJob], overwrite: bool) -> None:
    """Refuse output names that lose data: two outputs into one file, an output onto an input, or onto
    an existing file (unless `overwrite`)."""
    inputs = {job.source.resolve(): job.source for job in jobs}
    seen: dict[Path, Path] = {}  # resolved output -> the input writing it
    named: list[Path] = []
    for job in jobs:
        for path in job.outputs.values():
            key = path.resolve()
            if key in inputs:
                raise SeglabError(f"output '{path}' is the input '{inputs[key]}': predicting would replace the "
                                  "image; choose another -o")
            if key in seen:
                raise SeglabError(f"inputs '{seen[key]}' and '{job.source}' would both write '{path}': give "
                                  "them separate -o files, or rename one")
            seen[key] = job.source
            named.append(path)
    if overwrite:
        return
    existing = [path for path in named if path.exists()]
    if existing:
        shown = ", ".join(f"'{p}'" for p in existing[:MAX_LISTED])
        more = f" and {len(existing) - MAX_LISTED} more" if len(existing) > MAX_LISTED else ""
        raise SeglabError(f"{len(existing)} output file(s) already exist ({shown}{more}): pass --overwrite to "
                          "replace them, or choose another -o")
