"""Test helpers: the bundled ISBI masks written as COCO polygons / RLE and YOLO polygons, as annotation
tools export them (skimage contours of each connected region, one region per annotation)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {1: "membrane", 2: "cell"}  # ISBI mask 0 = membrane, 255 = cell interior


def region_polygons(mask: np.ndarray) -> list[tuple[int, np.ndarray, int]]:
    """(class value, outer contour (P, 2) x, y in COCO pixel coordinates, pixel count) of every
    4-connected region of each class: holes are the smaller regions inside, drawn on top."""
    from skimage.measure import find_contours, label

    regions = []
    for value, klass in ((1, mask == 0), (2, mask == 255)):
        components = label(klass, connectivity=1)
        for index in range(1, components.max() + 1):
            region = np.pad(components == index, 1)
            contours = find_contours(region.astype(float), 0.5)
            outer = max(contours, key=lambda c: abs(_area(c)))
            # (row, col) of the padded array -> x, y where pixel (r, c) spans [c, c + 1) x [r, r + 1)
            regions.append((value, np.stack([outer[:, 1] - 0.5, outer[:, 0] - 0.5], axis=1), int(region.sum())))
    return regions


def _area(contour: np.ndarray) -> float:
    y, x = contour[:, 0], contour[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def rle_runs(bitmap: np.ndarray) -> list[int]:
    """(H, W) bool -> COCO's uncompressed RLE counts: column-major runs, zeros first."""
    flat = bitmap.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def rle_string(bitmap: np.ndarray) -> str:
    """(H, W) bool -> COCO's compressed RLE string (pycocotools' rleToString, written from its spec)."""
    runs = rle_runs(bitmap)
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(c + (0x20 if more else 0) + 48))
    return "".join(out)


def coco_folder(isbi: Path, dest: Path, rle_stems: tuple[str, ...] = ()) -> Path:
    """dest/images + dest/annotations.json from an images/ + masks/ ISBI folder; the images of
    `rle_stems` are labelled with one RLE crowd region per class instead of polygons (membrane as
    a compressed string, cells as uncompressed counts)."""
    (dest / "images").mkdir(parents=True)
    images, annotations = [], []
    for index, image_path in enumerate(sorted((isbi / "images").glob("*.png")), start=1):
        shutil.copyfile(image_path, dest / "images" / image_path.name)
        mask = np.asarray(Image.open(isbi / "masks" / image_path.name))
        height, width = mask.shape
        images.append({"id": index, "file_name": image_path.name, "width": width, "height": height})
        if image_path.stem in rle_stems:
            for value, klass, counts in ((1, mask == 0, rle_string), (2, mask == 255, rle_runs)):
                annotations.append({"image_id": index, "category_id": value, "iscrowd": 1,
                                    "segmentation": {"size": [height, width], "counts": counts(klass)}})
            continue
        for value, polygon, _ in region_polygons(mask):
            annotations.append({"image_id": index, "category_id": value, "iscrowd": 0,
                                "segmentation": [polygon.round(2).ravel().tolist()]})
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    categories = [{"id": k, "name": name, "supercategory": "em"} for k, name in CLASSES.items()]
    path = dest / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def yolo_folder(isbi: Path, dest: Path) -> Path:
    """dest/images + dest/labels/*.txt (normalised polygons) + dest/data.yaml from an ISBI folder."""
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for image_path in sorted((isbi / "images").glob("*.png")):
        shutil.copyfile(image_path, dest / "images" / image_path.name)
        mask = np.asarray(Image.open(isbi / "masks" / image_path.name))
        height, width = mask.shape
        lines = [" ".join([str(value - 1)] + [f"{v:.6f}" for v in (polygon / (width, height)).ravel()])
                 for value, polygon, _ in region_polygons(mask)]
        (dest / "labels" / f"{image_path.stem}.txt").write_text("\n".join(lines) + "\n")
    (dest / "data.yaml").write_text("names:\n  0: membrane\n  1: cell\n")
    return dest


def expected_classes(isbi_mask: Path) -> np.ndarray:
    """The class values the annotations should rasterise to: 1 membrane, 2 cell."""
    return np.where(np.asarray(Image.open(isbi_mask)) == 255, 2, 1).astype(np.uint8)


def near_boundary(classes: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another class (where contours run)."""
    padded = np.pad(classes, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    return ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
