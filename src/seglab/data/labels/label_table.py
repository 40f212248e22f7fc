"""`--label-map FILE.json`: mask values remapped through a table before they become classes (Cityscapes'
labelIds -> trainIds, 255 ignored), the remapped masks cached like rasterised annotations."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from seglab.data.folders import FolderScan, LabelSource, Pair
from seglab.data.io import read_mask
from seglab.data.labels.cache import build_cache, cache_folder, content_key, load_cache
from seglab.errors import DataError

IGNORED = 255  # a table entry mapping to 255 marks pixels that count nowhere (Cityscapes' trainId 255)


def load_label_map(path: str | os.PathLike) -> tuple[dict[int, int], dict[int, str]]:
    """(mask value -> class value, class value -> name) of a JSON table: {"7": 0, "8": 1, ...} or
    {"map": {"7": 0, ...}, "names": {"0": "road", ...} or ["road", ...]}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the label map '{path}' ({error}): give a JSON file") from None
    table, names = (data.get("map"), data.get("names")) if isinstance(data, dict) and "map" in data else (data, None)
    try:
        mapping = {int(k): int(v) for k, v in table.items()}
        if isinstance(names, list):
            names = dict(enumerate(names))
        names = {int(k): str(v) for k, v in (names or {}).items()}
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"label map '{path}': expected {{\"mask value\": class value, ...}} with integers "
                        "(and optional \"names\")") from None
    if not mapping or any(v < 0 or v > 65535 for v in mapping.values()):
        raise DataError(f"label map '{path}': map each mask value to a class value in 0..65535 (255: ignored)")
    return mapping, names


def remap(mask: np.ndarray, mapping: dict[int, int], name: str, table: Path) -> np.ndarray:
    """(H, W) raw values -> (H, W) class values; a value the table lacks raises DataError."""
    if mask.ndim != 2:
        raise DataError(f"mask '{name}' is an RGB image: a label map (--label-map {table}) is for single-channel "
                        "masks of label ids")
    values, inverse = np.unique(mask, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in mapping]
    if unknown:
        raise DataError(f"mask '{name}' holds value {unknown[0]}, which the label map '{table}' does not list: add "
                        f"it (map it to {IGNORED} to ignore it)")
    dtype = np.uint8 if max(mapping.values()) <= 255 else np.uint16
    return np.asarray([mapping[int(v)] for v in values], dtype=dtype)[inverse].reshape(mask.shape)


def remap_scan(scan: FolderScan, folder: Path, table: Path) -> FolderScan:
    """The scan's pairs with their masks remapped through `table` (cached in folder/.seglab-cache/,
    keyed by the table and the masks' names, sizes and modification times)."""
    mapping, names = load_label_map(table)
    stats = ",".join(f"{p.mask.name}:{p.mask.stat().st_size}:{p.mask.stat().st_mtime_ns}" for p in scan.pairs)
    key = content_key([table], stats)
    classes = {v: names.get(v, str(v)) for v in sorted(set(mapping.values()) - {IGNORED})}
    where = cache_folder(folder, "label table", key)
    cached = load_cache(where, folder)
    if cached is None:
        pairs = scan.pairs
        cached = build_cache(where, folder, [p.image for p in pairs], classes,
                             lambda i: remap(read_mask(pairs[i].mask), mapping, str(pairs[i].mask), table))
    labels = LabelSource("label table", table, tuple(classes), tuple(classes.values()), cached.folder,
                         cached.reused, IGNORED if IGNORED in mapping.values() else None)
    return FolderScan(scan.image_dir, cached.folder, [Pair(i, m) for i, m in cached.pairs], scan.unpaired_images,
                      scan.unpaired_masks, scan.mask_suffix, labels)
