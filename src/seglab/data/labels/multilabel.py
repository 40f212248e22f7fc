"""Multi-label masks packed into bit sets: a mask folder per label (masks/LABEL/NAME.png), or masks
with a channel per label (--multilabel), turned once into one PNG per image whose bit k is label k.

The packed masks are cached as rasterised annotations are (`data.labels.cache`: keyed by the
content of the mask files, written whole or not at all), so everything after discovery reads one
mask per image, crops and augments it as any mask, and only the loss, the scores and the outputs
read its bits (`ClassMap.multilabel`). A label mask holds 0 (absent) and one other value
(present: 1, 255, ...); an image without a mask in some label folder has none of that label.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seglab.data.classmap import MAX_LABELS, value_counts
from seglab.data.folders import FolderScan, LabelSource, Pair, detect_mask_suffix, holds_images, list_images
from seglab.data.io import image_info, read_mask, read_mask_channels
from seglab.data.labels.cache import build_cache, cache_folder, content_key, load_cache
from seglab.errors import DataError

FOLDERS = "label folders"
CHANNELS = "mask channels"


def label_folders(mask_dir: Path) -> list[Path]:
    """The folders of a mask folder laid out one folder per label (masks/LABEL/*.png), sorted by
    name (label k is the k-th); [] when the mask folder holds masks itself."""
    if holds_images(mask_dir):
        return []
    with os.scandir(mask_dir) as entries:
        names = sorted(entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir())
    return [mask_dir / name for name in names if holds_images(mask_dir / name)]


def pack_labels(planes: list[np.ndarray]) -> np.ndarray:
    """K (H, W) bool planes -> (H, W) bit sets, label k in bit k: uint8 for up to 8 labels, else uint16."""
    packed = np.zeros(planes[0].shape, dtype=np.uint8 if len(planes) <= 8 else np.uint16)
    for bit, plane in enumerate(planes):
        packed |= plane.astype(packed.dtype) << bit
    return packed


def check_label_values(values: np.ndarray, path: Path, what: str) -> None:
    """DataError unless `values` (a label mask's distinct values) are 0 and at most one other value."""
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(f"{what} '{path}' holds {{{shown}}}; a label mask holds 0 (absent) and one value for "
                        "present (1 or 255): fix the export")


def _sized(mask: np.ndarray, path: Path, image: Path, size: tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] != size:
        raise DataError(f"mask '{path}' is {mask.shape[1]}x{mask.shape[0]} but its image '{image}' is "
                        f"{size[1]}x{size[0]}: masks must have their image's size")
    return mask


def _label_plane(path: Path | None, image: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: where one label is in one image (all False without a mask file)."""
    if path is None:
        return np.zeros(size, dtype=bool)
    mask = _sized(read_mask(path), path, image, size)
    if mask.ndim == 3:
        raise DataError(f"label mask '{path}' has colour channels; a label mask is one channel holding 0 (absent) "
                        "and one value (present)")
    check_label_values(value_counts(mask)[0], path, "label mask")
    return mask != 0


def scan_label_folders(folder: Path, image_dir: Path, mask_dir: Path, labels: list[Path]) -> FolderScan:
    """The pairs of a mask folder laid out one folder per label, packed once into the cache. An
    image is labelled when some label folder holds its mask (by stem, a suffix such as _mask
    found as for mask folders); masks without an image are listed as unpaired."""
    names = [d.name for d in labels]
    if len(labels) == 1:
        raise DataError(f"'{mask_dir}' holds one label folder '{names[0]}': one label is a binary mask: put its "
                        f"masks in '{mask_dir}' itself")
    if len(labels) > MAX_LABELS:
        raise DataError(f"'{mask_dir}' holds {len(labels)} label folders; multi-label masks hold at most "
                        f"{MAX_LABELS} labels")
    image_by_stem = {p.stem: p for p in list_images(image_dir)}
    members: list[dict[str, Path]] = []
    stray: list[Path] = []
    for label_dir in labels:
        masks = list_images(label_dir)
        suffix = detect_mask_suffix(set(image_by_stem), [m.stem for m in masks])
        found = {}
        for mask in masks:
            stem = mask.stem[: len(mask.stem) - len(suffix)] if suffix and mask.stem.endswith(suffix) else mask.stem
            if stem in image_by_stem and stem not in found:
                found[stem] = mask
            else:
                stray.append(mask)
        members.append(found)
    stems = sorted(set().union(*members))
    images = [image_by_stem[stem] for stem in stems]
    mask_files = sorted(m for found in members for m in found.values())
    key = content_key(mask_files, "\0".join(names), "\0".join(str(m.relative_to(mask_dir)) for m in mask_files))

    def draw(index: int) -> np.ndarray:
        size = image_info(images[index])[:2]
        return pack_labels([_label_plane(found.get(stems[index]), images[index], size) for found in members])

    return _packed_scan(folder, image_dir, mask_dir, FOLDERS, key, images, names, draw, stray)


def scan_label_channels(folder: Path, scan: FolderScan) -> FolderScan:
    """The pairs of a mask folder whose masks hold a channel per label (--multilabel with RGB(A)
    PNGs or multi-channel TIFFs), packed once into the cache; the same folder with its masks as
    they are when they hold one channel (bit sets already)."""
    pairs = scan.pairs
    channels = read_mask_channels(pairs[0].mask, MAX_LABELS).shape[-1] if pairs else 1
    if channels == 1:
        return scan
    if channels > MAX_LABELS:
        raise DataError(f"mask '{pairs[0].mask}' has {channels} channels; multi-label masks hold at most "
                        f"{MAX_LABELS} labels")
    key = content_key([p.mask for p in pairs], "\0".join(p.image.name for p in pairs))

    def draw(index: int) -> np.ndarray:
        pair = pairs[index]
        mask = _sized(read_mask_channels(pair.mask, MAX_LABELS), pair.mask, pair.image,
                      image_info(pair.image)[:2])
        if mask.shape[-1] != channels:
            raise DataError(f"mask '{pair.mask}' has {mask.shape[-1]} channels but '{pairs[0].mask}' has {channels}: "
                            "every mask holds one channel per label")
        for k in range(channels):
            check_label_values(value_counts(mask[..., k])[0], pair.mask, f"channel {k} of mask")
        return pack_labels([mask[..., k] != 0 for k in range(channels)])

    names = [f"label{k}" for k in range(channels)]
    packed = _packed_scan(folder, scan.image_dir, scan.mask_dir, CHANNELS, key, [p.image for p in pairs], names,
                          draw, scan.unpaired_masks)
    packed.unpaired_images = scan.unpaired_images
    return packed


def _packed_scan(folder: Path, image_dir: Path, mask_dir: Path, kind: str, key: str, images: list[Path],
                 names: list[str], draw, stray: list[Path]) -> FolderScan:
    """The cached bit-set masks of `images` (built by `draw(i)` when the cache lacks them) as a FolderScan."""
    bits = {1 << k: name for k, name in enumerate(names)}
    cached = load_cache(cache_folder(folder, kind, key), folder)
    if cached is None:
        cached = build_cache(cache_folder(folder, kind, key), folder, images, bits, draw)
    source = LabelSource(kind, mask_dir, tuple(bits), tuple(names), cached.folder, cached.reused, multilabel=True)
    pairs = sorted((Pair(image, mask) for image, mask in cached.pairs), key=lambda p: p.image.name)
    labelled = {pair.image for pair in pairs}
    unlabelled = [path for path in list_images(image_dir) if path not in labelled]
    return FolderScan(image_dir, cached.folder, pairs, unlabelled, sorted(stray), labels=source)
