"""`seglab check --fix-to DIR`: a clean copy of a data folder (class-index PNG masks, paired names,
blurred masks snapped to their classes) that leaves the originals untouched."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.data.classmap import IGNORE_INDEX, pack_rgb, unpack_rgb
from seglab.data.io import read_image, read_mask_and_palette
from seglab.data.mask_facts import JPEG_SUFFIXES, mask_facts
from seglab.data.preflight import (
    MAX_LISTED,
    MaskFix,
    Preflight,
    format_preflight,
    format_values,
    list_files,
    run_preflight,
)
from seglab.data.writing import current_umask, write_mask
from seglab.errors import DataError, SeglabError


@dataclass
class FixResult:
    dest: Path
    pairs: int = 0
    images_only: int = 0
    snapped: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignore_code: int | None = None


def fixed_classes(mask: np.ndarray, fix: MaskFix, name: str, snap: bool = False) -> np.ndarray:
    """Raw mask values -> class indices (H, W) int64 (IGNORE_INDEX for ignored pixels).

    Blurred masks (`snap`) have values outside the class map moved to the nearest class value;
    other masks with such values raise DataError.
    """
    class_map = fix.class_map
    if mask.ndim == 3:
        if not class_map.rgb:
            raise DataError(f"'{name}' is an RGB mask among gray ones: export all masks the same way")
        mask = pack_rgb(mask)
    elif class_map.rgb:
        raise DataError(f"'{name}' is a gray mask among RGB colour masks: export all masks the same way")
    values = np.unique(mask)
    if fix.unify_binary and set(values.tolist()) <= {0, 1}:
        mask = mask * 255
    known = list(class_map.values) + ([class_map.ignore_value] if class_map.ignore_value is not None else [])
    unknown = ~np.isin(mask, known)
    if unknown.any():
        if not snap:
            raise DataError(f"'{name}' holds values {format_values(np.unique(mask[unknown]).tolist())} outside "
                            f"the class map {format_values(list(class_map.values))}")
        targets = np.asarray(class_map.values, dtype=np.int64)
        odd = mask[unknown].astype(np.int64)
        if class_map.rgb:
            distance = np.abs(unpack_rgb(odd)[:, None, :].astype(np.int64)
                              - unpack_rgb(targets)[None].astype(np.int64)).sum(-1)
        else:
            distance = np.abs(odd[:, None] - targets[None])
        mask = mask.astype(np.int64, copy=True)
        mask[unknown] = targets[np.argmin(distance, axis=1)]
    return class_map.encode(mask)


def require_empty_folder(dest: str | Path) -> None:
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SeglabError(f"--fix-to '{dest}' already exists and is not empty: choose a new folder")


def write_fixed_copy(report: Preflight, dest: str | Path) -> FixResult:
    """Write a clean copy of the checked folder into `dest` (which must be new or empty): images
    copied as they are, masks as class-index PNGs named like their image, same splits. Pairs that
    cannot be fixed are left out and listed. The copy appears under `dest` only when complete."""
    dest = Path(dest)
    if report.layout is None or report.fix is None:
        raise SeglabError("--fix-to needs masks whose classes can be worked out: fix the errors above first")
    if report.fix.class_map.multilabel:
        raise SeglabError("--fix-to writes one class per pixel; these masks hold overlapping labels (bit sets, "
                          "checked as they are): train on the folder itself")
    require_empty_folder(dest)
    source = report.layout.root.resolve()
    if dest.resolve() == source or any(dest.resolve().is_relative_to(d.resolve()) for s in report.layout.splits.values()
                                       for d in (s.image_dir, s.mask_dir) if d is not None):
        raise SeglabError(f"--fix-to '{dest}' is inside the folder being checked: choose a folder outside it")
    class_map = report.fix.class_map
    ignore_code = None
    if class_map.ignore_value is not None:
        keeps_value = class_map.num_classes <= class_map.ignore_value <= 255 and not class_map.rgb
        ignore_code = class_map.ignore_value if keeps_value else 255
    result = FixResult(dest, ignore_code=ignore_code)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        for split, scan in report.layout.splits.items():
            out = staging if split == "all" else staging / split
            (out / "images").mkdir(parents=True, exist_ok=True)
            if scan.mask_dir is None:
                for image in scan.unpaired_images:
                    if _copy_image(image, out / "images", result):
                        result.images_only += 1
                continue
            (out / "masks").mkdir(exist_ok=True)
            for image in scan.unpaired_images:
                result.skipped.append((image, "no mask"))
            for mask in scan.unpaired_masks:
                result.skipped.append((mask, "no image"))
            for pair in scan.pairs:
                _fix_pair(pair, out, report, result)
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
        os.chmod(dest, 0o777 & ~current_umask())  # mkdtemp made the staging folder private
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def fix_and_recheck(report: Preflight, dest: str | Path) -> tuple[str, bool]:
    """Write the clean copy, check it, and say what was done: (text to print, copy passes the check)."""
    result = write_fixed_copy(report, dest)
    class_map = report.fix.class_map
    lines = [f"wrote a clean copy to {result.dest}: {result.pairs} pairs"
             + (f" and {result.images_only} images without masks" if result.images_only else "")
             + f"; masks hold class indices 0..{class_map.num_classes - 1} ({', '.join(class_map.names)})"
             + (f", {result.ignore_code} = ignored" if result.ignore_code is not None else "")]
    if result.snapped:
        lines.append(f"  {len(result.snapped)} masks snapped to the nearest class: "
                     f"{list_files(result.snapped, report.layout.root)}")
    for path, reason in result.skipped[:MAX_LISTED]:
        lines.append(f"  left out {path}: {reason}")
    if len(result.skipped) > MAX_LISTED:
        lines.append(f"  left out {len(result.skipped) - MAX_LISTED} more files")
    names = None if all(n == str(v) for n, v in zip(class_map.names, class_map.values)) else list(class_map.names)
    recheck = run_preflight(result.dest, class_names=names, ignore_value=result.ignore_code)
    flags = "".join([f" --ignore-index {result.ignore_code}" if result.ignore_code is not None else "",
                     f" --class-names {','.join(names)}" if names else ""])
    lines.append(f"check of the copy (seglab check {result.dest}{flags}):")
    lines += ["  " + line for line in format_preflight(recheck).splitlines()]
    return "\n".join(lines), recheck.ok


def _copy_image(image: Path, folder: Path, result: FixResult) -> bool:
    try:
        read_image(image)
    except DataError as error:
        result.skipped.append((image, str(error)))
        return False
    shutil.copyfile(image, folder / image.name)
    return True


def _fix_pair(pair, out: Path, report: Preflight, result: FixResult) -> None:
    try:
        image_h, image_w = read_image(pair.image).shape[:2]
    except DataError as error:
        result.skipped.append((pair.image, str(error)))
        return
    try:
        raw, colours = read_mask_and_palette(pair.mask)
        if raw.shape[:2] != (image_h, image_w):
            raise DataError(f"'{pair.mask}' is {raw.shape[1]}x{raw.shape[0]} but its image is {image_w}x{image_h}")
        facts = mask_facts(pair.mask, raw, colours) if raw.ndim == 2 else None
        snap = pair.mask.suffix.lower() in JPEG_SUFFIXES or bool(facts and facts.blurred)
        classes = fixed_classes(raw, report.fix, str(pair.mask), snap)
    except DataError as error:
        result.skipped.append((pair.mask, str(error)))
        return
    out_mask = classes.astype(np.uint8)
    if result.ignore_code is not None:
        out_mask[classes == IGNORE_INDEX] = result.ignore_code
    shutil.copyfile(pair.image, out / "images" / pair.image.name)
    write_mask(out / "masks" / f"{pair.image.stem}.png", out_mask)
    if snap:
        result.snapped.append(pair.mask)
    result.pairs += 1
