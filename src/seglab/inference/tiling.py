"""Overlap-tile prediction: tile geometry, Gaussian blending, and row-band streaming for huge images.

Two entry points share one loop (`predict_bands`):

- `predict_tiled(forward, image)`: an in-memory (C, H, W) image -> (K, H, W) probabilities.
- `predict_bands(forward, read_rows, height, width)`: any row source -> a stream of finished
  horizontal bands `(y0, y1, probs (K, y1 - y0, W))`; only the tile rows in flight are in memory.

TIFF files in and out (memory-mapped or strip-by-strip reading, tiled (Big)TIFF writing) are in
`seglab.inference.tiff_io` (`predict_tiff_tiled`), which streams through `predict_bands`.

`forward` maps a batch (B, C, h, w) on `device` to probabilities (B, K, h', w') (apply the sigmoid
or softmax, and any normalisation, inside it; put the model in eval mode). A test-time-augmented
forward (`seglab.inference.tta.tta_forward`) plugs in unchanged.

Same-padding models (margin 0): tiles of `tile` pixels overlap by `overlap`; each tile's output is
weighted by a separable Gaussian (nnU-Net), summed, and divided by the summed weights, which
hides the weaker predictions near tile edges. Valid-padding models (the paper's U-Net, margin > 0):
`tile` is the predicted window; its input is that window plus `margin` pixels of context on each
side, mirrored outside the image (the paper's overlap-tile strategy). Output windows then do not
need to overlap and are weighted uniformly; their starts are aligned to the network's pooling
stride, so the tiled prediction equals the whole-image prediction.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from seglab.padding import mirror_indices

Forward = Callable[[torch.Tensor], torch.Tensor]
ReadRows = Callable[[int, int], np.ndarray]
Band = tuple[int, int, torch.Tensor]
_interruption = threading.local()  # .check: the stop test of the predictions running on this thread


@contextmanager
def interruptible(check: Callable[[], None]):
    """While inside, every overlap-tile prediction on this thread calls `check()` before each batch
    of tiles; `check` raises to stop it there (a server whose client left, or whose deadline or
    shutdown came). A whole image is one forward pass and runs to its end."""
    previous = getattr(_interruption, "check", None)
    _interruption.check = check
    try:
        yield
    finally:
        _interruption.check = previous


def _check_interruption() -> None:
    check = getattr(_interruption, "check", None)
    if check is not None:
        check()


# ---- pure geometry ------------------------------------------------------------------------------
def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> list[int]:
    """Starts of tiles of side `tile` covering [0, size): evenly spread, the first at 0.

    Consecutive starts are at most `tile * (1 - overlap)` apart, so neighbours overlap by at least
    `overlap * tile`; positions are rounded half up. With `align` 1 the last start is
    `size - tile`. With `align` > 1 every start is a multiple of `align` (a pooling stride) and the
    last tile may reach up to `align - 1` pixels past `size`. A tile as large as the image gives [0].

    >>> tile_starts(size=600, tile=256, overlap=0.5)
    [0, 115, 229, 344]
    """
    if size < 1 or tile < 1 or align < 1:
        raise ValueError(f"size, tile and align must be positive, got {size}, {tile}, {align}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    span = -(-(size - tile) // align)  # last start, in units of align (ceiling division)
    if span <= 0:
        return [0]
    # The epsilon keeps 256 * (1 - 0.5) = 128 from becoming 127.999... and then 127.
    max_step = max(1, math.floor(tile * (1.0 - overlap) / align + 1e-9))
    gaps = -(-span // max_step)
    # i * span / gaps rounded half up, in integers so no float tie can flip a position.
    return [align * ((2 * i * span + gaps) // (2 * gaps)) for i in range(gaps + 1)]


def gaussian_profile(size: int, sigma_scale: float = 1 / 8, min_weight: float = 1e-3) -> torch.Tensor:
    """1-D Gaussian (size,) float32 centred at (size - 1) / 2 with sigma = sigma_scale * size,
    scaled to max 1 and clamped below at `min_weight` (> 0, so every pixel keeps some weight).
    Exactly symmetric: profile[i] == profile[size - 1 - i]."""
    if size < 1 or sigma_scale <= 0 or not 0 < min_weight <= 1:
        raise ValueError(f"bad Gaussian profile: size={size}, sigma_scale={sigma_scale}, min_weight={min_weight}")
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    profile = np.exp(-0.5 * (offsets / (sigma_scale * size)) ** 2)
    return torch.from_numpy(np.maximum(profile / profile.max(), min_weight).astype(np.float32))


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Where the tiles of one (height, width) image go.

    Tile (y, x) for y in `ys`, x in `xs` predicts output rows [y, y + out_tile[0]) and columns
    [x, x + out_tile[1]) (cropped to the image) from input rows [y - margin, y - margin + in_tile[0])
    and the matching columns, mirrored where they leave the image. Its output is weighted by
    outer(row_profile, col_profile).
    """

    height: int
    width: int
    in_tile: tuple[int, int]
    out_tile: tuple[int, int]
    margin: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    row_profile: torch.Tensor = field(repr=False)  # (out_tile[0],) float32
    col_profile: torch.Tensor = field(repr=False)  # (out_tile[1],) float32


def tile_grid(height: int, width: int, tile: int | Sequence[int] = 256, overlap: float = 0.5,
              margin: int = 0, valid_input: Callable[[int], int] | None = None,
              align: int | None = None) -> TileGrid:
    """Tile layout for an image. `tile` (int or (h, w)) is the predicted window, shrunk to the image.

    margin == 0 (same-padding model): input window = output window, starts from `tile_starts`
    with `overlap` and `align` (default 1), Gaussian weights.
    margin > 0 (valid-padding model): input side = `valid_input(output side)` (e.g.
    `model.valid_input_size`) or output + 2 * margin; the output window grows to input - 2 * margin.
    `overlap` is not used (no seams to hide), weights are uniform, and starts are multiples of
    `align`, by default the spacing of valid input sizes (2 ** depth for a U-Net), which keeps
    every max-pooling grid in phase with the whole-image prediction.
    """
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tuple(tile)
    out_h, out_w = min(tile_h, height), min(tile_w, width)
    if margin == 0:
        in_h, in_w = out_h, out_w
        align = align or 1
        row_profile, col_profile = gaussian_profile(out_h), gaussian_profile(out_w)
    else:
        def input_side(output_side: int) -> int:
            return valid_input(output_side) if valid_input else output_side + 2 * margin

        in_h, in_w = input_side(out_h), input_side(out_w)
        out_h, out_w = in_h - 2 * margin, in_w - 2 * margin
        if out_h < 1 or out_w < 1:
            raise ValueError(f"valid_input gave input tiles {in_h}x{in_w}, "
                             f"not larger than 2 * margin = {2 * margin}")
        if align is None:
            align = input_side(out_h + 1) - in_h if valid_input else 1
        overlap = 0.0
        row_profile, col_profile = torch.ones(out_h), torch.ones(out_w)
    return TileGrid(height, width, (in_h, in_w), (out_h, out_w), margin,
                    tuple(tile_starts(height, out_h, overlap, align)),
                    tuple(tile_starts(width, out_w, overlap, align)), row_profile, col_profile)


def _summed_profile(starts: Sequence[int], profile: torch.Tensor, size: int) -> np.ndarray:
    """(size,) float32: the sum over tiles of their 1-D weight, cropped to [0, size)."""
    total = np.zeros(size, dtype=np.float32)
    weights = profile.numpy()
    for start in starts:
        length = min(len(weights), size - start)
        total[start:start + length] += weights[:length]
    return total


# ---- blending -----------------------------------------------------------------------------------
class _RowAccumulator:
    """Weighted probability sums for the image rows [start, start + rows) not yet handed out.

    The blending weight of a tile is outer(row_profile, col_profile) and the tiles form a grid, so
    the summed weight at (r, c) is row_total[r] * col_total[c]: two vectors replace a (rows, W)
    weight buffer. The sums live in NumPy memory so tracemalloc (and the memory test) sees them.
    """

    def __init__(self, grid: TileGrid):
        self.grid = grid
        self.start = 0
        self.sums: np.ndarray | None = None  # (K, rows, W) float32
        self.row_total = _summed_profile(grid.ys, grid.row_profile, grid.height)  # (H,)
        self.col_total = _summed_profile(grid.xs, grid.col_profile, grid.width)  # (W,)
        self.tile_weight = torch.outer(grid.row_profile, grid.col_profile)  # (out_h, out_w)

    def add(self, probs: torch.Tensor, y: int, x: int) -> None:
        """Add one tile's probabilities (K, out_h, out_w) predicted at output position (y, x)."""
        height = min(probs.shape[1], self.grid.height - y)
        width = min(probs.shape[2], self.grid.width - x)
        self._ensure_rows(probs.shape[0], y + height)
        target = torch.from_numpy(self.sums)[:, y - self.start:y - self.start + height, x:x + width]
        target += probs[:, :height, :width] * self.tile_weight[:height, :width]

    def _ensure_rows(self, channels: int, stop: int) -> None:
        rows = 0 if self.sums is None else self.sums.shape[1]
        if stop - self.start <= rows:
            return
        grown = np.zeros((channels, stop - self.start, self.grid.width), dtype=np.float32)
        if self.sums is not None:
            grown[:, :rows] = self.sums
        self.sums = grown

    def pop_until(self, stop: int) -> Iterator[Band]:
        """Yield the finished rows [start, stop) as (start, stop, probs (K, stop - start, W))."""
        stop = min(stop, self.grid.height)
        if stop <= self.start or self.sums is None:
            return
        count = stop - self.start
        total = self.row_total[self.start:stop, None] * self.col_total[None, :]  # (count, W)
        probs = self.sums[:, :count] / total
        self.sums = self.sums[:, count:]
        start, self.start = self.start, stop
        yield start, stop, torch.from_numpy(probs)


def _channels_first(pixels: np.ndarray) -> torch.Tensor:
    """(h, w) or (h, w, C) array -> contiguous float32 tensor (C, h, w)."""
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def _run_batch(forward: Forward, pending: list[tuple[torch.Tensor, int, int]], accumulator: _RowAccumulator,
               device: torch.device | str, num_outputs: int | None) -> None:
    _check_interruption()
    batch = torch.stack([tile for tile, _, _ in pending]).to(device)  # (B, C, in_h, in_w)
    with torch.no_grad():
        probs = forward(batch)
    expected = accumulator.grid.out_tile
    if probs.ndim != 4 or probs.shape[0] != len(pending) or tuple(probs.shape[-2:]) != expected:
        raise ValueError(
            f"forward returned {tuple(probs.shape)} for input tiles {tuple(batch.shape)}; expected "
            f"(B, K, {expected[0]}, {expected[1]}). A valid-padding model needs margin=model.margin "
            f"and valid_input=model.valid_input_size")
    if num_outputs is not None and probs.shape[1] != num_outputs:
        raise ValueError(f"forward returned {probs.shape[1]} channels, expected num_outputs={num_outputs}")
    probs = probs.float().cpu()  # (B, K, out_h, out_w)
    for (_, y, x), tile_probs in zip(pending, probs):
        accumulator.add(tile_probs, y, x)


def predict_bands(forward: Forward, read_rows: ReadRows, height: int, width: int,
                  tile: int | Sequence[int] = 256, overlap: float = 0.5, batch_size: int = 4,
                  device: torch.device | str = "cpu", num_outputs: int | None = None, margin: int = 0,
                  valid_input: Callable[[int], int] | None = None,
                  align: int | None = None) -> Iterator[Band]:
    """Stream a tiled prediction as finished horizontal bands, top to bottom.

    Args:
        forward: (B, C, h, w) on `device` -> probabilities (B, K, h', w'); see the module doc.
        read_rows: read_rows(y0, y1) -> array (y1 - y0, width) or (y1 - y0, width, C) of image rows
            0 <= y0 < y1 <= height, already normalised as the model expects. Called once per row of
            tiles with the rows that tile row needs.
        height, width: image size.
        tile, overlap, margin, valid_input, align: the layout, see `tile_grid`.
        batch_size: tiles per forward call; tiles are batched across tile rows.
        num_outputs: K, if given checked against the forward output.

    Yields:
        (y0, y1, probs) with probs (K, y1 - y0, width) float32 on the CPU; consecutive bands tile
        [0, height) exactly. Memory: one input band of about tile + 2 * margin rows per tile row
        in the pending batch, plus sums for the rows those tiles cover; never the whole image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    grid = tile_grid(height, width, tile, overlap, margin, valid_input, align)
    in_h, in_w = grid.in_tile
    # Band column 0 is image column -margin, so tile x reads band columns [x, x + in_w).
    columns = mirror_indices(-margin, grid.xs[-1] - margin + in_w, width)
    accumulator = _RowAccumulator(grid)
    pending: list[tuple[torch.Tensor, int, int]] = []  # (input tile (C, in_h, in_w), y, x)
    for row, y in enumerate(grid.ys):
        rows = mirror_indices(y - margin, y - margin + in_h, height)
        first = int(rows.min())
        pixels = read_rows(first, int(rows.max()) + 1)
        band = _channels_first(pixels[np.ix_(rows - first, columns)])  # (C, in_h, band width)
        for x in grid.xs:
            pending.append((band[:, :, x:x + in_w], y, x))
            if len(pending) == batch_size:
                _run_batch(forward, pending, accumulator, device, num_outputs)
                pending = []
        # No later tile touches the rows above the first pending tile or the next tile row.
        next_start = grid.ys[row + 1] if row + 1 < len(grid.ys) else height
        yield from accumulator.pop_until(pending[0][1] if pending else next_start)
    if pending:
        _run_batch(forward, pending, accumulator, device, num_outputs)
    yield from accumulator.pop_until(height)


def predict_tiled(forward: Forward, image: torch.Tensor, tile: int | Sequence[int] = 256,
                  overlap: float = 0.5, batch_size: int = 4, device: torch.device | str = "cpu",
                  num_outputs: int | None = None, margin: int = 0,
                  valid_input: Callable[[int], int] | None = None, align: int | None = None) -> torch.Tensor:
    """Overlap-tile prediction of one in-memory image.

    Args:
        image: (C, H, W) float on the CPU, normalised as the model expects.
        the rest: as `predict_bands`.

    Returns:
        (K, H, W) float32 probabilities on the CPU. Only `batch_size` tiles are on `device` at once.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    pixels = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C) view, no copy
    height, width = pixels.shape[:2]
    result: torch.Tensor | None = None
    for y0, y1, probs in predict_bands(forward, lambda a, b: pixels[a:b], height, width, tile, overlap,
                                       batch_size, device, num_outputs, margin, valid_input, align):
        if result is None:
            result = torch.empty((probs.shape[0], height, width), dtype=torch.float32)
        result[:, y0:y1] = probs
    return result
