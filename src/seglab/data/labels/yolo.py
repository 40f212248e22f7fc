"""YOLO segmentation labels (Ultralytics): images/ + labels/NAME.txt, one polygon a line as
`class x1 y1 x2 y2 ...` in coordinates normalised to the image's size, names in data.yaml or classes.txt."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from seglab.data.folders import IMAGE_DIR_NAMES, find_dir, holds_images, list_images
from seglab.data.io import image_info
from seglab.data.labels.problems import Problems, outside_point
from seglab.data.labels.shapes import ImageLabels, Shape
from seglab.errors import DataError

NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt")
ADVICE = "fix or re-export the YOLO labels"


def find_yolo_labels(folder: Path) -> tuple[Path, Path] | None:
    """(images folder, labels folder) when folder/labels holds .txt label files and no masks."""
    label_dir = folder / "labels"
    image_dir = find_dir(folder, IMAGE_DIR_NAMES)
    if image_dir is None or not label_dir.is_dir():
        return None
    if not any(p.suffix == ".txt" for p in label_dir.iterdir()) or holds_images(label_dir):
        return None
    return image_dir, label_dir


def names_file(folder: Path) -> Path | None:
    """data.yaml or classes.txt in the folder, or in its parent (the root above train/, val/)."""
    for place in (folder, folder.parent):
        for name in NAME_FILES:
            if (place / name).is_file():
                return place / name
    return None


def read_names(path: Path | None) -> list[str] | None:
    """Class names in class order: data.yaml's `names` (a list, or a mapping index -> name) or the
    lines of classes.txt."""
    if path is None:
        return None
    if path.suffix == ".txt":
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    import yaml  # only for YOLO folders: `seglab check` of a mask folder does not load it

    try:
        names = (yaml.safe_load(read_text(path)) or {}).get("names")
    except (yaml.YAMLError, AttributeError) as error:
        raise DataError(f"{path}: cannot read 'names' ({str(error).splitlines()[0]}): {ADVICE}") from None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names) \
            and sorted(names) == list(range(len(names))):
        return [str(names[k]) for k in range(len(names))]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(f"{path}: 'names' must list the class names (or map 0, 1, ... to them): {ADVICE}")


def read_text(path: Path) -> str:
    """A label or names file's text; DataError naming it when it cannot be read as UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read '{path}' as text ({error}): {ADVICE}") from None


def label_lines(path: Path, image: ImageLabels, count: int | None, problems: Problems) -> None:
    """The polygons of one label file into image.shapes: class k is mask value k + 1 (0: background)."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        where = f"line {number}"
        try:
            klass, numbers = int(words[0]), [float(w) for w in words[1:]]
        except ValueError:
            problems.add(where, f"'{line.strip()[:40]}' is not 'class x1 y1 x2 y2 ...'")
            continue
        if len(numbers) == 4:
            problems.add(where, "is a box (class cx cy w h), not a polygon: export YOLO segmentation labels")
            continue
        if len(numbers) < 6 or len(numbers) % 2 or not all(map(math.isfinite, numbers)):
            problems.add(where, "is not a class and at least 3 x, y pairs")
            continue
        if klass < 0 or (count is not None and klass >= count):
            problems.add(where, f"class {klass} is not one of the {count} names (0..{(count or 1) - 1})")
            continue
        polygon = np.asarray(numbers, dtype=np.float64).reshape(-1, 2) * (image.width, image.height)
        outside = outside_point(polygon, image.width, image.height)
        if outside:
            problems.add(where, f"point ({outside[0] / image.width:g}, {outside[1] / image.height:g}) lies outside "
                         "0..1 (coordinates are fractions of the image's size)")
            continue
        image.shapes.append(Shape(klass + 1, f"{path.name} {where}", polygons=(polygon,)))


def read_yolo(image_dir: Path, label_dir: Path, names_path: Path | None) -> tuple[list[ImageLabels], dict[int, str]]:
    """The images with their polygons, and the classes (mask value -> name). Raises DataError naming
    the file and the line of the first problem; an image without a label file, and a label file
    without an image, are problems (an empty label file is an image of background only)."""
    names = read_names(names_path)
    images = {p.stem: p for p in list_images(image_dir)}
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".txt"}
    problems = Problems(label_dir)
    for stem in sorted(set(labels) - set(images)):
        problems.add(labels[stem].name, f"a label file without an image (no {stem}.* in {image_dir})")
    for stem in sorted(set(images) - set(labels)):
        problems.add(images[stem].name, f"an image without a label file ({stem}.txt)")
    problems.raise_any(ADVICE)
    found = []
    for stem in sorted(images):
        height, width = image_info(images[stem])[:2]
        image = ImageLabels(images[stem], height, width, labels[stem].name)
        file_problems = Problems(labels[stem])
        label_lines(labels[stem], image, len(names) if names else None, file_problems)
        file_problems.raise_any(ADVICE)
        found.append(image)
    top = max((s.value for i in found for s in i.shapes), default=1)
    classes = names or [str(k) for k in range(top)]
    return found, {k + 1: name for k, name in enumerate(classes)}
