"""TIFF in, TIFF out for overlap-tile prediction: images of any size, a few row bands in memory.

`TiffRows` reads rows of one page (memory-mapped when uncompressed and contiguous, otherwise
decoded strip/tile by strip/tile); `write_tiff_bands` writes row bands as one tiled, compressed
(Big)TIFF, atomically; `predict_tiff_tiled` joins them through `tiling.predict_bands`.
"""
from __future__ import annotations

import math
import os
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import tifffile
import torch

from seglab.data.writing import atomic_output
from seglab.inference.tiling import Forward, predict_bands
from seglab.models.outputs import probabilities_to_classes


class TiffRows:
    """Rows of one page of a TIFF file, read without loading the page.

    Uncompressed contiguous pages are memory-mapped; other pages (compressed, tiled or striped,
    chunky or planar) are decoded segment by segment, only the strips/tiles holding the rows asked
    for. Use as a context manager; `height`, `width`, `channels`, `dtype` describe the page.
    """

    def __init__(self, path: str | os.PathLike, page: int = 0):
        self._file = tifffile.TiffFile(path)
        self._page = self._file.pages[page]
        if self._page.imagedepth > 1:
            self._file.close()
            raise ValueError(f"{path}: page {page} is a volume; pass 2-D pages one at a time")
        self.height, self.width = self._page.imagelength, self._page.imagewidth
        self.channels = self._page.samplesperpixel
        self.dtype = np.dtype(self._page.dtype)
        self._planar = self.channels > 1 and self._page.planarconfig == 2
        self._memmap = tifffile.memmap(path, page=page, mode="r") if self._page.is_memmappable else None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows [y0, y1) as (y1 - y0, W) or (y1 - y0, W, C) in the file's dtype."""
        if self._memmap is not None:
            rows = self._memmap[:, y0:y1] if self._planar else self._memmap[y0:y1]
            return np.moveaxis(rows, 0, -1) if self._planar else rows
        page = self._page
        seg_h, seg_w = ((page.tilelength, page.tilewidth) if page.is_tiled
                        else (min(page.rowsperstrip, self.height), self.width))
        per_row = -(-self.width // seg_w)
        per_plane = per_row * -(-self.height // seg_h)
        out = np.empty((y1 - y0, self.width, self.channels), dtype=self.dtype)
        handle = self._file.filehandle
        for plane in range(self.channels if self._planar else 1):
            for seg_y in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
                for seg_x in range(per_row):
                    index = plane * per_plane + seg_y * per_row + seg_x
                    data = None
                    if page.databytecounts[index]:
                        handle.seek(page.dataoffsets[index])
                        data = handle.read(page.databytecounts[index])
                    segment, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
                    if segment is None:  # a segment missing from the file reads as the fill value
                        segment = np.full(shape, page.nodata, dtype=self.dtype)
                    segment = segment[0]  # (rows, columns, samples); edge segments may be short
                    top, left = seg_y * seg_h, seg_x * seg_w
                    r0, r1 = max(y0, top), min(y1, top + segment.shape[0])
                    c1 = min(self.width, left + segment.shape[1])
                    out[r0 - y0:r1 - y0, left:c1, plane:plane + segment.shape[2]] = \
                        segment[r0 - top:r1 - top, :c1 - left]
        return out[..., 0] if self.channels == 1 else out

    def close(self) -> None:
        self._memmap = None
        self._file.close()

    def __enter__(self) -> "TiffRows":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def scale_to_unit(pixels: np.ndarray) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1] (divided by the dtype's maximum); floats unchanged."""
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return pixels.astype(np.float32, copy=False)


def _tiff_tiles(bands: Iterator[tuple[int, int, np.ndarray]], width: int, tile: int) -> Iterator[np.ndarray]:
    """Re-cut row bands (h, W[, C]) into row-major (tile, tile[, C]) TIFF tiles (edge tiles smaller:
    tifffile zero-pads them). Each tile row gets a fresh buffer, as tifffile may still hold tiles."""
    buffer, filled = None, 0
    for y0, y1, block in bands:
        done = 0
        while done < block.shape[0]:
            if buffer is None:
                buffer, filled = np.zeros((tile, width) + block.shape[2:], dtype=block.dtype), 0
            count = min(tile - filled, block.shape[0] - done)
            buffer[filled:filled + count] = block[done:done + count]
            filled, done = filled + count, done + count
            if filled == tile:
                yield from (buffer[:, x:x + tile] for x in range(0, width, tile))
                buffer = None
    if buffer is not None:
        yield from (buffer[:filled, x:x + tile] for x in range(0, width, tile))


def write_tiff_bands(path: str | os.PathLike, bands: Iterator[tuple[int, int, np.ndarray]], height: int,
                     width: int, tile: int = 256, compression: str | None = "zlib") -> Path:
    """Write row bands (y0, y1, array (h, W) or (h, W, C)) top to bottom as one tiled TIFF, atomically.

    BigTIFF when the uncompressed data reach 2 GiB (classic TIFF offsets stop at 4 GiB, and the
    compressed size is unknown up front). `tile` must be a multiple of 16 (TIFF rule).
    """
    bands = iter(bands)
    first = next(bands)
    sample = first[2]
    shape = (height, width) + sample.shape[2:]
    nbytes = math.prod(shape) * sample.dtype.itemsize
    with atomic_output(path) as temporary, tifffile.TiffWriter(temporary, bigtiff=nbytes >= 2**31) as tif:
        tif.write(_tiff_tiles(chain([first], bands), width, tile), shape=shape, dtype=sample.dtype,
                  tile=(tile, tile), compression=compression, photometric="minisblack", metadata=None)
    return Path(path)


def _class_indices(probs: torch.Tensor) -> np.ndarray:
    """Probabilities (K, h, W) -> (h, W) uint8 class indices."""
    return probabilities_to_classes(probs).numpy().astype(np.uint8)


def predict_tiff_tiled(forward: Forward, in_path: str | os.PathLike, out_path: str | os.PathLike,
                       tile: int | Sequence[int] = 256, overlap: float = 0.5, batch_size: int = 4,
                       device: torch.device | str = "cpu", num_outputs: int | None = None, margin: int = 0,
                       valid_input: Callable[[int], int] | None = None, align: int | None = None,
                       normalize: Callable[[np.ndarray], np.ndarray] = scale_to_unit,
                       to_output: Callable[[torch.Tensor], np.ndarray] | None = None,
                       page: int = 0, out_tile: int = 256, compression: str | None = "zlib") -> Path:
    """Predict a TIFF image of any size into a tiled, compressed (Big)TIFF, one band at a time.

    Args:
        forward, tile, ..., align: as `predict_bands`.
        in_path: TIFF whose page `page` is (H, W) or (H, W, C).
        out_path: output TIFF, replaced atomically.
        normalize: raw rows (h, W[, C]) -> float32 as the model expects; default `scale_to_unit`.
        to_output: probs (K, h, W) -> array (h, W) or (h, W, C) to store; default class indices
            (`probabilities_to_classes` at 0.5, uint8). Pass e.g. a class map's decode for mask values.
        out_tile: output TIFF tile side (multiple of 16).

    Returns:
        out_path. Memory stays at a few bands of the image whatever its size.
    """
    to_output = to_output or _class_indices
    with TiffRows(in_path, page) as source:
        bands = predict_bands(forward, lambda a, b: normalize(source.read_rows(a, b)), source.height,
                              source.width, tile, overlap, batch_size, device, num_outputs, margin,
                              valid_input, align)
        stored = ((y0, y1, to_output(probs)) for y0, y1, probs in bands)
        return write_tiff_bands(out_path, stored, source.height, source.width, out_tile, compression)
