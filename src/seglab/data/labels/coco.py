"""COCO segmentation JSON (CVAT, Label Studio, Roboflow, the COCO tools): images, categories and
their polygons or run-length masks, read and checked entry by entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from seglab.data.labels.problems import Problems, finite_numbers, inside_folder, outside_point
from seglab.data.labels.shapes import ImageLabels, Shape, decode_rle_string
from seglab.errors import DataError

COCO_NAMES = ("annotations.json", "_annotations.coco.json")
ADVICE = "fix or re-export the annotation file"


def find_coco_file(folder: Path) -> Path | None:
    """The COCO file of a folder: annotations.json, _annotations.coco.json (Roboflow) or one
    instances_*.json, beside the images or in annotations/. Several are refused: which one?"""
    found = []
    for place in (folder, folder / "annotations"):
        if place.is_dir():
            found += [place / name for name in COCO_NAMES if (place / name).is_file()]
            found += sorted(p for p in place.glob("instances_*.json") if p.is_file())
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise DataError(f"'{folder}' holds {len(found)} COCO annotation files ({names}): keep one per folder, "
                        "or put each split's in train/, val/, test/ with its images")
    return found[0] if found else None


def load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read '{path}' ({error}): {ADVICE}") from None
    except ValueError as error:
        raise DataError(f"{path}: not JSON ({error}): {ADVICE}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO file: expected an object with lists 'images', 'annotations' and "
                        f"'categories': {ADVICE}")
    return data


def read_categories(entries: list, problems: Problems, used: set) -> dict[int, str]:
    """Category id -> name; an unused id 0 (Roboflow's data set name) is dropped, a used one refused
    (0 is the background's mask value)."""
    names: dict[int, str] = {}
    for index, entry in enumerate(entries):
        ident = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(ident, int) or isinstance(ident, bool) or ident < 0 or ident > 65535:
            problems.add(f"categories[{index}]", "needs an integer 'id' in 0..65535")
        elif ident in names:
            problems.add(f"categories[{index}] (id {ident})", "repeats a category id")
        elif ident == 0 and 0 in used:
            problems.add(f"categories[{index}] (id 0)", "category id 0 is seglab's background: number the "
                         "categories from 1")
        elif ident != 0:
            names[ident] = str(entry.get("name", ident))
    repeated = {name for name in names.values() if list(names.values()).count(name) > 1}
    return {ident: f"{name} ({ident})" if name in repeated else name for ident, name in names.items()}


def image_entries(entries: list, folder: Path, bases: list[Path], problems: Problems) -> dict[int, ImageLabels]:
    """Image id -> ImageLabels (no shapes yet): file names resolved in the first of `bases` (folders
    inside the data folder `folder`) that holds them, never outside them."""
    images: dict[int, ImageLabels] = {}
    seen: set[Path] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.add(f"images[{index}]", "is not an object")
            continue
        ident, name = entry.get("id"), entry.get("file_name")
        where = f"images[{index}] (id {ident})"
        width, height = entry.get("width"), entry.get("height")
        if not isinstance(ident, int) or not isinstance(name, str):
            problems.add(where, "needs an integer 'id' and a 'file_name'")
            continue
        if not all(isinstance(v, int) and v > 0 for v in (width, height)):
            problems.add(where, "needs positive integer 'width' and 'height'")
            continue
        candidates = [inside_folder(base, name) for base in bases]
        if any(c is None for c in candidates):
            problems.add(where, f"file_name '{name}' leads outside '{folder}': give paths inside the data folder")
            continue
        path = next((c for c in candidates if c.is_file()), None)
        # Exporters differ: COCO keeps "train2017/x.jpg", Roboflow and CVAT a bare name beside the file.
        path = path or next((base / Path(name).name for base in bases if (base / Path(name).name).is_file()), None)
        if path is None:
            problems.add(where, f"image file '{name}' is not in {' or '.join(str(b) for b in bases)}")
        elif ident in images or path in seen:
            problems.add(where, "repeats an image id" if ident in images else f"repeats the image '{name}'")
        else:
            images[ident] = ImageLabels(path, height, width, where)
            seen.add(path)
    return images


def segmentation_shape(segmentation, value: int, image: ImageLabels, where: str, crowd: bool,
                       problems: Problems) -> Shape | None:
    """One annotation's `segmentation` (polygons, or RLE with list or string counts) as a Shape."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [image.height, image.width]:
            problems.add(where, f"RLE size {size} is not its image's [height, width] = [{image.height}, "
                         f"{image.width}]")
            return None
        try:
            runs = decode_rle_string(counts) if isinstance(counts, str) else counts
        except ValueError as error:
            problems.add(where, f"malformed RLE: {error}")
            return None
        if not finite_numbers(runs) or any(int(r) != r or r < 0 for r in runs) \
                or sum(runs) != image.height * image.width:
            problems.add(where, f"malformed RLE: its counts must be non-negative integers adding up to "
                         f"{image.height} x {image.width}")
            return None
        return Shape(value, where, runs=tuple(int(r) for r in runs), crowd=crowd)
    if not isinstance(segmentation, list) or not segmentation:
        problems.add(where, "has no 'segmentation' polygons or RLE (a box-only export?): export segmentation")
        return None
    polygons = []
    for part, points in enumerate(segmentation):
        if not finite_numbers(points) or len(points) < 6 or len(points) % 2:
            problems.add(f"{where} polygon {part}", "is not a list of at least 3 x, y pairs")
            return None
        polygon = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        outside = outside_point(polygon, image.width, image.height)
        if outside:
            problems.add(f"{where} polygon {part}", f"point ({outside[0]:g}, {outside[1]:g}) lies outside its "
                         f"{image.width}x{image.height} image '{image.image.name}'")
            return None
        polygons.append(polygon)
    return Shape(value, where, polygons=tuple(polygons), crowd=crowd)


def image_folders(folder: Path, path: Path) -> list[Path]:
    """Where a COCO file's images may be: folder/images, the folder itself, and for COCO's own
    annotations/instances_train2017.json, folder/train2017 (or folder/images/train2017) first."""
    subset = path.stem.removeprefix("instances_") if path.stem.startswith("instances_") else None
    places = ([folder / subset, folder / "images" / subset] if subset else []) + [folder / "images", folder]
    return [place for place in places if place.is_dir()]


def read_coco(path: Path, folder: Path) -> tuple[list[ImageLabels], dict[int, str]]:
    """The images of the COCO file `path` (found in `folder`) with their shapes, and the categories
    (id -> name; a name used twice gets its id added). Raises DataError naming the file and the
    entry of the first problem."""
    data = load_json(path)
    problems = Problems(path)
    annotations = data["annotations"]
    used = {a.get("category_id") for a in annotations if isinstance(a, dict)}
    categories = read_categories(data["categories"], problems, used)
    images = image_entries(data["images"], folder, image_folders(folder, path), problems)
    problems.raise_any(ADVICE)
    for index, entry in enumerate(annotations):
        ident = entry.get("id") if isinstance(entry, dict) else None
        where = f"annotations[{index}] (id {ident})"
        if not isinstance(entry, dict):
            problems.add(where, "is not an object")
            continue
        image = images.get(entry.get("image_id"))
        if image is None:
            problems.add(where, f"image_id {entry.get('image_id')} is not in 'images': an annotation without "
                         "an image")
        elif entry.get("category_id") not in categories:
            problems.add(where, f"category_id {entry.get('category_id')} is not in 'categories' "
                         f"({sorted(categories)})")
        else:
            crowd = bool(entry.get("iscrowd", 0))
            shape = segmentation_shape(entry.get("segmentation"), entry["category_id"], image, where, crowd, problems)
            if shape is not None:
                image.shapes.append(shape)
    for image in images.values():
        if not image.shapes:
            problems.add(image.entry, f"image '{image.image.name}' has no annotations: label it, or remove it "
                         "from 'images'")
    problems.raise_any(ADVICE)
    if not categories:
        raise DataError(f"{path}: 'categories' is empty: {ADVICE}")
    return sorted(images.values(), key=lambda i: str(i.image)), categories
