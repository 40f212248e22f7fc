"""The vocabulary of a data folder: image and mask folder names, an image/mask Pair, what one folder
holds (FolderScan) and where its labels came from when they were not mask files (LabelSource)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from seglab.data.io import IMAGE_EXTENSIONS

IMAGE_DIR_NAMES = ("images", "imgs", "image")
MASK_DIR_NAMES = ("masks", "labels", "label", "annot", "mask", "annotations")


@dataclass(frozen=True)
class Pair:
    """One training example: an image file and its mask file."""

    image: Path
    mask: Path

    def absolute(self) -> list[str]:
        """[image, mask] as absolute paths, as split.json and recipe.yaml record them (links are
        kept as links: their names pair the files; no file system call per path)."""
        return [os.path.abspath(self.image), os.path.abspath(self.mask)]


@dataclass(frozen=True)
class LabelSource:
    """Labels read from annotations (COCO JSON, YOLO polygons) or remapped through a label table,
    rasterised into class masks in `cache_dir`: mask value `values[k]` is class `names[k]`."""

    kind: str                 # "COCO", "YOLO" or "label table"
    source: Path              # the annotation file, or the folder of label files
    values: tuple[int, ...]   # annotations: 0 = background (when some pixel is unlabelled), the categories' values
    names: tuple[str, ...]
    cache_dir: Path
    reused: bool              # read from the cache (True) or rasterised by this call (False)
    ignore_value: int | None = None
    multilabel: bool = False  # masks of bit sets, label k in bit k (`data.labels.multilabel`)

    def describe(self) -> str:
        made = {"label table": "remapped into", "label folders": "packed into",
                "mask channels": "packed into"}.get(self.kind, "rasterised into")
        how = "read from the cache" if self.reused else made
        names = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
        return f"labels: {self.kind} {self.source} ({len(self.values)} classes: {names}), {how} {self.cache_dir}"


@dataclass
class FolderScan:
    """What one images/ + masks/ pair of folders holds."""

    image_dir: Path | None
    mask_dir: Path | None
    pairs: list[Pair] = field(default_factory=list)
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    mask_suffix: str = ""
    labels: LabelSource | None = None  # masks rasterised from annotations, when they were

    @property
    def images(self) -> list[Path]:
        return sorted([p.image for p in self.pairs] + self.unpaired_images)


def find_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of folder/NAME (or Name, NAME) that is a folder."""
    for name in names:
        for candidate in (folder / name, folder / name.capitalize(), folder / name.upper()):
            if candidate.is_dir():
                return candidate
    return None


def _image_names(folder: Path) -> Iterator[str]:
    """The names of the image files directly in `folder`, in directory order: one read of the
    directory (no stat per plain file, which a folder of 30,000 masks would feel)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if (not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                    and entry.is_file()):
                yield entry.name


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    return [folder / name for name in sorted(_image_names(folder))]


def holds_images(folder: Path) -> bool:
    """Whether `folder` holds an image file directly (stops at the first)."""
    return next(_image_names(folder), None) is not None


def detect_mask_suffix(image_stems: set[str], mask_stems: list[str]) -> str:
    """The suffix that turns an image stem into its mask stem ("" or e.g. "_mask" for Carvana).

    Each mask stem votes for the suffix left after its longest image-stem prefix; the most
    common vote wins, so a few stray files cannot change the pairing.
    """
    votes: Counter[str] = Counter()
    for stem in mask_stems:
        if stem in image_stems:
            votes[""] += 1
            continue
        for cut in range(len(stem) - 1, 0, -1):
            if stem[:cut] in image_stems:
                votes[stem[cut:]] += 1
                break
    return votes.most_common(1)[0][0] if votes else ""
