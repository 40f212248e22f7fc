"""Labelled regions of an image (polygons, run-length bitmaps) and their rasterisation into one class mask.

Overlaps are resolved by one rule: crowd regions first, then single instances from the largest to
the smallest, so a smaller instance lies on top of a larger one (a nucleus inside its cell stays
visible); instances of equal area keep their file order, the later on top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Shape:
    """One labelled region: polygons in pixel coordinates (COCO's: the image spans 0..W, 0..H) or a
    run-length bitmap; `value` is its class's mask value, `entry` where it was read, for messages."""

    value: int
    entry: str
    polygons: tuple[np.ndarray, ...] = ()  # each (P, 2) float64 x, y
    runs: tuple[int, ...] | None = None    # COCO RLE counts: column-major runs, zeros first
    crowd: bool = False


@dataclass
class ImageLabels:
    """An image file, its size, and the regions labelled in it."""

    image: Path
    height: int
    width: int
    entry: str
    shapes: list[Shape] = field(default_factory=list)


def decode_rle_string(counts: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (pycocotools' rleFrString: 5-bit groups with a
    continuation bit, each run after the second stored as a difference to the run two back).
    Raises ValueError on a string that is not such an encoding."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the RLE string ends inside a number")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[position]!r} is not part of a COCO RLE string")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift  # the sign bit of the last group
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def runs_bitmap(runs: tuple[int, ...], height: int, width: int) -> np.ndarray:
    """Run lengths (zeros first, column-major as COCO stores them) -> (H, W) bool.
    Raises ValueError when the runs are negative or do not add up to H * W."""
    lengths = np.asarray(runs, dtype=np.int64)
    if (lengths < 0).any():
        raise ValueError("the RLE holds a negative run length")
    if int(lengths.sum()) != height * width:
        raise ValueError(f"its RLE runs add up to {int(lengths.sum())} pixels, not {height} x {width} = "
                         f"{height * width}")
    flags = np.arange(len(lengths)) % 2 == 1
    return np.repeat(flags, lengths).reshape(width, height).T


def polygon_bitmap(polygons: tuple[np.ndarray, ...], height: int, width: int) -> np.ndarray:
    """Polygons (each (P, 2) x, y; the image spans 0..W, 0..H) -> (H, W) bool: the pixels whose
    centre lies inside one of them (even-odd rule within a polygon, union across polygons).

    A scanline fill over the polygon's edge crossings with each row's centre line, so the cost is
    the crossings' count, not H x W x edges; the same as pycocotools' masks to within the pixels
    a boundary passes exactly through.
    """
    inside = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        inside |= _filled(np.asarray(polygon, dtype=np.float64), height, width)
    return inside


def _filled(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """One polygon (P, 2) -> (H, W) bool: a row's pixel is inside after an odd number of crossings."""
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Row r crosses an edge when its centre line r + 0.5 lies in [low, high): horizontal edges never.
    first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    last = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    span = np.maximum(last - first, 0)
    edge = np.repeat(np.arange(len(x0)), span)
    rows = first[edge] + np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    x = x0[edge] + (rows + 0.5 - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    column = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)  # first pixel whose centre is past x
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(toggles, (rows, column), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] & 1).astype(bool)


def shape_bitmap(shape: Shape, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """(bitmap (h, w) bool, top, left): one shape within its bounding box in the H x W image, so an
    image of many small instances never holds a full-size bitmap for each."""
    if shape.runs is not None:
        return runs_bitmap(shape.runs, height, width), 0, 0
    points = np.concatenate(shape.polygons)
    top, left = (max(int(np.floor(points[:, axis].min())), 0) for axis in (1, 0))
    bottom = min(int(np.ceil(points[:, 1].max())), height)
    right = min(int(np.ceil(points[:, 0].max())), width)
    if bottom <= top or right <= left:
        return np.zeros((0, 0), dtype=bool), 0, 0
    moved = tuple(polygon - (left, top) for polygon in shape.polygons)
    return polygon_bitmap(moved, bottom - top, right - left), top, left


def rasterise(labels: ImageLabels, dtype=np.uint8) -> np.ndarray:
    """The class mask (H, W) `dtype` of one image: 0 where nothing is labelled, else the value of
    the region on top (crowd regions under instances, smaller instances over larger ones)."""
    drawn = [(shape, *shape_bitmap(shape, labels.height, labels.width)) for shape in labels.shapes]
    order = sorted(range(len(drawn)), key=lambda i: (not drawn[i][0].crowd, -int(drawn[i][1].sum()), i))
    mask = np.zeros((labels.height, labels.width), dtype=dtype)
    for index in order:
        shape, bitmap, top, left = drawn[index]
        mask[top:top + bitmap.shape[0], left:left + bitmap.shape[1]][bitmap] = shape.value
    return mask
