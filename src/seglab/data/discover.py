"""Find image/mask pairs in a data folder and infer the explicit mask-value -> class map."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from seglab.data.classmap import MAX_LABELS, ClassMap, pack_rgb, unpack_rgb, value_counts
from seglab.data.folders import (
    IMAGE_DIR_NAMES,
    MASK_DIR_NAMES,
    FolderScan,
    LabelSource,
    Pair,
    detect_mask_suffix,
    find_dir,
    list_images,
)
from seglab.data.io import read_mask
from seglab.data.labels.found import coco_splits, scan_annotations, ultralytics_splits
from seglab.data.labels.label_table import remap_scan
from seglab.data.labels.multilabel import label_folders, scan_label_channels, scan_label_folders
from seglab.data.samples import evenly_spread
from seglab.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}  # valid/: Roboflow's
# Above this many distinct values a mask is taken for an exported picture, not class indices.
MAX_IMPLICIT_CLASSES = 32


@dataclass
class DataLayout:
    """A data folder: either one split "all" or named splits train/val/test."""

    root: Path
    splits: dict[str, FolderScan]

    @property
    def has_named_splits(self) -> bool:
        return "all" not in self.splits

    def labelled(self, split: str) -> list[Pair]:
        scan = self.splits.get(split)
        return list(scan.pairs) if scan else []

    def training_pairs(self) -> list[Pair]:
        """Pairs to train (and by default validate) on: the train split, else the whole folder."""
        return self.labelled("train") if self.has_named_splits else self.labelled("all")

    def label_sources(self) -> list[LabelSource]:
        """Where the splits' masks came from when they were rasterised from annotations."""
        return [scan.labels for scan in self.splits.values() if scan.labels is not None]


def scan_folder(folder: Path, multilabel: bool = False) -> FolderScan:
    """Pair the files of folder/images (or imgs, image) with folder/masks (or labels, ...), or with
    the masks rasterised from the folder's COCO or YOLO annotations (`data.labels`), or packed from
    a mask folder per label (or, with `multilabel`, from masks with a channel per label)."""
    annotated = scan_annotations(folder)
    if annotated is not None:
        return annotated
    image_dir = find_dir(folder, IMAGE_DIR_NAMES)
    mask_dir = find_dir(folder, MASK_DIR_NAMES)
    if image_dir is None:
        return FolderScan(None, mask_dir, unpaired_masks=list_images(mask_dir) if mask_dir else [])
    images = list_images(image_dir)
    if mask_dir is None:
        return FolderScan(image_dir, None, unpaired_images=images)
    labels = label_folders(mask_dir)
    if labels:
        return scan_label_folders(folder, image_dir, mask_dir, labels)
    scan = _paired(image_dir, mask_dir, images)
    return scan_label_channels(folder, scan) if multilabel else scan


def _paired(image_dir: Path, mask_dir: Path, images: list[Path]) -> FolderScan:
    """The images of image_dir paired with the masks of mask_dir by stem (and a mask suffix)."""
    masks = list_images(mask_dir)
    image_by_stem = {p.stem: p for p in images}
    suffix = detect_mask_suffix(set(image_by_stem), [m.stem for m in masks])
    scan = FolderScan(image_dir, mask_dir, mask_suffix=suffix)
    paired_stems = set()
    for mask in masks:
        stem = mask.stem[: len(mask.stem) - len(suffix)] if suffix and mask.stem.endswith(suffix) else mask.stem
        image = image_by_stem.get(stem)
        if image is None or stem in paired_stems:
            scan.unpaired_masks.append(mask)
        else:
            scan.pairs.append(Pair(image, mask))
            paired_stems.add(stem)
    scan.unpaired_images = [p for stem, p in sorted(image_by_stem.items()) if stem not in paired_stems]
    scan.pairs.sort(key=lambda p: p.image.name)
    return scan


def discover(root: str | Path, label_map: str | Path | None = None, multilabel: bool = False) -> DataLayout:
    """Describe a data folder: `root/images + root/masks`, or `root/{train,val,test}/...`; with
    `label_map` (a JSON table), masks are remapped through it (`data.labels.label_table`); with
    `multilabel`, masks holding several channels hold a label each (`data.labels.multilabel`)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist: check the path")
    if not root.is_dir():
        raise DataError(f"'{root}' is a file; give the data folder that holds images/ and masks/")
    folders = {name: next((root / f for f in SPLIT_FOLDERS[name] if (root / f).is_dir()), None) for name in SPLIT_NAMES}
    splits = {name: scan_folder(folder, multilabel) for name, folder in folders.items() if folder is not None}
    splits = ({name: scan for name, scan in splits.items() if scan.image_dir is not None}
              or ultralytics_splits(root) or coco_splits(root))
    if not splits:
        scan = scan_folder(root, multilabel)
        if scan.image_dir is None:
            raise DataError(
                f"no images/ folder in '{root}': expected {root}/images + {root}/masks "
                f"(or imgs/, labels/, ...) or train/, val/, test/ subfolders holding them")
        splits = {"all": scan}
    if label_map is not None:
        splits = {name: _remapped(scan, Path(label_map)) for name, scan in splits.items()}
    return DataLayout(root, splits)


def _remapped(scan: FolderScan, table: Path) -> FolderScan:
    folder = scan.image_dir.parent
    if scan.labels is not None:
        raise DataError(f"--label-map {table} remaps mask files, but '{folder}' is labelled by {scan.labels.kind} "
                        f"{scan.labels.source}: leave --label-map out")
    return remap_scan(scan, folder, table) if scan.mask_dir is not None else scan


@dataclass
class MaskSurvey:
    """Mask values seen in a set of masks: pixel counts per value and the first file per value."""

    counts: Counter = field(default_factory=Counter)
    first_file: dict[int, Path] = field(default_factory=dict)
    files_read: int = 0
    rgb_files: list[Path] = field(default_factory=list)
    distinct_per_file: dict[Path, int] = field(default_factory=dict)
    values_per_file: dict[Path, frozenset] = field(default_factory=dict)

    @property
    def values(self) -> list[int]:
        return sorted(self.counts)


def survey_masks(masks: list[Path], max_files: int | None = 500, read=read_mask, held=None) -> MaskSurvey:
    """Read masks (a sample of at most `max_files`) and count their values; `read`: path -> raw
    values, `read_mask` or a store that decodes each file once (`data.decoded`). The sample is the
    masks `held(path)` says are decoded already (the check's sample), topped up evenly spread."""
    if max_files is not None and len(masks) > max_files:
        kept = [path for path in masks if held(path)][:max_files] if held is not None else []
        taken = set(kept)
        others = [path for path in masks if path not in taken]
        masks = kept + evenly_spread(others, max_files - len(kept))
    survey = MaskSurvey()
    for path in masks:
        mask = read(path)
        survey.files_read += 1
        if mask.ndim == 3:
            survey.rgb_files.append(path)
            mask = pack_rgb(mask)
        values, counts = value_counts(mask)
        survey.distinct_per_file[path] = len(values)
        survey.values_per_file[path] = frozenset(values.tolist())
        for value, count in zip(values.tolist(), counts.tolist()):
            survey.counts[value] += count
            survey.first_file.setdefault(value, path)
    return survey


def _format_values(values: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def infer_class_map(survey: MaskSurvey, mask_values: list[int] | None = None,
                    num_classes: int | None = None, class_names: list[str] | None = None,
                    ignore_value: int | None = None, rgb: bool = False, multilabel: bool = False) -> ClassMap:
    """Decide which mask value is which class, or raise DataError naming the offending file.

    Rules, in order: explicit `mask_values`; {0,255} or {0,1} binary; class indices 0..K-1
    (K from `num_classes`, or implied when there are at most MAX_IMPLICIT_CLASSES values).
    `multilabel`: the values are sets of labels, one bit each (`infer_label_map`).
    """
    if multilabel:
        return infer_label_map(survey, num_classes, class_names, ignore_value)
    if survey.rgb_files and not rgb:
        path, colours = survey.rgb_files[0], survey.values
        if len(colours) <= MAX_IMPLICIT_CLASSES:
            table = ", ".join(f'"class{k}": [%d, %d, %d]' % tuple(unpack_rgb(c)) for k, c in enumerate(colours))
            raise DataError(f"mask '{path}' is an RGB colour mask with {len(colours)} colours: save this colour "
                            f"table as colors.json, rename the classes, and pass --mask-colors colors.json: "
                            f"{{{table}}}")
        raise DataError(f"mask '{path}' is an RGB image with {len(colours)} colours (too many for classes; "
                        "a photo or a JPEG-compressed mask?): export masks as class indices or exact colours")
    seen = [v for v in survey.values if v != ignore_value]
    if not seen:
        raise DataError("no mask values found: the masks are empty or all ignored")

    def unexpected(allowed: set[int], expectation: str) -> DataError:
        bad = [v for v in seen if v not in allowed] or list(seen)
        path = survey.first_file[bad[0]]
        count = survey.distinct_per_file.get(path, len(bad))
        return DataError(f"mask '{path}' has {count} distinct values including {_format_values(bad)}; "
                         f"expected {expectation}: pass --mask-values or fix the export")

    if mask_values is not None:
        if not set(seen) <= set(mask_values):
            raise unexpected(set(mask_values), f"only the --mask-values {_format_values(list(mask_values))}")
        values = list(mask_values)
    elif num_classes is not None:
        if not set(seen) <= set(range(num_classes)):
            raise unexpected(set(range(num_classes)), f"class indices 0..{num_classes - 1} (--num-classes)")
        values = list(range(num_classes))
    elif set(seen) <= {0, 255}:
        values = [0, 255]
    elif set(seen) <= {0, 1}:
        values = [0, 1]
    elif min(seen) >= 0 and max(seen) < MAX_IMPLICIT_CLASSES:
        values = list(range(max(seen) + 1))
    else:
        # Values that fit no rule: blame those outside the likelier reading of the masks.
        allowed = {0, 255} if max(seen) == 255 else set(range(MAX_IMPLICIT_CLASSES))
        raise unexpected(allowed, "{0,255}, {0,1} or class indices 0..K-1")
    if class_names is not None and len(class_names) != len(values):
        raise DataError(f"{len(class_names)} class names given for {len(values)} classes "
                        f"(mask values {_format_values(values)}): pass one name per class")
    return ClassMap(tuple(int(v) for v in values),
                    tuple(class_names) if class_names else tuple(str(v) for v in values), ignore_value, rgb)


def infer_label_map(survey: MaskSurvey, num_labels: int | None = None, class_names: list[str] | None = None,
                    ignore_value: int | None = None) -> ClassMap:
    """The multi-label map of bit-set masks (bit k set where label k is): K labels from the names,
    else `num_labels`, else the highest bit seen. DataError naming the file for a colour mask or
    a value beyond K bits."""
    if survey.rgb_files:
        raise DataError(f"mask '{survey.rgb_files[0]}' has colour channels; multi-label masks hold one bit per "
                        "label in one channel, or one mask folder per label (masks/LABEL/NAME.png)")
    seen = [v for v in survey.values if v != ignore_value]
    if class_names is not None and num_labels is not None and len(class_names) != num_labels:
        raise DataError(f"{len(class_names)} class names given for {num_labels} labels: pass one name per label")
    count = len(class_names) if class_names else num_labels or max(max(seen, default=0).bit_length(), 2)
    if count > MAX_LABELS:
        raise DataError(f"{count} labels; multi-label masks hold at most {MAX_LABELS} (one bit each of a 16-bit PNG)")
    if count < 2:
        raise DataError("one label is a binary mask, not a multi-label one: leave out --multilabel")
    beyond = [v for v in seen if v < 0 or v >= 1 << count]
    if beyond:
        path = survey.first_file[beyond[0]]
        raise DataError(f"mask '{path}' holds {_format_values(beyond)}, beyond the bits of {count} labels (values "
                        f"0..{(1 << count) - 1}): give one --class-names name per label, or fix the export")
    try:
        return ClassMap.of_labels(class_names or [f"label{k}" for k in range(count)], ignore_value)
    except ValueError as error:
        raise DataError(f"{error}") from None


def labelled_pairs(data: str | Path, split: str | None = None, label_map: str | Path | None = None,
                   multilabel: bool = False) -> list[Pair]:
    """Pairs to score in a data folder: the named split, else val, test, the whole folder, or
    train, the first that has pairs (masks remapped through `label_map`, channels packed into
    labels with `multilabel`, as the run trained)."""
    layout = discover(data, label_map, multilabel)
    if split is not None:
        if split not in layout.splits:
            raise DataError(f"'{data}' has no {split}/ split; it has: {', '.join(layout.splits)}")
        pairs = layout.labelled(split)
    else:
        pairs = next((layout.labelled(s) for s in ("val", "test", "all", "train") if layout.labelled(s)), [])
    if not pairs:
        raise DataError(f"no image/mask pairs to evaluate in '{data}': run `seglab check {data}`")
    return pairs
