"""`seglab check`: what a data folder holds and what is wrong with it, before any training; `--fix-to`
writes a clean copy (class-index PNG masks, paired names) without touching the originals."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglab.data.classmap import ClassMap, MaskRules, pack_rgb, unpack_rgb
from seglab.data.decoded import DecodedFiles
from seglab.data.discover import MAX_IMPLICIT_CLASSES, DataLayout, MaskSurvey, discover, infer_class_map
from seglab.data.folders import FolderScan
from seglab.data.io import check_trainable_size
from seglab.data.labels.class_rules import label_rules, palette_colours, with_colours
from seglab.data.mask_facts import JPEG_SUFFIXES, MaskFacts, mask_facts, survey_facts
from seglab.data.samples import evenly_spread
from seglab.errors import DataError
from seglab.progress import progress_iter

MAX_LISTED = 5
MAX_SURVEYED = 500          # masks (and their images) decoded by the check, evenly spread
RARE_CLASS_SHARE = 0.01     # a class under this share of the pixels gets a note
BLUR_MESSAGE = ("JPEG compression blurred the edges: re-export as PNG or use --fix-to which snaps values to "
                "the nearest class")


@dataclass
class MaskFix:
    """How --fix-to turns each mask into class indices."""

    class_map: ClassMap
    unify_binary: bool = False  # {0,1} and {0,255} masks mixed: 1 means 255


@dataclass
class Preflight:
    """Lines to print, and problems: errors (fatal for training) and warnings."""

    layout: DataLayout | None = None
    class_map: ClassMap | None = None
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    colour_table: dict[str, list[int]] | None = None  # found in RGB masks, for --mask-colors
    fix: MaskFix | None = None                        # what --fix-to writes masks through
    bad_files: set[Path] = field(default_factory=set)  # unreadable, or sized unlike their image

    @property
    def ok(self) -> bool:
        return not self.errors and not self.warnings

    def __str__(self) -> str:
        """The text `seglab check` prints."""
        return format_preflight(self)


def list_files(paths: list[Path], root: Path) -> str:
    names = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths[:MAX_LISTED]]
    return ", ".join(names) + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def _plural(count: int, one: str, many: str) -> str:
    """_plural(1, "mask is", "masks are") -> "1 mask is"; _plural(3, ...) -> "3 masks are"."""
    return f"{count} {one if count == 1 else many}"


def format_values(values: list[int], limit: int = 8) -> str:
    return "{" + ", ".join(str(v) for v in values[:limit]) + (", ..." if len(values) > limit else "") + "}"


def _header(report: Preflight, path: Path, files: DecodedFiles) -> tuple[int, int, int, str] | None:
    """image_info(path) (read once, through the run's store), or None after recording the unreadable
    file as an error."""
    try:
        return files.header(path)
    except DataError as error:
        report.errors.append(str(error))
        report.bad_files.add(path)
        return None


def _trainable(report: Preflight, path: Path, height: int, width: int) -> bool:
    """False after recording an image too small to train on as an error."""
    try:
        check_trainable_size(path, height, width)
    except DataError as error:
        report.errors.append(str(error))
        report.bad_files.add(path)
        return False
    return True


def run_preflight(root: str | Path, mask_values: list[int] | None = None, num_classes: int | None = None,
                  class_names: list[str] | None = None, ignore_value: int | None = None,
                  rgb: bool = False, decoded: DecodedFiles | None = None, label_map: str | None = None,
                  multilabel: bool = False) -> Preflight:
    """What `seglab check` reports on the folder `root`; `decoded`: the store that keeps what it
    decodes for the steps after it (`seglab train` hands it to the plan and the training);
    `label_map`: a JSON table the masks are remapped through first; `multilabel`: masks of
    overlapping labels (found without it in a mask folder per label)."""
    report = Preflight()
    files = decoded if decoded is not None else DecodedFiles(budget_bytes=0)
    try:
        layout = discover(root, label_map, multilabel)
    except DataError as error:
        report.errors.append(str(error))
        return report
    report.layout = layout
    root = layout.root
    report.lines += [source.describe() for source in layout.label_sources()]
    pairs = []
    for split, scan in layout.splits.items():
        where = "" if split == "all" else f"{split}: "
        suffix = f" (mask suffix '{scan.mask_suffix}')" if scan.mask_suffix else ""
        if scan.mask_dir is None:
            report.lines.append(f"{where}{len(scan.unpaired_images)} images without masks (prediction only)")
        else:
            report.lines.append(f"{where}{len(scan.pairs)} image/mask pairs{suffix}")
            if scan.unpaired_images:
                report.warnings.append(f"{where}{len(scan.unpaired_images)} images without a mask: "
                                       f"{list_files(scan.unpaired_images, root)}; add their masks or move them out")
            if scan.unpaired_masks:
                report.warnings.append(f"{where}{len(scan.unpaired_masks)} masks without an image: "
                                       f"{list_files(scan.unpaired_masks, root)}; check the names")
        _check_sizes(report, where, scan, files)
        pairs += [p for p in scan.pairs if p.image not in report.bad_files and p.mask not in report.bad_files]
    if not pairs:
        if not report.errors:
            report.errors.append(f"no image/mask pairs in '{root}': put images in images/ and masks in masks/ "
                                 "with matching names")
        return report
    facts = _read_sample(report, pairs, root, files)
    if facts:
        readable = sum(1 for p in pairs if p.mask not in report.bad_files)
        told = MaskRules(tuple(mask_values) if mask_values else None, num_classes,
                         tuple(class_names) if class_names else None, ignore_value, rgb, multilabel)
        first_palette = palette_colours(facts[0].path, files.palette)
        rules = label_rules(layout, told, {v for f in facts for v in f.counts}, first_palette)
        if rules.multilabel:
            _check_labels(report, facts, readable, rules)
        else:
            _check_masks(report, facts, root, readable, **{k: v for k, v in rules.as_kwargs().items()
                                                           if k != "multilabel"})
        if report.class_map is not None:
            report.class_map = with_colours(report.class_map, first_palette)
    return report


def _check_sizes(report: Preflight, where: str, scan: FolderScan, store: DecodedFiles) -> None:
    """The images' sizes, channels and dtypes (from headers), and masks sized unlike their image."""
    sizes: Counter[tuple] = Counter()
    files = [(p.image, p.mask) for p in scan.pairs] + [(i, None) for i in scan.unpaired_images]
    for pair_image, pair_mask in progress_iter(files, "check sizes"):
        info = _header(report, pair_image, store)
        if info is None or (pair_mask is not None and not _trainable(report, pair_image, *info[:2])):
            continue
        height, width, channels, dtype = info
        sizes[(width, height, channels, dtype)] += 1
        mask_info = _header(report, pair_mask, store) if pair_mask is not None else None
        if mask_info is None:
            continue
        mask_h, mask_w = mask_info[:2]
        if (mask_h, mask_w) != (height, width):
            report.errors.append(f"image '{pair_image}' is {width}x{height} but its mask '{pair_mask}' "
                                 f"is {mask_w}x{mask_h}: masks must have their image's size")
            report.bad_files.add(pair_mask)
    for (width, height, channels, dtype), count in sorted(sizes.items(), key=lambda kv: -kv[1]):
        plural = "s" if channels > 1 else ""
        report.lines.append(f"  {count} x {width}x{height}, {channels} channel{plural}, {dtype}")
    if len({key[2] for key in sizes}) > 1:
        report.warnings.append(f"{where}images have mixed channel counts; they are converted to the first "
                               "image's channel count, or pass --in-channels")
    sixteen = sum(count for key, count in sizes.items() if key[3] == "uint16")
    if sixteen:
        report.lines.append(f"note: {where}{sixteen} images are 16-bit: handled, scaled to [0, 1] by 65535")


def _read_sample(report: Preflight, pairs: list, root: Path, files: DecodedFiles) -> list[MaskFacts]:
    """Decode an evenly spread sample of pairs (catches truncated files the headers hide)."""
    facts, unreadable = [], []
    for pair in progress_iter(evenly_spread(pairs, MAX_SURVEYED), "check pixels", "pair"):
        try:
            files.image(pair.image)
        except DataError as error:
            unreadable.append(str(error))
            report.bad_files.add(pair.image)
        try:
            facts.append(mask_facts(pair.mask, files.mask(pair.mask), files.palette(pair.mask)))
        except DataError as error:
            unreadable.append(str(error))
            report.bad_files.add(pair.mask)
    report.errors += unreadable[:MAX_LISTED]
    if len(unreadable) > MAX_LISTED:
        report.errors.append(f"{len(unreadable) - MAX_LISTED} more unreadable files: re-export or remove them "
                             "too (the first five are named above)")
    return facts


def _check_masks(report: Preflight, facts: list[MaskFacts], root: Path, total_masks: int, mask_values, num_classes,
                 class_names, ignore_value, rgb: bool) -> None:
    """Every check of the masks' values, then the class map they give (or --fix-to would give)."""
    survey = survey_facts(facts)
    _describe_values(report, survey, facts, total_masks, rgb)
    _note_palettes(report, facts, root)
    explained = _check_rgb(report, facts, root, rgb)
    explained = _check_blur(report, facts, root) or explained
    explicit = mask_values is not None or num_classes is not None
    mixed = _check_conventions(report, facts, root, explicit, rgb, ignore_value)
    explained = explained or mixed
    if num_classes is not None:
        explained = _check_num_classes(report, facts, root, num_classes, ignore_value) or explained
    try:
        report.class_map = infer_class_map(survey, mask_values, num_classes, class_names, ignore_value, rgb)
    except DataError as error:
        if not explained:
            report.errors.append(str(error))
    report.fix = _fix_plan(report, facts, mask_values, num_classes, class_names, ignore_value, rgb, mixed)
    _describe_classes(report, facts, survey, ignore_value, mixed)


def _check_labels(report: Preflight, facts: list[MaskFacts], total_masks: int, rules: MaskRules) -> None:
    """Masks of overlapping labels (bit sets): the label map they give and each label's share of the
    pixels (labels overlap, so shares may add up past 100%)."""
    survey = survey_facts(facts)
    sampled = f" (sampled {survey.files_read} of {total_masks})" if survey.files_read < total_masks else ""
    try:
        report.class_map = infer_class_map(survey, **rules.as_kwargs())
    except DataError as error:
        report.errors.append(str(error))
        return
    report.fix = MaskFix(report.class_map)
    class_map = report.class_map
    total = sum(count for value, count in survey.counts.items() if value != class_map.ignore_value) or 1
    shares = [count / total for count in class_map.pixel_counts(survey.counts)]
    report.lines.append(f"label map: {class_map.describe()}")
    report.lines.append(f"label shares{sampled}: " + ", ".join(f"{name} {share:.1%}"
                                                                for name, share in zip(class_map.names, shares)))
    empty = [name for name, share in zip(class_map.names, shares) if share == 0]
    if empty:
        report.warnings.append(f"no pixel of the masks read holds the label(s) {', '.join(empty)}: the model cannot "
                               "learn them; add examples or drop those labels")


def _describe_values(report: Preflight, survey: MaskSurvey, facts: list[MaskFacts], total_masks: int,
                     rgb: bool) -> None:
    sampled = f" (sampled {survey.files_read} of {total_masks})" if survey.files_read < total_masks else ""
    if rgb or any(f.kind == "rgb" for f in facts):
        shown = ["rgb(%d,%d,%d)" % tuple(unpack_rgb(v)) for v in survey.values]
        report.lines.append(f"mask colours{sampled}: [{', '.join(shown[:12])}{', ...' if len(shown) > 12 else ''}]")
        return
    values = survey.values
    shown = (str(values) if len(values) <= 16
             else f"[{', '.join(map(str, values[:8]))}, ..., {values[-1]}] ({len(values)} values)")
    report.lines.append(f"mask values{sampled}: {shown}")


def _note_palettes(report: Preflight, facts: list[MaskFacts], root: Path) -> None:
    palettes = [f for f in facts if f.kind == "palette" and f.palette]
    if not palettes:
        return
    colours = {i: c for f in palettes for i, c in f.palette.items()}
    table = ", ".join("%d = rgb(%d,%d,%d)" % ((i,) + colours[i]) for i in sorted(colours)[:12])
    report.lines.append(f"note: palette masks ({_plural(len(palettes), 'file', 'files')}: "
                        f"{list_files([f.path for f in palettes], root)}): the palette index is the class value; "
                        f"colours {table}")


def _check_rgb(report: Preflight, facts: list[MaskFacts], root: Path, rgb: bool) -> bool:
    """RGB colour masks given without a colour table; True when that explains the masks' values."""
    rgb_facts = [f for f in facts if f.kind == "rgb"]
    if not rgb_facts or rgb:
        return False
    colours = sorted({v for f in rgb_facts for v in f.counts})
    jpeg = [f.path for f in rgb_facts if f.path.suffix.lower() in JPEG_SUFFIXES]
    files = list_files([f.path for f in rgb_facts], root)
    if len(colours) <= MAX_IMPLICIT_CLASSES:
        report.colour_table = {f"class{k}": [int(c) for c in unpack_rgb(v)] for k, v in enumerate(colours)}
        table = ", ".join(f'"{name}": {rgb_list}' for name, rgb_list in report.colour_table.items())
        report.errors.append(f"RGB colour masks with {len(colours)} colours ({files}): save this colour table as "
                             f"colors.json, rename the classes, and pass --mask-colors colors.json: {{{table}}}")
    elif jpeg:
        report.errors.append(f"RGB masks saved as JPEG, with {len(colours)} colours "
                             f"({list_files(jpeg, root)}): {BLUR_MESSAGE} (with --mask-colors)")
    else:
        report.errors.append(f"RGB masks with {len(colours)} colours, too many for classes ({files}): export masks "
                             "as class indices or exact colours")
    return True


def _check_blur(report: Preflight, facts: list[MaskFacts], root: Path) -> bool:
    """Masks blurred at the edges (an error) and exact masks saved as JPEG (a warning)."""
    blurred = [f for f in facts if f.blurred]
    if blurred:
        low, high = blurred[0].blurred
        share = np.mean([f.stray_share for f in blurred])
        jpeg = all(f.path.suffix.lower() in JPEG_SUFFIXES for f in blurred)
        how = "JPEG-compressed" if jpeg else "blurred at the edges (JPEG compression or antialiased resizing)"
        report.errors.append(f"{_plural(len(blurred), 'mask is', 'masks are')} {how}: {share:.1%} of their pixels "
                             f"lie between {low} and {high} "
                             f"({list_files([f.path for f in blurred], root)}): {BLUR_MESSAGE}")
    clean_jpeg = [f.path for f in facts if f.path.suffix.lower() in JPEG_SUFFIXES and not f.blurred and f.kind != "rgb"]
    if clean_jpeg:
        report.warnings.append(f"{_plural(len(clean_jpeg), 'mask is', 'masks are')} saved as JPEG "
                               f"({list_files(clean_jpeg, root)}): their values "
                               "are exact now, but JPEG is lossy and blurs edges when masks are edited and saved "
                               "again: save masks as PNG (--fix-to does)")
    return bool(blurred)


def _check_conventions(report: Preflight, facts: list[MaskFacts], root: Path, explicit: bool, rgb: bool,
                       ignore_value) -> bool:
    """{0,1} and {0,255} masks mixed in one folder (an error; returns True), or a note on the binary map."""
    conventions = {name: [f.path for f in facts if f.convention == name] for name in ("{0,1}", "{0,255}")}
    mixed = (bool(conventions["{0,1}"] and conventions["{0,255}"]) and not explicit and not rgb
             and ignore_value not in (0, 1, 255))
    clean_values = set(survey_facts(facts, clean=True).values) - {ignore_value}
    if mixed:
        ones, high = conventions["{0,1}"], conventions["{0,255}"]
        report.errors.append(f"masks mix two binary conventions: {_plural(len(ones), 'is', 'are')} {{0,1}} "
                             f"({list_files(ones, root)}) and {_plural(len(high), 'is', 'are')} {{0,255}} "
                             f"({list_files(high, root)}): re-export them one way, or use --fix-to which maps 1 and "
                             "255 both to class 1")
    elif not rgb and len(clean_values) == 2 and clean_values in ({0, 1}, {0, 255}):
        positive = max(clean_values)
        report.lines.append(f"note: masks are binary {{0,{positive}}}: 0 -> class 0, {positive} -> class 1")
    return mixed


def _check_num_classes(report: Preflight, facts: list[MaskFacts], root: Path, num_classes: int,
                       ignore_value) -> bool:
    outside = [f for f in facts if any(v < 0 or v >= num_classes for v in f.counts if v != ignore_value)]
    if not outside:
        return False
    shown = "; ".join(f"{list_files([f.path], root)} has {format_values(f.values)}" for f in outside[:3])
    report.errors.append(f"{_plural(len(outside), 'mask holds', 'masks hold')} more values than the "
                         f"{num_classes} classes of --num-classes {num_classes} (expected 0..{num_classes - 1}): "
                         f"{shown}{' ...' if len(outside) > 3 else ''}: fix these masks or pass the right "
                         "--num-classes (or --ignore-index for a void value)")
    return True


def _describe_classes(report: Preflight, facts: list[MaskFacts], survey: MaskSurvey, ignore_value,
                      mixed: bool) -> None:
    """The class map and each class's share of the pixels; very rare classes get a note."""
    class_map = report.class_map or (report.fix.class_map if report.fix else None)
    if class_map is None:
        return
    fixed = " (after --fix-to)" if report.class_map is None else ""
    report.lines.append(f"class map{fixed}: {class_map.describe()}")
    clean = survey_facts(facts, clean=True, unify_binary=mixed) if report.class_map is None else survey
    total = sum(count for value, count in clean.counts.items() if value != ignore_value) or 1
    shares = [clean.counts.get(value, 0) / total for value in class_map.values]
    report.lines.append("class shares: " + ", ".join(f"{name} {s:.1%}" for name, s in zip(class_map.names, shares)))
    rare = [f"'{name}' ({share:.2%})" for name, share in zip(class_map.names, shares) if share < RARE_CLASS_SHARE]
    if rare:
        # A fact about the data, not a mistake in it: reported, but `check` still passes.
        report.lines.append(f"note: very unbalanced classes: {', '.join(rare)} under {RARE_CLASS_SHARE:.0%} of the "
                            "pixels: the model may never predict them; weight them with --class-weights auto "
                            "(the default loss already adds Dice), or collect more examples")


def _fix_plan(report: Preflight, facts: list[MaskFacts], mask_values, num_classes, class_names, ignore_value,
              rgb: bool, mixed: bool) -> MaskFix | None:
    """The class map --fix-to writes masks through: the folder's own, or one inferred from cleaned values."""
    if report.class_map is not None:
        return MaskFix(report.class_map)
    if report.colour_table is not None:
        codes = [int(pack_rgb(np.asarray(c).reshape(1, 3))[0]) for c in report.colour_table.values()]
        return MaskFix(ClassMap(tuple(codes), tuple(report.colour_table), None, True))
    try:
        class_map = infer_class_map(survey_facts(facts, clean=True, unify_binary=mixed), mask_values, num_classes,
                                    class_names, ignore_value, rgb)
    except DataError as error:
        if not report.errors:
            report.errors.append(str(error))
        return None
    return MaskFix(class_map, mixed)


def format_preflight(report: Preflight) -> str:
    lines = list(report.lines)
    for error in report.errors:
        lines.append(f"error: {error}")
    if report.colour_table:
        lines.append("colour table found in the masks (save as colors.json, name the classes, pass --mask-colors "
                     "colors.json):")
        entries = [f'  "{name}": [{", ".join(str(c) for c in colour)}]' for name, colour in report.colour_table.items()]
        lines += ["{"] + [entry + ("," if i < len(entries) - 1 else "") for i, entry in enumerate(entries)] + ["}"]
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append("ok" if report.ok else f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)
