"""`seglab check`: what a data folder holds and what is wrong with it, before any training."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seglab.data.classmap import ClassMap
from seglab.data.discover import DataLayout, discover, infer_class_map, survey_masks
from seglab.data.io import image_info
from seglab.errors import DataError

MAX_LISTED = 5


@dataclass
class Preflight:
    """Lines to print, and problems: errors (fatal for training) and warnings."""

    layout: DataLayout | None = None
    class_map: ClassMap | None = None
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.warnings


def _listing(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths[:MAX_LISTED]]
    return ", ".join(names) + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def run_preflight(root: str | Path, mask_values: list[int] | None = None, num_classes: int | None = None,
                  class_names: list[str] | None = None, ignore_value: int | None = None,
                  rgb: bool = False) -> Preflight:
    report = Preflight()
    try:
        layout = discover(root)
    except DataError as error:
        report.errors.append(str(error))
        return report
    report.layout = layout
    root = layout.root
    masks = []
    for split, scan in layout.splits.items():
        where = "" if split == "all" else f"{split}: "
        suffix = f" (mask suffix '{scan.mask_suffix}')" if scan.mask_suffix else ""
        if scan.mask_dir is None:
            report.lines.append(f"{where}{len(scan.unpaired_images)} images without masks (prediction only)")
        else:
            report.lines.append(f"{where}{len(scan.pairs)} image/mask pairs{suffix}")
            if scan.unpaired_images:
                report.warnings.append(f"{where}{len(scan.unpaired_images)} images without a mask: "
                                       f"{_listing(scan.unpaired_images, root)}; add their masks or move them out")
            if scan.unpaired_masks:
                report.warnings.append(f"{where}{len(scan.unpaired_masks)} masks without an image: "
                                       f"{_listing(scan.unpaired_masks, root)}; check the names")
        sizes: Counter[tuple] = Counter()
        for pair_image, pair_mask in [(p.image, p.mask) for p in scan.pairs] + [(i, None) for i in scan.unpaired_images]:
            try:
                height, width, channels, dtype = image_info(pair_image)
                sizes[(width, height, channels, dtype)] += 1
                if pair_mask is not None:
                    mask_h, mask_w, _, _ = image_info(pair_mask)
                    if (mask_h, mask_w) != (height, width):
                        report.errors.append(f"image '{pair_image}' is {width}x{height} but its mask '{pair_mask}' "
                                             f"is {mask_w}x{mask_h}: masks must have their image's size")
            except DataError as error:
                report.errors.append(str(error))
        for (width, height, channels, dtype), count in sorted(sizes.items(), key=lambda kv: -kv[1]):
            report.lines.append(f"  {count} x {width}x{height}, {channels} channel{'s' if channels > 1 else ''}, {dtype}")
        if len({key[2] for key in sizes}) > 1:
            report.warnings.append(f"{where}images have mixed channel counts; they are converted to the first "
                                   "image's channel count, or pass --in-channels")
        masks += [p.mask for p in scan.pairs]
    if not masks:
        report.errors.append(f"no image/mask pairs in '{root}': put images in images/ and masks in masks/ "
                             "with matching names")
        return report
    try:
        survey = survey_masks(masks)
    except DataError as error:
        report.errors.append(str(error))
        return report
    sampled = f" (sampled {survey.files_read} of {len(masks)})" if survey.files_read < len(masks) else ""
    report.lines.append(f"mask values{sampled}: {survey.values}")
    try:
        class_map = infer_class_map(survey, mask_values, num_classes, class_names, ignore_value, rgb)
    except DataError as error:
        report.errors.append(str(error))
        return report
    report.class_map = class_map
    report.lines.append(f"class map: {class_map.describe()}")
    total = sum(count for value, count in survey.counts.items() if value != ignore_value)
    shares = [f"{name} {survey.counts.get(value, 0) / total:.1%}" for value, name in zip(class_map.values, class_map.names)]
    report.lines.append("class shares: " + ", ".join(shares))
    return report


def format_preflight(report: Preflight) -> str:
    lines = list(report.lines)
    for error in report.errors:
        lines.append(f"error: {error}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append("ok" if report.ok else f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def write_preview(report: Preflight, path: str | Path, preset: str = "paper", count: int = 8,
                  crop: tuple[int, int] | None = None, max_images: int = 16) -> Path:
    """A PNG grid of `count` augmented pairs, as training would see them (same preset, crop and
    normalisation), from up to `max_images` pairs of the folder's first size."""
    import torch

    from seglab.data.augment import BatchAugmenter, augment_preset
    from seglab.data.datasets import load_pair
    from seglab.viz.preview import save_augment_preview

    pairs = report.layout.training_pairs() or [p for s in report.layout.splits.values() for p in s.pairs]
    items = [load_pair(pair, report.class_map, image_info(pairs[0].image)[2], 1.0, "minmax")
             for pair in pairs[:max_images]]
    items = [item for item in items if item[0].shape == items[0][0].shape]
    images = torch.stack([image for image, _ in items])
    masks = torch.stack([mask for _, mask in items])
    return save_augment_preview(images, masks, BatchAugmenter(augment_preset(preset), seed=0), path, count, crop)
