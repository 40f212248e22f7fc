"""Truth masks as class indices: the one place a mask file becomes the classes it is scored against."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.classmap import ClassMap, pack_rgb
from seglab.data.io import read_mask
from seglab.errors import DataError


def read_truth(path: str | Path, class_map: ClassMap, size: tuple[int, int] | None = None,
               image: str | Path | None = None, raw: np.ndarray | None = None) -> np.ndarray:
    """The mask file at `path` as (H, W) int64 class indices, IGNORE_INDEX where ignored.

    RGB colour masks go through the class map's colour table (packed colours); `size` (H, W), if
    given, must be the mask's, and `image` names its image in that error. `raw`: the file's values
    as `read_mask` returns them, when they were read already (`data.decoded`). Raises DataError
    naming the file for masks that are unreadable, of another size, or hold values the map does
    not know.
    """
    raw = read_mask(path) if raw is None else raw
    if size is not None and raw.shape[:2] != tuple(size):
        of = f"its image '{image}'" if image else "its image"
        raise DataError(f"mask '{path}' is {raw.shape[1]}x{raw.shape[0]} but {of} is {size[1]}x{size[0]}: "
                        "masks must have their image's size")
    if raw.ndim == 3:
        if not class_map.rgb:
            raise DataError(f"mask '{path}' is an RGB colour image but the classes are mask values "
                            f"({class_map.describe()}): pass --mask-colors FILE.json, or export class-index masks")
        raw = pack_rgb(raw)
    try:
        return class_map.encode(raw)
    except ValueError as error:
        raise DataError(f"mask '{path}': {error}: pass --mask-values or fix the export; the classes are "
                        f"{class_map.describe()}") from None
