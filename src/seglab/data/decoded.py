"""DecodedFiles: the images and masks a run's preparation decoded, kept for its training to use.

Preparing a run reads the data to check it (`seglab check`'s preflight), to map mask values to
classes, and to fingerprint it; training then reads the same files for its batches. Each of those
steps asks this store, so a file's header is read once and a file is decoded once and its pixels
handed down, as nnU-Net preprocesses once and trains from the result. Arrays past `budget_bytes`
are not kept (a very large data set is decoded again by the step that needs it), and `release`
drops what no later step needs; headers are a few bytes each and always kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.io import image_info, read_image, read_mask_and_palette

# Decoded pixels kept at most: the ISBI set (30 x 512 x 512 x 2 bytes) takes 16 MB, 500 Carvana
# pairs (1918 x 1280 RGB + mask) would take 4.9 GB and are mostly decoded again instead.
DEFAULT_BUDGET_BYTES = 1 << 30


class DecodedFiles:
    """read_image / read_mask of each path at most once while the arrays fit `budget_bytes`, and
    each file's header (image_info) once.

    `image(path)`: (H, W, C) in the file's dtype; `mask(path)`: the raw values, (H, W) or (H, W, 3)
    for colour masks. The arrays are shared, so callers must not write into them.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self._arrays: dict[tuple[str, Path], np.ndarray] = {}
        self._bytes = 0
        self._headers: dict[Path, tuple[int, int, int, str]] = {}
        self._palettes: dict[Path, np.ndarray | None] = {}  # of each mask decoded: a few hundred bytes

    def header(self, path: str | Path) -> tuple[int, int, int, str]:
        """image_info(path): (height, width, channels, dtype name), read from the file once."""
        path = Path(path)
        info = self._headers.get(path)
        if info is None:
            info = self._headers[path] = image_info(path)
        return info

    def holds_mask(self, path: str | Path) -> bool:
        """Whether the mask of `path` is decoded and kept (reading it again costs nothing)."""
        return ("mask", Path(path)) in self._arrays

    def image(self, path: str | Path) -> np.ndarray:
        return self._get("image", Path(path), read_image)

    def mask(self, path: str | Path) -> np.ndarray:
        return self._get("mask", Path(path), self._read_mask)

    def palette(self, path: str | Path) -> np.ndarray | None:
        """The (N, 3) uint8 palette of a palette mask, None for other masks: kept from its decode."""
        path = Path(path)
        if path not in self._palettes:
            self.mask(path)
        return self._palettes[path]

    def _read_mask(self, path: Path) -> np.ndarray:
        array, self._palettes[path] = read_mask_and_palette(path)
        return array

    def _get(self, kind: str, path: Path, read) -> np.ndarray:
        key = (kind, path)
        array = self._arrays.get(key)
        if array is None:
            array = read(path)
            if self._bytes + array.nbytes <= self.budget_bytes:
                array.flags.writeable = False  # shared: a caller that writes into it fails loudly
                self._arrays[key] = array
                self._bytes += array.nbytes
        return array

    def release(self, keep: set[Path] | frozenset = frozenset()) -> None:
        """Drop every array but those of the paths in `keep`."""
        self._arrays = {key: array for key, array in self._arrays.items() if key[1] in keep}
        self._bytes = sum(array.nbytes for array in self._arrays.values())

    def decoded(self) -> int:
        """How many arrays the store holds."""
        return len(self._arrays)
