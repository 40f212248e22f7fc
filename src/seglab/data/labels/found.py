"""Labels found in a folder that are not mask files: COCO JSON or YOLO polygons, turned into a
FolderScan of (image, cached mask) pairs that the rest of seglab reads as any mask folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.folders import FolderScan, LabelSource, Pair, list_images
from seglab.data.io import image_info
from seglab.data.labels.cache import build_cache, cache_folder, content_key, load_cache
from seglab.data.labels.coco import find_coco_file, image_folders, read_coco
from seglab.data.labels.shapes import ImageLabels, rasterise
from seglab.data.labels.yolo import find_yolo_labels, names_file, read_yolo
from seglab.errors import DataError


def scan_annotations(folder: Path) -> FolderScan | None:
    """The pairs of a folder labelled by a COCO file or YOLO label files (None when it holds
    neither), their masks rasterised once into the cache. Raises DataError (file and entry) for
    annotations that cannot be rasterised."""
    coco = find_coco_file(folder)
    if coco is not None:
        return _coco_scan(folder, coco, "COCO")
    yolo = find_yolo_labels(folder)
    return None if yolo is None else _yolo_scan(folder, *yolo, names_file(folder), "YOLO")


def coco_splits(root: Path) -> dict[str, FolderScan]:
    """COCO's own layout: root/annotations/instances_train2017.json, instances_val2017.json, ...
    with the images in root/train2017, root/val2017; {} unless each file names a split of its own."""
    files = sorted((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else []
    named = {}
    for path in files:
        subset = path.stem.removeprefix("instances_")
        split = next((s for s in ("train", "val", "test") if subset.startswith(s)), None)
        if split is None or split in named:
            return {}  # find_coco_file refuses the folder, naming its files
        named[split] = path
    if len(named) < 2:
        return {}
    return {split: _coco_scan(root, path, f"COCO {path.stem.removeprefix('instances_')}")
            for split, path in named.items()}


def ultralytics_splits(root: Path) -> dict[str, FolderScan]:
    """Ultralytics' own layout: root/images/SPLIT + root/labels/SPLIT (train, val or valid, test),
    names in root/data.yaml; {} when the folder is not laid out so."""
    splits = {}
    for split, names in (("train", ("train",)), ("val", ("val", "valid")), ("test", ("test",))):
        for name in names:
            image_dir, label_dir = root / "images" / name, root / "labels" / name
            if image_dir.is_dir() and label_dir.is_dir() and any(p.suffix == ".txt" for p in label_dir.iterdir()):
                splits[split] = _yolo_scan(root, image_dir, label_dir, names_file(root), f"YOLO {name}")
                break
    return splits


def _coco_scan(folder: Path, path: Path, kind: str) -> FolderScan:
    """The pairs of one COCO file, keyed by its content."""
    key = content_key([path])
    cached = load_cache(cache_folder(folder, kind, key), folder)
    if cached is None:
        images, classes = read_coco(path, folder)
        cached = _build(folder, kind, key, path, images, classes)
    image_dir = next((p.parent for p, _ in cached.pairs), image_folders(folder, path)[0])
    return _scan(cached, "COCO", path, image_dir)


def _yolo_scan(folder: Path, image_dir: Path, label_dir: Path, names: Path | None, kind: str) -> FolderScan:
    """The pairs of YOLO label files, keyed by their content, the names file's and the image names."""
    label_files = sorted(p for p in label_dir.iterdir() if p.suffix == ".txt")
    image_names = ",".join(sorted(p.name for p in image_dir.iterdir()))
    key = content_key(label_files + ([names] if names else []), image_names)
    cached = load_cache(cache_folder(folder, kind, key), folder)
    if cached is None:
        images, classes = read_yolo(image_dir, label_dir, names)
        cached = _build(folder, kind, key, label_dir, images, classes)
    return _scan(cached, "YOLO", label_dir, image_dir)


def _build(folder: Path, kind: str, key: str, source: Path, images: list[ImageLabels], classes: dict[int, str]):
    """Rasterise every image's shapes into the cache (values as uint8 when they fit, else uint16),
    once the files are known to be the sizes the annotations were drawn on."""
    for labels in images:  # the size an annotation file states must be its image's
        height, width = image_info(labels.image)[:2]
        if (height, width) != (labels.height, labels.width):
            raise DataError(f"{source}: {labels.entry}: image '{labels.image}' is {width}x{height} but its "
                            f"annotations are for {labels.width}x{labels.height}: fix the width and height")
    dtype = np.uint8 if max(classes, default=0) <= 255 else np.uint16
    return build_cache(cache_folder(folder, kind, key), folder, [i.image for i in images], classes,
                       lambda index: rasterise(images[index], dtype))


def _scan(cached, kind: str, source: Path, image_dir: Path) -> FolderScan:
    classes = dict(sorted(cached.classes.items()))
    # Value 0 (nothing labelled there) is a class only when some pixel has it: annotations that
    # cover every pixel (ISBI's membrane and cells) train exactly their own categories.
    nothing = {0: "unlabelled" if "background" in classes.values() else "background"} if cached.unlabelled else {}
    classes = nothing | classes
    labels = LabelSource(kind, source, tuple(classes), tuple(classes.values()), cached.folder, cached.reused)
    pairs = sorted((Pair(image, mask) for image, mask in cached.pairs), key=lambda p: p.image.name)
    labelled = {pair.image for pair in pairs}
    # Images the annotations do not mention: listed, so `seglab check` warns as for images without masks.
    unlabelled = [path for path in list_images(image_dir) if path not in labelled]
    return FolderScan(image_dir, cached.folder, pairs, unlabelled, labels=labels)
